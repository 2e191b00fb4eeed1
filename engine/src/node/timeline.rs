//! A compact timeline of one node's run, in its final report: when it first heard from a
//! tracker, first had a peer and first received payload, and its byte counters sampled
//! about every 100 ms. The fleet benchmark reads it to split a deploy's time into
//! start-up, link use over time and tail (issue 10: where a run loses time against S/C),
//! which the end times alone cannot show. Cheap by design: three atomics set once, and
//! one sample per control-loop pass at most every [`SAMPLE_EVERY`], at most
//! [`MAX_SAMPLES`] of them (a long-running seeder stops sampling, it does not grow).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::shared::Counters;

/// The sampling period (the control loop wakes at least every 200 ms, more often on
/// verdicts, so a seeder's samples are ~200 ms apart, a downloader's ~100 ms).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// 50 minutes at 100 ms; 3 MiB-ish of JSON at most.
pub const MAX_SAMPLES: usize = 30_000;

/// First-time events, as nanoseconds after the node's start plus one (0: not yet).
#[derive(Debug, Default)]
pub(crate) struct Milestones {
    tracker_answer: AtomicU64,
    peer: AtomicU64,
    payload: AtomicU64,
}

fn mark(slot: &AtomicU64, start: Instant) {
    if slot.load(Ordering::Relaxed) == 0 {
        let t = start.elapsed().as_nanos() as u64 + 1;
        let _ = slot.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
    }
}

fn ms(slot: &AtomicU64) -> Option<f64> {
    match slot.load(Ordering::Relaxed) {
        0 => None,
        t => Some(((t - 1) / 1_000_000) as f64 / 1000.0),
    }
}

impl Milestones {
    /// A tracker answered an announce (with or without peers).
    pub fn tracker_answered(&self, start: Instant) {
        mark(&self.tracker_answer, start);
    }
    /// A connection finished its handshake.
    pub fn peer_connected(&self, start: Instant) {
        mark(&self.peer, start);
    }
    /// A block's payload started to arrive.
    pub fn payload_arrived(&self, start: Instant) {
        mark(&self.payload, start);
    }
}

/// Counter samples taken by the control loop.
#[derive(Debug, Default)]
pub(super) struct Sampler {
    last: Option<Instant>,
    samples: Vec<[u64; 4]>,
}

impl Sampler {
    /// Takes a sample if [`SAMPLE_EVERY`] passed since the last one (or `force`).
    pub fn sample(&mut self, start: Instant, now: Instant, c: &Counters, force: bool) {
        let due = self.last.is_none_or(|t| now - t >= SAMPLE_EVERY);
        if !(due || force) || self.samples.len() >= MAX_SAMPLES {
            return;
        }
        self.last = Some(now);
        self.samples.push([
            now.saturating_duration_since(start).as_millis() as u64,
            c.from_seeder.load(Ordering::Relaxed),
            c.from_peers.load(Ordering::Relaxed),
            c.uploaded.load(Ordering::Relaxed),
        ]);
    }

    pub fn into_timeline(self, m: &Milestones) -> Timeline {
        Timeline {
            first_tracker_answer_s: ms(&m.tracker_answer),
            first_peer_s: ms(&m.peer),
            first_payload_s: ms(&m.payload),
            samples: self.samples,
        }
    }
}

/// The report's `timeline` object.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timeline {
    /// Seconds after the node's start (millisecond resolution); `null`: never.
    pub first_tracker_answer_s: Option<f64>,
    pub first_peer_s: Option<f64>,
    pub first_payload_s: Option<f64>,
    /// `[ms since start, bytes from the seeder, bytes from peers, bytes uploaded]`,
    /// cumulative payload bytes.
    pub samples: Vec<[u64; 4]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_spaced_and_bounded_and_milestones_set_once() {
        let start = Instant::now();
        let c = Counters::default();
        let mut s = Sampler::default();
        s.sample(start, start, &c, false);
        c.from_peers.store(5, Ordering::Relaxed);
        s.sample(start, start + Duration::from_millis(50), &c, false);
        s.sample(start, start + Duration::from_millis(120), &c, false);
        s.sample(start, start + Duration::from_millis(130), &c, true);
        let m = Milestones::default();
        m.peer_connected(start);
        let first = ms(&m.peer);
        // A later call (here: as if a second later) keeps the first time.
        m.peer_connected(start - Duration::from_secs(1));
        assert_eq!(ms(&m.peer), first);
        let t = s.into_timeline(&m);
        assert_eq!(
            t.samples,
            vec![[0, 0, 0, 0], [120, 0, 5, 0], [130, 0, 5, 0]]
        );
        assert!(t.first_peer_s.is_some() && t.first_payload_s.is_none());

        let mut s = Sampler::default();
        for i in 0..MAX_SAMPLES as u64 + 10 {
            s.sample(start, start + Duration::from_secs(i), &c, false);
        }
        assert_eq!(s.samples.len(), MAX_SAMPLES);
    }
}
