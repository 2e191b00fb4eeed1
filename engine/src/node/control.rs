//! The control loop, on the caller's thread: turns hash verdicts into haves, redials
//! configured peers, reports progress and events, and decides when the node is done.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::hash::Verdict;
use crate::runtime::Runtime;
use crate::stats::TransferStats;

use super::config::{Mode, NodeConfig, SeedUntil};
use super::dial::dial;
use super::prefault::Prefault;
use super::record::RecordThread;
use super::report::{NodeEvent, Progress};
use super::service::{CoreMsg, PeerService};
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

type LoopOutcome = (Option<Instant>, TransferStats, Vec<IpAddr>);

const REDIAL_INTERVAL: Duration = Duration::from_secs(2);

fn now_since(t: Instant) -> Duration {
    Instant::now().saturating_duration_since(t)
}

/// Turns verdicts into haves, reports progress and decides when to stop.
#[allow(clippy::too_many_arguments)]
pub(super) fn control_loop(
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
