//! Sending block payload without copying it: file pages spliced into a per-connection
//! pipe, protocol bytes written into the same pipe between them, then one splice from
//! the pipe into the socket (see `runtime::send_path` for when and why).
//!
//! The kernel always runs `IORING_OP_SPLICE` on an io-wq worker (it never completes
//! inline), so the steps of one send go as one linked chain: once its first splice is
//! punted, the rest of the chain runs on that worker in order.

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// Splice `len` bytes of file `file` at `offset` into the pipe's write end `pipe_w`.
/// References no user memory. `SPLICE_F_NONBLOCK`: a full pipe is a short (failed) step,
/// never a worker waiting on a pipe only the rest of its own chain would drain.
pub fn file_to_pipe(
    file: RawFd,
    offset: u64,
    pipe_w: RawFd,
    len: u32,
    user_data: u64,
) -> squeue::Entry {
    opcode::Splice::new(types::Fd(file), offset as i64, types::Fd(pipe_w), -1, len)
        .flags(libc::SPLICE_F_NONBLOCK)
        .build()
        .user_data(user_data)
}

/// Write `len` bytes at `buf` into the pipe's write end (copied into pipe pages by the
/// kernel). The memory must stay valid until completion.
pub fn bytes_to_pipe(pipe_w: RawFd, buf: *const u8, len: u32, user_data: u64) -> squeue::Entry {
    // A pipe is not seekable: offset 0, as io_uring asks for such files.
    opcode::Write::new(types::Fd(pipe_w), buf, len)
        .offset(0)
        .build()
        .user_data(user_data)
}

/// Move `len` bytes from the pipe's read end into the socket. References no user memory;
/// the socket's buffers take references to the pipe's pages (file pages stay shared with
/// the page cache until the stack releases them).
pub fn pipe_to_socket(pipe_r: RawFd, sock: RawFd, len: u32, user_data: u64) -> squeue::Entry {
    opcode::Splice::new(types::Fd(pipe_r), -1, types::Fd(sock), -1, len)
        .build()
        .user_data(user_data)
}
