//! Scenario `fleet`: a simulated fleet built by `scripts/fleet` (h0 the source, h1..hN
//! the receivers, every host's link shaped to `--rate` both ways). For each fleet size
//! and method, the time until every receiver holds the payload, verified by SHA-1 on
//! each host:
//! - `scp-seq`: h0 copies to h1, then h2, ... (what a for-loop over hosts does);
//! - `scp-par`: h0 copies to all hosts at once;
//! - `rsync`: h0 rsyncs to all hosts at once;
//! - `corvid`: seeder and embedded tracker on h0, peers on h1..hN started together.
//!
//! The physical lower bound is S/C: every receiver must take S bytes through its own
//! link of capacity C. (Protocol headers make even that unreachable by a few percent.)
//! The fleet is torn down after each size, on failure and on interrupt.

use crate::baselines::{self, Job};
use crate::corvid::{self, PeerSpec, Runner, Swarm};
use crate::cpu::CpuSample;
use crate::json::Json;
use crate::payload::{self, Payload};
use crate::proc;
use crate::report::{self, MethodResult, Outcome, Run};
use crate::units::{self, fmt_bytes, short_size, Rate};
use crate::Common;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `stock`: libtorrent seeds, aria2 downloads, opentracker introduces them (see
/// [`run_stock`]): the stock-client baseline on the same fleet.
/// `deploy`, `deploy-first`: the real `corvid deploy` end to end (crate::fleet_deploy).
pub const METHODS: &[&str] = &[
    "scp-seq",
    "scp-par",
    "rsync",
    "corvid",
    "stock",
    "deploy-first",
    "deploy",
];

/// Fixed ports are safe here: each fleet host is a fresh network namespace of its own.
const TRACKER_BASE_PORT: u16 = 8998;

#[derive(Args, Debug)]
pub struct FleetArgs {
    #[command(flatten)]
    pub common: Common,
    /// Fleet sizes to measure (receivers; h0 is the source on top), e.g. 4,8,16.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16",
          value_parser = clap::value_parser!(u16).range(1..=250))]
    pub peers: Vec<u16>,
    /// Link rate of every host, both directions, as tc reads it (e.g. 1gbit, 100mbit, none).
    #[arg(long, default_value = "1gbit")]
    pub rate: String,
    /// Path of scripts/fleet [default: ./scripts/fleet, else the one beside this crate].
    #[arg(long)]
    pub fleet_script: Option<PathBuf>,
    /// Fleet name (1-8 of a-z0-9) [default: derived from this process's id, so runs
    /// in parallel do not collide].
    #[arg(long)]
    pub fleet_name: Option<String>,
    /// How long corvid peers keep serving after completing (`corvid peer --linger`);
    /// peers still lingering once all are done are stopped.
    #[arg(long, default_value = "0s", value_parser = units::parse_duration)]
    pub linger: Duration,
}

/// A running fleet; dropping it runs `scripts/fleet --name NAME down`.
pub struct Fleet {
    script: PathBuf,
    name: String,
    pub n: usize,
    pub disk: PathBuf,
    pub ssh_config: PathBuf,
    pub addrs: Vec<String>,
    cleanup_key: u64,
}

fn fleet_cmd(script: &Path, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(script);
    c.arg("--name").arg(name).args(args);
    c
}

fn fleet_out(script: &Path, name: &str, args: &[&str]) -> Result<String> {
    let f = proc::run_ok(
        &format!("scripts/fleet {}", args.join(" ")),
        &mut fleet_cmd(script, name, args),
        Duration::from_secs(30),
    )?;
    Ok(f.stdout.join("\n").trim().to_string())
}

fn fleet_down(script: &Path, name: &str) {
    match proc::run(
        "scripts/fleet down",
        &mut fleet_cmd(script, name, &["down"]),
        Duration::from_secs(120),
    ) {
        Ok(f) if f.exit.success() => {}
        Ok(f) => eprintln!(
            "fleet {name}: down failed ({}): {}",
            f.exit.describe(),
            f.stderr_tail
        ),
        Err(e) => eprintln!("fleet {name}: down failed: {e:#}"),
    }
}

