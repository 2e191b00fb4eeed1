//! The remote half's release steps: what `corvid peer --release-dest DEST --tag TAG`
//! (the [`super::contract::PeerCommand`] the deployer runs) does on a host around its
//! download, so the CLI only wires them to the node and its output:
//!
//! 1. [`receive_torrent`]: with `--stdin-torrent`, the torrent (and a private swarm's
//!    secret) from stdin, kept under `DEST/.corvid/` as new files renamed into place.
//!    With `--stdin-control` ([`receive_torrent_framed`]) the session's stdin stays open
//!    after them, and its end tells a lingering peer that the whole fleet is done.
//! 2. [`check_existing`]: a `releases/TAG` already there is verified; the same content
//!    means "already present", different content or a non-directory is refused unless
//!    `--force`.
//! 3. After the download ([`place`]): exec bits and symlinks, the rename into place, the
//!    activation.
//!
//! Every path below DEST is reached through the descriptors of [`OpenRelease`]. Each
//! failure carries the exit code the deployer reads it by ([`RemoteError::exit`]).

use std::io::{self, BufRead, Read};
use std::path::PathBuf;

use crate::fsat::{Dir, FileType};
use crate::hash::HashPool;
use crate::metainfo::{Metainfo, MetainfoError};
use crate::peer::auth::{Secret, SecretError};

use super::content;
use super::contract::Exit;
use super::release::{OpenRelease, ReleaseError};

/// Most bytes `--stdin-secret` reads after the torrent: a secret is a short string, this
/// only bounds what a wrong caller can make a host read.
pub const STDIN_SECRET_MAX: usize = 64 * 1024;

/// Why a host's release step failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("cannot read the torrent from stdin: {0}")]
    StdinRead(#[source] io::Error),
    #[error("stdin ended after {got} bytes, but --stdin-torrent says the torrent is {want}")]
    StdinShort { got: usize, want: usize },
    #[error("stdin holds {0} bytes after the torrent, and no --stdin-secret")]
    Trailing(usize),
    #[error("stdin: the secret's length line after the torrent is not a number")]
    SecretFrame,
    #[error("the secret after the torrent on stdin is longer than {STDIN_SECRET_MAX} bytes")]
    SecretTooLong,
    #[error("the torrent on stdin is not usable: {0}")]
    Torrent(#[source] MetainfoError),
    #[error("the secret on stdin: {0}")]
    Secret(#[source] SecretError),
    #[error("{} already exists with different content ({why}); use --force to replace it", path.display())]
    Differs { path: PathBuf, why: String },
    #[error("{} exists and is not a directory (a symbolic link or a file, not followed); use --force to replace it", path.display())]
    NotADirectory { path: PathBuf },
}

impl RemoteError {
    /// The exit code `corvid peer` ends with for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            RemoteError::Release(ReleaseError::Busy { .. }) => Exit::Busy,
            RemoteError::Release(ReleaseError::DestNotAbsolute(_) | ReleaseError::BadTag(_)) => {
                Exit::Input
            }
            RemoteError::Release(_)
            | RemoteError::Differs { .. }
            | RemoteError::NotADirectory { .. } => Exit::Output,
            RemoteError::StdinRead(_)
            | RemoteError::StdinShort { .. }
            | RemoteError::Trailing(_)
            | RemoteError::SecretTooLong
            | RemoteError::SecretFrame
            | RemoteError::Torrent(_)
            | RemoteError::Secret(_) => Exit::Input,
        }
    }
}

