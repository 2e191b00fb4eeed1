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
//! Tried and not kept: a fixed 1 MiB pipeline at a planning seeder, whatever the rate
//! (a follower slow at the seeder gets a 256 KiB pipeline there, and the seeder's uplink
//! shares itself by bytes queued, so the suspicion was that slow followers stay slow).
//! Same fleet, N=16, 3 runs each back to back, both cores saturated by other work:
//! 7.82 s median (7.70-8.09) against 7.84 s (7.58-8.04) unchanged, seeder 1.06-1.14
//! copies either way; the seeder's uneven split in the first second (below, in
//! `crate::swarm::plan`'s docs) stayed.
//!
//! Tried and not kept: shallower pipelines, 100 ms / 128 KiB minimum instead of
//! 250 ms / 256 KiB (the seeder's connections see 57-127 ms RTT, queued behind relay
//! traffic at their receivers' downlinks; shorter pipelines queue less there). Fleet,
//! N=16, two rounds of 3 runs each, alternating order, both under load: 7.34 / 7.07 s
//! median (host p50 7.06 / 6.89 s) against 7.57 / 7.30 s (host p50 7.50 / 7.21 s), so
//! perhaps 0.2-0.3 s. But the simulator (`--hosts 16,24,100 --egress-queue 1.5MB
//! --linger 0s --runs 3`) has the last host 3% later at N=24 (8.18-8.26 s against
//! 7.84-8.02 s) with the seeder sending 1.19-1.22 copies instead of 1.16-1.18, for a
//! median host 2-4% earlier at N=16/24; a quiet-machine A/B at N=4-24 should decide.
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
//! Layout: this file holds the connection and its input side (bytes, payload, ticks,
//! close); `messages` handles each message family, `handshake` the handshakes and the
//! private-swarm proof, `plan` the seeding plan's part in a connection, `transmit` what
//! goes out (haves, cancels, requests, uploads), `outstanding` our requests on the wire,
//! `requests` the remote's, `config` and `events` the types the runtime sees.
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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::geometry::{BlockRef, Lengths, PieceIndex, BLOCK_SIZE};
use crate::swarm::{Accept, Banned, PeerKey, Swarm};
use crate::wire::{self, Bitfield, Decoded, ExtendedHandshake, Handshake, Limits, Message};

pub mod auth;
mod config;
mod events;
mod handshake;
mod messages;
mod outstanding;
mod plan;
mod requests;
mod transmit;
use auth::{AuthFields, PeerAuth, Role, NONCE_LEN, PEER_AUTH_VERSION};
use config::Follow;
use config::HOLDER_EXT_ID;
pub use config::{PeerConfig, HOLDER_EXT, PLAN_DEPTH_BYTES, PLAN_DEPTH_MAX, PLAN_REASK_FALLBACK};
pub use events::{CloseReason, Event, PeerStats, Transmit};
use outstanding::*;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Open,
    Payload(Incoming),
    Closed,
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
    /// Pieces a planning remote refused us: asked again only when no other connection of
    /// ours has them and we cannot wait for their holder (see [`plan::Refused`]).
    refused: Vec<plan::Refused>,
    /// Serving side: blocks (piece, 16 KiB block in piece) we refused this remote once;
    /// a request starting at one of them is a second ask, and is served.
    refused_remote: std::collections::HashSet<(u32, u32)>,
    /// The id the remote receives [`HOLDER_EXT`] under, if it takes it.
    remote_holder_ext: Option<u8>,
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
        swarm.set_own_id(our_peer_id);
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
            refused_remote: std::collections::HashSet::new(),
            remote_holder_ext: None,
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

    /// Bytes we asked the remote for and have not received (diagnosis: pipeline depth).
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight
    }

    /// The remote's requests queued with us, not yet served (diagnosis: queue depth).
    pub fn queued_requests(&self) -> usize {
        self.their_requests.len()
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
        if !self.am_choking {
            let idle = now.saturating_duration_since(self.last_upload);
            let window = self.cfg.contended_upload_idle;
            if idle > self.cfg.upload_stall_timeout {
                self.choke_remote(swarm);
                self.unchoke_after = Some(now + self.cfg.stall_penalty);
            } else if idle > window
                && swarm.slots_wanted_since(now.checked_sub(window * 2).unwrap_or(now))
            {
                // Others wait for a slot this remote does not use: give it back, and let
                // it queue again shortly (it may want more once it is told of new pieces).
                self.choke_remote(swarm);
                self.unchoke_after = Some(now + window);
            }
        }
        if self.peer_interested
            && self.am_choking
            && self.may_unchoke(now)
            && swarm.try_unchoke(self.key, now)
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
                swarm.peer_lost(self.key, p);
            }
        }
        swarm.remove_peer(self.key);
        if self.state != State::Closed {
            self.state = State::Closed;
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
