//! How busy this machine's CPUs were over a run, from `/proc/stat`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
