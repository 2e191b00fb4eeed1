//! How busy this machine's CPUs were over a run, from `/proc/stat`; and what each role of
//! a `link` run costs in CPU per GiB, projected to a host on a 10 or 25 Gbit/s link.
//!
//! The fleet shares this machine's cores among all its hosts, so a fleet figure is a link
//! figure only while the cores had time to spare; a run whose cores were nearly all busy
//! measured the CPU, not the links, and is labelled so (see [`CPU_BOUND`]).
//!
//! Work at a lowered priority (`nice`, e.g. a build in the background) is shown apart:
//! it takes only what the fleet leaves (about a tenth of a core at nice 10 when both
//! want it), so the label counts the busy time at normal priority; the total is shown
//! beside it so a reader can judge.

/// Busy fraction of all cores above which a run counts as CPU-bound.
pub const CPU_BOUND: f64 = 0.85;

/// Cumulative jiffies of the aggregate `cpu` line.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    busy: u64,
    nice: u64,
    total: u64,
}

/// How busy the cores were over a run, as fractions of all cores' time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuBusy {
    /// All busy time, including work at lowered priority.
    pub all: f64,
    /// Busy time at normal priority (what the fleet competed with).
    pub normal: f64,
}

impl CpuSample {
    /// Reads `/proc/stat` now; `None` where it is unreadable (not Linux).
    pub fn now() -> Option<CpuSample> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// How busy all cores were between `self` and `later`.
    pub fn busy_until(&self, later: &CpuSample) -> Option<CpuBusy> {
        let total = later.total.checked_sub(self.total)?;
        let busy = later.busy.checked_sub(self.busy)?;
        let nice = later.nice.checked_sub(self.nice)?;
        (total > 0).then(|| CpuBusy {
            all: busy as f64 / total as f64,
            normal: busy.saturating_sub(nice) as f64 / total as f64,
        })
    }
}

/// The aggregate line: `cpu user nice system idle iowait irq softirq steal ...`; idle
/// and iowait are the idle part (guest time is already inside user).
fn parse(stat: &str) -> Option<CpuSample> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some(CpuSample {
        busy: total - idle,
        nice: v[1],
        total,
    })
}

impl CpuBusy {
    /// Whether the run measured the CPU rather than the links.
    pub fn bound(&self) -> bool {
        self.normal > CPU_BOUND
    }
}

/// The label a run's CPU figure earns: `CPU-BOUND` above [`CPU_BOUND`] at normal priority.
pub fn label(busy: Option<CpuBusy>) -> String {
    match busy {
        None => "cpu ?".to_string(),
        Some(b) => format!(
            "cpu {:.0}% busy ({:.0}% at normal priority){}",
            b.all * 100.0,
            b.normal * 100.0,
            if b.bound() { " CPU-BOUND" } else { "" }
        ),
    }
}

/// Bytes in a GiB, the unit CPU cost is reported per.
pub const GIB: f64 = (1u64 << 30) as f64;

/// CPU seconds (user + system, all threads) each role spent per GiB moved, in one run of
/// `link`; `None` where that method did not run (or its process's exit was not seen).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerGib {
    pub seeder: Option<f64>,
    pub peer: Option<f64>,
    pub iperf3_sender: Option<f64>,
    pub iperf3_receiver: Option<f64>,
    /// One SHA-1 pass on one thread.
    pub sha1: Option<f64>,
    /// Creating the page-cache pages a download lands in (the ceiling's
    /// `MADV_POPULATE_WRITE` of a fresh file): work iperf3 never does and a receiver must.
    pub page_cache: Option<f64>,
}

