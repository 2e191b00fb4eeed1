//! hash: not yet written.
