//! Outbound connect, optionally linked to a timeout so a silent host cannot hold a slot forever.

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// Connect `fd` to the address at `addr`/`len`. The address memory must stay valid until the
/// completion arrives. `linked` sets `IO_LINK` so a following link-timeout SQE applies to it.
pub fn connect(
    fd: RawFd,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
    linked: bool,
    user_data: u64,
) -> squeue::Entry {
    let entry = opcode::Connect::new(types::Fd(fd), addr, len)
        .build()
        .user_data(user_data);
    if linked {
        entry.flags(squeue::Flags::IO_LINK)
    } else {
        entry
    }
}
