//! The resume record: which pieces a download had verified, so a restart keeps them
//! without hashing the payload again.
//!
//! One small file per torrent, outside the payload tree (`DEST/.corvid/<info-hash>.resume`
//! for `corvid peer`, `PATH/.corvid/<info-hash>.<tag>.resume` for a release, so it is
//! never part of the directory that is renamed into place or compared). It holds the
//! info-hash, the piece count, the bitfield of verified pieces and, per payload file, its
//! length, mtime, ctime and inode number as `stat` reported them when the record was
//! written. The body is bencode, wrapped with a version and the SHA-1 of the body, so a
//! record torn or damaged on disk is rejected ([`RecordStatus::Invalid`]) rather than
//! trusted: a bit flipped in the bitfield must not turn a missing piece into a kept one.
//!
//! # What a restart trusts
//!
//! Trust is per file. A file whose length, mtime, ctime and inode all equal the record's
//! has not been written since the record was made, so the pieces the record lists as
//! verified are kept without hashing, provided every file such a piece overlaps matches.
//! Every piece overlapping a file that does not match is hashed again (whether the record
//! listed it or not: the file may hold pieces finished after the record). No record, a
//! record that cannot be read or decoded, or one for another torrent means the whole
//! payload is checked, as before records existed, and the report says why.
//!
//! Why per file works: a store through the shared mapping updates the file's mtime and
//! ctime (at the write fault that makes a clean page writable), so a file that corvid was
//! writing when it was SIGKILLed does not match its last record and gets re-hashed, while
//! files that were complete before the kill match and are trusted. corvid never writes a
//! verified piece again, so a completed file's times stay put. (A store into a page that
//! is already dirty takes no fault and leaves the times alone, so a file can also match
//! although corvid wrote unverified pieces into it after the record: harmless, because
//! only the pieces the record lists are trusted, and those were synced before it was
//! written and are never written again. Pieces verified after the last record are
//! fetched again.) Pieces are picked rarest first with random ties, so in the middle of a
//! download most files are being written: after a SIGKILL every file written since the
//! record's own sync is re-hashed. A clean stop (SIGTERM, a stall) writes a final record
//! with fresh times, after which nothing is re-hashed. Anything else that writes
//! a file (an editor, `cp`, `dd`) changes its mtime and ctime too; ctime and the inode are
//! recorded as well as the mtime because `touch -d`, `cp -p` and `rsync -t` can set an
//! mtime back, but nothing in user space can set a ctime, and a file replaced by a rename
//! has a new inode.
//!
//! # Writing it
//!
//! The record never claims a piece whose bytes are not durable: before writing, the files
//! holding pieces verified since the last record are synced (`msync(MS_SYNC)`, i.e.
//! `fdatasync` of the mapped range). Then the record goes to a temporary file beside it,
//! which is fsynced and renamed over the old record (and the directory fsynced), so a
//! crash leaves either the old record or the new one, never a torn one. The node writes
//! it from its own thread at most about once a second and only when pieces were
//! verified, again on completion and at shutdown. A record that cannot be written (a full
//! or read-only disk) is reported once as a warning: the record is an optimisation, the
//! download goes on without it.
//!
//! Times are compared exactly, as `stat` reports them (seconds and nanoseconds). The
//! stamps of the files are taken before [`Storage::create`] touches them, because its
//! `fallocate` updates mtime and ctime on current kernels even when every block is already
//! allocated; the record is rewritten right after the start-up check with the new times.

use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::bencode::{self, OwnedValue, Value};
use crate::geometry::{Lengths, PieceIndex};
use crate::wire::Bitfield;

mod write;
use write::refuse_symlinked_dir;
pub use write::RecordWriter;

/// Format version written into every record; any other version is [`RecordStatus::Invalid`].
pub const VERSION: i64 = 1;

/// Where `corvid peer` keeps the record of `info_hash` for a download into `dir`:
/// `dir/.corvid/<info-hash hex>.resume`, or `dir/.corvid/<hex>.<label>.resume` when one
/// directory serves several destinations (the release layout's tags).
pub fn record_path(dir: &Path, info_hash: &[u8; 20], label: Option<&str>) -> PathBuf {
    let hex: String = info_hash.iter().map(|b| format!("{b:02x}")).collect();
    let name = match label {
        Some(l) => format!("{hex}.{l}.resume"),
        None => format!("{hex}.resume"),
    };
    dir.join(".corvid").join(name)
}

