//! storage: not yet written.
