//! Payload files mapped into memory: the only part of corvid that knows the file layout.
//!
//! A torrent's payload is one byte stream (its files concatenated, see [`crate::geometry`]).
//! [`Storage`] maps every non-empty file with a raw shared mapping and resolves a
//! `(piece, offset, len)` range to [`Span`]s of those files, so sockets can receive into
//! and send from the mapping (io_uring iovecs from [`Storage::block_iovecs`]) and the
//! hasher pool can hash pieces straight from it, with no intermediate copy.
//!
//! # The mapping contract
//!
//! Every `unsafe` use of a [`Storage`] elsewhere in corvid points back to this contract:
//!
//! 1. **One writer per block, no reader while it is written.** A block's bytes are written
//!    (by an io_uring receive into [`Storage::block_iovecs`], by the runtime's `pwrite` of
//!    received bytes to the spans' file ([`files`]), or by [`Storage::write_block`])
//!    by exactly one receiver at a time, and nothing reads those bytes while that write is
//!    in flight. Different blocks are disjoint byte ranges, so many threads may write
//!    different blocks at once.
//! 2. **Read only finished pieces.** A piece is hashed ([`Storage::hash_piece`]), sent
//!    to a peer or viewed through [`Storage::block_slices`] only after all of its blocks
//!    have been written, and no block of it is written again while it is read (a piece
//!    that failed its hash is re-downloaded only after its hash job has returned).
//!    The safe read methods rely on the writers keeping this promise, which is why every
//!    write is `unsafe`.
//! 3. **Nobody else truncates the files while they are mapped.** Touching a mapped page
//!    past the end of a truncated file raises SIGBUS and kills the process. corvid never
//!    shrinks a mapped file; an outside program doing so is an operator error that this
//!    module cannot catch. Other outside writers do not crash corvid; they make pieces
//!    fail their hash.
//!
//! A read-only [`Storage`] (seeding, verifying, making) is mapped `PROT_READ`: writing
//! through its iovecs faults, and [`Storage::write_block`] refuses with an error.
//!
//! # A full disk
//!
//! Writing through a mapping has no error return: a store that needs a new disk block on
//! a full filesystem gets SIGBUS. [`Storage::create`] therefore checks the free space and
//! preallocates every file's blocks before mapping it (`preallocate` explains why that is
//! enough on ext4, xfs and tmpfs), so a disk that fills up during a download, by someone
//! else's hand, cannot crash corvid: the blocks it writes into are already its own.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use sha1::{Digest, Sha1};

use crate::fsat::{Dir, DirError};
use crate::geometry::{BlockRef, Lengths, PieceIndex};
use rustix::fs::OFlags;

mod disk;
pub mod files;
use disk::*;

/// A download keeps each file's descriptor open to write received payload through it
/// (see [`files`]) when the torrent has at most this many files; one of more files is
/// written through the mapping instead, as a torrent of many thousand files must not
/// hold as many descriptors.
pub const MAX_WRITE_FDS: usize = 256;

/// Most files a single 16 KiB block touches in real torrents is two or three; an iovec
/// array of this size covers any block unless a torrent packs many tiny files together,
/// in which case [`Storage::block_iovecs`] covers a prefix and the caller continues.
pub const BLOCK_IOVECS: usize = 8;

/// One payload file, as the torrent lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative to the storage root; already checked safe by `metainfo` (no absolute
    /// paths, no `..`). [`Storage`] checks again, because a path escaping the root would
    /// overwrite someone else's file.
    pub path: PathBuf,
    pub length: u64,
    /// A BEP 47 pad file (`attr` `p`): zeros that align the next file to a piece boundary.
    /// It exists on no disk: storage maps anonymous zero memory in its place, so it is
    /// hashed and sent like any other bytes but never created, opened or synced.
    pub pad: bool,
}

/// A contiguous run of one file that a payload range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Index into [`Storage::files`].
    pub file: usize,
    pub file_offset: u64,
    pub len: u32,
}

