//! `--metrics-listen` on `tracker`, `seed` and `peer`: real processes over loopback, scraped
//! with curl during and after a transfer, the Prometheus text parsed and its counters
//! checked against each process's `--json` report.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use support::{
    corvid, json_field, json_u64, make_torrent, make_tree, require_tool, start_seeder,
    torrent_info, Proc, SlowRelay,
};

const T: Duration = Duration::from_secs(60);

/// One scrape: sample (`name{labels}`, exactly as printed) to value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn get(&self, sample: &str) -> f64 {
        *self
            .0
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample:?} in {:?}", self.0.keys()))
    }

    fn u(&self, sample: &str) -> u64 {
        self.get(sample) as u64
    }

    /// The sum over every label set of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

/// GETs `http://addr/metrics` with curl and parses the text format, checking that every
/// sample belongs to a family announced by a `# TYPE` line.
fn scrape(addr: &str) -> Scrape {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("metrics are UTF-8");
    let mut types: Vec<String> = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind} in {line}"
            );
            types.push(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = key.split('{').next().unwrap();
        assert!(
            types.iter().any(|t| name == t
                || name
                    .strip_prefix(t.as_str())
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "sample {name} has no TYPE line\n{text}"
        );
        assert!(
            samples.insert(key.to_string(), value).is_none(),
            "{key} twice"
        );
    }
    Scrape(samples)
}

/// The address from a process's `metrics_listening` line.
fn metrics_addr(p: &mut Proc) -> String {
    let line = p
        .seen()
        .iter()
        .find(|l| l.contains("\"metrics_listening\""))
        .cloned()
        .unwrap_or_else(|| p.wait_line("\"metrics_listening\"", T));
    json_field(&line, "metrics_addr")
        .expect("metrics_addr")
        .to_string()
}

