//! The control loop, on the caller's thread: turns hash verdicts into haves, publishes
//! the swarm snapshot the reading threads use, answers the prefault thread's requests for
//! a plan, redials configured peers, reports progress and events, and decides when the
//! node is done. It takes the swarm lock once per iteration (one verdict batch, or a
//! 200 ms tick).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::geometry::PieceIndex;
use crate::hash::HashVerdict;
use crate::runtime::Runtime;
use crate::stats::TransferStats;
use crate::wire::Bitfield;

use super::config::{Mode, NodeConfig, SeedUntil};
use super::dial::dial;
use super::door::SwarmSnapshot;
use super::prefault::Prefault;
use super::record::RecordThread;
use super::report::{NodeEvent, Progress};
use super::service::{NodeMsg, PeerService};
use super::shared::Shared;
use super::NodeError;

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

/// What the control loop hands back to [`super::run`].
pub(super) struct LoopOutcome {
    pub complete_at: Option<Instant>,
    pub timeline: super::timeline::Sampler,
    pub stats: TransferStats,
    pub banned: Vec<IpAddr>,
}

/// How often peers from the configuration are dialled again when not connected.
const REDIAL_INTERVAL: Duration = Duration::from_secs(2);
/// The longest the loop sleeps waiting for a verdict or a plan request.
const TICK: Duration = Duration::from_millis(200);
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// The threads the control loop hears from or talks to, besides the cores.
pub(super) struct Helpers<'a> {
    /// The hasher pool's verdicts.
    pub verdicts: &'a Receiver<HashVerdict>,
    pub prefault: Option<&'a Prefault>,
    pub record: Option<&'a RecordThread>,
    /// Requests of the prefault thread: how many pieces of the plan it wants.
    pub plan_requests: &'a Receiver<usize>,
}

/// What woke the loop.
enum Wake {
    Verdicts(Vec<HashVerdict>),
    Plan(usize),
    Tick,
}

/// The loop's state between iterations.
struct Control<'a> {
    cfg: &'a NodeConfig,
    shared: &'a Shared,
    rt: &'a Runtime<PeerService>,
    helpers: Helpers<'a>,
    start: Instant,
    out: LoopOutcome,
    last_progress: Instant,
    last_redial: Instant,
    last_verified: Instant,
    /// Sticky once true (peers that complete disconnect, and their counts go with them).
    every_piece_served: bool,
    /// The last published set of verified pieces, shared until it changes.
    have: Option<Arc<Bitfield>>,
    plan: Arc<Vec<PieceIndex>>,
}

/// Turns verdicts into haves, reports progress and decides when to stop.
pub(super) fn control_loop(
    cfg: &NodeConfig,
    shared: &Shared,
    rt: &Runtime<PeerService>,
    stop: &StopFlag,
    start: Instant,
    helpers: Helpers<'_>,
    on_event: &mut dyn FnMut(&NodeEvent),
) -> Result<LoopOutcome, NodeError> {
    let now = Instant::now();
    let mut c = Control {
        cfg,
        shared,
        rt,
        helpers,
        start,
        out: LoopOutcome {
            complete_at: None,
            timeline: Default::default(),
            stats: TransferStats::new(start),
            banned: Vec::new(),
        },
        last_progress: now,
        last_redial: now,
        last_verified: now,
        every_piece_served: false,
        have: None,
        plan: Arc::new(Vec::new()),
    };
    let mut wake = Wake::Tick;
    loop {
        let snap = c.apply(&wake);
        c.after_verdicts(&wake);
        c.redial();
        for ev in std::mem::take(&mut *shared.events.lock()) {
            on_event(&ev);
        }
        c.progress(&snap, on_event);
        c.out
            .timeline
            .sample(start, Instant::now(), &shared.counters, false);
        if cfg.mode == Mode::Download && snap.complete && c.out.complete_at.is_none() {
            c.completed(on_event)?;
        }
        if c.finished(&snap, stop)? {
            break;
        }
        wake = next_wake(c.helpers.verdicts, c.helpers.plan_requests);
    }
    Ok(c.out)
}

