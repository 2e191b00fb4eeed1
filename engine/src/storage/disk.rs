//! The file system side of [`Storage`]: checking a torrent's layout and paths, pad
//! stand-ins, free space, preallocation and hole checks, and the error helpers they share.
//!
//! Separate from the parent, which maps files and moves bytes between them and pieces:
//! these are the one-time checks and syscalls made while opening or creating the files.

use super::*;

/// The stand-in for a pad file: anonymous private memory, zeros until written. A peer
/// receives a piece's pad bytes into it like any others (so a piece whose sender put
/// anything but zeros there fails its hash and is fetched again), and a seeder sends
/// zeros from it; untouched pages are the kernel's shared zero page, so an idle pad
/// costs no memory.
pub(super) fn pad_map(spec: &FileSpec, root: &Path) -> Result<Option<MmapRaw>, StorageError> {
    if spec.length == 0 {
        return Ok(None);
    }
    let path = root.join(&spec.path);
    let len = map_len(spec.length, &path)?;
    let map = MmapOptions::new()
        .len(len)
        .map_anon()
        .map_err(|e| io_err("map zeros for pad file", &path, e))?;
    Ok(Some(MmapRaw::from(map)))
}

/// Checks that the files tile the payload and that their paths stay under the root;
/// returns the files' end offsets.
pub(super) fn check_layout(files: &[FileSpec], lengths: Lengths) -> Result<Vec<u64>, StorageError> {
    // The same file twice would be mapped twice, and sizing the second could shrink the
    // first one's mapping under it (SIGBUS, mapping contract rule 3).
    // Pads are never opened, so several may share a path (`.pad/N` names their length).
    let mut seen = std::collections::HashSet::with_capacity(files.len());
    for spec in files.iter().filter(|f| !f.pad) {
        if !seen.insert(spec.path.as_path()) {
            return Err(StorageError::DuplicatePath {
                path: spec.path.clone(),
            });
        }
    }
    let mut ends = Vec::with_capacity(files.len());
    let mut total = 0u64;
    for spec in files {
        let plain = !spec.path.as_os_str().is_empty()
            && !spec.path.as_os_str().as_bytes().contains(&0)
            && spec
                .path
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(StorageError::UnsafePath {
                path: spec.path.clone(),
            });
        }
        total = total
            .checked_add(spec.length)
            .ok_or(StorageError::LengthMismatch {
                files: u64::MAX,
                pieces: lengths.total_length(),
            })?;
        ends.push(total);
    }
    if total != lengths.total_length() {
        return Err(StorageError::LengthMismatch {
            files: total,
            pieces: lengths.total_length(),
        });
    }
    Ok(ends)
}

/// Fails with [`StorageError::Symlink`] if any existing component of `rel` under `root` is
/// a symbolic link. The root itself is the operator's choice and may be one; what lies
/// below it may have been planted by someone else (a shared `/srv`, a previous release),
/// and following it would write the payload over a file outside the destination.
pub(super) fn check_no_symlinks(root: &Path, rel: &Path) -> Result<(), StorageError> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(StorageError::Symlink { path: p }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("inspect", &p, e)),
        }
    }
    Ok(())
}

/// A descriptor-relative failure as the storage error naming the same path.
pub(super) fn dir_err(e: DirError) -> StorageError {
    match e {
        DirError::Symlink { path } => StorageError::Symlink { path },
        DirError::NotRelative { path } => StorageError::UnsafePath { path },
        DirError::NotADir { path } => io_err(
            "create directory",
            &path,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        ),
        DirError::Io {
            action,
            path,
            source,
        } => io_err(action, &path, source),
    }
}

pub(super) fn io_err(action: &'static str, path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn map_len(length: u64, path: &Path) -> Result<usize, StorageError> {
    usize::try_from(length).map_err(|_| StorageError::TooLarge {
        path: path.to_path_buf(),
        length,
    })
}

