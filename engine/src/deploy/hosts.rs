//! The fleet's host list: `--hosts h1,h2,...` or `--hosts FILE` (one host per line,
//! `#` comments). A host is only what a host can be: an optional `user@`, then a DNS
//! name (or an alias from the user's ssh config, which has the same shape), an IPv4
//! address or a bracketed IPv6 one, then an optional `:port`. Anything else is refused
//! up front: ssh substitutes the host into `ProxyCommand` and `Match exec` (`%h`), and
//! older OpenSSH hands those to a shell, so `a$(id>/tmp/x)b` or `x;reboot` would run
//! as commands on this machine.
//!
//! A host may carry its rack, `web1 rack=r1` (a line of the file or an item of the list):
//! [`host_topology`] turns those into the embedded tracker's
//! [`Topology`](crate::tracker::Topology), by the addresses the hosts' names resolve to
//! here (the addresses the tracker will see them announce from).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("host {0:?} is not a host: expected [user@]NAME, [user@]IPv4 or [user@][IPv6], with an optional :PORT (NAME: letters, digits, '-', '_', dot-separated)")]
    BadHost(String),
    #[error("host {host:?}: rack name {rack:?} must be 1-64 of letters, digits, '.', '_', '-'")]
    BadRack { host: String, rack: String },
    #[error(
        "host {host:?} (rack={rack}): cannot resolve its address for the tracker's topology: {why}"
    )]
    Resolve {
        host: String,
        rack: String,
        why: String,
    },
    #[error("host {host:?} (rack={rack}): {why}")]
    RackConflict {
        host: String,
        rack: String,
        why: String,
    },
    #[error("host {0:?} is listed twice")]
    Duplicate(String),
    #[error("the host list is empty")]
    Empty,
    #[error("cannot read host file {path:?}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `spec` as a file when one exists at that path, else as a comma-separated list.
pub fn parse_hosts(spec: &str) -> Result<Vec<String>, HostsError> {
    Ok(parse_host_racks(spec)?
        .into_iter()
        .map(|(h, _)| h)
        .collect())
}

/// [`parse_hosts`], with each host's `rack=NAME` if it has one.
pub fn parse_host_racks(spec: &str) -> Result<Vec<(String, Option<String>)>, HostsError> {
    let path = Path::new(spec);
    let text;
    let entries: Vec<&str> = if !spec.contains(',') && path.is_file() {
        text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
            path: spec.to_string(),
            source,
        })?;
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        spec.split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect()
    };
    let mut hosts: Vec<(String, Option<String>)> = Vec::with_capacity(entries.len());
    for entry in entries {
        // Only a last field `rack=NAME` is taken off: whatever else follows whitespace
        // stays part of the host and is refused by `Destination::parse`.
        let (h, rack) = match entry.rsplit_once(char::is_whitespace) {
            Some((h, r)) if r.starts_with("rack=") => (h.trim_end(), Some(&r[5..])),
            _ => (entry, None),
        };
        Destination::parse(h)?;
        if let Some(r) = rack.filter(|r| !crate::tracker::topology::valid_rack_name(r)) {
            return Err(HostsError::BadRack {
                host: h.to_string(),
                rack: r.to_string(),
            });
        }
        if hosts.iter().any(|(x, _)| x == h) {
            return Err(HostsError::Duplicate(h.to_string()));
        }
        hosts.push((h.to_string(), rack.map(str::to_string)));
    }
    if hosts.is_empty() {
        return Err(HostsError::Empty);
    }
    Ok(hosts)
}

/// The racks of `spec`'s hosts as a tracker topology (`None` when no host names a rack):
/// each host's name resolves to the addresses it will announce from: first as ssh sees
/// it (`via_ssh`, `ssh -G`'s `hostname`, so an alias of the ssh config works), else by
/// the resolver. A name that does not resolve here is an error rather than a host
/// silently outside its rack.
pub fn host_topology(
    spec: &str,
    via_ssh: &dyn Fn(&str) -> Option<IpAddr>,
) -> Result<Option<crate::tracker::Topology>, HostsError> {
    let mut t = crate::tracker::Topology::default();
    for (i, (host, rack)) in parse_host_racks(spec)?.into_iter().enumerate() {
        let Some(rack) = rack else { continue };
        let dest = Destination::parse(&host)?;
        let addrs: Vec<IpAddr> = match (dest.host.parse::<IpAddr>(), via_ssh(&host)) {
            (Ok(ip), _) | (Err(_), Some(ip)) => vec![ip],
            (Err(_), None) => (dest.host.as_str(), 0)
                .to_socket_addrs()
                .map_err(|e| HostsError::Resolve {
                    host: host.clone(),
                    rack: rack.clone(),
                    why: e.to_string(),
                })?
                .map(|a| a.ip())
                .collect(),
        };
        for ip in addrs {
            t.add(&ip.to_string(), &rack, i + 1)
                .map_err(|e| HostsError::RackConflict {
                    host: host.clone(),
                    rack: rack.clone(),
                    why: e.to_string(),
                })?;
        }
    }
    Ok((!t.is_empty()).then_some(t))
}