/// Waits up to [`TICK`] for verdicts (taking all that are queued) or a plan request.
fn next_wake(verdicts: &Receiver<HashVerdict>, plans: &Receiver<usize>) -> Wake {
    let batch = |v: HashVerdict| {
        let mut batch = vec![v];
        batch.extend(verdicts.try_iter());
        Wake::Verdicts(batch)
    };
    crossbeam_channel::select! {
        recv(verdicts) -> v => v.map_or(Wake::Tick, batch),
        recv(plans) -> k => match k {
            Ok(k) => Wake::Plan(k),
            // No prefault thread (a seeder, or it finished): a closed channel is always
            // ready, so wait for verdicts alone rather than spin (a seeder's control loop
            // once did, taking the swarm lock 700,000 times a second).
            Err(_) => verdicts.recv_timeout(TICK).map_or(Wake::Tick, batch),
        },
        default(TICK) => Wake::Tick,
    }
}

impl Control<'_> {
    /// The one look at the swarm per iteration: applies the verdicts, computes a plan if
    /// the prefault thread asked, and publishes the snapshot.
    fn apply(&mut self, wake: &Wake) -> Arc<SwarmSnapshot> {
        let check_served = self.cfg.seed_until == SeedUntil::EveryPieceUploaded
            && self.cfg.mode == Mode::Seed
            && !self.every_piece_served;
        let lengths = self.cfg.lengths;
        let (snap, bans) = self.shared.door.with_swarm(|swarm| {
            let mut bans = Vec::new();
            if let Wake::Verdicts(batch) = wake {
                for v in batch {
                    bans.extend(swarm.handle_verdict(v.piece, v.ok).banned);
                }
            }
            if let Wake::Plan(k) = wake {
                self.plan = Arc::new(swarm.next_pieces(&Bitfield::new(lengths.piece_count()), *k));
            }
            if check_served && swarm.every_piece_announced() {
                self.every_piece_served = lengths.pieces().all(|p| swarm.served_once(p));
            }
            let have = match &self.have {
                Some(h) if h.count() == swarm.have().count() => h.clone(),
                _ => Arc::new(swarm.have().clone()),
            };
            self.have = Some(have.clone());
            let snap = SwarmSnapshot::of(swarm, have, self.every_piece_served, self.plan.clone());
            (snap, bans)
        });
        self.out.banned.extend(bans);
        let snap = Arc::new(snap);
        self.shared.door.publish(snap.clone());
        if let (Wake::Plan(_), Some(p)) = (wake, self.helpers.prefault) {
            p.wake();
        }
        snap
    }

    /// Piece latencies and failures into the stats; the cores poll their connections,
    /// which sends the haves (and closes banned peers).
    fn after_verdicts(&mut self, wake: &Wake) {
        let Wake::Verdicts(batch) = wake else { return };
        for v in batch {
            let first = self.shared.take_first_byte(v.piece);
            if v.ok {
                self.last_verified = Instant::now();
                if let Some(first) = first {
                    let latency = self.start.elapsed().saturating_sub(first);
                    self.out.stats.record_piece_verified(latency);
                    if let Some(m) = &self.shared.metrics {
                        m.piece_verified(latency);
                    }
                }
            } else {
                self.out.stats.record_piece_failed();
                let size = u64::from(self.cfg.lengths.piece_size(v.piece));
                self.shared
                    .counters
                    .failed
                    .fetch_add(size, Ordering::Relaxed);
                if let Some(m) = &self.shared.metrics {
                    m.piece_failed();
                }
            }
        }
        if let Some(p) = self.helpers.prefault {
            p.wake();
        }
        for mb in self.rt.mailboxes() {
            let _ = mb.send(NodeMsg::Poll);
        }
    }

    /// Peers given on the command line are dialled again while the download is
    /// incomplete and no connection to them is open or being made: a seeder that was
    /// not listening yet, a refused or timed-out dial, or a dropped connection must not
    /// leave a tracker-less peer stranded.
    fn redial(&mut self) {
        if self.cfg.mode == Mode::Download
            && self.out.complete_at.is_none()
            && self.last_redial.elapsed() >= REDIAL_INTERVAL
        {
            self.last_redial = Instant::now();
            for addr in &self.cfg.peers {
                dial(self.shared, self.rt.mailboxes(), *addr);
            }
        }
    }

    fn progress(&mut self, snap: &SwarmSnapshot, on_event: &mut dyn FnMut(&NodeEvent)) {
        if self.last_progress.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        self.last_progress = Instant::now();
        let c = &self.shared.counters;
        on_event(&NodeEvent::Progress(Progress {
            have: snap.have.count(),
            total: self.cfg.lengths.piece_count(),
            bytes_down: c.from_seeder.load(Ordering::Relaxed)
                + c.from_peers.load(Ordering::Relaxed),
            bytes_up: c.uploaded.load(Ordering::Relaxed),
            peers: c.peers.load(Ordering::Relaxed),
        }));
    }

    /// Every piece is verified (in the page cache, like any copy tool's result); the
    /// msync that makes it durable follows, and `run` returns only after it.
    fn completed(&mut self, on_event: &mut dyn FnMut(&NodeEvent)) -> Result<(), NodeError> {
        let now = Instant::now();
        self.out.complete_at = Some(now);
        self.out
            .timeline
            .sample(self.start, now, &self.shared.counters, true);
        on_event(&NodeEvent::Complete {
            elapsed: self.start.elapsed(),
        });
        flush_files(&self.shared.storage)?;
        on_event(&NodeEvent::Durable);
        if let Some(r) = self.helpers.record {
            r.wake();
        }
        Ok(())
    }

    /// Whether the node is done: stopped, lingered long enough, stalled (an error), or a
    /// seeder whose peers hold everything.
    fn finished(&self, snap: &SwarmSnapshot, stop: &StopFlag) -> Result<bool, NodeError> {
        let (have, total) = (snap.have.count(), self.cfg.lengths.piece_count());
        if let Some(mut e) = self.shared.write_failed.lock().take() {
            if let NodeError::StorageWrite {
                have: h, total: t, ..
            } = &mut e
            {
                (*h, *t) = (have, total);
            }
            return Err(e);
        }
        if stop.is_stopped() {
            if self.cfg.mode == Mode::Download && !snap.complete {
                return Err(NodeError::Interrupted { have, total });
            }
            return Ok(true);
        }
        Ok(match self.cfg.mode {
            Mode::Download => match self.out.complete_at {
                Some(t) => t.elapsed() >= self.cfg.linger,
                None if self.last_verified.elapsed() >= self.cfg.stall_timeout => {
                    return Err(NodeError::Stalled {
                        secs: self.cfg.stall_timeout.as_secs(),
                        have,
                        total,
                    });
                }
                None => false,
            },
            // Every piece announced by some peer, not only uploaded once: the blocks of
            // one piece may have gone to different peers, or still be in flight when our
            // sockets close, and then no peer could ever complete it.
            Mode::Seed => {
                self.cfg.seed_until == SeedUntil::EveryPieceUploaded
                    && snap.every_piece_served
                    && snap.every_piece_announced
            }
        })
    }
}

/// Syncs in flight at once in [`flush_files`].
const SYNC_THREADS: usize = 8;

/// The storage's files made durable, several syncs in flight at once: a release of many
/// small files is otherwise one sync after another, each waiting for a journal commit of
/// its own (ext4), where syncs issued together share commits and keep the disk's queue
/// full. What it guarantees is [`crate::storage::Storage::flush`]'s: every file's pages
/// are on disk when it returns Ok (the release is placed only after).
fn flush_files(storage: &crate::storage::Storage) -> Result<(), crate::storage::StorageError> {
    use std::sync::atomic::AtomicUsize;
    let n = storage.files().len();
    if n < 2 {
        return storage.flush();
    }
    let next = AtomicUsize::new(0);
    let failed = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..SYNC_THREADS.min(n) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.lock().is_some() {
                    return;
                }
                if let Err(e) = storage.sync_file(i) {
                    failed.lock().get_or_insert(e);
                    return;
                }
            });
        }
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
