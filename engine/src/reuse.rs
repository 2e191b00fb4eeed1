//! Base-release reuse: before a download asks the swarm for anything, fill every piece it
//! can from a release already on the host.
//!
//! Most deploys change a small part of the previous release. A peer given a base (the
//! release `current` points at, or one named with `--base`) copies into its fresh storage,
//! in this order:
//! 1. every file that has the same path and size in the base: whole, with a reflink
//!    (`FICLONE`, shared extents on btrfs/xfs) where the filesystem has them and a kernel
//!    copy (`copy_file_range`) otherwise; never a hard link, since a later edit in one
//!    release would change the other;
//! 2. then, for the pieces still missing, any piece whose hash matches a piece-aligned
//!    block of a base file not used in step 1 (a file that moved or changed size). With
//!    `make --align` (which deploy uses) every file starts a piece, so its unchanged
//!    blocks are the new torrent's pieces.
//!
//! Nothing copied is taken on faith: a piece is held only if it was copied whole from
//! base files that still match their release's seal ([`seal`]: size, inode, mtime and
//! ctime as they were right after that release verified), from where the base torrent
//! had a piece of the same hash and layout; every other piece reuse touched is hashed
//! against the torrent like a downloaded one, and only those that pass are held (so a
//! base file corrupted since its seal is fetched from the swarm, and the bytes copied
//! there are overwritten). The pieces held before the node starts are in its first
//! bitfield, so the seeder sends only what changed.
//!
//! Runs before the network starts, so it is the only writer of the storage (mapping
//! contract rule 1); it writes through file descriptors, whose page cache the shared
//! mappings see.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha1::{Digest, Sha1};

use crate::geometry::PieceIndex;
use crate::hash::HashPool;
use crate::storage::Storage;
use crate::wire::Bitfield;

pub mod seal;
pub use seal::{Seal, SealError, Sealed};

/// Where the base release is, and how the torrent's file paths map into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The base release's directory (its files directly inside, like a release).
    pub dir: PathBuf,
    /// The prefix to drop from a storage path to get its path inside `dir`
    /// (`releases/TAG.partial` for a release, the torrent name for a plain download).
    pub strip: PathBuf,
    /// The base's seal and torrent, when it has them: what may be reused unhashed.
    pub sealed: Option<Sealed>,
}

impl Base {
    /// The base file standing where storage path `path` will be, if `path` is under the
    /// prefix.
    fn file_for(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(&self.strip)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .map(|r| self.dir.join(r))
    }
}

/// What reuse did, for the peer's report (`resume.reuse` in `--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReuseReport {
    /// The base release's directory.
    pub base: String,
    /// Files found at the same path with the same size, copied whole (or in part, around
    /// pieces already held).
    pub same_files: u32,
    /// Of those, how many were reflinked rather than copied.
    pub reflinked_files: u32,
    /// Pieces found by hash in other base files (step 2).
    pub matched_pieces: u32,
    /// Pieces filled from the base that passed their hash or were trusted by its seal:
    /// held without downloading.
    pub reused_pieces: u32,
    /// Of those, the ones taken from sealed base files without hashing.
    pub trusted_pieces: u32,
    pub reused_bytes: u64,
    /// Pieces copied from the base that failed their hash (a base file changed or
    /// corrupted): they are downloaded.
    pub rejected_pieces: u32,
    /// Why part of the base could not be used (unreadable file), if anything.
    pub warning: Option<String>,
    /// How long the fill took (copies, reflinks and hashing), in milliseconds: a delta
    /// deploy's time per host is this plus the swarm, and the deployer reports both.
    pub fill_ms: u64,
}

