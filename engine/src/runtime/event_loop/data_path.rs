//! The data path of one core: asking the service where the next bytes go and what to
//! send, submitting one receive and one send per connection, and handling their
//! completions.

use super::*;
use crate::runtime::send_path::{self, slots_for_bytes, slots_for_span};
use crate::storage;

/// Pipe buffers kept free while a splice batch is built: what one more `next_send` may
/// add (a 16 KiB block over five pages and its header), so the batch stays within the
/// pipe; a batch that still overshoots is sent with `sendmsg`.
const SPLICE_SLOT_MARGIN: usize = 40;

/// Pipe buffers a batch takes when spliced (an upper bound: see `send_path`).
fn pipe_slots_of(segs: &[Seg]) -> usize {
    segs.iter()
        .map(|s| match *s {
            Seg::Bytes { start, end } => slots_for_bytes(end - start),
            // A mapping starts on a page, so the address has the file offset's page offset.
            Seg::Span { ptr, len } => slots_for_span(ptr as u64, len),
        })
        .sum()
}

impl<S: Service> Core<S> {
    /// Submits a receive into the free end of `slot`'s buffer, at most `max` bytes (0: as
    /// much as fits). The caller checked the entry is open with no receive in flight and
    /// made room in the buffer.
    fn recv_into_buffer(&mut self, slot: u32, max: usize) {
        let Some(e) = self.entry(slot) else { return };
        let mut want = e.rx.len() - e.rx_end;
        if max > 0 {
            want = want.min(max);
        }
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        let ptr = e.rx[e.rx_end..].as_mut_ptr();
        e.recv_into_iovecs = false;
        e.recv_inflight = true;
        let entry = ops::recv::recv(
            e.fd,
            ptr,
            want,
            Token::Conn {
                slot,
                op: ConnOp::Recv,
            }
            .encode(),
        );
        // SAFETY: `rx` lives in the boxed entry and is neither resized nor read while
        // `recv_inflight` is set; the entry is freed only after completion.
        unsafe { self.push_conn(slot, entry) };
    }

