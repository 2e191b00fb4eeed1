//! The HTTP side of the tracker: [`TrackerServer`] and its one-thread `poll(2)` loop,
//! which reads requests under a deadline and a size cap and hands them to [`Swarms`].
//!
//! Separate from the swarm bookkeeping in the parent module because that part is sans-IO
//! (time passed in) and tested without sockets; everything here owns sockets and a thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{StatCells, Swarms, TrackerConfig, TrackerStats, TrackerStatsHandle};
use crate::tracker::TrackerError;

pub(super) fn http_response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A running tracker. Dropping it without [`TrackerServer::shutdown`] also stops it.
pub struct TrackerServer {
    local_addr: SocketAddr,
    waker: UnixStream,
    stats: Arc<StatCells>,
    thread: Option<JoinHandle<()>>,
}

impl TrackerServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving on a thread of its own.
    pub fn bind(addr: SocketAddr, cfg: TrackerConfig) -> Result<TrackerServer, TrackerError> {
        let err = |context, source| TrackerError::Server {
            addr: addr.to_string(),
            context,
            source,
        };
        let listener = TcpListener::bind(addr).map_err(|e| err("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("set_nonblocking", e))?;
        let local_addr = listener.local_addr().map_err(|e| err("local_addr", e))?;
        let (waker, wake_rx) = UnixStream::pair().map_err(|e| err("waker socketpair", e))?;
        wake_rx
            .set_nonblocking(true)
            .map_err(|e| err("set_nonblocking", e))?;
        let stats = Arc::new(StatCells::default());
        let loop_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(format!("corvid-tracker-{}", local_addr.port()))
            .spawn(move || {
                EventLoop {
                    listener,
                    wake_rx,
                    swarms: Swarms::new(cfg.clone()),
                    cfg,
                    stats: loop_stats,
                    conns: Vec::new(),
                }
                .run()
            })
            .map_err(|e| err("spawn thread", e))?;
        Ok(TrackerServer {
            local_addr,
            waker,
            stats,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the tracker has done so far.
    pub fn stats(&self) -> TrackerStats {
        self.stats.snapshot()
    }

    /// A handle that reads [`TrackerServer::stats`] from anywhere, while the server runs.
    pub fn stats_handle(&self) -> TrackerStatsHandle {
        TrackerStatsHandle(Arc::clone(&self.stats))
    }

    /// Stops serving, closes every connection and waits for the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // The byte (or the waker's close, if the write fails) makes the loop's poll return.
        let _ = self.waker.write_all(&[1]);
        let _ = self.waker.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TrackerServer {
    fn drop(&mut self) {
        self.stop();
    }
}

enum ConnState {
    Reading,
    Writing {
        out: Vec<u8>,
        written: usize,
    },
    /// Response sent and our side shut: read and discard until the client closes, so
    /// unread request bytes do not turn our close into a reset that eats the response.
    Draining,
}

struct Conn {
    stream: TcpStream,
    source: IpAddr,
    buf: Vec<u8>,
    state: ConnState,
    deadline: Instant,
}

struct EventLoop {
    listener: TcpListener,
    wake_rx: UnixStream,
    swarms: Swarms,
    cfg: TrackerConfig,
    stats: Arc<StatCells>,
    conns: Vec<Conn>,
}

enum Step {
    Keep,
    Close,
}

impl EventLoop {
    fn run(mut self) {
        let mut next_expiry = Instant::now() + self.cfg.interval;
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            let now = Instant::now();
            if now >= next_expiry {
                self.swarms.expire(now);
                self.publish_gauges();
                next_expiry = now + self.cfg.interval;
            }
            // Close connections past their deadline.
            // (A connection already answered and draining is not counted as a timeout.)
            let mut expired = 0;
            self.conns.retain(|c| {
                let keep = c.deadline > now;
                if !keep && !matches!(c.state, ConnState::Draining) {
                    expired += 1;
                }
                keep
            });
            self.stats.timeouts.fetch_add(expired, Ordering::Relaxed);

            let wake_at = self
                .conns
                .iter()
                .map(|c| c.deadline)
                .min()
                .map_or(next_expiry, |d| d.min(next_expiry));
            let timeout_ms = wake_at
                .saturating_duration_since(now)
                .as_millis()
                .clamp(1, 60_000) as libc::c_int;

            fds.clear();
            fds.push(pollfd(self.wake_rx.as_raw_fd(), libc::POLLIN));
            fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
            for c in &self.conns {
                let ev = match c.state {
                    ConnState::Writing { .. } => libc::POLLOUT,
                    _ => libc::POLLIN,
                };
                fds.push(pollfd(c.stream.as_raw_fd(), ev));
            }
            // SAFETY: `fds` is a live, exclusively borrowed Vec of `fds.len()` initialised
            // pollfd structs for the whole call; poll only writes their `revents`.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                    continue;
                }
                // poll failing otherwise means a bug in the fd set; stop rather than spin.
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            let now = Instant::now();
            // Service existing connections first (indices match `fds[2..]`), then accept,
            // so newly accepted sockets are not confused with polled ones.
            let mut close = Vec::new();
            for i in 0..self.conns.len() {
                if fds[i + 2].revents == 0 {
                    continue;
                }
                if let Step::Close = self.service(i, now) {
                    close.push(i);
                }
            }
            // Highest index first, so swap_remove never moves a conn still to be removed.
            for i in close.into_iter().rev() {
                self.conns.swap_remove(i);
            }
            if fds[1].revents != 0 {
                self.accept_all(now);
            }
        }
    }

    fn publish_gauges(&self) {
        self.stats
            .torrents
            .store(self.swarms.torrents() as u64, Ordering::Relaxed);
        self.stats
            .peers
            .store(self.swarms.peers() as u64, Ordering::Relaxed);
    }

    fn accept_all(&mut self, now: Instant) {
        // Bounded: at most max_connections accepts per wakeup, then back to poll.
        for _ in 0..self.cfg.max_connections.max(1) {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    StatCells::bump(&self.stats.connections);
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    if self.conns.len() >= self.cfg.max_connections.max(1) {
                        // Make room by dropping the connection closest to its deadline
                        // (the oldest): a slow client must not lock newcomers out.
                        if let Some((idx, _)) = self
                            .conns
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, c)| c.deadline)
                        {
                            self.conns.swap_remove(idx);
                            StatCells::bump(&self.stats.timeouts);
                        }
                    }
                    self.conns.push(Conn {
                        stream,
                        source: addr.ip(),
                        buf: Vec::new(),
                        state: ConnState::Reading,
                        deadline: now + self.cfg.request_timeout,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ECONNABORTED, EMFILE and the like: try again on the next wakeup.
                Err(_) => return,
            }
        }
    }

    fn service(&mut self, i: usize, now: Instant) -> Step {
        let conn = &mut self.conns[i];
        let mut chunk = [0u8; 4096];
        match &mut conn.state {
            ConnState::Reading => {
                // Bounded loop: the buffer limit ends it within MAX_HEAD / 4096 + 1 reads.
                loop {
                    match conn.stream.read(&mut chunk) {
                        Ok(0) => return Step::Close,
                        Ok(n) => {
                            conn.buf.extend_from_slice(&chunk[..n]);
                            let Some((out, outcome)) =
                                self.swarms.handle_request(&conn.buf, conn.source, now)
                            else {
                                continue;
                            };
                            self.stats.count(outcome);
                            self.stats.publish_events(self.swarms.announces_by_event());
                            self.stats
                                .torrents
                                .store(self.swarms.torrents() as u64, Ordering::Relaxed);
                            self.stats
                                .peers
                                .store(self.swarms.peers() as u64, Ordering::Relaxed);
                            conn.buf = Vec::new();
                            conn.state = ConnState::Writing { out, written: 0 };
                            return Self::write_some(conn);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Keep,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => return Step::Close,
                    }
                }
            }
            ConnState::Writing { .. } => Self::write_some(conn),
            ConnState::Draining => {
                for _ in 0..16 {
                    match conn.stream.read(&mut chunk) {
                        Ok(0) => return Step::Close,
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Keep,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => return Step::Close,
                    }
                }
                Step::Keep
            }
        }
    }

    fn write_some(conn: &mut Conn) -> Step {
        let ConnState::Writing { out, written } = &mut conn.state else {
            return Step::Keep;
        };
        while *written < out.len() {
            match conn.stream.write(&out[*written..]) {
                Ok(0) => return Step::Close,
                Ok(n) => *written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Keep,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Step::Close,
            }
        }
        if conn.stream.shutdown(Shutdown::Write).is_err() {
            return Step::Close;
        }
        conn.state = ConnState::Draining;
        Step::Keep
    }
}

fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
