//! Which rack each host is in, so the tracker can hand a peer mostly peers behind the same
//! rack switch (whose uplink to the spine is the fleet's scarce, shared link).
//!
//! A topology file has one rule a line, `ADDR rack=NAME`, where ADDR is an IP address, an
//! `IP:PORT` (several peers on one host, as on a test machine), or a CIDR network
//! (`10.1.2.0/24`); `#` starts a comment. A peer's rack is that of its most specific rule:
//! its exact `IP:PORT`, else its IP, else the longest network holding it. Peers no rule
//! covers have no rack, and the tracker treats them as before.
//!
//! Parsing is strict and names the line: a topology that silently dropped a line would
//! send a rack's peers across the spine with nobody the wiser.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Longest rack name accepted; names are labels for humans and reports, not data.
const MAX_RACK_NAME: usize = 64;

/// A rack, as an index into [`Topology::rack_name`]'s table: cheap to keep per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RackId(u32);

/// What is wrong with one line of a topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("{0:?} is not an IP address, IP:PORT or CIDR network")]
    BadAddress(String),
    #[error("network {0:?}: the prefix length must be a number no longer than the address (32 for IPv4, 128 for IPv6)")]
    BadPrefix(String),
    #[error("network {0:?} has host bits set; write the network address")]
    HostBits(String),
    #[error("no rack=NAME after the address")]
    MissingRack,
    #[error("rack name {0:?} must be 1-64 of letters, digits, '.', '_', '-'")]
    BadRack(String),
    #[error("unexpected {0:?}: a line is ADDR rack=NAME")]
    Extra(String),
    #[error("{addr} is already in rack {first_rack:?} (line {first_line})")]
    Conflict {
        addr: String,
        first_rack: String,
        first_line: usize,
    },
}

/// Why a topology could not be read; line numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("topology {source_name} line {line} ({text:?}): {why}")]
    Line {
        source_name: String,
        line: usize,
        text: String,
        why: LineError,
    },
    #[error("topology {0} has no rules")]
    Empty(String),
    #[error("cannot read topology file {path:?}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a rule came from, for conflict messages.
#[derive(Debug, Clone, Copy)]
struct Origin {
    rack: RackId,
    line: usize,
}

/// The parsed rules; see the module docs for the lookup order.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    names: Vec<String>,
    by_socket: HashMap<SocketAddr, Origin>,
    by_ip: HashMap<IpAddr, Origin>,
    /// Networks (canonical, host bits clear), longest prefix first.
    nets: Vec<(IpAddr, u8, Origin)>,
}

