//! Shared helpers for corvid's end-to-end tests: real processes, started and reaped by
//! PID, synchronised on the lines they print (never on sleeps), plus payload generators.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod deploy;
pub mod fleet;
pub mod rawpeer;
pub mod release;

/// Path of the `corvid` binary cargo built for these tests.
pub fn corvid_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corvid"))
}

/// Debian's python3 (python3-libtorrent lives there), overridable with CORVID_PYTHON.
pub fn python() -> String {
    std::env::var("CORVID_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_string())
}

/// Fails the test with a clear message when a tool the interop tests need is missing;
/// CI installs them with scripts/test-deps, so a missing tool is a setup bug, not a skip.
pub fn require_tool(cmd: &str, probe: &[&str]) {
    let ok = Command::new(cmd)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{cmd}` is missing or broken: run scripts/test-deps (it installs Debian's packages)"
    );
}

/// A child process whose stdout lines arrive on a channel and that is killed (by its PID,
/// through `Child::kill`) and reaped when dropped, so a failing test leaves nothing behind.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The stderr reader: it may still be copying the last bytes when the child is
    /// reaped, so `wait_exit` waits for it to reach end-of-file before reading `stderr`.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            name: name.to_string(),
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for a stdout line containing `needle`; panics with everything seen so far
    /// (stdout and stderr) if it does not come within `timeout` or the process exits.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no line containing {needle:?} within {timeout:?}\n{}",
                        self.name,
                        self.dump()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited before printing {needle:?}\n{}",
                        self.name,
                        self.dump()
                    )
                }
            }
        }
    }

    /// Waits for the process to exit by itself within `timeout`; returns its exit code,
    /// all stdout lines it printed and its stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("not yet reaped");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Drain what the reader thread still holds.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                self.child = None;
                // The pipe's last writer exited, so the reader reaches end-of-file
                // promptly; bounded anyway in case a grandchild inherited the pipe.
                if let Some(reader) = self.stderr_reader.take() {
                    let until = Instant::now() + Duration::from_secs(5);
                    while !reader.is_finished() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if reader.is_finished() {
                        let _ = reader.join();
                    }
                }
                let err = self.stderr.lock().unwrap().clone();
                return (status.code(), self.seen.clone(), err);
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: still running after {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            // Polling the exit status: std offers no blocking wait with a timeout.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops a corvid node with SIGTERM and checks it exited 0 after a final `done` line;
    /// returns that line and every stdout line it printed.
    pub fn finish_lines(&mut self, timeout: Duration) -> (String, Vec<String>) {
        self.terminate();
        let (code, lines, err) = self.wait_exit(timeout);
        let done = lines
            .iter()
            .rev()
            .find(|l| l.contains("\"event\":\"done\""))
            .cloned()
            .unwrap_or_else(|| {
                panic!("{}: no done report\n{}\n{err}", self.name, lines.join("\n"))
            });
        assert_eq!(
            code,
            Some(0),
            "{}: exit code after SIGTERM\n{}\n{err}",
            self.name,
            lines.join("\n")
        );
        (done, lines)
    }

    /// [`Proc::finish_lines`], for the `done` line alone.
    pub fn finish(&mut self, timeout: Duration) -> String {
        self.finish_lines(timeout).0
    }

    /// SIGTERM: a corvid node then stops cleanly, prints its report and exits.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let pid = libc::pid_t::try_from(c.id()).expect("pid fits pid_t");
            // SAFETY: kill(2) with a PID we spawned and have not reaped yet (the Child is
            // still held), so the PID cannot have been reused by another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Every stdout line seen so far by `wait_line`/`wait_exit`.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn dump(&self) -> String {
        format!(
            "--- stdout of {} ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A release-like tree: nested directories, an empty file, a larger file and small ones.
pub fn make_tree(root: &Path, big: usize, seed: u64) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib/deep/er")).unwrap();
    std::fs::write(root.join("bin/app"), pseudo_random(big, seed)).unwrap();
    std::fs::write(
        root.join("lib/deep/er/data.bin"),
        pseudo_random(300_001, seed + 1),
    )
    .unwrap();
    std::fs::write(root.join("lib/empty"), b"").unwrap();
    std::fs::write(root.join("README"), b"release notes\n").unwrap();
}

/// Compares two trees file by file (names, sizes, bytes); panics naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let mut left = Vec::new();
    let mut right = Vec::new();
    list(a, a, &mut left);
    list(b, b, &mut right);
    assert_eq!(left, right, "file lists differ between {a:?} and {b:?}");
    for rel in &left {
        let x = std::fs::read(a.join(rel)).unwrap();
        let y = std::fs::read(b.join(rel)).unwrap();
        assert!(x == y, "{rel:?} differs between {a:?} and {b:?}");
    }
}

fn list(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

/// A `corvid` command with `args`.
pub fn corvid(args: &[&str]) -> Command {
    let mut c = Command::new(corvid_bin());
    c.args(args);
    c
}

/// `corvid make PAYLOAD -o TORRENT --tracker TRACKER --piece-size SIZE` (one hashing
/// thread), checked to succeed.
pub fn make_torrent(payload: &Path, torrent: &Path, tracker: &str, piece_size: &str) {
    let out = corvid(&["make"])
        .arg(payload)
        .arg("-o")
        .arg(torrent)
        .args(["--tracker", tracker, "--piece-size", piece_size])
        .args(["--threads", "1", "--json"])
        .output()
        .expect("run corvid make");
    assert!(
        out.status.success(),
        "corvid make failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `corvid info TORRENT --json`: one JSON line (`info_hash`, `total_size`, `pieces`, ...).
pub fn torrent_info(torrent: &Path) -> String {
    let out = corvid(&["info"])
        .arg(torrent)
        .arg("--json")
        .output()
        .expect("run corvid info");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A torrent's info-hash, as `corvid info` reports it.
pub fn info_hash(torrent: &Path) -> [u8; 20] {
    let info = torrent_info(torrent);
    let hex = json_field(&info, "info_hash").expect("info_hash in corvid info --json");
    let mut h = [0u8; 20];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex info-hash");
    }
    h
}

/// Starts `corvid seed TORRENT PARENT` on a free loopback port with one core and one
/// hasher (`extra` flags added); returns it once it listens, with its peer address.
pub fn start_seeder(
    torrent: &Path,
    parent: &Path,
    extra: &[&str],
    timeout: Duration,
) -> (Proc, SocketAddr) {
    let mut cmd = corvid(&["seed"]);
    cmd.arg(torrent).arg(parent);
    cmd.args(["--listen", "127.0.0.1:0", "--json"]);
    cmd.args(["--cores", "1", "--hash-threads", "1"]);
    cmd.args(extra);
    let mut p = Proc::spawn("seeder", &mut cmd);
    let line = p.wait_line("\"listening\"", timeout);
    let addr = json_field(&line, "peer_addr")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no peer_addr in {line}"));
    (p, addr)
}

/// A port free right now on 127.0.0.1 (bound to port 0, then released): for programs that
/// must be told a port up front (a tracker whose URL goes into the torrent).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The JSON token of `key` in a one-line object printed by corvid: a number or `true` as
/// written, a string without its quotes. Parsed as JSON (a key that only appears inside a
/// string value is not found); when the object does not hold `key`, the first nested
/// object that does answers, since corvid's reports nest a few flat groups.
pub fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    fn find<'a>(obj: &'a str, key: &str) -> Option<&'a str> {
        let map: BTreeMap<&'a str, &'a RawValue> = serde_json::from_str(obj).ok()?;
        if let Some(raw) = map.get(key) {
            let tok = raw.get();
            return Some(
                tok.strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .unwrap_or(tok),
            );
        }
        map.values()
            .filter(|v| v.get().starts_with('{'))
            .find_map(|v| find(v.get(), key))
    }
    find(line.trim(), key)
}

/// A numeric field of a JSON line; panics naming the field and the line when absent.
pub fn json_u64(line: &str, key: &str) -> u64 {
    json_field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key:?} in {line}"))
}

/// A TCP relay that passes bytes from `upstream` to its clients at about `rate` bytes per
/// second: slows one peer's download so a test can kill it half-way.
pub struct SlowRelay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl SlowRelay {
    pub fn start(upstream: SocketAddr, rate: u64) -> SlowRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                std::thread::spawn(move || pump(client, server, None));
                std::thread::spawn(move || pump(s2, c2, Some(rate)));
            }
        });
        SlowRelay { addr, stop }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to`, at most `rate` bytes per second when given (pacing by sleeping
/// is the point here: it is a throttle, not synchronisation).
fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>) {
    let mut buf = [0u8; 8192];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
