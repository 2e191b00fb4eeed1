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
//! the request queues are `VecDeque`s that reach their working size once.
//!
//! Pipelining: BitTorrent has no flow control besides how many requests are outstanding, so
//! the bytes in flight per peer must cover rate x RTT. The target is `rate x pipeline_time`
//! measured per peer (1 s by default, far above any datacenter or WAN RTT, so the queue is
//! never what limits a fast link), clamped to `[min_inflight, max_inflight]`, starting at a
//! generous `initial_inflight` (8 MiB: 10GbE at 6 ms RTT from one peer, and many peers in
//! parallel cover 50 ms) before any rate is known. It is further capped by the remote's
//! advertised `reqq` (250 requests if it says nothing, what stock clients queue).
//!
//! Haves and end-game cancels are not pushed into connections: each connection follows the
//! swarm's append-only [`Swarm::have_log`] and [`Swarm::cancel_log`] with its own cursor in
//! `poll_transmit`. After [`Swarm::handle_verdict`] the runtime just polls every connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::geometry::{BlockRef, Lengths, PieceIndex, BLOCK_SIZE};
use crate::swarm::{Accept, Banned, PeerKey, Swarm};
use crate::wire::{self, Bitfield, Decoded, ExtendedHandshake, Handshake, Limits, Message};

/// How far into a remote's request queue a seeder looks for the least-spread piece.
pub const SEEDER_LOOKAHEAD: usize = 64;

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
    /// Our extension handshake `v`.
    pub client: String,
    pub listen_port: Option<u16>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(120),
            request_timeout: Duration::from_secs(20),
            initial_inflight: 8 << 20,
            min_inflight: 1 << 20,
            max_inflight: 64 << 20,
            pipeline_time: Duration::from_secs(1),
            default_remote_reqq: 250,
            our_reqq: 4096,
            max_request: BLOCK_SIZE,
            max_request_corvid: 128 * 1024,
            client: concat!("corvid ", env!("CARGO_PKG_VERSION")).to_owned(),
            listen_port: None,
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
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The remote's handshake checked out.
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
    Payload { block: BlockRef, discard: bool },
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    block: BlockRef,
    /// Cancelled (end-game or snubbed): already given back to the swarm; if the payload
    /// still comes it is dropped.
    cancelled: bool,
    sent: Instant,
}

/// Byte counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub uploaded: u64,
    pub downloaded: u64,
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
    remote_id: Option<[u8; 20]>,
    fast: bool,
    extended: bool,
    remote_client: Option<String>,
    remote_corvid: bool,
    remote_reqq: u32,
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
    outstanding: VecDeque<Outstanding>,
    inflight: u64,
    their_requests: VecDeque<BlockRef>,
    /// Control messages encoded while handling input, flushed by `poll_transmit`.
    queued: Vec<u8>,
    picked: Vec<BlockRef>,
    events: VecDeque<Event>,
    snubbed: bool,
    /// The swarm epoch, remote piece count and end-game flag when the picker last came up
    /// short; picking again before one of them changes would find nothing.
    starved: Option<(u64, u32, bool)>,
    created: Instant,
    last_recv: Instant,
    last_sent: Instant,
    last_block: Instant,
    rate_window_start: Instant,
    rate_window_bytes: u64,
    rate: Option<f64>,
    stats: PeerStats,
    released: bool,
}