/// `--stdin-torrent LEN` (and `--stdin-secret`): the torrent, then the secret, from
/// `input`. Both are kept under `.corvid/` as new files renamed into place (the secret
/// 0600 from its creation), so a link planted at `TAG.torrent` or `TAG.secret` is
/// replaced, never written through (which would hand the secret to whoever reads the
/// link's target).
pub fn receive_torrent(
    input: &mut dyn Read,
    len: usize,
    with_secret: bool,
    rel: &OpenRelease,
) -> Result<(Metainfo, Option<Secret>), RemoteError> {
    let mut bytes = Vec::new();
    input
        .take((len + STDIN_SECRET_MAX + 1) as u64)
        .read_to_end(&mut bytes)
        .map_err(RemoteError::StdinRead)?;
    if bytes.len() < len {
        return Err(RemoteError::StdinShort {
            got: bytes.len(),
            want: len,
        });
    }
    let rest = bytes.split_off(len);
    if !with_secret && !rest.is_empty() {
        return Err(RemoteError::Trailing(rest.len()));
    }
    if rest.len() > STDIN_SECRET_MAX {
        return Err(RemoteError::SecretTooLong);
    }
    keep_torrent(bytes, with_secret.then_some(rest), rel)
}

/// `--stdin-torrent LEN --stdin-control`: the torrent, exactly LEN bytes, then with
/// `with_secret` the secret as a decimal length line and that many bytes; `input` is left
/// just after them. The deployer keeps the session's stdin open afterwards: its end is
/// the signal that every host holds the release and the linger can stop (Murder's
/// `stop_all_peering`), so nothing here may read to the end.
pub fn receive_torrent_framed(
    input: &mut dyn BufRead,
    len: usize,
    with_secret: bool,
    rel: &OpenRelease,
) -> Result<(Metainfo, Option<Secret>), RemoteError> {
    let bytes = read_exact_vec(input, len)?;
    if !with_secret {
        return keep_torrent(bytes, None, rel);
    }
    // At most 20 digits and the newline; a longer line is not a length.
    let mut line = Vec::new();
    input
        .take(22)
        .read_until(b'\n', &mut line)
        .map_err(RemoteError::StdinRead)?;
    let n: usize = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_suffix('\n'))
        .and_then(|l| l.parse().ok())
        .ok_or(RemoteError::SecretFrame)?;
    if n > STDIN_SECRET_MAX {
        return Err(RemoteError::SecretTooLong);
    }
    let secret = read_exact_vec(input, n)?;
    keep_torrent(bytes, Some(secret), rel)
}

/// Exactly `len` bytes, or [`RemoteError::StdinShort`] with how many came.
fn read_exact_vec(input: &mut dyn BufRead, len: usize) -> Result<Vec<u8>, RemoteError> {
    let mut bytes = Vec::with_capacity(len.min(1 << 20));
    input
        .take(len as u64)
        .read_to_end(&mut bytes)
        .map_err(RemoteError::StdinRead)?;
    if bytes.len() < len {
        return Err(RemoteError::StdinShort {
            got: bytes.len(),
            want: len,
        });
    }
    Ok(bytes)
}

/// Parses the torrent and keeps it (and the secret) under `.corvid/`.
fn keep_torrent(
    bytes: Vec<u8>,
    secret: Option<Vec<u8>>,
    rel: &OpenRelease,
) -> Result<(Metainfo, Option<Secret>), RemoteError> {
    let m = Metainfo::from_bytes(&bytes).map_err(RemoteError::Torrent)?;
    let tag = &rel.paths.tag;
    rel.state
        .write_new(format!("{tag}.torrent"), &bytes, 0o644)
        .map_err(ReleaseError::from)?;
    let Some(rest) = secret else {
        return Ok((m, None));
    };
    let secret = Secret::new(&rest).map_err(RemoteError::Secret)?;
    rel.state
        .write_new(format!("{tag}.secret"), &rest, 0o600)
        .map_err(ReleaseError::from)?;
    Ok((m, Some(secret)))
}

/// What is at `releases/TAG` before the download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing: download.
    Absent,
    /// A directory holding exactly this release (every piece verified): nothing to do.
    Same,
    /// Something else, and `--force`: download, then replace it.
    Replace,
}

