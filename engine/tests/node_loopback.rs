//! Two nodes in one process on loopback: a seeder and a downloader over the real
//! io_uring runtime, mapped storage and hasher pool.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use corvid_engine::geometry::Lengths;
use corvid_engine::hash::HashPool;
use corvid_engine::node::{self, Mode, NodeConfig, NodeEvent, StopFlag};
use corvid_engine::storage::{FileSpec, Storage};

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `x.bin`, `len` pseudo-random bytes, written into `root`.
fn one_file(root: &Path, len: usize, seed: u64) -> Vec<FileSpec> {
    std::fs::write(root.join("x.bin"), payload(len, seed)).unwrap();
    vec![FileSpec {
        path: "x.bin".into(),
        length: len as u64,
        pad: false,
    }]
}

/// The geometry (256 KiB pieces) and piece hashes of `files` as they are under `root`.
fn hash_files(root: &Path, files: &[FileSpec]) -> (Lengths, Arc<Vec<[u8; 20]>>) {
    let total: u64 = files.iter().map(|f| f.length).sum();
    let piece = 256 * 1024;
    let lengths = Lengths::new(total, piece, total.div_ceil(piece)).unwrap();
    let storage = Storage::open_readonly(root, files, lengths).unwrap();
    let hashes = HashPool::new(1).hash_all(&Arc::new(storage), &mut |_| {});
    (lengths, Arc::new(hashes))
}

/// Runs a seeding node on a thread of its own until `stop`; returns the thread and the
/// address it listens on.
fn start_seeder(
    cfg: NodeConfig,
    stop: &StopFlag,
) -> (
    std::thread::JoinHandle<Result<node::NodeReport, node::NodeError>>,
    SocketAddr,
) {
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let stop = stop.clone();
    let seeder = std::thread::spawn(move || {
        node::run(cfg, stop, &mut |ev| {
            if let NodeEvent::Listening { peer_addr } = ev {
                addr_tx.send(*peer_addr).unwrap();
            }
        })
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("seeder listening");
    (seeder, addr)
}

fn config(
    mode: Mode,
    root: &Path,
    files: &[FileSpec],
    lengths: Lengths,
    hashes: Arc<Vec<[u8; 20]>>,
) -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: 2,
        hash_threads: 2,
        stall_timeout: Duration::from_secs(30),
        ..NodeConfig::new(
            mode,
            [7; 20],
            lengths,
            hashes,
            files.to_vec(),
            root.to_path_buf(),
        )
    }
}

