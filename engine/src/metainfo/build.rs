//! Building torrents: the piece-size choice, the scan of a file or tree into a
//! [`Payload`], BEP 47 alignment (pad files so each file starts on a piece boundary), and
//! assembling the canonical `info` dictionary once the pieces are hashed.
//!
//! Separate from the parent, which parses torrents: parsing faces hostile input and checks
//! every field, while this side reads the local file system and only writes what it chose.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::{
    check_component, FileSpec, Metainfo, MetainfoError, Symlink, AUTO_MAX_PIECE, AUTO_MIN_PIECE,
    AUTO_TARGET_PIECES,
};
use crate::bencode::OwnedValue;
use crate::geometry::{Lengths, BLOCK_SIZE, MAX_PIECE_LENGTH};
use crate::hash::HashPool;
use crate::storage::Storage;

/// The piece length `make` picks for `total` payload bytes: the smallest power of two from
/// 256 KiB to 16 MiB that cuts the payload into at most 4000 pieces. So payloads from
/// ~1 GB to ~64 GB get 2000-4000 pieces; smaller ones get 256 KiB pieces (small pieces spread
/// faster through a fleet), larger ones 16 MiB pieces (and more than 4000 of them, so the
/// torrent stays small and each hash job bounded).
pub fn auto_piece_length(total: u64) -> u64 {
    let mut p = AUTO_MIN_PIECE;
    while p < AUTO_MAX_PIECE && total.div_ceil(p) > AUTO_TARGET_PIECES {
        p *= 2;
    }
    p
}

/// Parses a size such as `262144`, `256K`, `256KiB`, `4M`, `4MiB`, `1G`, `1GiB`. Suffixes
/// are binary (K = 1024) and case-insensitive; `KB`/`MB`/`GB` are read as binary too, since
/// sizes here are piece and buffer sizes that are powers of two.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses `--piece-size`: a power of two from 16 KiB to 64 MiB.
pub fn parse_piece_size(s: &str) -> Result<u64, MetainfoError> {
    let bad = |why| MetainfoError::BadPieceSize(s.to_owned(), why);
    let n = parse_size(s).ok_or_else(|| bad("not a size like 256K, 4M or 4MiB"))?;
    if !n.is_power_of_two() {
        return Err(bad("must be a power of two"));
    }
    if n < u64::from(BLOCK_SIZE) {
        return Err(bad("must be at least 16 KiB"));
    }
    if n > MAX_PIECE_LENGTH {
        return Err(bad("must be at most 64 MiB"));
    }
    Ok(n)
}

/// Choices for [`build`]; `Default` gives an auto piece length and no trackers.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Tracker URLs: the first becomes `announce`, all of them one `announce-list` tier each
    /// when there is more than one.
    pub trackers: Vec<String>,
    /// Piece length; `None` means [`auto_piece_length`].
    pub piece_length: Option<u64>,
    /// Torrent name; `None` means the file or directory name.
    pub name: Option<String>,
    pub comment: Option<String>,
    /// Seconds since the epoch; the caller passes the clock (tests pass a constant).
    pub creation_date: Option<i64>,
    /// BEP 27 private flag.
    pub private: bool,
    /// Start every file on a piece boundary with BEP 47 pad files (see [`aligned`]).
    pub align: bool,
}

/// What [`scan`] found: the files to hash, where they are, and what the torrent calls them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Directory the `disk_files` paths are relative to.
    pub root: PathBuf,
    /// Files as they are on disk (relative to `root`), in torrent order.
    pub disk_files: Vec<FileSpec>,
    /// The torrent's name.
    pub name: String,
    /// Directory form (`files`) or single file (`length`).
    pub multi_file: bool,
    /// Parallel to `disk_files`: the file has an exec bit (BEP 47 `x`).
    pub executable: Vec<bool>,
    /// Symlinks inside the tree (paths relative to `root`, like `disk_files`), with their
    /// targets as components relative to the top directory (BEP 47 `l`).
    pub symlinks: Vec<Symlink>,
}

impl Payload {
    pub fn total_length(&self) -> u64 {
        self.disk_files.iter().map(|f| f.length).sum()
    }

