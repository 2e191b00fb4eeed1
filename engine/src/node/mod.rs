//! A node: one torrent, seeded or downloaded, on the thread-per-core runtime.
//!
//! [`run`] wires the parts together: storage mapped once, the hasher pool, one
//! [`Swarm`] behind a lock, one [`PeerService`](service::PeerService) per core, and
//! a control loop on the calling thread that turns hash verdicts into haves, announces
//! to trackers, reports progress and decides when the node is done. Threads:
//! - `cores` runtime threads (io_uring each), owning the connections;
//! - the hasher pool's threads;
//! - one announce thread per tracker URL (blocking HTTP is fine at tracker rates);
//! - a downloader's resume-record thread ([`resume`]: which pieces are verified, so a
//!   restart need not hash them again), writing at most about once a second;
//! - the caller's thread, running the control loop.

pub mod resume;
pub mod service;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use std::net::IpAddr;

use crate::geometry::{Lengths, PieceIndex, BLOCK_SIZE};
use crate::hash::{HashPool, Verdict};
use crate::peer::PeerConfig;
use crate::runtime::{self, Runtime, RuntimeConfig, RuntimeError, UringUnavailable};
use crate::stats::{Report, TransferStats};
use crate::storage::{FileSpec, Storage, StorageError};
use crate::swarm::{Swarm, SwarmConfig};
use crate::wire::Bitfield;

use resume::{Loaded, RecordWriter, ResumeConfig, ResumeReport};
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
    /// Downloads: where the resume record lives (`None`: keep none, hash everything on
    /// disk at start). Seeders ignore it.
    pub resume: Option<ResumeConfig>,
    /// Downloads: a release already on the host to fill pieces from before the swarm is
    /// asked (see [`crate::reuse`]). Seeders ignore it.
    pub base: Option<crate::reuse::Base>,
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
    Listening {
        peer_addr: SocketAddr,
    },
    /// The start-up check found this many verified pieces already on disk; `resume` says
    /// how many were kept on the resume record's word and how many were hashed.
    Checked {
        have: u32,
        total: u32,
        resume: ResumeReport,
    },
    /// Something went wrong that the node works around (a resume record that cannot be
    /// written); reported once, the node keeps going.
    Warning {
        message: String,
    },
    Progress(Progress),
    /// Every piece is verified and flushed to disk.
    Complete {
        elapsed: Duration,
    },
    /// A tracker could not be reached or refused us (the node keeps going).
    TrackerError {
        url: String,
        error: String,
    },
    /// A connection closed, with the reason (hostile peers show up here).
    PeerClosed {
        addr: SocketAddr,
        reason: String,
    },
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
    /// Payload bytes dropped: end-game duplicates and pieces that failed their hash.
    pub wasted: u64,
    /// Addresses banned for sending data that failed its hash.
    pub banned: Vec<IpAddr>,
    /// Start to completion (downloads).
    pub download_time: Option<Duration>,
    /// Bytes, seeder vs peers, piece latency percentiles.
    pub transfer: Report,
    /// How the start-up check went (resume record used or not, pieces hashed).
    pub resume: ResumeReport,
}

impl NodeReport {
    /// One JSON object: the transfer report's fields, then the node's own.
    pub fn to_json(&self) -> String {
        crate::stats::to_json_line(&self.json())
    }

    /// The JSON shape, for lines that embed the report (`{"event":"done","report":..}`).
    pub fn json(&self) -> NodeReportJson<'_> {
        NodeReportJson {
            transfer: self.transfer.json(),
            peer_addr: self.peer_addr,
            complete: self.complete,
            pieces: self.pieces,
            bytes_total: self.bytes_total,
            wasted: self.wasted,
            banned: &self.banned,
            download_s: self.download_time,
            resume: &self.resume,
        }
    }
}

/// The JSON shape of a [`NodeReport`], fields in the order printed.
#[derive(serde::Serialize)]
pub struct NodeReportJson<'a> {
    #[serde(flatten)]
    pub transfer: crate::stats::ReportJson<'a>,
    pub peer_addr: SocketAddr,
    pub complete: bool,
    pub pieces: u32,
    pub bytes_total: u64,
    pub wasted: u64,
    pub banned: &'a [IpAddr],
    #[serde(serialize_with = "crate::stats::json_seconds")]
    pub download_s: Option<Duration>,
    pub resume: &'a ResumeReport,
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
    pub dials: AtomicU64,
}

/// How many inbound connections one remote address may hold, and how many of those may
/// still be in their handshake (in a private swarm: not yet proven the secret), for a node
/// allowed `max_connections`. Without these, one host opening idle sockets took every slot
/// (issue 12): now it gets at most a quarter of them half-open (4 to 32) and half of them
/// in all, while peers that complete their handshake on one address (a test fleet on
/// loopback) still fit many to a host.
pub(crate) fn per_ip_limits(max_connections: usize) -> IpLimits {
    let handshaking = (max_connections / 4).clamp(4, 32);
    IpLimits {
        open: (max_connections / 2).max(handshaking),
        handshaking,
    }
}

/// See [`per_ip_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpLimits {
    pub open: usize,
    pub handshaking: usize,
}

/// One remote address's inbound connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpSlots {
    pub open: usize,
    pub handshaking: usize,
}

/// The inbound connections per remote address, against [`IpLimits`].
#[derive(Debug)]
pub(crate) struct PerIp {
    limits: IpLimits,
    slots: HashMap<IpAddr, IpSlots>,
}

