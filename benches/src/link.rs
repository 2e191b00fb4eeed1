//! Scenario `link`: one sender, one receiver, both on this machine over loopback.
//!
//! iperf3 gives the path's practical limit (memory to memory, no crypto, no disk); `ceiling`
//! adds to its CPU time one SHA-1 pass and the page-cache work and shares the sum over the
//! cores: the least time a verified transfer could take here (see ceiling.rs); scp
//! (default cipher and AES-128-GCM) and rsync go through a private sshd on 127.0.0.1;
//! corvid runs a seeder (with its tracker) and one peer. Each method runs `--runs`
//! times from a payload warmed into page cache; every received copy is checked by
//! SHA-1 before its time counts. corvid's time runs from starting the peer to its
//! `done` report; `corvid make` and the seeder's start-up are reported separately.
//!
//! Every run also reports what each role cost in CPU (user + sys, all threads, from
//! `wait4` of the processes): the corvid seeder and peer, the iperf3 sender and receiver,
//! and one SHA-1 pass, per GiB, and projects the cores a fleet host needs to receive at
//! 10 or 25 Gbit/s while relaying the same rate (see [`crate::cpu::per_gib_table`]).
//!
//! `--veth` runs the sender and the receiver in two network namespaces the bench creates,
//! joined by one veth pair (removed at the end, also when interrupted): a path through
//! the kernel's device layer rather than loopback's shortcut. On both paths the
//! receiver's TCP work runs partly in the sender's context (the softirq that delivers a
//! packet sent on loopback or veth runs on the sending CPU), so the split between the two
//! ends leans to the sender, for iperf3 and corvid alike; their sum does not.

use crate::baselines;
use crate::corvid::{self, PeerSpec, Runner, Swarm};
use crate::cpu::{per_gib, PerGib};
use crate::json::Json;
use crate::payload::{self, Payload};
use crate::report::{self, CorvidDetail, MethodResult, Outcome, ProcUse, Run};
use crate::sshd::{self, Sshd};
use crate::trial::{self, Repeat, RunError, WorkDir};
use crate::units::{fmt_bytes, fmt_mbps, short_size};
use crate::Common;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const METHODS: &[&str] = &["iperf3", "ceiling", "scp", "scp-gcm", "rsync", "corvid"];

#[derive(Args, Debug)]
pub struct LinkArgs {
    #[command(flatten)]
    pub common: Common,
    /// Run sender and receiver in two network namespaces joined by a veth pair (created
    /// and removed by the bench; needs root). Methods: iperf3, ceiling, corvid.
    #[arg(long)]
    pub veth: bool,
    /// `--send-path` for the corvid seeder (copy, splice, auto); corvid's own default
    /// (auto) when not given. Run once per value, each next to iperf3, to compare.
    #[arg(long, value_name = "copy|splice|auto")]
    pub send_path: Option<String>,
}

/// Methods that can run over `--veth` (the ssh baselines use a loopback sshd).
const VETH_METHODS: &[&str] = &["iperf3", "ceiling", "corvid"];

/// Where sender and receiver run and the addresses they use.
struct Path2 {
    sender: Runner,
    receiver: Runner,
    sender_ip: String,
    receiver_ip: String,
    name: &'static str,
}

impl Path2 {
    fn loopback() -> Path2 {
        Path2 {
            sender: Runner::Local,
            receiver: Runner::Local,
            sender_ip: "127.0.0.1".into(),
            receiver_ip: "127.0.0.1".into(),
            name: "loopback",
        }
    }
}

/// Two namespaces and the veth pair between them; removed on drop and on interrupt.
pub(crate) struct Veth {
    pub(crate) a: String,
    pub(crate) b: String,
    cleanup: u64,
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn veth_down(a: &str, b: &str) {
    // Deleting a namespace deletes the veth end inside it, and with it its peer.
    let _ = Command::new("ip").args(["netns", "del", a]).output();
    let _ = Command::new("ip").args(["netns", "del", b]).output();
}

impl Veth {
    pub(crate) const SENDER_IP: &'static str = "10.214.0.1";
    pub(crate) const RECEIVER_IP: &'static str = "10.214.0.2";