    /// The paths the torrent will list: the on-disk paths with the torrent name in front
    /// (multi-file), or just the name (single file).
    pub fn torrent_files(&self) -> Vec<FileSpec> {
        if !self.multi_file {
            return self
                .disk_files
                .iter()
                .map(|f| FileSpec {
                    path: PathBuf::from(&self.name),
                    length: f.length,
                    pad: false,
                })
                .collect();
        }
        self.disk_files
            .iter()
            .map(|f| {
                // `disk_files` of a directory start with the directory's own name.
                let mut comps = f.path.components();
                comps.next();
                FileSpec {
                    path: Path::new(&self.name).join(comps.as_path()),
                    length: f.length,
                    pad: f.pad,
                }
            })
            .collect()
    }
}

/// Walks `path` (a file or a directory) into a [`Payload`].
///
/// The order is fixed: within each directory, entries sorted by the bytes of their names,
/// directories descended where they sort; so two runs over one tree give one torrent.
/// `.git` directories are skipped. `path` itself may be a symlink (the caller named it), but
/// a symlink inside the tree is refused with an error: following it could leave the tree or
/// loop, and sharing it as a copy would not be faithful. Fifos, sockets and devices are
/// refused too.
pub fn scan(path: &Path, name: Option<&str>) -> Result<Payload, MetainfoError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MetainfoError::Io { path: p, source }
    };
    let canon = fs::canonicalize(path).map_err(io(path))?;
    let meta = fs::metadata(&canon).map_err(io(&canon))?;
    let own_name = canon
        .file_name()
        .ok_or_else(|| MetainfoError::BadName(canon.display().to_string()))?
        .to_str()
        .ok_or_else(|| MetainfoError::NonUtf8Name(canon.clone()))?
        .to_owned();
    let name = name.map(str::to_owned).unwrap_or_else(|| own_name.clone());
    if check_component(&name, &name).is_err() {
        return Err(MetainfoError::BadName(name));
    }
    let root = canon
        .parent()
        .ok_or_else(|| MetainfoError::BadName(canon.display().to_string()))?
        .to_path_buf();
    let mut disk_files = Vec::new();
    let mut executable = Vec::new();
    let mut symlinks = Vec::new();
    let multi_file = if meta.is_file() {
        disk_files.push(FileSpec {
            path: PathBuf::from(&own_name),
            length: meta.len(),
            pad: false,
        });
        executable.push(is_executable(&meta));
        false
    } else if meta.is_dir() {
        let mut w = Walk {
            files: &mut disk_files,
            executable: &mut executable,
            symlinks: &mut symlinks,
        };
        walk(&canon, Path::new(&own_name), &mut w)?;
        true
    } else {
        return Err(MetainfoError::SpecialFile(canon));
    };
    let payload = Payload {
        root,
        disk_files,
        name,
        multi_file,
        executable,
        symlinks,
    };
    if payload.total_length() == 0 {
        return Err(MetainfoError::EmptyPayload(canon));
    }
    Ok(payload)
}

fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

/// What [`walk`] collects.
struct Walk<'a> {
    files: &'a mut Vec<FileSpec>,
    executable: &'a mut Vec<bool>,
    symlinks: &'a mut Vec<Symlink>,
}

/// The target of the link at `rel` (first component: the top directory) as components
/// relative to the top directory, or `None` when it is absolute, not UTF-8, or climbs out
/// of the tree (resolved lexically: the link is kept as a link, never followed).
fn link_target_in_tree(rel: &Path, target: &Path) -> Option<Vec<String>> {
    if target.is_absolute() {
        return None;
    }
    let mut out: Vec<String> = rel
        .parent()?
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    for c in target.components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    // A link to the top directory itself has no components to name it by.
    if out.is_empty() || out.iter().any(|c| check_component(c, c).is_err()) {
        return None;
    }
    Some(out)
}

fn walk(dir: &Path, rel: &Path, out: &mut Walk<'_>) -> Result<(), MetainfoError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MetainfoError::Io { path: p, source }
    };
    let mut entries = Vec::new();
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        entries.push(e.file_name());
    }
    entries.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in entries {
        let full = dir.join(&name);
        let Some(name_str) = name.to_str() else {
            return Err(MetainfoError::NonUtf8Name(full));
        };
        // Names on Linux cannot hold `/` or NUL, and `.`/`..` are never listed; `\` is the
        // one component parsing would refuse, so refuse it here too.
        if check_component(name_str, name_str).is_err() {
            return Err(MetainfoError::UnsafePath {
                path: full.display().to_string(),
                why: "file name a torrent could not carry safely",
            });
        }
        let meta = fs::symlink_metadata(&full).map_err(io(&full))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(io(&full))?;
            let link_rel = rel.join(&name);
            let target = link_target_in_tree(&link_rel, &target)
                .ok_or_else(|| MetainfoError::Symlink(full.clone()))?;
            out.symlinks.push(Symlink {
                path: link_rel,
                target,
            });
        } else if ft.is_dir() {
            if name_str == ".git" {
                continue;
            }
            walk(&full, &rel.join(&name), out)?;
        } else if ft.is_file() {
            out.files.push(FileSpec {
                path: rel.join(&name),
                length: meta.len(),
                pad: false,
            });
            out.executable.push(is_executable(&meta));
        } else {
            return Err(MetainfoError::SpecialFile(full));
        }
    }
    Ok(())
}

