//! What one deploy is asked to do: the operator's flags as one value, shared by every
//! phase ([`super::fleet`], [`super::install`]), and [`validate`], which checks it before
//! any host is contacted.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::metainfo::{self, MetainfoError, Payload};
use crate::peer::auth::Secret;

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
    /// `--align`: BEP 47 pad files put every file on a piece boundary (see
    /// `metainfo::aligned`), so a host can reuse a file that moved or changed size in
    /// place from its base release; off by default (the pads' zeros cross the wire).
    pub align: bool,
    /// `--base TAG`: the release under `DEST/releases` hosts reuse pieces from, instead
    /// of the one `current` points at.
    pub base: Option<String>,
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
    let r = &plan.remote_corvid;
    if !(r.starts_with('/') || r.starts_with("~/")) || r.contains('\0') {
        return Err(DeployError::RemotePath(r.clone()));
    }
    if !plan.src.is_dir() {
        return Err(DeployError::SrcNotDir(plan.src.clone()));
    }
    let hosts = parse_hosts(&plan.hosts)?;
    let payload = metainfo::scan(&plan.src, None)?;
    Ok(Validated { hosts, payload })
}