/// The root itself if it exists, else its nearest existing ancestor: where the files will
/// land, for the free-space check before anything is created.
pub(super) fn existing_ancestor(root: &Path) -> PathBuf {
    let mut p = root;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("."),
        }
    }
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
pub(super) fn free_space(path: &Path) -> Result<u64, StorageError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        StorageError::UnsafePath {
            path: path.to_path_buf(),
        }
    })?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` is a valid,
    // writable `statvfs` the kernel fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io_err(
            "check free space on",
            path,
            io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Allocates disk blocks for every byte of the file before it is mapped.
///
/// Why: downloads are written through a shared mapping, and a store into a page whose
/// file range has no block behind it makes the kernel allocate one at fault time. When
/// the filesystem is full by then (another program filled it mid-download), that fault
/// cannot be answered with an error code: the kernel sends SIGBUS to whichever thread
/// touched the page, killing corvid. With the blocks reserved up front, a full disk is a
/// [`StorageError::NoSpace`] here, before any byte is fetched, and space vanishing later
/// cannot touch blocks that are already the file's: faults find them allocated.
/// - ext4/xfs: `fallocate(mode 0)` makes unwritten extents; the first store only marks
///   them written (ext4 keeps a reserve of metadata blocks for that conversion).
/// - tmpfs: `shmem_fallocate` allocates and charges the pages themselves (checked on the
///   dev machine: a 1 MiB file shows 2048 blocks after it, before any write), so a page
///   fault finds the page in the page cache and needs no new memory from the mount.
///
/// Filesystems without `fallocate` (EOPNOTSUPP) fall back to glibc's `posix_fallocate`,
/// which writes a zero byte into every block (every `min(f_bsize, 4096)` bytes, skipping
/// blocks that already hold a non-zero byte, which cannot be holes). That leaves no hole
/// on a filesystem that allocates on write, but it is emulation (musl does not emulate;
/// racing writers could interfere), so its result is checked with `SEEK_HOLE`: a hole
/// left behind is an error rather than a SIGBUS waiting to happen. (The check is only
/// meaningful on that path: after a real `fallocate`, ext4 reports unwritten extents as
/// holes.)
pub(super) fn preallocate(file: &File, length: u64, path: &Path) -> Result<(), StorageError> {
    let len = i64::try_from(length).map_err(|_| StorageError::TooLarge {
        path: path.to_path_buf(),
        length,
    })?;
    loop {
        // SAFETY: the fd belongs to `file`, which is open for writing and outlives the
        // call; fallocate touches no memory of ours.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSPC) => {
                let free = free_space(path).unwrap_or(0);
                return Err(StorageError::NoSpace {
                    needed: length,
                    free,
                    path: path.to_path_buf(),
                });
            }
            Some(libc::EOPNOTSUPP) => {
                // SAFETY: as above; posix_fallocate returns the error instead of errno.
                let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
                return match rc {
                    0 => check_no_holes(file, length, path),
                    libc::ENOSPC => Err(StorageError::NoSpace {
                        needed: length,
                        free: free_space(path).unwrap_or(0),
                        path: path.to_path_buf(),
                    }),
                    e => Err(io_err("preallocate", path, io::Error::from_raw_os_error(e))),
                };
            }
            _ => return Err(io_err("preallocate", path, err)),
        }
    }
}

/// Fails if the file has a hole before `length` (see [`preallocate`]): mapping it would
/// risk SIGBUS on a full disk. A filesystem without `SEEK_HOLE` answers "no hole until
/// the end" (the whole file is data), which passes.
pub(super) fn check_no_holes(file: &File, length: u64, path: &Path) -> Result<(), StorageError> {
    // SAFETY: lseek on a descriptor `file` owns; it reads and writes no memory of ours.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    if hole < 0 {
        let err = io::Error::last_os_error();
        // EINVAL/ENXIO: the filesystem does not do SEEK_HOLE; nothing to learn here.
        return match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENXIO) => Ok(()),
            _ => Err(io_err("check the preallocation of", path, err)),
        };
    }
    let hole = hole as u64;
    if hole < length {
        return Err(io_err(
            "preallocate",
            path,
            io::Error::other(format!(
                "the filesystem has no fallocate and the emulation left a hole at byte {hole} \
                 of {length}; writing through a mapping there could crash on a full disk"
            )),
        ));
    }
    Ok(())
}
