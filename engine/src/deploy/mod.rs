//! Fleet deploys as a library, so the CLI stays thin and tests can drive it.
//!
//! - [`hosts`]: the host list and what counts as a safe ssh destination.
//! - [`release`]: the on-host layout (`releases/TAG.partial` → `releases/TAG` →
//!   `current`) and its atomic rename steps.

pub mod hosts;
pub mod release;