impl Topology {
    /// Reads a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Topology::parse(&text, &path.display().to_string())
    }

    /// Parses topology text; `source_name` names it in errors (a path, `--hosts`).
    pub fn parse(text: &str, source_name: &str) -> Result<Topology, TopologyError> {
        let mut t = Topology::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |why| TopologyError::Line {
                source_name: source_name.to_string(),
                line: i + 1,
                text: raw.trim().to_string(),
                why,
            };
            let mut fields = line.split_whitespace();
            let addr = fields.next().unwrap_or_default();
            let rack = match fields.next() {
                Some(f) => f.strip_prefix("rack=").ok_or(LineError::MissingRack),
                None => Err(LineError::MissingRack),
            }
            .map_err(err)?;
            if let Some(extra) = fields.next() {
                return Err(err(LineError::Extra(extra.to_string())));
            }
            t.add(addr, rack, i + 1).map_err(err)?;
        }
        if t.is_empty() {
            return Err(TopologyError::Empty(source_name.to_string()));
        }
        Ok(t)
    }

    /// Adds one rule (`addr` as in a topology line); `line` is quoted by later conflicts.
    /// The same address in the same rack twice is allowed (a hosts file may list one
    /// machine under two names); in two racks it is an error.
    pub fn add(&mut self, addr: &str, rack: &str, line: usize) -> Result<(), LineError> {
        let rule = parse_rule(addr)?;
        let rack = self.intern(rack)?;
        let origin = Origin { rack, line };
        let conflict = |o: &Origin, names: &[String]| LineError::Conflict {
            addr: addr.to_string(),
            first_rack: names[o.rack.0 as usize].clone(),
            first_line: o.line,
        };
        let existing = match rule {
            Rule::Socket(s) => *self.by_socket.entry(s).or_insert(origin),
            Rule::Ip(ip) => *self.by_ip.entry(ip).or_insert(origin),
            Rule::Net(net, len) => {
                match self.nets.iter().find(|(n, l, _)| *n == net && *l == len) {
                    Some((_, _, o)) => *o,
                    None => {
                        self.nets.push((net, len, origin));
                        // Stable: among equal prefixes, the first line stays first.
                        self.nets.sort_by_key(|n| std::cmp::Reverse(n.1));
                        origin
                    }
                }
            }
        };
        if existing.rack != rack {
            return Err(conflict(&existing, &self.names));
        }
        Ok(())
    }

    fn intern(&mut self, name: &str) -> Result<RackId, LineError> {
        if !valid_rack_name(name) {
            return Err(LineError::BadRack(name.to_string()));
        }
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(RackId(i as u32));
        }
        self.names.push(name.to_string());
        Ok(RackId(self.names.len() as u32 - 1))
    }

    /// True when no rule was added.
    pub fn is_empty(&self) -> bool {
        self.by_socket.is_empty() && self.by_ip.is_empty() && self.nets.is_empty()
    }

    /// The rack of a peer listening at `addr`, by its most specific rule.
    pub fn rack_of(&self, addr: SocketAddr) -> Option<RackId> {
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        if let Some(o) = self.by_socket.get(&addr).or_else(|| self.by_ip.get(&ip)) {
            return Some(o.rack);
        }
        self.nets
            .iter()
            .find(|(net, len, _)| mask(ip, *len) == Some(*net))
            .map(|(_, _, o)| o.rack)
    }

    /// The name a rack was given.
    pub fn rack_name(&self, rack: RackId) -> &str {
        &self.names[rack.0 as usize]
    }

    /// Racks named, in order of first mention.
    pub fn racks(&self) -> usize {
        self.names.len()
    }

    /// The rack called `name`, if a rule names it.
    pub fn rack_named(&self, name: &str) -> Option<RackId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| RackId(i as u32))
    }

    /// The rules that put addresses in `rack`, as topology text (one `ADDR rack=NAME` a
    /// line, in a fixed order). What a host needs to tell its rack-mates from the rest
    /// when every rule is an address (a deploy's hosts file): a rule of another rack can
    /// then never be more specific than one of these for the same peer.
    pub fn rules_of(&self, rack: RackId) -> String {
        let name = self.rack_name(rack);
        let mut lines: Vec<String> = self
            .by_socket
            .iter()
            .filter(|(_, o)| o.rack == rack)
            .map(|(a, _)| a.to_string())
            .chain(
                self.by_ip
                    .iter()
                    .filter(|(_, o)| o.rack == rack)
                    .map(|(a, _)| a.to_string()),
            )
            .chain(
                self.nets
                    .iter()
                    .filter(|(_, _, o)| o.rack == rack)
                    .map(|(n, l, _)| format!("{n}/{l}")),
            )
            .collect();
        lines.sort_unstable();
        lines.iter().map(|a| format!("{a} rack={name}\n")).collect()
    }

    /// Whether every rule is a single address (no networks).
    pub fn only_addresses(&self) -> bool {
        self.nets.is_empty()
    }
}

/// A host's own place in a [`Topology`]: its rack, so it can tell which of its
/// connections stay behind its rack switch (the node marks those for rack-aware
/// picking, see `swarm/pick.rs`).
#[derive(Debug, Clone)]
pub struct HostRack {
    topology: std::sync::Arc<Topology>,
    rack: RackId,
}

impl HostRack {
    pub fn new(topology: std::sync::Arc<Topology>, rack: RackId) -> HostRack {
        HostRack { topology, rack }
    }

