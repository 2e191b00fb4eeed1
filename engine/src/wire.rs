//! Peer wire protocol messages (BEP 3, BEP 6 fast extension, BEP 10 extension protocol).
//!
//! Contract: pure functions over bytes. No sockets, no files, no clock, no randomness, and
//! no `unsafe` (the crate-wide `forbid` is not available per module, so this module simply
//! contains none). Encoding appends to a caller's `Vec<u8>`; decoding reads from one slice
//! ([`decode`]) or from the two halves of a ring buffer ([`decode_split`]) and answers
//! [`Decoded::Incomplete`] until a whole message is present, so input may be cut anywhere.
//!
//! A `piece` message is the exception that makes zero-copy receive possible: the decoder
//! yields only its 13-byte header ([`Message::Piece`] with the payload length) and the
//! caller moves the payload itself, straight into storage.
//!
//! Every length field is checked against what the protocol allows before anything is
//! buffered: fixed-size messages must have their exact size, a bitfield exactly
//! `ceil(pieces / 8)` bytes with zero spare bits, extension messages at most
//! [`MAX_EXTENDED_LEN`], a piece payload at most the negotiated block limit.

use crate::bencode::{self, OwnedValue};

/// The 68-byte handshake's fixed prefix: length 19 then the protocol name.
pub const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";
/// Bytes in a handshake.
pub const HANDSHAKE_LEN: usize = 68;
/// Extension messages (BEP 10) larger than this are refused: real handshakes are a few
/// hundred bytes and corvid speaks no extension that needs more.
pub const MAX_EXTENDED_LEN: u32 = 1 << 20;
/// Bytes of a `piece` message before its payload: length prefix, id, index, begin.
pub const PIECE_HEADER_LEN: usize = 13;
/// Reserved bit for the fast extension (BEP 6): `reserved[7] & 0x04`.
pub const RESERVED_FAST: (usize, u8) = (7, 0x04);
/// Reserved bit for the extension protocol (BEP 10): `reserved[5] & 0x10`.
pub const RESERVED_EXTENDED: (usize, u8) = (5, 0x10);

/// Message ids on the wire.
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 0x0D;
    pub const HAVE_ALL: u8 = 0x0E;
    pub const HAVE_NONE: u8 = 0x0F;
    pub const REJECT: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
    pub const EXTENDED: u8 = 20;
}

/// Why bytes from a peer are not a valid message. Each names the message and the length
/// or value that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("handshake does not start with \\x13BitTorrent protocol")]
    BadProtocol,
    #[error("message id {id} has length {len}, expected {expected}")]
    BadLength { id: u8, len: u32, expected: u32 },
    #[error("bitfield of {len} bytes, the torrent needs exactly {expected}")]
    BitfieldLength { len: u32, expected: u32 },
    #[error("bitfield has spare bits set past piece {pieces}")]
    BitfieldSpareBits { pieces: u32 },
    #[error("piece message payload of {len} bytes exceeds the block limit {max}")]
    PieceTooLong { len: u32, max: u32 },
    #[error("extension message of {len} bytes exceeds the limit {max}")]
    ExtendedTooLong { len: u32, max: u32 },
    #[error("message id {id} with length {len} is unknown or too long")]
    Unknown { id: u8, len: u32 },
    #[error("extension handshake is not a bencoded dictionary: {0}")]
    BadExtendedHandshake(String),
}

/// What the decoder needs to know about the torrent and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pieces in the torrent: fixes the bitfield size and which spare bits must be zero.
    pub pieces: u32,
    /// Largest piece payload accepted in one message.
    pub max_block: u32,
}

