//! Accepting inbound connections: multishot (one SQE, a CQE per connection, Linux >= 5.19)
//! with a single-shot fallback for older kernels.

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// Multishot accept on `listener`. References no memory. Each CQE carries a new fd; the SQE stays
/// armed while the CQE has `IORING_CQE_F_MORE`.
pub fn accept_multi(listener: RawFd, user_data: u64) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(listener))
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(user_data)
}

/// Single-shot accept (no peer address requested; the core asks `getpeername`).
/// References no memory.
pub fn accept_once(listener: RawFd, user_data: u64) -> squeue::Entry {
    opcode::Accept::new(
        types::Fd(listener),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .flags(libc::SOCK_CLOEXEC)
    .build()
    .user_data(user_data)
}
