//! An in-memory swarm: nodes with a `Vec<u8>` as storage and real SHA-1 verification,
//! connected pairwise by byte queues with latency and optional upload caps, driven step by
//! step under a simulated clock (the shape of quinn-proto's `tests/util.rs`).

use super::*;
use crate::bencode::OwnedValue;
use crate::swarm::SwarmConfig;
use auth::Secret;
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::net::IpAddr;

const STEP: Duration = Duration::from_millis(10);

struct Torrent {
    lengths: Lengths,
    data: Vec<u8>,
    hashes: Vec<[u8; 20]>,
    info_hash: [u8; 20],
}

fn torrent(total: usize, piece_len: u64, seed: u64) -> Torrent {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..total)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let pieces = (total as u64).div_ceil(piece_len);
    let lengths = Lengths::new(total as u64, piece_len, pieces).unwrap();
    let hashes = data
        .chunks(piece_len as usize)
        .map(|c| Sha1::digest(c).into())
        .collect();
    Torrent {
        lengths,
        data,
        hashes,
        info_hash: Sha1::digest(b"test torrent").into(),
    }
}

struct Conn {
    pc: PeerConn,
    /// Received bytes not yet consumed; handed over as two slices.
    inbox: VecDeque<u8>,
    payload: Option<(BlockRef, bool)>,
}

struct Node {
    swarm: Swarm,
    storage: Vec<u8>,
    conns: BTreeMap<usize, Conn>,
    corrupt: bool,
    /// `request` messages sent by connections already closed.
    requests_closed: u64,
    /// Block payload bytes this node may send per step.
    upload_cap: Option<usize>,
    ip: IpAddr,
    peer_id: [u8; 20],
    cfg: PeerConfig,
}

/// Chunks in flight on one direction of a connection, with the step they arrive.
type Link = VecDeque<(u64, Vec<u8>)>;

struct Sim {
    t: Torrent,
    nodes: Vec<Node>,
    now: Instant,
    step: u64,
    latency_steps: u64,
    /// Deliver at most this many bytes per link per step (varying below it).
    max_chunk: Option<usize>,
    /// Times the input reached a connection as two slices.
    split_inputs: u64,
    /// (from, to) -> chunks in flight with the step they arrive.
    links: BTreeMap<(usize, usize), Link>,
    /// Every close seen: (node, remote node, reason).
    closes: Vec<(usize, usize, CloseReason)>,
    /// Every byte each node sent to each other node, in order.
    sent: BTreeMap<(usize, usize), Vec<u8>>,
}

impl Sim {
    fn new(t: Torrent) -> Self {
        Sim {
            t,
            nodes: Vec::new(),
            now: Instant::now(),
            step: 0,
            latency_steps: 1,
            max_chunk: None,
            split_inputs: 0,
            links: BTreeMap::new(),
            closes: Vec::new(),
            sent: BTreeMap::new(),
        }
    }

    fn add_node(&mut self, seed: bool) -> usize {
        let id = self.nodes.len();
        let n = self.t.lengths.piece_count();
        let have = if seed {
            Bitfield::full(n)
        } else {
            Bitfield::new(n)
        };
        let storage = if seed {
            self.t.data.clone()
        } else {
            vec![0; self.t.data.len()]
        };
        let mut peer_id = [b'-'; 20];
        peer_id[..8].copy_from_slice(b"-CV0001-");
        peer_id[19] = id as u8;
        self.nodes.push(Node {
            swarm: Swarm::new(
                SwarmConfig::default(),
                self.t.info_hash,
                self.t.lengths,
                have,
                0x9e37_79b9 + id as u64,
            ),
            storage,
            conns: BTreeMap::new(),
            corrupt: false,
            requests_closed: 0,
            upload_cap: None,
            ip: IpAddr::from([10, 0, 0, id as u8 + 1]),
            peer_id,
            cfg: PeerConfig::default(),
        });
        id
    }

    fn connect(&mut self, a: usize, b: usize) {
        // `a` dials, `b` accepts.
        for (x, y, role) in [(a, b, Role::Initiator), (b, a, Role::Responder)] {
            let addr = SocketAddr::new(self.nodes[y].ip, 6881);
            let node = &mut self.nodes[x];
            let cfg = node.cfg.clone();
            // Distinct per connection and per connect call, as a real nonce source is.
            let nonce = Sha1::digest([x as u8, y as u8, self.step as u8]).as_slice()[..16]
                .try_into()
                .unwrap();
            if let Ok(pc) = PeerConn::new(
                &cfg,
                &mut node.swarm,
                addr,
                role,
                node.peer_id,
                nonce,
                self.now,
            ) {
                node.conns.insert(
                    y,
                    Conn {
                        pc,
                        inbox: VecDeque::new(),
                        payload: None,
                    },
                );
            }
        }
    }

    fn connect_all(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.connect(a, b);
            }
        }
    }

    /// `request` messages node `x` sent over all its connections so far.
    fn requests_sent(&self, x: usize) -> u64 {
        let n = &self.nodes[x];
        n.requests_closed + n.conns.values().map(|c| c.pc.stats().requests).sum::<u64>()
    }

    fn close(&mut self, x: usize, y: usize, reason: CloseReason) {
        self.closes.push((x, y, reason));
        for (p, q) in [(x, y), (y, x)] {
            let node = &mut self.nodes[p];
            if let Some(mut c) = node.conns.remove(&q) {
                c.pc.handle_close(&mut node.swarm);
                node.requests_closed += c.pc.stats().requests;
            }
        }
        self.links.remove(&(x, y));
        self.links.remove(&(y, x));
    }

    /// Drains a connection's events; returns a close reason if it ended.
    fn drain_events(&mut self, x: usize, y: usize) -> Option<CloseReason> {
        loop {
            let node = &mut self.nodes[x];
            let c = node.conns.get_mut(&y)?;
            match c.pc.poll_event()? {
                Event::HandshakeDone { .. } => {}
                Event::ReceivePayload { block, discard } => c.payload = Some((block, discard)),
                Event::PieceComplete(p) => {
                    let off = self.t.lengths.piece_offset(p) as usize;
                    let len = self.t.lengths.piece_size(p) as usize;
                    let digest: [u8; 20] = Sha1::digest(&node.storage[off..off + len]).into();
                    let ok = digest == self.t.hashes[p.as_usize()];
                    node.swarm.handle_verdict(p, ok);
                }
                Event::Close(r) => return Some(r),
            }
        }
    }

    fn receive(&mut self, x: usize, y: usize) -> Option<CloseReason> {
        loop {
            if let Some(r) = self.drain_events(x, y) {
                return Some(r);
            }
            let now = self.now;
            let node = &mut self.nodes[x];
            let c = node.conns.get_mut(&y)?;
            if let Some((block, discard)) = c.payload {
                let len = block.len as usize;
                if c.inbox.len() < len {
                    return None;
                }
                if !discard {
                    let off = (self.t.lengths.piece_offset(block.piece) + u64::from(block.offset))
                        as usize;
                    let (x, y) = c.inbox.as_slices();
                    let from_x = x.len().min(len);
                    node.storage[off..off + from_x].copy_from_slice(&x[..from_x]);
                    node.storage[off + from_x..off + len].copy_from_slice(&y[..len - from_x]);
                }
                c.inbox.drain(..len);
                c.payload = None;
                c.pc.handle_payload_done(&mut node.swarm, block, now);
                continue;
            }
            // Present the input as two slices cut at a varying position, as a ring
            // buffer would (std's VecDeque rarely wraps here on its own).
            let data = c.inbox.make_contiguous();
            let cut = (self.step as usize * 7919 + y * 31) % (data.len() + 1);
            let (a, b) = data.split_at(cut);
            if !a.is_empty() && !b.is_empty() {
                self.split_inputs += 1;
            }
            match c.pc.handle_bytes_split(&mut node.swarm, a, b, now) {
                Err(r) => return Some(r),
                Ok(n) => {
                    c.inbox.drain(..n);
                    if n == 0 && c.payload.is_none() && c.pc.events.is_empty() {
                        return None;
                    }
                }
            }
        }
    }

    fn transmit(&mut self, x: usize) -> Vec<(usize, CloseReason)> {
        let mut closes = Vec::new();
        let now = self.now;
        let arrive = self.step + self.latency_steps;
        let node = &mut self.nodes[x];
        let mut budget = node.upload_cap.unwrap_or(usize::MAX);
        let ids: Vec<usize> = node.conns.keys().copied().collect();
        // Rotate the starting connection so a capped uplink is shared fairly.
        let k = ids.len().max(1);
        let rot = (self.step as usize) % k;
        for &y in ids[rot..].iter().chain(ids[..rot].iter()) {
            let Some(c) = node.conns.get_mut(&y) else {
                continue;
            };
            let mut out = Vec::new();
            loop {
                if budget == 0 {
                    // Control messages still flow; only payload is capped.
                    c.pc.poll_transmit_control(&mut node.swarm, now, &mut out);
                    break;
                }
                match c.pc.poll_transmit(&mut node.swarm, now, &mut out) {
                    None => break,
                    Some(Transmit::Block { header, block }) => {
                        out.extend_from_slice(&header);
                        let off = (self.t.lengths.piece_offset(block.piece)
                            + u64::from(block.offset)) as usize;
                        let start = out.len();
                        out.extend_from_slice(&node.storage[off..off + block.len as usize]);
                        if node.corrupt {
                            out[start] ^= 0xff;
                        }
                        budget = budget.saturating_sub(block.len as usize);
                    }
                }
            }
            if let Some(Event::Close(r)) = c.pc.events.iter().find(|e| matches!(e, Event::Close(_)))
            {
                closes.push((y, r.clone()));
            }
            if !out.is_empty() {
                self.sent.entry((x, y)).or_default().extend_from_slice(&out);
                self.links
                    .entry((x, y))
                    .or_default()
                    .push_back((arrive, out));
            }
        }
        closes
    }

    fn run_step(&mut self) {
        self.step += 1;
        self.now += STEP;
        let now = self.now;
        let n = self.nodes.len();
        // Deliver.
        for ((from, to), q) in self.links.iter_mut() {
            // With `max_chunk`, each step delivers a different small number of bytes, so
            // messages arrive cut at every kind of position.
            let mut room = match self.max_chunk {
                Some(c) => 1 + (self.step as usize * 7 + from * 3) % c,
                None => usize::MAX,
            };
            while room > 0 && q.front().is_some_and(|(at, _)| *at <= self.step) {
                let Some((at, mut bytes)) = q.pop_front() else {
                    break;
                };
                if bytes.len() > room {
                    let rest = bytes.split_off(room);
                    q.push_front((at, rest));
                }
                room -= bytes.len();
                if let Some(c) = self.nodes[*to].conns.get_mut(from) {
                    c.inbox.extend(&bytes);
                }
            }
        }
        for x in 0..n {
            let ids: Vec<usize> = self.nodes[x].conns.keys().copied().collect();
            for y in ids {
                let node = &mut self.nodes[x];
                if let Some(c) = node.conns.get_mut(&y) {
                    c.pc.handle_tick(&mut node.swarm, now);
                }
                if let Some(r) = self.receive(x, y) {
                    self.close(x, y, r);
                }
            }
        }
        for x in 0..n {
            for (y, r) in self.transmit(x) {
                self.close(x, y, r);
            }
        }
        for node in &self.nodes {
            node.swarm.check_invariants();
            for c in node.conns.values() {
                c.pc.check_invariants();
            }
        }
    }

    fn run_until(&mut self, max_steps: u64, done: impl Fn(&Sim) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            self.run_step();
        }
        done(self)
    }

    fn all_complete(&self, nodes: &[usize]) -> bool {
        nodes.iter().all(|&i| self.nodes[i].swarm.is_complete())
    }

    fn assert_data(&self, i: usize) {
        assert!(
            self.nodes[i].storage == self.t.data,
            "node {i} data differs"
        );
    }
}

impl PeerConn {
    /// Test helper: the outstanding request that comes first in the torrent.
    fn first_request(&self) -> BlockRef {
        let &(piece, offset, len) = self.outstanding.keys().min().expect("a request");
        BlockRef { piece, offset, len }
    }

    /// Test helper: flush control messages without taking an upload block.
    fn poll_transmit_control(&mut self, swarm: &mut Swarm, now: Instant, out: &mut Vec<u8>) {
        let choking = self.am_choking;
        self.am_choking = true;
        let _ = self.poll_transmit(swarm, now, out);
        self.am_choking = choking;
    }
}

#[test]
fn one_seeder_one_peer() {
    let mut sim = Sim::new(torrent(300_000, 32_768, 1));
    sim.add_node(true);
    sim.add_node(false);
    sim.connect_all();
    assert!(sim.run_until(2_000, |s| s.all_complete(&[1])));
    sim.assert_data(1);
    assert_eq!(sim.nodes[0].swarm.stats().uploaded, 300_000);
    assert_eq!(sim.nodes[1].swarm.stats().downloaded, 300_000);
}

