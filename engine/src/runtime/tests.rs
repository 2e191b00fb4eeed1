//! Runtime tests over real sockets on 127.0.0.1 (port 0): echo across cores, a large transfer
//! mapping -> socket -> mapping through iovecs, shutdown with open connections, a peer that
//! resets mid-transfer, and the mailbox waking a ring blocked in `io_uring_enter`.

use super::*;
use crossbeam_channel::{Receiver, Sender};
use memmap2::MmapMut;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

const WAIT: Duration = Duration::from_secs(20);

fn config(cores: usize) -> RuntimeConfig {
    RuntimeConfig {
        cores,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        tick: None,
        connect_timeout: Duration::from_secs(5),
        ..RuntimeConfig::default()
    }
}

#[derive(Debug, PartialEq, Eq, Clone)]
enum Closed {
    ByPeer,
    Io(io::ErrorKind),
    Shutdown,
    Other(String),
}

fn closed<E: fmt::Display>(r: &CloseCause<E>) -> Closed {
    match r {
        CloseCause::PeerClosed => Closed::ByPeer,
        CloseCause::Io(e) => Closed::Io(e.kind()),
        CloseCause::Shutdown => Closed::Shutdown,
        other => Closed::Other(other.to_string()),
    }
}

// ---------- echo ----------

struct Echo {
    accepted: usize,
    closed: Sender<Closed>,
}

struct EchoConn {
    pending: Vec<u8>,
}

impl Service for Echo {
    type Conn = EchoConn;
    type Msg = ();
    type Error = String;

