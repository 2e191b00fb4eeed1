//! The state every thread of a node reaches: the swarm's door, the storage, the hasher
//! pool, the counters and the bookkeeping of connections and peers.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::geometry::PieceIndex;
use crate::hash::{HashPool, HashVerdict};
use crate::metrics::NodeMetrics;
use crate::peer::PeerConfig;
use crate::runtime::{SendCounters, SendPath};
use crate::storage::Storage;
use crate::swarm::Swarm;

use super::config::{Mode, NodeConfig, NodeTuning};
use super::door::SwarmDoor;
use super::per_ip::{per_ip_limits, PerIp};
use super::report::NodeEvent;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub from_seeder: AtomicU64,
    pub from_peers: AtomicU64,
    /// Payload dropped by the cores: end-game duplicates, cancelled copies.
    pub wasted: AtomicU64,
    /// Payload bytes of pieces that failed their hash.
    pub failed: AtomicU64,
    pub uploaded: AtomicU64,
    pub connections: AtomicUsize,
    pub peers: AtomicUsize,
    pub refused: AtomicU64,
    pub dials: AtomicU64,
    /// Connections marked same-rack at their handshake (issue 11).
    pub rack_local: AtomicU64,
}

/// Where the connection kept for one remote peer id lives, so a core that must give it up
/// for a duplicate (see [`keep_new_duplicate`]) can ask its core to close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registered {
    pub core: usize,
    pub conn: crate::runtime::ConnId,
    pub outbound: bool,
}

/// Two peers that dial each other at once end up with two connections, and each side
/// sees its two handshakes finish in its own order. Both sides must drop the same one,
/// or a crossing pair loses both and crosses again at the next redial (seen: 4-6 in
/// 12 s). The rule both can compute: keep the connection opened by the smaller peer id.
/// Two connections opened by the same side (a reconnect) keep the older one.
pub(crate) fn keep_new_duplicate(
    our_id: &[u8; 20],
    their_id: &[u8; 20],
    existing_outbound: bool,
    new_outbound: bool,
) -> bool {
    if existing_outbound == new_outbound {
        return false;
    }
    let we_are_smaller = our_id < their_id;
    // The connection we opened is the one to keep iff our id is the smaller.
    new_outbound == we_are_smaller
}

/// State shared by every core and the control loop.
pub(crate) struct Shared {
    /// The swarm, behind its one door.
    pub door: SwarmDoor,
    pub storage: Arc<Storage>,
    pub hashes: Arc<Vec<[u8; 20]>>,
    pub pool: HashPool,
    pub verdict_tx: Sender<HashVerdict>,
    pub peer_cfg: PeerConfig,
    pub our_id: [u8; 20],
    /// The one connection kept per remote peer id (see [`Registered`]).
    pub peer_ids: Mutex<HashMap<[u8; 20], Registered>>,
    pub counters: Counters,
    pub max_connections: usize,
    /// Inbound connections per remote address (see [`per_ip_limits`]).
    pub per_ip: Mutex<PerIp>,
    pub tuning: NodeTuning,
    pub(super) start: Instant,
    /// Per piece: nanoseconds after `start` of its first payload byte, plus one (0: none).
    pub(super) first_byte: Vec<AtomicU64>,
    /// First tracker answer, first peer, first payload: for the report's timeline.
    pub(super) milestones: super::timeline::Milestones,
    /// Events from the cores and announce threads, for the control loop to report.
    pub(super) events: Mutex<Vec<NodeEvent>>,
    /// Addresses with an outbound connection open or being dialled, so announces do not
    /// dial the same peer twice.
    pub dialled: Mutex<HashSet<SocketAddr>>,
    /// Addresses whose outbound connection turned out to reach a peer already connected
    /// (it dialled us too, and its connection won): not dialled again while that peer
    /// stays connected, or the redial of `--peer` addresses and every announce would open
    /// and drop a duplicate connection each time.
    pub same_peer: Mutex<HashMap<SocketAddr, [u8; 20]>>,
    /// Key and counter of the private-swarm nonces (see [`Shared::next_nonce`]).
    pub(super) nonce_key: [u8; 20],
    pub(super) nonce_counter: AtomicU64,
    /// Where events are pushed for `--metrics-listen` (see [`super::run_with_metrics`]).
    pub(super) metrics: Option<Arc<NodeMetrics>>,
    /// Failed writes of received payload since the last block that reached storage.
    pub(super) write_failures: AtomicU32,
    /// Set by a core when `write_failures` reaches [`super::MAX_WRITE_FAILURES`]; the
    /// control loop ends the download with it.
    pub(super) write_failed: Mutex<Option<super::NodeError>>,
    /// This host's rack, when the node was given a topology that covers it.
    pub rack: Option<crate::tracker::HostRack>,
    /// The send path the runtime uses and its byte counts, once it runs (for the report).
    pub(super) send: Mutex<Option<(SendPath, Arc<SendCounters>)>>,
}

