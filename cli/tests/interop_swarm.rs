//! corvid in swarms with other BitTorrent implementations, over loopback: libtorrent
//! downloads from a corvid seeder and seeds to a corvid peer, aria2 downloads through
//! corvid's embedded tracker, and corvid peers meet through Debian's opentracker.
//!
//! The tools are required: a missing one fails the test with what to install (CI
//! installs them with the project's test script), never a silent pass.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    assert_same_tree, corvid, free_port, json_field, make_tree, python, require_tool, start_seeder,
    torrent_info, Proc,
};

const T: Duration = Duration::from_secs(120);

fn lt_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/interop/lt_peer.py")
}

fn require_libtorrent() {
    require_tool(&python(), &["-c", "import libtorrent"]);
}

/// A payload tree under `dir/src/payload` and its torrent `dir/release.torrent`.
fn release(dir: &Path, tracker: Option<&str>, big: usize, seed: u64) -> (PathBuf, PathBuf) {
    release_with(dir, tracker, big, seed, &[])
}

/// [`release`] with more `corvid make` flags (`--align`).
fn release_with(
    dir: &Path,
    tracker: Option<&str>,
    big: usize,
    seed: u64,
    extra: &[&str],
) -> (PathBuf, PathBuf) {
    let payload = dir.join("src/payload");
    make_tree(&payload, big, seed);
    let torrent = dir.join("release.torrent");
    let mut cmd = corvid(&["make"]);
    cmd.arg(&payload).arg("-o").arg(&torrent);
    cmd.args(["--piece-size", "64K", "--threads", "1"]);
    cmd.args(extra);
    if let Some(url) = tracker {
        cmd.args(["--tracker", url]);
    }
    let out = cmd.output().expect("run corvid make");
    assert!(
        out.status.success(),
        "corvid make failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (payload, torrent)
}

fn seeder(torrent: &Path, parent: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    start_seeder(torrent, parent, extra, T)
}

/// Stops a corvid node with SIGTERM; checks it exits 0 with a report.
fn finish(p: &mut Proc) -> String {
    p.finish(T)
}

/// libtorrent downloads `torrent` into `dest` from the corvid seeder `seed` at `addr`,
/// and must say `done`.
fn lt_download(seed: &mut Proc, torrent: &Path, addr: SocketAddr, dest: &Path) {
    let mut cmd = Command::new(python());
    cmd.arg(lt_script()).arg("download").arg(torrent).arg(dest);
    cmd.args(["--peer", &addr.to_string(), "--timeout", "100"]);
    let mut lt = Proc::spawn("libtorrent download", &mut cmd);
    let (code, lines, err) = lt.wait_exit(T);
    if code != Some(0) {
        // The seeder's side of the story (its close reasons) is what explains a stall.
        seed.terminate();
        let (_, seed_lines, seed_err) = seed.wait_exit(T);
        panic!(
            "libtorrent download failed ({code:?}):\n{}\n{err}\n--- seeder ---\n{}\n{seed_err}",
            lines.join("\n"),
            seed_lines.join("\n")
        );
    }
    assert!(lines.iter().any(|l| l == "done"), "{}", lines.join("\n"));
}

#[test]
fn libtorrent_downloads_from_corvid_seeder() {
    require_libtorrent();
    let dir = tempfile::tempdir().expect("tempdir");
    let (payload, torrent) = release(dir.path(), None, 4 << 20, 21);
    let (mut seed, addr) = seeder(&torrent, &dir.path().join("src"), &["--no-tracker"]);
    let dest = dir.path().join("lt");
    lt_download(&mut seed, &torrent, addr, &dest);
    assert_same_tree(&payload, &dest.join("payload"));
    let done = finish(&mut seed);
    let up = support::json_u64(&done, "bytes_up");
    assert!(up >= 4 << 20, "seeder reports {up} bytes up: {done}");
}

/// A torrent made with `corvid make --align` carries BEP 47 pad files that exist on no
/// disk: the corvid seeder serves their zeros from memory, and libtorrent (which reads
/// pad files) downloads the release byte for byte, with no pad file in its tree.
#[test]
fn libtorrent_downloads_aligned_torrent_from_corvid_seeder() {
    require_libtorrent();
    let dir = tempfile::tempdir().expect("tempdir");
    let (payload, torrent) = release_with(dir.path(), None, 3 << 20, 23, &["--align"]);
    let info = torrent_info(&torrent);
    assert!(info.contains("/.pad/"), "no pad files in {info}");
    let (mut seed, addr) = seeder(&torrent, &dir.path().join("src"), &["--no-tracker"]);
    let dest = dir.path().join("lt");
    lt_download(&mut seed, &torrent, addr, &dest);
    assert_same_tree(&payload, &dest.join("payload"));
    finish(&mut seed);
}

/// A corvid seeder planning for corvid peers (it suggests their pieces and refuses the
/// ones another peer holds) while a libtorrent peer downloads from it at the same time:
/// the stock client is served as before, and the corvid peers, which know only the
/// seeder here, still complete (a piece refused because an unreachable peer holds it is
/// asked for again and served). Every corvid node paces to a known uplink (`--uplink`:
/// per-connection caps and a small unsent bound on every socket, libtorrent's included).
#[test]
fn libtorrent_completes_beside_corvid_peers_on_the_plan() {
    require_libtorrent();
    let dir = tempfile::tempdir().expect("tempdir");
    let (payload, torrent) = release(dir.path(), None, 4 << 20, 25);
    let (mut seed, addr) = seeder(
        &torrent,
        &dir.path().join("src"),
        &["--no-tracker", "--uplink", "200mbit"],
    );
    let seed_addr = addr.to_string();
    let mut peers: Vec<(Proc, PathBuf)> = (0..2)
        .map(|i| {
            let dest = dir.path().join(format!("corvid{i}"));
            let mut cmd = corvid(&["peer"]);
            cmd.arg(&torrent).arg(&dest);
            cmd.args(["--peer", &seed_addr, "--no-announce", "--linger", "0"]);
            cmd.args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"]);
            cmd.args(["--hash-threads", "1", "--stall-timeout", "100s"]);
            cmd.args(["--uplink", "200mbit"]);
            (Proc::spawn(&format!("corvid peer {i}"), &mut cmd), dest)
        })
        .collect();
    let dest = dir.path().join("lt");
    let mut cmd = Command::new(python());
    cmd.arg(lt_script())
        .arg("download")
        .arg(&torrent)
        .arg(&dest);
    cmd.args(["--peer", &seed_addr, "--timeout", "100"]);
    let mut lt = Proc::spawn("libtorrent download", &mut cmd);
    let (code, lines, err) = lt.wait_exit(T);
    assert_eq!(code, Some(0), "libtorrent: {}\n{err}", lines.join("\n"));
    assert!(lines.iter().any(|l| l == "done"), "{}", lines.join("\n"));
    assert_same_tree(&payload, &dest.join("payload"));
    for (i, (p, dest)) in peers.iter_mut().enumerate() {
        let (code, lines, err) = p.wait_exit(T);
        assert_eq!(
            code,
            Some(0),
            "corvid peer {i}: {}\n{err}",
            lines.join("\n")
        );
        let done = lines
            .iter()
            .find(|l| l.contains("\"event\":\"done\""))
            .expect("done report");
        assert_eq!(json_field(done, "complete"), Some("true"), "{done}");
        assert_same_tree(&payload, &dest.join("payload"));
    }
    finish(&mut seed);
}

#[test]
fn corvid_downloads_from_libtorrent_seeder() {
    require_libtorrent();
    let dir = tempfile::tempdir().expect("tempdir");
    let (payload, torrent) = release(dir.path(), None, 4 << 20, 22);
    let mut cmd = Command::new(python());
    cmd.arg(lt_script())
        .arg("seed")
        .arg(&torrent)
        .arg(dir.path().join("src"));
    cmd.args(["--timeout", "110"]);
    let mut lt = Proc::spawn("libtorrent seed", &mut cmd);
    let line = lt.wait_line("listening", T);
    let port: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let dest = dir.path().join("corvid");
    let peer_addr = format!("127.0.0.1:{port}");
    let mut cmd = corvid(&["peer"]);
    cmd.arg(&torrent).arg(&dest);
    cmd.args(["--peer", &peer_addr, "--no-announce", "--linger", "0"]);
    cmd.args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"]);
    cmd.args(["--hash-threads", "1", "--stall-timeout", "100s"]);
    let mut peer = Proc::spawn("corvid peer", &mut cmd);
    let (code, lines, err) = peer.wait_exit(T);
    assert_eq!(code, Some(0), "{}\n{err}\n{}", lines.join("\n"), lt.dump());
    let done = lines
        .iter()
        .find(|l| l.contains("\"event\":\"done\""))
        .expect("done report");
    assert_eq!(json_field(done, "complete"), Some("true"), "{done}");
    assert_same_tree(&payload, &dest.join("payload"));
}

#[test]
fn aria2_downloads_through_corvid_tracker() {
    require_tool("aria2c", &["--version"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/announce");
    let (payload, torrent) = release(dir.path(), Some(&url), 4 << 20, 23);
    let listen = format!("127.0.0.1:{port}");
    let (mut seed, _) = seeder(
        &torrent,
        &dir.path().join("src"),
        &["--tracker-listen", &listen],
    );
    let dest = dir.path().join("aria2");
    let mut cmd = Command::new("aria2c");
    cmd.args([
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-time=0",
        "--check-integrity=true",
        "--bt-stop-timeout=100",
        "--summary-interval=0",
        "--console-log-level=warn",
    ]);
    // aria2 takes no port 0: a port free now (from the ephemeral range, >= 1024).
    cmd.arg(format!("--listen-port={}", free_port()));
    cmd.arg(format!("--dir={}", dest.display())).arg(&torrent);
    let mut aria = Proc::spawn("aria2c", &mut cmd);
    let (code, lines, err) = aria.wait_exit(T);
    assert_eq!(
        code,
        Some(0),
        "aria2c failed\n{}\n{err}\n{}",
        lines.join("\n"),
        seed.dump()
    );
    assert_same_tree(&payload, &dest.join("payload"));
    finish(&mut seed);
}

/// Starts Debian's opentracker on a free port, tracking only `info_hash_hex` (Debian
/// builds it with a whitelist). Started as root it chroots into `dir`, so the whitelist
/// is named relative to it.
fn opentracker(dir: &Path, info_hash_hex: &str) -> (Proc, u16) {
    const OPENTRACKER: &str = "/usr/bin/opentracker";
    assert!(
        Path::new(OPENTRACKER).exists(),
        "{OPENTRACKER} is missing: install Debian's `opentracker` package (CI installs it)"
    );
    std::fs::write(dir.join("whitelist.txt"), format!("{info_hash_hex}\n"))
        .expect("write whitelist");
    let port = free_port();
    let mut cmd = Command::new(OPENTRACKER);
    cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    cmd.args(["-P", &port.to_string()]);
    cmd.arg("-d").arg(dir).args(["-w", "whitelist.txt"]);
    cmd.current_dir(dir);
    (Proc::spawn("opentracker", &mut cmd), port)
}

#[test]
fn corvid_peers_meet_through_opentracker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ot_dir = dir.path().join("ot");
    std::fs::create_dir_all(&ot_dir).expect("mkdir");
    // opentracker needs the info-hash before it starts and the torrent its URL after:
    // make the torrent twice, the info-hash does not cover the tracker URL.
    let payload_dir = dir.path().join("r");
    std::fs::create_dir_all(&payload_dir).expect("mkdir");
    let probe_port = free_port();
    let url = format!("http://127.0.0.1:{probe_port}/announce");
    let (payload, torrent) = release(&payload_dir, Some(&url), 4 << 20, 24);
    let info = torrent_info(&torrent);
    let hex = json_field(&info, "info_hash")
        .expect("info_hash")
        .to_string();
    let (_ot, port) = opentracker(&ot_dir, &hex);
    let url = format!("http://127.0.0.1:{port}/announce");
    // The same torrent announcing to opentracker (the URL is outside the info-hash).
    let out = corvid(&["make"])
        .arg(&payload)
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-size", "64K", "--threads", "1", "--force"])
        .args(["--tracker", &url])
        .output()
        .expect("corvid make");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The seeder announces to opentracker (no embedded tracker); peers find it there.
    let (mut seed, _) = seeder(&torrent, &payload_dir.join("src"), &["--no-tracker"]);
    let mut peers: Vec<(Proc, PathBuf)> = (0..2)
        .map(|i| {
            let dest = dir.path().join(format!("peer{i}"));
            let mut cmd = corvid(&["peer"]);
            cmd.arg(&torrent).arg(&dest);
            cmd.args(["--linger", "60s"]);
            cmd.args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"]);
            cmd.args(["--hash-threads", "1", "--stall-timeout", "100s"]);
            (Proc::spawn(&format!("peer{i}"), &mut cmd), dest)
        })
        .collect();
    for (p, _) in &mut peers {
        p.wait_line("\"event\":\"complete\"", T);
    }
    for (p, dest) in &mut peers {
        let done = finish(p);
        assert_eq!(json_field(&done, "complete"), Some("true"), "{done}");
        assert_same_tree(&payload, &dest.join("payload"));
    }
    finish(&mut seed);
}
