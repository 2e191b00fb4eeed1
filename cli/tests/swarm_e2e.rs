//! End-to-end swarms of real `corvid` processes on loopback: one seeder and many peers that
//! must all end with byte-identical data, serve each other, accept late joiners, resume
//! after a crash, and shrug off hostile connections. Every process is synchronised on the
//! JSON lines it prints and killed by PID when a test ends, however it ends.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::release::Release;
use support::{assert_same_tree, corvid, free_port, json_field, json_u64, Proc, SlowRelay};

/// Bound on every wait: generous, the machine is shared and loaded.
const T: Duration = Duration::from_secs(120);
const PEERS: usize = 8;

/// The seeder's upload count depends on timing (a peer re-asks the seeder for a piece no
/// connection of its own has announced within the plan's wait), so the test that bounds
/// it runs alone: it takes this lock for writing, every other test here for reading.
/// Sibling tests starting eight peers each on the same two cores made it measure the
/// machine's load, not the policy (1.43 copies beside them, 1.10 alone).
static ALONE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    ALONE.read().unwrap_or_else(|e| e.into_inner())
}

/// Stops a node with SIGTERM and returns its final `done` line, checking it exited 0.
fn finish(p: &mut Proc) -> String {
    p.finish(T)
}

/// Checks a peer's done report says complete and its data matches the release.
fn assert_peer_done(r: &Release, name: &str, done: &str, dest: &Path) {
    assert_eq!(
        json_field(done, "complete"),
        Some("true"),
        "{name} report: {done}"
    );
    assert_same_tree(&r.payload, &dest.join("payload"));
}

/// A standalone `corvid tracker` re-announced to every second, so peers keep finding
/// each other when the seeder (and its embedded tracker) is gone.
fn standalone_tracker() -> (Proc, String) {
    let mut cmd = corvid(&["tracker", "--listen", "127.0.0.1:0", "--interval", "1s"]);
    cmd.arg("--json");
    let mut p = Proc::spawn("tracker", &mut cmd);
    let line = p.wait_line("\"listening\"", T);
    let addr = json_field(&line, "tracker_addr").expect("tracker_addr");
    let url = format!("http://{addr}/announce");
    (p, url)
}

#[test]
fn one_seeder_eight_peers_identical_data() {
    let _shared = shared();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/announce");
    let r = Release::new(&url, 8 << 20, "64K", 11);
    let listen = format!("127.0.0.1:{port}");
    let (mut seeder, _) = r.seeder(&["--tracker-listen", &listen]);
    let mut peers: Vec<(Proc, PathBuf)> = (0..PEERS)
        .map(|i| {
            let dest = r.dest(&format!("peer{i}"));
            (r.peer(&format!("peer{i}"), &dest, &[]), dest)
        })
        .collect();
    for (p, _) in &mut peers {
        p.wait_line("\"event\":\"complete\"", T);
    }
    for (i, (p, dest)) in peers.iter_mut().enumerate() {
        let done = finish(p);
        assert_peer_done(&r, &format!("peer{i}"), &done, dest);
    }
    let done = finish(&mut seeder);
    assert!(
        json_u64(&done, "bytes_up") >= r.size,
        "seeder sent too little: {done}"
    );
}

/// What a swarm of [`PEERS`] peers moved while the seeder ran `--until-distributed`.
struct Distributed {
    size: u64,
    seeder_up: u64,
    from_seeder: u64,
    from_peers: u64,
}

