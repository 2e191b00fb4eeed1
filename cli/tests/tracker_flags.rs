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
