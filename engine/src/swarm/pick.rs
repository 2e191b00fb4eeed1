//! The downloader's picker side of [`Swarm`]: starting partial pieces, choosing new ones
//! rarest first with random ties, and handing a connection its next blocks
//! ([`Swarm::pick_blocks`]), endgame duplicates included.
//!
//! Separate from the parent, which holds the swarm's state and its block life cycle
//! (begin, finish, release, verdicts), because this is the policy that reads it.
//!
//! Rack awareness: in a fleet the scarce link is a rack switch's uplink to the spine
//! (shared by ~40 hosts, oversubscribed), not a host's own. A connection the caller marks
//! same-rack ([`Swarm::set_peer_local`]) counts its remote's pieces in a second,
//! rack-local availability; while any same-rack connection is live, a cross-rack
//! connection is asked only for pieces no same-rack connection has, so each piece
//! crosses into the rack about once and spreads inside it. With no connection marked,
//! picking is as before.

use super::*;

/// New pieces a host fetches from other racks at once (see the module docs).
pub const CROSS_RACK_PIECES: usize = 1;

impl Swarm {
    /// Marks connection `key` as behind our rack switch (or not). Call it right after
    /// registering the connection, before its remote's bitfield is counted.
    pub fn set_peer_local(&mut self, key: PeerKey, local: bool) {
        let idx = key.idx as usize;
        if self.slot(key).is_none() || self.peers[idx].local == local {
            return;
        }
        self.peers[idx].local = local;
        if local {
            self.local_peers += 1;
        } else {
            self.local_peers -= 1;
        }
        self.epoch += 1;
    }

    /// Marks connection `key` same-rack once its remote's pieces (`counted`) have already
    /// been counted in the plain availability: they move into the rack-local one too. The
    /// daemon learns a remote's rack at its handshake, and a bitfield read in the same
    /// batch of bytes is counted before the runtime sees that event.
    pub fn mark_peer_local(&mut self, key: PeerKey, counted: &Bitfield) {
        if self.slot(key).is_none() || self.is_peer_local(key) {
            return;
        }
        self.set_peer_local(key, true);
        for i in counted.ones() {
            if let Some(a) = self.local_availability.get_mut(i as usize) {
                *a += 1;
            }
        }
    }

    /// Whether `key` was marked same-rack.
    pub fn is_peer_local(&self, key: PeerKey) -> bool {
        self.slot(key).is_some_and(|s| s.local)
    }

    /// Connection `key`'s remote announced `piece` (once per piece and connection).
    pub fn peer_gained(&mut self, key: PeerKey, piece: PieceIndex) {
        self.add_availability(piece);
        if self.is_peer_local(key) {
            self.local_availability[piece.as_usize()] += 1;
        }
    }

    /// Connection `key` that announced `piece` is going away.
    pub fn peer_lost(&mut self, key: PeerKey, piece: PieceIndex) {
        self.remove_availability(piece);
        if self.is_peer_local(key) {
            let a = &mut self.local_availability[piece.as_usize()];
            *a = a.saturating_sub(1);
            if *a == 0 {
                // Cross-rack connections may pick it now.
                self.epoch += 1;
            }
        }
    }

    /// Same-rack connections that have `piece`.
    pub fn local_availability(&self, piece: PieceIndex) -> u32 {
        self.local_availability[piece.as_usize()]
    }

