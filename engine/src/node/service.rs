//! The per-core glue between the io_uring runtime and the sans-IO peer protocol.
//!
//! Each core runs one [`PeerService`]; each connection's [`Conn`] holds its
//! [`PeerConn`] and an `Arc` of the storage its receive and send spans point into, so the
//! mapping outlives every in-flight operation (the runtime drops a `Conn` only after its
//! last completion). The torrent-wide swarm is shared by all cores behind one door
//! (`SwarmDoor`): a core takes its lock at the first protocol
//! call of a batch of completions that needs it and keeps it until the runtime calls
//! [`Service::end_batch`], before waiting for I/O again.
//!
//! Data path: a `piece` header is read into the connection's buffer; the service then
//! names the payload's place as spans of the mapped file ([`RecvTarget::Iovecs`]). For a
//! download of up to 256 files the runtime receives those bytes into the buffer and
//! `pwrite`s them to the file (cheaper than write faults on fresh mapped pages: see the
//! runtime's module docs); otherwise the kernel receives them straight into the mapping,
//! and receiving at most a header's worth while requests are outstanding
//! ([`NodeTuning::header_sized_recv`](super::NodeTuning::header_sized_recv)) keeps the
//! payload out of the buffer (with pwrite the payload goes through the buffer anyway;
//! measured on and off there, no difference: see there). Uploads are sent with
//! `sendmsg` from the header bytes plus spans of the mapping, without copying.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::geometry::BlockRef;
use crate::peer::auth::Role;
use crate::peer::{CloseReason, Event, PeerConn, Transmit};
use crate::runtime::{
    CloseCause, ConnId, Conns, CoreIo, Direction, RecvIovecs, RecvTarget, SendBuf, Service,
};
use crate::storage::{Storage, BLOCK_IOVECS};
use crate::wire::PIECE_HEADER_LEN;

use super::door::CoreLock;
use super::shared::{is_seeder_id, keep_new_duplicate, Registered, Shared};
use super::{NodeError, MAX_WRITE_FAILURES};

/// Messages for a core's mailbox.
#[derive(Debug)]
pub enum NodeMsg {
    /// Something torrent-wide changed (a verified piece, a ban): poll every connection.
    Poll,
    /// Another core kept a newer connection to this peer (see
    /// [`keep_new_duplicate`](super::shared::keep_new_duplicate)): close `conn` if it
    /// still is the one to `peer_id`.
    CloseDuplicate { conn: ConnId, peer_id: [u8; 20] },
}

/// Why a duplicate connection to one peer is closed (tests look for it).
const DUPLICATE: &str = "already connected to this peer";

/// A payload being received for a block.
#[derive(Debug, Clone, Copy)]
struct BlockInFlight {
    block: BlockRef,
    discard: bool,
    /// Bytes of the block already in storage (or dropped).
    done: u32,
}

/// One connection's state on its core.
pub struct Conn {
    peer: PeerConn,
    storage: Arc<Storage>,
    payload: Option<BlockInFlight>,
    remote_id: Option<[u8; 20]>,
    from_seeder: bool,
    registered: bool,
    outbound: bool,
    /// Inbound: the address whose slot this connection holds (see `PerIp`), and whether it
    /// still counts as half-open there.
    ip_slot: Option<std::net::IpAddr>,
    handshaking: bool,
    reason: Option<String>,
    /// The pacing cap last handed to the runtime for this socket (see `PeerConn::pacing`).
    pace: Option<u64>,
}

/// Whether a new pacing cap differs enough from the socket's to be worth a syscall: a
/// cap set or lifted, or moved by more than an eighth.
fn pace_changed(old: Option<u64>, new: Option<u64>) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => a.abs_diff(b) > a / 8,
        (a, b) => a != b,
    }
}

/// The per-core service the runtime drives.
pub struct PeerService {
    shared: Arc<Shared>,
    /// The swarm, locked from the first callback of a batch that needs it until
    /// [`Service::end_batch`].
    swarm: CoreLock,
}

