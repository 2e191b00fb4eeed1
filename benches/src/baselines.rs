//! The baselines, run as the real programs a user would run: iperf3 (the practical limit
//! of the path, no disk, no crypto), scp (default cipher and AES-128-GCM) and rsync over
//! ssh; and the stock BitTorrent swarm (libtorrent seeding through python3-libtorrent,
//! aria2 downloading, Debian's opentracker introducing them). Also the batch runner both scenarios use to run a set of commands one after
//! another or all at once and time each one's completion.

use crate::corvid::Runner;
use crate::proc::{self, Proc, ProcEvent, Stream, Usage};
use anyhow::{anyhow, bail, Context, Result};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A stock libtorrent seeder for the fleet's `stock` method: seeds `TORRENT` from
/// `SAVE_DIR` (trusted, like `corvid seed --trust-data`) on `IP:6881` with libtorrent's
/// default settings (unchoke slots, request queues), announces to the torrent's tracker,
/// prints `seeding` once it serves and then `up BYTES` (payload uploaded) whenever that
/// grows, and once more on SIGTERM before it exits (or when `TIMEOUT_S` passes).
pub const LT_SEED_PY: &str = r#"
import signal, sys, time
import libtorrent as lt
torrent, save, ip, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ses = lt.session({
    "listen_interfaces": ip + ":6881",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "enable_outgoing_utp": False, "enable_incoming_utp": False,
    "alert_mask": lt.alert.category_t.error_notification,
})
atp = lt.add_torrent_params()
atp.ti = lt.torrent_info(torrent)
atp.save_path = save
atp.flags |= lt.torrent_flags.seed_mode
h = ses.add_torrent(atp)
def stop(*_):
    print("up", h.status().total_payload_upload, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
deadline = time.monotonic() + timeout
seeding, up = False, -1
while time.monotonic() < deadline:
    for a in ses.pop_alerts():
        print("alert:", a.message(), file=sys.stderr, flush=True)
    s = h.status()
    if s.is_seeding and not seeding:
        h.force_reannounce()
        print("seeding", flush=True)
        seeding = True
    if s.total_payload_upload != up:
        up = s.total_payload_upload
        print("up", up, flush=True)
    time.sleep(0.1)
"#;

/// aria2c downloading `torrent` into `dir` as a fleet host would with stock settings: no
/// DHT, LPD or PEX (the tracker introduces the peers), no hash re-check of the finished
/// file, and exit once complete (`--seed-time=0`, like `corvid peer --linger 0s`).
pub fn aria2_argv(torrent: &str, dir: &str) -> Vec<String> {
    [
        "aria2c",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-time=0",
        "--check-integrity=false",
        "--bt-hash-check-seed=false",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--listen-port=6881",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--dir={dir}"), torrent.to_string()])
    .collect()
}

/// One command of a batch; `host` names the receiver it serves in error messages.
pub struct Job {
    pub host: String,
    pub cmd: Command,
}

#[derive(Debug)]
pub struct JobDone {
    pub host: String,
    /// From the start of the batch to this job's exit.
    pub seconds: f64,
    pub stdout: Vec<String>,
    pub usage: Usage,
}

