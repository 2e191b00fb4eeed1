//! Driving the real `corvid` binary through its CLI contract: `make` a torrent, start a
//! `seed` (with its embedded tracker) and wait for its `listening` event, start every
//! `peer` at once, and collect each peer's `done` report, completion time and resource
//! use. Used by both scenarios; where the processes run (this host, or a fleet host via
//! `scripts/fleet exec`) is a [`Runner`].

use crate::json::{self, Json};
use crate::proc::{self, ExitInfo, Proc, ProcEvent, Stream, Usage};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where a command runs.
#[derive(Clone, Debug)]
pub enum Runner {
    Local,
    /// On host `host` of the fleet `name`, via `scripts/fleet --name NAME exec hN ...`
    /// (which execs, so the PID we hold is the command's own).
    Fleet {
        script: PathBuf,
        name: String,
        host: usize,
    },
    /// In network namespace `name`, via `ip netns exec` (which execs too).
    Netns {
        name: String,
    },
}

impl Runner {
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        match self {
            Runner::Local => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            Runner::Fleet { script, name, host } => {
                let mut c = Command::new(script);
                c.arg("--name")
                    .arg(name)
                    .arg("exec")
                    .arg(host.to_string())
                    .args(argv);
                c
            }
            Runner::Netns { name } => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec"]).arg(name).args(argv);
                c
            }
        }
    }
}

/// Finds the corvid binary; the error says how to build it.
pub fn locate(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()));
    }
    bail!(
        "corvid binary not found at {} (build it with `cargo build --release -p corvid`, \
         or pass --corvid PATH)",
        path.display()
    )
}

/// Runs `corvid make`; returns the time it took (hashing the payload once).
pub fn make(
    bin: &Path,
    data: &Path,
    torrent: &Path,
    tracker_url: &str,
    piece_size: Option<&str>,
) -> Result<Duration> {
    let mut cmd = Command::new(bin);
    cmd.arg("make")
        .arg(data)
        .arg("-o")
        .arg(torrent)
        .arg("--tracker")
        .arg(tracker_url);
    if let Some(ps) = piece_size {
        cmd.arg("--piece-size").arg(ps);
    }
    let t = Instant::now();
    proc::run_ok("corvid make", &mut cmd, Duration::from_secs(600))?;
    if !torrent.is_file() {
        bail!("corvid make exited 0 but wrote no {}", torrent.display());
    }
    Ok(t.elapsed())
}

/// A peer's `done` report (the last stdout line of `corvid peer --json`).
#[derive(Debug, Clone)]
pub struct PeerReport {
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub from_seeder: u64,
    pub from_peers: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub raw: Json,
}

/// Parses a stdout line: `Ok(None)` if it is not a `done` event.
pub fn parse_done(line: &str) -> Result<Option<PeerReport>> {
    let Ok(v) = json::parse(line) else {
        return Ok(None);
    };
    if v.get("event").and_then(Json::as_str) != Some("done") {
        return Ok(None);
    }
    let r = v
        .get("report")
        .ok_or_else(|| anyhow!("done event without a report: {line}"))?;
    let num = |k: &str| -> Result<u64> {
        r.get(k)
            .and_then(Json::as_u64)
            .ok_or_else(|| anyhow!("done report lacks a numeric {k:?}: {line}"))
    };
    Ok(Some(PeerReport {
        bytes_down: num("bytes_down")?,
        bytes_up: num("bytes_up")?,
        from_seeder: num("bytes_from_seeder")?,
        from_peers: num("bytes_from_peers")?,
        p50_us: r.at(&["piece_latency_us", "p50"]).and_then(Json::as_f64),
        p99_us: r.at(&["piece_latency_us", "p99"]).and_then(Json::as_f64),
        raw: r.clone(),
    }))
}

/// Whether a stdout line is the peer's `complete` event (every piece verified).
pub fn is_complete_event(line: &str) -> bool {
    json::parse(line)
        .ok()
        .is_some_and(|v| v.get("event").and_then(Json::as_str) == Some("complete"))
}

/// The seeder's `listening` event: (peer_addr, tracker_addr).
pub fn parse_listening(line: &str) -> Option<(String, String)> {
    let v = json::parse(line).ok()?;
    if v.get("event").and_then(Json::as_str) != Some("listening") {
        return None;
    }
    let peer = v.get("peer_addr").and_then(Json::as_str)?.to_string();
    let tracker = v
        .get("tracker_addr")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_string();
    Some((peer, tracker))
}