fn eight_peers(cap: Option<usize>, small_pipeline: bool) -> Sim {
    eight_peers_with(cap, small_pipeline, 1)
}

fn eight_peers_with(cap: Option<usize>, small_pipeline: bool, latency_steps: u64) -> Sim {
    let mut sim = Sim::new(torrent(1_000_000, 32_768, 2));
    sim.latency_steps = latency_steps;
    sim.add_node(true);
    sim.nodes[0].upload_cap = cap;
    for _ in 0..8 {
        let i = sim.add_node(false);
        if small_pipeline {
            sim.nodes[i].cfg.initial_inflight = 64 * 1024;
            sim.nodes[i].cfg.max_inflight = 256 * 1024;
            sim.nodes[i].cfg.min_inflight = 64 * 1024;
        }
    }
    sim.connect_all();
    let peers: Vec<usize> = (1..=8).collect();
    assert!(
        sim.run_until(20_000, |s| s.all_complete(&peers)),
        "not complete: {:?}",
        peers
            .iter()
            .map(|&i| sim.nodes[i].swarm.have().count())
            .collect::<Vec<_>>()
    );
    for &i in &peers {
        sim.assert_data(i);
    }
    sim
}

#[test]
fn seeder_and_eight_peers_share() {
    let sim = eight_peers(None, true);
    let peer_upload: u64 = (1..=8).map(|i| sim.nodes[i].swarm.stats().uploaded).sum();
    assert!(peer_upload > 0, "peers uploaded nothing");
    assert!(sim
        .closes
        .iter()
        .all(|(_, _, r)| *r == CloseReason::BothComplete));
}

#[test]
fn capped_seeder_swarm_completes_via_peers() {
    // 32 KiB per 10 ms step: the seeder alone would need ~250 steps per copy.
    let sim = eight_peers(Some(32 * 1024), true);
    let seeder = sim.nodes[0].swarm.stats().uploaded;
    let peers: u64 = (1..=8).map(|i| sim.nodes[i].swarm.stats().uploaded).sum();
    assert!(
        peers > seeder,
        "peers uploaded {peers}, seeder {seeder}: peers should carry most of the load"
    );
    // The seeder sent far less than one copy per peer: serving least-spread pieces first
    // brings it to about two copies (about 2.6 when it served requests in order).
    assert!(seeder < 2_300_000, "seeder uploaded {seeder}");
}

#[test]
fn capped_seeder_with_default_deep_pipeline_completes() {
    let sim = eight_peers(Some(64 * 1024), false);
    let peers: u64 = (1..=8).map(|i| sim.nodes[i].swarm.stats().uploaded).sum();
    assert!(peers > 0);
}

#[test]
fn corrupt_peer_is_refetched_and_banned() {
    let mut sim = Sim::new(torrent(600_000, 32_768, 3));
    sim.add_node(true);
    let bad = sim.add_node(true);
    sim.nodes[bad].corrupt = true;
    let dl = sim.add_node(false);
    // A shallow pipeline, so requests go to both sources rather than all to the first.
    sim.nodes[dl].cfg.initial_inflight = 64 * 1024;
    sim.nodes[dl].cfg.min_inflight = 64 * 1024;
    sim.nodes[dl].cfg.max_inflight = 64 * 1024;
    sim.connect_all();
    assert!(sim.run_until(10_000, |s| s.all_complete(&[dl])));
    eprintln!(
        "dl stats {:?} closes {:?}",
        sim.nodes[dl].swarm.stats(),
        sim.closes
    );
    sim.assert_data(dl);
    let bad_ip = sim.nodes[bad].ip;
    assert!(sim.nodes[dl].swarm.is_banned_addr(bad_ip));
    assert!(sim.nodes[dl].swarm.stats().wasted > 0);
    assert!(sim
        .closes
        .iter()
        .any(|&(x, y, ref r)| x == dl && y == bad && *r == CloseReason::Banned));
    // A banned address cannot come back.
    sim.connect(dl, bad);
    assert!(!sim.nodes[dl].conns.contains_key(&bad));
}

#[test]
fn late_joiner_completes_from_peers() {
    let mut sim = Sim::new(torrent(400_000, 32_768, 4));
    sim.add_node(true);
    sim.add_node(false);
    sim.add_node(false);
    sim.connect_all();
    assert!(sim.run_until(5_000, |s| s.all_complete(&[1, 2])));
    // The seeder leaves; a late joiner must get everything from the former peers.
    let ids: Vec<usize> = sim.nodes[0].conns.keys().copied().collect();
    for y in ids {
        sim.close(0, y, CloseReason::Idle);
    }
    let late = sim.add_node(false);
    sim.connect(late, 1);
    sim.connect(late, 2);
    assert!(sim.run_until(5_000, |s| s.all_complete(&[late])));
    sim.assert_data(late);
    assert!(sim.nodes[1].swarm.stats().uploaded > 0 || sim.nodes[2].swarm.stats().uploaded > 0);
}

#[test]
fn endgame_last_piece_from_two_peers() {
    // One piece of 8 blocks, two seeders: in end-game every block is asked of both.
    let mut sim = Sim::new(torrent(8 * 16_384, 8 * 16_384, 5));
    sim.add_node(true);
    sim.add_node(true);
    let dl = sim.add_node(false);
    sim.connect(dl, 0);
    sim.connect(dl, 1);
    assert!(sim.run_until(1_000, |s| s.all_complete(&[dl])));
    sim.assert_data(dl);
    let up0 = sim.nodes[0].swarm.stats().uploaded;
    let up1 = sim.nodes[1].swarm.stats().uploaded;
    assert!(up0 > 0 && up1 > 0, "uploads {up0} {up1}");
    // Duplicates were dropped, not written: exactly one copy was kept.
    assert_eq!(sim.nodes[dl].swarm.stats().downloaded, 8 * 16_384);
}

// ---- hostile inputs against a single connection ----

fn single(seed_us: bool) -> (Torrent, Swarm, PeerConn, Instant) {
    let t = torrent(100_000, 32_768, 9);
    let n = t.lengths.piece_count();
    let have = if seed_us {
        Bitfield::full(n)
    } else {
        Bitfield::new(n)
    };
    let mut swarm = Swarm::new(SwarmConfig::default(), t.info_hash, t.lengths, have, 1);
    let now = Instant::now();
    let pc = PeerConn::new(
        &PeerConfig::default(),
        &mut swarm,
        "10.0.0.9:6881".parse().unwrap(),
        Role::Initiator,
        [7; 20],
        [0; 16],
        now,
    )
    .unwrap();
    (t, swarm, pc, now)
}

fn handshake_bytes(info_hash: [u8; 20], fast: bool) -> Vec<u8> {
    let mut h = Handshake::ours(info_hash, [3; 20]);
    if !fast {
        h.reserved = [0; 8];
    }
    let mut v = Vec::new();
    h.encode(&mut v);
    v
}

