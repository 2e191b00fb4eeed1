//! The payload every method transfers: pseudo-random bytes (incompressible, so ssh or
//! rsync compression cannot flatter a baseline), generated once per size and cached
//! with its SHA-1 beside it, plus the page-cache warm-up before each measured run and
//! the SHA-1 checks that stand between a transfer and a reported time.

use anyhow::{bail, Context, Result};
use sha1::{Digest, Sha1};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHUNK: usize = 4 << 20;

pub struct Payload {
    pub path: PathBuf,
    pub size: u64,
    pub sha1: String,
}

impl Payload {
    /// The file name every receiver must end up holding.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// Returns the cached payload of `size` bytes under `dir`, generating it if missing or
/// if the cache is incomplete (the SHA-1 sidecar is written last).
pub fn ensure(dir: &Path, size: u64) -> Result<Payload> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let path = dir.join(format!("payload-{size}.bin"));
    let sidecar = dir.join(format!("payload-{size}.bin.sha1"));
    if let (Ok(meta), Ok(sum)) = (std::fs::metadata(&path), std::fs::read_to_string(&sidecar)) {
        let sum = sum.trim().to_string();
        if meta.len() == size && sum.len() == 40 {
            return Ok(Payload {
                path,
                size,
                sha1: sum,
            });
        }
    }
    let t = Instant::now();
    eprintln!(
        "payload: generating {} at {}",
        crate::units::fmt_bytes(size),
        path.display()
    );
    let tmp = dir.join(format!("payload-{size}.bin.tmp"));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut rng = SplitMix64(0x636f_7276_6964 ^ size);
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        for word in buf[..n].chunks_mut(8) {
            let r = rng.next().to_le_bytes();
            word.copy_from_slice(&r[..word.len()]);
        }
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", tmp.display()))?;
        left -= n as u64;
    }
    f.sync_all().ok();
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    let sha1 = hex(&hasher.finalize());
    std::fs::write(&sidecar, format!("{sha1}\n"))
        .with_context(|| format!("writing {}", sidecar.display()))?;
    eprintln!(
        "payload: generated in {:.1}s, sha1 {sha1}",
        t.elapsed().as_secs_f64()
    );
    Ok(Payload { path, size, sha1 })
}

/// Flushes dirty pages left by the previous run (sync(2)), then reads the payload once
/// so the measured run starts from page cache; returns the time the read took (long
/// means it had been evicted). Without the sync, one method's gigabytes of writeback
/// (scp and rsync write through the page cache too) would tax whichever method runs
/// next.
pub fn warm(p: &Payload) -> Result<Duration> {
    // SAFETY: sync(2) takes no arguments and only schedules and waits for writeback.
    unsafe { libc::sync() };
    let t = Instant::now();
    let mut f = File::open(&p.path).with_context(|| format!("opening {}", p.path.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.path.display()))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total != p.size {
        bail!(
            "payload {} is {total} bytes, expected {}; delete it to regenerate",
            p.path.display(),
            p.size
        );
    }
    Ok(t.elapsed())
}

/// SHA-1 of a file as lowercase hex, and its length.
pub fn sha1_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Checks that `path` holds exactly the payload; the error says what differs.
pub fn verify_file(p: &Payload, path: &Path) -> Result<()> {
    let (sum, len) = sha1_file(path)?;
    if len != p.size {
        bail!("{} has {len} bytes, expected {}", path.display(), p.size);
    }
    if sum != p.sha1 {
        bail!("{} has SHA-1 {sum}, expected {}", path.display(), p.sha1);
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic filler (Steele, Lea, Flood: SplitMix64); quality is ample for
/// incompressible test bytes and it needs no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corvid-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generates_caches_and_verifies() {
        let d = tmpdir("payload");
        let p = ensure(&d, 100_003).unwrap();
        assert_eq!(std::fs::metadata(&p.path).unwrap().len(), 100_003);
        assert_eq!(sha1_file(&p.path).unwrap().0, p.sha1);
        // Cached: same checksum, file untouched.
        let again = ensure(&d, 100_003).unwrap();
        assert_eq!(again.sha1, p.sha1);
        assert!(warm(&p).unwrap() < Duration::from_secs(5));

        let copy = d.join("copy");
        std::fs::copy(&p.path, &copy).unwrap();
        verify_file(&p, &copy).unwrap();
        // One flipped byte is caught.
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes[5000] ^= 1;
        std::fs::write(&copy, &bytes).unwrap();
        let e = verify_file(&p, &copy).unwrap_err().to_string();
        assert!(e.contains("SHA-1"), "{e}");
        // A short file is caught by length.
        std::fs::write(&copy, &bytes[..100]).unwrap();
        assert!(verify_file(&p, &copy)
            .unwrap_err()
            .to_string()
            .contains("100 bytes"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bytes_are_incompressible_looking() {
        let mut r = SplitMix64(1);
        let mut seen = [0u32; 256];
        for _ in 0..4096 {
            for b in r.next().to_le_bytes() {
                seen[b as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c > 60 && c < 200), "{seen:?}");
    }
}