/// Fills the pieces not in `have` from `base`, verifies every piece it wrote, and sets
/// those that pass in `have`. Failures to read the base are not errors (the swarm has the
/// data): they end reuse early and are named in the report's `warning`.
pub fn fill(
    storage: &Arc<Storage>,
    hashes: &[[u8; 20]],
    have: &mut Bitfield,
    base: &Base,
    pool: &HashPool,
) -> ReuseReport {
    let started = std::time::Instant::now();
    let mut report = ReuseReport {
        base: base.dir.display().to_string(),
        ..ReuseReport::default()
    };
    let mut used_sources: HashSet<(u64, u64)> = HashSet::new();
    let mut intact = HashSet::new();
    let written = match same_files(
        storage,
        have,
        base,
        &mut report,
        &mut used_sources,
        &mut intact,
    ) {
        Ok(w) => w,
        Err(e) => {
            report.warning = Some(e.to_string());
            Vec::new()
        }
    };
    let l = storage.lengths();
    let mut to_hash = Vec::new();
    for p in written {
        if trusted(storage, hashes, base, &intact, p) {
            have.set(p.get());
            report.trusted_pieces += 1;
            report.reused_pieces += 1;
            report.reused_bytes += u64::from(l.piece_size(p));
        } else {
            to_hash.push(p);
        }
    }
    verify_into(storage, hashes, have, &to_hash, pool, &mut report);
    if have.count() < storage.lengths().piece_count() {
        let mut matched = Vec::new();
        if let Err(e) = by_hash(storage, hashes, have, base, &used_sources, &mut matched) {
            report.warning.get_or_insert_with(|| e.to_string());
        }
        report.matched_pieces = matched.len() as u32;
        verify_into(storage, hashes, have, &matched, pool, &mut report);
    }
    report.fill_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

/// Hashes the pieces reuse wrote and marks those that pass.
fn verify_into(
    storage: &Arc<Storage>,
    hashes: &[[u8; 20]],
    have: &mut Bitfield,
    written: &[PieceIndex],
    pool: &HashPool,
    report: &mut ReuseReport,
) {
    if written.is_empty() {
        return;
    }
    let ok = pool.verify_pieces(storage, hashes, written, &mut |_| {});
    let l = storage.lengths();
    for &p in written {
        if ok[p.as_usize()] {
            have.set(p.get());
            report.reused_pieces += 1;
            report.reused_bytes += u64::from(l.piece_size(p));
        } else {
            report.rejected_pieces += 1;
        }
    }
}

/// Payload offset of each file's first byte.
fn starts(storage: &Storage) -> Vec<u64> {
    let mut at = 0u64;
    storage
        .files()
        .iter()
        .map(|f| {
            let s = at;
            at += f.length;
            s
        })
        .collect()
}

/// Opens storage file `index` for writing, refusing anything but the very file storage
/// mapped (a link or another file put in its place since).
fn open_target(storage: &Storage, index: usize) -> io::Result<File> {
    let path = storage.root().join(&storage.files()[index].path);
    let mapped = storage
        .file_metadata(index)
        .unwrap_or_else(|| Err(io::Error::other("not a file on disk")))?;
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let m = f.metadata()?;
    if (m.dev(), m.ino()) != (mapped.dev(), mapped.ino()) {
        return Err(io::Error::other(format!(
            "{} was replaced since it was opened",
            path.display()
        )));
    }
    Ok(f)
}

/// Opens a base file for reading: a regular file, not through a link at its own name.
fn open_source(path: &Path) -> Option<(File, std::fs::Metadata)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    m.is_file().then_some((f, m))
}