fn feed(
    swarm: &mut Swarm,
    pc: &mut PeerConn,
    msgs: &[Message<'_>],
    now: Instant,
) -> Result<usize, CloseReason> {
    let mut v = Vec::new();
    for m in msgs {
        m.encode(&mut v);
    }
    pc.handle_bytes(swarm, &v, now)
}

#[test]
fn wrong_info_hash_closes() {
    let (_t, mut swarm, mut pc, now) = single(false);
    let r = pc.handle_bytes(&mut swarm, &handshake_bytes([0xaa; 20], true), now);
    assert!(matches!(r, Err(CloseReason::WrongInfoHash(_))));
    assert!(r.unwrap_err().to_string().contains("aaaaaaaa"));
    assert!(matches!(
        pc.poll_event(),
        Some(Event::Close(CloseReason::WrongInfoHash(_)))
    ));
}

#[test]
fn handshake_split_then_messages() {
    let (t, mut swarm, mut pc, now) = single(true);
    let hs = handshake_bytes(t.info_hash, true);
    assert_eq!(pc.handle_bytes(&mut swarm, &hs[..30], now), Ok(0));
    assert_eq!(pc.handle_bytes(&mut swarm, &hs, now), Ok(68));
    assert!(matches!(
        pc.poll_event(),
        Some(Event::HandshakeDone {
            fast: true,
            extended: true,
            ..
        })
    ));
    let mut out = Vec::new();
    assert_eq!(pc.poll_transmit(&mut swarm, now, &mut out), None);
    // Our handshake, then have-all (we seed and they speak fast), then our ext handshake.
    assert_eq!(&out[..20], wire::PROTOCOL);
    assert_eq!(&out[68..73], &[0, 0, 0, 1, wire::id::HAVE_ALL]);
}

fn opened(seed_us: bool, fast: bool) -> (Torrent, Swarm, PeerConn, Instant) {
    let (t, mut swarm, mut pc, now) = single(seed_us);
    pc.handle_bytes(&mut swarm, &handshake_bytes(t.info_hash, fast), now)
        .unwrap();
    while pc.poll_event().is_some() {}
    (t, swarm, pc, now)
}

#[test]
fn hostile_inputs_close_with_reason() {
    // Request outside the torrent (last piece is 100_000 - 3 * 32_768 = 1_696 bytes).
    let (_t, mut s, mut pc, now) = opened(true, true);
    let r = feed(
        &mut s,
        &mut pc,
        &[
            Message::Interested,
            Message::Request {
                index: 3,
                begin: 0,
                len: 16_384,
            },
        ],
        now,
    );
    assert_eq!(
        r,
        Err(CloseReason::RequestOutsideTorrent {
            index: 3,
            begin: 0,
            len: 16_384
        })
    );
    // A request bigger than 16 KiB from a stock client.
    let (_t, mut s, mut pc, now) = opened(true, true);
    let r = feed(
        &mut s,
        &mut pc,
        &[Message::Request {
            index: 0,
            begin: 0,
            len: 32_768,
        }],
        now,
    );
    assert!(matches!(r, Err(CloseReason::RequestOutsideTorrent { .. })));
    // Bitfield with spare bits set (4 pieces: low 4 bits of the byte must be 0).
    let (_t, mut s, mut pc, now) = opened(false, true);
    let r = feed(&mut s, &mut pc, &[Message::Bitfield(&[0xff])], now);
    assert_eq!(
        r,
        Err(CloseReason::Wire(wire::WireError::BitfieldSpareBits {
            pieces: 4
        }))
    );
    // A piece we did not request.
    let (_t, mut s, mut pc, now) = opened(false, true);
    let r = feed(
        &mut s,
        &mut pc,
        &[Message::Piece {
            index: 0,
            begin: 0,
            len: 16_384,
        }],
        now,
    );
    assert_eq!(
        r,
        Err(CloseReason::UnrequestedPiece {
            index: 0,
            begin: 0,
            len: 16_384
        })
    );
    // Have past the end.
    let (_t, mut s, mut pc, now) = opened(false, true);
    assert_eq!(
        feed(&mut s, &mut pc, &[Message::Have(4)], now),
        Err(CloseReason::HaveOutOfRange(4))
    );
    // A bitfield that is not first (aria2 does this) only adds pieces.
    let (t, mut s, mut pc, now) = opened(false, true);
    let r = feed(
        &mut s,
        &mut pc,
        &[Message::HaveNone, Message::Bitfield(&[0x40])],
        now,
    );
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(s.availability(t.lengths.piece(1).unwrap()), 1);
    // Have-none that is not first is still refused.
    let (_t, mut s, mut pc, now) = opened(false, true);
    let r = feed(&mut s, &mut pc, &[Message::Have(0), Message::HaveNone], now);
    assert_eq!(r, Err(CloseReason::BitfieldNotFirst("have none")));
    // libtorrent's order: extension handshake, then have-none; that is still "first".
    let (_t, mut s, mut pc, now) = opened(false, true);
    let ext = Message::Extended {
        ext_id: 0,
        payload: b"d1:md11:ut_metadatai3eee",
    };
    let r = feed(&mut s, &mut pc, &[ext, Message::HaveNone], now);
    assert!(r.is_ok(), "{r:?}");
    // Fast messages without the fast extension.
    let (_t, mut s, mut pc, now) = opened(false, false);
    assert_eq!(
        feed(&mut s, &mut pc, &[Message::HaveAll], now),
        Err(CloseReason::FastNotNegotiated("have all"))
    );
    // An oversized piece payload.
    let (_t, mut s, mut pc, now) = opened(false, true);
    let r = feed(
        &mut s,
        &mut pc,
        &[Message::Piece {
            index: 0,
            begin: 0,
            len: 16_385,
        }],
        now,
    );
    assert!(matches!(
        r,
        Err(CloseReason::Wire(wire::WireError::PieceTooLong { .. }))
    ));
    // Garbage instead of a handshake.
    let (_t, mut s, mut pc, now) = single(false);
    assert_eq!(
        pc.handle_bytes(&mut s, b"GET / HTTP/1.1\r\n", now),
        Err(CloseReason::Wire(wire::WireError::BadProtocol))
    );
    // Every close also shows up as exactly one event, and a closed connection is inert.
    assert!(matches!(pc.poll_event(), Some(Event::Close(_))));
    assert_eq!(pc.poll_event(), None);
}

#[test]
fn corvid_peers_may_request_bigger_blocks() {
    let (_t, mut s, mut pc, now) = opened(true, true);
    let mut v = Vec::new();
    ExtendedHandshake {
        v: Some("corvid 0.1.0".into()),
        ..Default::default()
    }
    .encode(&mut v);
    Message::Interested.encode(&mut v);
    Message::Request {
        index: 0,
        begin: 0,
        len: 32_768,
    }
    .encode(&mut v);
    assert_eq!(pc.handle_bytes(&mut s, &v, now), Ok(v.len()));
    let mut out = Vec::new();
    let t = pc.poll_transmit(&mut s, now, &mut out);
    assert!(matches!(t, Some(Transmit::Block { block, .. }) if block.len == 32_768));
}

#[test]
fn handshake_timeout_and_keepalive() {
    let (_t, mut s, mut pc, now) = single(false);
    pc.handle_tick(&mut s, now + Duration::from_secs(5));
    assert_eq!(pc.poll_event(), None);
    pc.handle_tick(&mut s, now + Duration::from_secs(11));
    assert_eq!(
        pc.poll_event(),
        Some(Event::Close(CloseReason::HandshakeTimeout))
    );

    let (_t, mut s, mut pc, now) = opened(false, true);
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    out.clear();
    pc.poll_transmit(&mut s, now + Duration::from_secs(60), &mut out);
    assert!(out.is_empty());
    pc.poll_transmit(&mut s, now + Duration::from_secs(121), &mut out);
    assert_eq!(out, [0, 0, 0, 0]);
}

#[test]
fn snubbed_peer_requests_go_back() {
    let (_t, mut s, mut pc, now) = opened(false, true);
    feed(&mut s, &mut pc, &[Message::HaveAll, Message::Unchoke], now).unwrap();
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    let sent = pc.outstanding.len();
    assert_eq!(sent, 7); // 100_000 bytes = 7 blocks
    assert!(s.in_endgame());
    pc.handle_tick(&mut s, now + Duration::from_secs(21));
    assert!(!s.in_endgame(), "timed-out requests were not given back");
    out.clear();
    pc.poll_transmit(&mut s, now + Duration::from_secs(21), &mut out);
    // Snubbed: one block re-requested, and the 7 cancels went out.
    assert_eq!(pc.outstanding.values().filter(|o| o.live != 0).count(), 1);
}

#[test]
fn a_silent_snubbed_peer_is_closed_long_before_the_idle_timeout() {
    let (_t, mut s, mut pc, now) = opened(false, true);
    feed(&mut s, &mut pc, &[Message::HaveAll, Message::Unchoke], now).unwrap();
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    assert_eq!(pc.outstanding.len(), 7);
    // Requests time out at 20 s: given back, the peer snubbed, the connection still open.
    let t = now + Duration::from_secs(21);
    pc.handle_tick(&mut s, t);
    assert!(!s.in_endgame(), "timed-out requests were not given back");
    assert!(!pc.is_closed());
    out.clear();
    pc.poll_transmit(&mut s, t, &mut out);
    // Still silent at 40 s: closed as stalled, not left until the 300 s idle timeout.
    pc.handle_tick(&mut s, now + Duration::from_secs(39));
    assert!(!pc.is_closed());
    pc.handle_tick(&mut s, now + Duration::from_secs(41));
    assert!(pc.is_closed());
    let mut reasons = Vec::new();
    while let Some(ev) = pc.poll_event() {
        if let Event::Close(r) = ev {
            reasons.push(r);
        }
    }
    assert_eq!(reasons, [CloseReason::Stalled]);
}

#[test]
fn a_snubbed_peer_that_still_talks_stays_open() {
    let (_t, mut s, mut pc, now) = opened(false, true);
    feed(&mut s, &mut pc, &[Message::HaveAll, Message::Unchoke], now).unwrap();
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    pc.handle_tick(&mut s, now + Duration::from_secs(21));
    // A keep-alive at 35 s: the remote is alive, only slow; no stalled close at 41 s.
    feed(
        &mut s,
        &mut pc,
        &[Message::KeepAlive],
        now + Duration::from_secs(35),
    )
    .unwrap();
    pc.handle_tick(&mut s, now + Duration::from_secs(41));
    assert!(!pc.is_closed());
    // Silent again for 40 s after that: closed.
    pc.handle_tick(&mut s, now + Duration::from_secs(76));
    assert!(pc.is_closed());
}

#[test]
fn eight_peers_at_60ms_rtt_complete() {
    // 3 steps of 10 ms each way: a WAN-like RTT, with the default deep pipeline.
    let sim = eight_peers_with(Some(64 * 1024), false, 3);
    let peers: u64 = (1..=8).map(|i| sim.nodes[i].swarm.stats().uploaded).sum();
    assert!(peers > 0);
}

#[test]
fn messages_cut_at_every_position_still_complete() {
    // Every link delivers 1..=13 bytes per step: handshakes, headers and payloads arrive
    // in fragments split at varying offsets.
    let mut sim = Sim::new(torrent(40_000, 16_384, 6));
    sim.max_chunk = Some(13);
    for i in 0..3 {
        sim.add_node(i == 0);
        // ~7 bytes per 10 ms step: a 16 KiB block takes ~23 s, which is not a snub here.
        sim.nodes[i].cfg.request_timeout = Duration::from_secs(3600);
    }
    sim.connect_all();
    let ok = sim.run_until(40_000, |s| s.all_complete(&[1, 2]));
    assert!(ok);
    sim.assert_data(1);
    sim.assert_data(2);
    assert!(sim
        .closes
        .iter()
        .all(|(_, _, r)| *r == CloseReason::BothComplete));
    assert!(
        sim.split_inputs > 100,
        "input reached connections as two slices only {} times",
        sim.split_inputs
    );
}

#[test]
fn choke_without_fast_gives_requests_back() {
    let (_t, mut s, mut pc, now) = opened(false, false);
    feed(
        &mut s,
        &mut pc,
        &[Message::Bitfield(&[0xf0]), Message::Unchoke],
        now,
    )
    .unwrap();
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    assert_eq!(pc.outstanding.len(), 7);
    assert!(s.in_endgame());
    feed(&mut s, &mut pc, &[Message::Choke], now).unwrap();
    assert!(pc.outstanding.is_empty());
    assert!(!s.in_endgame());
    // The block the remote sends after choking was not requested any more.
    let r = feed(
        &mut s,
        &mut pc,
        &[Message::Piece {
            index: 0,
            begin: 0,
            len: 16_384,
        }],
        now,
    );
    assert!(matches!(r, Err(CloseReason::UnrequestedPiece { .. })));
}

#[test]
fn choke_with_fast_keeps_requests_until_rejected() {
    let (_t, mut s, mut pc, now) = opened(false, true);
    feed(&mut s, &mut pc, &[Message::HaveAll, Message::Unchoke], now).unwrap();
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    feed(&mut s, &mut pc, &[Message::Choke], now).unwrap();
    assert_eq!(pc.outstanding.len(), 7);
    let r = feed(
        &mut s,
        &mut pc,
        &[Message::Reject {
            index: 0,
            begin: 0,
            len: 16_384,
        }],
        now,
    );
    assert!(r.is_ok());
    assert_eq!(pc.outstanding.len(), 6);
    assert!(!s.in_endgame());
    // Closing gives the rest back too.
    pc.handle_close(&mut s);
    s.check_invariants();
    assert_eq!(s.availability(s.lengths().piece(0).unwrap()), 0);
}

#[test]
fn payload_is_received_outside_handle_bytes() {
    let (t, mut s, mut pc, now) = opened(false, true);
    feed(&mut s, &mut pc, &[Message::HaveAll, Message::Unchoke], now).unwrap();
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    let b = pc.first_request();
    let mut v = Vec::new();
    Message::Piece {
        index: b.piece.get(),
        begin: b.offset,
        len: b.len,
    }
    .encode(&mut v);
    v.extend_from_slice(&t.data[..b.len as usize]);
    Message::KeepAlive.encode(&mut v);
    // Only the header is consumed; the payload is the runtime's to move.
    assert_eq!(pc.handle_bytes(&mut s, &v, now), Ok(13));
    assert_eq!(
        pc.poll_event(),
        Some(Event::ReceivePayload {
            block: b,
            discard: false
        })
    );
    // Nothing more is consumed until the payload is done.
    assert_eq!(
        pc.handle_bytes(&mut s, &v[13 + b.len as usize..], now),
        Ok(0)
    );
    pc.handle_payload_done(&mut s, b, now);
    assert_eq!(
        pc.handle_bytes(&mut s, &v[13 + b.len as usize..], now),
        Ok(4)
    );
    assert_eq!(pc.stats().downloaded, u64::from(b.len));
}

#[test]
fn extension_handshake_may_precede_bitfield() {
    // libtorrent's order: extension handshake, then have-all (seen in the interop test).
    let (_t, mut s, mut pc, now) = opened(false, true);
    let mut v = Vec::new();
    ExtendedHandshake {
        v: Some("libtorrent/2.0.8.0".into()),
        reqq: Some(2000),
        ..Default::default()
    }
    .encode(&mut v);
    Message::HaveAll.encode(&mut v);
    Message::Unchoke.encode(&mut v);
    assert_eq!(pc.handle_bytes(&mut s, &v, now), Ok(v.len()));
    assert_eq!(pc.remote_client(), Some("libtorrent/2.0.8.0"));
    assert!(pc.remote_has().is_full());
    // A second bitfield-class message is still refused.
    assert_eq!(
        feed(&mut s, &mut pc, &[Message::HaveNone], now),
        Err(CloseReason::BitfieldNotFirst("have none"))
    );
}

#[test]
fn self_connection_and_request_flood_close() {
    let (t, mut s, mut pc, now) = single(false);
    let mut h = Vec::new();
    Handshake::ours(t.info_hash, [7; 20]).encode(&mut h);
    assert_eq!(
        pc.handle_bytes(&mut s, &h, now),
        Err(CloseReason::SelfConnection)
    );
    // We have nothing, so every request is rejected; a remote that never reads the
    // rejects is cut off once they pile up.
    let (_t, mut s, mut pc, now) = opened(false, true);
    let mut v = Vec::new();
    for _ in 0..(MAX_QUEUED / 17 + 2) {
        Message::Request {
            index: 0,
            begin: 0,
            len: 16_384,
        }
        .encode(&mut v);
    }
    assert_eq!(
        pc.handle_bytes(&mut s, &v, now),
        Err(CloseReason::SendQueueOverflow(MAX_QUEUED))
    );
}

#[test]
fn interest_survives_a_verdict_between_handshake_and_bitfield() {
    let (t, mut s, mut pc, now) = opened(false, true);
    // We verify a piece (from someone else) after the handshake, before their bitfield.
    let other = PeerConn::new(
        &PeerConfig::default(),
        &mut s,
        "10.0.0.8:1".parse().unwrap(),
        Role::Initiator,
        [8; 20],
        [0; 16],
        now,
    )
    .unwrap();
    let all = Bitfield::full(4);
    let mut got = Vec::new();
    s.pick_blocks(other.key(), &all, 2, |_| false, |b| got.push(b));
    let mut done = None;
    for b in got {
        assert_eq!(s.begin_block(other.key(), b), crate::swarm::Accept::Write);
        done = s.finish_block(other.key(), other.addr().ip(), b);
    }
    let p = done.unwrap().get();
    s.handle_verdict(done.unwrap(), true);
    assert!(s.have().get(p));
    // The remote has that piece and one more, which is still worth wanting.
    let q = (p + 1) % 4;
    let bits = [(0x80u8 >> p) | (0x80u8 >> q)];
    feed(&mut s, &mut pc, &[Message::Bitfield(&bits)], now).unwrap();
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    assert!(
        pc.am_interested,
        "lost interest though the remote has piece {q}"
    );
    let _ = t;
}

#[test]
fn dropped_connection_mid_payload_recovers() {
    let mut sim = Sim::new(torrent(500_000, 32_768, 8));
    sim.add_node(true);
    sim.add_node(false);
    sim.add_node(false);
    sim.max_chunk = Some(9_000);
    sim.connect_all();
    // Run until node 1 is in the middle of receiving a payload from the seeder.
    let mid = sim.run_until(2_000, |s| {
        s.nodes[1]
            .conns
            .get(&0)
            .is_some_and(|c| c.payload.is_some_and(|(_, d)| !d) && !c.inbox.is_empty())
    });
    assert!(mid, "never caught a payload in flight");
    sim.close(1, 0, CloseReason::Idle);
    for node in &sim.nodes {
        node.swarm.check_invariants();
    }
    sim.run_until(50, |_| false);
    sim.connect(1, 0);
    assert!(sim.run_until(20_000, |s| s.all_complete(&[1, 2])));
    sim.assert_data(1);
    sim.assert_data(2);
}

#[test]
fn mixed_pieces_blame_only_the_corrupt_sender() {
    // One block in flight per connection and two blocks per piece, so many pieces get
    // one block from each source: nobody can be blamed for those, and they are
    // re-fetched from a single peer until the corrupt one is caught alone.
    let mut sim = Sim::new(torrent(640 * 1024, 32_768, 12));
    sim.add_node(true);
    let bad = sim.add_node(true);
    sim.nodes[bad].corrupt = true;
    let dl = sim.add_node(false);
    let c = &mut sim.nodes[dl].cfg;
    c.initial_inflight = 16_384;
    c.min_inflight = 16_384;
    c.max_inflight = 16_384;
    sim.connect_all();
    assert!(sim.run_until(20_000, |s| s.all_complete(&[dl])));
    sim.assert_data(dl);
    let swarm = &sim.nodes[dl].swarm;
    assert!(swarm.is_banned_addr(sim.nodes[bad].ip));
    assert!(
        !swarm.is_banned_addr(sim.nodes[0].ip),
        "the honest seeder was banned"
    );
}

// ---- Requests bigger than a swarm block, between corvid peers ----

/// Every request, cancel and reject triple in `out`, in order, tagged by message id.
fn wire_triples(out: &[u8], pieces: u32) -> Vec<(u8, u32, u32, u32)> {
    let lim = Limits {
        pieces,
        max_block: 1 << 20,
    };
    let mut v = Vec::new();
    // Our own handshake comes first in a connection's first output.
    let mut pos = if out.get(1..20) == Some(&b"BitTorrent protocol"[..]) {
        wire::HANDSHAKE_LEN
    } else {
        0
    };
    while let Ok(Decoded::Message(m, n)) = wire::decode(&out[pos..], &lim) {
        pos += n;
        match m {
            Message::Request { index, begin, len } => {
                v.push((wire::id::REQUEST, index, begin, len))
            }
            Message::Cancel { index, begin, len } => v.push((wire::id::CANCEL, index, begin, len)),
            _ => {}
        }
    }
    v
}

/// A connection to a remote that shook hands (fast extension on), sent its extension
/// handshake with client `v` (none at all if `None`), has everything and unchoked us.
fn opened_remote(
    t: &Torrent,
    v: Option<&str>,
    max_request: Option<u32>,
    swarm: &mut Swarm,
    addr: &str,
    now: Instant,
) -> PeerConn {
    let mut pc = PeerConn::new(
        &PeerConfig::default(),
        swarm,
        addr.parse().unwrap(),
        Role::Initiator,
        [7; 20],
        [0; 16],
        now,
    )
    .unwrap();
    let mut bytes = handshake_bytes(t.info_hash, true);
    if v.is_some() || max_request.is_some() {
        ExtendedHandshake {
            v: v.map(str::to_owned),
            corvid_max_request: max_request,
            ..Default::default()
        }
        .encode(&mut bytes);
    }
    Message::HaveAll.encode(&mut bytes);
    Message::Unchoke.encode(&mut bytes);
    assert_eq!(pc.handle_bytes(swarm, &bytes, now), Ok(bytes.len()));
    while pc.poll_event().is_some() {}
    pc
}

fn empty_swarm(t: &Torrent) -> Swarm {
    let n = t.lengths.piece_count();
    Swarm::new(
        SwarmConfig::default(),
        t.info_hash,
        t.lengths,
        Bitfield::new(n),
        1,
    )
}

#[test]
fn request_size_follows_the_remote() {
    // 1 MiB in 512 KiB pieces: 64 blocks.
    let t = torrent(1 << 20, 512 * 1024, 21);
    let now = Instant::now();
    let cases: [(Option<&str>, Option<u32>, u32); 5] = [
        (Some("corvid 0.1.0"), None, 128 * 1024),
        // It serves less than we would ask: ask for what it serves.
        (Some("corvid 0.2.0"), Some(64 * 1024), 64 * 1024),
        (Some("corvid 0.2.0"), Some(40_000), 32 * 1024),
        // Stock clients: with a `v` that is not corvid's, and with no `v` at all.
        (Some("libtorrent/2.0.9"), None, 16 * 1024),
        (None, None, 16 * 1024),
    ];
    for (v, max, size) in cases {
        let mut s = empty_swarm(&t);
        let mut pc = opened_remote(&t, v, max, &mut s, "10.0.0.9:6881", now);
        let mut out = Vec::new();
        pc.poll_transmit(&mut s, now, &mut out);
        let reqs = wire_triples(&out, t.lengths.piece_count());
        assert_eq!(reqs.len() as u32, (1 << 20) / size, "{v:?} {max:?}");
        assert!(
            reqs.iter().all(|r| r.3 == size && r.2 % size == 0),
            "{reqs:?}"
        );
        assert_eq!(pc.stats().requests, reqs.len() as u64);
        // Each request is one outstanding entry; the swarm counts 16 KiB blocks.
        assert_eq!(pc.outstanding.len(), reqs.len());
        assert!(s.in_endgame());
        pc.check_invariants();
        s.check_invariants();
    }
}

#[test]
fn corvid_peers_use_big_requests_stock_remotes_get_16k() {
    // 4 MiB in 256 KiB pieces: 256 blocks.
    for stock_seeder in [false, true] {
        let mut sim = Sim::new(torrent(4 << 20, 256 * 1024, 22));
        let seed = sim.add_node(true);
        if stock_seeder {
            sim.nodes[seed].cfg.client = "libtorrent/2.0.9".into();
        }
        let dl = sim.add_node(false);
        sim.connect_all();
        assert!(sim.run_until(5_000, |s| s.all_complete(&[dl])));
        sim.assert_data(dl);
        let blocks = (4u64 << 20) / 16_384;
        let requests = sim.requests_sent(dl);
        if stock_seeder {
            assert_eq!(requests, blocks);
        } else {
            // Eight blocks per request; end-game adds no duplicates with one source.
            assert_eq!(requests, blocks / 8, "{requests} requests");
        }
        assert_eq!(sim.nodes[dl].swarm.stats().wasted, 0);
        assert_eq!(sim.nodes[seed].swarm.stats().uploaded, 4 << 20);
    }
}

#[test]
fn corvid_swarm_with_big_requests_shares_and_completes() {
    // Four corvid peers, 256 KiB pieces, a capped seeder: big requests between peers too.
    // Pipelines far shorter than the torrent, so end-game (16 KiB duplicates) is a tail.
    let mut sim = Sim::new(torrent(8 << 20, 256 * 1024, 23));
    sim.add_node(true);
    sim.nodes[0].upload_cap = Some(128 * 1024);
    for _ in 0..4 {
        let i = sim.add_node(false);
        sim.nodes[i].cfg.initial_inflight = 512 * 1024;
        sim.nodes[i].cfg.min_inflight = 512 * 1024;
        sim.nodes[i].cfg.max_inflight = 512 * 1024;
    }
    sim.connect_all();
    assert!(sim.run_until(20_000, |s| s.all_complete(&[1, 2, 3, 4])));
    for i in 1..=4 {
        sim.assert_data(i);
        let blocks = (8u64 << 20) / 16_384;
        assert!(
            // 64 if every request were 128 KiB; end-game and pieces split between
            // sources add some (about 100 here).
            sim.requests_sent(i) < blocks / 4,
            "node {i} sent {} requests",
            sim.requests_sent(i)
        );
    }
    let peers: u64 = (1..=4).map(|i| sim.nodes[i].swarm.stats().uploaded).sum();
    assert!(peers > 0);
}

#[test]
fn corrupt_corvid_sender_of_big_blocks_is_banned() {
    let mut sim = Sim::new(torrent(2 << 20, 256 * 1024, 24));
    sim.add_node(true);
    let bad = sim.add_node(true);
    sim.nodes[bad].corrupt = true;
    let dl = sim.add_node(false);
    sim.nodes[dl].cfg.initial_inflight = 512 * 1024;
    sim.nodes[dl].cfg.min_inflight = 512 * 1024;
    sim.nodes[dl].cfg.max_inflight = 512 * 1024;
    sim.connect_all();
    assert!(sim.run_until(10_000, |s| s.all_complete(&[dl])));
    sim.assert_data(dl);
    assert!(sim.nodes[dl].swarm.is_banned_addr(sim.nodes[bad].ip));
    assert!(sim
        .closes
        .iter()
        .any(|&(x, y, ref r)| x == dl && y == bad && *r == CloseReason::Banned));
    assert!(sim.requests_sent(dl) < (2u64 << 20) / 16_384 / 2);
}

/// Feeds a `piece` header for (index, begin, len) and returns the events up to the first
/// payload.
fn piece_header(
    s: &mut Swarm,
    pc: &mut PeerConn,
    index: u32,
    begin: u32,
    len: u32,
    now: Instant,
) -> Vec<Event> {
    let mut v = Vec::new();
    Message::Piece { index, begin, len }.encode(&mut v);
    assert_eq!(pc.handle_bytes(s, &v, now), Ok(v.len()));
    std::iter::from_fn(|| pc.poll_event()).collect()
}

#[test]
fn a_connection_closed_by_a_timer_mid_payload_gives_its_blocks_back() {
    // A corvid remote goes silent (process stopped, link cut) while the payload of its
    // 128 KiB answer is being received. The timer that closes the connection must free
    // the blocks being written, or no connection ever fetches them again.
    let t = torrent(8 * 16_384, 8 * 16_384, 26);
    let now = Instant::now();
    let mut s = empty_swarm(&t);
    let mut a = opened_remote(&t, Some("corvid 0.1.0"), None, &mut s, "10.0.0.1:1", now);
    let mut out = Vec::new();
    a.poll_transmit(&mut s, now, &mut out);
    assert_eq!(
        wire_triples(&out, 1),
        vec![(wire::id::REQUEST, 0, 0, 8 * 16_384)]
    );
    let ev = piece_header(&mut s, &mut a, 0, 0, 8 * 16_384, now);
    assert!(matches!(ev[..], [Event::ReceivePayload { .. }]), "{ev:?}");
    let mut t_close = None;
    for secs in [21, 41, 301] {
        let at = now + Duration::from_secs(secs);
        a.handle_tick(&mut s, at);
        if a.is_closed() {
            t_close = Some(at);
            break;
        }
    }
    let at = t_close.expect("a silent remote is closed by a timer");
    a.handle_close(&mut s);
    s.check_invariants();
    let mut b = opened_remote(&t, None, None, &mut s, "10.0.0.2:1", at);
    out.clear();
    b.poll_transmit(&mut s, at, &mut out);
    assert_eq!(
        wire_triples(&out, 1).len(),
        8,
        "the blocks the closed connection was writing are not fetched again"
    );
}

#[test]
fn endgame_race_inside_a_big_request_keeps_verified_bytes() {
    // One piece of eight blocks. Corvid connection A asks for all of it in one request; in
    // end-game, stock connection B duplicates every block and wins blocks 2 and 3, and is
    // still writing block 5 when A's answer arrives. A's payload is garbage exactly where
    // B's data belongs: if any of it were written over B's blocks, the hash would fail.
    let t = torrent(8 * 16_384, 8 * 16_384, 25);
    let now = Instant::now();
    let mut s = empty_swarm(&t);
    let mut a = opened_remote(&t, Some("corvid 0.1.0"), None, &mut s, "10.0.0.1:1", now);
    let mut b = opened_remote(&t, None, None, &mut s, "10.0.0.2:1", now);
    let mut storage = vec![0u8; t.data.len()];
    let mut out = Vec::new();
    a.poll_transmit(&mut s, now, &mut out);
    assert_eq!(
        wire_triples(&out, 1),
        vec![(wire::id::REQUEST, 0, 0, 8 * 16_384)]
    );
    assert!(s.in_endgame());
    out.clear();
    b.poll_transmit(&mut s, now, &mut out);
    assert_eq!(
        wire_triples(&out, 1).len(),
        8,
        "B duplicates every block at 16 KiB"
    );
    let blk = |i: u32| t.lengths.block(t.lengths.piece(0).unwrap(), i).unwrap();
    let write = |storage: &mut Vec<u8>, block: BlockRef, src: &[u8]| {
        let o = block.offset as usize;
        storage[o..o + block.len as usize].copy_from_slice(&src[o..o + block.len as usize]);
    };
    for i in [2, 3] {
        let ev = piece_header(&mut s, &mut b, 0, i * 16_384, 16_384, now);
        assert_eq!(
            ev,
            vec![Event::ReceivePayload {
                block: blk(i),
                discard: false
            }]
        );
        write(&mut storage, blk(i), &t.data);
        b.handle_payload_done(&mut s, blk(i), now);
    }
    let ev = piece_header(&mut s, &mut b, 0, 5 * 16_384, 16_384, now);
    assert_eq!(
        ev,
        vec![Event::ReceivePayload {
            block: blk(5),
            discard: false
        }]
    );
    // A learns that blocks 2 and 3 arrived elsewhere: they are given back, but the
    // request still covers wanted blocks, so nothing is cancelled on the wire.
    out.clear();
    a.poll_transmit(&mut s, now, &mut out);
    assert!(
        wire_triples(&out, 1).is_empty(),
        "{:?}",
        wire_triples(&out, 1)
    );
    a.check_invariants();
    s.check_invariants();
    let mut garbage = t.data.clone();
    for i in [2usize, 3, 5] {
        garbage[i * 16_384..(i + 1) * 16_384].fill(0xa5);
    }
    let mut events = piece_header(&mut s, &mut a, 0, 0, 8 * 16_384, now);
    let mut runs = Vec::new();
    while let Some(ev) = events.pop() {
        let Event::ReceivePayload { block, discard } = ev else {
            panic!("unexpected {ev:?}");
        };
        assert!(events.is_empty());
        runs.push((block.offset / 16_384, block.len / 16_384, discard));
        if !discard {
            write(&mut storage, block, &garbage);
        }
        // Nothing is consumed while a run is pending.
        assert_eq!(a.handle_bytes(&mut s, &[0, 0, 0, 0], now), Ok(0));
        a.handle_payload_done(&mut s, block, now);
        events = std::iter::from_fn(|| a.poll_event()).collect();
    }
    // Runs of equal verdict: 0-1 write, 2-3 dropped (given back), 4 write, 5 dropped
    // (B is writing it), 6-7 write.
    assert_eq!(
        runs,
        vec![
            (0, 2, false),
            (2, 2, true),
            (4, 1, false),
            (5, 1, true),
            (6, 2, false)
        ]
    );
    assert_eq!(a.stats().downloaded, 8 * 16_384);
    a.check_invariants();
    s.check_invariants();
    // B finishes block 5: the piece is complete and hashes right.
    write(&mut storage, blk(5), &t.data);
    b.handle_payload_done(&mut s, blk(5), now);
    let ev: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
    assert_eq!(ev, vec![Event::PieceComplete(t.lengths.piece(0).unwrap())]);
    assert_eq!(storage, t.data);
    s.handle_verdict(t.lengths.piece(0).unwrap(), true);
    assert!(s.is_complete());
    s.check_invariants();
}

#[test]
fn reject_cancel_choke_and_close_free_every_block_of_a_big_request() {
    // 1 MiB in 512 KiB pieces: eight requests of 128 KiB.
    let t = torrent(1 << 20, 512 * 1024, 26);
    let now = Instant::now();
    let mut s = empty_swarm(&t);
    let mut pc = opened_remote(&t, Some("corvid 0.1.0"), None, &mut s, "10.0.0.1:1", now);
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    assert_eq!(pc.outstanding.len(), 8);
    assert!(s.in_endgame());
    let other = s.add_peer("10.0.0.2".parse().unwrap()).unwrap();
    let full = Bitfield::full(t.lengths.piece_count());
    let pick = |s: &mut Swarm, want| {
        let mut v = Vec::new();
        s.pick_blocks(other, &full, want, |_| true, |b| v.push(b));
        v
    };
    // A reject gives back all eight blocks of that request, and only those.
    feed(
        &mut s,
        &mut pc,
        &[Message::Reject {
            index: 1,
            begin: 128 * 1024,
            len: 128 * 1024,
        }],
        now,
    )
    .unwrap();
    assert!(!s.in_endgame());
    pc.check_invariants();
    s.check_invariants();
    let got = pick(&mut s, 64);
    assert_eq!(got.len(), 8);
    assert!(got
        .iter()
        .all(|b| b.piece.get() == 1 && (128..256).contains(&(b.offset / 1024))));
    // The remote's answer to a rejected request is unrequested.
    let mut v = Vec::new();
    Message::Piece {
        index: 1,
        begin: 128 * 1024,
        len: 128 * 1024,
    }
    .encode(&mut v);
    assert!(matches!(
        pc.handle_bytes(&mut s, &v, now),
        Err(CloseReason::UnrequestedPiece { .. })
    ));

    // Snub: every live request is cancelled whole on the wire and its blocks go back.
    let mut s = empty_swarm(&t);
    let mut pc = opened_remote(&t, Some("corvid 0.1.0"), None, &mut s, "10.0.0.1:1", now);
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    let later = now + Duration::from_secs(21);
    pc.handle_tick(&mut s, later);
    out.clear();
    pc.poll_transmit_control(&mut s, later, &mut out);
    let msgs = wire_triples(&out, t.lengths.piece_count());
    let cancels: Vec<_> = msgs.iter().filter(|m| m.0 == wire::id::CANCEL).collect();
    assert_eq!(cancels.len(), 8);
    assert!(cancels.iter().all(|m| m.3 == 128 * 1024));
    // Snubbed: one 16 KiB block re-requested.
    let reqs: Vec<_> = msgs.iter().filter(|m| m.0 == wire::id::REQUEST).collect();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].3, 16_384);
    pc.check_invariants();
    s.check_invariants();
    // A late answer to a cancelled big request is read and dropped, not an error.
    let (i, b0, l) = (cancels[0].1, cancels[0].2, cancels[0].3);
    let ev = piece_header(&mut s, &mut pc, i, b0, l, later);
    assert_eq!(ev.len(), 1);
    assert!(matches!(ev[0], Event::ReceivePayload { discard: true, block } if block.len == l));

    // Choke without the fast extension drops every request.
    let mut s = empty_swarm(&t);
    let mut pc = PeerConn::new(
        &PeerConfig::default(),
        &mut s,
        "10.0.0.1:1".parse().unwrap(),
        Role::Initiator,
        [7; 20],
        [0; 16],
        now,
    )
    .unwrap();
    let mut bytes = handshake_bytes(t.info_hash, false);
    bytes[25] |= 0x10; // extension protocol only
    ExtendedHandshake {
        v: Some("corvid 0.1.0".into()),
        ..Default::default()
    }
    .encode(&mut bytes);
    Message::Bitfield(Bitfield::full(t.lengths.piece_count()).as_bytes()).encode(&mut bytes);
    Message::Unchoke.encode(&mut bytes);
    assert_eq!(pc.handle_bytes(&mut s, &bytes, now), Ok(bytes.len()));
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    assert_eq!(pc.outstanding.len(), 8);
    feed(&mut s, &mut pc, &[Message::Choke], now).unwrap();
    assert!(pc.outstanding.is_empty() && !pc.expects_blocks());
    pc.check_invariants();
    s.check_invariants();
    assert!(!s.in_endgame());

    // Closing in the middle of a big payload aborts the blocks not yet written.
    let mut s = empty_swarm(&t);
    let mut pc = opened_remote(&t, Some("corvid 0.1.0"), None, &mut s, "10.0.0.1:1", now);
    let mut out = Vec::new();
    pc.poll_transmit(&mut s, now, &mut out);
    let ev = piece_header(&mut s, &mut pc, 0, 0, 128 * 1024, now);
    let [Event::ReceivePayload {
        block,
        discard: false,
    }] = ev[..]
    else {
        panic!("{ev:?}");
    };
    assert_eq!(block.len, 128 * 1024);
    pc.handle_close(&mut s);
    s.check_invariants();
    let mut v = Vec::new();
    let again = s.add_peer("10.0.0.3".parse().unwrap()).unwrap();
    s.pick_blocks(again, &full, 1024, |_| false, |b| v.push(b));
    assert_eq!(v.len(), 64, "every block is pickable again");
}