/// Where a node keeps its record, and what happens to it on completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeConfig {
    pub path: PathBuf,
    /// Keep (and update) the record once every piece is verified, so a restart of a
    /// finished download starts seeding without hashing. The release layout removes it
    /// instead: the directory it describes is renamed away on completion.
    pub keep_when_complete: bool,
    /// The least time between two records while downloading. Each record first syncs the
    /// files it vouches for, which writes their dirty pages back to disk there and then:
    /// on a fast link that writeback competes with the transfer for the CPU (measured:
    /// a record a second took ~20% of the receiving process's CPU on a 1 GiB loopback
    /// transfer and cut its rate by a fifth). After a crash, pieces newer than the last
    /// record are re-hashed, not re-downloaded, so a longer interval costs only hashing.
    pub interval: std::time::Duration,
}

impl ResumeConfig {
    /// The default [`ResumeConfig::interval`].
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
}

/// What `stat` says about one payload file; two equal stamps mean the file was not
/// written in between (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub length: u64,
    pub mtime_s: i64,
    pub mtime_ns: i64,
    pub ctime_s: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl FileStamp {
    pub fn of(m: &Metadata) -> FileStamp {
        FileStamp {
            length: m.len(),
            mtime_s: m.mtime(),
            mtime_ns: m.mtime_nsec(),
            ctime_s: m.ctime(),
            ctime_ns: m.ctime_nsec(),
            ino: m.ino(),
        }
    }

    /// The stamp of the regular file at `path` (not following a symlink), or `None` when
    /// there is no regular file there.
    pub fn of_path(path: &Path) -> Option<FileStamp> {
        std::fs::symlink_metadata(path)
            .ok()
            .filter(Metadata::is_file)
            .map(|m| FileStamp::of(&m))
    }

    fn encode(&self) -> OwnedValue {
        OwnedValue::List(vec![
            OwnedValue::Int(i64::try_from(self.length).unwrap_or(i64::MAX)),
            OwnedValue::Int(self.mtime_s),
            OwnedValue::Int(self.mtime_ns),
            OwnedValue::Int(self.ctime_s),
            OwnedValue::Int(self.ctime_ns),
            // Inode numbers use all 64 bits on some filesystems: stored two's complement.
            OwnedValue::Int(self.ino as i64),
        ])
    }

    fn decode(v: &Value<'_>) -> Result<Option<FileStamp>, RecordError> {
        let bad = || RecordError::Field("files");
        let l = v.as_list().ok_or_else(bad)?;
        if l.is_empty() {
            return Ok(None);
        }
        let ints: Vec<i64> = l
            .iter()
            .map(Value::as_int)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let [length, mtime_s, mtime_ns, ctime_s, ctime_ns, ino] = ints[..] else {
            return Err(bad());
        };
        let ns = 0..1_000_000_000;
        if length < 0 || !ns.contains(&mtime_ns) || !ns.contains(&ctime_ns) {
            return Err(bad());
        }
        Ok(Some(FileStamp {
            length: length as u64,
            mtime_s,
            mtime_ns,
            ctime_s,
            ctime_ns,
            ino: ino as u64,
        }))
    }
}

/// Why a record could not be read, decoded or written. Each names the path or the field.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot {action} resume record {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("resume record is {0} bytes, more than a record for this torrent can be")]
    TooLarge(u64),
    #[error("resume record is damaged ({0})")]
    Bencode(#[from] bencode::Error),
    #[error("resume record has version {0}, this corvid reads version {VERSION}")]
    Version(i64),
    #[error("resume record's checksum does not match its contents (damaged on disk)")]
    Checksum,
    #[error("resume record's field {0:?} is missing or malformed")]
    Field(&'static str),
    #[error("cannot make {} durable before recording it: {source}", path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: crate::storage::StorageError,
    },
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub info_hash: [u8; 20],
    pub have: Bitfield,
    /// One per payload file, in torrent order; `None` for a file that could not be
    /// stamped when the record was written (it never matches).
    pub files: Vec<Option<FileStamp>>,
}