impl Fleet {
    pub fn up(script: &Path, name: &str, n: usize, rate: Option<&Rate>) -> Result<Fleet> {
        // Registered before `up` so an interrupt during the build still tears it down.
        let (s, nm) = (script.to_path_buf(), name.to_string());
        let cleanup_key = proc::on_interrupt(Box::new(move || fleet_down(&s, &nm)));
        let mut fleet = Fleet {
            script: script.to_path_buf(),
            name: name.to_string(),
            n,
            disk: PathBuf::new(),
            ssh_config: PathBuf::new(),
            addrs: Vec::new(),
            cleanup_key,
        };
        let mut args = vec!["up".to_string(), n.to_string()];
        if let Some(r) = rate {
            args.push("--rate".into());
            args.push(r.tc.clone());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        proc::run_ok(
            "scripts/fleet up",
            &mut fleet_cmd(script, name, &argv),
            Duration::from_secs(60 + 2 * n as u64),
        )?;
        fleet.disk = PathBuf::from(fleet_out(script, name, &["disk"])?);
        fleet.ssh_config = PathBuf::from(fleet_out(script, name, &["ssh-config"])?);
        for h in 0..=n {
            fleet
                .addrs
                .push(fleet_out(script, name, &["addr", &h.to_string()])?);
        }
        Ok(fleet)
    }

    pub fn runner(&self, host: usize) -> Runner {
        Runner::Fleet {
            script: self.script.clone(),
            name: self.name.clone(),
            host,
        }
    }

    fn recv_dir(&self) -> PathBuf {
        self.disk.join("recv")
    }

    /// Runs `argv(h)` on every receiver at once.
    fn on_receivers(
        &self,
        what: &str,
        argv: impl Fn(usize) -> Vec<String>,
    ) -> Result<Vec<baselines::JobDone>> {
        let jobs = (1..=self.n)
            .map(|h| Job {
                host: format!("h{h}"),
                cmd: self.runner(h).command(&argv(h)),
            })
            .collect();
        baselines::run_jobs(what, jobs, true, Duration::from_secs(120 + self.n as u64))
    }

    /// Empties every receiver's receive directory.
    fn clear(&self) -> Result<()> {
        let d = self.recv_dir().display().to_string();
        self.on_receivers("clear receive dirs", |_| {
            vec![
                "sh".into(),
                "-c".into(),
                format!("rm -rf '{d}' && mkdir -p '{d}'"),
            ]
        })?;
        Ok(())
    }

    /// SHA-1 of the payload on every receiver: one line per host that differs (empty
    /// when all match). An error means the check itself could not run.
    fn verify(&self, p: &Payload) -> Result<Vec<String>> {
        let file = self.recv_dir().join(p.name()).display().to_string();
        let jobs = (1..=self.n)
            .map(|h| Job {
                host: format!("h{h}"),
                cmd: self.runner(h).command(&[
                    "sh".to_string(),
                    "-c".into(),
                    // A missing file prints "missing" rather than failing the batch, so
                    // the report can name every host that lacks it.
                    format!("if [ -f '{file}' ]; then stat -c %s '{file}'; sha1sum '{file}'; else echo missing; fi"),
                ]),
            })
            .collect();
        let done = baselines::run_jobs("verify", jobs, true, Duration::from_secs(300))?;
        let mut bad = Vec::new();
        for d in &done {
            match d.stdout.as_slice() {
                [size, sum, ..] => {
                    let sum = sum.split_whitespace().next().unwrap_or("");
                    if size.trim() != p.size.to_string() {
                        bad.push(format!(
                            "{}: {} has {} bytes, expected {}",
                            d.host,
                            file,
                            size.trim(),
                            p.size
                        ));
                    } else if sum != p.sha1 {
                        bad.push(format!(
                            "{}: {} has SHA-1 {sum}, expected {}",
                            d.host, file, p.sha1
                        ));
                    }
                }
                _ => bad.push(format!("{}: {file} is missing", d.host)),
            }
        }
        Ok(bad)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        fleet_down(&self.script, &self.name);
        proc::forget_cleanup(self.cleanup_key);
    }
}

fn locate_script(arg: &Option<PathBuf>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match arg {
        Some(p) => vec![p.clone()],
        None => vec![
            PathBuf::from("scripts/fleet"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fleet"),
        ],
    };
    for c in &candidates {
        if c.is_file() {
            return c
                .canonicalize()
                .with_context(|| format!("resolving {}", c.display()));
        }
    }
    bail!(
        "scripts/fleet not found (tried {}); run from the repository root or pass --fleet-script",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn default_fleet_name() -> String {
    format!("b{}", std::process::id() % 10_000_000)
}

enum RunError {
    Failed(anyhow::Error),
    DataLoss(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> RunError {
        RunError::Failed(e)
    }
}

pub fn run(a: FleetArgs) -> Result<crate::Outcome> {
    let c = &a.common;
    let methods = c.pick_methods(METHODS)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fleet scenario needs root (network namespaces, tc, sshd); run it as root");
    }
    let rate =
        units::parse_rate(&a.rate).map_err(|e| crate::UsageError(format!("--rate: {e:#}")))?;
    let script = locate_script(&a.fleet_script)?;
    let name = a.fleet_name.clone().unwrap_or_else(default_fleet_name);
    if name.is_empty()
        || name.len() > 8
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(
            crate::UsageError(format!("--fleet-name must be 1-8 of a-z0-9, got {name:?}")).into(),
        );
    }
    let out_dir = c.out_dir("fleet");
    let payload = payload::ensure(&c.dir, c.size)?;
    let work = c
        .dir
        .canonicalize()
        .context("resolving --dir")?
        .join(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveOnDrop(work.clone());
    let bound_s = rate.as_ref().map(|r| c.size as f64 * 8.0 / r.bits_per_sec);
    println!(
        "fleet: payload {} ({}), rate {}, sizes {:?}, {} run(s) per method, methods {}, fleet name {name}",
        fmt_bytes(c.size),
        payload.path.display(),
        rate.as_ref().map_or("unshaped".to_string(), |r| r.tc.clone()),
        a.peers,
        c.runs,
        methods.join(",")
    );
    if let Some(b) = bound_s {
        println!("fleet: lower bound S/C = {b:.3}s (every receiver takes S through its own link)");
    }

    let mut per_n: Vec<(usize, Vec<MethodResult>)> = Vec::new();
    let mut summary = String::new();
    let mut link_checks: Vec<std::result::Result<f64, String>> = Vec::new();
    for &n in &a.peers {
        let n = usize::from(n);
        println!("== fleet of {n} receivers (h1..h{n}) + source h0: building");
        let fleet = Fleet::up(&script, &name, n, rate.as_ref())?;
        // What one shaped link actually carries (TCP payload), next to the rate the
        // bound assumes; a failure here is reported, not fatal.
        let check_bytes = c.size.min(128 << 20);
        let link_check = baselines::iperf3_between(
            &fleet.runner(1),
            &fleet.runner(0),
            &fleet.addrs[1],
            5201,
            check_bytes,
            Duration::from_secs(120),
        );
        let check_line = match &link_check {
            Ok(bps) => format!(
                "link check N={n}: iperf3 h0 -> h1 carried {:.0} Mbit/s ({}; shaped rate {})\n",
                bps / 1e6,
                fmt_bytes(check_bytes),
                rate.as_ref().map_or("none".to_string(), |r| r.tc.clone())
            ),
            Err(e) => format!("link check N={n}: iperf3 h0 -> h1 failed: {e:#}\n"),
        };
        print!("  {check_line}");
        summary.push_str(&check_line);
        link_checks.push(link_check.map_err(|e| format!("{e:#}")));
        let link_s = bound_s.unwrap_or(c.size as f64 / 100e6);
        let timeout = c.timeout.unwrap_or_else(|| {
            Duration::from_secs_f64(60.0 + 3.0 * n as f64 * link_s + c.size as f64 / 50e6)
        });
        let mut results = Vec::new();
        for m in &methods {
            println!("-- N={n} {m}");
            let mut runs = Vec::new();
            let mut failure = None;
            for r in 1..=c.runs {
                let warm = payload::warm(&payload)?;
                println!(
                    "  warm: synced dirty pages, read the payload once into page cache ({:.2}s)",
                    warm.as_secs_f64()
                );
                fleet.clear()?;
                match run_method(m, &fleet, c, &a, &payload, &work, timeout, r as u16) {
                    Ok(mut run) => {
                        run.warm_s = warm.as_secs_f64();
                        println!("  {}", report::fleet_corvid_line(&run, c.size).trim());
                        let mut hs: Vec<f64> = run.hosts.iter().map(|h| h.1).collect();
                        hs.sort_by(f64::total_cmp);
                        println!(
                            "  run {r}/{}: {:.3}s{}; first host {:.3}s, last {:.3}s; SHA-1 verified on all {n} hosts",
                            c.runs,
                            run.seconds,
                            bound_s.map_or(String::new(), |b| format!(" ({:.2}x S/C)", run.seconds / b)),
                            hs.first().copied().unwrap_or(f64::NAN),
                            hs.last().copied().unwrap_or(f64::NAN),
                        );
                        runs.push(run);
                    }
                    Err(RunError::Failed(e)) => {
                        println!("  run {r}/{}: FAILED: {e:#}", c.runs);
                        failure = Some((format!("N={n}: {e:#}"), false));
                        break;
                    }
                    Err(RunError::DataLoss(e)) => {
                        eprintln!("  run {r}/{}: DATA LOSS: {e:#}", c.runs);
                        failure = Some((format!("N={n}: {e:#}"), true));
                        break;
                    }
                }
            }
            results.push(MethodResult {
                method: m.clone(),
                outcome: match failure {
                    Some((error, data_loss)) => Outcome::Failed { error, data_loss },
                    None => Outcome::Ok(runs),
                },
            });
        }
        drop(fleet);
        let table = format!(
            "fleet N={n}: {} per host, rate {}, bound S/C {}\n{}\n",
            fmt_bytes(c.size),
            rate.as_ref()
                .map_or("unshaped".to_string(), |r| r.tc.clone()),
            bound_s.map_or("-".to_string(), |b| format!("{b:.3}s")),
            report::fleet_table(&results, bound_s, c.size)
        );
        println!();
        print!("{table}");
        summary.push_str(&table);
        per_n.push((n, results));
    }

    let doc = Json::obj()
        .with("scenario", "fleet")
        .with("setup", crate::setup_json(&c.corvid))
        .with(
            "params",
            Json::obj()
                .with("size_bytes", c.size)
                .with("runs", c.runs)
                .with("rate", rate.as_ref().map(|r| r.tc.clone()))
                .with("rate_bits_per_sec", rate.as_ref().map(|r| r.bits_per_sec))
                .with("peers", a.peers.iter().map(|&p| p as u64).collect::<Vec<u64>>())
                .with("methods", methods.clone())
                .with("payload_sha1", payload.sha1.as_str())
                .with("piece_size", c.piece_size.clone())
                .with("linger_s", a.linger.as_secs_f64())
                .with("fleet_name", name.as_str()),
        )
        .with("bound_s", bound_s)
        .with(
            "fleets",
            Json::Arr(
                per_n
                    .iter()
                    .zip(&link_checks)
                    .map(|((n, ms), check)| {
                        Json::obj()
                            .with("n", *n)
                            .with("bound_s", bound_s)
                            .with(
                                "link_check_iperf3_h0_h1_bits_per_sec",
                                check.as_ref().ok().copied(),
                            )
                            .with(
                                "link_check_error",
                                check.as_ref().err().map(String::as_str),
                            )
                            .with(
                            "methods",
                            Json::Arr(ms.iter().map(|m| report::method_json(m, c.size, bound_s)).collect()),
                        )
                    })
                    .collect(),
            ),
        )
        .with(
            "notes",
            vec![
                "seconds: from starting the transfer(s) until the last receiver had the payload (per host: its own completion); SHA-1 checked on every host afterwards",
                "bound_s = S/C: every receiver must take S bytes through its own link of rate C; header overhead makes it unreachable by a few percent",
                "corvid: make and seeder start-up (make_s, seed_ready_s) are not in seconds; a host completes at its done report",
                "all hosts share this machine's CPUs: every ssh cipher, rsync checksum and corvid hash of the whole fleet runs on the same cores (setup.cpus), so CPU-heavy methods are slower here than on a real fleet",
                "max_rss_kib counts mapped payload pages; peak_anon_rss_kib is VmRSS - RssFile sampled every 100 ms; processes run via scripts/fleet exec, so a few KiB of its shell are included",
            ],
        );
    let series: Vec<crate::svg::Series> = methods
        .iter()
        .map(|m| crate::svg::Series {
            label: m.clone(),
            points: per_n
                .iter()
                .filter_map(|(n, ms)| {
                    let r = ms.iter().find(|x| &x.method == m)?;
                    let (med, min, max) = r.summary()?;
                    Some((*n as f64, med, min, max))
                })
                .collect(),
        })
        .collect();
    let bound: Vec<(f64, f64)> = bound_s
        .map(|b| per_n.iter().map(|(n, _)| (*n as f64, b)).collect())
        .unwrap_or_default();
    let chart = crate::svg::fleet_chart(
        &format!(
            "corvid-bench fleet: {} to N hosts at {}",
            short_size(c.size),
            rate.as_ref()
                .map_or("unshaped".to_string(), |r| r.tc.clone())
        ),
        &series,
        &bound,
    );
    crate::write_outputs(&out_dir, &doc, &chart, &summary)?;
    let all: Vec<MethodResult> = per_n.into_iter().flat_map(|(_, ms)| ms).collect();
    Ok(crate::link::outcome_of(&all))
}

#[allow(clippy::too_many_arguments)]
fn run_method(
    m: &str,
    fleet: &Fleet,
    c: &Common,
    a: &FleetArgs,
    p: &Payload,
    work: &Path,
    timeout: Duration,
    run_no: u16,
) -> Result<Run, RunError> {
    let cfg = fleet.ssh_config.display().to_string();
    let src = p.path.display().to_string();
    let recv = fleet.recv_dir().display().to_string();
    let name = p.name();
    // CPU busy over the transfer alone (the SHA-1 check below is not part of it).
    let mut cpu0 = CpuSample::now();
    let mut run = match m {
        "scp-seq" | "scp-par" | "rsync" => {
            let jobs = (1..=fleet.n)
                .map(|h| {
                    let argv = if m == "rsync" {
                        baselines::rsync_argv(&cfg, &src, &format!("h{h}:{recv}/"))
                    } else {
                        baselines::scp_argv(&cfg, None, &src, &format!("h{h}:{recv}/{name}"))
                    };
                    Job {
                        host: format!("h{h}"),
                        cmd: fleet.runner(0).command(&argv),
                    }
                })
                .collect();
            let done = baselines::run_jobs(m, jobs, m != "scp-seq", timeout)?;
            Run {
                seconds: done.iter().map(|d| d.seconds).fold(0.0, f64::max),
                hosts: done.iter().map(|d| (d.host.clone(), d.seconds)).collect(),
                ..Run::default()
            }
        }
        "corvid" => {
            let bin = corvid::locate(&c.corvid)?;
            let torrent = work.join(format!("fleet-{}-{run_no}.torrent", fleet.n));
            let _ = std::fs::remove_file(&torrent);
            let tport = TRACKER_BASE_PORT + run_no;
            let a0 = &fleet.addrs[0];
            let make_s = corvid::make(
                &bin,
                &p.path,
                &torrent,
                &format!("http://{a0}:{tport}/announce"),
                c.piece_size.as_deref(),
            )?
            .as_secs_f64();
            cpu0 = CpuSample::now();
            let swarm = Swarm {
                bin: &bin,
                torrent: &torrent,
                data_parent: p.dir(),
                seed_runner: fleet.runner(0),
                seed_host: "h0".into(),
                seed_listen: format!("{a0}:0"),
                tracker_listen: format!("{a0}:{tport}"),
                peers: (1..=fleet.n)
                    .map(|h| PeerSpec {
                        host: format!("h{h}"),
                        runner: fleet.runner(h),
                        dest_dir: fleet.recv_dir(),
                        listen: format!("{}:0", fleet.addrs[h]),
                    })
                    .collect(),
                linger: a.linger,
                timeout,
            };
            let o = corvid::run_swarm(&swarm)?;
            let mut run = crate::link::swarm_run(o, make_s);
            if let Some(seed) = run.procs.first_mut() {
                seed.host = "h0".into();
            }
            run
        }
        "stock" => {
            let bin = corvid::locate(&c.corvid)?;
            let torrent = work.join(format!("fleet-{}-{run_no}.torrent", fleet.n));
            let _ = std::fs::remove_file(&torrent);
            let tport = TRACKER_BASE_PORT + run_no;
            let a0 = &fleet.addrs[0];
            corvid::make(
                &bin,
                &p.path,
                &torrent,
                &format!("http://{a0}:{tport}/announce"),
                c.piece_size.as_deref(),
            )?;
            run_stock(fleet, &bin, &torrent, p, work, tport, timeout, &mut cpu0)?
        }
        "deploy" | "deploy-first" => {
            let bin = corvid::locate(&c.corvid)?;
            let first = m == "deploy-first";
            crate::fleet_deploy::run(fleet, &bin, p, work, first, run_no, timeout)?
        }
        other => return Err(anyhow!("method {other} not implemented for fleet").into()),
    };
    run.cpu_busy = cpu0
        .zip(CpuSample::now())
        .and_then(|(a, b)| a.busy_until(&b));
    let bad = fleet.verify(p)?;
    if !bad.is_empty() {
        return Err(RunError::DataLoss(anyhow!("{m}: {}", bad.join("; "))));
    }
    Ok(run)
}

/// The stock-client swarm: opentracker and a libtorrent seeder on h0, then aria2c on every
/// receiver at once; a host completes when its aria2c exits 0. The seeder's upload
/// (libtorrent's payload counter) is reported as the seeder's copies. `cpu0` is reset once
/// the seeder serves, so set-up is not counted.
#[allow(clippy::too_many_arguments)]
fn run_stock(
    fleet: &Fleet,
    bin: &Path,
    torrent: &Path,
    p: &Payload,
    work: &Path,
    tport: u16,
    timeout: Duration,
    cpu0: &mut Option<CpuSample>,
) -> Result<Run, RunError> {
    use crate::proc::{Proc, ProcEvent, Stream};
    let a0 = &fleet.addrs[0];
    // opentracker serves only whitelisted torrents (Debian's build): whitelist this one.
    let info = proc::run_ok(
        "corvid info",
        Command::new(bin).arg("info").arg(torrent).arg("--json"),
        Duration::from_secs(30),
    )?;
    let text = info.stdout.join("\n");
    let hash = text
        .split("\"info_hash\":\"")
        .nth(1)
        .and_then(|r| r.get(..40))
        .ok_or_else(|| anyhow!("corvid info printed no info_hash: {text}"))?;
    let ot_dir = work.join(format!("opentracker-{tport}"));
    std::fs::create_dir_all(&ot_dir).context("opentracker dir")?;
    std::fs::write(ot_dir.join("whitelist.txt"), format!("{hash}\n")).context("whitelist")?;
    let script = work.join("lt_seed.py");
    std::fs::write(&script, baselines::LT_SEED_PY).context("write lt_seed.py")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let port = tport.to_string();
    let ot_argv = [
        "sh".to_string(),
        "-c".into(),
        // The access list is read relative to `-d`.
        format!(
            "exec opentracker -i {a0} -p {port} -P {port} -d '{}' -w whitelist.txt",
            ot_dir.display()
        ),
    ];
    let _tracker = Proc::spawn(
        "opentracker on h0",
        &mut fleet.runner(0).command(&ot_argv),
        0,
        tx.clone(),
    )?;
    let seed_argv = [
        "/usr/bin/python3".to_string(),
        script.display().to_string(),
        torrent.display().to_string(),
        p.dir().display().to_string(),
        a0.clone(),
        format!("{}", timeout.as_secs() + 60),
    ];
    let seed = Proc::spawn(
        "libtorrent seed on h0",
        &mut fleet.runner(0).command(&seed_argv),
        1,
        tx,
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Line {
                idx: 1,
                stream: Stream::Out,
                text,
                ..
            }) if text == "seeding" => break,
            Ok(ProcEvent::Exit { idx, exit, .. }) => {
                return Err(anyhow!(
                    "stock: {} exited before the seeder served ({}): {}",
                    if idx == 0 {
                        "opentracker"
                    } else {
                        "libtorrent seed"
                    },
                    exit.describe(),
                    seed.stderr_tail()
                )
                .into())
            }
            Ok(_) => {}
            Err(_) => {
                return Err(anyhow!(
                    "stock: libtorrent seed printed no `seeding` within 60s: {}",
                    seed.stderr_tail()
                )
                .into())
            }
        }
    }
    *cpu0 = CpuSample::now();
    let t = torrent.display().to_string();
    let recv = fleet.recv_dir().display().to_string();
    let jobs = (1..=fleet.n)
        .map(|h| Job {
            host: format!("h{h}"),
            cmd: fleet.runner(h).command(&baselines::aria2_argv(&t, &recv)),
        })
        .collect();
    let done = baselines::run_jobs("stock (aria2c)", jobs, true, timeout)?;
    // The seeder prints its final upload counter on SIGTERM, then exits.
    seed.signal(libc::SIGTERM);
    let mut seeder_up = 0;
    let stop_by = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = stop_by.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Line {
                idx: 1,
                stream: Stream::Out,
                text,
                ..
            }) => {
                if let Some(v) = text.strip_prefix("up ").and_then(|v| v.parse().ok()) {
                    seeder_up = v;
                }
            }
            Ok(ProcEvent::Exit { idx: 1, .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(Run {
        seconds: done.iter().map(|d| d.seconds).fold(0.0, f64::max),
        hosts: done.iter().map(|d| (d.host.clone(), d.seconds)).collect(),
        // Only the seeder's upload is known for stock clients; the rest stays empty.
        corvid: Some(report::CorvidDetail {
            from_seeder: seeder_up,
            ..report::CorvidDetail::default()
        }),
        ..Run::default()
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