/// One host, split into what ssh takes as separate arguments (`-l USER`, `-p PORT`,
/// then the bare host after `--`), so no part of it is ever parsed by ssh as anything
/// else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub user: Option<String>,
    /// A name, an IPv4 address, or an IPv6 address without its brackets.
    pub host: String,
    pub port: Option<u16>,
}

/// A login name: letters, digits, `.`, `_`, `-`, not starting with `-`.
fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && !u.starts_with('-')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A DNS name (or an ssh config alias of the same shape): dot-separated labels of
/// letters, digits, `-` and `_`, none empty, none starting with `-`.
fn valid_name(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Destination {
    /// Parses `[user@]host[:port]`, where host is a name, an IPv4 address or `[IPv6]`
    /// (a bare IPv6 address, which cannot carry a port, is taken too).
    pub fn parse(s: &str) -> Result<Destination, HostsError> {
        let bad = || HostsError::BadHost(s.to_string());
        let (user, rest) = match s.split_once('@') {
            Some((u, r)) if valid_user(u) => (Some(u.to_string()), r),
            Some(_) => return Err(bad()),
            None => (None, s),
        };
        let port_of = |p: &str| -> Result<u16, HostsError> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('+') && !p.starts_with('0') => Ok(n),
                _ => Err(bad()),
            }
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (addr, after) = inner.split_once(']').ok_or_else(bad)?;
            addr.parse::<Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(port_of(p.strip_prefix(':').ok_or_else(bad)?)?),
            };
            (addr.to_string(), port)
        } else if rest.parse::<Ipv6Addr>().is_ok() {
            (rest.to_string(), None)
        } else {
            let (h, port) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(port_of(p)?)),
                None => (rest, None),
            };
            if h.parse::<Ipv4Addr>().is_err() && !valid_name(h) {
                return Err(bad());
            }
            (h.to_string(), port)
        };
        Ok(Destination { user, host, port })
    }

    /// The ssh arguments for this destination, the host last (after the caller's `--`).
    pub fn ssh_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(u) = &self.user {
            a.extend(["-l".to_string(), u.clone()]);
        }
        if let Some(p) = self.port {
            a.extend(["-p".to_string(), p.to_string()]);
        }
        a
    }
}

