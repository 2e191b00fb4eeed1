//! The SHA-1 hasher pool: dedicated threads that verify pieces straight from the mapping.
//!
//! Hashing is the one CPU-heavy step of a download, so it runs beside the io_uring
//! threads, never on them. Jobs go through one shared crossbeam channel that every worker
//! pulls from, so many pieces are hashed at once and a 1 GiB payload scales with cores;
//! [`HashPool::hash_all`] and [`HashPool::verify_all`] keep a bounded window of pieces in
//! flight and put the results back in piece order.
//!
//! Workers read the mapping through [`Storage::hash_piece`]; under the storage mapping
//! contract a piece is submitted only after all of its blocks have been written.
//!
//! SHA-1 speed: the `sha1` crate (0.10) detects SHA-NI at run time (through `cpufeatures`)
//! and uses it on x86_64 with no feature flag; its `asm` feature is an empty placeholder
//! in this version. Measured on the dev machine: ~1570 MB/s per core with SHA-NI, ~680 MB/s
//! with the portable code (`force-soft`).
//!
//! Cold pages are left to the kernel's own mmap readahead: an explicit `madvise(WILLNEED)`
//! per queued piece was measured and made a cold 512 MiB `hash_all` slower (~400 against
//! ~850 MB/s on 2 threads), so there is none.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::geometry::PieceIndex;
use crate::storage::Storage;

/// Pieces in flight per worker for the whole-payload walks: enough that no worker waits
/// for the next job, few enough that the queue stays small for any torrent size.
const IN_FLIGHT_PER_THREAD: usize = 4;

/// The outcome of one asynchronous verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashVerdict {
    pub piece: PieceIndex,
    pub ok: bool,
    /// From [`HashPool::submit`] to the verdict: queueing plus hashing, what the piece
    /// waited before it could be announced.
    pub elapsed: Duration,
    /// Hashing alone, for the per-piece hash latency statistic.
    pub hashing: Duration,
}

enum Job {
    Verify {
        storage: Arc<Storage>,
        piece: PieceIndex,
        expected: [u8; 20],
        submitted: Instant,
        reply: Sender<HashVerdict>,
    },
    Hash {
        storage: Arc<Storage>,
        piece: PieceIndex,
        /// `None` if hashing panicked (a bug), so the walk fails loudly instead of waiting.
        reply: Sender<(PieceIndex, Option<[u8; 20]>)>,
    },
}

