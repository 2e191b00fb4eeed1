//! What a scenario measured, and its two renderings: the terminal table and the JSON
//! document written to results.json (every figure, per run and per host, so a chart or
//! a claim can always be traced back to raw numbers).

use crate::json::Json;
use crate::proc::Usage;
use crate::units::{fmt_bytes, fmt_mbps};

/// Resource use of one measured process.
#[derive(Debug, Clone)]
pub struct ProcUse {
    pub role: String,
    pub host: String,
    pub usage: Usage,
}

/// corvid-only figures of one run.
#[derive(Debug, Clone, Default)]
pub struct CorvidDetail {
    pub make_s: f64,
    pub seed_ready_s: f64,
    /// Sum over peers of bytes received from the seeder / from other peers.
    pub from_seeder: u64,
    pub from_peers: u64,
    /// Sums over peers of their own byte counters (down includes any duplicates).
    pub bytes_down: u64,
    pub peers_bytes_up: u64,
    /// Median over peers of their piece-latency p50; max over peers of their p99.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Each peer's full report, by host.
    pub reports: Vec<(String, Json)>,
}

/// One measured run of one method.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Until the last receiver held the payload (verified afterwards).
    pub seconds: f64,
    /// Time the page-cache warm-up read of the payload took before this run.
    pub warm_s: f64,
    /// Per receiving host: seconds from start until it had the payload.
    pub hosts: Vec<(String, f64)>,
    pub procs: Vec<ProcUse>,
    pub corvid: Option<CorvidDetail>,
    /// iperf3's own receiver-side measurement.
    pub iperf3_bits_per_sec: Option<f64>,
    /// The `ceiling` method's parts (its `seconds` is the bound they imply).
    pub ceiling: Option<crate::ceiling::Ceiling>,
    /// How busy this machine's cores were during the run (`/proc/stat`).
    pub cpu_busy: Option<crate::cpu::CpuBusy>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Vec<Run>),
    Failed {
        error: String,
        /// The transfer finished but a receiver's bytes were wrong or missing.
        data_loss: bool,
    },
}

#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: String,
    pub outcome: Outcome,
}

impl MethodResult {
    pub fn runs(&self) -> &[Run] {
        match &self.outcome {
            Outcome::Ok(r) => r,
            Outcome::Failed { .. } => &[],
        }
    }

    /// (median, min, max) of the runs' seconds.
    pub fn summary(&self) -> Option<(f64, f64, f64)> {
        let mut v: Vec<f64> = self.runs().iter().map(|r| r.seconds).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((median_sorted(&v), v[0], v[v.len() - 1]))
    }

    /// The run whose time is the median (its per-host times are the ones reported).
    pub fn median_run(&self) -> Option<&Run> {
        let runs = self.runs();
        let mut idx: Vec<usize> = (0..runs.len()).collect();
        idx.sort_by(|&a, &b| runs[a].seconds.total_cmp(&runs[b].seconds));
        idx.get(idx.len() / 2).map(|&i| &runs[i])
    }
}

/// Median of a sorted slice (mean of the middle two for even lengths).
pub fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    median_sorted(&v)
}

/// Quantile by nearest rank of a sorted slice.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn usage_json(u: &Usage) -> Json {
    Json::obj()
        .with("user_s", u.user_s)
        .with("sys_s", u.sys_s)
        .with("cpu_s", u.cpu_s())
        .with("vm_hwm_kib", u.hwm_kib)
        .with("max_rss_kib", u.max_rss_kib)
        .with("peak_anon_rss_kib", u.peak_anon_kib)
        .with("last_anon_rss_kib", u.last_anon_kib)
}

