//! `delta`: a release that changed a little, to every host of the simulated fleet at
//! once: `corvid deploy` (hosts fill the new release from the one `current` points at,
//! then fetch what changed) against `rsync -a` from h0 to every host in parallel (its
//! delta algorithm against the previous copy), in the same run.
//!
//! Two shapes of change: `files` (a tree of many files, 1% of them rewritten) and `block`
//! (one large file, 4 KiB edited in place in every 100th MiB). Both methods start from
//! the previous release already on every host: corvid's by a full `corvid deploy` (timed
//! and reported as the full-deploy reference), rsync's by a local copy into each host's
//! directory (not timed). Reported per method: wall time until every host holds the new
//! release, and bytes on the wire (corvid: what hosts received from the seeder and from
//! each other; rsync: `Total bytes sent` from h0).
//!
//! corvid is on every host as an earlier deploy leaves it (stripped, on the host's own
//! disk). With `--xfs` every host keeps both methods' directories on an XFS filesystem
//! with reflinks (a loop-mounted image per host, inside the host's mount namespace), so
//! a release's unchanged files are clones of the previous one's; otherwise they are on
//! the fleet's disk (this machine's, ext4 here), where each is a copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::baselines::{self, Job};
use crate::fleet::{default_fleet_name, Fleet};
use crate::json::{self, Json};
use crate::units;

#[derive(Args, Debug)]
pub struct DeltaArgs {
    /// Release size.
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    pub size: u64,
    /// Files in the `files` shape.
    #[arg(long, default_value_t = 200)]
    pub files: usize,
    /// Receivers (h0 deploys).
    #[arg(long, default_value_t = 16)]
    pub peers: usize,
    /// Link rate of every host, as tc reads it (e.g. 100mbit, 1gbit, none).
    #[arg(long, default_value = "100mbit")]
    pub rate: String,
    /// The corvid binary to measure (hosts run it from the same path).
    #[arg(long, default_value = "target/release/corvid")]
    pub corvid: PathBuf,
    /// Scratch directory for the releases.
    #[arg(long, default_value = "target/bench-data/delta")]
    pub dir: PathBuf,
    /// Where results.json goes [default: benches/runs/<date>-<hostname>/delta-<time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub fleet_script: Option<PathBuf>,
    /// Deploy with `--align` (BEP 47 pad files).
    #[arg(long)]
    pub align: bool,
    /// Put every host's releases (and rsync's copy) on XFS with reflinks (needs root,
    /// mkfs.xfs and loop devices).
    #[arg(long)]
    pub xfs: bool,
    /// Deploy with `--no-hash-cache` (the deployer hashes the whole release every time).
    #[arg(long)]
    pub no_hash_cache: bool,
    /// Only draw DIR/chart.svg from the DIR/results.json of an earlier run, and exit.
    #[arg(long, value_name = "DIR")]
    pub chart: Option<PathBuf>,
}

/// The run's chart: each shape's wall times by method, from its results.json.
fn chart(doc: &Json) -> Result<String> {
    let num = |k: &str| doc.get(k).and_then(Json::as_f64).unwrap_or(f64::NAN);
    let rate = doc.get("rate").and_then(Json::as_str).unwrap_or("?");
    let mut groups: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    let Some(Json::Arr(results)) = doc.get("results") else {
        bail!("results.json has no results");
    };
    for r in results {
        let shape = r
            .get("shape")
            .and_then(Json::as_str)
            .unwrap_or("?")
            .to_string();
        let method = r
            .get("method")
            .and_then(Json::as_str)
            .unwrap_or("?")
            .to_string();
        let secs = r.get("seconds").and_then(Json::as_f64).unwrap_or(f64::NAN);
        match groups.iter_mut().find(|g| g.0 == shape) {
            Some(g) => g.1.push((method, secs)),
            None => groups.push((shape, vec![(method, secs)])),
        }
    }
    let title = format!(
        "delta: {} to {} hosts at {rate}, 1% changed (files: 200 files; block: one file)",
        units::fmt_bytes(num("size") as u64),
        num("peers")
    );
    Ok(crate::svg::delta_chart(&title, &groups))
}

