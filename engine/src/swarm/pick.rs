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
//!
//! Turns (which rack-mate brings a piece in): rack-mates cannot see each other's pieces
//! in flight, only verified ones, so several of them fetched the same piece from other
//! racks at once. Each piece's rack-mates are ordered by a score of (piece, peer id) that
//! all of them compute alike ([`RackTurns`]); the first may start it across racks at
//! once, the k-th only [`RACK_TURN`] x k after it first could (a connection to another
//! rack offered it), if no rack-mate announced it meanwhile. A piece whose first in turn
//! cannot reach it still comes in, a turn later. A remote that hands us pieces by its
//! seeding plan ([`Swarm::set_peer_origin`]) is exempt: what it hands us is ours alone.
//! A piece already started (its first blocks from the seeder, say) waits for its turn
//! too before a cross-rack connection continues it: that path carried most of the
//! duplicates before (blocks a follower had asked of the seeder after its plan was over
//! and been refused were free again, and any connection to another rack took them).
//!
//! Measured (`corvid-bench sim --size 1GiB --rate 10gbit --rack-size 40 --oversub 4
//! --numwant 50 --request-size 1MiB --rack-aware on`; copies into the busiest rack, and
//! the last host as x S/C). Before: N=100 seeds 1-3 2.40/2.21/1.95 copies, 2.02/2.10/2.02
//! x; N=1000 seed 1 3.78 copies, 2.60 x. Where those copies came from (a classification
//! of every cross-rack block in the simulator, by what the receiving rack held when it
//! arrived; N=100 seed 1, busiest rack): 0.79 copies of pieces a rack-mate had already
//! verified, 0.44 fetched while another rack-mate was fetching them too, 0.57 first
//! entries, 0.42 from the seeder. With turns, by the length of a turn:
//!
//! | turn | N=100 copies (seeds 1-3) | N=100 x S/C | N=1000 copies | N=1000 x S/C |
//! |---|---|---|---|---|
//! | none | 2.40 / 2.21 / 1.95 | 2.02 / 2.10 / 2.02 | 3.78 | 2.60 |
//! | 30 ms | | | 2.39 | 2.74 |
//! | 50 ms | 1.73 / 1.67 / 1.78 | 2.08 / 2.12 / 2.02 | | |
//! | 100 ms | 1.40 / 1.33 / 1.34 | 2.05 / 2.05 / 2.01 | 1.46 | 2.84 |
//! | 150 ms | 1.25 / 1.24 / 1.25 | 2.06 / 2.03 / 2.03 | 1.34 | 2.91 |
//! | 250 ms | 1.19 / 1.17 / 1.20 | 2.04 / 2.04 / 2.02 | 1.17 | 3.03 |
//! | 400 ms | 1.09 / 1.12 / 1.11 | 2.09 / 2.23 / 2.08 | | |
//! | only the first | 1.01 (seed 1) | 2.47 | | |
//!
//! At N=100 the time is unchanged up to 250 ms; at N=1000, where the rack uplinks do not
//! bind (3.8 copies through an uplink of ten host links take ~0.3 s of a 2.2 s run), each
//! turn a piece waits adds to the relay chain, so a turn costs time there: 100 ms (the
//! default, the shortest meeting issue 11's 1.5 copies at N=1000) costs 9%. Capping the
//! turns at 1 or 2 instead of 8, or letting a host bring 2-4 pieces in at once instead of
//! [`CROSS_RACK_PIECES`], changed nothing at N=1000 (byte-identical runs): nearly every
//! piece came in at its first or second in turn. A turn of 0 reproduces the runs before
//! byte for byte.
//!
//! A seeder past its plan ([`Swarm::set_peer_seed_open`]) is asked only for pieces no
//! other connection of ours has. Found on the namespace test with two racks (three peers
//! each, the seeder in rack a, `cli/tests/racks.rs`): with peers marking rack-mates the
//! seeder sent 1.40-1.54 copies, 1.05 without. The simulator showed it too (`--hosts 6
//! --size 24MiB --piece-size 256KiB --rate 100mbit --rack-size 4 --oversub 13.33
//! --cross-rack-peers 1 --rack-aware on`, seeds 1-3: 1.46/1.57/1.42 copies with
//! rack-aware picking, 1.21/1.28/1.27 without) and why: rack a's peers completed first
//! and their connections to the seeder closed (both complete), so their pieces had no
//! source there, and rack b's peers, picking across racks in random order, asked the
//! seeder for them and were served. After: 1.22/1.44/1.03 in the simulator (last host
//! 8.4/9.2/7.8 s against 8.6/9.2/8.6), 1.01 and 1.01 copies in two namespace runs (8.9
//! and 9.5 s against 8.3-8.6 s, a loaded machine); N=100 above: 2.13/2.04/2.06 x S/C
//! (against 2.05/2.05/2.01), busiest rack 1.44/1.34/1.40 copies.
use std::time::Duration;

