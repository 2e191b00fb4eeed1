//! Tearing down: cancelling a connection's in-flight operations, then closing its socket
//! through the ring (after the cancellations completed, so no op races the fd's reuse).

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// Cancel the in-flight request whose `user_data` is `target`. References no memory.
pub fn cancel(target: u64, user_data: u64) -> squeue::Entry {
    opcode::AsyncCancel::new(target)
        .build()
        .user_data(user_data)
}

/// Close `fd`. References no memory.
pub fn close(fd: RawFd, user_data: u64) -> squeue::Entry {
    opcode::Close::new(types::Fd(fd))
        .build()
        .user_data(user_data)
}