/// One message; variable-size bodies borrow from the decoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    /// Exactly `ceil(pieces / 8)` bytes, spare bits checked to be zero.
    Bitfield(&'a [u8]),
    Request {
        index: u32,
        begin: u32,
        len: u32,
    },
    /// Only the header: `len` payload bytes follow on the wire and are the caller's to move.
    Piece {
        index: u32,
        begin: u32,
        len: u32,
    },
    Cancel {
        index: u32,
        begin: u32,
        len: u32,
    },
    Port(u16),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject {
        index: u32,
        begin: u32,
        len: u32,
    },
    AllowedFast(u32),
    /// BEP 10: extension id 0 is the handshake, others are as the handshake's `m` says.
    Extended {
        ext_id: u8,
        payload: &'a [u8],
    },
}

/// A decoding step's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<T> {
    /// More bytes are needed; nothing was consumed.
    Incomplete,
    /// A message and how many input bytes it used (for a piece: just its 13-byte header).
    Message(T, usize),
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn be32(b: &[u8], at: usize) -> u32 {
    // Callers check lengths first; the fallback keeps this panic-free regardless.
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

/// The 13-byte header of a `piece` message carrying `len` payload bytes.
pub fn piece_header(index: u32, begin: u32, len: u32) -> [u8; PIECE_HEADER_LEN] {
    let mut h = [0u8; PIECE_HEADER_LEN];
    h[0..4].copy_from_slice(&(9 + len).to_be_bytes());
    h[4] = id::PIECE;
    h[5..9].copy_from_slice(&index.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    h
}

impl Message<'_> {
    /// Appends the message to `out`. For [`Message::Piece`] only the header is written;
    /// the payload is sent by the caller from storage.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let simple = |out: &mut Vec<u8>, id: u8| {
            put_u32(out, 1);
            out.push(id);
        };
        let with_u32 = |out: &mut Vec<u8>, id: u8, v: u32| {
            put_u32(out, 5);
            out.push(id);
            put_u32(out, v);
        };
        let triple = |out: &mut Vec<u8>, id: u8, a: u32, b: u32, c: u32| {
            put_u32(out, 13);
            out.push(id);
            put_u32(out, a);
            put_u32(out, b);
            put_u32(out, c);
        };
        match *self {
            Message::KeepAlive => put_u32(out, 0),
            Message::Choke => simple(out, id::CHOKE),
            Message::Unchoke => simple(out, id::UNCHOKE),
            Message::Interested => simple(out, id::INTERESTED),
            Message::NotInterested => simple(out, id::NOT_INTERESTED),
            Message::Have(i) => with_u32(out, id::HAVE, i),
            Message::Bitfield(b) => {
                put_u32(out, 1 + b.len() as u32);
                out.push(id::BITFIELD);
                out.extend_from_slice(b);
            }
            Message::Request { index, begin, len } => triple(out, id::REQUEST, index, begin, len),
            Message::Piece { index, begin, len } => {
                out.extend_from_slice(&piece_header(index, begin, len))
            }
            Message::Cancel { index, begin, len } => triple(out, id::CANCEL, index, begin, len),
            Message::Port(p) => {
                put_u32(out, 3);
                out.push(id::PORT);
                out.extend_from_slice(&p.to_be_bytes());
            }
            Message::Suggest(i) => with_u32(out, id::SUGGEST, i),
            Message::HaveAll => simple(out, id::HAVE_ALL),
            Message::HaveNone => simple(out, id::HAVE_NONE),
            Message::Reject { index, begin, len } => triple(out, id::REJECT, index, begin, len),
            Message::AllowedFast(i) => with_u32(out, id::ALLOWED_FAST, i),
            Message::Extended { ext_id, payload } => {
                put_u32(out, 2 + payload.len() as u32);
                out.push(id::EXTENDED);
                out.push(ext_id);
                out.extend_from_slice(payload);
            }
        }
    }
}

