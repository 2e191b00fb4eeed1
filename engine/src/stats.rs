//! stats: not yet written.
