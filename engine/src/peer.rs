//! peer: not yet written.