impl PerIp {
    pub fn new(limits: IpLimits) -> Self {
        PerIp {
            limits,
            slots: HashMap::new(),
        }
    }

    /// Takes a slot for a new inbound connection from `ip` (in its handshake), if the
    /// address is within its limits.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        let s = self.slots.entry(ip).or_default();
        if s.open >= self.limits.open || s.handshaking >= self.limits.handshaking {
            return false;
        }
        s.open += 1;
        s.handshaking += 1;
        true
    }

    /// A connection from `ip` finished its handshake.
    pub fn handshake_done(&mut self, ip: IpAddr) {
        if let Some(s) = self.slots.get_mut(&ip) {
            s.handshaking = s.handshaking.saturating_sub(1);
        }
    }

    /// A connection from `ip` closed; `handshaking` if it never finished its handshake.
    pub fn release(&mut self, ip: IpAddr, handshaking: bool) {
        if let Some(s) = self.slots.get_mut(&ip) {
            s.open = s.open.saturating_sub(1);
            if handshaking {
                s.handshaking = s.handshaking.saturating_sub(1);
            }
            if s.open == 0 {
                self.slots.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn get(&self, ip: IpAddr) -> IpSlots {
        self.slots.get(&ip).copied().unwrap_or_default()
    }
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
    /// Inbound connections per remote address (see [`per_ip_limits`]).
    pub per_ip: Mutex<PerIp>,
    pub tuning: NodeTuning,
    start: Instant,
    /// Per piece: nanoseconds after `start` of its first payload byte, plus one (0: none).
    first_byte: Vec<AtomicU64>,
    /// Events from the cores and announce threads, for the control loop to report.
    events: Mutex<Vec<NodeEvent>>,
    /// Addresses with an outbound connection open or being dialled, so announces do not
    /// dial the same peer twice.
    pub dialled: Mutex<HashSet<SocketAddr>>,
    /// Addresses whose outbound connection turned out to reach a peer already connected
    /// (it dialled us too, and its connection won): not dialled again while that peer
    /// stays connected, or the redial of `--peer` addresses and every announce would open
    /// and drop a duplicate connection each time.
    pub same_peer: Mutex<HashMap<SocketAddr, [u8; 20]>>,
    /// Which 16 KiB blocks were uploaded at least once (a bitset), and how many.
    uploaded_blocks: Vec<AtomicU64>,
    uploaded_count: AtomicU64,
    total_blocks: u64,
    /// Key and counter of the private-swarm nonces (see [`Shared::next_nonce`]).
    nonce_key: [u8; 20],
    nonce_counter: AtomicU64,
}

impl Shared {
    /// A fresh challenge for one connection: SHA-1 of a per-run random key and a counter,
    /// so nonces never repeat within a run and cannot be guessed across runs.
    pub fn next_nonce(&self) -> [u8; 16] {
        use sha1::{Digest, Sha1};
        let n = self.nonce_counter.fetch_add(1, Ordering::Relaxed);
        let d = Sha1::new()
            .chain_update(self.nonce_key)
            .chain_update(n.to_le_bytes())
            .finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }

    pub fn submit_hash(&self, piece: PieceIndex) {
        let expected = self.hashes[piece.as_usize()];
        self.pool.submit(
            self.storage.clone(),
            piece,
            expected,
            self.verdict_tx.clone(),
        );
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
        let t = self
            .first_byte
            .get(piece.as_usize())?
            .swap(0, Ordering::Relaxed);
        (t > 0).then(|| Duration::from_nanos(t - 1))
    }

    pub fn log_close(&self, addr: SocketAddr, reason: &str) {
        self.push_event(NodeEvent::PeerClosed {
            addr,
            reason: reason.to_string(),
        });
    }

    pub fn push_event(&self, ev: NodeEvent) {
        // Bounded: a flood of connections must not grow memory without limit.
        let mut q = self.events.lock();
        if q.len() < 10_000 {
            q.push(ev);
        }
    }

    /// Records an uploaded block (all 16 KiB blocks it covers).
    pub fn mark_uploaded(&self, lengths: &Lengths, block: crate::geometry::BlockRef) {
        let per_piece = lengths.piece_length() / u64::from(BLOCK_SIZE);
        let first = u64::from(block.piece.get()) * per_piece + u64::from(block.offset / BLOCK_SIZE);
        let last = first + u64::from((block.len - 1) / BLOCK_SIZE);
        for b in first..=last {
            let Some(word) = self.uploaded_blocks.get((b / 64) as usize) else {
                return;
            };
            let bit = 1u64 << (b % 64);
            if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                self.uploaded_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn every_piece_uploaded(&self) -> bool {
        self.uploaded_count.load(Ordering::Relaxed) >= self.total_blocks
    }

    /// Whether every piece was announced (verified, `have`) by some peer. Blocks uploaded
    /// once are not enough to leave: the blocks of one piece may have gone to different
    /// peers, or still be in flight when our sockets close, and then no peer can ever
    /// complete that piece. Sticky, because a peer that completes closes its connection
    /// to us (both sides complete) and its availability goes with it.
    pub fn peers_hold_every_piece(&self) -> bool {
        self.swarm.lock().every_piece_announced()
    }

    /// Payload bytes still missing, for announces.
    pub fn left(&self) -> u64 {
        let swarm = self.swarm.lock();
        let l = swarm.lengths();
        l.pieces()
            .filter(|p| !swarm.have().get(p.get()))
            .map(|p| u64::from(l.piece_size(p)))
            .sum()
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

/// The key of this run's nonces: 20 bytes from the kernel's random source, or, where that
/// cannot be read, the clock and pid (then nonces are still unique per run, if guessable).
fn nonce_key() -> [u8; 20] {
    use std::io::Read;
    let mut key = [0u8; 20];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if read.is_err() {
        key[..8].copy_from_slice(&entropy().to_le_bytes());
    }
    key
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

    let (storage, have, resume_report) = match cfg.mode {
        Mode::Seed => {
            let storage = Arc::new(Storage::open_readonly(&cfg.root, &cfg.files, lengths)?);
            let mut report = ResumeReport::off();
            if cfg.trust_data {
                report.trusted_pieces = total;
            } else {
                let ok = pool.verify_all(&storage, &cfg.piece_hashes, &mut |_| {});
                let bad: Vec<u32> = (0..total).filter(|&i| !ok[i as usize]).collect();
                if let Some(&first) = bad.first() {
                    return Err(NodeError::BadSeedData {
                        bad: bad.len() as u32,
                        total,
                        first,
                    });
                }
                report.rechecked_pieces = total;
                report.rechecked_bytes = lengths.total_length();
            }
            (storage, Bitfield::full(total), report)
        }
        Mode::Download => {
            let (storage, have, report) = start_download(&cfg, &pool)?;
            (storage, have, report)
        }
    };
    on_event(&NodeEvent::Checked {
        have: have.count(),
        total,
        resume: resume_report.clone(),
    });

    // The record is rewritten straight away: the start-up check may have verified pieces
    // the old record did not list, and `Storage::create` gave every file new times.
    let mut record = match (&cfg.resume, cfg.mode) {
        (Some(rc), Mode::Download) => {
            let mut w = RecordKeeper::new(RecordWriter::new(rc.path.clone(), cfg.info_hash));
            if let Some(message) = w.write(&storage, &have, true) {
                on_event(&NodeEvent::Warning { message });
            }
            Some(w)
        }
        _ => None,
    };

    let (verdict_tx, verdict_rx) = crossbeam_channel::unbounded();
    let total_blocks: u64 = lengths
        .pieces()
        .map(|p| u64::from(lengths.blocks_in_piece(p)))
        .sum();
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
        per_ip: Mutex::new(PerIp::new(per_ip_limits(cfg.max_connections))),
        tuning: cfg.tuning.clone(),
        start,
        first_byte: (0..total).map(|_| AtomicU64::new(0)).collect(),
        events: Mutex::new(Vec::new()),
        dialled: Mutex::new(HashSet::new()),
        same_peer: Mutex::new(HashMap::new()),
        uploaded_blocks: (0..total_blocks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect(),
        uploaded_count: AtomicU64::new(0),
        total_blocks,
        nonce_key: nonce_key(),
        nonce_counter: AtomicU64::new(0),
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

    for addr in &cfg.peers {
        dial(&shared, rt.mailboxes(), *addr);
    }

    let announce = announce::start(&cfg, &shared, &rt, peer_addr);
    let prefault = (cfg.mode == Mode::Download).then(|| Prefault::start(shared.clone()));
    let keep_when_complete = !matches!(
        cfg.resume,
        Some(ResumeConfig {
            keep_when_complete: false,
            ..
        })
    );
    let record_interval = cfg
        .resume
        .as_ref()
        .map_or(ResumeConfig::DEFAULT_INTERVAL, |r| r.interval);
    let record_thread = record
        .take()
        .map(|w| RecordThread::start(shared.clone(), w, keep_when_complete, record_interval));
    let outcome = control_loop(
        &cfg,
        &shared,
        &rt,
        &verdict_rx,
        &stop,
        start,
        prefault.as_ref(),
        record_thread.as_ref(),
        on_event,
    );
    if let Some(p) = prefault {
        p.stop();
    }
    announce.stop(&shared);
    if let Some(message) = stop_cores(rt) {
        on_event(&NodeEvent::Warning { message });
    }
    let keeper = record_thread.map(RecordThread::stop);
    // Warnings the cores or the record thread raised after the control loop's last look.
    for ev in std::mem::take(&mut *shared.events.lock()) {
        if matches!(ev, NodeEvent::Warning { .. }) {
            on_event(&ev);
        }
    }
    storage.flush()?;
    // The last record: whatever was verified until the end (an interrupted or stalled
    // download resumes from here too).
    if let Some(mut w) = keeper {
        let have = shared.swarm.lock().have().clone();
        // Re-stamped even without new pieces: the files' times may have moved since the
        // last record (exec bits applied on completion change the ctime).
        let warning = if have.is_full() && !keep_when_complete {
            w.retire()
        } else {
            w.write(&storage, &have, true)
        };
        if let Some(message) = warning {
            on_event(&NodeEvent::Warning { message });
        }
    }
    let (complete_at, mut stats, banned) = outcome?;

    let swarm = shared.swarm.lock();
    let c = &shared.counters;
    stats.record_download(c.from_seeder.load(Ordering::Relaxed), true);
    stats.record_download(c.from_peers.load(Ordering::Relaxed), false);
    stats.record_upload(c.uploaded.load(Ordering::Relaxed));
    stats.finish(Instant::now());
    Ok(NodeReport {
        peer_addr,
        complete: swarm.is_complete(),
        pieces: total,
        bytes_total: lengths.total_length(),
        wasted: swarm.stats().wasted + c.wasted.load(Ordering::Relaxed),
        banned,
        download_time: complete_at.map(|t| t.duration_since(start)),
        transfer: stats.report(Instant::now()),
        resume: resume_report,
    })
}

/// Stops the cores. A failure (a core that panicked, buffers leaked by a timed-out shutdown)
/// becomes a warning rather than the run's error: every piece counted was hash-verified and
/// written through the shared mapping, so the outcome stands, but the operator must see that
/// something broke (it used to be dropped).
fn stop_cores<S: runtime::Service>(rt: Runtime<S>) -> Option<String> {
    rt.shutdown()
        .err()
        .map(|e| format!("stopping the network cores: {e}"))
}

/// A download's start: reads the resume record, stamps the files before
/// [`Storage::create`] touches them (its `fallocate` updates their times), creates and
/// maps the storage, and hashes whatever the record cannot vouch for.
fn start_download(
    cfg: &NodeConfig,
    pool: &HashPool,
) -> Result<(Arc<Storage>, Bitfield, ResumeReport), NodeError> {
    let lengths = cfg.lengths;
    let file_lengths: Vec<u64> = cfg.files.iter().map(|f| f.length).collect();
    let loaded = Loaded::read(cfg.resume.as_ref(), lengths.piece_count(), cfg.files.len());
    let before: Vec<Option<resume::FileStamp>> = cfg
        .files
        .iter()
        .map(|f| resume::FileStamp::of_path(&cfg.root.join(&f.path)))
        .collect();
    let storage = Arc::new(Storage::create(&cfg.root, &cfg.files, lengths)?);
    // A file replaced between the look above and the open in `create` is not the file
    // that was stamped: its pieces are hashed.
    let now: Vec<Option<resume::FileStamp>> = before
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let opened = storage.file_metadata(i).and_then(Result::ok);
            b.filter(|b| opened.is_some_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == b.ino))
        })
        .collect();
    let mut plan = resume::plan(loaded, &cfg.info_hash, lengths, &file_lengths, &now);
    let mut have = plan.trusted;
    if !plan.recheck.is_empty() {
        let ok = pool.verify_pieces(&storage, &cfg.piece_hashes, &plan.recheck, &mut |_| {});
        for p in &plan.recheck {
            if ok[p.as_usize()] {
                have.set(p.get());
            }
        }
    }
    // Before any peer is met, so the first bitfield announces what the base supplied.
    plan.report.reuse = cfg
        .base
        .as_ref()
        .map(|b| crate::reuse::fill(&storage, &cfg.piece_hashes, &mut have, b, pool));
    Ok((storage, have, plan.report))
}

/// A [`RecordWriter`] that reports only its first failure: a disk that is full stays full
/// for a while, and one warning says it.
struct RecordKeeper {
    writer: RecordWriter,
    warned: bool,
    /// The record was removed on completion (release layout): nothing more is written.
    retired: bool,
    /// How long the last write took, to space writes out on slow disks.
    last_took: Duration,
}

impl RecordKeeper {
    fn new(writer: RecordWriter) -> RecordKeeper {
        RecordKeeper {
            writer,
            warned: false,
            retired: false,
            last_took: Duration::ZERO,
        }
    }

    /// Writes the record (see [`RecordWriter::write`] for `restamp`); returns the warning
    /// to report, the first time one fails.
    fn write(&mut self, storage: &Storage, have: &Bitfield, restamp: bool) -> Option<String> {
        if self.retired {
            return None;
        }
        let t = Instant::now();
        let r = self.writer.write(storage, have, restamp);
        self.last_took = t.elapsed();
        match r {
            Ok(_) => None,
            Err(e) if !self.warned => {
                self.warned = true;
                Some(format!("{e}; downloading on without a resume record"))
            }
            Err(_) => None,
        }
    }

    fn retire(&mut self) -> Option<String> {
        if self.retired {
            return None;
        }
        self.retired = true;
        match self.writer.remove() {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

enum RecordMsg {
    /// Write now, with the files' current times (the download completed, and the caller
    /// may have changed the files' modes on that event).
    Now,
}

/// The thread that keeps the resume record current while downloading: at most about
/// once per [`ResumeConfig::interval`] (longer if writes are slow, so they never take
/// more than a few percent of a thread), and only when pieces were verified. It is not a
/// core thread: syncing files and writing the record block.
struct RecordThread {
    thread: std::thread::JoinHandle<RecordKeeper>,
    tx: Sender<RecordMsg>,
}

impl RecordThread {
    fn start(
        shared: Arc<Shared>,
        mut keeper: RecordKeeper,
        keep_when_complete: bool,
        interval: Duration,
    ) -> RecordThread {
        let (tx, rx) = crossbeam_channel::unbounded::<RecordMsg>();
        let thread = std::thread::Builder::new()
            .name("corvid-record".into())
            .spawn(move || {
                loop {
                    let wait = interval.max(keeper.last_took * 20);
                    let restamp = match rx.recv_timeout(wait) {
                        Ok(RecordMsg::Now) => true,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    };
                    let (have, complete) = {
                        let swarm = shared.swarm.lock();
                        (swarm.have().clone(), swarm.is_complete())
                    };
                    let warning = if complete && !keep_when_complete {
                        let w = keeper.retire();
                        if let Some(message) = w {
                            shared.push_event(NodeEvent::Warning { message });
                        }
                        break;
                    } else {
                        keeper.write(&shared.storage, &have, restamp)
                    };
                    if let Some(message) = warning {
                        shared.push_event(NodeEvent::Warning { message });
                    }
                }
                keeper
            })
            .expect("spawn record thread");
        RecordThread { thread, tx }
    }

    /// Asks for a write now (completion).
    fn wake(&self) {
        let _ = self.tx.send(RecordMsg::Now);
    }

    /// Stops the thread and hands back the writer for the final record.
    fn stop(self) -> RecordKeeper {
        drop(self.tx);
        match self.thread.join() {
            Ok(k) => k,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// Most addresses of one tracker response that are dialled (what we ask for: `numwant`
/// 200). A tracker may send ~174,000 in one response; dialling them all would fill every
/// connection slot with whatever the tracker chose.
pub const MAX_TRACKER_PEERS: usize = 200;

/// Whether an address a tracker handed us may be dialled: never port 0, an unspecified,
/// multicast or broadcast address, or one in 0.0.0.0/8; loopback only when
/// `allow_loopback` (see [`loopback_peers_allowed`]), since otherwise a remote tracker
/// could point us at services on our own host.
pub fn dialable(addr: SocketAddr, allow_loopback: bool) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || (ip.is_loopback() && !allow_loopback) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_broadcast() && v4.octets()[0] != 0,
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .is_none_or(|v4| dialable(SocketAddr::new(IpAddr::V4(v4), 1), allow_loopback)),
    }
}

/// Loopback peers from a tracker are dialled only when the tracker itself is on this host
/// (its URL names `localhost`, 127.0.0.0/8 or ::1) or we listen on loopback: then they are
/// peers on this host (a test swarm, the seeder's own), not a remote tracker's pick of our
/// local services.
pub fn loopback_peers_allowed(tracker_url: &str, listen: SocketAddr) -> bool {
    if listen.ip().is_loopback() {
        return true;
    }
    let rest = tracker_url
        .split_once("://")
        .map_or(tracker_url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The addresses of a tracker response worth dialling: not ours, [`dialable`], at most
/// [`MAX_TRACKER_PEERS`].
pub fn tracker_peers_to_dial(
    peers: &[crate::tracker::proto::PeerInfo],
    our_id: &[u8; 20],
    allow_loopback: bool,
) -> Vec<SocketAddr> {
    peers
        .iter()
        .filter(|p| p.peer_id.as_ref() != Some(our_id))
        .map(|p| p.addr)
        .filter(|a| dialable(*a, allow_loopback))
        .take(MAX_TRACKER_PEERS)
        .collect()
}

/// Dials `addr` from the next core in turn, unless a connection to it is open already.
fn dial(shared: &Shared, mailboxes: &[crate::runtime::Mailbox<CoreMsg>], addr: SocketAddr) {
    let reaches = shared.same_peer.lock().get(&addr).copied();
    if reaches.is_some_and(|id| shared.peer_ids.lock().contains(&id)) {
        return;
    }
    if !shared.dialled.lock().insert(addr) {
        return;
    }
    let n = shared.counters.dials.fetch_add(1, Ordering::Relaxed) as usize;
    if let Some(mb) = mailboxes.get(n % mailboxes.len().max(1)) {
        if mb.dial(addr).is_err() {
            shared.dialled.lock().remove(&addr);
        }
    }
}

type LoopOutcome = (Option<Instant>, TransferStats, Vec<IpAddr>);

/// Faults in the download's pages on its own thread, in the order the picker will receive
/// them ([`Swarm::next_pieces`]: started pieces, then rarest first with the swarm's fixed
/// tie-break), at most [`Prefault::WINDOW`] bytes ahead of what is verified, so the
/// io_uring core threads receive into pages that already exist (see
/// [`Storage::prefault`]). Following the picker matters: pieces arrive in a random order,
/// and prefaulting in file order left the core thread faulting most pages itself.
struct Prefault {
    thread: std::thread::JoinHandle<()>,
    done: Arc<AtomicBool>,
}

impl Prefault {
    const WINDOW: u64 = 1 << 30;
    /// Pieces planned per look at the swarm, at least. Each look scans every missing piece
    /// under the swarm lock the core threads take, so a torrent of many pieces plans
    /// a sixty-fourth of them at a time: at most ~64 full scans per download.
    const MIN_BATCH: usize = 16;

    fn start(shared: Arc<Shared>) -> Prefault {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::Builder::new()
            .name("corvid-prefault".into())
            .spawn(move || {
                let lengths = shared.storage.lengths();
                let mut faulted = Bitfield::new(lengths.piece_count());
                let batch = (lengths.piece_count() as usize / 64).max(Self::MIN_BATCH);
                let mut faulted_bytes = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    let (next, verified) = {
                        let swarm = shared.swarm.lock();
                        if swarm.is_complete() {
                            return;
                        }
                        let verified = u64::from(swarm.have().count()) * lengths.piece_length();
                        (swarm.next_pieces(&faulted, batch), verified)
                    };
                    if next.is_empty() || faulted_bytes >= verified + Self::WINDOW {
                        // Woken by the control loop after each verdict; the timeout only
                        // bounds a missed wake-up (and re-plans as availability changes).
                        std::thread::park_timeout(Duration::from_millis(100));
                        continue;
                    }
                    for p in next {
                        if !shared.storage.prefault(p) {
                            return;
                        }
                        faulted.set(p.get());
                        faulted_bytes += u64::from(lengths.piece_size(p));
                    }
                }
            })
            .expect("spawn prefault thread");
        Prefault { thread, done }
    }

    fn wake(&self) {
        self.thread.thread().unpark();
    }

    fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        self.wake();
        let _ = self.thread.join();
    }
}

/// How often peers from the configuration are dialled again when not connected.
const REDIAL_INTERVAL: Duration = Duration::from_secs(2);

fn now_since(t: Instant) -> Duration {
    Instant::now().saturating_duration_since(t)
}

/// Turns verdicts into haves, reports progress and decides when to stop.
#[allow(clippy::too_many_arguments)]
fn control_loop(
    cfg: &NodeConfig,
    shared: &Arc<Shared>,
    rt: &Runtime<PeerService>,
    verdicts: &Receiver<Verdict>,
    stop: &StopFlag,
    start: Instant,
    prefault: Option<&Prefault>,
    record: Option<&RecordThread>,
    on_event: &mut dyn FnMut(&NodeEvent),
) -> Result<LoopOutcome, NodeError> {
    let total = cfg.lengths.piece_count();
    let mut stats = TransferStats::new(start);
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
        if let Some(r) = record {
            r.wake();
        }
    }
    let mut last_progress = Instant::now();
    let mut last_redial = Instant::now();
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
                    let first = shared.take_first_byte(v.piece);
                    if v.ok {
                        last_verified = Instant::now();
                        if let Some(first) = first {
                            stats.record_piece_verified(start.elapsed().saturating_sub(first));
                        }
                    } else {
                        stats.record_piece_failed();
                    }
                }
                banned.extend(new_bans);
                if let Some(p) = prefault {
                    p.wake();
                }
                // Every connection sends its haves (and closes if banned) when polled.
                for mb in rt.mailboxes() {
                    let _ = mb.send(CoreMsg::Poll);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
        }
        let now = Instant::now();
        // Peers given on the command line are dialled again while the download is
        // incomplete and no connection to them is open or being made: a seeder that was
        // not listening yet, a refused or timed-out dial, or a dropped connection must
        // not leave a tracker-less peer stranded.
        if cfg.mode == Mode::Download
            && complete_at.is_none()
            && now_since(last_redial) >= REDIAL_INTERVAL
        {
            last_redial = Instant::now();
            for addr in &cfg.peers {
                dial(shared, rt.mailboxes(), *addr);
            }
        }
        let pending: Vec<NodeEvent> = std::mem::take(&mut *shared.events.lock());
        for ev in &pending {
            on_event(ev);
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
            // Every piece is verified (in the page cache, like any copy tool's result);
            // the msync that makes it durable follows, and `run` returns only after it.
            complete_at = Some(now);
            on_event(&NodeEvent::Complete {
                elapsed: start.elapsed(),
            });
            shared.storage.flush()?;
            if let Some(r) = record {
                r.wake();
            }
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
                    && shared.every_piece_uploaded()
                    && shared.peers_hold_every_piece()
                {
                    break;
                }
            }
        }
    }
    Ok((complete_at, stats, banned))
}

mod announce {
    //! Announcing to trackers: one thread per tracker URL, each following the tracker's
    //! interval with backoff on failure (the sans-IO [`Announcer`] decides when), dialling
    //! the peers it learns about. A tracker that is down does not stop the node: peers
    //! already known keep exchanging pieces, and announces retry.
    use super::*;
    use crate::tracker::client::{announce, Announcer, BackoffPolicy};
    use crate::tracker::proto::AnnounceRequest;
    use std::thread::JoinHandle;

    pub struct Announce {
        stop: Sender<()>,
        threads: Vec<JoinHandle<()>>,
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    pub fn start(
        cfg: &NodeConfig,
        shared: &Arc<Shared>,
        rt: &Runtime<PeerService>,
        peer_addr: SocketAddr,
    ) -> Announce {
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let port = if cfg.announce_port != 0 {
            cfg.announce_port
        } else {
            peer_addr.port()
        };
        let mailboxes: Vec<_> = rt.mailboxes().to_vec();
        let listen = peer_addr;
        let threads = cfg
            .trackers
            .iter()
            .map(|url| {
                let url = url.clone();
                let shared = shared.clone();
                let stop_rx = stop_rx.clone();
                let mailboxes = mailboxes.clone();
                let info_hash = cfg.info_hash;
                std::thread::Builder::new()
                    .name("corvid-announce".into())
                    .spawn(move || {
                        let loopback = loopback_peers_allowed(&url, listen);
                        run_one(
                            &url, info_hash, port, loopback, &shared, &mailboxes, &stop_rx,
                        )
                    })
                    .expect("spawn announce thread")
            })
            .collect();
        Announce { stop, threads }
    }

    fn run_one(
        url: &str,
        info_hash: [u8; 20],
        port: u16,
        loopback: bool,
        shared: &Shared,
        mailboxes: &[crate::runtime::Mailbox<CoreMsg>],
        stop_rx: &Receiver<()>,
    ) {
        let mut ann = Announcer::new(Instant::now(), BackoffPolicy::default());
        let mut told_complete = shared.swarm.lock().is_complete();
        let mut stopping = false;
        loop {
            let now = Instant::now();
            if !told_complete && shared.swarm.lock().is_complete() {
                told_complete = true;
                ann.completed(now);
            }
            if ann.is_due(now) {
                let c = &shared.counters;
                let mut req = AnnounceRequest::new(info_hash, shared.our_id, port, shared.left());
                req.event = ann.event();
                // A private swarm's tracker wants proof of the secret with every announce.
                req.auth = shared
                    .peer_cfg
                    .secret
                    .as_ref()
                    .map(|s| s.announce_proof(&info_hash, &shared.our_id));
                req.uploaded = c.uploaded.load(Ordering::Relaxed);
                req.downloaded =
                    c.from_seeder.load(Ordering::Relaxed) + c.from_peers.load(Ordering::Relaxed);
                req.numwant = Some(200);
                let sent = req.event;
                let timeout = if stopping {
                    Duration::from_secs(1)
                } else {
                    TIMEOUT
                };
                match announce(url, &req, timeout) {
                    Ok(resp) => {
                        ann.on_success(Instant::now(), sent, &resp);
                        if !stopping {
                            for addr in tracker_peers_to_dial(&resp.peers, &shared.our_id, loopback)
                            {
                                super::dial(shared, mailboxes, addr);
                            }
                        }
                    }
                    Err(e) => {
                        let wait = ann.on_failure(Instant::now());
                        shared.push_event(NodeEvent::TrackerError {
                            url: url.to_string(),
                            error: format!("{e} (retrying in {} s)", wait.as_secs()),
                        });
                    }
                }
                if stopping {
                    return;
                }
                continue;
            }
            // Wake for the next announce, a completion (checked every second) or a stop.
            let wait = ann
                .next_due()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            match stop_rx.recv_timeout(wait) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => {
                    stopping = true;
                    ann.stopped(Instant::now());
                }
            }
        }
    }

    impl Announce {
        /// Sends `stopped` to every tracker (bounded by a short timeout) and joins.
        pub fn stop(self, _shared: &Arc<Shared>) {
            drop(self.stop);
            for t in self.threads {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report(download_time: Option<Duration>, reason: Option<&str>) -> NodeReport {
        NodeReport {
            peer_addr: "[::1]:6881".parse().unwrap(),
            complete: true,
            pieces: 4,
            bytes_total: 1000,
            wasted: 7,
            banned: vec!["10.0.0.9".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            download_time,
            transfer: Report {
                label: None,
                elapsed: Duration::from_millis(1500),
                bytes_down: 1000,
                bytes_up: 3,
                bytes_from_seeder: 600,
                bytes_from_peers: 400,
                pieces_verified: 4,
                pieces_failed: 1,
                piece_latency_us: Default::default(),
            },
            resume: ResumeReport {
                record: resume::RecordStatus::Mismatch,
                reason: reason.map(str::to_owned),
                trusted_pieces: 1,
                rechecked_pieces: 3,
                rechecked_bytes: 750,
                reuse: None,
            },
        }
    }

    /// The `done` line's report, byte for byte as corvid has printed it (scripts and the
    /// benches read these fields).
    #[test]
    fn the_report_json_keeps_its_bytes() {
        let r = sample_report(
            Some(Duration::from_micros(1_250_000)),
            Some("a.bin changed"),
        );
        assert_eq!(
            r.to_json(),
            r#"{"elapsed_s":1.5,"bytes_down":1000,"bytes_up":3,"bytes_from_seeder":600,"bytes_from_peers":400,"pieces_verified":4,"pieces_failed":1,"down_rate_bps":666.6666666666666,"piece_latency_us":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"peer_addr":"[::1]:6881","complete":true,"pieces":4,"bytes_total":1000,"wasted":7,"banned":["10.0.0.9","2001:db8::1"],"download_s":1.250000,"resume":{"record":"mismatch","reason":"a.bin changed","trusted_pieces":1,"rechecked_pieces":3,"rechecked_bytes":750}}"#
        );
        let r = sample_report(None, None);
        assert_eq!(
            r.to_json(),
            r#"{"elapsed_s":1.5,"bytes_down":1000,"bytes_up":3,"bytes_from_seeder":600,"bytes_from_peers":400,"pieces_verified":4,"pieces_failed":1,"down_rate_bps":666.6666666666666,"piece_latency_us":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"peer_addr":"[::1]:6881","complete":true,"pieces":4,"bytes_total":1000,"wasted":7,"banned":["10.0.0.9","2001:db8::1"],"download_s":null,"resume":{"record":"mismatch","reason":null,"trusted_pieces":1,"rechecked_pieces":3,"rechecked_bytes":750}}"#
        );
    }
    use crate::runtime::{CloseReason, ConnId, Conns, CoreIo, Direction, RecvIovecs, RecvTarget};
    use crate::runtime::{SendBuf, Service};

    /// A service with a bug: it panics on the first connection, after saying so.
    struct PanicsOnConnect(Sender<()>);

    impl Service for PanicsOnConnect {
        type Conn = ();
        type Msg = ();
        type Error = String;
        fn on_connected(
            &mut self,
            _: &mut CoreIo<'_, ()>,
            _: ConnId,
            _: SocketAddr,
            _: Direction,
            _: Instant,
        ) -> Option<()> {
            let _ = self.0.send(());
            panic!("a bug in the service");
        }
        fn next_recv(&mut self, _: &mut (), _: &mut RecvIovecs<'_>) -> RecvTarget {
            RecvTarget::Pause
        }
        fn on_bytes(
            &mut self,
            _: &mut CoreIo<'_, ()>,
            _: ConnId,
            _: &mut (),
            _: &[u8],
            _: Instant,
        ) -> Result<usize, String> {
            Ok(0)
        }
        fn on_recv_done(
            &mut self,
            _: &mut CoreIo<'_, ()>,
            _: ConnId,
            _: &mut (),
            _: Instant,
        ) -> Result<(), String> {
            Ok(())
        }
        fn next_send(&mut self, _: &mut (), _: &mut SendBuf<'_>) -> bool {
            false
        }
        fn on_mailbox(
            &mut self,
            _: &mut CoreIo<'_, ()>,
            _: &mut Conns<'_, (), String>,
            _: (),
            _: Instant,
        ) {
        }
        fn on_closed(&mut self, _: &mut CoreIo<'_, ()>, _: ConnId, _: (), _: CloseReason<String>) {}
    }

    #[test]
    fn a_core_that_panicked_is_reported_when_the_cores_stop() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cfg = RuntimeConfig {
            cores: 1,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..RuntimeConfig::default()
        };
        let rt = Runtime::start(cfg, move |_| PanicsOnConnect(tx.clone())).unwrap();
        let _client = std::net::TcpStream::connect(rt.local_addr().unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the core accepted the connection");
        let warning = stop_cores(rt).expect("the panic is reported");
        assert!(warning.contains("core 0 thread panicked"), "{warning}");
    }

    #[test]
    fn per_ip_limits_scale_with_the_connection_cap() {
        let l = per_ip_limits(16);
        assert_eq!((l.open, l.handshaking), (8, 4));
        let l = per_ip_limits(512);
        assert_eq!((l.open, l.handshaking), (256, 32));
        let l = per_ip_limits(1);
        assert!(l.open >= l.handshaking && l.handshaking >= 4);
    }

    #[test]
    fn one_address_gets_few_half_open_slots_and_frees_them() {
        let mut p = PerIp::new(IpLimits {
            open: 6,
            handshaking: 3,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(p.admit(a) && p.admit(a) && p.admit(a));
        assert!(
            !p.admit(a),
            "a fourth half-open connection from one address"
        );
        assert!(p.admit(b), "another address is not affected");
        // Finished handshakes free half-open room, up to the address's total.
        for _ in 0..3 {
            p.handshake_done(a);
        }
        assert!(p.admit(a) && p.admit(a) && p.admit(a));
        assert_eq!(
            p.get(a),
            IpSlots {
                open: 6,
                handshaking: 3
            }
        );
        p.handshake_done(a);
        assert!(!p.admit(a), "over the address's total");
        // Closing gives slots back; the last one forgets the address.
        p.release(a, true);
        assert_eq!(
            p.get(a),
            IpSlots {
                open: 5,
                handshaking: 1
            }
        );
        for _ in 0..5 {
            p.release(a, false);
        }
        assert_eq!(p.get(a), IpSlots::default());
        assert!(!p.slots.contains_key(&a));
    }

    #[test]
    fn tracker_addresses_are_filtered_before_dialling() {
        let ok = |a: &str, lo: bool| dialable(a.parse().unwrap(), lo);
        assert!(ok("10.1.2.3:6881", false));
        assert!(ok("[2001:db8::1]:6881", false));
        for bad in [
            "10.1.2.3:0",
            "0.0.0.0:6881",
            "0.1.2.3:6881",
            "255.255.255.255:6881",
            "224.0.0.1:6881",
            "239.1.2.3:6881",
            "[::]:6881",
            "[ff02::1]:6881",
            "[::ffff:255.255.255.255]:6881",
            "127.0.0.1:6881",
            "127.9.9.9:6881",
            "[::1]:6881",
            "[::ffff:127.0.0.1]:6881",
        ] {
            assert!(!ok(bad, false), "{bad} dialled");
        }
        assert!(ok("127.0.0.1:6881", true) && ok("[::1]:6881", true));
        assert!(!ok("127.0.0.1:0", true) && !ok("224.0.0.1:1", true));
    }

    #[test]
    fn loopback_peers_only_from_a_tracker_on_this_host() {
        let any: SocketAddr = "0.0.0.0:6881".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for url in [
            "http://127.0.0.1:8998/announce",
            "http://127.3.2.1/announce",
            "http://localhost:8998/announce?x=1",
            "http://[::1]:8998/announce",
            "http://user@127.0.0.1:1/a",
        ] {
            assert!(loopback_peers_allowed(url, any), "{url}");
        }
        for url in [
            "http://tracker.example:8998/announce",
            "http://10.0.0.1:8998/announce",
            "http://[2001:db8::1]:8998/announce",
            "http://127.0.0.1.evil.example/announce",
            "http://localhost.evil.example/announce",
        ] {
            assert!(!loopback_peers_allowed(url, any), "{url}");
        }
        assert!(loopback_peers_allowed(
            "http://tracker.example/announce",
            lo
        ));
    }

    #[test]
    fn a_huge_tracker_response_is_capped_and_our_own_entry_skipped() {
        use crate::tracker::proto::PeerInfo;
        let me = [9u8; 20];
        let mut peers: Vec<PeerInfo> = (0..174_000u32)
            .map(|i| PeerInfo {
                addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6881)),
                peer_id: None,
            })
            .collect();
        peers.insert(
            0,
            PeerInfo {
                addr: "10.9.9.9:1".parse().unwrap(),
                peer_id: Some(me),
            },
        );
        peers.insert(
            1,
            PeerInfo {
                addr: "224.0.0.1:1".parse().unwrap(),
                peer_id: None,
            },
        );
        let d = tracker_peers_to_dial(&peers, &me, false);
        assert_eq!(d.len(), MAX_TRACKER_PEERS);
        assert!(!d.contains(&"10.9.9.9:1".parse().unwrap()));
        assert!(d.iter().all(|a| dialable(*a, false)));
    }
}
