//! Child processes the harness measures: spawn, stream their output as timed events,
//! reap them with `wait4` for CPU time and peak RSS, and kill them by PID (never by name)
//! when the harness is done with them, fails, or is interrupted.
//!
//! Each child gets a waiter thread that blocks in `waitid(WNOWAIT)` until the child has
//! exited, then reaps it with `wait4` under the child's lock. Every `kill` and every
//! `/proc/PID` read takes the same lock and checks the reaped flag first, so a PID is
//! never signalled or sampled after the kernel could have given it to another process.
//!
//! Timing: an exit event carries the `Instant` the waiter saw the exit, and every output
//! line carries the `Instant` it was read, so completion times do not depend on how
//! quickly the main thread gets round to looking.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// How often `/proc/PID/status` is sampled for the anonymous part of the RSS.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Lines of stderr kept per child for error messages.
const STDERR_TAIL: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

#[derive(Debug)]
pub enum ProcEvent {
    Line {
        idx: usize,
        stream: Stream,
        at: Instant,
        text: String,
    },
    Exit {
        idx: usize,
        at: Instant,
        exit: ExitInfo,
    },
}

/// What the kernel says about a finished child.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub usage: Usage,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown exit status".to_string(),
        }
    }
}

/// Resource use of one child (and of any children it waited for).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub user_s: f64,
    pub sys_s: f64,
    /// `ru_maxrss`: peak resident set, including mapped file pages. Linux folds in the
    /// high-water mark of the memory the child had before exec, which for a spawned
    /// child is a copy of (or, with vfork, is) the harness's own: a floor of a few MiB.
    pub max_rss_kib: u64,
    /// VmHWM from the last sample: the peak RSS of the program after its last exec
    /// (mapped file pages included); `None` when no sample was taken.
    pub hwm_kib: Option<u64>,
    /// Peak of VmRSS minus RssFile (anonymous + shmem) over the samples taken; `None`
    /// when the child exited before the first sample.
    pub peak_anon_kib: Option<u64>,
    /// The last such sample before exit.
    pub last_anon_kib: Option<u64>,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

struct Shared {
    pid: libc::pid_t,
    label: String,
    /// True once `wait4` has reaped the PID; guarded so kill/sample never race the reap.
    reaped: Mutex<bool>,
    stderr_tail: Mutex<VecDeque<String>>,
}

impl Shared {
    fn signal(&self, sig: libc::c_int) -> bool {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            return false;
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the PID is our unreaped
        // child (checked under the lock the reaper takes), so it names no other process.
        unsafe { libc::kill(self.pid, sig) == 0 }
    }
}