impl Record {
    /// The file's bytes: `d4:body<bencode>4:sha1<20 bytes>7:versioni1ee`, the body being
    /// `d5:filesl<stamps>e4:have<bitfield>9:info hash<20>6:piecesi<n>ee`.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = OwnedValue::dict();
        body.insert(
            "files",
            OwnedValue::List(
                self.files
                    .iter()
                    .map(|f| match f {
                        Some(s) => s.encode(),
                        None => OwnedValue::List(Vec::new()),
                    })
                    .collect(),
            ),
        );
        body.insert("have", OwnedValue::bytes(self.have.as_bytes()));
        body.insert("info hash", OwnedValue::bytes(self.info_hash));
        body.insert("pieces", OwnedValue::Int(i64::from(self.have.len())));
        let body = body.encode();
        let sha: [u8; 20] = Sha1::digest(&body).into();
        let mut outer = OwnedValue::dict();
        outer.insert("body", OwnedValue::Bytes(body));
        outer.insert("sha1", OwnedValue::bytes(sha));
        outer.insert("version", OwnedValue::Int(VERSION));
        outer.encode()
    }

    /// Decodes a record; anything malformed is an error naming what, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let outer = bencode::decode(bytes)?;
        let outer = outer.as_dict().ok_or(RecordError::Field("record"))?;
        let version = outer
            .get(b"version")
            .and_then(Value::as_int)
            .ok_or(RecordError::Field("version"))?;
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let body = outer
            .get(b"body")
            .and_then(Value::as_bytes)
            .ok_or(RecordError::Field("body"))?;
        let sha = outer
            .get(b"sha1")
            .and_then(Value::as_bytes)
            .ok_or(RecordError::Field("sha1"))?;
        if sha != Sha1::digest(body).as_slice() {
            return Err(RecordError::Checksum);
        }
        let body = bencode::decode(body)?;
        let body = body.as_dict().ok_or(RecordError::Field("body"))?;
        let info_hash: [u8; 20] = body
            .get(b"info hash")
            .and_then(Value::as_bytes)
            .and_then(|b| b.try_into().ok())
            .ok_or(RecordError::Field("info hash"))?;
        let pieces = body
            .get(b"pieces")
            .and_then(Value::as_int)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(RecordError::Field("pieces"))?;
        let have = body
            .get(b"have")
            .and_then(Value::as_bytes)
            .ok_or(RecordError::Field("have"))?;
        if have.len() != (pieces as usize).div_ceil(8) {
            return Err(RecordError::Field("have"));
        }
        let bits = Bitfield::from_bytes(have, pieces);
        if bits.as_bytes() != have {
            // Bits set past the last piece: not something corvid writes.
            return Err(RecordError::Field("have"));
        }
        let files = body
            .get(b"files")
            .and_then(Value::as_list)
            .ok_or(RecordError::Field("files"))?
            .iter()
            .map(FileStamp::decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Record {
            info_hash,
            have: bits,
            files,
        })
    }

    /// Reads the record at `path`: `Ok(None)` when there is none. Reads at most
    /// `max_len` bytes, so a huge file put there is refused without reading it all.
    pub fn load(path: &Path, max_len: u64) -> Result<Option<Record>, RecordError> {
        let io_err = |source| RecordError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            refuse_symlinked_dir(dir).map_err(io_err)?;
        }
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags_nofollow()
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        f.take(max_len + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > max_len {
            return Err(RecordError::TooLarge(bytes.len() as u64));
        }
        Record::decode(&bytes).map(Some)
    }

    /// Why this record does not describe the torrent (`info_hash`, `lengths`, files of
    /// `file_lengths`), or `None` when it does.
    pub fn mismatch(
        &self,
        info_hash: &[u8; 20],
        lengths: Lengths,
        file_lengths: &[u64],
    ) -> Option<String> {
        if &self.info_hash != info_hash {
            return Some("the record is for another torrent".into());
        }
        if self.have.len() != lengths.piece_count() {
            return Some(format!(
                "the record counts {} pieces, the torrent {}",
                self.have.len(),
                lengths.piece_count()
            ));
        }
        if self.files.len() != file_lengths.len() {
            return Some(format!(
                "the record lists {} files, the torrent {}",
                self.files.len(),
                file_lengths.len()
            ));
        }
        None
    }
}

