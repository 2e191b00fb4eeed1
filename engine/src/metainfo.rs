//! Torrent files (BEP 3, v1): parse them strictly, and build them from a file or a tree.
//!
//! A torrent names the files it will make a peer write, so parsing is where the fleet is
//! protected from a hostile or broken torrent: every field is type-checked and named in the
//! error, every path component is checked before it can touch a file system (no `..`, no
//! absolute paths, no separators or NUL inside a component, no two files on one path), and
//! the piece count must match the total length ([`Lengths::new`]). The info-hash is SHA-1
//! over the raw `info` bytes as they appear in the file ([`Dict::raw`]), so a torrent
//! written by a client with non-canonical encoding keeps the hash its swarm knows.
//!
//! Building walks the payload in a fixed order (byte order of names, `.git` skipped), refuses
//! what it cannot share faithfully (symlinks, fifos, sockets, devices), picks a piece length
//! by [`auto_piece_length`] unless told, hashes through the engine's hasher pool, and writes
//! canonical bencode. The file list a torrent describes is the same [`FileSpec`] list that
//! [`crate::storage`] maps.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::bencode::{self, Dict, Value};
use crate::geometry::{GeometryError, Lengths, PieceIndex};
use crate::storage::StorageError;

pub use crate::storage::FileSpec;

mod build;
pub use build::{
    aligned, assemble, auto_piece_length, build, build_payload, build_payload_known,
    parse_piece_size, parse_size, payload_lengths, scan, BuildOptions, Payload,
};

/// Largest torrent file accepted. A torrent for 64 GiB in 16 KiB pieces is 80 MiB of
/// hashes, but nothing corvid makes comes near this; the bound keeps a hostile file from
/// costing more than a bounded amount of memory.
pub const MAX_TORRENT_SIZE: usize = 64 * 1024 * 1024;

/// Smallest piece length `make` picks on its own.
pub const AUTO_MIN_PIECE: u64 = 256 * 1024;
/// Largest piece length `make` picks on its own (and the largest `--piece-size`).
pub const AUTO_MAX_PIECE: u64 = 16 * 1024 * 1024;
/// `make` aims for at most this many pieces (see [`auto_piece_length`]).
pub const AUTO_TARGET_PIECES: u64 = 4000;

