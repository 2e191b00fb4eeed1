//! What a node is asked to do: the mode, when a seeder stops, the tuning knobs and the
//! whole configuration, as the CLI and the tests build it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::geometry::Lengths;
use crate::peer::PeerConfig;
use crate::storage::FileSpec;
use crate::swarm::SwarmConfig;
use crate::tracker::Topology;

use super::resume::ResumeConfig;

/// Seed what is on disk, or download it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Seed,
    Download,
}

/// When a seeding node stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedUntil {
    /// Until told to stop.
    Stopped,
    /// Once every piece has been uploaded at least once and peers have announced
    /// every piece (Murder's seeder need not stay after that: the peers hold
    /// everything between them). Used by tests that prove peers serve each other.
    EveryPieceUploaded,
}

/// Performance knobs that benchmarks compare.
#[derive(Debug, Clone)]
pub struct NodeTuning {
    /// While blocks are expected, receive at most a piece header into the buffer, so the
    /// payload that follows lands in the mapping without a copy (one more receive per
    /// block). That only pays where payload is received through the mapping (downloads of
    /// more than 256 files); where storage writes through the files
    /// ([`Storage::writes_through_files`](crate::storage::Storage::writes_through_files))
    /// the payload goes through the buffer anyway and the cap costs one receive per block.
    /// Measured off there (only for write-through storage) against on, 1 GiB over
    /// loopback, two interleaved rounds of `corvid-bench link --size 1GiB --runs 3
    /// --methods iperf3,corvid` per binary (`benches/runs/2026-11-29-vm/header-sized-recv`):
    /// peer 1.16 / 1.26 CPU s/GiB on, 1.25 / 1.16 off (iperf3's receiver 0.31 / 0.26 and
    /// 0.21 / 0.29 in the same runs; all six runs each: median 1.20 on, 1.23 off). No
    /// difference shows through this machine's noise, so it stays on everywhere.
    pub header_sized_recv: bool,
    /// How uploads leave the cores (`runtime::send_path`): splice from the file or copy
    /// from the mapping; `Auto` splices only to remotes on other hosts. Copy by default:
    /// on this machine's loopback and veth paths splicing costs the seeder more, not
    /// less (the module's numbers), and it is yet to be measured over a NIC.
    pub send_path: crate::runtime::SendPath,
}

impl Default for NodeTuning {
    fn default() -> Self {
        NodeTuning {
            header_sized_recv: true,
            send_path: crate::runtime::SendPath::Copy,
        }
    }
}

/// Racks (issue 11): the fleet's topology and, if given, this host's rack by name (else
/// the node finds it by its own address, see `node::racks`). A downloader marks
/// connections to rack-mates (not to seeders) for rack-aware picking.
#[derive(Debug, Clone)]
pub struct NodeRacks {
    pub topology: Arc<Topology>,
    pub rack: Option<String>,
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub mode: Mode,
    pub info_hash: [u8; 20],
    pub lengths: Lengths,
    pub piece_hashes: Arc<Vec<[u8; 20]>>,
    pub files: Vec<FileSpec>,
    /// Directory the file paths are relative to.
    pub root: PathBuf,
    pub listen: SocketAddr,
    pub cores: usize,
    pub hash_threads: usize,
    pub trackers: Vec<String>,
    /// Peers to dial at start, besides what trackers return.
    pub peers: Vec<SocketAddr>,
    /// A downloader keeps seeding this long after it completes.
    pub linger: Duration,
    pub seed_until: SeedUntil,
    /// Seeder: skip the start-up hash check of the data.
    pub trust_data: bool,
    /// Give up when no piece was verified for this long while incomplete.
    pub stall_timeout: Duration,
    pub max_connections: usize,
    pub peer: PeerConfig,
    pub swarm: SwarmConfig,
    pub tuning: NodeTuning,
    /// Port announced to trackers when it differs from the listening port (NAT); 0 = same.
    pub announce_port: u16,
    /// Downloads: where the resume record lives (`None`: keep none, hash everything on
    /// disk at start). Seeders ignore it.
    pub resume: Option<ResumeConfig>,
    /// Downloads: a release already on the host to fill pieces from before the swarm is
    /// asked (see [`crate::reuse`]). Seeders ignore it.
    pub base: Option<crate::reuse::Base>,
    /// Racks of the fleet, if known (see [`NodeRacks`]).
    pub racks: Option<NodeRacks>,
}

impl NodeConfig {
    /// A node of `mode` for one torrent's payload under `root`, everything else at the
    /// quietest setting (any address, one core, no trackers or peers, no linger, resume,
    /// base or racks): a starting point for callers that set a few fields, such as tests.
    pub fn new(
        mode: Mode,
        info_hash: [u8; 20],
        lengths: Lengths,
        piece_hashes: Arc<Vec<[u8; 20]>>,
        files: Vec<FileSpec>,
        root: PathBuf,
    ) -> NodeConfig {
        NodeConfig {
            mode,
            info_hash,
            lengths,
            piece_hashes,
            files,
            root,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            cores: 1,
            hash_threads: 1,
            trackers: Vec::new(),
            peers: Vec::new(),
            linger: Duration::ZERO,
            seed_until: SeedUntil::Stopped,
            trust_data: false,
            stall_timeout: Duration::from_secs(60),
            max_connections: 64,
            peer: PeerConfig::default(),
            swarm: SwarmConfig::default(),
            tuning: NodeTuning::default(),
            announce_port: 0,
            resume: None,
            base: None,
            racks: None,
        }
    }
}
