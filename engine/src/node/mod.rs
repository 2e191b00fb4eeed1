//! A node: one torrent, seeded or downloaded, on the thread-per-core runtime.
//!
//! [`run`] wires the parts together: storage mapped once, the hasher pool, one swarm
//! behind one door (`door`), one [`PeerService`] per core, and a
//! control loop on the calling thread. One file per thread kind:
//! - `cores` runtime threads (io_uring each; [`service`]), owning the connections. Each
//!   takes the swarm lock once per batch of completions, with the batch's `now`;
//! - the hasher pool's threads, whose verdicts go to the control loop;
//! - `control`: the caller's thread. It applies verdicts to the swarm (the only place
//!   pieces become ours), publishes the swarm snapshot, redials, reports progress and
//!   decides when the node is done;
//! - `announce`: one thread per tracker URL (blocking HTTP is fine at tracker rates);
//! - `record`: a downloader's resume-record thread ([`resume`]: which pieces are
//!   verified, so a restart need not hash them again);
//! - `prefault`: a downloader's page-faulting thread, ahead of the picker.
//!
//! Announce, record and prefault only read the swarm, and read the snapshot the control
//! loop publishes, never the lock. The rest: `config`, `report`, `shared` (what
//! every thread reaches), `per_ip` (admission), `dial`.
//!
//! # One swarm lock, measured: no sharding yet
//!
//! Every node reports `swarm_lock` (acquisitions, wait and hold histograms in ns) in its
//! `--json` report. A 1 GiB loopback transfer on this 2-core VM (release build, 2 cores
//! per node, 512 KiB pieces, the machine shared with other builds at load 14-26; three
//! runs): the downloader took the lock 20,162-24,445 times (8,100-8,500 a second over
//! its run, ~11,000 a second while receiving), held it p50 0.4-0.6 us, p99 19-25 us,
//! mean 5.3-7.7 us, in all 4-7% of one core's time; waits were p50 30 ns, p99 160-281 ns
//! (the maxima, 15-73 ms, are a holder preempted by the other builds). The seeder held it
//! p50 0.7 us, p99 8-11 us, 0.2% of the time. On 2 cores the lock costs nothing worth
//! sharding for: waits are a tenth of the holds, and the holds are the swarm's work
//! itself, which sharding would not remove.
//!
//! For 32 cores the number that scales is lock time per byte: ~22,000 holds x ~6 us =
//! 0.13 s of lock per GiB received (a core's batch holds it once, so holds grow with
//! batches, i.e. with bytes). One lock then carries a node up to about 3 GiB/s at 40%
//! occupancy (0.13 s/GiB x 3 GiB/s), where an M/M/1 queue waits ~0.7 holds per take; a
//! 10/25 GbE host (1.2/3 GiB/s) fits, and more cores there only shorten each batch. Past
//! ~5 GiB/s per node (40-100 GbE) the lock would be busy most of the time, and then the
//! swarm must be sharded (pieces owned per core, availability merged by message). Until a
//! node has to move that, one lock stays: simpler, and measured in every report.

mod announce;
mod config;
mod control;
mod dial;
mod door;
mod per_ip;
mod prefault;
mod racks;
mod record;
mod report;
pub mod resume;
pub mod service;
mod shared;
mod timeline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::hash::HashPool;
use crate::metrics::{NodeLive, NodeMetrics};
use crate::runtime::{self, Runtime, RuntimeConfig, RuntimeError, UringUnavailable};
use crate::storage::{Storage, StorageError};
use crate::swarm::Swarm;
use crate::wire::Bitfield;

pub use config::{Mode, NodeConfig, NodeRacks, NodeTuning, SeedUntil};
pub use control::StopFlag;
pub use dial::{dialable, loopback_peers_allowed, tracker_peers_to_dial, MAX_TRACKER_PEERS};
pub use door::SwarmLockReport;
pub use report::{NodeEvent, NodeReport, Progress, RackReport, SendPathReport};
pub use shared::make_peer_id;
pub use timeline::Timeline;

use control::{control_loop, Helpers, LoopOutcome};
use dial::dial;
use prefault::Prefault;
use record::{RecordKeeper, RecordThread};
use resume::{Loaded, RecordWriter, ResumeConfig, ResumeReport};
use service::PeerService;
use shared::{entropy, Shared};

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
    /// Received payload failed to reach the disk [`MAX_WRITE_FAILURES`] times in a row
    /// (a full or failing disk): the download stops rather than re-request the same
    /// blocks forever. Pieces verified before are kept (and recorded for a resume).
    #[error("{failures} writes of received payload in a row failed, the last to {}; giving up ({have} of {total} pieces verified and kept): {error}", path.display())]
    StorageWrite {
        /// The file the last failed write went to.
        path: std::path::PathBuf,
        failures: u32,
        have: u32,
        total: u32,
        /// The last write's error (it names the errno).
        error: std::io::Error,
    },
}