/// A generous bound on the size of a record for a torrent: the bitfield, a few dozen
/// bytes per file and some slack.
pub fn max_record_len(pieces: u32, files: usize) -> u64 {
    4096 + u64::from(pieces).div_ceil(8) + 160 * files as u64
}

/// `O_NOFOLLOW` on an `OpenOptions`: a record path that is a symlink is not followed.
trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW)
    }
}

/// How the start-up went, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// A record matched the torrent and vouched for the files that still match it.
    Used,
    /// No record (a first run, or a node that keeps none).
    Absent,
    /// A record for another torrent or another file layout.
    Mismatch,
    /// A record that could not be read or decoded (damaged, torn, not a record).
    Invalid,
    /// The node keeps no record (seeding).
    Off,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Used => "used",
            RecordStatus::Absent => "absent",
            RecordStatus::Mismatch => "mismatch",
            RecordStatus::Invalid => "invalid",
            RecordStatus::Off => "off",
        }
    }
}

/// The start-up check, as reported (in JSON with these field names, in this order).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResumeReport {
    pub record: RecordStatus,
    /// Why the record was not used (or which files did not match).
    pub reason: Option<String>,
    /// Pieces kept on the record's word, without hashing.
    pub trusted_pieces: u32,
    /// Pieces hashed at start, and their bytes.
    pub rechecked_pieces: u32,
    pub rechecked_bytes: u64,
    /// What a base release supplied (only when one was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse: Option<crate::reuse::ReuseReport>,
}

impl ResumeReport {
    pub fn off() -> ResumeReport {
        ResumeReport {
            record: RecordStatus::Off,
            reason: None,
            trusted_pieces: 0,
            rechecked_pieces: 0,
            rechecked_bytes: 0,
            reuse: None,
        }
    }
}

/// What the record said at start.
#[derive(Debug)]
pub enum Loaded {
    /// No record is kept.
    Off,
    Absent,
    Invalid(String),
    Found(Record),
}

impl Loaded {
    /// Reads the record of `cfg` (if any) for a torrent of `pieces` pieces and `files`
    /// files.
    pub fn read(cfg: Option<&ResumeConfig>, pieces: u32, files: usize) -> Loaded {
        let Some(cfg) = cfg else {
            return Loaded::Off;
        };
        match Record::load(&cfg.path, max_record_len(pieces, files)) {
            Ok(Some(r)) => Loaded::Found(r),
            Ok(None) => Loaded::Absent,
            Err(e) => Loaded::Invalid(e.to_string()),
        }
    }
}

/// The start-up decision: pieces kept as they are, pieces to hash.
#[derive(Debug, Clone)]
pub struct StartPlan {
    pub trusted: Bitfield,
    pub recheck: Vec<PieceIndex>,
    pub report: ResumeReport,
}