/// Why a torrent cannot be read or built. Each variant names the field or path involved.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("torrent is {0} bytes, larger than the {MAX_TORRENT_SIZE} bytes accepted")]
    TooLarge(usize),
    #[error("torrent is not valid bencode")]
    Bencode(#[from] bencode::Error),
    #[error("torrent field `{field}` {problem}")]
    Field { field: String, problem: String },
    #[error("torrent path {path:?} is unsafe: {why}")]
    UnsafePath { path: String, why: &'static str },
    #[error("torrent path {0:?} is used twice (or is both a file and a directory)")]
    PathCollision(String),
    #[error("torrent geometry is inconsistent")]
    Geometry(#[from] GeometryError),
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: symbolic link is absolute or leaves the shared tree (only links to a path inside the tree are kept)")]
    Symlink(PathBuf),
    #[error("{0}: not a regular file or directory (fifo, socket or device)")]
    SpecialFile(PathBuf),
    #[error("{0}: file name is not valid UTF-8")]
    NonUtf8Name(PathBuf),
    #[error("{0}: nothing to share (no bytes in any file)")]
    EmptyPayload(PathBuf),
    #[error("name {0:?} is not a usable torrent name")]
    BadName(String),
    #[error("piece size {0:?}: {1}")]
    BadPieceSize(String, &'static str),
    #[error("hashing failed: {0}")]
    Hashing(String),
    #[error("cannot map the payload")]
    Storage(#[from] StorageError),
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> MetainfoError {
    MetainfoError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The `info` dictionary: what the info-hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Suggested name: the file name (single-file) or top directory (multi-file).
    pub name: String,
    /// Every payload file, in torrent order, paths relative to the directory that holds the
    /// payload (so the first component is always `name`), validated safe.
    pub files: Vec<FileSpec>,
    /// True for the `files` form (a directory), false for the `length` form.
    pub multi_file: bool,
    /// One SHA-1 per piece.
    pub pieces: Vec<[u8; 20]>,
    pub lengths: Lengths,
    /// BEP 27 `private` flag.
    pub private: bool,
    /// Indices into `files` of BEP 47 pad files (`attr` contains `p`), which libtorrent's
    /// hybrid v1+v2 torrents insert: zeros that exist in no directory. Storage does not
    /// synthesize them yet, so callers refuse such torrents for verify and download.
    pub pad_files: Vec<usize>,
    /// Indices into `files` of BEP 47 executable files (`attr` contains `x`): a peer that
    /// writes the release gives them mode 0755 instead of 0644.
    pub executable: Vec<usize>,
    /// BEP 47 symlinks (`attr` contains `l`). They hold no bytes, so they are not in
    /// `files` (storage never opens them); a peer creates them after verification.
    pub symlinks: Vec<Symlink>,
    /// Offset of each file's first byte in the payload stream (parallel to `files`).
    file_starts: Vec<u64>,
}

/// One BEP 47 symlink entry: where the link is, and what it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symlink {
    /// The link's own path, like [`FileSpec::path`] (first component is the torrent name).
    pub path: PathBuf,
    /// The target's `symlink path` components, relative to the torrent's top directory
    /// (libtorrent's reading of BEP 47), each validated like a path component, so the
    /// target can never leave the tree.
    pub target: Vec<String>,
}

impl Symlink {
    /// The link text to write at `path`: the target relative to the link's own directory
    /// (`../lib/x`), so the tree can move as a whole.
    pub fn relative_target(&self) -> PathBuf {
        // The link's directory within the top directory: skip the name, drop the leaf.
        let comps: Vec<&std::ffi::OsStr> = self
            .path
            .components()
            .skip(1)
            .map(|c| c.as_os_str())
            .collect();
        let dir = &comps[..comps.len().saturating_sub(1)];
        let common = dir
            .iter()
            .zip(&self.target)
            .take_while(|(a, b)| **a == std::ffi::OsStr::new(b.as_str()))
            .count();
        let mut out = PathBuf::new();
        for _ in common..dir.len() {
            out.push("..");
        }
        for t in &self.target[common..] {
            out.push(t);
        }
        if out.as_os_str().is_empty() {
            out.push(".");
        }
        out
    }
}

/// A parsed torrent file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    pub announce: Option<String>,
    /// BEP 12 tiers, as written.
    pub announce_list: Vec<Vec<String>>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    pub creation_date: Option<i64>,
    pub info: Info,
    /// SHA-1 of the raw `info` bytes.
    pub info_hash: [u8; 20],
    /// The raw `info` dictionary bytes (served to peers by BEP 9 metadata exchange).
    pub info_bytes: Vec<u8>,
}

impl Metainfo {
    /// Parses and validates a torrent file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        if bytes.len() > MAX_TORRENT_SIZE {
            return Err(MetainfoError::TooLarge(bytes.len()));
        }
        let root = bencode::decode(bytes)?;
        let root = root
            .as_dict()
            .ok_or_else(|| field("(top level)", "is not a dictionary"))?;
        let announce = opt_str(root, "announce")?;
        let announce_list = match root.get(b"announce-list") {
            None => Vec::new(),
            Some(v) => {
                let tiers = v
                    .as_list()
                    .ok_or_else(|| field("announce-list", "is not a list"))?;
                let mut out = Vec::with_capacity(tiers.len());
                for (i, tier) in tiers.iter().enumerate() {
                    let urls = tier
                        .as_list()
                        .ok_or_else(|| field(format!("announce-list[{i}]"), "is not a list"))?;
                    let mut t = Vec::with_capacity(urls.len());
                    for (j, u) in urls.iter().enumerate() {
                        let s = u.as_str().ok_or_else(|| {
                            field(format!("announce-list[{i}][{j}]"), "is not a UTF-8 string")
                        })?;
                        t.push(s.to_owned());
                    }
                    out.push(t);
                }
                out
            }
        };
        let comment = opt_str(root, "comment")?;
        let created_by = opt_str(root, "created by")?;
        let creation_date = match root.get(b"creation date") {
            None => None,
            Some(v) => Some(
                v.as_int()
                    .ok_or_else(|| field("creation date", "is not an integer"))?,
            ),
        };
        let info_dict = root
            .get(b"info")
            .ok_or_else(|| field("info", "is missing"))?
            .as_dict()
            .ok_or_else(|| field("info", "is not a dictionary"))?;
        let info = parse_info(info_dict)?;
        let info_bytes = info_dict.raw().to_vec();
        let info_hash: [u8; 20] = Sha1::digest(&info_bytes).into();
        Ok(Metainfo {
            announce,
            announce_list,
            comment,
            created_by,
            creation_date,
            info,
            info_hash,
            info_bytes,
        })
    }

    /// The info-hash as 40 lowercase hex digits.
    pub fn info_hash_hex(&self) -> String {
        hex(&self.info_hash)
    }

    /// Every tracker URL once, announce-list tiers first (BEP 12 says a client that knows
    /// the list ignores `announce`), then `announce` if it was not in the list.
    pub fn trackers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for url in self.announce_list.iter().flatten() {
            if !out.contains(url) {
                out.push(url.clone());
            }
        }
        if let Some(a) = &self.announce {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The expected hash of a piece.
    pub fn piece_hash(&self, piece: PieceIndex) -> &[u8; 20] {
        // PieceIndex was checked against `lengths`, whose count equals `pieces.len()`.
        &self.info.pieces[piece.as_usize()]
    }
}

impl Info {
    /// Indices into `files` of the non-empty files that hold bytes of `piece`, which is
    /// what a failed piece tells about damaged files.
    pub fn files_of_piece(&self, piece: PieceIndex) -> Vec<usize> {
        let start = self.lengths.piece_offset(piece);
        let end = start + u64::from(self.lengths.piece_size(piece));
        // First file that ends after the piece starts; `file_starts` is sorted, so binary
        // search keeps a report over many bad pieces of a large tree cheap.
        let first = self
            .file_starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        (first..self.files.len())
            .take_while(|&i| self.file_starts[i] < end)
            .filter(|&i| {
                let f_end = self.file_starts[i] + self.files[i].length;
                self.files[i].length > 0 && f_end > start
            })
            .collect()
    }

    /// Byte range `[start, end)` of file `index` in the payload stream.
    pub fn file_range(&self, index: usize) -> Option<(u64, u64)> {
        let f = self.files.get(index)?;
        let start = self.file_starts[index];
        Some((start, start + f.length))
    }
}

fn opt_str(d: &Dict<'_>, key: &str) -> Result<Option<String>, MetainfoError> {
    match d.get(key.as_bytes()) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| field(key, "is not a UTF-8 string")),
    }
}

fn req_len(d: &Dict<'_>, key: &str, name: &str) -> Result<u64, MetainfoError> {
    let v = d
        .get(key.as_bytes())
        .ok_or_else(|| field(name, "is missing"))?
        .as_int()
        .ok_or_else(|| field(name, "is not an integer"))?;
    u64::try_from(v).map_err(|_| field(name, format!("is negative ({v})")))
}

