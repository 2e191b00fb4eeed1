//! One swarm's bookkeeping: its peers, the per-source-network counts behind the per-IP
//! caps, and which peers an announce is handed (random-ish rotation, or the rack-aware
//! handout when a [`Topology`] is set).
//!
//! Separate from [`Swarms`] (the parent), which applies the caps and the protocol rules
//! across swarms: this part only decides, within one swarm, who is counted and who is
//! handed to whom.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::tracker::proto::PeerInfo;
use crate::tracker::topology::RackId;

/// What the tracker remembers of one peer.
#[derive(Debug, Clone)]
pub(super) struct PeerEntry {
    /// Where other peers are told to connect.
    pub(super) addr: SocketAddr,
    /// The address the entry was made from (see [`Swarms::announce`]): only announces
    /// from there may update or remove it, so knowing a peer's id (dictionary responses
    /// show it) is not enough to redirect or drop that peer.
    pub(super) owner: IpAddr,
    pub(super) left: u64,
    pub(super) last_seen: Instant,
    /// Its rack by [`TrackerConfig::topology`], looked up when it announces.
    pub(super) rack: Option<RackId>,
    /// It has had everything since it first announced: a seeder the deploy started (one
    /// per datacenter, say), not a peer that finished. Rack-aware handouts give the
    /// former to everyone and treat the latter as the rack member it is.
    pub(super) origin_seed: bool,
}

/// A count per source network ([`ip_key`]); absent means zero, so the map holds only
/// networks that have something tracked.
#[derive(Debug, Default)]
pub(super) struct IpCounts(pub(super) HashMap<IpAddr, usize>);