/// Decides what a restart keeps and what it hashes, from the record and the stamps of
/// the files as they are now (`now[i]`: `None` for a file that is missing, not a regular
/// file, or was replaced). Without a usable record every piece is hashed, unless no file
/// holds any byte yet (a fresh download: hashing zeros finds nothing).
pub fn plan(
    loaded: Loaded,
    info_hash: &[u8; 20],
    lengths: Lengths,
    file_lengths: &[u64],
    now: &[Option<FileStamp>],
) -> StartPlan {
    let total = lengths.piece_count();
    let (status, reason, record) = match loaded {
        Loaded::Off => (RecordStatus::Off, None, None),
        Loaded::Absent => (RecordStatus::Absent, None, None),
        Loaded::Invalid(why) => (RecordStatus::Invalid, Some(why), None),
        Loaded::Found(r) => match r.mismatch(info_hash, lengths, file_lengths) {
            Some(why) => (RecordStatus::Mismatch, Some(why), None),
            None => (RecordStatus::Used, None, Some(r)),
        },
    };
    let layout = FileLayout::new(file_lengths);
    let mut trusted = Bitfield::new(total);
    let recheck: Vec<PieceIndex> = match &record {
        None => {
            let has_data = now.iter().any(|s| s.is_some_and(|s| s.length > 0));
            if has_data {
                lengths.pieces().collect()
            } else {
                Vec::new()
            }
        }
        Some(r) => {
            // Zero-length files hold no piece bytes: they always match.
            let ok: Vec<bool> = (0..file_lengths.len())
                .map(|i| {
                    file_lengths[i] == 0
                        || matches!((now.get(i), r.files.get(i)), (Some(Some(a)), Some(Some(b))) if a == b)
                })
                .collect();
            let mut recheck = Vec::new();
            for p in lengths.pieces() {
                if layout.files_of(lengths, p).all(|f| ok[f]) {
                    if r.have.get(p.get()) {
                        trusted.set(p.get());
                    }
                } else {
                    recheck.push(p);
                }
            }
            recheck
        }
    };
    let reason = reason.or_else(|| {
        let record = record.as_ref()?;
        let changed = (0..file_lengths.len())
            .filter(|&i| {
                file_lengths[i] > 0
                    && !matches!((now.get(i), record.files.get(i)), (Some(Some(a)), Some(Some(b))) if a == b)
            })
            .count();
        (changed > 0).then(|| format!("{changed} files changed since the record was written"))
    });
    let rechecked_bytes = recheck
        .iter()
        .map(|&p| u64::from(lengths.piece_size(p)))
        .sum();
    StartPlan {
        report: ResumeReport {
            record: status,
            reason,
            trusted_pieces: trusted.count(),
            rechecked_pieces: recheck.len() as u32,
            rechecked_bytes,
            reuse: None,
        },
        trusted,
        recheck,
    }
}

/// The files' places in the payload, to find the files a piece overlaps without a
/// [`Storage`].
struct FileLayout {
    /// Payload offset one past each file's last byte.
    ends: Vec<u64>,
}

impl FileLayout {
    fn new(file_lengths: &[u64]) -> FileLayout {
        let mut end = 0u64;
        FileLayout {
            ends: file_lengths
                .iter()
                .map(|&l| {
                    end = end.saturating_add(l);
                    end
                })
                .collect(),
        }
    }

    /// Indices of the non-empty files that piece `p` overlaps.
    fn files_of(&self, lengths: Lengths, p: PieceIndex) -> impl Iterator<Item = usize> + '_ {
        let start = lengths.piece_offset(p);
        let end = start + u64::from(lengths.piece_size(p));
        let first = self.ends.partition_point(|&e| e <= start);
        (first..self.ends.len())
            .take_while(move |&i| i == 0 || self.ends[i - 1] < end)
            .filter(move |&i| {
                let file_start = if i == 0 { 0 } else { self.ends[i - 1] };
                self.ends[i] > file_start
            })
    }
}

#[cfg(test)]
mod tests {
    use super::write::temp_path;
    use super::*;
    use crate::geometry::BLOCK_SIZE;
    use crate::storage::FileSpec;
    use crate::storage::Storage;
    use std::os::unix::fs::PermissionsExt;

    const PL: u64 = BLOCK_SIZE as u64;

    fn stamp(length: u64, t: i64) -> FileStamp {
        FileStamp {
            length,
            mtime_s: t,
            mtime_ns: 123_456_789,
            ctime_s: t + 1,
            ctime_ns: 5,
            ino: u64::MAX - 3,
        }
    }

    fn sample() -> Record {
        let mut have = Bitfield::new(13);
        for i in [0, 3, 12] {
            have.set(i);
        }
        Record {
            info_hash: [7; 20],
            have,
            files: vec![Some(stamp(100, 1_700_000_000)), None, Some(stamp(0, -5))],
        }
    }