/// `--linger` as the contract spells it (`0s`, `30s`), milliseconds only when needed.
fn linger_arg(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{ms}ms")
    }
}

pub struct PeerSpec {
    pub host: String,
    pub runner: Runner,
    pub dest_dir: PathBuf,
    pub listen: String,
}

pub struct Swarm<'a> {
    pub bin: &'a Path,
    pub torrent: &'a Path,
    pub data_parent: &'a Path,
    pub seed_runner: Runner,
    pub seed_host: String,
    pub seed_listen: String,
    pub tracker_listen: String,
    pub peers: Vec<PeerSpec>,
    pub linger: Duration,
    pub timeout: Duration,
    /// Extra flags for `corvid seed` (e.g. `--send-path splice`, `--uplink 100mbit`).
    pub seed_args: Vec<String>,
    /// Extra flags for every `corvid peer` (e.g. `--uplink 100mbit`).
    pub peer_args: Vec<String>,
}

pub struct PeerOutcome {
    pub host: String,
    /// From the moment the peers were started to the `done` line (or exit).
    pub seconds: f64,
    pub report: PeerReport,
    pub usage: Usage,
}

pub struct SwarmOutcome {
    /// Last peer's completion.
    pub seconds: f64,
    /// From starting the seeder to its `listening` event.
    pub seed_ready_s: f64,
    pub peers: Vec<PeerOutcome>,
    pub seed_usage: Usage,
}

/// Runs one swarm to completion. Any peer failing, the seeder dying, or the time limit
/// passing is an error naming the host; every process is killed by PID on return.
pub fn run_swarm(s: &Swarm) -> Result<SwarmOutcome> {
    let (tx, rx) = mpsc::channel();
    let (seed, seed_ready_s) = start_seed(s, &tx, &rx)?;
    let t0 = Instant::now();
    let mut w = Watch::start(s, t0, &tx)?;
    while w.exits.iter().any(Option::is_none) {
        w.stop_when_all_complete();
        let left = (t0 + s.timeout).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Exit { idx: 0, exit, .. }) => bail!(
                "corvid seed on {} exited during the transfer ({}): {}",
                s.seed_host,
                exit.describe(),
                seed.stderr_tail()
            ),
            Ok(ev) => w.on_event(ev)?,
            Err(_) => return Err(w.timed_out()),
        }
    }
    let seed_usage = stop_seed(s, &seed, &rx)?;
    let peers = w.outcomes()?;
    Ok(SwarmOutcome {
        seconds: peers.iter().map(|p| p.seconds).fold(0.0, f64::max),
        seed_ready_s,
        peers,
        seed_usage,
    })
}

/// Starts the seeder (event index 0) and waits for its `listening` event; returns it and
/// the seconds that took.
fn start_seed(
    s: &Swarm,
    tx: &mpsc::Sender<ProcEvent>,
    rx: &mpsc::Receiver<ProcEvent>,
) -> Result<(Proc, f64)> {
    let argv: Vec<String> = vec![
        s.bin.display().to_string(),
        "seed".into(),
        s.torrent.display().to_string(),
        s.data_parent.display().to_string(),
        "--listen".into(),
        s.seed_listen.clone(),
        "--tracker-listen".into(),
        s.tracker_listen.clone(),
        "--trust-data".into(),
        "--json".into(),
    ]
    .into_iter()
    .chain(s.seed_args.iter().cloned())
    .collect();
    let t_seed = Instant::now();
    let seed = Proc::spawn(
        &format!("corvid seed on {}", s.seed_host),
        &mut s.seed_runner.command(&argv),
        0,
        tx.clone(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Line {
                stream: Stream::Out,
                text,
                at,
                ..
            }) => {
                if parse_listening(&text).is_some() {
                    return Ok((seed, at.duration_since(t_seed).as_secs_f64()));
                }
            }
            Ok(ProcEvent::Line { .. }) => {}
            Ok(ProcEvent::Exit { exit, .. }) => bail!(
                "corvid seed on {} exited before listening ({}): {}",
                s.seed_host,
                exit.describe(),
                seed.stderr_tail()
            ),
            Err(_) => bail!(
                "corvid seed on {} printed no listening event within 30s: {}",
                s.seed_host,
                seed.stderr_tail()
            ),
        }
    }
}

