//! One peer connection's protocol state machine.
//!
//! Contract: no sockets, no files, no clock, no randomness, and no `unsafe` (the crate-wide
//! `forbid` is not available per module; this module simply has none). The runtime feeds
//! inputs through `handle_*` (bytes from the socket, payload landed, timer tick, close) and
//! drains outputs through `poll_transmit` (bytes to send, blocks to send from storage) and
//! `poll_event` (payload to receive into storage, piece ready to hash, close). `now` is
//! always passed in, so every rule here is testable under a simulated clock.
//!
//! Zero-copy both ways: when a `piece` header arrives, [`PeerConn::handle_bytes`] stops and
//! [`Event::ReceivePayload`] tells the runtime to put exactly `block.len` payload bytes into
//! storage (or to drop them, for a duplicate), then call [`PeerConn::handle_payload_done`];
//! to upload, [`PeerConn::poll_transmit`] returns [`Transmit::Block`] with the 13-byte header
//! and the block to send straight from the mapping. Nothing on the block path allocates:
//! the request map and queues reach their working size once.
//!
//! Request size: the swarm accounts in 16 KiB blocks (picker, end-game, ownership,
//! strikes), but per-message cost is per request, so to a corvid peer (extension handshake
//! `v` starting with "corvid") we coalesce picked blocks that follow each other in a piece
//! into one request of up to [`PeerConfig::request_size_corvid`] (128 KiB, never more than
//! the remote's advertised `corvid_max_request`). Stock clients, end-game duplicates and a
//! snubbed peer's single block stay at 16 KiB. An outstanding request covers one or more
//! swarm blocks (a live-block mask, so end-game can give back single blocks of it); its
//! `piece` message begins every covered block at once and is received as the fewest runs
//! of blocks with the same verdict, one [`Event::ReceivePayload`] each, in order: a single
//! run (one receive straight into the mapping) unless an end-game race took some blocks.
//! Outstanding requests are a hash map keyed by the wire triple, so a `piece` header costs
//! one lookup however deep the pipeline.
//!
//! Pipelining: BitTorrent has no flow control besides how many requests are outstanding, so
//! the bytes in flight per peer must cover rate x RTT. The target is `rate x pipeline_time`
//! measured per peer (250 ms by default, far above any datacenter RTT), clamped to
//! `[min_inflight, max_inflight]`, starting at `initial_inflight` (1 MiB: 10GbE at
//! 0.8 ms RTT from one peer) before any rate is known. It is further capped by the
//! remote's advertised `reqq` (250 requests if it says nothing, what stock clients
//! queue). Deeper is not better in a fleet: requests queued at one relay wait behind
//! every other requester's, and a piece requested there cannot be fetched from an idle
//! relay meanwhile. Measured on the 100 Mbit/s namespace fleet (N=16, 64 MiB, with the
//! seeding plan): with 8 MiB initial / 1 s the busiest relay uploaded 1.66 copies while
//! others sent 0.72 and the deploy took 1.83 x S/C; with 1 MiB / 250 ms / 256 KiB
//! minimum the busiest sent 1.19 and it took 1.53 x.
//!
//! Haves and end-game cancels are not pushed into connections: each connection follows the
//! swarm's append-only [`Swarm::have_log`] and [`Swarm::cancel_log`] with its own cursor in
//! `poll_transmit`. After [`Swarm::handle_verdict`] the runtime just polls every connection.
//!
//! Private swarms ([`PeerConfig::secret`]): the handshake of [`auth`] (version 2) runs
//! in BEP 10 extension handshakes. Each side's first one carries its fresh nonce
//! (`corvid_challenge`, given to [`PeerConn::new`] by the caller); the side that dialled
//! ([`Role::Initiator`]) then proves the secret over the whole connection's transcript,
//! and the responder checks that before proving in turn. A private responder also holds
//! back its BitTorrent handshake until the initiator's named the right torrent. Until the
//! remote's proof checks out we send nothing but those handshakes (our bitfield goes out
//! as the first message after it) and accept nothing but keep-alives and extension
//! handshakes; a wrong, early or missing proof, an old corvid's handshake, or no proof
//! within the handshake timeout closes with [`CloseReason::NotAuthorized`].
//!
//! How a runtime drives one connection (every call with the swarm locked, briefly):
//! 1. `PeerConn::new` on connect/accept (refused if the address is banned), then
//!    `poll_transmit` to get our handshake out.
//! 2. Bytes received: `handle_bytes(buf)`, drop the consumed prefix, then drain
//!    `poll_event`. On `ReceivePayload { block, discard }`, move `block.len` bytes (those
//!    already buffered first, the rest received straight into the mapping, or into a
//!    scratch buffer if `discard`), call `handle_payload_done`, then drain `poll_event`
//!    again: a big `piece` message may announce its next run; otherwise go on with
//!    `handle_bytes` on whatever follows. On `PieceComplete`, send the piece to the hasher
//!    and later call `Swarm::handle_verdict`, then poll all connections.
//! 3. Whenever the socket can take more: `poll_transmit(out)` until it returns `None`;
//!    send `out`, then each `Transmit::Block` header and block from the mapping.
//! 4. Every ~100 ms-1 s: `handle_tick`, then `poll_event` and `poll_transmit`.
//! 5. On `Event::Close`, an `Err` from `handle_bytes`, or a socket error/EOF:
//!    `handle_close` (idempotent), then drop the connection.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::geometry::{BlockRef, Lengths, PieceIndex, BLOCK_SIZE};
use crate::swarm::{Accept, Banned, PeerKey, Swarm};
use crate::wire::{self, Bitfield, Decoded, ExtendedHandshake, Handshake, Limits, Message};

pub mod auth;
mod requests;
use auth::{AuthFields, PeerAuth, Role, Secret, NONCE_LEN, PEER_AUTH_VERSION};
use requests::TheirRequests;

/// How far into a remote's request queue a seeder looks for the least-spread piece.
pub const SEEDER_LOOKAHEAD: usize = 64;

/// Control bytes (rejects, haves, requests) a connection may have waiting for
/// `poll_transmit`; a remote that floods requests without reading our replies is cut off
/// here rather than growing our memory.
pub const MAX_QUEUED: usize = 1 << 20;

/// The largest request every corvid peer serves to another corvid peer unless its
/// extension handshake says otherwise (`corvid_max_request`): older corvid versions serve
/// exactly this, so it is safe to ask for it without the advertisement.
pub const CORVID_MAX_REQUEST: u32 = 128 * 1024;

/// Largest message a private-swarm remote may send before it proved the secret: our
/// extension handshakes are a few hundred bytes, and a stranger must not make us buffer
/// (and re-parse under the swarm lock) a 1 MiB one.
pub const MAX_UNAUTHENTICATED_MESSAGE: u32 = 4096;

/// Buffers of one connection (its send queue, the scratch copy of a message that straddled
/// a ring's seam) that grew past this for one big message are given back afterwards, so
/// 512 connections do not each keep their largest message's worth.
pub const KEEP_BUFFER: usize = 64 * 1024;

/// Most swarm blocks one request of ours may cover (a `u64` mask per request): 1 MiB.
pub const MAX_REQUEST_BLOCKS: u32 = 64;

