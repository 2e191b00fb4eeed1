//! The simulation itself: hosts running corvid's real `Swarm` and `PeerConn` over a
//! modelled network, in virtual time.
//!
//! Model (message level, store and forward; not a flow model): every connection
//! direction is a byte stream (control bytes are the real wire bytes `PeerConn` wrote,
//! block payloads are only a length). A host's uplink serves its connections round robin,
//! one segment (at most [`SimConfig::segment`] bytes, plus a block header or request left
//! over, which would otherwise be a segment of its own) at a time, at the host rate. A
//! segment then crosses, in FIFO order at their rates, the source rack's uplink and the
//! destination rack's downlink (only between racks), then the receiving host's downlink,
//! and arrives after the path's propagation latency. Queues never drop: a sender is
//! throttled only by how much the receivers asked for (`PeerConn`'s request pipeline) and
//! by its socket buffer ([`SimConfig::sndbuf`]), which is how BitTorrent bounds them too.
//! Not modelled: TCP slow start and congestion control, loss and retransmits, the
//! kernel's socket buffer autotuning, CPU time other than hashing, disks (the page cache
//! holds the payload). Wire overhead (Ethernet, IP and TCP headers) is a constant factor
//! on every rate.
//!
//! Cost, and what keeps 10,000 hosts within minutes (measured at N=300, 4 MiB pieces,
//! 1 MiB requests: 2.50 M events before the last two points, 1.93 M after; N=1000 went
//! from 15.6 M events to 8.3 M with the first two): a FIFO link needs no event of its
//! own, since segments join it in time order and its finish time is known on arrival
//! (one event per segment per link it crosses, the last one folded into the delivery);
//! small control packets (haves, requests) that a host sends at one instant over paths
//! of one latency share one delivery event (a verdict's haves to all its peers); and a
//! block's header never travels as a segment of its own. Everything the protocol does is
//! still done per message: each have, request and block goes through the receiving
//! `PeerConn`, and each host's `Swarm` picks, chokes and plans as in the daemon.
//!
//! Everything is deterministic: events are ordered by (virtual time, sequence number),
//! randomness comes from one seeded generator, and nothing iterates a hash map.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use corvid_engine::geometry::{BlockRef, Lengths};
use corvid_engine::peer::auth::Role;
use corvid_engine::peer::{Event, PeerConfig, PeerConn, Transmit};
use corvid_engine::swarm::{Swarm, SwarmConfig};
use corvid_engine::tracker::{pair_score, rack_counts, AnnounceRequest, Swarms, TrackerConfig};
use corvid_engine::wire::Bitfield;

/// Control packets up to this size skip the link queues under fair queueing.
const SMALL: u64 = 512;

/// Port every simulated host listens on.
const PORT: u16 = 6881;

/// One simulated deploy's parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Downloading hosts; `seeders` more hosts have the payload at the start.
    pub hosts: usize,
    /// Hosts that seed (each a `corvid seed` with its own plan), at least 1: seeder 0
    /// in the first rack, seeder k in rack k x racks / seeders (one per datacenter).
    pub seeders: usize,
    pub size: u64,
    pub piece_size: u64,
    /// Host link rate, each direction, bits per second (nominal, before wire overhead).
    pub rate_bps: f64,
    /// Hosts per rack (the seeder counts as one); 0: one flat network, no rack uplinks.
    pub rack_size: usize,
    /// Rack uplink oversubscription: uplink rate = rack_size x rate / oversub.
    pub oversub: f64,
    /// One-way propagation latency of each hop (host link, rack uplink).
    pub hop_latency: Duration,
    /// Payload share of the wire bytes (headers of Ethernet, IP and TCP).
    pub goodput: f64,
    /// Largest unit a link sends at once.
    pub segment: u32,
    /// Bytes a connection may hold unsent (the socket's send buffer) before its
    /// `PeerConn` is asked for more blocks.
    pub sndbuf: u64,
    /// SHA-1 bytes per second per host (one hasher).
    pub hash_rate: f64,
    /// Spread of host start times (uniform in [0, start_spread)).
    pub start_spread: Duration,
    /// Peers asked of the tracker (the daemon asks 200).
    pub numwant: usize,
    /// The tracker hands out mostly same-rack peers (see [`handout`]).
    pub rack_aware: bool,
    /// Each host's picker knows which of its connections are same-rack and fetches a
    /// piece across racks only when no same-rack peer has it (`Swarm::set_peer_local`).
    pub rack_pick: bool,
    /// With `rack_aware`: peers from other racks in each handout (however few peers the
    /// asker's rack has); `None`: as many as corvid's tracker hands out
    /// ([`corvid_engine::tracker::rack_counts`]: about a third of the same-rack ones, all
    /// of the list for a host alone in its rack), chosen as it chooses them (the
    /// highest-scoring pairs, [`corvid_engine::tracker::pair_score`]).
    pub cross_rack_peers: Option<usize>,
    pub seed: u64,
    /// Give up at this virtual time.
    pub time_limit: Duration,
    /// Request size to corvid peers (the daemon's default is 128 KiB).
    pub request_size: u32,
    /// `PeerConn` tick period (the runtime's is 100 ms).
    pub tick: Duration,
    /// Upload slots per host (`SwarmConfig::max_unchoked`; the daemon's default is 128).
    pub max_unchoked: usize,
    /// The seeders' plan fan-out (`SwarmConfig::seed_fanout`; 0: no bound).
    pub seed_fanout: usize,
    /// The seeders' budget for extra copies (`SwarmConfig::seed_extra_permille`).
    pub seed_extra_permille: u32,
    /// Bytes a host's egress queue (the qdisc under the shaper) holds, shared FIFO by all
    /// its connections; 0: one segment, the uplink then serves connections round robin
    /// (fair queueing). A deep FIFO delays every request behind other peers' blocks.
    pub egress_queue: u64,
    /// A host that completed leaves (closes every connection) after this long; `None`:
    /// every host stays until all are done.
    pub linger: Option<Duration>,
    /// Print a line of the fleet's state to stderr at this virtual-time step (diagnosis:
    /// how fast pieces leave the seeder and spread over racks); `None`: silent.
    pub trace: Option<Duration>,
    /// Seeders know their peers' racks and spread first copies over them
    /// (`Swarm::set_peer_rack`).
    pub rack_spread: bool,
}

impl SimConfig {
    /// Payload bytes per second of a host link.
    pub fn host_rate(&self) -> f64 {
        self.rate_bps / 8.0 * self.goodput
    }

