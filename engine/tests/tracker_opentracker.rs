//! Interop: corvid's announce client against Debian's opentracker. Two peers announce and
//! each finds the other in the compact peer list.
//!
//! Debian builds opentracker with a whitelist (README.Debian): only info-hashes listed in
//! hex in the `-w` file are tracked, so the test writes one. opentracker started as root
//! chroots into `-d` (we give it the temp dir holding the whitelist) and drops to
//! `nobody`, so the whitelist path is given relative to that dir.
//!
//! If opentracker is not installed this test fails: CI installs it, and a silent pass
//! would hide that interop is untested.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corvid_engine::tracker::{announce, scrape, AnnounceRequest, Event, TrackerError};

const OPENTRACKER: &str = "/usr/bin/opentracker";
const TIMEOUT: Duration = Duration::from_secs(5);

/// Kills and reaps the opentracker we started (by its PID) however the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // Bind port 0 and release it; opentracker binds it right after. A race with another
    // process grabbing it is possible but shows up as a clear startup failure.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().unwrap().port()
}

fn start_opentracker(dir: &Path, info_hash: &[u8; 20]) -> (Guard, u16) {
    assert!(
        Path::new(OPENTRACKER).exists(),
        "{OPENTRACKER} is missing: install Debian's `opentracker` package to run the \
         tracker interop test (CI installs it)"
    );
    let hex: String = info_hash.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.join("whitelist.txt"), format!("{hex}\n")).expect("write whitelist");
    let port = free_port();
    let child = Command::new(OPENTRACKER)
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &port.to_string(),
        ])
        .arg("-d")
        .arg(dir)
        .args(["-w", "whitelist.txt"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {OPENTRACKER}: {e}"));
    (Guard(child), port)
}

/// Announces until opentracker accepts (it loads the whitelist on a thread of its own,
/// and there is no readiness signal from another process to wait on), bounded in time.
fn announce_when_ready(
    guard: &mut Guard,
    url: &str,
    req: &AnnounceRequest,
) -> corvid_engine::tracker::AnnounceResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(10);
    loop {
        if let Ok(Some(status)) = guard.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = guard.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("opentracker exited early with {status}: {err}");
        }
        let last = match announce(url, req, TIMEOUT) {
            Ok(r) => return r,
            Err(e @ (TrackerError::Io { .. } | TrackerError::Failure { .. })) => e,
            Err(e) => panic!("announce to opentracker failed: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "opentracker at {url} not ready after 10 s: {last}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[test]
fn corvid_client_against_opentracker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info_hash: [u8; 20] = *b"\x01corvid\xffopentrack%&=";
    let (mut guard, port) = start_opentracker(dir.path(), &info_hash);
    let url = format!("http://127.0.0.1:{port}/announce");

    let a = AnnounceRequest::new(info_hash, *b"-CV0001-peer-aaaaaaa", 7101, 1000);
    let b = AnnounceRequest::new(info_hash, *b"-CV0001-peer-bbbbbbb", 7102, 1000);
    let a_addr = SocketAddr::from(([127, 0, 0, 1], 7101));
    let b_addr = SocketAddr::from(([127, 0, 0, 1], 7102));

    announce_when_ready(&mut guard, &url, &a);
    let rb = announce(&url, &b, TIMEOUT).expect("announce b");
    assert!(rb.interval > 0);
    assert!(
        rb.peers.iter().any(|p| p.addr == a_addr),
        "b sees a: {:?}",
        rb.peers
    );
    let mut again = a.clone();
    again.event = Event::None;
    let ra = announce(&url, &again, TIMEOUT).expect("announce a again");
    assert!(
        ra.peers.iter().any(|p| p.addr == b_addr),
        "a sees b: {:?}",
        ra.peers
    );
    assert_eq!(ra.incomplete, Some(2), "two leechers: {ra:?}");

    // Scrape through the conventional URL sees both leechers.
    let sc = scrape(&url, &[info_hash], TIMEOUT).expect("scrape opentracker");
    assert_eq!(sc.len(), 1, "{sc:?}");
    assert_eq!(sc[0].0, info_hash);
    assert_eq!((sc[0].1.complete, sc[0].1.incomplete), (0, 2), "{sc:?}");

    // A hash not on the whitelist is refused, and the reason reaches the caller.
    let mut other = a.clone();
    other.info_hash = [0x42; 20];
    match announce(&url, &other, TIMEOUT) {
        Err(TrackerError::Failure { reason, .. }) => assert!(!reason.is_empty()),
        r => panic!("expected a refusal for an unlisted hash, got {r:?}"),
    }

    // Leaving: stopped removes a from b's view.
    let mut stop = a.clone();
    stop.event = Event::Stopped;
    announce(&url, &stop, TIMEOUT).expect("stopped");
    let mut b_again = b.clone();
    b_again.event = Event::None;
    let rb = announce(&url, &b_again, TIMEOUT).expect("announce b again");
    assert!(
        !rb.peers.iter().any(|p| p.addr == a_addr),
        "a is gone after stopped: {:?}",
        rb.peers
    );
    // Make sure the process is still ours and alive before the guard kills it.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(guard);
}

/// Issue 15's multi-homed symptom against opentracker: a seeder listening on 127.0.0.2
/// and a peer on 127.0.0.3, both announcing to opentracker on 127.0.0.1. Announced from
/// the route's address (127.0.0.1) each was handed out there, where nobody listened, and
/// every dial was refused; announced from their listen addresses, each finds the other
/// at the address it listens on.
#[test]
fn opentracker_hands_out_the_address_a_multi_homed_peer_announces_from() {
    use corvid_engine::tracker::client::announce_from;
    let dir = tempfile::tempdir().expect("tempdir");
    let info_hash: [u8; 20] = *b"\x02corvid\xffmultihome&=!";
    let (mut guard, port) = start_opentracker(dir.path(), &info_hash);
    let url = format!("http://127.0.0.1:{port}/announce");
    announce_when_ready(
        &mut guard,
        &url,
        &AnnounceRequest::new(info_hash, *b"-CV0001-probe-zzzzzz", 7200, 0),
    );
    let seed = AnnounceRequest::new(info_hash, *b"-CV0001-seed-aaaaaaa", 7201, 0);
    let peer = AnnounceRequest::new(info_hash, *b"-CV0001-peer-bbbbbbb", 7202, 1000);
    let (seed_ip, peer_ip) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
    announce_from(&url, &seed, TIMEOUT, Some(seed_ip)).expect("seeder announces");
    let r = announce_from(&url, &peer, TIMEOUT, Some(peer_ip)).expect("peer announces");
    let seed_at = SocketAddr::new(seed_ip, 7201);
    assert!(
        r.peers.iter().any(|p| p.addr == seed_at),
        "the peer is handed the seeder where it listens, {seed_at}: {:?}",
        r.peers
    );
    let route_addr = SocketAddr::from(([127, 0, 0, 1], 7201));
    assert!(
        !r.peers.iter().any(|p| p.addr == route_addr),
        "{:?}",
        r.peers
    );
}
