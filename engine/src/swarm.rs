//! Torrent-wide state shared by every connection: what we have, who has what, which blocks
//! are asked for, who is unchoked, who is banned.
//!
//! Contract: sans-IO like [`crate::peer`]: no sockets, no files, no clock, and no
//! randomness of its own (the picker's tie-break is a random order of the pieces derived
//! from a seed the caller gives, fixed for the swarm's life).
//! No `unsafe` here. The runtime keeps one `Swarm` behind a lock and every [`PeerConn`]
//! call borrows it briefly, so every method is short and none allocates per block.
//!
//! Invariants (checked by the tests below):
//! - `free_blocks` counts blocks of pieces we neither have nor are hashing whose state is
//!   `Free` (pieces not yet started count all their blocks). End-game is `free_blocks == 0`.
//! - A piece is in at most one of: not started, partial (`partial_of[piece] != NONE`),
//!   have. A partial piece with every block `Received` is being hashed.
//! - A block is written into storage by exactly one connection at a time (`Writing`);
//!   anyone else who sends it meanwhile has their payload discarded, so verified data in
//!   the mapping is never overwritten.
//! - Haves are broadcast through an append-only log ([`Swarm::have_log`]) each connection
//!   follows with its own cursor, and end-game cancels likewise through
//!   [`Swarm::cancel_log`]; nothing is pushed per connection.

//! - `unstarted` has a bit set exactly for pieces neither had nor partial; each partial
//!   piece's `free` equals its `Free` blocks. (`check_invariants` recounts all of these;
//!   the in-memory swarm tests call it after every step.)
//!
//! Cost under the lock: a pipeline refill scans the started pieces with free blocks and,
//! for new pieces, one bytewise pass over the `unstarted` and remote bitfields per up to
//! [`NEW_PICK_BATCH`] pieces; connections skip the picker entirely while nothing changed
//! since it last came up short ([`Swarm::epoch`]).
//!
//! Seeding a fleet: an origin seeder hands each corvid peer the pieces to fetch from it,
//! every piece once before any twice; `plan.rs` explains the plan, with the numbers that
//! justify it.
//!
//! [`PeerConn`]: crate::peer::PeerConn

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Instant;

use crate::geometry::{BlockRef, Lengths, PieceIndex};
use crate::wire::Bitfield;

mod pace;
pub use pace::unsent_limit;
mod peers;
mod pick;
mod plan;
mod rack_plan;

const NONE: u32 = u32::MAX;

/// Most new pieces chosen in one pass of the picker.
pub const NEW_PICK_BATCH: usize = 8;

/// Tuning for the torrent as a whole.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Peers we upload to at once. The fleet is trusted, so there is no tit-for-tat: every
    /// interested peer is unchoked up to this cap, which only bounds per-peer overhead.
    pub max_unchoked: usize,
    /// Pieces that fail their hash, sent wholly by one address, before it is banned.
    pub ban_strikes: u32,
    /// How many connections may have the same block requested at once in end-game.
    pub endgame_dup: u16,
    /// The seeding plan's budget for copies beyond the first (end-game help), in
    /// thousandths of the payload; see the module docs.
    pub seed_extra_permille: u32,
    /// The seeding plan's fan-out: followers that may hold a first copy in flight at
    /// once (0: no bound); see `plan.rs`.
    pub seed_fanout: usize,
    /// The uplink's rate in bytes per second, if the operator gave it: the node then
    /// paces the connections it uploads on to share it (see `pace.rs`).
    pub uplink: Option<u64>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            max_unchoked: 128,
            ban_strikes: 2,
            endgame_dup: 2,
            seed_extra_permille: 50,
            seed_fanout: 32,
            uplink: None,
        }
    }
}

/// A connection's handle in the swarm; the generation keeps a reused slot from being
/// mistaken for the connection that held it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey {
    idx: u32,
    gen: u32,
}

/// Why a connection may not join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer {0} is banned for sending pieces that failed their hash")]
pub struct Banned(pub IpAddr);

/// What becomes of a piece header that just arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Receive the payload into storage; this connection now owns the block's bytes.
    Write,
    /// Someone else has (or is writing) the block: read and drop the payload.
    Discard,
}

/// The outcome of a hash verdict, for the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Addresses banned by this verdict; their connections close on their next call.
    pub banned: Vec<IpAddr>,
}

/// Byte counters for the whole torrent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwarmStats {
    pub uploaded: u64,
    pub downloaded: u64,
    /// Payload bytes discarded (duplicates in end-game, pieces that failed their hash).
    pub wasted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Free,
    /// Outstanding at this many connections.
    Requested(u16),
    /// One connection is receiving it into storage; `others` still have it outstanding.
    Writing {
        by: PeerKey,
        others: u16,
    },
    Received,
}

