//! Which payload file a mapped address belongs to, so received payload can be written
//! through the file (`pwrite`) instead of stored through the mapping.
//!
//! Why: a store into a fresh page of a shared file mapping faults, and on ext4 the fault
//! reads the (unwritten, preallocated) page in as zeros, allocates its buffer heads and
//! marks it dirty one 4 KiB page at a time; writeback later write-protects every mapped
//! page again, with a TLB shoot-down to each core the process runs on. Profiling a 1 GiB
//! loopback download put that page-cache work at over half of the peer's CPU (1.1 of
//! 2.1 s/GiB: 0.87 s faults and prefaulting, 0.27 s msync) against ~0.2 s for `pwrite`
//! of the same bytes, which fills new page-cache pages without reading or zeroing them
//! and leaves no writable mapping to clean. The mapping stays the place pieces are
//! hashed and sent from; reads of pages written with `pwrite` fault in sixteen pages at
//! a time, and see the same page cache.
//!
//! The runtime only sees iovecs (addresses), so a writable [`Storage`](super::Storage)
//! registers each file mapping here with the descriptor it keeps open, and the runtime
//! asks [`file_at`] for the spans a service hands it. A read-only storage (a seed)
//! registers its mappings too, for the other direction: uploads that splice a span's
//! pages from its file (`runtime::send_path`) instead of copying them from the mapping. Addresses of live mappings never
//! overlap, so one process-wide table serves every storage in the process.

use parking_lot::RwLock;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What went through a storage's files: `pwrite` calls and the bytes they wrote.
#[derive(Debug, Default)]
pub struct Written {
    calls: AtomicU64,
    bytes: AtomicU64,
}

impl Written {
    /// `(calls, bytes)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug, Clone)]
struct Region {
    start: usize,
    end: usize,
    fd: RawFd,
    /// Bytes written through this region's file (shared with the storage, for its stats).
    written: Arc<Written>,
}

/// Registered regions, sorted by start address.
static REGIONS: RwLock<Vec<Region>> = RwLock::new(Vec::new());

/// Where an address lies in a registered file, and how much of the file's mapping
/// follows it.
#[derive(Debug, Clone)]
pub struct FileAt {
    /// The file's descriptor. Valid as long as the mapping the address points into is:
    /// whoever keeps that memory alive (the push_span contract of the runtime) keeps the
    /// descriptor open too.
    pub fd: RawFd,
    /// Offset of the address in the file.
    pub offset: u64,
    /// Bytes from the address to the end of the mapping.
    pub len: usize,
    written: Arc<Written>,
}

impl FileAt {
    /// Counts one `pwrite` of `n` bytes through the file.
    pub fn wrote(&self, n: usize) {
        self.written.calls.fetch_add(1, Ordering::Relaxed);
        self.written.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The registered file that `ptr` points into, if any.
pub fn file_at(ptr: *const u8) -> Option<FileAt> {
    let addr = ptr as usize;
    let regions = REGIONS.read();
    // The last region starting at or before `addr`.
    let i = regions
        .partition_point(|r| r.start <= addr)
        .checked_sub(1)?;
    let r = &regions[i];
    (addr < r.end).then(|| FileAt {
        fd: r.fd,
        offset: (addr - r.start) as u64,
        len: r.end - addr,
        written: r.written.clone(),
    })
}

/// A registration; removed from the table when dropped (before the mapping and the
/// descriptor go, which the owner guarantees by dropping this first).
#[derive(Debug)]
pub(crate) struct Registered {
    start: usize,
}

/// Registers the mapping `start..start+len` of the file open as `fd`; `written` counts
/// the bytes later written through it.
pub(crate) fn register(
    start: *const u8,
    len: usize,
    fd: RawFd,
    written: Arc<Written>,
) -> Registered {
    let start = start as usize;
    let region = Region {
        start,
        end: start + len,
        fd,
        written,
    };
    let mut regions = REGIONS.write();
    let at = regions.partition_point(|r| r.start < start);
    regions.insert(at, region);
    Registered { start }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut regions = REGIONS.write();
        if let Some(i) = regions.iter().position(|r| r.start == self.start) {
            regions.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_to_their_region_until_it_is_dropped() {
        // Addresses are only compared, never dereferenced: fake ones will do.
        let counter = Arc::new(Written::default());
        let a = register(0x10_0000 as *const u8, 0x1000, 7, counter.clone());
        let b = register(0x30_0000 as *const u8, 0x2000, 9, counter.clone());
        let at = file_at(0x30_0010 as *const u8).expect("inside b");
        assert_eq!((at.fd, at.offset, at.len), (9, 0x10, 0x1ff0));
        let at = file_at(0x10_0000 as *const u8).expect("first byte of a");
        assert_eq!((at.fd, at.offset, at.len), (7, 0, 0x1000));
        assert!(
            file_at(0x10_1000 as *const u8).is_none(),
            "one past a's end"
        );
        assert!(file_at(0x0f_ffff as *const u8).is_none(), "before a");
        at.wrote(5);
        assert_eq!(counter.get(), (1, 5));
        drop(a);
        assert!(file_at(0x10_0000 as *const u8).is_none(), "a unregistered");
        assert!(file_at(0x30_0000 as *const u8).is_some(), "b still there");
        drop(b);
        assert!(file_at(0x30_0000 as *const u8).is_none());
    }
}