/// Every live child, so an interrupt can kill them all by PID.
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// A running child. Dropping it kills the child (SIGKILL) if it is still running.
pub struct Proc {
    shared: Arc<Shared>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr piped into `events`.
    pub fn spawn(
        label: &str,
        cmd: &mut Command,
        idx: usize,
        events: Sender<ProcEvent>,
    ) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{label}: cannot start {:?}", cmd.get_program()))?;
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        let shared = Arc::new(Shared {
            pid,
            label: label.to_string(),
            reaped: Mutex::new(false),
            stderr_tail: Mutex::new(VecDeque::new()),
        });
        {
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&shared));
        }

        let (done_tx, done_rx) = mpsc::channel::<()>();
        if let Some(out) = child.stdout.take() {
            spawn_reader(
                out,
                idx,
                Stream::Out,
                events.clone(),
                shared.clone(),
                done_tx.clone(),
            );
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(
                err,
                idx,
                Stream::Err,
                events.clone(),
                shared.clone(),
                done_tx.clone(),
            );
        }
        drop(done_tx);
        // The Child handle is not used to wait: the waiter thread reaps with wait4.
        drop(child);

        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let sampler = {
            let shared = shared.clone();
            thread::spawn(move || sample_rss(&shared, &stop_rx))
        };
        {
            let shared = shared.clone();
            thread::spawn(move || {
                let (status, ru) = reap(&shared);
                let at = Instant::now();
                drop(stop_tx);
                let rss = sampler.join().unwrap_or_default();
                // Let the readers deliver the last lines (a final JSON report) before
                // the exit event; bounded, in case a grandchild still holds the pipe.
                let deadline = Instant::now() + Duration::from_secs(2);
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    match done_rx.recv_timeout(left) {
                        Ok(()) => {}
                        Err(_) => break,
                    }
                }
                let usage = Usage {
                    user_s: tv_secs(ru.ru_utime),
                    sys_s: tv_secs(ru.ru_stime),
                    max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
                    hwm_kib: rss.hwm,
                    peak_anon_kib: rss.peak_anon,
                    last_anon_kib: rss.last_anon,
                };
                let exit = ExitInfo {
                    code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                    signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
                    usage,
                };
                let _ = events.send(ProcEvent::Exit { idx, at, exit });
            });
        }
        Ok(Proc { shared })
    }

    pub fn pid(&self) -> i32 {
        self.shared.pid
    }

    /// Sends `sig` unless the child has already been reaped; true if delivered.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        self.shared.signal(sig)
    }

    /// The last lines the child wrote to stderr, joined, for error messages.
    pub fn stderr_tail(&self) -> String {
        let tail = self
            .shared
            .stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.shared.signal(libc::SIGKILL);
    }
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn spawn_reader<R: Read + Send + 'static>(
    r: R,
    idx: usize,
    stream: Stream,
    events: Sender<ProcEvent>,
    shared: Arc<Shared>,
    done: Sender<()>,
) {
    thread::spawn(move || {
        // Held until EOF: when every reader's sender is gone, the waiter knows the
        // last line has been delivered.
        let _done = done;
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let at = Instant::now();
            let text = String::from_utf8_lossy(&buf).trim_end().to_string();
            if stream == Stream::Err && !text.trim().is_empty() {
                let mut tail = shared.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(text.clone());
            }
            let _ = events.send(ProcEvent::Line {
                idx,
                stream,
                at,
                text,
            });
        }
    });
}

/// Blocks until the child exits, then reaps it; returns the wait status and rusage.
fn reap(shared: &Shared) -> (libc::c_int, libc::rusage) {
    loop {
        // SAFETY: siginfo_t is plain data, zeroed is a valid value; waitid writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the child
        // unreaped so the PID stays ours until wait4 below.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                shared.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let mut reaped = shared.reaped.lock().unwrap_or_else(|e| e.into_inner());
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, zeroed is a valid value; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both out-pointers are valid and writable for the call.
        let r = unsafe { libc::wait4(shared.pid, &mut status, 0, &mut ru) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    *reaped = true;
    (status, ru)
}

#[derive(Default)]
struct RssSamples {
    peak_anon: Option<u64>,
    last_anon: Option<u64>,
    hwm: Option<u64>,
}

/// Samples /proc/PID/status until told to stop (all figures KiB).
fn sample_rss(shared: &Shared, stop: &Receiver<()>) -> RssSamples {
    let mut out = RssSamples::default();
    loop {
        {
            let reaped = shared.reaped.lock().unwrap_or_else(|e| e.into_inner());
            if *reaped {
                break;
            }
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{}/status", shared.pid)) {
                if let Some(anon) = anon_kib(&text) {
                    out.last_anon = Some(anon);
                    out.peak_anon = Some(out.peak_anon.map_or(anon, |p| p.max(anon)));
                }
                if let Some(h) = status_kib(&text, "VmHWM:") {
                    out.hwm = Some(h);
                }
            }
        }
        match stop.recv_timeout(RSS_SAMPLE_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    out
}

fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// VmRSS minus RssFile from a /proc/PID/status text, in KiB.
fn anon_kib(status: &str) -> Option<u64> {
    let rss = status_kib(status, "VmRSS:")?;
    let file = status_kib(status, "RssFile:").unwrap_or(0);
    Some(rss.saturating_sub(file))
}

/// The outcome of a child run to completion by [`run`].
pub struct Finished {
    pub exit: ExitInfo,
    pub stdout: Vec<String>,
    pub stderr_tail: String,
}

/// Runs a command to completion with a time limit; a timeout kills it and is an error.
pub fn run(label: &str, cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let (tx, rx) = mpsc::channel();
    let p = Proc::spawn(label, cmd, 0, tx)?;
    let deadline = Instant::now() + timeout;
    let mut stdout = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Line {
                stream: Stream::Out,
                text,
                ..
            }) => stdout.push(text),
            Ok(ProcEvent::Line { .. }) => {}
            Ok(ProcEvent::Exit { exit, .. }) => {
                return Ok(Finished {
                    exit,
                    stdout,
                    stderr_tail: p.stderr_tail(),
                })
            }
            Err(_) => {
                p.signal(libc::SIGKILL);
                bail!(
                    "{label}: timed out after {:.0}s (killed pid {}); stderr: {}",
                    timeout.as_secs_f64(),
                    p.pid(),
                    p.stderr_tail()
                );
            }
        }
    }
}

