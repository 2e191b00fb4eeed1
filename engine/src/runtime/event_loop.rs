//! One core's event loop: a ring, a slab of connections, the service, the mailbox.
//!
//! Each iteration drives the connections marked dirty (asking the service where to receive
//! and what to send, submitting at most one receive and one send per connection), carries out
//! the actions callbacks queued (dial, close, wake), then submits and waits for completions
//! and dispatches each by its `user_data` token.
//!
//! Teardown of a connection: mark it closing, cancel its in-flight operations, wait for all
//! their completions, close the socket through the ring, and only after that completion free
//! the slab entry (with its buffers) and hand the service's state back via `on_closed`.

use super::mailbox::{Envelope, Inbox, Mailbox};
use super::net::{self, RawAddr};
use super::ops::{self, vectored::IoVecs, ConnOp, Token};
use super::{CloseCause, ConnId, Direction, RecvTarget, RuntimeConfig, RuntimeError, Service};
use crossbeam_channel::Sender;
use io_uring::{cqueue, squeue, types, IoUring};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// What a callback asked the loop to do once it returns.
#[derive(Debug)]
enum Action {
    Dial(SocketAddr),
    Close(ConnId),
    Wake(ConnId),
}

/// The loop's services to a [`Service`] callback: who am I, reach other cores, dial, close.
pub struct CoreIo<'a, M> {
    core: usize,
    mailboxes: &'a [Mailbox<M>],
    actions: &'a mut Vec<Action>,
}

impl<M> CoreIo<'_, M> {
    /// This core's index.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Every core's mailbox (including this one's), indexed by core.
    pub fn mailboxes(&self) -> &[Mailbox<M>] {
        self.mailboxes
    }

    /// Open a connection to `addr` from this core.
    pub fn dial(&mut self, addr: SocketAddr) {
        self.actions.push(Action::Dial(addr));
    }

    /// Close connection `id` (no effect if it is already gone).
    pub fn close(&mut self, id: ConnId) {
        self.actions.push(Action::Close(id));
    }

    /// Ask the loop to poll `id` for receives and sends again (e.g. it has new data to send).
    pub fn wake(&mut self, id: ConnId) {
        self.actions.push(Action::Wake(id));
    }
}

/// Where a [`RecvTarget::Iovecs`] receive puts the bytes.
pub struct RecvIovecs<'a> {
    iov: &'a mut IoVecs,
}

impl RecvIovecs<'_> {
    /// Receive the next `len` bytes of the stream into `ptr..ptr+len` (after earlier spans).
    ///
    /// # Safety
    /// The memory must be valid for writes of `len` bytes and not read or written by anyone
    /// else until [`Service::on_recv_done`] or [`Service::on_closed`] for this connection; the
    /// simplest way is to keep its owner (e.g. an `Arc` of the mapping) in `Service::Conn`,
    /// which the runtime drops only after the receive completed.
    pub unsafe fn push_span(&mut self, ptr: *mut u8, len: usize) {
        self.iov.push(ptr, len);
    }

    /// [`push_span`](Self::push_span) for each iovec (e.g. from `Storage::block_iovecs`).
    ///
    /// # Safety
    /// As for [`push_span`](Self::push_span), for every iovec.
    pub unsafe fn extend(&mut self, iovecs: &[libc::iovec]) {
        for v in iovecs {
            self.iov.push(v.iov_base.cast(), v.iov_len);
        }
    }

    /// Bytes requested so far.
    pub fn len(&self) -> usize {
        self.iov.remaining()
    }

    /// Whether nothing was requested yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy)]
enum Seg {
    Bytes { start: usize, end: usize },
    Span { ptr: *const u8, len: usize },
}

/// What one `sendmsg` will write: bytes the service writes here, interleaved with raw spans.
pub struct SendBuf<'a> {
    bytes: &'a mut Vec<u8>,
    segs: &'a mut Vec<Seg>,
    len: usize,
}

impl SendBuf<'_> {
    /// Let `f` append bytes (e.g. `PeerConn::poll_transmit(swarm, buf)`); they are sent in order
    /// with the spans pushed around them.
    pub fn write<R>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let start = self.bytes.len();
        let r = f(self.bytes);
        let end = self.bytes.len();
        if end > start {
            self.len += end - start;
            match self.segs.last_mut() {
                Some(Seg::Bytes { end: last_end, .. }) if *last_end == start => *last_end = end,
                _ => self.segs.push(Seg::Bytes { start, end }),
            }
        }
        r
    }

    /// Append `bytes` (copied into the connection's send buffer).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.write(|v| v.extend_from_slice(bytes));
    }

    /// Send `len` bytes from `ptr` next, without copying (e.g. a block from the mapping).
    ///
    /// # Safety
    /// The memory must be valid for reads of `len` bytes and not written until
    /// [`Service::on_send_done`] or [`Service::on_closed`] for this connection; keep its owner
    /// in `Service::Conn`, which the runtime drops only after the send completed.
    pub unsafe fn push_span(&mut self, ptr: *const u8, len: usize) {
        if len > 0 {
            self.segs.push(Seg::Span { ptr, len });
            self.len += len;
        }
    }

    /// Bytes queued so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    Closing,
}

