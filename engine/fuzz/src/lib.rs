//! Fuzz harnesses for corvid-engine: every function here takes arbitrary bytes, feeds them
//! to one part of the engine that reads input from strangers, and panics only when the
//! engine breaks a promise (a panic inside the engine, or a round trip that does not come
//! back equal). The `fuzz_targets/` binaries wrap them for libFuzzer; [`seeds`] gives each
//! a few valid inputs built with the engine's own encoders, so the fuzzer starts from
//! messages that get past the first checks.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use corvid_engine::bencode::{self, OwnedValue};
use corvid_engine::geometry::{Lengths, BLOCK_SIZE};
use corvid_engine::metainfo::{self, BuildOptions, FileSpec, Metainfo, Payload};
use corvid_engine::peer::auth::Secret;
use corvid_engine::peer::{Event, PeerConfig, PeerConn, Transmit};
use corvid_engine::swarm::{Swarm, SwarmConfig};
use corvid_engine::tracker::proto::{self, AnnounceResponse, TrackerRequest};
use corvid_engine::tracker::{Outcome, Swarms, TrackerConfig};
use corvid_engine::wire::{self, Bitfield, Decoded, ExtendedHandshake, Handshake, Limits, Message};

pub mod peerauth;
pub use peerauth::peer_auth;

/// The fuzz targets, by name (the binary names under `fuzz_targets/`).
pub const TARGETS: &[&str] = &[
    "bencode",
    "metainfo",
    "wire",
    "peer",
    "tracker",
    "tracker_server",
    "peerauth",
];

/// Runs the harness called `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "bencode" => bencode(data),
        "metainfo" => metainfo(data),
        "wire" => wire(data),
        "peer" => peer(data),
        "tracker" => tracker(data),
        "peerauth" => peerauth::peer_auth(data),
        "tracker_server" => tracker_server(data),
        _ => return false,
    }
    true
}

/// Bencode: whatever decodes re-encodes canonically and decodes back to the same value,
/// and `decode_prefix` agrees with `decode` on the prefix it claims.
pub fn bencode(data: &[u8]) {
    if let Ok(v) = bencode::decode(data) {
        let owned = v.to_owned_value();
        let enc = owned.encode();
        let back = bencode::decode(&enc).expect("canonical re-encoding must decode");
        assert_eq!(
            back.to_owned_value(),
            owned,
            "bencode round trip changed the value"
        );
        // The encoding is canonical, so encoding again is a fixed point.
        assert_eq!(back.to_owned_value().encode(), enc);
    }
    if let Ok((v, n)) = bencode::decode_prefix(data) {
        assert!(
            n > 0 && n <= data.len(),
            "prefix length {n} of {}",
            data.len()
        );
        let whole = bencode::decode(&data[..n]).expect("the claimed prefix must decode alone");
        assert_eq!(whole.to_owned_value(), v.to_owned_value());
    }
}

/// Torrent files: parse, and if accepted, every accessor answers without panicking and
/// the parsed geometry is consistent with the file list and hashes.
pub fn metainfo(data: &[u8]) {
    let Ok(m) = Metainfo::from_bytes(data) else {
        return;
    };
    let info = &m.info;
    let lengths = info.lengths;
    assert_eq!(info.pieces.len() as u64, u64::from(lengths.piece_count()));
    let sum: u64 = info.files.iter().map(|f| f.length).sum();
    assert_eq!(sum, lengths.total_length(), "file lengths do not add up");
    let mut at = 0;
    for (i, f) in info.files.iter().enumerate() {
        assert_eq!(info.file_range(i), Some((at, at + f.length)));
        at += f.length;
    }
    assert_eq!(info.file_range(info.files.len()), None);
    assert!(info.pad_files.iter().all(|&i| i < info.files.len()));
    let _ = m.trackers();
    assert_eq!(m.info_hash_hex().len(), 40);
    // Pieces at both ends and a few between: every non-empty file is touched by some piece.
    let count = lengths.piece_count();
    for i in [
        0,
        1,
        count / 2,
        count.saturating_sub(2),
        count.saturating_sub(1),
    ] {
        if let Some(p) = lengths.piece(i) {
            let _ = m.piece_hash(p);
            for f in info.files_of_piece(p) {
                let (s, e) = info
                    .file_range(f)
                    .expect("files_of_piece returned a bad index");
                let ps = lengths.piece_offset(p);
                let pe = ps + u64::from(lengths.piece_size(p));
                assert!(s < pe && e > ps, "file {f} does not overlap piece {i}");
            }
        }
    }
    // Parsing is a pure function of the bytes.
    assert_eq!(Metainfo::from_bytes(data).ok().as_ref(), Some(&m));
}