// ---- private swarms ----

fn secret(s: &str) -> Option<Secret> {
    Some(Secret::new(s.as_bytes()).unwrap())
}

/// What `from` sent `to` after its handshake: (id, payload after the id), piece payloads
/// left out.
fn sent_messages(sim: &Sim, from: usize, to: usize) -> Vec<(u8, Vec<u8>)> {
    let Some(bytes) = sim.sent.get(&(from, to)) else {
        return Vec::new();
    };
    messages_after_handshake(bytes, sim.t.lengths.piece_count())
}

/// A message as (id, payload after the id).
type Msg = (u8, Vec<u8>);

fn messages_after_handshake(bytes: &[u8], pieces: u32) -> Vec<Msg> {
    let lim = Limits {
        pieces,
        max_block: 1 << 20,
    };
    let mut rest = bytes.get(wire::HANDSHAKE_LEN..).unwrap_or_default();
    let mut msgs = Vec::new();
    while let Ok(Decoded::Message(m, n)) = wire::decode(rest, &lim) {
        let skip = match m {
            Message::Piece { len, .. } => len as usize,
            _ => 0,
        };
        if n > 4 {
            msgs.push((rest[4], rest[5..n].to_vec()));
        }
        rest = &rest[n + skip..];
    }
    assert!(rest.is_empty(), "undecodable tail of {} bytes", rest.len());
    msgs
}

