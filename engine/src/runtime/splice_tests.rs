//! The send paths through real sockets: a service sends BitTorrent-like framing (a
//! 13-byte header, then a block from a file mapping registered with `storage::files`)
//! over 127.0.0.1, and a plain reader checks every byte, per send path; the splice path
//! against a reader that resets mid-stream; and the start-up fallback decision.

use super::send_path::choose;
use super::*;
use crate::storage::files;
use crossbeam_channel::{Receiver, Sender};
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;

const WAIT: Duration = Duration::from_secs(30);
const BLOCK: usize = 16 << 10;
/// Blocks start 100 bytes into the file, so each touches five pages, not four.
const FIRST: usize = 100;

/// A read-only file mapping registered for splicing, as a seed's storage holds it.
struct Source {
    _file: std::fs::File,
    map: memmap2::Mmap,
    _reg: files::Registered,
    /// The descriptor registered instead of `_file`, if any (kept open with it).
    _other: Option<std::fs::File>,
}

// SAFETY: the mapping is only read (by the kernel, under push_span's contract), and the
// registration is a plain table entry.
unsafe impl Send for Source {}
// SAFETY: as above.
unsafe impl Sync for Source {}

fn source(len: usize) -> (tempfile::NamedTempFile, Arc<Source>) {
    source_with(len, false)
}

/// `write_only_fd`: the mapping is registered with a descriptor open for writing only,
/// so every splice from it fails (EBADF) while the mapping itself reads fine.
fn source_with(len: usize, write_only_fd: bool) -> (tempfile::NamedTempFile, Arc<Source>) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let content = super::tests::pattern(0x2545_f491_4f6c_dd1d, len);
    std::fs::write(f.path(), &content).unwrap();
    let file = std::fs::File::open(f.path()).unwrap();
    // SAFETY: a private temp file nobody writes or truncates while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let other = write_only_fd.then(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap()
    });
    let fd = other.as_ref().unwrap_or(&file).as_raw_fd();
    let reg = files::register(
        map.as_ptr(),
        map.len(),
        fd,
        Arc::new(files::Written::default()),
    );
    (
        f,
        Arc::new(Source {
            _file: file,
            map,
            _reg: reg,
            _other: other,
        }),
    )
}

/// Drop the file's pages from the page cache, so the first splice reads them from disk.
fn evict(src: &Source) {
    src._file.sync_all().unwrap();
    // SAFETY: posix_fadvise on an open descriptor; advice only.
    let r = unsafe { libc::posix_fadvise(src._file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

/// The blocks of the file after its first `FIRST` bytes.
fn blocks(len: usize) -> Vec<(usize, usize)> {
    (FIRST..len)
        .step_by(BLOCK)
        .map(|at| (at, BLOCK.min(len - at)))
        .collect()
}

/// The stream the service sends: per block, its index in a 13-byte header, then the block.
fn expected(src: &Source) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (at, len)) in blocks(src.map.len()).into_iter().enumerate() {
        out.extend_from_slice(&header(i));
        out.extend_from_slice(&src.map[at..at + len]);
    }
    out
}

fn header(i: usize) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[..4].copy_from_slice(&(i as u32).to_be_bytes());
    h[4] = 7;
    h
}

struct Blocks {
    src: Arc<Source>,
    closed: Sender<String>,
}

struct Upload {
    src: Arc<Source>,
    next: usize,
}

impl Service for Blocks {
    type Conn = Upload;
    type Msg = ();
    type Error = String;

    fn on_connected(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: SocketAddr,
        _: Direction,
        _: Instant,
    ) -> Option<Upload> {
        Some(Upload {
            src: self.src.clone(),
            next: 0,
        })
    }

    fn on_bytes(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: &mut Upload,
        bytes: &[u8],
        _: Instant,
    ) -> Result<usize, String> {
        Ok(bytes.len())
    }

    /// One block per call, as a peer queues them.
    fn next_send(&mut self, conn: &mut Upload, out: &mut SendBuf<'_>, _: Instant) -> bool {
        let all = blocks(conn.src.map.len());
        let Some(&(at, len)) = all.get(conn.next) else {
            return false;
        };
        out.push_bytes(&header(conn.next));
        // SAFETY: inside the mapping, which this Conn keeps alive (Arc) and nobody writes.
        unsafe { out.push_span(conn.src.map.as_ptr().add(at), len) };
        conn.next += 1;
        true
    }

