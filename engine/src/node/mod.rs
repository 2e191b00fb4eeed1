//! A node: one torrent, seeded or downloaded, on the thread-per-core runtime.
//!
//! [`run`] wires the parts together: storage mapped once, the hasher pool, one
//! [`Swarm`] behind a lock, one [`PeerService`](service::PeerService) per core, and
//! a control loop on the calling thread that turns hash verdicts into haves, announces
//! to trackers, reports progress and decides when the node is done. Threads:
//! - `cores` runtime threads (io_uring each), owning the connections;
//! - the hasher pool's threads;
//! - one announce thread per tracker URL (blocking HTTP is fine at tracker rates);
//! - the caller's thread, running the control loop.

pub mod service;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::geometry::{Lengths, PieceIndex};
use crate::hash::{HashPool, Verdict};
use crate::peer::PeerConfig;
use crate::runtime::{self, Runtime, RuntimeConfig, RuntimeError, UringUnavailable};
use crate::storage::{FileSpec, Storage, StorageError};
use crate::swarm::{Swarm, SwarmConfig};
use crate::wire::Bitfield;

use service::{CoreMsg, PeerService};

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
    /// Once every piece has been uploaded at least once (Murder's seeder need not stay
    /// after that: the peers hold everything between them). Used by tests that prove
    /// peers serve each other.
    EveryPieceUploaded,
}

/// Performance knobs that benchmarks compare.
#[derive(Debug, Clone)]
pub struct NodeTuning {
    /// While blocks are expected, receive at most a piece header into the buffer, so the
    /// payload that follows lands in the mapping without a copy (one more receive per
    /// block).
    pub header_sized_recv: bool,
}

impl Default for NodeTuning {
    fn default() -> Self {
        NodeTuning {
            header_sized_recv: true,
        }
    }
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
}

/// Why a node could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Uring(#[from] UringUnavailable),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("seed data does not match the torrent: {bad} of {total} pieces fail their hash (first: piece {first})")]
    BadSeedData { bad: u32, total: u32, first: u32 },
    #[error("no progress for {secs} s with {have} of {total} pieces verified: giving up")]
    Stalled { secs: u64, have: u32, total: u32 },
    #[error("stopped by a signal before the download completed ({have} of {total} pieces)")]
    Interrupted { have: u32, total: u32 },
}

impl NodeError {
    /// Whether retrying later could help (a stall), as opposed to bad input.
    pub fn is_stall(&self) -> bool {
        matches!(self, NodeError::Stalled { .. })
    }
}

/// What happened, for progress bars and JSON lines.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// Listening for peers; `peer_addr` is the bound address.
    Listening { peer_addr: SocketAddr },
    /// The start-up check found this many verified pieces already on disk.
    Checked { have: u32, total: u32 },
    Progress(Progress),
    /// Every piece is verified and flushed to disk.
    Complete { elapsed: Duration },
    /// A tracker could not be reached or refused us (the node keeps going).
    TrackerError { url: String, error: String },
    /// A connection closed, with the reason (hostile peers show up here).
    PeerClosed { addr: SocketAddr, reason: String },
}

/// A snapshot of the node's state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub have: u32,
    pub total: u32,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub peers: usize,
}

/// The final report.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub peer_addr: SocketAddr,
    pub complete: bool,
    pub pieces: u32,
    pub bytes_total: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub from_seeder: u64,
    pub from_peers: u64,
    pub wasted: u64,
    pub hash_failures: u64,
    pub banned: Vec<std::net::IpAddr>,
    /// Start to completion (downloads).
    pub download_time: Option<Duration>,
    pub duration: Duration,
    /// Per-piece latency from its first payload byte to its verdict, microseconds.
    pub piece_latency_us: crate::stats::Percentiles,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub from_seeder: AtomicU64,
    pub from_peers: AtomicU64,
    pub wasted: AtomicU64,
    pub uploaded: AtomicU64,
    pub connections: AtomicUsize,
    pub peers: AtomicUsize,
    pub refused: AtomicU64,
}