/// The extension handshakes among `msgs`, decoded.
fn ext_handshakes(msgs: &[(u8, Vec<u8>)]) -> Vec<ExtendedHandshake> {
    msgs.iter()
        .filter(|(i, p)| *i == wire::id::EXTENDED && p.first() == Some(&0))
        .map(|(_, p)| ExtendedHandshake::decode(&p[1..]).unwrap())
        .collect()
}

/// Seeder 0 and peer 1 share the secret (0 dials 1); peer 2 has `other`, and dials the
/// seeder if `outsider_dials`, else the seeder dials it.
fn private_trio(other: Option<Secret>, outsider_dials: bool) -> Sim {
    let mut sim = Sim::new(torrent(300_000, 32_768, 5));
    sim.add_node(true);
    sim.add_node(false);
    sim.add_node(false);
    sim.nodes[0].cfg.secret = secret("fleet secret");
    sim.nodes[1].cfg.secret = secret("fleet secret");
    sim.nodes[2].cfg.secret = other;
    sim.connect(0, 1);
    if outsider_dials {
        sim.connect(2, 0);
    } else {
        sim.connect(0, 2);
    }
    assert!(sim.run_until(2_000, |s| s.all_complete(&[1])));
    sim.assert_data(1);
    // Give the outsider time to get anything it could.
    sim.run_until(200, |_| false);
    sim
}

#[test]
fn private_peers_with_the_secret_exchange_the_torrent() {
    let sim = private_trio(None, false);
    // The seeder dialled, so it proved first: its challenge, its proof, then (once the
    // responder's proof checked out) what it has.
    let msgs = sent_messages(&sim, 0, 1);
    let ids: Vec<u8> = msgs.iter().map(|m| m.0).collect();
    assert_eq!(
        &ids[..3],
        &[wire::id::EXTENDED, wire::id::EXTENDED, wire::id::HAVE_ALL]
    );
    let ext = ext_handshakes(&msgs);
    assert_eq!(ext[0].corvid_auth_v, Some(auth::PEER_AUTH_VERSION));
    assert!(ext[0].corvid_challenge.is_some() && ext[0].corvid_proof.is_none());
    assert!(ext[1].corvid_proof.is_some() && ext[1].corvid_challenge.is_none());
    // The responder answered the same way: challenge, then (after checking) its proof.
    let ext = ext_handshakes(&sent_messages(&sim, 1, 0));
    assert!(ext[0].corvid_challenge.is_some() && ext[0].corvid_proof.is_none());
    assert!(ext[1].corvid_proof.is_some());
    assert_eq!(sim.nodes[0].swarm.stats().uploaded, 300_000);
}