impl PeerConn {
    /// A new connection to or from `addr`; our handshake is the first thing
    /// `poll_transmit` writes (both sides send theirs at once). Banned addresses are
    /// refused.
    pub fn new(
        cfg: &PeerConfig,
        swarm: &mut Swarm,
        addr: SocketAddr,
        our_peer_id: [u8; 20],
        now: Instant,
    ) -> Result<Self, Banned> {
        let key = swarm.add_peer(addr.ip())?;
        let lengths = *swarm.lengths();
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
            handshake_out: Some(Handshake::ours(swarm.info_hash(), our_peer_id)),
            remote_id: None,
            fast: false,
            extended: false,
            remote_client: None,
            remote_corvid: false,
            remote_reqq: cfg.default_remote_reqq,
            seen_first: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            remote_has: Bitfield::new(lengths.piece_count()),
            useful: 0,
            have_cursor: 0,
            cancel_cursor: swarm.cancel_log().len(),
            outstanding: VecDeque::new(),
            inflight: 0,
            their_requests: VecDeque::new(),
            queued: Vec::new(),
            picked: Vec::new(),
            events: VecDeque::new(),
            snubbed: false,
            starved: None,
            created: now,
            last_recv: now,
            last_sent: now,
            last_block: now,
            rate_window_start: now,
            rate_window_bytes: 0,
            rate: None,
            stats: PeerStats::default(),
            released: false,
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
        if swarm.is_banned(self.key) {
            return Err(self.close(CloseReason::Banned));
        }
        let mut pos = 0;
        if self.state == State::Handshaking {
            match Handshake::decode(bytes) {
                Err(e) => return Err(self.close(e.into())),
                Ok(Decoded::Incomplete) => return Ok(0),
                Ok(Decoded::Message(h, n)) => {
                    pos = n;
                    self.last_recv = now;
                    self.on_handshake(swarm, h)?;
                }
            }
        }
        while self.state == State::Open {
            match wire::decode(&bytes[pos..], &self.limits) {
                Err(e) => return Err(self.close(e.into())),
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Message(m, n)) => {
                    pos += n;
                    self.last_recv = now;
                    if let Err(r) = self.on_message(swarm, m) {
                        return Err(self.close(r));
                    }
                }
            }
        }
        Ok(pos)
    }

    fn on_handshake(&mut self, swarm: &mut Swarm, h: Handshake) -> Result<(), CloseReason> {
        if h.info_hash != swarm.info_hash() {
            return Err(self.close(CloseReason::WrongInfoHash(h.info_hash)));
        }
        self.remote_id = Some(h.peer_id);
        self.fast = h.supports_fast();
        self.extended = h.supports_extended();
        self.state = State::Open;
        // Our view of what we have: a snapshot plus every later verdict from the log.
        let have = swarm.have();
        if self.fast && have.count() == 0 {
            self.queue(Message::HaveNone);
        } else if self.fast && have.is_full() {
            self.queue(Message::HaveAll);
        } else if have.count() > 0 {
            Message::Bitfield(have.as_bytes()).encode(&mut self.queued);
        }
        self.have_cursor = swarm.have_log().len();
        if self.extended {
            ExtendedHandshake {
                m: Vec::new(),
                v: Some(self.cfg.client.clone()),
                p: self.cfg.listen_port,
                reqq: Some(self.cfg.our_reqq),
            }
            .encode(&mut self.queued);
        }
        self.events.push_back(Event::HandshakeDone {
            peer_id: h.peer_id,
            fast: self.fast,
            extended: self.extended,
        });
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
        let first = !self.seen_first;
        // Keep-alives, extension handshakes (libtorrent sends its BEP 10 handshake before
        // its bitfield or have-none) and DHT ports do not count as the first message.
        if !matches!(
            m,
            Message::KeepAlive | Message::Extended { .. } | Message::Port(_)
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
                    for o in self.outstanding.drain(..) {
                        if !o.cancelled {
                            swarm.release(o.block);
                        }
                    }
                    self.inflight = 0;
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => {
                self.peer_interested = true;
                if self.am_choking && swarm.try_unchoke(self.key) {
                    self.am_choking = false;
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
                self.their_requests.push_back(block);
            }
            Message::Cancel { index, begin, len } => {
                if let Some(i) = self
                    .their_requests
                    .iter()
                    .position(|b| (b.piece.get(), b.offset, b.len) == (index, begin, len))
                {
                    self.their_requests.remove(i);
                }
            }
            Message::Piece { index, begin, len } => {
                let i = self
                    .outstanding
                    .iter()
                    .position(|o| {
                        (o.block.piece.get(), o.block.offset, o.block.len) == (index, begin, len)
                    })
                    .ok_or(CloseReason::UnrequestedPiece { index, begin, len })?;
                let o = self
                    .outstanding
                    .remove(i)
                    .ok_or(CloseReason::UnrequestedPiece { index, begin, len })?;
                let discard = if o.cancelled {
                    true
                } else {
                    self.inflight = self.inflight.saturating_sub(u64::from(len));
                    swarm.begin_block(self.key, o.block) == Accept::Discard
                };
                self.state = State::Payload {
                    block: o.block,
                    discard,
                };
                self.events.push_back(Event::ReceivePayload {
                    block: o.block,
                    discard,
                });
            }
            Message::Reject { index, begin, len } => {
                need_fast(self.fast, "reject request")?;
                if let Some(i) = self.outstanding.iter().position(|o| {
                    (o.block.piece.get(), o.block.offset, o.block.len) == (index, begin, len)
                }) {
                    if let Some(o) = self.outstanding.remove(i) {
                        if !o.cancelled {
                            self.inflight = self.inflight.saturating_sub(u64::from(len));
                            swarm.release(o.block);
                        }
                    }
                }
            }
            Message::Suggest(_) => need_fast(self.fast, "suggest piece")?,
            Message::AllowedFast(_) => need_fast(self.fast, "allowed fast")?,
            Message::Port(_) => {}
            Message::Extended { ext_id, payload } => {
                if !self.extended {
                    return Err(CloseReason::ExtendedNotNegotiated);
                }
                if ext_id == 0 {
                    let h = ExtendedHandshake::decode(payload)?;
                    self.remote_corvid = h.v.as_deref().is_some_and(|v| v.starts_with("corvid"));
                    self.remote_client = h.v;
                    if let Some(q) = h.reqq {
                        self.remote_reqq = q.max(1);
                    }
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

    /// The payload announced by [`Event::ReceivePayload`] is in storage (or dropped).
    pub fn handle_payload_done(&mut self, swarm: &mut Swarm, block: BlockRef, now: Instant) {
        let State::Payload { block: b, discard } = self.state else {
            return;
        };
        if b != block {
            return;
        }
        self.state = State::Open;
        self.last_recv = now;
        self.last_block = now;
        self.snubbed = false;
        self.stats.downloaded += u64::from(block.len);
        self.rate_window_bytes += u64::from(block.len);
        if !discard {
            if let Some(piece) = swarm.finish_block(self.key, self.addr.ip(), block) {
                self.events.push_back(Event::PieceComplete(piece));
            }
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
        if self.state == State::Handshaking {
            if now.saturating_duration_since(self.created) > self.cfg.handshake_timeout {
                self.close(CloseReason::HandshakeTimeout);
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
        let live = self.outstanding.iter().any(|o| !o.cancelled);
        let oldest = self
            .outstanding
            .iter()
            .find(|o| !o.cancelled)
            .map(|o| o.sent);
        let stalled_since = oldest.map(|s| s.max(self.last_block));
        if live
            && stalled_since
                .is_some_and(|s| now.saturating_duration_since(s) > self.cfg.request_timeout)
        {
            self.snubbed = true;
            for o in self.outstanding.iter_mut().filter(|o| !o.cancelled) {
                o.cancelled = true;
                o.sent = now;
                swarm.release(o.block);
                Message::Cancel {
                    index: o.block.piece.get(),
                    begin: o.block.offset,
                    len: o.block.len,
                }
                .encode(&mut self.queued);
            }
            self.inflight = 0;
        }
        // Cancelled requests the remote never answered are forgotten eventually.
        let forget = self.cfg.request_timeout * 2;
        self.outstanding
            .retain(|o| !(o.cancelled && now.saturating_duration_since(o.sent) > forget));
        if self.peer_interested && self.am_choking && swarm.try_unchoke(self.key) {
            self.am_choking = false;
            self.queue(Message::Unchoke);
        }
    }

    /// The connection is gone (closed by us, by the remote or by an error): give back its
    /// outstanding requests, a half-written block and its availability. Idempotent.
    pub fn handle_close(&mut self, swarm: &mut Swarm) {
        if self.released {
            return;
        }
        self.released = true;
        for o in self.outstanding.drain(..) {
            if !o.cancelled {
                swarm.release(o.block);
            }
        }
        self.inflight = 0;
        if let State::Payload {
            block,
            discard: false,
        } = self.state
        {
            swarm.abort_block(self.key, block);
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
        // Haves for pieces verified since our bitfield.
        while let Some(&p) = swarm.have_log().get(self.have_cursor) {
            self.have_cursor += 1;
            Message::Have(p.get()).encode(&mut self.queued);
            if self.remote_has.get(p.get()) {
                self.useful = self.useful.saturating_sub(1);
            }
        }
        self.update_interest(swarm);
        // End-game: cancel what arrived elsewhere.
        while let Some(&b) = swarm.cancel_log().get(self.cancel_cursor) {
            self.cancel_cursor += 1;
            if let Some(o) = self
                .outstanding
                .iter_mut()
                .find(|o| o.block == b && !o.cancelled)
            {
                o.cancelled = true;
                o.sent = now;
                self.inflight = self.inflight.saturating_sub(u64::from(b.len));
                swarm.release(b);
                Message::Cancel {
                    index: b.piece.get(),
                    begin: b.offset,
                    len: b.len,
                }
                .encode(&mut self.queued);
            }
        }
        // Requests, up to the pipeline target and the remote's queue.
        if self.am_interested && !self.peer_choking {
            let target = self.target_inflight();
            let by_bytes = target
                .saturating_sub(self.inflight)
                .div_ceil(u64::from(BLOCK_SIZE));
            let by_count = (self.remote_reqq as usize).saturating_sub(self.outstanding.len());
            let want = (by_bytes as usize).min(by_count);
            // Refill in batches (a sixteenth of the pipeline) so the swarm lock is taken
            // once per many blocks, not once per block; an empty pipeline refills at once.
            let cap =
                (target.div_ceil(u64::from(BLOCK_SIZE)) as usize).min(self.remote_reqq as usize);
            let batch = (cap / 16).max(1);
            let live = self.inflight > 0;
            let starved_key = (swarm.epoch(), self.remote_has.count(), swarm.in_endgame());
            if want > 0 && (want >= batch || !live) && self.starved != Some(starved_key) {
                self.picked.clear();
                let outstanding = &self.outstanding;
                let picked = &mut self.picked;
                swarm.pick_blocks(
                    self.key,
                    &self.remote_has,
                    want,
                    |b| outstanding.iter().any(|o| o.block == b && !o.cancelled),
                    |b| picked.push(b),
                );
                // Came up short: nothing more to pick until the swarm or the remote changes.
                self.starved = (self.picked.len() < want)
                    .then(|| (swarm.epoch(), self.remote_has.count(), swarm.in_endgame()));
                for &b in &self.picked {
                    self.outstanding.push_back(Outstanding {
                        block: b,
                        cancelled: false,
                        sent: now,
                    });
                    self.inflight += u64::from(b.len);
                    Message::Request {
                        index: b.piece.get(),
                        begin: b.offset,
                        len: b.len,
                    }
                    .encode(&mut self.queued);
                }
            }
        }
        out.extend_from_slice(&self.queued);
        self.queued.clear();
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
        swarm.record_upload(block);
        self.last_sent = now;
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
        if !swarm.is_complete() || self.their_requests.len() < 2 {
            return self.their_requests.pop_front();
        }
        let best = self
            .their_requests
            .iter()
            .take(SEEDER_LOOKAHEAD)
            .enumerate()
            .min_by_key(|(_, b)| swarm.spread(b.piece))
            .map(|(i, _)| i)?;
        self.their_requests.remove(best)
    }

    fn note_sent(&mut self, sent: bool, now: Instant) {
        if sent {
            self.last_sent = now;
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