#[test]
fn seeder_to_one_peer_over_io_uring() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let a = payload(3 * 1024 * 1024 + 12_345, 1);
    let b = payload(700_000, 2);
    std::fs::write(src.join("d/a.bin"), &a).unwrap();
    std::fs::write(src.join("b.bin"), &b).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    let files = vec![
        FileSpec {
            path: "b.bin".into(),
            length: b.len() as u64,
            pad: false,
        },
        FileSpec {
            path: "d/a.bin".into(),
            length: a.len() as u64,
            pad: false,
        },
        FileSpec {
            path: "empty".into(),
            length: 0,
            pad: false,
        },
    ];
    let total = (a.len() + b.len()) as u64;
    let (lengths, hashes) = hash_files(&src, &files);

    let seed_stop = StopFlag::new();
    let (seeder, seed_addr) = start_seeder(
        config(Mode::Seed, &src, &files, lengths, hashes.clone()),
        &seed_stop,
    );

    let mut cfg = config(Mode::Download, &dst, &files, lengths, hashes);
    cfg.peers = vec![seed_addr];
    let mut order = Vec::new();
    let report = node::run(cfg, StopFlag::new(), &mut |ev| match ev {
        NodeEvent::Complete { .. } => order.push("complete"),
        NodeEvent::Durable => order.push("durable"),
        _ => {}
    })
    .expect("download");
    assert!(report.complete);
    // A release is placed on `Durable`: it comes once, after the timed `Complete`.
    assert_eq!(order, ["complete", "durable"]);
    assert_eq!(report.transfer.bytes_from_seeder, total);
    assert_eq!(std::fs::read(dst.join("d/a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(dst.join("b.bin")).unwrap(), b);
    assert_eq!(std::fs::metadata(dst.join("empty")).unwrap().len(), 0);

    seed_stop.stop();
    let seed_report = seeder.join().unwrap().expect("seeder ran");
    assert_eq!(seed_report.transfer.bytes_up, total);
    // Every node reports how its swarm lock was used: both sides took it (the cores once
    // per batch, the control loop once per iteration), and each take was timed.
    for r in [&report, &seed_report] {
        let l = &r.swarm_lock;
        assert!(l.acquisitions > 0, "{l:?}");
        assert_eq!(l.hold_ns.count, l.acquisitions, "{l:?}");
        assert_eq!(l.wait_ns.count, l.acquisitions, "{l:?}");
        assert!(l.hold_ns.max >= l.hold_ns.p50 && l.hold_ns.p50 > 0, "{l:?}");
    }
    assert_eq!(report.wasted, 0, "a clean transfer drops nothing");
}

/// A seeder nobody connects to takes its swarm lock only on the control loop's tick
/// (5 a second), not in a spin: its control loop once spun on the closed channel of a
/// prefault thread that seeders do not start, locking the swarm ~700,000 times a second.
#[test]
fn an_idle_seeder_does_not_spin_on_its_swarm_lock() {
    let dir = tempfile::tempdir().unwrap();
    let files = one_file(dir.path(), 600_000, 3);
    let (lengths, hashes) = hash_files(dir.path(), &files);
    let cfg = config(Mode::Seed, dir.path(), &files, lengths, hashes);
    let stop = StopFlag::new();
    let mut progress = 0;
    let report = node::run(cfg, stop.clone(), &mut |ev| {
        // Progress comes every 500 ms: stop after the third, about 1.5 s in.
        if matches!(ev, NodeEvent::Progress(_)) {
            progress += 1;
            if progress == 3 {
                stop.stop();
            }
        }
    })
    .expect("seeder ran");
    let l = report.swarm_lock;
    assert!(l.acquisitions > 0, "{l:?}");
    assert!(
        l.per_second < 100.0,
        "an idle seeder locked its swarm {} times a second: {l:?}",
        l.per_second
    );
}

/// CPU time of the calling thread (user + system).
fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given, which lives on this stack.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is valid on Linux.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    assert_eq!(rc, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A download that has no piece to plan (no peer has announced any) does not spin: its
/// prefault thread and control loop once woke each other in a loop, asking for and
/// computing empty plans (three such peers on a 2-core host ran at 60-70% CPU each and
/// starved a link emulator until no byte moved). The control loop runs on the caller's
/// thread, so its CPU time over a second of waiting is measured here.
#[test]
fn a_download_with_nothing_to_plan_does_not_spin() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let files = one_file(&src, 2_000_000, 4);
    let (lengths, hashes) = hash_files(&src, &files);
    let dst = dir.path().join("dst");
    let cfg = config(Mode::Download, &dst, &files, lengths, hashes);
    let stop = StopFlag::new();
    let mut progress = 0;
    let mut first: Option<(std::time::Instant, Duration)> = None;
    let mut used = None;
    let result = node::run(cfg, stop.clone(), &mut |ev| {
        // Progress comes every 500 ms: measure from the first to the fourth.
        if matches!(ev, NodeEvent::Progress(_)) {
            progress += 1;
            if progress == 1 {
                first = Some((std::time::Instant::now(), thread_cpu()));
            }
            if progress == 4 {
                let (t0, c0) = first.unwrap();
                used = Some((thread_cpu() - c0, t0.elapsed()));
                stop.stop();
            }
        }
    });
    assert!(
        matches!(result, Err(node::NodeError::Interrupted { .. })),
        "the download stops when told"
    );
    let (cpu, wall) = used.expect("four progress events");
    assert!(
        cpu.as_secs_f64() < 0.1 * wall.as_secs_f64(),
        "the control loop of a download with nothing to plan used {cpu:?} of CPU in {wall:?}"
    );
}

/// The seeder's uploads through each send path (`--send-path`): the download verifies
/// every piece and matches the source, and the seeder's report says which path carried
/// the payload: all of it spliced with `splice`, none with `copy`, and none with `auto`
/// on loopback (the receiver is on this host, where splicing only moves the copy to it);
/// with `zerocopy` all of it by `SENDMSG_ZC`, every send's notification in.
#[test]
fn a_seeder_uploads_through_each_send_path() {
    use corvid_engine::runtime::SendPath;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let len = 2 * 1024 * 1024 + 4321;
    let files = one_file(&src, len, 5);
    let (lengths, hashes) = hash_files(&src, &files);
    for path in [
        SendPath::Splice,
        SendPath::Copy,
        SendPath::Auto,
        SendPath::ZeroCopy,
    ] {
        let dst = dir.path().join(format!("dst-{path}"));
        let seed_stop = StopFlag::new();
        let mut cfg = config(Mode::Seed, &src, &files, lengths, hashes.clone());
        cfg.tuning.send_path = path;
        let (seeder, seed_addr) = start_seeder(cfg, &seed_stop);
        let mut cfg = config(Mode::Download, &dst, &files, lengths, hashes.clone());
        cfg.peers = vec![seed_addr];
        let report = node::run(cfg, StopFlag::new(), &mut |_| {}).expect("download");
        assert!(report.complete, "{path}");
        assert_eq!(report.transfer.pieces_failed, 0, "{path}");
        assert!(
            std::fs::read(dst.join("x.bin")).unwrap() == std::fs::read(src.join("x.bin")).unwrap(),
            "{path}: the copy differs"
        );
        seed_stop.stop();
        let seed_report = seeder.join().unwrap().expect("seeder ran");
        let sent = seed_report
            .send_path
            .expect("the seeder reports its send path");
        assert_eq!(sent.path, path.to_string());
        match path {
            SendPath::Splice => assert!(
                sent.spliced >= len as u64,
                "{path}: payload spliced: {sent:?}"
            ),
            SendPath::ZeroCopy => assert!(
                sent.spliced == 0
                    && sent.copied == 0
                    && sent.zc_sent >= len as u64
                    && sent.zc_notifs > 0
                    && sent.zc_copied <= sent.zc_notifs,
                "{path}: payload sent zero-copy: {sent:?}"
            ),
            _ => assert!(
                sent.spliced == 0 && sent.copied >= len as u64 && sent.zc_sent == 0,
                "{path}: payload copied: {sent:?}"
            ),
        }
    }
}