/// Peer wire protocol. Input: 2 bytes of piece count (for the bitfield limit), then a
/// byte stream that is decoded message after message. Each message must re-encode to its
/// own bytes, and `decode_split` must agree with `decode` at every split point. The same
/// stream is also offered to the handshake and extension-handshake decoders.
pub fn wire(data: &[u8]) {
    let Some((head, buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limits = Limits {
        pieces: u32::from(u16::from_be_bytes(*head)),
        max_block: 128 * 1024,
    };
    match Handshake::decode(buf) {
        Ok(Decoded::Message(h, n)) => {
            assert_eq!(n, wire::HANDSHAKE_LEN);
            let mut out = Vec::new();
            h.encode(&mut out);
            assert_eq!(
                &out[..],
                &buf[..n],
                "handshake did not re-encode to its bytes"
            );
        }
        Ok(Decoded::Incomplete) => assert!(buf.len() < wire::HANDSHAKE_LEN),
        Err(_) => {}
    }
    extended_handshake(buf);
    let mut pos = 0;
    let mut scratch = Vec::new();
    while pos < buf.len() {
        let rest = &buf[pos..];
        let whole = wire::decode(rest, &limits);
        // Past the frame's end a split changes nothing (the whole frame is in `a`), so the
        // splits worth checking are 0..=frame length.
        let frame = match whole {
            Ok(Decoded::Message(_, n)) => n,
            _ => rest.len(),
        };
        for k in 0..=frame.min(rest.len()) {
            let split = wire::decode_split(&rest[..k], &rest[k..], &mut scratch, &limits);
            assert_eq!(split, whole, "decode_split at {k} disagrees with decode");
        }
        let Ok(Decoded::Message(msg, n)) = whole else {
            break;
        };
        assert!(n > 0 && n <= rest.len());
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(
            &out[..],
            &rest[..n],
            "{msg:?} did not re-encode to its bytes"
        );
        if let Message::Extended { ext_id: 0, payload } = msg {
            extended_handshake(payload);
        }
        let payload = match msg {
            Message::Piece { len, .. } => len as usize,
            _ => 0,
        };
        pos = pos.saturating_add(n).saturating_add(payload);
    }
}

/// An accepted extension handshake survives encode then decode (keys of `m` come back
/// sorted, since the encoder writes a canonical dictionary), except `corvid_v1`: it only
/// records that the remote sent the first private-swarm keys, which we never send.
fn extended_handshake(payload: &[u8]) {
    let Ok(h) = ExtendedHandshake::decode(payload) else {
        return;
    };
    let mut out = Vec::new();
    h.encode(&mut out);
    // Skip the 4-byte length, message id 20 and extension id 0.
    let back = ExtendedHandshake::decode(&out[6..]).expect("re-encoded handshake must decode");
    let mut want = h.clone();
    want.m.sort();
    want.corvid_v1 = false;
    let mut got = back;
    got.m.sort();
    assert_eq!(got, want, "extension handshake round trip");
}

/// Small torrent geometries for the peer harness: 1 to 16 pieces of 16 to 128 KiB, with
/// a short last piece.
pub(crate) fn geometry(g: u8) -> Lengths {
    let piece_len = u64::from(BLOCK_SIZE) << (g & 3);
    let pieces = 1 + u64::from(g >> 2) % 16;
    let tail = (u64::from(g) * 977) % piece_len;
    let total = piece_len * pieces - tail;
    Lengths::new(total, piece_len, pieces).expect("harness geometry is valid")
}

/// The info-hash of the peer harness's torrent.
pub const PEER_INFO_HASH: [u8; 20] = *b"corvid-fuzz-torrent!";

/// Peer state machine. Input: a flags byte (bit 0: we seed; bit 1: prepend a valid
/// handshake; bit 2: we have every other piece; bits 3-4: what we answer for pieces to
/// hash), a geometry byte, then operations: a control byte whose low 2 bits pick
/// 0: feed the next `arg + 1` bytes; 1: advance the clock by `arg^3 * 10 ms` and tick;
/// 2: toggle verdicts (`arg` bit 0) or close (`arg == 63`); 3: feed `(arg + 1) * 256`
/// bytes. After every operation the connection is drained like the runtime does:
/// payloads taken, events handled, `poll_transmit` run until it is idle. It must never
/// panic, never stall with input it could consume, and only ever upload valid blocks of
/// pieces we have.
pub fn peer(data: &[u8]) {
    let Some(([flags, geom], mut ops)) = data.split_first_chunk::<2>() else {
        return;
    };
    let lengths = geometry(*geom);
    let n = lengths.piece_count();
    let have = if flags & 1 != 0 {
        Bitfield::full(n)
    } else if flags & 4 != 0 {
        let mut b = Bitfield::new(n);
        for i in (0..n).step_by(2) {
            b.set(i);
        }
        b
    } else {
        Bitfield::new(n)
    };
    let mut swarm = Swarm::new(SwarmConfig::default(), PEER_INFO_HASH, lengths, have, 7);
    let cfg = PeerConfig::default();
    let mut now = Instant::now();
    let addr = SocketAddr::from(([10, 0, 0, 2], 6881));
    let mut conn = PeerConn::new(
        &cfg,
        &mut swarm,
        addr,
        corvid_engine::peer::auth::Role::Responder,
        *b"-CV0001-fuzzfuzzfuzz",
        [7; 16],
        now,
    )
    .expect("a fresh swarm bans nobody");
    let mut h = PeerHarness::new(lengths, flags & 8 != 0, false);
    if flags & 2 != 0 {
        Handshake::ours(PEER_INFO_HASH, *b"-XX0001-remotepeer00").encode(&mut h.inbox);
    }
    h.drive(&mut conn, &mut swarm, now);
    while !h.closed {
        let Some((&c, rest)) = ops.split_first() else {
            break;
        };
        ops = rest;
        let arg = usize::from(c >> 2);
        match c & 3 {
            0 | 3 => {
                let want = if c & 3 == 0 { arg + 1 } else { (arg + 1) * 256 };
                let take = want.min(ops.len());
                h.inbox.extend_from_slice(&ops[..take]);
                ops = &ops[take..];
            }
            1 => {
                now += Duration::from_millis(10 * (arg as u64).pow(3));
                conn.handle_tick(&mut swarm, now);
            }
            _ => {
                if arg == 63 {
                    conn.handle_close(&mut swarm);
                    h.closed = true;
                } else if arg & 1 != 0 {
                    h.verdict_ok = !h.verdict_ok;
                }
            }
        }
        h.drive(&mut conn, &mut swarm, now);
    }
}

pub(crate) struct PeerHarness {
    inbox: Vec<u8>,
    payload: Option<(corvid_engine::geometry::BlockRef, bool)>,
    verdict_ok: bool,
    closed: bool,
    lengths: Lengths,
    /// When set, everything sent (control bytes, then each block's header and as many
    /// filler bytes as its payload) is appended here, for a harness that delivers it.
    sent: Option<Vec<u8>>,
}

impl PeerHarness {
    pub(crate) fn new(lengths: Lengths, verdict_ok: bool, record: bool) -> Self {
        PeerHarness {
            inbox: Vec::new(),
            payload: None,
            verdict_ok,
            closed: false,
            lengths,
            sent: record.then(Vec::new),
        }
    }

    /// Runs the connection until it wants more input, the way the runtime does. Each
    /// round must consume bytes, finish a payload or emit an event, so a bound on the
    /// rounds catches a state machine that spins.
    pub(crate) fn drive(&mut self, conn: &mut PeerConn, swarm: &mut Swarm, now: Instant) {
        let bound = 4 * self.inbox.len() + 64;
        for _ in 0..bound {
            if self.closed {
                return;
            }
            let mut progressed = self.events(conn, swarm);
            if self.closed {
                return;
            }
            if let Some((block, _discard)) = self.payload {
                let len = block.len as usize;
                if self.inbox.len() < len {
                    self.transmit(conn, swarm, now);
                    return;
                }
                self.inbox.drain(..len);
                self.payload = None;
                conn.handle_payload_done(swarm, block, now);
                continue;
            }
            match conn.handle_bytes(swarm, &self.inbox, now) {
                Err(_) => {
                    conn.handle_close(swarm);
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    assert!(
                        n <= self.inbox.len(),
                        "consumed {n} of {}",
                        self.inbox.len()
                    );
                    self.inbox.drain(..n);
                    progressed |= n > 0;
                }
            }
            progressed |= self.events(conn, swarm) || self.payload.is_some();
            if self.closed {
                return;
            }
            self.transmit(conn, swarm, now);
            if !progressed {
                return;
            }
        }
        panic!(
            "peer connection made no progress on {} buffered bytes",
            self.inbox.len()
        );
    }

    /// Handles queued events; true if there were any.
    fn events(&mut self, conn: &mut PeerConn, swarm: &mut Swarm) -> bool {
        let mut any = false;
        while let Some(e) = conn.poll_event() {
            any = true;
            match e {
                Event::HandshakeDone { .. } => {}
                Event::ReceivePayload { block, discard } => {
                    assert!(
                        self.payload.is_none(),
                        "second payload before the first landed"
                    );
                    assert!(
                        self.valid_block(block),
                        "payload into invalid block {block:?}"
                    );
                    self.payload = Some((block, discard));
                }
                Event::PieceComplete(p) => {
                    assert!(p.get() < self.lengths.piece_count());
                    swarm.handle_verdict(p, self.verdict_ok);
                }
                Event::Close(_) => {
                    conn.handle_close(swarm);
                    self.closed = true;
                    return true;
                }
            }
        }
        any
    }

    /// Drains `poll_transmit` until it is idle; uploads must be blocks we have.
    fn transmit(&mut self, conn: &mut PeerConn, swarm: &mut Swarm, now: Instant) {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let before = out.len();
            match conn.poll_transmit(swarm, now, &mut out) {
                Some(Transmit::Block { header, block }) => {
                    if let Some(sent) = self.sent.as_mut() {
                        sent.extend_from_slice(&out);
                        out.clear();
                        sent.extend_from_slice(&header);
                        sent.extend(std::iter::repeat_n(0xAB, block.len as usize));
                    }
                    assert!(self.valid_block(block), "upload of invalid block {block:?}");
                    assert!(
                        swarm.have().get(block.piece.get()),
                        "upload of a missing piece"
                    );
                    assert_eq!(
                        header,
                        wire::piece_header(block.piece.get(), block.offset, block.len)
                    );
                }
                None if out.len() == before => {
                    if let Some(sent) = self.sent.as_mut() {
                        sent.extend_from_slice(&out);
                    }
                    return;
                }
                None => {}
            }
            if let Some(sent) = self.sent.as_mut() {
                sent.extend_from_slice(&out);
            }
            out.clear();
        }
        panic!("poll_transmit never went idle");
    }

    fn valid_block(&self, b: corvid_engine::geometry::BlockRef) -> bool {
        b.piece.get() < self.lengths.piece_count()
            && b.len > 0
            && b.offset
                .checked_add(b.len)
                .is_some_and(|end| end <= self.lengths.piece_size(b.piece))
    }
}

/// Tracker protocol, both sides: the server's request head, target and query parsers,
/// and the client's response parsers. Accepted queries and responses survive their
/// encoders.
pub fn tracker(data: &[u8]) {
    let _ = proto::parse_head(data);
    if let Ok(s) = std::str::from_utf8(data) {
        match proto::parse_target(s) {
            Ok(TrackerRequest::Announce(req)) => {
                let q = proto::announce_query(&req);
                assert_eq!(proto::parse_announce_query(&q).as_ref(), Ok(&req), "{q}");
            }
            Ok(TrackerRequest::Scrape(hashes)) => {
                let q = proto::scrape_query(&hashes);
                assert_eq!(proto::parse_scrape_query(&q).as_ref(), Ok(&hashes), "{q}");
            }
            Err(_) => {}
        }
        if let Ok(req) = proto::parse_announce_query(s) {
            let q = proto::announce_query(&req);
            assert_eq!(proto::parse_announce_query(&q).as_ref(), Ok(&req), "{q}");
        }
        if let Ok(hashes) = proto::parse_scrape_query(s) {
            let q = proto::scrape_query(&hashes);
            assert_eq!(proto::parse_scrape_query(&q).as_ref(), Ok(&hashes), "{q}");
        }
    }
    if let Ok(Ok(resp)) = proto::parse_announce_response(data) {
        let full = proto::encode_announce_response(&resp, false);
        let back = proto::parse_announce_response(&full);
        assert_eq!(
            back.as_ref().ok().and_then(|r| r.as_ref().ok()),
            Some(&resp)
        );
        // Compact form: peer ids are dropped and IPv4 peers come before IPv6 ones.
        let compact = proto::encode_announce_response(&resp, true);
        let mut want: AnnounceResponse = resp.clone();
        want.peers.iter_mut().for_each(|p| p.peer_id = None);
        want.peers.sort_by_key(|p| p.addr.is_ipv6());
        let back = proto::parse_announce_response(&compact);
        assert_eq!(
            back.as_ref().ok().and_then(|r| r.as_ref().ok()),
            Some(&want)
        );
    }
    if let Ok(Ok(mut entries)) = proto::parse_scrape_response(data) {
        let enc = proto::encode_scrape_response(&entries);
        let mut back = proto::parse_scrape_response(&enc)
            .expect("re-encoded scrape response must parse")
            .expect("and not be a failure");
        entries.sort_by_key(|e| e.0);
        back.sort_by_key(|e| e.0);
        assert_eq!(back, entries, "scrape response round trip");
    }
}

/// Where the `tracker_server` harness's requests come from: two loopback clients, an
/// IPv4 host and the same host v4-mapped, and IPv6 hosts of which two share a /64.
const SOURCES: [&str; 8] = [
    "127.0.0.1",
    "127.0.0.2",
    "10.0.0.1",
    "::ffff:10.0.0.1",
    "::1",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:1::1",
];

/// What `ip=` may claim in the `tracker_server` harness (index 0: no claim): usable
/// addresses, a v4-mapped one, and ones no peer can have.
const CLAIMS: [Option<&str>; 8] = [
    None,
    Some("192.0.2.7"),
    Some("10.0.0.1"),
    Some("::ffff:192.0.2.7"),
    Some("2001:db8::9"),
    Some("0.0.0.0"),
    Some("224.0.0.1"),
    Some("255.255.255.255"),
];

/// The private-swarm secret of the `tracker_server` harness.
const FUZZ_SECRET: &[u8] = b"fuzz secret";

/// The tracker server's request handling, exactly as its event loop drives it
/// (`Swarms::handle_request`), under limits small enough for the fuzzer to reach: a
/// stream of requests from a few source addresses at advancing times, and expiry passes.
/// After every step the per-IP counts must agree with the peers tracked and every cap
/// must hold (`Swarms::check_invariants`), and every answer must be one whole HTTP
/// response whose body parses, on the client's side, as what the outcome says.
///
/// Input: 4 bytes of configuration, then operations.
/// - config: flags (bit 0: trust `ip=`; bit 1: private, with [`FUZZ_SECRET`]), peers
///   per IP (low nibble & 7, + 1) and swarms per IP (high nibble & 7, + 1), torrents
///   (& 7, + 1) and peers per torrent (bits 3..7 & 15, + 1), interval in seconds (& 31, + 1).
/// - operation: `op`, `dt` (seconds the clock advances first), then by `op & 3`:
///   0: `len` and `len` raw request bytes; 1: an announce built from 5 bytes (hash and
///   peer index; event, left, compact, numwant; port, 2 bytes; claim and auth), then
///   `len` and `len` bytes appended to its query; 2: an expiry pass; 3: a scrape of
///   hash `op >> 5`. The source is `SOURCES[(op >> 2) & 7]`.
pub fn tracker_server(data: &[u8]) {
    let Some((cfg, mut ops)) = data.split_first_chunk::<4>() else {
        return;
    };
    let secret = Secret::new(FUZZ_SECRET).expect("non-empty secret");
    let tcfg = TrackerConfig {
        interval: Duration::from_secs(u64::from(cfg[3] & 31) + 1),
        min_interval: Duration::from_secs(1),
        trust_ip_param: cfg[0] & 1 != 0,
        secret: (cfg[0] & 2 != 0).then(|| secret.clone()),
        max_peers_per_ip: usize::from(cfg[1] & 7) + 1,
        max_swarms_per_ip: usize::from((cfg[1] >> 4) & 7) + 1,
        max_torrents: usize::from(cfg[2] & 7) + 1,
        max_peers_per_torrent: usize::from((cfg[2] >> 3) & 15) + 1,
        max_numwant: 8,
        ..TrackerConfig::default()
    };
    let max_numwant = tcfg.max_numwant as usize;
    let mut swarms = Swarms::new(tcfg);
    let mut now = Instant::now();
    let hash = |i: u8| [0xA0 | (i & 7); 20];
    while let Some((&[op, dt], rest)) = ops.split_first_chunk::<2>() {
        ops = rest;
        now += Duration::from_secs(u64::from(dt));
        let source: IpAddr = SOURCES[usize::from((op >> 2) & 7)]
            .parse()
            .expect("literal address");
        // `whole`: built here, so certainly one complete head.
        let (request, whole) = match op & 3 {
            0 => {
                let Some((&len, rest)) = ops.split_first() else {
                    return;
                };
                let n = usize::from(len).min(rest.len());
                ops = &rest[n..];
                (rest[..n].to_vec(), false)
            }
            1 => {
                let Some((&[who, how, p0, p1, claim], rest)) = ops.split_first_chunk::<5>() else {
                    return;
                };
                let Some((&len, rest)) = rest.split_first() else {
                    return;
                };
                let n = usize::from(len).min(rest.len());
                let extra = &rest[..n];
                ops = &rest[n..];
                let peer_id = [0x50 | ((who >> 3) & 7); 20];
                let mut req = proto::AnnounceRequest::new(
                    hash(who),
                    peer_id,
                    u16::from_be_bytes([p0, p1]),
                    if how & 4 != 0 { 0 } else { 1000 },
                );
                req.event = [
                    proto::Event::None,
                    proto::Event::Started,
                    proto::Event::Completed,
                    proto::Event::Stopped,
                ][usize::from(how & 3)];
                req.compact = how & 8 == 0;
                req.numwant = (how & 16 != 0).then_some(u32::from(how >> 5) * 3);
                req.ip = CLAIMS[usize::from(claim & 7)].map(|c| c.parse().expect("literal"));
                if claim & 8 != 0 {
                    req.auth = Some(secret.announce_proof(&req.info_hash, &peer_id));
                }
                let mut r = format!("GET /announce?{}", proto::announce_query(&req)).into_bytes();
                r.extend_from_slice(extra);
                r.extend_from_slice(b" HTTP/1.0\r\n\r\n");
                (r, extra.is_empty())
            }
            2 => {
                swarms.expire(now);
                if let Err(e) = swarms.check_invariants() {
                    panic!("after expiry: {e}");
                }
                continue;
            }
            _ => {
                let q = proto::scrape_query(&[hash(op >> 5)]);
                (
                    format!("GET /scrape?{q} HTTP/1.0\r\n\r\n").into_bytes(),
                    true,
                )
            }
        };
        let Some((out, outcome)) = swarms.handle_request(&request, source, now) else {
            assert!(!whole, "a whole request got no answer");
            continue;
        };
        // The announce the server read, if it read one (appended bytes may change it).
        let asker = match proto::parse_head(&request) {
            Ok(proto::Head::Complete { target }) => match proto::parse_target(&target) {
                Ok(TrackerRequest::Announce(r)) => Some(r),
                _ => None,
            },
            _ => None,
        };
        if let Err(e) = swarms.check_invariants() {
            panic!("after {outcome:?} from {source}: {e}");
        }
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP head");
        let head = std::str::from_utf8(&out[..split]).expect("an ASCII head");
        let body = &out[split + 4..];
        assert!(head.starts_with("HTTP/1.0 "), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
        match outcome {
            Outcome::Announce => {
                let resp = proto::parse_announce_response(body)
                    .expect("announce answer parses")
                    .expect("and is not a failure");
                assert!(
                    resp.peers.len() <= max_numwant,
                    "{} peers",
                    resp.peers.len()
                );
                if let Some(req) = &asker {
                    assert!(
                        resp.peers.iter().all(|p| p.peer_id != Some(req.peer_id)),
                        "the asker was handed itself"
                    );
                    if req.event != proto::Event::Stopped {
                        let counts = swarms.scrape(&[req.info_hash]);
                        let e = counts.first().expect("no allow-list").1;
                        assert!(e.complete + e.incomplete >= 1, "the asker is not counted");
                        assert!(swarms.torrents() >= 1);
                    }
                }
            }
            Outcome::Failure => {
                proto::parse_announce_response(body)
                    .expect("a failure parses")
                    .expect_err("as a failure");
            }
            Outcome::Scrape => {
                proto::parse_scrape_response(body)
                    .expect("scrape answer parses")
                    .expect("and is not a failure");
            }
            Outcome::BadRequest => assert!(head.starts_with("HTTP/1.0 4"), "{head}"),
        }
    }
}

/// Valid inputs for each target, built with the engine's own encoders: (target, name,
/// bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let torrents = sample_torrents();

    // bencode: the torrents themselves, and small values of each kind.
    let mut d = OwnedValue::dict();
    d.insert("a", OwnedValue::Int(-42));
    d.insert(
        "list",
        OwnedValue::List(vec![OwnedValue::bytes("x"), OwnedValue::Int(0)]),
    );
    for (i, v) in [
        d.encode(),
        OwnedValue::Int(i64::MIN).encode(),
        b"le".to_vec(),
        torrents[0].clone(),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(("bencode", format!("value-{i}"), v));
    }

    // metainfo: single-file, multi-file and private torrents made by `assemble`.
    for (i, t) in torrents.iter().enumerate() {
        out.push(("metainfo", format!("torrent-{i}"), t.clone()));
    }

    // wire: a captured conversation (handshake, extension handshake, bitfield and the
    // usual messages) for a 20-piece torrent, and the piece-count header in front.
    let mut stream = Vec::new();
    let mut ext = Vec::new();
    ExtendedHandshake {
        m: vec![("ut_metadata".into(), 3), ("ut_pex".into(), 1)],
        v: Some("corvid 0.1.0".into()),
        p: Some(6881),
        reqq: Some(500),
        corvid_max_request: Some(128 * 1024),
        corvid_plan: Some(1),
        ..ExtendedHandshake::default()
    }
    .encode(&mut ext);
    let mut bits = Bitfield::new(20);
    for i in [0, 3, 19] {
        bits.set(i);
    }
    let msgs = [
        Message::Bitfield(bits.as_bytes()),
        Message::KeepAlive,
        Message::Interested,
        Message::Unchoke,
        Message::Have(7),
        Message::Request {
            index: 1,
            begin: 16384,
            len: 16384,
        },
        Message::Cancel {
            index: 1,
            begin: 0,
            len: 16384,
        },
        Message::Reject {
            index: 2,
            begin: 0,
            len: 16384,
        },
        Message::Port(6881),
        Message::Suggest(4),
        Message::AllowedFast(5),
        Message::HaveNone,
        Message::Choke,
        Message::NotInterested,
    ];
    stream.extend_from_slice(&ext);
    for m in msgs {
        m.encode(&mut stream);
    }
    stream.extend_from_slice(&wire::piece_header(3, 0, 8));
    stream.extend_from_slice(b"payload!");
    let mut hs = vec![0, 20];
    Handshake::ours([1; 20], [2; 20]).encode(&mut hs);
    out.push(("wire", "handshake".into(), hs));
    let mut conv = vec![0, 20];
    conv.extend_from_slice(&stream);
    out.push(("wire", "messages".into(), conv));
    let mut ext_only = vec![0, 0];
    ext_only.extend_from_slice(&ext);
    out.push(("wire", "extended".into(), ext_only));

    // peer: a remote that handshakes, sends its bitfield and asks us for blocks (we
    // seed), and one that serves us a piece (we download).
    let geom = 0b0000_1000; // 3 pieces of 16 KiB, the last one short
    let lengths = geometry(geom);
    let mut ext = Vec::new();
    ExtendedHandshake {
        m: vec![],
        v: Some("corvid 0.1.0".into()),
        p: None,
        reqq: Some(64),
        corvid_max_request: None,
        corvid_plan: Some(1),
        ..ExtendedHandshake::default()
    }
    .encode(&mut ext);
    // The have-none / have-all must be the first message after the handshake.
    let mut asks = Vec::new();
    Message::HaveNone.encode(&mut asks);
    asks.extend_from_slice(&ext);
    Message::Interested.encode(&mut asks);
    for i in 0..lengths.piece_count() {
        let p = lengths.piece(i).expect("in range");
        Message::Request {
            index: i,
            begin: 0,
            len: lengths.piece_size(p).min(BLOCK_SIZE),
        }
        .encode(&mut asks);
    }
    out.push(("peer", "seeding".into(), peer_ops(0b011, geom, &asks)));
    let mut serves = Vec::new();
    Message::HaveAll.encode(&mut serves);
    serves.extend_from_slice(&ext);
    Message::Unchoke.encode(&mut serves);
    // Our requests go out once the unchoke is handled, so the blocks come in a later
    // segment (each segment is fed in its own operations).
    let mut blocks = Vec::new();
    for i in 0..2 {
        let p = lengths.piece(i).expect("piece in range");
        blocks.extend_from_slice(&wire::piece_header(i, 0, lengths.piece_size(p)));
        blocks.extend(std::iter::repeat_n(0xAB, lengths.piece_size(p) as usize));
    }
    Message::Have(1).encode(&mut blocks);
    let mut ops = peer_ops(0b1010, geom, &serves);
    ops.extend_from_slice(&peer_ops(0b1010, geom, &blocks)[2..]);
    out.push(("peer", "downloading".into(), ops));

    // peerauth: the private handshake untouched (same secret; then another secret), and
    // delivered a few bytes at a time alternating sides, with a tick between.
    out.push(("peerauth", "same-secret".into(), vec![0b101, geom]));
    out.push(("peerauth", "other-secret".into(), vec![0b100, geom]));
    let mut trickle = vec![0b111, geom];
    for k in 0..40u8 {
        let from = k & 1;
        trickle.push(((1 << 1 | from) << 2) | 0);
        if k % 8 == 7 {
            trickle.push((2 << 2) | 1);
        }
    }
    out.push(("peerauth", "trickle".into(), trickle));

    // tracker: request heads, queries and responses as corvid writes them.
    let mut req = proto::AnnounceRequest::new([0xAA; 20], *b"-CV0001-abcdefghijkl", 6881, 1000);
    req.numwant = Some(50);
    req.ip = Some("127.0.0.1".parse().expect("literal address"));
    let q = proto::announce_query(&req);
    out.push(("tracker", "announce-query".into(), q.clone().into_bytes()));
    out.push((
        "tracker",
        "announce-head".into(),
        format!("GET /announce?{q} HTTP/1.1\r\nHost: 127.0.0.1:8998\r\n\r\n").into_bytes(),
    ));
    out.push((
        "tracker",
        "scrape-target".into(),
        format!("/scrape?{}", proto::scrape_query(&[[1; 20], [2; 20]])).into_bytes(),
    ));
    let resp = AnnounceResponse {
        interval: 1800,
        min_interval: Some(60),
        complete: Some(3),
        incomplete: Some(9),
        peers: vec![
            proto::PeerInfo {
                addr: "127.0.0.1:6881".parse().expect("literal"),
                peer_id: Some([3; 20]),
            },
            proto::PeerInfo {
                addr: "[::1]:6882".parse().expect("literal"),
                peer_id: None,
            },
        ],
        warning: Some("be nice".into()),
        tracker_id: Some(b"t1".to_vec()),
    };
    out.push((
        "tracker",
        "response-compact".into(),
        proto::encode_announce_response(&resp, true),
    ));
    out.push((
        "tracker",
        "response-dict".into(),
        proto::encode_announce_response(&resp, false),
    ));
    out.push((
        "tracker",
        "scrape-response".into(),
        proto::encode_scrape_response(&[([5; 20], Default::default())]),
    ));
    out.push(("tracker", "failure".into(), proto::encode_failure("no")));

    // tracker_server: a public and a private tracker with small caps, several sources
    // announcing, completing, stopping; a raw request, an expiry and a scrape.
    let announce_op = |src: u8, who: u8, how: u8, port: u16, claim: u8| {
        let mut v = vec![(src << 2) | 1, 1, who, how];
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&[claim, 0]);
        v
    };
    for (name, flags) in [("public", 0u8), ("trust-ip", 1), ("private", 2)] {
        let mut ops = vec![flags, 0x12, 0x1b, 9];
        for (src, who, how) in [
            (0u8, 0u8, 1u8),
            (0, 8, 1),
            (0, 16, 1),
            (1, 24, 1),
            (2, 1, 1),
            (3, 9, 2),
            (5, 2, 1),
            (6, 10, 1),
            (7, 3, 0x1c),
            (1, 0, 3),
            (0, 0, 2),
        ] {
            ops.extend(announce_op(
                src,
                who,
                how,
                6881 + u16::from(who),
                8 | (who & 7),
            ));
        }
        ops.extend_from_slice(&[3, 5]); // scrape hash 0
        ops.extend_from_slice(&[2, 30]); // expiry after 30 s
        ops.extend(announce_op(4, 0, 1, 7000, 8));
        out.push(("tracker_server", name.into(), ops));
    }
    let raw = format!("GET /announce?{q} HTTP/1.0\r\n\r\n");
    let mut ops = vec![0, 0x77, 0xff, 3, 0, 0, raw.len() as u8];
    ops.extend_from_slice(raw.as_bytes());
    ops.extend_from_slice(&[0b100, 0, 12]);
    ops.extend_from_slice(b"GET /announc");
    out.push(("tracker_server", "raw".into(), ops));
    out
}

