//! `corvid-bench sim`: a deploy to N hosts simulated in one process, in virtual time,
//! running corvid's own protocol code (`Swarm`: picker, choker, seeding plan;
//! `PeerConn`: the wire protocol, pipelining, the plan's follower side) with only the
//! sockets, clocks and disks replaced (see [`core`] for the network model and what it
//! leaves out). It reports what the `fleet` scenario reports for real namespaced hosts:
//! completion as a multiple of S/C, the CDF of host completion times, the seeder's
//! copies, and bytes across each rack uplink; `--compare` puts a measured fleet run next
//! to the simulated one.

pub mod core;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::json::Json;
use crate::report::quantile_sorted;
use crate::svg;
use crate::units;
pub use core::{simulate, SimConfig, SimResult};

#[derive(Args, Clone, Debug)]
pub struct SimArgs {
    /// Comma-separated fleet sizes (downloading hosts; the seeders are more).
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    pub hosts: Vec<usize>,
    /// Seeders (`corvid seed` on K hosts, one tracker), spread over the racks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub seeders: u64,
    /// Payload size.
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    pub size: u64,
    /// Piece size [default: what `corvid make` and `corvid deploy` pick for the payload,
    /// `auto_piece_length`: 512 KiB for 1 GiB].
    #[arg(long, value_parser = units::parse_size)]
    pub piece_size: Option<u64>,
    /// Host link rate (tc units: 10gbit, 100mbit).
    #[arg(long, default_value = "10gbit")]
    pub rate: String,
    /// Hosts per rack, the seeder included; 0 = one flat network.
    #[arg(long, default_value_t = 40)]
    pub rack_size: usize,
    /// Rack uplink oversubscription (uplink = rack size x rate / this).
    #[arg(long, default_value_t = 4.0)]
    pub oversub: f64,
    /// One-way latency per hop (host link, rack uplink).
    #[arg(long, default_value = "0.05ms", value_parser = units::parse_duration)]
    pub hop_latency: Duration,
    /// Payload share of wire bytes (1448 of 1514 for TCP with timestamps over Ethernet).
    #[arg(long, default_value_t = 1448.0 / 1514.0)]
    pub goodput: f64,
    /// Largest unit a link moves at once [default: 1% of a second at the host rate,
    /// between 16 KiB and 1 MiB].
    #[arg(long, value_parser = units::parse_size)]
    pub segment: Option<u64>,
    /// Send buffer per connection [default: 4 segments].
    #[arg(long, value_parser = units::parse_size)]
    pub sndbuf: Option<u64>,
    /// Request size to corvid peers (the daemon's default is 128KiB; at most 1MiB).
    #[arg(long, default_value = "128KiB", value_parser = units::parse_size)]
    pub request_size: u64,
    /// SHA-1 throughput per host, bytes per second.
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    pub hash_rate: u64,
    /// Hosts start at uniformly random times within this.
    #[arg(long, default_value = "100ms", value_parser = units::parse_duration)]
    pub start_spread: Duration,
    /// Peers each host asks the tracker for (the daemon asks 200).
    #[arg(long, default_value_t = 200)]
    pub numwant: usize,
    /// Rack-aware tracker handout: on, off, or both (runs every size twice).
    #[arg(long, default_value = "off")]
    pub rack_aware: String,
    /// With --rack-aware on: whether hosts also pick pieces rack-aware (fetch across
    /// racks only what no same-rack peer has): on or off.
    #[arg(long, default_value = "on")]
    pub rack_pick: String,
    /// Upload slots per host (the daemon's default: 128).
    #[arg(long, default_value_t = corvid_engine::swarm::SwarmConfig::default().max_unchoked)]
    pub max_unchoked: usize,
    /// Seeders' plan fan-out: followers holding a first copy in flight at once
    /// (`SwarmConfig::seed_fanout`; 0: no bound).
    #[arg(long, default_value_t = corvid_engine::swarm::SwarmConfig::default().seed_fanout)]
    pub seed_fanout: usize,
    /// Seeders' budget for copies beyond the first, in thousandths of the payload
    /// (`SwarmConfig::seed_extra_permille`).
    #[arg(long, default_value_t = corvid_engine::swarm::SwarmConfig::default().seed_extra_permille)]
    pub seed_extra_permille: u32,
    /// With --rack-aware: peers from other racks in each tracker handout [default: what
    /// corvid's tracker hands out, about a third of the same-rack peers].
    #[arg(long)]
    pub cross_rack_peers: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs per size, with seeds seed, seed+1, ...; the median run is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: u64,
    /// Virtual time limit per run.
    #[arg(long, default_value = "600s", value_parser = units::parse_duration)]
    pub time_limit: Duration,
    /// Host egress queue (FIFO, shared by the host's connections), e.g. 1.5MB for
    /// 1000 full-size packets, tc's default under HTB; 0: fair queueing per connection.
    #[arg(long, value_parser = units::parse_size)]
    pub egress_queue: Option<u64>,
    /// A host leaves this long after it completes (the fleet bench runs peers with
    /// --linger 0s); unset: every host stays until all are done.
    #[arg(long, value_parser = units::parse_duration)]
    pub linger: Option<Duration>,
    /// With --rack-aware on: whether seeders spread first copies over racks
    /// (`Swarm::set_peer_rack`; off by default: slower at N=1000, see README).
    #[arg(long, default_value = "off")]
    pub rack_spread: String,
    /// Print the fleet's state to stderr every DURATION of virtual time (diagnosis).
    #[arg(long, value_parser = units::parse_duration)]
    pub trace: Option<Duration>,
    /// A fleet scenario's results.json to compare with (same sizes, rate and payload).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Where results.json and chart.svg go [default: benches/runs/<date>-<host>/sim-<time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl SimArgs {
    fn config(&self, hosts: usize, rack_aware: bool) -> Result<SimConfig> {
        let rate = units::parse_rate(&self.rate)?
            .with_context(|| "--rate: the simulator needs a rate")?
            .bits_per_sec;
        if !(self.goodput > 0.0 && self.goodput <= 1.0) {
            bail!(crate::UsageError("--goodput must be in (0, 1]".into()));
        }
        if self.oversub <= 0.0 {
            bail!(crate::UsageError("--oversub must be positive".into()));
        }
        if self.request_size < 16 << 10 || self.request_size > 1 << 20 {
            bail!(crate::UsageError(
                "--request-size must be 16KiB..1MiB".into()
            ));
        }
        let payload_rate = rate / 8.0 * self.goodput;
        let segment = self
            .segment
            .unwrap_or(((payload_rate / 100.0) as u64).clamp(16 << 10, 1 << 20))
            .clamp(1024, u64::from(u32::MAX));
        Ok(SimConfig {
            hosts,
            seeders: self.seeders as usize,
            size: self.size,
            piece_size: self
                .piece_size
                .unwrap_or_else(|| corvid_engine::metainfo::auto_piece_length(self.size)),
            rate_bps: rate,
            rack_size: self.rack_size,
            oversub: self.oversub,
            hop_latency: self.hop_latency,
            goodput: self.goodput,
            segment: segment as u32,
            sndbuf: self.sndbuf.unwrap_or(4 * segment),
            hash_rate: self.hash_rate as f64,
            start_spread: self.start_spread,
            numwant: self.numwant,
            rack_aware,
            rack_pick: rack_aware && self.rack_pick == "on",
            cross_rack_peers: self.cross_rack_peers,
            seed: self.seed,
            time_limit: self.time_limit,
            request_size: self.request_size as u32,
            tick: Duration::from_millis(100),
            max_unchoked: self.max_unchoked,
            seed_fanout: self.seed_fanout,
            seed_extra_permille: self.seed_extra_permille,
            egress_queue: self.egress_queue.unwrap_or(0),
            linger: self.linger,
            trace: self.trace,
            rack_spread: rack_aware && self.rack_spread == "on",
        })
    }
}

