//! tracker: not yet written.