fn parse_info(d: &Dict<'_>) -> Result<Info, MetainfoError> {
    let name = d
        .get(b"name")
        .ok_or_else(|| field("info.name", "is missing"))?
        .as_str()
        .ok_or_else(|| field("info.name", "is not a UTF-8 string"))?;
    check_component(name, name)?;
    let piece_length = req_len(d, "piece length", "info.piece length")?;
    let pieces_raw = d
        .get(b"pieces")
        .ok_or_else(|| field("info.pieces", "is missing"))?
        .as_bytes()
        .ok_or_else(|| field("info.pieces", "is not a byte string"))?;
    if pieces_raw.len() % 20 != 0 {
        return Err(field(
            "info.pieces",
            format!("is {} bytes, not a multiple of 20", pieces_raw.len()),
        ));
    }
    let private = match d.get(b"private") {
        None => false,
        Some(v) => {
            v.as_int()
                .ok_or_else(|| field("info.private", "is not an integer"))?
                == 1
        }
    };

    let mut pad_files = Vec::new();
    let mut executable = Vec::new();
    let mut symlinks = Vec::new();
    let (files, multi_file) = match (d.get(b"length"), d.get(b"files")) {
        (Some(_), Some(_)) => {
            return Err(field("info", "has both `length` and `files`"));
        }
        (None, None) => return Err(field("info", "has neither `length` nor `files`")),
        (Some(_), None) => {
            let length = req_len(d, "length", "info.length")?;
            if d.get(b"attr")
                .and_then(Value::as_bytes)
                .is_some_and(|a| a.contains(&b'x'))
            {
                executable.push(0);
            }
            (
                vec![FileSpec {
                    path: PathBuf::from(name),
                    length,
                    pad: false,
                }],
                false,
            )
        }
        (None, Some(list)) => {
            let files = parse_file_list(
                name,
                list,
                piece_length,
                &mut pad_files,
                &mut executable,
                &mut symlinks,
            )?;
            (files, true)
        }
    };
    check_collisions(
        &files
            .iter()
            .filter(|f| !f.pad)
            .cloned()
            .chain(symlinks.iter().map(|l| FileSpec {
                path: l.path.clone(),
                length: 0,
                pad: false,
            }))
            .collect::<Vec<_>>(),
    )?;
    let (file_starts, total) = file_starts(&files)?;
    let lengths = Lengths::new(total, piece_length, (pieces_raw.len() / 20) as u64)?;
    let pieces = pieces_raw
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(Info {
        name: name.to_owned(),
        files,
        multi_file,
        pieces,
        lengths,
        private,
        pad_files,
        executable,
        symlinks,
        file_starts,
    })
}

/// The `files` list of a multi-file torrent: the files in order (pads marked), with the
/// indices of pads and executables and the symlinks, which take no place in the list.
fn parse_file_list(
    name: &str,
    list: &Value<'_>,
    piece_length: u64,
    pad_files: &mut Vec<usize>,
    executable: &mut Vec<usize>,
    symlinks: &mut Vec<Symlink>,
) -> Result<Vec<FileSpec>, MetainfoError> {
    let list = list
        .as_list()
        .ok_or_else(|| field("info.files", "is not a list"))?;
    if list.is_empty() {
        return Err(field("info.files", "is empty"));
    }
    let mut files = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let mut spec = parse_file_entry(name, i, entry)?;
        let attr = entry
            .as_dict()
            .and_then(|d| d.get(b"attr"))
            .and_then(Value::as_bytes)
            .unwrap_or(b"");
        if attr.contains(&b'l') {
            symlinks.push(parse_symlink(i, entry, spec)?);
            continue;
        }
        if attr.contains(&b'p') {
            check_pad(i, &spec, piece_length)?;
            pad_files.push(files.len());
            spec.pad = true;
        }
        if attr.contains(&b'x') {
            executable.push(files.len());
        }
        files.push(spec);
    }
    if files.is_empty() {
        return Err(field("info.files", "lists only symlinks"));
    }
    Ok(files)
}

/// Where each file starts in the concatenated payload, and the total length.
fn file_starts(files: &[FileSpec]) -> Result<(Vec<u64>, u64), MetainfoError> {
    let mut total: u64 = 0;
    let mut file_starts = Vec::with_capacity(files.len());
    for f in files {
        file_starts.push(total);
        total = total
            .checked_add(f.length)
            .ok_or_else(|| field("info.files", "lengths add up to more than 2^64 bytes"))?;
    }
    Ok((file_starts, total))
}

/// A BEP 47 symlink entry: no bytes (length 0), and a `symlink path` of safe components.
fn parse_symlink(i: usize, entry: &Value<'_>, spec: FileSpec) -> Result<Symlink, MetainfoError> {
    let at = format!("info.files[{i}]");
    if spec.length != 0 {
        return Err(field(
            format!("{at}.length"),
            format!("is {} for a symlink (must be 0)", spec.length),
        ));
    }
    let comps = entry
        .as_dict()
        .and_then(|d| d.get(b"symlink path"))
        .ok_or_else(|| field(format!("{at}.symlink path"), "is missing"))?
        .as_list()
        .ok_or_else(|| field(format!("{at}.symlink path"), "is not a list"))?;
    if comps.is_empty() {
        return Err(field(format!("{at}.symlink path"), "is empty"));
    }
    let mut target = Vec::with_capacity(comps.len());
    for (j, c) in comps.iter().enumerate() {
        let s = c
            .as_str()
            .ok_or_else(|| field(format!("{at}.symlink path[{j}]"), "is not a UTF-8 string"))?;
        target.push(s.to_owned());
    }
    let shown = format!("{} -> {}", spec.path.display(), target.join("/"));
    for s in &target {
        check_component(s, &shown)?;
    }
    Ok(Symlink {
        path: spec.path,
        target,
    })
}

