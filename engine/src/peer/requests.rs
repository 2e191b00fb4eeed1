//! The remote's requests queued with us, in arrival order for serving, indexed by their
//! wire triple so that a `cancel` costs O(1) however deep the queue is (a remote may keep
//! `our_reqq` = 4,096 queued, and each cancel used to scan them under the swarm lock).
//!
//! A cancel leaves a tombstone (a count per triple) instead of removing from the middle
//! of the queue; tombstones are dropped when serving reaches them, and the queue is
//! compacted once they outnumber the live requests, so a remote that requests and cancels
//! in a loop cannot grow it: at most twice the live requests plus a constant.

use std::collections::{HashMap, VecDeque};

use crate::geometry::BlockRef;

/// (piece, offset, length): how `cancel` names a request.
type Key = (u32, u32, u32);

fn key(b: &BlockRef) -> Key {
    (b.piece.get(), b.offset, b.len)
}

/// Tombstones allowed beyond the live requests before a compaction.
const SLACK: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct TheirRequests {
    queue: VecDeque<BlockRef>,
    /// Live entries per triple (SipHash: the keys are the remote's choice).
    live: HashMap<Key, u32>,
    /// Cancelled entries still in `queue`, per triple; the earliest ones of that triple.
    dead: HashMap<Key, u32>,
    live_len: usize,
}

fn dec(map: &mut HashMap<Key, u32>, k: Key) -> bool {
    match map.get_mut(&k) {
        Some(n) if *n > 1 => {
            *n -= 1;
            true
        }
        Some(_) => {
            map.remove(&k);
            true
        }
        None => false,
    }
}

impl TheirRequests {
    /// Live (not cancelled, not served) requests.
    pub fn len(&self) -> usize {
        self.live_len
    }

    pub fn is_empty(&self) -> bool {
        self.live_len == 0
    }

    pub fn push_back(&mut self, b: BlockRef) {
        *self.live.entry(key(&b)).or_default() += 1;
        self.live_len += 1;
        self.queue.push_back(b);
    }

    /// Forgets one queued request for this triple; false if none was queued.
    pub fn cancel(&mut self, piece: u32, offset: u32, len: u32) -> bool {
        let k = (piece, offset, len);
        if !dec(&mut self.live, k) {
            return false;
        }
        self.live_len -= 1;
        *self.dead.entry(k).or_default() += 1;
        if self.queue.len() > 2 * self.live_len + SLACK {
            self.compact();
        }
        true
    }

    fn compact(&mut self) {
        let dead = &mut self.dead;
        self.queue.retain(|b| !dec(dead, key(b)));
        debug_assert!(self.dead.is_empty());
    }

    /// The oldest live request.
    pub fn pop_front(&mut self) -> Option<BlockRef> {
        while let Some(b) = self.queue.pop_front() {
            let k = key(&b);
            if dec(&mut self.dead, k) {
                continue;
            }
            dec(&mut self.live, k);
            self.live_len -= 1;
            return Some(b);
        }
        None
    }

    /// Takes, among the oldest `lookahead` queued requests, the one with the smallest
    /// `rank` (the first of equals); triples with a cancelled copy are left to
    /// `pop_front`, which knows which copy is the cancelled one.
    pub fn take_min_by<R: Ord>(
        &mut self,
        lookahead: usize,
        rank: impl Fn(&BlockRef) -> R,
    ) -> Option<BlockRef> {
        let best = self
            .queue
            .iter()
            .take(lookahead)
            .enumerate()
            .filter(|(_, b)| !self.dead.contains_key(&key(b)))
            .min_by_key(|(_, b)| rank(b))
            .map(|(i, _)| i);
        let Some(i) = best else {
            return self.pop_front();
        };
        let b = self.queue.remove(i)?;
        dec(&mut self.live, key(&b));
        self.live_len -= 1;
        Some(b)
    }

    /// For tests: the bookkeeping adds up and tombstones stay bounded.
    #[cfg(test)]
    pub fn check(&self) {
        let dead: u32 = self.dead.values().sum();
        let live: u32 = self.live.values().sum();
        assert_eq!(live as usize, self.live_len);
        assert_eq!(self.queue.len(), self.live_len + dead as usize);
        assert!(self.queue.len() <= 2 * self.live_len + SLACK + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Lengths;

    fn b(piece: u32, offset: u32) -> BlockRef {
        let l = Lengths::new(10_000 * 65_536, 65_536, 10_000).unwrap();
        BlockRef {
            piece: l.piece(piece).unwrap(),
            offset,
            len: 16_384,
        }
    }

    #[test]
    fn cancel_removes_one_copy_and_serving_keeps_the_order() {
        let mut q = TheirRequests::default();
        for i in 0..4096 {
            q.push_back(b(i / 4, (i % 4) * 16_384));
        }
        q.push_back(b(0, 0)); // a duplicate of the first
        assert!(q.cancel(0, 0, 16_384));
        assert!(q.cancel(5, 16_384, 16_384));
        assert!(!q.cancel(5, 16_384, 16_384), "only one copy was queued");
        assert!(!q.cancel(9999, 0, 16_384));
        q.check();
        assert_eq!(q.len(), 4095);
        // The cancelled copy is the first one; the duplicate at the end is served.
        assert_eq!(q.pop_front(), Some(b(0, 16_384)));
        let mut served = vec![b(0, 16_384)];
        while let Some(x) = q.pop_front() {
            served.push(x);
        }
        assert_eq!(served.len(), 4095);
        assert!(!served.contains(&b(5, 16_384)));
        assert_eq!(served.last(), Some(&b(0, 0)));
        assert!(q.is_empty());
        q.check();
    }

    #[test]
    fn request_cancel_loops_do_not_grow_the_queue() {
        let mut q = TheirRequests::default();
        q.push_back(b(1, 0));
        for i in 0..100_000u32 {
            q.push_back(b(2 + i % 7, 0));
            assert!(q.cancel(2 + i % 7, 0, 16_384));
            q.check();
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_front(), Some(b(1, 0)));
        assert_eq!(q.pop_front(), None);
    }

    #[test]
    fn take_min_by_skips_cancelled_and_looks_only_ahead() {
        let mut q = TheirRequests::default();
        for i in [5, 3, 9, 1, 0] {
            q.push_back(b(i, 0));
        }
        assert!(q.cancel(1, 0, 16_384));
        // Lowest piece among the first four (0 is beyond), 1 is cancelled.
        assert_eq!(q.take_min_by(4, |x| x.piece.get()), Some(b(3, 0)));
        q.check();
        assert_eq!(q.pop_front(), Some(b(5, 0)));
        assert_eq!(q.pop_front(), Some(b(9, 0)));
        assert_eq!(q.pop_front(), Some(b(0, 0)));
        assert!(q.is_empty());
    }
}