    fn on_connected(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: SocketAddr,
        _: Direction,
        _: Instant,
    ) -> Option<EchoConn> {
        self.accepted += 1;
        Some(EchoConn {
            pending: Vec::new(),
        })
    }
    fn next_recv(&mut self, conn: &mut EchoConn, _: &mut RecvIovecs<'_>) -> RecvTarget {
        if conn.pending.len() > 1 << 20 {
            RecvTarget::Pause
        } else {
            RecvTarget::Buffer { max: 0 }
        }
    }
    fn on_bytes(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        conn: &mut EchoConn,
        bytes: &[u8],
        _: Instant,
    ) -> Result<usize, String> {
        conn.pending.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn next_send(&mut self, conn: &mut EchoConn, out: &mut SendBuf<'_>, _: Instant) -> bool {
        if conn.pending.is_empty() {
            return false;
        }
        out.push_bytes(&conn.pending);
        conn.pending.clear();
        true
    }
    /// Any message: close every connection (exercises cancelling an in-flight receive).
    fn on_mailbox(
        &mut self,
        io: &mut CoreIo<'_, ()>,
        conns: &mut Conns<'_, EchoConn, String>,
        _: (),
        _: Instant,
    ) {
        for (id, _) in conns.iter_mut() {
            io.close(id);
        }
    }
    fn on_closed(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: EchoConn,
        reason: CloseCause<String>,
    ) {
        let _ = self.closed.send(closed(&reason));
    }
}

fn echo_runtime(cores: usize) -> (Runtime<Echo>, Receiver<Closed>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let rt = Runtime::start(config(cores), |_| Echo {
        accepted: 0,
        closed: tx.clone(),
    })
    .expect("start runtime");
    (rt, rx)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn echo_many_concurrent_clients_on_two_cores() {
    let (rt, closed_rx) = echo_runtime(2);
    let addr = rt.local_addr().unwrap();
    const THREADS: usize = 8;
    const PER_THREAD: usize = 8;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut streams: Vec<TcpStream> = (0..PER_THREAD).map(|_| connect(addr)).collect();
                let msgs: Vec<Vec<u8>> = (0..PER_THREAD)
                    .map(|i| pattern((t * 100 + i) as u64, 100_000 + i))
                    .collect();
                for (s, m) in streams.iter_mut().zip(&msgs) {
                    s.write_all(m).unwrap();
                }
                for (s, m) in streams.iter_mut().zip(&msgs) {
                    let mut back = vec![0; m.len()];
                    s.read_exact(&mut back).unwrap();
                    assert!(back == *m, "echo mismatch");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    // Clients dropped: every connection sees EOF.
    for _ in 0..THREADS * PER_THREAD {
        assert_eq!(
            closed_rx.recv_timeout(WAIT).expect("close event"),
            Closed::ByPeer
        );
    }
    let services = rt.shutdown().expect("clean shutdown");
    let accepted: Vec<usize> = services.iter().map(|s| s.accepted).collect();
    assert_eq!(accepted.iter().sum::<usize>(), THREADS * PER_THREAD);
    assert!(
        accepted.iter().all(|&n| n > 0),
        "SO_REUSEPORT spreads connections: {accepted:?}"
    );
}

#[test]
fn shutdown_with_connections_open() {
    let (rt, closed_rx) = echo_runtime(2);
    let addr = rt.local_addr().unwrap();
    let mut clients: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    for c in &mut clients {
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
    }
    let started = Instant::now();
    rt.shutdown().expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
    for _ in 0..10 {
        assert_eq!(
            closed_rx
                .try_recv()
                .expect("closed before shutdown returned"),
            Closed::Shutdown
        );
    }
    for c in &mut clients {
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected EOF after shutdown, got {other:?}"),
        }
    }
}

// ---------- mapping -> socket -> mapping ----------

/// A mapping's base pointer that may cross to a core thread.
#[derive(Clone, Copy)]
struct Base(*mut u8);
// SAFETY: the pointer is only dereferenced by the kernel under the push_span contracts, and
// the mapping it points to is kept alive by the Arc held next to it.
unsafe impl Send for Base {}

#[derive(Clone)]
struct Region {
    base: Base,
    len: usize,
    _owner: Arc<dyn std::any::Any + Send + Sync>,
}

fn region(map: MmapMut) -> Region {
    let mut map = map;
    let base = Base(map.as_mut_ptr());
    let len = map.len();
    Region {
        base,
        len,
        _owner: Arc::new(map),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Received(u64),
    Closed(Direction, Closed),
    Mailbox(u32),
    ConnectFailed(io::ErrorKind),
    Tick,
    /// An inbound connection was taken (tests that do not care skip it via `next_ev`).
    Accepted,
}

/// The next event other than `Accepted`.
fn next_ev(events: &Receiver<Ev>) -> Ev {
    loop {
        match events.recv_timeout(WAIT).expect("event before timeout") {
            Ev::Accepted => continue,
            ev => return ev,
        }
    }
}

struct Transfer {
    dst: Option<Region>,
    src: Option<Region>,
    /// Receive spans of this size (several per target) to exercise multi-iovec recvmsg.
    span: usize,
    events: Sender<Ev>,
}

enum TConn {
    Recv {
        region: Region,
        total: u64,
        done: u64,
        target: u64,
    },
    Send {
        region: Region,
        header_sent: bool,
        queued: usize,
    },
}

impl Service for Transfer {
    type Conn = TConn;
    type Msg = u32;
    type Error = String;

    fn on_connected(
        &mut self,
        _: &mut CoreIo<'_, u32>,
        _: ConnId,
        _: SocketAddr,
        d: Direction,
        _: Instant,
    ) -> Option<TConn> {
        if d == Direction::Inbound {
            let _ = self.events.send(Ev::Accepted);
        }
        match d {
            Direction::Inbound => Some(TConn::Recv {
                region: self.dst.clone()?,
                total: u64::MAX,
                done: 0,
                target: 0,
            }),
            Direction::Outbound => Some(TConn::Send {
                region: self.src.clone()?,
                header_sent: false,
                queued: 0,
            }),
        }
    }
    fn on_connect_failed(&mut self, _: &mut CoreIo<'_, u32>, _: SocketAddr, e: &io::Error) {
        let _ = self.events.send(Ev::ConnectFailed(e.kind()));
    }
    fn next_recv(&mut self, conn: &mut TConn, iov: &mut RecvIovecs<'_>) -> RecvTarget {
        match conn {
            TConn::Recv {
                total: u64::MAX, ..
            } => RecvTarget::Buffer { max: 0 },
            TConn::Recv {
                region,
                total,
                done,
                target,
            } if *done < *total => {
                let want = (*total - *done).min(4 * self.span as u64) as usize;
                let mut off = *done as usize;
                let end = off + want;
                while off < end {
                    let n = self.span.min(end - off);
                    // SAFETY: off+n <= total <= region.len (checked in on_bytes); the region's
                    // mapping is kept alive by the Arc in this Conn; only this connection
                    // writes to it.
                    unsafe { iov.push_span(region.base.0.add(off), n) };
                    off += n;
                }
                *target = want as u64;
                RecvTarget::Iovecs
            }
            TConn::Recv { .. } => RecvTarget::Buffer { max: 0 },
            TConn::Send { .. } => RecvTarget::Buffer { max: 0 },
        }
    }
    fn on_bytes(
        &mut self,
        _: &mut CoreIo<'_, u32>,
        _: ConnId,
        conn: &mut TConn,
        bytes: &[u8],
        _: Instant,
    ) -> Result<usize, String> {
        match conn {
            TConn::Recv { region, total, .. } if *total == u64::MAX => {
                let Some(h) = bytes.get(..8) else {
                    return Ok(0);
                };
                let len = u64::from_be_bytes(h.try_into().unwrap());
                if len > region.len as u64 {
                    return Err(format!("announced {len} bytes, room for {}", region.len));
                }
                *total = len;
                Ok(8)
            }
            _ => Err(format!("unexpected {} bytes", bytes.len())),
        }
    }
    fn on_recv_done(
        &mut self,
        _: &mut CoreIo<'_, u32>,
        _: ConnId,
        conn: &mut TConn,
        _: Instant,
    ) -> Result<(), String> {
        let TConn::Recv {
            total,
            done,
            target,
            ..
        } = conn
        else {
            return Err("not a receiver".into());
        };
        *done += *target;
        if *done == *total {
            let _ = self.events.send(Ev::Received(*done));
        }
        Ok(())
    }
    fn next_send(&mut self, conn: &mut TConn, out: &mut SendBuf<'_>, _: Instant) -> bool {
        let TConn::Send {
            region,
            header_sent,
            queued,
        } = conn
        else {
            return false;
        };
        if !*header_sent {
            out.push_bytes(&(region.len as u64).to_be_bytes());
            *header_sent = true;
        }
        if *queued == region.len {
            return false;
        }
        let n = (region.len - *queued).min(1 << 20);
        // SAFETY: queued+n <= len; the mapping lives as long as this Conn (Arc) and is not
        // written while the transfer runs.
        unsafe { out.push_span(region.base.0.add(*queued), n) };
        *queued += n;
        true
    }
    fn on_mailbox(
        &mut self,
        _: &mut CoreIo<'_, u32>,
        _: &mut Conns<'_, TConn, String>,
        msg: u32,
        _: Instant,
    ) {
        let _ = self.events.send(Ev::Mailbox(msg));
    }
    fn on_tick(&mut self, _: &mut CoreIo<'_, u32>, _: &mut Conns<'_, TConn, String>, _: Instant) {
        let _ = self.events.send(Ev::Tick);
    }
    fn on_closed(
        &mut self,
        _: &mut CoreIo<'_, u32>,
        _: ConnId,
        conn: TConn,
        reason: CloseCause<String>,
    ) {
        let d = match conn {
            TConn::Recv { .. } => Direction::Inbound,
            TConn::Send { .. } => Direction::Outbound,
        };
        let _ = self.events.send(Ev::Closed(d, closed(&reason)));
    }
}

fn temp_map(len: usize, fill: Option<u64>) -> (tempfile::NamedTempFile, MmapMut) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len as u64).unwrap();
    // SAFETY: a private temp file nobody else maps or truncates during the test.
    let mut map = unsafe { MmapMut::map_mut(f.as_file()) }.unwrap();
    if let Some(seed) = fill {
        for (i, chunk) in map.chunks_mut(1 << 20).enumerate() {
            chunk.copy_from_slice(&pattern(seed + i as u64, chunk.len()));
        }
    }
    (f, map)
}

#[test]
fn transfer_256_mib_mapping_to_mapping() {
    const LEN: usize = 256 << 20;
    let (_sf, src) = temp_map(LEN, Some(7));
    let (_df, dst) = temp_map(LEN, None);
    let (src, dst) = (region(src), region(dst));
    let (tx, events) = crossbeam_channel::unbounded();
    let mut cfg = config(2);
    cfg.send_batch = 4 << 20;
    let rt = Runtime::start(cfg, |_| Transfer {
        dst: Some(dst.clone()),
        src: Some(src.clone()),
        span: 100_000,
        events: tx.clone(),
    })
    .unwrap();
    let started = Instant::now();
    rt.mailbox(0)
        .unwrap()
        .dial(rt.local_addr().unwrap())
        .unwrap();
    assert_eq!(next_ev(&events), Ev::Received(LEN as u64));
    let secs = started.elapsed().as_secs_f64();
    eprintln!("256 MiB in {secs:.3}s = {:.0} MiB/s", 256.0 / secs);
    rt.shutdown().unwrap();
    // SAFETY: the runtime is stopped; nothing writes the mappings any more.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(src.base.0, LEN),
            std::slice::from_raw_parts(dst.base.0, LEN),
        )
    };
    assert!(a == b, "received bytes differ from the source");
}