fn parse_file_entry(name: &str, i: usize, entry: &Value<'_>) -> Result<FileSpec, MetainfoError> {
    let at = format!("info.files[{i}]");
    let d = entry
        .as_dict()
        .ok_or_else(|| field(at.clone(), "is not a dictionary"))?;
    let length = req_len(d, "length", &format!("{at}.length"))?;
    let comps = d
        .get(b"path")
        .ok_or_else(|| field(format!("{at}.path"), "is missing"))?
        .as_list()
        .ok_or_else(|| field(format!("{at}.path"), "is not a list"))?;
    if comps.is_empty() {
        return Err(field(format!("{at}.path"), "is empty"));
    }
    let mut strs = Vec::with_capacity(comps.len());
    for (j, c) in comps.iter().enumerate() {
        let s = c
            .as_str()
            .ok_or_else(|| field(format!("{at}.path[{j}]"), "is not a UTF-8 string"))?;
        strs.push(s);
    }
    let shown = format!("{name}/{}", strs.join("/"));
    let mut path = PathBuf::from(name);
    for s in strs {
        check_component(s, &shown)?;
        path.push(s);
    }
    Ok(FileSpec {
        path,
        length,
        pad: false,
    })
}

/// A pad file is zeros standing in for no file: BEP 47 names it `.pad/N` (libtorrent
/// writes `N` = its length, older makers other numbers, so the number is not checked),
/// and it exists only to reach the next piece boundary, so it is shorter than a piece.
/// Pads never reach a disk, which is why several may share one path; anything else under
/// a `p` attribute is refused, so a torrent cannot pass a real file off as a pad.
fn check_pad(i: usize, spec: &FileSpec, piece_length: u64) -> Result<(), MetainfoError> {
    let at = format!("info.files[{i}]");
    let comps: Vec<_> = spec.path.components().skip(1).collect();
    let ok_path = comps.len() == 2
        && comps[0].as_os_str() == ".pad"
        && comps[1]
            .as_os_str()
            .to_str()
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    if !ok_path {
        return Err(field(
            format!("{at}.path"),
            format!(
                "is {:?} for a pad file (BEP 47 pads are `.pad/N`)",
                spec.path.display().to_string()
            ),
        ));
    }
    if spec.length >= piece_length {
        return Err(field(
            format!("{at}.length"),
            format!(
                "is {} for a pad file, not less than the piece length {piece_length}",
                spec.length
            ),
        ));
    }
    Ok(())
}

/// Rejects a path component that could leave the payload directory or mean something
/// other than one plain name.
fn check_component(c: &str, shown: &str) -> Result<(), MetainfoError> {
    let why = if c.is_empty() {
        "empty path component"
    } else if c == "." || c == ".." {
        "`.` or `..` component"
    } else if c.contains('/') {
        "component contains `/` (absolute or nested path)"
    } else if c.contains('\0') {
        "component contains NUL"
    } else if c.contains('\\') {
        // Not a separator on Linux, but a torrent made on or for Windows would mean one.
        "component contains `\\`"
    } else {
        return Ok(());
    };
    Err(MetainfoError::UnsafePath {
        path: shown.to_owned(),
        why,
    })
}

