//! The private-swarm peer handshake (`peer::auth`, version 2) between two real
//! [`PeerConn`]s, an initiator and a responder, over byte streams the fuzzer controls:
//! it decides when bytes are delivered, injects bytes of its own into either stream,
//! flips bytes in flight and moves the clock. What must hold whatever it does:
//! - a side sends nothing but its handshake, extension handshakes and keep-alives until
//!   what it received holds the remote's valid proof for this connection and role;
//! - the responder sends a proof only after receiving the initiator's valid proof;
//! - with different secrets neither side ever gets past the handshakes;
//! - with the same secret, untouched streams and no timeout, both sides authenticate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corvid_engine::peer::auth::{Role, Secret, Transcript};
use corvid_engine::peer::{PeerConfig, PeerConn};
use corvid_engine::swarm::{Swarm, SwarmConfig};
use corvid_engine::wire::{self, id, Bitfield, Decoded, ExtendedHandshake, Limits, Message};

use crate::{geometry, PeerHarness, PEER_INFO_HASH};

const IDS: [[u8; 20]; 2] = [*b"-CV0001-initiator000", *b"-CV0001-responder000"];
const NONCES: [[u8; 16]; 2] = [[0x11; 16], [0x22; 16]];
const ROLES: [Role; 2] = [Role::Initiator, Role::Responder];

struct Side {
    swarm: Swarm,
    conn: PeerConn,
    h: PeerHarness,
    secret: Secret,
    /// Everything this side sent, and the part of it not yet delivered.
    sent_log: Vec<u8>,
    pending: Vec<u8>,
    /// Everything delivered to this side (including injected bytes).
    received_log: Vec<u8>,
}

impl Side {
    fn drive(&mut self, now: Instant) {
        self.h.drive(&mut self.conn, &mut self.swarm, now);
        if let Some(sent) = self.h.sent.as_mut() {
            self.sent_log.extend_from_slice(sent);
            self.pending.append(sent);
        }
    }

    fn deliver(&mut self, bytes: &[u8], now: Instant) {
        if self.h.closed {
            return;
        }
        self.received_log.extend_from_slice(bytes);
        self.h.inbox.extend_from_slice(bytes);
        self.drive(now);
    }
}

/// Input: a flags byte (bit 0: both sides share the secret; bit 1: the responder seeds,
/// else the initiator does; bit 2: verdicts pass), a geometry byte (bits 2-3: pieces),
/// then operations: a
/// control byte whose low 2 bits pick 0: deliver `(arg >> 1) * 8 + 1` bytes sent by side
/// `arg & 1`; 1: advance the clock by `arg^2 * 50 ms` and tick both; 2: inject the next
/// `(arg >> 1) + 1` input bytes into the stream from side `arg & 1`; 3: xor the pending
/// byte at `arg >> 1` from side `arg & 1` with the next input byte. At the end every
/// pending byte is delivered.
pub fn peer_auth(data: &[u8]) {
    let Some(([flags, geom], mut ops)) = data.split_first_chunk::<2>() else {
        return;
    };
    // One to four pieces of 16 KiB: the handshake is what is fuzzed here, and moving a
    // bigger torrent after it only slows every execution down.
    let lengths = geometry(geom & 0b1100);
    let n = lengths.piece_count();
    let same = flags & 1 != 0;
    let seeder = usize::from(flags & 2 != 0);
    let secrets = [
        Secret::new(b"fleet secret").expect("non-empty"),
        Secret::new(if same {
            b"fleet secret"
        } else {
            b"guess secret"
        })
        .expect("non-empty"),
    ];
    let start = Instant::now();
    let mut now = start;
    let mut sides: Vec<Side> = (0..2)
        .map(|i| {
            let have = if i == seeder {
                Bitfield::full(n)
            } else {
                Bitfield::new(n)
            };
            let mut swarm = Swarm::new(SwarmConfig::default(), PEER_INFO_HASH, lengths, have, 7);
            let cfg = PeerConfig {
                secret: Some(secrets[i].clone()),
                ..PeerConfig::default()
            };
            let addr = SocketAddr::from(([10, 0, 0, 1 + (1 - i) as u8], 6881));
            let conn = PeerConn::new(&cfg, &mut swarm, addr, ROLES[i], IDS[i], NONCES[i], now)
                .expect("a fresh swarm bans nobody");
            Side {
                swarm,
                conn,
                h: PeerHarness::new(lengths, flags & 4 != 0, true),
                secret: secrets[i].clone(),
                sent_log: Vec::new(),
                pending: Vec::new(),
                received_log: Vec::new(),
            }
        })
        .collect();
    for s in sides.iter_mut() {
        s.drive(now);
    }
    let mut tampered = false;
    while let Some((&c, rest)) = ops.split_first() {
        ops = rest;
        let arg = usize::from(c >> 2);
        let from = arg & 1;
        match c & 3 {
            0 => {
                let k = ((arg >> 1) * 8 + 1).min(sides[from].pending.len());
                let bytes: Vec<u8> = sides[from].pending.drain(..k).collect();
                sides[1 - from].deliver(&bytes, now);
            }
            1 => {
                now += Duration::from_millis(50 * (arg as u64).pow(2));
                for s in sides.iter_mut() {
                    if !s.h.closed {
                        s.conn.handle_tick(&mut s.swarm, now);
                        s.drive(now);
                    }
                }
            }
            2 => {
                let k = ((arg >> 1) + 1).min(ops.len());
                let (bytes, rest) = ops.split_at(k);
                ops = rest;
                tampered |= !bytes.is_empty();
                sides[1 - from].deliver(bytes, now);
            }
            _ => {
                let Some((&x, rest)) = ops.split_first() else {
                    break;
                };
                ops = rest;
                if let Some(b) = sides[from].pending.get_mut(arg >> 1) {
                    *b ^= x;
                    tampered |= x != 0;
                }
            }
        }
    }
    // Deliver everything still in flight, until both sides are quiet.
    for _ in 0..64 {
        let mut moved = false;
        for from in 0..2 {
            let bytes = std::mem::take(&mut sides[from].pending);
            moved |= !bytes.is_empty();
            sides[1 - from].deliver(&bytes, now);
        }
        if !moved {
            break;
        }
    }
    for i in 0..2 {
        check_side(&sides[i], i, same);
    }
    let timed_out = now.saturating_duration_since(start) >= PeerConfig::default().handshake_timeout;
    if same && !tampered && !timed_out {
        // (Either side may close later: the harness's filler payloads fail their hash
        // unless verdicts pass, and two bad pieces ban the sender.)
        for (i, s) in sides.iter().enumerate() {
            assert!(
                first_non_handshake(&s.sent_log).is_some(),
                "side {i} never authenticated the other over untouched streams"
            );
        }
    }
}

