//! The seeding plan inside one connection: handing pieces to a follower (serving side)
//! and the picker's mask of what a planning remote lets us ask for.

use super::*;
use crate::bencode::OwnedValue;

impl PeerConn {
    /// Whether we serve this remote by the seeding plan (see [`crate::swarm`]).
    pub(super) fn planning(&self, swarm: &Swarm) -> bool {
        self.plan_offered && self.remote_follows && swarm.is_complete()
    }

    /// Seeding plan, serving side: forgets pieces sent once (or no longer this remote's),
    /// and hands the remote more until [`PLAN_DEPTH_BYTES`] are waiting for it. Once the
    /// swarm has nothing left to hand out and this remote's last piece went, the plan is
    /// over for it: it may ask for anything (the swarm still refuses extra copies past
    /// its budget).
    pub(super) fn plan_top_up(&mut self, swarm: &mut Swarm) {
        if !self.planning(swarm) || !self.peer_interested {
            return;
        }
        if self.plan_open {
            // The remote may have been refused pieces whose other sources have since
            // left: suggest every piece without a source again (it may ask for those).
            if self.plan_exhausted != Some(swarm.plan_epoch()) {
                self.plan_exhausted = Some(swarm.plan_epoch());
                for p in self.lengths.pieces() {
                    if !self.remote_has.get(p.get()) && !swarm.has_source(p) {
                        self.queue(Message::Suggest(p.get()));
                    }
                }
            }
            return;
        }
        let key = self.key;
        let remote = &self.remote_has;
        self.plan_pending.retain(|&p| {
            !swarm.served_once(p) && !remote.get(p.get()) && swarm.holder(p) == Some(key)
        });
        // Enough to keep the remote's requests flowing, but a fair share at most, so a
        // small torrent is not handed all to the first peers that ask.
        let piece = self.lengths.piece_length().max(1);
        let share = (self.lengths.piece_count() as usize / (4 * swarm.live_peers().max(1))).max(1);
        let depth = (PLAN_DEPTH_BYTES.div_ceil(piece) as usize)
            .clamp(2, PLAN_DEPTH_MAX)
            .min(share);
        while self.plan_pending.len() < depth {
            if self.plan_exhausted == Some(swarm.plan_epoch()) {
                break;
            }
            match swarm.plan_next(key, &self.remote_has) {
                Some(p) => {
                    self.plan_pending.push(p);
                    self.queue(Message::Suggest(p.get()));
                }
                None => {
                    self.plan_exhausted = Some(swarm.plan_epoch());
                    break;
                }
            }
        }
        if self.plan_pending.is_empty() && self.plan_exhausted.is_some() && swarm.first_pass_done()
        {
            self.plan_open = true;
            self.our_ext_handshake().encode(&mut self.queued);
        }
    }

    /// Marks in the swarm whether we upload on this connection under a pacing cap (see
    /// `crate::swarm`'s `pace.rs`): a follower of our plan with handed pieces waiting, or
    /// any remote we unchoked that is interested. Mark every connection, then read each
    /// one's [`PeerConn::pacing`], so all see the same count.
    pub fn update_paced(&mut self, swarm: &mut Swarm) {
        let open = self.state != State::Closed;
        let follower = self.planning(swarm)
            && !self.plan_open
            && (!self.plan_pending.is_empty() || !self.their_requests.is_empty());
        let uploading = !self.am_choking && self.peer_interested;
        swarm.set_paced(self.key, open && (follower || uploading));
    }

    /// The pacing cap for this connection's socket, bytes per second, as last marked by
    /// [`PeerConn::update_paced`]: `None` for a connection that is not paced.
    pub fn pacing(&self, swarm: &Swarm) -> Option<u64> {
        swarm
            .is_paced(self.key)
            .then(|| swarm.follower_pace())
            .flatten()
    }

    /// The picker's view of the remote: what it has, narrowed to what a planning remote
    /// lets us ask for.
    pub(super) fn pick_mask(&mut self) -> &Bitfield {
        if self.follow == Follow::Free {
            return &self.remote_has;
        }
        let built = (self.mask_gen, self.remote_has.count());
        if self.mask_built != Some(built) {
            let bytes: Vec<u8> = self
                .remote_has
                .as_bytes()
                .iter()
                .zip(self.allowed.as_bytes())
                .map(|(r, a)| r & a)
                .collect();
            self.mask = Bitfield::from_bytes(&bytes, self.lengths.piece_count());
            self.mask_built = Some(built);
        }
        &self.mask
    }

