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
//!
//! Here: the handles callbacks get (`CoreIo`, `RecvIovecs`, `SendBuf`, `Conns`), the slab
//! entry, the loop and its core-level operations (accept, mailbox, tick). `data_path`:
//! receives and sends; `lifecycle`: opening and closing connections.
//!
//! This file stays a little over the ~700-line guide (about 740 lines before its tests):
//! what is left is the `Core` struct, its callback handles and the loop itself, which read
//! best together; the parts with their own concern already live in the two children.

use super::mailbox::{Envelope, Inbox, Mailbox};
use super::net::{self, RawAddr};
use super::ops::{self, vectored::IoVecs, ConnOp, Token};
use super::send_path::{Pipe, SendCounters, SendPath};
use super::{CloseCause, ConnId, Direction, RecvTarget, RuntimeConfig, RuntimeError, Service};
use crossbeam_channel::Sender;
use io_uring::{cqueue, squeue, types, IoUring};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

mod data_path;
mod lifecycle;

/// What a callback asked the loop to do once it returns.
#[derive(Debug)]
enum Action {
    Dial(SocketAddr),
    Close(ConnId),
    Wake(ConnId),
    Pace(ConnId, Option<u64>),
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

    /// Cap connection `id`'s sending rate at `bytes_per_sec` (`None`: no cap), paced by
    /// the kernel (`SO_MAX_PACING_RATE`), so a service can share an uplink between
    /// connections the way it wants rather than the way TCP would.
    pub fn set_pacing(&mut self, id: ConnId, bytes_per_sec: Option<u64>) {
        self.actions.push(Action::Pace(id, bytes_per_sec));
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
    /// `recv_iov` holds a [`RecvTarget::Iovecs`] target that is only partly filled and
    /// whose rest comes through the buffer (its spans are in a file, see `data_path`):
    /// the loop keeps filling it instead of asking the service for a new target.
    iov_open: bool,
    recv_iov: IoVecs,
    recv_msg: libc::msghdr,
    send_bytes: Vec<u8>,
    send_segs: Vec<Seg>,
    send_iov: IoVecs,
    send_msg: libc::msghdr,
    addr: RawAddr,
    /// Uploads to this remote are spliced when they carry file payload (the send path
    /// setting, decided when the connection opens).
    splices: bool,
    /// The pipe splices go through, made at the first spliced send.
    pipe: Option<Pipe>,
    /// Uploads go by `SENDMSG_ZC` ([`SendPath::ZeroCopy`]).
    zc: bool,
    /// Zero-copy notifications still to come: until they have, the kernel may read the
    /// batch's memory (`send_bytes`, the spans), so `send_inflight` stays set.
    zc_pending: u32,
    /// The zero-copy batch is all in the socket; it finishes when `zc_pending` is zero.
    zc_sent_all: bool,
    /// The send in flight is a splice chain; `spliced` of its bytes are in the pipe or
    /// gone to the socket, `drain` still wait in the pipe for the socket.
    send_spliced: bool,
    drain: usize,
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
    /// This host's addresses (for [`SendPath::Auto`]).
    local_ips: Vec<std::net::IpAddr>,
    counters: Arc<SendCounters>,
}

const MAX_DRAIN: usize = 4096;
const MAX_DRIVE_STEPS: usize = 1024;
const MAX_SEND_SEGS: usize = 512;

fn is_transient(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EINTR || errno == libc::ENOBUFS
}

/// What a core is connected to: its inbox, every core's mailbox, its listener, the
/// runtime's send counters.
pub(super) struct Ends<M> {
    pub(super) inbox: Inbox<M>,
    pub(super) mailboxes: Vec<Mailbox<M>>,
    pub(super) listener: Option<OwnedFd>,
    pub(super) counters: Arc<SendCounters>,
}

/// Thread body of core `index`: set up the ring, report readiness, run until shutdown.
pub(super) fn run<S: Service>(
    index: usize,
    config: RuntimeConfig,
    service: S,
    ends: Ends<S::Msg>,
    ready: Sender<Result<(), RuntimeError>>,
) -> Result<S, RuntimeError> {
    let Ends {
        inbox,
        mailboxes,
        listener,
        counters,
    } = ends;
    // Which remotes are this host, for `SendPath::Auto`; read once (an address added
    // later counts as another host's, and is spliced to: correct, only not the cheapest).
    let local_ips = if config.send_path == SendPath::Auto {
        net::local_ips().unwrap_or_default()
    } else {
        Vec::new()
    };
    let ring = match build_ring(config.ring_entries, config.send_path == SendPath::Copy) {
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
        local_ips,
        counters,
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
///
/// Not DEFER_TASKRUN where uploads may be spliced (`defer` false): on such a ring every
/// completion on an io-wq worker goes to the submitter as task work and wakes it, even
/// one whose CQE is skipped, so each step of a splice chain (two per 16 KiB block) woke
/// the core: the seeder spent 0.88 CPU s/GiB splicing against 0.42 copying (512 MiB over
/// loopback, perf: a fifth of its samples in context switches). Without it, a worker
/// posts CQEs itself, a skipped one not at all, and the core wakes once per chain.
fn build_ring(entries: u32, defer: bool) -> io::Result<IoUring> {
    if defer {
        let full = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries);
        if let Ok(r) = full {
            return Ok(r);
        }
    }
    if let Ok(r) = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
    {
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
                    Action::Pace(id, rate) => {
                        if let Some(Some(e)) = self.slots.get(id.slot as usize) {
                            if e.id == id {
                                // A socket that refuses the option keeps sending unpaced,
                                // which is all pacing could change.
                                let _ = net::set_max_pacing_rate(e.fd, rate);
                            }
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
            Token::Conn { slot, op } => self.complete_conn(slot, op, res, flags),
        }
    }

    fn complete_conn(&mut self, slot: u32, op: ConnOp, res: i32, flags: u32) {
        if op == ConnOp::Fill {
            // Counted in flight as the chain it ends (see `fill_done`).
            self.fill_done(slot, res);
            return;
        }
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
                    let fd = e.fd;
                    self.tune_socket(fd);
                    self.open(slot);
                }
            }
            ConnOp::ConnectTimeout | ConnOp::Cancel => {}
            ConnOp::Close => {
                self.release(slot);
                return;
            }
            ConnOp::Recv => self.recv_done(slot, res),
            ConnOp::Send if cqueue::notif(flags) => self.zc_notif_done(slot, res),
            ConnOp::Send => {
                if cqueue::more(flags) {
                    // A zero-copy send's notification follows: count it in flight.
                    e.inflight += 1;
                    e.zc_pending += 1;
                }
                self.send_done(slot, res)
            }
            ConnOp::Fill => {}
        }
        self.maybe_finish_close(slot);
    }
}
