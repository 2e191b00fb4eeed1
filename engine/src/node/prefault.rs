//! The prefault thread: faults in the pages of the pieces about to arrive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::geometry::PieceIndex;
use crate::wire::Bitfield;

use super::shared::Shared;

/// Faults in the download's pages on its own thread, in the order the picker will receive
/// them ([`Swarm::next_pieces`](crate::swarm::Swarm::next_pieces): started pieces, then rarest first with the swarm's fixed
/// tie-break), at most [`Prefault::WINDOW`] bytes ahead of what is verified, so the
/// io_uring core threads receive into pages that already exist (see
/// [`Storage::prefault`]). Following the picker matters: pieces arrive in a random order,
/// and prefaulting in file order left the core thread faulting most pages itself.
pub(super) struct Prefault {
    thread: std::thread::JoinHandle<()>,
    done: Arc<AtomicBool>,
}

impl Prefault {
    const WINDOW: u64 = 1 << 30;
    /// Pieces faulted in per plan, at least. Each plan is a scan of every missing piece
    /// under the swarm lock (by the control loop, which the thread asks), so a torrent of
    /// many pieces takes a sixty-fourth of them at a time: at most ~64 scans per download.
    const MIN_BATCH: usize = 16;
    /// After a plan brought nothing new to fault in, the next ask waits for a verdict (the
    /// plan can only change with what is held or announced) or this long. Asking again at
    /// once made the thread and the control loop wake each other in a loop while a
    /// download had no pieces to plan (no peer had announced any yet): three peers on a
    /// 2-core host spun at 60-70% CPU each and starved everything else.
    const IDLE_ASK: Duration = Duration::from_millis(100);

    /// Starts the thread; it asks for plans on `plans` (how many pieces it wants) and reads
    /// them from the swarm snapshot, never taking the swarm lock itself.
    pub(super) fn start(shared: Arc<Shared>, plans: Sender<usize>) -> Prefault {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::Builder::new()
            .name("corvid-prefault".into())
            .spawn(move || Self::run(&shared, &plans, &flag))
            .expect("spawn prefault thread");
        Prefault { thread, done }
    }

    fn run(shared: &Shared, plans: &Sender<usize>, done: &AtomicBool) {
        let lengths = shared.storage.lengths();
        let mut faulted = Bitfield::new(lengths.piece_count());
        let batch = (lengths.piece_count() as usize / 64).max(Self::MIN_BATCH);
        let mut faulted_bytes = 0u64;
        // The snapshot's first plan is a placeholder, not an answer: ask for one at once.
        let mut used: Option<Arc<Vec<PieceIndex>>> = Some(shared.door.snapshot().plan.clone());
        // When (and at what verified count) a fresh plan last brought nothing new.
        let mut starved: Option<(Instant, u32)> = None;
        while !done.load(Ordering::Relaxed) {
            let snap = shared.door.snapshot();
            if snap.complete {
                return;
            }
            let verified = u64::from(snap.have.count()) * lengths.piece_length();
            let fresh = !used.as_ref().is_some_and(|u| Arc::ptr_eq(u, &snap.plan));
            let held = snap.have.count();
            let next: Vec<PieceIndex> = if fresh && faulted_bytes < verified + Self::WINDOW {
                used = Some(snap.plan.clone());
                let next: Vec<PieceIndex> = snap
                    .plan
                    .iter()
                    .filter(|p| !faulted.get(p.get()))
                    .take(batch)
                    .copied()
                    .collect();
                starved = next.is_empty().then(|| (Instant::now(), held));
                next
            } else {
                Vec::new()
            };
            if next.is_empty() {
                let due = starved.is_none_or(|(at, h)| h != held || at.elapsed() >= Self::IDLE_ASK);
                if due && faulted_bytes < verified + Self::WINDOW {
                    // The plan skips verified pieces, not faulted ones: ask for enough.
                    let _ = plans.try_send(faulted.count() as usize + batch);
                }
                // Woken by the control loop after each verdict and each plan; the timeout
                // only bounds a missed wake-up.
                std::thread::park_timeout(Duration::from_millis(100));
                continue;
            }
            for p in next {
                if !shared.storage.prefault(p) {
                    return;
                }
                faulted.set(p.get());
                faulted_bytes += u64::from(lengths.piece_size(p));
            }
        }
    }

    pub(super) fn wake(&self) {
        self.thread.thread().unpark();
    }

    pub(super) fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        self.wake();
        let _ = self.thread.join();
    }
}
