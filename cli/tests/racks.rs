//! Issue 11 end to end: several seeders of one release working through one tracker on
//! loopback, and racks on a namespace fleet whose inter-rack link is shaped. Real `corvid`
//! processes, synchronised on their JSON lines and killed by PID however a test ends.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{
    assert_same_tree, corvid, json_field, json_u64, make_torrent, make_tree, start_seeder,
    torrent_info, Proc,
};

/// Bound on every wait: generous, the machine is shared and loaded.
const T: Duration = Duration::from_secs(180);

/// A standalone `corvid tracker` on loopback (`extra` flags added), re-announced to every
/// second; returns it with its announce URL.
fn tracker(extra: &[&str]) -> (Proc, String) {
    let mut cmd = corvid(&["tracker", "--listen", "127.0.0.1:0", "--interval", "1s"]);
    cmd.arg("--json").args(extra);
    let mut p = Proc::spawn("tracker", &mut cmd);
    let line = p.wait_line("\"listening\"", T);
    let addr = json_field(&line, "tracker_addr").expect("tracker_addr");
    (p, format!("http://{addr}/announce"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn peer(torrent: &Path, name: &str, dest: &Path) -> Proc {
    let mut cmd = corvid(&["peer"]);
    cmd.arg(torrent).arg(dest);
    cmd.args(["--listen", "127.0.0.1:0", "--linger", "60s", "--json"]);
    cmd.args([
        "--cores",
        "1",
        "--hash-threads",
        "1",
        "--stall-timeout",
        "100s",
    ]);
    Proc::spawn(name, &mut cmd)
}

/// Two `corvid seed`s on different addresses, each from its own copy of the release,
/// announce to one tracker; four peers must complete with identical data, and both
/// seeders must have uploaded (peers use both, not only the first they met).
#[test]
fn two_seeders_of_one_release_both_serve_the_peers() {
    let (mut tracker, url) = tracker(&[]);
    let t = tempfile::tempdir().unwrap();
    let payload = t.path().join("a").join("payload");
    make_tree(&payload, 8 << 20, 21);
    let torrent = t.path().join("release.torrent");
    make_torrent(&payload, &torrent, &url, "64K");
    let size = json_u64(&torrent_info(&torrent), "total_size");
    copy_tree(&t.path().join("a"), &t.path().join("b"));
    let mut seeders: Vec<Proc> = ["a", "b"]
        .iter()
        .map(|d| {
            let mut s = start_seeder(&torrent, &t.path().join(d), &["--no-tracker"], T).0;
            s.name = format!("seeder-{d}");
            s
        })
        .collect();
    let mut peers: Vec<(Proc, PathBuf)> = (0..4)
        .map(|i| {
            let dest = t.path().join(format!("peer{i}"));
            (peer(&torrent, &format!("peer{i}"), &dest), dest)
        })
        .collect();
    for (p, _) in &mut peers {
        p.wait_line("\"event\":\"complete\"", T);
    }
    let mut from_seeders = 0;
    for (p, dest) in &mut peers {
        let done = p.finish(T);
        assert_eq!(json_field(&done, "complete"), Some("true"), "{done}");
        assert_same_tree(&payload, &dest.join("payload"));
        from_seeders += json_u64(&done, "bytes_from_seeder");
    }
    let ups: Vec<u64> = seeders
        .iter_mut()
        .map(|s| json_u64(&s.finish(T), "bytes_up"))
        .collect();
    eprintln!(
        "two seeders uploaded {ups:?} bytes ({:.2} + {:.2} copies); peers counted {from_seeders} from seeders",
        ups[0] as f64 / size as f64,
        ups[1] as f64 / size as f64
    );
    for (i, up) in ups.iter().enumerate() {
        assert!(*up > 0, "seeder {i} uploaded nothing: {ups:?}");
    }
    assert!(
        ups.iter().sum::<u64>() >= size,
        "the seeders sent less than one copy between them: {ups:?}"
    );
    tracker.finish(T);
}