/// The deterministic part of one run's report (no wall-clock figures), so two runs with
/// the same seed can be compared byte for byte.
pub fn result_json(cfg: &SimConfig, r: &SimResult) -> Json {
    let bound = cfg.size as f64 * 8.0 / cfg.rate_bps;
    let mut done: Vec<f64> = r.done_at.iter().flatten().copied().collect();
    done.sort_by(f64::total_cmp);
    let last = done.last().copied().unwrap_or(f64::NAN);
    let copies = |b: u64| b as f64 / cfg.size as f64;
    let cdf: Vec<Json> = done.iter().map(|&t| Json::from(round(t, 6))).collect();
    let racks: Vec<Json> = r
        .rack_bytes
        .iter()
        .enumerate()
        .map(|(i, &(out, inn))| {
            Json::obj()
                .with("rack", i)
                .with("out_bytes", out)
                .with("in_bytes", inn)
                .with("out_copies", round(copies(out), 4))
                .with("in_copies", round(copies(inn), 4))
        })
        .collect();
    let max_in = r
        .rack_bytes
        .iter()
        .map(|&(_, i)| copies(i))
        .fold(0.0, f64::max);
    let k = cfg.seeders.max(1);
    let seeders: Vec<Json> = r.uploaded[..k]
        .iter()
        .map(|&b| Json::from(round(copies(b), 4)))
        .collect();
    let peer_up: Vec<Json> = r.uploaded[k..]
        .iter()
        .map(|&b| Json::from(round(copies(b), 4)))
        .collect();
    Json::obj()
        .with("hosts", cfg.hosts)
        .with("rack_aware", cfg.rack_aware)
        .with("rack_pick", cfg.rack_pick)
        .with("rack_spread", cfg.rack_spread)
        .with("completed_hosts", done.len())
        .with("all_verified", r.all_verified)
        .with("bound_s", round(bound, 6))
        .with("completion_s", round(last, 6))
        .with("over_bound", round(last / bound, 4))
        .with("host_p10_s", round(quantile_sorted(&done, 0.1), 6))
        .with("host_p50_s", round(quantile_sorted(&done, 0.5), 6))
        .with("host_p90_s", round(quantile_sorted(&done, 0.9), 6))
        .with("seeders", k)
        .with(
            "seeder_copies",
            round(copies(r.uploaded[..k].iter().sum()), 4),
        )
        .with("per_seeder_copies", Json::Arr(seeders))
        .with("max_rack_in_copies", round(max_in, 4))
        .with(
            "seeder_first_copies_by_rack",
            Json::Arr(
                r.seeder_first_by_rack
                    .iter()
                    .map(|&n| Json::from(u64::from(n)))
                    .collect(),
            ),
        )
        .with("racks", Json::Arr(racks))
        .with("connections", r.connections)
        .with("events", r.events)
        .with("end_s", round(r.end, 6))
        .with("host_done_s_sorted", Json::Arr(cdf))
        .with("peer_upload_copies", Json::Arr(peer_up))
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn params_json(a: &SimArgs, c: &SimConfig) -> Json {
    Json::obj()
        .with("size_bytes", c.size)
        .with("piece_size", c.piece_size)
        .with("rate", a.rate.as_str())
        .with("rate_bits_per_sec", c.rate_bps)
        .with("goodput", c.goodput)
        .with("rack_size", c.rack_size)
        .with("oversub", c.oversub)
        .with("hop_latency_us", c.hop_latency.as_secs_f64() * 1e6)
        .with("segment", u64::from(c.segment))
        .with("sndbuf", c.sndbuf)
        .with("request_size", u64::from(c.request_size))
        .with("hash_rate", c.hash_rate)
        .with("start_spread_s", c.start_spread.as_secs_f64())
        .with("numwant", c.numwant)
        .with("seeders", c.seeders)
        .with("max_unchoked", c.max_unchoked)
        .with("seed_fanout", c.seed_fanout)
        .with("seed_extra_permille", u64::from(c.seed_extra_permille))
        .with("cross_rack_peers", c.cross_rack_peers)
        .with("egress_queue", c.egress_queue)
        .with("linger_s", c.linger.map(|l| l.as_secs_f64()))
        .with("seed", c.seed)
        .with(
            "model",
            "message-level store-and-forward; FIFO links; see benches/src/sim/core.rs",
        )
}

/// One fleet size of a measured fleet run: (N, median s, x S/C, median seeder copies).
fn fleet_points(path: &PathBuf) -> Result<Vec<(usize, f64, f64, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let j = crate::json::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let Some(Json::Arr(fleets)) = j.get("fleets") else {
        bail!("{}: no \"fleets\" array", path.display());
    };
    let mut out = Vec::new();
    for f in fleets {
        let n = f
            .get("n")
            .and_then(Json::as_u64)
            .context("fleet without n")? as usize;
        let Some(Json::Arr(methods)) = f.get("methods") else {
            continue;
        };
        let Some(m) = methods
            .iter()
            .find(|m| m.get("method").and_then(Json::as_str) == Some("corvid"))
        else {
            continue;
        };
        let (Some(med), Some(over)) = (
            m.get("median_s").and_then(Json::as_f64),
            m.get("median_over_bound").and_then(Json::as_f64),
        ) else {
            continue;
        };
        let mut copies: Vec<f64> = match m.get("runs") {
            Some(Json::Arr(runs)) => runs
                .iter()
                .filter_map(|r| r.at(&["corvid", "seeder_copies"]).and_then(Json::as_f64))
                .collect(),
            _ => Vec::new(),
        };
        copies.sort_by(f64::total_cmp);
        let c = copies.get(copies.len() / 2).copied().unwrap_or(f64::NAN);
        out.push((n, med, over, c));
    }
    Ok(out)
}

/// The rack-aware modes to run, after refusing arguments that make no run.
fn check_args(a: &SimArgs) -> Result<Vec<bool>> {
    let modes: Vec<bool> = match a.rack_aware.as_str() {
        "off" => vec![false],
        "on" => vec![true],
        "both" => vec![false, true],
        other => bail!(crate::UsageError(format!(
            "--rack-aware: {other:?} is not on, off or both"
        ))),
    };
    if a.hosts.is_empty() || a.hosts.contains(&0) {
        bail!(crate::UsageError(
            "--hosts: sizes must be at least 1".into()
        ));
    }
    if !matches!(a.rack_spread.as_str(), "on" | "off") {
        bail!(crate::UsageError(format!(
            "--rack-spread: {:?} is not on or off",
            a.rack_spread
        )));
    }
    if !matches!(a.rack_pick.as_str(), "on" | "off") {
        bail!(crate::UsageError(format!(
            "--rack-pick: {:?} is not on or off",
            a.rack_pick
        )));
    }
    Ok(modes)
}

/// One run's summary line.
fn run_line(n: usize, aware: bool, cfg: &SimConfig, j: &Json, r: &SimResult, wall: f64) -> String {
    let num = |k: &str| j.get(k).and_then(Json::as_f64).unwrap_or(f64::NAN);
    format!(
        "N={n:>6} rack-aware={:<3} seed {} done {:.3}s = {:.3} x S/C (p10/p50/p90 {:.3}/{:.3}/{:.3}s), seeder {:.3} copies, max rack in {:.2} copies, {} conns, {} events, wall {:.1}s",
        if aware { "on" } else { "off" },
        cfg.seed,
        num("completion_s"),
        num("over_bound"),
        num("host_p10_s"),
        num("host_p50_s"),
        num("host_p90_s"),
        num("seeder_copies"),
        num("max_rack_in_copies"),
        r.connections,
        r.events,
        wall
    )
}

pub fn run(a: SimArgs) -> Result<crate::Outcome> {
    let modes = check_args(&a)?;
    let fleet = a.compare.as_ref().map(fleet_points).transpose()?;
    let dir = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("benches/runs")
            .join(format!("{}-{}", crate::utc_stamp(false), crate::hostname()))
            .join(format!("sim-{}", crate::utc_stamp(true)))
    });
    let mut runs = Vec::new();
    let mut summary = String::new();
    let mut series: Vec<svg::Series> = Vec::new();
    let mut failed = Vec::new();
    let mut params = Json::Null;
    for &aware in &modes {
        let mut points = Vec::new();
        for &n in &a.hosts {
            let mut tries = Vec::new();
            for k in 0..a.runs {
                let mut cfg = a.config(n, aware)?;
                cfg.seed = a.seed.wrapping_add(k);
                if params == Json::Null {
                    params = params_json(&a, &cfg);
                }
                let t0 = std::time::Instant::now();
                let r = simulate(cfg.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
                let wall = t0.elapsed().as_secs_f64();
                let j = result_json(&cfg, &r);
                let num = |k: &str| j.get(k).and_then(Json::as_f64).unwrap_or(f64::NAN);
                let line = run_line(n, aware, &cfg, &j, &r, wall);
                println!("{line}");
                summary.push_str(&line);
                summary.push('\n');
                if !r.all_verified {
                    failed.push(format!(
                        "N={n} seed {}: {} hosts incomplete at the time limit",
                        cfg.seed,
                        r.done_at.iter().filter(|d| d.is_none()).count()
                    ));
                }
                tries.push((num("completion_s"), j, wall));
            }
            // Like the fleet bench: the median run stands for the size, min and max beside.
            tries.sort_by(|x, y| x.0.total_cmp(&y.0));
            let (lo, hi) = (tries[0].0, tries[tries.len() - 1].0);
            let all: Vec<Json> = tries.iter().map(|t| Json::from(t.0)).collect();
            let walls: Vec<Json> = tries.iter().map(|t| Json::from(round(t.2, 2))).collect();
            let (med, j, _) = tries.swap_remove(tries.len() / 2);
            points.push((n as f64, med, lo, hi));
            runs.push(
                Json::obj()
                    .with("median", j)
                    .with("completion_s_sorted", Json::Arr(all))
                    .with("wall_s", Json::Arr(walls)),
            );
        }
        series.push(svg::Series {
            label: format!(
                "corvid sim, rack-aware {}",
                if aware { "on" } else { "off" }
            ),
            points,
        });
    }
    let bound = a.size as f64 * 8.0
        / units::parse_rate(&a.rate)?
            .map(|r| r.bits_per_sec)
            .unwrap_or(f64::NAN);
    let mut results = Json::obj()
        .with("scenario", "sim")
        .with(
            "setup",
            crate::setup_json(std::path::Path::new("target/release/corvid")),
        )
        .with("params", params)
        .with("bound_s", bound)
        .with("runs", Json::Arr(runs.clone()));
    if let Some(fleet) = &fleet {
        let (table, rows) = comparison(fleet, &runs);
        summary.push('\n');
        summary.push_str(&table);
        print!("{table}");
        results.push("comparison", Json::Arr(rows));
    }
    let bounds: Vec<(f64, f64)> = a.hosts.iter().map(|&n| (n as f64, bound)).collect();
    let chart = svg::fleet_chart(
        &format!(
            "corvid-bench sim: {} at {}, {} hosts/rack",
            units::fmt_bytes(a.size),
            a.rate,
            a.rack_size
        ),
        &series,
        &bounds,
    );
    crate::write_outputs(&dir, &results, &chart, &summary)?;
    Ok(crate::Outcome {
        failed,
        data_loss: Vec::new(),
    })
}

