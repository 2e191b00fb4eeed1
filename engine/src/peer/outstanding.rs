//! Requests on the wire: ours outstanding (a live-block mask each) and the `piece`
//! message being received, one run of same-verdict blocks at a time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use crate::geometry::{BlockRef, PieceIndex, BLOCK_SIZE};
use crate::swarm::Swarm;

/// A `piece` message whose payload is being received, one run of blocks at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Incoming {
    pub(super) piece: PieceIndex,
    pub(super) begin: u32,
    pub(super) len: u32,
    /// Covered blocks this connection writes into storage (bit i: the block at
    /// `begin + i * BLOCK_SIZE`, accepted by [`Swarm::begin_block`]); the rest is dropped.
    pub(super) write: u64,
    /// Payload bytes already moved (runs before the current one).
    pub(super) done: u32,
    /// Length of the current run: maximal blocks from `done` with the same verdict, one
    /// [`Event::ReceivePayload`].
    pub(super) run: u32,
}

impl Incoming {
    pub(super) fn run_block(&self) -> BlockRef {
        BlockRef {
            piece: self.piece,
            offset: self.begin + self.done,
            len: self.run,
        }
    }

    pub(super) fn run_writes(&self) -> bool {
        (self.write >> (self.done / BLOCK_SIZE)) & 1 == 1
    }
}

/// A request on the wire: (piece, begin, length). It covers one or more swarm blocks.
pub(super) type ReqKey = (PieceIndex, u32, u32);

/// One request we sent (or several identical ones, see `copies`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Outstanding {
    /// Covered blocks still ours in the swarm (bit i: the block at `begin + i *
    /// BLOCK_SIZE`). The others were cancelled (end-game, snub) and already given back;
    /// their payload, if it still comes, is dropped.
    pub(super) live: u64,
    /// Copies of this exact request sent and not answered yet: a cancelled request may be
    /// asked again before the remote answered (or ignored) the cancel.
    pub(super) copies: u16,
    pub(super) sent: Instant,
}

/// Hashes our own request keys. Only requests we chose are ever inserted (remote input
/// only looks up), so a cheap multiplicative hash cannot be pushed into long probe chains.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(n)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type Requests = HashMap<ReqKey, Outstanding, BuildHasherDefault<KeyHasher>>;

/// The `i`th swarm block a request covers.
pub(super) fn covered_block(key: ReqKey, i: u32) -> BlockRef {
    let off = i * BLOCK_SIZE;
    BlockRef {
        piece: key.0,
        offset: key.1 + off,
        len: key.2.saturating_sub(off).min(BLOCK_SIZE),
    }
}

pub(super) fn blocks_covered(key: ReqKey) -> u32 {
    key.2.div_ceil(BLOCK_SIZE)
}

pub(super) fn full_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Bytes of the blocks of `key` set in `mask`.
#[cfg(test)]
pub(super) fn mask_bytes(key: ReqKey, mask: u64) -> u64 {
    (0..blocks_covered(key))
        .filter(|i| (mask >> i) & 1 == 1)
        .map(|i| u64::from(covered_block(key, i).len))
        .sum()
}

/// The bit of `b` in request `key`, if the request covers it.
pub(super) fn covering_bit(key: ReqKey, b: BlockRef) -> Option<u64> {
    (key.0 == b.piece && b.offset >= key.1 && b.offset < key.1 + key.2)
        .then(|| 1u64 << ((b.offset - key.1) / BLOCK_SIZE))
}

/// Gives back the blocks of `key` set in `mask`; returns their bytes.
pub(super) fn release_mask(swarm: &mut Swarm, key: ReqKey, mask: u64) -> u64 {
    let mut bytes = 0;
    for i in 0..blocks_covered(key) {
        if (mask >> i) & 1 == 1 {
            let b = covered_block(key, i);
            swarm.release(b);
            bytes += u64::from(b.len);
        }
    }
    bytes
}
