//! A release's content on a host: where a torrent's files land inside
//! `releases/TAG(.partial)`, the BEP 47 attributes applied after verification (exec bits,
//! symlinks), and the check that an existing `releases/TAG` already holds this release.
//!
//! The release directory holds the CONTENT of the deployed directory (its files directly
//! inside), so the torrent's top-level name is dropped from every path. A single-file
//! torrent keeps its name: `releases/TAG/NAME`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hash::HashPool;
use crate::metainfo::{Info, Symlink};
use crate::storage::{FileSpec, Storage};

use super::release::ReleaseError;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

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
/// on the verified partial directory, before it is renamed into place.
pub fn apply_attributes(info: &Info, root: &Path) -> Result<(), ReleaseError> {
    apply(info, root, &release_files(info), release_links(info))
}

/// [`apply_attributes`] for the plain layout of `corvid peer TORRENT DEST`, where the
/// payload keeps its torrent paths (`DEST/NAME/...`).
pub fn apply_attributes_named(info: &Info, dest: &Path) -> Result<(), ReleaseError> {
    let links = info.symlinks.iter().map(|l| (l.path.clone(), l));
    apply(info, dest, &info.files, links)
}

fn apply<'a>(
    info: &Info,
    root: &Path,
    files: &[FileSpec],
    links: impl Iterator<Item = (PathBuf, &'a Symlink)>,
) -> Result<(), ReleaseError> {
    for (i, f) in files.iter().enumerate() {
        let p = root.join(&f.path);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(wanted_mode(info, i)))
            .map_err(io_err(&p))?;
    }
    for (rel, link) in links {
        let p = root.join(&rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                return Err(ReleaseError::Io {
                    path: p,
                    source: std::io::Error::other("a directory is where a symlink belongs"),
                })
            }
            Ok(_) => std::fs::remove_file(&p).map_err(io_err(&p))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(link.relative_target(), &p).map_err(io_err(&p))?;
    }
    Ok(())
}

/// Removes from a partial directory whatever the torrent does not name (left by an
/// earlier attempt at this tag with other content), so the release that is renamed into
/// place holds exactly the torrent's files and links. Files the torrent names are kept:
/// their verified pieces are reused.
pub fn prune_partial(info: &Info, root: &Path) -> Result<(), ReleaseError> {
    let mut keep: std::collections::HashSet<PathBuf> =
        release_files(info).into_iter().map(|f| f.path).collect();
    keep.extend(release_links(info).map(|(p, _)| p));
    let dirs: std::collections::HashSet<PathBuf> = keep
        .iter()
        .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
        .collect();
    fn walk(
        root: &Path,
        rel: &Path,
        keep: &std::collections::HashSet<PathBuf>,
        dirs: &std::collections::HashSet<PathBuf>,
    ) -> Result<(), ReleaseError> {
        let dir = root.join(rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for e in entries {
            let e = e.map_err(io_err(&dir))?;
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let is_dir = e.file_type().map_err(io_err(&p))?.is_dir();
            if is_dir && dirs.contains(&r) {
                walk(root, &r, keep, dirs)?;
            } else if is_dir {
                std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
            } else if !keep.contains(&r) {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
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
    for (i, f) in files.iter().enumerate() {
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
        apply_attributes(&m.info, r).unwrap();
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
        apply_attributes(&m.info, r).unwrap();

        // Stray entries from an earlier attempt are pruned, named ones kept.
        std::fs::write(r.join("stray"), b"old").unwrap();
        std::fs::create_dir_all(r.join("gone/deeper")).unwrap();
        std::fs::write(r.join("gone/deeper/x"), b"old").unwrap();
        std::fs::write(r.join("bin/old"), b"old").unwrap();
        prune_partial(&m.info, r).unwrap();
        let mut left: Vec<String> = Vec::new();
        for e in ["stray", "gone", "bin/old", "bin/run", "bin/data", "data"] {
            if std::fs::symlink_metadata(r.join(e)).is_ok() {
                left.push(e.to_string());
            }
        }
        assert_eq!(left, ["bin/run", "bin/data", "data"]);
        assert_eq!(differs(&m.info, r, &m.info.pieces, &pool), None);
        prune_partial(&m.info, &r.join("missing")).unwrap();

        // Changed bytes are found.
        std::fs::write(r.join("data"), vec![8u8; 40000]).unwrap();
        let why = differs(&m.info, r, &m.info.pieces, &pool).unwrap();
        assert!(why.contains("fail their hash"), "{why}");
    }
}