#[derive(Debug)]
struct Partial {
    piece: u32,
    blocks: Vec<Block>,
    received: u32,
    /// Blocks in state `Free`, so the picker skips fully requested pieces at once.
    free: u32,
    contributors: Vec<IpAddr>,
    /// A piece that failed with several contributors is re-fetched from one peer only,
    /// so the next failure (if any) names its sender.
    suspect: bool,
    exclusive: Option<PeerKey>,
}

#[derive(Debug)]
struct PeerSlot {
    gen: u32,
    live: bool,
    addr: IpAddr,
    banned: bool,
    unchoked: bool,
    /// Behind our rack switch (see `pick.rs`, rack-aware picking).
    local: bool,
    /// The remote's rack, if the caller knows it (see `rack_plan.rs`).
    rack: Option<u32>,
    /// The remote is an origin seeder handing us pieces by its plan (see `pick.rs`).
    origin: bool,
    /// The remote is a seeder whose plan for us is over (see `pick.rs`).
    seed_open: bool,
    /// The remote's peer id once its handshake arrived: lets a seeder name a piece's
    /// holder to a peer it refuses ([`Swarm::holder_id`], [`Swarm::find_peer`]).
    peer_id: Option<[u8; 20]>,
    /// Its upload slot was taken back (it was choked after holding one): the seeding
    /// plan's handed pieces cannot be asked for there now (see `plan.rs`).
    slot_lost: bool,
    /// A follower sharing the seeder's uplink under a pacing cap (see `pace.rs`).
    paced: bool,
}

/// Torrent-wide state; see the module docs for its invariants.
#[derive(Debug)]
pub struct Swarm {
    cfg: SwarmConfig,
    info_hash: [u8; 20],
    lengths: Lengths,
    have: Bitfield,
    availability: Vec<u32>,
    /// Pieces some connection announced at some time (sticky: a peer that completes and
    /// disconnects still counts), and how many; see [`Swarm::every_piece_announced`].
    announced: Bitfield,
    announced_count: u32,
    partial_of: Vec<u32>,
    partials: Vec<Partial>,
    /// Slots of `partials` not in use, kept with their block vectors for reuse.
    spare_partials: Vec<u32>,
    active: Vec<u32>,
    free_blocks: u64,
    peers: Vec<PeerSlot>,
    spare_peers: Vec<u32>,
    banned: HashSet<IpAddr>,
    strikes: HashMap<IpAddr, u32>,
    have_log: Vec<PieceIndex>,
    cancel_log: Vec<BlockRef>,
    /// The new-piece tie-break: a random order of the pieces, fixed per swarm (so per
    /// host: hosts still spread over different pieces), so that other parts of the node
    /// can know which pieces the picker will start next; see [`Swarm::next_pieces`].
    tie_salt: u64,
    unchoked: usize,
    /// When an interested peer was last refused a slot (see [`Swarm::slots_wanted_since`]).
    slot_refused_at: Option<Instant>,
    stats: SwarmStats,
    /// Blocks of each piece we uploaded, saturating; see [`Swarm::spread`].
    served_blocks: Vec<u32>,
    /// Pieces neither had nor started, in bitfield layout, for the new-piece scan.
    unstarted: Vec<u8>,
    /// Bumped whenever a block may have become pickable again (released, aborted, a
    /// verdict), so a connection whose last pick came up short knows when to retry.
    epoch: u64,
    /// Seeding plan: the connection each piece's first copy was handed to.
    holder: Vec<Option<PeerKey>>,
    /// Seeding plan: pieces below this were all handed out once.
    fresh_cursor: u32,
    /// Seeding plan: blocks served as extra copies (end-game help), and the budget for them.
    extra_blocks: u64,
    extra_budget: u64,
    /// Seeding plan: pieces not yet sent whole once, and which were.
    first_pass_left: u32,

    served_whole: Vec<bool>,
    /// Seeding plan: the connection that last announced each piece, named to a refused
    /// follower when the piece's holder is gone (see [`Swarm::holder_id`]).
    announcer: Vec<Option<PeerKey>>,
    /// Seeding plan: pieces some follower was refused (it waits for the holder to pass
    /// them on), served first on the holder's connection.
    awaited: Vec<bool>,
    /// Seeding plan: bumped whenever a piece may have lost its last source (a connection
    /// left, or one that held it went away), so an exhausted plan knows when to look again.
    plan_epoch: u64,
    /// Per piece: live same-rack connections that have it (see `pick.rs`).
    local_availability: Vec<u32>,
    /// Live connections marked same-rack; 0: the picker ignores racks.
    local_peers: u32,
    /// Seeding plan: first copies handed to each rack (see `rack_plan.rs`).
    rack_first: Vec<u32>,
    /// Seeding plan: fresh pieces handed out and maybe not yet sent whole (pruned
    /// lazily), for the fan-out bound (see `plan.rs`).
    first_inflight: Vec<u32>,
    /// Seeding plan: pieces handed to a second follower because the first had not
    /// asked for them by the end of the first pass (once each; see `plan.rs`).
    rehanded: Vec<bool>,
    /// Seeding plan: pieces whose holder has asked for them (a request was admitted).
    asked: Vec<bool>,
    /// Connections sharing the uplink under pacing caps (`pace.rs`).
    pace: pace::Pace,
    /// Rack-aware picking: whose turn it is to bring a piece into the rack (`pick.rs`).
    turns: pick::RackTurns,
}