/// The outsider got nothing from the seeder but extension handshakes, with a proof among
/// them only if `seeder_proved` (the seeder dialled it), and one side closed with `why`.
fn assert_outsider_got_nothing(
    sim: &Sim,
    closer: (usize, usize),
    why: &'static str,
    seeder_proved: bool,
) {
    assert!(!sim.nodes[2].swarm.is_complete());
    assert_eq!(sim.nodes[2].swarm.stats().downloaded, 0);
    assert!(sim.nodes[2].storage.iter().all(|&b| b == 0));
    let msgs = sent_messages(sim, 0, 2);
    let ids: Vec<u8> = msgs.iter().map(|m| m.0).collect();
    assert!(ids.iter().all(|&i| i == wire::id::EXTENDED), "{ids:?}");
    let proved = ext_handshakes(&msgs)
        .iter()
        .any(|e| e.corvid_proof.is_some());
    assert_eq!(proved, seeder_proved, "seeder's proof to the outsider");
    assert!(
        sim.closes
            .iter()
            .any(|(x, y, r)| (*x, *y) == closer && *r == CloseReason::NotAuthorized(why)),
        "{:?}",
        sim.closes
    );
}

#[test]
fn private_peer_without_the_secret_gets_nothing_and_is_closed() {
    let why = "message other than an extension handshake before proving the secret";
    // Dialled by the seeder, which would prove itself first (it chose to dial), but the
    // outsider sends no challenge to prove against.
    assert_outsider_got_nothing(&private_trio(None, false), (0, 2), why, false);
    // Dialling the seeder: the seeder says nothing but its challenge.
    assert_outsider_got_nothing(&private_trio(None, true), (0, 2), why, false);
}

#[test]
fn private_peer_with_a_wrong_secret_gets_nothing_and_is_closed() {
    let why = "wrong proof of the swarm secret";
    // The outsider dials: its proof is wrong, and the seeder closes without proving.
    assert_outsider_got_nothing(&private_trio(secret("guessed"), true), (0, 2), why, false);
    // The seeder dials: the outsider finds the seeder's proof wrong and closes.
    assert_outsider_got_nothing(&private_trio(secret("guessed"), false), (2, 0), why, true);
}

const OUR_ID: [u8; 20] = [7; 20];
/// The remote's id, as `handshake_bytes` claims it.
const REMOTE_ID: [u8; 20] = [3; 20];

/// A private seeder's connection in `role` with our challenge `nonce`, before any input.
fn private_conn(role: Role, nonce: [u8; 16]) -> (Torrent, Swarm, PeerConn, Instant) {
    let t = torrent(100_000, 32_768, 9);
    let mut swarm = Swarm::new(
        SwarmConfig::default(),
        t.info_hash,
        t.lengths,
        Bitfield::full(t.lengths.piece_count()),
        1,
    );
    let now = Instant::now();
    let cfg = PeerConfig {
        secret: secret("fleet secret"),
        ..PeerConfig::default()
    };
    let pc = PeerConn::new(
        &cfg,
        &mut swarm,
        "10.0.0.9:6881".parse().unwrap(),
        role,
        OUR_ID,
        nonce,
        now,
    )
    .unwrap();
    (t, swarm, pc, now)
}

/// A private connection that took the remote's handshake; returns what we sent.
fn private_opened(role: Role, nonce: [u8; 16]) -> (Torrent, Swarm, PeerConn, Instant, Vec<u8>) {
    let (t, mut swarm, mut pc, now) = private_conn(role, nonce);
    pc.handle_bytes(&mut swarm, &handshake_bytes(t.info_hash, true), now)
        .unwrap();
    while pc.poll_event().is_some() {}
    let mut out = Vec::new();
    assert_eq!(pc.poll_transmit(&mut swarm, now, &mut out), None);
    (t, swarm, pc, now, out)
}

fn ext(challenge: Option<[u8; 16]>, proof: Option<[u8; 20]>) -> Vec<u8> {
    let mut v = Vec::new();
    ExtendedHandshake {
        v: Some("corvid 0.1.0".into()),
        corvid_auth_v: Some(auth::PEER_AUTH_VERSION),
        corvid_challenge: challenge,
        corvid_proof: proof,
        ..Default::default()
    }
    .encode(&mut v);
    v
}

/// Everything `pc` has to send now.
fn drain_out(swarm: &mut Swarm, pc: &mut PeerConn, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while pc.poll_transmit(swarm, now, &mut out).is_some() {}
    out
}

/// The messages in `out` (which holds no handshake), with their ids.
fn messages(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut with_hs = vec![0u8; wire::HANDSHAKE_LEN];
    with_hs.extend_from_slice(out);
    messages_after_handshake(&with_hs, 4)
}

#[test]
fn private_responder_says_nothing_until_the_initiator_named_the_torrent() {
    let (t, mut swarm, mut pc, now) = private_conn(Role::Responder, [1; 16]);
    assert!(
        drain_out(&mut swarm, &mut pc, now).is_empty(),
        "no handshake of ours yet"
    );
    // A handshake for another torrent is refused before we said anything.
    let (_t2, mut swarm2, mut pc2, _) = private_conn(Role::Responder, [1; 16]);
    assert!(matches!(
        pc2.handle_bytes(&mut swarm2, &handshake_bytes([0xee; 20], true), now),
        Err(CloseReason::WrongInfoHash(_))
    ));
    assert!(drain_out(&mut swarm2, &mut pc2, now).is_empty());
    // The right one: our handshake, then our challenge, nothing else.
    pc.handle_bytes(&mut swarm, &handshake_bytes(t.info_hash, true), now)
        .unwrap();
    let out = drain_out(&mut swarm, &mut pc, now);
    let Ok(Decoded::Message(h, _)) = Handshake::decode(&out) else {
        panic!("no handshake first")
    };
    assert_eq!((h.info_hash, h.peer_id), (t.info_hash, OUR_ID));
    let msgs = messages(&out[wire::HANDSHAKE_LEN..]);
    let ext = ext_handshakes(&msgs);
    assert_eq!(msgs.len(), 1);
    assert_eq!(ext[0].corvid_challenge, Some([1; 16]));
    assert_eq!(ext[0].corvid_proof, None);
    // An initiator, by contrast, says who it is at once.
    let (_t, mut s, mut i, now) = private_conn(Role::Initiator, [1; 16]);
    assert_eq!(drain_out(&mut s, &mut i, now).len(), wire::HANDSHAKE_LEN);
}

/// The transcript of a `private_opened` connection whose remote challenged with `theirs`.
fn transcript(t: &Torrent, role: Role, ours: [u8; 16], theirs: [u8; 16]) -> auth::Transcript {
    match role {
        Role::Initiator => auth::Transcript {
            info_hash: t.info_hash,
            initiator_nonce: ours,
            responder_nonce: theirs,
            initiator_id: OUR_ID,
            responder_id: REMOTE_ID,
        },
        Role::Responder => auth::Transcript {
            info_hash: t.info_hash,
            initiator_nonce: theirs,
            responder_nonce: ours,
            initiator_id: REMOTE_ID,
            responder_id: OUR_ID,
        },
    }
}

#[test]
fn private_responder_proves_only_after_a_good_initiator_proof() {
    let s = Secret::new(b"fleet secret").unwrap();
    let (t, mut swarm, mut pc, now, _) = private_opened(Role::Responder, [1; 16]);
    let tr = transcript(&t, Role::Responder, [1; 16], [9; 16]);
    // The initiator's challenge alone earns nothing.
    let bytes = ext(Some([9; 16]), None);
    assert_eq!(pc.handle_bytes(&mut swarm, &bytes, now), Ok(bytes.len()));
    assert!(drain_out(&mut swarm, &mut pc, now).is_empty());
    assert_eq!(pc.poll_event(), None);
    // Its proof does: our proof (responder role, same transcript), then have-all.
    let bytes = ext(None, Some(s.peer_proof(Role::Initiator, &tr)));
    assert_eq!(pc.handle_bytes(&mut swarm, &bytes, now), Ok(bytes.len()));
    let msgs = messages(&drain_out(&mut swarm, &mut pc, now));
    assert_eq!(msgs[0].0, wire::id::EXTENDED);
    let proof = ext_handshakes(&msgs[..1])[0]
        .corvid_proof
        .expect("our proof");
    assert!(s.verify_peer_proof(Role::Responder, &tr, &proof));
    assert!(!s.verify_peer_proof(Role::Initiator, &tr, &proof));
    assert_eq!(msgs[1].0, wire::id::HAVE_ALL);
}

#[test]
fn private_initiator_proves_on_the_responders_challenge_and_checks_its_proof() {
    let s = Secret::new(b"fleet secret").unwrap();
    let (t, mut swarm, mut pc, now, out) = private_opened(Role::Initiator, [1; 16]);
    let ours = ext_handshakes(&messages(&out[wire::HANDSHAKE_LEN..]));
    assert_eq!(ours[0].corvid_challenge, Some([1; 16]));
    let tr = transcript(&t, Role::Initiator, [1; 16], [9; 16]);
    let bytes = ext(Some([9; 16]), None);
    pc.handle_bytes(&mut swarm, &bytes, now).unwrap();
    let msgs = messages(&drain_out(&mut swarm, &mut pc, now));
    assert_eq!(msgs.len(), 1, "our proof and nothing else");
    let proof = ext_handshakes(&msgs)[0].corvid_proof.unwrap();
    assert!(s.verify_peer_proof(Role::Initiator, &tr, &proof));
    // The responder's proof from an earlier connection (our nonce then was [2; 16]).
    let old = transcript(&t, Role::Initiator, [2; 16], [9; 16]);
    let replay = ext(None, Some(s.peer_proof(Role::Responder, &old)));
    assert_eq!(
        pc.handle_bytes(&mut swarm, &replay, now),
        Err(CloseReason::NotAuthorized(
            "wrong proof of the swarm secret"
        ))
    );
    assert!(messages(&drain_out(&mut swarm, &mut pc, now)).is_empty());
}
#[test]
fn private_remote_is_named_to_the_runtime_only_once_it_proved_the_secret() {
    let s = Secret::new(b"fleet secret").unwrap();
    let (t, mut swarm, mut pc, now) = private_conn(Role::Responder, [1; 16]);
    pc.handle_bytes(&mut swarm, &handshake_bytes(t.info_hash, true), now)
        .unwrap();
    let bytes = ext(Some([9; 16]), None);
    pc.handle_bytes(&mut swarm, &bytes, now).unwrap();
    // A stranger claiming a member's id gets no entry in the node's peer table.
    assert_eq!(pc.poll_event(), None);
    let tr = transcript(&t, Role::Responder, [1; 16], [9; 16]);
    let bytes = ext(None, Some(s.peer_proof(Role::Initiator, &tr)));
    pc.handle_bytes(&mut swarm, &bytes, now).unwrap();
    assert_eq!(
        pc.poll_event(),
        Some(Event::HandshakeDone {
            peer_id: REMOTE_ID,
            fast: true,
            extended: true
        })
    );
}

/// What a private responder with challenge [1; 16] does with `proof` after the initiator
/// challenged with [9; 16]: the close reason, and whether it sent anything but nothing.
fn responder_given(proof: [u8; 20]) -> (Result<usize, CloseReason>, Vec<Msg>) {
    let (_t, mut swarm, mut pc, now, _) = private_opened(Role::Responder, [1; 16]);
    let mut bytes = ext(Some([9; 16]), None);
    bytes.extend(ext(None, Some(proof)));
    let r = pc.handle_bytes(&mut swarm, &bytes, now);
    (r, messages(&drain_out(&mut swarm, &mut pc, now)))
}

#[test]
fn private_responder_refuses_proofs_for_another_role_order_or_connection() {
    let s = Secret::new(b"fleet secret").unwrap();
    let t = torrent(100_000, 32_768, 9);
    let tr = transcript(&t, Role::Responder, [1; 16], [9; 16]);
    let refused = Err(CloseReason::NotAuthorized(
        "wrong proof of the swarm secret",
    ));
    let cases = [
        ("right", s.peer_proof(Role::Initiator, &tr)),
        ("wrong role", s.peer_proof(Role::Responder, &tr)),
        (
            "swapped nonces",
            s.peer_proof(
                Role::Initiator,
                &auth::Transcript {
                    initiator_nonce: tr.responder_nonce,
                    responder_nonce: tr.initiator_nonce,
                    ..tr
                },
            ),
        ),
        (
            "another connection",
            s.peer_proof(
                Role::Initiator,
                &auth::Transcript {
                    responder_nonce: [2; 16],
                    ..tr
                },
            ),
        ),
        (
            "swapped peer ids",
            s.peer_proof(
                Role::Initiator,
                &auth::Transcript {
                    initiator_id: tr.responder_id,
                    responder_id: tr.initiator_id,
                    ..tr
                },
            ),
        ),
    ];
    for (what, proof) in cases {
        let (r, sent) = responder_given(proof);
        if what == "right" {
            assert!(r.is_ok(), "{what}: {r:?}");
            assert!(sent.iter().any(|m| m.0 == wire::id::HAVE_ALL));
        } else {
            assert_eq!(r, refused, "{what}");
            assert!(sent.is_empty(), "{what}: sent {sent:?}");
        }
    }
}

