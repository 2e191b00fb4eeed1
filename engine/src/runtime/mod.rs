//! runtime: thread-per-core io_uring event loops that drive connection state machines.
//!
//! Each core is one thread with its own `IoUring`, its own [`Service`] (the per-core state and
//! its connections) and its own `SO_REUSEPORT` listener: the kernel spreads incoming
//! connections over the cores' listeners and a connection never migrates, so sockets, buffers
//! and connection state are never shared. The runtime itself shares nothing between cores
//! except their [`Mailbox`]es (crossbeam channel + an eventfd the ring keeps a read
//! outstanding on). A service may share state across its cores: the node's swarm is one
//! lock for all of them, which the core lets its service take once per batch of completions
//! ([`Service::end_batch`] is where the service releases it, before the core waits).
//!
//! The runtime is generic: it knows sockets and buffers, not BitTorrent. A [`Service`] says
//! where the next received bytes go ([`RecvTarget`]: the connection's own buffer for protocol
//! messages, or caller-provided iovecs, e.g. spans of a memory-mapped file for block payload)
//! and what to send next ([`SendBuf`]: bytes it writes plus raw spans, e.g. a block straight
//! from the mapping after its message header), and reacts to completions.
//!
//! Memory safety with io_uring: the kernel reads and writes buffers after submission, so every
//! buffer, iovec array and msghdr of a connection lives in its boxed slab entry, which is freed
//! only after the last in-flight operation of that connection completed, even when the
//! connection is torn down early (tokio-uring's `Lifecycle::Ignored`). Spans provided by the
//! service must stay valid as long as its per-connection state (`Service::Conn`) lives; the
//! runtime drops that state only after the connection's last completion.
//!
//! Receiving payload into files: a span inside a file mapping registered with
//! [`crate::storage::files`] (a download's files) is not received into through the
//! mapping but through the connection's buffer and `pwrite` on the file. That is one more
//! copy, and cheaper than what it replaces: a store into a fresh page of a shared file
//! mapping takes a write fault per 4 KiB page (on ext4: read in as zeros, buffer heads,
//! dirty accounting), and msync then write-protects every mapped page again with TLB
//! shoot-downs. Measured on this 2-core VM, 1 GiB over loopback, 5 runs each, the
//! binary before and after back to back (`corvid-bench link --size 1GiB --runs 5
//! --methods iperf3,ceiling,corvid`, `benches/runs/2026-11-29-vm/link-{before,after}`):
//! peer CPU 1.95 -> 1.26 s/GiB (profile: 2.13 -> 1.27 s of samples, the prefault thread
//! and every write fault gone), seeder 0.25 -> 0.20, time 1.66 -> 1.15 s (81% -> 101%
//! of the measured ceiling); over veth (`link-veth-{before,after}`) peer 2.13 -> 1.55,
//! seeder 0.35 -> 0.30, 62% -> 74% of the ceiling. The rest of a block is gathered in
//! the buffer and written with one pwrite: on a 100 Mbit/s fleet (`corvid-bench fleet
//! --peers 8 --rate 100mbit --size 64MiB --piece-size 256KiB`, `fleet-pwrite-*`) a pwrite
//! per receive (a packet or two) left each peer at 0.48 CPU s for its 64 MiB against
//! 0.38-0.42 before the change; gathered, 0.33-0.37, time 1.31-1.37x S/C against
//! 1.32-1.34x. Tried and dropped: a 256 KiB receive
//! buffer instead of 64 KiB, fewer receives but peer 1.31-1.33 against 1.21-1.24 s/GiB
//! (interleaved, 2 x 3 runs).
//! Not taken earlier (`corvid-bench sendpath`): `MSG_ZEROCOPY`/`SEND_ZC` and sendfile
//! for the seeder, which lose on loopback and veth (the kernel copies zero-copy data
//! delivered to a local socket).
//!
//! The seeder's send path, profiled (`benches/runs/2026-11-29-vm/perf/seed.txt`, 1 GiB over
//! loopback, seeder 0.27 CPU s/GiB against iperf3's sender 0.17 in the committed runs): 83%
//! of its samples are `tcp_sendmsg`, and 52% of all are `_copy_from_iter`, the copy of the
//! block from the page cache into socket memory; the event loop, the protocol and
//! io_uring together are under 8%. The batching the issue suggests is already there: one
//! `sendmsg` gathers headers and mapped spans up to [`RuntimeConfig::send_batch`], and
//! `perf stat` counted 3,285 io_uring requests and 1,484 context switches for the whole GiB
//! (~650 KiB per send), so fewer submissions, completions or wake-ups have little left to
//! take. The gap to iperf3 is the copy's source: iperf3 sends one 128 KiB buffer that stays
//! in cache, the seeder reads each byte of a cold GiB once. Only not copying removes that,
//! and on the two paths this machine has, not copying moves the cost to the receiver: the
//! same day (`benches/runs/2026-11-29-vm/sendpath-loopback.txt`, `corvid-bench sendpath`,
//! CPU s/GiB sender / receiver) copy 0.16 / 0.16, sendfile 0.09 / 0.38, `MSG_ZEROCOPY`
//! (what `SEND_ZC` does) 0.10 / 0.50 with every send copied at delivery, so the seeder keeps
//! `sendmsg` by default. The splice path from the file is there (`--send-path splice|auto`,
//! [`mod@send_path`], with its measurements): on this machine it costs the seeder about
//! a fifth more than copying, not less, so the target (seeder <= iperf3 sender) is not
//! met by it either.
//!
//! Profiled again in session 8 (`benches/runs/2026-11-29-vm/perf-session8`, seeder 0.34
//! against iperf3's sender 0.22 s/GiB in the committed run `link-sendpath-copy-r2`):
//! 28% the copy out of the page cache, 20% page faults mapping the payload's pages
//! (fault-around, 16 pages a fault) and 10% unmapping them at exit, ~35% TCP and the
//! receiver's softirq delivery that loopback runs on the sending core, under 8% io_uring
//! and the loop. Tried against that: reading the payload with `pread` into a
//! per-connection buffer and sending from it, so the mapping is never touched: the faults
//! and the unmap go, but the second copy costs more (seeder CPU s for 1 GiB, interleaved
//! with copy at 0.34-0.51: 0.44-0.55 with a 1 MiB buffer, 0.56-0.74 at 128 KiB, 0.72 at
//! 64 KiB), so it was dropped; and `SENDMSG_ZC` ([`mod@send_path`]), which loopback copies
//! at delivery anyway. What stays between the seeder and iperf3's sender is reading a
//! cold GiB (iperf3 resends one 128 KiB buffer) and the mapping's page-table work.
//!
//! Layout: [`mod@probe`] (can io_uring be used here), `ops` (one file per opcode family),
//! [`mailbox`], `net` (sockets), [`mod@send_path`] (copy, splice or zero-copy uploads), `event_loop`
//! (one core's loop).

