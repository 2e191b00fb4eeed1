//! Network faults on the simulated fleet (scripts/fleet): lossy and delayed links, a
//! link cut mid-transfer, and a peer that goes silent. Real `corvid seed` / `corvid peer`
//! processes, each in its own host namespace; the seeder embeds the tracker.
//!
//! Delay and loss are real packet-level faults: sch_netem where the kernel has it, else
//! (this project's kernel and CI's) iptables' statistic match for loss and corvid-netem
//! behind an NFQUEUE rule for delay (see scripts/fleet's header). Each test checks the
//! fault is there (round-trip times, drop and queue counters), so none can pass with the
//! fault silently absent.
//!
//! Needs root: without it these tests fail saying so (CI runs them as root). Each test
//! uses its own fleet name and a guard that takes the fleet down, pass or fail; every
//! process is started and killed by PID; every wait is bounded.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::fleet::Fleet;
use support::{assert_same_tree, corvid, json_field, json_u64, make_tree, Proc};

/// A release made on the local disk (which every host sees) and served from h0.
struct Release {
    dir: tempfile::TempDir,
    torrent: PathBuf,
    parent: PathBuf,
    payload: PathBuf,
}

/// The embedded tracker's port: fixed, as its URL goes into the torrent, and free because
/// h0's network namespace is private to the test.
const TRACKER_PORT: u16 = 8998;

impl Release {
    fn new(fleet: &Fleet, big: usize, seed: u64) -> Release {
        let dir = tempfile::tempdir().expect("tempdir");
        let parent = dir.path().join("src");
        let payload = parent.join("payload");
        make_tree(&payload, big, seed);
        let torrent = dir.path().join("release.torrent");
        let tracker = format!("http://{}:{TRACKER_PORT}/announce", fleet.addr(0));
        let out = corvid(&["make"])
            .arg(&payload)
            .arg("-o")
            .arg(&torrent)
            .args(["--tracker", &tracker, "--piece-size", "256KiB"])
            .args(["--threads", "1", "--json"])
            .output()
            .expect("run corvid make");
        assert!(
            out.status.success(),
            "corvid make: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Release {
            dir,
            torrent,
            parent,
            payload,
        }
    }

    fn dest(&self, host: usize) -> PathBuf {
        let d = self.dir.path().join(format!("h{host}"));
        std::fs::create_dir_all(&d).expect("create dest");
        d
    }

    /// `corvid seed` on h0 with the tracker embedded; returns once it listens.
    fn seeder(&self, fleet: &Fleet) -> Proc {
        let h0 = fleet.addr(0);
        let mut cmd = fleet.corvid(0, &["seed"]);
        cmd.arg(&self.torrent).arg(&self.parent);
        cmd.args(["--tracker-listen", &format!("{h0}:{TRACKER_PORT}")]);
        cmd.args(["--tracker-interval", "2s", "--listen", &format!("{h0}:0")]);
        cmd.args(["--cores", "1", "--hash-threads", "1", "--json"]);
        let mut p = Proc::spawn("seeder h0", &mut cmd);
        p.wait_line("\"listening\"", Duration::from_secs(60));
        p
    }

    /// `corvid peer` on `host`, downloading into its own directory.
    fn peer(&self, fleet: &Fleet, host: usize, extra: &[&str]) -> Proc {
        let mut cmd = fleet.corvid(host, &["peer"]);
        cmd.arg(&self.torrent).arg(self.dest(host));
        cmd.args(["--listen", &format!("{}:0", fleet.addr(host))]);
        cmd.args(["--json", "--cores", "1", "--hash-threads", "1"]);
        cmd.args(["--stall-timeout", "120s"]);
        cmd.args(extra);
        Proc::spawn(&format!("peer h{host}"), &mut cmd)
    }

    fn assert_delivered(&self, host: usize) {
        assert_same_tree(&self.payload, &self.dest(host).join("payload"));
    }
}

/// SIGTERM, then the `done` report; the exit code must be 0.
fn finish(p: &mut Proc) -> String {
    p.finish(Duration::from_secs(60))
}

