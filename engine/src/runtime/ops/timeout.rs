//! Timers: the core's periodic tick (a plain timeout re-armed after each expiry) and the link
//! timeout bounding a connect.

use io_uring::{opcode, squeue, types};

/// A timeout that completes with `-ETIME` after `ts`. `ts` must stay valid until the completion.
pub fn timeout(ts: *const types::Timespec, user_data: u64) -> squeue::Entry {
    opcode::Timeout::new(ts).build().user_data(user_data)
}

/// A timeout cancelling the previous (IO_LINK-ed) SQE after `ts`; that SQE then completes with
/// `-ECANCELED`. `ts` must stay valid until this entry's own completion.
pub fn link_timeout(ts: *const types::Timespec, user_data: u64) -> squeue::Entry {
    opcode::LinkTimeout::new(ts).build().user_data(user_data)
}