    pub(crate) fn up() -> Result<Veth> {
        let pid = std::process::id();
        let a = format!("corvid-link-s{pid}");
        let b = format!("corvid-link-r{pid}");
        let (na, nb) = (a.clone(), b.clone());
        let cleanup = crate::proc::on_interrupt(Box::new(move || veth_down(&na, &nb)));
        let v = Veth { a, b, cleanup };
        // Interface names are at most 15 bytes.
        let (ia, ib) = (
            format!("cvls{}", pid % 100_000),
            format!("cvlr{}", pid % 100_000),
        );
        ip(&["netns", "add", &v.a])?;
        ip(&["netns", "add", &v.b])?;
        ip(&["link", "add", &ia, "type", "veth", "peer", "name", &ib])?;
        ip(&["link", "set", &ia, "netns", &v.a])?;
        ip(&["link", "set", &ib, "netns", &v.b])?;
        for (ns, dev, addr) in [(&v.a, &ia, Self::SENDER_IP), (&v.b, &ib, Self::RECEIVER_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(v)
    }

    fn path(&self) -> Path2 {
        Path2 {
            sender: Runner::Netns {
                name: self.a.clone(),
            },
            receiver: Runner::Netns {
                name: self.b.clone(),
            },
            sender_ip: Self::SENDER_IP.into(),
            receiver_ip: Self::RECEIVER_IP.into(),
            name: "veth",
        }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        veth_down(&self.a, &self.b);
        crate::proc::forget_cleanup(self.cleanup);
    }
}

pub fn run(a: LinkArgs) -> Result<crate::Outcome> {
    let c = &a.common;
    let methods = link_methods(&a)?;
    let out_dir = c.out_dir(if a.veth { "link-veth" } else { "link" });
    let veth = if a.veth { Some(Veth::up()?) } else { None };
    let p = Plan {
        c,
        path: veth.as_ref().map_or_else(Path2::loopback, Veth::path),
        payload: payload::ensure(&c.dir, c.size)?,
        timeout: c
            .timeout
            .unwrap_or(Duration::from_secs(60) + Duration::from_secs_f64(c.size as f64 / 20e6)),
        methods,
        send_path: a.send_path.clone(),
    };
    let (path, payload, timeout) = (&p.path, &p.payload, p.timeout);
    let work = WorkDir::create(c)?;
    println!(
        "link: payload {} ({}) over {}, {} run(s) per method, methods {}",
        fmt_bytes(c.size),
        payload.path.display(),
        path.name,
        c.runs,
        p.methods.join(",")
    );
    let ssh = start_sshd(&p.methods, work.path())?;
    let mut results = Vec::new();
    for m in &p.methods {
        println!("== {m}");
        let one = |_| {
            Ok(match m.as_str() {
                "iperf3" => run_iperf3(path, payload, timeout),
                "ceiling" => run_ceiling(payload, work.path(), timeout),
                "scp" | "scp-gcm" | "rsync" => {
                    let s = ssh.as_ref().context("sshd not started")?;
                    run_ssh_copy(m, s, payload, work.path(), timeout)
                }
                "corvid" => run_corvid(c, path, payload, work.path(), timeout, &a.send_path),
                other => bail!("method {other} not implemented for link"),
            })
        };
        results.push(trial::repeat(&repeat_of(m, c, payload), one, |r, run| {
            print_run(m, c, r, run)
        })?);
    }
    drop(ssh);
    drop(veth);
    let (cpu_runs, summary) = p.summary(&results);
    let doc = p.results_json(&results, &cpu_runs);
    crate::write_outputs(&out_dir, &doc, &p.chart(&results), &summary)?;
    Ok(outcome_of(&results))
}

/// What every method of one `link` run shares.
struct Plan<'a> {
    c: &'a Common,
    methods: Vec<String>,
    path: Path2,
    payload: Payload,
    /// Per run of a method.
    timeout: Duration,
    /// The seeder's `--send-path`, if given.
    send_path: Option<String>,
}

/// `--methods`, or every method the path supports.
fn link_methods(a: &LinkArgs) -> Result<Vec<String>> {
    let c = &a.common;
    Ok(if a.veth {
        match &c.methods {
            None => VETH_METHODS.iter().map(|s| s.to_string()).collect(),
            Some(_) => c.pick_methods(VETH_METHODS)?,
        }
    } else {
        c.pick_methods(METHODS)?
    })
}

/// The private sshd on 127.0.0.1, when a method copies over ssh.
fn start_sshd(methods: &[String], work: &Path) -> Result<Option<Sshd>> {
    if !methods.iter().any(|m| m.starts_with("scp") || m == "rsync") {
        return Ok(None);
    }
    let s = Sshd::start(work)?;
    println!("link: private sshd pid {} on 127.0.0.1:{}", s.pid(), s.port);
    Ok(Some(s))
}

fn repeat_of<'a>(m: &'a str, c: &Common, payload: &'a Payload) -> Repeat<'a> {
    Repeat {
        method: m,
        runs: c.runs,
        payload,
        error_prefix: String::new(),
        loss_label: format!(" ({m})"),
    }
}

fn print_run(m: &str, c: &Common, r: u64, run: &Run) {
    println!(
        "  run {r}/{}: {:.3}s ({}){}",
        c.runs,
        run.seconds,
        fmt_mbps(c.size as f64 / run.seconds),
        if m == "iperf3" || m == "ceiling" {
            ""
        } else {
            ", SHA-1 verified"
        }
    );
}

/// The median time of `method`, if it ran.
fn median_of(results: &[MethodResult], method: &str) -> Option<f64> {
    results
        .iter()
        .find(|m| m.method == method)
        .and_then(|m| m.summary())
        .map(|s| s.0)
}

impl Plan<'_> {
    /// Prints and returns the terminal summary: the table, CPU per GiB and corvid's share
    /// of the ceiling.
    fn summary(&self, results: &[MethodResult]) -> (Vec<PerGib>, String) {
        let (c, path) = (self.c, &self.path);
        let mut summary = format!(
            "link results: {} over {}, {} run(s) each\n{}",
            fmt_bytes(c.size),
            path.name,
            c.runs,
            report::link_table(results, c.size)
        );
        let cpu_runs = cpu_per_gib(results, c.size);
        summary.push('\n');
        summary.push_str(&crate::cpu::per_gib_table(&cpu_runs));
        println!();
        print!("{summary}");
        if let (Some(b), Some(med)) = (median_of(results, "ceiling"), median_of(results, "corvid"))
        {
            let line = format!(
                "corvid reached {:.0}% of the ceiling ({} of {})\n",
                100.0 * b / med,
                fmt_mbps(c.size as f64 / med),
                fmt_mbps(c.size as f64 / b)
            );
            print!("{line}");
            summary.push_str(&line);
        }
        (cpu_runs, summary)
    }