/// A writable one-file `Storage` of `len` bytes in pieces of `piece_len` (its file is
/// registered for pwrite, as a download's is) and a one-core runtime whose inbound
/// connections receive into its mapping in spans of `span` bytes.
struct IntoStorage {
    dir: tempfile::TempDir,
    storage: Arc<crate::storage::Storage>,
    lengths: crate::geometry::Lengths,
    rt: Runtime<Transfer>,
    events: Receiver<Ev>,
}

fn into_storage(len: usize, piece_len: u64, src: Option<Region>, span: usize) -> IntoStorage {
    use crate::geometry::{BlockRef, Lengths};
    use crate::storage::{FileSpec, Storage};
    let dir = tempfile::tempdir().unwrap();
    let files = [FileSpec {
        path: "payload.bin".into(),
        length: len as u64,
        pad: false,
    }];
    let pieces = (len as u64).div_ceil(piece_len);
    let lengths = Lengths::new(len as u64, piece_len, pieces).unwrap();
    let storage = Arc::new(Storage::create(dir.path(), &files, lengths).unwrap());
    assert!(storage.writes_through_files());
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }];
    let first = BlockRef {
        piece: lengths.piece(0).unwrap(),
        offset: 0,
        len: 1,
    };
    assert_eq!(storage.block_iovecs(first, &mut iov), 1);
    let dst = Region {
        base: Base(iov[0].iov_base.cast()),
        len,
        _owner: storage.clone(),
    };
    let (tx, events) = crossbeam_channel::unbounded();
    let rt = Runtime::start(config(1), |_| Transfer {
        dst: Some(dst.clone()),
        src: src.clone(),
        span,
        events: tx.clone(),
    })
    .unwrap();
    IntoStorage {
        dir,
        storage,
        lengths,
        rt,
        events,
    }
}

