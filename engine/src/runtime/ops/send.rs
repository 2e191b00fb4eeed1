//! Sending with `sendmsg` from several iovecs: protocol bytes from the connection's buffer
//! and block payload straight from the mapping, in one system call.

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// `sendmsg` of the iovecs `msg` points at, with `MSG_NOSIGNAL` (a peer that went away is an
/// `EPIPE` completion, not a process-killing SIGPIPE). The msghdr, the iovec array and the
/// memory they describe must stay valid until completion.
pub fn sendmsg(fd: RawFd, msg: *const libc::msghdr, user_data: u64) -> squeue::Entry {
    opcode::SendMsg::new(types::Fd(fd), msg)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build()
        .user_data(user_data)
}
