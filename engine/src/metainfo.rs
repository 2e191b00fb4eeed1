//! metainfo: not yet written.