/// One connection's state and every piece of memory its in-flight operations reference.
/// Boxed, so the addresses handed to the kernel stay put while the slab grows.
struct Entry<C, E> {
    id: ConnId,
    fd: RawFd,
    peer: SocketAddr,
    direction: Direction,
    state: State,
    conn: Option<C>,
    reason: Option<CloseCause<E>>,
    inflight: u32,
    connecting: bool,
    recv_inflight: bool,
    send_inflight: bool,
    close_submitted: bool,
    dirty: bool,
    /// Receive buffer: `rx[rx_start..rx_end]` is received but not yet consumed.
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// `on_bytes` consumed nothing from the current buffer content: wait for more bytes.
    rx_stalled: bool,
    /// The in-flight receive targets `recv_iov` (else the buffer).
    recv_into_iovecs: bool,
    recv_iov: IoVecs,
    recv_msg: libc::msghdr,
    send_bytes: Vec<u8>,
    send_segs: Vec<Seg>,
    send_iov: IoVecs,
    send_msg: libc::msghdr,
    addr: RawAddr,
}

/// The connections of a core, as seen by `on_mailbox` and `on_tick`.
pub struct Conns<'a, C, E> {
    slots: &'a mut [Option<Box<Entry<C, E>>>],
}

impl<C, E> Conns<'_, C, E> {
    /// The open connection `id`, if it still exists.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut C> {
        let e = self.slots.get_mut(id.slot as usize)?.as_mut()?;
        if e.id != id || e.state != State::Open {
            return None;
        }
        e.conn.as_mut()
    }

    /// Every open connection.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut C)> + '_ {
        self.slots.iter_mut().filter_map(|s| {
            let e = s.as_mut()?;
            if e.state != State::Open {
                return None;
            }
            let id = e.id;
            e.conn.as_mut().map(|c| (id, c))
        })
    }
}

/// A core's connection slab: boxed entries so kernel-visible addresses never move.
type Slots<C, E> = Vec<Option<Box<Entry<C, E>>>>;

/// The disjoint borrows a callback needs: the service, its `CoreIo`, the connections.
type Parts<'a, S> = (
    &'a mut S,
    CoreIo<'a, <S as Service>::Msg>,
    &'a mut Slots<<S as Service>::Conn, <S as Service>::Error>,
);

struct Core<S: Service> {
    index: usize,
    config: RuntimeConfig,
    ring: IoUring,
    service: S,
    slots: Slots<S::Conn, S::Error>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    inbox: Inbox<S::Msg>,
    mailboxes: Vec<Mailbox<S::Msg>>,
    listener: Option<OwnedFd>,
    actions: Vec<Action>,
    dirty: Vec<u32>,
    /// Memory of core-level operations; boxed so it outlives moves of `Core`.
    bell_buf: Box<u64>,
    tick_ts: Box<types::Timespec>,
    connect_ts: Box<types::Timespec>,
    accept_armed: bool,
    accept_multishot: bool,
    mailbox_armed: bool,
    tick_armed: bool,
    /// Core-level operations in flight (accept, mailbox read, tick, their cancels).
    core_inflight: usize,
    /// Messages may remain in the inbox: drain again before blocking.
    inbox_pending: bool,
    shutting_down: Option<Instant>,
    /// When the kernel last handed back completions: the `now` of every callback of the
    /// batch they start.
    now: Instant,
    /// SQEs that did not fit in the submission queue, in order.
    backlog: std::collections::VecDeque<Vec<squeue::Entry>>,
}

const MAX_DRAIN: usize = 4096;
const MAX_DRIVE_STEPS: usize = 1024;
const MAX_SEND_SEGS: usize = 512;

fn is_transient(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EINTR || errno == libc::ENOBUFS
}