/// One seeder with `--until-distributed` (it leaves by itself) and [`PEERS`] peers that
/// must all complete with identical data.
fn distribute(big: usize, seed: u64) -> Distributed {
    let (_tracker, url) = standalone_tracker();
    let r = Release::new(&url, big, "64K", seed);
    let (mut seeder, _) = r.seeder(&["--no-tracker", "--until-distributed"]);
    let mut peers: Vec<(Proc, PathBuf)> = (0..PEERS)
        .map(|i| {
            let dest = r.dest(&format!("peer{i}"));
            (r.peer(&format!("peer{i}"), &dest, &[]), dest)
        })
        .collect();
    // The seeder leaves by itself once the peers hold every piece between them.
    let (code, lines, err) = seeder.wait_exit(T);
    assert_eq!(code, Some(0), "seeder\n{}\n{err}", lines.join("\n"));
    let seeder_done = lines
        .iter()
        .find(|l| l.contains("\"event\":\"done\""))
        .unwrap_or_else(|| panic!("seeder printed no report:\n{}", lines.join("\n")));
    let seeder_up = json_u64(seeder_done, "bytes_up");
    for (p, _) in &mut peers {
        p.wait_line("\"event\":\"complete\"", T);
    }
    let (mut from_seeder, mut from_peers) = (0, 0);
    for (i, (p, dest)) in peers.iter_mut().enumerate() {
        let done = finish(p);
        assert_peer_done(&r, &format!("peer{i}"), &done, dest);
        from_seeder += json_u64(&done, "bytes_from_seeder");
        from_peers += json_u64(&done, "bytes_from_peers");
    }
    let n = PEERS as u64;
    assert!(
        from_seeder + from_peers >= n * r.size,
        "peers received {from_seeder} + {from_peers} bytes, less than {n} copies of {}",
        r.size
    );
    assert!(
        from_seeder <= seeder_up,
        "peers count {from_seeder} bytes from the seeder, which sent only {seeder_up}"
    );
    eprintln!(
        "seeder sent {seeder_up} bytes ({:.2} copies); peers got {from_seeder} from it, \
         {from_peers} from each other",
        seeder_up as f64 / r.size as f64
    );
    Distributed {
        size: r.size,
        seeder_up,
        from_seeder,
        from_peers,
    }
}

#[test]
fn peers_serve_each_other_after_the_seeder_leaves() {
    let _shared = shared();
    let d = distribute(8 << 20, 12);
    // The seeder left on its own once the peers held every piece between them, and the
    // peers carried a good share of the 8 copies to each other.
    assert!(
        d.from_peers >= 2 * d.size,
        "peers received only {} bytes from each other (seeder sent {}, {} counted from it)",
        d.from_peers,
        d.seeder_up,
        d.from_seeder
    );
}

/// The seeder sends each piece about once and the peers pass it on (the seeding plan,
/// see the engine's `swarm` module docs). Before the plan, the seeder uploaded 1.5 to 4
/// copies of 24 MiB on loopback: peers asked it for the same pieces, unaware of what
/// the others were fetching from it, and it served every request.
#[test]
fn seeder_uploads_less_than_two_copies() {
    let _alone = ALONE.write().unwrap_or_else(|e| e.into_inner());
    let d = distribute(24 << 20, 16);
    // One copy, plus the plan's 5% budget of extra copies, plus pieces sent again
    // because nobody live could pass them on. Since a refusal names the piece's holder
    // (the asker waits for its `have` instead of asking again after 500 ms): 1.048 to
    // 1.050 copies over 20 runs on this 2-core VM with other builds loading both cores
    // (before: 1.05 to 1.24, bound 1.3). A version that served every piece whose
    // holder's connection had closed sent 1.42 in 1 of 6 runs: a holder back on a new
    // connection must be named, not bypassed. 1.2 is the bound.
    eprintln!(
        "seeder uploaded {:.3} copies",
        d.seeder_up as f64 / d.size as f64
    );
    assert!(
        d.seeder_up * 10 <= d.size * 12,
        "the seeder uploaded {} bytes ({:.2} copies, bound 1.2) for a {} byte payload to \
         {PEERS} peers: it should send about one copy and leave the rest to the peers",
        d.seeder_up,
        d.seeder_up as f64 / d.size as f64,
        d.size
    );
    assert!(d.from_peers >= PEERS as u64 * d.size - d.seeder_up);
}

#[test]
fn late_peer_completes_from_peers_alone() {
    let _shared = shared();
    let (_tracker, url) = standalone_tracker();
    let r = Release::new(&url, 4 << 20, "64K", 13);
    let (mut seeder, _) = r.seeder(&["--no-tracker"]);
    let mut early: Vec<(Proc, PathBuf)> = (0..3)
        .map(|i| {
            let dest = r.dest(&format!("early{i}"));
            (r.peer(&format!("early{i}"), &dest, &[]), dest)
        })
        .collect();
    for (p, _) in &mut early {
        p.wait_line("\"event\":\"complete\"", T);
    }
    // The seeder is gone before the late peer starts: it can only fetch from peers.
    finish(&mut seeder);
    let dest = r.dest("late");
    let mut late = r.peer("late", &dest, &[]);
    late.wait_line("\"event\":\"complete\"", T);
    let done = finish(&mut late);
    assert_peer_done(&r, "late", &done, &dest);
    assert_eq!(json_u64(&done, "bytes_from_seeder"), 0, "late: {done}");
    assert!(
        json_u64(&done, "bytes_from_peers") >= r.size,
        "late: {done}"
    );
    for (i, (p, dest)) in early.iter_mut().enumerate() {
        let done = finish(p);
        assert_peer_done(&r, &format!("early{i}"), &done, dest);
    }
}