/// Stops the seeder and collects its usage (SIGTERM, then SIGKILL after 10s).
fn stop_seed(s: &Swarm, seed: &Proc, rx: &mpsc::Receiver<ProcEvent>) -> Result<Usage> {
    seed.signal(libc::SIGTERM);
    let kill_at = Instant::now() + Duration::from_secs(10);
    loop {
        let left = kill_at.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Exit { idx: 0, exit, .. }) => return Ok(exit.usage),
            Ok(_) => {}
            Err(_) => {
                seed.signal(libc::SIGKILL);
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(ProcEvent::Exit { idx: 0, exit, .. }) => return Ok(exit.usage),
                    _ => bail!("corvid seed on {} could not be reaped", s.seed_host),
                }
            }
        }
    }
}

/// The peers of a swarm (peer i is event index i + 1) and what each has said so far.
struct Watch<'a> {
    s: &'a Swarm<'a>,
    /// When the peers were started: every time below counts from here.
    t0: Instant,
    peers: Vec<Proc>,
    done_at: Vec<Option<(f64, PeerReport)>>,
    complete_at: Vec<Option<f64>>,
    exits: Vec<Option<(f64, ExitInfo)>>,
    /// Each peer's last stdout lines (progress, closed connections), for a timeout's report.
    last_out: Vec<VecDeque<String>>,
    terminated: bool,
}