/// Why storage could not be set up or used. Every variant names the file or block.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("needs {needed} bytes, {free} free on {}", path.display())]
    NoSpace {
        needed: u64,
        free: u64,
        path: PathBuf,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: file is missing", path.display())]
    Missing { path: PathBuf },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: is {actual} bytes, the torrent says {expected}", path.display())]
    WrongSize {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{}: path is not a plain relative path inside the payload root", path.display())]
    UnsafePath { path: PathBuf },
    #[error("{}: is a symbolic link; refusing to write through it (it could point outside the destination)", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: listed twice in the torrent", path.display())]
    DuplicatePath { path: PathBuf },
    #[error("{} and {} are one file on disk (a case-insensitive filesystem folds their names together, or one is a hard link to the other); the torrent needs two", first.display(), second.display())]
    SameFile { first: PathBuf, second: PathBuf },
    #[error("{}: {length} bytes do not fit in this machine's address space", path.display())]
    TooLarge { path: PathBuf, length: u64 },
    #[error("the files add up to {files} bytes but the torrent's pieces cover {pieces}")]
    LengthMismatch { files: u64, pieces: u64 },
    #[error("storage under {} is read-only", root.display())]
    ReadOnly { root: PathBuf },
    #[error("block at piece {piece} offset {offset} length {len} is outside the piece")]
    OutOfRange { piece: u32, offset: u32, len: u32 },
    #[error("block at piece {piece} offset {offset} is {len} bytes but {data} bytes were given")]
    DataLength {
        piece: u32,
        offset: u32,
        len: u32,
        data: usize,
    },
}

/// Decides whether `needed` more bytes fit in `free`; kept pure so the rule is testable
/// without filling a disk.
pub fn check_space(needed: u64, free: u64, path: &Path) -> Result<(), StorageError> {
    if needed > free {
        return Err(StorageError::NoSpace {
            needed,
            free,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The mapped payload of one torrent. `Send + Sync`: share it as `Arc<Storage>` between
/// the io_uring threads and the hasher pool under the module's mapping contract.
#[derive(Debug)]
pub struct Storage {
    /// The writable mappings registered with [`files`]; declared first so they are
    /// unregistered before the mappings and descriptors below are dropped.
    registered: Vec<files::Registered>,
    /// Descriptors of the registered files (`pwrite` targets); empty when none are.
    write_fds: Vec<File>,
    /// Read-only storage (seeding): descriptors of the registered files, which uploads
    /// splice from (`runtime::send_path`); empty when none are kept.
    _read_fds: Vec<File>,
    /// Bytes received and written through `write_fds`.
    written: Arc<files::Written>,
    root: PathBuf,
    files: Vec<FileSpec>,
    /// One per file; `None` for zero-length files, which cannot be mapped.
    maps: Vec<Option<MmapRaw>>,
    /// `(st_dev, st_ino)` of the file opened for each mapping, so
    /// [`Storage::file_metadata`] can tell the mapped file from one put in its place.
    /// (Over [`MAX_WRITE_FDS`] files they are closed once mapped: a torrent of many
    /// thousand files must not hold as many descriptors.)
    ids: Vec<(u64, u64)>,
    /// Payload offset one past each file's last byte (prefix sums of the lengths).
    ends: Vec<u64>,
    lengths: Lengths,
    writable: bool,
}

/// Space [`Storage::create`] still has to allocate: a kept file already has (some of) its
/// blocks. Refuses planted symlinks and non-files on the way, before anything is created.
fn space_needed(root: &Path, files: &[FileSpec]) -> Result<u64, StorageError> {
    let mut needed = 0u64;
    for spec in files.iter().filter(|f| !f.pad) {
        // Refuse planted symlinks before anything is created or sized.
        check_no_symlinks(root, &spec.path)?;
        let path = root.join(&spec.path);
        let allocated = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m.blocks().saturating_mul(512),
            Ok(_) => return Err(StorageError::NotAFile { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => return Err(io_err("inspect", &path, source)),
        };
        needed = needed.saturating_add(spec.length.saturating_sub(allocated));
    }
    Ok(needed)
}

/// Opens (creating) file `index` of `files` below `root_dir` without following links,
/// reusing the last parent directory opened; refuses a second name for a file already
/// opened and anything not a regular file; sizes it to the torrent's length.
fn open_sized(
    root: &Path,
    root_dir: &Dir,
    parent: &mut Option<(PathBuf, Dir)>,
    files: &[FileSpec],
    index: usize,
    opened: &mut std::collections::HashMap<(u64, u64), usize>,
) -> Result<(std::fs::File, std::fs::Metadata, PathBuf), StorageError> {
    let spec = &files[index];
    let path = root.join(&spec.path);
    let rel_parent = spec.path.parent().unwrap_or(Path::new(""));
    let name = spec
        .path
        .file_name()
        .ok_or_else(|| StorageError::UnsafePath {
            path: spec.path.clone(),
        })?;
    if parent.as_ref().is_none_or(|(p, _)| p != rel_parent) {
        let d = root_dir
            .walk(rel_parent, true)
            .map_err(dir_err)?
            .expect("walk with create makes every directory");
        *parent = Some((rel_parent.to_path_buf(), d));
    }
    let (_, dir) = parent.as_ref().expect("set just above");
    let file = dir
        .open_file(name, OFlags::RDWR | OFlags::CREATE, 0o644)
        .map_err(dir_err)?;
    let meta = file.metadata().map_err(|e| io_err("inspect", &path, e))?;
    // Two torrent paths that name one file (`A` and `a` on a case-insensitive
    // filesystem, or a hard link left there) would be mapped twice, and sizing
    // the second would shrink the first mapping under it (SIGBUS). Compared
    // after opening, so whatever the filesystem folds or links is caught.
    if let Some(&first) = opened.get(&(meta.dev(), meta.ino())) {
        return Err(StorageError::SameFile {
            first: root.join(&files[first].path),
            second: path,
        });
    }
    opened.insert((meta.dev(), meta.ino()), index);
    if !meta.is_file() {
        return Err(StorageError::NotAFile { path });
    }
    if meta.len() != spec.length {
        file.set_len(spec.length)
            .map_err(|e| io_err("resize", &path, e))?;
    }
    Ok((file, meta, path))
}

impl Storage {
    /// Receiving side: creates the directories and files under `root`, checks free space
    /// first, preallocates and maps everything read-write. Files already of the right size
    /// are kept as they are (resume); files of the wrong size are resized.
    pub fn create(
        root: &Path,
        files: &[FileSpec],
        lengths: Lengths,
    ) -> Result<Storage, StorageError> {
        let ends = check_layout(files, lengths)?;

        let needed = space_needed(root, files)?;
        let probe = existing_ancestor(root);
        check_space(needed, free_space(&probe)?, &probe)?;

        let mut maps = Vec::with_capacity(files.len());
        let mut ids = Vec::with_capacity(files.len());
        // Everything below the root is reached through directory descriptors with
        // O_NOFOLLOW (see `fsat`): a link planted after the check above, even as a
        // directory on the way, is refused, never followed. The last parent is kept
        // open, since a torrent's files mostly come a directory at a time.
        let root_dir = Dir::create_root(root).map_err(dir_err)?;
        let mut parent: Option<(PathBuf, Dir)> = None;
        let mut opened: std::collections::HashMap<(u64, u64), usize> =
            std::collections::HashMap::with_capacity(files.len());
        let keep_fds = files.iter().filter(|f| !f.pad).count() <= MAX_WRITE_FDS;
        let mut write_fds = Vec::new();
        let mut registered = Vec::new();
        let written = Arc::new(files::Written::default());
        for spec in files {
            if spec.pad {
                maps.push(pad_map(spec, root)?);
                ids.push((0, 0));
                continue;
            }
            let (file, meta, path) =
                open_sized(root, &root_dir, &mut parent, files, maps.len(), &mut opened)?;
            if spec.length == 0 {
                maps.push(None);
                ids.push((meta.dev(), meta.ino()));
                continue;
            }
            // Give every page of the file a disk block now (see `preallocate`): a store
            // into a hole of a shared mapping on a full disk raises SIGBUS in whichever
            // thread touched it; preallocated, a full disk is this error, up front.
            preallocate(&file, spec.length, &path)?;
            let len = map_len(spec.length, &path)?;
            let map = MmapOptions::new()
                .len(len)
                .map_raw(&file)
                .map_err(|e| io_err("map", &path, e))?;
            if keep_fds {
                // The mapping covers exactly the file's `spec.length` bytes (`map_len`), so
                // every registered address has a byte of the file behind it.
                registered.push(files::register(
                    map.as_ptr(),
                    map.len(),
                    file.as_raw_fd(),
                    written.clone(),
                ));
                write_fds.push(file);
            }
            maps.push(Some(map));
            ids.push((meta.dev(), meta.ino()));
        }
        Ok(Storage {
            registered,
            write_fds,
            _read_fds: Vec::new(),
            written,
            root: root.to_path_buf(),
            files: files.to_vec(),
            maps,
            ids,
            ends,
            lengths,
            writable: true,
        })
    }

    /// Seeding, verifying, making: maps existing files read-only. A missing file, or one
    /// of the wrong size, is an error naming it.
    pub fn open_readonly(
        root: &Path,
        files: &[FileSpec],
        lengths: Lengths,
    ) -> Result<Storage, StorageError> {
        let ends = check_layout(files, lengths)?;
        let mut maps = Vec::with_capacity(files.len());
        let mut ids = Vec::with_capacity(files.len());
        // Kept open under the same bound as a download's, so uploads can splice from
        // them; over it, uploads are copied from the mapping.
        let keep_fds = files.iter().filter(|f| !f.pad).count() <= MAX_WRITE_FDS;
        let mut read_fds = Vec::new();
        let mut registered = Vec::new();
        let written = Arc::new(files::Written::default());
        for spec in files {
            if spec.pad {
                maps.push(pad_map(spec, root)?);
                ids.push((0, 0));
                continue;
            }
            let path = root.join(&spec.path);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::Missing { path })
                }
                Err(e) => return Err(io_err("open", &path, e)),
            };
            let meta = file.metadata().map_err(|e| io_err("inspect", &path, e))?;
            if !meta.is_file() {
                return Err(StorageError::NotAFile { path });
            }
            if meta.len() != spec.length {
                return Err(StorageError::WrongSize {
                    path,
                    expected: spec.length,
                    actual: meta.len(),
                });
            }
            if spec.length == 0 {
                maps.push(None);
                ids.push((meta.dev(), meta.ino()));
                continue;
            }
            let len = map_len(spec.length, &path)?;
            let map = MmapOptions::new()
                .len(len)
                .map_raw_read_only(&file)
                .map_err(|e| io_err("map", &path, e))?;
            if keep_fds {
                // As in `create`: the mapping covers exactly the file's bytes. Nothing is
                // ever received into a read-only storage, so the registration only serves
                // the send path.
                registered.push(files::register(
                    map.as_ptr(),
                    map.len(),
                    file.as_raw_fd(),
                    written.clone(),
                ));
                read_fds.push(file);
            }
            maps.push(Some(map));
            ids.push((meta.dev(), meta.ino()));
        }
        Ok(Storage {
            registered,
            write_fds: Vec::new(),
            _read_fds: read_fds,
            written,
            root: root.to_path_buf(),
            files: files.to_vec(),
            maps,
            ids,
            ends,
            lengths,
            writable: false,
        })
    }

    pub fn lengths(&self) -> Lengths {
        self.lengths
    }

    pub fn files(&self) -> &[FileSpec] {
        &self.files
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the mapping may be written (made by [`Storage::create`]).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The spans of the files that the payload range `(piece, offset, len)` covers, in
    /// payload order, crossing file boundaries and skipping zero-length files. A range
    /// running past the end of the payload is cut at the end, so spans never leave the
    /// files; callers pass checked [`BlockRef`]s and get exactly `len` bytes.
    pub fn spans(&self, piece: PieceIndex, offset: u32, len: u32) -> SpanIter<'_> {
        let total = self.lengths.total_length();
        let start = self
            .lengths
            .piece_offset(piece)
            .saturating_add(u64::from(offset))
            .min(total);
        let end = start.saturating_add(u64::from(len)).min(total);
        // First file whose end lies past `start`; zero-length files end where they start
        // and are skipped by the same test.
        let file = self.ends.partition_point(|&e| e <= start);
        SpanIter {
            ends: &self.ends,
            file,
            pos: start,
            end,
        }
    }

    /// The block's bytes as slices of the mapping: one per file it touches, no copies.
    /// Under the mapping contract only blocks of finished pieces are read this way.
    pub fn block_slices(&self, b: BlockRef) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans(b.piece, b.offset, b.len).filter_map(move |s| {
            let (ptr, len) = self.span_ptr(s)?;
            // SAFETY: `span_ptr` returns a range inside a live mapping of `self`, which
            // outlives the returned slice; nothing writes these bytes while they are read
            // (mapping contract, rules 1 and 2, kept by the writers' `unsafe` code).
            Some(unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) })
        })
    }

    /// Raw `(ptr, len)` pieces of the mapping for a block, for io_uring recv/send iovecs.
    /// Fills at most `out.len()` entries (no allocation) and returns how many it filled.
    /// If the block touches more files than that, the iovecs cover a prefix of it and the
    /// caller continues with the rest, as it does after a short receive; [`BLOCK_IOVECS`]
    /// entries cover every ordinary block.
    ///
    /// Reading through the pointers is allowed for finished pieces; writing through them
    /// (a receive) must follow the mapping contract, and faults on read-only storage.
    /// The pointers stay valid as long as `self` lives.
    pub fn block_iovecs(&self, b: BlockRef, out: &mut [libc::iovec]) -> usize {
        let mut n = 0;
        for span in self.spans(b.piece, b.offset, b.len) {
            if n == out.len() {
                break;
            }
            if let Some((ptr, len)) = self.span_ptr(span) {
                out[n] = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len,
                };
                n += 1;
            }
        }
        n
    }

    /// Copies `data` into the block's place in the mapping: for the few payload bytes that
    /// arrive inside a control-message buffer, and for tests. Read-only storage, a block
    /// outside its piece or data of the wrong length are errors.
    ///
    /// # Safety
    /// The caller is this block's only writer right now and nothing reads the block while
    /// it is written (mapping contract, rules 1 and 2).
    pub unsafe fn write_block(&self, b: BlockRef, data: &[u8]) -> Result<(), StorageError> {
        if !self.writable {
            return Err(StorageError::ReadOnly {
                root: self.root.clone(),
            });
        }
        let in_piece = b.piece.get() < self.lengths.piece_count()
            && b.offset
                .checked_add(b.len)
                .is_some_and(|end| end <= self.piece_len(b.piece));
        if !in_piece {
            return Err(StorageError::OutOfRange {
                piece: b.piece.get(),
                offset: b.offset,
                len: b.len,
            });
        }
        if data.len() != b.len as usize {
            return Err(StorageError::DataLength {
                piece: b.piece.get(),
                offset: b.offset,
                len: b.len,
                data: data.len(),
            });
        }
        let mut done = 0usize;
        for span in self.spans(b.piece, b.offset, b.len) {
            if let Some((dst, len)) = self.span_ptr(span) {
                // SAFETY: `dst..dst+len` lies inside a read-write mapping of `self` (it is
                // writable, checked above); `done + len <= data.len()` because the spans of
                // an in-piece block add up to exactly `b.len == data.len()`; the mapping
                // and `data` cannot overlap (`data` is a borrowed buffer, and the caller is
                // the block's only writer, so it is not a view of this block); no one else
                // touches these bytes meanwhile (the caller's promise, mapping contract).
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(done), dst, len) };
                done += len;
            }
        }
        debug_assert_eq!(done, data.len());
        Ok(())
    }

    /// SHA-1 of a piece, read straight from the mapping. Under the mapping contract only
    /// finished pieces are hashed.
    pub fn hash_piece(&self, piece: PieceIndex) -> [u8; 20] {
        let size = self.piece_len(piece);
        let mut h = Sha1::new();
        let block = BlockRef {
            piece,
            offset: 0,
            len: size,
        };
        for slice in self.block_slices(block) {
            h.update(slice);
        }
        h.finalize().into()
    }

    /// Faults in the pages of a piece for writing ahead of the network (Linux 5.14+
    /// `MADV_POPULATE_WRITE`), without changing their contents. A receive into a page
    /// that is not mapped yet stops in the kernel to allocate it (and, on ext4, to
    /// reserve its block); profiling put that at about a third of the receiving core's
    /// time. Doing it on another thread first leaves the io_uring core thread copying.
    /// Returns false when the kernel does not support it or the storage is read-only;
    /// callers just stop prefaulting then.
    ///
    /// Storage that writes received payload through its files ([`files`]) does not
    /// prefault: `pwrite` makes the pages itself, for less than the faults cost.
    pub fn prefault(&self, piece: PieceIndex) -> bool {
        if !self.writable || self.writes_through_files() {
            return false;
        }
        const PAGE: usize = 4096;
        for span in self.spans(piece, 0, self.piece_len(piece)) {
            let Some((ptr, len)) = self.span_ptr(span) else {
                continue;
            };
            // madvise wants a page-aligned start: widen the range back to the page that
            // holds the span's first byte (mappings start on a page boundary).
            let addr = ptr as usize;
            let start = addr & !(PAGE - 1);
            let len = len + (addr - start);
            // SAFETY: the range lies inside one of this storage's live mappings
            // (`span_ptr` checked it; widening only moves the start back within the
            // mapping's first page at most). MADV_POPULATE_WRITE faults pages in without
            // changing their contents, so no reader or writer can observe it.
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE)
            };
            if rc != 0 {
                return false;
            }
        }
        true
    }

    /// Whether received payload is written through the files' descriptors (registered
    /// with [`files`]) rather than stored through the mapping.
    pub fn writes_through_files(&self) -> bool {
        !self.registered.is_empty() && !self.write_fds.is_empty()
    }

    /// `(pwrite calls, bytes)` of received payload written through the files' descriptors.
    pub fn file_writes(&self) -> (u64, u64) {
        self.written.get()
    }

    /// Writes dirty pages to disk (msync); a no-op for read-only storage.
    pub fn flush(&self) -> Result<(), StorageError> {
        if !self.writable {
            return Ok(());
        }
        for (map, spec) in self.maps.iter().zip(&self.files) {
            if spec.pad {
                continue;
            }
            if let Some(map) = map {
                map.flush()
                    .map_err(|e| io_err("flush", &self.root.join(&spec.path), e))?;
            }
        }
        Ok(())
    }

    /// Makes one file's dirty pages durable: `msync(MS_SYNC)` over its mapping, which on
    /// Linux is `fdatasync` of that range (`vfs_fsync_range(.., datasync)`), so bytes
    /// written through the mapping reach the disk before a resume record claims them.
    /// A no-op for read-only storage, zero-length files and an index out of range.
    pub fn sync_file(&self, index: usize) -> Result<(), StorageError> {
        if !self.writable {
            return Ok(());
        }
        match (self.maps.get(index), self.files.get(index)) {
            (Some(Some(map)), Some(spec)) if !spec.pad => map
                .flush()
                .map_err(|e| io_err("flush", &self.root.join(&spec.path), e)),
            _ => Ok(()),
        }
    }

    /// The metadata (size, times, inode) of file `index` as it is on disk now, provided
    /// it is still the file that was mapped: a file replaced or removed since is an error
    /// (so a resume record never vouches for a file corvid did not write). `None` for an
    /// index out of range and for a pad file, which is on no disk.
    pub fn file_metadata(&self, index: usize) -> Option<io::Result<std::fs::Metadata>> {
        let spec = self.files.get(index)?;
        if spec.pad {
            return None;
        }
        let &(dev, ino) = self.ids.get(index)?;
        let path = self.root.join(&spec.path);
        Some(std::fs::symlink_metadata(&path).and_then(|m| {
            if m.dev() == dev && m.ino() == ino {
                Ok(m)
            } else {
                Err(io::Error::other(format!(
                    "{} was replaced since it was opened",
                    path.display()
                )))
            }
        }))
    }

    /// The piece's length, or 0 for an index from some other torrent (which would
    /// underflow [`Lengths::piece_size`]); a caller bug that should not panic here.
    fn piece_len(&self, piece: PieceIndex) -> u32 {
        if piece.get() < self.lengths.piece_count() {
            self.lengths.piece_size(piece)
        } else {
            0
        }
    }

    /// Pointer and length of a span inside its file's mapping, or `None` for a span that
    /// does not fit its mapping (which `spans` never yields).
    fn span_ptr(&self, s: Span) -> Option<(*mut u8, usize)> {
        let map = self.maps.get(s.file)?.as_ref()?;
        let off = usize::try_from(s.file_offset).ok()?;
        let len = s.len as usize;
        if off.checked_add(len)? > map.len() {
            return None;
        }
        // SAFETY: `off + len <= map.len()`, checked above, so the offset pointer stays
        // inside the mapping (one past its end at most when `len == 0`).
        Some((unsafe { map.as_mut_ptr().add(off) }, len))
    }
}