    fn uplink_rate(&self) -> f64 {
        self.host_rate() * self.rack_size as f64 / self.oversub
    }

    pub fn racks(&self) -> usize {
        if self.rack_size == 0 {
            1
        } else {
            (self.hosts + 1).div_ceil(self.rack_size)
        }
    }

    /// Hosts `0..seeders` seed; downloaders fill the racks in order after seeder 0, as
    /// if it were the only one (extra seeders add a host to their racks).
    pub fn rack_of(&self, host: usize) -> usize {
        let k = self.seeders.max(1);
        if self.rack_size == 0 {
            0
        } else if host < k {
            host * self.racks() / k
        } else {
            (host - k + 1) / self.rack_size
        }
    }

    pub fn is_seeder(&self, host: usize) -> bool {
        host < self.seeders.max(1)
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// Virtual seconds at which each downloading host (1..=hosts) verified its last piece;
    /// `None` if it did not within the time limit.
    pub done_at: Vec<Option<f64>>,
    /// Payload bytes each host uploaded (the seeders first).
    pub uploaded: Vec<u64>,
    /// Bytes that crossed each rack's uplink, (out of the rack, into the rack).
    pub rack_bytes: Vec<(u64, u64)>,
    /// Whether every downloading host holds every piece, verified.
    pub all_verified: bool,
    pub events: u64,
    pub connections: u64,
    /// Virtual seconds at which the simulation stopped.
    pub end: f64,
    /// First copies the first seeder's plan handed to each rack (all 0 unless it spreads
    /// them over racks, [`SimConfig::rack_spread`]).
    pub seeder_first_by_rack: Vec<u32>,
}

/// Deterministic generator (splitmix64): the simulation's only randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Bytes of a stream: real control bytes, or a block payload of which only the length
/// matters (its content is what the seeder has; hashing always succeeds).
#[derive(Debug)]
enum Chunk {
    Ctrl(Vec<u8>),
    Pay(u64),
}

/// One direction of a connection: what the sender wrote and the network has not yet
/// delivered, with `handed` bytes of it already on the wire.
#[derive(Debug, Default)]
struct Stream {
    chunks: VecDeque<Chunk>,
    total: u64,
    handed: u64,
}

impl Stream {
    fn push_ctrl(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        self.total += b.len() as u64;
        if let Some(Chunk::Ctrl(v)) = self.chunks.back_mut() {
            v.extend_from_slice(b);
        } else {
            self.chunks.push_back(Chunk::Ctrl(b.to_vec()));
        }
    }

    fn push_pay(&mut self, n: u64) {
        self.total += n;
        self.chunks.push_back(Chunk::Pay(n));
    }

    fn unsent(&self) -> u64 {
        self.total - self.handed
    }

    /// Moves the first `n` bytes to the receiver: control bytes into `ctrl`, payload
    /// into the `pay` counter. The receiving `PeerConn` stops at every `piece` header, so
    /// payload consumed by count and control bytes consumed in order cannot be confused.
    fn deliver(&mut self, mut n: u64, ctrl: &mut Vec<u8>, pay: &mut u64) {
        self.total -= n;
        self.handed -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            match front {
                Chunk::Ctrl(v) => {
                    let k = (v.len() as u64).min(n) as usize;
                    ctrl.extend_from_slice(&v[..k]);
                    n -= k as u64;
                    if k == v.len() {
                        self.chunks.pop_front();
                    } else {
                        v.drain(..k);
                    }
                }
                Chunk::Pay(p) => {
                    let k = (*p).min(n);
                    *pay += k;
                    n -= k;
                    *p -= k;
                    if *p == 0 {
                        self.chunks.pop_front();
                    }
                }
            }
        }
    }
}

/// One end of a connection, owned by `host`.
struct End {
    host: u32,
    remote: u32,
    peer: PeerConn,
    out: Stream,
    /// Delivered control bytes not yet consumed by `handle_bytes`.
    rx: Vec<u8>,
    /// Delivered payload bytes not yet consumed.
    rx_pay: u64,
    /// The payload run `PeerConn` is receiving, and bytes of it still due.
    receiving: Option<(BlockRef, u64)>,
    closed: bool,
    /// In its host's `ready` queue.
    ready: bool,
}

struct Host {
    swarm: Swarm,
    rack: u32,
    addr: SocketAddr,
    peer_id: [u8; 20],
    ends: Vec<u32>,
    /// Remote hosts we have a connection with (sorted), so a pair connects once.
    linked: Vec<u32>,
    up_busy: bool,
    /// Connections with unsent bytes, in round-robin order for admission into `egress`.
    ready: VecDeque<u32>,
    /// Segments (end, bytes) waiting for the uplink, in order.
    egress: VecDeque<(u32, u32)>,
    egress_bytes: u64,
    gone: bool,
    hash_free: u64,
    /// The mailbox this host's small packets to same-rack (0) and other-rack (1) peers
    /// go into while it is still open (same arrival time).
    mail: [u32; 2],
    done_at: Option<u64>,
    uploaded: u64,
    /// Bytes through the host's downlink / uplink since the last trace line.
    win_down: u64,
    win_up: u64,
    /// Trace samples since the last line: downlink busy; idle with nothing asked; idle
    /// with requests out whose senders' uplinks are busy; idle otherwise (in flight).
    samples: [u32; 4],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Start(u32),
    Announce(u32),
    /// Host `0` dialled host `1`; the connection is up.
    Connected(u32, u32),
    /// Host `0`'s uplink finished sending `n` bytes of `end`.
    UplinkDone {
        host: u32,
        end: u32,
        n: u32,
    },
    /// A segment of `n` bytes of `end`'s stream arrives at `stage` (1 source rack uplink,
    /// 2 destination rack downlink, 3 host downlink, 4 delivered).
    Hop {
        end: u32,
        n: u32,
        stage: u8,
    },
    Verdict(u32, u32),
    Tick(u32),
    Leave(u32),
    /// Print the fleet's state (see [`SimConfig::trace`]).
    Trace,
    /// Sample every host's downlink for the trace's breakdown of idle time.
    Sample,
    /// Mailbox `0`'s small control packets arrive.
    Mail(u32),
}

/// Small control packets (haves, mostly) that one host sent at one instant over paths of
/// one latency: they all arrive together, so they share one event.
#[derive(Default)]
struct Mailbox {
    /// Arrival time; `u64::MAX` once delivered (the box is then free for reuse).
    at: u64,
    /// (end, bytes) in the order they were sent.
    items: Vec<(u32, u32)>,
}