impl PeerService {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        PeerService {
            shared,
            swarm: CoreLock::default(),
        }
    }

    /// Makes `id` the connection kept for `peer_id`, unless one is kept already and the
    /// rule both peers agree on keeps that one (returns false: close `id`). When the new
    /// one wins, the old one's core is asked to close it.
    fn register(
        &self,
        io: &mut CoreIo<'_, NodeMsg>,
        id: ConnId,
        conn: &Conn,
        peer_id: [u8; 20],
    ) -> bool {
        let new = Registered {
            core: io.core(),
            conn: id,
            outbound: conn.outbound,
        };
        let mut ids = self.shared.peer_ids.lock();
        let Some(old) = ids.get(&peer_id).copied() else {
            ids.insert(peer_id, new);
            return true;
        };
        if !keep_new_duplicate(&self.shared.our_id, &peer_id, old.outbound, new.outbound) {
            return false;
        }
        ids.insert(peer_id, new);
        drop(ids);
        if let Some(mb) = io.mailboxes().get(old.core) {
            // A closed mailbox means the node is stopping: the old connection goes anyway.
            let _ = mb.send(NodeMsg::CloseDuplicate {
                conn: old.conn,
                peer_id,
            });
        }
        true
    }

    /// An outbound connection closed as a duplicate reaches a peer we are connected to
    /// another way: do not dial its address again while that lasts.
    fn note_same_peer(&self, conn: &Conn, peer_id: [u8; 20]) {
        if conn.outbound {
            self.shared
                .same_peer
                .lock()
                .insert(conn.peer.addr(), peer_id);
        }
    }

    /// Rack-aware picking (issue 11): a downloader marks a connection to a rack-mate, by
    /// the remote's address in its topology, as soon as it knows the remote is no seeder
    /// (a seeder's pieces are what its plan hands out, not rack-local availability). A
    /// seeder does not note its peers' racks: spreading first copies over racks
    /// (`swarm/rack_plan.rs`) made the simulated N=1000 fleet slower, so it is off.
    fn mark_if_local(&mut self, conn: &mut Conn) {
        let local = self
            .shared
            .rack
            .as_ref()
            .is_some_and(|r| r.is_local(conn.peer.addr()));
        if local && !conn.from_seeder && !is_seeder_id(&self.shared.our_id) {
            let swarm = self.swarm.get(&self.shared.door);
            conn.peer.mark_local(swarm);
            self.shared
                .counters
                .rack_local
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Acts on everything the protocol asked for since the last call.
    fn drain_events(&mut self, io: &mut CoreIo<'_, NodeMsg>, id: ConnId, conn: &mut Conn) {
        while let Some(ev) = conn.peer.poll_event() {
            match ev {
                Event::HandshakeDone { peer_id, .. } => {
                    if std::mem::take(&mut conn.handshaking) {
                        if let Some(ip) = conn.ip_slot {
                            self.shared.per_ip.lock().handshake_done(ip);
                        }
                    }
                    if peer_id == self.shared.our_id {
                        conn.reason = Some("connected to ourselves".into());
                        io.close(id);
                        continue;
                    }
                    if !self.register(io, id, conn, peer_id) {
                        conn.reason = Some(DUPLICATE.into());
                        self.note_same_peer(conn, peer_id);
                        io.close(id);
                        continue;
                    }
                    conn.registered = true;
                    conn.remote_id = Some(peer_id);
                    conn.from_seeder = is_seeder_id(&peer_id);
                    self.mark_if_local(conn);
                    self.shared.counters.peers.fetch_add(1, Ordering::Relaxed);
                    self.shared.milestones.peer_connected(self.shared.start);
                }
                Event::ReceivePayload { block, discard } => {
                    self.shared.mark_first_byte(block.piece);
                    self.shared.milestones.payload_arrived(self.shared.start);
                    conn.payload = Some(BlockInFlight {
                        block,
                        discard,
                        done: 0,
                    });
                }
                Event::PieceComplete(piece) => self.shared.submit_hash(piece),
                Event::Close(reason) => {
                    conn.reason = Some(reason.to_string());
                    io.close(id);
                }
            }
        }
    }

    fn finish_payload(
        &mut self,
        io: &mut CoreIo<'_, NodeMsg>,
        id: ConnId,
        conn: &mut Conn,
        now: Instant,
    ) {
        let Some(p) = conn.payload.take() else { return };
        let c = &self.shared.counters;
        if p.discard {
            c.wasted
                .fetch_add(u64::from(p.block.len), Ordering::Relaxed);
        } else if conn.from_seeder {
            c.from_seeder
                .fetch_add(u64::from(p.block.len), Ordering::Relaxed);
        } else {
            c.from_peers
                .fetch_add(u64::from(p.block.len), Ordering::Relaxed);
        }
        let swarm = self.swarm.get(&self.shared.door);
        conn.peer.handle_payload_done(swarm, p.block, now);
        self.drain_events(io, id, conn);
    }
}

impl Service for PeerService {
    type Conn = Conn;
    type Msg = NodeMsg;
    type Error = CloseReason;

    fn on_connected(
        &mut self,
        _io: &mut CoreIo<'_, NodeMsg>,
        _id: ConnId,
        peer: SocketAddr,
        direction: Direction,
        now: Instant,
    ) -> Option<Conn> {
        let c = &self.shared.counters;
        // One address gets only so many inbound slots, fewer of them half-open, so a host
        // holding idle sockets cannot take every slot.
        let ip_slot = (direction == Direction::Inbound).then(|| peer.ip());
        if let Some(ip) = ip_slot {
            if !self.shared.per_ip.lock().admit(ip) {
                c.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let release_ip = || {
            if let Some(ip) = ip_slot {
                self.shared.per_ip.lock().release(ip, true);
            }
        };
        if c.connections.fetch_add(1, Ordering::Relaxed) >= self.shared.max_connections {
            c.connections.fetch_sub(1, Ordering::Relaxed);
            c.refused.fetch_add(1, Ordering::Relaxed);
            release_ip();
            return None;
        }
        match PeerConn::new(
            &self.shared.peer_cfg,
            self.swarm.get(&self.shared.door),
            peer,
            match direction {
                Direction::Outbound => Role::Initiator,
                Direction::Inbound => Role::Responder,
            },
            self.shared.our_id,
            self.shared.next_nonce(),
            now,
        ) {
            Ok(pc) => Some(Conn {
                peer: pc,
                storage: self.shared.storage.clone(),
                payload: None,
                remote_id: None,
                from_seeder: false,
                registered: false,
                outbound: direction == Direction::Outbound,
                ip_slot,
                handshaking: true,
                reason: None,
                pace: None,
            }),
            Err(_banned) => {
                release_ip();
                c.connections.fetch_sub(1, Ordering::Relaxed);
                c.refused.fetch_add(1, Ordering::Relaxed);
                if direction == Direction::Outbound {
                    self.shared.dialled.lock().remove(&peer);
                }
                None
            }
        }
    }

    fn on_connect_failed(
        &mut self,
        _io: &mut CoreIo<'_, NodeMsg>,
        peer: SocketAddr,
        error: &std::io::Error,
    ) {
        // Forget the address so a later announce may dial it again.
        self.shared.dialled.lock().remove(&peer);
        self.shared
            .log_close(peer, &format!("connect failed: {error}"));
    }

    fn next_recv(&mut self, conn: &mut Conn, iovecs: &mut RecvIovecs<'_>) -> RecvTarget {
        match conn.payload {
            Some(p) if !p.discard => {
                let rest = BlockRef {
                    piece: p.block.piece,
                    offset: p.block.offset + p.done,
                    len: p.block.len - p.done,
                };
                let mut iov = [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; BLOCK_IOVECS];
                let n = conn.storage.block_iovecs(rest, &mut iov);
                // SAFETY: the spans are inside the mapping that `conn.storage` keeps alive
                // for as long as this Conn (the runtime drops it only after the receive
                // completed). The swarm gave this connection exclusive write ownership of
                // the block (`Accept::Write`), which is the storage module's aliasing
                // contract: nobody else writes it, and nobody reads the piece until every
                // block is in and it goes to the hasher.
                unsafe { iovecs.extend(&iov[..n]) };
                RecvTarget::Iovecs
            }
            // A duplicate (end-game) or unwanted block: read it into the buffer and drop it.
            Some(p) => RecvTarget::Buffer {
                max: (p.block.len - p.done) as usize,
            },
            None if self.shared.tuning.header_sized_recv && conn.peer.expects_blocks() => {
                RecvTarget::Buffer {
                    max: PIECE_HEADER_LEN,
                }
            }
            None => RecvTarget::Buffer { max: 0 },
        }
    }

    fn on_bytes(
        &mut self,
        io: &mut CoreIo<'_, NodeMsg>,
        id: ConnId,
        conn: &mut Conn,
        bytes: &[u8],
        now: Instant,
    ) -> Result<usize, CloseReason> {
        if let Some(p) = conn.payload.as_mut() {
            // Only discarded payloads come through the buffer.
            let n = bytes.len().min((p.block.len - p.done) as usize);
            p.done += n as u32;
            if p.done == p.block.len {
                self.finish_payload(io, id, conn, now);
            }
            return Ok(n);
        }
        if conn.peer.wants_more(bytes) {
            // Nothing to decode yet: wait for more bytes without the swarm lock.
            return Ok(0);
        }
        let result = conn
            .peer
            .handle_bytes(self.swarm.get(&self.shared.door), bytes, now);
        self.drain_events(io, id, conn);
        result
    }

    fn on_recv_done(
        &mut self,
        io: &mut CoreIo<'_, NodeMsg>,
        id: ConnId,
        conn: &mut Conn,
        now: Instant,
    ) -> Result<(), CloseReason> {
        // The iovecs may have covered only the start of a block spread over more files
        // than BLOCK_IOVECS; then receive the rest next.
        if let Some(p) = conn.payload.as_mut() {
            let rest = BlockRef {
                piece: p.block.piece,
                offset: p.block.offset + p.done,
                len: p.block.len - p.done,
            };
            let covered: u32 = conn
                .storage
                .spans(rest.piece, rest.offset, rest.len)
                .take(BLOCK_IOVECS)
                .map(|s| s.len)
                .sum();
            p.done += covered;
            if p.done >= p.block.len {
                // A block reached storage: the disk takes writes again.
                if self.shared.write_failures.load(Ordering::Relaxed) != 0 {
                    self.shared.write_failures.store(0, Ordering::Relaxed);
                }
                self.finish_payload(io, id, conn, now);
            }
        }
        Ok(())
    }

    fn next_send(&mut self, conn: &mut Conn, out: &mut SendBuf<'_>, now: Instant) -> bool {
        let before = out.len();
        let swarm = self.swarm.get(&self.shared.door);
        let block = out.write(|buf| conn.peer.poll_transmit(swarm, now, buf));
        if let Some(Transmit::Block { header, block }) = block {
            out.push_bytes(&header);
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BLOCK_IOVECS];
            let mut sent = 0;
            while sent < block.len {
                let rest = BlockRef {
                    piece: block.piece,
                    offset: block.offset + sent,
                    len: block.len - sent,
                };
                let n = conn.storage.block_iovecs(rest, &mut iov);
                for v in &iov[..n] {
                    // SAFETY: the span is inside the mapping `conn.storage` keeps alive
                    // for as long as this Conn, which the runtime drops only after the
                    // send completed. The protocol serves only pieces we verified, and
                    // verified pieces are never written again (storage's contract).
                    unsafe { out.push_span(v.iov_base.cast_const().cast(), v.iov_len) };
                    sent += v.iov_len as u32;
                }
                if n == 0 {
                    break;
                }
            }
            self.shared
                .counters
                .uploaded
                .fetch_add(u64::from(block.len), Ordering::Relaxed);
        }
        out.len() > before
    }

    fn on_mailbox(
        &mut self,
        io: &mut CoreIo<'_, NodeMsg>,
        conns: &mut Conns<'_, Conn, CloseReason>,
        msg: NodeMsg,
        _now: Instant,
    ) {
        match msg {
            // The runtime polls every connection after a mailbox message, which is all a
            // verified piece (have broadcast) or a ban needs.
            NodeMsg::Poll => {}
            NodeMsg::CloseDuplicate { conn: id, peer_id } => {
                // The generation in `id` keeps this from reaching a newer connection in
                // the same slot; the peer id check keeps it to the one it was meant for.
                if let Some(conn) = conns.get_mut(id) {
                    if conn.remote_id == Some(peer_id) {
                        conn.reason = Some(DUPLICATE.into());
                        self.note_same_peer(conn, peer_id);
                        io.close(id);
                    }
                }
            }
        }
    }

    fn on_tick(
        &mut self,
        io: &mut CoreIo<'_, NodeMsg>,
        conns: &mut Conns<'_, Conn, CloseReason>,
        now: Instant,
    ) {
        let mut closing = Vec::new();
        for (_, conn) in conns.iter_mut() {
            let swarm = self.swarm.get(&self.shared.door);
            conn.peer.handle_tick(swarm, now);
            conn.peer.update_paced(swarm);
        }
        for (id, conn) in conns.iter_mut() {
            let pace = conn.peer.pacing(self.swarm.get(&self.shared.door));
            if pace_changed(conn.pace, pace) {
                conn.pace = pace;
                io.set_pacing(id, pace);
            }
            while let Some(ev) = conn.peer.poll_event() {
                match ev {
                    Event::Close(reason) => {
                        conn.reason = Some(reason.to_string());
                        closing.push(id);
                    }
                    Event::PieceComplete(piece) => self.shared.submit_hash(piece),
                    // Handshakes and payloads only follow received bytes.
                    Event::HandshakeDone { .. } | Event::ReceivePayload { .. } => {}
                }
            }
        }
        for id in closing {
            io.close(id);
        }
    }

    fn end_batch(&mut self) {
        self.swarm.release(&self.shared.door);
    }

    fn on_closed(
        &mut self,
        io: &mut CoreIo<'_, NodeMsg>,
        id: ConnId,
        mut conn: Conn,
        reason: CloseCause<CloseReason>,
    ) {
        conn.peer.handle_close(self.swarm.get(&self.shared.door));
        let c = &self.shared.counters;
        c.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = conn.ip_slot {
            self.shared.per_ip.lock().release(ip, conn.handshaking);
        }
        if conn.outbound {
            self.shared.dialled.lock().remove(&conn.peer.addr());
        }
        if conn.registered {
            c.peers.fetch_sub(1, Ordering::Relaxed);
            if let Some(peer_id) = conn.remote_id {
                let mut ids = self.shared.peer_ids.lock();
                // Only if the entry still names this connection: a duplicate that won
                // replaced it.
                if ids
                    .get(&peer_id)
                    .is_some_and(|r| r.core == io.core() && r.conn == id)
                {
                    ids.remove(&peer_id);
                }
            }
        }
        let why = conn.reason.take().unwrap_or_else(|| reason.to_string());
        self.shared.log_close(conn.peer.addr(), &why);
        if let CloseCause::Storage(error) = reason {
            self.note_write_failure(&conn, error);
        }
    }
}

impl PeerService {
    /// Counts a failed write of received payload; at [`MAX_WRITE_FAILURES`] in a row
    /// hands the control loop the error that ends the download, naming the file.
    fn note_write_failure(&self, conn: &Conn, error: std::io::Error) {
        let failures = self.shared.write_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < MAX_WRITE_FAILURES {
            return;
        }
        let storage = &conn.storage;
        let file = conn.payload.as_ref().and_then(|p| {
            let offset = p.block.offset + p.done;
            let span = storage.spans(p.block.piece, offset, p.block.len - p.done);
            span.into_iter().next().map(|s| s.file)
        });
        let path = match file.and_then(|f| storage.files().get(f)) {
            Some(spec) => storage.root().join(&spec.path),
            None => storage.root().to_path_buf(),
        };
        let mut slot = self.shared.write_failed.lock();
        if slot.is_none() {
            *slot = Some(NodeError::StorageWrite {
                path,
                failures,
                // Filled in by the control loop, which knows the verified count.
                have: 0,
                total: 0,
                error,
            });
        }
    }
}