/// The receiving side of a download: payload arrives through the buffer and `pwrite`
/// rather than through the mapping; spans of 100 000 bytes cut across every buffer
/// receive.
#[test]
fn transfer_into_a_storage_file_is_written_through_the_file() {
    const LEN: usize = 64 << 20;
    let (_sf, src) = temp_map(LEN, Some(11));
    let src = region(src);
    let t = into_storage(LEN, 1 << 20, Some(src.clone()), 100_000);
    t.rt.mailbox(0)
        .unwrap()
        .dial(t.rt.local_addr().unwrap())
        .unwrap();
    assert_eq!(next_ev(&t.events), Ev::Received(LEN as u64));
    t.rt.shutdown().unwrap();
    assert_eq!(
        t.storage.file_writes().1,
        LEN as u64,
        "every payload byte went through pwrite"
    );
    // Read back through the file, not the mapping the runtime was handed.
    let on_disk = std::fs::read(t.dir.path().join("payload.bin")).unwrap();
    // SAFETY: the runtime is stopped; nothing writes the source mapping any more.
    let sent = unsafe { std::slice::from_raw_parts(src.base.0, LEN) };
    assert!(on_disk == sent, "the file differs from the bytes sent");
    // The mapping shows the same page cache.
    let piece = t.lengths.piece(5).unwrap();
    let expect: [u8; 20] = {
        use sha1::Digest;
        sha1::Sha1::digest(&sent[5 << 20..6 << 20]).into()
    };
    assert_eq!(t.storage.hash_piece(piece), expect);
}

/// A block that trickles in (a packet or two per receive, as on a slow link) is gathered
/// in the buffer and written with one pwrite per span, not one per receive.
#[test]
fn a_trickling_block_is_written_once() {
    const LEN: usize = 1 << 20;
    const SPAN: usize = 16 << 10;
    let t = into_storage(LEN, 1 << 20, None, SPAN);
    let data = pattern(3, LEN);
    let mut client = connect(t.rt.local_addr().unwrap());
    client.set_nodelay(true).unwrap();
    client.write_all(&(LEN as u64).to_be_bytes()).unwrap();
    for chunk in data.chunks(1000) {
        client.write_all(chunk).unwrap();
    }
    assert_eq!(next_ev(&t.events), Ev::Received(LEN as u64));
    drop(client);
    t.rt.shutdown().unwrap();
    assert_eq!(
        t.storage.file_writes(),
        ((LEN / SPAN) as u64, LEN as u64),
        "one pwrite per span"
    );
    assert!(std::fs::read(t.dir.path().join("payload.bin")).unwrap() == data);
}