/// A fixed set of hashing threads. Dropping the pool lets queued jobs finish, then joins
/// the threads.
#[derive(Debug)]
pub struct HashPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl HashPool {
    /// Starts `threads` workers (at least one).
    pub fn new(threads: usize) -> HashPool {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let workers = (0..threads)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("corvid-hash-{i}"))
                    .spawn(move || work(rx))
                    .unwrap_or_else(|e| panic!("cannot start hasher thread {i}: {e}"))
            })
            .collect();
        HashPool {
            jobs: Some(tx),
            workers,
        }
    }

    /// One worker per core the process may use.
    pub fn with_default_threads() -> HashPool {
        HashPool::new(default_threads())
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Jobs submitted and not yet taken by a worker (the hash queue depth metric).
    pub fn queued(&self) -> usize {
        self.jobs.as_ref().map_or(0, Sender::len)
    }

    /// Asynchronous verify, for the runtime's many pieces in flight: the verdict goes to
    /// `reply` when the piece has been hashed. The piece must be complete in `storage`
    /// (mapping contract, rule 2). If `reply`'s receiver is gone the verdict is dropped.
    pub fn submit(
        &self,
        storage: Arc<Storage>,
        piece: PieceIndex,
        expected: [u8; 20],
        reply: Sender<HashVerdict>,
    ) {
        self.send(Job::Verify {
            storage,
            piece,
            expected,
            submitted: Instant::now(),
            reply,
        });
    }

    /// Hashes every piece (for `corvid make`). `progress` gets the payload bytes hashed so
    /// far after each piece. Result in piece order.
    pub fn hash_all(&self, storage: &Arc<Storage>, progress: &mut dyn FnMut(u64)) -> Vec<[u8; 20]> {
        let mut out = vec![[0u8; 20]; storage.lengths().piece_count() as usize];
        self.walk(
            storage,
            storage.lengths().pieces(),
            progress,
            |piece, digest| {
                out[piece.as_usize()] = digest;
            },
        );
        out
    }

    /// Hashes the pieces whose slot in `out` (one per piece) is `None`, leaving the others
    /// as they are: a build whose caller already knows some pieces' hashes (the
    /// deployer's cache of an unchanged release) hashes only the rest. `progress` gets the
    /// bytes hashed here so far.
    pub fn hash_missing(
        &self,
        storage: &Arc<Storage>,
        out: &mut [Option<[u8; 20]>],
        progress: &mut dyn FnMut(u64),
    ) {
        let missing: Vec<PieceIndex> = storage
            .lengths()
            .pieces()
            .filter(|p| out.get(p.as_usize()).is_some_and(Option::is_none))
            .collect();
        self.walk(storage, missing.into_iter(), progress, |piece, digest| {
            out[piece.as_usize()] = Some(digest);
        });
    }

    /// Checks every piece against `expected` (for `verify` and seeder start). Result in
    /// piece order; a piece without an expected hash (a caller passing too few) is `false`.
    pub fn verify_all(
        &self,
        storage: &Arc<Storage>,
        expected: &[[u8; 20]],
        progress: &mut dyn FnMut(u64),
    ) -> Vec<bool> {
        let mut out = vec![false; storage.lengths().piece_count() as usize];
        self.walk(
            storage,
            storage.lengths().pieces(),
            progress,
            |piece, digest| {
                out[piece.as_usize()] = expected.get(piece.as_usize()) == Some(&digest);
            },
        );
        out
    }

    /// Checks only `pieces` against `expected` (a restart re-checks the pieces its resume
    /// record cannot vouch for). Result in piece order over the whole torrent; a piece not
    /// listed is `false`, like one without an expected hash.
    pub fn verify_pieces(
        &self,
        storage: &Arc<Storage>,
        expected: &[[u8; 20]],
        pieces: &[PieceIndex],
        progress: &mut dyn FnMut(u64),
    ) -> Vec<bool> {
        let count = storage.lengths().piece_count();
        let mut out = vec![false; count as usize];
        // An index of some other torrent is skipped, not hashed (its size is undefined here).
        let mine = pieces.iter().copied().filter(|p| p.get() < count);
        self.walk(storage, mine, progress, |piece, digest| {
            if let Some(slot) = out.get_mut(piece.as_usize()) {
                *slot = expected.get(piece.as_usize()) == Some(&digest);
            }
        });
        out
    }

    /// Hashes `pieces` with a bounded window in flight, calling `done` once per piece
    /// (in completion order) and `progress` with the running byte count.
    fn walk(
        &self,
        storage: &Arc<Storage>,
        mut pieces: impl Iterator<Item = PieceIndex>,
        progress: &mut dyn FnMut(u64),
        mut done: impl FnMut(PieceIndex, [u8; 20]),
    ) {
        let lengths = storage.lengths();
        let window = self.workers.len() * IN_FLIGHT_PER_THREAD;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut in_flight = 0usize;
        let mut hashed = 0u64;
        loop {
            while in_flight < window {
                let Some(piece) = pieces.next() else { break };
                self.send(Job::Hash {
                    storage: Arc::clone(storage),
                    piece,
                    reply: tx.clone(),
                });
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            // Every job replies, even one whose hashing panicked (workers catch it), and
            // workers outlive `self`, so a reply is always coming while jobs are in flight.
            let (piece, digest) = rx
                .recv()
                .unwrap_or_else(|_| panic!("hasher pool lost a job"));
            let digest = digest.unwrap_or_else(|| {
                panic!("hashing piece {} panicked in a hasher thread", piece.get())
            });
            in_flight -= 1;
            hashed += u64::from(lengths.piece_size(piece));
            done(piece, digest);
            progress(hashed);
        }
    }

    fn send(&self, job: Job) {
        // The receivers live in the workers, which run until `jobs` is dropped in `Drop`,
        // so sending cannot fail while `self` exists.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        // Closing the channel ends each worker's loop once the queue is drained.
        self.jobs = None;
        for w in self.workers.drain(..) {
            // A worker that panicked has already reported it; nothing to add while dropping.
            let _ = w.join();
        }
    }
}

/// Worker count when none is given: the cores this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn work(jobs: Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Verify {
                storage,
                piece,
                expected,
                submitted,
                reply,
            } => {
                let start = Instant::now();
                // A panic here is a bug; the piece counts as bad so its owner re-fetches it
                // rather than waiting forever for a verdict.
                let ok = hash_caught(&storage, piece) == Some(expected);
                let end = Instant::now();
                // The submitter may have gone away (torrent stopped); that is not an error.
                let _ = reply.send(HashVerdict {
                    piece,
                    ok,
                    elapsed: end - submitted,
                    hashing: end - start,
                });
            }
            Job::Hash {
                storage,
                piece,
                reply,
            } => {
                let _ = reply.send((piece, hash_caught(&storage, piece)));
            }
        }
    }
}