/// Whether a download writes its resume record before it starts: not when no record was
/// there and nothing is verified (a record of nothing says what no record says).
fn record_at_start(found: resume::RecordStatus, verified: u32) -> bool {
    verified > 0 || found != resume::RecordStatus::Absent
}

/// Consecutive failed writes of received payload (each closes its connection) after
/// which a download stops with [`NodeError::StorageWrite`]. A disk that took no block in
/// this many tries is not coming back within the download, and each try costs a
/// reconnect and a re-request; a single transient error does not stop anything.
pub const MAX_WRITE_FAILURES: u32 = 5;

impl NodeError {
    /// Whether retrying later could help (a stall), as opposed to bad input.
    pub fn is_stall(&self) -> bool {
        matches!(self, NodeError::Stalled { .. })
    }

    /// A stable name for the kind of failure, for `--json` lines and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeError::Uring(_) => "io_uring_unavailable",
            NodeError::Storage(_) => "storage",
            NodeError::Runtime(_) => "runtime",
            NodeError::BadSeedData { .. } => "bad_seed_data",
            NodeError::Stalled { .. } => "stalled",
            NodeError::Interrupted { .. } => "interrupted",
            NodeError::StorageWrite { .. } => "storage_write",
        }
    }
}

/// Runs the node until it is done (download complete and linger over, or seeding
/// stopped), reporting events to `on_event`.
pub fn run(
    cfg: NodeConfig,
    stop: StopFlag,
    on_event: &mut dyn FnMut(&NodeEvent),
) -> Result<NodeReport, NodeError> {
    run_with_metrics(cfg, stop, None, on_event)
}

/// [`run`], also feeding `metrics` (`--metrics-listen`): the node's own counters are read
/// at each scrape, its piece verdicts, close reasons and announces pushed as they happen.
pub fn run_with_metrics(
    cfg: NodeConfig,
    stop: StopFlag,
    metrics: Option<Arc<NodeMetrics>>,
    on_event: &mut dyn FnMut(&NodeEvent),
) -> Result<NodeReport, NodeError> {
    runtime::probe()?;
    let start = Instant::now();
    let pool = HashPool::new(cfg.hash_threads.max(1));
    let (storage, have, resume_report, durable) = match cfg.mode {
        Mode::Seed => {
            let (s, h, r) = start_seed(&cfg, &pool)?;
            let durable = h.clone();
            (s, h, r, durable)
        }
        Mode::Download => start_download(&cfg, &pool)?,
    };
    on_event(&NodeEvent::Checked {
        have: have.count(),
        total: cfg.lengths.piece_count(),
        resume: resume_report.clone(),
    });
    // The record is rewritten straight away: the start-up check may have verified pieces
    // the old record did not list, and `Storage::create` gave every file new times. A
    // first run with nothing verified has nothing to record: its first record waits for
    // the record thread, so the start (16 peers of a fleet fsyncing a record and its
    // directory at once) does not wait for the disk.
    let record = match (&cfg.resume, cfg.mode) {
        (Some(rc), Mode::Download) => {
            let mut w = RecordKeeper::new(RecordWriter::new(rc.path.clone(), cfg.info_hash));
            if !record_at_start(resume_report.record, durable.count()) {
                Some(w)
            } else {
                // Not the pieces a base release filled: recording them means syncing every
                // file they are in first (a whole release for a delta deploy, before the
                // swarm starts). The record thread records them in the background instead,
                // and the completion's flush makes them durable.
                if let Some(message) = w.write(&storage, &durable, true) {
                    on_event(&NodeEvent::Warning { message });
                }
                Some(w)
            }
        }
        _ => None,
    };
    let (verdict_tx, verdict_rx) = crossbeam_channel::unbounded();
    let swarm = Swarm::new(
        cfg.swarm.clone(),
        cfg.info_hash,
        cfg.lengths,
        have,
        entropy(),
    );
    let shared = Arc::new(Shared::new(
        &cfg, swarm, storage, pool, verdict_tx, start, metrics,
    ));
    let _metrics = MetricsAttached::new(&shared);
    let rt_cfg = RuntimeConfig {
        cores: cfg.cores.max(1),
        listen: Some(cfg.listen),
        send_path: cfg.tuning.send_path,
        unsent_limit: cfg.swarm.uplink.map(crate::swarm::unsent_limit),
        ..RuntimeConfig::default()
    };
    let rt = {
        let shared = shared.clone();
        Runtime::start(rt_cfg, move |_core| PeerService::new(shared.clone()))?
    };
    if let Some(note) = rt.send_path_note() {
        on_event(&NodeEvent::Warning {
            message: note.to_owned(),
        });
    }
    shared.set_send_counters(rt.send_path(), rt.send_counters());
    let peer_addr = rt.local_addr().unwrap_or(cfg.listen);
    on_event(&NodeEvent::Listening { peer_addr });
    for addr in &cfg.peers {
        dial(&shared, rt.mailboxes(), *addr);
    }
    let outcome = run_threads(
        &cfg,
        &shared,
        rt,
        peer_addr,
        &stop,
        record,
        &verdict_rx,
        on_event,
    );
    finish(&cfg, &shared, peer_addr, resume_report, outcome?)
}

