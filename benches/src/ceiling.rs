//! The `ceiling` method of `link`: how fast any verified transfer could be on this machine.
//!
//! A BitTorrent receive on one machine cannot do less CPU work than: the kernel moving the
//! bytes through TCP at both ends (measured here as iperf3's own CPU time, client and
//! server, for the same byte count), one SHA-1 pass over the payload, and creating the
//! page-cache pages the payload lands in (allocation and zeroing of a preallocated file's
//! pages, as `MADV_POPULATE_WRITE` does). Spread perfectly over every core with nothing
//! else to do, that work takes `sum / cores` seconds: an optimistic bound on the time,
//! measured in the same run as the methods it is compared with. It is the honest yardstick
//! for a 10GbE target on a 2-core machine, where the hashing alone takes a core for most
//! of the budget.

use crate::baselines;
use crate::payload::Payload;
use anyhow::{bail, Context, Result};
use sha1::{Digest, Sha1};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// The CPU seconds of each unavoidable part, and the bound they imply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ceiling {
    /// iperf3 client + server CPU for the payload's byte count.
    pub tcp_cpu_s: f64,
    /// One thread's CPU for SHA-1 over the payload (checked against its known digest).
    pub sha1_cpu_s: f64,
    /// One thread's CPU for populating a fresh preallocated file of the payload's size.
    pub page_cache_cpu_s: f64,
    pub cores: usize,
}

impl Ceiling {
    /// The bound on the transfer time: all the work, perfectly parallel on every core.
    pub fn seconds(&self) -> f64 {
        (self.tcp_cpu_s + self.sha1_cpu_s + self.page_cache_cpu_s) / self.cores.max(1) as f64
    }

    pub fn describe(&self) -> String {
        format!(
            "    ceiling: CPU s tcp (iperf3, both ends) {:.2} + sha1 {:.2} + page cache {:.2} = {:.2}, over {} cores",
            self.tcp_cpu_s,
            self.sha1_cpu_s,
            self.page_cache_cpu_s,
            self.tcp_cpu_s + self.sha1_cpu_s + self.page_cache_cpu_s,
            self.cores
        )
    }
}

/// Measures the three parts for `p`, using `work` for the scratch file.
pub fn measure(p: &Payload, work: &Path, timeout: Duration) -> Result<Ceiling> {
    let tcp = baselines::iperf3_loopback(p.size, timeout)?;
    let tcp_cpu_s = tcp
        .cpu_s
        .context("iperf3 server did not exit after the test: no CPU time for it")?;
    let sha1_cpu_s = sha1_cpu(p)?;
    let page_cache_cpu_s = page_cache_cpu(p.size, &work.join("ceiling-scratch.bin"))?;
    Ok(Ceiling {
        tcp_cpu_s,
        sha1_cpu_s,
        page_cache_cpu_s,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn sha1_cpu(p: &Payload) -> Result<f64> {
    let f = File::open(&p.path).with_context(|| format!("opening {}", p.path.display()))?;
    // SAFETY: the payload belongs to the harness, which does not write it while mapped;
    // the mapping is only read and dropped before this function returns.
    let map = unsafe { memmap2::Mmap::map(&f) }
        .with_context(|| format!("mapping {}", p.path.display()))?;
    let t0 = thread_cpu();
    let mut h = Sha1::new();
    for chunk in map.chunks(1 << 20) {
        h.update(chunk);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let cpu = (thread_cpu() - t0).as_secs_f64();
    // The digest is checked so the measured work cannot have been skipped.
    if hex != p.sha1 {
        bail!(
            "SHA-1 of {} is {hex}, expected {}",
            p.path.display(),
            p.sha1
        );
    }
    Ok(cpu)
}

fn page_cache_cpu(size: u64, scratch: &Path) -> Result<f64> {
    let _ = std::fs::remove_file(scratch);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(scratch)
        .with_context(|| format!("creating {}", scratch.display()))?;
    let remove = RemoveFile(scratch);
    // SAFETY: fallocate on our own open descriptor touches no memory of ours.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc != 0 {
        bail!(
            "fallocate {} ({size} bytes): {}",
            scratch.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the scratch file was just created by us and nobody else knows it; the mapping
    // is dropped before the file is removed.
    let map = unsafe { memmap2::MmapMut::map_mut(&f) }
        .with_context(|| format!("mapping {}", scratch.display()))?;
    let t0 = thread_cpu();
    // SAFETY: the range is exactly our live mapping; MADV_POPULATE_WRITE faults its pages
    // in writable without changing their contents.
    let rc = unsafe {
        libc::madvise(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            libc::MADV_POPULATE_WRITE,
        )
    };
    let cpu = (thread_cpu() - t0).as_secs_f64();
    if rc != 0 {
        bail!(
            "MADV_POPULATE_WRITE on {}: {}",
            scratch.display(),
            std::io::Error::last_os_error()
        );
    }
    drop(map);
    drop(remove);
    Ok(cpu)
}

struct RemoveFile<'a>(&'a Path);

impl Drop for RemoveFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_the_work_shared_by_the_cores() {
        let c = Ceiling {
            tcp_cpu_s: 0.7,
            sha1_cpu_s: 0.8,
            page_cache_cpu_s: 0.5,
            cores: 2,
        };
        assert!((c.seconds() - 1.0).abs() < 1e-9);
        assert!(c.describe().contains("= 2.00, over 2 cores"));
    }

    #[test]
    fn measures_each_part_of_a_small_payload() {
        let dir = std::env::temp_dir().join(format!("corvid-ceiling-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = crate::payload::ensure(&dir, 8 << 20).unwrap();
        let c = measure(&p, &dir, Duration::from_secs(60));
        let scratch_left = dir.join("ceiling-scratch.bin").exists();
        let _ = std::fs::remove_dir_all(&dir);
        let c = c.unwrap();
        assert!(c.tcp_cpu_s > 0.0 && c.sha1_cpu_s > 0.0, "{c:?}");
        assert!(c.page_cache_cpu_s > 0.0, "{c:?}");
        assert!(!scratch_left, "scratch file left behind");
    }
}