    /// About 120 lines, kept whole on purpose: each step re-borrows the slab entry, the
    /// service and the ring through `io_parts` with the entry's state checked first, and
    /// splitting the steps that use the service into functions would pass five borrows
    /// around or re-look-up the entry between the checks and the submission that relies on
    /// them (the submissions themselves are split out).
    pub(super) fn drive_recv(&mut self, slot: u32) {
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
            let target = if e.iov_open {
                RecvTarget::Iovecs
            } else {
                e.recv_iov.clear();
                service.next_recv(
                    conn,
                    &mut RecvIovecs {
                        iov: &mut e.recv_iov,
                    },
                )
            };
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
                    if !make_rx_room(
                        &mut e.rx,
                        &mut e.rx_start,
                        &mut e.rx_end,
                        recv_buffer,
                        max_message,
                    ) {
                        self.begin_close(slot, CloseCause::MessageTooLarge(max_message));
                        return;
                    }
                    self.recv_into_buffer(slot, max);
                    return;
                }
                RecvTarget::Iovecs => {
                    // Spans in a file take their bytes through the buffer (receives as
                    // large as it, which may hold the next messages too, then pwrite);
                    // other spans receive straight into their memory.
                    let into_file = e
                        .recv_iov
                        .pending()
                        .first()
                        .is_some_and(|v| storage::files::file_at(v.iov_base.cast()).is_some());
                    // Gather the rest of the target in the buffer before writing it: on a
                    // slow link each receive brings a packet or two, and one pwrite per
                    // receive cost a fleet peer 16% more CPU than one per block.
                    let gather = into_file && {
                        settle_rx(&mut e.rx, &mut e.rx_start, &mut e.rx_end, recv_buffer);
                        e.rx_end - e.rx_start < e.recv_iov.remaining() && e.rx_end < e.rx.len()
                    };
                    if !gather {
                        if let Err(err) = move_buffered_into_iovecs(
                            &e.rx,
                            &mut e.rx_start,
                            e.rx_end,
                            &mut e.recv_iov,
                        ) {
                            self.begin_close(slot, CloseCause::Storage(err));
                            return;
                        }
                        if e.recv_iov.is_done() {
                            e.iov_open = false;
                            if let Err(err) = service.on_recv_done(&mut io, id, conn, now) {
                                self.begin_close(slot, CloseCause::Protocol(err));
                                return;
                            }
                            continue;
                        }
                    }
                    if into_file {
                        e.iov_open = true;
                        settle_rx(&mut e.rx, &mut e.rx_start, &mut e.rx_end, recv_buffer);
                        self.recv_into_buffer(slot, 0);
                        return;
                    }
                    // The buffer is empty now: receive the rest straight into the spans.
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

    pub(super) fn drive_send(&mut self, slot: u32) {
        // Under an unsent bound a batch larger than twice the bound would only sit in
        // `send_iov` instead of the socket, still ahead of later messages.
        let batch = match self.config.unsent_limit {
            Some(limit) => self.config.send_batch.min(2 * limit as usize).max(1),
            None => self.config.send_batch,
        };
        // A splice chain is pushed as one unit, so it must fit the submission queue.
        let chain_max = (self.config.ring_entries as usize / 2).clamp(4, MAX_SEND_SEGS);
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
        let splices = e.splices;
        let pipe_slots = e.pipe.as_ref().map_or(send_path::PIPE_SLOTS, |p| p.slots);
        let mut out = SendBuf {
            bytes: &mut e.send_bytes,
            segs: &mut e.send_segs,
            len: 0,
        };
        while out.len < batch && out.segs.len() < MAX_SEND_SEGS {
            // Leave room in the pipe for one more call's worth (a block and its header).
            if splices
                && (out.segs.len() + 2 >= chain_max
                    || pipe_slots_of(out.segs) + SPLICE_SLOT_MARGIN > pipe_slots)
            {
                break;
            }
            if !service.next_send(conn, &mut out, now) {
                break;
            }
        }
        if out.len == 0 {
            return;
        }
        if splices && self.submit_splice(slot, chain_max) {
            return;
        }
        let Some(e) = self.entry(slot) else { return };
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
        e.send_spliced = false;
        let msg: *const libc::msghdr = &e.send_msg;
        let entry = send_entry(e.zc, e.fd, msg, slot);
        // SAFETY: msghdr, iovec array and `send_bytes` live in the boxed entry and are not
        // modified while `send_inflight`, which a zero-copy send keeps set until its last
        // notification; spans are covered by push_span's contract (the service's Conn is
        // dropped only after the connection's last completion, notifications included).
        unsafe { self.push_conn(slot, entry) };
    }

    /// A zero-copy send's notification: the kernel let go of that send's memory. Once the
    /// batch is all sent and no notification is outstanding, the batch is finished.
    pub(super) fn zc_notif_done(&mut self, slot: u32, res: i32) {
        let counters = self.counters.clone();
        let Some(e) = self.entry(slot) else { return };
        e.zc_pending = e.zc_pending.saturating_sub(1);
        counters.add_zc_notif(res as u32 & ops::send::ZC_COPIED != 0);
        if e.zc_pending > 0 || !e.zc_sent_all {
            return;
        }
        e.zc_sent_all = false;
        e.send_inflight = false;
        if e.state == State::Open {
            self.send_finished(slot);
        }
    }

    /// Sends the batch in `slot`'s send segments as a splice chain (see `ops::splice`):
    /// false, and nothing submitted, when the batch carries no file payload or does not
    /// fit the pipe or the ring, so the caller sends it with `sendmsg`.
    fn submit_splice(&mut self, slot: u32, chain_max: usize) -> bool {
        let Some(e) = self.entry(slot) else {
            return false;
        };
        let has_file = e.send_segs.iter().any(|s| match *s {
            Seg::Span { ptr, .. } => storage::files::file_at(ptr).is_some(),
            Seg::Bytes { .. } => false,
        });
        if !has_file || e.send_segs.len() + 1 > chain_max {
            return false;
        }
        if e.pipe.is_none() {
            match Pipe::new() {
                Ok(p) => e.pipe = Some(p),
                Err(_) => {
                    // Out of descriptors or over the per-user pipe budget: this
                    // connection copies from now on.
                    e.splices = false;
                    return false;
                }
            }
        }
        let Some(pipe) = e.pipe.as_ref() else {
            return false;
        };
        if pipe_slots_of(&e.send_segs) > pipe.slots {
            return false;
        }
        let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
        let fill = Token::Conn {
            slot,
            op: ConnOp::Fill,
        }
        .encode();
        let mut chain = Vec::with_capacity(e.send_segs.len() + 1);
        let mut total = 0usize;
        for seg in &e.send_segs {
            let step = match *seg {
                Seg::Bytes { start, end } => {
                    total += end - start;
                    ops::splice::bytes_to_pipe(
                        pipe_w,
                        e.send_bytes[start..end].as_ptr(),
                        (end - start) as u32,
                        fill,
                    )
                }
                Seg::Span { ptr, len } => {
                    total += len;
                    match storage::files::file_at(ptr) {
                        Some(f) if f.len >= len => {
                            ops::splice::file_to_pipe(f.fd, f.offset, pipe_w, len as u32, fill)
                        }
                        // Not file payload (or running past its file): written, i.e.
                        // copied, into the pipe in its place in the stream.
                        _ => ops::splice::bytes_to_pipe(pipe_w, ptr, len as u32, fill),
                    }
                }
            };
            // No CQE for a step that succeeds: nothing to do for it, and none to wake the
            // core for (see `build_ring`).
            chain.push(step.flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS));
        }
        chain.push(ops::splice::pipe_to_socket(
            pipe_r,
            e.fd,
            total as u32,
            Token::Conn {
                slot,
                op: ConnOp::Send,
            }
            .encode(),
        ));
        e.send_inflight = true;
        e.send_spliced = true;
        e.drain = total;
        // One completion ends the chain, and only it is counted: the last step's, or a
        // failed fill step's, after which the rest posts nothing (see `fill_done`).
        e.inflight += 1;
        // SAFETY: the written bytes live in the entry's `send_bytes`, untouched while
        // `send_inflight` (set until the chain's last step completes, after every step
        // before it); spans are covered by push_span's contract; the file descriptors are
        // kept open by whoever keeps the span's mapping alive (`storage::files`), the pipe
        // by the entry, which is freed only after the last completion. One unit, so the
        // links are not split across submissions.
        unsafe { self.push(&chain) };
        true
    }

