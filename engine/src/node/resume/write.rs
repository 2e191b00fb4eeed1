//! Writing resume records: [`RecordWriter`] and the atomic write (temporary file, fsync,
//! rename, directory fsync) that refuses a symlinked record directory.
//!
//! Separate from the parent, which defines the record and decides at start what to trust
//! from it: this part only puts records on disk, safely, while the node runs.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{FileStamp, NoFollow, Record, RecordError};
use crate::storage::Storage;
use crate::wire::Bitfield;

/// Writes a torrent's record atomically, remembering what the record on disk claims.
#[derive(Debug)]
pub struct RecordWriter {
    path: PathBuf,
    info_hash: [u8; 20],
    /// The record this writer last wrote (`None`: not written yet).
    written: Option<Record>,
}

impl RecordWriter {
    pub fn new(path: PathBuf, info_hash: [u8; 20]) -> RecordWriter {
        RecordWriter {
            path,
            info_hash,
            written: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `have`: syncs the files of the pieces verified since the last record,
    /// stamps every file, and replaces the record atomically. Skipped (`Ok(false)`) when
    /// `have` is what the record already says, unless `restamp` asks to record the files'
    /// current times anyway (they change without new pieces too, e.g. when BEP 47 exec
    /// bits are applied on completion); then it is skipped only if they did not change.
    pub fn write(
        &mut self,
        storage: &Storage,
        have: &Bitfield,
        restamp: bool,
    ) -> Result<bool, RecordError> {
        let same_have = self.written.as_ref().is_some_and(|r| &r.have == have);
        if same_have && !restamp {
            return Ok(false);
        }
        let lengths = storage.lengths();
        let mut dirty = BTreeSet::new();
        for i in have.ones() {
            if self.written.as_ref().is_some_and(|r| r.have.get(i)) {
                continue;
            }
            let Some(p) = lengths.piece(i) else { continue };
            dirty.extend(storage.spans(p, 0, lengths.piece_size(p)).map(|s| s.file));
        }
        for f in dirty {
            storage.sync_file(f).map_err(|source| RecordError::Sync {
                path: storage.root().join(&storage.files()[f].path),
                source,
            })?;
        }
        // Stamped after the sync, so the times include every write the record vouches for.
        let files: Vec<Option<FileStamp>> = (0..storage.files().len())
            .map(|i| {
                storage
                    .file_metadata(i)
                    .and_then(Result::ok)
                    .map(|m| FileStamp::of(&m))
            })
            .collect();
        if same_have && self.written.as_ref().is_some_and(|r| r.files == files) {
            return Ok(false);
        }
        let record = Record {
            info_hash: self.info_hash,
            have: have.clone(),
            files,
        };
        write_atomically(&self.path, &record.encode())?;
        self.written = Some(record);
        Ok(true)
    }

    /// Removes the record (a finished release has no use for it).
    pub fn remove(&mut self) -> Result<(), RecordError> {
        self.written = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io {
                action: "remove",
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// The record's directory must be a real directory: a symlink planted there (a shared
/// `/srv`) would send the record, or read one, somewhere else.
pub(super) fn refuse_symlinked_dir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::other(format!(
            "{} is a symbolic link; refusing to follow it",
            dir.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The temporary file a record is written to before the rename.
pub(super) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` so that a crash at any point leaves the old contents or
/// the new ones: temp file in the same directory, fsync, rename, fsync of the directory.
/// On failure the temp file is removed and the old record is left as it was.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    let err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| RecordError::Io {
            action,
            path: p,
            source,
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err("create the directory of", path))?;
    refuse_symlinked_dir(dir).map_err(err("write", path))?;
    let tmp = temp_path(path);
    // A new file every time: whatever is at the temporary name (a leftover, or a hard
    // link planted there to have corvid truncate another file) is unlinked first, and
    // O_EXCL|O_NOFOLLOW refuses anything that reappears meanwhile.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags_nofollow()
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(bytes).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(err("rename into place", path))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename is durable once the directory is: without this a power cut could bring
    // back the old record (harmless, merely older) or none.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync the directory of", path))
}