/// The threads around the cores while the control loop runs on this one; stops them
/// all (cores included) when it returns, and writes the last resume record.
#[allow(clippy::too_many_arguments)]
fn run_threads(
    cfg: &NodeConfig,
    shared: &Arc<Shared>,
    rt: Runtime<PeerService>,
    peer_addr: std::net::SocketAddr,
    stop: &StopFlag,
    record: Option<RecordKeeper>,
    verdicts: &crossbeam_channel::Receiver<crate::hash::HashVerdict>,
    on_event: &mut dyn FnMut(&NodeEvent),
) -> Result<LoopOutcome, NodeError> {
    let announce = announce::start(cfg, shared, &rt, peer_addr);
    let (plan_tx, plan_rx) = crossbeam_channel::bounded(1);
    let prefault = (cfg.mode == Mode::Download).then(|| Prefault::start(shared.clone(), plan_tx));
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
    let record_thread =
        record.map(|w| RecordThread::start(shared.clone(), w, keep_when_complete, record_interval));
    let helpers = Helpers {
        verdicts,
        prefault: prefault.as_ref(),
        record: record_thread.as_ref(),
        plan_requests: &plan_rx,
    };
    let outcome = control_loop(cfg, shared, &rt, stop, shared.start, helpers, on_event);
    if let Some(p) = prefault {
        p.stop();
    }
    announce.stop(shared);
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
    // A download that completed was flushed then (its release waits for that, at
    // `Durable`), and nothing writes payload pages after: a second pass is no new
    // durability, only a sync per file (0.5-0.7 s for 200 files on ext4, measured after a
    // delta deploy's release, where the deployer waits for the peer's exit).
    let flushed = matches!(&outcome, Ok(o) if o.complete_at.is_some());
    if let Err(e) = if flushed {
        Ok(())
    } else {
        shared.storage.flush()
    } {
        // After a disk that stopped taking writes, its own error is the one to report;
        // no record is written, as the verified pieces may not be on disk.
        return match outcome {
            Err(first) => {
                on_event(&NodeEvent::Warning {
                    message: format!("final flush failed too: {e}"),
                });
                Err(first)
            }
            Ok(_) => Err(e.into()),
        };
    }
    // The last record: whatever was verified until the end (an interrupted or stalled
    // download, or one whose disk stopped taking writes, resumes from here too).
    if let Some(mut w) = keeper {
        let have = shared.door.with_swarm(|s| s.have().clone());
        // Re-stamped even without new pieces: the files' times may have moved since the
        // last record (exec bits applied on completion change the ctime).
        let warning = if have.is_full() && !keep_when_complete {
            w.retire()
        } else {
            w.write(&shared.storage, &have, true)
        };
        if let Some(message) = warning {
            on_event(&NodeEvent::Warning { message });
        }
    }
    outcome
}