impl IpCounts {
    pub(super) fn get(&self, key: &IpAddr) -> usize {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Counts one more; true if it is the first.
    pub(super) fn add(&mut self, key: IpAddr) -> bool {
        let n = self.0.entry(key).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts one fewer; true if that was the last.
    pub(super) fn sub(&mut self, key: IpAddr) -> bool {
        match self.0.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.0.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The unit the per-IP caps count: an IPv4 address, or an IPv6 /64, the usual allocation
/// of one host or site (counting single IPv6 addresses would give every host 2^64 of
/// them).
pub(super) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Swarm {
    pub(super) peers: HashMap<[u8; 20], PeerEntry>,
    /// Peers per source network in this swarm, kept in step with `peers`.
    pub(super) per_ip: IpCounts,
    /// Completed events seen from peers this tracker saw downloading (scrape's
    /// `downloaded`).
    pub(super) downloaded: u64,
    /// Where the next peer list starts, so successive announces see different peers.
    pub(super) cursor: usize,
    /// When stale peers were last dropped from this swarm by an announce.
    pub(super) last_sweep: Option<Instant>,
}

impl Swarm {
    pub(super) fn counts(&self) -> (u64, u64) {
        let seeds = self.peers.values().filter(|p| p.left == 0).count() as u64;
        (seeds, self.peers.len() as u64 - seeds)
    }

    /// Adds a peer not yet in the swarm, counting it against its source network.
    pub(super) fn insert(&mut self, id: [u8; 20], entry: PeerEntry, swarms_per_ip: &mut IpCounts) {
        let key = ip_key(entry.owner);
        if self.per_ip.add(key) {
            swarms_per_ip.add(key);
        }
        if let Some(old) = self.peers.insert(id, entry) {
            // Callers insert only absent ids; should one be replaced, keep counts true.
            Self::release(&mut self.per_ip, old.owner, swarms_per_ip);
        }
    }

    pub(super) fn remove(&mut self, id: &[u8; 20], swarms_per_ip: &mut IpCounts) {
        if let Some(p) = self.peers.remove(id) {
            Self::release(&mut self.per_ip, p.owner, swarms_per_ip);
        }
    }

    /// Drops peers last seen before `cut`.
    pub(super) fn drop_stale(&mut self, cut: Instant, swarms_per_ip: &mut IpCounts) {
        let per_ip = &mut self.per_ip;
        self.peers.retain(|_, p| {
            let keep = p.last_seen >= cut;
            if !keep {
                Self::release(per_ip, p.owner, swarms_per_ip);
            }
            keep
        });
    }

    /// Up to `want` peers other than `asker`, rotating through the swarm so successive
    /// announces see different peers; a seeder gets no seeders.
    pub(super) fn handout(
        &mut self,
        asker: &[u8; 20],
        asker_is_seed: bool,
        want: usize,
    ) -> Vec<PeerInfo> {
        let candidates: Vec<PeerInfo> = self
            .peers
            .iter()
            .filter(|(id, p)| *id != asker && !(asker_is_seed && p.left == 0))
            .map(peer_info)
            .collect();
        let n = candidates.len();
        let mut peers = Vec::with_capacity(want.min(n));
        if n > 0 {
            let start = self.cursor % n;
            self.cursor = self.cursor.wrapping_add(want.max(1));
            peers.extend(candidates.iter().cycle().skip(start).take(want.min(n)));
        }
        peers
    }

    /// The handout for a downloading peer in `rack`: the origin seeders first (those
    /// that had everything when they first announced; up to a quarter of the list, at
    /// least [`MIN_SEEDS`]): those of its own rack, or if its rack has none, those of
    /// the other racks (with one seeder per datacenter, each feeds its own), then the other peers, finished or not,
    /// split about 3:1 between the asker's rack and the rest. A finished peer is not
    /// handed out as a seeder to every rack: that would join the racks all to all as a
    /// deploy ends. Cross-rack peers are at most a third of the same-rack ones (at least
    /// one, so racks stay joined and a piece the rack lacks can come in), and all of the
    /// list when the asker's rack has nobody else.
    ///
    /// The cap holds even when fewer peers than `want` exist: handing every peer out
    /// whenever the swarm is small would connect a small fleet all-to-all across racks.
    pub(super) fn rack_handout(
        &mut self,
        asker: &[u8; 20],
        rack: RackId,
        want: usize,
    ) -> Vec<PeerInfo> {
        let (mut seeds, mut same, mut other) = (Vec::new(), Vec::new(), Vec::new());
        let mut far_seeds = Vec::new();
        for (id, p) in self.peers.iter().filter(|(id, _)| *id != asker) {
            let near = p.rack == Some(rack);
            match (p.origin_seed, near) {
                (true, true) => seeds.push(peer_info((id, p))),
                (true, false) => far_seeds.push(peer_info((id, p))),
                (false, true) => same.push(peer_info((id, p))),
                (false, false) => other.push(peer_info((id, p))),
            }
        }
        let cursor = self.cursor;
        self.cursor = self.cursor.wrapping_add(want.max(1));
        // Rotate each group on its own, then put the near seeders before the far ones.
        // Cross-rack peers do not rotate: they are ranked by a score of the pair (see
        // [`pair_score`]), so each re-announce names the same few, and a peer's links
        // across the spine stay few instead of growing by some each interval.
        for g in [&mut seeds, &mut far_seeds, &mut same] {
            if !g.is_empty() {
                let k = cursor % g.len();
                g.rotate_left(k);
            }
        }
        if seeds.is_empty() {
            seeds = far_seeds;
        }
        let RackCounts {
            seeds: n_seeds,
            same: n_same,
            other: n_other,
        } = rack_counts(seeds.len(), same.len(), other.len(), want);
        if n_other > 0 && n_other < other.len() {
            other.select_nth_unstable_by_key(n_other - 1, |p| {
                std::cmp::Reverse(pair_score(asker, &p.peer_id.unwrap_or_default()))
            });
        }
        let mut peers = Vec::with_capacity(n_seeds + n_same + n_other);
        peers.extend(seeds.into_iter().take(n_seeds));
        peers.extend(same.into_iter().take(n_same));
        peers.extend(other.into_iter().take(n_other));
        peers
    }

    pub(super) fn release(per_ip: &mut IpCounts, owner: IpAddr, swarms_per_ip: &mut IpCounts) {
        let key = ip_key(owner);
        if per_ip.sub(key) {
            swarms_per_ip.sub(key);
        }
    }
}

/// How many of each kind a rack-aware handout lists (see [`Swarm::rack_handout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RackCounts {
    /// Origin seeders (the asker's rack's, or every rack's if it has none).
    pub seeds: usize,
    /// Peers of the asker's rack.
    pub same: usize,
    /// Peers of other racks.
    pub other: usize,
}

/// The rack-aware handout's sizes, given how many origin seeders, same-rack and other-rack
/// peers there are to choose from and the asker's `numwant`. Public so that the fleet
/// simulator (`corvid-bench sim`) hands out what this tracker would, not a guess of it.
pub fn rack_counts(seeds: usize, same: usize, other: usize, want: usize) -> RackCounts {
    let n_seeds = seeds.min(want.div_ceil(4).max(MIN_SEEDS)).min(want);
    let rest = want - n_seeds;
    let reserve = other.min(rest / 4);
    let n_same = same.min(rest - reserve);
    let n_other = if n_same == 0 {
        other.min(rest)
    } else {
        other.min(n_same.div_ceil(3)).min(rest - n_same)
    };
    RackCounts {
        seeds: n_seeds,
        same: n_same,
        other: n_other,
    }
}

/// Seeders a rack-aware handout includes, if there are that many, however small the
/// asker's `numwant`: with several seeders (one per datacenter), each peer should reach
/// more than one.
pub(super) const MIN_SEEDS: usize = 2;

/// A score of a pair of peers, the same whichever asks: cross-rack peers are the
/// highest-scoring of the other racks, so when A's pick in rack b is B, B's pick in rack a
/// tends to be A, and the two share one connection rather than holding two across the
/// spine. (Rendezvous hashing; not secret, and a peer choosing its id to be picked gains
/// only a connection it could have dialled anyway.)
pub fn pair_score(a: &[u8; 20], b: &[u8; 20]) -> u64 {
    use std::hash::{Hash, Hasher};
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lo.hash(&mut h);
    hi.hash(&mut h);
    h.finish()
}

pub(super) fn peer_info((id, p): (&[u8; 20], &PeerEntry)) -> PeerInfo {
    PeerInfo {
        addr: p.addr,
        peer_id: Some(*id),
    }
}