    #[test]
    fn record_round_trip() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        let empty = Record {
            info_hash: [0; 20],
            have: Bitfield::new(0),
            files: vec![],
        };
        assert_eq!(Record::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn damaged_records_are_rejected_without_panicking() {
        let bytes = sample().encode();
        // every truncation
        for n in 0..bytes.len() {
            assert!(Record::decode(&bytes[..n]).is_err(), "truncated at {n}");
        }
        // every single bit flip: the checksum or the framing catches each one
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(Record::decode(&b).is_err(), "flip of bit {bit} at byte {i}");
            }
        }
        // garbage, deterministic
        let mut x = 0x1234_5678_9abc_def1u64;
        for len in 0..300 {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(Record::decode(&g).is_err());
        }
    }

    /// A record with a valid checksum around a body that is wrong in one field.
    fn with_body(body: OwnedValue, version: i64) -> Vec<u8> {
        let body = body.encode();
        let mut outer = OwnedValue::dict();
        outer.insert("sha1", OwnedValue::bytes(Sha1::digest(&body)));
        outer.insert("body", OwnedValue::Bytes(body));
        outer.insert("version", OwnedValue::Int(version));
        outer.encode()
    }

    #[test]
    fn well_formed_but_wrong_records_name_the_field() {
        let good = || {
            let mut b = OwnedValue::dict();
            b.insert("files", OwnedValue::List(vec![stamp(1, 2).encode()]));
            b.insert("have", OwnedValue::bytes([0x80u8]));
            b.insert("info hash", OwnedValue::bytes([1u8; 20]));
            b.insert("pieces", OwnedValue::Int(3));
            b
        };
        assert!(Record::decode(&with_body(good(), VERSION)).is_ok());
        let e = Record::decode(&with_body(good(), 2)).unwrap_err();
        assert!(matches!(e, RecordError::Version(2)), "{e}");
        let cases: Vec<(&str, OwnedValue, &str)> = vec![
            ("info hash", OwnedValue::bytes([1u8; 19]), "info hash"),
            ("pieces", OwnedValue::Int(-1), "pieces"),
            ("pieces", OwnedValue::Int(1 << 40), "pieces"),
            ("pieces", OwnedValue::Int(9), "have"),
            // a bit set past the last piece
            ("have", OwnedValue::bytes([0x81u8]), "have"),
            ("files", OwnedValue::Int(0), "files"),
            (
                "files",
                OwnedValue::List(vec![OwnedValue::List(vec![OwnedValue::Int(1)])]),
                "files",
            ),
            (
                "files",
                OwnedValue::List(vec![FileStamp {
                    mtime_ns: 1_000_000_000,
                    ..stamp(1, 2)
                }
                .encode()]),
                "files",
            ),
        ];
        for (key, value, field) in cases {
            let mut b = good();
            b.insert(key, value);
            let e = Record::decode(&with_body(b, VERSION)).unwrap_err();
            assert!(
                matches!(e, RecordError::Field(f) if f == field),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn load_absent_garbage_and_oversized() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.resume");
        assert!(Record::load(&p, 1000).unwrap().is_none());
        std::fs::write(&p, b"not a record at all").unwrap();
        assert!(matches!(
            Record::load(&p, 1000),
            Err(RecordError::Bencode(_))
        ));
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        assert!(matches!(
            Record::load(&p, 1000),
            Err(RecordError::TooLarge(1001))
        ));
        std::fs::write(&p, sample().encode()).unwrap();
        assert_eq!(Record::load(&p, 1000).unwrap(), Some(sample()));
        // a directory where the record should be: an error naming the path, not a panic
        let d = dir.path().join("d.resume");
        std::fs::create_dir(&d).unwrap();
        let e = Record::load(&d, 1000).unwrap_err();
        assert!(e.to_string().contains("d.resume"), "{e}");
    }

    fn lengths_of(files: &[u64], pl: u64) -> Lengths {
        let total: u64 = files.iter().sum();
        Lengths::new(total, pl, total.div_ceil(pl)).unwrap()
    }

    #[test]
    fn only_the_pieces_of_a_changed_file_are_rechecked() {
        // files: 2 pieces, 1.5 pieces, an empty one, 2.5 pieces (pieces 1..=3 straddle)
        let files = [2 * PL, 3 * PL / 2, 0, 5 * PL / 2];
        let l = lengths_of(&files, PL);
        assert_eq!(l.piece_count(), 6);
        let stamps: Vec<Option<FileStamp>> = files
            .iter()
            .enumerate()
            .map(|(i, &n)| Some(stamp(n, 1000 + i as i64)))
            .collect();
        let mut have = Bitfield::new(6);
        for i in [0, 1, 2, 3, 5] {
            have.set(i);
        }
        let record = Record {
            info_hash: [9; 20],
            have,
            files: stamps.clone(),
        };
        let run = |now: &[Option<FileStamp>]| {
            plan(Loaded::Found(record.clone()), &[9; 20], l, &files, now)
        };
        // nothing changed: exactly the recorded pieces, nothing hashed
        let p = run(&stamps);
        assert_eq!(p.trusted, record.have);
        assert!(p.recheck.is_empty());
        assert_eq!(p.report.record, RecordStatus::Used);
        assert_eq!(p.report.reason, None);
        // file 1 (bytes 2 PL .. 3.5 PL: pieces 2 and 3) has a new mtime
        let mut now = stamps.clone();
        now[1] = Some(FileStamp {
            mtime_ns: 1,
            ..stamps[1].unwrap()
        });
        let p = run(&now);
        let rechecked: Vec<u32> = p.recheck.iter().map(|p| p.get()).collect();
        assert_eq!(rechecked, vec![2, 3]);
        assert_eq!(p.trusted.ones().collect::<Vec<_>>(), vec![0, 1, 5]);
        assert_eq!(p.report.trusted_pieces, 3);
        assert_eq!(p.report.rechecked_pieces, 2);
        assert_eq!(p.report.rechecked_bytes, 2 * PL);
        assert!(p.report.reason.unwrap().contains("1 files changed"));
        // file 3 has another size (pieces 3, 4, 5; piece 4 was never verified: hashed
        // anyway, the file may hold it now)
        let mut now = stamps.clone();
        now[3] = Some(stamp(7, 1003));
        let p = run(&now);
        let rechecked: Vec<u32> = p.recheck.iter().map(|p| p.get()).collect();
        assert_eq!(rechecked, vec![3, 4, 5]);
        assert_eq!(p.trusted.ones().collect::<Vec<_>>(), vec![0, 1, 2]);
        // a new ctime alone (cp -p, touch -d) or a new inode is a change too
        for changed in [
            FileStamp {
                ctime_s: 1,
                ..stamps[0].unwrap()
            },
            FileStamp {
                ino: 1,
                ..stamps[0].unwrap()
            },
        ] {
            let mut now = stamps.clone();
            now[0] = Some(changed);
            let rechecked: Vec<u32> = run(&now).recheck.iter().map(|p| p.get()).collect();
            assert_eq!(rechecked, vec![0, 1]);
        }
        // a missing file; the empty file's stamp does not matter
        let mut now = stamps.clone();
        now[0] = None;
        now[2] = None;
        let rechecked: Vec<u32> = run(&now).recheck.iter().map(|p| p.get()).collect();
        assert_eq!(rechecked, vec![0, 1]);
    }

    #[test]
    fn without_a_usable_record_everything_is_rechecked() {
        let files = [3 * PL, PL];
        let l = lengths_of(&files, PL);
        let stamps = vec![Some(stamp(3 * PL, 1)), Some(stamp(PL, 1))];
        let record = Record {
            info_hash: [9; 20],
            have: Bitfield::full(4),
            files: stamps.clone(),
        };
        let check = |loaded: Loaded, status: RecordStatus, reason: &str| {
            let p = plan(loaded, &[9; 20], l, &files, &stamps);
            assert_eq!(p.report.record, status);
            assert_eq!(p.recheck.len(), 4, "{status:?}");
            assert_eq!(p.trusted.count(), 0);
            assert_eq!(p.report.rechecked_bytes, 4 * PL);
            assert!(
                p.report.reason.as_deref().unwrap_or("").contains(reason),
                "{:?}",
                p.report.reason
            );
        };
        check(Loaded::Absent, RecordStatus::Absent, "");
        check(Loaded::Off, RecordStatus::Off, "");
        check(Loaded::Invalid("bad".into()), RecordStatus::Invalid, "bad");
        let mut other = record.clone();
        other.info_hash[0] = 1;
        check(
            Loaded::Found(other),
            RecordStatus::Mismatch,
            "another torrent",
        );
        let mut short = record.clone();
        short.files.pop();
        check(Loaded::Found(short), RecordStatus::Mismatch, "files");
        let mut fewer = record.clone();
        fewer.have = Bitfield::full(3);
        check(Loaded::Found(fewer), RecordStatus::Mismatch, "pieces");
        // a fresh download (no file holds a byte) hashes nothing
        let p = plan(Loaded::Absent, &[9; 20], l, &files, &[None, None]);
        assert!(p.recheck.is_empty());
    }

    fn storage(dir: &Path, files: &[u64]) -> Storage {
        let specs: Vec<FileSpec> = files
            .iter()
            .enumerate()
            .map(|(i, &length)| FileSpec {
                path: PathBuf::from(format!("payload/f{i}")),
                length,
                pad: false,
            })
            .collect();
        Storage::create(dir, &specs, lengths_of(files, PL)).unwrap()
    }

    #[test]
    fn written_records_describe_the_files_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path(), &[2 * PL, PL, 0]);
        let path = record_path(dir.path(), &[3; 20], None);
        let mut w = RecordWriter::new(path.clone(), [3; 20]);
        let mut have = Bitfield::new(3);
        have.set(1);
        assert!(w.write(&s, &have, false).unwrap());
        assert!(
            !w.write(&s, &have, false).unwrap(),
            "nothing new: not rewritten"
        );
        assert!(
            !w.write(&s, &have, true).unwrap(),
            "same times: not rewritten"
        );
        // new times alone (a chmod changes the ctime) are recorded when asked for
        let f1 = dir.path().join(&s.files()[1].path);
        std::fs::set_permissions(&f1, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!w.write(&s, &have, false).unwrap());
        assert!(w.write(&s, &have, true).unwrap());
        let r = Record::load(&path, 10_000).unwrap().unwrap();
        assert_eq!(r.have, have);
        assert_eq!(r.info_hash, [3; 20]);
        for (i, spec) in s.files().iter().enumerate() {
            let now = FileStamp::of_path(&dir.path().join(&spec.path));
            assert_eq!(r.files[i], now, "file {i}");
        }
        assert!(!temp_path(&path).exists());
        // the next start trusts piece 1 and hashes nothing
        let stamps: Vec<_> = s
            .files()
            .iter()
            .map(|f| FileStamp::of_path(&dir.path().join(&f.path)))
            .collect();
        let p = plan(
            Loaded::Found(r),
            &[3; 20],
            s.lengths(),
            &[2 * PL, PL, 0],
            &stamps,
        );
        assert_eq!(p.trusted, have);
        assert!(p.recheck.is_empty());
        w.remove().unwrap();
        assert!(!path.exists());
        w.remove().unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path(), &[PL]);
        let path = record_path(dir.path(), &[4; 20], Some("v1"));
        assert!(path.ends_with(".corvid/0404040404040404040404040404040404040404.v1.resume"));
        let mut w = RecordWriter::new(path.clone(), [4; 20]);
        w.write(&s, &Bitfield::new(1), false).unwrap();
        let old = std::fs::read(&path).unwrap();
        // the temporary file cannot be created (a directory is in its place)
        std::fs::create_dir(temp_path(&path)).unwrap();
        let e = w.write(&s, &Bitfield::full(1), false).unwrap_err();
        assert!(e.to_string().contains(".tmp"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), old);
        std::fs::remove_dir(temp_path(&path)).unwrap();
        // the record's directory cannot be created (a file is in its place)
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let mut w2 = RecordWriter::new(blocked.join("x.resume"), [4; 20]);
        let e = w2.write(&s, &Bitfield::full(1), false).unwrap_err();
        assert!(e.to_string().contains("blocked"), "{e}");
        // a symlink planted as the record's directory is not followed, either way
        let elsewhere = tempfile::tempdir().unwrap();
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(elsewhere.path(), &planted).unwrap();
        let via_link = planted.join("y.resume");
        let e = RecordWriter::new(via_link.clone(), [4; 20])
            .write(&s, &Bitfield::full(1), false)
            .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        std::fs::write(elsewhere.path().join("y.resume"), &old).unwrap();
        assert!(Record::load(&via_link, 10_000).is_err());
        // and the first writer still works once the obstacle is gone
        assert!(w.write(&s, &Bitfield::full(1), false).unwrap());
        let r = Record::load(&path, 10_000).unwrap().unwrap();
        assert!(r.have.is_full());
        // a hard link planted at the temporary name is unlinked, not truncated through
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"someone else's").unwrap();
        std::fs::hard_link(&victim, temp_path(&path)).unwrap();
        assert!(w.write(&s, &Bitfield::new(1), false).unwrap());
        assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's");
        assert!(!Record::load(&path, 10_000).unwrap().unwrap().have.is_full());
    }
}