/// Runs `jobs` sequentially or all at once. Any non-zero exit fails the batch with the
/// host, method and stderr; the time limit covers the whole batch. Survivors are killed
/// by PID when the batch fails.
pub fn run_jobs(
    method: &str,
    jobs: Vec<Job>,
    parallel: bool,
    timeout: Duration,
) -> Result<Vec<JobDone>> {
    let (tx, rx) = mpsc::channel();
    let n = jobs.len();
    let hosts: Vec<String> = jobs.iter().map(|j| j.host.clone()).collect();
    let mut pending: std::collections::VecDeque<(usize, Job)> =
        jobs.into_iter().enumerate().collect();
    let mut running: Vec<Option<Proc>> = (0..n).map(|_| None).collect();
    let mut stdout: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut done: Vec<Option<JobDone>> = (0..n).map(|_| None).collect();
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut spawn_next = |running: &mut Vec<Option<Proc>>| -> Result<()> {
        if let Some((i, mut job)) = pending.pop_front() {
            running[i] = Some(Proc::spawn(
                &format!("{method} to {}", job.host),
                &mut job.cmd,
                i,
                tx.clone(),
            )?);
        }
        Ok(())
    };
    if parallel {
        for _ in 0..n {
            spawn_next(&mut running)?;
        }
    } else {
        spawn_next(&mut running)?;
    }
    let mut finished = 0;
    while finished < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Line {
                idx,
                stream: Stream::Out,
                text,
                ..
            }) => stdout[idx].push(text),
            Ok(ProcEvent::Line { .. }) => {}
            Ok(ProcEvent::Exit { idx, at, exit }) => {
                let p = running[idx]
                    .take()
                    .ok_or_else(|| anyhow!("exit from a job that is not running"))?;
                if !exit.success() {
                    bail!(
                        "{method} to {} failed ({}): {}",
                        hosts[idx],
                        exit.describe(),
                        p.stderr_tail()
                    );
                }
                done[idx] = Some(JobDone {
                    host: hosts[idx].clone(),
                    seconds: at.duration_since(t0).as_secs_f64(),
                    stdout: std::mem::take(&mut stdout[idx]),
                    usage: exit.usage,
                });
                finished += 1;
                if !parallel {
                    spawn_next(&mut running)?;
                }
            }
            Err(_) => {
                let open: Vec<&str> = (0..n)
                    .filter(|&i| done[i].is_none())
                    .map(|i| hosts[i].as_str())
                    .collect();
                bail!(
                    "{method} timed out after {:.0}s; unfinished: {}",
                    timeout.as_secs_f64(),
                    open.join(", ")
                );
            }
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// scp arguments: `-c CIPHER` when given.
pub fn scp_argv(ssh_config: &str, cipher: Option<&str>, src: &str, dest: &str) -> Vec<String> {
    let mut v = vec![
        "scp".to_string(),
        "-q".into(),
        "-F".into(),
        ssh_config.into(),
    ];
    if let Some(c) = cipher {
        v.push("-c".into());
        v.push(c.into());
    }
    v.push(src.into());
    v.push(dest.into());
    v
}

/// rsync over ssh with the given client config; no compression (the payload is random).
pub fn rsync_argv(ssh_config: &str, src: &str, dest: &str) -> Vec<String> {
    vec![
        "rsync".to_string(),
        "-e".into(),
        format!("ssh -F {ssh_config}"),
        src.into(),
        dest.into(),
    ]
}

/// One iperf3 run over loopback: a one-shot server on a free port, a client sending
/// `size` bytes. Returns bits/s: the payload over iperf3's measured test duration.
pub fn iperf3_loopback(size: u64, timeout: Duration) -> Result<Iperf3> {
    let port = crate::sshd::free_port()?;
    iperf3_run(
        &Runner::Local,
        &Runner::Local,
        "127.0.0.1",
        port,
        size,
        timeout,
    )
}

/// One iperf3 measurement: its throughput and what it cost the CPU.
#[derive(Debug, Clone)]
pub struct Iperf3 {
    pub bits_per_sec: f64,
    /// User + system CPU seconds of client and server together (from wait4), when the
    /// server's exit was seen: the kernel's TCP cost of moving the bytes both ways, plus
    /// iperf3's own (small) start-up.
    pub cpu_s: Option<f64>,
    /// The client's (the sender's) resource use.
    pub client_usage: Usage,
    /// The server's (the receiver's), when its exit was seen.
    pub server_usage: Option<Usage>,
}

/// One iperf3 run from `client` to a one-shot server run by `server` on `addr:port`.
pub fn iperf3_between(
    server: &Runner,
    client: &Runner,
    addr: &str,
    port: u16,
    size: u64,
    timeout: Duration,
) -> Result<f64> {
    Ok(iperf3_run(server, client, addr, port, size, timeout)?.bits_per_sec)
}