/// `payload` with a BEP 47 pad file (`.pad/N`, N zeros, `attr` `p`) after every file
/// that does not end on a piece boundary, except the last, so every file starts a piece.
/// A file that did not change between two releases then has the same pieces in both
/// torrents whatever changed before it, which is what lets a peer reuse the old release
/// piece by piece ([`crate::reuse`]). The pads are never on disk: storage maps zeros for
/// them. A single file needs no pad, and empty files get none (they start no piece).
pub fn aligned(payload: &Payload, piece_length: u64) -> Payload {
    if !payload.multi_file || piece_length == 0 {
        return payload.clone();
    }
    let top = payload
        .disk_files
        .first()
        .and_then(|f| f.path.components().next())
        .map(|c| PathBuf::from(c.as_os_str()))
        .unwrap_or_default();
    let mut out = Payload {
        disk_files: Vec::with_capacity(payload.disk_files.len() * 2),
        executable: Vec::with_capacity(payload.disk_files.len() * 2),
        ..payload.clone()
    };
    let last_with_bytes = payload.disk_files.iter().rposition(|f| f.length > 0);
    let mut offset = 0u64;
    for (i, f) in payload.disk_files.iter().enumerate() {
        out.disk_files.push(f.clone());
        out.executable
            .push(payload.executable.get(i).copied().unwrap_or(false));
        offset = offset.saturating_add(f.length);
        let tail = offset % piece_length;
        if f.length == 0 || tail == 0 || Some(i) >= last_with_bytes {
            continue;
        }
        let n = piece_length - tail;
        out.disk_files.push(FileSpec {
            path: top.join(".pad").join(n.to_string()),
            length: n,
            pad: true,
        });
        out.executable.push(false);
        offset += n;
    }
    out
}

/// The piece length for a payload: the one asked for, else [`auto_piece_length`] of the
/// unpadded size (pads add at most a piece per file, which must not change the choice).
fn piece_length_for(payload: &Payload, opts: &BuildOptions) -> u64 {
    opts.piece_length
        .unwrap_or_else(|| auto_piece_length(payload.total_length()))
}

/// The torrent's geometry for a payload and options (pads included when aligning).
pub fn payload_lengths(payload: &Payload, opts: &BuildOptions) -> Result<Lengths, MetainfoError> {
    let piece_length = piece_length_for(payload, opts);
    let total = if opts.align {
        aligned(payload, piece_length).total_length()
    } else {
        payload.total_length()
    };
    Ok(Lengths::new(
        total,
        piece_length,
        total.div_ceil(piece_length),
    )?)
}