/// The per-host XFS images, mounted at `DISK/xfs` in each host's mount namespace;
/// unmounted and removed on drop (before the fleet goes).
struct XfsDisks<'a> {
    fleet: &'a Fleet,
    images: Vec<PathBuf>,
}

impl XfsDisks<'_> {
    fn mount<'a>(fleet: &'a Fleet, dir: &Path) -> Result<XfsDisks<'a>> {
        let mut disks = XfsDisks {
            fleet,
            images: Vec::new(),
        };
        let at = fleet.disk.join("xfs");
        for h in 1..=fleet.n {
            let img = dir.join(format!("xfs-h{h}.img"));
            let _ = std::fs::remove_file(&img);
            std::fs::File::create(&img)?.set_len(2 << 30)?;
            disks.images.push(img.clone());
            let st = Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&img)
                .status()
                .context("mkfs.xfs (apt-get install xfsprogs)")?;
            if !st.success() {
                bail!("mkfs.xfs {} failed", img.display());
            }
        }
        crate::fleet_deploy::on_hosts(fleet, "mount the XFS images", |h| {
            format!(
                "mkdir -p '{}' && mount -o loop '{}' '{}'",
                at.display(),
                disks.images[h - 1].display(),
                at.display()
            )
        })?;
        Ok(disks)
    }
}

impl Drop for XfsDisks<'_> {
    fn drop(&mut self) {
        let at = self.fleet.disk.join("xfs");
        let _ = crate::fleet_deploy::on_hosts(self.fleet, "unmount the XFS images", |_| {
            format!("umount '{}'", at.display())
        });
        for img in &self.images {
            let _ = std::fs::remove_file(img);
        }
    }
}

/// Fast deterministic bytes (xorshift64*), distinct per seed.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

fn write_file(path: &Path, len: usize, seed: u64) -> Result<()> {
    let mut b = vec![0u8; len];
    fill(&mut b, seed);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, b).with_context(|| format!("writing {}", path.display()))
}

/// A changed file gets a newer mtime than its old version (generated in the same second),
/// as a rebuilt file would, so rsync's size-and-mtime quick check looks at it.
fn touch_later(path: &Path) -> Result<()> {
    let t = std::time::SystemTime::now() + Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(t)?;
    Ok(())
}

/// The `files` shape: `n` files of unequal sizes adding up to about `size`, in 10
/// directories; v2 rewrites every 100th file (same size, new bytes). Returns the
/// release directories and the bytes changed.
fn files_shape(dir: &Path, size: u64, n: usize) -> Result<(PathBuf, PathBuf, u64)> {
    let (v1, v2) = (dir.join("files-v1"), dir.join("files-v2"));
    let _ = std::fs::remove_dir_all(&v1);
    let _ = std::fs::remove_dir_all(&v2);
    let avg = size / n as u64;
    let mut changed = 0;
    for i in 0..n {
        // 50%..150% of the average, deterministic.
        let len = (avg / 2 + (avg * ((i as u64 * 37) % 100)) / 100) as usize;
        let rel = format!("d{}/f{i:04}.bin", i % 10);
        write_file(&v1.join(&rel), len, i as u64)?;
        if i % 100 == 50 {
            write_file(&v2.join(&rel), len, 1_000_000 + i as u64)?;
            touch_later(&v2.join(&rel))?;
            changed += len as u64;
        } else {
            std::fs::create_dir_all(v2.join(&rel).parent().expect("has a parent"))?;
            std::fs::copy(v1.join(&rel), v2.join(&rel))?;
            // As a build that did not touch the file: rsync's quick check skips it.
            let t = std::fs::metadata(v1.join(&rel))?.modified()?;
            std::fs::File::options()
                .write(true)
                .open(v2.join(&rel))?
                .set_modified(t)?;
        }
    }
    Ok((v1, v2, changed))
}

/// The `block` shape: one file of `size`; v2 has 4 KiB changed at the middle of every
/// 100th MiB.
fn block_shape(dir: &Path, size: u64) -> Result<(PathBuf, PathBuf, u64)> {
    let (v1, v2) = (dir.join("block-v1"), dir.join("block-v2"));
    let _ = std::fs::remove_dir_all(&v1);
    let _ = std::fs::remove_dir_all(&v2);
    write_file(&v1.join("data.bin"), size as usize, 42)?;
    let mut b = std::fs::read(v1.join("data.bin"))?;
    let mib = 1usize << 20;
    let mut changed = 0;
    let mut at = 50 * mib + mib / 2;
    while at + 4096 <= b.len() {
        fill(&mut b[at..at + 4096], at as u64);
        changed += 4096;
        at += 100 * mib;
    }
    std::fs::create_dir_all(&v2)?;
    std::fs::write(v2.join("data.bin"), b)?;
    touch_later(&v2.join("data.bin"))?;
    Ok((v1, v2, changed))
}