/// [`iperf3_between`] with the CPU each end spent (`link` reports it per GiB).
pub fn iperf3_run(
    server: &Runner,
    client: &Runner,
    addr: &str,
    port: u16,
    size: u64,
    timeout: Duration,
) -> Result<Iperf3> {
    let port = port.to_string();
    let (tx, rx) = mpsc::channel();
    // --forceflush: iperf3 block-buffers stdout into a pipe; the readiness line must
    // arrive when it is printed.
    let server = Proc::spawn(
        "iperf3 server",
        &mut server.command(&[
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
            "-B",
            addr,
            "-p",
            &port,
        ]),
        0,
        tx,
    )?;
    let ready_by = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(ready_by.saturating_duration_since(Instant::now())) {
            Ok(ProcEvent::Line { text, .. }) if text.contains("Server listening") => break,
            Ok(ProcEvent::Line { .. }) => {}
            Ok(ProcEvent::Exit { exit, .. }) => bail!(
                "iperf3 server exited at start ({}): {}",
                exit.describe(),
                server.stderr_tail()
            ),
            Err(_) => bail!("iperf3 server did not report listening within 10s"),
        }
    }
    let f = proc::run_ok(
        "iperf3 client",
        &mut client.command(&[
            "iperf3",
            "-c",
            addr,
            "-p",
            &port,
            "-n",
            &size.to_string(),
            "-J",
        ]),
        timeout,
    )?;
    let doc =
        crate::json::parse(&f.stdout.join("\n")).map_err(|e| anyhow!("iperf3 -J output: {e}"))?;
    let num = |path: &[&str]| doc.at(path).and_then(crate::json::Json::as_f64);
    let sent =
        num(&["end", "sum_sent", "bytes"]).context("iperf3 -J output lacks end.sum_sent.bytes")?;
    // iperf3 has no payload to check; the byte count is its integrity check.
    if sent < size as f64 {
        bail!("iperf3 client sent {sent} of {size} bytes");
    }
    // The receiver's byte count is snapshotted at test end and may trail the sender's
    // by a few buffers; timing the whole payload over the longer of the two durations
    // is the conservative reading.
    let secs = num(&["end", "sum_received", "seconds"])
        .unwrap_or(0.0)
        .max(num(&["end", "sum_sent", "seconds"]).unwrap_or(0.0));
    if secs.is_nan() || secs <= 0.0 {
        bail!("iperf3 -J output has no test duration");
    }
    let bps = size as f64 * 8.0 / secs;
    // The one-shot server exits after the test; `server` is killed on drop otherwise.
    let exit_by = Instant::now() + Duration::from_secs(5);
    let mut server_usage = None;
    while let Ok(ev) = rx.recv_timeout(exit_by.saturating_duration_since(Instant::now())) {
        if let ProcEvent::Exit { exit, .. } = ev {
            server_usage = Some(exit.usage);
            break;
        }
    }
    drop(server);
    Ok(Iperf3 {
        bits_per_sec: bps,
        cpu_s: server_usage
            .as_ref()
            .map(|s| s.cpu_s() + f.exit.usage.cpu_s()),
        client_usage: f.exit.usage,
        server_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_shapes() {
        assert_eq!(
            scp_argv("/c", Some("aes128-gcm@openssh.com"), "/a", "h1:/b"),
            [
                "scp",
                "-q",
                "-F",
                "/c",
                "-c",
                "aes128-gcm@openssh.com",
                "/a",
                "h1:/b"
            ]
        );
        assert_eq!(rsync_argv("/c", "/a", "h:/b/")[2], "ssh -F /c");
    }

    #[test]
    fn batch_times_each_job_and_names_failures() {
        let job = |host: &str, script: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]);
            Job {
                host: host.into(),
                cmd,
            }
        };
        let done = run_jobs(
            "test",
            vec![job("h1", "echo a"), job("h2", "echo b")],
            false,
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].stdout, vec!["b".to_string()]);
        assert!(done[1].seconds >= done[0].seconds);

        let e = run_jobs(
            "test",
            vec![job("h1", "true"), job("h2", "echo broken >&2; exit 4")],
            true,
            Duration::from_secs(20),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("h2") && e.contains("exit code 4") && e.contains("broken"),
            "{e}"
        );

        let e = run_jobs(
            "test",
            vec![job("h9", "sleep 30")],
            true,
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("timed out") && e.contains("h9"), "{e}");
    }

    #[test]
    fn iperf3_measures_loopback() {
        if crate::sshd::which("iperf3", &[]).is_err() {
            panic!("iperf3 is not installed; scripts/test-deps installs it");
        }
        let r = iperf3_loopback(8 << 20, Duration::from_secs(30)).unwrap();
        assert!(r.bits_per_sec > 1e6, "{r:?}");
        // Both ends' CPU is known once the one-shot server has exited.
        let cpu = r.cpu_s.expect("iperf3 server exit seen");
        assert!(cpu > 0.0, "{r:?}");
    }
}