/// Like [`run`], but a non-zero exit is an error naming the command and its stderr.
pub fn run_ok(label: &str, cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let f = run(label, cmd, timeout)?;
    if !f.exit.success() {
        bail!("{label}: {}; stderr: {}", f.exit.describe(), f.stderr_tail);
    }
    Ok(f)
}

type Cleanup = Box<dyn Fn() + Send>;
static CLEANUPS: Mutex<Vec<(u64, Cleanup)>> = Mutex::new(Vec::new());
static NEXT_CLEANUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Registers work to do if the harness is interrupted (tearing a fleet down); returns
/// a key for [`forget_cleanup`].
pub fn on_interrupt(f: Cleanup) -> u64 {
    let key = NEXT_CLEANUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key, f));
    key
}

pub fn forget_cleanup(key: u64) {
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(k, _)| *k != key);
}

/// Routes SIGINT/SIGTERM/SIGHUP to a thread that kills every live child by PID, runs
/// the registered cleanups and exits 130. Call first thing in main, before any other
/// thread exists, so every thread inherits the blocked mask. (Children do not: std
/// resets the signal mask in the child before exec.)
pub fn install_interrupt_handler() {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; these calls only write it
    // and this thread's signal mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` was initialised above and `sig` is a valid out-pointer.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        if r != 0 {
            return;
        }
        eprintln!("corvid-bench: interrupted (signal {sig}); killing children and tearing down");
        let live: Vec<Arc<Shared>> = LIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for s in &live {
            if s.signal(libc::SIGKILL) {
                eprintln!("corvid-bench: killed {} (pid {})", s.label, s.pid);
            }
        }
        let cleanups = std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, f) in cleanups {
            f();
        }
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anon_from_status() {
        let s = "Name:\tx\nVmHWM:\t  9000 kB\nVmRSS:\t  8000 kB\nRssAnon:\t 1000 kB\nRssFile:\t  6500 kB\n";
        assert_eq!(anon_kib(s), Some(1500));
        assert_eq!(anon_kib("Name: x\n"), None);
        assert_eq!(status_kib(s, "VmHWM:"), Some(9000));
    }

    #[test]
    fn run_reports_exit_usage_and_output() {
        let f = run(
            "sh",
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.exit.code, Some(3));
        assert_eq!(f.stdout, vec!["one".to_string()]);
        assert_eq!(f.stderr_tail, "two");
        assert!(f.exit.usage.max_rss_kib > 0);
        assert!(run_ok(
            "sh",
            Command::new("sh").args(["-c", "exit 1"]),
            Duration::from_secs(10)
        )
        .is_err());
    }

    #[test]
    fn timeout_kills_the_child() {
        let t = Instant::now();
        let e = run(
            "sleeper",
            Command::new("sleep").arg("30"),
            Duration::from_millis(200),
        );
        assert!(e.is_err());
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn cpu_time_is_measured() {
        let f = run_ok(
            "busy",
            Command::new("sh").args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(f.exit.usage.cpu_s() > 0.01, "{:?}", f.exit.usage);
    }
}
