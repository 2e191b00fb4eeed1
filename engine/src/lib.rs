//! corvid-engine: everything corvid does, as a library the thin `corvid` CLI calls.
//!
//! The parts, from the bytes on disk up to the fleet:
//! - [`bencode`], [`metainfo`]: the torrent file format (BEP 3), strict and panic-free.
//! - [`geometry`]: piece and block arithmetic, validated once into typed indices.
//! - [`fsat`]: directory-descriptor file operations that refuse planted symlinks.
//! - [`storage`]: payload files mapped into memory; blocks resolve to spans of the mapping,
//!   which is what sockets read into and send from.
//! - [`hash`]: the SHA-1 hasher pool that verifies pieces straight from the mapping.
//! - [`reuse`]: a download's pieces filled from a release already on the host, verified.
//! - [`wire`], [`peer`], [`swarm`]: the peer protocol as a sans-IO state machine.
//! - [`runtime`]: thread-per-core io_uring event loops that drive the state machines.
//! - [`node`]: one torrent seeded or downloaded: the runtime, protocol, storage and
//!   hasher wired together, with announces and progress.
//! - [`tracker`]: HTTP tracker server and announce client.
//! - [`stats`]: counters and latency histograms reported by the CLI.
//! - [`metrics`]: the same counters for Prometheus, served over HTTP.
//! - [`deploy`]: fleet deploys over ssh and the atomic on-host release layout.

pub mod bencode;
pub mod deploy;
pub mod fsat;
pub mod geometry;
pub mod hash;
pub mod metainfo;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod reuse;
pub mod runtime;
pub mod stats;
pub mod storage;
pub mod swarm;
pub mod tracker;
pub mod wire;