    /// A step that fills the pipe failed (a file that cannot be read, a pipe that is
    /// full). Only failures of fill steps complete (`CQE_SKIP_SUCCESS`), and a failed step
    /// with that flag ends its chain silently: the steps after it, the last one included,
    /// are cancelled without a CQE (the kernel's REQ_F_SKIP_LINK_CQES). So this completion
    /// is the chain's last: it takes the place of the last step's (the one counted in
    /// flight), and the connection closes, since the pipe no longer holds the stream.
    pub(super) fn fill_done(&mut self, slot: u32, res: i32) {
        let Some(e) = self.entry(slot) else {
            debug_assert!(false, "fill completion for free slot {slot}");
            return;
        };
        debug_assert!(
            e.send_inflight && e.send_spliced,
            "fill completion without a chain"
        );
        if !(e.send_inflight && e.send_spliced) {
            return;
        }
        e.inflight -= 1;
        e.send_inflight = false;
        let err = io::Error::from_raw_os_error(-res);
        let err = io::Error::new(
            err.kind(),
            format!("splicing upload payload into the pipe: {err}"),
        );
        if e.state == State::Open {
            self.begin_close(slot, CloseCause::Storage(err));
        }
        self.maybe_finish_close(slot);
    }

    /// The chain's last step (pipe to socket) completed.
    fn splice_done(&mut self, slot: u32, res: i32) {
        let Some(e) = self.entry(slot) else { return };
        if res < 0 && !is_transient(-res) {
            self.begin_close(slot, CloseCause::Io(io::Error::from_raw_os_error(-res)));
            return;
        }
        let n = res.max(0) as usize;
        if n > e.drain {
            self.begin_close(
                slot,
                CloseCause::Io(io::Error::other(
                    "kernel reported more bytes than requested",
                )),
            );
            return;
        }
        e.drain -= n;
        if e.drain > 0 {
            // Short (a signal, or EAGAIN): the rest is still in the pipe, in order.
            let Some(pipe) = e.pipe.as_ref() else { return };
            let entry = ops::splice::pipe_to_socket(
                pipe.read.as_raw_fd(),
                e.fd,
                e.drain as u32,
                Token::Conn {
                    slot,
                    op: ConnOp::Send,
                }
                .encode(),
            );
            e.send_inflight = true;
            // SAFETY: references no user memory; the pipe lives in the entry.
            unsafe { self.push_conn(slot, entry) };
            return;
        }
        self.send_finished(slot);
    }