impl Swarm {
    /// `have` is what is already verified (all set for the seeder); `seed` drives the
    /// picker's random tie-break, so give each host a different one.
    pub fn new(
        cfg: SwarmConfig,
        info_hash: [u8; 20],
        lengths: Lengths,
        have: Bitfield,
        seed: u64,
    ) -> Self {
        let n = lengths.piece_count();
        let have = if have.len() == n {
            have
        } else {
            Bitfield::new(n)
        };
        let free_blocks = lengths
            .pieces()
            .filter(|p| !have.get(p.get()))
            .map(|p| u64::from(lengths.blocks_in_piece(p)))
            .sum();
        let mut unstarted: Vec<u8> = have.as_bytes().iter().map(|b| !b).collect();
        let spare = (unstarted.len() as u32 * 8).saturating_sub(n);
        if let Some(last) = unstarted.last_mut() {
            *last &= !(((1u16 << spare) - 1) as u8);
        }
        Swarm {
            info_hash,
            lengths,
            have,
            availability: vec![0; n as usize],
            announced: Bitfield::new(n),
            announced_count: 0,
            partial_of: vec![NONE; n as usize],
            partials: Vec::new(),
            spare_partials: Vec::new(),
            active: Vec::new(),
            free_blocks,
            peers: Vec::new(),
            spare_peers: Vec::new(),
            banned: HashSet::new(),
            strikes: HashMap::new(),
            have_log: Vec::new(),
            cancel_log: Vec::new(),
            tie_salt: mix(seed ^ 0x9e37_79b9_7f4a_7c15),
            unchoked: 0,
            slot_refused_at: None,
            stats: SwarmStats::default(),
            served_blocks: vec![0; n as usize],
            unstarted,
            epoch: 0,
            holder: vec![None; n as usize],
            fresh_cursor: 0,
            extra_blocks: 0,
            extra_budget: lengths
                .pieces()
                .map(|p| u64::from(lengths.blocks_in_piece(p)))
                .sum::<u64>()
                * u64::from(cfg.seed_extra_permille)
                / 1000,
            plan_epoch: 0,
            awaited: vec![false; n as usize],
            announcer: vec![None; n as usize],
            first_pass_left: n,

            served_whole: vec![false; n as usize],
            local_availability: vec![0; n as usize],
            local_peers: 0,
            rack_first: Vec::new(),
            first_inflight: Vec::new(),
            rehanded: vec![false; n as usize],
            asked: vec![false; n as usize],
            pace: pace::Pace::default(),
            turns: pick::RackTurns::new(n as usize),
            cfg,
        }
    }

    pub fn info_hash(&self) -> [u8; 20] {
        self.info_hash
    }

    pub fn lengths(&self) -> &Lengths {
        &self.lengths
    }

    pub fn config(&self) -> &SwarmConfig {
        &self.cfg
    }