/// Checks a message's length prefix (and id, if present) before its body is awaited, and
/// says how many bytes, counting the prefix, must be present to yield the message.
/// Bytes the message whose length prefix is `len` (and id `id`, once known) needs before
/// it can be decoded: the whole frame, or a `piece`'s 13-byte header; an error as soon as
/// the prefix shows the message cannot be valid.
pub fn frame_need(len: u32, id: Option<u8>, limits: &Limits) -> Result<usize, WireError> {
    let Some(id) = id else {
        return Ok(if len == 0 { 4 } else { 5 });
    };
    let exact = |expected: u32| {
        if len == expected {
            Ok(4 + len as usize)
        } else {
            Err(WireError::BadLength { id, len, expected })
        }
    };
    match id {
        id::CHOKE | id::UNCHOKE | id::INTERESTED | id::NOT_INTERESTED => exact(1),
        id::HAVE_ALL | id::HAVE_NONE => exact(1),
        id::HAVE | id::SUGGEST | id::ALLOWED_FAST => exact(5),
        id::REQUEST | id::CANCEL | id::REJECT => exact(13),
        id::PORT => exact(3),
        id::BITFIELD => {
            let expected = 1 + (limits.pieces as u64).div_ceil(8);
            if u64::from(len) == expected {
                Ok(4 + len as usize)
            } else {
                Err(WireError::BitfieldLength {
                    len: len.saturating_sub(1),
                    expected: (expected - 1) as u32,
                })
            }
        }
        id::PIECE => {
            if len < 9 {
                Err(WireError::BadLength {
                    id,
                    len,
                    expected: 9,
                })
            } else if len - 9 > limits.max_block {
                Err(WireError::PieceTooLong {
                    len: len - 9,
                    max: limits.max_block,
                })
            } else {
                Ok(PIECE_HEADER_LEN)
            }
        }
        id::EXTENDED => {
            if len < 2 {
                Err(WireError::BadLength {
                    id,
                    len,
                    expected: 2,
                })
            } else if len - 2 > MAX_EXTENDED_LEN {
                Err(WireError::ExtendedTooLong {
                    len: len - 2,
                    max: MAX_EXTENDED_LEN,
                })
            } else {
                Ok(4 + len as usize)
            }
        }
        _ => Err(WireError::Unknown { id, len }),
    }
}

/// Decodes one message from the start of `buf`.
pub fn decode<'a>(buf: &'a [u8], limits: &Limits) -> Result<Decoded<Message<'a>>, WireError> {
    if buf.len() < 4 {
        return Ok(Decoded::Incomplete);
    }
    let len = be32(buf, 0);
    let id = if len == 0 { None } else { buf.get(4).copied() };
    let need = frame_need(len, id, limits)?;
    if buf.len() < need {
        return Ok(Decoded::Incomplete);
    }
    if len == 0 {
        return Ok(Decoded::Message(Message::KeepAlive, 4));
    }
    let body = &buf[5..need];
    let triple = || (be32(body, 0), be32(body, 4), be32(body, 8));
    let msg = match buf[4] {
        id::CHOKE => Message::Choke,
        id::UNCHOKE => Message::Unchoke,
        id::INTERESTED => Message::Interested,
        id::NOT_INTERESTED => Message::NotInterested,
        id::HAVE => Message::Have(be32(body, 0)),
        id::BITFIELD => {
            let spare = (body.len() as u32 * 8).saturating_sub(limits.pieces);
            let last = body.last().copied().unwrap_or(0);
            let mask = ((1u16 << spare) - 1) as u8;
            if spare > 0 && last & mask != 0 {
                return Err(WireError::BitfieldSpareBits {
                    pieces: limits.pieces,
                });
            }
            Message::Bitfield(body)
        }
        id::REQUEST => {
            let (index, begin, len) = triple();
            Message::Request { index, begin, len }
        }
        id::PIECE => Message::Piece {
            index: be32(body, 0),
            begin: be32(body, 4),
            len: len - 9,
        },
        id::CANCEL => {
            let (index, begin, len) = triple();
            Message::Cancel { index, begin, len }
        }
        id::PORT => Message::Port(u16::from_be_bytes([body[0], body[1]])),
        id::SUGGEST => Message::Suggest(be32(body, 0)),
        id::HAVE_ALL => Message::HaveAll,
        id::HAVE_NONE => Message::HaveNone,
        id::REJECT => {
            let (index, begin, len) = triple();
            Message::Reject { index, begin, len }
        }
        id::ALLOWED_FAST => Message::AllowedFast(be32(body, 0)),
        id::EXTENDED => Message::Extended {
            ext_id: body[0],
            payload: &body[1..],
        },
        id => return Err(WireError::Unknown { id, len }),
    };
    Ok(Decoded::Message(msg, need))
}

