//! corvid-bench: the throughput harness. It measures corvid against the tools people
//! would otherwise use (scp, rsync, and iperf3 as the box's practical limit), on one
//! machine, in one run, and writes every figure down so the run can be checked and
//! repeated.
//!
//! Scenarios are subcommands:
//! - `link`: one sender, one receiver on loopback or a veth pair, with CPU per GiB per
//!   role (see `link.rs`);
//! - `fleet`: a simulated fleet of namespaced hosts with shaped links (see `fleet.rs`).
//! - `sendpath`: CPU per GiB of sending from the page cache, per way of sending (see
//!   `sendpath.rs`); `hash`: SHA-1 throughput.
//! - `sim`: N hosts in virtual time on corvid's own protocol code, over a modelled
//!   network of racks (see `sim/`); no root, no sockets.
//!
//! Every transfer is verified (SHA-1 of what each receiver holds) before its time is
//! reported.
//!
//! To rerun the measurements kept under `benches/runs/` (as root, from the repository
//! root; scripts/test-deps installs iperf3, openssh and rsync):
//!
//! ```text
//! cargo build --release -p corvid -p corvid-bench
//! target/release/corvid-bench link --size 1GiB --runs 3
//! target/release/corvid-bench fleet --peers 4,8,16 --rate 1gbit --size 256MiB
//! ```

mod baselines;
mod ceiling;
mod corvid;
mod cpu;
mod delta;
mod fleet;
mod fleet_deploy;
mod hash;
mod json;
mod link;
mod payload;
mod proc;
mod report;
mod sendpath;
mod sim;
mod sshd;
mod svg;
mod trial;
mod units;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use json::Json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const EXIT_CODES: &str = "Rerun the kept measurements (as root, from the repository root):
  cargo build --release -p corvid -p corvid-bench
  target/release/corvid-bench link --size 1GiB --runs 3
  target/release/corvid-bench fleet --peers 4,8,16 --rate 1gbit --size 256MiB
Results go to benches/runs/<date>-<hostname>/<scenario>-<time>/ unless --out is given.

Exit codes:
  0  every method ran and every receiver's data verified
  1  a method failed to run (its reason is in the table and results.json)
  2  usage error
  3  DATA LOSS: a transfer finished but a receiver's bytes were wrong or missing
  4  setup failed (payload, private sshd, fleet, output directory)
  130 interrupted (children killed, fleet torn down)";

/// corvid's throughput harness: corvid against scp, rsync and iperf3, measured in one run.
#[derive(Parser)]
#[command(name = "corvid-bench", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One sender, one receiver on loopback: iperf3, scp, rsync over a private sshd, corvid.
    ///
    /// Example: corvid-bench link --size 1GiB --runs 3
    Link(link::LinkArgs),
    /// A simulated fleet (scripts/fleet, needs root): time until every host holds the
    /// payload, for scp and rsync fan-out from h0 and for a corvid swarm.
    ///
    /// Example: corvid-bench fleet --peers 4,8,16 --rate 1gbit --size 256MiB
    Fleet(fleet::FleetArgs),
    /// SHA-1 hashing throughput: sha1sum, sha1 crate, HashPool 1/N threads, corvid make.
    ///
    /// Example: corvid-bench hash --size 1GiB
    Hash(hash::HashArgs),
    /// CPU per GiB of sending from the page cache over loopback: send from the mapping,
    /// sendfile, MSG_ZEROCOPY (the seeder's zero-copy question).
    ///
    /// Example: corvid-bench sendpath --size 1GiB --runs 3
    Sendpath(sendpath::SendpathArgs),
    /// A release with 1% changed, to every host of the simulated fleet at once:
    /// `corvid deploy` reusing the previous release against rsync's delta (needs root).
    ///
    /// Example: corvid-bench delta --size 1GiB --files 200 --peers 16 --rate 100mbit
    Delta(delta::DeltaArgs),
    /// A fleet of N hosts simulated in virtual time, running corvid's own protocol code
    /// over a modelled network of racks (no root, no sockets).
    ///
    /// Example: corvid-bench sim --hosts 10,100,1000 --size 1GiB --rate 10gbit
    Sim(sim::SimArgs),
}

/// Flags every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Payload size (e.g. 1GiB, 256MiB, 4MiB).
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    pub size: u64,
    /// Measured runs per method; the report shows median, min and max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: u64,
    /// Where results.json and chart.svg go [default: benches/runs/<date>-<hostname>/<scenario>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cache directory for the generated payload and scratch files.
    #[arg(long, default_value = "target/bench-data")]
    pub dir: PathBuf,
    /// The corvid binary to measure.
    #[arg(long, default_value = "target/release/corvid")]
    pub corvid: PathBuf,
    /// Comma-separated methods to run (default: all of the scenario's methods).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Time limit per run of one method (e.g. 300s) [default: scales with size and fleet].
    #[arg(long, value_parser = units::parse_duration)]
    pub timeout: Option<Duration>,
    /// Piece size handed to `corvid make` (e.g. 256K); corvid's default if unset.
    #[arg(long)]
    pub piece_size: Option<String>,
}

