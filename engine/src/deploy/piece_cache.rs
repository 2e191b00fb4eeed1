//! The deployer's cache of piece hashes, so a release that barely changed is not hashed
//! again in full: a delta deploy of 1 GiB spent 1.6 s hashing here (on a 2-core machine,
//! beside the hosts' ssh checks) to send 11 MiB.
//!
//! Each piece is known by a key: the piece length, its index and size, and for every file
//! span it covers the file's path, the span's offset and length, and the file's size,
//! device, inode, mtime and ctime (a pad file's span by its place alone: zeros). Any write
//! to a file moves its mtime and ctime, and ctime cannot be set back from user space, so a
//! changed file changes the key of every piece it touches, and a file that moved in the
//! payload changes the spans. A piece whose key is in the cache takes its hash from there;
//! the rest are hashed. Files changed within the last [`SETTLE`] are hashed and not
//! stored: a write in the same clock tick as the metadata read would not show (git's
//! "racily clean" entries).
//!
//! The cache of a source directory is one file (`DIR/<SHA-1 of the canonical path>`),
//! rewritten after each build with that build's pieces only, so it never grows past one
//! release. A missing, unreadable or damaged file is an empty cache; a cache that cannot
//! be written is skipped (the next deploy hashes again). A wrong hash could only make the
//! torrent disagree with the files, which every host's verification catches; it can
//! never make a host accept bad data.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha1::{Digest, Sha1};

use crate::metainfo;
use crate::storage::Storage;

/// How long ago a file's last change must be for its pieces to be cached.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The cache file's first bytes (the format's version).
const MAGIC: &[u8] = b"corvid piece cache 1\n";
/// A key and its piece hash.
const RECORD: usize = 40;
/// Largest cache file read: 1.6 million pieces, far past any release corvid makes.
const MAX_FILE: u64 = 64 << 20;

/// The cache of one source directory.
#[derive(Debug, Clone)]
pub struct PieceCache {
    file: PathBuf,
}

/// Per piece, its key (`None`: not to be cached, a file changed too recently or its
/// metadata could not be read), from [`PieceCache::lookup`] for [`PieceCache::store`].
#[derive(Debug, Clone, Default)]
pub struct Keys(Vec<Option<[u8; 20]>>);

impl PieceCache {
    /// The cache of `src` kept in `dir`.
    pub fn for_source(dir: &Path, src: &Path) -> PieceCache {
        let canonical = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
        let name = metainfo::hex(&Sha1::digest(canonical.as_os_str().as_bytes()));
        PieceCache {
            file: dir.join(name),
        }
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Every piece's key for `storage` (a read-only storage of the payload being built),
    /// and the hashes the cache knows for them.
    pub fn lookup(&self, storage: &Storage) -> (Vec<Option<[u8; 20]>>, Keys) {
        let keys = keys(storage, SystemTime::now());
        let known = self.read();
        let hashes = keys
            .0
            .iter()
            .map(|k| k.and_then(|k| known.get(&k).copied()))
            .collect();
        (hashes, keys)
    }

    /// Replaces the cache with `hashes` (one per piece, as built) under `keys`.
    pub fn store(&self, keys: &Keys, hashes: &[[u8; 20]]) -> std::io::Result<()> {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut out = Vec::with_capacity(MAGIC.len() + RECORD * hashes.len());
        out.extend_from_slice(MAGIC);
        for (k, h) in keys.0.iter().zip(hashes) {
            if let Some(k) = k {
                out.extend_from_slice(k);
                out.extend_from_slice(h);
            }
        }
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&out)?;
        tmp.persist(&self.file).map_err(|e| e.error)?;
        Ok(())
    }

    /// The cache file's records; empty for anything that is not one.
    fn read(&self) -> HashMap<[u8; 20], [u8; 20]> {
        let mut map = HashMap::new();
        let Ok(m) = std::fs::metadata(&self.file) else {
            return map;
        };
        if m.len() > MAX_FILE {
            return map;
        }
        let Ok(bytes) = std::fs::read(&self.file) else {
            return map;
        };
        let Some(body) = bytes.strip_prefix(MAGIC) else {
            return map;
        };
        if body.len() % RECORD != 0 {
            return map;
        }
        for r in body.chunks_exact(RECORD) {
            let (k, h) = r.split_at(20);
            if let (Ok(k), Ok(h)) = (k.try_into(), h.try_into()) {
                map.insert(k, h);
            }
        }
        map
    }
}

