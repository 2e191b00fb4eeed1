//! The on-host release layout and its atomic steps.
//!
//! A deploy of TAG into DEST downloads into `DEST/releases/TAG.partial/`, renames that to
//! `DEST/releases/TAG` once every piece is verified, and (with activation) points
//! `DEST/current` at it by renaming a freshly made symlink over the old one. Both steps
//! are single `rename(2)` calls on one filesystem, so an observer sees either the old
//! state or the new one: never a half-written `releases/TAG` or a missing `current`.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a release cannot be placed or activated; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("--dest {0:?} is not an absolute path")]
    DestNotAbsolute(PathBuf),
    #[error("tag {0:?} is not a plain name (no '/', no '..', not empty, at most 200 bytes of [A-Za-z0-9._+-])")]
    BadTag(String),
    #[error("{0:?} already exists with different content (use --force to replace it)")]
    ExistsDifferent(PathBuf),
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
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

    /// Creates `releases/` so the partial directory can be made inside it.
    pub fn prepare(&self) -> Result<(), ReleaseError> {
        let r = self.releases();
        std::fs::create_dir_all(&r).map_err(io_err(&r))
    }

    /// Moves the verified partial directory into place with one rename. If the finished
    /// directory already exists the caller must have decided it holds the same content
    /// (verified) and passes `replace`; otherwise it is an error, never a silent overwrite.
    pub fn finish(&self, replace: bool) -> Result<(), ReleaseError> {
        let partial = self.partial();
        let finished = self.finished();
        if finished.exists() {
            if !replace {
                return Err(ReleaseError::ExistsDifferent(finished));
            }
            // rename(2) cannot replace a non-empty directory: move the old one aside
            // first, then swap, then remove it. Between the two renames `releases/TAG`
            // is briefly absent, but never half-written.
            let aside = self
                .releases()
                .join(format!(".{}.old-{}", self.tag, std::process::id()));
            std::fs::rename(&finished, &aside).map_err(io_err(&finished))?;
            std::fs::rename(&partial, &finished).map_err(io_err(&partial))?;
            // What was there may have been a file or a symlink, not a directory.
            let old_is_dir = std::fs::symlink_metadata(&aside).is_ok_and(|m| m.is_dir());
            return if old_is_dir {
                std::fs::remove_dir_all(&aside)
            } else {
                std::fs::remove_file(&aside)
            }
            .map_err(io_err(&aside));
        }
        std::fs::rename(&partial, &finished).map_err(io_err(&partial))?;
        sync_dir(&self.releases())
    }

    /// Points `current` at this release: a new symlink under a temporary name, renamed
    /// over `current` (rename replaces a symlink atomically). The link is relative, so
    /// the whole DEST can move.
    pub fn activate(&self) -> Result<(), ReleaseError> {
        let tmp = self
            .dest
            .join(format!(".current.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let target = Path::new("releases").join(&self.tag);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
        let current = self.current();
        std::fs::rename(&tmp, &current).map_err(io_err(&current))?;
        sync_dir(&self.dest)
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

/// fsync of a directory makes a rename inside it durable across a crash.
fn sync_dir(dir: &Path) -> Result<(), ReleaseError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
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
        let v1 = ReleasePaths::new(dir.path(), "v1").unwrap();
        v1.prepare().unwrap();
        std::fs::create_dir(v1.partial()).unwrap();
        std::fs::write(v1.partial().join("f"), b"one").unwrap();
        v1.finish(false).unwrap();
        assert!(!v1.partial().exists());
        v1.activate().unwrap();
        assert_eq!(ReleasePaths::active_tag(dir.path()).as_deref(), Some("v1"));
        assert_eq!(std::fs::read(dir.path().join("current/f")).unwrap(), b"one");

        let v2 = ReleasePaths::new(dir.path(), "v2").unwrap();
        std::fs::create_dir(v2.partial()).unwrap();
        std::fs::write(v2.partial().join("f"), b"two").unwrap();
        v2.finish(false).unwrap();
        v2.activate().unwrap();
        assert_eq!(std::fs::read(dir.path().join("current/f")).unwrap(), b"two");
        // The first release stays intact.
        assert_eq!(std::fs::read(v1.finished().join("f")).unwrap(), b"one");
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
        p.prepare().unwrap();
        std::fs::create_dir(p.finished()).unwrap();
        std::fs::write(p.finished().join("f"), b"old").unwrap();
        std::fs::create_dir(p.partial()).unwrap();
        std::fs::write(p.partial().join("f"), b"new").unwrap();
        assert!(matches!(
            p.finish(false),
            Err(ReleaseError::ExistsDifferent(_))
        ));
        assert_eq!(std::fs::read(p.finished().join("f")).unwrap(), b"old");
        p.finish(true).unwrap();
        assert_eq!(std::fs::read(p.finished().join("f")).unwrap(), b"new");

        // A stray file (or link) where the release belongs is replaced too.
        let q = ReleasePaths::new(dir.path(), "v2").unwrap();
        std::fs::write(q.finished(), b"not a dir").unwrap();
        std::fs::create_dir(q.partial()).unwrap();
        q.finish(true).unwrap();
        assert!(q.finished().is_dir());
        let stray: Vec<_> = std::fs::read_dir(p.releases())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(stray.is_empty());
    }
}