/// A bad flag value found after parsing (exit code 2, like clap's own errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl Common {
    /// The methods to run, checked against the scenario's list (unknown names are usage errors).
    pub fn pick_methods(&self, all: &[&str]) -> Result<Vec<String>, UsageError> {
        match &self.methods {
            None => Ok(all.iter().map(|s| s.to_string()).collect()),
            Some(list) => {
                let mut out = Vec::new();
                for m in list {
                    let m = m.trim();
                    if !all.contains(&m) {
                        return Err(UsageError(format!(
                            "--methods: unknown method {m:?}; this scenario has: {}",
                            all.join(",")
                        )));
                    }
                    if !out.iter().any(|x: &String| x == m) {
                        out.push(m.to_string());
                    }
                }
                Ok(out)
            }
        }
    }

    pub fn out_dir(&self, scenario: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from("benches/runs")
                .join(format!("{}-{}", utc_stamp(false), hostname()))
                .join(format!("{scenario}-{}", utc_stamp(true)))
        })
    }
}

/// How a scenario ended, for the exit code.
pub struct Outcome {
    pub failed: Vec<String>,
    pub data_loss: Vec<String>,
}

/// /proc/loadavg when the harness started: other work on the box skews timings.
static LOAD_AT_START: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    proc::install_interrupt_handler();
    let _ = LOAD_AT_START.set(loadavg());
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Cmd::Link(a) => link::run(a),
        Cmd::Fleet(a) => fleet::run(a),
        Cmd::Delta(a) => delta::run(a),
        Cmd::Sim(a) => sim::run(a),
        Cmd::Hash(a) => hash::run(a).map(|()| Outcome {
            failed: Vec::new(),
            data_loss: Vec::new(),
        }),
        Cmd::Sendpath(a) => sendpath::run(a).map(|()| Outcome {
            failed: Vec::new(),
            data_loss: Vec::new(),
        }),
    };
    match result {
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("corvid-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("corvid-bench: setup failed: {e:#}");
            ExitCode::from(4)
        }
        Ok(o) if !o.data_loss.is_empty() => {
            eprintln!();
            for d in &o.data_loss {
                eprintln!("corvid-bench: DATA LOSS: {d}");
            }
            ExitCode::from(3)
        }
        Ok(o) if !o.failed.is_empty() => {
            for f in &o.failed {
                eprintln!("corvid-bench: method failed: {f}");
            }
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::SUCCESS,
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .unwrap_or_else(|| "host".to_string())
}

/// UTC `YYYY-MM-DD`, or `HHMMSS` when `time` is set.
pub fn utc_stamp(time: bool) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if time {
        let s = secs % 86_400;
        return format!("{:02}{:02}{:02}", s / 3600, s / 60 % 60, s % 60);
    }
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// First line of a tool's version output (for results.json's setup record).
fn tool_version(cmd: &str, args: &[&str]) -> Json {
    let out = std::process::Command::new(cmd).args(args).output();
    match out {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .into()
        }
        Err(_) => Json::Null,
    }
}

/// Machine and tool versions, so a results.json can be traced to its setup.
pub fn setup_json(corvid: &Path) -> Json {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    Json::obj()
        .with(
            "date_utc",
            format!("{} {}", utc_stamp(false), utc_stamp(true)),
        )
        .with("hostname", hostname())
        .with("command", std::env::args().collect::<Vec<_>>().join(" "))
        .with("kernel", tool_version("uname", &["-r"]))
        .with("cpu", cpu)
        .with(
            "cpus",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        )
        .with("mem_kib", mem_kib)
        .with("loadavg_at_start", LOAD_AT_START.get().cloned())
        .with("loadavg_at_end", loadavg())
        .with("ssh", tool_version("ssh", &["-V"]))
        .with("rsync", tool_version("rsync", &["--version"]))
        .with("iperf3", tool_version("iperf3", &["--version"]))
        .with(
            "corvid",
            tool_version(&corvid.display().to_string(), &["--version"]),
        )
        .with("corvid_bench", env!("CARGO_PKG_VERSION"))
}

/// Writes results.json, chart.svg and the terminal table (summary.txt) into `dir`.
pub fn write_outputs(dir: &Path, results: &Json, chart: &str, summary: &str) -> Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rj = dir.join("results.json");
    std::fs::write(&rj, results.pretty()).with_context(|| format!("writing {}", rj.display()))?;
    let cs = dir.join("chart.svg");
    std::fs::write(&cs, chart).with_context(|| format!("writing {}", cs.display()))?;
    let st = dir.join("summary.txt");
    std::fs::write(&st, summary).with_context(|| format!("writing {}", st.display()))?;
    println!("wrote {} and {}", rj.display(), cs.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_517), (2026, 3, 5));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn cli_parses_and_checks_methods() {
        let cli = Cli::try_parse_from([
            "corvid-bench",
            "fleet",
            "--peers",
            "2,4",
            "--size",
            "32MiB",
            "--methods",
            "scp-par,rsync",
        ])
        .unwrap();
        let Cmd::Fleet(a) = cli.command else {
            panic!("not fleet")
        };
        assert_eq!(a.peers, vec![2, 4]);
        assert_eq!(a.common.size, 32 << 20);
        assert_eq!(
            a.common
                .pick_methods(&["scp-seq", "scp-par", "rsync"])
                .unwrap(),
            vec!["scp-par", "rsync"]
        );
        assert!(a.common.pick_methods(&["scp-seq"]).is_err());
        assert!(Cli::try_parse_from(["corvid-bench", "link", "--size", "12XB"]).is_err());
        assert!(Cli::try_parse_from(["corvid-bench", "link", "--runs", "0"]).is_err());
    }
}