#[test]
fn killed_peer_resumes_where_it_stopped() {
    let _shared = shared();
    let r = Release::new("http://127.0.0.1:9/announce", 6 << 20, "16K", 14);
    let (mut seeder, seed_addr) = r.seeder(&["--no-tracker"]);
    // 1 MiB/s through the relay: the 6 MiB download takes several seconds.
    let relay = SlowRelay::start(seed_addr, 1 << 20);
    let dest = r.dest("crashy");
    let via_relay = relay.addr.to_string();
    let flags = ["--no-announce", "--peer", via_relay.as_str()];
    let mut first = r.peer("crashy-1", &dest, &flags);
    let deadline = Instant::now() + T;
    let have_before = loop {
        assert!(
            Instant::now() < deadline,
            "no partial progress\n{}",
            first.dump()
        );
        let line = first.wait_line("\"event\":\"progress\"", T);
        let have = json_u64(&line, "have");
        assert!(
            have < r.pieces,
            "finished before it could be killed: {line}"
        );
        if have > 0 {
            break have;
        }
    };
    first.kill();
    drop(relay);

    let direct = seed_addr.to_string();
    let flags = ["--no-announce", "--peer", direct.as_str()];
    let mut second = r.peer("crashy-2", &dest, &flags);
    let checked = second.wait_line("\"event\":\"checked\"", T);
    let resumed = json_u64(&checked, "have");
    assert!(
        resumed > 0 && resumed < r.pieces,
        "after a crash at {have_before} pieces the restart found {checked}"
    );
    second.wait_line("\"event\":\"complete\"", T);
    let done = finish(&mut second);
    assert_peer_done(&r, "crashy-2", &done, &dest);
    // Only what was missing came over the wire again (a piece is 16 KiB; a few pieces'
    // slack for blocks fetched twice).
    let fetched = json_u64(&done, "bytes_down");
    assert!(
        fetched + resumed * 16384 <= r.size + 8 * 16384,
        "resumed with {resumed} pieces yet downloaded {fetched} of {} bytes",
        r.size
    );
    finish(&mut seeder);
}

/// The BitTorrent handshake for `info_hash`.
fn handshake(info_hash: &[u8; 20]) -> Vec<u8> {
    let mut h = Vec::with_capacity(68);
    h.push(19);
    h.extend_from_slice(b"BitTorrent protocol");
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(info_hash);
    h.extend_from_slice(b"-XX0001-hostile-test");
    h
}

/// Sends `bytes` to the seeder, reads until it closes the connection (panics if it is
/// still open after 20 s), then checks the seeder logged the close with a reason
/// containing `reason`.
fn expect_disconnect(seeder: &mut Proc, addr: SocketAddr, what: &str, bytes: &[u8], reason: &str) {
    let local = read_until_closed(addr, what, bytes);
    let line = seeder.wait_line(&format!("\"addr\":\"{local}\""), T);
    assert!(
        line.contains("peer_closed") && line.contains(reason),
        "{what}: the seeder closed for another reason than {reason:?}: {line}"
    );
}

fn read_until_closed(seeder: SocketAddr, what: &str, bytes: &[u8]) -> SocketAddr {
    let mut s = TcpStream::connect(seeder).unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    let local = s.local_addr().expect("local addr");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    // The seeder may close before taking everything: a failed write is a disconnect too.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 65536];
    let mut got = 0usize;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return local,
            Ok(n) => {
                got += n;
                assert!(got < 64 << 20, "{what}: the seeder keeps sending");
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still connected after 20 s ({got} bytes received)")
            }
            // A reset is a disconnect.
            Err(_) => return local,
        }
    }
}

