//! What one deploy is asked to do: the operator's flags as one value, shared by every
//! phase ([`super::fleet`], [`super::install`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::peer::auth::Secret;

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
}
