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
//!
//! Here: the scenario's steps ([`run`]: per fleet size a link check, then every method's
//! runs) and the copy methods; a method is one arm of `run_method` and a function taking
//! the [`Trial`]. `hosts.rs` is the fleet itself (up, down, run on hosts, SHA-1 check),
//! `swarms.rs` the `corvid` and `stock` methods. The run loop shared with `link` is
//! [`crate::trial`].

mod hosts;
mod swarms;
mod timeline;

use hosts::locate_script;
pub use hosts::{default_fleet_name, Fleet};

use crate::baselines::{self, Job};
use crate::cpu::CpuSample;
use crate::json::Json;
use crate::payload::{self, Payload};
use crate::report::{self, MethodResult, Run};
use crate::trial::{self, Repeat, RunError, WorkDir};
use crate::units::{self, fmt_bytes, short_size, Rate};
use crate::Common;
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// `stock`: libtorrent seeds, aria2 downloads, opentracker introduces them (see
/// `swarms::run_stock`): the stock-client baseline on the same fleet.
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

/// What every fleet size and method of one `fleet` run shares.
pub(crate) struct Scenario<'a> {
    pub(crate) a: &'a FleetArgs,
    pub(crate) c: &'a Common,
    pub(crate) methods: Vec<String>,
    pub(crate) rate: Option<Rate>,
    /// S/C, when the links are shaped.
    pub(crate) bound_s: Option<f64>,
    pub(crate) script: PathBuf,
    pub(crate) name: String,
    pub(crate) payload: Payload,
    pub(crate) work: WorkDir,
}

/// One fleet size: its link check and every method's runs.
struct SizeResult {
    n: usize,
    link_check: std::result::Result<f64, String>,
    methods: Vec<MethodResult>,
}

/// One run of one method on one fleet (what a method's function is handed).
pub(crate) struct Trial<'a> {
    pub(crate) m: &'a str,
    pub(crate) s: &'a Scenario<'a>,
    pub(crate) fleet: &'a Fleet,
    pub(crate) timeout: Duration,
    pub(crate) run_no: u16,
}

pub fn run(a: FleetArgs) -> Result<crate::Outcome> {
    let s = Scenario::new(&a)?;
    s.print_plan();
    let mut per_n = Vec::new();
    let mut summary = String::new();
    for &n in &a.peers {
        per_n.push(s.measure_size(usize::from(n), &mut summary)?);
    }
    let chart = s.chart(&per_n);
    crate::write_outputs(
        &s.c.out_dir("fleet"),
        &s.results_json(&per_n),
        &chart,
        &summary,
    )?;
    let all: Vec<MethodResult> = per_n.into_iter().flat_map(|r| r.methods).collect();
    Ok(crate::link::outcome_of(&all))
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fleet scenario needs root (network namespaces, tc, sshd); run it as root");
    }
    Ok(())
}

/// `--fleet-name` or the default, checked against what scripts/fleet accepts.
fn fleet_name(a: &FleetArgs) -> Result<String> {
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
    Ok(name)
}