/// A payload file that refuses the write (here: registered with a descriptor open for
/// reading only, so pwrite fails with EBADF) closes the connection with
/// `CloseCause::Storage`, not `Io`: the service must be able to tell a disk that fails
/// from a peer that went away. The core keeps serving.
#[test]
fn a_failing_payload_write_closes_with_a_storage_cause() {
    use crate::storage::files;
    use std::os::fd::AsRawFd;
    const LEN: usize = 1 << 20;
    /// Dropped in field order: the registration before the descriptor and the mapping.
    struct ReadOnly {
        _reg: files::Registered,
        _ro: std::fs::File,
        _map: MmapMut,
    }
    let (f, mut map) = temp_map(LEN, None);
    let ro = std::fs::File::open(f.path()).unwrap();
    let base = Base(map.as_mut_ptr());
    let reg = files::register(
        map.as_ptr(),
        LEN,
        ro.as_raw_fd(),
        Arc::new(files::Written::default()),
    );
    let dst = Region {
        base,
        len: LEN,
        _owner: Arc::new(ReadOnly {
            _reg: reg,
            _ro: ro,
            _map: map,
        }),
    };
    let (tx, events) = crossbeam_channel::unbounded();
    let rt = Runtime::start(config(1), |_| Transfer {
        dst: Some(dst.clone()),
        src: None,
        span: 16 << 10,
        events: tx.clone(),
    })
    .unwrap();
    let addr = rt.local_addr().unwrap();
    let mut c = connect(addr);
    c.write_all(&(LEN as u64).to_be_bytes()).unwrap();
    // The server closes once the first write fails: a reset while we write is expected.
    let _ = c.write_all(&pattern(4, LEN));
    match next_ev(&events) {
        Ev::Closed(Direction::Inbound, Closed::Other(why)) => assert!(
            why.starts_with("storage error: writing received payload to its file")
                && why.contains("os error 9"),
            "{why}"
        ),
        ev => panic!("expected a storage close, got {ev:?}"),
    }
    // The core still serves: another connection is accepted and answered.
    let mut c2 = connect(addr);
    c2.write_all(&(u64::MAX).to_be_bytes()).unwrap();
    assert_eq!(
        next_ev(&events),
        Ev::Closed(
            Direction::Inbound,
            Closed::Other(format!(
                "protocol error: announced {} bytes, room for {LEN}",
                u64::MAX
            ))
        )
    );
    rt.shutdown().unwrap();
}

#[test]
fn peer_reset_mid_transfer_leaves_loop_running() {
    const LEN: usize = 8 << 20;
    let (_df, dst) = temp_map(LEN, None);
    let dst = region(dst);
    let (tx, events) = crossbeam_channel::unbounded();
    let rt = Runtime::start(config(1), |_| Transfer {
        dst: Some(dst.clone()),
        src: None,
        span: 65_536,
        events: tx.clone(),
    })
    .unwrap();
    let addr = rt.local_addr().unwrap();
    // Announce 8 MiB, send 1 MiB, then reset (SO_LINGER 0 makes close send RST).
    let mut c = connect(addr);
    // Reset only once the core holds the connection (a reset still in the accept queue is
    // dropped silently by `getpeername` failing, which is not what this test is about).
    assert_eq!(events.recv_timeout(WAIT).unwrap(), Ev::Accepted);
    c.write_all(&(LEN as u64).to_be_bytes()).unwrap();
    c.write_all(&pattern(1, 1 << 20)).unwrap();
    reset(c);
    assert_eq!(
        next_ev(&events),
        Ev::Closed(
            Direction::Inbound,
            Closed::Io(io::ErrorKind::ConnectionReset)
        )
    );
    // The core still serves: a complete transfer from a fresh client.
    let data = pattern(2, LEN);
    let mut c = connect(addr);
    c.write_all(&(LEN as u64).to_be_bytes()).unwrap();
    c.write_all(&data).unwrap();
    assert_eq!(next_ev(&events), Ev::Received(LEN as u64));
    drop(c);
    assert_eq!(
        next_ev(&events),
        Ev::Closed(Direction::Inbound, Closed::ByPeer)
    );
    rt.shutdown().unwrap();
    // SAFETY: runtime stopped.
    let got = unsafe { std::slice::from_raw_parts(dst.base.0, LEN) };
    assert!(got == &data[..]);
}