use super::*;

/// New pieces a host fetches from other racks at once (see the module docs).
pub const CROSS_RACK_PIECES: usize = 1;

/// How long each rack-mate ahead in a piece's turn order is given to bring it in before
/// the next may (see the module docs).
pub const RACK_TURN: Duration = Duration::from_millis(100);

/// Turns beyond this many rank alike: a piece no rack-mate could bring in for a while
/// is anyone's.
const MAX_TURNS: u32 = 8;

/// Whose turn it is to bring each piece into the rack (see the module docs): our own
/// peer id, the time as last told ([`Swarm::observe_time`]), when each piece was first
/// offered to us across racks, and each piece's cached rank among the rack-mates.
#[derive(Debug)]
pub(super) struct RackTurns {
    own: Option<u64>,
    now: Option<Instant>,
    /// Per piece: when a cross-rack connection first offered it.
    offered: Vec<Option<Instant>>,
    /// Per piece: (generation of the rack-mates, our rank among them) when computed.
    rank: Vec<(u32, u32)>,
    /// Bumped whenever the rack-mates (or their ids) change.
    gen: u32,
    /// The earliest time a piece waiting for its turn may be taken.
    wake: Option<Instant>,
    /// During one pick: the connection is a seeder past its plan, asked only for pieces
    /// no other connection has ([`Swarm::set_peer_seed_open`]).
    sole: bool,
}

impl RackTurns {
    pub(super) fn new(pieces: usize) -> RackTurns {
        RackTurns {
            own: None,
            now: None,
            offered: vec![None; pieces],
            rank: vec![(u32::MAX, 0); pieces],
            gen: 0,
            wake: None,
            sole: false,
        }
    }

    pub(super) fn mates_changed(&mut self) {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == u32::MAX {
            self.gen = 0;
        }
    }
}

fn id_hash(id: &[u8; 20]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for c in id.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = mix(h ^ u64::from_le_bytes(w));
    }
    h
}