/// Iterator over the [`Span`]s of a payload range; see [`Storage::spans`].
#[derive(Debug, Clone)]
pub struct SpanIter<'a> {
    ends: &'a [u64],
    file: usize,
    pos: u64,
    end: u64,
}

impl Iterator for SpanIter<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        if self.pos >= self.end {
            return None;
        }
        while *self.ends.get(self.file)? <= self.pos {
            self.file += 1;
        }
        let file_end = self.ends[self.file];
        let file_start = match self.file {
            0 => 0,
            i => self.ends[i - 1],
        };
        let len = self.end.min(file_end) - self.pos;
        let span = Span {
            file: self.file,
            file_offset: self.pos - file_start,
            // A range is at most one piece (<= 64 MiB), so this never truncates; a caller
            // passing a bigger `len` gets cut short instead of wrapped.
            len: u32::try_from(len).unwrap_or(u32::MAX),
        };
        self.pos += u64::from(span.len);
        Some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BLOCK_SIZE;

    const PL: u64 = BLOCK_SIZE as u64; // smallest legal piece length, 16 KiB

    fn specs(lens: &[u64]) -> Vec<FileSpec> {
        lens.iter()
            .enumerate()
            .map(|(i, &length)| FileSpec {
                path: PathBuf::from(format!("d{}/f{i}", i % 2)),
                length,
                pad: false,
            })
            .collect()
    }

    fn lengths_for(lens: &[u64], piece_length: u64) -> Lengths {
        let total: u64 = lens.iter().sum();
        Lengths::new(total, piece_length, total.div_ceil(piece_length)).unwrap()
    }

    fn make(lens: &[u64], piece_length: u64) -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::create(dir.path(), &specs(lens), lengths_for(lens, piece_length)).unwrap();
        (dir, s)
    }

    fn spans_of(s: &Storage, piece: u32, offset: u32, len: u32) -> Vec<(usize, u64, u32)> {
        let p = s.lengths().piece(piece).unwrap();
        s.spans(p, offset, len)
            .map(|sp| (sp.file, sp.file_offset, sp.len))
            .collect()
    }

    /// Deterministic payload bytes so every position is distinguishable.
    fn payload(n: u64) -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn fill(s: &Storage, data: &[u8]) {
        let l = s.lengths();
        for p in l.pieces() {
            for n in 0..l.blocks_in_piece(p) {
                let b = l.block(p, n).unwrap();
                let at = (l.piece_offset(p) + u64::from(b.offset)) as usize;
                // SAFETY: single-threaded test; nothing else reads or writes the block.
                unsafe { s.write_block(b, &data[at..at + b.len as usize]) }.unwrap();
            }
        }
    }

    #[test]
    fn a_download_registers_its_files_for_pwrite_until_dropped() {
        let (_dir, s) = make(&[5000, 20000], 16384);
        assert!(s.writes_through_files());
        assert!(
            !s.prefault(s.lengths().piece(0).unwrap()),
            "pwrite makes the pages"
        );
        // Piece 0 covers file 0 and the first 11384 bytes of file 1.
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let b = BlockRef {
            piece: s.lengths().piece(0).unwrap(),
            offset: 0,
            len: 16384,
        };
        assert_eq!(s.block_iovecs(b, &mut iov), 2);
        let in_second = iov[1].iov_base.cast::<u8>().wrapping_add(100);
        let at = files::file_at(in_second).expect("file 1 is registered");
        assert_eq!((at.offset, at.len), (100, 20000 - 100));
        drop(s);
        assert!(
            files::file_at(in_second).is_none(),
            "unregistered with the storage"
        );
    }

    #[test]
    fn many_files_and_read_only_storage_are_not_written_through_files() {
        let lens = vec![100u64; MAX_WRITE_FDS + 1];
        let (dir, s) = make(&lens, 16384);
        assert!(!s.writes_through_files(), "no descriptor per file kept");
        drop(s);
        let ro =
            Storage::open_readonly(dir.path(), &specs(&lens), lengths_for(&lens, 16384)).unwrap();
        assert!(!ro.writes_through_files());
    }

    #[test]
    fn a_seed_registers_its_files_for_splicing_until_dropped() {
        let lens = [100u64, 5000];
        let (dir, s) = make(&lens, 16384);
        drop(s);
        let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(dir.path().join("d1/f1"), &content).unwrap();
        let ro =
            Storage::open_readonly(dir.path(), &specs(&lens), lengths_for(&lens, 16384)).unwrap();
        assert!(!ro.writes_through_files(), "nothing is written to a seed");
        let piece = ro.lengths().piece(0).unwrap();
        let ptr = ro
            .block_slices(BlockRef {
                piece,
                offset: 100,
                len: 10,
            })
            .next()
            .unwrap()
            .as_ptr();
        let at = files::file_at(ptr).expect("file 1 is registered");
        assert_eq!((at.offset, at.len), (0, 5000));
        // The descriptor reads the file the mapping shows.
        let mut buf = [0u8; 4];
        // SAFETY: `buf` is a live 4-byte buffer; the descriptor is open while `ro` is.
        let n = unsafe { libc::pread(at.fd, buf.as_mut_ptr().cast(), 4, 0) };
        assert_eq!(n, 4);
        assert_eq!(buf, content[..4]);
        drop(ro);
        assert!(
            files::file_at(ptr).is_none(),
            "unregistered with the storage"
        );
    }

    #[test]
    fn storage_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Storage>();
    }

    #[test]
    fn piece_crossing_file_boundary() {
        let (_d, s) = make(&[PL + 100, PL], PL);
        assert_eq!(spans_of(&s, 0, 0, PL as u32), vec![(0, 0, PL as u32)]);
        assert_eq!(
            spans_of(&s, 1, 0, PL as u32),
            vec![(0, PL, 100), (1, 0, PL as u32 - 100)]
        );
        // last short piece: the remaining 100 bytes of file 1
        let last = s.lengths().piece(2).unwrap();
        assert_eq!(s.lengths().piece_size(last), 100);
        assert_eq!(spans_of(&s, 2, 0, 100), vec![(1, PL - 100, 100)]);
    }

    #[test]
    fn several_files_inside_one_piece() {
        let (_d, s) = make(&[10, 20, 30, PL], 2 * PL);
        assert_eq!(
            spans_of(&s, 0, 0, 2 * PL as u32),
            vec![(0, 0, 10), (1, 0, 20), (2, 0, 30), (3, 0, PL as u32)]
        );
        // a block starting inside the second file
        assert_eq!(spans_of(&s, 0, 15, 20), vec![(1, 5, 15), (2, 0, 5)]);
        // a range running past the payload end is cut there
        assert_eq!(spans_of(&s, 0, 60, u32::MAX), vec![(3, 0, PL as u32)]);
    }

    #[test]
    fn zero_length_files_are_skipped_anywhere() {
        let (_d, s) = make(&[0, 0, 100, 0, 200, 0], PL);
        assert_eq!(spans_of(&s, 0, 0, 300), vec![(2, 0, 100), (4, 0, 200)]);
        assert_eq!(spans_of(&s, 0, 100, 50), vec![(4, 0, 50)]);
        assert_eq!(spans_of(&s, 0, 99, 2), vec![(2, 99, 1), (4, 0, 1)]);
        for i in [0, 1, 3, 5] {
            let path = s.root().join(&s.files()[i].path);
            assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
        }
    }

    /// Pad files are zeros that no disk holds: never created (two may share a path),
    /// hashed and read as zeros, written like other bytes (so a wrong pad fails its hash),
    /// and skipped by flush, sync and metadata; read-only storage maps them too.
    #[test]
    fn pad_files_are_zeros_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let pad = |n: u64| FileSpec {
            path: PathBuf::from(format!("top/.pad/{n}")),
            length: n,
            pad: true,
        };
        let real = |name: &str, n: u64| FileSpec {
            path: PathBuf::from(format!("top/{name}")),
            length: n,
            pad: false,
        };
        let files = vec![
            real("a", PL - 100),
            pad(100),
            real("b", PL - 100),
            pad(100),
            real("c", 10),
        ];
        let l = Lengths::new(2 * PL + 10, PL, 3).unwrap();
        let s = Storage::create(dir.path(), &files, l).unwrap();
        assert!(!dir.path().join("top/.pad").exists());
        assert!(s.file_metadata(1).is_none());
        assert!(s.file_metadata(0).unwrap().is_ok());
        let p0 = l.piece(0).unwrap();
        let mut want = vec![0u8; PL as usize];
        assert_eq!(s.hash_piece(p0), <[u8; 20]>::from(Sha1::digest(&want)));
        let data: Vec<u8> = (0..PL).map(|i| (i % 251) as u8 + 1).collect();
        let b = BlockRef {
            piece: p0,
            offset: 0,
            len: PL as u32,
        };
        // SAFETY: nothing else reads or writes this storage in the test.
        unsafe { s.write_block(b, &data).unwrap() };
        want.copy_from_slice(&data);
        assert_eq!(s.hash_piece(p0), <[u8; 20]>::from(Sha1::digest(&want)));
        let mut zeros_in_pad = data.clone();
        zeros_in_pad[(PL - 100) as usize..].fill(0);
        // SAFETY: as above.
        unsafe { s.write_block(b, &zeros_in_pad).unwrap() };
        assert_eq!(
            s.hash_piece(p0),
            <[u8; 20]>::from(Sha1::digest(&zeros_in_pad))
        );
        s.flush().unwrap();
        for i in 0..files.len() {
            s.sync_file(i).unwrap();
        }
        assert_eq!(
            std::fs::read(dir.path().join("top/a")).unwrap(),
            &zeros_in_pad[..(PL - 100) as usize]
        );
        let ro = Storage::open_readonly(dir.path(), &files, l).unwrap();
        assert_eq!(ro.hash_piece(p0), s.hash_piece(p0));
        assert!(!dir.path().join("top/.pad").exists());
    }

    #[test]
    fn zero_total_payload() {
        let (dir, s) = make(&[0, 0], PL);
        assert_eq!(s.lengths().piece_count(), 0);
        assert_eq!(s.lengths().pieces().count(), 0);
        s.flush().unwrap();
        let ro = Storage::open_readonly(dir.path(), &specs(&[0, 0]), s.lengths()).unwrap();
        assert!(!ro.is_writable());
        let (_d, empty) = make(&[], PL);
        assert!(empty.files().is_empty());
    }

    #[test]
    fn write_and_hash_round_trip_across_files() {
        let lens = [PL / 2, 3, 0, PL + 7, 2 * PL, 0, 1000];
        let (dir, s) = make(&lens, PL);
        let total: u64 = lens.iter().sum();
        let data = payload(total);
        fill(&s, &data);
        s.flush().unwrap();
        let l = s.lengths();
        for p in l.pieces() {
            let start = l.piece_offset(p) as usize;
            let end = start + l.piece_size(p) as usize;
            let want: [u8; 20] = Sha1::digest(&data[start..end]).into();
            assert_eq!(s.hash_piece(p), want, "piece {}", p.get());
            let joined: Vec<u8> = s
                .block_slices(BlockRef {
                    piece: p,
                    offset: 0,
                    len: l.piece_size(p),
                })
                .flatten()
                .copied()
                .collect();
            assert_eq!(joined, &data[start..end]);
        }
        // the bytes are really in the files, at the right places
        let mut on_disk = Vec::new();
        for spec in specs(&lens) {
            on_disk.extend(std::fs::read(dir.path().join(spec.path)).unwrap());
        }
        assert_eq!(on_disk, data);
        // and a read-only mapping of the same files sees them
        let ro = Storage::open_readonly(dir.path(), &specs(&lens), l).unwrap();
        for p in l.pieces() {
            assert_eq!(ro.hash_piece(p), s.hash_piece(p));
        }
    }

    #[test]
    fn concurrent_writers_of_disjoint_blocks() {
        let lens = [3 * PL + 5, 1, 0, 4 * PL];
        let (_d, s) = make(&lens, 2 * PL);
        let data = payload(lens.iter().sum());
        let l = s.lengths();
        let blocks: Vec<BlockRef> = l
            .pieces()
            .flat_map(|p| (0..l.blocks_in_piece(p)).map(move |n| l.block(p, n).unwrap()))
            .collect();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (s, data, blocks) = (&s, &data, &blocks);
                scope.spawn(move || {
                    for b in blocks.iter().skip(t).step_by(4) {
                        let at = (l.piece_offset(b.piece) + u64::from(b.offset)) as usize;
                        // SAFETY: each block belongs to exactly one thread (index mod 4) and
                        // nothing reads until all threads are joined (mapping contract).
                        unsafe { s.write_block(*b, &data[at..at + b.len as usize]) }.unwrap();
                    }
                });
            }
        });
        for p in l.pieces() {
            let start = l.piece_offset(p) as usize;
            let want: [u8; 20] =
                Sha1::digest(&data[start..start + l.piece_size(p) as usize]).into();
            assert_eq!(s.hash_piece(p), want, "piece {}", p.get());
        }
    }

    #[test]
    fn iovecs_cover_the_block_and_cut_at_capacity() {
        let (_d, s) = make(&[10, 20, 30, PL], 2 * PL);
        let b = BlockRef {
            piece: s.lengths().piece(0).unwrap(),
            offset: 0,
            len: BLOCK_SIZE,
        };
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut out = [empty; BLOCK_IOVECS];
        let n = s.block_iovecs(b, &mut out);
        assert_eq!(n, 4);
        let lens: Vec<usize> = out[..n].iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, vec![10, 20, 30, BLOCK_SIZE as usize - 60]);
        let mut two = [empty; 2];
        assert_eq!(s.block_iovecs(b, &mut two), 2);
        assert_eq!(two[1].iov_len, 20);
        // the pointers are the mapping: what write_block stores, the iovec shows
        let data = payload(u64::from(BLOCK_SIZE));
        // SAFETY: single-threaded test; nothing else touches the block.
        unsafe { s.write_block(b, &data) }.unwrap();
        // SAFETY: out[1] points at 20 mapped bytes of `s`, alive and not being written.
        let second = unsafe { std::slice::from_raw_parts(out[1].iov_base as *const u8, 20) };
        assert_eq!(second, &data[10..30]);
    }

    #[test]
    fn write_block_rejects_bad_blocks_and_read_only() {
        let lens = [PL + 10];
        let (dir, s) = make(&lens, PL);
        let p1 = s.lengths().piece(1).unwrap();
        let bad = BlockRef {
            piece: p1,
            offset: 0,
            len: 11,
        };
        // SAFETY: single-threaded test.
        let r = unsafe { s.write_block(bad, &[0; 11]) };
        assert!(
            matches!(r, Err(StorageError::OutOfRange { piece: 1, .. })),
            "{r:?}"
        );
        let ok = BlockRef { len: 10, ..bad };
        // SAFETY: single-threaded test.
        let r = unsafe { s.write_block(ok, &[0; 9]) };
        assert!(
            matches!(r, Err(StorageError::DataLength { data: 9, .. })),
            "{r:?}"
        );
        let ro = Storage::open_readonly(dir.path(), &specs(&lens), s.lengths()).unwrap();
        // SAFETY: single-threaded test.
        let r = unsafe { ro.write_block(ok, &[0; 10]) };
        assert!(matches!(r, Err(StorageError::ReadOnly { .. })), "{r:?}");
    }

    #[test]
    fn open_readonly_names_missing_and_short_files() {
        let lens = [100, 200];
        let (dir, s) = make(&lens, PL);
        let l = s.lengths();
        drop(s);
        let f1 = dir.path().join(&specs(&lens)[1].path);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f1)
            .unwrap()
            .set_len(150)
            .unwrap();
        let err = Storage::open_readonly(dir.path(), &specs(&lens), l).unwrap_err();
        assert!(
            matches!(&err, StorageError::WrongSize { path, expected: 200, actual: 150 } if *path == f1),
            "{err:?}"
        );
        assert!(err.to_string().contains("f1"), "{err}");
        std::fs::remove_file(&f1).unwrap();
        let err = Storage::open_readonly(dir.path(), &specs(&lens), l).unwrap_err();
        assert!(
            matches!(&err, StorageError::Missing { path } if *path == f1),
            "{err:?}"
        );
        assert!(err.to_string().contains(&*f1.to_string_lossy()), "{err}");
    }

    #[test]
    fn create_keeps_right_sized_files_and_resizes_wrong_ones() {
        let lens = [100, 200];
        let (dir, s) = make(&lens, PL);
        let l = s.lengths();
        let data = payload(300);
        fill(&s, &data);
        drop(s);
        let f1 = dir.path().join(&specs(&lens)[1].path);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f1)
            .unwrap()
            .set_len(500)
            .unwrap();
        let s = Storage::create(dir.path(), &specs(&lens), l).unwrap();
        assert_eq!(std::fs::metadata(&f1).unwrap().len(), 200);
        let joined: Vec<u8> = s
            .block_slices(BlockRef {
                piece: l.piece(0).unwrap(),
                offset: 0,
                len: 300,
            })
            .flatten()
            .copied()
            .collect();
        assert_eq!(joined, data, "resume keeps the bytes already written");
    }

    #[test]
    fn layout_errors() {
        let dir = tempfile::tempdir().unwrap();
        let l = lengths_for(&[100], PL);
        let err = Storage::create(dir.path(), &specs(&[99]), l).unwrap_err();
        assert!(matches!(
            err,
            StorageError::LengthMismatch {
                files: 99,
                pieces: 100
            }
        ));
        let twice = [
            FileSpec {
                path: PathBuf::from("a/b"),
                length: 60,
                pad: false,
            },
            FileSpec {
                path: PathBuf::from("a//b"),
                length: 40,
                pad: false,
            },
        ];
        let err = Storage::create(dir.path(), &twice, l).unwrap_err();
        assert!(matches!(err, StorageError::DuplicatePath { .. }), "{err:?}");
        for bad in ["../escape", "/etc/passwd", "a/../../b", ""] {
            let files = [FileSpec {
                path: PathBuf::from(bad),
                length: 100,
                pad: false,
            }];
            let err = Storage::create(dir.path(), &files, l).unwrap_err();
            assert!(
                matches!(err, StorageError::UnsafePath { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn piece_index_of_another_torrent_does_not_panic() {
        let (_d, s) = make(&[100], PL);
        let other = lengths_for(&[5 * PL], PL);
        let foreign = other.piece(4).unwrap();
        let empty: [u8; 20] = Sha1::digest(b"").into();
        assert_eq!(s.hash_piece(foreign), empty);
        assert_eq!(s.spans(foreign, 0, 100).count(), 0);
        let b = BlockRef {
            piece: foreign,
            offset: 0,
            len: 10,
        };
        // SAFETY: single-threaded test.
        let r = unsafe { s.write_block(b, &[0; 10]) };
        assert!(
            matches!(r, Err(StorageError::OutOfRange { piece: 4, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn a_hole_left_by_preallocation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        match check_no_holes(&f, 1 << 20, &path) {
            // a filesystem without SEEK_HOLE reports the whole file as data
            Ok(()) => {
                // SAFETY: lseek on our own descriptor.
                let h = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
                assert!(h < 0 || h as u64 >= 1 << 20, "hole at {h} not reported");
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("hole at byte 0") && msg.contains("sparse"),
                    "{msg}"
                );
            }
        }
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let f = File::open(&path).unwrap();
        check_no_holes(&f, 1 << 20, &path).unwrap();
    }

    #[test]
    fn create_preallocates_every_block() {
        let lens = [3 * PL + 5, 0, 5 * PL];
        let (dir, _s) = make(&lens, PL);
        for (spec, len) in specs(&lens).iter().zip(lens) {
            let m = std::fs::metadata(dir.path().join(&spec.path)).unwrap();
            assert!(
                m.blocks() * 512 >= len,
                "{:?}: {} blocks",
                spec.path,
                m.blocks()
            );
        }
    }

    #[test]
    fn file_metadata_refuses_a_replaced_file() {
        let lens = [PL, PL];
        let (dir, s) = make(&lens, PL);
        let m = s.file_metadata(0).unwrap().unwrap();
        assert_eq!(m.len(), PL);
        let p1 = dir.path().join(&specs(&lens)[1].path);
        std::fs::remove_file(&p1).unwrap();
        std::fs::write(&p1, vec![0u8; PL as usize]).unwrap();
        let err = s.file_metadata(1).unwrap().unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        assert!(s.file_metadata(2).is_none());
        s.sync_file(0).unwrap();
        s.sync_file(9).unwrap();
    }

    #[test]
    fn space_check_decides_from_needed_and_free() {
        let p = Path::new("/data");
        assert!(check_space(10, 10, p).is_ok());
        assert!(check_space(0, 0, p).is_ok());
        let err = check_space(11, 10, p).unwrap_err();
        assert_eq!(err.to_string(), "needs 11 bytes, 10 free on /data");
    }

    #[test]
    fn create_refuses_a_payload_bigger_than_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(dir.path()).unwrap();
        // the largest payload Lengths allows that still exceeds the free space
        let pl = crate::geometry::MAX_PIECE_LENGTH;
        let total = free.saturating_add(pl);
        let Ok(l) = Lengths::new(total, pl, total.div_ceil(pl)) else {
            return; // a disk too large for u32 pieces of 64 MiB; nothing to check here
        };
        let files = [FileSpec {
            path: PathBuf::from("huge"),
            length: total,
            pad: false,
        }];
        let err = Storage::create(dir.path(), &files, l).unwrap_err();
        assert!(
            matches!(err, StorageError::NoSpace { needed, .. } if needed == total),
            "{err:?}"
        );
        assert!(
            !dir.path().join("huge").exists(),
            "nothing is created before the check"
        );
    }

    /// A symlink planted where a payload file or one of its directories goes, pointing at
    /// `victim` outside the destination: `create` names it and leaves the victim alone.
    fn refuses_planted(plant: &str, victim_is_dir: bool) {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        let original = b"do not overwrite me".to_vec();
        if victim_is_dir {
            std::fs::create_dir(&victim).unwrap();
            std::fs::write(victim.join("f1"), &original).unwrap();
        } else {
            std::fs::write(&victim, &original).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join(plant);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let files = [FileSpec {
            path: PathBuf::from("name/sub/f1"),
            length: 3 * PL,
            pad: false,
        }];
        let err = Storage::create(dir.path(), &files, lengths_for(&[3 * PL], PL)).unwrap_err();
        assert!(
            matches!(&err, StorageError::Symlink { path } if *path == link),
            "{err:?}"
        );
        assert!(err.to_string().contains(&*link.to_string_lossy()), "{err}");
        let after = if victim_is_dir {
            std::fs::read(victim.join("f1")).unwrap()
        } else {
            std::fs::read(&victim).unwrap()
        };
        assert_eq!(after, original, "the victim was written through {plant}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_refuses_a_symlink_as_the_file() {
        refuses_planted("name/sub/f1", false);
    }

    #[test]
    fn create_refuses_a_symlink_as_a_directory() {
        refuses_planted("name/sub", true);
        refuses_planted("name", true);
    }

    #[test]
    fn create_refuses_a_dangling_symlink_as_the_file() {
        // A dangling link is the case O_CREAT would follow and create the target.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("created-by-us");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("name/sub")).unwrap();
        let link = dir.path().join("name/sub/f1");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let files = [FileSpec {
            path: PathBuf::from("name/sub/f1"),
            length: PL,
            pad: false,
        }];
        let err = Storage::create(dir.path(), &files, lengths_for(&[PL], PL)).unwrap_err();
        assert!(matches!(err, StorageError::Symlink { .. }), "{err:?}");
        assert!(!target.exists(), "a file was created through the link");
    }

    #[test]
    fn the_root_itself_may_be_a_symlink() {
        let real = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::os::unix::fs::symlink(real.path(), &root).unwrap();
        let files = [FileSpec {
            path: PathBuf::from("name/f"),
            length: PL,
            pad: false,
        }];
        Storage::create(&root, &files, lengths_for(&[PL], PL)).unwrap();
        assert!(real.path().join("name/f").is_file());
    }

    #[test]
    fn two_paths_that_are_one_file_are_refused_before_any_resize() {
        // What a case-insensitive filesystem does to `A` and `a`, a hard link does on any
        // filesystem: two names, one inode.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/A"), vec![5u8; 3000]).unwrap();
        std::fs::hard_link(dir.path().join("d/A"), dir.path().join("d/a")).unwrap();
        let files = vec![
            FileSpec {
                path: "d/A".into(),
                length: 3000,
                pad: false,
            },
            FileSpec {
                path: "d/a".into(),
                length: 1000,
                pad: false,
            },
        ];
        let err =
            Storage::create(dir.path(), &files, lengths_for(&[3000, 1000], 16384)).unwrap_err();
        match &err {
            StorageError::SameFile { first, second } => {
                assert!(first.ends_with("d/A") && second.ends_with("d/a"), "{err}");
            }
            e => panic!("{e:?}"),
        }
        assert!(err.to_string().contains("case-insensitive"), "{err}");
        // The first file was not shrunk by sizing the second.
        assert_eq!(
            std::fs::metadata(dir.path().join("d/A")).unwrap().len(),
            3000
        );
        // Apart, the same layout is fine.
        std::fs::remove_file(dir.path().join("d/a")).unwrap();
        Storage::create(dir.path(), &files, lengths_for(&[3000, 1000], 16384)).unwrap();
    }
}