/// The validation table: measured fleet against the simulation, per fleet size.
fn comparison(fleet: &[(usize, f64, f64, f64)], runs: &[Json]) -> (String, Vec<Json>) {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| N | fleet s | fleet x S/C | sim s | sim x S/C | sim vs fleet | fleet seeder copies | sim seeder copies |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for &(n, med, over, copies) in fleet {
        let Some(r) = runs
            .iter()
            .map(|r| r.get("median"))
            .find(|r| r.and_then(|r| r.get("hosts")).and_then(Json::as_u64) == Some(n as u64))
        else {
            continue;
        };
        let r = r.expect("found above");
        let s = r
            .get("completion_s")
            .and_then(Json::as_f64)
            .unwrap_or(f64::NAN);
        let so = r
            .get("over_bound")
            .and_then(Json::as_f64)
            .unwrap_or(f64::NAN);
        let sc = r
            .get("seeder_copies")
            .and_then(Json::as_f64)
            .unwrap_or(f64::NAN);
        let diff = (s - med) / med * 100.0;
        let _ = writeln!(
            t,
            "| {n} | {med:.3} | {over:.2} | {s:.3} | {so:.2} | {diff:+.1}% | {copies:.3} | {sc:.3} |"
        );
        rows.push(
            Json::obj()
                .with("n", n)
                .with("fleet_median_s", med)
                .with("fleet_over_bound", over)
                .with("sim_s", s)
                .with("sim_over_bound", so)
                .with("diff_percent", round(diff, 2))
                .with("fleet_seeder_copies", copies)
                .with("sim_seeder_copies", sc),
        );
    }
    (t, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(hosts: usize, seed: u64) -> SimConfig {
        SimConfig {
            hosts,
            seeders: 1,
            size: 8 << 20,
            piece_size: 256 << 10,
            rate_bps: 1e9,
            rack_size: 10,
            oversub: 4.0,
            hop_latency: Duration::from_micros(50),
            goodput: 1448.0 / 1514.0,
            segment: 64 << 10,
            sndbuf: 256 << 10,
            hash_rate: 1e9,
            start_spread: Duration::from_millis(50),
            numwant: 200,
            rack_aware: false,
            rack_pick: false,
            cross_rack_peers: Some(2),
            seed,
            time_limit: Duration::from_secs(120),
            request_size: 128 << 10,
            tick: Duration::from_millis(100),
            max_unchoked: 128,
            seed_fanout: corvid_engine::swarm::SwarmConfig::default().seed_fanout,
            seed_extra_permille: corvid_engine::swarm::SwarmConfig::default().seed_extra_permille,
            egress_queue: 0,
            linger: None,
            trace: None,
            rack_spread: false,
        }
    }

    /// Fifty hosts end with every piece verified by their own `Swarm`, and the same seed
    /// gives the same report byte for byte.
    #[test]
    fn fifty_hosts_complete_and_repeat() {
        let cfg = small(50, 7);
        let a = simulate(cfg.clone()).unwrap();
        assert!(a.all_verified, "some host lacks a verified piece");
        assert!(a.done_at.iter().all(Option::is_some));
        let b = simulate(cfg.clone()).unwrap();
        assert_eq!(
            result_json(&cfg, &a).pretty(),
            result_json(&cfg, &b).pretty()
        );
        // Nobody beats the physics: each host must take S through its own downlink.
        let bound = cfg.size as f64 * 8.0 / cfg.rate_bps;
        assert!(a.done_at.iter().flatten().all(|&t| t > bound));
        // Another seed is another run (the pickers' tie-breaks and start times differ).
        let c = simulate(small(50, 8)).unwrap();
        assert_ne!(a.done_at, c.done_at);
    }

    /// Two seeders, one per "datacenter" (rack), one tracker: every host completes and
    /// both seeders serve.
    #[test]
    fn two_seeders_both_serve() {
        let mut cfg = small(40, 11);
        cfg.seeders = 2;
        assert_ne!(cfg.rack_of(0), cfg.rack_of(1), "seeders in different racks");
        let r = simulate(cfg.clone()).unwrap();
        assert!(r.all_verified);
        assert_eq!(r.done_at.len(), 40);
        assert_eq!(r.uploaded.len(), 42);
        assert!(
            r.uploaded[..2].iter().all(|&b| b >= cfg.piece_size),
            "seeder uploads {:?}",
            &r.uploaded[..2]
        );
        let j = result_json(&cfg, &r);
        let total = j.get("seeder_copies").and_then(Json::as_f64).unwrap();
        let each = (r.uploaded[0] + r.uploaded[1]) as f64 / cfg.size as f64;
        assert!((total - each).abs() < 1e-3, "{total} vs {each}");
    }

    /// With the rack-aware handout, most bytes stay inside a rack.
    #[test]
    fn rack_aware_keeps_bytes_in_rack() {
        let mut cfg = small(59, 3);
        cfg.numwant = 12;
        let off = simulate(cfg.clone()).unwrap();
        cfg.rack_aware = true;
        let on = simulate(cfg.clone()).unwrap();
        assert!(off.all_verified && on.all_verified);
        let cross = |r: &SimResult| r.rack_bytes.iter().map(|b| b.1).sum::<u64>();
        assert!(
            cross(&on) < cross(&off),
            "rack-aware {} vs {} bytes across racks",
            cross(&on),
            cross(&off)
        );
        // The rack-aware picker on top: a piece crosses into a rack about once.
        cfg.rack_pick = true;
        let pick = simulate(cfg.clone()).unwrap();
        assert!(pick.all_verified);
        let again = simulate(cfg.clone()).unwrap();
        assert_eq!(
            result_json(&cfg, &pick).pretty(),
            result_json(&cfg, &again).pretty()
        );
        assert!(
            cross(&pick) < cross(&on),
            "rack-aware picking {} vs {} bytes across racks",
            cross(&pick),
            cross(&on)
        );
        let max_in = pick.rack_bytes.iter().map(|b| b.1).max().unwrap();
        assert!(
            max_in < 3 * cfg.size,
            "{:.2} copies into the busiest rack",
            max_in as f64 / cfg.size as f64
        );
        assert!(pick.seeder_first_by_rack.iter().all(|&n| n == 0));
    }

    /// A seeder that knows its peers' racks hands the first copies about evenly over
    /// them (every rack has upload slots here: 59 hosts, 128 slots), and the run repeats.
    #[test]
    fn the_seeder_spreads_first_copies_over_racks() {
        let mut cfg = small(59, 5);
        cfg.numwant = 12;
        cfg.rack_aware = true;
        cfg.rack_pick = true;
        cfg.rack_spread = true;
        let r = simulate(cfg.clone()).unwrap();
        assert!(r.all_verified);
        let by_rack = &r.seeder_first_by_rack;
        assert_eq!(by_rack.len(), cfg.racks());
        let pieces = cfg.size.div_ceil(cfg.piece_size) as u32;
        assert!(
            by_rack.iter().sum::<u32>() >= pieces,
            "every piece's first copy counts: {by_rack:?}"
        );
        // Racks whose hosts connect first may run ahead until the others have slots
        // (the seeder never idles to wait for a rack); none gets twice its share.
        let share = pieces / cfg.racks() as u32;
        let (lo, hi) = (by_rack.iter().min().unwrap(), by_rack.iter().max().unwrap());
        assert!(
            *lo >= 1 && *hi <= 2 * share,
            "first copies by rack {by_rack:?}"
        );
        let again = simulate(cfg.clone()).unwrap();
        assert_eq!(
            result_json(&cfg, &r).pretty(),
            result_json(&cfg, &again).pretty()
        );
    }
}