    /// Seeding plan, serving side: refuses the remote's request for `block` (another peer
    /// holds the piece) and names that holder, so the remote can wait for it rather than
    /// ask again on a timer. Every block the request covers is remembered: a later request
    /// starting at one of them is a second ask and is served (see [`Refused`]), while the
    /// other requests of the same ask (a 256 KiB piece is two 128 KiB requests, sent
    /// together) are refused too.
    pub(super) fn refuse_planned(&mut self, swarm: &mut Swarm, block: BlockRef) {
        swarm.note_awaited(block.piece);
        let (index, begin, len) = (block.piece.get(), block.offset, block.len);
        let first = begin / BLOCK_SIZE;
        let last = (begin + len.max(1) - 1) / BLOCK_SIZE;
        self.refused_remote
            .extend((first..=last).map(|b| (index, b)));
        self.queue(Message::Reject { index, begin, len });
        if let (Some(ext_id), Some(holder)) = (self.remote_holder_ext, swarm.holder_id(block.piece))
        {
            let mut d = OwnedValue::dict();
            d.insert("piece", OwnedValue::Int(i64::from(index)));
            d.insert("holder", OwnedValue::bytes(holder));
            let payload = d.encode();
            Message::Extended {
                ext_id,
                payload: &payload,
            }
            .encode(&mut self.queued);
        }
    }

    /// Whether the remote's request starting at `block` is a second ask for a refused
    /// block (see [`PeerConn::refuse_planned`]).
    pub(super) fn asked_before(&self, block: BlockRef) -> bool {
        self.refused_remote
            .contains(&(block.piece.get(), block.offset / BLOCK_SIZE))
    }

    /// Seeding plan, following side: a planning seeder named the holder of a piece it
    /// refused us ([`HOLDER_EXT`]). A malformed message, or one about a piece we were not
    /// refused, is ignored: it is advice, and a stale one costs only the fallback wait.
    pub(super) fn on_holder(&mut self, swarm: &Swarm, payload: &[u8]) {
        let Ok(v) = crate::bencode::decode(payload) else {
            return;
        };
        let Some(v) = v.as_dict() else {
            return;
        };
        let piece = v.get(b"piece").and_then(|p| p.as_int());
        let holder = v
            .get(b"holder")
            .and_then(|h| h.as_bytes())
            .and_then(|h| <[u8; 20]>::try_from(h).ok());
        let (Some(piece), Some(holder)) = (piece, holder) else {
            return;
        };
        if let Some(r) = self
            .refused
            .iter_mut()
            .find(|r| i64::from(r.piece.get()) == piece)
        {
            r.holder = swarm.find_peer(&holder);
        }
    }

    /// A refused piece is asked for again (the seeder serves a second ask) once no other
    /// connection of ours has it and we cannot wait for its holder: the seeder named no
    /// holder we are connected to, and [`PLAN_REASK_FALLBACK`] has passed since the
    /// refusal; or the holder we waited for left without passing it on. A piece the seeder
    /// later suggests again (it lost every source) may be asked for at once (`Suggest`).
    pub(super) fn reask_refused(&mut self, swarm: &Swarm, now: Instant) {
        let before = self.refused.len();
        let allowed = &mut self.allowed;
        self.refused.retain(|r| {
            let p = r.piece;
            if swarm.have().get(p.get()) {
                return false;
            }
            if swarm.availability(p) > 1 {
                // Another connection announces it: the picker fetches it there.
                return true;
            }
            let ask = match r.holder {
                // The holder's `have` (or its leaving) will come: no race with the first
                // copy still on its way to it.
                Some(h) if swarm.is_live(h) => false,
                // It left without the piece reaching us (with `--linger 0` a peer leaves
                // once complete, while the seeder may still name it).
                Some(_) => true,
                None => now.saturating_duration_since(r.at) >= PLAN_REASK_FALLBACK,
            };
            if ask {
                allowed.set(p.get());
            }
            !ask
        });
        if self.refused.len() != before {
            self.mask_gen = self.mask_gen.wrapping_add(1);
        }
    }
}

/// A piece a planning seeder refused us ([`PeerConn::refused`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Refused {
    pub(super) piece: PieceIndex,
    /// When the refusal arrived: the fallback wait runs from here.
    pub(super) at: Instant,
    /// Our connection to the peer the seeder named as the piece's holder, if we have or
    /// had one (a holder that left is not waited for).
    pub(super) holder: Option<PeerKey>,
}
