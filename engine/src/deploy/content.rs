//! A release's content on a host: where a torrent's files land inside
//! `releases/TAG(.partial)`, the BEP 47 attributes applied after verification (exec bits,
//! symlinks), and the check that an existing `releases/TAG` already holds this release.
//!
//! The release directory holds the CONTENT of the deployed directory (its files directly
//! inside), so the torrent's top-level name is dropped from every path. A single-file
//! torrent keeps its name: `releases/TAG/NAME`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};

use crate::fsat::{Dir, DirError};

use crate::hash::HashPool;
use crate::metainfo::{Info, Symlink};
use crate::storage::{FileSpec, Storage};

use super::release::ReleaseError;

/// Drops the torrent name from a multi-file path (`name/a/b` -> `a/b`).
fn below_top(info: &Info, path: &Path) -> PathBuf {
    if info.multi_file {
        path.components().skip(1).collect()
    } else {
        path.to_path_buf()
    }
}

/// The storage file list for a release directory.
pub fn release_files(info: &Info) -> Vec<FileSpec> {
    info.files
        .iter()
        .map(|f| FileSpec {
            path: below_top(info, &f.path),
            length: f.length,
            pad: f.pad,
        })
        .collect()
}

/// The symlinks of a release, at their paths inside the release directory.
fn release_links(info: &Info) -> impl Iterator<Item = (PathBuf, &Symlink)> {
    info.symlinks
        .iter()
        .map(move |l| (below_top(info, &l.path), l))
}

fn wanted_mode(info: &Info, index: usize) -> u32 {
    if info.executable.contains(&index) {
        0o755
    } else {
        0o644
    }
}

/// Gives every file its mode (0755 for BEP 47 `x`, else 0644) and creates the symlinks,
/// replacing whatever is at a link's path (a stale link from an earlier attempt). Called
/// on the verified partial directory, before it is renamed into place. Works through
/// `root`'s descriptor: a link planted below it is refused (or, where a symlink of the
/// release belongs, replaced), never followed to chmod or write something elsewhere.
pub fn apply_attributes(info: &Info, root: &Dir) -> Result<(), ReleaseError> {
    apply(info, root, &release_files(info), release_links(info))
}

/// [`apply_attributes`] for the plain layout of `corvid peer TORRENT DEST`, where the
/// payload keeps its torrent paths (`DEST/NAME/...`).
pub fn apply_attributes_named(info: &Info, dest: &Dir) -> Result<(), ReleaseError> {
    let links = info.symlinks.iter().map(|l| (l.path.clone(), l));
    apply(info, dest, &info.files, links)
}

