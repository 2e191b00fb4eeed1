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

use crate::baselines::{self, iperf3_loopback};
use crate::corvid::{self, PeerSpec, Runner, Swarm};
use crate::json::Json;
use crate::payload::{self, Payload};
use crate::report::{self, CorvidDetail, MethodResult, Outcome, ProcUse, Run};
use crate::sshd::{self, Sshd};
use crate::units::{fmt_bytes, fmt_mbps, short_size};
use crate::Common;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const METHODS: &[&str] = &["iperf3", "ceiling", "scp", "scp-gcm", "rsync", "corvid"];

#[derive(Args, Debug)]
pub struct LinkArgs {
    #[command(flatten)]
    pub common: Common,
}

/// Why a run did not produce a time.
enum RunError {
    Failed(anyhow::Error),
    DataLoss(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> RunError {
        RunError::Failed(e)
    }
}

pub fn run(a: LinkArgs) -> Result<crate::Outcome> {
    let c = &a.common;
    let methods = c.pick_methods(METHODS)?;
    let out_dir = c.out_dir("link");
    let payload = payload::ensure(&c.dir, c.size)?;
    let work = c
        .dir
        .canonicalize()
        .context("resolving --dir")?
        .join(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveOnDrop(work.clone());
    let timeout = c
        .timeout
        .unwrap_or(Duration::from_secs(60) + Duration::from_secs_f64(c.size as f64 / 20e6));
    println!(
        "link: payload {} ({}), {} run(s) per method, methods {}",
        fmt_bytes(c.size),
        payload.path.display(),
        c.runs,
        methods.join(",")
    );

    let needs_ssh = methods.iter().any(|m| m.starts_with("scp") || m == "rsync");
    let ssh = if needs_ssh {
        let s = Sshd::start(&work)?;
        println!("link: private sshd pid {} on 127.0.0.1:{}", s.pid(), s.port);
        Some(s)
    } else {
        None
    };

    let mut results = Vec::new();
    for m in &methods {
        println!("== {m}");
        let mut runs = Vec::new();
        let mut failure = None;
        for r in 1..=c.runs {
            let warm = payload::warm(&payload)?;
            println!(
                "  warm: synced dirty pages, read the payload once into page cache ({:.2}s)",
                warm.as_secs_f64()
            );
            let res = match m.as_str() {
                "iperf3" => run_iperf3(&payload, timeout),
                "ceiling" => run_ceiling(&payload, &work, timeout),
                "scp" | "scp-gcm" | "rsync" => {
                    let s = ssh.as_ref().context("sshd not started")?;
                    run_ssh_copy(m, s, &payload, &work, timeout)
                }
                "corvid" => run_corvid(c, &payload, &work, timeout),
                other => bail!("method {other} not implemented for link"),
            };
            match res {
                Ok(mut run) => {
                    run.warm_s = warm.as_secs_f64();
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
                    runs.push(run);
                }
                Err(RunError::Failed(e)) => {
                    println!("  run {r}/{}: FAILED: {e:#}", c.runs);
                    failure = Some((format!("{e:#}"), false));
                    break;
                }
                Err(RunError::DataLoss(e)) => {
                    eprintln!("  run {r}/{}: DATA LOSS ({m}): {e:#}", c.runs);
                    failure = Some((format!("{e:#}"), true));
                    break;
                }
            }
        }
        let outcome = match failure {
            Some((error, data_loss)) => Outcome::Failed { error, data_loss },
            None => Outcome::Ok(runs),
        };
        results.push(MethodResult {
            method: m.clone(),
            outcome,
        });
    }
    drop(ssh);

    let mut summary = format!(
        "link results: {} over loopback, {} run(s) each\n{}",
        fmt_bytes(c.size),
        c.runs,
        report::link_table(&results, c.size)
    );
    println!();
    print!("{summary}");

    let iperf_med = results
        .iter()
        .find(|m| m.method == "iperf3")
        .and_then(|m| m.summary())
        .map(|s| s.0);
    let ceiling_med = results
        .iter()
        .find(|m| m.method == "ceiling")
        .and_then(|m| m.summary())
        .map(|s| s.0);
    if let (Some(b), Some((med, _, _))) = (
        ceiling_med,
        results
            .iter()
            .find(|m| m.method == "corvid")
            .and_then(|m| m.summary()),
    ) {
        let line = format!(
            "corvid reached {:.0}% of the ceiling ({} of {})\n",
            100.0 * b / med,
            fmt_mbps(c.size as f64 / med),
            fmt_mbps(c.size as f64 / b)
        );
        print!("{line}");
        summary.push_str(&line);
    }
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
    let doc = Json::obj()
        .with("scenario", "link")
        .with("setup", crate::setup_json(&c.corvid))
        .with(
            "params",
            Json::obj()
                .with("size_bytes", c.size)
                .with("runs", c.runs)
                .with("methods", methods.clone())
                .with("payload_sha1", payload.sha1.as_str())
                .with("piece_size", c.piece_size.clone())
                .with("timeout_s", timeout.as_secs_f64()),
        )
        .with("methods", Json::Arr(methods_json))
        .with(
            "notes",
            vec![
                "seconds: wall time of the transfer command (ssh session setup included); corvid: from starting the peer to its done report",
                "corvid make and seeder start-up are reported as make_s and seed_ready_s and are not in seconds",
                "every received copy was checked by SHA-1 before its time was recorded; iperf3 has no payload and is checked by byte count",
                "ceiling: (iperf3 CPU both ends + one SHA-1 pass + populating the page cache) / cores, measured in this run: the least time any verified transfer could take here",
                "max_rss_kib counts mapped payload pages; peak_anon_rss_kib is VmRSS - RssFile sampled every 100 ms",
            ],
        );
    let bars: Vec<(String, f64, f64, f64)> = results
        .iter()
        .filter_map(|m| {
            let (med, min, max) = m.summary()?;
            let s = c.size as f64 / 1e6;
            Some((m.method.clone(), s / med, s / max, s / min))
        })
        .collect();
    let chart = crate::svg::link_chart(
        &format!(
            "corvid-bench link: {} over loopback ({} runs)",
            short_size(c.size),
            c.runs
        ),
        &bars,
        &results
            .iter()
            .filter(|m| matches!(m.outcome, Outcome::Failed { .. }))
            .map(|m| m.method.clone())
            .collect::<Vec<_>>(),
    );
    crate::write_outputs(&out_dir, &doc, &chart, &summary)?;
    Ok(outcome_of(&results))
}

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

fn run_iperf3(p: &Payload, timeout: Duration) -> Result<Run, RunError> {
    let bps = iperf3_loopback(p.size, timeout)?.bits_per_sec;
    let seconds = p.size as f64 * 8.0 / bps;
    Ok(Run {
        seconds,
        hosts: vec![("receiver".into(), seconds)],
        iperf3_bits_per_sec: Some(bps),
        ..Run::default()
    })
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

fn run_corvid(c: &Common, p: &Payload, work: &Path, timeout: Duration) -> Result<Run, RunError> {
    let bin = corvid::locate(&c.corvid)?;
    let tport = sshd::free_port()?;
    let torrent = work.join("link.torrent");
    let _ = std::fs::remove_file(&torrent);
    let make_s = corvid::make(
        &bin,
        &p.path,
        &torrent,
        &format!("http://127.0.0.1:{tport}/announce"),
        c.piece_size.as_deref(),
    )?
    .as_secs_f64();
    let recv = work.join("corvid-recv");
    fresh_dir(&recv)?;
    let swarm = Swarm {
        bin: &bin,
        torrent: &torrent,
        data_parent: p.dir(),
        seed_runner: Runner::Local,
        seed_host: "sender".into(),
        seed_listen: "127.0.0.1:0".into(),
        tracker_listen: format!("127.0.0.1:{tport}"),
        peers: vec![PeerSpec {
            host: "receiver".into(),
            runner: Runner::Local,
            dest_dir: recv.clone(),
            listen: "127.0.0.1:0".into(),
        }],
        linger: Duration::ZERO,
        timeout,
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
        role: "corvid seed".into(),
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
            role: "corvid peer".into(),
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

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