/// Thread body of core `index`: set up the ring, report readiness, run until shutdown.
pub(super) fn run<S: Service>(
    index: usize,
    config: RuntimeConfig,
    service: S,
    inbox: Inbox<S::Msg>,
    mailboxes: Vec<Mailbox<S::Msg>>,
    listener: Option<OwnedFd>,
    ready: Sender<Result<(), RuntimeError>>,
) -> Result<S, RuntimeError> {
    let ring = match build_ring(config.ring_entries) {
        Ok(r) => r,
        Err(source) => {
            let err = || RuntimeError::Core {
                core: index,
                what: "create io_uring",
                source: io::Error::from(source.kind()),
            };
            let _ = ready.send(Err(err()));
            return Err(RuntimeError::Core {
                core: index,
                what: "create io_uring",
                source,
            });
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut core = Core {
        index,
        tick_ts: Box::new(config.tick.map(types::Timespec::from).unwrap_or_default()),
        connect_ts: Box::new(types::Timespec::from(config.connect_timeout)),
        config,
        ring,
        service,
        slots: Vec::new(),
        generations: Vec::new(),
        free: Vec::new(),
        live: 0,
        inbox,
        mailboxes,
        listener,
        actions: Vec::new(),
        dirty: Vec::new(),
        bell_buf: Box::new(0),
        accept_armed: false,
        accept_multishot: true,
        mailbox_armed: false,
        tick_armed: false,
        core_inflight: 0,
        inbox_pending: true,
        shutting_down: None,
        now: Instant::now(),
        backlog: std::collections::VecDeque::new(),
    };
    core.arm_accept();
    core.arm_mailbox();
    core.arm_tick();
    // A panicking service must not unwind through `Core`: dropping it would free buffers that
    // operations still in flight reference. The panic is caught and the core leaked like on
    // a shutdown timeout, so the runtime reports it and nothing is freed under the kernel.
    let looped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.run_loop()));
    // What the service holds for its batch (a lock other threads wait on) is let go even
    // when the core is leaked below, or a panic here would hang every other thread.
    let released =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.service.end_batch()));
    let (Ok(looped), Ok(())) = (looped, released) else {
        std::mem::forget(core);
        return Err(RuntimeError::Panicked { core: index });
    };
    match looped {
        Ok(()) => Ok(core.service),
        Err(e) => {
            // Operations may still reference the core's buffers: leak them rather than free
            // memory the kernel might write to.
            let index = core.index;
            std::mem::forget(core);
            Err(match e {
                LoopError::Leaked(inflight) => RuntimeError::ShutdownTimeout {
                    core: index,
                    inflight,
                },
                LoopError::Io(source) => RuntimeError::Core {
                    core: index,
                    what: "io_uring_enter",
                    source,
                },
            })
        }
    }
}

/// A ring with the cheapest completion mode the kernel offers: one submitter thread
/// (SINGLE_ISSUER, 6.0), task work deferred to our own `io_uring_enter` (DEFER_TASKRUN, 6.1) or
/// at least not interrupting us (COOP_TASKRUN, 5.19); plain rings on older kernels.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    let full = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries);
    if let Ok(r) = full {
        return Ok(r);
    }
    if let Ok(r) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
    {
        return Ok(r);
    }
    IoUring::builder().setup_cqsize(entries * 4).build(entries)
}

enum LoopError {
    Io(io::Error),
    Leaked(usize),
}

impl<S: Service> Core<S> {
    /// Push SQEs as one unit (a linked pair stays adjacent), submitting first if the queue is
    /// full; if it still is (the kernel is not consuming, e.g. EBUSY on a full completion
    /// queue), park them in the backlog, flushed in order before the loop next enters.
    ///
    /// # Safety
    /// All memory the entries reference must stay valid until their completions are reaped.
    unsafe fn push(&mut self, entries: &[squeue::Entry]) {
        if self.backlog.is_empty() {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push_multiple(entries) }.is_ok() {
                return;
            }
            // Errors are the loop's business: its own submit sees them again.
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push_multiple(entries) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(entries.to_vec());
    }

    /// Move parked SQEs into the submission queue, in order, while they fit.
    fn flush_backlog(&mut self) {
        while let Some(group) = self.backlog.front() {
            // SAFETY: parked by `push`, whose callers guaranteed the memory's lifetime.
            if unsafe { self.ring.submission().push_multiple(group) }.is_err() {
                return;
            }
            self.backlog.pop_front();
        }
    }

    fn arm_accept(&mut self) {
        let Some(fd) = self.listener.as_ref().map(|l| l.as_raw_fd()) else {
            return;
        };
        if self.accept_armed || self.shutting_down.is_some() {
            return;
        }
        let ud = Token::Accept.encode();
        let entry = if self.accept_multishot {
            ops::accept::accept_multi(fd, ud)
        } else {
            ops::accept::accept_once(fd, ud)
        };
        // SAFETY: accept references no memory (no peer address requested).
        unsafe { self.push(&[entry]) };
        self.accept_armed = true;
        self.core_inflight += 1;
    }

    fn arm_mailbox(&mut self) {
        if self.mailbox_armed || self.shutting_down.is_some() {
            return;
        }
        let buf: *mut u64 = &mut *self.bell_buf;
        let entry = ops::eventfd::read_counter(self.inbox.eventfd(), buf, Token::Mailbox.encode());
        // SAFETY: `bell_buf` is a Box owned by the core, which lives until every core-level
        // operation completed (or is leaked on a shutdown timeout).
        unsafe { self.push(&[entry]) };
        self.mailbox_armed = true;
        self.core_inflight += 1;
    }

    fn arm_tick(&mut self) {
        if self.config.tick.is_none() || self.tick_armed || self.shutting_down.is_some() {
            return;
        }
        let ts: *const types::Timespec = &*self.tick_ts;
        // SAFETY: `tick_ts` is a Box owned by the core (see arm_mailbox).
        unsafe { self.push(&[ops::timeout::timeout(ts, Token::Tick.encode())]) };
        self.tick_armed = true;
        self.core_inflight += 1;
    }