/// The directory holding `rel` and its last component, reached from `root` without
/// following a link (created when `create`).
fn parent_of(root: &Dir, rel: &Path, create: bool) -> Result<(Dir, OsString), ReleaseError> {
    let name = rel.file_name().ok_or_else(|| DirError::NotRelative {
        path: root.path().join(rel),
    })?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = root.walk(parent, create)?.ok_or_else(|| ReleaseError::Io {
        path: root.path().join(parent),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    Ok((dir, name.to_os_string()))
}

fn apply<'a>(
    info: &Info,
    root: &Dir,
    files: &[FileSpec],
    links: impl Iterator<Item = (PathBuf, &'a Symlink)>,
) -> Result<(), ReleaseError> {
    // Pad files (BEP 47 `p`) are on no disk: nothing to chmod.
    for (i, f) in files.iter().enumerate().filter(|(_, f)| !f.pad) {
        let (dir, name) = parent_of(root, &f.path, false)?;
        // O_NOFOLLOW open, then fchmod: a link put in the file's place is refused.
        let file = dir.open_file(&name, OFlags::RDONLY, 0)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(wanted_mode(info, i))).map_err(|e| {
            ReleaseError::Io {
                path: root.path().join(&f.path),
                source: e.into(),
            }
        })?;
    }
    for (rel, link) in links {
        let (dir, name) = parent_of(root, &rel, true)?;
        match dir.kind(&name)? {
            Some(FileType::Directory) => {
                return Err(ReleaseError::Io {
                    path: root.path().join(&rel),
                    source: std::io::Error::other("a directory is where a symlink belongs"),
                })
            }
            // A stale link or file: unlinked itself, whatever it points at.
            Some(_) => dir.remove(&name)?,
            None => {}
        }
        dir.symlink(&link.relative_target(), &name)?;
    }
    Ok(())
}

/// Removes from a partial directory whatever the torrent does not name (left by an
/// earlier attempt at this tag with other content), so the release that is renamed into
/// place holds exactly the torrent's files and links. Files the torrent names are kept:
/// their verified pieces are reused. Only real directories are descended into; a link
/// is removed as a link, so nothing outside the partial directory is ever deleted.
pub fn prune_partial(info: &Info, root: &Dir) -> Result<(), ReleaseError> {
    let mut keep: HashSet<PathBuf> = release_files(info)
        .into_iter()
        .filter(|f| !f.pad)
        .map(|f| f.path)
        .collect();
    keep.extend(release_links(info).map(|(p, _)| p));
    let dirs: HashSet<PathBuf> = keep
        .iter()
        .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
        .collect();
    fn walk(
        dir: &Dir,
        rel: &Path,
        keep: &HashSet<PathBuf>,
        dirs: &HashSet<PathBuf>,
    ) -> Result<(), ReleaseError> {
        for (name, kind) in dir.entries()? {
            let r = rel.join(&name);
            let is_dir = kind == FileType::Directory;
            if is_dir && dirs.contains(&r) {
                if let Some(sub) = dir.open_dir(&name)? {
                    walk(&sub, &r, keep, dirs)?;
                }
            } else if is_dir || !keep.contains(&r) {
                dir.remove(&name)?;
            }
        }
        Ok(())
    }
    walk(root, Path::new(""), &keep, &dirs)
}

/// Why an existing release directory does not hold this release, or `None` when every
/// piece verifies, every file has its mode's exec bit and every symlink its target.
/// Files the torrent does not name are not looked at.
pub fn differs(info: &Info, root: &Path, pieces: &[[u8; 20]], pool: &HashPool) -> Option<String> {
    let files = release_files(info);
    for (i, f) in files.iter().enumerate().filter(|(_, f)| !f.pad) {
        let p = root.join(&f.path);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => {
                let exec = m.permissions().mode() & 0o111 != 0;
                if exec != (wanted_mode(info, i) == 0o755) {
                    return Some(format!("{}: executable bit differs", p.display()));
                }
            }
            Ok(_) => return Some(format!("{}: not a regular file", p.display())),
            Err(_) => return Some(format!("{}: missing", p.display())),
        }
    }
    for (rel, link) in release_links(info) {
        let p = root.join(&rel);
        match std::fs::read_link(&p) {
            Ok(t) if t == link.relative_target() => {}
            Ok(t) => {
                return Some(format!(
                    "{}: symlink points at {} instead of {}",
                    p.display(),
                    t.display(),
                    link.relative_target().display()
                ))
            }
            Err(_) => return Some(format!("{}: symlink missing", p.display())),
        }
    }
    let storage = match Storage::open_readonly(root, &files, info.lengths) {
        Ok(s) => Arc::new(s),
        Err(e) => return Some(e.to_string()),
    };
    let ok = pool.verify_all(&storage, pieces, &mut |_| {});
    let bad = ok.iter().filter(|g| !**g).count();
    (bad > 0).then(|| format!("{bad} of {} pieces fail their hash", ok.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions};

    #[test]
    fn attributes_applied_and_checked() {
        let src = tempfile::tempdir().unwrap();
        let d = src.path().join("app");
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/run"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(d.join("bin/run"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::fs::write(d.join("data"), vec![9u8; 40000]).unwrap();
        std::os::unix::fs::symlink("../data", d.join("bin/data")).unwrap();
        let pool = HashPool::new(1);
        let (m, _) = build(&d, &BuildOptions::default(), &pool, &mut |_| {}).unwrap();
        let files = release_files(&m.info);
        assert_eq!(files[0].path, PathBuf::from("bin/run"));

        // A copy of the bytes without modes or links differs; after applying, it matches.
        let out = tempfile::tempdir().unwrap();
        let r = out.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::copy(d.join("bin/run"), r.join("bin/run")).unwrap();
        std::fs::set_permissions(r.join("bin/run"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::copy(d.join("data"), r.join("data")).unwrap();
        assert!(differs(&m.info, r, &m.info.pieces, &pool).is_some());
        let rd = Dir::open(r).unwrap();
        apply_attributes(&m.info, &rd).unwrap();
        assert_eq!(differs(&m.info, r, &m.info.pieces, &pool), None);
        let mode = std::fs::metadata(r.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(r.join("bin/data")).unwrap(),
            PathBuf::from("../data")
        );
        assert_eq!(std::fs::read(r.join("bin/data")).unwrap().len(), 40000);
        // Applying twice is fine (a retried attempt).
        apply_attributes(&m.info, &rd).unwrap();

        // Stray entries from an earlier attempt are pruned, named ones kept.
        std::fs::write(r.join("stray"), b"old").unwrap();
        std::fs::create_dir_all(r.join("gone/deeper")).unwrap();
        std::fs::write(r.join("gone/deeper/x"), b"old").unwrap();
        std::fs::write(r.join("bin/old"), b"old").unwrap();
        prune_partial(&m.info, &rd).unwrap();
        let mut left: Vec<String> = Vec::new();
        for e in ["stray", "gone", "bin/old", "bin/run", "bin/data", "data"] {
            if std::fs::symlink_metadata(r.join(e)).is_ok() {
                left.push(e.to_string());
            }
        }
        assert_eq!(left, ["bin/run", "bin/data", "data"]);
        assert_eq!(differs(&m.info, r, &m.info.pieces, &pool), None);

        // Links planted in the partial directory, where a directory the torrent names
        // belongs and where a stray entry is: removed as links, their targets untouched.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"keep me").unwrap();
        std::fs::remove_dir_all(r.join("bin")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("bin")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("stray")).unwrap();
        prune_partial(&m.info, &rd).unwrap();
        assert!(std::fs::symlink_metadata(r.join("bin")).is_err());
        assert!(std::fs::symlink_metadata(r.join("stray")).is_err());
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"keep me"
        );
        // A link in a file's place is refused by apply, and the file it points at keeps
        // its mode.
        std::fs::create_dir(r.join("bin")).unwrap();
        std::fs::copy(d.join("bin/run"), r.join("bin/run")).unwrap();
        std::fs::remove_file(r.join("data")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), r.join("data")).unwrap();
        std::fs::set_permissions(
            outside.path().join("victim"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let e = apply_attributes(&m.info, &rd).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let mode = std::fs::metadata(outside.path().join("victim"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(r.join("data")).unwrap();
        std::fs::copy(d.join("data"), r.join("data")).unwrap();
        apply_attributes(&m.info, &rd).unwrap();
        assert_eq!(differs(&m.info, r, &m.info.pieces, &pool), None);

        // Changed bytes are found.
        std::fs::write(r.join("data"), vec![8u8; 40000]).unwrap();
        let why = differs(&m.info, r, &m.info.pieces, &pool).unwrap();
        assert!(why.contains("fail their hash"), "{why}");
    }
}