/// Step 1: files at the same path with the same size. Returns the pieces written; the
/// storage files copied from a base file that matches its seal go into `intact`.
fn same_files(
    storage: &Storage,
    have: &Bitfield,
    base: &Base,
    report: &mut ReuseReport,
    used: &mut HashSet<(u64, u64)>,
    intact: &mut HashSet<usize>,
) -> io::Result<Vec<PieceIndex>> {
    let l = storage.lengths();
    let pl = l.piece_length();
    let mut written = Vec::new();
    let mut marked = HashSet::new();
    let mut jobs = Vec::new();
    for (i, (spec, start)) in storage.files().iter().zip(starts(storage)).enumerate() {
        if spec.pad || spec.length == 0 {
            continue;
        }
        let Some(src_path) = base.file_for(&spec.path) else {
            continue;
        };
        let Some((src, meta)) = open_source(&src_path) else {
            continue;
        };
        if meta.len() != spec.length {
            continue;
        }
        let end = start + spec.length;
        let pieces: Vec<u32> = ((start / pl) as u32..=((end - 1) / pl) as u32).collect();
        let missing: Vec<u32> = pieces.iter().copied().filter(|&p| !have.get(p)).collect();
        if missing.is_empty() {
            continue;
        }
        let dst = open_target(storage, i)?;
        used.insert((meta.dev(), meta.ino()));
        let rel = spec.path.strip_prefix(&base.strip).unwrap_or(&spec.path);
        if base.sealed.as_ref().is_some_and(|s| s.intact(rel, &meta)) {
            intact.insert(i);
        }
        report.same_files += 1;
        let ranges = if missing.len() == pieces.len() {
            // Nothing of this file is held yet: take all of it.
            None
        } else {
            // Part of it is held already (a resumed download): only around the rest.
            Some(
                missing
                    .iter()
                    .map(|&p| {
                        let ps = u64::from(p) * pl;
                        let (lo, hi) = (ps.max(start), (ps + pl).min(end));
                        (lo - start, hi - lo)
                    })
                    .collect(),
            )
        };
        jobs.push(CopyJob {
            src,
            dst,
            len: spec.length,
            ranges,
        });
        if jobs.len() == COPY_BATCH {
            // Each job holds two descriptors: a release of thousands of files must not
            // hold them all open at once.
            report.reflinked_files += copy_all(&jobs)?;
            jobs.clear();
        }
        for p in missing {
            if marked.insert(p) {
                written.push(l.piece(p).expect("piece of a file in this torrent"));
            }
        }
    }
    report.reflinked_files += copy_all(&jobs)?;
    Ok(written)
}

/// One base file to copy into its storage file: whole (`ranges` `None`), or only the
/// `(offset, length)` ranges given.
struct CopyJob {
    src: File,
    dst: File,
    len: u64,
    ranges: Option<Vec<(u64, u64)>>,
}

/// How many copies run at once: a release of many small files is otherwise a long row of
/// short copies, each waiting on its own page-cache copy (or disk read, for a base no
/// longer cached) while other cores and the disk's queue sit idle.
const COPY_THREADS: usize = 4;

/// Files opened for copying before the copies run (two descriptors each).
const COPY_BATCH: usize = 64;

/// Runs the copies on up to [`COPY_THREADS`] threads (each job to one of them, whole);
/// the number of whole files that were reflinked, or the first error.
fn copy_all(jobs: &[CopyJob]) -> io::Result<u32> {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let reflinked = AtomicU32::new(0);
    let first_err: parking_lot::Mutex<Option<io::Error>> = parking_lot::Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, COPY_THREADS)
        .min(jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if first_err.lock().is_some() {
                    return;
                }
                let Some(j) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let r = match &j.ranges {
                    None if rustix::fs::ioctl_ficlone(&j.dst, &j.src).is_ok() => {
                        reflinked.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    None => copy_range(&j.src, &j.dst, 0, 0, j.len),
                    Some(rs) => rs
                        .iter()
                        .try_for_each(|&(at, n)| copy_range(&j.src, &j.dst, at, at, n)),
                };
                if let Err(e) = r {
                    first_err.lock().get_or_insert(e);
                }
            });
        }
    });
    match first_err.into_inner() {
        Some(e) => Err(e),
        None => Ok(reflinked.into_inner()),
    }
}

/// One stretch of a piece: the file inside the release (`None` for a pad file), the
/// offset in it, the length.
type Stretch<'a> = (Option<&'a Path>, u64, u64);

