//! The seeding plan across racks (issue 11): an origin seeder that knows its peers'
//! racks spreads the first copies of the pieces evenly over the racks it serves, so each
//! rack has about the same share to pass on to the others and no rack's uplink carries
//! most of the first pass out. A rack that has received more first copies than the
//! least-served rack with an upload slot (plus [`RACK_SLACK`]) gets no fresh piece until
//! the others catch up; racks without a slot do not hold the others back.
//!
//! Separate from `plan.rs` because it only narrows who may be handed a fresh piece; the
//! plan itself is unchanged when no connection has a rack.

use super::*;

/// First copies a rack may be ahead of the least-served rack with an upload slot.
pub const RACK_SLACK: u32 = 1;

impl Swarm {
    /// Connection `key`'s remote is in rack `rack` (an index the caller keeps stable,
    /// e.g. the topology's rack id).
    pub fn set_peer_rack(&mut self, key: PeerKey, rack: u32) {
        if let Some(s) = self.slot_mut(key) {
            s.rack = Some(rack);
        }
        let r = rack as usize;
        if self.rack_first.len() <= r {
            self.rack_first.resize(r + 1, 0);
        }
    }

    /// First copies handed to connections of `rack` so far.
    pub fn rack_first_copies(&self, rack: u32) -> u32 {
        self.rack_first.get(rack as usize).copied().unwrap_or(0)
    }

    /// Whether `to`'s rack is ahead of the least-served rack that holds an upload slot
    /// (see the module docs); false for a connection without a rack.
    pub(super) fn rack_ahead(&self, to: PeerKey) -> bool {
        let Some(r) = self.slot(to).and_then(|s| s.rack) else {
            return false;
        };
        let least = self
            .peers
            .iter()
            .filter(|s| s.live && s.unchoked)
            .filter_map(|s| s.rack)
            .map(|x| self.rack_first_copies(x))
            .min();
        least.is_some_and(|m| self.rack_first_copies(r) > m + RACK_SLACK)
    }

    /// A fresh piece was handed to `to`: count it for its rack, and let connections the
    /// spreading turned away look again (their rack may be the least served now).
    pub(super) fn note_rack_first(&mut self, to: PeerKey) {
        if let Some(r) = self.slot(to).and_then(|s| s.rack) {
            self.rack_first[r as usize] += 1;
            self.plan_epoch += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BLOCK_SIZE;

    #[test]
    fn first_copies_go_round_the_racks_with_slots() {
        let pl = u64::from(BLOCK_SIZE);
        let l = Lengths::new(pl * 32, pl, 32).unwrap();
        let mut s = Swarm::new(SwarmConfig::default(), [0; 20], l, Bitfield::full(32), 1);
        let now = Instant::now();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let none = Bitfield::new(32);
        // Two connections in rack 0, one in rack 1, one in rack 2 without a slot.
        let a0 = s.add_peer(ip(1)).unwrap();
        let b0 = s.add_peer(ip(2)).unwrap();
        let c1 = s.add_peer(ip(3)).unwrap();
        let d2 = s.add_peer(ip(4)).unwrap();
        for (k, r) in [(a0, 0), (b0, 0), (c1, 1), (d2, 2)] {
            s.set_peer_rack(k, r);
        }
        for k in [a0, b0, c1] {
            assert!(s.try_unchoke(k, now));
        }
        // Rack 0 asks twice as often: it gets its share and one ahead, then waits.
        assert!(s.plan_next(a0, &none).is_some());
        assert!(s.plan_next(b0, &none).is_some());
        assert_eq!(s.plan_next(a0, &none), None, "rack 0 is ahead of rack 1");
        assert!(s.plan_next(c1, &none).is_some());
        assert!(s.plan_next(b0, &none).is_some());
        assert_eq!((s.rack_first_copies(0), s.rack_first_copies(1)), (3, 1));
        assert_eq!(s.plan_next(a0, &none), None);
        // Rack 2 has no slot, so it holds nobody back; once rack 1 is gone, rack 0 goes on.
        s.remove_peer(c1);
        assert!(s.plan_next(a0, &none).is_some());
        // A connection without a rack is never turned away.
        let e = s.add_peer(ip(5)).unwrap();
        assert!(s.plan_next(e, &none).is_some());
    }
}
