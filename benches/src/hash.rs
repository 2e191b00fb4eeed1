//! `corvid-bench hash` measures SHA-1 piece hashing, the CPU cost behind `make`, `verify`
//! and every downloaded piece, against baselines: the `sha1sum` program (one thread, run
//! as a real process), the `sha1` crate on one core in-process, corvid's `HashPool`
//! (`hash_all` over the read-only mapping) with 1 and N threads, and `corvid make` end to
//! end as a process. The data file is generated once and cached; it is read once before
//! measuring so every run hashes from the page cache (CPU, not disk, is measured).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use corvid_engine::geometry::Lengths;
use corvid_engine::hash::HashPool;
use corvid_engine::metainfo::{auto_piece_length, parse_size};
use corvid_engine::storage::{FileSpec, Storage};
use sha1::{Digest, Sha1};

#[derive(clap::Args, Debug)]
pub struct HashArgs {
    /// Size of the test file (1GiB, 256M, ...).
    #[arg(long, default_value = "1GiB")]
    size: String,
    /// Directory for the cached test file.
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Threads for the N-thread HashPool run [default: number of CPUs].
    #[arg(long)]
    threads: Option<usize>,
    /// Runs per measurement; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The corvid binary for the end-to-end run [default: beside corvid-bench].
    #[arg(long)]
    corvid: Option<PathBuf>,
}

/// Writes `size` pseudo-random bytes (xorshift64*, incompressible enough for hashing,
/// cheap to make) unless a file of that size is already there.
fn ensure_data(dir: &Path, size: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("hash-{size}.bin"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        println!("data: reusing {} ({size} bytes)", path.display());
        return Ok(path);
    }
    println!("data: generating {} ({size} bytes)", path.display());
    let tmp = path.with_extension("partial");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Reads the whole file once so the measured runs hash from the page cache.
fn warm(path: &Path) -> Result<Duration> {
    let start = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(start.elapsed())
}

/// Fastest of `runs` timings of `f`.
fn best(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

pub fn run(a: HashArgs) -> Result<()> {
    let Some(size) = parse_size(&a.size) else {
        bail!("--size {:?} is not a size like 1GiB or 256M", a.size);
    };
    if size == 0 {
        bail!("--size must be positive");
    }
    let threads = a
        .threads
        .unwrap_or_else(corvid_engine::hash::default_threads);
    let path = ensure_data(&a.dir, size)?;
    let w = warm(&path)?;
    println!(
        "warm: read the file once into the page cache ({:.0} MB/s); all runs below hash from memory",
        size as f64 / 1e6 / w.as_secs_f64()
    );
    let piece_length = auto_piece_length(size);
    let lengths = Lengths::new(size, piece_length, size.div_ceil(piece_length))?;
    let mut rows: Vec<(String, Duration)> = vec![
        (
            "sha1sum (process, 1 thread)".into(),
            time_sha1sum(a.runs, &path)?,
        ),
        (
            "sha1 crate (in-process, 1 thread)".into(),
            time_sha1_crate(a.runs, &path)?,
        ),
    ];
    rows.extend(time_hash_pool(a.runs, &path, size, lengths, threads)?);
    rows.extend(time_corvid_make(&a, &path, threads)?);
    print_table(&rows, size, &lengths, a.runs);
    Ok(())
}

/// sha1sum as a real program.
fn time_sha1sum(runs: usize, path: &Path) -> Result<Duration> {
    best(runs, || {
        let o = Command::new("sha1sum")
            .arg(path)
            .output()
            .context("run sha1sum")?;
        if !o.status.success() {
            bail!("sha1sum failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    })
}

/// The sha1 crate on one core, reading through a 1 MiB buffer like sha1sum does.
fn time_sha1_crate(runs: usize, path: &Path) -> Result<Duration> {
    best(runs, || {
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha1::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::hint::black_box(h.finalize());
        Ok(())
    })
}

/// HashPool over the read-only mapping, with one thread and with `threads`; the two
/// must agree.
fn time_hash_pool(
    runs: usize,
    path: &Path,
    size: u64,
    lengths: Lengths,
    threads: usize,
) -> Result<Vec<(String, Duration)>> {
    let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_name().context("data file name")?;
    let files = [FileSpec {
        path: PathBuf::from(name),
        length: size,
        pad: false,
    }];
    let storage = Arc::new(Storage::open_readonly(&root, &files, lengths)?);
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    let mut rows = Vec::new();
    let mut reference: Option<Vec<[u8; 20]>> = None;
    for n in counts {
        let pool = HashPool::new(n);
        let mut hashes = Vec::new();
        let t = best(runs, || {
            hashes = pool.hash_all(&storage, &mut |_| {});
            Ok(())
        })?;
        // Thread count must not change the result.
        match &reference {
            None => reference = Some(hashes),
            Some(r) if *r != hashes => bail!("HashPool with {n} threads disagrees with 1 thread"),
            Some(_) => {}
        }
        rows.push((format!("corvid HashPool::hash_all ({n} threads)"), t));
    }
    Ok(rows)
}

/// corvid make end to end, as a process; no row (and a note) when the binary is missing.
fn time_corvid_make(
    a: &HashArgs,
    path: &Path,
    threads: usize,
) -> Result<Option<(String, Duration)>> {
    let corvid = match &a.corvid {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("bench binary directory")?
            .join("corvid"),
    };
    if !corvid.is_file() {
        println!(
            "note: {} not found (build it: cargo build --release -p corvid); skipping `corvid make`",
            corvid.display()
        );
        return Ok(None);
    }
    let out_dir = tempfile_dir(&a.dir)?;
    let out = out_dir.join("bench.torrent");
    let t = best(a.runs, || {
        let o = Command::new(&corvid)
            .arg("make")
            .arg(path)
            .arg("-o")
            .arg(&out)
            .arg("--force")
            .arg("--threads")
            .arg(threads.to_string())
            .output()
            .context("run corvid make")?;
        if !o.status.success() {
            bail!("corvid make failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok(Some((
        format!("corvid make (process, {threads} threads)"),
        t,
    )))
}

fn print_table(rows: &[(String, Duration)], size: u64, lengths: &Lengths, runs: usize) {
    let base = rows[0].1.as_secs_f64();
    println!(
        "\nSHA-1 over {} bytes ({} pieces of {} KiB), best of {} runs, page cache warm:",
        size,
        lengths.piece_count(),
        lengths.piece_length() / 1024,
        runs
    );
    println!(
        "{:<42} {:>9} {:>10} {:>12}",
        "method", "seconds", "MB/s", "vs sha1sum"
    );
    for (name, t) in rows {
        let s = t.as_secs_f64();
        println!(
            "{:<42} {:>9.3} {:>10.0} {:>11.2}x",
            name,
            s,
            size as f64 / 1e6 / s,
            base / s
        );
    }
}

/// A fresh scratch directory under `dir` for the end-to-end run's output.
fn tempfile_dir(dir: &Path) -> Result<PathBuf> {
    let d = dir.join(format!("make-out-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
