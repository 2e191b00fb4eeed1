//! A connection's life on one core: accepted or dialled, opened to the service, closed
//! (cancel what is in flight, close the socket through the ring) and released only after
//! its last completion.

use super::*;

impl<S: Service> Core<S> {
    pub(super) fn alloc(
        &mut self,
        fd: RawFd,
        peer: SocketAddr,
        direction: Direction,
        state: State,
    ) -> u32 {
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
            iov_open: false,
            recv_iov: IoVecs::default(),
            // SAFETY: msghdr is plain old data; all-zero is an empty header.
            recv_msg: unsafe { std::mem::zeroed() },
            send_bytes: Vec::new(),
            send_segs: Vec::new(),
            send_iov: IoVecs::default(),
            // SAFETY: as above.
            send_msg: unsafe { std::mem::zeroed() },
            addr: RawAddr::from_std(peer),
            splices: self.config.send_path.splices_to(peer.ip(), &self.local_ips),
            pipe: None,
            zc: self.config.send_path == SendPath::ZeroCopy,
            zc_pending: 0,
            zc_sent_all: false,
            send_spliced: false,
            drain: 0,
        }));
        self.live += 1;
        slot
    }

    pub(super) fn dial(&mut self, addr: SocketAddr) {
        if self.shutting_down.is_some() {
            return;
        }
        // Listening on one address of a multi-homed host: dial from it too.
        let from = self.config.listen.map(|l| l.ip());
        let fd = match net::outbound_socket(&addr, from) {
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

    pub(super) fn begin_close(&mut self, slot: u32, reason: CloseCause<S::Error>) {
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
            if e.send_spliced {
                // A splice chain runs on an io-wq worker, where a cancel may find a step
                // between two others and miss the one that then blocks on a socket the
                // remote no longer reads. Shutting the socket down ends that step
                // (EPIPE) whatever it is doing; the connection is closing anyway.
                // SAFETY: shutdown on the connection's own open descriptor.
                unsafe { libc::shutdown(e.fd, libc::SHUT_RDWR) };
            }
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
    pub(super) fn maybe_finish_close(&mut self, slot: u32) {
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
    pub(super) fn release(&mut self, slot: u32) {
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

    pub(super) fn on_accept(&mut self, res: i32, flags: u32) {
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
        self.tune_socket(fd);
        let slot = self.alloc(fd, peer, Direction::Inbound, State::Open);
        self.open(slot);
    }

    /// Options every connected socket gets: no Nagle, and the unsent bound if configured.
    /// A socket that refuses either still works, only with the kernel's behaviour.
    pub(super) fn tune_socket(&self, fd: RawFd) {
        let _ = net::set_nodelay(fd);
        if let Some(limit) = self.config.unsent_limit {
            let _ = net::set_notsent_lowat(fd, limit);
        }
    }

    /// Ask the service to take the connection in `slot`; closes it if refused.
    pub(super) fn open(&mut self, slot: u32) {
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
}
