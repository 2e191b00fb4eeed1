//! Piece and block arithmetic for one torrent, in one type.
//!
//! A torrent's payload is one byte stream (its files concatenated) cut into pieces of
//! `piece_length` bytes (the last one shorter), and each piece into blocks of [`BLOCK_SIZE`]
//! on the wire. Every index that comes from a peer or a file is checked here once and
//! becomes a [`PieceIndex`] or [`BlockRef`], so the code behind cannot go out of bounds.

/// Block size on the wire: 16 KiB, what every BitTorrent client requests and accepts.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// The largest piece length corvid accepts from a torrent (and the largest `make` writes
/// is 16 MiB). Larger pieces would make one hash job hold too much memory hostage.
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;

/// Why a torrent's numbers cannot describe a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("piece length {0} is not a positive multiple of 16 KiB up to 64 MiB")]
    BadPieceLength(u64),
    #[error("{pieces} piece hashes do not cover {total} bytes in pieces of {piece_length}")]
    PieceCountMismatch {
        pieces: u64,
        total: u64,
        piece_length: u64,
    },
}

/// A piece index known to be inside the torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceIndex(u32);

impl PieceIndex {
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

/// A block known to be inside its piece: `offset` is block-aligned or the request came
/// from a peer and was checked to fit; `len` is at most what the piece has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pub piece: PieceIndex,
    pub offset: u32,
    pub len: u32,
}

/// The geometry of one torrent's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths {
    total: u64,
    piece_length: u64,
    pieces: u32,
}

impl Lengths {
    /// Checks that `piece_count` hashes of pieces of `piece_length` cover exactly `total`
    /// bytes. Piece lengths must be multiples of 16 KiB (every real client writes powers
    /// of two), which keeps blocks from straddling pieces.
    pub fn new(total: u64, piece_length: u64, piece_count: u64) -> Result<Self, GeometryError> {
        if piece_length == 0
            || !piece_length.is_multiple_of(u64::from(BLOCK_SIZE))
            || piece_length > MAX_PIECE_LENGTH
        {
            return Err(GeometryError::BadPieceLength(piece_length));
        }
        let expected = total.div_ceil(piece_length);
        if expected != piece_count || piece_count > u64::from(u32::MAX) {
            return Err(GeometryError::PieceCountMismatch {
                pieces: piece_count,
                total,
                piece_length,
            });
        }
        Ok(Lengths {
            total,
            piece_length,
            pieces: piece_count as u32,
        })
    }

    pub fn total_length(&self) -> u64 {
        self.total
    }

    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    pub fn piece_count(&self) -> u32 {
        self.pieces
    }

    /// Checks a piece index that came from outside (a peer, a resume file).
    pub fn piece(&self, index: u32) -> Option<PieceIndex> {
        (index < self.pieces).then_some(PieceIndex(index))
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> {
        (0..self.pieces).map(PieceIndex)
    }

    /// Byte offset of the piece's first byte in the payload stream.
    pub fn piece_offset(&self, piece: PieceIndex) -> u64 {
        u64::from(piece.0) * self.piece_length
    }

    /// Length of a piece: `piece_length`, except the last which holds the remainder.
    pub fn piece_size(&self, piece: PieceIndex) -> u32 {
        let start = self.piece_offset(piece);
        (self.total - start).min(self.piece_length) as u32
    }

    /// Number of [`BLOCK_SIZE`] blocks in a piece (the last may be short).
    pub fn blocks_in_piece(&self, piece: PieceIndex) -> u32 {
        self.piece_size(piece).div_ceil(BLOCK_SIZE)
    }

    /// The `n`th wire block of a piece.
    pub fn block(&self, piece: PieceIndex, n: u32) -> Option<BlockRef> {
        let size = self.piece_size(piece);
        let offset = n.checked_mul(BLOCK_SIZE)?;
        (offset < size).then(|| BlockRef {
            piece,
            offset,
            len: (size - offset).min(BLOCK_SIZE),
        })
    }

    /// Checks a block that a peer asked for or sent: inside the piece, non-empty, at most
    /// `max_len` bytes (16 KiB for strangers; corvid peers may be allowed more).
    pub fn checked_block(
        &self,
        index: u32,
        offset: u32,
        len: u32,
        max_len: u32,
    ) -> Option<BlockRef> {
        let piece = self.piece(index)?;
        let end = offset.checked_add(len)?;
        (len > 0 && len <= max_len && end <= self.piece_size(piece)).then_some(BlockRef {
            piece,
            offset,
            len,
        })
    }

    /// Bytes in a bitfield message for this torrent.
    pub fn bitfield_len(&self) -> usize {
        (self.pieces as usize).div_ceil(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_piece_is_short() {
        let l = Lengths::new(40_000, 16_384, 3).unwrap();
        let last = l.piece(2).unwrap();
        assert_eq!(l.piece_size(last), 40_000 - 2 * 16_384);
        assert_eq!(l.blocks_in_piece(last), 1);
        assert!(l.piece(3).is_none());
    }

    #[test]
    fn blocks_cover_piece_exactly() {
        let l = Lengths::new(5 * 65_536 + 100, 65_536, 6).unwrap();
        for p in l.pieces() {
            let mut covered = 0;
            for n in 0..l.blocks_in_piece(p) {
                let b = l.block(p, n).unwrap();
                assert_eq!(b.offset, covered);
                covered += b.len;
            }
            assert_eq!(covered, l.piece_size(p));
            assert!(l.block(p, l.blocks_in_piece(p)).is_none());
        }
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(Lengths::new(100, 0, 1).is_err());
        assert!(Lengths::new(100, 1000, 1).is_err());
        assert!(Lengths::new(100, 16_384, 2).is_err());
        assert!(Lengths::new(0, 16_384, 0).is_ok());
        assert!(Lengths::new(1 << 40, 1 << 30, 1024).is_err());
    }

    #[test]
    fn checked_block_bounds() {
        let l = Lengths::new(40_000, 16_384, 3).unwrap();
        assert!(l.checked_block(0, 0, 16_384, BLOCK_SIZE).is_some());
        assert!(l.checked_block(0, 1, 16_384, BLOCK_SIZE).is_none());
        assert!(l.checked_block(2, 0, 7_232, BLOCK_SIZE).is_some());
        assert!(l.checked_block(2, 0, 7_233, BLOCK_SIZE).is_none());
        assert!(l.checked_block(3, 0, 1, BLOCK_SIZE).is_none());
        assert!(l.checked_block(0, 0, 0, BLOCK_SIZE).is_none());
        assert!(l.checked_block(0, u32::MAX, 2, BLOCK_SIZE).is_none());
    }
}