#[derive(Debug)]
struct Measured {
    shape: &'static str,
    method: &'static str,
    seconds: f64,
    wire_bytes: u64,
    /// corvid: bytes hosts took from the release they had.
    reused_bytes: u64,
    /// corvid: what the seeder uploaded.
    seeder_bytes: u64,
    /// corvid: where the time went, from the deploy's own lines.
    phases: Option<Phases>,
}

/// A corvid deploy's time by phase: the deployer's (probes and ssh, then hashing the
/// release for the torrent) until its seeder is up, then each host's: its node's time to
/// the download complete (start-up, the base fill, the swarm), the base fill in it, and
/// the rest of its time after the seeder was up (ssh session, torrent receive, the check
/// of an existing release, placing the release).
#[derive(Debug, Default, Clone)]
struct Phases {
    seeder_up_s: f64,
    /// When the hosts' checks ended (NaN from a corvid that does not say).
    checked_s: f64,
    torrent_s: f64,
    /// Release bytes the deployer hashed for the torrent (the rest came from its piece
    /// cache); NaN from a corvid that does not say.
    hashed_bytes: f64,
    /// Per host, in seconds: its check done and its peer told to go (deploy clock; NaN
    /// from a corvid that does not say), its release in place, its node's time, its fill.
    checked: Vec<f64>,
    go: Vec<f64>,
    released: Vec<f64>,
    download: Vec<f64>,
    fill: Vec<f64>,
}

/// (min, median, max) of `v`, NaNs (values a host did not report) left out; NaN when
/// nothing is left.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => (f64::NAN, f64::NAN, f64::NAN),
        n => (s[0], s[n / 2], s[n - 1]),
    }
}

impl Phases {
    fn line(&self) -> String {
        let r = spread(&self.released);
        let d = spread(&self.download);
        let f = spread(&self.fill);
        // Swarm and start-up: the node's time less its fill, per host.
        let swarm: Vec<f64> = self
            .download
            .iter()
            .zip(&self.fill)
            .map(|(d, f)| d - f)
            .collect();
        let s = spread(&swarm);
        // Outside the node: released (deploy clock) - told to go (or, from a corvid that
        // does not say, the seeder up) - node time.
        let outside: Vec<f64> = (0..self.released.len())
            .map(|i| {
                let go = self.go.get(i).copied().filter(|g| !g.is_nan());
                self.released[i] - go.unwrap_or(self.seeder_up_s) - self.download[i]
            })
            .collect();
        let o = spread(&outside);
        let (c, g) = (spread(&self.checked), spread(&self.go));
        format!(
            "checks done at {:.2}s, seeder up at {:.2}s (torrent hashed in {:.2}s, {} of it hashed); per host (min/median/max): checked \
             {:.2}/{:.2}/{:.2}s, told to go {:.2}/{:.2}/{:.2}s, base fill \
             {:.2}/{:.2}/{:.2}s, node after the fill (start-up, swarm) {:.2}/{:.2}/{:.2}s, \
             node {:.2}/{:.2}/{:.2}s, outside the node after its go (torrent, \
             check, place) {:.2}/{:.2}/{:.2}s; released {:.2}-{:.2}s",
            self.checked_s,
            self.seeder_up_s,
            self.torrent_s,
            if self.hashed_bytes.is_nan() {
                "?".to_string()
            } else {
                units::fmt_bytes(self.hashed_bytes as u64)
            },
            c.0,
            c.1,
            c.2,
            g.0,
            g.1,
            g.2,
            f.0,
            f.1,
            f.2,
            s.0,
            s.1,
            s.2,
            d.0,
            d.1,
            d.2,
            o.0,
            o.1,
            o.2,
            r.0,
            r.2
        )
    }

