//! The prefault thread: faults in the pages of the pieces about to arrive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::wire::Bitfield;

use super::shared::Shared;

/// Faults in the download's pages on its own thread, in the order the picker will receive
/// them ([`Swarm::next_pieces`]: started pieces, then rarest first with the swarm's fixed
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
    /// Pieces planned per look at the swarm, at least. Each look scans every missing piece
    /// under the swarm lock the core threads take, so a torrent of many pieces plans
    /// a sixty-fourth of them at a time: at most ~64 full scans per download.
    const MIN_BATCH: usize = 16;

    pub(super) fn start(shared: Arc<Shared>) -> Prefault {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::Builder::new()
            .name("corvid-prefault".into())
            .spawn(move || {
                let lengths = shared.storage.lengths();
                let mut faulted = Bitfield::new(lengths.piece_count());
                let batch = (lengths.piece_count() as usize / 64).max(Self::MIN_BATCH);
                let mut faulted_bytes = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    let (next, verified) = {
                        let swarm = shared.swarm.lock();
                        if swarm.is_complete() {
                            return;
                        }
                        let verified = u64::from(swarm.have().count()) * lengths.piece_length();
                        (swarm.next_pieces(&faulted, batch), verified)
                    };
                    if next.is_empty() || faulted_bytes >= verified + Self::WINDOW {
                        // Woken by the control loop after each verdict; the timeout only
                        // bounds a missed wake-up (and re-plans as availability changes).
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
            })
            .expect("spawn prefault thread");
        Prefault { thread, done }
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
