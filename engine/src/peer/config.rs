//! Per-connection tuning and the seeding-plan constants a connection follows.

use std::time::Duration;

use super::auth::Secret;
use super::CORVID_MAX_REQUEST;
use crate::geometry::BLOCK_SIZE;

/// Per-connection tuning.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub handshake_timeout: Duration,
    /// Close a connection that has sent nothing, not even a keep-alive, for this long.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without sending anything (BEP 3: 2 minutes).
    pub keepalive_interval: Duration,
    /// With requests outstanding and no block for this long, the peer is snubbed: its
    /// requests go back to the picker and it gets one block at a time until it delivers.
    pub request_timeout: Duration,
    /// A snubbed remote (its requests timed out, see `request_timeout`) that has sent
    /// nothing at all, not even a keep-alive, for this long while we still wait on it is
    /// gone (its process stopped, its link cut): the connection is closed
    /// ([`CloseReason::Stalled`]) so its slot can go to a live peer, rather than held until
    /// the idle timeout. A slow remote still sends bytes and is never closed by this.
    pub stalled_close_timeout: Duration,
    /// An unchoked remote that neither asks for nor takes a block for this long is not
    /// using its upload slot (e.g. it stopped reading its socket): it is choked, freeing
    /// the slot for peers that read (otherwise enough such connections hold every slot
    /// until the idle timeout).
    pub upload_stall_timeout: Duration,
    /// How long such a remote stays choked before it may have a slot again.
    pub stall_penalty: Duration,
    /// While every upload slot is taken and other interested remotes were refused one
    /// (see [`crate::swarm::Swarm::slots_wanted_since`]), a remote idle this long gives its
    /// slot back (and may queue again after as long): a seeder's slots go to the peers
    /// that ask, not to those that got what the seeding plan gave them.
    pub contended_upload_idle: Duration,
    pub initial_inflight: u64,
    pub min_inflight: u64,
    pub max_inflight: u64,
    pub pipeline_time: Duration,
    /// Requests we queue for a remote that advertises no `reqq`.
    pub default_remote_reqq: u32,
    /// Requests we accept queued from one remote (advertised as our `reqq`).
    pub our_reqq: u32,
    /// Largest request served to stock clients: 16 KiB, what all of them send.
    pub max_request: u32,
    /// Largest request served to corvid peers (extension handshake `v` starts with
    /// "corvid"), which may ask for bigger blocks to cut per-message overhead.
    pub max_request_corvid: u32,
    /// Size of the requests we send to corvid peers (capped by what the remote says it
    /// serves, rounded down to whole 16 KiB blocks, at most [`MAX_REQUEST_BLOCKS`]). One
    /// `piece` message of 128 KiB costs the receiver one header parse and one receive into
    /// the mapping where 16 KiB blocks cost eight; the swarm still accounts in 16 KiB
    /// blocks, and stock clients and end-game duplicates still get 16 KiB requests.
    pub request_size_corvid: u32,
    /// Our extension handshake `v`.
    pub client: String,
    pub listen_port: Option<u16>,
    /// A private swarm's shared secret: the remote must prove it (see [`auth`]) before we
    /// send it our bitfield or serve it anything. `None`: a public swarm, stock clients
    /// welcome.
    pub secret: Option<Secret>,
    /// Take part in corvid's seeding plan (see [`crate::swarm`]'s module docs): as a
    /// seeder, hand each corvid peer the pieces to fetch from us; as a peer, follow a
    /// seeder's plan. Off: a stock seeder and a stock peer.
    pub seed_plan: bool,
}

/// A connection's part in the seeding plan, as the downloading side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Follow {
    /// The remote does not plan: request anything it has.
    Free,
    /// The remote plans: request only what it suggested (`allowed`).
    Assigned,
    /// The remote has handed out everything once: request anything it has not refused.
    Open,
}

/// Least bytes of pieces a planning seeder keeps handed to one peer and not yet sent, so
/// the peer's requests never run dry between a piece going out and the next suggest.
pub const PLAN_DEPTH_BYTES: u64 = 1 << 20;

/// Pieces handed to one peer at a time: [`PLAN_DEPTH_BYTES`], at least 2, at most this.
pub const PLAN_DEPTH_MAX: usize = 64;

/// How long a follower refused a piece waits for one of its own connections to announce
/// it before asking the seeder again, when it cannot wait for the holder itself: the
/// seeder did not name one (an older seeder) or the named holder is not among our
/// connections (the fleet is not a full mesh, or the holder is out of reach). A refusal
/// that names a holder we are connected to waits for that holder's `have` (or for it to
/// leave) with no timer, so it never races the piece's first copy, however long that
/// takes to arrive (a second ask is always served, so asking early costs the seeder a
/// copy). Long next to a first copy's usual trip (about 1 s at N=24 on 100 Mbit/s
/// links), short next to a deploy.
pub const PLAN_REASK_FALLBACK: Duration = Duration::from_secs(2);

/// The BEP 10 extension message a planning seeder sends right after refusing a follower a
/// piece: `{"piece": i, "holder": <20-byte peer id>}`, the peer that holds (or is being
/// sent) the piece's first copy. Advertised in `m` by every corvid that takes part in the
/// plan; stock clients never see it.
pub const HOLDER_EXT: &str = "corvid_holder";

/// The id we receive [`HOLDER_EXT`] under (our `m` entry).
pub(super) const HOLDER_EXT_ID: u8 = 1;

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(120),
            request_timeout: Duration::from_secs(20),
            stalled_close_timeout: Duration::from_secs(40),
            upload_stall_timeout: Duration::from_secs(10),
            stall_penalty: Duration::from_secs(30),
            contended_upload_idle: Duration::from_secs(1),
            initial_inflight: 1 << 20,
            min_inflight: 256 << 10,
            max_inflight: 64 << 20,
            pipeline_time: Duration::from_millis(250),
            default_remote_reqq: 250,
            our_reqq: 4096,
            max_request: BLOCK_SIZE,
            max_request_corvid: CORVID_MAX_REQUEST,
            request_size_corvid: CORVID_MAX_REQUEST,
            client: concat!("corvid ", env!("CARGO_PKG_VERSION")).to_owned(),
            listen_port: None,
            secret: None,
            seed_plan: true,
        }
    }
}