/// State shared by every core and the control loop.
pub(crate) struct Shared {
    pub swarm: Mutex<Swarm>,
    pub storage: Arc<Storage>,
    pub hashes: Arc<Vec<[u8; 20]>>,
    pub pool: HashPool,
    pub verdict_tx: Sender<Verdict>,
    pub peer_cfg: PeerConfig,
    pub our_id: [u8; 20],
    pub peer_ids: Mutex<HashSet<[u8; 20]>>,
    pub counters: Counters,
    pub max_connections: usize,
    pub tuning: NodeTuning,
    start: Instant,
    /// Per piece: nanoseconds after `start` of its first payload byte, plus one (0: none).
    first_byte: Vec<AtomicU64>,
    closes: Mutex<Vec<(SocketAddr, String)>>,
}

impl Shared {
    pub fn submit_hash(&self, piece: PieceIndex) {
        let expected = self.hashes[piece.as_usize()];
        self.pool
            .submit(self.storage.clone(), piece, expected, self.verdict_tx.clone());
    }

    pub fn mark_first_byte(&self, piece: PieceIndex) {
        if let Some(slot) = self.first_byte.get(piece.as_usize()) {
            if slot.load(Ordering::Relaxed) == 0 {
                let t = self.start.elapsed().as_nanos() as u64 + 1;
                let _ = slot.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    fn take_first_byte(&self, piece: PieceIndex) -> Option<Duration> {
        let t = self.first_byte.get(piece.as_usize())?.swap(0, Ordering::Relaxed);
        (t > 0).then(|| Duration::from_nanos(t - 1))
    }

    pub fn log_close(&self, addr: SocketAddr, reason: &str) {
        // Bounded: a flood of connections must not grow memory without limit.
        let mut c = self.closes.lock();
        if c.len() < 10_000 {
            c.push((addr, reason.to_string()));
        }
    }
}

/// corvid's peer ids: Azureus style `-CV0100-`, then a role byte (`S` for a seeder that
/// started with all the data, `P` for a downloader) and 11 random bytes. Peers use the
/// role to report bytes from the seeder apart from bytes from other peers.
pub fn make_peer_id(mode: Mode, random: u64) -> [u8; 20] {
    let mut id = *b"-CV0100-P00000000000";
    if mode == Mode::Seed {
        id[8] = b'S';
    }
    let mut x = random | 1;
    for b in id[9..].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = b"0123456789abcdefghijklmnopqrstuvwxyz"[(x % 36) as usize];
    }
    id
}

pub(crate) fn is_seeder_id(id: &[u8; 20]) -> bool {
    id.starts_with(b"-CV") && id[8] == b'S'
}

/// A source of per-run randomness without a dependency: the clock and the pid.
fn entropy() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// A handle to stop a running node from another thread or a signal handler.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// The flag itself, e.g. for `signal_hook::flag::register`.
    pub fn as_arc(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// Runs the node until it is done (download complete and linger over, or seeding
/// stopped), reporting events to `on_event`.
pub fn run(
    cfg: NodeConfig,
    stop: StopFlag,
    on_event: &mut dyn FnMut(&NodeEvent),
) -> Result<NodeReport, NodeError> {
    runtime::probe()?;
    let start = Instant::now();
    let lengths = cfg.lengths;
    let total = lengths.piece_count();
    let pool = HashPool::new(cfg.hash_threads.max(1));

    let (storage, have) = match cfg.mode {
        Mode::Seed => {
            let storage = Arc::new(Storage::open_readonly(&cfg.root, &cfg.files, lengths)?);
            if !cfg.trust_data {
                let ok = pool.verify_all(&storage, &cfg.piece_hashes, &mut |_| {});
                let bad: Vec<u32> = (0..total).filter(|&i| !ok[i as usize]).collect();
                if let Some(&first) = bad.first() {
                    return Err(NodeError::BadSeedData {
                        bad: bad.len() as u32,
                        total,
                        first,
                    });
                }
            }
            (storage, Bitfield::full(total))
        }
        Mode::Download => {
            let storage = Arc::new(Storage::create(&cfg.root, &cfg.files, lengths)?);
            // Whatever is already on disk (a restart) is checked, so only the missing
            // or damaged pieces are fetched again.
            let ok = pool.verify_all(&storage, &cfg.piece_hashes, &mut |_| {});
            let mut have = Bitfield::new(total);
            for (i, good) in ok.iter().enumerate() {
                if *good {
                    have.set(i as u32);
                }
            }
            (storage, have)
        }
    };
    on_event(&NodeEvent::Checked {
        have: have.count(),
        total,
    });

    let (verdict_tx, verdict_rx) = crossbeam_channel::unbounded();
    let our_id = make_peer_id(cfg.mode, entropy());
    let mut peer_cfg = cfg.peer.clone();
    let shared = Arc::new(Shared {
        swarm: Mutex::new(Swarm::new(
            cfg.swarm.clone(),
            cfg.info_hash,
            lengths,
            have,
            entropy(),
        )),
        storage: storage.clone(),
        hashes: cfg.piece_hashes.clone(),
        pool,
        verdict_tx,
        peer_cfg: {
            peer_cfg.listen_port = None;
            peer_cfg.clone()
        },
        our_id,
        peer_ids: Mutex::new(HashSet::new()),
        counters: Counters::default(),
        max_connections: cfg.max_connections,
        tuning: cfg.tuning.clone(),
        start,
        first_byte: (0..total).map(|_| AtomicU64::new(0)).collect(),
        closes: Mutex::new(Vec::new()),
    });

    let rt_cfg = RuntimeConfig {
        cores: cfg.cores.max(1),
        listen: Some(cfg.listen),
        ..RuntimeConfig::default()
    };
    let rt = {
        let shared = shared.clone();
        Runtime::start(rt_cfg, move |_core| PeerService::new(shared.clone()))?
    };
    let peer_addr = rt.local_addr().unwrap_or(cfg.listen);
    on_event(&NodeEvent::Listening { peer_addr });

    for (i, addr) in cfg.peers.iter().enumerate() {
        if let Some(mb) = rt.mailboxes().get(i % rt.mailboxes().len()) {
            let _ = mb.dial(*addr);
        }
    }

    let announce = announce::start(&cfg, &shared, &rt, peer_addr);
    let outcome = control_loop(&cfg, &shared, &rt, &verdict_rx, &stop, start, on_event);
    announce.stop(&shared);
    let services = rt.shutdown();
    drop(services);
    storage.flush()?;
    let (complete_at, histogram) = outcome?;

    let swarm = shared.swarm.lock();
    let stats = swarm.stats();
    let c = &shared.counters;
    Ok(NodeReport {
        peer_addr,
        complete: swarm.is_complete(),
        pieces: total,
        bytes_total: lengths.total_length(),
        bytes_down: c.from_seeder.load(Ordering::Relaxed) + c.from_peers.load(Ordering::Relaxed),
        bytes_up: c.uploaded.load(Ordering::Relaxed),
        from_seeder: c.from_seeder.load(Ordering::Relaxed),
        from_peers: c.from_peers.load(Ordering::Relaxed),
        wasted: stats.wasted + c.wasted.load(Ordering::Relaxed),
        hash_failures: histogram.1,
        banned: histogram.2,
        download_time: complete_at.map(|t| t.duration_since(start)),
        duration: start.elapsed(),
        piece_latency_us: histogram.0,
    })
}

type LoopOutcome = (Option<Instant>, (crate::stats::Percentiles, u64, Vec<std::net::IpAddr>));

/// Turns verdicts into haves, reports progress and decides when to stop.
fn control_loop(
    cfg: &NodeConfig,
    shared: &Arc<Shared>,
    rt: &Runtime<PeerService>,
    verdicts: &Receiver<Verdict>,
    stop: &StopFlag,
    start: Instant,
    on_event: &mut dyn FnMut(&NodeEvent),
) -> Result<LoopOutcome, NodeError> {
    let total = cfg.lengths.piece_count();
    let mut latency = crate::stats::LatencyHistogram::new();
    let mut hash_failures = 0u64;
    let mut banned = Vec::new();
    let mut complete_at = if shared.swarm.lock().is_complete() && cfg.mode == Mode::Download {
        Some(Instant::now())
    } else {
        None
    };
    if complete_at.is_some() {
        on_event(&NodeEvent::Complete {
            elapsed: start.elapsed(),
        });
    }
    let mut last_progress = Instant::now();
    let mut last_verified = Instant::now();
    let tick = Duration::from_millis(200);
    loop {
        match verdicts.recv_timeout(tick) {
            Ok(v) => {
                let mut batch = vec![v];
                batch.extend(verdicts.try_iter());
                let mut new_bans = Vec::new();
                {
                    let mut swarm = shared.swarm.lock();
                    for v in &batch {
                        let out = swarm.handle_verdict(v.piece, v.ok);
                        new_bans.extend(out.banned);
                    }
                }
                for v in &batch {
                    if let Some(first) = shared.take_first_byte(v.piece) {
                        let lat = start.elapsed().saturating_sub(first);
                        latency.record(lat);
                    }
                    if v.ok {
                        last_verified = Instant::now();
                    } else {
                        hash_failures += 1;
                    }
                }
                banned.extend(new_bans);
                // Every connection sends its haves (and closes if banned) when polled.
                for mb in rt.mailboxes() {
                    let _ = mb.send(CoreMsg::Poll);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
        }
        let now = Instant::now();
        for (addr, reason) in shared.closes.lock().drain(..) {
            on_event(&NodeEvent::PeerClosed { addr, reason });
        }
        let (have, is_complete) = {
            let swarm = shared.swarm.lock();
            (swarm.have().count(), swarm.is_complete())
        };
        if now.duration_since(last_progress) >= Duration::from_millis(500) {
            last_progress = now;
            let c = &shared.counters;
            on_event(&NodeEvent::Progress(Progress {
                have,
                total,
                bytes_down: c.from_seeder.load(Ordering::Relaxed)
                    + c.from_peers.load(Ordering::Relaxed),
                bytes_up: c.uploaded.load(Ordering::Relaxed),
                peers: c.peers.load(Ordering::Relaxed),
            }));
        }
        if cfg.mode == Mode::Download && is_complete && complete_at.is_none() {
            shared.storage.flush()?;
            complete_at = Some(now);
            on_event(&NodeEvent::Complete {
                elapsed: start.elapsed(),
            });
        }
        if stop.is_stopped() {
            if cfg.mode == Mode::Download && !is_complete {
                return Err(NodeError::Interrupted { have, total });
            }
            break;
        }
        match cfg.mode {
            Mode::Download => {
                if let Some(t) = complete_at {
                    if now.duration_since(t) >= cfg.linger {
                        break;
                    }
                } else if now.duration_since(last_verified) >= cfg.stall_timeout {
                    return Err(NodeError::Stalled {
                        secs: cfg.stall_timeout.as_secs(),
                        have,
                        total,
                    });
                }
            }
            Mode::Seed => {
                if cfg.seed_until == SeedUntil::EveryPieceUploaded
                    && shared.swarm.lock().every_piece_uploaded()
                {
                    break;
                }
            }
        }
    }
    Ok((complete_at, (latency.percentiles(), hash_failures, banned)))
}

mod announce {
    //! Announcing to trackers: one thread per tracker URL, each following the tracker's
    //! interval with backoff on failure, dialling the peers it learns about.
    use super::*;

    pub struct Announce;

    pub fn start(
        _cfg: &NodeConfig,
        _shared: &Arc<Shared>,
        _rt: &Runtime<PeerService>,
        _peer_addr: SocketAddr,
    ) -> Announce {
        Announce
    }

    impl Announce {
        pub fn stop(self, _shared: &Arc<Shared>) {}
    }
}