/// Checks `releases/TAG` against the torrent, hashing an existing directory on
/// `hash_threads` threads. A link (followed, it could make a tree
/// elsewhere pass for this release) or a file is not a release, whatever it points at.
pub fn check_existing(
    rel: &OpenRelease,
    m: &Metainfo,
    force: bool,
    hash_threads: usize,
) -> Result<Existing, RemoteError> {
    let path = rel.paths.finished();
    match rel.finished_kind()? {
        None => Ok(Existing::Absent),
        Some(FileType::Directory) => {
            let pool = HashPool::new(hash_threads.max(1));
            match content::differs(&m.info, &path, &m.info.pieces, &pool) {
                None => Ok(Existing::Same),
                Some(_) if force => Ok(Existing::Replace),
                Some(why) => Err(RemoteError::Differs { path, why }),
            }
        }
        Some(_) if force => Ok(Existing::Replace),
        Some(_) => Err(RemoteError::NotADirectory { path }),
    }
}

/// Once every piece in `partial` is verified: its exec bits and symlinks, the rename to
/// `releases/TAG` (over what [`check_existing`] allowed to replace), its seal
/// ([`seal_release`]), and with `activate` `current` pointed at it.
pub fn place(
    rel: &OpenRelease,
    m: &Metainfo,
    partial: &Dir,
    replace: bool,
    activate: bool,
) -> Result<(), ReleaseError> {
    content::apply_attributes(&m.info, partial)?;
    rel.finish(replace)?;
    // Best effort: without a seal, the next deploy hashes what it reuses from here.
    let _ = seal_release(rel, m);
    if activate {
        rel.activate()?;
    }
    Ok(())
}