    fn cancel_core(&mut self, target: Token) {
        // SAFETY: a cancel references no memory.
        unsafe {
            self.push(&[ops::close::cancel(
                target.encode(),
                Token::CoreCancel.encode(),
            )])
        };
        self.core_inflight += 1;
    }

    fn io_parts(&mut self) -> Parts<'_, S> {
        let io = CoreIo {
            core: self.index,
            mailboxes: &self.mailboxes,
            actions: &mut self.actions,
        };
        (&mut self.service, io, &mut self.slots)
    }

    fn run_loop(&mut self) -> Result<(), LoopError> {
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(256);
        loop {
            if self.inbox_pending {
                self.drain_inbox();
            }
            self.settle();
            if let Some(deadline) = self.shutting_down {
                if self.live == 0 && self.core_inflight == 0 {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let inflight = self.core_inflight
                        + self
                            .slots
                            .iter()
                            .flatten()
                            .map(|e| e.inflight as usize)
                            .sum::<usize>();
                    return Err(LoopError::Leaked(inflight));
                }
            }
            self.flush_backlog();
            let wait = if self.inbox_pending || !self.dirty.is_empty() {
                0
            } else {
                1
            };
            // The batch is over: the service lets go of what it holds (e.g. the swarm
            // lock) before this thread sleeps in the kernel.
            self.service.end_batch();
            let res = if self.shutting_down.is_some() && wait == 1 {
                // Bounded wait so the shutdown deadline is checked even if nothing completes.
                let ts = types::Timespec::from(std::time::Duration::from_millis(50));
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            } else {
                self.ring.submit_and_wait(wait)
            };
            match res {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::ETIME)
                    ) => {}
                Err(e) => return Err(LoopError::Io(e)),
            }
            self.now = Instant::now();
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(ud, res, flags) in &cqes {
                self.complete(ud, res, flags);
            }
        }
    }

    /// Drive dirty connections and run queued actions until neither is left.
    fn settle(&mut self) {
        for _ in 0..MAX_DRIVE_STEPS {
            if self.dirty.is_empty() && self.actions.is_empty() {
                return;
            }
            for action in std::mem::take(&mut self.actions) {
                match action {
                    Action::Dial(addr) => self.dial(addr),
                    Action::Close(id) => {
                        if self.valid(id) {
                            self.begin_close(id.slot, CloseCause::Local);
                        }
                    }
                    Action::Wake(id) => {
                        if self.valid(id) {
                            self.mark_dirty(id.slot);
                        }
                    }
                }
            }
            for slot in std::mem::take(&mut self.dirty) {
                if let Some(e) = self.slots.get_mut(slot as usize).and_then(|s| s.as_mut()) {
                    e.dirty = false;
                    self.drive_recv(slot);
                    self.drive_send(slot);
                }
            }
        }
    }

    fn valid(&self, id: ConnId) -> bool {
        matches!(self.slots.get(id.slot as usize), Some(Some(e)) if e.id == id)
    }

    fn mark_dirty(&mut self, slot: u32) {
        if let Some(Some(e)) = self.slots.get_mut(slot as usize) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    fn mark_all_dirty(&mut self) {
        for slot in 0..self.slots.len() as u32 {
            self.mark_dirty(slot);
        }
    }

    fn alloc(&mut self, fd: RawFd, peer: SocketAddr, direction: Direction, state: State) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.generations[slot as usize];
        self.slots[slot as usize] = Some(Box::new(Entry {
            id: ConnId { slot, generation },
            fd,
            peer,
            direction,
            state,
            conn: None,
            reason: None,
            inflight: 0,
            connecting: false,
            recv_inflight: false,
            send_inflight: false,
            close_submitted: false,
            dirty: false,
            rx: vec![0; self.config.recv_buffer.max(64)],
            rx_start: 0,
            rx_end: 0,
            rx_stalled: false,
            recv_into_iovecs: false,
            recv_iov: IoVecs::default(),
            // SAFETY: msghdr is plain old data; all-zero is an empty header.
            recv_msg: unsafe { std::mem::zeroed() },
            send_bytes: Vec::new(),
            send_segs: Vec::new(),
            send_iov: IoVecs::default(),
            // SAFETY: as above.
            send_msg: unsafe { std::mem::zeroed() },
            addr: RawAddr::from_std(peer),
        }));
        self.live += 1;
        slot
    }

    fn entry(&mut self, slot: u32) -> Option<&mut Entry<S::Conn, S::Error>> {
        self.slots.get_mut(slot as usize)?.as_deref_mut()
    }

    /// Push a connection operation and count it in flight.
    ///
    /// # Safety
    /// As for [`Core::push`]; memory must live in the slot's entry (freed only when its
    /// in-flight count is back to zero) or be covered by the service's span contract.
    unsafe fn push_conn(&mut self, slot: u32, entry: squeue::Entry) {
        // SAFETY: forwarded.
        unsafe { self.push(&[entry]) };
        if let Some(e) = self.entry(slot) {
            e.inflight += 1;
        }
    }

    fn dial(&mut self, addr: SocketAddr) {
        if self.shutting_down.is_some() {
            return;
        }
        let fd = match net::tcp_socket(&addr) {
            Ok(fd) => fd.into_raw_fd(),
            Err(err) => {
                let (service, mut io, _) = self.io_parts();
                service.on_connect_failed(&mut io, addr, &err);
                return;
            }
        };
        let slot = self.alloc(fd, addr, Direction::Outbound, State::Connecting);
        let Some(e) = self.entry(slot) else { return };
        e.connecting = true;
        let (ptr, len) = (e.addr.as_ptr(), e.addr.len);
        let ts: *const types::Timespec = &*self.connect_ts;
        let connect = ops::connect::connect(
            fd,
            ptr,
            len,
            true,
            Token::Conn {
                slot,
                op: ConnOp::Connect,
            }
            .encode(),
        );
        let timeout = ops::timeout::link_timeout(
            ts,
            Token::Conn {
                slot,
                op: ConnOp::ConnectTimeout,
            }
            .encode(),
        );
        // SAFETY: the address lives in the boxed entry, freed only after both completions;
        // `connect_ts` is owned by the core, which outlives every operation. Pushed as one
        // unit so the link is not split across two submissions.
        unsafe { self.push(&[connect, timeout]) };
        if let Some(e) = self.entry(slot) {
            e.inflight += 2;
        }
    }

    fn begin_close(&mut self, slot: u32, reason: CloseCause<S::Error>) {
        let Some(e) = self.entry(slot) else { return };
        if e.state == State::Closing {
            return;
        }
        e.state = State::Closing;
        e.reason.get_or_insert(reason);
        let mut targets = Vec::with_capacity(3);
        if e.connecting {
            targets.push(ConnOp::Connect);
        }
        if e.recv_inflight {
            targets.push(ConnOp::Recv);
        }
        if e.send_inflight {
            targets.push(ConnOp::Send);
        }
        for op in targets {
            let target = Token::Conn { slot, op }.encode();
            // SAFETY: a cancel references no memory.
            unsafe {
                self.push_conn(
                    slot,
                    ops::close::cancel(
                        target,
                        Token::Conn {
                            slot,
                            op: ConnOp::Cancel,
                        }
                        .encode(),
                    ),
                )
            };
        }
        self.maybe_finish_close(slot);
    }

    /// Once nothing of a closing connection is in flight, close its socket through the ring.
    fn maybe_finish_close(&mut self, slot: u32) {
        let Some(e) = self.entry(slot) else { return };
        if e.state != State::Closing || e.inflight > 0 || e.close_submitted {
            return;
        }
        e.close_submitted = true;
        let fd = e.fd;
        // SAFETY: close references no memory.
        unsafe {
            self.push_conn(
                slot,
                ops::close::close(
                    fd,
                    Token::Conn {
                        slot,
                        op: ConnOp::Close,
                    }
                    .encode(),
                ),
            )
        };
    }

    /// The socket is closed and nothing is in flight: free the entry, tell the service.
    fn release(&mut self, slot: u32) {
        let Some(mut e) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.generations[slot as usize] = e.id.generation.wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
        let reason = e.reason.take().unwrap_or(CloseCause::Local);
        let (service, mut io, _) = self.io_parts();
        match e.conn.take() {
            Some(conn) => service.on_closed(&mut io, e.id, conn, reason),
            None if e.direction == Direction::Outbound => {
                let err = match reason {
                    CloseCause::Io(err) => err,
                    other => io::Error::other(other.to_string()),
                };
                service.on_connect_failed(&mut io, e.peer, &err);
            }
            None => {}
        }
    }

    fn drive_recv(&mut self, slot: u32) {
        let now = self.now;
        for _ in 0..MAX_DRIVE_STEPS {
            let max_message = self.config.max_message;
            let recv_buffer = self.config.recv_buffer.max(64);
            let (service, mut io, slots) = self.io_parts();
            let Some(e) = slots.get_mut(slot as usize).and_then(|s| s.as_deref_mut()) else {
                return;
            };
            if e.state != State::Open || e.recv_inflight {
                return;
            }
            let Some(conn) = e.conn.as_mut() else { return };
            let id = e.id;
            e.recv_iov.clear();
            let target = service.next_recv(
                conn,
                &mut RecvIovecs {
                    iov: &mut e.recv_iov,
                },
            );
            match target {
                RecvTarget::Pause => return,
                RecvTarget::Buffer { max } => {
                    if e.rx_end > e.rx_start && !e.rx_stalled {
                        let avail = e.rx_end - e.rx_start;
                        match service.on_bytes(&mut io, id, conn, &e.rx[e.rx_start..e.rx_end], now)
                        {
                            Ok(0) => e.rx_stalled = true,
                            Ok(n) => e.rx_start += n.min(avail),
                            Err(err) => {
                                self.begin_close(slot, CloseCause::Protocol(err));
                                return;
                            }
                        }
                        continue;
                    }
                    settle_rx(&mut e.rx, &mut e.rx_start, &mut e.rx_end, recv_buffer);
                    if e.rx_end == e.rx.len() {
                        if e.rx.len() >= max_message {
                            self.begin_close(slot, CloseCause::MessageTooLarge(max_message));
                            return;
                        }
                        let grown = (e.rx.len() * 2).min(max_message);
                        e.rx.resize(grown, 0);
                    }
                    let mut want = e.rx.len() - e.rx_end;
                    if max > 0 {
                        want = want.min(max);
                    }
                    let want = u32::try_from(want).unwrap_or(u32::MAX);
                    let ptr = e.rx[e.rx_end..].as_mut_ptr();
                    e.recv_into_iovecs = false;
                    e.recv_inflight = true;
                    let fd = e.fd;
                    let entry = ops::recv::recv(
                        fd,
                        ptr,
                        want,
                        Token::Conn {
                            slot,
                            op: ConnOp::Recv,
                        }
                        .encode(),
                    );
                    // SAFETY: `rx` lives in the boxed entry and is neither resized nor read
                    // while `recv_inflight` is set; the entry is freed only after completion.
                    unsafe { self.push_conn(slot, entry) };
                    return;
                }
                RecvTarget::Iovecs => {
                    if e.rx_end > e.rx_start {
                        // Bytes that arrived before the service knew they were payload: the
                        // one copy the data path makes, bounded by one buffer receive.
                        let mut copied = 0;
                        let src = &e.rx[e.rx_start..e.rx_end];
                        for v in e.recv_iov.pending() {
                            let n = v.iov_len.min(src.len() - copied);
                            // SAFETY: the service promised (push_span contract) the span is
                            // valid for writes of iov_len bytes and unaliased; `src` is our
                            // own buffer, so the regions do not overlap.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    src[copied..].as_ptr(),
                                    v.iov_base.cast::<u8>(),
                                    n,
                                )
                            };
                            copied += n;
                            if copied == src.len() {
                                break;
                            }
                        }
                        e.recv_iov.advance(copied);
                        e.rx_start += copied;
                    }
                    if e.recv_iov.is_done() {
                        if let Err(err) = service.on_recv_done(&mut io, id, conn, now) {
                            self.begin_close(slot, CloseCause::Protocol(err));
                            return;
                        }
                        continue;
                    }
                    e.recv_iov.fill_msghdr(&mut e.recv_msg);
                    e.recv_into_iovecs = true;
                    e.recv_inflight = true;
                    let msg: *mut libc::msghdr = &mut e.recv_msg;
                    let entry = ops::recv::recvmsg(
                        e.fd,
                        msg,
                        Token::Conn {
                            slot,
                            op: ConnOp::Recv,
                        }
                        .encode(),
                    );
                    // SAFETY: the msghdr and iovec array live in the boxed entry, untouched
                    // while `recv_inflight`; the spans are covered by push_span's contract
                    // (the service's Conn, which owns them, is dropped only after completion).
                    unsafe { self.push_conn(slot, entry) };
                    return;
                }
            }
        }
        // Too many steps without blocking on I/O: continue in the next iteration.
        self.mark_dirty(slot);
    }

    fn drive_send(&mut self, slot: u32) {
        let batch = self.config.send_batch;
        let now = self.now;
        let (service, _io, slots) = self.io_parts();
        let Some(e) = slots.get_mut(slot as usize).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        if e.state != State::Open || e.send_inflight {
            return;
        }
        let Some(conn) = e.conn.as_mut() else { return };
        e.send_bytes.clear();
        e.send_segs.clear();
        let mut out = SendBuf {
            bytes: &mut e.send_bytes,
            segs: &mut e.send_segs,
            len: 0,
        };
        while out.len < batch && out.segs.len() < MAX_SEND_SEGS {
            if !service.next_send(conn, &mut out, now) {
                break;
            }
        }
        if out.len == 0 {
            return;
        }
        e.send_iov.clear();
        for seg in &e.send_segs {
            match *seg {
                Seg::Bytes { start, end } => e
                    .send_iov
                    .push(e.send_bytes[start..end].as_ptr().cast_mut(), end - start),
                Seg::Span { ptr, len } => e.send_iov.push(ptr.cast_mut(), len),
            }
        }
        e.send_iov.fill_msghdr(&mut e.send_msg);
        e.send_inflight = true;
        let msg: *const libc::msghdr = &e.send_msg;
        let entry = ops::send::sendmsg(
            e.fd,
            msg,
            Token::Conn {
                slot,
                op: ConnOp::Send,
            }
            .encode(),
        );
        // SAFETY: msghdr, iovec array and `send_bytes` live in the boxed entry and are not
        // modified while `send_inflight`; spans are covered by push_span's contract.
        unsafe { self.push_conn(slot, entry) };
    }

    fn drain_inbox(&mut self) {
        self.inbox_pending = false;
        let now = self.now;
        for _ in 0..MAX_DRAIN {
            let Some(msg) = self.inbox.try_recv() else {
                return;
            };
            match msg {
                Envelope::Dial(addr) => self.dial(addr),
                Envelope::Shutdown => self.begin_shutdown(),
                Envelope::User(m) => {
                    let (service, mut io, slots) = self.io_parts();
                    service.on_mailbox(&mut io, &mut Conns { slots }, m, now);
                    self.mark_all_dirty();
                }
            }
        }
        self.inbox_pending = true;
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        self.shutting_down = Some(Instant::now() + self.config.shutdown_timeout);
        if self.accept_armed {
            self.cancel_core(Token::Accept);
        }
        if self.mailbox_armed {
            self.cancel_core(Token::Mailbox);
        }
        if self.tick_armed {
            self.cancel_core(Token::Tick);
        }
        for slot in 0..self.slots.len() as u32 {
            self.begin_close(slot, CloseCause::Shutdown);
        }
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some(token) = Token::decode(user_data) else {
            debug_assert!(false, "unknown user_data {user_data:#x}");
            return;
        };
        match token {
            Token::Accept => self.on_accept(res, flags),
            Token::Mailbox => {
                self.mailbox_armed = false;
                self.core_inflight -= 1;
                self.inbox_pending = true;
                self.arm_mailbox();
            }
            Token::Tick => {
                self.tick_armed = false;
                self.core_inflight -= 1;
                if res == -libc::ETIME && self.shutting_down.is_none() {
                    let now = self.now;
                    let (service, mut io, slots) = self.io_parts();
                    service.on_tick(&mut io, &mut Conns { slots }, now);
                    self.mark_all_dirty();
                    self.arm_accept();
                }
                self.arm_tick();
            }
            Token::CoreCancel => self.core_inflight -= 1,
            Token::Conn { slot, op } => self.complete_conn(slot, op, res),
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
            self.core_inflight -= 1;
        }
        if res < 0 {
            let errno = -res;
            if errno == libc::EINVAL && self.accept_multishot {
                // Kernel without multishot accept (< 5.19): fall back to one SQE per accept.
                self.accept_multishot = false;
                self.arm_accept();
            } else if is_transient(errno) || errno == libc::ECONNABORTED {
                self.arm_accept();
            }
            // Other errors (EMFILE, ECANCELED...): re-armed on the next tick, if any.
            return;
        }
        if !self.accept_armed {
            self.arm_accept();
        }
        let fd = res;
        if self.shutting_down.is_some() {
            // SAFETY: `fd` was just accepted and is owned by nobody else.
            unsafe { libc::close(fd) };
            return;
        }
        let peer = match net::peer_addr(fd) {
            Ok(p) => p,
            Err(_) => {
                // The peer is already gone (ENOTCONN): nothing to serve.
                // SAFETY: as above.
                unsafe { libc::close(fd) };
                return;
            }
        };
        let _ = net::set_nodelay(fd);
        let slot = self.alloc(fd, peer, Direction::Inbound, State::Open);
        self.open(slot);
    }

    /// Ask the service to take the connection in `slot`; closes it if refused.
    fn open(&mut self, slot: u32) {
        let now = self.now;
        let (service, mut io, slots) = self.io_parts();
        let Some(e) = slots.get_mut(slot as usize).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        match service.on_connected(&mut io, e.id, e.peer, e.direction, now) {
            Some(conn) => {
                e.conn = Some(conn);
                e.state = State::Open;
                self.mark_dirty(slot);
            }
            None => self.begin_close(slot, CloseCause::Local),
        }
    }

    fn complete_conn(&mut self, slot: u32, op: ConnOp, res: i32) {
        let Some(e) = self.entry(slot) else {
            debug_assert!(false, "completion for free slot {slot}");
            return;
        };
        e.inflight -= 1;
        match op {
            ConnOp::Connect => {
                e.connecting = false;
                if e.state == State::Closing {
                } else if res < 0 {
                    let err = if res == -libc::ECANCELED {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connect to {} timed out", e.peer),
                        )
                    } else {
                        io::Error::from_raw_os_error(-res)
                    };
                    self.begin_close(slot, CloseCause::Io(err));
                } else {
                    let _ = net::set_nodelay(e.fd);
                    self.open(slot);
                }
            }
            ConnOp::ConnectTimeout | ConnOp::Cancel => {}
            ConnOp::Close => {
                self.release(slot);
                return;
            }
            ConnOp::Recv => self.recv_done(slot, res),
            ConnOp::Send => self.send_done(slot, res),
        }
        self.maybe_finish_close(slot);
    }

    fn recv_done(&mut self, slot: u32, res: i32) {
        let now = self.now;
        let (service, mut io, slots) = self.io_parts();
        let Some(e) = slots.get_mut(slot as usize).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        e.recv_inflight = false;
        if e.state != State::Open {
            return;
        }
        let id = e.id;
        if res < 0 {
            if is_transient(-res) {
                // Resubmit the same target: the iovec cursor is unchanged, the buffer too.
                self.resubmit_recv(slot);
            } else {
                self.begin_close(slot, CloseCause::Io(io::Error::from_raw_os_error(-res)));
            }
            return;
        }
        if res == 0 {
            self.begin_close(slot, CloseCause::PeerClosed);
            return;
        }
        let n = res as usize;
        if e.recv_into_iovecs {
            if !e.recv_iov.advance(n) {
                self.begin_close(
                    slot,
                    CloseCause::Io(io::Error::other(
                        "kernel reported more bytes than requested",
                    )),
                );
                return;
            }
            if !e.recv_iov.is_done() {
                // Short read: receive the rest into the remaining spans.
                self.resubmit_recv(slot);
                return;
            }
            let Some(conn) = e.conn.as_mut() else { return };
            if let Err(err) = service.on_recv_done(&mut io, id, conn, now) {
                self.begin_close(slot, CloseCause::Protocol(err));
                return;
            }
        } else {
            e.rx_end = (e.rx_end + n).min(e.rx.len());
            e.rx_stalled = false;
        }
        self.mark_dirty(slot);
    }

    /// Submit the pending receive again (after a short read or a transient error).
    fn resubmit_recv(&mut self, slot: u32) {
        let Some(e) = self.entry(slot) else { return };
        if !e.recv_into_iovecs {
            // A buffer receive is never resumed as is: drive_recv decides afresh.
            self.mark_dirty(slot);
            return;
        }
        e.recv_iov.fill_msghdr(&mut e.recv_msg);
        let entry = ops::recv::recvmsg(
            e.fd,
            &mut e.recv_msg,
            Token::Conn {
                slot,
                op: ConnOp::Recv,
            }
            .encode(),
        );
        e.recv_inflight = true;
        // SAFETY: as in drive_recv: memory in the boxed entry or under push_span's contract.
        unsafe { self.push_conn(slot, entry) };
    }

    fn send_done(&mut self, slot: u32, res: i32) {
        let now = self.now;
        let (service, mut io, slots) = self.io_parts();
        let Some(e) = slots.get_mut(slot as usize).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        e.send_inflight = false;
        if e.state != State::Open {
            return;
        }
        let id = e.id;
        if res < 0 && !is_transient(-res) {
            self.begin_close(slot, CloseCause::Io(io::Error::from_raw_os_error(-res)));
            return;
        }
        if res == 0 && e.send_iov.remaining() > 0 {
            self.begin_close(
                slot,
                CloseCause::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "sendmsg wrote nothing",
                )),
            );
            return;
        }
        if res > 0 && !e.send_iov.advance(res as usize) {
            self.begin_close(
                slot,
                CloseCause::Io(io::Error::other(
                    "kernel reported more bytes than requested",
                )),
            );
            return;
        }
        if !e.send_iov.is_done() {
            // Short write (or EAGAIN): send the remainder.
            e.send_iov.fill_msghdr(&mut e.send_msg);
            e.send_inflight = true;
            let entry = ops::send::sendmsg(
                e.fd,
                &e.send_msg,
                Token::Conn {
                    slot,
                    op: ConnOp::Send,
                }
                .encode(),
            );
            // SAFETY: as in drive_send.
            unsafe { self.push_conn(slot, entry) };
            return;
        }
        let Some(conn) = e.conn.as_mut() else { return };
        if let Err(err) = service.on_send_done(&mut io, id, conn, now) {
            self.begin_close(slot, CloseCause::Protocol(err));
            return;
        }
        self.mark_dirty(slot);
    }
}