/// Decodes one message from two slices that together are the input in order (a ring
/// buffer's halves). A message wholly in one slice is borrowed from it; one that straddles
/// the seam is copied into `scratch` (bounded: at most [`MAX_EXTENDED_LEN`] plus framing,
/// and only for bitfield and extension messages is it more than 17 bytes).
pub fn decode_split<'a>(
    a: &'a [u8],
    b: &'a [u8],
    scratch: &'a mut Vec<u8>,
    limits: &Limits,
) -> Result<Decoded<Message<'a>>, WireError> {
    if a.is_empty() {
        return decode(b, limits);
    }
    let mut head = [0u8; 5];
    let avail = a.len() + b.len();
    for (i, byte) in a.iter().chain(b.iter()).take(5).enumerate() {
        head[i] = *byte;
    }
    if avail < 4 {
        return Ok(Decoded::Incomplete);
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let id = (avail >= 5 && len > 0).then_some(head[4]);
    let need = frame_need(len, id, limits)?;
    if a.len() >= need {
        return decode(a, limits);
    }
    if avail < need {
        return Ok(Decoded::Incomplete);
    }
    scratch.clear();
    scratch.extend_from_slice(a);
    scratch.extend_from_slice(&b[..need - a.len()]);
    decode(scratch, limits)
}

/// The 68-byte handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Our handshake, advertising the fast extension and the extension protocol.
    pub fn ours(info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        let mut reserved = [0u8; 8];
        reserved[RESERVED_FAST.0] |= RESERVED_FAST.1;
        reserved[RESERVED_EXTENDED.0] |= RESERVED_EXTENDED.1;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    pub fn supports_fast(&self) -> bool {
        self.reserved[RESERVED_FAST.0] & RESERVED_FAST.1 != 0
    }

    pub fn supports_extended(&self) -> bool {
        self.reserved[RESERVED_EXTENDED.0] & RESERVED_EXTENDED.1 != 0
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(PROTOCOL);
        out.extend_from_slice(&self.reserved);
        out.extend_from_slice(&self.info_hash);
        out.extend_from_slice(&self.peer_id);
    }

    /// Decodes a handshake from the start of `buf`; a wrong protocol prefix is an error
    /// as soon as its first differing byte is present.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Handshake>, WireError> {
        let n = buf.len().min(PROTOCOL.len());
        if buf[..n] != PROTOCOL[..n] {
            return Err(WireError::BadProtocol);
        }
        if buf.len() < HANDSHAKE_LEN {
            return Ok(Decoded::Incomplete);
        }
        let mut h = Handshake {
            reserved: [0; 8],
            info_hash: [0; 20],
            peer_id: [0; 20],
        };
        h.reserved.copy_from_slice(&buf[20..28]);
        h.info_hash.copy_from_slice(&buf[28..48]);
        h.peer_id.copy_from_slice(&buf[48..68]);
        Ok(Decoded::Message(h, HANDSHAKE_LEN))
    }
}