/// Encodes the torrent for a scanned payload and its piece hashes (canonical bencode, keys
/// sorted), and parses it back, so what `make` writes has passed the same checks as what
/// `info` and `verify` read.
pub fn assemble(
    payload: &Payload,
    opts: &BuildOptions,
    lengths: Lengths,
    hashes: &[[u8; 20]],
) -> Result<(Metainfo, Vec<u8>), MetainfoError> {
    if hashes.len() as u64 != u64::from(lengths.piece_count()) {
        return Err(MetainfoError::Hashing(format!(
            "{} hashes for {} pieces",
            hashes.len(),
            lengths.piece_count()
        )));
    }
    let mut info = OwnedValue::dict();
    info.insert("name", OwnedValue::bytes(&payload.name));
    info.insert(
        "piece length",
        OwnedValue::Int(lengths.piece_length() as i64),
    );
    info.insert("pieces", OwnedValue::Bytes(hashes.concat()));
    if opts.private {
        info.insert("private", OwnedValue::Int(1));
    }
    // Path components below the top directory (the torrent name or the directory's own).
    let below_top = |p: &Path| -> OwnedValue {
        OwnedValue::List(
            p.components()
                .skip(1)
                .map(|c| OwnedValue::bytes(c.as_os_str().as_encoded_bytes()))
                .collect(),
        )
    };
    if payload.multi_file {
        let mut files: Vec<OwnedValue> = payload
            .torrent_files()
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let mut d = OwnedValue::dict();
                d.insert("length", OwnedValue::Int(f.length as i64));
                d.insert("path", below_top(&f.path));
                if f.pad {
                    d.insert("attr", OwnedValue::bytes("p"));
                } else if payload.executable.get(i).copied().unwrap_or(false) {
                    d.insert("attr", OwnedValue::bytes("x"));
                }
                d
            })
            .collect();
        // Symlinks hold no bytes, so their place in the list changes no offset; they go
        // last, in walk order.
        for l in &payload.symlinks {
            let mut d = OwnedValue::dict();
            d.insert("attr", OwnedValue::bytes("l"));
            d.insert("length", OwnedValue::Int(0));
            d.insert("path", below_top(&l.path));
            d.insert(
                "symlink path",
                OwnedValue::List(l.target.iter().map(OwnedValue::bytes).collect()),
            );
            files.push(d);
        }
        info.insert("files", OwnedValue::List(files));
    } else {
        info.insert("length", OwnedValue::Int(lengths.total_length() as i64));
        if payload.executable.first().copied().unwrap_or(false) {
            info.insert("attr", OwnedValue::bytes("x"));
        }
    }
    let mut top = OwnedValue::dict();
    top.insert("info", info);
    if let Some(first) = opts.trackers.first() {
        top.insert("announce", OwnedValue::bytes(first));
    }
    if opts.trackers.len() > 1 {
        let tiers = opts
            .trackers
            .iter()
            .map(|t| OwnedValue::List(vec![OwnedValue::bytes(t)]))
            .collect();
        top.insert("announce-list", OwnedValue::List(tiers));
    }
    if let Some(c) = &opts.comment {
        top.insert("comment", OwnedValue::bytes(c));
    }
    top.insert(
        "created by",
        OwnedValue::bytes(format!("corvid {}", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(t) = opts.creation_date {
        top.insert("creation date", OwnedValue::Int(t));
    }
    let bytes = top.encode();
    let meta = Metainfo::from_bytes(&bytes)?;
    Ok((meta, bytes))
}

/// Builds a torrent from a file or directory: [`scan`], hash every piece through `pool`
/// straight from a read-only mapping, [`assemble`]. Returns the parsed torrent and the bytes
/// to write. `progress` gets the payload bytes hashed so far.
pub fn build(
    path: &Path,
    opts: &BuildOptions,
    pool: &HashPool,
    progress: &mut dyn FnMut(u64),
) -> Result<(Metainfo, Vec<u8>), MetainfoError> {
    let payload = scan(path, opts.name.as_deref())?;
    build_payload(&payload, opts, pool, progress)
}

/// [`build`] for a payload already scanned (the CLI scans first to name its output).
pub fn build_payload(
    payload: &Payload,
    opts: &BuildOptions,
    pool: &HashPool,
    progress: &mut dyn FnMut(u64),
) -> Result<(Metainfo, Vec<u8>), MetainfoError> {
    build_payload_known(payload, opts, pool, &mut |_| Vec::new(), progress)
}

/// [`build_payload`] where `known` may already vouch for some pieces' hashes: it gets the
/// read-only storage (for the pieces' file spans and the files' metadata) and returns a
/// slot per piece, `None` where the piece must be hashed; `progress` counts only the
/// bytes hashed here. The torrent is the same bytes as [`build_payload`]'s when every
/// known hash is right, which is the caller's to guarantee.
pub fn build_payload_known(
    payload: &Payload,
    opts: &BuildOptions,
    pool: &HashPool,
    known: &mut dyn FnMut(&Storage) -> Vec<Option<[u8; 20]>>,
    progress: &mut dyn FnMut(u64),
) -> Result<(Metainfo, Vec<u8>), MetainfoError> {
    let lengths = payload_lengths(payload, opts)?;
    let padded;
    let payload = if opts.align {
        padded = aligned(payload, piece_length_for(payload, opts));
        &padded
    } else {
        payload
    };
    let storage = Arc::new(Storage::open_readonly(
        &payload.root,
        &payload.disk_files,
        lengths,
    )?);
    let mut slots = known(&storage);
    slots.resize(lengths.piece_count() as usize, None);
    pool.hash_missing(&storage, &mut slots, progress);
    let hashes: Vec<[u8; 20]> = slots.into_iter().map(Option::unwrap_or_default).collect();
    assemble(payload, opts, lengths, &hashes)
}