/// Before the next receive into a connection's buffer: moves unconsumed bytes to the front,
/// and gives back what the buffer grew by for one big message (up to `max_message`) once
/// what is left fits the normal size again, so every connection does not keep its
/// largest message's worth for good.
fn settle_rx(rx: &mut Vec<u8>, start: &mut usize, end: &mut usize, base: usize) {
    if *start == *end {
        *start = 0;
        *end = 0;
    } else if *start > 0 {
        rx.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
    if rx.len() > base && *end <= base {
        rx.truncate(base);
        rx.shrink_to_fit();
    }
}

#[cfg(test)]
mod settle_tests {
    use super::settle_rx;

    #[test]
    fn a_grown_receive_buffer_shrinks_back_once_its_content_fits() {
        let base = 64 * 1024;
        // Grown to 1 MiB for a big message, 100 unconsumed bytes left at its end.
        let mut rx = vec![0u8; 1 << 20];
        rx[(1 << 20) - 100..].fill(7);
        let (mut start, mut end) = ((1 << 20) - 100, 1 << 20);
        settle_rx(&mut rx, &mut start, &mut end, base);
        assert_eq!((start, end), (0, 100));
        assert_eq!(rx.len(), base);
        assert!(rx.capacity() < 1 << 20);
        assert!(rx[..100].iter().all(|&b| b == 7));
        // Still filling a big message: not shrunk.
        let mut rx = vec![0u8; 1 << 20];
        let (mut start, mut end) = (0, base + 1);
        settle_rx(&mut rx, &mut start, &mut end, base);
        assert_eq!(rx.len(), 1 << 20);
        // A normal buffer, emptied, is left alone.
        let mut rx = vec![0u8; base];
        let (mut start, mut end) = (10, 10);
        settle_rx(&mut rx, &mut start, &mut end, base);
        assert_eq!((start, end, rx.len()), (0, 0, base));
    }
}