/// Runs `f` for every host on at most `parallel` threads; results in host order.
pub fn for_each_host<H: Sync, T: Send>(
    hosts: &[H],
    parallel: usize,
    f: &(dyn Fn(&H) -> T + Sync),
) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let slots: Vec<parking_lot::Mutex<Option<T>>> = hosts
        .iter()
        .map(|_| parking_lot::Mutex::new(None))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..parallel.min(hosts.len()).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(h) = hosts.get(i) else { break };
                *slots[i].lock() = Some(f(h));
            });
        }
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().expect("every slot filled by a worker"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_list() {
        assert_eq!(
            parse_hosts("a, b,root@c").unwrap(),
            vec!["a", "b", "root@c"]
        );
    }

    #[test]
    fn file_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        std::fs::write(&f, "# fleet\nweb1\n\nweb2  # second\n").unwrap();
        assert_eq!(
            parse_hosts(f.to_str().unwrap()).unwrap(),
            vec!["web1", "web2"]
        );
    }

    #[test]
    fn hosts_may_carry_their_rack() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        std::fs::write(
            &f,
            "# two racks\n10.0.0.1 rack=r1\nroot@10.0.0.2:22\track=r1  # tab\n127.0.0.1 rack=r2\nweb9\n",
        )
        .unwrap();
        let spec = f.to_str().unwrap();
        assert_eq!(
            parse_host_racks(spec).unwrap(),
            vec![
                ("10.0.0.1".to_string(), Some("r1".to_string())),
                ("root@10.0.0.2:22".to_string(), Some("r1".to_string())),
                ("127.0.0.1".to_string(), Some("r2".to_string())),
                ("web9".to_string(), None),
            ]
        );
        assert_eq!(
            parse_hosts(spec).unwrap(),
            ["10.0.0.1", "root@10.0.0.2:22", "127.0.0.1", "web9"]
        );
        // web9 has no rack, so it need not resolve.
        let t = host_topology(spec, &|_| None)
            .unwrap()
            .expect("racks given");
        let rack = |a: &str| {
            t.rack_of(a.parse().unwrap())
                .map(|r| t.rack_name(r).to_string())
        };
        assert_eq!(rack("10.0.0.2:6881").as_deref(), Some("r1"));
        assert_eq!(rack("127.0.0.1:6881").as_deref(), Some("r2"));
        assert_eq!(rack("10.0.0.3:6881"), None);
        assert!(host_topology("a,b", &|_| None).unwrap().is_none());
        // A name resolves to the addresses the tracker will see.
        let t = host_topology("localhost rack=lo", &|_| None)
            .unwrap()
            .unwrap();
        assert!(t.rack_of("127.0.0.1:1".parse().unwrap()).is_some());
    }

    #[test]
    fn bad_racks_are_named() {
        assert!(matches!(
            parse_hosts("web1 rack=a/b"),
            Err(HostsError::BadRack { host, rack }) if host == "web1" && rack == "a/b"
        ));
        assert!(matches!(
            parse_hosts("web1 rack="),
            Err(HostsError::BadRack { .. })
        ));
        // Anything but a last rack= field is still part of the host, and refused.
        assert!(matches!(
            parse_hosts("web1 zone=a"),
            Err(HostsError::BadHost(_))
        ));
        assert!(matches!(
            parse_hosts("web1 rack=a rack=b"),
            Err(HostsError::BadHost(_))
        ));
        assert!(matches!(
            host_topology("10.0.0.1 rack=a,10.0.0.1:2222 rack=b", &|_| None),
            Err(HostsError::RackConflict { .. })
        ));
        assert!(matches!(
            host_topology("no-such-host.invalid rack=a", &|_| None),
            Err(HostsError::Resolve { .. })
        ));
    }

    #[test]
    fn rejects_option_injection_and_duplicates() {
        assert!(matches!(
            parse_hosts("-oProxyCommand=x"),
            Err(HostsError::BadHost(_))
        ));
        assert!(matches!(parse_hosts("a,a"), Err(HostsError::Duplicate(_))));
        assert!(matches!(parse_hosts(" , "), Err(HostsError::Empty)));
        assert!(matches!(parse_hosts("a\tb"), Err(HostsError::BadHost(_))));
    }

    #[test]
    fn only_what_a_host_can_be_is_accepted() {
        let d = |s: &str| Destination::parse(s).unwrap();
        assert_eq!(
            d("deploy@web-1.example.com:2222"),
            Destination {
                user: Some("deploy".into()),
                host: "web-1.example.com".into(),
                port: Some(2222),
            }
        );
        assert_eq!(d("h1").ssh_args(), Vec::<String>::new());
        assert_eq!(d("10.0.0.7:22").host, "10.0.0.7");
        assert_eq!(d("root@[fe80::1]:2200").host, "fe80::1");
        assert_eq!(d("[::1]").port, None);
        assert_eq!(d("::1").host, "::1");
        assert_eq!(d("my_alias").host, "my_alias");
        assert_eq!(
            d("u@h:7").ssh_args(),
            ["-l", "u", "-p", "7"].map(String::from)
        );
        for bad in [
            "a$(id>/tmp/x)b",
            "x;reboot",
            "`id`",
            "h|nc x 1",
            "h&",
            "-oProxyCommand=x",
            "h -p 1",
            "a\tb",
            "%h",
            "h'",
            "h\"",
            "",
            "@h",
            "-u@h",
            "u@@h",
            "a..b",
            ".h",
            "h.",
            "-h",
            "h:",
            "h:0",
            "h:65536",
            "h:+22",
            "h:022",
            "h:22:22",
            "[::1",
            "[::1]x",
            "[h]",
            "[::1]:",
            "fe80::1%eth0",
            "u:p@h",
            "h/x",
            "h\\x",
            "ssh://h",
            &"a".repeat(64),
        ] {
            assert!(Destination::parse(bad).is_err(), "accepted {bad:?}");
            assert!(parse_hosts(bad).is_err(), "list accepted {bad:?}");
        }
        assert!(matches!(
            parse_hosts("web1,x;reboot"),
            Err(HostsError::BadHost(h)) if h == "x;reboot"
        ));
    }

    #[test]
    fn hosts_run_in_order_with_bounded_parallelism() {
        let hosts: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = for_each_host(&hosts, 3, &|h| {
            let n = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
            h.to_uppercase()
        });
        assert_eq!(out[7], "H7");
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }
}
