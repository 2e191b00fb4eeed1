//! Receiving: into the connection's plain buffer (protocol messages), or with `recvmsg` into
//! several iovecs (block payload straight into the mapped file; no intermediate copy).

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// Receive up to `len` bytes into `buf`, which must stay valid and untouched until completion.
pub fn recv(fd: RawFd, buf: *mut u8, len: u32, user_data: u64) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), buf, len)
        .build()
        .user_data(user_data)
}

/// `recvmsg` into the iovecs `msg` points at; the msghdr and the iovec array and the memory
/// they describe must stay valid until completion.
pub fn recvmsg(fd: RawFd, msg: *mut libc::msghdr, user_data: u64) -> squeue::Entry {
    opcode::RecvMsg::new(types::Fd(fd), msg)
        .build()
        .user_data(user_data)
}
