//! The tracker's flood limits and `ip=` trust as the operator sets them on `corvid
//! tracker` and on `corvid seed`'s embedded tracker: real processes, real announces over
//! loopback.

mod support;

use std::time::Duration;

use corvid_engine::tracker::{announce, AnnounceRequest, Event, TrackerError};
use support::{corvid, json_field, make_torrent, make_tree, start_seeder, Proc};

const T: Duration = Duration::from_secs(30);

fn peer(hash: u8, id: u8, ip: Option<&str>) -> AnnounceRequest {
    let mut r = AnnounceRequest::new([hash; 20], [id; 20], 7000 + u16::from(id), 10);
    r.ip = ip.map(|s| s.parse().expect("literal address"));
    r
}

fn refused(r: Result<impl std::fmt::Debug, TrackerError>, why: &str) {
    match r {
        Err(TrackerError::Failure { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

/// The addresses a newcomer is told about in swarm `hash`.
fn seen_by_newcomer(url: &str, hash: u8) -> Vec<String> {
    let mut r = peer(hash, 99, None);
    r.event = Event::Started;
    let resp = announce(url, &r, T).expect("newcomer announce");
    resp.peers.iter().map(|p| p.addr.to_string()).collect()
}

fn start_tracker(extra: &[&str]) -> (Proc, String) {
    let mut cmd = corvid(&["tracker", "--listen", "127.0.0.1:0", "--json"]);
    cmd.args(extra);
    let mut p = Proc::spawn("tracker", &mut cmd);
    let line = p.wait_line("\"listening\"", T);
    let addr = json_field(&line, "tracker_addr").expect("tracker_addr");
    (p, format!("http://{addr}/announce"))
}

#[test]
fn tracker_flags_set_the_per_ip_caps_and_ip_trust() {
    // Defaults: a claimed ip= is not recorded, even from loopback.
    let (mut p, url) = start_tracker(&[]);
    announce(&url, &peer(1, 1, Some("192.0.2.7")), T).unwrap();
    assert_eq!(seen_by_newcomer(&url, 1), ["127.0.0.1:7001"]);
    p.finish(T);

    let (mut p, url) = start_tracker(&[
        "--max-peers-per-ip",
        "2",
        "--max-swarms-per-ip",
        "1",
        "--trust-ip-param",
    ]);
    announce(&url, &peer(1, 1, Some("192.0.2.7")), T).unwrap();
    announce(&url, &peer(1, 2, None), T).unwrap();
    // Trusted: the claim is recorded (and is the claimant's own address for the caps).
    let mut seen = seen_by_newcomer(&url, 1);
    seen.sort();
    assert_eq!(seen, ["127.0.0.1:7002", "192.0.2.7:7001"]);
    refused(
        announce(&url, &peer(1, 3, None), T),
        "too many peers from your address",
    );
    refused(
        announce(&url, &peer(2, 4, None), T),
        "too many swarms from your address",
    );
    p.finish(T);
}

#[test]
fn seed_flags_set_the_embedded_trackers_caps_and_ip_trust() {
    let t = tempfile::tempdir().unwrap();
    let payload = t.path().join("payload");
    make_tree(&payload, 64 << 10, 3);
    let torrent = t.path().join("p.torrent");
    make_torrent(&payload, &torrent, "http://127.0.0.1:1/announce", "16K");
    let (mut seeder, _) = start_seeder(
        &torrent,
        t.path(),
        &[
            "--no-announce",
            "--tracker-listen",
            "127.0.0.1:0",
            "--tracker-max-peers-per-ip",
            "1",
            "--tracker-trust-ip-param",
        ],
        T,
    );
    let line = seeder
        .seen()
        .iter()
        .find(|l| l.contains("\"listening\""))
        .expect("listening line")
        .clone();
    let url = format!(
        "http://{}/announce",
        json_field(&line, "tracker_addr").expect("tracker_addr")
    );
    announce(&url, &peer(1, 1, Some("192.0.2.7")), T).unwrap();
    announce(&url, &peer(1, 2, None), T).unwrap();
    refused(
        announce(&url, &peer(1, 3, None), T),
        "too many peers from your address",
    );
    let mut r = peer(1, 2, None);
    r.event = Event::None;
    let resp = announce(&url, &r, T).unwrap();
    let seen: Vec<String> = resp.peers.iter().map(|p| p.addr.to_string()).collect();
    assert_eq!(seen, ["192.0.2.7:7001"]);
    seeder.finish(T);
}

/// `--topology` on `corvid tracker`: loopback peers told apart by port, four a rack. A
/// newcomer in rack a gets its four rack mates and two of rack b's four (a third of the
/// same-rack count, rounded up), where without the file it would get all eight.
#[test]
fn tracker_topology_hands_out_mostly_same_rack_peers() {
    let t = tempfile::tempdir().unwrap();
    let racks = t.path().join("racks.txt");
    let mut text = String::from("# two racks on one host, by port\n");
    for id in 1..=9u16 {
        let rack = if id <= 4 || id == 9 { "a" } else { "b" };
        text.push_str(&format!("127.0.0.1:{} rack={rack}\n", 7000 + id));
    }
    std::fs::write(&racks, text).unwrap();
    let (mut p, url) = start_tracker(&["--topology", racks.to_str().unwrap()]);
    for id in 1..=8 {
        announce(&url, &peer(1, id, None), T).unwrap();
    }
    let mut r = peer(1, 9, None);
    r.event = Event::Started;
    let resp = announce(&url, &r, T).expect("newcomer announce");
    let ports: Vec<u16> = resp.peers.iter().map(|p| p.addr.port()).collect();
    assert_eq!(ports.len(), 6, "{ports:?}");
    assert_eq!(ports.iter().filter(|&&p| p <= 7004).count(), 4, "{ports:?}");
    // A client outside the topology gets everyone, as before.
    assert_eq!(seen_by_newcomer(&url, 1).len(), 9);
    p.finish(T);
}

/// A bad topology line stops `corvid tracker` and `corvid seed` at start with the input
/// exit code (3), naming the file's line.
#[test]
fn bad_topology_files_are_refused_with_their_line() {
    let t = tempfile::tempdir().unwrap();
    let racks = t.path().join("racks.txt");
    std::fs::write(&racks, "10.0.0.0/24 rack=a\n10.0.1.0/24 rack a\n").unwrap();
    let mut tracker = corvid(&["tracker", "--listen", "127.0.0.1:0", "--topology"]);
    tracker.arg(&racks);
    let payload = t.path().join("payload");
    make_tree(&payload, 16 << 10, 3);
    let torrent = t.path().join("p.torrent");
    make_torrent(&payload, &torrent, "http://127.0.0.1:1/announce", "16K");
    let mut seed = corvid(&["seed"]);
    seed.arg(&torrent).arg(t.path());
    seed.args(["--listen", "127.0.0.1:0", "--tracker-listen", "127.0.0.1:0"]);
    seed.arg("--topology").arg(&racks);
    for (name, mut cmd) in [("tracker", tracker), ("seed", seed)] {
        let (code, _, err) = Proc::spawn(name, &mut cmd).wait_exit(T);
        assert_eq!(code, Some(3), "{name}: {err}");
        assert!(
            err.contains("racks.txt line 2") && err.contains("no rack=NAME"),
            "{name}: {err}"
        );
    }
}