/// A host's place in piece `piece`'s turn order: higher goes first.
fn turn_score(piece: u32, id: u64) -> u64 {
    mix(id ^ mix(u64::from(piece) + 1))
}

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
        self.turns.mates_changed();
        self.epoch += 1;
    }

    /// Our own peer id, which places us in each piece's turn order among rack-mates.
    pub fn set_own_id(&mut self, id: [u8; 20]) {
        let h = id_hash(&id);
        if self.turns.own != Some(h) {
            self.turns.own = Some(h);
            self.turns.mates_changed();
        }
    }

    /// Connection `key`'s remote hands us pieces by its seeding plan (or, `false`, no
    /// longer does: its plan is over and we may ask it for anything): while it does, what
    /// it hands us is ours alone to bring in, so it takes no turns.
    pub fn set_peer_origin(&mut self, key: PeerKey, origin: bool) {
        if let Some(s) = self.slot_mut(key) {
            s.origin = origin;
        }
    }

    /// Connection `key`'s remote is a seeder whose plan for us is over (it said we may ask
    /// it for anything). With rack-aware picking on, we then ask it only for pieces no
    /// other connection of ours has: a follower whose connections to other racks are few
    /// would otherwise ask the seeder for pieces other racks hold, and the seeder, whose
    /// connections to their first holders closed once those completed, serves them as
    /// pieces without a source (issue 11: 1.4-1.5 seeder copies on two racks).
    pub fn set_peer_seed_open(&mut self, key: PeerKey, open: bool) {
        if let Some(s) = self.slot_mut(key) {
            s.seed_open = open;
        }
    }

    /// Whether `key` may be asked for `piece` only if no other connection has it.
    fn seed_only_sole(&self, key: PeerKey) -> bool {
        self.local_peers > 0 && self.slot(key).is_some_and(|s| s.seed_open)
    }

    /// The time now. A piece waiting for its turn may be taken once its turn came: then
    /// connections that came up short pick again ([`Swarm::epoch`]).
    pub fn observe_time(&mut self, now: Instant) {
        self.turns.now = Some(now);
        if self.turns.wake.is_some_and(|w| now >= w) {
            self.turns.wake = None;
            self.epoch += 1;
        }
    }

    /// Our rank in `piece`'s turn order among the live rack-mates whose ids we know (0:
    /// we go first). Without our own id every rank is 0 (no turns).
    fn turn_rank(&mut self, piece: u32) -> u32 {
        let Some(own) = self.turns.own else {
            return 0;
        };
        let gen = self.turns.gen;
        let cached = self.turns.rank[piece as usize];
        if cached.0 == gen {
            return cached.1;
        }
        let mine = turn_score(piece, own);
        let rank = self
            .peers
            .iter()
            .filter(|s| s.live && s.local)
            .filter_map(|s| s.peer_id.as_ref())
            .filter(|id| turn_score(piece, id_hash(id)) > mine)
            .count() as u32;
        self.turns.rank[piece as usize] = (gen, rank);
        rank
    }

    /// Whether a cross-rack connection may start `piece` now (its turn came, see the
    /// module docs); if not, remembers when it will.
    fn my_turn(&mut self, piece: u32) -> bool {
        let Some(now) = self.turns.now else {
            return true;
        };
        let rank = self.turn_rank(piece).min(MAX_TURNS);
        if rank == 0 {
            return true;
        }
        let offered = *self.turns.offered[piece as usize].get_or_insert(now);
        let at = offered + RACK_TURN * rank;
        if now >= at {
            return true;
        }
        if self.turns.wake.is_none_or(|w| at < w) {
            self.turns.wake = Some(at);
        }
        false
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

    /// Whether `key` is a cross-rack connection whose new pieces wait for their turn.
    fn takes_turns(&self, key: PeerKey) -> bool {
        self.cross_rack(key) && self.slot(key).is_some_and(|s| !s.origin)
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
        turns: bool,
        k: usize,
        found: &mut [u32; NEW_PICK_BATCH],
    ) -> usize {
        let k = k.clamp(1, NEW_PICK_BATCH);
        let salt = self.tie_salt;
        // (availability, tie, piece), sorted ascending; `len` valid entries.
        let mut best = [(u32::MAX, u64::MAX, 0u32); NEW_PICK_BATCH];
        let mut len = 0;
        let bytes = remote.as_bytes().len().min(self.unstarted.len());
        for byte_i in 0..bytes {
            let mut bits = remote.as_bytes()[byte_i] & self.unstarted[byte_i];
            while bits != 0 {
                let lead = bits.leading_zeros();
                bits &= !(0x80u8 >> lead);
                let i = byte_i as u32 * 8 + lead;
                if cross && self.local_availability[i as usize] > 0 {
                    continue;
                }
                if turns && !self.my_turn(i) {
                    continue;
                }
                if self.turns.sole && self.availability[i as usize] > 1 {
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
        let turns = self.takes_turns(key);
        self.turns.sole = self.seed_only_sole(key);
        want = self.pick_started(key, remote, cross, turns, want, &mut emit);
        want = self.pick_new(remote, cross, turns, want, &mut emit);
        self.turns.sole = false;
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
        turns: bool,
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
                || (turns && !self.my_turn(piece))
                || (self.turns.sole && self.availability[piece as usize] > 1)
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
        turns: bool,
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
            let n = self.pick_new_pieces(remote, cross, turns, k, &mut found);
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

    fn id(n: u8) -> [u8; 20] {
        let mut id = *b"-CV0000-000000000000";
        id[19] = n;
        id
    }

    /// A host with peer id `me` and rack-mates `mates` (ids, holding nothing yet), and a
    /// connection to another rack that has every piece. The mates' slots are returned.
    fn racked(pieces: u32, me: u8, mates: &[u8]) -> (Swarm, Vec<PeerKey>, PeerKey, Bitfield) {
        let mut s = swarm(pieces);
        s.set_own_id(id(me));
        let keys = mates
            .iter()
            .map(|&m| {
                let (k, _) = join(&mut s, m, true, &[]);
                s.set_peer_id(k, id(m));
                k
            })
            .collect();
        let all: Vec<u32> = (0..pieces).collect();
        let (far, far_bf) = join(&mut s, 200, false, &all);
        s.set_peer_id(far, id(200));
        (s, keys, far, far_bf)
    }

    /// Every host of a rack computes the same turn order: for each piece exactly one of
    /// them goes first, and each goes first for some pieces.
    #[test]
    fn rack_mates_agree_who_goes_first() {
        let hosts = [1u8, 2, 3, 4];
        let mut firsts = [0u32; 4];
        for p in 0..64 {
            let mut first = Vec::new();
            for (i, &me) in hosts.iter().enumerate() {
                let mates: Vec<u8> = hosts.iter().copied().filter(|&h| h != me).collect();
                let (mut s, _, _, _) = racked(64, me, &mates);
                if s.turn_rank(p) == 0 {
                    first.push(me);
                    firsts[i] += 1;
                }
            }
            assert_eq!(first.len(), 1, "piece {p}: {first:?} go first");
        }
        assert!(firsts.iter().all(|&n| n >= 4), "{firsts:?}");
    }

    /// Across racks a host starts at once only pieces it is first in turn for; a piece
    /// it is k-th for waits k turns from when it was first offered, and the wait's end
    /// wakes the connections that came up short.
    #[test]
    fn a_piece_crosses_first_at_its_first_rack_mate_then_in_turn() {
        let (mut s, _, far, far_bf) = racked(32, 1, &[2, 3, 4]);
        let t0 = Instant::now();
        s.observe_time(t0);
        let rank: Vec<u32> = (0..32).map(|p| s.turn_rank(p)).collect();
        let firsts: Vec<u32> = (0..32).filter(|&p| rank[p as usize] == 0).collect();
        assert!(!firsts.is_empty() && firsts.len() < 32, "{rank:?}");
        let got = picked_pieces(&mut s, far, &far_bf, 64);
        assert_eq!(got.len(), CROSS_RACK_PIECES);
        assert!(firsts.contains(&got[0]), "{got:?} of {firsts:?}");
        // That piece is in: the next one comes up only once it is our turn for it.
        let mate = {
            let (k, _) = join(&mut s, 9, true, &[got[0]]);
            s.set_peer_id(k, id(9));
            k
        };
        assert!(s.is_peer_local(mate));
        let rank: Vec<u32> = (0..32).map(|p| s.turn_rank(p)).collect();
        let mut waited = Vec::new();
        let mut n = 0u8;
        for step in 0..=MAX_TURNS {
            let now = t0 + RACK_TURN * step;
            let before = s.epoch();
            let woke = s.turns.wake.is_some_and(|w| w <= now);
            s.observe_time(now);
            assert_eq!(s.epoch() > before, woke, "turn {step}");
            loop {
                let got = picked_pieces(&mut s, far, &far_bf, 64);
                let Some(&p) = got.first() else { break };
                assert!(
                    rank[p as usize] <= step,
                    "piece {p} of rank {} started at turn {step}",
                    rank[p as usize]
                );
                waited.push((p, step));
                // It came in: the next may start.
                n += 1;
                join(&mut s, 100 + n, true, &[p]);
            }
        }
        assert!(
            waited
                .iter()
                .any(|&(p, step)| rank[p as usize] > 0 && step > 0),
            "no piece waited for its turn: {waited:?}"
        );
        assert_eq!(waited.len(), 31, "every piece came in by the last turn");
    }

    /// A piece already started (say its first blocks came from the seeder's plan) waits
    /// for its turn too before a cross-rack connection continues it; the seeder's own
    /// connection, handing us pieces by its plan, never waits.
    #[test]
    fn started_pieces_wait_their_turn_and_the_origin_does_not() {
        let (mut s, _, far, far_bf) = racked(16, 1, &[2, 3, 4, 5, 6, 7]);
        let t0 = Instant::now();
        s.observe_time(t0);
        let late = (0..16u32)
            .find(|&p| s.turn_rank(p) >= 2)
            .expect("some piece has two rack-mates ahead of us");
        let mut only = Bitfield::new(16);
        only.set(late);
        let (origin, _) = join(&mut s, 50, false, &[late]);
        s.set_peer_id(origin, id(50));
        s.set_peer_origin(origin, true);
        // The origin hands us `late`: we start it there at once, one block.
        let mut got = Vec::new();
        s.pick_blocks(origin, &only, 1, |_| false, |b| got.push(b));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].piece.get(), late);
        // The other block is free, but the far connection leaves it until our turn.
        assert!(picked_pieces(&mut s, far, &only, 64).is_empty());
        let rank = s.turn_rank(late);
        s.observe_time(t0 + RACK_TURN * (rank - 1));
        assert!(picked_pieces(&mut s, far, &only, 64).is_empty());
        s.observe_time(t0 + RACK_TURN * rank);
        assert_eq!(picked_pieces(&mut s, far, &only, 64), vec![late]);
        assert!(far_bf.get(late));
        // Once its plan is over, the origin is one more connection to another rack.
        assert!(!s.takes_turns(origin));
        s.set_peer_origin(origin, false);
        assert!(s.takes_turns(origin));
    }

    /// Without our own id (a swarm no connection told it, as in a plain library use)
    /// there are no turns: picking across racks is as before.
    #[test]
    fn without_an_own_id_nobody_waits() {
        let mut s = swarm(8);
        let (m, _) = join(&mut s, 1, true, &[]);
        s.set_peer_id(m, id(1));
        let (far, far_bf) = join(&mut s, 2, false, &[0, 1, 2, 3, 4, 5, 6, 7]);
        s.observe_time(Instant::now());
        assert!((0..8).all(|p| s.turn_rank(p) == 0));
        assert_eq!(picked_pieces(&mut s, far, &far_bf, 64).len(), 1);
    }

    /// A seeder whose plan for us is over is asked, once we pick rack-aware, only for
    /// pieces no other connection of ours has; without rack-mates marked, for anything.
    #[test]
    fn a_seeder_past_its_plan_is_asked_only_for_what_nobody_else_has() {
        let mut s = swarm(4);
        let (seed, seed_bf) = join(&mut s, 1, false, &[0, 1, 2, 3]);
        s.set_peer_seed_open(seed, true);
        // Another rack's host has pieces 0 and 1.
        let _far = join(&mut s, 2, false, &[0, 1]);
        let mut all = picked_pieces(&mut s, seed, &seed_bf, 64);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3], "no rack-mates: as before");
        let mut s = swarm(4);
        let (seed, seed_bf) = join(&mut s, 1, false, &[0, 1, 2, 3]);
        s.set_peer_seed_open(seed, true);
        let _far = join(&mut s, 2, false, &[0, 1]);
        let _mate = join(&mut s, 3, true, &[]);
        // One at a time (a piece from outside the rack), each then held by a rack-mate.
        let mut got = Vec::new();
        for n in 0..4u8 {
            let p = picked_pieces(&mut s, seed, &seed_bf, 64);
            assert!(p.len() <= 1, "{p:?}");
            got.extend_from_slice(&p);
            join(&mut s, 10 + n, true, &p);
        }
        got.sort_unstable();
        assert_eq!(got, vec![2, 3], "the other rack's host has 0 and 1");
        s.set_peer_seed_open(seed, false);
        assert!(!s.seed_only_sole(seed));
    }
}