/// Wraps a wire stream as a peer-harness input: flags, geometry, then feed operations of
/// 64 bytes (op 0, arg 63), with a clock tick after each.
fn peer_ops(flags: u8, geom: u8, stream: &[u8]) -> Vec<u8> {
    let mut ops = vec![flags, geom];
    for chunk in stream.chunks(64) {
        ops.push((chunk.len() as u8 - 1) << 2);
        ops.extend_from_slice(chunk);
        ops.push((1 << 2) | 1);
    }
    ops
}

/// A torrent to build: name, directory form, files (path, length) and options.
type TorrentCase = (
    &'static str,
    bool,
    &'static [(&'static str, u64)],
    BuildOptions,
);

/// Torrents made by the engine's own builder from in-memory file lists.
fn sample_torrents() -> Vec<Vec<u8>> {
    let cases: [TorrentCase; 3] = [
        (
            "single.bin",
            false,
            &[("single.bin", 100_000)],
            BuildOptions {
                trackers: vec!["http://127.0.0.1:8998/announce".into()],
                creation_date: Some(1_700_000_000),
                ..BuildOptions::default()
            },
        ),
        (
            "release",
            true,
            &[
                ("release/bin/app", 40_000),
                ("release/empty", 0),
                ("release/lib/x.so", 70_000),
            ],
            BuildOptions {
                trackers: vec![
                    "http://127.0.0.1:8998/announce".into(),
                    "http://10.0.0.1:8998/announce".into(),
                ],
                comment: Some("fuzz seed".into()),
                piece_length: Some(32 * 1024),
                ..BuildOptions::default()
            },
        ),
        (
            "private",
            true,
            &[("private/a", 1), ("private/b", 16 * 1024)],
            BuildOptions {
                private: true,
                ..BuildOptions::default()
            },
        ),
    ];
    cases
        .into_iter()
        .map(|(name, multi, files, opts)| {
            let payload = Payload {
                root: "/nonexistent".into(),
                disk_files: files
                    .iter()
                    .map(|(p, l)| FileSpec {
                        path: p.into(),
                        length: *l, pad: false,
                    })
                    .collect(),
                name: name.into(),
                multi_file: multi,
                executable: vec![false; files.len()],
                symlinks: Vec::new(),
            };
            let lengths = metainfo::payload_lengths(&payload, &opts).expect("seed geometry");
            let hashes: Vec<[u8; 20]> = (0..lengths.piece_count()).map(|i| [i as u8; 20]).collect();
            metainfo::assemble(&payload, &opts, lengths, &hashes)
                .expect("seed torrent assembles")
                .1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed runs clean through its harness (so a seed never starts a run as a crash),
    /// and every target has seeds.
    #[test]
    fn seeds_pass_their_harnesses() {
        let seeds = seeds();
        for t in TARGETS {
            assert!(seeds.iter().any(|(s, _, _)| s == t), "no seed for {t}");
        }
        for (target, name, bytes) in seeds {
            assert!(run(target, &bytes), "{target}/{name}");
        }
    }

    /// The metainfo seeds are torrents the parser accepts, not just bytes.
    #[test]
    fn torrent_seeds_parse() {
        for t in sample_torrents() {
            Metainfo::from_bytes(&t).expect("seed torrent parses");
        }
    }

    /// Found by the CI smoke pass: an extension handshake carrying the first private-swarm
    /// key `corvid_auth` decodes with `corvid_v1` set, which encode (rightly) never writes
    /// back; the round-trip check must not count that as a difference.
    #[test]
    fn old_private_swarm_keys_survive_the_wire_round_trip_check() {
        let input: &[u8] = b"\x00\x00\x00\x00\x00y\x14\x00d18:co\x8e\x89\x96\xa3_iax_requesti131072e11:corvid_authi1e1:ml11:ut_met!datai3e6:ut_0exi1ee1:pi6881e4:reqqi500e1:v12:corvid 0.1.0e";
        assert!(run("wire", input));
    }
}