#[test]
fn private_old_corvid_handshake_is_refused_by_name() {
    let (_t, mut swarm, mut pc, now, _) = private_opened(Role::Responder, [1; 16]);
    // What corvid before handshake v2 sent: corvid_nonce, no version.
    let mut d = crate::bencode::OwnedValue::dict();
    d.insert("m", crate::bencode::OwnedValue::dict());
    d.insert("v", crate::bencode::OwnedValue::bytes("corvid 0.1.0"));
    d.insert("corvid_nonce", crate::bencode::OwnedValue::bytes([5u8; 16]));
    let payload = d.encode();
    let mut bytes = Vec::new();
    Message::Extended {
        ext_id: 0,
        payload: &payload,
    }
    .encode(&mut bytes);
    match pc.handle_bytes(&mut swarm, &bytes, now) {
        Err(CloseReason::NotAuthorized(why)) => assert!(why.contains("v1"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn private_remote_that_never_proves_is_closed_at_the_handshake_timeout() {
    let (_t, mut swarm, mut pc, now, _) = private_opened(Role::Responder, [1; 16]);
    let bytes = ext(Some([9; 16]), None);
    assert_eq!(pc.handle_bytes(&mut swarm, &bytes, now), Ok(bytes.len()));
    pc.handle_tick(&mut swarm, now + Duration::from_secs(5));
    assert_eq!(pc.poll_event(), None);
    pc.handle_tick(&mut swarm, now + Duration::from_secs(11));
    assert_eq!(
        pc.poll_event(),
        Some(Event::Close(CloseReason::NotAuthorized(
            "no proof of the swarm secret within the timeout"
        )))
    );
}

#[test]
fn private_remote_without_extension_protocol_is_refused() {
    let (t, mut swarm, mut pc, now) = private_conn(Role::Initiator, [1; 16]);
    let mut hs = Vec::new();
    Handshake {
        reserved: [0; 8],
        ..Handshake::ours(t.info_hash, REMOTE_ID)
    }
    .encode(&mut hs);
    assert!(matches!(
        pc.handle_bytes(&mut swarm, &hs, now),
        Err(CloseReason::NotAuthorized(_))
    ));
}

#[test]
fn remote_that_does_not_use_its_upload_slot_is_choked_then_forgiven() {
    let (_t, mut s, mut pc, now) = opened(true, true);
    let cfg = PeerConfig::default();
    feed(
        &mut s,
        &mut pc,
        &[Message::HaveNone, Message::Interested],
        now,
    )
    .unwrap();
    assert!(!pc.choke_state().0, "an interested remote gets a slot");
    // Asking for blocks is using the slot.
    let later = now + cfg.upload_stall_timeout / 2;
    let ask = Message::Request {
        index: 0,
        begin: 0,
        len: 16_384,
    };
    feed(&mut s, &mut pc, &[ask], later).unwrap();
    pc.handle_tick(
        &mut s,
        now + cfg.upload_stall_timeout + Duration::from_secs(1),
    );
    assert!(!pc.choke_state().0, "a remote that asks keeps its slot");
    // Nothing asked or taken for longer than the stall timeout: choked, slot freed.
    let idle = later + cfg.upload_stall_timeout + Duration::from_secs(1);
    pc.handle_tick(&mut s, idle);
    assert!(pc.choke_state().0);
    // Not unchoked again during the penalty, unchoked after it.
    pc.handle_tick(&mut s, idle + cfg.stall_penalty / 2);
    assert!(pc.choke_state().0);
    pc.handle_tick(&mut s, idle + cfg.stall_penalty + Duration::from_secs(1));
    assert!(!pc.choke_state().0);
}

/// A remote that stops asking gives its slot back within about a second while other
/// interested remotes are refused one (a seeder of a big fleet: without this every slot
/// sat with peers that had nothing to ask until the 10 s stall timeout), and keeps it
/// while nobody waits.
#[test]
fn an_idle_slot_goes_back_when_others_wait_for_one() {
    let (_t, mut s, mut pc, now) = opened(true, true);
    let cfg = PeerConfig::default();
    feed(
        &mut s,
        &mut pc,
        &[Message::HaveNone, Message::Interested],
        now,
    )
    .unwrap();
    assert!(!pc.choke_state().0, "an interested remote gets a slot");
    let idle = now + cfg.contended_upload_idle * 2;
    pc.handle_tick(&mut s, idle);
    assert!(!pc.choke_state().0, "nobody waits: the idle slot stays");
    // Every other slot taken, then one more remote refused.
    let cap = s.config().max_unchoked;
    for i in 1..cap {
        let k = s
            .add_peer(format!("10.1.{}.{}", i / 250, i % 250 + 1).parse().unwrap())
            .unwrap();
        assert!(s.try_unchoke(k, idle));
    }
    let waiting = s.add_peer("10.2.0.1".parse().unwrap()).unwrap();
    assert!(!s.try_unchoke(waiting, idle));
    pc.handle_tick(&mut s, idle + Duration::from_millis(1));
    assert!(
        pc.choke_state().0,
        "an idle slot is given back while others wait"
    );
    assert!(s.try_unchoke(waiting, idle + Duration::from_millis(2)));
    // It may queue again after the short penalty, not the stall penalty.
    pc.handle_tick(&mut s, idle + cfg.contended_upload_idle / 2);
    assert!(pc.choke_state().0);
    s.release_unchoke(waiting);
    pc.handle_tick(&mut s, idle + cfg.contended_upload_idle * 2);
    assert!(!pc.choke_state().0, "a freed slot goes to it again");
}

// ---- bounded work per hostile input ----

#[test]
fn private_remote_cannot_send_a_big_message_before_proving() {
    let (_t, mut swarm, mut pc, now, _) = private_opened(Role::Responder, [1; 16]);
    // Only the length prefix of a 1 MiB extension message: refused at once.
    let prefix = (1u32 << 20).to_be_bytes();
    assert!(
        !pc.wants_more(&prefix),
        "the prefix alone must reach handle_bytes"
    );
    assert_eq!(
        pc.handle_bytes(&mut swarm, &prefix, now),
        Err(CloseReason::NotAuthorized(
            "message of more than 4 KiB before proving the secret"
        ))
    );
    // A small one is fine.
    let (_t, mut swarm, mut pc, now, _) = private_opened(Role::Responder, [1; 16]);
    let bytes = ext(Some([9; 16]), None);
    assert_eq!(pc.handle_bytes(&mut swarm, &bytes, now), Ok(bytes.len()));
}

#[test]
fn incomplete_messages_are_recognised_without_the_swarm() {
    let (t, mut s, mut pc, now) = {
        let t = torrent(100_000, 32_768, 9);
        let mut s = Swarm::new(
            SwarmConfig::default(),
            t.info_hash,
            t.lengths,
            Bitfield::full(t.lengths.piece_count()),
            1,
        );
        let now = Instant::now();
        let pc = PeerConn::new(
            &PeerConfig::default(),
            &mut s,
            "10.0.0.9:1".parse().unwrap(),
            Role::Responder,
            OUR_ID,
            [0; 16],
            now,
        )
        .unwrap();
        (t, s, pc, now)
    };
    let hs = handshake_bytes(t.info_hash, true);
    assert!(pc.wants_more(&hs[..30]));
    assert!(!pc.wants_more(&hs), "a whole handshake");
    assert!(
        !pc.wants_more(b"GET / HTTP/1.1"),
        "a bad prefix is for handle_bytes"
    );
    pc.handle_bytes(&mut s, &hs, now).unwrap();
    // A 1 MiB extension message trickling in: every cut but the last waits.
    let mut big = Vec::new();
    Message::Extended {
        ext_id: 7,
        payload: &vec![b'x'; 1 << 20],
    }
    .encode(&mut big);
    for cut in [0, 3, 4, 5, 13, 1000, big.len() - 1] {
        assert!(pc.wants_more(&big[..cut]), "cut {cut}");
    }
    assert!(!pc.wants_more(&big));
    // A piece header is enough to act on; a message that cannot be valid is too.
    let hdr = wire::piece_header(0, 0, 16_384);
    assert!(pc.wants_more(&hdr[..12]) && !pc.wants_more(&hdr));
    assert!(
        !pc.wants_more(&[0, 0, 0, 9, wire::id::HAVE]),
        "have of the wrong length"
    );
    assert_eq!(pc.handle_bytes(&mut s, &big, now), Ok(big.len()));
}

#[test]
fn buffers_grown_for_one_big_message_are_given_back() {
    let now = Instant::now();
    // A public connection that receives a 1 MiB extension message across a ring seam.
    let (t, mut s2, mut pc2, now2) = {
        let t = torrent(100_000, 32_768, 9);
        let mut sw = Swarm::new(
            SwarmConfig::default(),
            t.info_hash,
            t.lengths,
            Bitfield::full(t.lengths.piece_count()),
            1,
        );
        let pc = PeerConn::new(
            &PeerConfig::default(),
            &mut sw,
            "10.0.0.9:1".parse().unwrap(),
            Role::Responder,
            OUR_ID,
            [0; 16],
            now,
        )
        .unwrap();
        (t, sw, pc, now)
    };
    pc2.handle_bytes(&mut s2, &handshake_bytes(t.info_hash, true), now2)
        .unwrap();
    let mut big = Vec::new();
    Message::Extended {
        ext_id: 7,
        payload: &vec![b'x'; 1 << 20],
    }
    .encode(&mut big);
    let (a, b) = big.split_at(big.len() / 2);
    assert_eq!(pc2.handle_bytes_split(&mut s2, a, b, now2), Ok(big.len()));
    assert!(
        pc2.scratch.capacity() <= KEEP_BUFFER,
        "scratch kept {}",
        pc2.scratch.capacity()
    );
    // The send queue: a flood of requests answered with rejects, then flushed.
    let mut reqs = Vec::new();
    for i in 0..60_000u32 {
        Message::Request {
            index: 0,
            begin: (i % 2) * 16_384,
            len: 16_384,
        }
        .encode(&mut reqs);
    }
    pc2.handle_bytes(&mut s2, &reqs, now2).unwrap();
    let mut out = Vec::new();
    while pc2.poll_transmit(&mut s2, now2, &mut out).is_some() {}
    assert!(
        out.len() > KEEP_BUFFER,
        "the rejects went out ({} bytes)",
        out.len()
    );
    assert!(
        pc2.queued.capacity() <= KEEP_BUFFER,
        "queue kept {}",
        pc2.queued.capacity()
    );
}

#[test]
fn planning_seeder_sends_each_piece_about_once() {
    // The fleet's shape: the seeder's uplink is the scarce link (32 KiB per 10 ms step,
    // a copy takes ~30 steps), peers' uplinks are uncapped. Without the plan the seeder
    // sent about two copies here (see `capped_seeder_swarm_completes_via_peers`).
    for (cap, piece) in [(32 * 1024, 32_768u64), (64 * 1024, 65_536)] {
        let mut sim = Sim::new(torrent(1_000_000, piece, 2));
        sim.add_node(true);
        sim.nodes[0].upload_cap = Some(cap);
        for _ in 0..8 {
            sim.add_node(false);
        }
        sim.connect_all();
        let peers: Vec<usize> = (1..=8).collect();
        assert!(sim.run_until(20_000, |s| s.all_complete(&peers)));
        for &i in &peers {
            sim.assert_data(i);
        }
        let seeder = sim.nodes[0].swarm.stats().uploaded;
        eprintln!(
            "cap {cap} piece {piece}: seeder {seeder} in {} steps",
            sim.step
        );
        assert!(
            seeder <= 1_150_000,
            "seeder uploaded {seeder} bytes = {:.2} copies",
            seeder as f64 / 1e6
        );
    }
}

#[test]
fn planning_seeder_resends_what_leaving_peers_took() {
    // Peers leave the moment they complete (`--linger 0`), so pieces they were the only
    // relay of lose every source; the ones refused earlier (extra-copy budget spent) are
    // suggested again and the rest still complete. One peer also dies mid-run.
    let mut sim = Sim::new(torrent(2_000_000, 32_768, 5));
    sim.add_node(true);
    sim.nodes[0].upload_cap = Some(32 * 1024);
    for _ in 0..8 {
        let i = sim.add_node(false);
        sim.nodes[i].upload_cap = Some(48 * 1024);
    }
    sim.connect_all();
    let peers: Vec<usize> = (1..=8).collect();
    let mut gone: Vec<usize> = Vec::new();
    for step in 0..20_000 {
        if peers.iter().all(|&i| gone.contains(&i)) {
            break;
        }
        sim.run_step();
        for &i in &peers {
            let kill = i == 3 && step == 20;
            if gone.contains(&i) || !(kill || sim.nodes[i].swarm.is_complete()) {
                continue;
            }
            gone.push(i);
            let ids: Vec<usize> = sim.nodes[i].conns.keys().copied().collect();
            for y in ids {
                sim.close(i, y, CloseReason::Idle);
            }
        }
    }
    for &i in peers.iter().filter(|&&i| i != 3) {
        assert!(sim.nodes[i].swarm.is_complete(), "peer {i} stuck");
        sim.assert_data(i);
    }
    assert!(!sim.nodes[3].swarm.is_complete());
}

#[test]
fn planning_seeder_serves_peers_that_cannot_reach_each_other() {
    // A star: every peer knows only the seeder (`--peer SEED`, no tracker). Pieces the
    // seeder refused because another peer holds them are asked for again, since no
    // connection of the asker has them, and then served.
    let mut sim = Sim::new(torrent(1_000_000, 32_768, 6));
    sim.add_node(true);
    for _ in 0..3 {
        sim.add_node(false);
    }
    for i in 1..=3 {
        sim.connect(0, i);
    }
    assert!(sim.run_until(5_000, |s| s.all_complete(&[1, 2, 3])));
    for i in 1..=3 {
        sim.assert_data(i);
    }
}

/// Every message in `out` (our side's output), decoded.
fn decode_all(out: &[u8], pieces: u32) -> Vec<Message<'_>> {
    let limits = Limits {
        pieces,
        max_block: 1 << 20,
    };
    let mut msgs = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        match wire::decode(&out[pos..], &limits).unwrap() {
            Decoded::Message(m, n) => {
                msgs.push(m);
                pos += n;
            }
            Decoded::Incomplete => panic!("truncated output at {pos}"),
        }
    }
    msgs
}

#[test]
fn planning_seeder_names_the_holder_and_serves_only_a_second_ask() {
    let (t, mut s, mut pc, now) = single(true);
    // H holds piece 0: handed to it, and its first block is on its way.
    let h = s.add_peer("10.0.0.5".parse().unwrap()).unwrap();
    s.set_peer_id(h, [5; 20]);
    let p0 = s.plan_next(h, &Bitfield::new(4)).unwrap();
    assert_eq!(p0.get(), 0);
    s.record_upload(h, t.lengths.block(p0, 0).unwrap());
    let mut bytes = handshake_bytes(t.info_hash, true);
    ExtendedHandshake {
        v: Some("corvid test".into()),
        m: vec![(HOLDER_EXT.to_owned(), 5)],
        corvid_plan: Some(1),
        ..Default::default()
    }
    .encode(&mut bytes);
    Message::HaveNone.encode(&mut bytes);
    Message::Interested.encode(&mut bytes);
    assert_eq!(pc.handle_bytes(&mut s, &bytes, now), Ok(bytes.len()));
    let mut out = Vec::new();
    while pc.poll_transmit(&mut s, now, &mut out).is_some() {}
    // The remote asks for all of piece 0 (two requests, as for a 256 KiB piece in
    // 128 KiB requests): both are refused, each naming H.
    let req = |begin| Message::Request {
        index: 0,
        begin,
        len: 16_384,
    };
    feed(&mut s, &mut pc, &[req(0), req(16_384)], now).unwrap();
    let mut out = Vec::new();
    assert!(pc.poll_transmit(&mut s, now, &mut out).is_none());
    let mut holder = Vec::new();
    OwnedValue::dict()
        .insert("holder", OwnedValue::bytes([5; 20]))
        .insert("piece", OwnedValue::Int(0))
        .encode_into(&mut holder);
    let named = Message::Extended {
        ext_id: 5,
        payload: &holder,
    };
    let msgs = decode_all(&out, 4);
    let reject = |begin| Message::Reject {
        index: 0,
        begin,
        len: 16_384,
    };
    assert_eq!(
        msgs,
        vec![reject(0), named, reject(16_384), named],
        "{msgs:?}"
    );
    // Asked again, the block is served.
    feed(&mut s, &mut pc, &[req(0)], now).unwrap();
    let mut out = Vec::new();
    assert!(matches!(
        pc.poll_transmit(&mut s, now, &mut out),
        Some(Transmit::Block { block, .. }) if block == t.lengths.block(p0, 0).unwrap()
    ));
}

#[test]
fn refused_follower_waits_for_a_named_holder_and_falls_back_without_one() {
    // Our side follows a planning seeder (the connection `pc`) and also knows H.
    let (t, mut s, mut pc, now) = single(false);
    let h = s.add_peer("10.0.0.5".parse().unwrap()).unwrap();
    s.set_peer_id(h, [5; 20]);
    pc.follow = Follow::Open;
    for p in t.lengths.pieces() {
        // The seeder's have-all.
        s.add_availability(p);
    }
    let (p0, p1) = (t.lengths.piece(0).unwrap(), t.lengths.piece(1).unwrap());
    for (p, holder) in [(p0, [5; 20]), (p1, [6; 20])] {
        pc.refused.push(plan::Refused {
            piece: p,
            at: now,
            holder: None,
        });
        let mut payload = Vec::new();
        OwnedValue::dict()
            .insert("piece", OwnedValue::Int(i64::from(p.get())))
            .insert("holder", OwnedValue::bytes(holder))
            .encode_into(&mut payload);
        pc.on_holder(&s, &payload);
    }
    // A holder that has already left us (a peer leaves once complete): asked again at
    // once, without the fallback wait.
    let gone = s.add_peer("10.0.0.8".parse().unwrap()).unwrap();
    s.set_peer_id(gone, [8; 20]);
    s.remove_peer(gone);
    let p2 = t.lengths.piece(2).unwrap();
    pc.refused.push(plan::Refused {
        piece: p2,
        at: now,
        holder: None,
    });
    let mut payload = Vec::new();
    OwnedValue::dict()
        .insert("piece", OwnedValue::Int(2))
        .insert("holder", OwnedValue::bytes([8; 20]))
        .encode_into(&mut payload);
    pc.on_holder(&s, &payload);
    pc.reask_refused(&s, now);
    assert!(pc.allowed.get(2));
    // Malformed advice is ignored.
    pc.on_holder(&s, b"d5:piecei0ee");
    pc.on_holder(&s, b"not bencode");
    assert_eq!(pc.refused[0].holder, Some(h));
    // Piece 1's holder is no connection of ours: asked again after the fallback only.
    pc.reask_refused(&s, now + PLAN_REASK_FALLBACK - Duration::from_millis(1));
    assert!(!pc.allowed.get(1) && !pc.allowed.get(0));
    pc.reask_refused(&s, now + PLAN_REASK_FALLBACK);
    assert!(pc.allowed.get(1));
    // Piece 0 waits for H as long as H is here, however slow its first copy is.
    pc.reask_refused(&s, now + Duration::from_secs(60));
    assert!(!pc.allowed.get(0));
    // H announced it, then left before we fetched it: asked again at once.
    s.add_availability(p0);
    pc.reask_refused(&s, now + Duration::from_secs(61));
    assert!(!pc.allowed.get(0));
    s.remove_availability(p0);
    s.remove_peer(h);
    pc.reask_refused(&s, now + Duration::from_secs(61));
    assert!(pc.allowed.get(0));
    assert!(pc.refused.is_empty());
}

#[test]
fn planning_seeder_sends_an_awaited_piece_first_to_its_holder() {
    // The remote holds pieces 0 and 1 (it asked for both, nobody else had them). Another
    // follower was refused piece 1 and waits for this remote to pass it on: piece 1's
    // block goes out first, though it was asked for second.
    let (t, mut s, mut pc, now) = single(true);
    let mut bytes = handshake_bytes(t.info_hash, true);
    ExtendedHandshake {
        v: Some("corvid test".into()),
        corvid_plan: Some(1),
        ..Default::default()
    }
    .encode(&mut bytes);
    Message::HaveNone.encode(&mut bytes);
    Message::Interested.encode(&mut bytes);
    assert_eq!(pc.handle_bytes(&mut s, &bytes, now), Ok(bytes.len()));
    let req = |index| Message::Request {
        index,
        begin: 0,
        len: 16_384,
    };
    feed(&mut s, &mut pc, &[req(0), req(1)], now).unwrap();
    let p1 = t.lengths.piece(1).unwrap();
    s.note_awaited(p1);
    let mut out = Vec::new();
    let Some(Transmit::Block { block: first, .. }) = pc.poll_transmit(&mut s, now, &mut out) else {
        panic!("no block went out");
    };
    assert_eq!(first, t.lengths.block(p1, 0).unwrap());
    assert!(matches!(
        pc.poll_transmit(&mut s, now, &mut out),
        Some(Transmit::Block { block, .. }) if block.piece.get() == 0
    ));
}

/// Issue 11: the daemon learns a remote is in its rack at the handshake event, which it
/// sees only after `handle_bytes` has also counted a bitfield that came in the same read.
/// Marking then moves those pieces into the rack-local count; later haves count there
/// directly, and closing takes both out again.
#[test]
fn marking_a_connection_local_after_its_bitfield_counts_it_in_the_rack() {
    let (t, mut s, mut pc, now) = single(false);
    let piece = |i| t.lengths.piece(i).unwrap();
    let mut bytes = handshake_bytes(t.info_hash, true);
    Message::Bitfield(&[0b1010_0000]).encode(&mut bytes);
    pc.handle_bytes(&mut s, &bytes, now).unwrap();
    assert!(matches!(pc.poll_event(), Some(Event::HandshakeDone { .. })));
    assert_eq!(s.availability(piece(0)), 1);
    assert_eq!(s.local_availability(piece(0)), 0);
    pc.mark_local(&mut s);
    assert!(s.is_peer_local(pc.key()));
    assert_eq!(
        (0..4)
            .map(|i| s.local_availability(piece(i)))
            .collect::<Vec<_>>(),
        vec![1, 0, 1, 0]
    );
    feed(&mut s, &mut pc, &[Message::Have(1)], now).unwrap();
    assert_eq!(s.local_availability(piece(1)), 1);
    assert_eq!(s.availability(piece(1)), 1);
    pc.handle_close(&mut s);
    for i in 0..4 {
        assert_eq!(s.local_availability(piece(i)), 0, "piece {i}");
        assert_eq!(s.availability(piece(i)), 0, "piece {i}");
    }
}

/// Issue 10: a seeder that knows its uplink paces the connections it serves, each to
/// 1.5 x an equal share, and nothing once everyone is done; a peer without an uplink
/// configured paces nothing.
#[test]
fn a_seeder_that_knows_its_uplink_paces_the_connections_it_serves() {
    let uplink = 8_000_000u64;
    let mut sim = Sim::new(torrent(2_000_000, 32_768, 4));
    sim.add_node(true);
    sim.nodes[0].swarm = Swarm::new(
        SwarmConfig {
            uplink: Some(uplink),
            ..SwarmConfig::default()
        },
        sim.t.info_hash,
        sim.t.lengths,
        Bitfield::full(sim.t.lengths.piece_count()),
        1,
    );
    sim.nodes[0].upload_cap = Some(32 * 1024);
    for _ in 0..4 {
        sim.add_node(false);
    }
    // A stock client (no seeding plan) beside the four followers: served, so paced too.
    let stock = sim.add_node(false);
    sim.nodes[stock].cfg.seed_plan = false;
    sim.connect_all();
    let paces = |sim: &mut Sim, n: usize| -> Vec<(usize, Option<u64>)> {
        let node = &mut sim.nodes[n];
        for c in node.conns.values_mut() {
            c.pc.update_paced(&mut node.swarm);
        }
        node.conns
            .iter()
            .map(|(&k, c)| (k, c.pc.pacing(&node.swarm)))
            .collect()
    };
    let mut seen_all = false;
    for _ in 0..200 {
        sim.run_step();
        let p = paces(&mut sim, 0);
        let paced: Vec<u64> = p.iter().filter_map(|&(_, r)| r).collect();
        if paced.len() == 5 {
            assert!(paced.iter().all(|&r| r == uplink * 3 / 2 / 5), "{p:?}");
            seen_all = true;
            break;
        }
        assert!(
            paced
                .iter()
                .all(|&r| r == uplink * 3 / 2 / paced.len() as u64),
            "{p:?}"
        );
    }
    assert!(seen_all, "the five connections were never paced together");
    assert!(
        paces(&mut sim, 1).iter().all(|&(_, r)| r.is_none()),
        "no uplink configured on a peer: nothing paced"
    );
    let peers: Vec<usize> = (1..=5).collect();
    assert!(sim.run_until(50_000, |s| s.all_complete(&peers)));
    // Their last `not interested` is on its way for a few steps.
    for _ in 0..20 {
        sim.run_step();
    }
    let p = paces(&mut sim, 0);
    assert!(p.iter().all(|&(_, r)| r.is_none()), "{p:?}");
    for &i in &peers {
        sim.assert_data(i);
    }
}