    /// This host's rack, found by its own address (`me`, the address peers and the
    /// tracker see: the listening address, or the source address towards them).
    pub fn of(topology: std::sync::Arc<Topology>, me: SocketAddr) -> Option<HostRack> {
        let rack = topology.rack_of(me)?;
        Some(HostRack { topology, rack })
    }

    pub fn rack(&self) -> RackId {
        self.rack
    }

    pub fn name(&self) -> &str {
        self.topology.rack_name(self.rack)
    }

    /// Whether a remote at `addr` is in our rack.
    pub fn is_local(&self, addr: SocketAddr) -> bool {
        self.topology.rack_of(addr) == Some(self.rack)
    }

    /// The rack of a remote at `addr`, if the topology knows it.
    pub fn rack_of(&self, addr: SocketAddr) -> Option<RackId> {
        self.topology.rack_of(addr)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }
}

/// 1-64 of letters, digits, `.`, `_`, `-`: a label that is safe in logs and reports.
pub fn valid_rack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_RACK_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

enum Rule {
    Socket(SocketAddr),
    Ip(IpAddr),
    Net(IpAddr, u8),
}

fn parse_rule(s: &str) -> Result<Rule, LineError> {
    if let Some((net, len)) = s.split_once('/') {
        let ip: IpAddr = net
            .parse()
            .map_err(|_| LineError::BadAddress(s.to_string()))?;
        let ip = ip.to_canonical();
        let len: u8 = match len.parse() {
            Ok(n) if !len.starts_with('+') => n,
            _ => return Err(LineError::BadPrefix(s.to_string())),
        };
        let masked = mask(ip, len).ok_or_else(|| LineError::BadPrefix(s.to_string()))?;
        if masked != ip {
            return Err(LineError::HostBits(s.to_string()));
        }
        return Ok(Rule::Net(ip, len));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Rule::Ip(ip.to_canonical()));
    }
    match s.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(Rule::Socket(SocketAddr::new(
            sa.ip().to_canonical(),
            sa.port(),
        ))),
        _ => Err(LineError::BadAddress(s.to_string())),
    }
}