    /// Pieces we have verified.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Up to `k` pieces we lack and `skip` does not hold, in the order the picker is
    /// expected to receive them: pieces already started, then the others by availability
    /// (pieces nobody announced last) and this swarm's fixed tie-break. Lets the node fault
    /// in the pages of the pieces about to arrive, ahead of the network.
    pub fn next_pieces(&self, skip: &Bitfield, k: usize) -> Vec<PieceIndex> {
        let mut out: Vec<PieceIndex> = self
            .active
            .iter()
            .filter_map(|&pi| self.lengths.piece(self.partials[pi as usize].piece))
            .filter(|p| !skip.get(p.get()))
            .take(k)
            .collect();
        if out.len() == k {
            return out;
        }
        let mut rest: Vec<(bool, u32, u64, PieceIndex)> = self
            .lengths
            .pieces()
            .filter(|p| {
                let i = p.get();
                !self.have.get(i) && !skip.get(i) && self.partial_of[p.as_usize()] == NONE
            })
            .map(|p| {
                let a = self.availability[p.as_usize()];
                (a == 0, a, mix(u64::from(p.get()) ^ self.tie_salt), p)
            })
            .collect();
        let want = k - out.len();
        if rest.len() > want {
            rest.select_nth_unstable(want);
            rest.truncate(want);
        }
        rest.sort_unstable();
        out.extend(rest.into_iter().map(|t| t.3));
        out
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    pub fn stats(&self) -> SwarmStats {
        self.stats
    }

    /// Every piece verified so far in this run, in order; connections send `have` for the
    /// entries past their cursor.
    pub fn have_log(&self) -> &[PieceIndex] {
        &self.have_log
    }

    /// Blocks that arrived while still outstanding elsewhere (end-game); connections that
    /// requested one cancel it.
    pub fn cancel_log(&self) -> &[BlockRef] {
        &self.cancel_log
    }

    /// All remaining blocks are requested somewhere: duplicates may now be requested.
    pub fn in_endgame(&self) -> bool {
        self.free_blocks == 0 && !self.is_complete()
    }

    /// Connections in the swarm that currently hold the piece.
    pub fn availability(&self, piece: PieceIndex) -> u32 {
        self.availability[piece.as_usize()]
    }

    pub fn add_availability(&mut self, piece: PieceIndex) {
        self.availability[piece.as_usize()] += 1;
        if self.announced.set(piece.get()) {
            self.announced_count += 1;
        }
    }

    /// Whether every piece was announced by some connection at some time: a seeder
    /// that sees this knows the peers hold everything between them.
    pub fn every_piece_announced(&self) -> bool {
        self.announced_count >= self.lengths.piece_count()
    }

    pub fn remove_availability(&mut self, piece: PieceIndex) {
        let a = &mut self.availability[piece.as_usize()];
        *a = a.saturating_sub(1);
        if *a == 0 {
            self.plan_epoch += 1;
        }
    }

    /// See the `epoch` field: changes whenever blocks may have become pickable.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Gives back one outstanding request (timed out, rejected, choked, connection gone).
    pub fn release(&mut self, b: BlockRef) {
        self.epoch += 1;
        let mut freed = false;
        if let Some(st) = self.block_state(b) {
            match *st {
                Block::Requested(c) if c <= 1 => {
                    *st = Block::Free;
                    freed = true;
                }
                Block::Requested(c) => *st = Block::Requested(c - 1),
                Block::Writing { by, others } => {
                    *st = Block::Writing {
                        by,
                        others: others.saturating_sub(1),
                    }
                }
                Block::Free | Block::Received => {}
            }
        }
        if freed {
            self.note_free(b, 1);
        }
    }

    /// A piece header for a block this connection requested has arrived: decides whether
    /// its payload goes to storage. The connection's own outstanding entry is consumed.
    pub fn begin_block(&mut self, key: PeerKey, b: BlockRef) -> Accept {
        let mut took_free = false;
        let accept = match self.block_state(b) {
            Some(st) => match *st {
                Block::Requested(c) => {
                    *st = Block::Writing {
                        by: key,
                        others: c.saturating_sub(1),
                    };
                    Accept::Write
                }
                Block::Free => {
                    // A reply to a request from before a failed hash reset the piece.
                    *st = Block::Writing { by: key, others: 0 };
                    took_free = true;
                    Accept::Write
                }
                Block::Writing { by, others } => {
                    *st = Block::Writing {
                        by,
                        others: others.saturating_sub(1),
                    };
                    Accept::Discard
                }
                Block::Received => Accept::Discard,
            },
            None => Accept::Discard,
        };
        if took_free {
            self.note_free(b, -1);
        }
        if accept == Accept::Discard {
            self.stats.wasted += u64::from(b.len);
        }
        accept
    }

    /// The payload of a block accepted by [`Swarm::begin_block`] is in storage. Returns the
    /// piece if that was its last block: hash it, then call [`Swarm::handle_verdict`].
    pub fn finish_block(&mut self, key: PeerKey, addr: IpAddr, b: BlockRef) -> Option<PieceIndex> {
        let pi = self.partial_of[b.piece.as_usize()];
        let st = self.block_state(b)?;
        let Block::Writing { by, others } = *st else {
            return None;
        };
        if by != key {
            return None;
        }
        *st = Block::Received;
        if others > 0 {
            self.cancel_log.push(b);
        }
        self.stats.downloaded += u64::from(b.len);
        let p = &mut self.partials[pi as usize];
        p.received += 1;
        if !p.contributors.contains(&addr) {
            p.contributors.push(addr);
        }
        (p.received as usize == p.blocks.len()).then_some(b.piece)
    }

    /// The connection died while receiving the block's payload: what it wrote is junk.
    pub fn abort_block(&mut self, key: PeerKey, b: BlockRef) {
        self.epoch += 1;
        let mut freed = false;
        if let Some(st) = self.block_state(b) {
            if let Block::Writing { by, others } = *st {
                if by == key {
                    if others > 0 {
                        *st = Block::Requested(others);
                    } else {
                        *st = Block::Free;
                        freed = true;
                    }
                }
            }
        }
        if freed {
            self.note_free(b, 1);
        }
    }

    /// The hasher's answer for a piece returned by [`Swarm::finish_block`]. A good piece is
    /// ours and queued for `have` broadcast. A bad one is fetched again; if one address
    /// sent all of it, that address gets a strike (banned at `ban_strikes`); if several
    /// did, nobody can be blamed yet, so the piece is re-fetched from a single peer.
    pub fn handle_verdict(&mut self, piece: PieceIndex, ok: bool) -> Verdict {
        self.epoch += 1;
        let mut verdict = Verdict::default();
        let pi = self.partial_of[piece.as_usize()];
        if pi == NONE {
            return verdict;
        }
        if ok {
            self.partial_of[piece.as_usize()] = NONE;
            self.active.retain(|&x| x != pi);
            self.spare_partials.push(pi);
            if self.have.set(piece.get()) {
                self.have_log.push(piece);
            }
            return verdict;
        }
        let p = &mut self.partials[pi as usize];
        let n = p.blocks.len();
        p.blocks.iter_mut().for_each(|b| *b = Block::Free);
        p.received = 0;
        p.exclusive = None;
        p.free = n as u32;
        self.free_blocks += n as u64;
        self.stats.wasted += u64::from(self.lengths.piece_size(piece));
        self.stats.downloaded = self
            .stats
            .downloaded
            .saturating_sub(u64::from(self.lengths.piece_size(piece)));
        let contributors = std::mem::take(&mut p.contributors);
        if contributors.len() > 1 {
            p.suspect = true;
        } else {
            for &addr in &contributors {
                let s = self.strikes.entry(addr).or_insert(0);
                *s += 1;
                if *s >= self.cfg.ban_strikes && self.banned.insert(addr) {
                    verdict.banned.push(addr);
                    for slot in self.peers.iter_mut().filter(|s| s.addr == addr) {
                        slot.banned = true;
                    }
                }
            }
        }
        // Give the vector back to the partial to keep its capacity.
        let mut c = contributors;
        c.clear();
        self.partials[pi as usize].contributors = c;
        verdict
    }

    /// For tests and debugging: recounts `free_blocks` from the block states.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut free = 0u64;
        for p in self.lengths.pieces() {
            let unstarted = self.unstarted[p.as_usize() / 8] & (0x80 >> (p.get() % 8)) != 0;
            assert_eq!(
                unstarted,
                !self.have.get(p.get()) && self.partial_of[p.as_usize()] == NONE,
                "unstarted bit of piece {}",
                p.get()
            );
            if self.have.get(p.get()) {
                assert_eq!(self.partial_of[p.as_usize()], NONE);
                continue;
            }
            let pi = self.partial_of[p.as_usize()];
            if pi == NONE {
                free += u64::from(self.lengths.blocks_in_piece(p));
            } else {
                let part = &self.partials[pi as usize];
                assert_eq!(part.piece, p.get());
                assert!(self.active.contains(&pi));
                let f = part.blocks.iter().filter(|b| **b == Block::Free).count();
                assert_eq!(f as u32, part.free);
                free += f as u64;
                let recv = part
                    .blocks
                    .iter()
                    .filter(|b| **b == Block::Received)
                    .count();
                assert_eq!(recv as u32, part.received);
            }
        }
        assert_eq!(free, self.free_blocks);
    }
}