/// Per-connection tuning.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub handshake_timeout: Duration,
    /// Close a connection that has sent nothing, not even a keep-alive, for this long.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without sending anything (BEP 3: 2 minutes).
    pub keepalive_interval: Duration,
    /// With requests outstanding and no block for this long, the peer is snubbed: its
    /// requests go back to the picker and it gets one block at a time until it delivers.
    pub request_timeout: Duration,
    /// A snubbed remote (its requests timed out, see `request_timeout`) that has sent
    /// nothing at all, not even a keep-alive, for this long while we still wait on it is
    /// gone (its process stopped, its link cut): the connection is closed
    /// ([`CloseReason::Stalled`]) so its slot can go to a live peer, rather than held until
    /// the idle timeout. A slow remote still sends bytes and is never closed by this.
    pub stalled_close_timeout: Duration,
    /// An unchoked remote that neither asks for nor takes a block for this long is not
    /// using its upload slot (e.g. it stopped reading its socket): it is choked, freeing
    /// the slot for peers that read (otherwise enough such connections hold every slot
    /// until the idle timeout).
    pub upload_stall_timeout: Duration,
    /// How long such a remote stays choked before it may have a slot again.
    pub stall_penalty: Duration,
    pub initial_inflight: u64,
    pub min_inflight: u64,
    pub max_inflight: u64,
    pub pipeline_time: Duration,
    /// Requests we queue for a remote that advertises no `reqq`.
    pub default_remote_reqq: u32,
    /// Requests we accept queued from one remote (advertised as our `reqq`).
    pub our_reqq: u32,
    /// Largest request served to stock clients: 16 KiB, what all of them send.
    pub max_request: u32,
    /// Largest request served to corvid peers (extension handshake `v` starts with
    /// "corvid"), which may ask for bigger blocks to cut per-message overhead.
    pub max_request_corvid: u32,
    /// Size of the requests we send to corvid peers (capped by what the remote says it
    /// serves, rounded down to whole 16 KiB blocks, at most [`MAX_REQUEST_BLOCKS`]). One
    /// `piece` message of 128 KiB costs the receiver one header parse and one receive into
    /// the mapping where 16 KiB blocks cost eight; the swarm still accounts in 16 KiB
    /// blocks, and stock clients and end-game duplicates still get 16 KiB requests.
    pub request_size_corvid: u32,
    /// Our extension handshake `v`.
    pub client: String,
    pub listen_port: Option<u16>,
    /// A private swarm's shared secret: the remote must prove it (see [`auth`]) before we
    /// send it our bitfield or serve it anything. `None`: a public swarm, stock clients
    /// welcome.
    pub secret: Option<Secret>,
    /// Take part in corvid's seeding plan (see [`crate::swarm`]'s module docs): as a
    /// seeder, hand each corvid peer the pieces to fetch from us; as a peer, follow a
    /// seeder's plan. Off: a stock seeder and a stock peer.
    pub seed_plan: bool,
}

/// A connection's part in the seeding plan, as the downloading side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// The remote does not plan: request anything it has.
    Free,
    /// The remote plans: request only what it suggested (`allowed`).
    Assigned,
    /// The remote has handed out everything once: request anything it has not refused.
    Open,
}

/// Least bytes of pieces a planning seeder keeps handed to one peer and not yet sent, so
/// the peer's requests never run dry between a piece going out and the next suggest.
pub const PLAN_DEPTH_BYTES: u64 = 1 << 20;

/// Pieces handed to one peer at a time: [`PLAN_DEPTH_BYTES`], at least 2, at most this.
pub const PLAN_DEPTH_MAX: usize = 64;

/// How long a follower refused a piece waits for one of its own connections to announce
/// it before asking the seeder again: long enough for the holder's `have` to arrive and
/// for connections still being set up to open (a second ask is always served, so asking
/// early costs the seeder a copy), short next to a deploy.
pub const PLAN_REASK_AFTER: Duration = Duration::from_millis(500);

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(120),
            request_timeout: Duration::from_secs(20),
            stalled_close_timeout: Duration::from_secs(40),
            upload_stall_timeout: Duration::from_secs(10),
            stall_penalty: Duration::from_secs(30),
            initial_inflight: 1 << 20,
            min_inflight: 256 << 10,
            max_inflight: 64 << 20,
            pipeline_time: Duration::from_millis(250),
            default_remote_reqq: 250,
            our_reqq: 4096,
            max_request: BLOCK_SIZE,
            max_request_corvid: CORVID_MAX_REQUEST,
            request_size_corvid: CORVID_MAX_REQUEST,
            client: concat!("corvid ", env!("CARGO_PKG_VERSION")).to_owned(),
            listen_port: None,
            secret: None,
            seed_plan: true,
        }
    }
}

/// Why a connection ends. Each names what the remote did wrong, or which rule ended it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("malformed message: {0}")]
    Wire(#[from] wire::WireError),
    #[error("handshake for info-hash {} which is not this torrent", hex(.0))]
    WrongInfoHash([u8; 20]),
    #[error("no handshake within the timeout")]
    HandshakeTimeout,
    #[error("nothing received for longer than the idle timeout")]
    Idle,
    #[error("stalled: requests timed out and nothing received since")]
    Stalled,
    #[error("peer address is banned for sending pieces that failed their hash")]
    Banned,
    #[error("{0} after the first message")]
    BitfieldNotFirst(&'static str),
    #[error("have for piece {0}, past the end of the torrent")]
    HaveOutOfRange(u32),
    #[error(
        "request for piece {index} offset {begin} length {len} is outside the torrent or too long"
    )]
    RequestOutsideTorrent { index: u32, begin: u32, len: u32 },
    #[error("request for piece {0} which we do not have")]
    RequestForMissingPiece(u32),
    #[error("piece {index} offset {begin} length {len} was never requested")]
    UnrequestedPiece { index: u32, begin: u32, len: u32 },
    #[error("{0} sent without the fast extension negotiated")]
    FastNotNegotiated(&'static str),
    #[error("extension message sent without the extension protocol negotiated")]
    ExtendedNotNegotiated,
    #[error("both sides have the whole torrent")]
    BothComplete,
    #[error("connected to ourselves (the remote sent our own peer id)")]
    SelfConnection,
    #[error("more than {0} bytes of replies queued: the remote sends faster than it reads")]
    SendQueueOverflow(usize),
    #[error("private swarm: {0}")]
    NotAuthorized(&'static str),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The remote's handshake checked out (in a private swarm: and its proof of the
    /// secret); `peer_id` is who it is from now on.
    HandshakeDone {
        peer_id: [u8; 20],
        fast: bool,
        extended: bool,
    },
    /// The next `block.len` bytes on the socket are a block's payload: put them into
    /// storage at `block` (or read and drop them if `discard`), then call
    /// [`PeerConn::handle_payload_done`]. `handle_bytes` consumes nothing until then.
    ReceivePayload { block: BlockRef, discard: bool },
    /// Every block of the piece is in storage: hash it and report with
    /// [`Swarm::handle_verdict`].
    PieceComplete(PieceIndex),
    /// The connection is over; call [`PeerConn::handle_close`] and drop it.
    Close(CloseReason),
}

/// Data to send that is not a small control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// Send `header`, then `block.len` bytes of the block straight from storage.
    Block {
        header: [u8; wire::PIECE_HEADER_LEN],
        block: BlockRef,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Open,
    Payload(Incoming),
    Closed,
}

/// A `piece` message whose payload is being received, one run of blocks at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incoming {
    piece: PieceIndex,
    begin: u32,
    len: u32,
    /// Covered blocks this connection writes into storage (bit i: the block at
    /// `begin + i * BLOCK_SIZE`, accepted by [`Swarm::begin_block`]); the rest is dropped.
    write: u64,
    /// Payload bytes already moved (runs before the current one).
    done: u32,
    /// Length of the current run: maximal blocks from `done` with the same verdict, one
    /// [`Event::ReceivePayload`].
    run: u32,
}

impl Incoming {
    fn run_block(&self) -> BlockRef {
        BlockRef {
            piece: self.piece,
            offset: self.begin + self.done,
            len: self.run,
        }
    }

    fn run_writes(&self) -> bool {
        (self.write >> (self.done / BLOCK_SIZE)) & 1 == 1
    }
}

/// A request on the wire: (piece, begin, length). It covers one or more swarm blocks.
type ReqKey = (PieceIndex, u32, u32);

/// One request we sent (or several identical ones, see `copies`).
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// Covered blocks still ours in the swarm (bit i: the block at `begin + i *
    /// BLOCK_SIZE`). The others were cancelled (end-game, snub) and already given back;
    /// their payload, if it still comes, is dropped.
    live: u64,
    /// Copies of this exact request sent and not answered yet: a cancelled request may be
    /// asked again before the remote answered (or ignored) the cancel.
    copies: u16,
    sent: Instant,
}