pub fn run_json(r: &Run, size: u64) -> Json {
    let mut j = Json::obj()
        .with("seconds", r.seconds)
        .with("bytes_per_sec", size as f64 / r.seconds)
        .with("warm_read_s", r.warm_s)
        .with(
            "hosts",
            Json::Arr(
                r.hosts
                    .iter()
                    .map(|(h, s)| Json::obj().with("host", h.as_str()).with("seconds", *s))
                    .collect(),
            ),
        );
    if let Some(b) = r.iperf3_bits_per_sec {
        j.push("iperf3_bits_per_sec", b);
    }
    if let Some(b) = r.cpu_busy {
        j.push("cpu_busy_all_cores", b.all);
        j.push("cpu_busy_normal_priority", b.normal);
        j.push("cpu_bound", b.bound());
    }
    if let Some(c) = &r.ceiling {
        j.push(
            "ceiling_cpu_s",
            Json::obj()
                .with("tcp_iperf3_both_ends", c.tcp_cpu_s)
                .with("sha1", c.sha1_cpu_s)
                .with("page_cache", c.page_cache_cpu_s)
                .with("cores", c.cores),
        );
    }
    if !r.procs.is_empty() {
        j.push(
            "processes",
            Json::Arr(
                r.procs
                    .iter()
                    .map(|p| {
                        Json::obj()
                            .with("role", p.role.as_str())
                            .with("host", p.host.as_str())
                            .with("usage", usage_json(&p.usage))
                    })
                    .collect(),
            ),
        );
    }
    if let Some(c) = &r.corvid {
        j.push(
            "corvid",
            Json::obj()
                .with("make_s", c.make_s)
                .with("seed_ready_s", c.seed_ready_s)
                .with("bytes_from_seeder", c.from_seeder)
                .with("seeder_copies", c.from_seeder as f64 / size.max(1) as f64)
                .with("bytes_from_peers", c.from_peers)
                .with("peers_bytes_down", c.bytes_down)
                .with("peers_bytes_up", c.peers_bytes_up)
                .with("piece_latency_p50_us_median_over_peers", c.p50_us)
                .with("piece_latency_p99_us_max_over_peers", c.p99_us)
                .with(
                    "peer_reports",
                    Json::Arr(
                        c.reports
                            .iter()
                            .map(|(h, r)| {
                                Json::obj()
                                    .with("host", h.as_str())
                                    .with("report", r.clone())
                            })
                            .collect(),
                    ),
                ),
        );
    }
    j
}

pub fn method_json(m: &MethodResult, size: u64, bound_s: Option<f64>) -> Json {
    let mut j = Json::obj().with("method", m.method.as_str());
    match &m.outcome {
        Outcome::Failed { error, data_loss } => {
            j.push("status", if *data_loss { "data-loss" } else { "failed" });
            j.push("error", error.as_str());
        }
        Outcome::Ok(runs) => {
            j.push("status", "ok");
            if let Some((med, min, max)) = m.summary() {
                j.push("median_s", med);
                j.push("min_s", min);
                j.push("max_s", max);
                j.push("median_bytes_per_sec", size as f64 / med);
                if let Some(b) = bound_s {
                    j.push("median_over_bound", med / b);
                }
            }
            if let Some(r) = m.median_run() {
                let mut cdf: Vec<f64> = r.hosts.iter().map(|(_, s)| *s).collect();
                cdf.sort_by(f64::total_cmp);
                j.push("median_run_host_seconds_sorted", cdf);
            }
            j.push(
                "runs",
                Json::Arr(runs.iter().map(|r| run_json(r, size)).collect()),
            );
        }
    }
    j
}

fn fmt_kib(k: u64) -> String {
    fmt_bytes(k * 1024)
}

fn fmt_opt_kib(k: Option<u64>) -> String {
    k.map_or("-".to_string(), fmt_kib)
}

/// Lines describing every corvid process of the median run (CPU, peak RSS, anon part).
pub fn process_lines(m: &MethodResult) -> Vec<String> {
    let mut out = Vec::new();
    let Some(r) = m.median_run() else {
        return out;
    };
    if r.procs.is_empty() {
        return out;
    }
    out.push(format!(
        "    {:<14} {:<8} {:>8} {:>8} {:>12} {:>12} {:>12}",
        "process", "host", "user s", "sys s", "VmHWM", "peak anon", "ru_maxrss"
    ));
    for p in &r.procs {
        out.push(format!(
            "    {:<14} {:<8} {:>8.2} {:>8.2} {:>12} {:>12} {:>12}",
            p.role,
            p.host,
            p.usage.user_s,
            p.usage.sys_s,
            fmt_opt_kib(p.usage.hwm_kib),
            fmt_opt_kib(p.usage.peak_anon_kib),
            fmt_kib(p.usage.max_rss_kib),
        ));
    }
    out.push(
        "    (CPU and ru_maxrss from wait4; VmHWM = peak RSS incl. mapped payload pages and peak \
         anon = VmRSS - RssFile, both sampled from /proc every 100 ms; ru_maxrss has the \
         harness's own RSS as a floor)"
            .to_string(),
    );
    out
}

