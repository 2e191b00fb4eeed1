//! The HTTP tracker (BEP 3, compact peers BEP 23, IPv6 peers BEP 7, scrape) and the
//! announce client the peers use to find each other.
//!
//! - [`proto`]: pure functions for both sides: request heads and query strings parsed into
//!   typed requests, responses encoded to and decoded from bencode. Sans-IO.
//! - [`server`]: [`TrackerServer`], one thread that multiplexes nonblocking sockets with
//!   `poll(2)` (the tracker is low-rate; a thread per connection would let a slowloris
//!   client pin threads), over [`Swarms`], the sans-IO swarm bookkeeping.
//! - [`client`]: blocking [`announce`] and [`scrape`] over plain HTTP/1.0, and
//!   [`Announcer`], the sans-IO schedule (interval, min interval, backoff) the runtime
//!   follows.
//! - [`topology`]: which rack each peer is in (`--topology FILE`, deploy's `rack=`), so
//!   [`Swarms`] can hand out mostly same-rack peers.

pub mod client;
pub mod proto;
pub mod server;
pub mod topology;

pub use client::{announce, scrape, Announcer, BackoffPolicy};
pub use proto::{
    AnnounceRequest, AnnounceResponse, Event, PeerInfo, ProtoError, ScrapeEntry, TrackerRequest,
};
pub use server::{
    pair_score, rack_counts, AnnounceEvents, Outcome, RackCounts, Swarms, TrackerConfig,
    TrackerServer, TrackerStats, TrackerStatsHandle, DEFAULT_MAX_PEERS_PER_IP,
    DEFAULT_MAX_SWARMS_PER_IP,
};
pub use topology::{HostRack, RackId, Topology, TopologyError};

/// Murder's tracker port, kept as corvid's default so existing firewall rules fit.
pub const DEFAULT_PORT: u16 = 8998;

/// Everything that can go wrong talking to or running a tracker; each names the tracker
/// URL or address involved.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("https trackers are not supported: {0}")]
    HttpsUnsupported(String),
    #[error("bad tracker URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("tracker {url}: {context}: {source}")]
    Io {
        url: String,
        context: &'static str,
        source: std::io::Error,
    },
    #[error("tracker {0}: timed out")]
    Timeout(String),
    #[error("tracker {url}: response larger than {limit} bytes")]
    ResponseTooLarge { url: String, limit: usize },
    #[error("tracker {url}: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("tracker {url}: malformed HTTP response: {why}")]
    BadHttp { url: String, why: String },
    #[error("tracker {url}: {source}")]
    Proto { url: String, source: ProtoError },
    #[error("tracker {url} refused: {reason}")]
    Failure { url: String, reason: String },
    #[error("tracker server on {addr}: {context}: {source}")]
    Server {
        addr: String,
        context: &'static str,
        source: std::io::Error,
    },
}