/// The messages of a stream after its BitTorrent handshake, up to the first that does not
/// decode (piece payloads skipped).
fn messages(stream: &[u8]) -> Vec<(Option<u8>, Vec<u8>)> {
    let lim = Limits {
        pieces: 1 << 16,
        max_block: 1 << 20,
    };
    let mut rest = stream.get(wire::HANDSHAKE_LEN..).unwrap_or_default();
    let mut out = Vec::new();
    while let Ok(Decoded::Message(m, n)) = wire::decode(rest, &lim) {
        let skip = match m {
            Message::Piece { len, .. } => len as usize,
            _ => 0,
        };
        out.push((
            rest.get(4).copied().filter(|_| n > 4),
            rest[5.min(n)..n].to_vec(),
        ));
        rest = rest.get(n + skip..).unwrap_or_default();
    }
    out
}

fn ext(m: &(Option<u8>, Vec<u8>)) -> Option<ExtendedHandshake> {
    match m {
        (Some(id::EXTENDED), p) if p.first() == Some(&0) => ExtendedHandshake::decode(&p[1..]).ok(),
        _ => None,
    }
}

/// Index of the first message that is neither an extension handshake nor a keep-alive.
fn first_non_handshake(stream: &[u8]) -> Option<usize> {
    messages(stream)
        .iter()
        .position(|m| m.0.is_some() && ext(m).is_none())
}

/// Whether `side` received the other role's valid proof for its transcript before any
/// message that ends the handshake.
fn received_valid_proof(side: &Side, i: usize) -> bool {
    let log = &side.received_log;
    let Ok(Decoded::Message(hs, _)) = wire::Handshake::decode(log) else {
        return false;
    };
    let mut their_nonce = None;
    for m in messages(log) {
        if m.0.is_none() {
            continue;
        }
        let Some(e) = ext(&m) else {
            return false;
        };
        if their_nonce.is_none() {
            their_nonce = e.corvid_challenge;
        }
        let (Some(theirs), Some(proof)) = (their_nonce, e.corvid_proof) else {
            continue;
        };
        let (ours, ids) = (NONCES[i], [IDS[i], hs.peer_id]);
        let t = if i == 0 {
            Transcript {
                info_hash: PEER_INFO_HASH,
                initiator_nonce: ours,
                responder_nonce: theirs,
                initiator_id: ids[0],
                responder_id: ids[1],
            }
        } else {
            Transcript {
                info_hash: PEER_INFO_HASH,
                initiator_nonce: theirs,
                responder_nonce: ours,
                initiator_id: ids[1],
                responder_id: ids[0],
            }
        };
        if side.secret.verify_peer_proof(ROLES[1 - i], &t, &proof) {
            return true;
        }
    }
    false
}

fn check_side(side: &Side, i: usize, same: bool) {
    let sent = messages(&side.sent_log);
    let opened = first_non_handshake(&side.sent_log).is_some();
    let proved = sent
        .iter()
        .any(|m| ext(m).is_some_and(|e| e.corvid_proof.is_some()));
    if !same {
        assert!(
            !opened,
            "side {i} got past the handshake without the secret"
        );
    }
    if opened {
        assert!(
            received_valid_proof(side, i),
            "side {i} sent the torrent without receiving a valid proof"
        );
    }
    if i == 1 && proved {
        assert!(
            received_valid_proof(side, i),
            "the responder proved before receiving the initiator's proof"
        );
    }
}