/// splitmix64's finaliser: spreads `i ^ salt` into a random-looking order of the pieces.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BLOCK_SIZE;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// A bitfield from a fixture string, `1` = has the piece.
    fn bf(s: &str) -> Bitfield {
        let mut b = Bitfield::new(s.len() as u32);
        for (i, c) in s.chars().enumerate() {
            if c == '1' {
                b.set(i as u32);
            }
        }
        b
    }

    pub(super) fn swarm(pieces: u32, blocks_per_piece: u32, seed: u64) -> Swarm {
        let pl = u64::from(blocks_per_piece * BLOCK_SIZE);
        let l = Lengths::new(pl * u64::from(pieces), pl, u64::from(pieces)).unwrap();
        Swarm::new(
            SwarmConfig::default(),
            [0; 20],
            l,
            Bitfield::new(pieces),
            seed,
        )
    }

    fn pick(s: &mut Swarm, k: PeerKey, remote: &Bitfield, want: usize) -> Vec<BlockRef> {
        let mut v = Vec::new();
        s.pick_blocks(k, remote, want, |_| false, |b| v.push(b));
        s.check_invariants();
        v
    }

    #[test]
    fn rarest_first_with_random_ties() {
        let mut s = swarm(6, 1, 7);
        let k = s.add_peer(ip(1)).unwrap();
        // availability: 3 3 1 2 1 3
        for (i, a) in [3, 3, 1, 2, 1, 3].into_iter().enumerate() {
            for _ in 0..a {
                let p = s.lengths.piece(i as u32).unwrap();
                s.add_availability(p);
            }
        }
        let got: Vec<u32> = pick(&mut s, k, &bf("111111"), 2)
            .iter()
            .map(|b| b.piece.get())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, vec![2, 4]);
        assert_eq!(pick(&mut s, k, &bf("111111"), 1)[0].piece.get(), 3);
        // Different seeds spread the first pick across equally rare pieces.
        let firsts: HashSet<u32> = (0..32)
            .map(|seed| {
                let mut s = swarm(8, 1, seed);
                let k = s.add_peer(ip(1)).unwrap();
                pick(&mut s, k, &bf("11111111"), 1)[0].piece.get()
            })
            .collect();
        assert!(firsts.len() >= 4, "{firsts:?}");
    }

    #[test]
    fn next_pieces_predicts_the_pickers_order() {
        let mut s = swarm(64, 2, 3);
        let k = s.add_peer(ip(1)).unwrap();
        let all = Bitfield::full(64);
        for p in s.lengths.pieces().collect::<Vec<_>>() {
            s.add_availability(p);
        }
        // A rarer piece comes first; a piece nobody has comes last.
        s.add_availability(s.lengths.piece(5).unwrap());
        let rare = s.lengths.piece(9).unwrap();
        for p in s
            .lengths
            .pieces()
            .filter(|&p| p != rare)
            .collect::<Vec<_>>()
        {
            s.add_availability(p);
        }
        let planned = s.next_pieces(&Bitfield::new(64), 64);
        assert_eq!(planned.len(), 64);
        assert_eq!(planned[0], rare);
        // Each pick of one block starts the next planned piece, which is then listed first
        // as started (unless skipped) until it is fully requested.
        for (n, want) in planned.iter().take(20).enumerate() {
            let got = pick(&mut s, k, &all, 2);
            assert!(
                got.iter().all(|b| b.piece == *want),
                "pick {n}: {got:?} vs {want:?}"
            );
        }
        // The 20 started (requested, not yet received) pieces are listed first.
        let mut skip = Bitfield::new(64);
        assert_eq!(s.next_pieces(&skip, 20), planned[..20].to_vec());
        for p in &planned[..=20] {
            skip.set(p.get());
        }
        assert_eq!(s.next_pieces(&skip, 1), vec![planned[21]]);
        let started = pick(&mut s, k, &all, 1);
        assert_eq!(started[0].piece, planned[20]);
    }

    #[test]
    fn batch_pick_over_many_pieces_is_rarest_first() {
        let n = 40_000;
        let mut s = swarm(n, 1, 11);
        let k = s.add_peer(ip(1)).unwrap();
        let all = Bitfield::full(n);
        for p in s.lengths.pieces().collect::<Vec<_>>() {
            s.add_availability(p);
            if p.get() % 1000 != 7 {
                s.add_availability(p);
            }
        }
        // The 40 pieces with availability 1 come first, in some random order.
        let got = pick(&mut s, k, &all, 40);
        assert_eq!(got.len(), 40);
        assert!(got.iter().all(|b| b.piece.get() % 1000 == 7), "{got:?}");
        let next = pick(&mut s, k, &all, 3);
        assert!(next.iter().all(|b| b.piece.get() % 1000 != 7));
    }

    #[test]
    fn finishes_started_pieces_first_and_respects_remote() {
        let mut s = swarm(4, 4, 1);
        let a = s.add_peer(ip(1)).unwrap();
        let b = s.add_peer(ip(2)).unwrap();
        let first = pick(&mut s, a, &bf("1111"), 2);
        assert_eq!(first[0].piece, first[1].piece);
        let p = first[0].piece.get();
        let mut only = "0000".to_string();
        only.replace_range(p as usize..p as usize + 1, "1");
        // b has only that piece and gets its two remaining blocks, then nothing new.
        let second = pick(&mut s, b, &bf(&only), 8);
        assert_eq!(second.len(), 2);
        assert!(second.iter().all(|x| x.piece.get() == p));
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let mut s = swarm(1, 2, 1);
        let a = s.add_peer(ip(1)).unwrap();
        let b = s.add_peer(ip(2)).unwrap();
        let got_a = pick(&mut s, a, &bf("1"), 8);
        assert_eq!(got_a.len(), 2);
        assert!(s.in_endgame());
        // a already holds both, so it gets no duplicates of its own.
        let dup_a: Vec<_> = {
            let mut v = Vec::new();
            s.pick_blocks(a, &bf("1"), 8, |x| got_a.contains(&x), |x| v.push(x));
            v
        };
        assert!(dup_a.is_empty());
        let got_b = pick(&mut s, b, &bf("1"), 8);
        assert_eq!(got_b, got_a);
        // b's copy of block 0 arrives first; a's is discarded and a is told to cancel.
        assert_eq!(s.begin_block(b, got_b[0]), Accept::Write);
        assert_eq!(s.finish_block(b, ip(2), got_b[0]), None);
        assert_eq!(s.cancel_log(), &[got_b[0]]);
        assert_eq!(s.begin_block(a, got_a[0]), Accept::Discard);
        assert_eq!(s.begin_block(a, got_a[1]), Accept::Write);
        assert_eq!(s.finish_block(a, ip(1), got_a[1]), Some(got_a[1].piece));
        s.release(got_b[1]);
        s.check_invariants();
        s.handle_verdict(got_a[1].piece, true);
        assert!(s.is_complete());
        assert_eq!(s.have_log().len(), 1);
        s.check_invariants();
    }

    #[test]
    fn release_and_abort_free_blocks() {
        let mut s = swarm(2, 2, 3);
        let a = s.add_peer(ip(1)).unwrap();
        let got = pick(&mut s, a, &bf("11"), 4);
        assert_eq!(got.len(), 4);
        s.release(got[0]);
        assert_eq!(s.begin_block(a, got[1]), Accept::Write);
        s.abort_block(a, got[1]);
        s.check_invariants();
        let again = pick(&mut s, a, &bf("11"), 4);
        assert_eq!(again.len(), 2);
    }

    fn receive_piece(s: &mut Swarm, k: PeerKey, addr: IpAddr, blocks: &[BlockRef]) -> PieceIndex {
        let mut done = None;
        for &b in blocks {
            assert_eq!(s.begin_block(k, b), Accept::Write);
            done = s.finish_block(k, addr, b);
        }
        done.unwrap()
    }

    #[test]
    fn bad_pieces_strike_then_ban_sole_sender() {
        let mut s = swarm(4, 1, 5);
        let bad = s.add_peer(ip(9)).unwrap();
        let got = pick(&mut s, bad, &bf("1111"), 1);
        let p = receive_piece(&mut s, bad, ip(9), &got);
        assert_eq!(s.handle_verdict(p, false), Verdict::default());
        assert!(!s.is_banned(bad));
        s.check_invariants();
        let got = pick(&mut s, bad, &bf("1111"), 1);
        let p = receive_piece(&mut s, bad, ip(9), &got);
        assert_eq!(s.handle_verdict(p, false).banned, vec![ip(9)]);
        assert!(s.is_banned(bad));
        assert!(pick(&mut s, bad, &bf("1111"), 4).is_empty());
        assert_eq!(s.add_peer(ip(9)), Err(Banned(ip(9))));
        s.check_invariants();
    }

    #[test]
    fn mixed_failure_refetches_from_one_peer() {
        let mut s = swarm(1, 2, 5);
        let a = s.add_peer(ip(1)).unwrap();
        let b = s.add_peer(ip(2)).unwrap();
        let ga = pick(&mut s, a, &bf("1"), 1);
        let gb = pick(&mut s, b, &bf("1"), 1);
        assert_eq!(s.begin_block(a, ga[0]), Accept::Write);
        assert_eq!(s.finish_block(a, ip(1), ga[0]), None);
        let p = receive_piece(&mut s, b, ip(2), &gb);
        assert!(s.handle_verdict(p, false).banned.is_empty());
        // Suspect now: whoever picks first gets the whole piece.
        assert_eq!(pick(&mut s, b, &bf("1"), 1).len(), 1);
        assert!(pick(&mut s, a, &bf("1"), 4).is_empty());
        assert_eq!(pick(&mut s, b, &bf("1"), 4).len(), 1);
    }

    #[test]
    fn every_piece_announced_is_sticky() {
        let mut s = swarm(2, 4, 1);
        let p0 = s.lengths.piece(0).unwrap();
        let p1 = s.lengths.piece(1).unwrap();
        s.add_availability(p0);
        s.add_availability(p0);
        assert!(!s.every_piece_announced());
        s.add_availability(p1);
        // The peers that announced leave: the pieces were still handed out.
        for p in [p0, p0, p1] {
            s.remove_availability(p);
        }
        assert!(s.every_piece_announced());
    }

    #[test]
    fn spread_counts_announced_and_served_copies() {
        let mut s = swarm(2, 4, 1);
        let p0 = s.lengths.piece(0).unwrap();
        let p1 = s.lengths.piece(1).unwrap();
        s.add_availability(p1);
        assert!(s.spread(p0) < s.spread(p1));
        let k = s.add_peer(ip(1)).unwrap();
        for n in 0..4 {
            s.record_upload(k, s.lengths.block(p0, n).unwrap());
        }
        // One whole copy sent counts like one peer announcing it.
        assert_eq!(s.spread(p0), s.spread(p1));
        assert_eq!(s.stats().uploaded, 4 * u64::from(BLOCK_SIZE));
    }

    #[test]
    fn plan_hands_each_piece_once_then_what_lost_its_source() {
        let mut s = swarm(4, 2, 1);
        // The plan without its fan-out bound and straggler rule (tested in `plan.rs`).
        s.cfg.seed_fanout = 0;
        let (a, b) = (s.add_peer(ip(1)).unwrap(), s.add_peer(ip(2)).unwrap());
        let none = Bitfield::new(4);
        let next = |s: &mut Swarm, k| s.plan_next(k, &none).map(|p| p.get());
        // Fresh pieces in order, each to one connection; a remote's own pieces skipped.
        assert_eq!(s.plan_next(a, &bf("1000")).map(|p| p.get()), Some(1));
        assert_eq!(next(&mut s, b), Some(0));
        assert_eq!(next(&mut s, a), Some(2));
        assert_eq!(next(&mut s, b), Some(3));
        // Everything is handed to live connections: nothing more, not even to another.
        assert_eq!(next(&mut s, a), None);
        let c = s.add_peer(ip(3)).unwrap();
        assert_eq!(next(&mut s, c), None);
        // b got half of piece 0 and then left: piece 0 (and 3, never sent) lost their
        // only source and are handed out again.
        let epoch = s.plan_epoch();
        s.record_upload(b, s.lengths.block(s.lengths.piece(0).unwrap(), 0).unwrap());
        assert!(s.has_source(s.lengths.piece(0).unwrap()));
        s.remove_peer(b);
        assert_ne!(s.plan_epoch(), epoch);
        assert!(!s.has_source(s.lengths.piece(0).unwrap()));
        assert_eq!(next(&mut s, c), Some(0));
        assert_eq!(next(&mut s, c), Some(3));
        assert_eq!(next(&mut s, c), None);
        assert!(!s.first_pass_done());
    }

    #[test]
    fn plan_admits_holders_sourceless_pieces_and_a_budget_of_extras() {
        let pl = u64::from(4 * BLOCK_SIZE);
        let l = Lengths::new(pl * 10, pl, 10).unwrap();
        // 40 blocks, 10%: four extra blocks.
        let cfg = SwarmConfig {
            seed_extra_permille: 100,
            ..SwarmConfig::default()
        };
        let mut s = Swarm::new(cfg, [0; 20], l, Bitfield::full(10), 1);
        let (a, b) = (s.add_peer(ip(1)).unwrap(), s.add_peer(ip(2)).unwrap());
        let p0 = s.plan_next(a, &Bitfield::new(10)).unwrap();
        let blk = |s: &Swarm, n| s.lengths.block(p0, n).unwrap();
        // The holder is served; before any of it went out, another asker takes it over.
        assert!(s.plan_admit(a, blk(&s, 0)));
        assert!(s.plan_admit(b, blk(&s, 0)));
        assert_eq!(s.holder(p0), Some(b));
        for n in 0..4 {
            s.record_upload(b, blk(&s, n));
        }
        assert!(s.served_once(p0));
        // Now b can pass it on: a third party gets extra copies only within the budget.
        let c = s.add_peer(ip(3)).unwrap();
        for n in 0..4 {
            assert!(s.plan_admit(c, blk(&s, n)), "extra block {n}");
        }
        assert!(!s.plan_admit(c, blk(&s, 0)));
        assert!(s.plan_admit(b, blk(&s, 0)));
        // Its holder gone and nobody announcing it, it is anyone's again.
        s.remove_peer(b);
        assert!(s.plan_admit(c, blk(&s, 1)));
        assert_eq!(s.holder(p0), Some(c));
    }

    #[test]
    fn plan_names_the_holder_then_the_last_live_announcer() {
        let mut s = Swarm::new(
            SwarmConfig::default(),
            [0; 20],
            Lengths::new(4 * u64::from(BLOCK_SIZE), u64::from(BLOCK_SIZE), 4).unwrap(),
            Bitfield::full(4),
            1,
        );
        let (h, x) = (s.add_peer(ip(1)).unwrap(), s.add_peer(ip(2)).unwrap());
        s.set_peer_id(h, [5; 20]);
        s.set_peer_id(x, [6; 20]);
        let p0 = s.plan_next(h, &Bitfield::new(4)).unwrap();
        s.record_upload(h, s.lengths.block(p0, 0).unwrap());
        assert_eq!(s.holder_id(p0), Some([5; 20]));
        // x got it from h and announced it; h's connection then closed (its host may
        // be back on another one): x is named.
        s.add_availability(p0);
        s.note_announcer(p0, x);
        s.remove_peer(h);
        assert_eq!(s.holder_id(p0), Some([6; 20]));
        assert_eq!(s.find_peer(&[5; 20]).map(|k| s.is_live(k)), Some(false));
        assert_eq!(s.find_peer(&[6; 20]), Some(x));
        s.remove_availability(p0);
        s.remove_peer(x);
        assert_eq!(s.holder_id(p0), None);
        assert_eq!(s.find_peer(&[7; 20]), None);
    }

    #[test]
    fn choker_caps_unchoked() {
        let mut s = swarm(1, 1, 1);
        s.cfg.max_unchoked = 2;
        let k: Vec<_> = (1..=3).map(|i| s.add_peer(ip(i)).unwrap()).collect();
        let now = Instant::now();
        assert!(s.try_unchoke(k[0], now) && s.try_unchoke(k[1], now) && s.try_unchoke(k[1], now));
        assert!(!s.slots_wanted_since(now));
        assert!(!s.try_unchoke(k[2], now));
        assert!(s.slots_wanted_since(now));
        s.remove_peer(k[0]);
        assert!(s.try_unchoke(k[2], now));
        // A stale key from a reused slot is not the new connection.
        let k4 = s.add_peer(ip(4)).unwrap();
        assert_ne!(k4, k[0]);
        assert!(s.is_banned(k[0]) && !s.is_banned(k4));
    }
}
