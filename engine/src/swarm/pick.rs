//! The downloader's picker side of [`Swarm`]: starting partial pieces, choosing new ones
//! rarest first with random ties, and handing a connection its next blocks
//! ([`Swarm::pick_blocks`]), endgame duplicates included.
//!
//! Separate from the parent, which holds the swarm's state and its block life cycle
//! (begin, finish, release, verdicts), because this is the policy that reads it.

use super::*;

impl Swarm {
    pub(super) fn start_partial(&mut self, piece: u32) -> u32 {
        let n = self
            .lengths
            .piece(piece)
            .map_or(0, |p| self.lengths.blocks_in_piece(p)) as usize;
        let pi = match self.spare_partials.pop() {
            Some(pi) => {
                let p = &mut self.partials[pi as usize];
                p.piece = piece;
                p.blocks.clear();
                p.blocks.resize(n, Block::Free);
                p.received = 0;
                p.free = n as u32;
                p.contributors.clear();
                p.suspect = false;
                p.exclusive = None;
                pi
            }
            None => {
                self.partials.push(Partial {
                    piece,
                    blocks: vec![Block::Free; n],
                    received: 0,
                    free: n as u32,
                    contributors: Vec::new(),
                    suspect: false,
                    exclusive: None,
                });
                self.partials.len() as u32 - 1
            }
        };
        self.partial_of[piece as usize] = pi;
        if let Some(byte) = self.unstarted.get_mut(piece as usize / 8) {
            *byte &= !(0x80u8 >> (piece % 8));
        }
        self.active.push(pi);
        pi
    }

    pub(super) fn block_ref(&self, piece: u32, n: usize) -> Option<BlockRef> {
        self.lengths
            .piece(piece)
            .and_then(|p| self.lengths.block(p, n as u32))
    }

    /// The `k` (at most [`NEW_PICK_BATCH`]) rarest pieces the remote has that nobody has
    /// started, rarest first, ties broken at random; returns how many were found.
    ///
    /// One linear pass over the `unstarted` and remote bitfields a byte at a time (zero
    /// bytes cost nothing), reading availability only for candidates and hashing for the
    /// tie-break only on ties. For 40 000 pieces that is tens of microseconds, and one pass
    /// serves a whole pipeline refill.
    pub(super) fn pick_new_pieces(
        &mut self,
        remote: &Bitfield,
        k: usize,
        found: &mut [u32; NEW_PICK_BATCH],
    ) -> usize {
        let k = k.clamp(1, NEW_PICK_BATCH);
        let salt = self.tie_salt;
        // (availability, tie, piece), sorted ascending; `len` valid entries.
        let mut best = [(u32::MAX, u64::MAX, 0u32); NEW_PICK_BATCH];
        let mut len = 0;
        for (byte_i, (&r, &u)) in remote
            .as_bytes()
            .iter()
            .zip(self.unstarted.iter())
            .enumerate()
        {
            let mut bits = r & u;
            while bits != 0 {
                let lead = bits.leading_zeros();
                bits &= !(0x80u8 >> lead);
                let i = byte_i as u32 * 8 + lead;
                let avail = self.availability[i as usize];
                if len == k && avail > best[k - 1].0 {
                    continue;
                }
                let cand = (avail, mix(u64::from(i) ^ salt), i);
                if len == k && cand >= best[k - 1] {
                    continue;
                }
                // Insert in order, dropping the worst if full.
                let mut at = len.min(k - 1);
                best[at] = cand;
                while at > 0 && best[at] < best[at - 1] {
                    best.swap(at, at - 1);
                    at -= 1;
                }
                len = (len + 1).min(k);
            }
        }
        for (slot, b) in found.iter_mut().zip(best.iter()).take(len) {
            *slot = b.2;
        }
        len
    }

    /// Picks up to `want` blocks for the connection `key` whose remote has `remote`:
    /// first free blocks of started pieces (finish what is begun, so pieces reach the
    /// hasher and get shared sooner), then new pieces rarest first, then, in end-game,
    /// blocks already outstanding elsewhere that `already` (the connection's own
    /// outstanding set) does not hold. Each pick is counted as outstanding; `emit` gets it.
    pub fn pick_blocks(
        &mut self,
        key: PeerKey,
        remote: &Bitfield,
        mut want: usize,
        already: impl Fn(BlockRef) -> bool,
        mut emit: impl FnMut(BlockRef),
    ) {
        if want == 0 || self.is_banned(key) {
            return;
        }
        let want_at_start = want;
        want = self.pick_started(key, remote, want, &mut emit);
        want = self.pick_new(remote, want, &mut emit);
        // End-game duplicates, only in a call that found nothing fresh, so that
        // `already` (which cannot see this call's picks) is complete.
        if want < want_at_start || self.free_blocks != 0 {
            return;
        }
        self.pick_endgame(key, remote, want, already, &mut emit);
    }