/// The fields of a BEP 10 extension handshake corvid uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// Extension name to the id the sender wants to receive it under.
    pub m: Vec<(String, u8)>,
    /// Client name and version, e.g. `corvid 0.1.0`.
    pub v: Option<String>,
    /// The sender's listen port.
    pub p: Option<u16>,
    /// How many outstanding requests the sender will queue.
    pub reqq: Option<u32>,
    /// corvid's own key `corvid_max_request`: the largest request the sender serves to
    /// corvid peers, so a peer asking for bigger blocks never asks too much. Other clients
    /// ignore it (BEP 10: unknown keys are ignored).
    pub corvid_max_request: Option<u32>,
    /// corvid private swarms: the version of the peer handshake the sender speaks
    /// (`corvid_auth_v`, 2 today; see `peer::auth`).
    pub corvid_auth_v: Option<u32>,
    /// corvid private swarms: the sender's fresh nonce (16 bytes, `corvid_challenge`).
    pub corvid_challenge: Option<[u8; 16]>,
    /// corvid private swarms: the sender's proof of the secret over this connection's
    /// transcript (`corvid_proof`, see `peer::auth`).
    pub corvid_proof: Option<[u8; 20]>,
    /// Decoded only, never sent: the message carried the keys of the first private-swarm
    /// handshake (`corvid_nonce` / `corvid_auth`), so an old corvid is refused by name.
    pub corvid_v1: bool,
    /// corvid's seeding plan (see `swarm`'s module docs): 1 = the sender follows a seeder's
    /// plan (requests from it only pieces it suggested, until it sends 1 itself); 2 = the
    /// sender is a seeder that plans: it will suggest to the receiver which pieces to take.
    pub corvid_plan: Option<u32>,
}

impl ExtendedHandshake {
    /// Appends the complete extended message (framing, id 20, ext id 0, dictionary).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut m = OwnedValue::dict();
        for (name, id) in &self.m {
            m.insert(name, OwnedValue::Int(i64::from(*id)));
        }
        let mut d = OwnedValue::dict();
        d.insert("m", m);
        if let Some(v) = &self.v {
            d.insert("v", OwnedValue::bytes(v));
        }
        if let Some(p) = self.p {
            d.insert("p", OwnedValue::Int(i64::from(p)));
        }
        if let Some(q) = self.reqq {
            d.insert("reqq", OwnedValue::Int(i64::from(q)));
        }
        if let Some(r) = self.corvid_max_request {
            d.insert("corvid_max_request", OwnedValue::Int(i64::from(r)));
        }
        if let Some(v) = self.corvid_auth_v {
            d.insert("corvid_auth_v", OwnedValue::Int(i64::from(v)));
        }
        if let Some(n) = &self.corvid_challenge {
            d.insert("corvid_challenge", OwnedValue::bytes(n));
        }
        if let Some(a) = &self.corvid_proof {
            d.insert("corvid_proof", OwnedValue::bytes(a));
        }
        if let Some(p) = self.corvid_plan {
            d.insert("corvid_plan", OwnedValue::Int(i64::from(p)));
        }
        let start = out.len();
        put_u32(out, 0);
        out.push(id::EXTENDED);
        out.push(0);
        d.encode_into(out);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Parses the payload of an extended message with ext id 0. Unknown keys are ignored,
    /// as BEP 10 asks; known keys of the wrong type or range are ignored too, since a
    /// strange `p` should not cost a working connection.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let value =
            bencode::decode(payload).map_err(|e| WireError::BadExtendedHandshake(e.to_string()))?;
        let dict = value
            .as_dict()
            .ok_or_else(|| WireError::BadExtendedHandshake("not a dictionary".into()))?;
        let mut h = ExtendedHandshake::default();
        if let Some(m) = dict.get(b"m").and_then(|v| v.as_dict()) {
            for (k, v) in m.iter() {
                if let (Ok(name), Some(id)) = (std::str::from_utf8(k), v.as_int()) {
                    if let Ok(id) = u8::try_from(id) {
                        h.m.push((name.to_owned(), id));
                    }
                }
            }
        }
        h.v = dict.get(b"v").and_then(|v| v.as_str()).map(str::to_owned);
        h.p = dict
            .get(b"p")
            .and_then(|v| v.as_int())
            .and_then(|p| u16::try_from(p).ok());
        h.reqq = dict
            .get(b"reqq")
            .and_then(|v| v.as_int())
            .and_then(|q| u32::try_from(q).ok());
        h.corvid_max_request = dict
            .get(b"corvid_max_request")
            .and_then(|v| v.as_int())
            .and_then(|r| u32::try_from(r).ok());
        h.corvid_auth_v = dict
            .get(b"corvid_auth_v")
            .and_then(|v| v.as_int())
            .and_then(|r| u32::try_from(r).ok());
        h.corvid_challenge = dict
            .get(b"corvid_challenge")
            .and_then(|v| v.as_bytes())
            .and_then(|b| b.try_into().ok());
        h.corvid_proof = dict
            .get(b"corvid_proof")
            .and_then(|v| v.as_bytes())
            .and_then(|b| b.try_into().ok());
        h.corvid_v1 = dict.get(b"corvid_nonce").is_some() || dict.get(b"corvid_auth").is_some();
        h.corvid_plan = dict
            .get(b"corvid_plan")
            .and_then(|v| v.as_int())
            .and_then(|p| u32::try_from(p).ok());
        Ok(h)
    }
}

