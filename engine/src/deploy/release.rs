//! The on-host release layout and its atomic steps.
//!
//! A deploy of TAG into DEST downloads into `DEST/releases/TAG.partial/`, renames that to
//! `DEST/releases/TAG` once every piece is verified, and (with activation) points
//! `DEST/current` at it by renaming a freshly made symlink over the old one. Both steps
//! are single `rename(2)` calls on one filesystem, so an observer sees either the old
//! state or the new one: never a half-written `releases/TAG` or a missing `current`.

use std::io;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, FlockOperation, OFlags};
use rustix::io::Errno;

use crate::fsat::{Dir, DirError};
use crate::storage::FileSpec;

/// Why a release cannot be placed or activated; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("--dest {0:?} is not an absolute path")]
    DestNotAbsolute(PathBuf),
    #[error("tag {0:?} is not a plain name (no '/', no '..', not empty, at most 200 bytes of [A-Za-z0-9._+-])")]
    BadTag(String),
    #[error("{0:?} already exists with different content (use --force to replace it)")]
    ExistsDifferent(PathBuf),
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("release {tag:?} in {dest:?} is busy: another corvid peer ({holder}) holds {lock:?}; let it finish (or stop it) and run again")]
    Busy {
        tag: String,
        dest: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Seal(#[from] crate::reuse::SealError),
}

/// Checks a release tag: it becomes a directory name, so it must be one plain component.
pub fn validate_tag(tag: &str) -> Result<(), ReleaseError> {
    let ok = !tag.is_empty()
        && tag.len() <= 200
        && tag != "."
        && tag != ".."
        && !tag.ends_with(".partial")
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ReleaseError::BadTag(tag.to_string()))
    }
}

/// Checks `--dest`: absolute and free of `..`, so a deploy cannot wander.
pub fn validate_dest(dest: &Path) -> Result<(), ReleaseError> {
    let clean = dest.is_absolute() && !dest.components().any(|c| c == Component::ParentDir);
    if clean {
        Ok(())
    } else {
        Err(ReleaseError::DestNotAbsolute(dest.to_path_buf()))
    }
}

/// The paths of one release on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePaths {
    pub dest: PathBuf,
    pub tag: String,
}

impl ReleasePaths {
    pub fn new(dest: &Path, tag: &str) -> Result<Self, ReleaseError> {
        validate_dest(dest)?;
        validate_tag(tag)?;
        Ok(ReleasePaths {
            dest: dest.to_path_buf(),
            tag: tag.to_string(),
        })
    }

    pub fn releases(&self) -> PathBuf {
        self.dest.join("releases")
    }

    /// Where the download lands before it is verified.
    pub fn partial(&self) -> PathBuf {
        self.releases().join(format!("{}.partial", self.tag))
    }

    /// The finished, verified release.
    pub fn finished(&self) -> PathBuf {
        self.releases().join(&self.tag)
    }

    pub fn current(&self) -> PathBuf {
        self.dest.join("current")
    }

    /// Opens DEST (creating it; where it lives, links included, is the operator's
    /// choice) and, below it, `releases/` and `.corvid/` (creating them, refusing links):
    /// every later step works relative to these descriptors.
    pub fn prepare(&self) -> Result<OpenRelease, ReleaseError> {
        let dest = Dir::create_root(&self.dest)?;
        let releases = dest.make_dir("releases", 0o755)?;
        let state = dest.make_dir(STATE_DIR, 0o755)?;
        Ok(OpenRelease {
            paths: self.clone(),
            dest,
            releases,
            state,
        })
    }

    /// The release `current` points at, if it is a link into `releases/`.
    pub fn active_tag(dest: &Path) -> Option<String> {
        let target = std::fs::read_link(dest.join("current")).ok()?;
        let mut comps = target.components();
        match (comps.next(), comps.next(), comps.next()) {
            (Some(Component::Normal(r)), Some(Component::Normal(tag)), None) if r == "releases" => {
                tag.to_str().map(str::to_string)
            }
            _ => None,
        }
    }
}

/// `DEST/.corvid`: corvid's own files beside the releases (torrent, secret, resume
/// record, lock), never part of a release.
pub const STATE_DIR: &str = ".corvid";

/// One release's directories, open: DEST itself, and `releases/` and `.corvid/` below it
/// reached without following a link. Paths below these that corvid derives (the partial
/// and finished release, `current`, the files in `.corvid`) are only ever touched
/// through these descriptors, so a symlink planted at one is refused or replaced, never
/// followed (see [`crate::fsat`]).
#[derive(Debug)]
pub struct OpenRelease {
    pub paths: ReleasePaths,
    pub dest: Dir,
    pub releases: Dir,
    /// `DEST/.corvid`.
    pub state: Dir,
}

/// The exclusive hold of one release (`flock` on `DEST/.corvid/TAG.lock`); dropping it
/// (or the process ending, however it ends) lets the next run in.
#[derive(Debug)]
pub struct ReleaseLock {
    _file: std::fs::File,
}