    /// Step 1 of [`Swarm::pick_blocks`]: free blocks of started pieces the remote has (a
    /// suspect piece only for the connection it is reserved to). Returns what is still wanted.
    fn pick_started(
        &mut self,
        key: PeerKey,
        remote: &Bitfield,
        mut want: usize,
        emit: &mut impl FnMut(BlockRef),
    ) -> usize {
        let mut i = 0;
        while i < self.active.len() && want > 0 {
            let pi = self.active[i] as usize;
            i += 1;
            let piece = self.partials[pi].piece;
            if self.partials[pi].free == 0
                || !remote.get(piece)
                || self.partials[pi].exclusive.is_some_and(|k| k != key)
            {
                continue;
            }
            let mut took = false;
            for n in 0..self.partials[pi].blocks.len() {
                if want == 0 {
                    break;
                }
                if self.partials[pi].blocks[n] == Block::Free {
                    if let Some(b) = self.block_ref(piece, n) {
                        self.partials[pi].blocks[n] = Block::Requested(1);
                        self.partials[pi].free -= 1;
                        self.free_blocks -= 1;
                        want -= 1;
                        took = true;
                        emit(b);
                    }
                }
            }
            if took && self.partials[pi].suspect {
                self.partials[pi].exclusive = Some(key);
            }
        }
        want
    }

    /// Step 2 of [`Swarm::pick_blocks`]: new pieces, rarest first, a batch per pass over
    /// the bitfields. Returns what is still wanted.
    fn pick_new(
        &mut self,
        remote: &Bitfield,
        mut want: usize,
        emit: &mut impl FnMut(BlockRef),
    ) -> usize {
        let per_piece =
            (self.lengths.piece_length() / u64::from(crate::geometry::BLOCK_SIZE)).max(1);
        let mut found = [0u32; NEW_PICK_BATCH];
        while want > 0 {
            let k = (want as u64).div_ceil(per_piece) as usize;
            let n = self.pick_new_pieces(remote, k, &mut found);
            if n == 0 {
                break;
            }
            for &piece in &found[..n] {
                if want == 0 {
                    break;
                }
                let pi = self.start_partial(piece) as usize;
                for n in 0..self.partials[pi].blocks.len() {
                    if want == 0 {
                        break;
                    }
                    if let Some(b) = self.block_ref(piece, n) {
                        self.partials[pi].blocks[n] = Block::Requested(1);
                        self.partials[pi].free -= 1;
                        self.free_blocks -= 1;
                        want -= 1;
                        emit(b);
                    }
                }
            }
        }
        want
    }

    /// Step 3 of [`Swarm::pick_blocks`]: end-game duplicates of blocks outstanding
    /// elsewhere, up to `endgame_dup` copies, skipping what `already` says this connection has.
    fn pick_endgame(
        &mut self,
        key: PeerKey,
        remote: &Bitfield,
        mut want: usize,
        already: impl Fn(BlockRef) -> bool,
        emit: &mut impl FnMut(BlockRef),
    ) {
        let dup = self.cfg.endgame_dup;
        for &pi in &self.active {
            let p = &mut self.partials[pi as usize];
            if !remote.get(p.piece) || p.exclusive.is_some_and(|k| k != key) {
                continue;
            }
            for n in 0..p.blocks.len() {
                if want == 0 {
                    return;
                }
                if let Block::Requested(c) = p.blocks[n] {
                    let Some(b) = self
                        .lengths
                        .piece(p.piece)
                        .and_then(|x| self.lengths.block(x, n as u32))
                    else {
                        continue;
                    };
                    if c < dup && !already(b) {
                        p.blocks[n] = Block::Requested(c + 1);
                        want -= 1;
                        emit(b);
                    }
                }
            }
        }
    }

    /// Keeps `free_blocks` and the piece's own free count in step with a block's state.
    pub(super) fn note_free(&mut self, b: BlockRef, delta: i64) {
        let pi = self.partial_of[b.piece.as_usize()];
        if pi != NONE && delta != 0 {
            let p = &mut self.partials[pi as usize];
            p.free = (i64::from(p.free) + delta) as u32;
            self.free_blocks = (self.free_blocks as i64 + delta) as u64;
        }
    }

    pub(super) fn block_state(&mut self, b: BlockRef) -> Option<&mut Block> {
        let pi = self.partial_of[b.piece.as_usize()];
        let n = b.offset / crate::geometry::BLOCK_SIZE;
        if pi == NONE || n * crate::geometry::BLOCK_SIZE != b.offset {
            return None;
        }
        let n = n as usize;
        self.partials[pi as usize].blocks.get_mut(n)
    }
}