    fn results_json(&self, results: &[MethodResult], cpu_runs: &[PerGib]) -> Json {
        let c = self.c;
        let (iperf_med, ceiling_med) =
            (median_of(results, "iperf3"), median_of(results, "ceiling"));
        let methods_json: Vec<Json> = results
            .iter()
            .map(|m| {
                let mut j = report::method_json(m, c.size, None);
                if let (Some(i), Some((med, _, _))) = (iperf_med, m.summary()) {
                    j.push("fraction_of_iperf3", i / med);
                }
                if let (Some(b), Some((med, _, _))) = (ceiling_med, m.summary()) {
                    j.push("fraction_of_ceiling", b / med);
                }
                j
            })
            .collect();
        Json::obj()
            .with("scenario", "link")
            .with("setup", crate::setup_json(&c.corvid))
            .with(
                "params",
                Json::obj()
                    .with("size_bytes", c.size)
                    .with("runs", c.runs)
                    .with("methods", self.methods.clone())
                    .with("payload_sha1", self.payload.sha1.as_str())
                    .with("piece_size", c.piece_size.clone())
                    .with("send_path", self.send_path.clone())
                    .with("timeout_s", self.timeout.as_secs_f64()),
            )
            .with("methods", Json::Arr(methods_json))
            .with("path", self.path.name)
            .with("cpu_s_per_gib", cpu_json(cpu_runs))
            .with("notes", NOTES.to_vec())
    }