#[test]
fn hostile_connections_are_dropped_and_a_good_peer_still_completes() {
    let _shared = shared();
    // 2_000_000 + 300_015 bytes in 64 KiB pieces: 36 pieces, so the bitfield has 4
    // spare bits.
    let r = Release::new("http://127.0.0.1:9/announce", 2_000_000, "64K", 15);
    assert_ne!(r.pieces % 8, 0, "the fixture needs spare bitfield bits");
    let (mut seeder, addr) = r.seeder(&["--no-tracker"]);
    let ih = r.info_hash();

    let mut wrong = ih;
    wrong[0] ^= 0xff;
    expect_disconnect(
        &mut seeder,
        addr,
        "wrong info-hash",
        &handshake(&wrong),
        "which is not this torrent",
    );

    let garbage = support::pseudo_random(4096, 99);
    expect_disconnect(&mut seeder, addr, "garbage", &garbage, "handshake");

    let len = r.pieces.div_ceil(8) as usize;
    let mut bitfield = handshake(&ih);
    bitfield.extend_from_slice(&(1 + len as u32).to_be_bytes());
    bitfield.push(5);
    bitfield.extend(std::iter::repeat_n(0xffu8, len));
    expect_disconnect(
        &mut seeder,
        addr,
        "bitfield with spare bits set",
        &bitfield,
        "spare bits",
    );

    let mut oversized = handshake(&ih);
    oversized.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    oversized.push(7);
    oversized.extend_from_slice(&[0u8; 1024]);
    expect_disconnect(
        &mut seeder,
        addr,
        "oversized message length",
        &oversized,
        "exceeds",
    );

    let dest = r.dest("good");
    let direct = addr.to_string();
    let mut good = r.peer("good", &dest, &["--no-announce", "--peer", direct.as_str()]);
    good.wait_line("\"event\":\"complete\"", T);
    let done = finish(&mut good);
    assert_peer_done(&r, "good", &done, &dest);
    finish(&mut seeder);
}

/// Two peers told to dial each other (`--peer`) while both downloading: one of the two
/// connections between them is closed as a duplicate, and the address it dialled must not
/// be dialled again every redial while the other connection lives (it was, every 2 s).
#[test]
fn peers_that_dial_each_other_keep_one_connection() {
    // Alone: sibling tests loading the cores change which handshake of a crossing pair
    // finishes first on each side.
    let _alone = ALONE.write().unwrap_or_else(|e| e.into_inner());
    let r = Release::new("http://127.0.0.1:9/announce", 12 << 20, "64K", 23);
    let (mut seeder, seed_addr) = r.seeder(&["--no-tracker"]);
    // Slow enough that the download spans several 2 s redial rounds.
    let relay = SlowRelay::start(seed_addr, 512 << 10);
    let via_relay = relay.addr.to_string();
    let ports = [free_port(), free_port()];
    let mut peers: Vec<(Proc, PathBuf)> = (0..2)
        .map(|i| {
            let dest = r.dest(&format!("mutual-{i}"));
            let listen = format!("127.0.0.1:{}", ports[i]);
            let other = format!("127.0.0.1:{}", ports[1 - i]);
            let mut cmd = corvid(&["peer"]);
            cmd.arg(&r.torrent).arg(&dest);
            cmd.args(["--listen", &listen, "--linger", "60s", "--json"]);
            cmd.args(["--cores", "1", "--hash-threads", "1", "--no-announce"]);
            cmd.args([
                "--stall-timeout",
                "100s",
                "--peer",
                &via_relay,
                "--peer",
                &other,
            ]);
            (Proc::spawn(&format!("mutual-{i}"), &mut cmd), dest)
        })
        .collect();
    let started = Instant::now();
    for (p, _) in peers.iter_mut() {
        p.wait_line("\"event\":\"complete\"", T);
    }
    let took = started.elapsed();
    let mut duplicates = 0;
    for (p, dest) in peers.iter_mut() {
        let (done, lines) = p.finish_lines(T);
        assert_peer_done(&r, &p.name, &done, dest);
        duplicates += lines
            .iter()
            .filter(|l| l.contains("already connected to this peer"))
            .count();
    }
    drop(relay);
    finish(&mut seeder);
    assert!(
        took > Duration::from_secs(4),
        "downloads took {took:?}: too fast to span redial rounds, the test proves nothing"
    );
    // The first crossing may close one connection on each side; no more after that.
    assert!(
        duplicates <= 2,
        "{duplicates} duplicate connections closed in {took:?}"
    );
}