mod event_loop;
pub mod mailbox;
mod net;
pub mod ops;
pub mod probe;
pub mod send_path;

pub use event_loop::{Conns, CoreIo, RecvIovecs, SendBuf};
pub use mailbox::{Envelope, Mailbox, MailboxClosed};
pub use net::{local_ip_in, local_ips, Network, NetworkError};
pub use probe::{probe, UringUnavailable};
pub use send_path::{SendCounters, SendPath, UnknownSendPath};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Identifies a connection on its core. Carries a generation, so an id kept after the
/// connection closed never reaches a newer connection that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Slab slot.
    pub slot: u32,
    /// Generation of the slot when this connection was opened.
    pub generation: u32,
}

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Accepted on this core's listener.
    Inbound,
    /// Dialled by this core.
    Outbound,
}

/// Where the next bytes of a connection's stream go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvTarget {
    /// Into the connection's own buffer, then to [`Service::on_bytes`]. `max` caps one
    /// receive (0 = no cap): a service expecting payload right after a short header can ask
    /// for just the header so the payload lands in its iovecs rather than in this buffer.
    Buffer {
        /// Upper bound for one receive, 0 for the buffer's free space.
        max: usize,
    },
    /// Exactly the spans the service pushed into the [`RecvIovecs`], then
    /// [`Service::on_recv_done`]. Bytes already sitting in the connection's buffer are copied
    /// into the spans first (they arrived before the service knew where they belonged); the
    /// rest is received by the kernel straight into the spans. Spans inside a file mapping
    /// registered with [`crate::storage::files`] are the exception: their bytes come
    /// through the buffer (receives as large as it, which also pick up the messages that
    /// follow) and are written with `pwrite` on the file, which is cheaper than storing
    /// into fresh pages of the mapping (that module says by how much).
    Iovecs,
    /// Receive nothing for now (resumes when the connection is woken).
    Pause,
}