    /// Throughput bars (median, min, max), failed methods named.
    fn chart(&self, results: &[MethodResult]) -> String {
        let c = self.c;
        let bars: Vec<(String, f64, f64, f64)> = results
            .iter()
            .filter_map(|m| {
                let (med, min, max) = m.summary()?;
                let s = c.size as f64 / 1e6;
                Some((m.method.clone(), s / med, s / max, s / min))
            })
            .collect();
        crate::svg::link_chart(
            &format!(
                "corvid-bench link: {} over {} ({} runs)",
                short_size(c.size),
                self.path.name,
                c.runs
            ),
            &bars,
            &results
                .iter()
                .filter(|m| matches!(m.outcome, Outcome::Failed { .. }))
                .map(|m| m.method.clone())
                .collect::<Vec<_>>(),
        )
    }
}

const NOTES: &[&str] = &[
    "seconds: wall time of the transfer command (ssh session setup included); corvid: from starting the peer to its done report",
    "corvid make and seeder start-up are reported as make_s and seed_ready_s and are not in seconds",
    "every received copy was checked by SHA-1 before its time was recorded; iperf3 has no payload and is checked by byte count",
    "ceiling: (iperf3 CPU both ends + one SHA-1 pass + populating the page cache) / cores, measured in this run: the least time any verified transfer could take here",
    "max_rss_kib counts mapped payload pages; peak_anon_rss_kib is VmRSS - RssFile sampled every 100 ms",
    "cpu_s_per_gib: user + sys CPU of each process (all threads, wait4) per GiB of payload, run i of each method side by side; sha1 is one thread's SHA-1 pass from the ceiling method",
    "projection: a fleet host receives and relays the same rate, so a GiB costs the peer's CPU plus the seeder's (the same upload code)",
    "on loopback and veth the receiver's TCP processing runs partly in the sender's softirq context: the split between ends leans to the sender, the sum does not",
];

pub fn outcome_of(results: &[MethodResult]) -> crate::Outcome {
    let mut o = crate::Outcome {
        failed: Vec::new(),
        data_loss: Vec::new(),
    };
    for m in results {
        if let Outcome::Failed { error, data_loss } = &m.outcome {
            let line = format!("{}: {error}", m.method);
            if *data_loss {
                o.data_loss.push(line);
            } else {
                o.failed.push(line);
            }
        }
    }
    o
}

fn run_ceiling(p: &Payload, work: &Path, timeout: Duration) -> Result<Run, RunError> {
    let c = crate::ceiling::measure(p, work, timeout)?;
    let seconds = c.seconds();
    Ok(Run {
        seconds,
        hosts: vec![("receiver".into(), seconds)],
        ceiling: Some(c),
        ..Run::default()
    })
}

fn run_iperf3(path: &Path2, p: &Payload, timeout: Duration) -> Result<Run, RunError> {
    let port = crate::sshd::free_port()?;
    let r = baselines::iperf3_run(
        &path.receiver,
        &path.sender,
        &path.receiver_ip,
        port,
        p.size,
        timeout,
    )?;
    let bps = r.bits_per_sec;
    let seconds = p.size as f64 * 8.0 / bps;
    let mut procs = vec![ProcUse {
        role: IPERF3_SENDER.into(),
        host: "sender".into(),
        usage: r.client_usage,
    }];
    if let Some(u) = r.server_usage {
        procs.push(ProcUse {
            role: IPERF3_RECEIVER.into(),
            host: "receiver".into(),
            usage: u,
        });
    }
    Ok(Run {
        seconds,
        hosts: vec![("receiver".into(), seconds)],
        iperf3_bits_per_sec: Some(bps),
        procs,
        ..Run::default()
    })
}

const IPERF3_SENDER: &str = "iperf3 client";
const IPERF3_RECEIVER: &str = "iperf3 server";
const CORVID_SEEDER: &str = "corvid seed";
const CORVID_PEER: &str = "corvid peer";

/// Run i of every method side by side, as CPU seconds per GiB of payload.
fn cpu_per_gib(results: &[MethodResult], size: u64) -> Vec<PerGib> {
    let runs = |m: &str| -> &[Run] {
        results
            .iter()
            .find(|r| r.method == m)
            .and_then(|r| match &r.outcome {
                Outcome::Ok(runs) => Some(runs.as_slice()),
                Outcome::Failed { .. } => None,
            })
            .unwrap_or(&[])
    };
    let (iperf, corvid, ceiling) = (runs("iperf3"), runs("corvid"), runs("ceiling"));
    let n = iperf.len().max(corvid.len()).max(ceiling.len());
    let role = |rs: &[Run], i: usize, role: &str| {
        let r = rs.get(i)?;
        let p = r.procs.iter().find(|p| p.role == role)?;
        Some(per_gib(p.usage.cpu_s(), size))
    };
    (0..n)
        .map(|i| PerGib {
            seeder: role(corvid, i, CORVID_SEEDER),
            peer: role(corvid, i, CORVID_PEER),
            iperf3_sender: role(iperf, i, IPERF3_SENDER),
            iperf3_receiver: role(iperf, i, IPERF3_RECEIVER),
            sha1: ceiling
                .get(i)
                .and_then(|r| r.ceiling)
                .map(|c| per_gib(c.sha1_cpu_s, size)),
            page_cache: ceiling
                .get(i)
                .and_then(|r| r.ceiling)
                .map(|c| per_gib(c.page_cache_cpu_s, size)),
        })
        .collect()
}

fn cpu_json(runs: &[PerGib]) -> Json {
    let one = |r: &PerGib| {
        Json::obj()
            .with("seeder", r.seeder)
            .with("peer", r.peer)
            .with("iperf3_sender", r.iperf3_sender)
            .with("iperf3_receiver", r.iperf3_receiver)
            .with("sha1", r.sha1)
            .with("page_cache", r.page_cache)
    };
    let m = PerGib::median(runs);
    let mut j = Json::obj()
        .with("runs", Json::Arr(runs.iter().map(one).collect()))
        .with("median", one(&m));
    if let (Some(peer), Some(seeder)) = (m.peer, m.seeder) {
        let p = crate::cpu::project(peer, seeder);
        j.push(
            "projection_corvid",
            Json::obj()
                .with("cpu_s_per_gib_received_and_relayed", p.per_gib)
                .with("cores_for_10_gbit", p.cores_10g)
                .with("cores_for_25_gbit", p.cores_25g)
                .with("gbit_per_core", p.one_core_gbit),
        );
    }
    j
}

fn fresh_dir(d: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(d);
    std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))
}

