//! wire: not yet written.