impl PerGib {
    /// The per-field median over runs (fields missing in every run stay `None`).
    pub fn median(runs: &[PerGib]) -> PerGib {
        let m = |f: fn(&PerGib) -> Option<f64>| {
            let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
            if v.is_empty() {
                return None;
            }
            v.sort_by(f64::total_cmp);
            let n = v.len();
            Some(if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            })
        };
        PerGib {
            seeder: m(|r| r.seeder),
            peer: m(|r| r.peer),
            iperf3_sender: m(|r| r.iperf3_sender),
            iperf3_receiver: m(|r| r.iperf3_receiver),
            sha1: m(|r| r.sha1),
            page_cache: m(|r| r.page_cache),
        }
    }
}

/// CPU seconds per GiB from CPU seconds spent on `bytes`.
pub fn per_gib(cpu_s: f64, bytes: u64) -> f64 {
    cpu_s * GIB / bytes.max(1) as f64
}

/// GiB per second at `gbit` Gbit/s (decimal, as links are rated).
pub fn gib_per_s(gbit: f64) -> f64 {
    gbit * 1e9 / 8.0 / GIB
}

/// What a fleet host needs: it receives at a rate and relays the same rate to other peers,
/// so each GiB costs one receive (the peer's cost per GiB, hashing included) plus one send
/// (the seeder's, which is the same upload code).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// CPU seconds per GiB received and relayed.
    pub per_gib: f64,
    /// Cores needed to receive and relay at 10 and 25 Gbit/s.
    pub cores_10g: f64,
    pub cores_25g: f64,
    /// Gbit/s one core sustains receiving and relaying.
    pub one_core_gbit: f64,
}

/// The projection for a receive cost and a send cost per GiB.
pub fn project(receive_per_gib: f64, send_per_gib: f64) -> Projection {
    let per_gib = receive_per_gib + send_per_gib;
    Projection {
        per_gib,
        cores_10g: gib_per_s(10.0) * per_gib,
        cores_25g: gib_per_s(25.0) * per_gib,
        one_core_gbit: if per_gib > 0.0 {
            GIB * 8.0 / 1e9 / per_gib
        } else {
            f64::INFINITY
        },
    }
}

