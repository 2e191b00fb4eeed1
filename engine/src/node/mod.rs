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

mod announce;
mod config;
mod control;
mod dial;
mod per_ip;
mod prefault;
mod record;
mod report;
pub mod resume;
pub mod service;
mod shared;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::hash::HashPool;
use crate::runtime::{self, Runtime, RuntimeConfig, RuntimeError, UringUnavailable};
use crate::storage::{Storage, StorageError};
use crate::swarm::Swarm;
use crate::wire::Bitfield;

pub use config::{Mode, NodeConfig, NodeTuning, SeedUntil};
pub use control::StopFlag;
pub use dial::{dialable, loopback_peers_allowed, tracker_peers_to_dial, MAX_TRACKER_PEERS};
pub use report::{NodeEvent, NodeReport, NodeReportJson, Progress};
pub use shared::make_peer_id;

use control::control_loop;
use dial::dial;
use per_ip::{per_ip_limits, PerIp};
use prefault::Prefault;
use record::{RecordKeeper, RecordThread};
use resume::{Loaded, RecordWriter, ResumeConfig, ResumeReport};
use service::PeerService;
use shared::{entropy, nonce_key, Counters, Shared};

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
    let plan = resume::plan(loaded, &cfg.info_hash, lengths, &file_lengths, &now);
    let mut have = plan.trusted;
    if !plan.recheck.is_empty() {
        let ok = pool.verify_pieces(&storage, &cfg.piece_hashes, &plan.recheck, &mut |_| {});
        for p in &plan.recheck {
            if ok[p.as_usize()] {
                have.set(p.get());
            }
        }
    }
    Ok((storage, have, plan.report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{CloseReason, ConnId, Conns, CoreIo, Direction, RecvIovecs, RecvTarget};
    use crate::runtime::{SendBuf, Service};
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
}
