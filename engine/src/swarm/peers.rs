//! Connections' slots in the [`Swarm`]: joining and leaving (a reused slot gets a new
//! generation, so a stale [`PeerKey`] is never mistaken for its successor), bans by
//! address, and the choker's upload slots.
//!
//! Separate from the parent because it is bookkeeping per connection, apart from the
//! per-piece and per-block state there.

use super::*;

impl Swarm {
    pub fn is_banned_addr(&self, addr: IpAddr) -> bool {
        self.banned.contains(&addr)
    }

    pub(super) fn slot(&self, key: PeerKey) -> Option<&PeerSlot> {
        self.peers
            .get(key.idx as usize)
            .filter(|s| s.live && s.gen == key.gen)
    }

    pub(super) fn slot_mut(&mut self, key: PeerKey) -> Option<&mut PeerSlot> {
        self.peers
            .get_mut(key.idx as usize)
            .filter(|s| s.live && s.gen == key.gen)
    }

    /// Registers a connection from `addr`; banned addresses are refused for the run.
    pub fn add_peer(&mut self, addr: IpAddr) -> Result<PeerKey, Banned> {
        if self.banned.contains(&addr) {
            return Err(Banned(addr));
        }
        let slot = PeerSlot {
            gen: 0,
            live: true,
            addr,
            banned: false,
            unchoked: false,
            local: false,
            rack: None,
            origin: false,
            seed_open: false,
            peer_id: None,
            slot_lost: false,
            paced: false,
        };
        if let Some(idx) = self.spare_peers.pop() {
            let s = &mut self.peers[idx as usize];
            let gen = s.gen.wrapping_add(1);
            *s = PeerSlot { gen, ..slot };
            Ok(PeerKey { idx, gen })
        } else {
            self.peers.push(slot);
            Ok(PeerKey {
                idx: self.peers.len() as u32 - 1,
                gen: 0,
            })
        }
    }

    /// Forgets a connection. Its outstanding requests and availability must already have
    /// been given back ([`PeerConn::handle_close`] does both).
    ///
    /// [`PeerConn::handle_close`]: crate::peer::PeerConn::handle_close
    pub fn remove_peer(&mut self, key: PeerKey) {
        self.epoch += 1;
        self.plan_epoch += 1;
        self.release_unchoke(key);
        self.unpace(key);
        for &pi in &self.active {
            let p = &mut self.partials[pi as usize];
            if p.exclusive == Some(key) {
                p.exclusive = None;
            }
        }
        if let Some(s) = self.slot_mut(key) {
            s.live = false;
            if std::mem::take(&mut s.local) {
                self.local_peers -= 1;
                self.turns.mates_changed();
            }
            self.spare_peers.push(key.idx);
        }
    }

    /// Whether the connection's address has been banned since it joined (or the key is
    /// stale: its connection was removed).
    pub fn is_banned(&self, key: PeerKey) -> bool {
        match self.slot(key) {
            Some(s) => s.banned,
            None => true,
        }
    }

    /// Asks for an upload slot; true if the connection holds one (now or already). A
    /// refusal (every slot taken) is remembered as of `now`: see [`Swarm::slots_wanted_since`].
    pub fn try_unchoke(&mut self, key: PeerKey, now: Instant) -> bool {
        let cap = self.cfg.max_unchoked;
        let unchoked = self.unchoked;
        let Some(s) = self.slot_mut(key) else {
            return false;
        };
        if s.unchoked {
            return true;
        }
        if unchoked >= cap {
            self.slot_refused_at = Some(now);
            return false;
        }
        s.unchoked = true;
        s.slot_lost = false;
        self.unchoked += 1;
        true
    }

    /// Whether an interested peer was refused an upload slot at or after `t`: the slots are
    /// contended, so a holder that has stopped asking should give its slot back soon rather
    /// than after [`crate::peer::PeerConfig::upload_stall_timeout`]. (Found by the fleet
    /// simulator: past ~300 peers every seeder slot was held by peers that had fetched what
    /// the seeding plan gave them and asked nothing more, so the others waited out the 10 s
    /// stall timeout and the whole fleet finished at ~11 s, 13 x S/C.)
    pub fn slots_wanted_since(&self, t: Instant) -> bool {
        self.slot_refused_at.is_some_and(|r| r >= t)
    }

    pub fn release_unchoke(&mut self, key: PeerKey) {
        if let Some(s) = self.slot_mut(key) {
            if s.unchoked {
                s.unchoked = false;
                s.slot_lost = true;
                self.unchoked -= 1;
                // Pieces the seeding plan handed it may go to another follower now.
                self.plan_epoch += 1;
            }
        }
    }
}