/// The table `link` prints: CPU s/GiB per run and role, the medians, the projections for
/// corvid and for the floor (iperf3 both ends + one SHA-1 pass), and the targets.
pub fn per_gib_table(runs: &[PerGib]) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
    let mut out = format!(
        "CPU seconds per GiB (user + sys, all threads)\n{:<8} {:>8} {:>8} {:>14} {:>16} {:>8} {:>11}\n",
        "run", "seeder", "peer", "iperf3 sender", "iperf3 receiver", "sha1", "page cache"
    );
    let row = |name: &str, r: &PerGib| {
        format!(
            "{:<8} {:>8} {:>8} {:>14} {:>16} {:>8} {:>11}\n",
            name,
            f(r.seeder),
            f(r.peer),
            f(r.iperf3_sender),
            f(r.iperf3_receiver),
            f(r.sha1),
            f(r.page_cache)
        )
    };
    for (i, r) in runs.iter().enumerate() {
        out.push_str(&row(&(i + 1).to_string(), r));
    }
    let m = PerGib::median(runs);
    out.push_str(&row("median", &m));
    let line = |what: &str, p: Projection| {
        format!(
            "{what}: {:.2} CPU s/GiB received and relayed; cores for 10 Gbit/s {:.2}, for 25 Gbit/s {:.2}; one core sustains {:.2} Gbit/s\n",
            p.per_gib, p.cores_10g, p.cores_25g, p.one_core_gbit
        )
    };
    if let (Some(peer), Some(seeder)) = (m.peer, m.seeder) {
        out.push_str(&line("corvid (peer + seeder)", project(peer, seeder)));
    }
    if let (Some(rx), Some(tx), Some(sha)) = (m.iperf3_receiver, m.iperf3_sender, m.sha1) {
        out.push_str(&line(
            "floor (iperf3 receiver + SHA-1 + iperf3 sender)",
            project(rx + sha, tx),
        ));
        if let Some(peer) = m.peer {
            out.push_str(&format!(
                "target peer <= 1.25 x (iperf3 receiver + SHA-1) = {:.2}: peer {:.2} ({:.2} x)\n",
                1.25 * (rx + sha),
                peer,
                peer / (rx + sha)
            ));
            if let Some(pc) = m.page_cache {
                out.push_str(&format!(
                    "  with page-cache population added to the floor (iperf3 receiver + SHA-1 + page cache = {:.2}): peer {:.2} x\n",
                    rx + sha + pc,
                    peer / (rx + sha + pc)
                ));
            }
        }
        if let Some(seeder) = m.seeder {
            out.push_str(&format!(
                "target seeder <= iperf3 sender = {:.2}: seeder {:.2} ({:.2} x)\n",
                tx,
                seeder,
                seeder / tx
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_gib_medians_and_projection() {
        assert!((per_gib(2.0, 1 << 29) - 4.0).abs() < 1e-12);
        // 10 Gbit/s is 1.164 GiB/s.
        assert!((gib_per_s(10.0) - 1.16415).abs() < 1e-4);
        let p = project(0.6, 0.4);
        assert!((p.cores_10g - 1.16415).abs() < 1e-4, "{p:?}");
        assert!((p.cores_25g - 2.91038).abs() < 1e-4, "{p:?}");
        assert!((p.one_core_gbit - 8.58993).abs() < 1e-4, "{p:?}");
        let runs = [
            PerGib {
                seeder: Some(1.0),
                peer: Some(3.0),
                sha1: Some(1.0),
                ..PerGib::default()
            },
            PerGib {
                seeder: Some(2.0),
                peer: Some(1.0),
                iperf3_sender: Some(0.5),
                iperf3_receiver: Some(0.5),
                sha1: Some(2.0),
                page_cache: None,
            },
            PerGib {
                seeder: Some(9.0),
                peer: Some(2.0),
                iperf3_sender: Some(1.5),
                iperf3_receiver: Some(0.7),
                sha1: Some(3.0),
                page_cache: Some(1.0),
            },
        ];
        let m = PerGib::median(&runs);
        assert_eq!(m.seeder, Some(2.0));
        assert_eq!(m.peer, Some(2.0));
        assert_eq!(
            m.iperf3_sender,
            Some(1.0),
            "even count: mean of the middle two"
        );
        assert_eq!(PerGib::median(&[]).peer, None);
        let t = per_gib_table(&runs);
        assert!(t.contains("median       2.00     2.00"), "{t}");
        assert!(t.contains("corvid (peer + seeder): 4.00 CPU s/GiB"), "{t}");
        assert!(
            t.contains("target peer <= 1.25 x (iperf3 receiver + SHA-1) = 3.25: peer 2.00"),
            "{t}"
        );
        assert!(
            t.contains("target seeder <= iperf3 sender = 1.00: seeder 2.00 (2.00 x)"),
            "{t}"
        );
    }

    #[test]
    fn busy_fraction_from_two_samples() {
        let a = parse("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4 5\n").unwrap();
        let b = parse("cpu  400 100 200 900 100 0 0 0 0 0\n").unwrap();
        // 500 more jiffies busy of 700 more in all, 100 of them niced.
        let busy = a.busy_until(&b).unwrap();
        assert!((busy.all - 500.0 / 700.0).abs() < 1e-9);
        assert!((busy.normal - 400.0 / 700.0).abs() < 1e-9);
        assert!(b.busy_until(&a).is_none());
        assert!(parse("intr 1 2 3\n").is_none());
        assert!(parse("cpu  x y\n").is_none());
        let hot = CpuBusy {
            all: 0.95,
            normal: 0.9,
        };
        assert_eq!(
            label(Some(hot)),
            "cpu 95% busy (90% at normal priority) CPU-BOUND"
        );
        let niced = CpuBusy {
            all: 1.0,
            normal: 0.5,
        };
        assert_eq!(label(Some(niced)), "cpu 100% busy (50% at normal priority)");
    }
}
