//! What one deploy is asked to do: the operator's flags as one value, shared by every
//! phase ([`super::fleet`], [`super::install`]), and [`validate`], which checks it before
//! any host is contacted.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::metainfo::{self, MetainfoError, Payload};
use crate::peer::auth::Secret;
use crate::runtime::{local_ips, Network};

use super::hosts::{parse_hosts, HostsError};
use super::release::{validate_dest, validate_tag, ReleaseError};
use super::seeder::SeederError;
use super::seeder_addr::SeederAddrError;
use super::ssh::Ssh;

/// Everything one deploy needs.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// `--hosts`: a file or a comma-separated list.
    pub hosts: String,
    pub src: PathBuf,
    pub dest: PathBuf,
    pub tag: String,
    pub seeder_addr: Option<IpAddr>,
    pub activate: bool,
    pub force: bool,
    /// How long each peer keeps seeding after it has the release.
    pub linger: Duration,
    pub stall_timeout: Duration,
    /// Most ssh sessions at once.
    pub parallel: usize,
    pub ssh: Ssh,
    /// Share one ssh connection per host for the whole deploy ([`super::ssh::Multiplex`]).
    pub ssh_multiplex: bool,
    /// Where corvid lives on the hosts (`~/` allowed).
    pub remote_corvid: String,
    /// The binary to install where the remote one is missing or different.
    pub local_corvid: PathBuf,
    /// Install corvid through a swarm of the hosts' old corvids when at least this many
    /// hosts need it (0: always over ssh).
    pub swarm_install_min: usize,
    /// Port of the embedded tracker (0: any free port; its URL goes into the torrent).
    pub tracker_port: u16,
    /// Threads for hashing here and for the seeder's event loops.
    pub threads: usize,
    /// A private swarm's secret: the tracker and seeder here require it, and each host
    /// gets it in a 0600 file beside the torrent, through the ssh session's stdin (never
    /// on a command line, where the remote process list would show it).
    pub secret: Option<Secret>,
    /// `--keep N`: after activating, each host keeps the newest N releases (and always
    /// the current and previous one).
    pub keep: Option<usize>,
    /// `--after-activate CMD`: run on each host after its flip, bounded by
    /// `hook_timeout`.
    pub after_activate: Option<String>,
    pub hook_timeout: Duration,
    /// `--batch`: download everywhere first, then activate in waves of this size.
    pub batch: Option<Batch>,
    /// `--check CMD`: run on each host of a wave after its hook; a failure stops the
    /// rollout.
    pub check: Option<String>,
    /// `--rollback-on-failure`: a failed wave goes back to its previous release.
    pub rollback_on_failure: bool,
    /// `--align`: BEP 47 pad files put every file on a piece boundary (see
    /// `metainfo::aligned`), so a host can reuse a file that moved or changed size in
    /// place from its base release; off by default (the pads' zeros cross the wire).
    pub align: bool,
    /// `--base TAG`: the release under `DEST/releases` hosts reuse pieces from, instead
    /// of the one `current` points at.
    pub base: Option<String>,
    /// `--peer-network CIDR`: the swarm runs on this network (a data network beside the
    /// management one ssh uses): every host's peer listens on, dials and announces from
    /// its own address in it, and this machine's seeder and tracker are reached at its
    /// address in it (unless `--seeder-addr` says otherwise).
    pub peer_network: Option<Network>,
    /// Where the deployer keeps its piece-hash cache ([`super::piece_cache`]), so an
    /// unchanged file of the release is not hashed again; `None`: hash everything.
    pub hash_cache: Option<PathBuf>,
    /// `--uplink`: every host's uplink in bytes per second (and this machine's, for the
    /// seeder): each paces its uploads to share it (see `crate::swarm`'s `pace.rs`).
    pub uplink: Option<u64>,
}

/// The size of an activation wave: a number of hosts or a share of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Hosts(usize),
    Percent(u8),
}