impl Shared {
    pub fn new(
        cfg: &NodeConfig,
        swarm: Swarm,
        storage: Arc<Storage>,
        pool: HashPool,
        verdict_tx: Sender<HashVerdict>,
        start: Instant,
        metrics: Option<Arc<NodeMetrics>>,
    ) -> Shared {
        let mut peer_cfg = cfg.peer.clone();
        peer_cfg.listen_port = None;
        let (rack, rack_warning) = super::racks::host_rack(cfg);
        let events = Mutex::new(
            rack_warning
                .map(|message| NodeEvent::Warning { message })
                .into_iter()
                .collect(),
        );
        Shared {
            door: SwarmDoor::new(swarm),
            storage,
            hashes: cfg.piece_hashes.clone(),
            pool,
            verdict_tx,
            peer_cfg,
            our_id: make_peer_id(cfg.mode, entropy()),
            peer_ids: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            max_connections: cfg.max_connections,
            per_ip: Mutex::new(PerIp::new(per_ip_limits(cfg.max_connections))),
            tuning: cfg.tuning.clone(),
            start,
            first_byte: (0..cfg.lengths.piece_count())
                .map(|_| AtomicU64::new(0))
                .collect(),
            milestones: Default::default(),
            events,
            dialled: Mutex::new(HashSet::new()),
            same_peer: Mutex::new(HashMap::new()),
            nonce_key: nonce_key(),
            nonce_counter: AtomicU64::new(0),
            metrics,
            write_failures: AtomicU32::new(0),
            write_failed: Mutex::new(None),
            rack,
            send: Mutex::new(None),
        }
    }

    /// Records the runtime's send path and counters for the final report.
    pub(super) fn set_send_counters(&self, path: SendPath, counters: Arc<SendCounters>) {
        *self.send.lock() = Some((path, counters));
    }

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

    pub(super) fn take_first_byte(&self, piece: PieceIndex) -> Option<Duration> {
        let t = self
            .first_byte
            .get(piece.as_usize())?
            .swap(0, Ordering::Relaxed);
        (t > 0).then(|| Duration::from_nanos(t - 1))
    }

    pub fn log_close(&self, addr: SocketAddr, reason: &str) {
        if let Some(m) = &self.metrics {
            m.connection_closed(reason);
        }
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
pub(super) fn entropy() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// The key of this run's nonces: 20 bytes from the kernel's random source, or, where that
/// cannot be read, the clock and pid (then nonces are still unique per run, if guessable).
pub(super) fn nonce_key() -> [u8; 20] {
    use std::io::Read;
    let mut key = [0u8; 20];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if read.is_err() {
        key[..8].copy_from_slice(&entropy().to_le_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::keep_new_duplicate;

    /// Each side of a crossing pair sees the same two sockets, with directions swapped and
    /// either order of handshakes: both must keep the same socket.
    #[test]
    fn both_sides_of_a_crossing_pair_keep_the_same_connection() {
        let (a, b) = ([1u8; 20], [2u8; 20]);
        // Socket s1 was opened by a, s2 by b. On a: s1 outbound, s2 inbound; on b the
        // reverse. `kept(side, first, second)` names the socket the side keeps when
        // `first` finished its handshake before `second`.
        let kept = |us: &[u8; 20], them: &[u8; 20], first_opened_by_us: bool| {
            let keep_new = keep_new_duplicate(us, them, first_opened_by_us, !first_opened_by_us);
            // The socket opened by us is "s1" on a and "s2" on b.
            let opened_by_us_kept = keep_new != first_opened_by_us;
            let ours_is_s1 = us == &a;
            if opened_by_us_kept == ours_is_s1 {
                "s1"
            } else {
                "s2"
            }
        };
        for a_first_outbound in [true, false] {
            for b_first_outbound in [true, false] {
                assert_eq!(
                    kept(&a, &b, a_first_outbound),
                    kept(&b, &a, b_first_outbound),
                    "a saw its outbound first: {a_first_outbound}, b: {b_first_outbound}"
                );
            }
        }
        // And it is the smaller id's connection.
        assert_eq!(kept(&a, &b, true), "s1");
    }

    #[test]
    fn a_second_connection_in_the_same_direction_leaves_the_first() {
        let (a, b) = ([1u8; 20], [2u8; 20]);
        for outbound in [true, false] {
            assert!(!keep_new_duplicate(&a, &b, outbound, outbound));
            assert!(!keep_new_duplicate(&b, &a, outbound, outbound));
        }
    }
}