#[test]
fn dial_refused_reports_connect_failed() {
    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, events) = crossbeam_channel::unbounded();
    let mut cfg = config(1);
    cfg.listen = None;
    let (_f, src) = temp_map(4096, Some(1));
    let src = region(src);
    let rt = Runtime::start(cfg, |_| Transfer {
        dst: None,
        src: Some(src.clone()),
        span: 4096,
        events: tx.clone(),
    })
    .unwrap();
    rt.mailbox(0).unwrap().dial(port).unwrap();
    assert_eq!(
        next_ev(&events),
        Ev::ConnectFailed(io::ErrorKind::ConnectionRefused)
    );
    rt.shutdown().unwrap();
}

/// The sending side (a seeder's upload, `sendmsg` of header bytes and mapped spans)
/// against a reader that takes its time: sends come back short while the reader's
/// buffers are full and the remainder is sent again, and every byte read is the
/// mapping's, in order. A reader that then stops and resets closes the connection with a
/// socket error, and the core keeps sending to the next one.
#[test]
fn a_slow_reader_gets_every_byte_and_one_that_resets_mid_send_closes_the_sender() {
    const LEN: usize = 32 << 20;
    let (_f, src) = temp_map(LEN, Some(9));
    let src = region(src);
    let (tx, events) = crossbeam_channel::unbounded();
    let mut cfg = config(1);
    cfg.listen = None;
    let rt = Runtime::start(cfg, |_| Transfer {
        dst: None,
        src: Some(src.clone()),
        span: 4096,
        events: tx.clone(),
    })
    .unwrap();
    // SAFETY: nothing writes the source mapping while the test runs.
    let sent = unsafe { std::slice::from_raw_parts(src.base.0, LEN) };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let read_header = |c: &mut TcpStream| {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut h = [0u8; 8];
        c.read_exact(&mut h).unwrap();
        assert_eq!(u64::from_be_bytes(h), LEN as u64);
    };

    // A reader that stops after 4 MiB (the sender's 1 MiB sends fill its buffers), then
    // resets the connection.
    rt.mailbox(0)
        .unwrap()
        .dial(listener.local_addr().unwrap())
        .unwrap();
    let (mut c, _) = listener.accept().unwrap();
    read_header(&mut c);
    let mut got = vec![0u8; 4 << 20];
    c.read_exact(&mut got).unwrap();
    assert!(
        got == sent[..4 << 20],
        "the first 4 MiB differ from the mapping"
    );
    reset(c);
    match next_ev(&events) {
        Ev::Closed(Direction::Outbound, Closed::Io(kind)) => assert!(
            matches!(
                kind,
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{kind:?}"
        ),
        ev => panic!("expected the sender closed by a socket error, got {ev:?}"),
    }

    // The core still sends: a reader taking 64 KiB at a time gets all 32 MiB, in order.
    rt.mailbox(0)
        .unwrap()
        .dial(listener.local_addr().unwrap())
        .unwrap();
    let (mut c, _) = listener.accept().unwrap();
    read_header(&mut c);
    let mut got = Vec::with_capacity(LEN);
    let mut chunk = vec![0u8; 64 << 10];
    while got.len() < LEN {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got == sent, "the bytes read differ from the mapping");
    drop(c);
    rt.shutdown().unwrap();
}

/// State letter (R, S, D...) of the thread named `name` in this process.
fn thread_state(name: &str) -> Option<char> {
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = t.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            return stat.rsplit(')').next()?.trim().chars().next();
        }
    }
    None
}

