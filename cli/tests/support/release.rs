//! A payload tree, its torrent and where it lives, with the seeder and peers the swarm
//! tests start on it: one core, one hasher, JSON lines, loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    corvid, info_hash, json_u64, make_torrent, make_tree, start_seeder, torrent_info, Proc,
};

pub struct Release {
    pub dir: tempfile::TempDir,
    pub torrent: PathBuf,
    /// Directory holding the payload directory (what `corvid seed` is given).
    pub parent: PathBuf,
    pub payload: PathBuf,
    pub size: u64,
    pub pieces: u64,
    /// Bound on waiting for the seeder to listen.
    pub timeout: Duration,
    /// The peers' `--stall-timeout`: below the test's own bound, so a stalled peer says
    /// so before the test gives up on it.
    pub stall: &'static str,
}

impl Release {
    /// A tree from `make_tree` (`big` bytes in its largest file) with a torrent announcing
    /// to `tracker`; waits of up to 120 s, peers stall after 100 s.
    pub fn new(tracker: &str, big: usize, piece_size: &str, seed: u64) -> Release {
        Release::with_payload(tracker, piece_size, |payload| make_tree(payload, big, seed))
    }

    /// A payload directory that `fill` writes, with a torrent announcing to `tracker`.
    pub fn with_payload(tracker: &str, piece_size: &str, fill: impl FnOnce(&Path)) -> Release {
        let dir = tempfile::tempdir().expect("tempdir");
        let parent = dir.path().join("src");
        let payload = parent.join("payload");
        fill(&payload);
        let torrent = dir.path().join("release.torrent");
        make_torrent(&payload, &torrent, tracker, piece_size);
        let info = torrent_info(&torrent);
        let size = json_u64(&info, "total_size");
        let pieces = json_u64(&info, "pieces");
        assert!(size > 0);
        Release {
            dir,
            torrent,
            parent,
            payload,
            size,
            pieces,
            timeout: Duration::from_secs(120),
            stall: "100s",
        }
    }

    pub fn info_hash(&self) -> [u8; 20] {
        info_hash(&self.torrent)
    }

    pub fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a seeder (`extra` flags added) and returns it with its peer address once
    /// it listens.
    pub fn seeder(&self, extra: &[&str]) -> (Proc, SocketAddr) {
        start_seeder(&self.torrent, &self.parent, extra, self.timeout)
    }

    /// Starts a peer downloading into `dest` that lingers a minute once done (`extra`
    /// flags added).
    pub fn peer(&self, name: &str, dest: &Path, extra: &[&str]) -> Proc {
        let mut cmd = corvid(&["peer"]);
        cmd.arg(&self.torrent).arg(dest);
        cmd.args(["--listen", "127.0.0.1:0", "--linger", "60s", "--json"]);
        cmd.args(["--cores", "1", "--hash-threads", "1"]);
        cmd.args(["--stall-timeout", self.stall]);
        cmd.args(extra);
        Proc::spawn(name, &mut cmd)
    }
}