/// The smallest of three TCP connect times (a lost SYN costs a 1 s retransmission, which
/// is loss, not delay).
fn min_rtt_ms(fleet: &Fleet, from: usize, to: usize) -> f64 {
    (0..3)
        .map(|_| fleet.connect_rtt_ms(from, to))
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn lossy_delayed_links_deliver_every_byte() {
    let fleet = Fleet::up("nfa", 3, &[]);
    let clean_rtt = min_rtt_ms(&fleet, 1, 0);
    for h in 0..=3 {
        fleet.ok(&["shape", &h.to_string(), "--delay", "50ms", "--loss", "1%"]);
    }
    // 50 ms on each direction of each host's link: a round trip between two hosts
    // crosses four of them.
    let rtt = min_rtt_ms(&fleet, 1, 0);
    eprintln!(
        "connect RTT h1 -> h0: {clean_rtt:.2} ms clean, {rtt:.2} ms with 50 ms + 1% per link"
    );
    assert!(clean_rtt < 50.0, "clean link already slow: {clean_rtt} ms");
    assert!(
        rtt >= 195.0,
        "connect RTT {rtt:.2} ms: the 4 x 50 ms delay is not in place"
    );

    let rel = Release::new(&fleet, 24 << 20, 61);
    let mut seeder = rel.seeder(&fleet);
    let start = Instant::now();
    let mut peers: Vec<Proc> = (1..=3)
        .map(|h| rel.peer(&fleet, h, &["--linger", "120s"]))
        .collect();
    for p in &mut peers {
        let line = p.wait_line("\"complete\"", Duration::from_secs(240));
        eprintln!(
            "{}: complete after {:.1} s ({line})",
            p.name,
            start.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "all 3 peers complete in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    for p in &mut peers {
        let done = finish(p);
        assert_eq!(
            json_field(&done, "complete"),
            Some("true"),
            "{}: {done}",
            p.name
        );
    }
    finish(&mut seeder);
    for h in 1..=3 {
        rel.assert_delivered(h);
    }

    if fleet
        .faults(0)
        .iter()
        .any(|(k, v)| k == "method" && v == "netem")
    {
        // sch_netem keeps no per-rule counters; the RTT above showed the delay.
        return;
    }
    let mut dropped = 0;
    for h in 0..=3 {
        let d = fleet.fault_count(h, "dropped_in") + fleet.fault_count(h, "dropped_out");
        let q = fleet.fault_count(h, "delayed_in") + fleet.fault_count(h, "delayed_out");
        eprintln!("h{h}: {d} packets dropped, {q} delayed");
        assert!(q > 0, "h{h}: no packet went through the delayer");
        dropped += d;
    }
    assert!(
        dropped > 0,
        "no packet was dropped: the 1% loss is not in place"
    );
}

/// Waits for `p`'s first progress line with a quarter of the pieces, mid-transfer: it
/// must not have all of them before `event`.
fn quarter_done(p: &mut Proc, host: &str, event: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = p.wait_line("\"progress\"", Duration::from_secs(60));
        let (have, pieces) = (json_u64(&line, "have"), json_u64(&line, "pieces"));
        assert!(have < pieces, "{host} completed before {event}: {line}");
        if have * 4 >= pieces {
            return line;
        }
        assert!(Instant::now() < deadline, "{host} made no progress");
    }
}

#[test]
fn a_link_cut_for_five_seconds_mid_transfer_heals() {
    let fleet = Fleet::up("nfb", 2, &["--rate", "20mbit"]);
    let rel = Release::new(&fleet, 16 << 20, 62);
    let mut seeder = rel.seeder(&fleet);
    let started = Instant::now();
    let mut cut_peer = rel.peer(&fleet, 1, &["--linger", "60s"]);
    let mut other = rel.peer(&fleet, 2, &["--linger", "60s"]);

    let line = quarter_done(&mut cut_peer, "h1", "the cut");
    eprintln!("cutting h1's link at {line}");
    let cut_start = Instant::now();
    fleet.ok(&["cut", "1", "5"]);
    let cut_end = Instant::now();
    assert!(cut_end - cut_start >= Duration::from_secs(5));

    let line = cut_peer.wait_line("\"complete\"", Duration::from_secs(120));
    let elapsed = Duration::from_secs_f64(
        json_field(&line, "elapsed_s")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no elapsed_s in {line}")),
    );
    // The node started after `started`, so this is no later than its real completion.
    assert!(
        started + elapsed >= cut_end,
        "h1 completed before its link came back: {line}"
    );
    eprintln!(
        "h1 complete {:.1} s after its link came back ({:.1} s in all)",
        (started + elapsed)
            .saturating_duration_since(cut_end)
            .as_secs_f64(),
        elapsed.as_secs_f64()
    );
    other.wait_line("\"complete\"", Duration::from_secs(120));
    for p in [&mut cut_peer, &mut other] {
        let done = finish(p);
        assert_eq!(
            json_field(&done, "complete"),
            Some("true"),
            "{}: {done}",
            p.name
        );
    }
    finish(&mut seeder);
    rel.assert_delivered(1);
    rel.assert_delivered(2);
}

/// Sends `sig` to a test's child process.
fn signal(p: &Proc, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(p.pid()).expect("pid fits pid_t");
    assert!(pid > 0, "{} already reaped", p.name);
    // SAFETY: kill(2) on a PID we spawned and still hold unreaped (the Proc keeps its
    // Child), so it cannot name another process.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

#[test]
fn a_silent_peer_is_routed_around_and_closed_long_before_the_idle_timeout() {
    // h0 (seeder + tracker) is slow, h1 (a second full copy) fast: h2 gets most of its
    // data from h1 until h1 stops dead (SIGSTOP: its kernel still acknowledges TCP, so
    // only corvid's own timeouts can notice).
    let fleet = Fleet::up("nfc", 2, &[]);
    fleet.ok(&["shape", "0", "--rate", "4mbit"]);
    fleet.ok(&["shape", "1", "--rate", "40mbit"]);
    let rel = Release::new(&fleet, 32 << 20, 63);
    let mut seeder = rel.seeder(&fleet);
    let h1 = fleet.addr(1);
    let mut cmd = fleet.corvid(1, &["seed"]);
    cmd.arg(&rel.torrent).arg(&rel.parent);
    cmd.args([
        "--no-tracker",
        "--trust-data",
        "--listen",
        &format!("{h1}:0"),
    ]);
    cmd.args(["--cores", "1", "--hash-threads", "1", "--json"]);
    let mut second = Proc::spawn("second seeder h1", &mut cmd);
    second.wait_line("\"listening\"", Duration::from_secs(60));

    let started = Instant::now();
    let mut peer = rel.peer(&fleet, 2, &["--linger", "120s"]);
    let line = quarter_done(&mut peer, "h2", "h1 was stopped");
    eprintln!("stopping h1 at h2's {line}");
    signal(&second, libc::SIGSTOP);
    let stopped = Instant::now();

    // Both must come: h2 completes (h1's requests went back to h0) and h2 closes its
    // connection to h1 as stalled, each long before the 300 s idle timeout.
    let (mut complete, mut closed) = (None, None);
    let limit = Duration::from_secs(150);
    while complete.is_none() || closed.is_none() {
        let left = limit.saturating_sub(stopped.elapsed());
        assert!(
            !left.is_zero(),
            "h2: complete {complete:?}, stalled close {closed:?}"
        );
        let line = peer.wait_line("\"event\"", left);
        if line.contains("\"complete\"") {
            complete = Some(stopped.elapsed());
            let elapsed = json_field(&line, "elapsed_s")
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no elapsed_s in {line}"));
            assert!(
                started + Duration::from_secs_f64(elapsed) >= stopped,
                "h2 completed before h1 was stopped: {line}"
            );
        }
        // (A second connection between the same two peers is dropped as a duplicate: not
        // the one that carried the transfer.)
        if line.contains("\"peer_closed\"")
            && json_field(&line, "addr").is_some_and(|a| a.starts_with(&format!("{h1}:")))
            && !line.contains("already connected")
        {
            let reason = json_field(&line, "reason").unwrap_or_default().to_string();
            assert!(
                reason.contains("stalled"),
                "h1's connection closed for another reason: {line}"
            );
            closed = Some(stopped.elapsed());
        }
    }
    let (complete, closed) = (complete.unwrap(), closed.unwrap());
    eprintln!(
        "h1 stopped: its connection closed as stalled after {:.1} s, h2 complete after {:.1} s",
        closed.as_secs_f64(),
        complete.as_secs_f64()
    );
    assert!(
        closed < Duration::from_secs(90),
        "stalled close after {closed:?}"
    );
    let done = finish(&mut peer);
    assert_eq!(json_field(&done, "complete"), Some("true"), "h2: {done}");
    rel.assert_delivered(2);
    signal(&second, libc::SIGCONT);
    finish(&mut second);
    finish(&mut seeder);
}