impl<'a> Scenario<'a> {
    /// Checks the flags and the machine, and prepares the payload and the scratch directory.
    fn new(a: &'a FleetArgs) -> Result<Scenario<'a>> {
        let c = &a.common;
        let methods = c.pick_methods(METHODS)?;
        require_root()?;
        let rate =
            units::parse_rate(&a.rate).map_err(|e| crate::UsageError(format!("--rate: {e:#}")))?;
        let script = locate_script(&a.fleet_script)?;
        let name = fleet_name(a)?;
        let payload = payload::ensure(&c.dir, c.size)?;
        let work = WorkDir::create(c)?;
        let bound_s = rate.as_ref().map(|r| c.size as f64 * 8.0 / r.bits_per_sec);
        Ok(Scenario {
            a,
            c,
            methods,
            rate,
            bound_s,
            script,
            name,
            payload,
            work,
        })
    }

    /// The shaped rate as tc reads it, or "unshaped".
    fn rate_name(&self) -> String {
        self.rate
            .as_ref()
            .map_or("unshaped".to_string(), |r| r.tc.clone())
    }

    fn print_plan(&self) {
        let c = self.c;
        println!(
            "fleet: payload {} ({}), rate {}, sizes {:?}, {} run(s) per method, methods {}, fleet name {}",
            fmt_bytes(c.size),
            self.payload.path.display(),
            self.rate_name(),
            self.a.peers,
            c.runs,
            self.methods.join(","),
            self.name
        );
        if let Some(b) = self.bound_s {
            println!(
                "fleet: lower bound S/C = {b:.3}s (every receiver takes S through its own link)"
            );
        }
    }

    /// Builds a fleet of `n` receivers, checks one link, runs every method on it, tears
    /// it down and appends the link check and the size's table to `summary`.
    fn measure_size(&self, n: usize, summary: &mut String) -> Result<SizeResult> {
        let c = self.c;
        println!("== fleet of {n} receivers (h1..h{n}) + source h0: building");
        let fleet = Fleet::up(&self.script, &self.name, n, self.rate.as_ref())?;
        let (check_line, link_check) = self.link_check(&fleet);
        print!("  {check_line}");
        summary.push_str(&check_line);
        let link_s = self.bound_s.unwrap_or(c.size as f64 / 100e6);
        let timeout = c.timeout.unwrap_or_else(|| {
            Duration::from_secs_f64(60.0 + 3.0 * n as f64 * link_s + c.size as f64 / 50e6)
        });
        let mut methods = Vec::new();
        for m in &self.methods {
            println!("-- N={n} {m}");
            methods.push(self.measure_method(m, &fleet, timeout)?);
        }
        drop(fleet);
        let table = format!(
            "fleet N={n}: {} per host, rate {}, bound S/C {}\n{}\n",
            fmt_bytes(c.size),
            self.rate_name(),
            self.bound_s.map_or("-".to_string(), |b| format!("{b:.3}s")),
            report::fleet_table(&methods, self.bound_s, c.size)
        );
        println!();
        print!("{table}");
        summary.push_str(&table);
        let rate = self.rate.as_ref().map_or(0.0, |r| r.bits_per_sec);
        for m in &methods {
            for r in m.runs() {
                if let Some(l) = timeline::lines(r, rate) {
                    let l = format!(
                        "{} run {:.3}s, where the time went:\n{l}",
                        m.method, r.seconds
                    );
                    print!("{l}");
                    summary.push_str(&l);
                }
            }
        }
        Ok(SizeResult {
            n,
            link_check,
            methods,
        })
    }

    /// What one shaped link actually carries (TCP payload), next to the rate the bound
    /// assumes: the terminal line and the figure. A failure here is reported, not fatal.
    fn link_check(&self, fleet: &Fleet) -> (String, std::result::Result<f64, String>) {
        let n = fleet.n;
        let check_bytes = self.c.size.min(128 << 20);
        let check = baselines::iperf3_between(
            &fleet.runner(1),
            &fleet.runner(0),
            &fleet.addrs[1],
            5201,
            check_bytes,
            Duration::from_secs(120),
        );
        let line = match &check {
            Ok(bps) => format!(
                "link check N={n}: iperf3 h0 -> h1 carried {:.0} Mbit/s ({}; shaped rate {})\n",
                bps / 1e6,
                fmt_bytes(check_bytes),
                self.rate
                    .as_ref()
                    .map_or("none".to_string(), |r| r.tc.clone())
            ),
            Err(e) => format!("link check N={n}: iperf3 h0 -> h1 failed: {e:#}\n"),
        };
        (line, check.map_err(|e| format!("{e:#}")))
    }

    /// `--runs` runs of method `m` on `fleet`, each on emptied receivers.
    fn measure_method(&self, m: &str, fleet: &Fleet, timeout: Duration) -> Result<MethodResult> {
        let (c, n) = (self.c, fleet.n);
        let repeat = Repeat {
            method: m,
            runs: c.runs,
            payload: &self.payload,
            error_prefix: format!("N={n}: "),
            loss_label: String::new(),
        };
        let one = |r: u64| {
            fleet.clear()?;
            let t = Trial {
                m,
                s: self,
                fleet,
                timeout,
                run_no: r as u16,
            };
            Ok(run_method(&t))
        };
        trial::repeat(&repeat, one, |r, run| {
            println!("  {}", report::fleet_corvid_line(run, c.size).trim());
            let mut hs: Vec<f64> = run.hosts.iter().map(|h| h.1).collect();
            hs.sort_by(f64::total_cmp);
            println!(
                "  run {r}/{}: {:.3}s{}; first host {:.3}s, last {:.3}s; SHA-1 verified on all {n} hosts",
                c.runs,
                run.seconds,
                self.bound_s.map_or(String::new(), |b| format!(" ({:.2}x S/C)", run.seconds / b)),
                hs.first().copied().unwrap_or(f64::NAN),
                hs.last().copied().unwrap_or(f64::NAN),
            );
        })
    }

    fn results_json(&self, per_n: &[SizeResult]) -> Json {
        let (a, c, bound_s) = (self.a, self.c, self.bound_s);
        let fleets = per_n.iter().map(|r| {
            Json::obj()
                .with("n", r.n)
                .with("bound_s", bound_s)
                .with(
                    "link_check_iperf3_h0_h1_bits_per_sec",
                    r.link_check.as_ref().ok().copied(),
                )
                .with(
                    "link_check_error",
                    r.link_check.as_ref().err().map(String::as_str),
                )
                .with(
                    "methods",
                    Json::Arr(
                        r.methods
                            .iter()
                            .map(|m| report::method_json(m, c.size, bound_s))
                            .collect(),
                    ),
                )
        });
        Json::obj()
            .with("scenario", "fleet")
            .with("setup", crate::setup_json(&c.corvid))
            .with(
                "params",
                Json::obj()
                    .with("size_bytes", c.size)
                    .with("runs", c.runs)
                    .with("rate", self.rate.as_ref().map(|r| r.tc.clone()))
                    .with(
                        "rate_bits_per_sec",
                        self.rate.as_ref().map(|r| r.bits_per_sec),
                    )
                    .with(
                        "peers",
                        a.peers.iter().map(|&p| p as u64).collect::<Vec<u64>>(),
                    )
                    .with("methods", self.methods.clone())
                    .with("payload_sha1", self.payload.sha1.as_str())
                    .with("piece_size", c.piece_size.clone())
                    .with("linger_s", a.linger.as_secs_f64())
                    .with("fleet_name", self.name.as_str()),
            )
            .with("bound_s", bound_s)
            .with("fleets", Json::Arr(fleets.collect()))
            .with("notes", NOTES.to_vec())
    }

    /// Median and spread of each method over the fleet sizes, with the S/C line.
    fn chart(&self, per_n: &[SizeResult]) -> String {
        let series: Vec<crate::svg::Series> = self
            .methods
            .iter()
            .map(|m| crate::svg::Series {
                label: m.clone(),
                points: per_n
                    .iter()
                    .filter_map(|r| {
                        let x = r.methods.iter().find(|x| &x.method == m)?;
                        let (med, min, max) = x.summary()?;
                        Some((r.n as f64, med, min, max))
                    })
                    .collect(),
            })
            .collect();
        let bound: Vec<(f64, f64)> = self
            .bound_s
            .map(|b| per_n.iter().map(|r| (r.n as f64, b)).collect())
            .unwrap_or_default();
        crate::svg::fleet_chart(
            &format!(
                "corvid-bench fleet: {} to N hosts at {}",
                short_size(self.c.size),
                self.rate_name()
            ),
            &series,
            &bound,
        )
    }
}

const NOTES: &[&str] = &[
    "seconds: from starting the transfer(s) until the last receiver had the payload (per host: its own completion); SHA-1 checked on every host afterwards",
    "bound_s = S/C: every receiver must take S bytes through its own link of rate C; header overhead makes it unreachable by a few percent",
    "corvid: make and seeder start-up (make_s, seed_ready_s) are not in seconds; a host completes at its done report",
    "all hosts share this machine's CPUs: every ssh cipher, rsync checksum and corvid hash of the whole fleet runs on the same cores (setup.cpus), so CPU-heavy methods are slower here than on a real fleet",
    "max_rss_kib counts mapped payload pages; peak_anon_rss_kib is VmRSS - RssFile sampled every 100 ms; processes run via scripts/fleet exec, so a few KiB of its shell are included",
];

/// One run of `t.m`: the transfer, the CPU busy over it, then SHA-1 on every receiver.
/// A method is one arm here and a function of its own taking the trial and the CPU
/// sample, which it resets once its set-up is done (so set-up is not counted).
fn run_method(t: &Trial) -> Result<Run, RunError> {
    // CPU busy over the transfer alone (the SHA-1 check below is not part of it).
    let mut cpu0 = CpuSample::now();
    let mut run = match t.m {
        "scp-seq" | "scp-par" | "rsync" => run_copies(t)?,
        "corvid" => swarms::run_corvid(t, &mut cpu0)?,
        "stock" => swarms::run_stock(t, &mut cpu0)?,
        "deploy" | "deploy-first" => {
            let bin = crate::corvid::locate(&t.s.c.corvid)?;
            let first = t.m == "deploy-first";
            let (p, work) = (&t.s.payload, t.s.work.path());
            crate::fleet_deploy::run(t.fleet, &bin, p, work, first, t.run_no, t.timeout)?
        }
        other => return Err(anyhow!("method {other} not implemented for fleet").into()),
    };
    run.cpu_busy = cpu0
        .zip(CpuSample::now())
        .and_then(|(a, b)| a.busy_until(&b));
    let bad = t.fleet.verify(&t.s.payload)?;
    if !bad.is_empty() {
        return Err(RunError::DataLoss(anyhow!("{}: {}", t.m, bad.join("; "))));
    }
    Ok(run)
}

/// scp or rsync from h0 to every receiver: one after another (`scp-seq`) or all at once.
fn run_copies(t: &Trial) -> Result<Run, RunError> {
    let (m, fleet, p) = (t.m, t.fleet, &t.s.payload);
    let cfg = fleet.ssh_config.display().to_string();
    let src = p.path.display().to_string();
    let recv = fleet.recv_dir().display().to_string();
    let name = p.name();
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
    let done = baselines::run_jobs(m, jobs, m != "scp-seq", t.timeout)?;
    Ok(Run {
        seconds: done.iter().map(|d| d.seconds).fold(0.0, f64::max),
        hosts: done.iter().map(|d| (d.host.clone(), d.seconds)).collect(),
        ..Run::default()
    })
}