/// Piece `p` may be held without hashing: each of its bytes was copied from a base file
/// intact under its seal, and the base torrent had, at the same place in the same files
/// (pad files alike), a piece of the same length and hash.
fn trusted(
    storage: &Storage,
    hashes: &[[u8; 20]],
    base: &Base,
    intact: &HashSet<usize>,
    p: PieceIndex,
) -> bool {
    let Some(sealed) = &base.sealed else {
        return false;
    };
    let l = storage.lengths();
    if sealed.piece_length != l.piece_length() {
        return false;
    }
    let size = u64::from(l.piece_size(p));
    let mut ours: Vec<Stretch> = Vec::new();
    for span in storage.spans(p, 0, size as u32) {
        let spec = &storage.files()[span.file];
        if spec.pad {
            ours.push((None, 0, u64::from(span.len)));
        } else if !intact.contains(&span.file) {
            return false;
        } else {
            let rel = spec.path.strip_prefix(&base.strip).unwrap_or(&spec.path);
            ours.push((Some(rel), span.file_offset, u64::from(span.len)));
        }
    }
    // Where the piece's first byte was in the base torrent.
    let Some((Some(first), off, _)) = ours.first().copied() else {
        return false;
    };
    let mut at = 0u64;
    let Some(start) = sealed.files.iter().find_map(|f| {
        let s = at;
        at += f.length;
        (!f.pad && f.path == first).then_some(s + off)
    }) else {
        return false;
    };
    let pl = sealed.piece_length;
    let q = start / pl;
    let base_total: u64 = sealed.files.iter().map(|f| f.length).sum();
    let same_hash = start % pl == 0
        && sealed.pieces.get(q as usize) == hashes.get(p.as_usize())
        && (base_total - start).min(pl) == size;
    same_hash && base_stretches(&sealed.files, start, size) == ours
}

/// The stretches of `[start, start + len)` in a torrent's file list.
fn base_stretches(files: &[crate::storage::FileSpec], start: u64, len: u64) -> Vec<Stretch<'_>> {
    let (end, mut at, mut out) = (start + len, 0u64, Vec::new());
    for f in files {
        let (lo, hi) = (at.max(start), (at + f.length).min(end));
        if lo < hi {
            let path = (!f.pad).then_some(f.path.as_path());
            let off = if f.pad { 0 } else { lo - at };
            out.push((path, off, hi - lo));
        }
        at += f.length;
    }
    out
}

/// Copies `len` bytes in the kernel (which may share extents where it can).
fn copy_range(src: &File, dst: &File, from: u64, to: u64, len: u64) -> io::Result<()> {
    let (mut off_in, mut off_out, mut left) = (from, to, len);
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        let n = match rustix::fs::copy_file_range(
            src,
            Some(&mut off_in),
            dst,
            Some(&mut off_out),
            chunk,
        ) {
            Ok(n) => n,
            // Across filesystems on old kernels, or a filesystem without it: plain copy.
            Err(e) if e == rustix::io::Errno::XDEV || e == rustix::io::Errno::NOSYS => {
                return copy_plain(src, dst, off_in, off_out, left);
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "base file shrank while copying",
            ));
        }
        left -= n as u64;
    }
    Ok(())
}

fn copy_plain(src: &File, dst: &File, mut from: u64, mut to: u64, mut left: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], from)?;
        dst.write_all_at(&buf[..n], to)?;
        from += n as u64;
        to += n as u64;
        left -= n as u64;
    }
    Ok(())
}

/// Every regular file below `dir`, not following links.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path(), out),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
}