fn run_ssh_copy(
    m: &str,
    s: &Sshd,
    p: &Payload,
    work: &Path,
    timeout: Duration,
) -> Result<Run, RunError> {
    let recv = work.join("recv");
    fresh_dir(&recv)?;
    let dest = recv.join(p.name());
    let cfg = s.client_config.display().to_string();
    let src = p.path.display().to_string();
    let target = format!("{}:{}", sshd::HOST, dest.display());
    let argv = match m {
        "scp" => baselines::scp_argv(&cfg, None, &src, &target),
        "scp-gcm" => baselines::scp_argv(&cfg, Some("aes128-gcm@openssh.com"), &src, &target),
        _ => baselines::rsync_argv(&cfg, &src, &target),
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let done = baselines::run_jobs(
        m,
        vec![baselines::Job {
            host: "receiver".into(),
            cmd,
        }],
        false,
        timeout,
    )?;
    let seconds = done[0].seconds;
    let usage = done[0].usage.clone();
    payload::verify_file(p, &dest)
        .map_err(|e| RunError::DataLoss(e.context(format!("{m} to receiver (127.0.0.1)"))))?;
    let _ = std::fs::remove_file(&dest);
    Ok(Run {
        seconds,
        hosts: vec![("receiver".into(), seconds)],
        procs: vec![ProcUse {
            role: format!("{} client", argv[0]),
            host: "sender".into(),
            usage,
        }],
        ..Run::default()
    })
}

fn run_corvid(
    c: &Common,
    path: &Path2,
    p: &Payload,
    work: &Path,
    timeout: Duration,
    send_path: &Option<String>,
) -> Result<Run, RunError> {
    let bin = corvid::locate(&c.corvid)?;
    let tport = sshd::free_port()?;
    let torrent = work.join("link.torrent");
    let _ = std::fs::remove_file(&torrent);
    let make_s = corvid::make(
        &bin,
        &p.path,
        &torrent,
        &format!("http://{}:{tport}/announce", path.sender_ip),
        c.piece_size.as_deref(),
    )?
    .as_secs_f64();
    let recv = work.join("corvid-recv");
    fresh_dir(&recv)?;
    let swarm = Swarm {
        bin: &bin,
        torrent: &torrent,
        data_parent: p.dir(),
        seed_runner: path.sender.clone(),
        seed_host: "sender".into(),
        seed_listen: format!("{}:0", path.sender_ip),
        tracker_listen: format!("{}:{tport}", path.sender_ip),
        peers: vec![PeerSpec {
            host: "receiver".into(),
            runner: path.receiver.clone(),
            dest_dir: recv.clone(),
            listen: format!("{}:0", path.receiver_ip),
        }],
        linger: Duration::ZERO,
        timeout,
        seed_args: send_path
            .iter()
            .flat_map(|p| ["--send-path".to_owned(), p.clone()])
            .collect(),
        peer_args: Vec::new(),
    };
    let o = corvid::run_swarm(&swarm)?;
    let dest = recv.join(p.name());
    payload::verify_file(p, &dest)
        .map_err(|e| RunError::DataLoss(e.context("corvid to receiver (127.0.0.1)")))?;
    let _ = std::fs::remove_dir_all(&recv);
    Ok(swarm_run(o, make_s))
}

/// Turns a swarm outcome into a run record (shared with `fleet`).
pub fn swarm_run(o: corvid::SwarmOutcome, make_s: f64) -> Run {
    let mut procs = vec![ProcUse {
        role: CORVID_SEEDER.into(),
        host: "sender".into(),
        usage: o.seed_usage.clone(),
    }];
    let mut detail = CorvidDetail {
        make_s,
        seed_ready_s: o.seed_ready_s,
        ..CorvidDetail::default()
    };
    let mut p50s = Vec::new();
    for p in &o.peers {
        procs.push(ProcUse {
            role: CORVID_PEER.into(),
            host: p.host.clone(),
            usage: p.usage.clone(),
        });
        detail.from_seeder += p.report.from_seeder;
        detail.from_peers += p.report.from_peers;
        detail.bytes_down += p.report.bytes_down;
        detail.peers_bytes_up += p.report.bytes_up;
        if let Some(v) = p.report.p50_us {
            p50s.push(v);
        }
        if let Some(v) = p.report.p99_us {
            detail.p99_us = Some(detail.p99_us.map_or(v, |m: f64| m.max(v)));
        }
        detail.reports.push((p.host.clone(), p.report.raw.clone()));
    }
    if !p50s.is_empty() {
        detail.p50_us = Some(report::median(p50s));
    }
    Run {
        seconds: o.seconds,
        hosts: o
            .peers
            .iter()
            .map(|p| (p.host.clone(), p.seconds))
            .collect(),
        procs,
        corvid: Some(detail),
        ..Run::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::Usage;

    fn proc_use(role: &str, cpu_s: f64) -> ProcUse {
        ProcUse {
            role: role.into(),
            host: "h".into(),
            usage: Usage {
                user_s: cpu_s / 2.0,
                sys_s: cpu_s / 2.0,
                ..Usage::default()
            },
        }
    }

    fn ok(method: &str, runs: Vec<Run>) -> MethodResult {
        MethodResult {
            method: method.into(),
            outcome: Outcome::Ok(runs),
        }
    }

    #[test]
    fn cpu_per_gib_lines_up_run_i_of_each_method() {
        let half_gib = 1u64 << 29;
        let iperf = |tx: f64, rx: f64| Run {
            procs: vec![proc_use(IPERF3_SENDER, tx), proc_use(IPERF3_RECEIVER, rx)],
            ..Run::default()
        };
        let corvid = |s: f64, p: f64| Run {
            procs: vec![proc_use(CORVID_SEEDER, s), proc_use(CORVID_PEER, p)],
            ..Run::default()
        };
        let ceiling = |sha: f64| Run {
            ceiling: Some(crate::ceiling::Ceiling {
                sha1_cpu_s: sha,
                ..Default::default()
            }),
            ..Run::default()
        };
        let results = vec![
            ok("iperf3", vec![iperf(0.1, 0.2), iperf(0.3, 0.4)]),
            ok("ceiling", vec![ceiling(1.0)]),
            ok("corvid", vec![corvid(0.5, 1.5), corvid(0.25, 1.0)]),
            MethodResult {
                method: "scp".into(),
                outcome: Outcome::Failed {
                    error: "x".into(),
                    data_loss: false,
                },
            },
        ];
        let got = cpu_per_gib(&results, half_gib);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].iperf3_sender, Some(0.2));
        assert_eq!(got[0].iperf3_receiver, Some(0.4));
        assert_eq!(got[0].seeder, Some(1.0));
        assert_eq!(got[0].peer, Some(3.0));
        assert_eq!(got[0].sha1, Some(2.0));
        assert_eq!(got[1].sha1, None, "ceiling ran once");
        assert_eq!(got[1].seeder, Some(0.5));
    }

    /// Needs root (namespaces), as the `--veth` run does.
    #[test]
    fn veth_pair_comes_up_and_is_removed() {
        let v = Veth::up().expect("create the namespaces and the veth pair (root needed)");
        let (a, b) = (v.a.clone(), v.b.clone());
        let out = Command::new("ip")
            .args(["-n", &b, "-br", "addr"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(Veth::RECEIVER_IP) && text.contains("UP"),
            "{text}"
        );
        // The sender's side reaches the receiver's address through the pair.
        let route = Command::new("ip")
            .args(["-n", &a, "route", "get", Veth::RECEIVER_IP])
            .output()
            .unwrap();
        assert!(route.status.success(), "{route:?}");
        assert!(String::from_utf8_lossy(&route.stdout).contains("cvls"));
        drop(v);
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(!list.contains(&a) && !list.contains(&b), "{list}");
    }
}