impl OpenRelease {
    /// Takes the release for this process, or fails at once with
    /// [`ReleaseError::Busy`] when another process holds it: two runs on one DEST/TAG (a
    /// host listed under two names, a rerun while the last run's peers still run) would
    /// otherwise prune, write and rename the same partial directory under each other.
    /// The lock file stays (removing it would let a third run lock a different file);
    /// it holds the holder's PID, for the loser's message.
    pub fn lock(&self) -> Result<ReleaseLock, ReleaseError> {
        use std::io::{Read, Seek, Write};
        let name = format!("{}.lock", self.paths.tag);
        let path = self.state.path().join(&name);
        let io = |source: io::Error| ReleaseError::Io {
            path: path.clone(),
            source,
        };
        let mut file = self
            .state
            .open_file(&name, OFlags::RDWR | OFlags::CREATE, 0o644)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                file.set_len(0).map_err(io)?;
                file.seek(io::SeekFrom::Start(0)).map_err(io)?;
                writeln!(file, "{}", std::process::id()).map_err(io)?;
                Ok(ReleaseLock { _file: file })
            }
            Err(Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.take(32).read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("PID {pid}"),
                    Err(_) => "PID unknown".to_string(),
                };
                Err(ReleaseError::Busy {
                    tag: self.paths.tag.clone(),
                    dest: self.paths.dest.clone(),
                    lock: path.clone(),
                    holder,
                })
            }
            Err(e) => Err(io(e.into())),
        }
    }

    fn partial_name(&self) -> String {
        format!("{}.partial", self.paths.tag)
    }

    /// `releases/TAG.partial`, created if missing; a link there is an error.
    pub fn partial_dir(&self) -> Result<Dir, ReleaseError> {
        Ok(self.releases.make_dir(self.partial_name(), 0o755)?)
    }

    /// The payload's files at their paths below DEST (`releases/TAG.partial/...`), so
    /// storage reaches them from DEST through `releases` and `TAG.partial` without
    /// following a link on the way.
    pub fn partial_files(&self, files: &[FileSpec]) -> Vec<FileSpec> {
        let base = Path::new("releases").join(self.partial_name());
        files
            .iter()
            .map(|f| FileSpec {
                path: base.join(&f.path),
                length: f.length,
                pad: f.pad,
            })
            .collect()
    }

    /// What is at `releases/TAG` (not following a link): `None` when nothing is.
    pub fn finished_kind(&self) -> Result<Option<FileType>, ReleaseError> {
        Ok(self.releases.kind(&self.paths.tag)?)
    }

    /// Moves the verified partial directory into place with one rename. If the finished
    /// directory already exists the caller must have decided it holds the same content
    /// (verified) and passes `replace`; otherwise it is an error, never a silent overwrite.
    pub fn finish(&self, replace: bool) -> Result<(), ReleaseError> {
        let tag = self.paths.tag.as_str();
        let partial = self.partial_name();
        // Refuses a partial directory swapped for a link since the download began.
        self.releases
            .open_dir(&partial)?
            .ok_or_else(|| ReleaseError::Io {
                path: self.paths.partial(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
        if self.releases.kind(tag)?.is_some() {
            if !replace {
                return Err(ReleaseError::ExistsDifferent(self.paths.finished()));
            }
            // rename(2) cannot replace a non-empty directory: move the old one aside
            // first, then swap, then remove it. Between the two renames `releases/TAG`
            // is briefly absent, but never half-written. What was there may have been a
            // file or a link; either is removed itself, never followed.
            let aside = format!(".{tag}.old-{}", std::process::id());
            self.releases.remove(&aside)?;
            self.releases.rename(tag, &aside)?;
            self.releases.rename(&partial, tag)?;
            self.releases.remove(&aside)?;
        } else {
            self.releases.rename(&partial, tag)?;
        }
        Ok(self.releases.sync()?)
    }

    /// Points `current` at this release: a new symlink under a temporary name, renamed
    /// over `current` (rename replaces a symlink atomically). The link is relative, so
    /// the whole DEST can move.
    ///
    /// When `current` pointed at another release, that one's tag is kept in
    /// `.corvid/previous` first (what `corvid activate --previous` returns to, and what
    /// `--keep` never removes).
    pub fn activate(&self) -> Result<(), ReleaseError> {
        if let Some(was) = ReleasePaths::active_tag(&self.paths.dest) {
            if was != self.paths.tag {
                self.state.write_new(
                    super::ops::PREVIOUS_FILE,
                    format!("{was}\n").as_bytes(),
                    0o644,
                )?;
            }
        }
        let tmp = format!(".current.tmp-{}", std::process::id());
        self.dest.remove(&tmp)?;
        let target = Path::new("releases").join(&self.paths.tag);
        self.dest.symlink(&target, &tmp)?;
        self.dest.rename(&tmp, "current")?;
        Ok(self.dest.sync()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_plain_names() {
        for good in ["v1", "2026-11-25.1", "release_7+build.3"] {
            validate_tag(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "x.partial",
            "tag\0",
            &"x".repeat(201),
        ] {
            assert!(validate_tag(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn dest_must_be_absolute_and_clean() {
        validate_dest(Path::new("/srv/app")).unwrap();
        assert!(validate_dest(Path::new("srv/app")).is_err());
        assert!(validate_dest(Path::new("/srv/../etc")).is_err());
    }

    #[test]
    fn finish_and_activate_swap_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let v1p = ReleasePaths::new(dir.path(), "v1").unwrap();
        let v1 = v1p.prepare().unwrap();
        std::fs::create_dir(v1p.partial()).unwrap();
        std::fs::write(v1p.partial().join("f"), b"one").unwrap();
        v1.finish(false).unwrap();
        assert!(!v1p.partial().exists());
        v1.activate().unwrap();
        assert_eq!(ReleasePaths::active_tag(dir.path()).as_deref(), Some("v1"));
        assert_eq!(std::fs::read(dir.path().join("current/f")).unwrap(), b"one");

        let v2p = ReleasePaths::new(dir.path(), "v2").unwrap();
        let v2 = v2p.prepare().unwrap();
        std::fs::create_dir(v2p.partial()).unwrap();
        std::fs::write(v2p.partial().join("f"), b"two").unwrap();
        v2.finish(false).unwrap();
        v2.activate().unwrap();
        assert_eq!(std::fs::read(dir.path().join("current/f")).unwrap(), b"two");
        // The first release stays intact.
        assert_eq!(std::fs::read(v1p.finished().join("f")).unwrap(), b"one");
        // No temporary links are left behind.
        let stray: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".current"))
            .collect();
        assert!(stray.is_empty());
    }

    #[test]
    fn finish_refuses_to_overwrite_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let p = ReleasePaths::new(dir.path(), "v1").unwrap();
        let o = p.prepare().unwrap();
        std::fs::create_dir(p.finished()).unwrap();
        std::fs::write(p.finished().join("f"), b"old").unwrap();
        std::fs::create_dir(p.partial()).unwrap();
        std::fs::write(p.partial().join("f"), b"new").unwrap();
        assert!(matches!(
            o.finish(false),
            Err(ReleaseError::ExistsDifferent(_))
        ));
        assert_eq!(std::fs::read(p.finished().join("f")).unwrap(), b"old");
        o.finish(true).unwrap();
        assert_eq!(std::fs::read(p.finished().join("f")).unwrap(), b"new");

        // A stray file (or link) where the release belongs is replaced too.
        let q = ReleasePaths::new(dir.path(), "v2").unwrap();
        let qo = q.prepare().unwrap();
        std::fs::write(q.finished(), b"not a dir").unwrap();
        std::fs::create_dir(q.partial()).unwrap();
        qo.finish(true).unwrap();
        assert!(q.finished().is_dir());
        let stray: Vec<_> = std::fs::read_dir(p.releases())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(stray.is_empty());
    }

    #[test]
    fn planted_links_are_refused_or_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"mine").unwrap();
        let dest = dir.path().join("dest");
        let p = ReleasePaths::new(&dest, "v1").unwrap();
        let o = p.prepare().unwrap();

        // A link at the partial directory: refused, naming it.
        std::os::unix::fs::symlink(&outside, p.partial()).unwrap();
        let e = o.partial_dir().unwrap_err().to_string();
        assert!(
            e.contains("v1.partial") && e.contains("symbolic link"),
            "{e}"
        );
        assert!(o.finish(true).is_err());
        std::fs::remove_file(p.partial()).unwrap();

        // A link at releases/TAG and at current: replaced as links, targets untouched.
        std::os::unix::fs::symlink(&outside, p.finished()).unwrap();
        std::os::unix::fs::symlink(&outside, p.current()).unwrap();
        let partial = o.partial_dir().unwrap();
        partial.write_new("f", b"release", 0o644).unwrap();
        assert!(matches!(
            o.finish(false),
            Err(ReleaseError::ExistsDifferent(_))
        ));
        o.finish(true).unwrap();
        o.activate().unwrap();
        assert_eq!(std::fs::read(p.current().join("f")).unwrap(), b"release");
        assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);

        // `releases` and `.corvid` themselves as links: prepare refuses.
        for planted in ["releases", STATE_DIR] {
            let d = dir.path().join(format!("dest-{planted}"));
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::symlink(&outside, d.join(planted)).unwrap();
            let e = ReleasePaths::new(&d, "v1")
                .unwrap()
                .prepare()
                .unwrap_err()
                .to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
    }

    #[test]
    fn one_process_holds_a_release_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = ReleasePaths::new(dir.path(), "v1").unwrap();
        let a = p.prepare().unwrap();
        let b = p.prepare().unwrap();
        let held = a.lock().unwrap();
        // A second open file description (as another process has) is refused at once.
        match b.lock() {
            Err(ReleaseError::Busy { holder, lock, .. }) => {
                assert_eq!(holder, format!("PID {}", std::process::id()));
                assert!(lock.ends_with(".corvid/v1.lock"), "{lock:?}");
            }
            o => panic!("{o:?}"),
        }
        // Another tag is not held.
        let other = ReleasePaths::new(dir.path(), "v2")
            .unwrap()
            .prepare()
            .unwrap();
        let _v2 = other.lock().unwrap();
        drop(held);
        let _again = b.lock().unwrap();
    }
}