    fn json(&self) -> Json {
        let arr = |v: &[f64]| Json::Arr(v.iter().map(|x| Json::from(*x)).collect());
        Json::obj()
            .with("seeder_up_s", self.seeder_up_s)
            .with("checked_s", self.checked_s)
            .with("torrent_s", self.torrent_s)
            .with("hashed_bytes", self.hashed_bytes)
            .with("host_checked_s", arr(&self.checked))
            .with("go_s", arr(&self.go))
            .with("released_s", arr(&self.released))
            .with("download_s", arr(&self.download))
            .with("reuse_s", arr(&self.fill))
    }
}

fn json_u64(v: &Json, k: &str) -> u64 {
    v.get(k).and_then(Json::as_u64).unwrap_or(0)
}

impl Measured {
    fn json(&self) -> Json {
        Json::obj()
            .with("shape", self.shape)
            .with("method", self.method)
            .with("seconds", self.seconds)
            .with("wire_bytes", self.wire_bytes)
            .with("reused_bytes", self.reused_bytes)
            .with("seeder_bytes", self.seeder_bytes)
            .with(
                "phases",
                self.phases.as_ref().map_or(Json::Null, Phases::json),
            )
    }
}

/// What one corvid deploy measured: seconds, wire, reused, seeder bytes, phases.
type Deployed = (f64, u64, u64, u64, Phases);

/// `corvid deploy` from h0 to every host (`remote`: corvid on the hosts).
fn corvid_deploy(
    fleet: &Fleet,
    (corvid, remote): (&Path, &Path),
    src: &Path,
    dest: &str,
    tag: &str,
    (align, cache): (bool, Option<&Path>),
) -> Result<Deployed> {
    let hosts: Vec<String> = (1..=fleet.n).map(|h| format!("h{h}")).collect();
    let mut argv: Vec<String> = vec![
        corvid.display().to_string(),
        "deploy".into(),
        "--hosts".into(),
        hosts.join(","),
        "--src".into(),
        src.display().to_string(),
        "--dest".into(),
        dest.into(),
        "--tag".into(),
        tag.into(),
        "--activate".into(),
        "--remote-corvid".into(),
        remote.display().to_string(),
        "--ssh-option".into(),
        "-F".into(),
        "--ssh-option".into(),
        fleet.ssh_config.display().to_string(),
        "--linger".into(),
        "0s".into(),
        "--json".into(),
    ];
    if align {
        argv.push("--align".into());
    }
    match cache {
        Some(c) => argv.extend(["--hash-cache".into(), c.display().to_string()]),
        None => argv.push("--no-hash-cache".into()),
    }
    let t = Instant::now();
    let out = fleet
        .runner(0)
        .command(&argv)
        .output()
        .context("running corvid deploy on h0")?;
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "corvid deploy {tag} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (wire, reused, seeder, phases) = read_deploy_lines(&stdout);
    Ok((secs, wire, reused, seeder, phases))
}

/// A deploy's `--json` output: (wire, reused, seeder bytes, phases).
fn read_deploy_lines(stdout: &str) -> (u64, u64, u64, Phases) {
    let (mut wire, mut reused, mut seeder) = (0, 0, 0);
    let mut phases = Phases {
        checked_s: f64::NAN,
        ..Phases::default()
    };
    let f = |v: &Json, k: &str| v.get(k).and_then(Json::as_f64);
    for line in stdout.lines() {
        let Ok(v) = json::parse(line) else {
            continue;
        };
        match v.get("event").and_then(|e| e.as_str()) {
            Some("seeding") => {
                phases.seeder_up_s = f(&v, "at_s").unwrap_or(f64::NAN);
                if let Some(c) = f(&v, "checked_s") {
                    phases.checked_s = c;
                }
                phases.torrent_s = f(&v, "torrent_s").unwrap_or(f64::NAN);
                phases.hashed_bytes = f(&v, "hashed_bytes").unwrap_or(f64::NAN);
            }
            // Since the seeder no longer waits for the checks, their end is a line of its own.
            Some("checked") => phases.checked_s = f(&v, "at_s").unwrap_or(f64::NAN),
            Some("host") => {
                phases.checked.push(f(&v, "checked_s").unwrap_or(f64::NAN));
                phases.go.push(f(&v, "go_s").unwrap_or(f64::NAN));
                wire += json_u64(&v, "bytes_from_seeder") + json_u64(&v, "bytes_from_peers");
                reused += json_u64(&v, "bytes_reused");
                phases
                    .released
                    .push(f(&v, "duration_s").unwrap_or(f64::NAN));
                phases
                    .download
                    .push(f(&v, "download_s").unwrap_or(f64::NAN));
                phases.fill.push(f(&v, "reuse_s").unwrap_or(0.0));
            }
            Some("summary") => seeder = json_u64(&v, "seeder_uploaded"),
            _ => {}
        }
    }
    (wire, reused, seeder, phases)
}