/// Two files on one path, or a file that is also a parent directory of another, would make
/// storage write one file's bytes through another's.
fn check_collisions(files: &[FileSpec]) -> Result<(), MetainfoError> {
    let mut paths: HashSet<&Path> = HashSet::with_capacity(files.len());
    for f in files {
        if !paths.insert(&f.path) {
            return Err(MetainfoError::PathCollision(f.path.display().to_string()));
        }
    }
    for f in files {
        // Every proper ancestor (directory) of this file must not be a file.
        for anc in f.path.ancestors().skip(1) {
            if anc.as_os_str().is_empty() {
                break;
            }
            if paths.contains(anc) {
                return Err(MetainfoError::PathCollision(anc.display().to_string()));
            }
        }
    }
    Ok(())
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashPool;
    use std::fs;

    /// A valid multi-file torrent with the given `files` list body (already bencoded).
    fn multi(files: &str, total: u64) -> Vec<u8> {
        let pieces = total.div_ceil(16384) as usize;
        let mut v = format!(
            "d8:announce14:http://t/a/ann4:infod5:files{files}4:name3:top12:piece lengthi16384e6:pieces{}:",
            pieces * 20
        )
        .into_bytes();
        v.extend(std::iter::repeat_n(7u8, pieces * 20));
        v.extend_from_slice(b"ee");
        v
    }

    fn single(name: &str, length: u64) -> Vec<u8> {
        let pieces = length.div_ceil(16384) as usize;
        let mut v = format!(
            "d4:infod6:lengthi{length}e4:name{}:{name}12:piece lengthi16384e6:pieces{}:",
            name.len(),
            pieces * 20
        )
        .into_bytes();
        v.extend(std::iter::repeat_n(1u8, pieces * 20));
        v.extend_from_slice(b"ee");
        v
    }

    /// The error and its sources, as a CLI would print them.
    fn err_text(bytes: &[u8]) -> String {
        let e = Metainfo::from_bytes(bytes).expect_err("hostile torrent accepted");
        let mut text = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            text += &format!(": {s}");
            src = s.source();
        }
        text
    }

    #[test]
    fn parses_single_file() {
        let m = Metainfo::from_bytes(&single("a.bin", 40000)).unwrap();
        assert_eq!(m.info.name, "a.bin");
        assert!(!m.info.multi_file);
        assert_eq!(m.info.files.len(), 1);
        assert_eq!(m.info.files[0].path, PathBuf::from("a.bin"));
        assert_eq!(m.info.lengths.piece_count(), 3);
        assert_eq!(m.info.pieces.len(), 3);
    }

    #[test]
    fn parses_multi_file_with_name_prefix() {
        let files = "ld6:lengthi10e4:pathl1:a1:beed4:attr1:p6:lengthi0e4:pathl4:.pad1:0ee\
                     d6:lengthi20000e4:pathl1:ceee";
        let m = Metainfo::from_bytes(&multi(files, 20010)).unwrap();
        let paths: Vec<_> = m.info.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            paths,
            vec![
                PathBuf::from("top/a/b"),
                PathBuf::from("top/.pad/0"),
                PathBuf::from("top/c")
            ]
        );
        assert_eq!(m.trackers(), vec!["http://t/a/ann".to_string()]);
        // piece 0 holds a/b and the start of c; the empty file is never part of a piece.
        let p0 = m.info.lengths.piece(0).unwrap();
        assert_eq!(m.info.files_of_piece(p0), vec![0, 2]);
        let p1 = m.info.lengths.piece(1).unwrap();
        assert_eq!(m.info.files_of_piece(p1), vec![2]);
        assert_eq!(m.info.file_range(2), Some((10, 20010)));
        assert_eq!(m.info.pad_files, vec![1]);
    }

    #[test]
    fn files_of_piece_matches_brute_force() {
        // Files of mixed sizes (zeros included) straddling 16 KiB pieces.
        let sizes: Vec<u64> = (0..60u64).map(|i| (i * 7919) % 23_000 * (i % 3)).collect();
        let total: u64 = sizes.iter().sum();
        let body: String = sizes
            .iter()
            .enumerate()
            .map(|(i, l)| format!("d6:lengthi{l}e4:pathl3:f{i:02}ee"))
            .collect();
        let m = Metainfo::from_bytes(&multi(&format!("l{body}e"), total)).unwrap();
        for p in m.info.lengths.pieces() {
            let ps = m.info.lengths.piece_offset(p);
            let pe = ps + u64::from(m.info.lengths.piece_size(p));
            let want: Vec<usize> = (0..sizes.len())
                .filter(|&i| {
                    let s: u64 = sizes[..i].iter().sum();
                    let e = s + sizes[i];
                    assert_eq!(m.info.file_range(i), Some((s, e)));
                    s < e && s < pe && e > ps
                })
                .collect();
            assert_eq!(m.info.files_of_piece(p), want, "piece {}", p.get());
        }
    }

    #[test]
    fn info_hash_covers_raw_noncanonical_bytes() {
        // Keys out of order inside info: the hash must be over the bytes as written.
        let mut v = b"d4:infod4:name1:x6:lengthi5e12:piece lengthi16384e6:pieces20:".to_vec();
        v.extend([9u8; 20]);
        v.extend_from_slice(b"ee");
        let m = Metainfo::from_bytes(&v).unwrap();
        let start = 7;
        let raw = &v[start..v.len() - 1];
        let want: [u8; 20] = Sha1::digest(raw).into();
        assert_eq!(m.info_hash, want);
        assert_eq!(m.info_bytes, raw);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let files = "ld6:lengthi10e4:pathl1:aeee";
        let full = multi(files, 10);
        assert!(Metainfo::from_bytes(&full).is_ok());
        for cut in 0..full.len() {
            assert!(Metainfo::from_bytes(&full[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"le", "(top level)"),
            (b"de", "info"),
            (b"d4:infoi1ee", "info"),
            (
                b"d4:infod6:lengthi1e4:namei1e12:piece lengthi16384e6:pieces0:ee",
                "info.name",
            ),
            (
                b"d4:infod6:lengthi1e4:name1:x12:piece length1:x6:pieces0:ee",
                "info.piece length",
            ),
            (
                b"d4:infod6:lengthi1e4:name1:x12:piece lengthi16384e6:piecesi0eee",
                "info.pieces",
            ),
            (
                b"d4:infod6:length1:x4:name1:x12:piece lengthi16384e6:pieces0:ee",
                "info.length",
            ),
            (
                b"d4:infod6:lengthi-1e4:name1:x12:piece lengthi16384e6:pieces0:ee",
                "info.length",
            ),
            (
                b"d4:infod4:name1:x12:piece lengthi16384e6:pieces0:ee",
                "neither",
            ),
            (b"d4:infod4:name1:x6:pieces0:ee", "info.piece length"),
            (
                b"d8:announcei1e4:infod6:lengthi0e4:name1:x12:piece lengthi16384e6:pieces0:ee",
                "announce",
            ),
            (
                b"d13:announce-listl1:ae4:infod6:lengthi0e4:name1:x12:piece lengthi16384e6:pieces0:ee",
                "announce-list[0]",
            ),
            (
                b"d13:creation date1:x4:infod6:lengthi0e4:name1:x12:piece lengthi16384e6:pieces0:ee",
                "creation date",
            ),
        ];
        for (input, want) in cases {
            let e = err_text(input);
            assert!(e.contains(want), "error {e:?} does not name {want:?}");
        }
        let e = err_text(&multi("ld4:pathl1:aeee", 0));
        assert!(e.contains("info.files[0].length"), "{e}");
        let e = err_text(&multi("ld6:lengthi1e4:pathli1eeee", 1));
        assert!(e.contains("info.files[0].path[0]"), "{e}");
        let e = err_text(&multi("ld6:lengthi1e4:pathleee", 1));
        assert!(e.contains("info.files[0].path"), "{e}");
        let e = err_text(&multi("le", 0));
        assert!(e.contains("info.files"), "{e}");
        let e = err_text(&multi("i3e", 0));
        assert!(e.contains("info.files"), "{e}");
    }

    #[test]
    fn pieces_must_be_whole_hashes_and_match_length() {
        let mut v = b"d4:infod6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces19:".to_vec();
        v.extend([0u8; 19]);
        v.extend_from_slice(b"ee");
        assert!(err_text(&v).contains("multiple of 20"));
        // 40000 bytes need 3 pieces; claim 2.
        let mut v = b"d4:infod6:lengthi40000e4:name1:x12:piece lengthi16384e6:pieces40:".to_vec();
        v.extend([0u8; 40]);
        v.extend_from_slice(b"ee");
        assert!(err_text(&v).contains("geometry"));
        // Non-power piece length not a multiple of 16 KiB.
        let mut v = b"d4:infod6:lengthi5e4:name1:x12:piece lengthi1000e6:pieces20:".to_vec();
        v.extend([0u8; 20]);
        v.extend_from_slice(b"ee");
        assert!(err_text(&v).contains("piece length"));
    }

    #[test]
    fn huge_lengths_are_errors_not_panics() {
        let max = i64::MAX;
        let files = format!(
            "ld6:lengthi{max}e4:pathl1:aeed6:lengthi{max}e4:pathl1:beed6:lengthi{max}e4:pathl1:ceee"
        );
        let e = err_text(&multi(&files, 0));
        assert!(e.contains("2^64"), "{e}");
        // One huge file: the piece count cannot match.
        let v = format!("d4:infod6:lengthi{max}e4:name1:x12:piece lengthi16384e6:pieces20:");
        let mut v = v.into_bytes();
        v.extend([0u8; 20]);
        v.extend_from_slice(b"ee");
        assert!(err_text(&v).contains("geometry"));
        assert!(matches!(
            Metainfo::from_bytes(&vec![b'0'; MAX_TORRENT_SIZE + 1]),
            Err(MetainfoError::TooLarge(_))
        ));
    }

    #[test]
    fn unsafe_paths_are_rejected_and_named() {
        let cases = [
            ("l2:..e", "top/.."),
            ("l1:a2:..1:be", "top/a/../b"),
            ("l1:.e", "top/."),
            ("l0:e", "top/"),
            ("l1:a0:1:be", "top/a//b"),
            ("l4:/etce", "top//etc"),
            ("l3:a/be", "top/a/b"),
            ("l3:a\0be", "top/a\0b"),
            ("l4:a\\..e", "top/a\\.."),
        ];
        for (path, shown) in cases {
            let files = format!("ld6:lengthi1e4:path{path}ee");
            match Metainfo::from_bytes(&multi(&files, 1)) {
                Err(MetainfoError::UnsafePath { path, .. }) => assert_eq!(path, shown),
                other => panic!("{shown:?} gave {other:?}"),
            }
        }
        for name in ["..", ".", "", "/etc", "a/b"] {
            match Metainfo::from_bytes(&single(name, 1)) {
                Err(MetainfoError::UnsafePath { path, .. }) => assert_eq!(path, name),
                other => panic!("name {name:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn colliding_paths_are_rejected() {
        let same = "ld6:lengthi1e4:pathl1:aeed6:lengthi1e4:pathl1:aeee";
        match Metainfo::from_bytes(&multi(same, 2)) {
            Err(MetainfoError::PathCollision(p)) => assert_eq!(p, "top/a"),
            other => panic!("{other:?}"),
        }
        let prefix = "ld6:lengthi1e4:pathl1:a1:beed6:lengthi1e4:pathl1:aeee";
        match Metainfo::from_bytes(&multi(prefix, 2)) {
            Err(MetainfoError::PathCollision(p)) => assert_eq!(p, "top/a"),
            other => panic!("{other:?}"),
        }
        let fine = "ld6:lengthi1e4:pathl1:a1:beed6:lengthi1e4:pathl2:abeee";
        assert!(Metainfo::from_bytes(&multi(fine, 2)).is_ok());
    }

    #[test]
    fn piece_size_rule() {
        const K: u64 = 1024;
        const M: u64 = 1024 * K;
        const G: u64 = 1024 * M;
        assert_eq!(auto_piece_length(1), 256 * K);
        assert_eq!(auto_piece_length(100 * M), 256 * K);
        assert_eq!(auto_piece_length(4000 * 256 * K), 256 * K);
        assert_eq!(auto_piece_length(4000 * 256 * K + 1), 512 * K);
        assert_eq!(auto_piece_length(G), 512 * K);
        assert_eq!(auto_piece_length(10 * G), 4 * M);
        assert_eq!(auto_piece_length(1 << 50), 16 * M);
        for total in [2 * G, 3 * G + 7, 20 * G, 60 * G] {
            let p = auto_piece_length(total);
            let n = total.div_ceil(p);
            assert!(p.is_power_of_two());
            assert!((1000..=4000).contains(&n), "{total} -> {p} -> {n} pieces");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("262144"), Some(262144));
        assert_eq!(parse_size("256K"), Some(262144));
        assert_eq!(parse_size("256kib"), Some(262144));
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("4Q"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_piece_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_piece_size("16K").unwrap(), 16 << 10);
        assert!(parse_piece_size("8K").is_err());
        assert!(parse_piece_size("3M").is_err());
        assert!(parse_piece_size("128M").is_err());
        assert!(parse_piece_size("").is_err());
    }

    fn sequential_hashes(p: &Payload, l: &Lengths) -> Vec<[u8; 20]> {
        let mut stream = Vec::new();
        for f in &p.disk_files {
            stream.extend(fs::read(p.root.join(&f.path)).unwrap());
        }
        stream
            .chunks(l.piece_length() as usize)
            .map(|c| Sha1::digest(c).into())
            .collect()
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("payload");
        fs::create_dir_all(d.join("b/nested")).unwrap();
        fs::create_dir_all(d.join(".git/objects")).unwrap();
        fs::write(d.join(".git/objects/x"), b"secret").unwrap();
        fs::write(d.join("b/nested/z"), vec![3u8; 70000]).unwrap();
        fs::write(d.join("a"), b"hello").unwrap();
        fs::write(d.join("B"), b"upper").unwrap();
        fs::write(d.join("empty"), b"").unwrap();
        t
    }

    #[test]
    fn scan_is_sorted_skips_git_and_prefixes_name() {
        let t = tree();
        let p = scan(&t.path().join("payload"), None).unwrap();
        let got: Vec<_> = p.disk_files.iter().map(|f| f.path.clone()).collect();
        let want: Vec<PathBuf> = [
            "payload/B",
            "payload/a",
            "payload/b/nested/z",
            "payload/empty",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
        assert_eq!(p.total_length(), 70010);
        let renamed = scan(&t.path().join("payload"), Some("other")).unwrap();
        assert_eq!(
            renamed.torrent_files()[2].path,
            PathBuf::from("other/b/nested/z")
        );
        assert!(scan(&t.path().join("payload"), Some("..")).is_err());
    }

    #[test]
    fn scan_refuses_symlinks_and_fifos() {
        let t = tree();
        let d = t.path().join("payload");
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        match scan(&d, None) {
            Err(MetainfoError::Symlink(p)) => assert!(p.ends_with("link")),
            other => panic!("{other:?}"),
        }
        fs::remove_file(d.join("link")).unwrap();
        let fifo = std::ffi::CString::new(d.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `fifo` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        match scan(&d, None) {
            Err(MetainfoError::SpecialFile(p)) => assert!(p.ends_with("fifo")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scan_refuses_empty_payload() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("e")).unwrap();
        fs::write(t.path().join("e/zero"), b"").unwrap();
        assert!(matches!(
            scan(&t.path().join("e"), None),
            Err(MetainfoError::EmptyPayload(_))
        ));
    }

    #[test]
    fn assemble_is_deterministic_and_parses_back() {
        let t = tree();
        let opts = BuildOptions {
            trackers: vec!["http://127.0.0.1:8998/announce".into(), "http://b/".into()],
            piece_length: Some(16384),
            creation_date: Some(1_700_000_000),
            ..Default::default()
        };
        let build = || {
            let p = scan(&t.path().join("payload"), None).unwrap();
            let l = payload_lengths(&p, &opts).unwrap();
            let h = sequential_hashes(&p, &l);
            assemble(&p, &opts, l, &h).unwrap()
        };
        let (m1, b1) = build();
        let (m2, b2) = build();
        assert_eq!(b1, b2);
        assert_eq!(m1, m2);
        // Canonical: re-encoding the decoded bytes gives the same bytes.
        assert_eq!(bencode::decode(&b1).unwrap().to_owned_value().encode(), b1);
        for cut in 0..b1.len() {
            assert!(Metainfo::from_bytes(&b1[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(m1.info.lengths.piece_count(), 5);
        assert_eq!(m1.info.files.len(), 4);
        assert_eq!(m1.info.files[2].path, PathBuf::from("payload/b/nested/z"));
        assert_eq!(
            m1.announce.as_deref(),
            Some("http://127.0.0.1:8998/announce")
        );
        assert_eq!(m1.trackers().len(), 2);
        assert_eq!(
            m1.created_by.as_deref(),
            Some(concat!("corvid ", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn build_through_pool_matches_sequential_oracle() {
        let t = tree();
        let opts = BuildOptions {
            piece_length: Some(16384),
            creation_date: Some(1),
            ..Default::default()
        };
        let p = scan(&t.path().join("payload"), None).unwrap();
        let l = payload_lengths(&p, &opts).unwrap();
        let (_, want) = assemble(&p, &opts, l, &sequential_hashes(&p, &l)).unwrap();
        for threads in [1, 3] {
            let pool = HashPool::new(threads);
            let mut last = 0;
            let (m, bytes) =
                build(&t.path().join("payload"), &opts, &pool, &mut |b| last = b).unwrap();
            assert_eq!(bytes, want, "{threads} threads");
            assert_eq!(last, m.info.lengths.total_length());
        }
    }

    /// `--align`: every file with bytes starts a piece, the pads are `.pad/N` with `attr`
    /// `p`, never on disk, and the hashes are those of the files with zeros between them.
    #[test]
    fn aligned_build_starts_every_file_on_a_piece() {
        let t = tree();
        let pl = 16384u64;
        let opts = BuildOptions {
            piece_length: Some(pl),
            creation_date: Some(1),
            align: true,
            ..Default::default()
        };
        let pool = HashPool::new(2);
        let (m, bytes) = build(&t.path().join("payload"), &opts, &pool, &mut |_| {}).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("4:attr1:p"));
        assert!(!m.info.pad_files.is_empty());
        let mut oracle = Vec::new();
        for (i, f) in m.info.files.iter().enumerate() {
            let (start, _) = m.info.file_range(i).unwrap();
            if f.pad {
                assert!(m.info.pad_files.contains(&i));
                assert_eq!(f.path, Path::new("payload/.pad").join(f.length.to_string()));
                assert!(f.length > 0 && f.length < pl, "{f:?}");
                oracle.extend(vec![0u8; f.length as usize]);
            } else {
                if f.length > 0 {
                    assert_eq!(start % pl, 0, "{} starts at {start}", f.path.display());
                }
                oracle.extend(fs::read(t.path().join(&f.path)).unwrap());
            }
        }
        // The last file is not padded: the payload ends where it ends.
        assert!(!m.info.files.last().unwrap().pad);
        let want: Vec<[u8; 20]> = oracle
            .chunks(pl as usize)
            .map(|c| Sha1::digest(c).into())
            .collect();
        assert_eq!(m.info.pieces, want);
        assert!(!t.path().join("payload/.pad").exists());
        // Without alignment nothing changes.
        let plain = BuildOptions {
            align: false,
            ..opts
        };
        let (m, _) = build(&t.path().join("payload"), &plain, &pool, &mut |_| {}).unwrap();
        assert!(m.info.pad_files.is_empty());
    }

    /// Pads may share a path (they are never opened); a `p` file that is not a short
    /// `.pad/N` is refused, as is an unsafe pad path.
    #[test]
    fn pad_files_parse_and_malformed_ones_are_refused() {
        let pad = |path: &str, len: u64| format!("d4:attr1:p6:lengthi{len}e4:pathl{path}ee");
        let real = "d6:lengthi10e4:pathl1:aee";
        let ok = format!(
            "l{real}{}{real2}{}d6:lengthi1e4:pathl1:ceee",
            pad("4:.pad1:6", 6),
            pad("4:.pad1:6", 6),
            real2 = "d6:lengthi10e4:pathl1:bee"
        );
        let m = Metainfo::from_bytes(&multi(&ok, 33)).unwrap();
        assert_eq!(m.info.pad_files, vec![1, 3]);
        assert!(m.info.files[1].pad && !m.info.files[0].pad);
        for (bad, why) in [
            (pad("3:etc6:passwd", 6), "pad file"),
            (pad("1:6", 6), "pad file"),
            (pad("4:.pad2:x1", 6), "pad file"),
            (pad("4:.pad1:61:7", 6), "pad file"),
            (pad("4:.pad2:..", 6), "unsafe"),
            (
                pad("4:.pad5:99999", 99999),
                "not less than the piece length",
            ),
        ] {
            let list = format!("l{real}{bad}d6:lengthi1e4:pathl1:ceee");
            let total = 11 + if bad.contains("99999") { 99999 } else { 6 };
            let err = Metainfo::from_bytes(&multi(&list, total))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn bep47_exec_bits_and_inside_links_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let t = tree();
        let d = t.path().join("payload");
        fs::create_dir_all(d.join("bin")).unwrap();
        fs::write(d.join("bin/run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(d.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("../b/nested/z", d.join("bin/z")).unwrap();
        std::os::unix::fs::symlink("a", d.join("link-a")).unwrap();
        let pool = HashPool::new(1);
        let opts = BuildOptions::default();
        let (m, _) = build(&d, &opts, &pool, &mut |_| {}).unwrap();
        let exec: Vec<_> = m
            .info
            .executable
            .iter()
            .map(|&i| &m.info.files[i].path)
            .collect();
        assert_eq!(exec, vec![&PathBuf::from("payload/bin/run")]);
        assert_eq!(m.info.symlinks.len(), 2);
        let z = &m.info.symlinks[0];
        assert_eq!(z.path, PathBuf::from("payload/bin/z"));
        assert_eq!(z.target, vec!["b", "nested", "z"]);
        assert_eq!(z.relative_target(), PathBuf::from("../b/nested/z"));
        let a = &m.info.symlinks[1];
        assert_eq!(a.relative_target(), PathBuf::from("a"));
        // Symlinks are not storage files.
        assert!(m
            .info
            .files
            .iter()
            .all(|f| !f.path.ends_with("z") || f.length == 70000));

        // Links that leave the tree or are absolute are refused.
        for bad in ["../outside", "bin/../../x", "/etc/passwd"] {
            let _ = fs::remove_file(d.join("bad"));
            std::os::unix::fs::symlink(bad, d.join("bad")).unwrap();
            assert!(
                matches!(scan(&d, None), Err(MetainfoError::Symlink(_))),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn bep47_hostile_symlinks_are_refused() {
        let entry = |extra: &str| {
            multi(
                &format!("ld6:lengthi10e4:pathl1:aeed4:attr1:l6:lengthi0e4:pathl1:le{extra}ee"),
                10,
            )
        };
        let ok = Metainfo::from_bytes(&entry("12:symlink pathl1:ae")).unwrap();
        assert_eq!(ok.info.symlinks[0].target, vec!["a"]);
        assert_eq!(ok.info.files.len(), 1);
        for bad in [
            "12:symlink pathl2:..e",
            "12:symlink pathle",
            "",
            "12:symlink path1:a",
        ] {
            assert!(Metainfo::from_bytes(&entry(bad)).is_err(), "accepted {bad}");
        }
        // A symlink with bytes, and a symlink colliding with a file, are refused.
        let with_len = multi(
            "ld6:lengthi10e4:pathl1:aeed4:attr1:l6:lengthi3e4:pathl1:le12:symlink pathl1:aeee",
            10,
        );
        assert!(Metainfo::from_bytes(&with_len).is_err());
        let clash = multi(
            "ld6:lengthi10e4:pathl1:aeed4:attr1:l6:lengthi0e4:pathl1:ae12:symlink pathl1:aeee",
            10,
        );
        assert!(Metainfo::from_bytes(&clash).is_err());
    }

    #[test]
    fn single_file_build() {
        let t = tree();
        let p = scan(&t.path().join("payload/b/nested/z"), Some("renamed")).unwrap();
        assert!(!p.multi_file);
        assert_eq!(
            p.root,
            fs::canonicalize(t.path().join("payload/b/nested")).unwrap()
        );
        let opts = BuildOptions::default();
        let l = payload_lengths(&p, &opts).unwrap();
        assert_eq!(l.piece_length(), AUTO_MIN_PIECE);
        let h = sequential_hashes(&p, &l);
        let (m, _) = assemble(&p, &opts, l, &h).unwrap();
        assert_eq!(m.info.files[0].path, PathBuf::from("renamed"));
        assert_eq!(m.info.lengths.total_length(), 70000);
        assert!(m.announce.is_none());
    }
}