struct Sim {
    cfg: SimConfig,
    lengths: Lengths,
    peer_cfg: PeerConfig,
    base: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    hosts: Vec<Host>,
    ends: Vec<End>,
    tracker: Swarms,
    /// Announce order, for the deterministic handout.
    announced: Vec<u32>,
    /// When each FIFO link is free again: rack uplinks, rack downlinks, host downlinks.
    fifos: Vec<u64>,
    mailboxes: Vec<Mailbox>,
    spare_mailboxes: Vec<u32>,
    rack_bytes: Vec<(u64, u64)>,
    rng: Rng,
    events: u64,
    remaining: usize,
    out_buf: Vec<u8>,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn xfer_ns(bytes: u64, rate: f64) -> u64 {
    ((bytes as f64) / rate * 1e9).ceil() as u64
}

fn host_ip(i: usize) -> IpAddr {
    let i = i as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

const INFO_HASH: [u8; 20] = *b"corvid-sim-infohash!";

impl Sim {
    fn new(cfg: SimConfig) -> Result<Sim, String> {
        let count = cfg.size.div_ceil(cfg.piece_size);
        let lengths = Lengths::new(cfg.size, cfg.piece_size, count).map_err(|e| e.to_string())?;
        let peer_cfg = PeerConfig {
            request_size_corvid: cfg.request_size,
            max_request_corvid: cfg.request_size,
            ..PeerConfig::default()
        };
        let mut rng = Rng(cfg.seed);
        let n = cfg.hosts + cfg.seeders.max(1);
        let mut hosts = Vec::with_capacity(n);
        for i in 0..n {
            let have = if cfg.is_seeder(i) {
                Bitfield::full(lengths.piece_count())
            } else {
                Bitfield::new(lengths.piece_count())
            };
            let mut peer_id = [0u8; 20];
            peer_id[..8].copy_from_slice(b"-CV0000-");
            peer_id[8..16].copy_from_slice(&(i as u64).to_be_bytes());
            hosts.push(Host {
                swarm: Swarm::new(
                    SwarmConfig {
                        max_unchoked: cfg.max_unchoked,
                        seed_fanout: cfg.seed_fanout,
                        seed_extra_permille: cfg.seed_extra_permille,
                        ..SwarmConfig::default()
                    },
                    INFO_HASH,
                    lengths,
                    have,
                    rng.next(),
                ),
                rack: cfg.rack_of(i) as u32,
                addr: SocketAddr::new(host_ip(i), PORT),
                peer_id,
                ends: Vec::new(),
                linked: Vec::new(),
                up_busy: false,
                ready: VecDeque::new(),
                egress: VecDeque::new(),
                egress_bytes: 0,
                gone: false,
                hash_free: 0,
                mail: [u32::MAX; 2],
                done_at: None,
                uploaded: 0,
                win_down: 0,
                win_up: 0,
                samples: [0; 4],
            });
        }
        let racks = cfg.racks();
        let tracker = Swarms::new(TrackerConfig {
            max_peers_per_torrent: usize::MAX,
            max_numwant: u32::MAX,
            ..TrackerConfig::default()
        });
        let mut sim = Sim {
            lengths,
            peer_cfg,
            base: Instant::now(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            ends: Vec::new(),
            tracker,
            announced: Vec::new(),
            fifos: vec![0; 2 * racks + n],
            mailboxes: Vec::new(),
            spare_mailboxes: Vec::new(),
            rack_bytes: vec![(0, 0); racks],
            rng,
            events: 0,
            remaining: cfg.hosts,
            out_buf: Vec::new(),
            cfg,
        };
        if sim.cfg.trace.is_some() {
            sim.at(0, Ev::Trace);
            sim.at(0, Ev::Sample);
        }
        let k = sim.cfg.seeders.max(1);
        for h in 0..k {
            sim.at(0, Ev::Start(h as u32));
        }
        for h in k..n {
            let t = sim.rng.below(nanos(sim.cfg.start_spread).max(1));
            sim.at(t, Ev::Start(h as u32));
        }
        Ok(sim)
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    /// One-way latency between two hosts: two host links, plus two rack uplinks between
    /// racks.
    fn latency(&self, a: usize, b: usize) -> u64 {
        let hops = if self.hosts[a].rack == self.hosts[b].rack {
            2
        } else {
            4
        };
        nanos(self.cfg.hop_latency) * hops
    }

    fn run(mut self) -> SimResult {
        let limit = nanos(self.cfg.time_limit);
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > limit || self.remaining == 0 {
                break;
            }
            self.now = t;
            self.events += 1;
            self.handle(ev);
        }
        let k = self.cfg.seeders.max(1);
        let all_verified = self.hosts[k..].iter().all(|h| h.swarm.is_complete());
        SimResult {
            done_at: self.hosts[k..]
                .iter()
                .map(|h| h.done_at.map(|t| t as f64 / 1e9))
                .collect(),
            uploaded: self.hosts.iter().map(|h| h.uploaded).collect(),
            rack_bytes: self.rack_bytes.clone(),
            all_verified,
            events: self.events,
            connections: self.ends.len() as u64 / 2,
            end: self.now as f64 / 1e9,
            seeder_first_by_rack: (0..self.rack_bytes.len() as u32)
                .map(|r| self.hosts[0].swarm.rack_first_copies(r))
                .collect(),
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start(h) => {
                self.at(self.now, Ev::Announce(h));
                let first = self.now + self.rng.below(nanos(self.cfg.tick).max(1));
                self.at(first, Ev::Tick(h));
            }
            Ev::Announce(h) => self.announce(h as usize),
            Ev::Connected(a, b) => self.connect(a as usize, b as usize),
            Ev::UplinkDone { host, end, n } => {
                self.hosts[host as usize].up_busy = false;
                self.hosts[host as usize].win_up += u64::from(n);
                let stage = if self.same_rack_end(end as usize) {
                    3
                } else {
                    1
                };
                self.hop(end as usize, n, stage);
                self.kick_uplink(host as usize);
            }
            Ev::Hop { end, n, stage } => self.hop(end as usize, n, stage),
            Ev::Verdict(h, piece) => self.verdict(h as usize, piece),
            Ev::Tick(h) => self.tick(h as usize),
            Ev::Leave(h) => self.leave(h as usize),
            Ev::Mail(b) => self.mail(b as usize),
            Ev::Trace => self.trace(),
            Ev::Sample => self.sample(),
        }
    }

    /// The tracker's answer to `h`: corvid's own tracker logic records the announce;
    /// which peers come back is decided by [`handout`] when the tracker would have to
    /// choose (it picks from a hash map, whose order differs per process).
    fn announce(&mut self, h: usize) {
        let host = &self.hosts[h];
        let left = if self.cfg.is_seeder(h) {
            0
        } else {
            self.cfg.size
        };
        let mut req = AnnounceRequest::new(INFO_HASH, host.peer_id, PORT, left);
        req.numwant = Some(self.cfg.numwant as u32);
        let resp = match self.tracker.announce(&req, host.addr.ip(), self.instant()) {
            Ok(r) => r,
            Err(_) => return,
        };
        let candidates: Vec<u32> = self
            .announced
            .iter()
            .copied()
            .filter(|&p| p as usize != h && !(left == 0 && self.cfg.is_seeder(p as usize)))
            .collect();
        let mut peers: Vec<u32> = if !self.cfg.rack_aware && resp.peers.len() >= candidates.len() {
            // The tracker returned everyone: same set, canonical order. (A rack-aware
            // tracker chooses even then: few peers from other racks.)
            let mut v: Vec<u32> = resp
                .peers
                .iter()
                .filter_map(|p| self.host_by_addr(p.addr))
                .collect();
            v.sort_unstable();
            v
        } else {
            handout(&self.cfg, &self.hosts, h, &candidates, &mut self.rng)
        };
        self.announced.push(h as u32);
        peers.retain(|&p| p as usize != h);
        // The tracker runs on the seeder's host: its answer takes a round trip, then each
        // TCP connect another, after which both sides start their PeerConn.
        let answer = self.now + 2 * self.latency(h, 0);
        for p in peers {
            let t = answer + 2 * self.latency(h, p as usize);
            self.at(t, Ev::Connected(h as u32, p));
        }
    }

    fn host_by_addr(&self, addr: SocketAddr) -> Option<u32> {
        let IpAddr::V4(v4) = addr.ip() else {
            return None;
        };
        let o = v4.octets();
        let i = (u32::from(o[1]) << 16 | u32::from(o[2]) << 8 | u32::from(o[3])).checked_sub(1)?;
        ((i as usize) < self.hosts.len()).then_some(i)
    }

    fn connect(&mut self, a: usize, b: usize) {
        if self.hosts[a].gone
            || self.hosts[b].gone
            || self.hosts[a].linked.binary_search(&(b as u32)).is_ok()
        {
            return;
        }
        let now = self.instant();
        let ia = self.ends.len() as u32;
        let ib = ia + 1;
        let mk = |sim: &mut Sim, me: usize, other: usize, role: Role| -> Option<PeerConn> {
            let addr = sim.hosts[other].addr;
            let id = sim.hosts[me].peer_id;
            PeerConn::new(
                &sim.peer_cfg,
                &mut sim.hosts[me].swarm,
                addr,
                role,
                id,
                [0; 16],
                now,
            )
            .ok()
        };
        let (Some(pa), Some(pb)) = (
            mk(self, a, b, Role::Initiator),
            mk(self, b, a, Role::Responder),
        ) else {
            return;
        };
        if self.cfg.rack_pick
            && self.cfg.rack_size > 0
            && self.hosts[a].rack == self.hosts[b].rack
            && !self.cfg.is_seeder(a)
            && !self.cfg.is_seeder(b)
        {
            // What a node learns from its topology: this remote is behind our switch.
            // The seeder is left unmarked: it serves what its plan hands out, not what
            // is asked, so "a same-rack host has it" must not count it (else its rack
            // would never fetch from other racks).
            self.hosts[a].swarm.set_peer_local(pa.key(), true);
            self.hosts[b].swarm.set_peer_local(pb.key(), true);
        }
        if self.cfg.rack_spread && self.cfg.rack_size > 0 {
            // What a seeder learns from its topology: the remote's rack (it spreads first
            // copies over racks).
            let (ra, rb) = (self.hosts[a].rack, self.hosts[b].rack);
            self.hosts[a].swarm.set_peer_rack(pa.key(), rb);
            self.hosts[b].swarm.set_peer_rack(pb.key(), ra);
        }
        for (me, other, peer, remote) in [(a, b, pa, ib), (b, a, pb, ia)] {
            self.ends.push(End {
                host: me as u32,
                remote,
                peer,
                out: Stream::default(),
                rx: Vec::new(),
                rx_pay: 0,
                receiving: None,
                closed: false,
                ready: false,
            });
            let host = &mut self.hosts[me];
            host.ends.push(if me == a { ia } else { ib });
            let pos = host
                .linked
                .binary_search(&(other as u32))
                .unwrap_or_else(|e| e);
            host.linked.insert(pos, other as u32);
        }
        self.fill(ia as usize);
        self.fill(ib as usize);
        self.kick_uplink(a);
        self.kick_uplink(b);
    }

    /// Polls `e`'s `PeerConn` for bytes while its send buffer has room.
    fn fill(&mut self, e: usize) {
        let mut out = std::mem::take(&mut self.out_buf);
        let end = &mut self.ends[e];
        if end.closed {
            self.out_buf = out;
            return;
        }
        let host = &mut self.hosts[end.host as usize];
        let now = self.base + Duration::from_nanos(self.now);
        loop {
            out.clear();
            let block = end.peer.poll_transmit(&mut host.swarm, now, &mut out);
            end.out.push_ctrl(&out);
            match block {
                Some(Transmit::Block { header, block }) => {
                    end.out.push_ctrl(&header);
                    end.out.push_pay(u64::from(block.len));
                    host.uploaded += u64::from(block.len);
                    if end.out.unsent() >= self.cfg.sndbuf {
                        break;
                    }
                }
                None => break,
            }
        }
        self.out_buf = out;
        let end = &mut self.ends[e];
        if !end.ready && end.out.unsent() > 0 {
            end.ready = true;
            host.ready.push_back(e as u32);
        }
        self.drain_events(e);
    }

    /// Admits segments of the host's connections into its egress queue (round robin,
    /// while there is room), and starts the uplink on the queue's head if it is idle.
    fn kick_uplink(&mut self, h: usize) {
        let limit = self.cfg.egress_queue.max(1);
        while self.hosts[h].egress_bytes < limit {
            let Some(e) = self.hosts[h].ready.pop_front() else {
                break;
            };
            let e = e as usize;
            let unsent = self.ends[e].out.unsent();
            if unsent == 0 || self.ends[e].closed {
                self.ends[e].ready = false;
                continue;
            }
            let mut n = unsent.min(u64::from(self.cfg.segment));
            if unsent - n <= SMALL {
                // A block's 13-byte header (or a request) left over would be a segment
                // of its own, doubling the uplink's events for nothing.
                n = unsent;
            }
            let out = &self.ends[e].out;
            if self.cfg.egress_queue == 0
                && out.handed == 0
                && n <= SMALL
                && matches!(out.chunks.front(), Some(Chunk::Ctrl(v)) if v.len() as u64 == n)
            {
                // A lone small control packet under fair queueing waits for no one's
                // segment and takes nanoseconds to serialize: it only crosses the
                // latency. Those a host sends at one instant (a verdict's haves to every
                // peer) share one event per latency class.
                self.ends[e].out.handed += n;
                self.ends[e].ready = false;
                let dst = self.ends[self.ends[e].remote as usize].host as usize;
                self.post(h, dst, e as u32, n as u32);
                continue;
            }
            self.ends[e].out.handed += n;
            let host = &mut self.hosts[h];
            host.egress.push_back((e as u32, n as u32));
            host.egress_bytes += n;
            // The sender's buffer has room again: ask its PeerConn for more.
            if self.ends[e].out.unsent() < self.cfg.sndbuf {
                self.fill(e);
            }
            let end = &mut self.ends[e];
            if end.out.unsent() > 0 && !end.closed {
                self.hosts[h].ready.push_back(e as u32);
            } else {
                end.ready = false;
            }
        }
        let host = &mut self.hosts[h];
        if host.up_busy {
            return;
        }
        let Some((e, n)) = host.egress.pop_front() else {
            return;
        };
        host.egress_bytes -= u64::from(n);
        host.up_busy = true;
        let done = self.now + xfer_ns(u64::from(n), self.cfg.host_rate());
        self.at(
            done,
            Ev::UplinkDone {
                host: h as u32,
                end: e,
                n,
            },
        );
    }

    fn same_rack_end(&self, e: usize) -> bool {
        let end = &self.ends[e];
        let r = &self.ends[end.remote as usize];
        self.hosts[end.host as usize].rack == self.hosts[r.host as usize].rack
    }

    fn hop(&mut self, e: usize, n: u32, stage: u8) {
        let src = self.ends[e].host as usize;
        let dst_end = self.ends[e].remote as usize;
        let dst = self.ends[dst_end].host as usize;
        let bytes = u64::from(n);
        let racks = self.rack_bytes.len();
        match stage {
            1 => {
                let r = self.hosts[src].rack as usize;
                self.rack_bytes[r].0 += bytes;
                let done = self.enqueue(r, n, self.cfg.uplink_rate());
                self.at(
                    done,
                    Ev::Hop {
                        end: e as u32,
                        n,
                        stage: 2,
                    },
                );
            }
            2 => {
                let r = self.hosts[dst].rack as usize;
                self.rack_bytes[r].1 += bytes;
                let done = self.enqueue(racks + r, n, self.cfg.uplink_rate());
                self.at(
                    done,
                    Ev::Hop {
                        end: e as u32,
                        n,
                        stage: 3,
                    },
                );
            }
            3 => {
                // The last link: the segment is delivered once through it and across
                // the path's propagation latency.
                let done = self.enqueue(2 * racks + dst, n, self.cfg.host_rate());
                let at = done + self.latency(src, dst);
                self.at(
                    at,
                    Ev::Hop {
                        end: e as u32,
                        n,
                        stage: 4,
                    },
                );
            }
            _ => {
                self.hosts[dst].win_down += bytes;
                self.deliver(e, bytes)
            }
        }
    }

    /// The receiver of `e`'s stream gets its next `bytes`.
    fn deliver(&mut self, e: usize, bytes: u64) {
        let dst_end = self.ends[e].remote as usize;
        let (a, b) = if e < dst_end {
            let (x, y) = self.ends.split_at_mut(dst_end);
            (&mut x[e], &mut y[0])
        } else {
            let (x, y) = self.ends.split_at_mut(e);
            (&mut y[0], &mut x[dst_end])
        };
        a.out.deliver(bytes, &mut b.rx, &mut b.rx_pay);
        self.receive(dst_end);
    }

    /// A segment arriving now joins FIFO link `f`; returns when it is through. Arrivals
    /// are enqueued in time order (each at its own event), so computing the finish time
    /// at once is exact for a FIFO and needs no event per link.
    fn enqueue(&mut self, f: usize, n: u32, rate: f64) -> u64 {
        let free = &mut self.fifos[f];
        let done = self.now.max(*free) + xfer_ns(u64::from(n), rate);
        *free = done;
        done
    }

    /// Sends a small control packet of `e` (host `h` to `dst`) across the latency only,
    /// in the mailbox of packets `h` sends now over the same latency.
    fn post(&mut self, h: usize, dst: usize, e: u32, n: u32) {
        let class = usize::from(self.hosts[h].rack != self.hosts[dst].rack);
        let at = self.now + self.latency(h, dst);
        let open = self.hosts[h].mail[class];
        if let Some(mb) = self.mailboxes.get_mut(open as usize) {
            if mb.at == at {
                mb.items.push((e, n));
                return;
            }
        }
        let id = match self.spare_mailboxes.pop() {
            Some(id) => id,
            None => {
                self.mailboxes.push(Mailbox::default());
                self.mailboxes.len() as u32 - 1
            }
        };
        let mb = &mut self.mailboxes[id as usize];
        mb.at = at;
        mb.items.push((e, n));
        self.hosts[h].mail[class] = id;
        self.at(at, Ev::Mail(id));
    }

    fn mail(&mut self, id: usize) {
        let mut items = std::mem::take(&mut self.mailboxes[id].items);
        self.mailboxes[id].at = u64::MAX;
        for &(e, n) in &items {
            self.deliver(e as usize, u64::from(n));
        }
        items.clear();
        self.mailboxes[id].items = items;
        self.spare_mailboxes.push(id as u32);
    }

    /// Feeds delivered bytes to `e`'s `PeerConn`, the way the runtime does: control bytes
    /// through `handle_bytes`, a block's payload (once all of it arrived) through
    /// `handle_payload_done`.
    fn receive(&mut self, e: usize) {
        let now = self.instant();
        loop {
            let end = &mut self.ends[e];
            if end.closed {
                break;
            }
            let host = &mut self.hosts[end.host as usize];
            if let Some((block, due)) = end.receiving {
                let k = due.min(end.rx_pay);
                end.rx_pay -= k;
                if k < due {
                    end.receiving = Some((block, due - k));
                    break;
                }
                end.receiving = None;
                end.peer.handle_payload_done(&mut host.swarm, block, now);
                self.drain_events(e);
                continue;
            }
            if end.rx.is_empty() {
                break;
            }
            let used = match end.peer.handle_bytes(&mut host.swarm, &end.rx, now) {
                Ok(n) => {
                    end.rx.drain(..n);
                    n
                }
                Err(_) => 0,
            };
            self.drain_events(e);
            if self.ends[e].receiving.is_none() && used == 0 {
                break;
            }
        }
        self.fill(e);
        let h = self.ends[e].host as usize;
        self.kick_uplink(h);
    }

    fn drain_events(&mut self, e: usize) {
        while let Some(ev) = self.ends[e].peer.poll_event() {
            match ev {
                Event::ReceivePayload { block, .. } => {
                    self.ends[e].receiving = Some((block, u64::from(block.len)));
                }
                Event::PieceComplete(piece) => {
                    let h = self.ends[e].host as usize;
                    let len = u64::from(self.lengths.piece_size(piece));
                    let host = &mut self.hosts[h];
                    let start = self.now.max(host.hash_free);
                    let done = start + xfer_ns(len, self.cfg.hash_rate);
                    host.hash_free = done;
                    self.at(done, Ev::Verdict(h as u32, piece.get()));
                }
                Event::Close(_) => self.close(e),
                Event::HandshakeDone { .. } => {}
            }
        }
    }

    fn close(&mut self, e: usize) {
        if self.ends[e].closed {
            return;
        }
        let h = self.ends[e].host as usize;
        self.ends[e].closed = true;
        self.ends[e].peer.handle_close(&mut self.hosts[h].swarm);
        self.hosts[h].ends.retain(|&x| x as usize != e);
        let r = self.ends[e].remote as usize;
        // The remote sees the FIN after the bytes already sent (simplified: at once).
        if !self.ends[r].closed {
            let rh = self.ends[r].host as usize;
            self.ends[r].closed = true;
            self.ends[r].peer.handle_close(&mut self.hosts[rh].swarm);
            self.hosts[rh].ends.retain(|&x| x as usize != r);
        }
    }

    fn verdict(&mut self, h: usize, piece: u32) {
        let Some(p) = self.lengths.piece(piece) else {
            return;
        };
        let host = &mut self.hosts[h];
        host.swarm.handle_verdict(p, true);
        if host.done_at.is_none() && host.swarm.is_complete() && !self.cfg.is_seeder(h) {
            host.done_at = Some(self.now);
            self.remaining -= 1;
            if let Some(l) = self.cfg.linger {
                self.at(self.now + nanos(l), Ev::Leave(h as u32));
            }
        }
        // Like the runtime: every connection is polled after a verdict (have broadcast).
        let ends = self.hosts[h].ends.clone();
        for e in ends {
            self.fill(e as usize);
        }
        self.kick_uplink(h);
    }

    /// The host's process exits: every connection closes.
    fn leave(&mut self, h: usize) {
        self.hosts[h].gone = true;
        let ends = self.hosts[h].ends.clone();
        for e in ends {
            self.close(e as usize);
        }
    }

    /// One line of the fleet's state at `now` (see [`SimConfig::trace`]): the seeders'
    /// upload so far, the share of the payload every host / the median host holds, and
    /// how many pieces have reached every rack, half the racks, any rack other than
    /// the first seeder's.
    fn trace(&mut self) {
        let Some(step) = self.cfg.trace else { return };
        let k = self.cfg.seeders.max(1);
        let pieces = self.lengths.piece_count() as usize;
        let racks = self.rack_bytes.len();
        let mut in_rack = vec![vec![false; pieces]; racks];
        let mut held: Vec<u32> = Vec::with_capacity(self.hosts.len() - k);
        for host in &self.hosts[k..] {
            let have = host.swarm.have();
            held.push(have.count());
            for p in have.ones() {
                in_rack[host.rack as usize][p as usize] = true;
            }
        }
        held.sort_unstable();
        let per_piece: Vec<usize> = (0..pieces)
            .map(|p| in_rack.iter().filter(|r| r[p]).count())
            .collect();
        let everywhere = per_piece.iter().filter(|&&c| c == racks).count();
        let half = per_piece.iter().filter(|&&c| 2 * c >= racks).count();
        let seeder_rack = self.hosts[0].rack as usize;
        let left_home = (0..pieces)
            .filter(|&p| (0..racks).any(|r| r != seeder_rack && in_rack[r][p]))
            .count();
        let seeded: u64 = self.hosts[..k].iter().map(|h| h.uploaded).sum();
        let unchoked: usize = self.hosts[0]
            .ends
            .iter()
            .filter(|&&e| !self.ends[e as usize].peer.choke_state().0)
            .count();
        eprintln!(
            "t={:.3}s seeder {:.3} copies ({} conns, {} unchoked) | host pieces min {} p50 {} | pieces in all {racks} racks {everywhere}, in half {half}, out of the seeder's rack {left_home} of {pieces}",
            self.now as f64 / 1e9,
            seeded as f64 / self.cfg.size as f64,
            self.hosts[0].ends.len(),
            unchoked,
            held.first().copied().unwrap_or(0),
            held.get(held.len() / 2).copied().unwrap_or(0),
        );
        self.trace_links(step);
        // The first pass's last pieces (under 6 left): their holder (host), sixteenths
        // sent, whether the seeder chokes it, whether it is interested, whether it has
        // the piece. (How a holder that lost its slot was found holding up the fleet.)
        let pending: Vec<String> = self
            .lengths
            .pieces()
            .filter(|&p| !self.hosts[0].swarm.served_once(p))
            .take(6)
            .map(|p| {
                let sw = &self.hosts[0].swarm;
                let holder = sw.holder(p);
                let end = self.hosts[0]
                    .ends
                    .iter()
                    .map(|&e| &self.ends[e as usize])
                    .find(|e| Some(e.peer.key()) == holder);
                match end {
                    Some(e) => {
                        let r = &self.ends[e.remote as usize];
                        format!(
                            "{}:{}/16 h{} choked={} int={} got={}",
                            p.get(),
                            sw.spread(p),
                            r.host,
                            e.peer.choke_state().0,
                            e.peer.choke_state().1,
                            self.hosts[r.host as usize].swarm.have().get(p.get())
                        )
                    }
                    None => format!("{}:{}/16 none", p.get(), sw.spread(p)),
                }
            })
            .collect();
        if !pending.is_empty() && pending.len() < 6 {
            eprintln!("  pending first copies: {}", pending.join(", "));
        }
        self.at(self.now + nanos(step), Ev::Trace);
    }

    /// A line of where the downloaders' links stand (see [`SimConfig::trace`]): the
    /// share of the step each host's downlink and uplink were busy, pieces some
    /// connection of the host has and it lacks, bytes it asked for and has not received,
    /// requests queued with it, and bytes in its send buffers; p10/p50/p90 over hosts.
    fn trace_links(&mut self, step: Duration) {
        let k = self.cfg.seeders.max(1);
        let full = self.cfg.host_rate() * step.as_secs_f64();
        let q = |v: &mut Vec<f64>| -> String {
            v.sort_by(f64::total_cmp);
            let at = |f: f64| v.get(((v.len() as f64 - 1.0) * f) as usize).copied();
            match (at(0.1), at(0.5), at(0.9)) {
                (Some(a), Some(b), Some(c)) => format!("{a:.2}/{b:.2}/{c:.2}"),
                _ => "-".into(),
            }
        };
        let (mut down, mut up, mut avail, mut infl, mut reqs, mut unsent, mut conns) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let pieces = self.lengths.piece_count();
        for host in &self.hosts[k..] {
            if host.gone || host.done_at.is_some() {
                continue;
            }
            down.push(host.win_down as f64 / full);
            up.push(host.win_up as f64 / full);
            let mut any = vec![false; pieces as usize];
            let (mut i, mut r, mut u) = (0u64, 0usize, 0u64);
            for &e in &host.ends {
                let end = &self.ends[e as usize];
                if end.closed {
                    continue;
                }
                for p in end.peer.remote_has().ones() {
                    any[p as usize] = true;
                }
                i += end.peer.inflight_bytes();
                r += end.peer.queued_requests();
                u += end.out.unsent();
            }
            let lack = (0..pieces)
                .filter(|&p| any[p as usize] && !host.swarm.have().get(p))
                .count();
            avail.push(lack as f64);
            infl.push(i as f64 / (1 << 20) as f64);
            reqs.push(r as f64);
            unsent.push(u as f64 / (1 << 20) as f64);
            conns.push(host.ends.len() as f64);
        }
        let mut classes = [0u64; 4];
        for host in &self.hosts[k..] {
            for (c, n) in classes.iter_mut().zip(host.samples) {
                *c += u64::from(n);
            }
        }
        let total = classes.iter().sum::<u64>().max(1) as f64;
        eprintln!(
            "  downlink samples: busy {:.2}, idle with nothing asked {:.2}, idle waiting on a busy sender {:.2}, idle otherwise {:.2}",
            classes[0] as f64 / total,
            classes[1] as f64 / total,
            classes[2] as f64 / total,
            classes[3] as f64 / total
        );
        let seeder_up = self.hosts[..k]
            .iter()
            .map(|h| h.win_up as f64 / full)
            .sum::<f64>()
            / k as f64;
        eprintln!(
            "  links ({} hosts busy): down {} up {} | seeder up {seeder_up:.2} | lacking-available pieces {} | asked MiB {} | reqs queued {} | unsent MiB {} | conns {}",
            down.len(),
            q(&mut down),
            q(&mut up),
            q(&mut avail),
            q(&mut infl),
            q(&mut reqs),
            q(&mut unsent),
            q(&mut conns),
        );
        for host in &mut self.hosts {
            host.win_down = 0;
            host.win_up = 0;
            host.samples = [0; 4];
        }
    }

    /// Samples each downloading host's downlink (see [`Host::samples`]), 100 times per
    /// trace step.
    fn sample(&mut self) {
        let Some(step) = self.cfg.trace else { return };
        let k = self.cfg.seeders.max(1);
        let racks = self.rack_bytes.len();
        for h in k..self.hosts.len() {
            if self.hosts[h].gone || self.hosts[h].done_at.is_some() {
                continue;
            }
            let class = if self.fifos[2 * racks + h] > self.now {
                0
            } else {
                let mut asked = false;
                let mut busy_sender = false;
                for &e in &self.hosts[h].ends {
                    let end = &self.ends[e as usize];
                    if end.closed || end.peer.inflight_bytes() == 0 {
                        continue;
                    }
                    asked = true;
                    let r = &self.ends[end.remote as usize];
                    let src = &self.hosts[r.host as usize];
                    if src.up_busy && r.out.unsent() == 0 {
                        busy_sender = true;
                    }
                }
                match (asked, busy_sender) {
                    (false, _) => 1,
                    (true, true) => 2,
                    (true, false) => 3,
                }
            };
            self.hosts[h].samples[class] += 1;
        }
        self.at(self.now + nanos(step) / 100, Ev::Sample);
    }

    fn tick(&mut self, h: usize) {
        if self.hosts[h].gone {
            return;
        }
        let now = self.instant();
        let ends = self.hosts[h].ends.clone();
        for &e in &ends {
            let e = e as usize;
            let end = &mut self.ends[e];
            if end.closed {
                continue;
            }
            end.peer.handle_tick(&mut self.hosts[h].swarm, now);
            self.drain_events(e);
        }
        for &e in &ends {
            self.fill(e as usize);
        }
        self.kick_uplink(h);
        self.at(self.now + nanos(self.cfg.tick), Ev::Tick(h as u32));
    }
}

/// Which peers the tracker hands `h` when it must choose `numwant` of `candidates`
/// (announce order): a window that moves on with every announce, as corvid's tracker
/// does with its cursor (and every seeder). Rack aware, the counts of corvid's tracker
/// ([`rack_counts`]): the seeders of `h`'s rack (or every rack's, if it has none), a
/// moving window of its own rack's peers, and of the other racks' peers those whose pair
/// with `h` scores highest ([`pair_score`], stable over re-announces); or, with
/// [`SimConfig::cross_rack_peers`] set, that many other-rack peers in a moving window.
fn handout(
    cfg: &SimConfig,
    hosts: &[Host],
    h: usize,
    candidates: &[u32],
    rng: &mut Rng,
) -> Vec<u32> {
    let want = cfg.numwant;
    let pick = |pool: &[u32], k: usize, rng: &mut Rng| -> Vec<u32> {
        if pool.len() <= k {
            return pool.to_vec();
        }
        let start = rng.below(pool.len() as u64) as usize;
        pool.iter().cycle().skip(start).take(k).copied().collect()
    };
    let mut out = if cfg.rack_aware && cfg.rack_size > 0 {
        let mine = hosts[h].rack;
        let (mut near_seeds, mut far_seeds, mut same, mut other) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &p in candidates {
            let near = hosts[p as usize].rack == mine;
            match (cfg.is_seeder(p as usize), near) {
                (true, true) => near_seeds.push(p),
                (true, false) => far_seeds.push(p),
                (false, true) => same.push(p),
                (false, false) => other.push(p),
            }
        }
        match cfg.cross_rack_peers {
            Some(k) => {
                // (The simulator's own rule before it followed the tracker's: seeders
                // count among their rack's peers, and every seeder is added.)
                let (same, other): (Vec<u32>, Vec<u32>) = candidates
                    .iter()
                    .copied()
                    .partition(|&p| hosts[p as usize].rack == mine);
                let k_other = k.min(want);
                let mut v = pick(&same, want - k_other, rng);
                v.extend(pick(&other, k_other, rng));
                for s in near_seeds.into_iter().chain(far_seeds) {
                    if !v.contains(&s) {
                        v.push(s);
                    }
                }
                v
            }
            None => {
                let seeds = if near_seeds.is_empty() {
                    far_seeds
                } else {
                    near_seeds
                };
                let n = rack_counts(seeds.len(), same.len(), other.len(), want);
                let mut v = pick(&seeds, n.seeds, rng);
                v.extend(pick(&same, n.same, rng));
                let me = hosts[h].peer_id;
                other.sort_by_cached_key(|&p| {
                    (
                        std::cmp::Reverse(pair_score(&me, &hosts[p as usize].peer_id)),
                        p,
                    )
                });
                v.extend(other.into_iter().take(n.other));
                v
            }
        }
    } else {
        let mut v = pick(candidates, want, rng);
        // Every seeder (few, one per datacenter).
        for s in 0..cfg.seeders.max(1) as u32 {
            if !v.contains(&s) && candidates.contains(&s) {
                v.push(s);
            }
        }
        v
    };
    out.sort_unstable();
    out
}

/// Runs one simulated deploy.
pub fn simulate(cfg: SimConfig) -> Result<SimResult, String> {
    Ok(Sim::new(cfg)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rack-aware handout takes corvid's tracker's counts and cross-rack choice: a
    /// host alone in its rack is handed a full list from other racks (the simulator's
    /// fixed 4 left it with 5 connections and made it the last host at N=1000), a host in
    /// a full rack about a third as many other-rack peers as same-rack ones, always the
    /// same ones (the pairs' scores), whatever the window.
    #[test]
    fn handout_follows_the_trackers_rule() {
        let cfg = SimConfig {
            hosts: 40,
            seeders: 1,
            size: 8 << 20,
            piece_size: 256 << 10,
            rate_bps: 1e9,
            rack_size: 10,
            oversub: 4.0,
            hop_latency: Duration::from_micros(50),
            goodput: 1.0,
            segment: 64 << 10,
            sndbuf: 256 << 10,
            hash_rate: 1e9,
            start_spread: Duration::from_millis(50),
            numwant: 12,
            rack_aware: true,
            rack_pick: true,
            cross_rack_peers: None,
            seed: 1,
            time_limit: Duration::from_secs(10),
            request_size: 128 << 10,
            tick: Duration::from_millis(100),
            max_unchoked: 128,
            seed_fanout: 32,
            seed_extra_permille: 50,
            egress_queue: 0,
            linger: None,
            trace: None,
            rack_spread: false,
        };
        let sim = Sim::new(cfg.clone()).unwrap();
        let everyone: Vec<u32> = (0..41).collect();
        let others =
            |h: u32| -> Vec<u32> { everyone.iter().copied().filter(|&p| p != h).collect() };
        let lone = 40;
        assert_eq!(cfg.rack_of(lone), 4);
        assert!((0..40).all(|h| cfg.rack_of(h) != 4));
        let got = handout(&cfg, &sim.hosts, lone, &others(lone as u32), &mut Rng(1));
        assert_eq!(got.len(), 12, "{got:?}");
        assert!(got.contains(&0), "the seeder: {got:?}");
        // A host of a full rack (rack 1: hosts 9..=18).
        let h = 12;
        let cross = |v: &[u32]| -> Vec<u32> {
            v.iter()
                .copied()
                .filter(|&p| cfg.rack_of(p as usize) != cfg.rack_of(h) && p != 0)
                .collect()
        };
        let a = handout(&cfg, &sim.hosts, h, &others(h as u32), &mut Rng(1));
        let b = handout(&cfg, &sim.hosts, h, &others(h as u32), &mut Rng(99));
        let same = a
            .iter()
            .filter(|&&p| cfg.rack_of(p as usize) == cfg.rack_of(h))
            .count();
        assert_eq!(same, 9, "every rack-mate: {a:?}");
        assert_eq!(cross(&a).len(), 2, "{a:?}");
        assert_eq!(cross(&a), cross(&b), "the same cross-rack pairs");
        // The fixed count of before, when asked for.
        let fixed = SimConfig {
            cross_rack_peers: Some(4),
            ..cfg.clone()
        };
        let got = handout(&fixed, &sim.hosts, lone, &others(lone as u32), &mut Rng(1));
        assert_eq!(got.len(), 5, "{got:?}");
    }

    /// Whatever the segment boundaries, the receiver sees the sender's control bytes in
    /// order and every payload byte counted once.
    #[test]
    fn stream_delivers_in_order_across_any_split() {
        for step in [1u64, 3, 7, 16, 1000] {
            let mut s = Stream::default();
            s.push_ctrl(b"abc");
            s.push_ctrl(b"de");
            s.push_pay(10);
            s.push_ctrl(b"fgh");
            s.push_pay(5);
            assert_eq!(s.total, 23);
            let (mut ctrl, mut pay) = (Vec::new(), 0);
            while s.total > 0 {
                let n = step.min(s.total);
                s.handed += n;
                assert_eq!(s.unsent(), s.total - n);
                s.deliver(n, &mut ctrl, &mut pay);
            }
            assert_eq!(ctrl, b"abcdefgh");
            assert_eq!(pay, 15);
            assert!(s.chunks.is_empty());
        }
    }
}