/// Writes `DEST/.corvid/TAG.seal` for the release just put in place: how its files look
/// now, every piece of them verified against `m` (see [`crate::reuse::seal`]).
pub fn seal_release(rel: &OpenRelease, m: &Metainfo) -> Result<(), ReleaseError> {
    let files = content::release_files(&m.info);
    let seal = crate::reuse::Seal::of_release(&rel.paths.finished(), &files, &m.info_hash_hex())?;
    let name = format!("{}.seal", rel.paths.tag);
    Ok(rel.state.write_new(name, &seal.to_json(), 0o644)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::release::ReleasePaths;
    use crate::metainfo::{build, BuildOptions};
    use std::path::Path;

    fn release(dest: &Path) -> OpenRelease {
        ReleasePaths::new(dest, "v1").unwrap().prepare().unwrap()
    }

    fn torrent_of(dir: &Path) -> (Metainfo, Vec<u8>) {
        let pool = HashPool::new(1);
        build(dir, &BuildOptions::default(), &pool, &mut |_| {}).unwrap()
    }

    #[test]
    fn stdin_is_read_exactly_and_kept_without_following_links() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"payload").unwrap();
        let (_, t) = torrent_of(src.path());
        let d = tempfile::tempdir().unwrap();
        let rel = release(d.path());
        let outside = d.path().join("outside");
        std::os::unix::fs::symlink(&outside, d.path().join(".corvid/v1.secret")).unwrap();

        let input = [&t[..], b"hush"].concat();
        let (m, s) = receive_torrent(&mut &input[..], t.len(), true, &rel).unwrap();
        assert_eq!(s.unwrap().expose(), b"hush");
        assert_eq!(m.info.lengths.total_length(), 7);
        assert_eq!(
            std::fs::read(d.path().join(".corvid/v1.torrent")).unwrap(),
            t
        );
        // The planted link was replaced, its target never written.
        assert!(!outside.exists());
        let meta = std::fs::symlink_metadata(d.path().join(".corvid/v1.secret")).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );

        let short = receive_torrent(&mut &t[..10], t.len(), false, &rel).unwrap_err();
        assert!(
            matches!(short, RemoteError::StdinShort { got: 10, .. }),
            "{short}"
        );
        let trailing = receive_torrent(&mut &input[..], t.len(), false, &rel).unwrap_err();
        assert!(matches!(trailing, RemoteError::Trailing(4)), "{trailing}");
        let long = [&t[..], &vec![b'x'; STDIN_SECRET_MAX + 1]].concat();
        let e = receive_torrent(&mut &long[..], t.len(), true, &rel).unwrap_err();
        assert!(matches!(e, RemoteError::SecretTooLong));
        let e = receive_torrent(&mut &b"junk"[..], 4, false, &rel).unwrap_err();
        assert!(matches!(e, RemoteError::Torrent(_)));
        for e in [short, trailing, e] {
            assert_eq!(e.exit(), Exit::Input);
        }
    }

    #[test]
    fn framed_stdin_stops_after_the_secret_and_leaves_the_rest() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"payload").unwrap();
        let (_, t) = torrent_of(src.path());
        let d = tempfile::tempdir().unwrap();
        let rel = release(d.path());
        let secret = b"s3cret \x00\n\xff";
        let input = [&t[..], b"10\n", secret, b"more later"].concat();
        let mut r = &input[..];
        let (_, s) = receive_torrent_framed(&mut r, t.len(), true, &rel).unwrap();
        assert_eq!(s.unwrap().expose(), secret);
        // What follows is left for the caller (the stop signal's reader).
        assert_eq!(r, b"more later");
        let input = [&t[..], b"rest"].concat();
        let mut r = &input[..];
        let (_, s) = receive_torrent_framed(&mut r, t.len(), false, &rel).unwrap();
        assert!(s.is_none());
        assert_eq!(r, b"rest");

        for (bad, want) in [
            ([&t[..], b"x1\nab"].concat(), "not a number"),
            (
                [&t[..], b"99999999999999999999999999\n"].concat(),
                "not a number",
            ),
            ([&t[..], b"5\nab"].concat(), "stdin ended after 2 bytes"),
            ([&t[..], b"70000\n"].concat(), "longer than"),
            (t[..9].to_vec(), "stdin ended after 9 bytes"),
        ] {
            let e = receive_torrent_framed(&mut &bad[..], t.len(), true, &rel).unwrap_err();
            assert!(e.to_string().contains(want), "{e} lacks {want}");
            assert_eq!(e.exit(), Exit::Input);
        }
    }

    #[test]
    fn an_existing_release_is_kept_refused_or_replaced() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"payload").unwrap();
        let (m, _) = torrent_of(src.path());
        let d = tempfile::tempdir().unwrap();
        let rel = release(d.path());
        assert_eq!(
            check_existing(&rel, &m, false, 1).unwrap(),
            Existing::Absent
        );

        // Downloaded into the partial directory, then placed and activated.
        let partial = rel.partial_dir().unwrap();
        std::fs::write(d.path().join("releases/v1.partial/f"), b"payload").unwrap();
        place(&rel, &m, &partial, false, true).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("current/f")).unwrap(),
            b"payload"
        );
        assert_eq!(check_existing(&rel, &m, false, 1).unwrap(), Existing::Same);

        std::fs::write(d.path().join("releases/v1/f"), b"PAYLOAD").unwrap();
        let e = check_existing(&rel, &m, false, 1).unwrap_err();
        assert!(matches!(e, RemoteError::Differs { .. }), "{e}");
        assert_eq!(e.exit(), Exit::Output);
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(
            check_existing(&rel, &m, true, 1).unwrap(),
            Existing::Replace
        );

        // A link at releases/TAG to a matching tree is not that release.
        std::fs::remove_dir_all(d.path().join("releases/v1")).unwrap();
        std::os::unix::fs::symlink(src.path(), d.path().join("releases/v1")).unwrap();
        let e = check_existing(&rel, &m, false, 1).unwrap_err();
        assert!(matches!(e, RemoteError::NotADirectory { .. }), "{e}");
        assert_eq!(
            check_existing(&rel, &m, true, 1).unwrap(),
            Existing::Replace
        );
    }
}