#[test]
fn mailbox_wakes_a_blocked_ring() {
    let (tx, events) = crossbeam_channel::unbounded();
    let mut cfg = config(1);
    cfg.listen = None;
    cfg.name = "mbox-wake".into();
    let rt = Runtime::start(cfg, |_| Transfer {
        dst: None,
        src: None,
        span: 1,
        events: tx.clone(),
    })
    .unwrap();
    for round in 0..3u32 {
        // Nothing else can complete on this ring (no listener, no tick): wait until the core
        // thread sleeps in io_uring_enter, then the message alone must wake it.
        let deadline = Instant::now() + WAIT;
        while !matches!(thread_state("mbox-wake-0"), Some('S')) {
            assert!(Instant::now() < deadline, "core never went idle");
            std::thread::yield_now();
        }
        rt.mailbox(0).unwrap().send(round).unwrap();
        assert_eq!(next_ev(&events), Ev::Mailbox(round));
    }
    rt.shutdown().unwrap();
}

#[test]
fn tick_fires_periodically() {
    let (tx, events) = crossbeam_channel::unbounded();
    let mut cfg = config(1);
    cfg.listen = None;
    cfg.tick = Some(Duration::from_millis(5));
    let rt = Runtime::start(cfg, |_| Transfer {
        dst: None,
        src: None,
        span: 1,
        events: tx.clone(),
    })
    .unwrap();
    for _ in 0..3 {
        assert_eq!(next_ev(&events), Ev::Tick);
    }
    rt.shutdown().unwrap();
}

#[test]
fn refused_bytes_close_with_protocol_error() {
    let (_df, dst) = temp_map(4096, None);
    let dst = region(dst);
    let (tx, events) = crossbeam_channel::unbounded();
    let rt = Runtime::start(config(1), |_| Transfer {
        dst: Some(dst.clone()),
        src: None,
        span: 4096,
        events: tx.clone(),
    })
    .unwrap();
    let mut c = connect(rt.local_addr().unwrap());
    c.write_all(&(1u64 << 40).to_be_bytes()).unwrap();
    assert_eq!(
        next_ev(&events),
        Ev::Closed(
            Direction::Inbound,
            Closed::Other("protocol error: announced 1099511627776 bytes, room for 4096".into())
        )
    );
    let mut b = [0u8; 1];
    assert!(
        matches!(c.read(&mut b), Ok(0) | Err(_)),
        "server closed the connection"
    );
    rt.shutdown().unwrap();
}

/// Never consumes anything: its buffer must stop growing at `max_message`.
struct Hoarder(Sender<Closed>);

impl Service for Hoarder {
    type Conn = ();
    type Msg = ();
    type Error = String;
    fn on_connected(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: SocketAddr,
        _: Direction,
        _: Instant,
    ) -> Option<()> {
        Some(())
    }
    fn on_bytes(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: &mut (),
        _: &[u8],
        _: Instant,
    ) -> Result<usize, String> {
        Ok(0)
    }
    fn on_closed(&mut self, _: &mut CoreIo<'_, ()>, _: ConnId, _: (), reason: CloseCause<String>) {
        let _ = self.0.send(closed(&reason));
    }
}

#[test]
fn oversized_message_closes_connection() {
    let (tx, closed_rx) = crossbeam_channel::unbounded();
    let mut cfg = config(1);
    cfg.recv_buffer = 16 * 1024;
    cfg.max_message = 100_000;
    let rt = Runtime::start(cfg, |_| Hoarder(tx.clone())).unwrap();
    let mut c = connect(rt.local_addr().unwrap());
    // The server may close while we still write: a reset here is expected.
    let _ = c.write_all(&pattern(3, 300_000));
    assert_eq!(
        closed_rx.recv_timeout(WAIT).unwrap(),
        Closed::Other("message larger than 100000 bytes".into())
    );
    rt.shutdown().unwrap();
}

#[test]
fn service_closes_connections_with_receives_in_flight() {
    let (rt, closed_rx) = echo_runtime(2);
    let addr = rt.local_addr().unwrap();
    let mut clients: Vec<TcpStream> = (0..6).map(|_| connect(addr)).collect();
    for c in &mut clients {
        c.write_all(b"y").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
    }
    // Every connection now has a receive outstanding; ask both cores to close them all.
    for m in rt.mailboxes() {
        m.send(()).unwrap();
    }
    for _ in 0..6 {
        assert_eq!(
            closed_rx.recv_timeout(WAIT).unwrap(),
            Closed::Other("closed locally".into())
        );
    }
    for c in &mut clients {
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0, "client sees EOF");
    }
    rt.shutdown().unwrap();
}