/// The corvid swarm line: who served the bytes, piece latency.
pub fn corvid_line(m: &MethodResult) -> Option<String> {
    let c = m.median_run()?.corvid.as_ref()?;
    let total = (c.from_seeder + c.from_peers).max(1);
    Some(format!(
        "    corvid: seeder served {} ({:.0}%), peers served {} ({:.0}%); piece latency p50 {} p99 {}; make {:.2}s, seed ready {:.2}s (both excluded from the time)",
        fmt_bytes(c.from_seeder),
        100.0 * c.from_seeder as f64 / total as f64,
        fmt_bytes(c.from_peers),
        100.0 * c.from_peers as f64 / total as f64,
        c.p50_us.map_or("-".into(), |v| format!("{:.1} ms", v / 1000.0)),
        c.p99_us.map_or("-".into(), |v| format!("{:.1} ms", v / 1000.0)),
        c.make_s,
        c.seed_ready_s,
    ))
}

/// The `link` table: one row per method.
pub fn link_table(methods: &[MethodResult], size: u64) -> String {
    let iperf = methods
        .iter()
        .find(|m| m.method == "iperf3")
        .and_then(|m| m.summary())
        .map(|(med, _, _)| size as f64 / med);
    let mut out = format!(
        "{:<10} {:>9} {:>9} {:>9} {:>12} {:>10}\n",
        "method", "median s", "min s", "max s", "throughput", "of iperf3"
    );
    for m in methods {
        match (&m.outcome, m.summary()) {
            (Outcome::Ok(_), Some((med, min, max))) => {
                let bps = size as f64 / med;
                let frac = iperf.map_or("-".to_string(), |i| format!("{:.0}%", 100.0 * bps / i));
                out.push_str(&format!(
                    "{:<10} {:>9.3} {:>9.3} {:>9.3} {:>12} {:>10}\n",
                    m.method,
                    med,
                    min,
                    max,
                    fmt_mbps(bps),
                    frac
                ));
                if let Some(l) = corvid_line(m) {
                    out.push_str(&l);
                    out.push('\n');
                }
                if let Some(c) = m.median_run().and_then(|r| r.ceiling) {
                    out.push_str(&c.describe());
                    out.push('\n');
                }
                for l in process_lines(m) {
                    out.push_str(&l);
                    out.push('\n');
                }
            }
            (Outcome::Failed { error, data_loss }, _) => {
                out.push_str(&format!(
                    "{:<10} {} {}\n",
                    m.method,
                    if *data_loss { "DATA LOSS:" } else { "FAILED:" },
                    error
                ));
            }
            _ => {}
        }
    }
    out
}

/// The fleet line of a corvid run: the seeder's upload in copies of the payload, each
/// peer's upload, and how busy the CPUs were (a CPU-bound run is not a link figure).
pub fn fleet_corvid_line(r: &Run, size: u64) -> String {
    let cpu = crate::cpu::label(r.cpu_busy);
    let Some(c) = &r.corvid else {
        return format!("    {cpu}");
    };
    // Only peer reports carry `bytes_up`; a deploy's summary does not (its hosts report
    // what they received, not what they sent).
    let ups: Vec<String> = c
        .reports
        .iter()
        .filter_map(|(h, rep)| {
            let up = rep.get("bytes_up").and_then(Json::as_u64)?;
            Some(format!("{h} {:.2}", up as f64 / size.max(1) as f64))
        })
        .collect();
    let ups = if ups.is_empty() {
        "peers' upload not reported".to_string()
    } else {
        format!("peers' upload in copies: {}", ups.join(", "))
    };
    format!(
        "    seeder sent {:.3} copies; {cpu}; {ups}",
        c.from_seeder as f64 / size.max(1) as f64,
    )
}

