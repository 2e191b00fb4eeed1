//! The seal of a verified release: what its files looked like on disk (size, device,
//! inode, mtime, ctime) right after every piece of them was verified and the release was
//! put in place, with the torrent it was verified against.
//!
//! Reuse trusts a base file whose metadata still matches its seal and copies its pieces
//! without hashing them again (the resume record trusts a partial download the same way):
//! rehashing the whole base on every deploy cost more than the download of what changed.
//! Any write to a file moves its mtime and ctime, and ctime cannot be set back from user
//! space, so a base file edited or corrupted since falls back to hashing and its bad
//! pieces are fetched from the swarm. A base without a seal (released by an older corvid,
//! or a directory given by path) is hashed as before.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metainfo::Metainfo;
use crate::storage::FileSpec;

/// One file as it was when sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFile {
    /// Inside the release directory.
    pub path: PathBuf,
    pub len: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl SealedFile {
    fn of(path: PathBuf, m: &std::fs::Metadata) -> SealedFile {
        SealedFile {
            path,
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

/// A release's seal (`DEST/.corvid/TAG.seal`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Hex info-hash of the torrent the release was verified against.
    pub info_hash: String,
    pub files: Vec<SealedFile>,
}

/// Why a seal could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot seal {0}: not a regular file of the torrent's size")]
    NotTheFile(PathBuf),
}

impl Seal {
    /// Seals the release in `dir` holding `files` (paths inside `dir`, pad files
    /// skipped), verified against the torrent with `info_hash`. Links are not followed.
    pub fn of_release(dir: &Path, files: &[FileSpec], info_hash: &str) -> Result<Seal, SealError> {
        let mut out = Vec::new();
        for f in files.iter().filter(|f| !f.pad) {
            let path = dir.join(&f.path);
            let m = std::fs::symlink_metadata(&path).map_err(|source| SealError::Io {
                path: path.clone(),
                source,
            })?;
            if !m.is_file() || m.len() != f.length {
                return Err(SealError::NotTheFile(path));
            }
            out.push(SealedFile::of(f.path.clone(), &m));
        }
        past_the_tick(&out);
        Ok(Seal {
            info_hash: info_hash.to_string(),
            files: out,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a seal has string keys and plain values")
    }

    /// `None` for anything that is not a seal (a damaged file is a seal not trusted).
    pub fn parse(bytes: &[u8]) -> Option<Seal> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Returns once the kernel's coarse clock, which stamps ctime, has moved past every
/// sealed file's ctime (at most a tick, 1-10 ms, and only when a file changed within the
/// current one, as the exec bits set just before a seal do). A write after the seal then
/// always shows as a later ctime; within the same tick it would not (git's "racily
/// clean" entries). Bounded: a clock that does not move (or is set back) gives up after
/// 100 ms, and the seal is as good as the timestamps are.
fn past_the_tick(files: &[SealedFile]) {
    let Some(last) = files.iter().map(|f| (f.ctime, f.ctime_nsec)).max() else {
        return;
    };
    for _ in 0..100 {
        if coarse_now() > last {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// `CLOCK_REALTIME_COARSE`: the clock file timestamps come from.
fn coarse_now() -> (libc::time_t, libc::c_long) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which is valid and ours; on
    // an error it writes nothing and `ts` stays zero (the caller then waits, bounded).
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (ts.tv_sec, ts.tv_nsec)
}

/// A base release whose seal and torrent were read: what reuse may trust without hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The base torrent's files, at their paths inside the release directory.
    pub files: Vec<FileSpec>,
    pub piece_length: u64,
    pub pieces: Vec<[u8; 20]>,
    by_path: HashMap<PathBuf, SealedFile>,
}

impl Sealed {
    /// The base's torrent and seal, if the seal is of that very torrent.
    pub fn new(m: &Metainfo, seal: Seal) -> Option<Sealed> {
        if seal.info_hash != m.info_hash_hex() {
            return None;
        }
        Some(Sealed {
            files: crate::deploy::content::release_files(&m.info),
            piece_length: m.info.lengths.piece_length(),
            pieces: m.info.pieces.clone(),
            by_path: seal
                .files
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect(),
        })
    }

    /// Reads `DEST/.corvid/TAG.torrent` and `DEST/.corvid/TAG.seal` of the base release
    /// `tag`; `None` when either is missing or they do not belong together.
    pub fn load(state_dir: &Path, tag: &str) -> Option<Sealed> {
        let torrent = std::fs::read(state_dir.join(format!("{tag}.torrent"))).ok()?;
        let m = Metainfo::from_bytes(&torrent).ok()?;
        let seal = Seal::parse(&std::fs::read(state_dir.join(format!("{tag}.seal"))).ok()?)?;
        Sealed::new(&m, seal)
    }

    /// The base file at `rel` (inside the release) still looks as it did when sealed.
    pub fn intact(&self, rel: &Path, m: &std::fs::Metadata) -> bool {
        self.by_path
            .get(rel)
            .is_some_and(|s| *s == SealedFile::of(rel.to_path_buf(), m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_write_or_a_reset_mtime_breaks_the_seal() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), b"hello").unwrap();
        let files = [FileSpec {
            path: "a/f".into(),
            length: 5,
            pad: false,
        }];
        let seal = Seal::of_release(d.path(), &files, "ab").unwrap();
        let back = Seal::parse(&seal.to_json()).unwrap();
        assert_eq!(back, seal);
        let sealed = Sealed {
            files: files.to_vec(),
            piece_length: 16384,
            pieces: Vec::new(),
            by_path: back
                .files
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect(),
        };
        let path = d.path().join("a/f");
        let meta = || std::fs::metadata(&path).unwrap();
        assert!(sealed.intact(Path::new("a/f"), &meta()));
        assert!(!sealed.intact(Path::new("b/f"), &meta()));
        // Same size, other bytes, mtime set back: the ctime still moved.
        // At once: the seal waited for the tick of the file's last change to pass.
        let mtime = meta().modified().unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"J").unwrap();
        f.set_modified(mtime).unwrap();
        assert_eq!(meta().modified().unwrap(), mtime);
        assert!(!sealed.intact(Path::new("a/f"), &meta()));
        // Not the torrent's size: no seal at all.
        let wrong = [FileSpec {
            length: 6,
            ..files[0].clone()
        }];
        assert!(matches!(
            Seal::of_release(d.path(), &wrong, "ab"),
            Err(SealError::NotTheFile(_))
        ));
        assert!(Seal::parse(b"{not json").is_none());
    }
}