/// A set of pieces, in the wire's bit order (piece 0 is the high bit of byte 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    count: u32,
}

impl Bitfield {
    pub fn new(len: u32) -> Self {
        Bitfield {
            bytes: vec![0; (len as usize).div_ceil(8)],
            len,
            count: 0,
        }
    }

    /// From a bitfield message body already checked by [`decode`].
    pub fn from_bytes(bytes: &[u8], len: u32) -> Self {
        let mut b = Bitfield::new(len);
        let n = b.bytes.len().min(bytes.len());
        b.bytes[..n].copy_from_slice(&bytes[..n]);
        if let Some(last) = b.bytes.last_mut() {
            let spare = (n as u32 * 8).saturating_sub(len);
            *last &= !(((1u16 << spare) - 1) as u8);
        }
        b.count = b.bytes.iter().map(|x| x.count_ones()).sum();
        b
    }

    pub fn full(len: u32) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Sets bit `i`; returns whether it was newly set.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        self.count += 1;
        true
    }

    /// Clears bit `i`; returns whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        self.count -= 1;
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Indices of set bits.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        pieces: 13,
        max_block: 16384,
    };

    fn all_messages() -> Vec<Message<'static>> {
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(&[0b1010_0000, 0b1111_1000]),
            Message::Request {
                index: 1,
                begin: 16384,
                len: 16384,
            },
            Message::Cancel {
                index: 2,
                begin: 0,
                len: 100,
            },
            Message::Port(6881),
            Message::Suggest(3),
            Message::HaveAll,
            Message::HaveNone,
            Message::Reject {
                index: 12,
                begin: 32768,
                len: 16384,
            },
            Message::AllowedFast(9),
            Message::Extended {
                ext_id: 3,
                payload: b"d1:xi1ee",
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            let mut out = Vec::new();
            m.encode(&mut out);
            assert_eq!(
                decode(&out, &LIM).unwrap(),
                Decoded::Message(m, out.len()),
                "{m:?}"
            );
            // Any strict prefix is incomplete, never an error or a wrong message.
            for cut in 0..out.len() {
                assert_eq!(decode(&out[..cut], &LIM).unwrap(), Decoded::Incomplete);
            }
        }
    }

    #[test]
    fn piece_yields_only_its_header() {
        let mut out = Vec::new();
        Message::Piece {
            index: 4,
            begin: 16384,
            len: 5,
        }
        .encode(&mut out);
        assert_eq!(out.len(), PIECE_HEADER_LEN);
        out.extend_from_slice(b"hello");
        assert_eq!(
            decode(&out, &LIM).unwrap(),
            Decoded::Message(
                Message::Piece {
                    index: 4,
                    begin: 16384,
                    len: 5
                },
                13
            )
        );
        assert_eq!(out[..13], piece_header(4, 16384, 5));
    }

    /// A captured stream of every message decodes identically however it is cut into two
    /// slices, at every byte position.
    #[test]
    fn stream_split_at_every_offset() {
        let msgs = all_messages();
        let mut stream = Vec::new();
        for m in &msgs {
            m.encode(&mut stream);
        }
        let total = stream.len();
        for cut in 0..=total {
            let (a0, b0) = stream.split_at(cut);
            let mut pos = 0;
            let mut got = Vec::new();
            while pos < total {
                // The two halves still unread, as a ring buffer would present them.
                let (a, b) = if pos < cut {
                    (&a0[pos..], b0)
                } else {
                    (&b0[pos - cut..], &[][..])
                };
                let mut scratch = Vec::new();
                match decode_split(a, b, &mut scratch, &LIM).unwrap() {
                    Decoded::Message(m, used) => {
                        got.push(format!("{m:?}"));
                        pos += used;
                    }
                    Decoded::Incomplete => panic!("incomplete at {pos} with cut {cut}"),
                }
            }
            let want: Vec<_> = msgs.iter().map(|m| format!("{m:?}")).collect();
            assert_eq!(got, want, "cut at {cut}");
        }
        // And fed one byte at a time through a growing buffer.
        let mut pos = 0;
        let mut n = 0;
        for end in 0..=total {
            while let Decoded::Message(_, used) = decode(&stream[pos..end], &LIM).unwrap() {
                pos += used;
                n += 1;
            }
        }
        assert_eq!((pos, n), (total, msgs.len()));
    }

    #[test]
    fn hostile_lengths_are_named_errors() {
        let frame = |len: u32, id: u8| {
            let mut v = len.to_be_bytes().to_vec();
            v.push(id);
            v
        };
        assert_eq!(
            decode(&frame(2, id::CHOKE), &LIM),
            Err(WireError::BadLength {
                id: 0,
                len: 2,
                expected: 1
            })
        );
        assert!(matches!(
            decode(&frame(14, id::REQUEST), &LIM),
            Err(WireError::BadLength { id: 6, .. })
        ));
        assert_eq!(
            decode(&frame(4, id::BITFIELD), &LIM),
            Err(WireError::BitfieldLength {
                len: 3,
                expected: 2
            })
        );
        assert_eq!(
            decode(&frame(u32::MAX, id::BITFIELD), &LIM),
            Err(WireError::BitfieldLength {
                len: u32::MAX - 1,
                expected: 2
            })
        );
        assert_eq!(
            decode(&frame(9 + 16385, id::PIECE), &LIM),
            Err(WireError::PieceTooLong {
                len: 16385,
                max: 16384
            })
        );
        assert!(matches!(
            decode(&frame(8, id::PIECE), &LIM),
            Err(WireError::BadLength { id: 7, .. })
        ));
        assert_eq!(
            decode(&frame(u32::MAX, id::EXTENDED), &LIM),
            Err(WireError::ExtendedTooLong {
                len: u32::MAX - 2,
                max: MAX_EXTENDED_LEN
            })
        );
        assert_eq!(
            decode(&frame(1, 99), &LIM),
            Err(WireError::Unknown { id: 99, len: 1 })
        );
        // Errors are found from the header alone, before the body arrives.
        let mut scratch = Vec::new();
        assert!(decode_split(
            &frame(u32::MAX, 20)[..2],
            &frame(u32::MAX, 20)[2..],
            &mut scratch,
            &LIM
        )
        .is_err());
        // 13 pieces: the last byte may use its top 5 bits only.
        let mut bf = frame(3, id::BITFIELD);
        bf.extend_from_slice(&[0xff, 0b1111_1100]);
        assert_eq!(
            decode(&bf, &LIM),
            Err(WireError::BitfieldSpareBits { pieces: 13 })
        );
        bf[6] = 0b1111_1000;
        assert!(decode(&bf, &LIM).is_ok());
    }

    #[test]
    fn handshake_round_trip_and_bad_prefix() {
        let h = Handshake::ours([1; 20], [2; 20]);
        assert!(h.supports_fast() && h.supports_extended());
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), HANDSHAKE_LEN);
        for cut in 0..HANDSHAKE_LEN {
            assert_eq!(Handshake::decode(&out[..cut]).unwrap(), Decoded::Incomplete);
        }
        assert_eq!(
            Handshake::decode(&out).unwrap(),
            Decoded::Message(h, HANDSHAKE_LEN)
        );
        let plain = Handshake {
            reserved: [0; 8],
            ..h
        };
        assert!(!plain.supports_fast() && !plain.supports_extended());
        out[3] = b'X';
        assert_eq!(Handshake::decode(&out[..4]), Err(WireError::BadProtocol));
        assert_eq!(Handshake::decode(b"GET /"), Err(WireError::BadProtocol));
    }

    #[test]
    fn extended_handshake_round_trip() {
        let h = ExtendedHandshake {
            m: vec![("ut_metadata".into(), 3)],
            v: Some("corvid 0.1.0".into()),
            p: Some(6881),
            reqq: Some(4096),
            corvid_max_request: Some(128 * 1024),
            corvid_auth_v: Some(2),
            corvid_challenge: Some([7; 16]),
            corvid_proof: Some([9; 20]),
            corvid_v1: false,
            corvid_plan: Some(2),
        };
        let mut out = Vec::new();
        h.encode(&mut out);
        let lim = LIM;
        match decode(&out, &lim).unwrap() {
            Decoded::Message(Message::Extended { ext_id: 0, payload }, n) => {
                assert_eq!(n, out.len());
                assert_eq!(ExtendedHandshake::decode(payload).unwrap(), h);
            }
            other => panic!("{other:?}"),
        }
        assert!(ExtendedHandshake::decode(b"i3e").is_err());
        assert!(ExtendedHandshake::decode(b"d1:m").is_err());
        // Wrong-typed known keys are ignored rather than fatal.
        let h = ExtendedHandshake::decode(b"d1:pi99999999e4:reqq3:abce").unwrap();
        assert_eq!((h.p, h.reqq), (None, None));
        let h = ExtendedHandshake::decode(b"d18:corvid_max_requesti-1ee").unwrap();
        assert_eq!(h.corvid_max_request, None);
        // A nonce or proof of the wrong length is no nonce or proof.
        let h = ExtendedHandshake::decode(b"d16:corvid_challenge1:x12:corvid_proof3:abce").unwrap();
        assert_eq!((h.corvid_proof, h.corvid_challenge), (None, None));
        // The first handshake's keys are recognised, whatever their value, so an old
        // corvid is refused by name.
        let h = ExtendedHandshake::decode(b"d12:corvid_nonce1:xe").unwrap();
        assert!(h.corvid_v1 && h.corvid_auth_v.is_none());
        let h = ExtendedHandshake::decode(b"d11:corvid_auth20:aaaaaaaaaaaaaaaaaaaae").unwrap();
        assert!(h.corvid_v1);
    }

    #[test]
    fn bitfield_ops() {
        let mut b = Bitfield::new(13);
        assert!(b.set(0) && b.set(12) && !b.set(12) && !b.set(13));
        assert_eq!(b.as_bytes(), &[0x80, 0x08]);
        assert_eq!(b.count(), 2);
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 12]);
        let c = Bitfield::from_bytes(b.as_bytes(), 13);
        assert_eq!(c, b);
        assert!(Bitfield::full(13).is_full());
    }
}