/// Why a connection closed.
#[derive(Debug)]
pub enum CloseCause<E> {
    /// The peer closed its side (EOF).
    PeerClosed,
    /// A socket error: ECONNRESET, EPIPE, ETIMEDOUT...
    Io(io::Error),
    /// Received payload could not be written to its file (`pwrite` into a span registered
    /// with [`crate::storage::files`] failed: a full or failing disk). Kept apart from
    /// [`CloseCause::Io`] because it is this host's fault, not the peer's: a service
    /// that sees it again and again should stop rather than re-request the block forever.
    Storage(io::Error),
    /// The service refused the peer's bytes.
    Protocol(E),
    /// A single message grew past [`RuntimeConfig::max_message`] bytes.
    MessageTooLarge(usize),
    /// The service asked for it ([`CoreIo::close`]).
    Local,
    /// The runtime is shutting down.
    Shutdown,
}

impl<E: fmt::Display> fmt::Display for CloseCause<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::PeerClosed => write!(f, "peer closed the connection"),
            CloseCause::Io(e) => write!(f, "socket error: {e}"),
            CloseCause::Storage(e) => write!(f, "storage error: {e}"),
            CloseCause::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseCause::MessageTooLarge(n) => write!(f, "message larger than {n} bytes"),
            CloseCause::Local => write!(f, "closed locally"),
            CloseCause::Shutdown => write!(f, "runtime shutting down"),
        }
    }
}

/// The per-core application the event loop drives: owns the per-core state and, through
/// `Conn`, each connection's state machine. Every method runs on the core's thread.
pub trait Service: Send + 'static {
    /// Per-connection state (e.g. a `PeerConn` plus an `Arc` of the storage its spans point
    /// into). Dropped only after all of the connection's I/O completed.
    type Conn;
    /// Application messages other cores or threads send through the [`Mailbox`].
    type Msg: Send + 'static;
    /// What `on_bytes`/`on_recv_done` report for bytes they refuse.
    type Error: fmt::Debug + fmt::Display;

    /// A connection is established (accepted or dialled). `None` refuses it (it is closed).
    fn on_connected(
        &mut self,
        io: &mut CoreIo<'_, Self::Msg>,
        id: ConnId,
        peer: SocketAddr,
        direction: Direction,
        now: Instant,
    ) -> Option<Self::Conn>;

    /// A dial requested with [`CoreIo::dial`] or [`Mailbox::dial`] failed (refused, timed out).
    fn on_connect_failed(
        &mut self,
        _io: &mut CoreIo<'_, Self::Msg>,
        _peer: SocketAddr,
        _error: &io::Error,
    ) {
    }

    /// Where the next bytes of the stream go. Called whenever no receive is in flight.
    /// By default everything goes to the buffer and [`Service::on_bytes`].
    fn next_recv(&mut self, _conn: &mut Self::Conn, _iovecs: &mut RecvIovecs<'_>) -> RecvTarget {
        RecvTarget::Buffer { max: 0 }
    }

    /// Bytes received into the buffer (target [`RecvTarget::Buffer`]): return how many were
    /// consumed; 0 means "need more". Unconsumed bytes are offered again with what follows.
    fn on_bytes(
        &mut self,
        io: &mut CoreIo<'_, Self::Msg>,
        id: ConnId,
        conn: &mut Self::Conn,
        bytes: &[u8],
        now: Instant,
    ) -> Result<usize, Self::Error>;

    /// The spans of a [`RecvTarget::Iovecs`] target are completely filled. Only called
    /// for services that return that target, so the default does nothing.
    fn on_recv_done(
        &mut self,
        _io: &mut CoreIo<'_, Self::Msg>,
        _id: ConnId,
        _conn: &mut Self::Conn,
        _now: Instant,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Append what to send next to `out`; return `false` when there is nothing (more). Called
    /// repeatedly while no send is in flight, until `false` or the batch is full. `now` is
    /// the time of the current batch of completions. By default nothing is sent.
    fn next_send(&mut self, _conn: &mut Self::Conn, _out: &mut SendBuf<'_>, _now: Instant) -> bool {
        false
    }

    /// Everything appended since the previous call was written to the socket; spans pushed
    /// into it are no longer referenced.
    fn on_send_done(
        &mut self,
        _io: &mut CoreIo<'_, Self::Msg>,
        _id: ConnId,
        _conn: &mut Self::Conn,
        _now: Instant,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// A message from the mailbox. Every open connection is polled for sends afterwards
    /// (by default that is all a message does).
    fn on_mailbox(
        &mut self,
        _io: &mut CoreIo<'_, Self::Msg>,
        _conns: &mut Conns<'_, Self::Conn, Self::Error>,
        _msg: Self::Msg,
        _now: Instant,
    ) {
    }

    /// The periodic tick ([`RuntimeConfig::tick`]). Every open connection is polled afterwards.
    fn on_tick(
        &mut self,
        _io: &mut CoreIo<'_, Self::Msg>,
        _conns: &mut Conns<'_, Self::Conn, Self::Error>,
        _now: Instant,
    ) {
    }

    /// The core handled a batch of completions (and everything they made ready) and is about
    /// to wait for the kernel: release what was taken for the batch, e.g. a lock shared with
    /// other cores, so it is held once per batch rather than once per callback. Also called
    /// once when the core stops, even after a panic in the service.
    fn end_batch(&mut self) {}

    /// The connection is gone and its I/O finished; `conn` is handed back for last
    /// accounting (by default it is just dropped).
    fn on_closed(
        &mut self,
        _io: &mut CoreIo<'_, Self::Msg>,
        _id: ConnId,
        _conn: Self::Conn,
        _reason: CloseCause<Self::Error>,
    ) {
    }
}

/// Knobs of the runtime. `Default` gives sensible values for a BitTorrent peer.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of cores (threads, rings). At least 1.
    pub cores: usize,
    /// Listen here (one `SO_REUSEPORT` listener per core); port 0 picks a free port.
    pub listen: Option<SocketAddr>,
    /// Period of [`Service::on_tick`]; `None` disables the tick.
    pub tick: Option<Duration>,
    /// Bound on an outbound connect (a linked timeout cancels it).
    pub connect_timeout: Duration,
    /// Initial size of each connection's receive buffer.
    pub recv_buffer: usize,
    /// Largest message the buffer grows to before the connection is closed.
    pub max_message: usize,
    /// Stop asking `next_send` for more once this many bytes are queued for one `sendmsg`.
    pub send_batch: usize,
    /// Submission queue size of each ring.
    pub ring_entries: u32,
    /// How long shutdown waits for cancelled operations before giving up (and leaking them).
    pub shutdown_timeout: Duration,
    /// Core threads are named `{name}-{core}` (visible in `top -H`, `/proc/*/task/*/comm`;
    /// Linux keeps 15 bytes).
    pub name: String,
    /// How uploads are sent (see [`mod@send_path`]); probed at start, falling back to
    /// [`SendPath::Copy`] where splicing is not possible ([`Runtime::send_path_note`]).
    pub send_path: SendPath,
    /// When set, each connection's socket holds at most about this many bytes written and
    /// not yet sent (`TCP_NOTSENT_LOWAT`), and one `sendmsg` carries at most twice that.
    /// A protocol message written after payload (a request, a have) then waits behind
    /// that much, not behind a whole socket buffer: on a connection that drains at 1/15
    /// of a 100 Mbit/s link, an autotuned buffer held a peer's requests back for seconds
    /// (see the engine's `swarm/pace.rs`). `None`: the kernel's defaults.
    pub unsent_limit: Option<u32>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cores: 1,
            listen: None,
            tick: Some(Duration::from_millis(100)),
            connect_timeout: Duration::from_secs(10),
            recv_buffer: 64 * 1024,
            max_message: 1024 * 1024 + 64,
            send_batch: 1024 * 1024,
            ring_entries: 256,
            shutdown_timeout: Duration::from_secs(5),
            name: "corvid-core".to_owned(),
            send_path: SendPath::Copy,
            unsent_limit: None,
        }
    }
}

