//! Pacing uploads to share a known uplink (`--uplink RATE`, [`SwarmConfig::uplink`];
//! without it nothing is paced). Each paced connection's socket gets a cap
//! (`SO_MAX_PACING_RATE`, set by the runtime, honoured by BBR and by TCP's internal pacing
//! for any congestion control):
//! - a seeder's connections that it serves (followers of its plan with handed pieces
//!   waiting, and any unchoked interested remote): [`PACE_HEADROOM`] x uplink / paced, so
//!   the first copies spread over every follower at once and TCP still fills the link
//!   when some are slow;
//! - a downloading peer's unchoked interested remotes: together [`PACE_HEADROOM_RELAY`]
//!   of its uplink, so its own uplink queue stays short.
//!
//! With a known uplink every socket also holds little written and unsent
//! ([`unsent_limit`], the runtime's `TCP_NOTSENT_LOWAT`): the uplink's rate x 5 ms,
//! within 32 KiB..1 MiB, and send batches of at most twice that.
//!
//! Why (issue 10, namespace fleet, N=16 at 100 Mbit/s, 64 MiB, 256 KiB pieces; runs in
//! `benches/runs/2026-11-29-vm/fleet-session7-pacing-probes`, a loaded machine): without
//! pacing the seeder's uplink goes very unevenly in the first 1.5 s (one to three
//! followers 4-7 MiB, the rest 0.3-0.8), and the follower it favoured is the run's
//! straggler: it gets almost nothing from peers in the first 2 s and is still 10-19 MiB
//! behind the median host at 4 s, which is what makes a run slow. Pacing only the seeder
//! evened its split (most followers 0.6-1.0 MiB) but not the favoured follower, and made
//! stragglers more frequent (4 runs in 7 more than 10 MiB behind at 4 s); pacing the
//! relays too made them rarer (1 in 9 against 5 in 16 unpaced). Runs: 7.04-8.40 s
//! (median 7.36, 13 runs) against 7.35-8.33 s (median 7.88, 13 runs of the build without
//! it, interleaved in the same periods); on the quietest stretch of the session (one
//! niced job beside the fleet), two alternating pairs of builds: 7.36 / 7.33 / 7.65 /
//! 7.38 s against 8.05 / 8.11 / 7.74 / 7.48 s.
//!
//! Why the unsent bound (session 8, same fleet, one run in three per setting while
//! helpers compiled at nice 19): what still made a run slow was the follower the seeder
//! favoured at the start. Everyone wants its pieces, so its uplink serves 15 remotes at
//! 1/15 of the link each; its own requests (and haves) are written into those same
//! sockets behind up to a socket buffer (autotuned, hundreds of KB) plus a 1 MiB send
//! batch of payload, so they reach the other end seconds late, and its downlink sat at
//! 4-16% of the link for ~2 s (10-13 MiB behind the median host at 4 s). With 64 KiB
//! unsent and 128 KiB batches, 12 of 12 runs had every host within 2.5 MiB of the
//! median at 4 s; without, 4 of 9 runs had a host 4-13 MiB behind. With the bound, the
//! relay share: 0.9 took 7.34 / 7.01 / 7.19 / 7.19 / 7.00 / 6.90 s (mid-run median
//! downlink 85-94% of the link; 16 peers x 0.9 of their links plus the seeder's one
//! link is 15.4 links for 16 downloads, so 0.9 itself bounded it), 0.97 took
//! 6.71 / 6.76 / 6.89 / 7.23 / 6.90 / 6.71 s (91-96%), 1.0 7.03 / 7.14 / 7.21 s (the
//! link's FIFO fills again).
//!
//! Measuring the uplink instead of being told was tried: the best 250 ms rate read the
//! socket buffers filling at the start as a faster link, and the last window's rate
//! spiralled down once some connections were slow (one run took 46 s).

use super::*;

/// A seeder's paced connection may take this many times its equal share of the uplink.
pub const PACE_HEADROOM: f64 = 1.5;

/// A downloading peer's paced connections together may take this share of its uplink.
pub const PACE_HEADROOM_RELAY: f64 = 0.97;

/// How long a protocol message may wait behind payload already written to a socket,
/// at the uplink's full rate (a connection with a share of it waits longer in proportion).
const UNSENT_TIME_S: f64 = 0.005;