/// Step 2: the pieces still missing, found by hash among piece-aligned blocks of the base
/// files step 1 did not use. A block shorter than a piece (a file's tail) is tried as is
/// (the torrent's last piece) and padded with zeros (a tail followed by a pad file).
fn by_hash(
    storage: &Storage,
    hashes: &[[u8; 20]],
    have: &Bitfield,
    base: &Base,
    used: &HashSet<(u64, u64)>,
    out: &mut Vec<PieceIndex>,
) -> io::Result<()> {
    let l = storage.lengths();
    let pl = l.piece_length() as usize;
    let mut wanted: HashMap<[u8; 20], Vec<PieceIndex>> = HashMap::new();
    for p in l.pieces().filter(|p| !have.get(p.get())) {
        if let Some(h) = hashes.get(p.as_usize()) {
            wanted.entry(*h).or_default().push(p);
        }
    }
    let mut files = Vec::new();
    walk(&base.dir, &mut files);
    let mut targets: HashMap<usize, File> = HashMap::new();
    let mut buf = vec![0u8; pl];
    for path in files {
        if wanted.is_empty() {
            break;
        }
        let Some((src, meta)) = open_source(&path) else {
            continue;
        };
        if used.contains(&(meta.dev(), meta.ino())) {
            continue;
        }
        let mut off = 0u64;
        while off < meta.len() && !wanted.is_empty() {
            let n = (meta.len() - off).min(pl as u64) as usize;
            src.read_exact_at(&mut buf[..n], off)?;
            let mut found = None;
            let exact: [u8; 20] = Sha1::digest(&buf[..n]).into();
            if wanted.contains_key(&exact) {
                found = Some((exact, n));
            } else if n < pl {
                buf[n..].fill(0);
                let padded: [u8; 20] = Sha1::digest(&buf).into();
                if wanted.contains_key(&padded) {
                    found = Some((padded, pl));
                }
            }
            if let Some((h, len)) = found {
                let ps = wanted.remove(&h).unwrap_or_default();
                for p in ps {
                    if l.piece_size(p) as usize != len {
                        continue;
                    }
                    write_piece(storage, p, &buf[..len], &mut targets)?;
                    out.push(p);
                }
            }
            off += n as u64;
        }
    }
    Ok(())
}