    pub(super) fn recv_done(&mut self, slot: u32, res: i32) {
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
    pub(super) fn resubmit_recv(&mut self, slot: u32) {
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

    pub(super) fn send_done(&mut self, slot: u32, res: i32) {
        let counters = self.counters.clone();
        let Some(e) = self.entry(slot) else { return };
        e.send_inflight = false;
        // What reached the socket counts, whether or not the connection is still open.
        if res > 0 {
            if e.send_spliced {
                counters.add_spliced(res as u64);
            } else if e.zc {
                counters.add_zc_sent(res as u64);
            } else {
                counters.add_copied(res as u64);
            }
        }
        if e.state != State::Open {
            // Outstanding notifications still hold the batch's memory: the entry stays
            // until they arrive (counted in flight).
            e.send_inflight = e.zc_pending > 0;
            return;
        }
        if e.send_spliced {
            self.splice_done(slot, res);
            return;
        }
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
            // Short write (or EAGAIN): send the remainder. The kernel read the iovec array
            // at issue; what it may still read until a notification is the memory.
            e.send_iov.fill_msghdr(&mut e.send_msg);
            e.send_inflight = true;
            let entry = send_entry(e.zc, e.fd, &e.send_msg, slot);
            // SAFETY: as in drive_send.
            unsafe { self.push_conn(slot, entry) };
            return;
        }
        if e.zc_pending > 0 {
            // Sent, but the kernel still references the batch: finish at the last
            // notification (`zc_notif_done`).
            e.send_inflight = true;
            e.zc_sent_all = true;
            return;
        }
        self.send_finished(slot);
    }

    /// Everything of the last batch is in the socket: tell the service.
    fn send_finished(&mut self, slot: u32) {
        let now = self.now;
        let (service, mut io, slots) = self.io_parts();
        let Some(e) = slots.get_mut(slot as usize).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        let id = e.id;
        let Some(conn) = e.conn.as_mut() else { return };
        if let Err(err) = service.on_send_done(&mut io, id, conn, now) {
            self.begin_close(slot, CloseCause::Protocol(err));
            return;
        }
        self.mark_dirty(slot);
    }
}

/// The send of a batch's iovecs: `SENDMSG_ZC` on the zero-copy path, `sendmsg` otherwise.
fn send_entry(zc: bool, fd: RawFd, msg: *const libc::msghdr, slot: u32) -> squeue::Entry {
    let token = Token::Conn {
        slot,
        op: ConnOp::Send,
    }
    .encode();
    if zc {
        ops::send::sendmsg_zc(fd, msg, token)
    } else {
        ops::send::sendmsg(fd, msg, token)
    }
}

/// Bytes that arrived in the buffer before the service knew they were payload go into the
/// iovecs it gave: with `pwrite` to the file for a span inside a registered file mapping
/// ([`storage::files`], which says why that is cheaper than storing through the mapping),
/// copied through memory otherwise. An error is the file's (EIO, a full disk).
fn move_buffered_into_iovecs(
    rx: &[u8],
    rx_start: &mut usize,
    rx_end: usize,
    iov: &mut IoVecs,
) -> io::Result<()> {
    while *rx_start < rx_end {
        let Some(v) = iov.pending().first().copied() else {
            return Ok(());
        };
        let src = &rx[*rx_start..rx_end];
        let dst = v.iov_base.cast::<u8>();
        let mut n = v.iov_len.min(src.len());
        if let Some(file) = storage::files::file_at(dst) {
            n = n.min(file.len);
            write_all_at(file.fd, &src[..n], file.offset)?;
            file.wrote(n);
        } else {
            // SAFETY: the service promised (push_span contract) the span is valid for
            // writes of iov_len >= n bytes and unaliased; `src` is our own buffer, so the
            // regions do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n) };
        }
        iov.advance(n);
        *rx_start += n;
    }
    Ok(())
}

/// `pwrite` all of `buf` at `offset` of `fd`, resuming short writes.
fn write_all_at(fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::other("file offset overflows off_t"))?;
        // SAFETY: `buf` is a live borrowed slice of `buf.len()` readable bytes; `fd` is the
        // descriptor `storage::files` registered for the span's mapping, open as long as
        // the span is valid (the service keeps it so until the receive completes).
        let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(
                err.kind(),
                format!("writing received payload to its file: {err}"),
            ));
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "writing received payload to its file: pwrite wrote nothing",
            ));
        }
        buf = &buf[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// Makes room at the end of the receive buffer: moves the unconsumed bytes to the front
/// (shrinking a grown buffer back) and doubles it when full. False when a full buffer is
/// already `max_message` bytes: one message is too large.
fn make_rx_room(
    rx: &mut Vec<u8>,
    rx_start: &mut usize,
    rx_end: &mut usize,
    recv_buffer: usize,
    max_message: usize,
) -> bool {
    settle_rx(rx, rx_start, rx_end, recv_buffer);
    if *rx_end == rx.len() {
        if rx.len() >= max_message {
            return false;
        }
        let grown = (rx.len() * 2).min(max_message);
        rx.resize(grown, 0);
    }
    true
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
mod move_tests {
    use super::{move_buffered_into_iovecs, IoVecs};
    use crate::storage::files;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    /// Buffered payload for a registered file goes out with pwrite at the span's offset,
    /// the rest of the buffer stays for the next message; a file that refuses the write
    /// is an error naming it, not a silent loss.
    #[test]
    fn buffered_bytes_are_written_to_the_span_file_and_errors_surface() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // A raw mapping hands out pointers only; the test never dereferences them itself.
        let map = memmap2::MmapRaw::map_raw(&file).unwrap();
        let written = Arc::new(files::Written::default());
        let reg = files::register(map.as_ptr(), map.len(), file.as_raw_fd(), written.clone());
        let rx: Vec<u8> = (0..200u8).collect();
        let mut iov = IoVecs::default();
        iov.push(map.as_mut_ptr().wrapping_add(4000), 150);
        let mut start = 10;
        move_buffered_into_iovecs(&rx, &mut start, rx.len(), &mut iov).unwrap();
        assert!(iov.is_done());
        assert_eq!(start, 160, "bytes past the span stay in the buffer");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[4000..4150], &rx[10..160]);
        assert_eq!(written.get(), (1, 150), "one pwrite for the span");
        drop(reg);

        // The same mapping registered with a descriptor open for reading only: EBADF.
        let ro = std::fs::File::open(&path).unwrap();
        let _reg = files::register(map.as_ptr(), map.len(), ro.as_raw_fd(), written);
        let mut iov = IoVecs::default();
        iov.push(map.as_mut_ptr(), 10);
        let mut start = 0;
        let err = move_buffered_into_iovecs(&rx, &mut start, rx.len(), &mut iov).unwrap_err();
        assert!(
            err.to_string()
                .contains("writing received payload to its file"),
            "{err}"
        );
        assert_eq!(start, 0, "nothing counted as moved");
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
