//! The seeding plan inside one connection: handing pieces to a follower (serving side)
//! and the picker's mask of what a planning remote lets us ask for.

use super::*;

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

    /// A refused piece that no other connection of ours has (any more) is asked for again
    /// after [`PLAN_REASK_AFTER`]; the seeder serves a second ask.
    pub(super) fn reask_refused(&mut self, swarm: &Swarm, now: Instant) {
        let before = self.refused.len();
        let allowed = &mut self.allowed;
        self.refused.retain(|&(p, at)| {
            let alone = !swarm.have().get(p.get())
                && swarm.availability(p) <= 1
                && now.saturating_duration_since(at) >= PLAN_REASK_AFTER;
            if alone {
                allowed.set(p.get());
            }
            !alone && !swarm.have().get(p.get())
        });
        if self.refused.len() != before {
            self.mask_gen = self.mask_gen.wrapping_add(1);
        }
    }
}
