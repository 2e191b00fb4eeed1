//! Announcing to trackers: one thread per tracker URL, each following the tracker's
//! interval with backoff on failure (the sans-IO [`Announcer`] decides when), dialling
//! the peers it learns about. A tracker that is down does not stop the node: peers
//! already known keep exchanging pieces, and announces retry.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::runtime::Runtime;
use crate::tracker::client::{announce_from, Announcer, BackoffPolicy};
use crate::tracker::proto::AnnounceRequest;

use super::config::NodeConfig;
use super::dial::{dial, loopback_peers_allowed, tracker_peers_to_dial};
use super::report::NodeEvent;
use super::service::{NodeMsg, PeerService};
use super::shared::Shared;

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
                    run_one(&url, info_hash, port, listen, &shared, &mailboxes, &stop_rx)
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
    listen: SocketAddr,
    shared: &Shared,
    mailboxes: &[crate::runtime::Mailbox<NodeMsg>],
    stop_rx: &Receiver<()>,
) {
    let loopback = loopback_peers_allowed(url, listen);
    // Listening on one address of several: announce from it, so the tracker hands out
    // that one (the route to the tracker may pick another, where nobody listens).
    let from = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
    let mut ann = Announcer::new(Instant::now(), BackoffPolicy::default());
    let mut told_complete = shared.door.snapshot().complete;
    let mut stopping = false;
    loop {
        let now = Instant::now();
        let snap = shared.door.snapshot();
        if !told_complete && snap.complete {
            told_complete = true;
            ann.completed(now);
        }
        if ann.is_due(now) {
            let c = &shared.counters;
            let mut req = AnnounceRequest::new(info_hash, shared.our_id, port, snap.left);
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
            let result = announce_from(url, &req, timeout, from);
            if let Some(m) = &shared.metrics {
                m.announced(sent, result.is_ok());
            }
            match result {
                Ok(resp) => {
                    ann.on_success(Instant::now(), sent, &resp);
                    shared.milestones.tracker_answered(shared.start);
                    if !stopping {
                        for addr in tracker_peers_to_dial(&resp.peers, &shared.our_id, loopback) {
                            dial(shared, mailboxes, addr);
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