#[test]
fn connect_timeout_is_reported() {
    // A listener whose accept queue is full drops further SYNs, so a dial never completes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    // SAFETY: listen(2) on a socket we own, shrinking its backlog to the minimum.
    let rc = unsafe { libc::listen(fd, 0) };
    assert_eq!(rc, 0);
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let (tx, events) = crossbeam_channel::unbounded();
    let mut cfg = config(1);
    cfg.listen = None;
    cfg.connect_timeout = Duration::from_millis(300);
    let (_f, src) = temp_map(4096, Some(1));
    let src = region(src);
    let rt = Runtime::start(cfg, |_| Transfer {
        dst: None,
        src: Some(src.clone()),
        span: 4096,
        events: tx.clone(),
    })
    .unwrap();
    let started = Instant::now();
    rt.mailbox(0).unwrap().dial(target).unwrap();
    assert_eq!(next_ev(&events), Ev::ConnectFailed(io::ErrorKind::TimedOut));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "failed by timeout, not refusal"
    );
    rt.shutdown().unwrap();
}

/// Closes `c` with a reset instead of a FIN: `SO_LINGER` with a zero timeout makes close
/// send RST, what a peer that crashes or is killed mid-transfer looks like.
pub(super) fn reset(c: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a pointer to a live linger struct and its size.
    let r = unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// With [`RuntimeConfig::unsent_limit`], a dialed connection whose peer reads nothing
/// keeps only about the bound written and unsent in its socket (the bound plus a send
/// that began under it), so a message queued later waits behind that little; without
/// the bound the socket's whole buffer piles up. Returns the socket's `TCP_NOTSENT_LOWAT`
/// and its unsent bytes once the sender is stuck.
fn unsent_when_stuck(limit: Option<u32>) -> (i32, usize) {
    use std::os::fd::{AsRawFd, RawFd};
    const LEN: usize = 16 << 20;
    let (_sf, src) = temp_map(LEN, Some(5));
    let src = region(src);
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let (tx, _events) = crossbeam_channel::unbounded();
    let mut cfg = config(1);
    cfg.unsent_limit = limit;
    let rt = Runtime::start(cfg, |_| Transfer {
        dst: None,
        src: Some(src.clone()),
        span: 1 << 16,
        events: tx.clone(),
    })
    .unwrap();
    rt.mailbox(0).unwrap().dial(sink_addr).unwrap();
    // Accepted and never read: the sender fills the window, then its socket.
    let (held, _) = sink.accept().unwrap();
    let own = held.as_raw_fd();
    // The runtime's socket is the one in this process whose peer is the sink.
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .find(|&fd| fd != own && net::peer_addr(fd).ok() == Some(sink_addr))
        .expect("the runtime's connection to the sink");
    let int_opt = |level, name| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live c_int and its size; the kernel writes at most `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "getsockopt");
        v
    };
    let queued = |req| {
        let mut v: libc::c_int = 0;
        // SAFETY: SIOCOUTQ / SIOCOUTQNSD write one int.
        let r = unsafe { libc::ioctl(fd, req, &mut v) };
        assert_eq!(r, 0, "ioctl");
        v as usize
    };
    let lowat = int_opt(libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT);
    // Stuck = everything queued in the socket unchanged for 200 ms (bounded: 10 s).
    let (mut last, mut same, mut unsent) = (usize::MAX, 0, 0);
    for _ in 0..1000 {
        let q = queued(libc::TIOCOUTQ);
        unsent = queued(libc::SIOCOUTQNSD);
        if q == last && q > 0 {
            same += 1;
            if same == 20 {
                break;
            }
        } else {
            (last, same) = (q, 0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(same, 20, "the sender never got stuck");
    rt.shutdown().unwrap();
    drop(held);
    (lowat, unsent)
}

#[test]
fn an_unsent_bound_keeps_little_written_and_unsent() {
    const LIMIT: u32 = 32 << 10;
    let (lowat, unsent) = unsent_when_stuck(Some(LIMIT));
    assert_eq!(lowat, LIMIT as i32, "the bound is set on a dialed socket");
    assert!(
        unsent <= 3 * LIMIT as usize,
        "{unsent} bytes unsent under a {LIMIT}-byte bound"
    );
    let (_, unbounded) = unsent_when_stuck(None);
    assert!(
        unbounded > 3 * LIMIT as usize,
        "without the bound {unbounded} bytes were unsent: the test shows nothing"
    );
}
