//! The mailbox doorbell: an 8-byte read of an eventfd kept outstanding on the ring, so a message
//! from another core completes it and wakes a ring blocked in `io_uring_enter`.

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// Read the 8-byte counter of `eventfd` into `buf`, which must stay valid until the completion.
pub fn read_counter(eventfd: RawFd, buf: *mut u64, user_data: u64) -> squeue::Entry {
    opcode::Read::new(types::Fd(eventfd), buf.cast::<u8>(), 8)
        .build()
        .user_data(user_data)
}