/// Hashes our own request keys. Only requests we chose are ever inserted (remote input
/// only looks up), so a cheap multiplicative hash cannot be pushed into long probe chains.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(n)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Requests = HashMap<ReqKey, Outstanding, BuildHasherDefault<KeyHasher>>;

/// The `i`th swarm block a request covers.
fn covered_block(key: ReqKey, i: u32) -> BlockRef {
    let off = i * BLOCK_SIZE;
    BlockRef {
        piece: key.0,
        offset: key.1 + off,
        len: key.2.saturating_sub(off).min(BLOCK_SIZE),
    }
}

fn blocks_covered(key: ReqKey) -> u32 {
    key.2.div_ceil(BLOCK_SIZE)
}

fn full_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Bytes of the blocks of `key` set in `mask`.
#[cfg(test)]
fn mask_bytes(key: ReqKey, mask: u64) -> u64 {
    (0..blocks_covered(key))
        .filter(|i| (mask >> i) & 1 == 1)
        .map(|i| u64::from(covered_block(key, i).len))
        .sum()
}

/// The bit of `b` in request `key`, if the request covers it.
fn covering_bit(key: ReqKey, b: BlockRef) -> Option<u64> {
    (key.0 == b.piece && b.offset >= key.1 && b.offset < key.1 + key.2)
        .then(|| 1u64 << ((b.offset - key.1) / BLOCK_SIZE))
}

/// Gives back the blocks of `key` set in `mask`; returns their bytes.
fn release_mask(swarm: &mut Swarm, key: ReqKey, mask: u64) -> u64 {
    let mut bytes = 0;
    for i in 0..blocks_covered(key) {
        if (mask >> i) & 1 == 1 {
            let b = covered_block(key, i);
            swarm.release(b);
            bytes += u64::from(b.len);
        }
    }
    bytes
}

/// Byte counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub uploaded: u64,
    pub downloaded: u64,
    /// `request` messages sent (one may cover several 16 KiB blocks).
    pub requests: u64,
}

/// One connection; see the module docs.
#[derive(Debug)]
pub struct PeerConn {
    cfg: PeerConfig,
    key: PeerKey,
    addr: SocketAddr,
    lengths: Lengths,
    limits: Limits,
    state: State,
    /// Our handshake, until `poll_transmit` writes it.
    handshake_out: Option<Handshake>,
    our_peer_id: [u8; 20],
    remote_id: Option<[u8; 20]>,
    fast: bool,
    extended: bool,
    remote_client: Option<String>,
    remote_corvid: bool,
    remote_reqq: u32,
    /// Size of our requests to this remote: 16 KiB, or more for a corvid peer.
    request_size: u32,
    seen_first: bool,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    remote_has: Bitfield,
    /// Pieces the remote has that we do not.
    useful: u32,
    have_cursor: usize,
    cancel_cursor: usize,
    /// Our requests by their wire triple: a `piece` header finds its request in O(1).
    outstanding: Requests,
    inflight: u64,
    their_requests: TheirRequests,
    /// Control messages encoded while handling input, flushed by `poll_transmit`.
    queued: Vec<u8>,
    /// Holds a message that straddles the two input slices.
    scratch: Vec<u8>,
    picked: Vec<BlockRef>,
    events: VecDeque<Event>,
    snubbed: bool,
    /// The payload being received when `close` ran, for `handle_close` to give back.
    closed_mid_payload: Option<Incoming>,
    /// The swarm epoch, remote piece count, end-game flag and plan mask generation when
    /// the picker last came up short; picking again before one of them changes would find
    /// nothing.
    starved: Option<(u64, u32, bool, u32)>,
    created: Instant,
    last_recv: Instant,
    last_sent: Instant,
    last_block: Instant,
    /// When the remote last used its upload slot: was unchoked, asked for a block, or
    /// had one go out.
    last_upload: Instant,
    /// No upload slot for the remote before this (it stalled with a slot).
    unchoke_after: Option<Instant>,
    rate_window_start: Instant,
    rate_window_bytes: u64,
    rate: Option<f64>,
    stats: PeerStats,
    released: bool,
    /// Private swarms: our side of the peer handshake.
    auth: Option<PeerAuth>,
    /// Whether the remote proved the secret; always true in a public swarm. Until it is,
    /// we send nothing but handshakes and accept nothing but extension handshakes.
    authenticated: bool,
    /// Seeding plan, serving side: we were complete at the handshake and said we plan
    /// (`corvid_plan` 2), and the remote said it follows (`corvid_plan` >= 1).
    plan_offered: bool,
    remote_follows: bool,
    /// Pieces handed to this remote and not yet sent once.
    plan_pending: Vec<PieceIndex>,
    /// The swarm's plan epoch when it last had nothing to hand out.
    plan_exhausted: Option<u64>,
    /// We told the remote the plan is over (`corvid_plan` 1): it may ask for anything.
    plan_open: bool,
    /// Seeding plan, downloading side: see [`Follow`].
    follow: Follow,
    /// Pieces we may request from a planning remote.
    allowed: Bitfield,
    /// `remote_has` & `allowed`, rebuilt when either changes, for the picker.
    mask: Bitfield,
    mask_gen: u32,
    mask_built: Option<(u32, u32)>,
    /// Pieces a planning remote refused us, and when: asked again only if, after
    /// [`PLAN_REASK_AFTER`], no other connection of ours has them (the peers holding them
    /// may be out of our reach).
    refused: Vec<(PieceIndex, Instant)>,
    /// Serving side: pieces we refused this remote once; asked again, they are served.
    refused_remote: Bitfield,
}

impl PeerConn {
    /// A new connection to (`role` initiator: we dialled) or from `addr`; our handshake is
    /// the first thing `poll_transmit` writes (both sides send theirs at once, except a
    /// private responder, which answers the initiator's). Banned addresses are refused.
    /// `nonce` must be fresh random bytes per connection in a private swarm (it is what
    /// makes a proof useless elsewhere); a public swarm ignores it and the role.
    pub fn new(
        cfg: &PeerConfig,
        swarm: &mut Swarm,
        addr: SocketAddr,
        role: Role,
        our_peer_id: [u8; 20],
        nonce: [u8; NONCE_LEN],
        now: Instant,
    ) -> Result<Self, Banned> {
        let key = swarm.add_peer(addr.ip())?;
        let lengths = *swarm.lengths();
        let auth = cfg
            .secret
            .clone()
            .map(|s| PeerAuth::new(s, role, swarm.info_hash(), our_peer_id, nonce));
        // A private responder says nothing, not even which torrent or peer id it is, to a
        // remote that has not named the torrent first.
        let waits_for_theirs = auth.is_some() && role == Role::Responder;
        let ours = Handshake::ours(swarm.info_hash(), our_peer_id);
        Ok(PeerConn {
            cfg: cfg.clone(),
            key,
            addr,
            lengths,
            limits: Limits {
                pieces: lengths.piece_count(),
                max_block: BLOCK_SIZE,
            },
            state: State::Handshaking,
            handshake_out: (!waits_for_theirs).then_some(ours),
            our_peer_id,
            remote_id: None,
            fast: false,
            extended: false,
            remote_client: None,
            remote_corvid: false,
            remote_reqq: cfg.default_remote_reqq,
            request_size: BLOCK_SIZE,
            seen_first: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            remote_has: Bitfield::new(lengths.piece_count()),
            useful: 0,
            have_cursor: 0,
            cancel_cursor: swarm.cancel_log().len(),
            outstanding: Requests::default(),
            inflight: 0,
            their_requests: TheirRequests::default(),
            queued: Vec::new(),
            scratch: Vec::new(),
            picked: Vec::new(),
            events: VecDeque::new(),
            snubbed: false,
            closed_mid_payload: None,
            starved: None,
            created: now,
            last_recv: now,
            last_sent: now,
            last_block: now,
            last_upload: now,
            unchoke_after: None,
            rate_window_start: now,
            rate_window_bytes: 0,
            rate: None,
            stats: PeerStats::default(),
            released: false,
            auth,
            authenticated: cfg.secret.is_none(),
            plan_offered: false,
            remote_follows: false,
            plan_pending: Vec::new(),
            plan_exhausted: None,
            plan_open: false,
            follow: Follow::Free,
            allowed: Bitfield::new(lengths.piece_count()),
            mask: Bitfield::new(lengths.piece_count()),
            mask_gen: 0,
            mask_built: None,
            refused: Vec::new(),
            refused_remote: Bitfield::new(lengths.piece_count()),
        })
    }