impl std::str::FromStr for Batch {
    type Err = String;
    fn from_str(s: &str) -> Result<Batch, String> {
        let bad =
            || format!("--batch {s:?}: give a number of hosts (N) or a share (N%), at least 1");
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Batch::Hosts(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl Batch {
    /// Hosts per wave in a fleet of `hosts` (a share rounds up: at least one host).
    pub fn size(self, hosts: usize) -> usize {
        match self {
            Batch::Hosts(n) => n,
            Batch::Percent(p) => (hosts * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

/// Why a deploy could not start (no host has been contacted when these are returned,
/// except [`DeployError::SeederAddr`] and the seeder's own failures).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The remote command line is text a shell parses: a path that is not UTF-8 could
    /// only be sent approximately (lossily), which would deploy somewhere else.
    #[error("--dest {0:?} is not valid UTF-8; the hosts' shell command can only carry it exactly as UTF-8")]
    DestNotUtf8(PathBuf),
    #[error("--src {0:?} is not a directory")]
    SrcNotDir(PathBuf),
    #[error("--src: {0}")]
    Source(#[from] MetainfoError),
    #[error("--remote-corvid {0:?} must be an absolute path or start with ~/")]
    RemotePath(String),
    #[error("--parallel must be at least 1")]
    Parallel,
    #[error("--keep must be at least 1 (the release just activated is always kept)")]
    Keep,
    #[error("{0} needs --activate (it acts after the flip of current)")]
    NeedsActivate(&'static str),
    #[error("--after-activate is empty: give the command to run on each host")]
    EmptyHook,
    #[error("--hook-timeout must be more than 0")]
    HookTimeout,
    #[error("--batch {batch} is larger than the fleet ({hosts} hosts)")]
    BatchTooLarge { batch: usize, hosts: usize },
    #[error("{0} needs --batch (it belongs to a rolling activation)")]
    NeedsBatch(&'static str),
    #[error("--check is empty: give the command to run on each host")]
    EmptyCheck,
    #[error("--peer-network {net}: this machine has no address in it (it has {have}); pass --seeder-addr if the hosts reach it there through a router")]
    NotInPeerNetwork { net: Network, have: String },
    #[error("--peer-network {net}: cannot list this machine's addresses: {source}")]
    LocalAddrs {
        net: Network,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read this corvid binary {path:?}: {source}")]
    LocalBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    SeederAddr(#[from] SeederAddrError),
    #[error("cannot start the tracker: {0}")]
    Tracker(String),
    #[error(transparent)]
    Seeder(#[from] SeederError),
    #[error("interrupted before the peers were started")]
    Interrupted,
}

/// What [`validate`] established.
#[derive(Debug)]
pub struct Validated {
    pub hosts: Vec<String>,
    pub payload: Payload,
    /// With `--peer-network` and no `--seeder-addr`: this machine's address in it.
    pub peer_network_addr: Option<IpAddr>,
}

/// Checks the plan and scans the source, touching no host.
pub fn validate(plan: &DeployPlan) -> Result<Validated, DeployError> {
    validate_tag(&plan.tag)?;
    if let Some(b) = &plan.base {
        validate_tag(b)?;
    }
    validate_dest(&plan.dest)?;
    if plan.dest.to_str().is_none() {
        return Err(DeployError::DestNotUtf8(plan.dest.clone()));
    }
    if plan.parallel == 0 {
        return Err(DeployError::Parallel);
    }
    if plan.keep == Some(0) {
        return Err(DeployError::Keep);
    }
    if plan.keep.is_some() && !plan.activate {
        return Err(DeployError::NeedsActivate("--keep"));
    }
    if let Some(h) = &plan.after_activate {
        if h.trim().is_empty() {
            return Err(DeployError::EmptyHook);
        }
        if !plan.activate {
            return Err(DeployError::NeedsActivate("--after-activate"));
        }
        if plan.hook_timeout.is_zero() {
            return Err(DeployError::HookTimeout);
        }
    }
    let r = &plan.remote_corvid;
    if !(r.starts_with('/') || r.starts_with("~/")) || r.contains('\0') {
        return Err(DeployError::RemotePath(r.clone()));
    }
    if !plan.src.is_dir() {
        return Err(DeployError::SrcNotDir(plan.src.clone()));
    }
    if plan.batch.is_some() && !plan.activate {
        return Err(DeployError::NeedsActivate("--batch"));
    }
    if plan.batch.is_none() {
        if plan.check.is_some() {
            return Err(DeployError::NeedsBatch("--check"));
        }
        if plan.rollback_on_failure {
            return Err(DeployError::NeedsBatch("--rollback-on-failure"));
        }
    }
    if plan.check.as_ref().is_some_and(|c| c.trim().is_empty()) {
        return Err(DeployError::EmptyCheck);
    }
    let hosts = parse_hosts(&plan.hosts)?;
    if let Some(Batch::Hosts(n)) = plan.batch {
        if n > hosts.len() {
            return Err(DeployError::BatchTooLarge {
                batch: n,
                hosts: hosts.len(),
            });
        }
    }
    let peer_network_addr = match (plan.peer_network, plan.seeder_addr) {
        (Some(net), None) => Some(addr_in_network(net)?),
        _ => None,
    };
    let payload = metainfo::scan(&plan.src, None)?;
    Ok(Validated {
        hosts,
        payload,
        peer_network_addr,
    })
}

/// This machine's address in `--peer-network`, where its seeder and tracker listen.
fn addr_in_network(net: Network) -> Result<IpAddr, DeployError> {
    let ips = local_ips().map_err(|source| DeployError::LocalAddrs { net, source })?;
    ips.iter()
        .copied()
        .find(|ip| net.contains(*ip))
        .ok_or_else(|| DeployError::NotInPeerNetwork {
            net,
            have: ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_a_count_or_a_share_rounded_up() {
        assert_eq!("3".parse::<Batch>(), Ok(Batch::Hosts(3)));
        assert_eq!("10%".parse::<Batch>(), Ok(Batch::Percent(10)));
        for bad in ["0", "0%", "101%", "-1", "x", "%", ""] {
            assert!(bad.parse::<Batch>().is_err(), "{bad}");
        }
        assert_eq!(Batch::Percent(10).size(16), 2);
        assert_eq!(Batch::Percent(33).size(6), 2);
        assert_eq!(Batch::Percent(1).size(3), 1);
        assert_eq!(Batch::Percent(100).size(5), 5);
        assert_eq!(Batch::Hosts(4).size(16), 4);
    }
}
