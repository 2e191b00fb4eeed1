//! Interop: a real libtorrent swarm (Debian's python3-libtorrent) finds itself through
//! corvid's tracker. A seeder and a leecher session, with DHT, LSD, UPnP and NAT-PMP off,
//! share a small torrent whose only tracker is ours; the leecher finishing proves that
//! libtorrent's announces parse and that our compact peer list is usable. It runs against
//! a plain tracker and against one with a topology that puts both sessions in a rack (the
//! rack-aware handout must keep stock clients working).
//!
//! If python3-libtorrent is missing the test fails: CI installs it, and a silent pass
//! would hide that interop is untested.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use corvid_engine::tracker::{TrackerConfig, TrackerServer};

/// Debian's interpreter, where python3-libtorrent is installed (a pyenv or venv python
/// first on PATH would not see it).
const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = r#"
import libtorrent as lt, sys, time, os, tempfile
url, limit = sys.argv[1], float(sys.argv[2])
base = tempfile.mkdtemp()
seed_dir, leech_dir = os.path.join(base, 'seed'), os.path.join(base, 'leech')
os.makedirs(seed_dir); os.makedirs(leech_dir)
with open(os.path.join(seed_dir, 'payload'), 'wb') as f:
    f.write(os.urandom(300000))
fs = lt.file_storage()
lt.add_files(fs, os.path.join(seed_dir, 'payload'))
ct = lt.create_torrent(fs, 16384)
ct.add_tracker(url)
lt.set_piece_hashes(ct, seed_dir)
ti = lt.torrent_info(lt.bencode(ct.generate()))
def session():
    return lt.session({'listen_interfaces': '127.0.0.1:0', 'enable_dht': False,
        'enable_lsd': False, 'enable_upnp': False, 'enable_natpmp': False,
        'alert_mask': lt.alert.category_t.all_categories})
s1, s2 = session(), session()
h1 = s1.add_torrent({'ti': ti, 'save_path': seed_dir})
h2 = s2.add_torrent({'ti': lt.torrent_info(ti), 'save_path': leech_dir})
deadline = time.time() + limit
while time.time() < deadline:
    for s in (s1, s2):
        for a in s.pop_alerts():
            if isinstance(a, (lt.tracker_error_alert, lt.tracker_reply_alert,
                              lt.tracker_warning_alert)):
                print(type(a).__name__, a.message(), flush=True)
    if h2.status().is_seeding:
        print("DONE", flush=True)
        sys.exit(0)
    s2.wait_for_alert(200)
print("TIMEOUT", h1.status().state, h2.status().state, h2.status().progress, flush=True)
sys.exit(1)
"#;

/// Kills and reaps the python process we started (by its PID) however the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn libtorrent_swarm_uses_corvid_tracker() {
    run_libtorrent_swarm(None);
}

#[test]
fn libtorrent_swarm_uses_a_racked_corvid_tracker() {
    let topology = corvid_engine::tracker::Topology::parse("127.0.0.0/8 rack=lo\n", "test")
        .expect("constant topology");
    run_libtorrent_swarm(Some(std::sync::Arc::new(topology)));
}

fn run_libtorrent_swarm(topology: Option<std::sync::Arc<corvid_engine::tracker::Topology>>) {
    let probe = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
    assert!(
        probe.status.success(),
        "python3-libtorrent is missing for {PYTHON}: install Debian's `python3-libtorrent` \
         to run the tracker interop test (CI installs it): {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let cfg = TrackerConfig {
        interval: Duration::from_secs(2),
        min_interval: Duration::from_secs(1),
        topology,
        ..TrackerConfig::default()
    };
    let server = TrackerServer::bind("127.0.0.1:0".parse().unwrap(), cfg).expect("bind");
    let url = format!("http://{}/announce", server.local_addr());
    let limit_s = 60;
    let mut child = Guard(
        Command::new(PYTHON)
            .args(["-c", SCRIPT, &url, &limit_s.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python"),
    );
    // The script bounds itself; this bounds the script, should it hang in libtorrent.
    // Its output ends when it exits, so a reader thread reports the exit as an event.
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send((out, err));
    });
    let (out, err) = rx
        .recv_timeout(Duration::from_secs(limit_s + 30))
        .expect("libtorrent script hung (killed by the guard)");
    let status = child.0.wait().expect("wait python");
    assert!(
        status.success() && out.contains("DONE"),
        "libtorrent leecher did not finish via corvid's tracker ({status}):\n{out}\n{err}"
    );
    assert!(!out.contains("tracker_error_alert"), "{out}");
    let stats = server.stats();
    assert!(stats.announces >= 2, "{stats:?}");
    assert_eq!(stats.failures + stats.bad_requests, 0, "{stats:?}");
    server.shutdown();
}