/// Hashes a piece, keeping the worker alive if that panics (the panic message has been
/// printed by the hook already).
fn hash_caught(storage: &Storage, piece: PieceIndex) -> Option<[u8; 20]> {
    std::panic::catch_unwind(AssertUnwindSafe(|| storage.hash_piece(piece))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Lengths, BLOCK_SIZE};
    use crate::storage::FileSpec;
    use sha1::{Digest, Sha1};
    use std::path::PathBuf;

    const PL: u64 = BLOCK_SIZE as u64;

    fn payload(n: u64) -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    }

    /// A writable storage over several files (one empty) holding `data`.
    fn storage_with(data: &[u8], piece_length: u64) -> (tempfile::TempDir, Arc<Storage>) {
        let total = data.len() as u64;
        let a = total / 3;
        let lens = [a, 0, total - a - 5.min(total - a), 5.min(total - a)];
        let files: Vec<FileSpec> = lens
            .iter()
            .enumerate()
            .map(|(i, &length)| FileSpec {
                path: PathBuf::from(format!("f{i}")),
                length,
                pad: false,
            })
            .collect();
        let l = Lengths::new(total, piece_length, total.div_ceil(piece_length)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::create(dir.path(), &files, l).unwrap();
        for p in l.pieces() {
            let start = l.piece_offset(p) as usize;
            let b = crate::geometry::BlockRef {
                piece: p,
                offset: 0,
                len: l.piece_size(p),
            };
            // SAFETY: single-threaded set-up; no hash job runs yet.
            unsafe { s.write_block(b, &data[start..start + b.len as usize]) }.unwrap();
        }
        (dir, Arc::new(s))
    }

    fn sequential(data: &[u8], piece_length: u64) -> Vec<[u8; 20]> {
        data.chunks(piece_length as usize)
            .map(|c| Sha1::digest(c).into())
            .collect()
    }

    #[test]
    fn hash_all_matches_sequential_sha1_for_any_thread_count() {
        let data = payload(37 * PL + 1234);
        let (_d, s) = storage_with(&data, PL);
        let want = sequential(&data, PL);
        assert_eq!(want.len(), 38);
        for threads in [1, 2, 3, 8] {
            let pool = HashPool::new(threads);
            let mut seen = Vec::new();
            let got = pool.hash_all(&s, &mut |b| seen.push(b));
            assert_eq!(got, want, "{threads} threads");
            assert_eq!(seen.len(), want.len());
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only grows");
            assert_eq!(seen.last().copied(), Some(data.len() as u64));
        }
    }

    #[test]
    fn verify_all_flags_exactly_the_corrupted_pieces() {
        let data = payload(20 * 2 * PL + 77);
        let (_d, s) = storage_with(&data, 2 * PL);
        let mut expected = sequential(&data, 2 * PL);
        let pool = HashPool::new(3);
        assert!(pool
            .verify_all(&s, &expected, &mut |_| {})
            .iter()
            .all(|&ok| ok));

        // corrupt two pieces on disk (one of them the short last piece) and one hash
        let l = s.lengths();
        for (index, at) in [(4u32, 100u32), (20, 3)] {
            let piece = l.piece(index).unwrap();
            let b = crate::geometry::BlockRef {
                piece,
                offset: at,
                len: 1,
            };
            let old = data[(l.piece_offset(piece) + u64::from(at)) as usize];
            // SAFETY: no hash job is running; this is the block's only writer.
            unsafe { s.write_block(b, &[old ^ 0xff]) }.unwrap();
        }
        expected[9][0] ^= 1;
        let got = pool.verify_all(&s, &expected, &mut |_| {});
        let bad: Vec<usize> = (0..got.len()).filter(|&i| !got[i]).collect();
        assert_eq!(bad, vec![4, 9, 20]);

        // too few expected hashes: the uncovered pieces fail instead of panicking
        let got = pool.verify_all(&s, &expected[..3], &mut |_| {});
        assert_eq!(got.len(), 21);
        assert!(got[..3].iter().all(|&ok| ok) && got[3..].iter().all(|&ok| !ok));
    }

    #[test]
    fn verify_pieces_hashes_only_the_listed_pieces() {
        let data = payload(10 * PL + 5);
        let (_d, s) = storage_with(&data, PL);
        let mut expected = sequential(&data, PL);
        expected[7][0] ^= 1;
        let l = s.lengths();
        let pool = HashPool::new(2);
        let listed: Vec<PieceIndex> = [1u32, 7, 10].iter().map(|&i| l.piece(i).unwrap()).collect();
        let mut bytes = 0;
        let got = pool.verify_pieces(&s, &expected, &listed, &mut |b| bytes = b);
        let good: Vec<usize> = (0..got.len()).filter(|&i| got[i]).collect();
        assert_eq!(
            good,
            vec![1, 10],
            "7 is listed but bad; the others are not listed"
        );
        assert_eq!(bytes, 2 * PL + 5, "only the listed pieces were hashed");
        // an index of a bigger torrent is skipped, not a panic
        let other = Lengths::new(100 * PL, PL, 100).unwrap();
        let got = pool.verify_pieces(&s, &expected, &[other.piece(50).unwrap()], &mut |_| {});
        assert!(got.iter().all(|&ok| !ok));
    }

    #[test]
    fn submit_returns_a_verdict_per_piece() {
        let data = payload(64 * PL);
        let (_d, s) = storage_with(&data, PL);
        let mut expected = sequential(&data, PL);
        for i in (0..64).step_by(7) {
            expected[i][19] ^= 0x80;
        }
        let pool = HashPool::new(2);
        let (tx, rx) = crossbeam_channel::unbounded();
        for p in s.lengths().pieces() {
            pool.submit(Arc::clone(&s), p, expected[p.as_usize()], tx.clone());
        }
        drop(tx);
        let mut verdicts: Vec<HashVerdict> = rx.iter().collect();
        assert_eq!(
            verdicts.len(),
            64,
            "every job replies, then the channel closes"
        );
        verdicts.sort_by_key(|v| v.piece);
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(v.piece.as_usize(), i);
            assert_eq!(v.ok, i % 7 != 0, "piece {i}");
            assert!(v.hashing <= v.elapsed);
        }
    }

    #[test]
    fn empty_payload_and_drop_with_queued_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lengths::new(0, PL, 0).unwrap();
        let s = Arc::new(Storage::create(dir.path(), &[], l).unwrap());
        let pool = HashPool::new(0);
        assert_eq!(pool.threads(), 1, "at least one worker");
        assert!(pool
            .hash_all(&s, &mut |_| panic!("no bytes to report"))
            .is_empty());
        assert!(pool.verify_all(&s, &[], &mut |_| {}).is_empty());

        // dropping the pool finishes queued jobs before joining
        let data = payload(16 * PL);
        let (_d, s) = storage_with(&data, PL);
        let (tx, rx) = crossbeam_channel::unbounded();
        for p in s.lengths().pieces() {
            pool.submit(Arc::clone(&s), p, [0; 20], tx.clone());
        }
        drop(tx);
        drop(pool);
        assert_eq!(rx.try_iter().count(), 16);
    }

    /// Throughput check, run by hand:
    /// `cargo test --release -p corvid-engine hash_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check; needs 256 MiB of temp space"]
    fn hash_throughput() {
        let data = payload(256 << 20);
        let (_d, s) = storage_with(&data, 256 << 10);
        for threads in [1, default_threads()] {
            let pool = HashPool::new(threads);
            let t = Instant::now();
            let got = pool.hash_all(&s, &mut |_| {});
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(got.len(), 1024);
            println!("{threads} threads: {:.0} MB/s", 256.0 * 1.048_576 / secs);
        }
    }
}
