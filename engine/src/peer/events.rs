//! What a connection tells its runtime: events, data to send, why it closed, counters.

use crate::geometry::{BlockRef, PieceIndex};
use crate::wire;

/// Why a connection ends. Each names what the remote did wrong, or which rule ended it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("malformed message: {0}")]
    Wire(#[from] wire::WireError),
    #[error("handshake for info-hash {} which is not this torrent", hex(.0))]
    WrongInfoHash([u8; 20]),
    #[error("no handshake within the timeout")]
    HandshakeTimeout,
    #[error("nothing received for longer than the idle timeout")]
    Idle,
    #[error("stalled: requests timed out and nothing received since")]
    Stalled,
    #[error("peer address is banned for sending pieces that failed their hash")]
    Banned,
    #[error("{0} after the first message")]
    BitfieldNotFirst(&'static str),
    #[error("have for piece {0}, past the end of the torrent")]
    HaveOutOfRange(u32),
    #[error(
        "request for piece {index} offset {begin} length {len} is outside the torrent or too long"
    )]
    RequestOutsideTorrent { index: u32, begin: u32, len: u32 },
    #[error("request for piece {0} which we do not have")]
    RequestForMissingPiece(u32),
    #[error("piece {index} offset {begin} length {len} was never requested")]
    UnrequestedPiece { index: u32, begin: u32, len: u32 },
    #[error("{0} sent without the fast extension negotiated")]
    FastNotNegotiated(&'static str),
    #[error("extension message sent without the extension protocol negotiated")]
    ExtendedNotNegotiated,
    #[error("both sides have the whole torrent")]
    BothComplete,
    #[error("connected to ourselves (the remote sent our own peer id)")]
    SelfConnection,
    #[error("more than {0} bytes of replies queued: the remote sends faster than it reads")]
    SendQueueOverflow(usize),
    #[error("private swarm: {0}")]
    NotAuthorized(&'static str),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The remote's handshake checked out (in a private swarm: and its proof of the
    /// secret); `peer_id` is who it is from now on.
    HandshakeDone {
        peer_id: [u8; 20],
        fast: bool,
        extended: bool,
    },
    /// The next `block.len` bytes on the socket are a block's payload: put them into
    /// storage at `block` (or read and drop them if `discard`), then call
    /// [`PeerConn::handle_payload_done`]. `handle_bytes` consumes nothing until then.
    ReceivePayload { block: BlockRef, discard: bool },
    /// Every block of the piece is in storage: hash it and report with
    /// [`Swarm::handle_verdict`].
    PieceComplete(PieceIndex),
    /// The connection is over; call [`PeerConn::handle_close`] and drop it.
    Close(CloseReason),
}

/// Data to send that is not a small control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// Send `header`, then `block.len` bytes of the block straight from storage.
    Block {
        header: [u8; wire::PIECE_HEADER_LEN],
        block: BlockRef,
    },
}

/// Byte counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub uploaded: u64,
    pub downloaded: u64,
    /// `request` messages sent (one may cover several 16 KiB blocks).
    pub requests: u64,
}
