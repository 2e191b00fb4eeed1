//! File operations relative to directory descriptors that never follow a symbolic link.
//!
//! corvid derives paths below a directory the operator named: `DEST/releases/TAG.partial`,
//! `DEST/.corvid/TAG.secret`, a payload's `a/b/c` under its root. Anyone else who can
//! write there could plant a symlink at such a path and have corvid delete, write or
//! chmod whatever it points at. So the root is opened once (following links: where it
//! lives is the operator's choice), and everything below it is reached with
//! `openat(O_NOFOLLOW|O_DIRECTORY)` and the other `*at` calls relative to a descriptor:
//! a link anywhere below the root is refused with [`DirError::Symlink`], and a directory
//! swapped for a link after it was opened changes nothing, since its descriptor still
//! names the real one.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a directory entry is (re-exported so callers need not name `rustix`).
pub use rustix::fs::FileType;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Why a path below a root could not be reached or changed; each names the full path.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path:?} is a symbolic link; corvid makes this path itself and does not follow a link planted there")]
    Symlink { path: PathBuf },
    #[error("{path:?} exists and is not a directory")]
    NotADir { path: PathBuf },
    #[error("{path:?} is not a plain relative path")]
    NotRelative { path: PathBuf },
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DirError {
    fn io(action: &'static str, path: PathBuf, e: Errno) -> DirError {
        DirError::Io {
            action,
            path,
            source: e.into(),
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// An open directory and the path it was reached by (for messages only: every
/// operation goes through the descriptor).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One path component as `openat` wants it: a plain name, never `..` or a path.
fn one_name(name: &OsStr) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.as_bytes().contains(&b'/')
}

impl Dir {
    /// Opens a root the operator named, following links.
    pub fn open(path: &Path) -> Result<Dir, DirError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DirError::io("open directory", path.to_path_buf(), e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// [`Dir::open`] after creating the root and its parents (the operator's path).
    pub fn create_root(path: &Path) -> Result<Dir, DirError> {
        std::fs::create_dir_all(path).map_err(|source| DirError::Io {
            action: "create directory",
            path: path.to_path_buf(),
            source,
        })?;
        Dir::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn child(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    fn check_name(&self, name: &OsStr) -> Result<(), DirError> {
        if one_name(name) {
            Ok(())
        } else {
            Err(DirError::NotRelative {
                path: self.child(name),
            })
        }
    }

    /// What `name` is, without following a link; `None` when nothing is there.
    pub fn kind(&self, name: impl AsRef<OsStr>) -> Result<Option<FileType>, DirError> {
        let name = name.as_ref();
        self.check_name(name)?;
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(DirError::io("inspect", self.child(name), e)),
        }
    }

    /// Opens the subdirectory `name`; `None` when nothing is there, an error when a link
    /// or something else than a directory is.
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> Result<Option<Dir>, DirError> {
        let name = name.as_ref();
        self.check_name(name)?;
        match rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: self.child(name),
            })),
            Err(Errno::NOENT) => Ok(None),
            // O_NOFOLLOW|O_DIRECTORY on a link fails with ELOOP or ENOTDIR depending on
            // the kernel; look at what is there to say which.
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => match self.kind(name)? {
                Some(FileType::Symlink) => Err(DirError::Symlink {
                    path: self.child(name),
                }),
                Some(FileType::Directory) | None => {
                    Err(DirError::io("open directory", self.child(name), e))
                }
                Some(_) => Err(DirError::NotADir {
                    path: self.child(name),
                }),
            },
            Err(e) => Err(DirError::io("open directory", self.child(name), e)),
        }
    }

    /// Opens the subdirectory `name`, creating it (with `mode`, less the umask) if
    /// nothing is there.
    pub fn make_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<Dir, DirError> {
        let name = name.as_ref();
        self.check_name(name)?;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(DirError::io("create directory", self.child(name), e)),
        }
        self.open_dir(name)?.ok_or_else(|| {
            // Removed between the mkdir and the open: someone else is at work here.
            DirError::io("open directory", self.child(name), Errno::NOENT)
        })
    }

    /// Opens the directory `rel` below this one component by component (creating the
    /// missing ones when `create`); `None` when one is missing and `create` is off.
    pub fn walk(&self, rel: &Path, create: bool) -> Result<Option<Dir>, DirError> {
        let mut cur: Option<Dir> = None;
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(DirError::NotRelative {
                    path: self.path.join(rel),
                });
            };
            let here = cur.as_ref().unwrap_or(self);
            let next = if create {
                here.make_dir(name, 0o755)?
            } else {
                match here.open_dir(name)? {
                    Some(d) => d,
                    None => return Ok(None),
                }
            };
            cur = Some(next);
        }
        match cur {
            Some(d) => Ok(Some(d)),
            None => self.try_clone().map(Some),
        }
    }

    /// A second descriptor for the same directory.
    pub fn try_clone(&self) -> Result<Dir, DirError> {
        let fd = self.fd.try_clone().map_err(|source| DirError::Io {
            action: "duplicate the descriptor of",
            path: self.path.clone(),
            source,
        })?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// Opens the file `name` with `flags` (plus `O_NOFOLLOW|O_CLOEXEC`): a link there is
    /// refused, never opened through.
    pub fn open_file(
        &self,
        name: impl AsRef<OsStr>,
        flags: OFlags,
        mode: u32,
    ) -> Result<std::fs::File, DirError> {
        let name = name.as_ref();
        self.check_name(name)?;
        match rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => Ok(std::fs::File::from(fd)),
            Err(Errno::LOOP) => Err(DirError::Symlink {
                path: self.child(name),
            }),
            Err(e) => Err(DirError::io("open", self.child(name), e)),
        }
    }

    /// Replaces `name` with a new file holding `bytes`, made `mode` from the start: a
    /// fresh temporary file (`O_CREAT|O_EXCL`, so nothing planted is reused), written,
    /// synced and renamed over `name` (a rename replaces a link, never writes through it).
    pub fn write_new(
        &self,
        name: impl AsRef<OsStr>,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), DirError> {
        use std::io::Write;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = name.as_ref();
        self.check_name(name)?;
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a crashed run (or something planted) under that name goes first:
        // unlinkat removes a link itself, not what it points at.
        let _ = rustix::fs::unlinkat(&self.fd, tmp.as_os_str(), AtFlags::empty());
        let mut f = self.open_file(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode)?;
        let written = f
            .write_all(bytes)
            .and_then(|()| {
                // The mode asked for, whatever the umask took away.
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(Into::into)
            })
            .and_then(|()| f.sync_all())
            .map_err(|source| DirError::Io {
                action: "write",
                path: self.child(&tmp),
                source,
            })
            .and_then(|()| self.rename(&tmp, name));
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_os_str(), AtFlags::empty());
        }
        written?;
        self.sync()
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<(), DirError> {
        let (from, to) = (from.as_ref(), to.as_ref());
        self.check_name(from)?;
        self.check_name(to)?;
        rustix::fs::renameat(&self.fd, from, &self.fd, to)
            .map_err(|e| DirError::io("rename", self.child(from), e))
    }

    /// Makes the symlink `name` pointing at `target` (fails if anything is there).
    pub fn symlink(&self, target: &Path, name: impl AsRef<OsStr>) -> Result<(), DirError> {
        let name = name.as_ref();
        self.check_name(name)?;
        rustix::fs::symlinkat(target, &self.fd, name)
            .map_err(|e| DirError::io("create symlink", self.child(name), e))
    }

    /// Removes `name`: a file or link itself, a directory with everything in it. Links
    /// inside are removed, never followed. Nothing there is fine.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> Result<(), DirError> {
        let name = name.as_ref();
        match self.kind(name)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                if let Some(d) = self.open_dir(name)? {
                    for (entry, _) in d.entries()? {
                        d.remove(&entry)?;
                    }
                }
                rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
                    .map_err(|e| DirError::io("remove directory", self.child(name), e))
            }
            Some(_) => rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
                .map_err(|e| DirError::io("remove", self.child(name), e)),
        }
    }

    /// The entries of this directory (not `.` and `..`) and what each is.
    pub fn entries(&self) -> Result<Vec<(OsString, FileType)>, DirError> {
        let err = |e| DirError::io("list", self.path.clone(), e);
        let mut out = Vec::new();
        let mut d = rustix::fs::Dir::read_from(&self.fd).map_err(err)?;
        while let Some(entry) = d.read() {
            let entry = entry.map_err(err)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Unknown => match self.kind(&name)? {
                    Some(k) => k,
                    None => continue,
                },
                k => k,
            };
            out.push((name, kind));
        }
        Ok(out)
    }

    /// fsync of the directory: makes a rename or creation inside it durable.
    pub fn sync(&self) -> Result<(), DirError> {
        rustix::fs::fsync(&self.fd).map_err(|e| DirError::io("sync", self.path.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_below_the_root_are_refused_and_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"precious").unwrap();
        let root = Dir::create_root(&t.path().join("root")).unwrap();
        std::os::unix::fs::symlink(&outside, root.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), root.path().join("file")).unwrap();

        for r in [
            root.open_dir("sub").map(|_| ()),
            root.make_dir("sub", 0o755).map(|_| ()),
            root.walk(Path::new("sub/deeper"), true).map(|_| ()),
            root.open_file("file", OFlags::WRONLY, 0).map(|_| ()),
        ] {
            assert!(matches!(r, Err(DirError::Symlink { .. })), "{r:?}");
        }
        assert!(matches!(
            root.walk(Path::new("../x"), true),
            Err(DirError::NotRelative { .. })
        ));
        // write_new replaces the link itself; remove takes the link, not its target.
        root.write_new("file", b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(root.path().join("file")).unwrap(), b"new");
        let mode = std::fs::symlink_metadata(root.path().join("file"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        root.remove("sub").unwrap();
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"precious");

        // A tree with a link inside goes; what the link pointed at stays.
        let d = root.walk(Path::new("a/b"), true).unwrap().unwrap();
        d.write_new("f", b"x", 0o644).unwrap();
        d.symlink(&outside, "l").unwrap();
        root.remove("a").unwrap();
        assert_eq!(root.kind("a").unwrap(), None);
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"precious");
        // Only `file` is left, and no temporary file.
        let names: Vec<_> = root.entries().unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["file"]);
    }
}