/// Every piece's key, with the files' metadata read once each at `now`.
fn keys(storage: &Storage, now: SystemTime) -> Keys {
    let files = storage.files();
    // Per file: the metadata bytes that go into its pieces' keys, `None` when its pieces
    // are not to be cached; a pad file's are empty (zeros, on no disk).
    let ids: Vec<Option<Vec<u8>>> = (0..files.len())
        .map(|i| {
            if files[i].pad {
                return Some(Vec::new());
            }
            let m = storage.file_metadata(i)?.ok()?;
            let changed = SystemTime::UNIX_EPOCH
                + Duration::new(
                    u64::try_from(m.ctime()).ok()?,
                    u32::try_from(m.ctime_nsec()).ok()?,
                );
            if changed + SETTLE > now {
                return None;
            }
            let mut b = Vec::with_capacity(56);
            for v in [m.len(), m.dev(), m.ino()] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            for v in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            Some(b)
        })
        .collect();
    let lengths = storage.lengths();
    Keys(
        lengths
            .pieces()
            .map(|piece| {
                let size = lengths.piece_size(piece);
                let mut h = Sha1::new();
                h.update(MAGIC);
                h.update(lengths.piece_length().to_le_bytes());
                h.update(piece.get().to_le_bytes());
                h.update(size.to_le_bytes());
                for s in storage.spans(piece, 0, size) {
                    let id = ids.get(s.file)?.as_ref()?;
                    let path = files[s.file].path.as_os_str().as_bytes();
                    h.update((path.len() as u64).to_le_bytes());
                    h.update(path);
                    h.update([u8::from(files[s.file].pad)]);
                    h.update(s.file_offset.to_le_bytes());
                    h.update(s.len.to_le_bytes());
                    h.update(id);
                }
                Some(h.finalize().into())
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashPool;
    use crate::metainfo::{build_payload, build_payload_known, scan, BuildOptions};

    /// Builds `src` through `cache` as the deployer does: the torrent and the bytes
    /// hashed.
    fn build(cache: &PieceCache, src: &Path, align: bool) -> (Vec<u8>, u64) {
        let pool = HashPool::new(2);
        let payload = scan(src, None).unwrap();
        let opts = BuildOptions {
            piece_length: Some(16 * 1024),
            align,
            ..BuildOptions::default()
        };
        let mut keys = Keys::default();
        let mut hashed = 0;
        let (m, bytes) = build_payload_known(
            &payload,
            &opts,
            &pool,
            &mut |s| {
                let (known, k) = cache.lookup(s);
                keys = k;
                known
            },
            &mut |b| hashed = b,
        )
        .unwrap();
        cache.store(&keys, &m.info.pieces).unwrap();
        // Always what a full build gives.
        let (_, full) = build_payload(&payload, &opts, &pool, &mut |_| {}).unwrap();
        assert_eq!(bytes, full);
        (bytes, hashed)
    }

    fn write(p: &Path, len: usize, seed: u8) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let b: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        std::fs::write(p, b).unwrap();
    }

    /// Changed files are rehashed, unchanged ones not, and the torrent is always the one a
    /// full build makes. The ctime of a file just written is within [`SETTLE`], so the
    /// test waits it out once (the only way to age a ctime).
    #[test]
    fn only_pieces_of_changed_files_are_hashed_again() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        for i in 0..6u8 {
            write(&src.join(format!("d/f{i}")), 40_000 + 1000 * i as usize, i);
        }
        let cache = PieceCache::for_source(&d.path().join("cache"), &src);
        // Fresh files: everything hashed, and nothing stored while their ctimes settle.
        let (_, hashed) = build(&cache, &src, false);
        let total: u64 = (0..6).map(|i| 40_000 + 1000 * i).sum();
        assert_eq!(hashed, total);
        assert_eq!(
            std::fs::metadata(cache.path()).unwrap().len(),
            MAGIC.len() as u64
        );
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        let (_, hashed) = build(&cache, &src, false);
        assert_eq!(hashed, total, "stored now, not read before");
        // Nothing changed: nothing hashed.
        let (_, hashed) = build(&cache, &src, false);
        assert_eq!(hashed, 0);
        // Another layout (aligned: pad files, other spans) shares no other key; the cache then
        // holds that build's pieces only.
        let piece = 16 * 1024u64;
        let aligned: u64 = (0..5)
            .map(|i| (40_000 + 1000 * i as u64).div_ceil(piece) * piece)
            .sum::<u64>()
            + 45_000;
        let (_, hashed) = build(&cache, &src, true);
        // But for f0's two whole pieces, which start the payload in both layouts.
        assert_eq!(hashed, aligned - 2 * piece);
        let (_, hashed) = build(&cache, &src, false);
        assert_eq!(hashed, total - 2 * piece);

        // One file rewritten with the same size and its old mtime: its ctime moved, so
        // the pieces it touches (and only those) are hashed again.
        let f3 = src.join("d/f3");
        let old = std::fs::metadata(&f3).unwrap().modified().unwrap();
        write(&f3, 43_000, 99);
        std::fs::File::options()
            .write(true)
            .open(&f3)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (_, hashed) = build(&cache, &src, false);
        assert!(hashed > 0 && hashed <= 43_000 + 2 * 16 * 1024, "{hashed}");
        // A damaged cache file is an empty cache.
        std::fs::write(cache.path(), b"corvid piece cache 1\nshort").unwrap();
        let (_, hashed) = build(&cache, &src, false);
        assert_eq!(hashed, total);
    }
}
