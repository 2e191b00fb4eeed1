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

/// `IORING_SEND_ZC_REPORT_USAGE` (Linux 6.2): the notification says whether the kernel
/// had to copy the data after all ([`ZC_COPIED`] in its result).
pub const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a notification's result when the data was copied.
pub const ZC_COPIED: u32 = 1 << 31;

/// Zero-copy `sendmsg` (`IORING_OP_SENDMSG_ZC`, Linux 6.1): the socket's buffers reference
/// the iovecs' pages instead of copies. Two completions: the result (with
/// `IORING_CQE_F_MORE` when a notification follows), then the notification
/// (`IORING_CQE_F_NOTIF`) once the kernel let go of the pages. The msghdr, the iovec array
/// and the memory they describe must stay valid, and unchanged, until the notification.
pub fn sendmsg_zc(fd: RawFd, msg: *const libc::msghdr, user_data: u64) -> squeue::Entry {
    opcode::SendMsgZc::new(types::Fd(fd), msg)
        .flags(libc::MSG_NOSIGNAL as u32)
        .ioprio(SEND_ZC_REPORT_USAGE)
        .build()
        .user_data(user_data)
}