/// `ip` with all but the first `len` bits cleared; `None` if `len` is longer than the
/// address.
fn mask(ip: IpAddr, len: u8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if len <= 32 => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V4((bits & m).into()))
        }
        IpAddr::V6(v6) if len <= 128 => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V6((bits & m).into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn name(t: &Topology, s: &str) -> Option<String> {
        t.rack_of(sa(s)).map(|r| t.rack_name(r).to_string())
    }

    #[test]
    fn most_specific_rule_wins() {
        let t = Topology::parse(
            "# racks of the test fleet\n\
             10.0.0.0/8 rack=dc\n\
             10.1.0.0/16   rack=r1   # the first row\n\
             \n\
             10.1.2.3 rack=r2\n\
             10.1.2.3:7000 rack=r3\n\
             fd00::/64 rack=v6\n",
            "t",
        )
        .unwrap();
        assert_eq!(t.racks(), 5);
        assert_eq!(name(&t, "10.1.2.3:7000").as_deref(), Some("r3"));
        assert_eq!(name(&t, "10.1.2.3:7001").as_deref(), Some("r2"));
        assert_eq!(name(&t, "10.1.9.9:1").as_deref(), Some("r1"));
        assert_eq!(name(&t, "10.200.0.1:1").as_deref(), Some("dc"));
        assert_eq!(name(&t, "[fd00::5]:1").as_deref(), Some("v6"));
        assert_eq!(name(&t, "[::ffff:10.1.2.3]:7000").as_deref(), Some("r3"));
        assert_eq!(name(&t, "192.168.0.1:1"), None);
    }

    #[test]
    fn a_racks_rules_as_text_read_back_to_the_same_racks() {
        let t = Topology::parse(
            "10.0.0.2 rack=a\n10.0.0.1 rack=a\n10.0.0.3 rack=b\n             127.0.0.1:7001 rack=a\n10.9.0.0/16 rack=a\n",
            "t",
        )
        .unwrap();
        let a = t.rack_named("a").unwrap();
        assert_eq!(t.rack_named("zz"), None);
        let text = t.rules_of(a);
        assert_eq!(
            text,
            "10.0.0.1 rack=a\n10.0.0.2 rack=a\n10.9.0.0/16 rack=a\n127.0.0.1:7001 rack=a\n"
        );
        let only_a = Arc::new(Topology::parse(&text, "rules").unwrap());
        let me = HostRack::of(only_a, sa("10.0.0.1:6881")).unwrap();
        assert_eq!(me.name(), "a");
        assert!(me.is_local(sa("10.0.0.2:40000")));
        assert!(me.is_local(sa("10.9.3.4:1")));
        assert!(me.is_local(sa("127.0.0.1:7001")));
        assert!(!me.is_local(sa("127.0.0.1:7002")));
        assert!(!me.is_local(sa("10.0.0.3:6881")));
        assert!(HostRack::of(Arc::new(t), sa("192.168.1.1:1")).is_none());
    }

    #[test]
    fn zero_prefix_matches_everything() {
        let t = Topology::parse("0.0.0.0/0 rack=all\n", "t").unwrap();
        assert_eq!(name(&t, "8.8.8.8:53").as_deref(), Some("all"));
        assert_eq!(name(&t, "[::1]:53"), None);
    }

    #[test]
    fn bad_lines_are_named_with_their_number() {
        let cases: &[(&str, LineError)] = &[
            ("10.0.0.1", LineError::MissingRack),
            ("10.0.0.1 rack=", LineError::BadRack(String::new())),
            ("10.0.0.1 rack=a/b", LineError::BadRack("a/b".into())),
            ("10.0.0.1 zone=a", LineError::MissingRack),
            ("10.0.0.1 rack=a b", LineError::Extra("b".into())),
            ("web1 rack=a", LineError::BadAddress("web1".into())),
            (
                "10.0.0.1:0 rack=a",
                LineError::BadAddress("10.0.0.1:0".into()),
            ),
            (
                "10.0.0.0/33 rack=a",
                LineError::BadPrefix("10.0.0.0/33".into()),
            ),
            (
                "10.0.0.0/x rack=a",
                LineError::BadPrefix("10.0.0.0/x".into()),
            ),
            (
                "10.0.0.1/24 rack=a",
                LineError::HostBits("10.0.0.1/24".into()),
            ),
        ];
        for (line, want) in cases {
            let text = format!("# header\n10.9.9.9 rack=ok\n{line}\n");
            match Topology::parse(&text, "racks.txt") {
                Err(TopologyError::Line {
                    source_name,
                    line: 3,
                    why,
                    ..
                }) => {
                    assert_eq!(&why, want, "{line:?}");
                    assert_eq!(source_name, "racks.txt");
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
        let e = Topology::parse("10.0.0.1 rack=x\n", "f").unwrap();
        assert_eq!(e.racks(), 1);
    }

    #[test]
    fn conflicts_name_the_first_line_and_repeats_are_fine() {
        let text = "10.0.0.0/24 rack=a\n10.0.0.0/24 rack=a\n10.0.0.1 rack=b\n10.0.0.0/24 rack=c\n";
        let err = Topology::parse(text, "f").unwrap_err();
        let msg = err.to_string();
        match err {
            TopologyError::Line { line: 4, why, .. } => assert_eq!(
                why,
                LineError::Conflict {
                    addr: "10.0.0.0/24".into(),
                    first_rack: "a".into(),
                    first_line: 1
                }
            ),
            other => panic!("{other:?}"),
        }
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn empty_and_missing_files_are_errors() {
        assert!(matches!(
            Topology::parse("# nothing\n\n", "f"),
            Err(TopologyError::Empty(_))
        ));
        let e = Topology::load(Path::new("/nonexistent/racks")).unwrap_err();
        assert!(matches!(e, TopologyError::Read { .. }), "{e}");
    }
}
