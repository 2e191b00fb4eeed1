//! An in-memory swarm: nodes with a `Vec<u8>` as storage and real SHA-1 verification,
//! connected pairwise by byte queues with latency and optional upload caps, driven step by
//! step under a simulated clock (the shape of quinn-proto's `tests/util.rs`).

use super::*;
use crate::swarm::SwarmConfig;
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
    inbox: Vec<u8>,
    payload: Option<(BlockRef, bool)>,
}

struct Node {
    swarm: Swarm,
    storage: Vec<u8>,
    conns: BTreeMap<usize, Conn>,
    corrupt: bool,
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
    /// (from, to) -> chunks in flight with the step they arrive.
    links: BTreeMap<(usize, usize), Link>,
    /// Every close seen: (node, remote node, reason).
    closes: Vec<(usize, usize, CloseReason)>,
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
            links: BTreeMap::new(),
            closes: Vec::new(),
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
            upload_cap: None,
            ip: IpAddr::from([10, 0, 0, id as u8 + 1]),
            peer_id,
            cfg: PeerConfig::default(),
        });
        id
    }

    fn connect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            let addr = SocketAddr::new(self.nodes[y].ip, 6881);
            let node = &mut self.nodes[x];
            let cfg = node.cfg.clone();
            if let Ok(pc) = PeerConn::new(&cfg, &mut node.swarm, addr, node.peer_id, self.now) {
                node.conns.insert(
                    y,
                    Conn {
                        pc,
                        inbox: Vec::new(),
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

    fn close(&mut self, x: usize, y: usize, reason: CloseReason) {
        self.closes.push((x, y, reason));
        for (p, q) in [(x, y), (y, x)] {
            let node = &mut self.nodes[p];
            if let Some(mut c) = node.conns.remove(&q) {
                c.pc.handle_close(&mut node.swarm);
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
                    node.storage[off..off + len].copy_from_slice(&c.inbox[..len]);
                }
                c.inbox.drain(..len);
                c.payload = None;
                c.pc.handle_payload_done(&mut node.swarm, block, now);
                continue;
            }
            match c.pc.handle_bytes(&mut node.swarm, &c.inbox, now) {
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
                    c.inbox.extend_from_slice(&bytes);
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
        [7; 20],
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
    assert_eq!(pc.outstanding.iter().filter(|o| !o.cancelled).count(), 1);
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
    let b = pc.outstanding[0].block;
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