/// Starting or running the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// io_uring cannot be used here.
    #[error(transparent)]
    Unavailable(#[from] UringUnavailable),
    /// Binding a core's listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A core's ring or eventfd failed.
    #[error("core {core}: {what}: {source}")]
    Core {
        /// Which core.
        core: usize,
        /// What it was doing.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A core thread panicked (a bug in the service or the core); its buffers were leaked.
    #[error("core {core} thread panicked; its buffers were leaked")]
    Panicked {
        /// Which core.
        core: usize,
    },
    /// Shutdown timed out with operations still in flight; their buffers were leaked.
    #[error("core {core}: {inflight} io_uring operations still in flight at shutdown; their buffers were leaked")]
    ShutdownTimeout {
        /// Which core.
        core: usize,
        /// How many operations were outstanding.
        inflight: usize,
    },
}

/// A running set of cores. Dropping it shuts the cores down (errors ignored); call
/// [`Runtime::shutdown`] to get the services back and see errors.
pub struct Runtime<S: Service> {
    mailboxes: Vec<Mailbox<S::Msg>>,
    threads: Vec<JoinHandle<Result<S, RuntimeError>>>,
    local_addr: Option<SocketAddr>,
    counters: std::sync::Arc<SendCounters>,
    send_path: SendPath,
    send_path_note: Option<String>,
}

impl<S: Service> Runtime<S> {
    /// Probe io_uring, bind the listeners, spawn `config.cores` threads each running a core
    /// with the service `make(core_index)`, and wait until every ring is set up.
    pub fn start(
        config: RuntimeConfig,
        mut make: impl FnMut(usize) -> S,
    ) -> Result<Self, RuntimeError> {
        probe()?;
        let mut config = config;
        let (used, send_path_note) = send_path::choose(config.send_path, send_path::probe_for);
        config.send_path = used;
        let counters = std::sync::Arc::new(SendCounters::default());
        let cores = config.cores.max(1);
        let mut listeners: Vec<Option<OwnedFd>> = Vec::with_capacity(cores);
        let mut local_addr = None;
        if let Some(addr) = config.listen {
            let mut bound = addr;
            for _ in 0..cores {
                let fd = net::reuseport_listener(bound, 1024).map_err(|source| {
                    RuntimeError::Listen {
                        addr: bound,
                        source,
                    }
                })?;
                if local_addr.is_none() {
                    use std::os::fd::AsRawFd;
                    bound = net::local_addr(fd.as_raw_fd())
                        .map_err(|source| RuntimeError::Listen { addr, source })?;
                    local_addr = Some(bound);
                }
                listeners.push(Some(fd));
            }
        } else {
            listeners.resize_with(cores, || None);
        }
        let mut mailboxes = Vec::with_capacity(cores);
        let mut inboxes = Vec::with_capacity(cores);
        for core in 0..cores {
            let (tx, rx) = mailbox::mailbox(core).map_err(|source| RuntimeError::Core {
                core,
                what: "create eventfd",
                source,
            })?;
            mailboxes.push(tx);
            inboxes.push(rx);
        }
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(cores);
        let mut threads = Vec::with_capacity(cores);
        for (core, (inbox, listener)) in inboxes.into_iter().zip(listeners).enumerate() {
            let service = make(core);
            let core_config = config.clone();
            let all = mailboxes.clone();
            let ready = ready_tx.clone();
            let core_counters = counters.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{core}", config.name))
                .spawn(move || {
                    let ends = event_loop::Ends {
                        inbox,
                        mailboxes: all,
                        listener,
                        counters: core_counters,
                    };
                    event_loop::run(core, core_config, service, ends, ready)
                });
            match spawned {
                Ok(h) => threads.push(h),
                Err(source) => {
                    let rt = Runtime {
                        mailboxes,
                        threads,
                        local_addr,
                        counters,
                        send_path: config.send_path,
                        send_path_note,
                    };
                    drop(rt);
                    return Err(RuntimeError::Core {
                        core,
                        what: "spawn thread",
                        source,
                    });
                }
            }
        }
        drop(ready_tx);
        let mut rt = Runtime {
            mailboxes,
            threads,
            local_addr,
            counters,
            send_path: config.send_path,
            send_path_note,
        };
        for _ in 0..cores {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    rt.stop_all();
                    return Err(e);
                }
                // A thread died before reporting: shutdown() will name it.
                Err(_) => break,
            }
        }
        Ok(rt)
    }

    /// The listening address (with the port the kernel picked for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The send path in use: the configured one, or [`SendPath::Copy`] where splicing
    /// was asked for and is not possible here.
    pub fn send_path(&self) -> SendPath {
        self.send_path
    }

    /// Why the configured send path was not available (`None` when it is in use).
    pub fn send_path_note(&self) -> Option<&str> {
        self.send_path_note.as_deref()
    }

    /// Bytes sent through each send path so far, all cores together.
    pub fn send_counters(&self) -> std::sync::Arc<SendCounters> {
        self.counters.clone()
    }

    /// The mailbox of core `core`.
    pub fn mailbox(&self, core: usize) -> Option<&Mailbox<S::Msg>> {
        self.mailboxes.get(core)
    }

    /// All cores' mailboxes, indexed by core.
    pub fn mailboxes(&self) -> &[Mailbox<S::Msg>] {
        &self.mailboxes
    }

    /// Stop every core (connections closed, operations cancelled), join the threads and return
    /// the services in core order, or the first error.
    pub fn shutdown(mut self) -> Result<Vec<S>, RuntimeError> {
        let results = self.stop_all();
        results.into_iter().collect()
    }

    fn stop_all(&mut self) -> Vec<Result<S, RuntimeError>> {
        for m in &self.mailboxes {
            let _ = m.post(Envelope::Shutdown);
        }
        self.threads
            .drain(..)
            .enumerate()
            .map(|(core, h)| h.join().unwrap_or(Err(RuntimeError::Panicked { core })))
            .collect()
    }
}

impl<S: Service> Drop for Runtime<S> {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

#[cfg(test)]
mod splice_tests;
#[cfg(test)]
mod tests;