    /// Whether `key` is a cross-rack connection that must leave pieces a same-rack
    /// connection has to that connection.
    fn cross_rack(&self, key: PeerKey) -> bool {
        self.local_peers > 0 && !self.is_peer_local(key)
    }

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
        cross: bool,
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
                if cross && self.local_availability[i as usize] > 0 {
                    continue;
                }
                // Across racks, every candidate is equally rare in our rack (nobody
                // there has it): a random order spreads rack-mates over different pieces
                // where rarest first would send them all after the same few.
                let avail = if cross {
                    0
                } else {
                    self.availability[i as usize]
                };
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
        let cross = self.cross_rack(key);
        want = self.pick_started(key, remote, cross, want, &mut emit);
        want = self.pick_new(remote, cross, want, &mut emit);
        // End-game duplicates, only in a call that found nothing fresh, so that
        // `already` (which cannot see this call's picks) is complete.
        if want < want_at_start || self.free_blocks != 0 {
            return;
        }
        self.pick_endgame(key, remote, cross, want, already, &mut emit);
    }

    /// Step 1 of [`Swarm::pick_blocks`]: free blocks of started pieces the remote has (a
    /// suspect piece only for the connection it is reserved to). Returns what is still wanted.
    fn pick_started(
        &mut self,
        key: PeerKey,
        remote: &Bitfield,
        cross: bool,
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
                || (cross && self.local_availability[piece as usize] > 0)
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
        cross: bool,
        mut want: usize,
        emit: &mut impl FnMut(BlockRef),
    ) -> usize {
        let per_piece =
            (self.lengths.piece_length() / u64::from(crate::geometry::BLOCK_SIZE)).max(1);
        let mut found = [0u32; NEW_PICK_BATCH];
        if cross {
            // Pieces this host is bringing into the rack now: at most CROSS_RACK_PIECES,
            // so that rack-mates (who cannot see them until they are verified) pick
            // others, and a piece mostly crosses the rack uplink once.
            let inflight = self
                .active
                .iter()
                .filter(|&&pi| {
                    self.local_availability[self.partials[pi as usize].piece as usize] == 0
                })
                .count();
            want = want.min(CROSS_RACK_PIECES.saturating_sub(inflight) * per_piece as usize);
        }
        while want > 0 {
            let k = (want as u64).div_ceil(per_piece) as usize;
            let n = self.pick_new_pieces(remote, cross, k, &mut found);
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
        cross: bool,
        mut want: usize,
        already: impl Fn(BlockRef) -> bool,
        emit: &mut impl FnMut(BlockRef),
    ) {
        let dup = self.cfg.endgame_dup;
        for &pi in &self.active {
            let p = &mut self.partials[pi as usize];
            if !remote.get(p.piece)
                || p.exclusive.is_some_and(|k| k != key)
                || (cross && self.local_availability[p.piece as usize] > 0)
            {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BLOCK_SIZE;

    /// `pieces` pieces of two blocks each.
    fn swarm(pieces: u32) -> Swarm {
        let pl = u64::from(2 * BLOCK_SIZE);
        let l = Lengths::new(pl * u64::from(pieces), pl, u64::from(pieces)).unwrap();
        Swarm::new(SwarmConfig::default(), [0; 20], l, Bitfield::new(pieces), 5)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// Registers a connection whose remote holds `pieces`, marked same-rack or not.
    fn join(s: &mut Swarm, n: u8, local: bool, pieces: &[u32]) -> (PeerKey, Bitfield) {
        let key = s.add_peer(ip(n)).unwrap();
        s.set_peer_local(key, local);
        let mut bf = Bitfield::new(s.lengths().piece_count());
        for &p in pieces {
            bf.set(p);
            s.peer_gained(key, s.lengths().piece(p).unwrap());
        }
        (key, bf)
    }

    fn picked_pieces(s: &mut Swarm, key: PeerKey, remote: &Bitfield, want: usize) -> Vec<u32> {
        let mut v = Vec::new();
        s.pick_blocks(key, remote, want, |_| false, |b| v.push(b.piece.get()));
        s.check_invariants();
        v.dedup();
        v
    }

    #[test]
    fn a_cross_rack_connection_is_asked_only_for_what_no_rack_mate_has() {
        let mut s = swarm(8);
        let (mate, mate_bf) = join(&mut s, 1, true, &[0, 1, 2, 3, 4, 5]);
        let (far, far_bf) = join(&mut s, 2, false, &[0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(s.local_availability(s.lengths().piece(0).unwrap()), 1);
        assert_eq!(s.availability(s.lengths().piece(0).unwrap()), 2);
        let far_got = picked_pieces(&mut s, far, &far_bf, 64);
        assert_eq!(far_got.len(), CROSS_RACK_PIECES, "{far_got:?}");
        assert!(far_got.iter().all(|&p| p >= 6), "{far_got:?}");
        // The rack-mate is asked for everything it has.
        let mut mate_got = picked_pieces(&mut s, mate, &mate_bf, 64);
        mate_got.sort_unstable();
        assert_eq!(mate_got, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_cross_rack_connection_brings_in_one_new_piece_at_a_time() {
        let mut s = swarm(8);
        let _mate = join(&mut s, 1, true, &[]);
        let (far, far_bf) = join(&mut s, 2, false, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let first = picked_pieces(&mut s, far, &far_bf, 64);
        assert_eq!(first.len(), CROSS_RACK_PIECES);
        // Until that piece is in, no further new piece is started across racks.
        assert!(picked_pieces(&mut s, far, &far_bf, 64).is_empty());
        // Once a rack-mate announces it, the piece is no longer ours to bring in.
        let (mate2, _) = join(&mut s, 3, true, &[first[0]]);
        let next = picked_pieces(&mut s, far, &far_bf, 64);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0], first[0]);
        assert!(s.is_peer_local(mate2));
    }

    #[test]
    fn pieces_of_a_rack_mate_that_left_may_cross_again() {
        let mut s = swarm(4);
        let (mate, _) = join(&mut s, 1, true, &[0, 1, 2]);
        let (far, far_bf) = join(&mut s, 2, false, &[0, 1, 2]);
        let (stay, _) = join(&mut s, 3, true, &[]);
        assert!(picked_pieces(&mut s, far, &far_bf, 64).is_empty());
        for p in 0..3 {
            s.peer_lost(mate, s.lengths().piece(p).unwrap());
        }
        s.remove_peer(mate);
        assert!(s.is_peer_local(stay), "another rack-mate keeps the rule on");
        assert_eq!(s.local_availability(s.lengths().piece(0).unwrap()), 0);
        let got = picked_pieces(&mut s, far, &far_bf, 64);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0] < 3);
    }

    #[test]
    fn marking_after_the_bitfield_moves_its_pieces_into_the_rack() {
        let mut s = swarm(8);
        // Counted as a plain connection first, as when the bitfield came with the handshake.
        let (mate, mate_bf) = join(&mut s, 1, false, &[0, 1, 2]);
        let (far, far_bf) = join(&mut s, 2, false, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let p = |s: &Swarm, i| s.lengths().piece(i).unwrap();
        assert_eq!(s.local_availability(p(&s, 0)), 0);
        s.mark_peer_local(mate, &mate_bf);
        // Twice is once.
        s.mark_peer_local(mate, &mate_bf);
        assert!(s.is_peer_local(mate));
        for i in 0..3 {
            assert_eq!(s.local_availability(p(&s, i)), 1, "piece {i}");
            assert_eq!(s.availability(p(&s, i)), 2, "piece {i}");
        }
        assert_eq!(s.local_availability(p(&s, 3)), 0);
        // The far connection now leaves the mate's pieces to it.
        let far_got = picked_pieces(&mut s, far, &far_bf, 64);
        assert!(far_got.iter().all(|&i| i >= 3), "{far_got:?}");
        // Leaving takes them out again.
        for i in 0..3 {
            s.peer_lost(mate, p(&s, i));
        }
        s.remove_peer(mate);
        assert_eq!(s.local_availability(p(&s, 0)), 0);
    }

    #[test]
    fn without_marked_connections_picking_ignores_racks() {
        let mut s = swarm(8);
        let (a, a_bf) = join(&mut s, 1, false, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let got = picked_pieces(&mut s, a, &a_bf, 64);
        assert_eq!(got.len(), 8, "rarest first takes every piece: {got:?}");
        // Marking and unmarking restores the plain picker.
        let (b, _) = join(&mut s, 2, true, &[]);
        s.set_peer_local(b, false);
        assert!(!s.is_peer_local(b));
    }
}