impl<'a> Watch<'a> {
    /// Starts every peer at once.
    fn start(s: &'a Swarm<'a>, t0: Instant, tx: &mpsc::Sender<ProcEvent>) -> Result<Watch<'a>> {
        let mut peers = Vec::new();
        for (i, p) in s.peers.iter().enumerate() {
            let mut argv = vec![
                s.bin.display().to_string(),
                "peer".into(),
                s.torrent.display().to_string(),
                p.dest_dir.display().to_string(),
                "--listen".into(),
                p.listen.clone(),
                "--linger".into(),
                linger_arg(s.linger),
                "--json".into(),
            ];
            argv.extend(s.peer_args.iter().cloned());
            peers.push(Proc::spawn(
                &format!("corvid peer on {}", p.host),
                &mut p.runner.command(&argv),
                i + 1,
                tx.clone(),
            )?);
        }
        let n = peers.len();
        Ok(Watch {
            s,
            t0,
            peers,
            done_at: vec![None; n],
            complete_at: vec![None; n],
            exits: vec![None; n],
            last_out: vec![VecDeque::new(); n],
            terminated: false,
        })
    }

    /// Once every peer holds the payload verified, lingering ones are told to stop
    /// (they then print their `done` report and exit).
    fn stop_when_all_complete(&mut self) {
        if !self.terminated && self.complete_at.iter().all(Option::is_some) {
            for p in &self.peers {
                p.signal(libc::SIGTERM);
            }
            self.terminated = true;
        }
    }

    /// A peer's stdout line or exit (the seeder's are not handed here).
    fn on_event(&mut self, ev: ProcEvent) -> Result<()> {
        match ev {
            ProcEvent::Line {
                idx,
                stream: Stream::Out,
                at,
                text,
            } if idx >= 1 => self.on_line(idx - 1, at, text),
            ProcEvent::Line { .. } => Ok(()),
            ProcEvent::Exit { idx, at, exit } => self.on_exit(idx - 1, at, exit),
        }
    }

    fn on_line(&mut self, i: usize, at: Instant, text: String) -> Result<()> {
        let keep = &mut self.last_out[i];
        if keep.len() == 6 {
            keep.pop_front();
        }
        keep.push_back(text.clone());
        let since = at.duration_since(self.t0).as_secs_f64();
        // The peer's completion time is when it says every piece is verified
        // (`complete`), not when it exits after lingering and flushing.
        if is_complete_event(&text) && self.complete_at[i].is_none() {
            self.complete_at[i] = Some(since);
        }
        if let Some(report) =
            parse_done(&text).with_context(|| format!("corvid peer on {}", self.s.peers[i].host))?
        {
            let t = *self.complete_at[i].get_or_insert(since);
            self.done_at[i] = Some((t, report));
        }
        Ok(())
    }

    fn on_exit(&mut self, i: usize, at: Instant, exit: ExitInfo) -> Result<()> {
        let host = &self.s.peers[i].host;
        // A lingering peer we told to stop may exit by the signal: fine once done.
        let by_us = self.terminated && self.done_at[i].is_some();
        if !exit.success() && !by_us {
            bail!(
                "corvid peer on {host} failed ({}): {}",
                exit.describe(),
                self.peers[i].stderr_tail()
            );
        }
        if self.done_at[i].is_none() {
            bail!(
                "corvid peer on {host} exited 0 without a done report on stdout \
                 (is --json supported?): {}",
                self.peers[i].stderr_tail()
            );
        }
        self.exits[i] = Some((at.duration_since(self.t0).as_secs_f64(), exit));
        Ok(())
    }

    /// The error for a swarm past its time limit: which peers are not done, with their
    /// stderr and last stdout lines.
    fn timed_out(&self) -> anyhow::Error {
        let not_done: Vec<usize> = (0..self.peers.len())
            .filter(|&i| self.done_at[i].is_none())
            .collect();
        let missing: Vec<&str> = not_done
            .iter()
            .map(|&i| self.s.peers[i].host.as_str())
            .collect();
        let tails: Vec<String> = not_done
            .iter()
            .map(|&i| {
                let out: Vec<&str> = self.last_out[i].iter().map(String::as_str).collect();
                format!(
                    "{}: stderr {}; last stdout {}",
                    self.s.peers[i].host,
                    self.peers[i].stderr_tail(),
                    out.join(" ")
                )
            })
            .collect();
        anyhow!(
            "corvid swarm timed out after {:.0}s; not done: {}; their stderr: {}",
            self.s.timeout.as_secs_f64(),
            missing.join(", "),
            tails.join(" | ")
        )
    }

    /// Each peer's completion time, report and usage, once all have exited.
    fn outcomes(self) -> Result<Vec<PeerOutcome>> {
        let mut out = Vec::new();
        for (i, (d, e)) in self.done_at.into_iter().zip(self.exits).enumerate() {
            let (secs, report) = d.ok_or_else(|| anyhow!("peer {i} has no report"))?;
            let (_, exit) = e.ok_or_else(|| anyhow!("peer {i} has no exit"))?;
            out.push(PeerOutcome {
                host: self.s.peers[i].host.clone(),
                seconds: secs,
                report,
                usage: exit.usage,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_report_is_parsed_and_checked() {
        let r = parse_done(
            r#"{"event":"done","report":{"bytes_down":10,"bytes_up":4,"bytes_from_seeder":6,"bytes_from_peers":4,"elapsed_s":0.012,"piece_latency_us":{"p50":100,"p99":900,"max":1000}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.from_seeder, r.from_peers, r.bytes_up), (6, 4, 4));
        assert_eq!(r.p99_us, Some(900.0));
        assert!(parse_done(r#"{"event":"progress"}"#).unwrap().is_none());
        assert!(parse_done("not json").unwrap().is_none());
        assert!(parse_done(r#"{"event":"done","report":{"bytes_down":"x"}}"#).is_err());
    }

    #[test]
    fn linger_spelling() {
        assert_eq!(linger_arg(Duration::ZERO), "0s");
        assert_eq!(linger_arg(Duration::from_secs(30)), "30s");
        assert_eq!(linger_arg(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn listening_event() {
        assert_eq!(
            parse_listening(
                r#"{"event":"listening","peer_addr":"10.99.0.1:6881","tracker_addr":"10.99.0.1:8998"}"#
            ),
            Some(("10.99.0.1:6881".into(), "10.99.0.1:8998".into()))
        );
        assert_eq!(parse_listening(r#"{"event":"done"}"#), None);
    }

    #[test]
    fn fleet_runner_wraps_exec() {
        let r = Runner::Fleet {
            script: "/x/fleet".into(),
            name: "b1".into(),
            host: 3,
        };
        let c = r.command(&["echo", "hi"]);
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(c.get_program(), "/x/fleet");
        assert_eq!(args, ["--name", "b1", "exec", "3", "echo", "hi"]);
    }

    #[test]
    fn missing_binary_names_the_build() {
        let e = locate(Path::new("/nonexistent/corvid"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cargo build --release -p corvid"), "{e}");
    }
}