    fn on_closed(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: Upload,
        reason: CloseCause<String>,
    ) {
        let _ = self.closed.send(reason.to_string());
    }
}

fn start(src: &Arc<Source>, path: SendPath) -> (Runtime<Blocks>, Receiver<String>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let cfg = RuntimeConfig {
        cores: 1,
        listen: None,
        tick: None,
        send_path: path,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::start(cfg, |_| Blocks {
        src: src.clone(),
        closed: tx.clone(),
    })
    .unwrap();
    assert_eq!(rt.send_path(), path, "{:?}", rt.send_path_note());
    (rt, rx)
}

/// Dial `listener` from the runtime and read `len` bytes from the accepted stream.
fn read_stream(rt: &Runtime<Blocks>, listener: &TcpListener, len: usize) -> Vec<u8> {
    read_from(rt, listener, len).0
}

/// The runtime dials `listener`; returns the accepted end, reads bounded by [`WAIT`].
fn dial_accept(rt: &Runtime<Blocks>, listener: &TcpListener) -> std::net::TcpStream {
    rt.mailbox(0)
        .unwrap()
        .dial(listener.local_addr().unwrap())
        .unwrap();
    let (c, _) = listener.accept().unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

fn read_from(
    rt: &Runtime<Blocks>,
    listener: &TcpListener,
    len: usize,
) -> (Vec<u8>, std::net::TcpStream) {
    let mut c = dial_accept(rt, listener);
    let mut got = vec![0u8; len];
    c.read_exact(&mut got).unwrap();
    (got, c)
}

#[test]
fn every_send_path_delivers_the_framed_blocks_byte_for_byte() {
    // 8 MiB and a bit: several pipe-sized batches and a short last block.
    let len = (8 << 20) + 1000;
    let (_f, src) = source(len);
    let want = expected(&src);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    for path in [
        SendPath::Copy,
        SendPath::Splice,
        SendPath::Auto,
        SendPath::ZeroCopy,
    ] {
        // Cold pages: the splice reads them from disk, which must not fail the chain.
        evict(&src);
        let (rt, _closed) = start(&src, path);
        let got = read_stream(&rt, &listener, want.len());
        assert!(
            got == want,
            "{path}: the stream differs from the file's blocks"
        );
        // The reader may have every byte before the core reaped the last completion:
        // count after the core stopped.
        let counters = rt.send_counters();
        rt.shutdown().unwrap();
        let (spliced, copied, zc) = (counters.spliced(), counters.copied(), counters.zc_sent());
        let (notifs, zc_copied) = counters.zc_notifs();
        match path {
            SendPath::Splice => assert_eq!((spliced, copied, zc), (want.len() as u64, 0, 0)),
            // 127.0.0.1 is this host: auto copies.
            SendPath::Copy | SendPath::Auto => {
                assert_eq!((spliced, copied, zc), (0, want.len() as u64, 0), "{path}")
            }
            SendPath::ZeroCopy => {
                assert_eq!((spliced, copied, zc), (0, 0, want.len() as u64));
                // Every send's notification arrived before the core stopped (it waits
                // for them); towards this host the kernel copies at delivery.
                assert!(notifs > 0 && zc_copied <= notifs, "{notifs} {zc_copied}");
            }
        }
        if path != SendPath::ZeroCopy {
            assert_eq!(notifs, 0, "{path}");
        }
    }
}

/// A reader that stops mid-stream and resets: the splice chain in flight ends (it does not
/// hold the connection open), the sender closes, and the next
/// connection gets its whole stream spliced.
#[test]
fn a_splicing_sender_closes_on_a_reset_and_keeps_serving() {
    let (rt, spliced_between, want_len) = reset_then_whole_stream(SendPath::Splice);
    let counters = rt.send_counters();
    rt.shutdown().unwrap();
    assert!(counters.spliced() >= spliced_between + want_len as u64);
}

/// A reader takes the first 3 MiB of a 32 MiB stream from a `path` sender and resets
/// (`SO_LINGER` 0); the sender must close for it (the splice's or send's socket error, or
/// the end of the stream on its receive when that step took the error first: not a
/// hang on a chain or notification that cannot finish); then a second reader gets the
/// whole stream. Returns the runtime, still running, the bytes spliced before the second
/// reader, and the stream's length.
fn reset_then_whole_stream(path: SendPath) -> (Runtime<Blocks>, u64, usize) {
    let (_f, src) = source(32 << 20);
    let want = expected(&src);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (rt, closed) = start(&src, path);
    let (first, c) = read_from(&rt, &listener, 3 << 20);
    assert!(first == want[..3 << 20], "the first 3 MiB differ");
    super::tests::reset(c);
    let reason = closed.recv_timeout(WAIT).expect("sender closed");
    assert!(
        reason.contains("reset") || reason.contains("pipe") || reason.contains("peer closed"),
        "expected the reset to close the sender, got {reason}"
    );
    let between = rt.send_counters().spliced();
    let got = read_stream(&rt, &listener, want.len());
    assert!(got == want, "the second stream differs");
    (rt, between, want.len())
}

/// A file the splice cannot read from: the failing step cancels the rest of its chain,
/// the connection closes with a storage error naming the splice (not a hang, not bytes
/// out of order), and the core goes on serving.
#[test]
fn a_failing_splice_step_closes_the_connection_with_a_storage_error() {
    let (_f, src) = source_with(1 << 20, true);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (rt, closed) = start(&src, SendPath::Splice);
    for _ in 0..2 {
        let mut c = dial_accept(&rt, &listener);
        let reason = closed.recv_timeout(WAIT).expect("sender closed");
        assert!(
            reason.contains("storage error") && reason.contains("splicing upload payload"),
            "{reason}"
        );
        // Whatever arrived before the failing step is the stream's start: the first
        // block's header (the chain failed at its first splice).
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(
            header(0).starts_with(&got),
            "{} bytes out of order",
            got.len()
        );
    }
    let counters = rt.send_counters();
    rt.shutdown().unwrap();
    assert_eq!(counters.spliced(), 0);
}

/// A reader that resets while zero-copy sends are in flight: the sender closes, its
/// entry (and the batch memory the kernel may still reference) stays until every
/// notification is in, the core serves the next connection whole, and it shuts down
/// without leaking an operation.
#[test]
fn a_zero_copy_sender_closes_on_a_reset_and_keeps_serving() {
    let (rt, _, _) = reset_then_whole_stream(SendPath::ZeroCopy);
    let counters = rt.send_counters();
    rt.shutdown().expect("no operation left in flight");
    let (notifs, _) = counters.zc_notifs();
    assert!(notifs > 0);
    assert_eq!(counters.copied(), 0);
}

#[test]
fn a_send_path_that_cannot_splice_falls_back_to_copy_and_says_why() {
    let no = |_| Err("no pipe".to_owned());
    let yes = |_| Ok(());
    assert_eq!(choose(SendPath::Copy, no), (SendPath::Copy, None));
    assert_eq!(choose(SendPath::Splice, yes), (SendPath::Splice, None));
    assert_eq!(choose(SendPath::Auto, yes), (SendPath::Auto, None));
    assert_eq!(choose(SendPath::ZeroCopy, yes), (SendPath::ZeroCopy, None));
    // The probe is asked about the path that was asked for.
    let mut probed = None;
    choose(SendPath::ZeroCopy, |p| {
        probed = Some(p);
        Ok(())
    });
    assert_eq!(probed, Some(SendPath::ZeroCopy));
    assert!(
        super::send_path::probe_for(SendPath::ZeroCopy).is_ok(),
        "6.1+ here"
    );
    for asked in [SendPath::Splice, SendPath::Auto, SendPath::ZeroCopy] {
        let (used, note) = choose(asked, no);
        assert_eq!(used, SendPath::Copy);
        let note = note.expect("a note");
        assert!(
            note.contains(&asked.to_string()) && note.contains("no pipe"),
            "{note}"
        );
    }
}