/// Writes a whole piece's bytes into the files it spans (pad spans are zeros in memory
/// already and hold no disk file).
fn write_piece(
    storage: &Storage,
    p: PieceIndex,
    data: &[u8],
    targets: &mut HashMap<usize, File>,
) -> io::Result<()> {
    let mut at = 0usize;
    for span in storage.spans(p, 0, data.len() as u32) {
        let len = span.len as usize;
        if !storage.files()[span.file].pad {
            let f = match targets.entry(span.file) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(open_target(storage, span.file)?)
                }
            };
            f.write_all_at(&data[at..at + len], span.file_offset)?;
        }
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions};

    const PL: u64 = 16384;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn write(dir: &Path, rel: &str, data: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// Release 1 in `old/`, release 2 in `new/rel`: `same` unchanged, `edited` with one
    /// block changed in place, `moved` renamed, `grown` longer (its old blocks still
    /// match by hash), `fresh` new, and `bad` corrupted in the base after release 1.
    /// `dir` as a torrent of `PL`-byte pieces with every file aligned to a piece (BEP 47),
    /// as a delta release is made.
    fn aligned(dir: &Path, pool: &HashPool) -> crate::metainfo::Metainfo {
        let opts = BuildOptions {
            piece_length: Some(PL),
            align: true,
            ..Default::default()
        };
        build(dir, &opts, pool, &mut |_| {}).unwrap().0
    }

    /// Fresh storage for `m` under `dest`, holding nothing yet.
    fn empty_target(m: &crate::metainfo::Metainfo, dest: &Path) -> (Arc<Storage>, Bitfield) {
        let storage = Arc::new(Storage::create(dest, &m.info.files, m.info.lengths).unwrap());
        (storage, Bitfield::new(m.info.lengths.piece_count()))
    }

    fn releases(t: &Path) -> (PathBuf, PathBuf) {
        let old = t.join("old");
        let new = t.join("new/rel");
        let same = noise(3 * PL as usize + 100, 1);
        let mut edited = noise(4 * PL as usize, 2);
        let moved = noise(2 * PL as usize + 7, 3);
        let grown = noise(2 * PL as usize, 4);
        let bad = noise(2 * PL as usize, 5);
        write(&old, "a/same", &same);
        write(&old, "a/edited", &edited);
        write(&old, "old-name", &moved);
        write(&old, "grown", &grown);
        let mut corrupted = bad.clone();
        corrupted[PL as usize + 3] ^= 1;
        write(&old, "bad", &corrupted);
        write(&new, "a/same", &same);
        edited[PL as usize * 2 + 9] ^= 0xff;
        write(&new, "a/edited", &edited);
        write(&new, "b/new-name", &moved);
        let mut longer = grown.clone();
        longer.extend(noise(5000, 6));
        write(&new, "grown", &longer);
        write(&new, "fresh", &noise(PL as usize, 7));
        write(&new, "bad", &bad);
        (old, new)
    }

    #[test]
    fn fills_from_base_by_path_then_by_hash_and_verifies_everything() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = releases(t.path());
        let pool = HashPool::new(2);
        let m = aligned(&new, &pool);
        let dest = t.path().join("dest");
        let (storage, mut have) = empty_target(&m, &dest);
        let base = Base {
            dir: old.clone(),
            strip: PathBuf::from("rel"),
            sealed: None,
        };
        let r = fill(&storage, &m.info.pieces, &mut have, &base, &pool);
        // Same path and size: same, edited, bad (grown changed size).
        assert_eq!(r.same_files, 3, "{r:?}");
        // One edited block and one corrupted block fail their hash.
        assert_eq!(r.rejected_pieces, 2, "{r:?}");
        // By hash: moved (3 pieces) and grown's two old blocks.
        assert_eq!(r.matched_pieces, 5, "{r:?}");
        assert!(r.warning.is_none(), "{r:?}");
        // Every piece held verifies, and the missing ones are exactly the changes.
        let l = m.info.lengths;
        let mut missing = Vec::new();
        for p in l.pieces() {
            if have.get(p.get()) {
                assert_eq!(storage.hash_piece(p), m.info.pieces[p.as_usize()]);
            } else {
                missing.push(
                    m.info
                        .files_of_piece(p)
                        .iter()
                        .map(|&f| m.info.files[f].path.display().to_string())
                        .collect::<Vec<_>>()
                        .join("+"),
                );
            }
        }
        missing.sort();
        assert_eq!(
            missing,
            ["rel/a/edited", "rel/bad", "rel/fresh", "rel/grown"],
            "{r:?}"
        );
        assert_eq!(r.reused_pieces, have.count());
        let held: u64 = l
            .pieces()
            .filter(|p| have.get(p.get()))
            .map(|p| u64::from(l.piece_size(p)))
            .sum();
        assert_eq!(r.reused_bytes, held);
        // The base is untouched: no link between releases.
        let a = std::fs::metadata(old.join("a/same")).unwrap();
        let b = std::fs::metadata(dest.join("rel/a/same")).unwrap();
        assert_ne!((a.dev(), a.ino()), (b.dev(), b.ino()));
        assert_eq!(a.nlink(), 1);
    }

    /// More files than one batch of copies (each batch's copies run on several
    /// threads): every one is copied whole and verifies, the one edited is refetched.
    #[test]
    fn a_release_of_many_files_is_copied_in_batches_on_several_threads() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = (t.path().join("old"), t.path().join("new/rel"));
        let n = 2 * COPY_BATCH + 5;
        for i in 0..n {
            let data = noise(PL as usize / 3 + i * 97, 100 + i as u64);
            write(&old, &format!("d{}/f{i}", i % 7), &data);
            let mut changed = data.clone();
            if i == 77 {
                changed[10] ^= 0xff;
            }
            write(&new, &format!("d{}/f{i}", i % 7), &changed);
        }
        let pool = HashPool::new(2);
        let m = aligned(&new, &pool);
        let dest = t.path().join("dest");
        let (storage, mut have) = empty_target(&m, &dest);
        let base = Base {
            dir: old,
            strip: PathBuf::from("rel"),
            sealed: None,
        };
        let r = fill(&storage, &m.info.pieces, &mut have, &base, &pool);
        assert_eq!(r.same_files as usize, n, "{r:?}");
        assert_eq!(r.rejected_pieces, 1, "{r:?}");
        assert!(r.warning.is_none(), "{r:?}");
        assert_eq!(have.count(), m.info.lengths.piece_count() - 1);
        for i in (0..n).filter(|&i| i != 77) {
            let rel = format!("d{}/f{i}", i % 7);
            assert_eq!(
                std::fs::read(dest.join("rel").join(&rel)).unwrap(),
                std::fs::read(new.join(&rel)).unwrap(),
                "{rel}"
            );
        }
    }

    #[test]
    fn a_missing_base_reuses_nothing_and_pieces_already_held_are_not_touched() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = releases(t.path());
        let pool = HashPool::new(1);
        let m = aligned(&new, &pool);
        let dest = t.path().join("dest");
        let (storage, mut have) = empty_target(&m, &dest);
        let nowhere = Base {
            dir: t.path().join("no-such-release"),
            strip: PathBuf::from("rel"),
            sealed: None,
        };
        let r = fill(&storage, &m.info.pieces, &mut have, &nowhere, &pool);
        assert_eq!((r.reused_pieces, r.same_files, have.count()), (0, 0, 0));
        // Piece 0 (a/edited's first block) is held already with other bytes: reuse must
        // leave it alone even though the base has the file at the same path and size.
        have.set(0);
        let marker = vec![0xAAu8; 100];
        std::fs::OpenOptions::new()
            .write(true)
            .open(dest.join("rel/a/edited"))
            .unwrap()
            .write_all_at(&marker, 0)
            .unwrap();
        let base = Base {
            dir: old,
            strip: PathBuf::from("rel"),
            sealed: None,
        };
        let r = fill(&storage, &m.info.pieces, &mut have, &base, &pool);
        assert!(r.reused_pieces > 0);
        let now = std::fs::read(dest.join("rel/a/edited")).unwrap();
        assert_eq!(&now[..100], &marker[..]);
    }

    /// The base sealed right after it was "verified": its unchanged pieces are held
    /// without hashing (trusted), the changed ones are still caught by their hash; a
    /// base file written after its seal is hashed again, and its corrupted piece
    /// fetched, not copied.
    #[test]
    fn a_sealed_base_is_trusted_until_a_file_of_it_changes() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = releases(t.path());
        let pool = HashPool::new(2);
        let m_old = aligned(&old, &pool);
        let m = aligned(&new, &pool);
        let files = crate::deploy::content::release_files(&m_old.info);
        let seal = Seal::of_release(&old, &files, &m_old.info_hash_hex()).unwrap();
        let run = |dest: &str, seal: &Seal| {
            let (storage, mut have) = empty_target(&m, &t.path().join(dest));
            let base = Base {
                dir: old.clone(),
                strip: PathBuf::from("rel"),
                sealed: Sealed::new(&m_old, seal.clone()),
            };
            assert!(base.sealed.is_some());
            let r = fill(&storage, &m.info.pieces, &mut have, &base, &pool);
            for p in m.info.lengths.pieces().filter(|p| have.get(p.get())) {
                assert_eq!(storage.hash_piece(p), m.info.pieces[p.as_usize()], "{r:?}");
            }
            r
        };
        let r = run("dest1", &seal);
        // a/same (4 pieces), a/edited's 3 unchanged of 4, bad's good one of 2: trusted.
        assert_eq!(r.trusted_pieces, 8, "{r:?}");
        // The edited block and the block corrupted before the seal (so the base
        // torrent's hash is of the corrupted bytes) differ from the new torrent: hashed.
        assert_eq!(r.rejected_pieces, 2, "{r:?}");
        assert_eq!(r.matched_pieces, 5, "{r:?}");

        // Corrupt a/same in the base after its seal (size unchanged, mtime put back).
        let path = old.join("a/same");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", PL + 1).unwrap();
        f.set_modified(mtime).unwrap();
        let r = run("dest2", &seal);
        assert_eq!(r.trusted_pieces, 4, "a/same is no longer trusted: {r:?}");
        assert_eq!(r.rejected_pieces, 3, "its corrupted piece is caught: {r:?}");
        // Another torrent's seal is no seal.
        let other = Seal {
            info_hash: "0".repeat(40),
            ..seal
        };
        assert!(Sealed::new(&m_old, other).is_none());
    }
}