/// The final report, from the control loop's outcome and the counters.
fn finish(
    cfg: &NodeConfig,
    shared: &Shared,
    peer_addr: std::net::SocketAddr,
    resume: ResumeReport,
    outcome: LoopOutcome,
) -> Result<NodeReport, NodeError> {
    let LoopOutcome {
        complete_at,
        mut timeline,
        mut stats,
        banned,
    } = outcome;
    let c = &shared.counters;
    stats.record_download(c.from_seeder.load(Ordering::Relaxed), true);
    stats.record_download(c.from_peers.load(Ordering::Relaxed), false);
    stats.record_upload(c.uploaded.load(Ordering::Relaxed));
    let now = Instant::now();
    stats.finish(now);
    timeline.sample(shared.start, now, c, true);
    Ok(NodeReport {
        peer_addr,
        complete: shared.door.with_swarm(|s| s.is_complete()),
        pieces: cfg.lengths.piece_count(),
        bytes_total: cfg.lengths.total_length(),
        // Dropped payload (end-game duplicates, cancelled copies) as the cores counted it,
        // plus the pieces that failed their hash: each byte counted once.
        wasted: c.wasted.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed),
        banned,
        download_time: complete_at.map(|t| t.duration_since(shared.start)),
        transfer: stats.report(now),
        resume,
        swarm_lock: shared.door.lock_report(now - shared.start),
        rack: shared.rack.as_ref().map(|r| RackReport {
            name: r.name().to_string(),
            local_connections: c.rack_local.load(Ordering::Relaxed),
        }),
        timeline: timeline.into_timeline(&shared.milestones),
        send_path: shared.send.lock().as_ref().map(|(path, c)| SendPathReport {
            path: path.to_string(),
            spliced: c.spliced(),
            copied: c.copied(),
            zc_sent: c.zc_sent(),
            zc_notifs: c.zc_notifs().0,
            zc_copied: c.zc_notifs().1,
        }),
    })
}

/// Attaches a node's counts to its metrics for as long as it lives; on drop (before the
/// node's last `Shared` goes: declared after it) the last counts stay for later scrapes.
struct MetricsAttached(Option<Arc<NodeMetrics>>);

impl MetricsAttached {
    fn new(shared: &Arc<Shared>) -> MetricsAttached {
        let m = shared.metrics.clone();
        if let Some(m) = &m {
            let weak = Arc::downgrade(shared);
            m.attach(Box::new(move || weak.upgrade().map(|s| live_counts(&s))));
        }
        MetricsAttached(m)
    }
}

impl Drop for MetricsAttached {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.detach();
        }
    }
}

/// The counts behind the `--json` report, as the metrics endpoint shows them. Pieces come
/// from the published snapshot, so a scrape never takes the swarm lock.
fn live_counts(shared: &Shared) -> NodeLive {
    let c = &shared.counters;
    let snap = shared.door.snapshot();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    NodeLive {
        bytes_from_seeder: get(&c.from_seeder),
        bytes_from_peers: get(&c.from_peers),
        bytes_up: get(&c.uploaded),
        bytes_wasted: get(&c.wasted) + get(&c.failed),
        connections: c.connections.load(Ordering::Relaxed) as u64,
        established: c.peers.load(Ordering::Relaxed) as u64,
        refused: get(&c.refused),
        dials: get(&c.dials),
        hash_queue: shared.pool.queued() as u64,
        pieces_have: u64::from(snap.have.count()),
        pieces_total: u64::from(snap.have.len()),
    }
}

/// A seeder's start: maps the data read-only and, unless told to trust it, hashes every
/// piece (a seeder with bad data would spread it).
fn start_seed(
    cfg: &NodeConfig,
    pool: &HashPool,
) -> Result<(Arc<Storage>, Bitfield, ResumeReport), NodeError> {
    let lengths = cfg.lengths;
    let total = lengths.piece_count();
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
    Ok((storage, Bitfield::full(total), report))
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
/// Also returns the pieces held before the base fill (which the old record vouched for,
/// or the start-up check hashed on disk).
fn start_download(
    cfg: &NodeConfig,
    pool: &HashPool,
) -> Result<(Arc<Storage>, Bitfield, ResumeReport, Bitfield), NodeError> {
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
    let durable = have.clone();
    // Before any peer is met, so the first bitfield announces what the base supplied.
    plan.report.reuse = cfg
        .base
        .as_ref()
        .map(|b| crate::reuse::fill(&storage, &cfg.piece_hashes, &mut have, b, pool));
    Ok((storage, have, plan.report, durable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Service;
    use crate::runtime::{ConnId, CoreIo, Direction, RecvIovecs, RecvTarget};
    use crossbeam_channel::Sender;
    use std::net::SocketAddr;
    use std::time::Duration;

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
    fn only_a_first_run_with_nothing_verified_skips_the_record_at_start() {
        use resume::RecordStatus::*;
        assert!(!record_at_start(Absent, 0));
        assert!(
            record_at_start(Absent, 3),
            "pieces found on disk are recorded"
        );
        for found in [Used, Mismatch, Invalid] {
            assert!(
                record_at_start(found, 0),
                "{found:?}: the old record is replaced"
            );
        }
    }
}