    pub fn key(&self) -> PeerKey {
        self.key
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> PeerStats {
        self.stats
    }

    pub fn remote_peer_id(&self) -> Option<[u8; 20]> {
        self.remote_id
    }

    /// The remote's extension handshake `v`, if it sent one.
    pub fn remote_client(&self) -> Option<&str> {
        self.remote_client.as_deref()
    }

    pub fn remote_has(&self) -> &Bitfield {
        &self.remote_has
    }

    /// Whether blocks we asked for are still due (the runtime then expects piece headers).
    pub fn expects_blocks(&self) -> bool {
        self.inflight > 0
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether we are choking the remote / the remote is choking us.
    pub fn choke_state(&self) -> (bool, bool) {
        (self.am_choking, self.peer_choking)
    }

    /// Measured download rate from this peer, bytes per second.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    fn close(&mut self, reason: CloseReason) -> CloseReason {
        if self.state != State::Closed {
            // A payload being received when we close (a timer fired mid-block) still holds
            // its blocks in the swarm: `handle_close` gives them back.
            if let State::Payload(inc) = self.state {
                self.closed_mid_payload = Some(inc);
            }
            self.state = State::Closed;
            self.events.push_back(Event::Close(reason.clone()));
        }
        reason
    }

    fn queue(&mut self, m: Message<'_>) {
        m.encode(&mut self.queued);
    }

    /// Bytes from the socket. Returns how many were consumed; the rest must be offered
    /// again with more appended. Stops after a piece header (see [`Event::ReceivePayload`]).
    pub fn handle_bytes(
        &mut self,
        swarm: &mut Swarm,
        bytes: &[u8],
        now: Instant,
    ) -> Result<usize, CloseReason> {
        self.handle_bytes_split(swarm, bytes, &[], now)
    }

    /// [`PeerConn::handle_bytes`] for input held in two slices, `a` then `b` (a ring
    /// buffer's halves). A message straddling the seam is copied into a scratch buffer
    /// that the connection keeps (at most one message: 17 bytes for the common ones).
    pub fn handle_bytes_split(
        &mut self,
        swarm: &mut Swarm,
        a: &[u8],
        b: &[u8],
        now: Instant,
    ) -> Result<usize, CloseReason> {
        if swarm.is_banned(self.key) {
            return Err(self.close(CloseReason::Banned));
        }
        let mut pos = 0;
        if self.state == State::Handshaking {
            let mut hs = [0u8; wire::HANDSHAKE_LEN];
            let n = (a.len() + b.len()).min(wire::HANDSHAKE_LEN);
            for (dst, src) in hs.iter_mut().zip(a.iter().chain(b.iter())) {
                *dst = *src;
            }
            match Handshake::decode(&hs[..n]) {
                Err(e) => return Err(self.close(e.into())),
                Ok(Decoded::Incomplete) => return Ok(0),
                Ok(Decoded::Message(h, used)) => {
                    pos = used;
                    self.last_recv = now;
                    self.on_handshake(swarm, h)?;
                }
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = loop {
            if self.state != State::Open {
                break Ok(pos);
            }
            let (x, y) = if pos < a.len() {
                (&a[pos..], b)
            } else {
                (&b[(pos - a.len()).min(b.len())..], &[][..])
            };
            if !self.authenticated {
                let mut prefix = [0u8; 4];
                for (d, s) in prefix.iter_mut().zip(x.iter().chain(y.iter())) {
                    *d = *s;
                }
                if x.len() + y.len() >= 4
                    && u32::from_be_bytes(prefix) > MAX_UNAUTHENTICATED_MESSAGE
                {
                    break Err(self.close(CloseReason::NotAuthorized(
                        "message of more than 4 KiB before proving the secret",
                    )));
                }
            }
            match wire::decode_split(x, y, &mut scratch, &self.limits) {
                Err(e) => break Err(self.close(e.into())),
                Ok(Decoded::Incomplete) => break Ok(pos),
                Ok(Decoded::Message(m, n)) => {
                    pos += n;
                    self.last_recv = now;
                    if let Err(r) = self.on_message(swarm, m) {
                        break Err(self.close(r));
                    }
                    if self.queued.len() > MAX_QUEUED {
                        break Err(self.close(CloseReason::SendQueueOverflow(MAX_QUEUED)));
                    }
                }
            }
        };
        if scratch.capacity() > KEEP_BUFFER {
            scratch = Vec::new();
        }
        self.scratch = scratch;
        result
    }

    /// Whether `buffered` (the unconsumed input, in one slice) certainly holds no complete
    /// message yet, so the runtime can wait for more bytes without taking the swarm lock:
    /// a remote that trickles a big message a few bytes per segment would otherwise cost
    /// one locked call per segment. False whenever `handle_bytes` could act (a complete
    /// message or handshake, a piece header, or a prefix it will refuse).
    pub fn wants_more(&self, buffered: &[u8]) -> bool {
        match self.state {
            State::Handshaking => {
                let n = buffered.len().min(wire::PROTOCOL.len());
                buffered.len() < wire::HANDSHAKE_LEN && buffered[..n] == wire::PROTOCOL[..n]
            }
            State::Open => {
                let Some(prefix) = buffered.first_chunk::<4>() else {
                    return true;
                };
                let len = u32::from_be_bytes(*prefix);
                if !self.authenticated && len > MAX_UNAUTHENTICATED_MESSAGE {
                    return false;
                }
                let id = buffered.get(4).copied().filter(|_| len > 0);
                wire::frame_need(len, id, &self.limits).is_ok_and(|need| buffered.len() < need)
            }
            State::Payload(_) | State::Closed => false,
        }
    }

    fn on_handshake(&mut self, swarm: &mut Swarm, h: Handshake) -> Result<(), CloseReason> {
        if h.info_hash != swarm.info_hash() {
            return Err(self.close(CloseReason::WrongInfoHash(h.info_hash)));
        }
        if h.peer_id == self.our_peer_id {
            return Err(self.close(CloseReason::SelfConnection));
        }
        self.remote_id = Some(h.peer_id);
        self.fast = h.supports_fast();
        self.extended = h.supports_extended();
        self.state = State::Open;
        // Planning needs rejects (fast extension) and the extension handshake to say so.
        self.plan_offered = self.cfg.seed_plan && self.fast && self.extended && swarm.is_complete();
        if let Some(auth) = self.auth.as_mut() {
            // Private: only our challenge goes out; what we have waits for the proof.
            if !self.extended {
                return Err(self.close(CloseReason::NotAuthorized(
                    "remote does not speak the extension protocol, so cannot prove the secret",
                )));
            }
            auth.handle_remote_id(h.peer_id);
            let nonce = auth.our_nonce();
            if self.handshake_out.is_none() && auth.role() == Role::Responder {
                self.handshake_out = Some(Handshake::ours(swarm.info_hash(), self.our_peer_id));
            }
            let mut ext = self.our_ext_handshake();
            ext.corvid_challenge = Some(nonce);
            ext.encode(&mut self.queued);
        } else {
            self.send_have(swarm);
            if self.extended {
                self.our_ext_handshake().encode(&mut self.queued);
            }
        }
        if self.auth.is_none() {
            self.handshake_done();
        }
        Ok(())
    }

    /// Tells the runtime who the remote is: at its BitTorrent handshake in a public swarm,
    /// only once it proved the secret in a private one (so a stranger claiming a member's
    /// peer id cannot take that id's place in the node's table of connected peers).
    fn handshake_done(&mut self) {
        if let Some(peer_id) = self.remote_id {
            self.events.push_back(Event::HandshakeDone {
                peer_id,
                fast: self.fast,
                extended: self.extended,
            });
        }
    }

    /// Our view of what we have, as the first message after the handshakes: a snapshot
    /// plus every later verdict from the log.
    fn send_have(&mut self, swarm: &Swarm) {
        let have = swarm.have();
        if self.fast && have.count() == 0 {
            self.queue(Message::HaveNone);
        } else if self.fast && have.is_full() {
            self.queue(Message::HaveAll);
        } else if have.count() > 0 {
            Message::Bitfield(have.as_bytes()).encode(&mut self.queued);
        }
        self.have_cursor = swarm.have_log().len();
    }

    fn our_ext_handshake(&self) -> ExtendedHandshake {
        ExtendedHandshake {
            m: Vec::new(),
            v: Some(self.cfg.client.clone()),
            p: self.cfg.listen_port,
            reqq: Some(self.cfg.our_reqq),
            corvid_max_request: Some(self.cfg.max_request_corvid),
            corvid_auth_v: self.auth.as_ref().map(|_| PEER_AUTH_VERSION),
            corvid_challenge: None,
            corvid_proof: None,
            corvid_v1: false,
            corvid_plan: self
                .cfg
                .seed_plan
                .then_some(if self.plan_offered && !self.plan_open {
                    2
                } else {
                    1
                }),
        }
    }

    /// Whether we serve this remote by the seeding plan (see [`crate::swarm`]).
    fn planning(&self, swarm: &Swarm) -> bool {
        self.plan_offered && self.remote_follows && swarm.is_complete()
    }

    /// Seeding plan, serving side: forgets pieces sent once (or no longer this remote's),
    /// and hands the remote more until [`PLAN_DEPTH_BYTES`] are waiting for it. Once the
    /// swarm has nothing left to hand out and this remote's last piece went, the plan is
    /// over for it: it may ask for anything (the swarm still refuses extra copies past
    /// its budget).
    fn plan_top_up(&mut self, swarm: &mut Swarm) {
        if !self.planning(swarm) || !self.peer_interested {
            return;
        }
        if self.plan_open {
            // The remote may have been refused pieces whose other sources have since
            // left: suggest every piece without a source again (it may ask for those).
            if self.plan_exhausted != Some(swarm.plan_epoch()) {
                self.plan_exhausted = Some(swarm.plan_epoch());
                for p in self.lengths.pieces() {
                    if !self.remote_has.get(p.get()) && !swarm.has_source(p) {
                        self.queue(Message::Suggest(p.get()));
                    }
                }
            }
            return;
        }
        let key = self.key;
        let remote = &self.remote_has;
        self.plan_pending.retain(|&p| {
            !swarm.served_once(p) && !remote.get(p.get()) && swarm.holder(p) == Some(key)
        });
        // Enough to keep the remote's requests flowing, but a fair share at most, so a
        // small torrent is not handed all to the first peers that ask.
        let piece = self.lengths.piece_length().max(1);
        let share = (self.lengths.piece_count() as usize / (4 * swarm.live_peers().max(1))).max(1);
        let depth = (PLAN_DEPTH_BYTES.div_ceil(piece) as usize)
            .clamp(2, PLAN_DEPTH_MAX)
            .min(share);
        while self.plan_pending.len() < depth {
            if self.plan_exhausted == Some(swarm.plan_epoch()) {
                break;
            }
            match swarm.plan_next(key, &self.remote_has) {
                Some(p) => {
                    self.plan_pending.push(p);
                    self.queue(Message::Suggest(p.get()));
                }
                None => {
                    self.plan_exhausted = Some(swarm.plan_epoch());
                    break;
                }
            }
        }
        if self.plan_pending.is_empty() && self.plan_exhausted.is_some() && swarm.first_pass_done()
        {
            self.plan_open = true;
            self.our_ext_handshake().encode(&mut self.queued);
        }
    }

    /// The picker's view of the remote: what it has, narrowed to what a planning remote
    /// lets us ask for.
    fn pick_mask(&mut self) -> &Bitfield {
        if self.follow == Follow::Free {
            return &self.remote_has;
        }
        let built = (self.mask_gen, self.remote_has.count());
        if self.mask_built != Some(built) {
            let bytes: Vec<u8> = self
                .remote_has
                .as_bytes()
                .iter()
                .zip(self.allowed.as_bytes())
                .map(|(r, a)| r & a)
                .collect();
            self.mask = Bitfield::from_bytes(&bytes, self.lengths.piece_count());
            self.mask_built = Some(built);
        }
        &self.mask
    }

    /// Private swarms: one step of the peer handshake ([`PeerAuth`]). A proof we owe goes
    /// out in an extension handshake of its own, queued before our bitfield, so the remote
    /// sees it before anything else of ours.
    fn on_private_ext_handshake(
        &mut self,
        swarm: &mut Swarm,
        h: &ExtendedHandshake,
    ) -> Result<(), CloseReason> {
        let Some(auth) = self.auth.as_mut() else {
            return Ok(());
        };
        if self.authenticated {
            return Ok(());
        }
        let step = auth
            .handle(&AuthFields {
                version: h.corvid_auth_v,
                challenge: h.corvid_challenge,
                proof: h.corvid_proof,
                legacy: h.corvid_v1,
            })
            .map_err(CloseReason::NotAuthorized)?;
        if let Some(proof) = step.send_proof {
            let mut ext = self.our_ext_handshake();
            ext.corvid_proof = Some(proof);
            ext.encode(&mut self.queued);
        }
        if step.authenticated {
            self.authenticated = true;
            self.send_have(swarm);
            self.handshake_done();
        }
        Ok(())
    }

    fn remote_gained(&mut self, swarm: &mut Swarm, piece: PieceIndex) {
        if self.remote_has.set(piece.get()) {
            swarm.add_availability(piece);
            if !swarm.have().get(piece.get()) {
                self.useful += 1;
            }
        }
    }

    fn update_interest(&mut self, swarm: &Swarm) {
        if self.useful == 0 && self.am_interested {
            // The running count can undercount (a piece we verified after the handshake
            // but before the remote's bitfield is subtracted without having been added),
            // so before losing interest, count exactly: remote has and we do not.
            self.useful = self
                .remote_has
                .as_bytes()
                .iter()
                .zip(swarm.have().as_bytes())
                .map(|(r, h)| (r & !h).count_ones())
                .sum();
        }
        let want = self.useful > 0 && !swarm.is_complete();
        if want != self.am_interested {
            self.am_interested = want;
            self.queue(if want {
                Message::Interested
            } else {
                Message::NotInterested
            });
        }
    }

    fn on_message(&mut self, swarm: &mut Swarm, m: Message<'_>) -> Result<(), CloseReason> {
        if !self.authenticated && !matches!(m, Message::KeepAlive | Message::Extended { .. }) {
            return Err(CloseReason::NotAuthorized(
                "message other than an extension handshake before proving the secret",
            ));
        }
        // A bitfield (or have all/none) must precede any have, so availability is never
        // counted twice; other messages may come first (libtorrent sends its extension
        // handshake before its bitfield, BEP 10 allows it; keep-alives, choke state and
        // allowed-fast are harmless).
        let first = !self.seen_first;
        if matches!(
            m,
            Message::Have(_)
                | Message::Bitfield(_)
                | Message::HaveAll
                | Message::HaveNone
                | Message::Piece { .. }
                | Message::Request { .. }
        ) {
            self.seen_first = true;
        }
        let need_fast = |fast: bool, what: &'static str| {
            if fast {
                Ok(())
            } else {
                Err(CloseReason::FastNotNegotiated(what))
            }
        };
        match m {
            Message::KeepAlive => {}
            Message::Choke => {
                self.peer_choking = true;
                if !self.fast {
                    // BEP 3: a choke discards every pending request.
                    for (key, o) in self.outstanding.drain() {
                        release_mask(swarm, key, o.live);
                    }
                    self.inflight = 0;
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => {
                self.peer_interested = true;
                if self.am_choking
                    && self.may_unchoke(self.last_recv)
                    && swarm.try_unchoke(self.key)
                {
                    self.am_choking = false;
                    self.last_upload = self.last_recv;
                    self.queue(Message::Unchoke);
                }
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.choke_remote(swarm);
            }
            Message::Have(i) => {
                let p = self
                    .lengths
                    .piece(i)
                    .ok_or(CloseReason::HaveOutOfRange(i))?;
                self.remote_gained(swarm, p);
                self.update_interest(swarm);
            }
            Message::Bitfield(bytes) => {
                // BEP 3 wants it first, but aria2 sends have-none and later a bitfield
                // in place of haves: a late bitfield only adds pieces.
                let bf = Bitfield::from_bytes(bytes, self.lengths.piece_count());
                for p in self.lengths.pieces() {
                    if bf.get(p.get()) {
                        self.remote_gained(swarm, p);
                    }
                }
                self.update_interest(swarm);
            }
            Message::HaveAll => {
                need_fast(self.fast, "have all")?;
                if !first {
                    return Err(CloseReason::BitfieldNotFirst("have all"));
                }
                for p in self.lengths.pieces() {
                    self.remote_gained(swarm, p);
                }
                self.update_interest(swarm);
            }
            Message::HaveNone => {
                need_fast(self.fast, "have none")?;
                if !first {
                    return Err(CloseReason::BitfieldNotFirst("have none"));
                }
            }
            Message::Request { index, begin, len } => {
                let max = if self.remote_corvid {
                    self.cfg.max_request_corvid
                } else {
                    self.cfg.max_request
                };
                let block = self
                    .lengths
                    .checked_block(index, begin, len, max)
                    .ok_or(CloseReason::RequestOutsideTorrent { index, begin, len })?;
                if !swarm.have().get(index) {
                    if self.fast {
                        self.queue(Message::Reject { index, begin, len });
                        return Ok(());
                    }
                    return Err(CloseReason::RequestForMissingPiece(index));
                }
                if self.am_choking || self.their_requests.len() >= self.cfg.our_reqq as usize {
                    // Choked (requests in flight when we choked) or over the queue we
                    // advertised: refuse, silently without the fast extension (BEP 3).
                    if self.fast {
                        self.queue(Message::Reject { index, begin, len });
                    }
                    return Ok(());
                }
                if self.planning(swarm)
                    && !swarm.plan_admit(self.key, block)
                    && !self.refused_remote.get(index)
                {
                    // Another peer holds (or is getting) this piece: ask it there. A
                    // follower asks again only when none of its peers has the piece
                    // (they may be out of its reach), and is then served.
                    self.refused_remote.set(index);
                    self.queue(Message::Reject { index, begin, len });
                    return Ok(());
                }
                // Asking is using the slot (`last_recv` is this message).
                self.last_upload = self.last_recv;
                self.their_requests.push_back(block);
            }
            Message::Cancel { index, begin, len } => {
                self.their_requests.cancel(index, begin, len);
            }
            Message::Piece { index, begin, len } => {
                let unrequested = CloseReason::UnrequestedPiece { index, begin, len };
                let piece = self.lengths.piece(index).ok_or(unrequested.clone())?;
                let key = (piece, begin, len);
                let live = self.take_copy(key).ok_or(unrequested)?;
                // Every covered block is decided now, so the payload can be received in
                // as few runs as possible (one, when all of it is ours to write).
                let mut write = 0u64;
                for i in 0..blocks_covered(key) {
                    if (live >> i) & 1 == 1 {
                        let b = covered_block(key, i);
                        self.inflight = self.inflight.saturating_sub(u64::from(b.len));
                        if swarm.begin_block(self.key, b) == Accept::Write {
                            write |= 1 << i;
                        }
                    }
                }
                self.start_run(Incoming {
                    piece,
                    begin,
                    len,
                    write,
                    done: 0,
                    run: 0,
                });
            }
            Message::Reject { index, begin, len } => {
                need_fast(self.fast, "reject request")?;
                if self.follow != Follow::Free && self.allowed.clear(index) {
                    // Refused by a planning seeder: fetch it from the peers.
                    self.mask_gen = self.mask_gen.wrapping_add(1);
                    if let Some(p) = self.lengths.piece(index) {
                        self.refused.push((p, self.last_recv));
                    }
                }
                if let Some(piece) = self.lengths.piece(index) {
                    let key = (piece, begin, len);
                    if let Some(live) = self.take_copy(key) {
                        let bytes = release_mask(swarm, key, live);
                        self.inflight = self.inflight.saturating_sub(bytes);
                    }
                }
            }
            Message::Suggest(i) => {
                need_fast(self.fast, "suggest piece")?;
                // A planning seeder hands us this piece; other suggestions are advice we
                // do not need (rarest-first already spreads pieces).
                if self.follow != Follow::Free && self.allowed.set(i) {
                    self.mask_gen = self.mask_gen.wrapping_add(1);
                }
            }
            Message::AllowedFast(_) => need_fast(self.fast, "allowed fast")?,
            Message::Port(_) => {}
            Message::Extended { ext_id, payload } => {
                if !self.extended {
                    return Err(CloseReason::ExtendedNotNegotiated);
                }
                if ext_id == 0 {
                    let h = ExtendedHandshake::decode(payload)?;
                    self.remote_corvid = h.v.as_deref().is_some_and(|v| v.starts_with("corvid"));
                    self.remote_client = h.v.clone();
                    self.request_size = if self.remote_corvid {
                        let serves = h.corvid_max_request.unwrap_or(CORVID_MAX_REQUEST);
                        let size = self
                            .cfg
                            .request_size_corvid
                            .min(serves)
                            .min(MAX_REQUEST_BLOCKS * BLOCK_SIZE);
                        (size / BLOCK_SIZE * BLOCK_SIZE).max(BLOCK_SIZE)
                    } else {
                        BLOCK_SIZE
                    };
                    // Never shrinks: answers to bigger requests sent before a second
                    // extension handshake must still decode.
                    self.limits.max_block = self.limits.max_block.max(self.request_size);
                    if let Some(q) = h.reqq {
                        self.remote_reqq = q.max(1);
                    }
                    if self.cfg.seed_plan {
                        self.remote_follows = h.corvid_plan.is_some_and(|p| p >= 1);
                        let next = match (self.follow, h.corvid_plan) {
                            (Follow::Free, Some(2)) if self.fast => Follow::Assigned,
                            (Follow::Assigned, Some(1)) => {
                                // Its plan is over: anything it has not refused.
                                self.allowed = Bitfield::full(self.lengths.piece_count());
                                Follow::Open
                            }
                            (f, _) => f,
                        };
                        if next != self.follow {
                            self.follow = next;
                            self.mask_gen = self.mask_gen.wrapping_add(1);
                        }
                    }
                    self.on_private_ext_handshake(swarm, &h)?;
                }
                // No other extension is advertised, so other ids are ignored.
            }
        }
        Ok(())
    }

    fn choke_remote(&mut self, swarm: &mut Swarm) {
        if !self.am_choking {
            self.am_choking = true;
            self.queue(Message::Choke);
            swarm.release_unchoke(self.key);
            while let Some(b) = self.their_requests.pop_front() {
                if self.fast {
                    self.queue(Message::Reject {
                        index: b.piece.get(),
                        begin: b.offset,
                        len: b.len,
                    });
                }
            }
        }
    }

    /// Answers one copy of request `key`: returns the blocks still ours (possibly none)
    /// and forgets the request once every copy is answered; `None` if never requested.
    fn take_copy(&mut self, key: ReqKey) -> Option<u64> {
        let o = self.outstanding.get_mut(&key)?;
        let live = std::mem::take(&mut o.live);
        o.copies = o.copies.saturating_sub(1);
        if o.copies == 0 {
            self.outstanding.remove(&key);
        }
        Some(live)
    }

    /// Announces the next run of the incoming payload: the blocks from `inc.done` on that
    /// share its verdict (write or drop).
    fn start_run(&mut self, mut inc: Incoming) {
        let n = inc.len.div_ceil(BLOCK_SIZE);
        let first = inc.done / BLOCK_SIZE;
        let bit = |i: u32| (inc.write >> i) & 1;
        let mut end = first + 1;
        while end < n && bit(end) == bit(first) {
            end += 1;
        }
        inc.run = (end * BLOCK_SIZE).min(inc.len) - inc.done;
        self.state = State::Payload(inc);
        self.events.push_back(Event::ReceivePayload {
            block: inc.run_block(),
            discard: !inc.run_writes(),
        });
    }

    /// The payload announced by [`Event::ReceivePayload`] is in storage (or dropped). If
    /// the `piece` message has more, the next [`Event::ReceivePayload`] follows.
    pub fn handle_payload_done(&mut self, swarm: &mut Swarm, block: BlockRef, now: Instant) {
        let State::Payload(mut inc) = self.state else {
            return;
        };
        if inc.run_block() != block {
            return;
        }
        self.last_recv = now;
        self.last_block = now;
        self.snubbed = false;
        self.stats.downloaded += u64::from(block.len);
        self.rate_window_bytes += u64::from(block.len);
        if inc.run_writes() {
            let key = (inc.piece, inc.begin, inc.len);
            let first = inc.done / BLOCK_SIZE;
            for i in first..first + block.len.div_ceil(BLOCK_SIZE) {
                let b = covered_block(key, i);
                if let Some(piece) = swarm.finish_block(self.key, self.addr.ip(), b) {
                    self.events.push_back(Event::PieceComplete(piece));
                }
            }
        }
        inc.done += inc.run;
        if inc.done < inc.len {
            self.start_run(inc);
        } else {
            self.state = State::Open;
        }
    }

    /// Timers: handshake and idle timeouts, snubbing, rate measurement, retrying an upload
    /// slot. Call every few hundred milliseconds.
    pub fn handle_tick(&mut self, swarm: &mut Swarm, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if swarm.is_banned(self.key) {
            self.close(CloseReason::Banned);
            return;
        }
        if self.state == State::Handshaking || !self.authenticated {
            if now.saturating_duration_since(self.created) > self.cfg.handshake_timeout {
                self.close(if self.state == State::Handshaking {
                    CloseReason::HandshakeTimeout
                } else {
                    CloseReason::NotAuthorized("no proof of the swarm secret within the timeout")
                });
            }
            return;
        }
        if now.saturating_duration_since(self.last_recv) > self.cfg.idle_timeout {
            self.close(CloseReason::Idle);
            return;
        }
        if swarm.is_complete() && self.remote_has.is_full() {
            self.close(CloseReason::BothComplete);
            return;
        }
        let window = now.saturating_duration_since(self.rate_window_start);
        if window >= Duration::from_secs(1) {
            let r = self.rate_window_bytes as f64 / window.as_secs_f64();
            self.rate = Some(match self.rate {
                Some(old) => 0.5 * old + 0.5 * r,
                None => r,
            });
            self.rate_window_start = now;
            self.rate_window_bytes = 0;
        }
        let oldest = self
            .outstanding
            .values()
            .filter(|o| o.live != 0)
            .map(|o| o.sent)
            .min();
        let stalled_since = oldest.map(|s| s.max(self.last_block));
        if stalled_since
            .is_some_and(|s| now.saturating_duration_since(s) > self.cfg.request_timeout)
        {
            self.snubbed = true;
            for (&key, o) in self.outstanding.iter_mut().filter(|(_, o)| o.live != 0) {
                release_mask(swarm, key, std::mem::take(&mut o.live));
                o.sent = now;
                Message::Cancel {
                    index: key.0.get(),
                    begin: key.1,
                    len: key.2,
                }
                .encode(&mut self.queued);
            }
            self.inflight = 0;
        }
        if self.snubbed
            && !self.outstanding.is_empty()
            && now.saturating_duration_since(self.last_recv) > self.cfg.stalled_close_timeout
        {
            self.close(CloseReason::Stalled);
            return;
        }
        // Cancelled requests the remote never answered are forgotten eventually.
        let forget = self.cfg.request_timeout * 2;
        self.outstanding
            .retain(|_, o| !(o.live == 0 && now.saturating_duration_since(o.sent) > forget));
        if !self.am_choking
            && now.saturating_duration_since(self.last_upload) > self.cfg.upload_stall_timeout
        {
            self.choke_remote(swarm);
            self.unchoke_after = Some(now + self.cfg.stall_penalty);
        }
        if self.peer_interested
            && self.am_choking
            && self.may_unchoke(now)
            && swarm.try_unchoke(self.key)
        {
            self.am_choking = false;
            self.last_upload = now;
            self.queue(Message::Unchoke);
        }
    }

    /// Whether a stall penalty (see [`PeerConfig::upload_stall_timeout`]) is over.
    fn may_unchoke(&self, now: Instant) -> bool {
        self.unchoke_after.is_none_or(|t| now >= t)
    }

    /// The connection is gone (closed by us, by the remote or by an error): give back its
    /// outstanding requests, a half-written block and its availability. Idempotent.
    pub fn handle_close(&mut self, swarm: &mut Swarm) {
        if self.released {
            return;
        }
        self.released = true;
        for (key, o) in self.outstanding.drain() {
            release_mask(swarm, key, o.live);
        }
        self.inflight = 0;
        let incoming = match self.state {
            State::Payload(inc) => Some(inc),
            _ => self.closed_mid_payload.take(),
        };
        if let Some(inc) = incoming {
            // Blocks of this and later runs accepted for writing hold junk or nothing.
            let key = (inc.piece, inc.begin, inc.len);
            for i in inc.done / BLOCK_SIZE..blocks_covered(key) {
                if (inc.write >> i) & 1 == 1 {
                    swarm.abort_block(self.key, covered_block(key, i));
                }
            }
        }
        for p in self.lengths.pieces() {
            if self.remote_has.get(p.get()) {
                swarm.remove_availability(p);
            }
        }
        swarm.remove_peer(self.key);
        if self.state != State::Closed {
            self.state = State::Closed;
        }
    }

    fn target_inflight(&self) -> u64 {
        if self.snubbed {
            return u64::from(BLOCK_SIZE);
        }
        match self.rate {
            None => self.cfg.initial_inflight,
            Some(r) => ((r * self.cfg.pipeline_time.as_secs_f64()) as u64)
                .clamp(self.cfg.min_inflight, self.cfg.max_inflight),
        }
    }

    /// Appends control messages to `out`; returns a block to upload, if one is due. Send
    /// `out`, then the block, then call again until it returns `None` with `out` unchanged.
    pub fn poll_transmit(
        &mut self,
        swarm: &mut Swarm,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if self.state == State::Closed {
            return None;
        }
        if swarm.is_banned(self.key) {
            self.close(CloseReason::Banned);
            return None;
        }
        let start = out.len();
        if let Some(h) = self.handshake_out.take() {
            h.encode(out);
        }
        if self.state == State::Handshaking {
            self.note_sent(out.len() > start, now);
            return None;
        }
        if !self.authenticated {
            // Private swarm, remote not yet proven: only our extension handshakes go out.
            out.extend_from_slice(&self.queued);
            self.queued.clear();
            self.note_sent(out.len() > start, now);
            return None;
        }
        // Haves for pieces verified since our bitfield.
        while let Some(&p) = swarm.have_log().get(self.have_cursor) {
            self.have_cursor += 1;
            Message::Have(p.get()).encode(&mut self.queued);
            if self.remote_has.get(p.get()) {
                self.useful = self.useful.saturating_sub(1);
            }
        }
        self.update_interest(swarm);
        self.plan_top_up(swarm);
        // End-game: cancel what arrived elsewhere. A block inside a bigger request is given
        // back on its own (its payload will be dropped); the request itself is cancelled on
        // the wire once none of its blocks is wanted. This scan over the outstanding
        // requests runs only in end-game, when the log grows.
        while let Some(&b) = swarm.cancel_log().get(self.cancel_cursor) {
            self.cancel_cursor += 1;
            let hit = self.outstanding.iter_mut().find_map(|(&key, o)| {
                covering_bit(key, b)
                    .filter(|bit| o.live & bit != 0)
                    .map(|bit| (key, o, bit))
            });
            if let Some((key, o, bit)) = hit {
                o.live &= !bit;
                self.inflight = self.inflight.saturating_sub(u64::from(b.len));
                swarm.release(b);
                if o.live == 0 {
                    o.sent = now;
                    Message::Cancel {
                        index: key.0.get(),
                        begin: key.1,
                        len: key.2,
                    }
                    .encode(&mut self.queued);
                }
            }
        }
        // Requests, up to the pipeline target and the remote's queue.
        if self.am_interested && !self.peer_choking {
            let target = self.target_inflight();
            // Blocks one request may cover: end-game duplicates and a snubbed peer's
            // single block stay at 16 KiB.
            let per_req = if self.snubbed || swarm.in_endgame() {
                1
            } else {
                (self.request_size / BLOCK_SIZE).clamp(1, MAX_REQUEST_BLOCKS) as usize
            };
            let by_bytes = target
                .saturating_sub(self.inflight)
                .div_ceil(u64::from(BLOCK_SIZE)) as usize;
            let reqs_left = (self.remote_reqq as usize).saturating_sub(self.outstanding.len());
            let want = by_bytes.min(reqs_left.saturating_mul(per_req));
            // Refill in batches (a sixteenth of the pipeline) so the swarm lock is taken
            // once per many blocks, not once per block; an empty pipeline refills at once.
            let cap = (target.div_ceil(u64::from(BLOCK_SIZE)) as usize)
                .min((self.remote_reqq as usize).saturating_mul(per_req));
            let batch = (cap / 16).max(1);
            let live = self.inflight > 0;
            // A refused piece that no other connection of ours has (any more) is asked
            // for again here; the seeder serves a second ask.
            let before = self.refused.len();
            let allowed = &mut self.allowed;
            self.refused.retain(|&(p, at)| {
                let alone = !swarm.have().get(p.get())
                    && swarm.availability(p) <= 1
                    && now.saturating_duration_since(at) >= PLAN_REASK_AFTER;
                if alone {
                    allowed.set(p.get());
                }
                !alone && !swarm.have().get(p.get())
            });
            if self.refused.len() != before {
                self.mask_gen = self.mask_gen.wrapping_add(1);
            }
            let starved_key = (
                swarm.epoch(),
                self.remote_has.count(),
                swarm.in_endgame(),
                self.mask_gen,
            );
            if want > 0 && (want >= batch || !live) && self.starved != Some(starved_key) {
                self.picked.clear();
                self.pick_mask();
                let mask = if self.follow == Follow::Free {
                    &self.remote_has
                } else {
                    &self.mask
                };
                let outstanding = &self.outstanding;
                let picked = &mut self.picked;
                // `already` is asked only in end-game, so its scan stays off the fast path.
                swarm.pick_blocks(
                    self.key,
                    mask,
                    want,
                    |b| {
                        outstanding
                            .iter()
                            .any(|(&k, o)| covering_bit(k, b).is_some_and(|bit| o.live & bit != 0))
                    },
                    |b| picked.push(b),
                );
                // Came up short: nothing more to pick until the swarm or the remote changes.
                self.starved = (self.picked.len() < want).then_some(starved_key);
                // Runs of picked blocks that follow each other in one piece become one
                // request of up to `per_req` blocks (the picker hands out a piece's free
                // blocks in order, so runs are the common case).
                let mut sent = 0;
                let mut i = 0;
                while i < self.picked.len() {
                    let first = self.picked[i];
                    let mut len = first.len;
                    let mut j = i + 1;
                    while j < self.picked.len()
                        && j - i < per_req
                        && self.picked[j].piece == first.piece
                        && self.picked[j].offset == first.offset + len
                    {
                        len += self.picked[j].len;
                        j += 1;
                    }
                    if sent == reqs_left {
                        // Scattered picks needed more requests than the remote queues.
                        for &b in &self.picked[i..] {
                            swarm.release(b);
                        }
                        break;
                    }
                    sent += 1;
                    let key = (first.piece, first.offset, len);
                    let o = self.outstanding.entry(key).or_insert(Outstanding {
                        live: 0,
                        copies: 0,
                        sent: now,
                    });
                    // The swarm never hands us a block we hold live, so the masks are
                    // disjoint and no byte is counted in flight twice.
                    debug_assert_eq!(o.live, 0);
                    o.live |= full_mask((j - i) as u32);
                    o.copies = o.copies.saturating_add(1);
                    o.sent = now;
                    self.inflight += u64::from(len);
                    self.stats.requests += 1;
                    Message::Request {
                        index: first.piece.get(),
                        begin: first.offset,
                        len,
                    }
                    .encode(&mut self.queued);
                    i = j;
                }
            }
        }
        out.extend_from_slice(&self.queued);
        self.queued.clear();
        self.queued.shrink_to(KEEP_BUFFER);
        if out.len() == start
            && now.saturating_duration_since(self.last_sent) >= self.cfg.keepalive_interval
        {
            Message::KeepAlive.encode(out);
        }
        self.note_sent(out.len() > start, now);
        if self.am_choking {
            return None;
        }
        let block = self.next_upload(swarm)?;
        self.stats.uploaded += u64::from(block.len);
        swarm.record_upload(self.key, block);
        self.last_sent = now;
        self.last_upload = now;
        Some(Transmit::Block {
            header: wire::piece_header(block.piece.get(), block.offset, block.len),
            block,
        })
    }

    /// The next queued request to serve. A seeder's uplink is the swarm's scarcest
    /// resource, so when we have everything we serve first, among the oldest
    /// [`SEEDER_LOOKAHEAD`] requests, the piece that is rarest counting copies we already
    /// sent: the first copy of each piece goes out early and peers pass it on. Leechers
    /// serve in order (the requester asked in its own preferred order).
    fn next_upload(&mut self, swarm: &Swarm) -> Option<BlockRef> {
        // A remote on the plan asks for its handed pieces in order: whole pieces
        // reach it (and its peers) soonest when served in that order.
        if !swarm.is_complete() || self.their_requests.len() < 2 || self.planning(swarm) {
            return self.their_requests.pop_front();
        }
        self.their_requests
            .take_min_by(SEEDER_LOOKAHEAD, |b| swarm.spread(b.piece))
    }

    fn note_sent(&mut self, sent: bool, now: Instant) {
        if sent {
            self.last_sent = now;
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// For tests: the bookkeeping this connection promises to keep.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let live: u64 = self
            .outstanding
            .iter()
            .map(|(&k, o)| mask_bytes(k, o.live))
            .sum();
        assert_eq!(live, self.inflight, "in-flight bytes drifted");
        for (&k, o) in &self.outstanding {
            assert!(o.copies > 0, "answered request {k:?} kept");
            assert_eq!(o.live & !full_mask(blocks_covered(k)), 0);
        }
        assert!(self.their_requests.len() <= self.cfg.our_reqq as usize);
        self.their_requests.check();
        assert!(!self.am_choking || self.their_requests.is_empty());
        assert!(self.useful <= self.remote_has.count());
    }
}

#[cfg(test)]
mod interop;
#[cfg(test)]
mod tests;