#[test]
fn metrics_endpoints_agree_with_the_json_reports() {
    require_tool("curl", &["--version"]);
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("rel");
    make_tree(&payload, 3 << 20, 14);

    let mut tracker = Proc::spawn(
        "tracker",
        &mut corvid(&[
            "tracker",
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--metrics-listen",
            "127.0.0.1:0",
        ]),
    );
    let line = tracker.wait_line("\"listening\"", T);
    let url = format!(
        "http://{}/announce",
        json_field(&line, "tracker_addr").unwrap()
    );
    let tracker_metrics = metrics_addr(&mut tracker);

    let torrent = dir.path().join("rel.torrent");
    make_torrent(&payload, &torrent, &url, "64KiB");
    let pieces = json_u64(&torrent_info(&torrent), "pieces");
    let (mut seeder, seed_addr) = start_seeder(
        &torrent,
        dir.path(),
        &["--no-tracker", "--metrics-listen", "127.0.0.1:0"],
        T,
    );
    let seeder_metrics = metrics_addr(&mut seeder);

    // The peer reaches the seeder only through a relay at 1 MiB/s, so the ~3.3 MiB take
    // a few seconds and a scrape lands mid-transfer.
    let relay = SlowRelay::start(seed_addr, 1 << 20);
    let dest = dir.path().join("dl");
    let mut peer = Proc::spawn(
        "peer",
        corvid(&["peer"])
            .arg(&torrent)
            .arg(&dest)
            .args(["--listen", "127.0.0.1:0", "--json", "--no-announce"])
            .args(["--cores", "1", "--hash-threads", "1", "--linger", "60s"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--peer")
            .arg(relay.addr.to_string()),
    );
    let peer_metrics = metrics_addr(&mut peer);

    // During: some pieces in, not all.
    let mid = loop {
        let line = peer.wait_line("\"progress\"", T);
        let have = json_u64(&line, "have");
        if have > 0 && have < pieces {
            break have;
        }
        assert!(
            have < pieces,
            "finished before a mid-transfer scrape: {line}"
        );
    };
    let during = scrape(&peer_metrics);
    assert!(during.u("corvid_pieces_have") >= mid);
    assert_eq!(during.u("corvid_pieces"), pieces);
    assert!(during.u("corvid_bytes_down_total{source=\"seeder\"}") > 0);
    assert_eq!(during.u("corvid_bytes_down_total{source=\"peers\"}"), 0);
    assert_eq!(during.u("corvid_connections{state=\"established\"}"), 1);
    assert!(during.u("corvid_pieces_verified_total") > 0);
    assert!(during.get("corvid_hash_queue_depth") >= 0.0);

    // After: complete, the connection closed (both sides complete), nothing more moves.
    peer.wait_line("\"complete\"", T);
    peer.wait_line("\"peer_closed\"", T);
    let after = scrape(&peer_metrics);
    let (done, _) = peer.finish_lines(T);
    assert_eq!(
        after.u("corvid_bytes_down_total{source=\"seeder\"}"),
        json_u64(&done, "bytes_from_seeder"),
        "{done}"
    );
    assert_eq!(
        after.u("corvid_bytes_down_total{source=\"peers\"}"),
        json_u64(&done, "bytes_from_peers")
    );
    assert_eq!(
        after.u("corvid_bytes_up_total"),
        json_u64(&done, "bytes_up")
    );
    assert_eq!(
        after.u("corvid_bytes_wasted_total"),
        json_u64(&done, "wasted")
    );
    let verified = json_u64(&done, "pieces_verified");
    assert_eq!(after.u("corvid_pieces_verified_total"), verified);
    assert_eq!(
        after.u("corvid_pieces_failed_total"),
        json_u64(&done, "pieces_failed")
    );
    assert_eq!(after.u("corvid_piece_latency_seconds_count"), verified);
    assert_eq!(
        after.u("corvid_piece_latency_seconds_bucket{le=\"+Inf\"}"),
        verified
    );
    assert_eq!(after.u("corvid_pieces_have"), pieces);
    assert_eq!(after.u("corvid_hash_queue_depth"), 0);
    assert_eq!(after.sum("corvid_connections"), 0.0);
    assert_eq!(after.sum("corvid_connections_closed_total"), 1.0);
    assert!(after.u("corvid_dials_total") >= 1);

    // The seeder sent every byte the peer got from it, and announced `started` once.
    let seed_scrape = scrape(&seeder_metrics);
    let tracker_mid = scrape(&tracker_metrics);
    let seed_done = seeder.finish(T);
    assert_eq!(
        seed_scrape.u("corvid_bytes_up_total"),
        json_u64(&seed_done, "bytes_up"),
        "{seed_done}"
    );
    assert!(seed_scrape.u("corvid_bytes_up_total") >= json_u64(&done, "bytes_from_seeder"));
    assert_eq!(seed_scrape.sum("corvid_bytes_down_total"), 0.0);
    assert_eq!(
        seed_scrape.u("corvid_announces_total{event=\"started\",result=\"ok\"}"),
        1
    );
    assert_eq!(tracker_mid.u("corvid_tracker_swarms"), 1);
    assert_eq!(tracker_mid.u("corvid_tracker_peers"), 1);
    assert_eq!(
        tracker_mid.u("corvid_tracker_announces_total{event=\"started\"}"),
        1
    );

    // The seeder's `stopped` took it out of the tracker's swarm.
    let gone = scrape(&tracker_metrics);
    let tracker_done = tracker.finish(T);
    assert_eq!(
        gone.u("corvid_tracker_announces_total{event=\"stopped\"}"),
        1
    );
    assert_eq!(gone.u("corvid_tracker_swarms"), 0);
    assert_eq!(gone.u("corvid_tracker_peers"), 0);
    assert_eq!(
        gone.sum("corvid_tracker_announces_total") as u64,
        json_u64(&tracker_done, "announces"),
        "{tracker_done}"
    );
    assert_eq!(
        gone.u("corvid_tracker_requests_total{outcome=\"announce\"}"),
        json_u64(&tracker_done, "announces")
    );
    drop(relay);
}