/// Bytes each socket may hold written and unsent on a host whose uplink is `uplink`
/// bytes per second: [`UNSENT_TIME_S`] of it, at least 32 KiB (a few packets for every
/// connection) and at most 1 MiB (a 10 Gbit/s link's default send batch).
pub fn unsent_limit(uplink: u64) -> u32 {
    (uplink as f64 * UNSENT_TIME_S).clamp(32.0 * 1024.0, 1024.0 * 1024.0) as u32
}

/// How many followers share the uplink now.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// Live connections marked paced (see [`Swarm::set_paced`]).
    paced: u32,
}

impl Swarm {
    /// Whether connection `key` is a follower with handed pieces waiting, sharing the
    /// uplink with the others so marked.
    pub fn set_paced(&mut self, key: PeerKey, paced: bool) {
        let Some(s) = self.slot_mut(key) else {
            return;
        };
        if s.paced == paced {
            return;
        }
        s.paced = paced;
        if paced {
            self.pace.paced += 1;
        } else {
            self.pace.paced -= 1;
        }
    }

    /// Whether connection `key` is marked paced.
    pub fn is_paced(&self, key: PeerKey) -> bool {
        self.slot(key).is_some_and(|s| s.paced)
    }

    /// The pacing cap, bytes per second, for each paced follower: `None` without a
    /// configured uplink or with nobody paced.
    pub fn follower_pace(&self) -> Option<u64> {
        let uplink = self.cfg.uplink?;
        if self.pace.paced == 0 {
            return None;
        }
        let headroom = if self.is_complete() {
            PACE_HEADROOM
        } else {
            PACE_HEADROOM_RELAY
        };
        Some((headroom * uplink as f64 / f64::from(self.pace.paced)).max(1.0) as u64)
    }

    /// A removed connection no longer shares the uplink.
    pub(super) fn unpace(&mut self, key: PeerKey) {
        self.set_paced(key, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::tests::swarm;

    #[test]
    fn the_uplink_is_shared_by_the_paced_connections() {
        // A downloader: its paced connections together take 0.97 of the uplink.
        let mut s = swarm(4, 1, 1);
        let a = s.add_peer("10.0.0.1".parse().unwrap()).unwrap();
        let b = s.add_peer("10.0.0.2".parse().unwrap()).unwrap();
        s.set_paced(a, true);
        assert!(s.is_paced(a) && !s.is_paced(b));
        assert_eq!(
            s.follower_pace(),
            None,
            "no uplink configured: nothing is paced"
        );
        s.cfg.uplink = Some(4_000_000);
        assert_eq!(s.follower_pace(), Some(3_880_000));
        s.set_paced(b, true);
        assert_eq!(s.follower_pace(), Some(1_940_000));
        // Marking twice counts once; a removed connection leaves the share.
        s.set_paced(b, true);
        assert_eq!(s.follower_pace(), Some(1_940_000));
        s.remove_peer(b);
        assert_eq!(s.follower_pace(), Some(3_880_000));
        s.set_paced(a, false);
        assert_eq!(s.follower_pace(), None);
        // A seeder: each may take 1.5 x an equal share.
        let l = s.lengths;
        let mut seeder = Swarm::new(
            SwarmConfig {
                uplink: Some(4_000_000),
                ..SwarmConfig::default()
            },
            [0; 20],
            l,
            Bitfield::full(l.piece_count()),
            1,
        );
        let c = seeder.add_peer("10.0.0.3".parse().unwrap()).unwrap();
        let d = seeder.add_peer("10.0.0.4".parse().unwrap()).unwrap();
        seeder.set_paced(c, true);
        seeder.set_paced(d, true);
        assert_eq!(seeder.follower_pace(), Some(3_000_000));
    }

    #[test]
    fn unsent_bytes_are_a_few_milliseconds_of_the_uplink_within_bounds() {
        // 100 Mbit/s: 5 ms is 62,500 bytes.
        assert_eq!(unsent_limit(12_500_000), 62_500);
        // A slow link still lets a few packets wait; a fast one is capped at 1 MiB.
        assert_eq!(unsent_limit(125_000), 32 * 1024);
        assert_eq!(unsent_limit(1_250_000_000), 1024 * 1024);
    }
}