/// The deployer's build directory as a build leaves it: `to` becomes a copy of `from`
/// where a file's size or mtime differs (every file when `to` is new), mtimes kept.
/// A rebuilt file is rewritten (new ctime), an unchanged one left alone (same inode and
/// ctime), as `make` or `cargo` leave their outputs.
fn rebuild(from: &Path, to: &Path) -> Result<()> {
    for e in walk(from)? {
        let rel = e.strip_prefix(from).expect("walked under it");
        let (a, b) = (std::fs::metadata(&e)?, std::fs::metadata(to.join(rel)).ok());
        if b.is_some_and(|b| b.len() == a.len() && b.modified().ok() == a.modified().ok()) {
            continue;
        }
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
        std::fs::copy(&e, &dst).with_context(|| format!("copying to {}", dst.display()))?;
        std::fs::File::options()
            .write(true)
            .open(&dst)?
            .set_modified(a.modified()?)?;
    }
    Ok(())
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

/// One shape: a full deploy of v1 (the reference), the delta deploy of v2 from it, and
/// rsync of v2 over a copy of v1, each checked on every host; the directories are
/// removed afterwards (each host holds three copies of the release meanwhile). corvid
/// deploys both from one build directory, `SHAPE-src`, which holds v1 and is then
/// rebuilt into v2 in place ([`rebuild`]): with the deployer's piece-hash cache (in
/// `cache`, emptied first) the unchanged files are not hashed again. The directory is
/// made before the fleet starts, and the first deploy waits until its files are older
/// than the cache's settling time, as a build directory is between builds.
fn measure_shape(
    fleet: &Fleet,
    bins: (&Path, &Path),
    disk: &str,
    shape: &'static str,
    (v1, v2, src): (&Path, &Path, &Path),
    (align, cache): (bool, Option<&Path>),
    made: Instant,
) -> Result<Vec<Measured>> {
    let dest = format!("{disk}/{shape}-app");
    let rs = format!("{disk}/{shape}-rsync");
    let mut results = Vec::new();
    if let Some(c) = cache {
        let _ = std::fs::remove_dir_all(c);
    }
    // corvid's SETTLE (2 s) and a tick.
    let settled = made + Duration::from_millis(2100);
    std::thread::sleep(settled.saturating_duration_since(Instant::now()));
    let opts = (align, cache);
    let (s, w, r, sd, ph) = corvid_deploy(fleet, bins, src, &dest, "v1", opts)?;
    results.push(Measured {
        shape,
        method: "corvid full deploy (v1)",
        seconds: s,
        wire_bytes: w,
        reused_bytes: r,
        seeder_bytes: sd,
        phases: Some(ph),
    });
    crate::fleet_deploy::on_hosts(fleet, "copy v1 for rsync", |_| {
        format!("mkdir -p '{rs}' && cp -a '{}/.' '{rs}'", v1.display())
    })?;
    rebuild(v2, src)?;
    let (s, w, r, sd, ph) = corvid_deploy(fleet, bins, src, &dest, "v2", opts)?;
    check_hosts(fleet, &format!("{dest}/releases/v2"), v2)?;
    results.push(Measured {
        shape,
        method: "corvid deploy v2 (delta)",
        seconds: s,
        wire_bytes: w,
        reused_bytes: r,
        seeder_bytes: sd,
        phases: Some(ph),
    });
    let (s, w) = rsync_all(fleet, v2, &rs)?;
    check_hosts(fleet, &rs, v2)?;
    results.push(Measured {
        shape,
        method: "rsync -a v2 to all hosts at once",
        seconds: s,
        wire_bytes: w,
        reused_bytes: 0,
        seeder_bytes: w,
        phases: None,
    });
    crate::fleet_deploy::on_hosts(fleet, "free the shape's directories", |_| {
        format!("rm -rf '{dest}' '{rs}'")
    })?;
    Ok(results)
}

/// `rsync -a --stats` from h0 to every host at once; returns (seconds, bytes sent).
fn rsync_all(fleet: &Fleet, src: &Path, dest: &str) -> Result<(f64, u64)> {
    let cfg = fleet.ssh_config.display().to_string();
    let jobs = (1..=fleet.n)
        .map(|h| {
            let mut argv = baselines::rsync_argv(
                &cfg,
                &format!("{}/", src.display()),
                &format!("h{h}:{dest}/"),
            );
            argv.insert(1, "-a".into());
            argv.insert(2, "--stats".into());
            Job {
                host: format!("h{h}"),
                cmd: fleet.runner(0).command(&argv),
            }
        })
        .collect();
    let t = Instant::now();
    let done = baselines::run_jobs("rsync", jobs, true, Duration::from_secs(3600))?;
    let secs = t.elapsed().as_secs_f64();
    let mut sent = 0u64;
    for d in &done {
        for l in &d.stdout {
            if let Some(rest) = l.strip_prefix("Total bytes sent: ") {
                sent += rest.replace(',', "").trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok((secs, sent))
}

/// Every host's `got` (a path in its own mount namespace) matches `want` byte for byte.
fn check_hosts(fleet: &Fleet, got: &str, want: &Path) -> Result<()> {
    crate::fleet_deploy::on_hosts(fleet, "compare the release", |_| {
        format!("diff -rq '{}' '{got}'", want.display())
    })
    .with_context(|| format!("a host's {got} differs from {}", want.display()))
}

pub fn run(a: DeltaArgs) -> Result<crate::Outcome> {
    if let Some(dir) = &a.chart {
        let text = std::fs::read_to_string(dir.join("results.json"))
            .with_context(|| format!("reading {}/results.json", dir.display()))?;
        let doc = json::parse(&text).map_err(|e| anyhow::anyhow!("results.json: {e}"))?;
        std::fs::write(dir.join("chart.svg"), chart(&doc)?)?;
        eprintln!("delta: chart in {}", dir.join("chart.svg").display());
        return Ok(crate::Outcome {
            failed: Vec::new(),
            data_loss: Vec::new(),
        });
    }
    let corvid = crate::corvid::locate(&a.corvid)?;
    let script = match &a.fleet_script {
        Some(p) => p.clone(),
        None => PathBuf::from("scripts/fleet"),
    }
    .canonicalize()
    .context("scripts/fleet (run from the repository root or pass --fleet-script)")?;
    let rate = units::parse_rate(&a.rate)?;
    std::fs::create_dir_all(&a.dir)?;
    let dir = a.dir.canonicalize()?;
    eprintln!(
        "delta: generating releases of {} in {}",
        units::fmt_bytes(a.size),
        dir.display()
    );
    let shapes = [
        ("files", files_shape(&dir, a.size, a.files)?),
        ("block", block_shape(&dir, a.size)?),
    ];
    // The deployer's build directories, holding v1 (see `measure_shape`).
    for (shape, (v1, _, _)) in &shapes {
        let src = dir.join(format!("{shape}-src"));
        let _ = std::fs::remove_dir_all(&src);
        rebuild(v1, &src)?;
    }
    let made = Instant::now();
    let cache = dir.join("hash-cache");
    let fleet = Fleet::up(&script, &default_fleet_name(), a.peers, rate.as_ref())?;
    // Dropped before the fleet: unmounted while the hosts' namespaces still exist.
    let xfs = if a.xfs {
        Some(XfsDisks::mount(&fleet, &dir)?)
    } else {
        None
    };
    let disk = match &xfs {
        Some(_) => fleet.disk.join("xfs"),
        None => fleet.disk.clone(),
    }
    .display()
    .to_string();
    // corvid on each host's own disk, stripped, as a deploy leaves it.
    let remote = fleet.disk.join("corvid-bin/corvid");
    let stripped = crate::fleet_deploy::stripped_binary(&corvid, &dir)?;
    crate::fleet_deploy::on_hosts(&fleet, "place corvid on the hosts", |_| {
        format!(
            "mkdir -p '{}' && cp '{}' '{}'",
            fleet.disk.join("corvid-bin").display(),
            stripped.display(),
            remote.display()
        )
    })?;
    let bins = (corvid.as_path(), remote.as_path());
    let mut results = Vec::new();
    for &(shape, (ref v1, ref v2, changed)) in &shapes {
        eprintln!("delta {shape}: {} changed", units::fmt_bytes(changed));
        let ms = measure_shape(
            &fleet,
            bins,
            &disk,
            shape,
            (v1, v2, &dir.join(format!("{shape}-src"))),
            (a.align, (!a.no_hash_cache).then_some(cache.as_path())),
            made,
        )?;
        for m in &ms {
            eprintln!(
                "  {:<36} {:>8.2} s  wire {:>10}  reused {:>10}",
                m.method,
                m.seconds,
                units::fmt_bytes(m.wire_bytes),
                units::fmt_bytes(m.reused_bytes)
            );
            if let Some(p) = &m.phases {
                eprintln!("    {}", p.line());
            }
        }
        results.extend(ms);
    }
    drop(xfs);
    drop(fleet);
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("benches/runs")
            .join(format!("{}-{}", crate::utc_stamp(false), crate::hostname()))
            .join(format!("delta-{}", crate::utc_stamp(true)))
    });
    std::fs::create_dir_all(&out)?;
    let doc = Json::obj()
        .with("scenario", "delta")
        .with("size", a.size)
        .with("files", a.files)
        .with("peers", a.peers)
        .with("rate", a.rate.as_str())
        .with("align", a.align)
        .with("xfs_reflink", a.xfs)
        .with("hash_cache", !a.no_hash_cache)
        .with(
            "results",
            Json::Arr(results.iter().map(Measured::json).collect()),
        );
    std::fs::write(out.join("results.json"), doc.pretty())?;
    std::fs::write(out.join("chart.svg"), chart(&doc)?)?;
    eprintln!("delta: results in {}", out.display());
    Ok(crate::Outcome {
        failed: Vec::new(),
        data_loss: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploys_lines_become_its_phases() {
        let out = [
            r#"{"event":"seeding","name":"v2","bytes":9,"pieces":1,"seeder":"a","tracker":"t","hosts":2,"at_s":2.500,"torrent_s":0.400,"hashed_bytes":4096}"#,
            r#"{"event":"checked","at_s":2.450,"failed":0}"#,
            r#"{"event":"host","host":"h1","result":"deployed","duration_s":6.000,"bytes_from_seeder":100,"bytes_from_peers":20,"bytes_reused":900,"download_s":3.000,"reuse_s":1.000,"checked_s":2.000,"go_s":2.000}"#,
            r#"{"event":"host","host":"h2","result":"deployed","duration_s":7.000,"bytes_from_seeder":0,"bytes_from_peers":120,"bytes_reused":900,"download_s":4.000,"reuse_s":2.500}"#,
            r#"{"event":"summary","seeder_uploaded":130}"#,
        ]
        .join("\n");
        let (wire, reused, seeder, p) = read_deploy_lines(&out);
        assert_eq!((wire, reused, seeder), (240, 1800, 130));
        assert_eq!(
            (p.seeder_up_s, p.torrent_s, p.hashed_bytes),
            (2.5, 0.4, 4096.0)
        );
        assert_eq!(p.fill, vec![1.0, 2.5]);
        let line = p.line();
        assert!(
            line.starts_with("checks done at 2.45s, seeder up at 2.50s (torrent hashed in 0.40s, 4.00 KiB of it hashed); per host (min/median/max): checked 2.00/2.00/2.00s, told to go 2.00/2.00/2.00s"),
            "{line}"
        );
        assert!(
            line.contains(
                "base fill 1.00/2.50/2.50s, node after the fill (start-up, swarm) 1.50/2.00/2.00s"
            ),
            "{line}"
        );
        // Outside the node: 6 - 2 - 3 (its go) and 7 - 2.5 (the seeder up) - 4.
        assert!(
            line.contains("check, place) 0.50/1.00/1.00s; released 6.00-7.00s"),
            "{line}"
        );
    }
}