/// The `fleet` table for one fleet size.
pub fn fleet_table(methods: &[MethodResult], bound_s: Option<f64>, size: u64) -> String {
    let mut out = format!(
        "{:<8} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}\n",
        "method", "median s", "min s", "max s", "x S/C", "host p10", "host p50", "host p90"
    );
    for m in methods {
        match (&m.outcome, m.summary()) {
            (Outcome::Ok(_), Some((med, min, max))) => {
                let mut hosts: Vec<f64> = m
                    .median_run()
                    .map(|r| r.hosts.iter().map(|(_, s)| *s).collect())
                    .unwrap_or_default();
                hosts.sort_by(f64::total_cmp);
                out.push_str(&format!(
                    "{:<8} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>9.3} {:>9.3} {:>9.3}\n",
                    m.method,
                    med,
                    min,
                    max,
                    bound_s.map_or("-".into(), |b| format!("{:.2}", med / b)),
                    quantile_sorted(&hosts, 0.1),
                    quantile_sorted(&hosts, 0.5),
                    quantile_sorted(&hosts, 0.9),
                ));
                // The whole per-host CDF of the median run, fastest host first.
                out.push_str(&format!(
                    "    hosts done at (s): {}\n",
                    hosts
                        .iter()
                        .map(|s| format!("{s:.2}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
                if let Some(l) = corvid_line(m) {
                    out.push_str(&l);
                    out.push('\n');
                }
                for r in m.runs() {
                    out.push_str(&format!("  run {:.3}s:\n", r.seconds));
                    out.push_str(&fleet_corvid_line(r, size));
                    out.push('\n');
                }
                for l in process_lines(m) {
                    out.push_str(&l);
                    out.push('\n');
                }
            }
            (Outcome::Failed { error, data_loss }, _) => {
                out.push_str(&format!(
                    "{:<8} {} {}\n",
                    m.method,
                    if *data_loss { "DATA LOSS:" } else { "FAILED:" },
                    error
                ));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, secs: &[f64]) -> MethodResult {
        MethodResult {
            method: method.into(),
            outcome: Outcome::Ok(
                secs.iter()
                    .map(|&s| Run {
                        seconds: s,
                        hosts: vec![("h1".into(), s)],
                        ..Run::default()
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn stats() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.9), 4.0);
        let m = ok("scp", &[2.0, 1.0, 3.0]);
        assert_eq!(m.summary(), Some((2.0, 1.0, 3.0)));
        assert_eq!(m.median_run().unwrap().seconds, 2.0);
    }

    #[test]
    fn tables_show_failures_and_fractions() {
        let ms = vec![
            ok("iperf3", &[1.0]),
            ok("scp", &[4.0]),
            MethodResult {
                method: "corvid".into(),
                outcome: Outcome::Failed {
                    error: "corvid binary not found".into(),
                    data_loss: false,
                },
            },
        ];
        let t = link_table(&ms, 1 << 30);
        assert!(t.contains("25%"), "{t}");
        assert!(t.contains("FAILED: corvid binary not found"), "{t}");
        let f = fleet_table(&ms[1..2], Some(2.0), 1);
        assert!(f.contains("2.00"), "{f}");
        let j = method_json(&ms[1], 1 << 30, Some(2.0));
        assert_eq!(j.get("median_over_bound"), Some(&Json::Num(2.0)));
        let j = method_json(&ms[2], 1 << 30, None);
        assert_eq!(j.get("status").and_then(Json::as_str), Some("failed"));
    }

    #[test]
    fn fleet_line_counts_copies_and_labels_cpu() {
        let report = crate::json::parse(r#"{"bytes_up":150}"#).unwrap();
        let r = Run {
            seconds: 1.0,
            cpu_busy: Some(crate::cpu::CpuBusy {
                all: 0.9,
                normal: 0.9,
            }),
            corvid: Some(CorvidDetail {
                from_seeder: 230,
                reports: vec![("h1".into(), report)],
                ..CorvidDetail::default()
            }),
            ..Run::default()
        };
        let l = fleet_corvid_line(&r, 100);
        assert!(l.contains("seeder sent 2.300 copies"), "{l}");
        assert!(l.contains("h1 1.50"), "{l}");
        assert!(l.contains("CPU-BOUND"), "{l}");
        let j = run_json(&r, 100);
        assert_eq!(j.get("cpu_bound"), Some(&Json::Bool(true)));
    }

    /// A deploy's summary is not a peer: it must not show up as one uploading nothing.
    #[test]
    fn fleet_line_leaves_out_reports_without_an_upload() {
        let summary = crate::json::parse(r#"{"hosts":16}"#).unwrap();
        let r = Run {
            corvid: Some(CorvidDetail {
                from_seeder: 100,
                reports: vec![("deploy summary".into(), summary)],
                ..CorvidDetail::default()
            }),
            ..Run::default()
        };
        let l = fleet_corvid_line(&r, 100);
        assert!(!l.contains("deploy summary"), "{l}");
        assert!(l.contains("peers' upload not reported"), "{l}");
    }
}
