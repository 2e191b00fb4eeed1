//! The fleet methods that run a swarm: `corvid` (its seeder with the embedded tracker on
//! h0, a peer on every receiver) and `stock` (opentracker, a libtorrent seeder, aria2c).

use super::{Trial, TRACKER_BASE_PORT};
use crate::baselines::{self, Job};
use crate::corvid::{self, PeerSpec, Swarm};
use crate::cpu::CpuSample;
use crate::json::{self, Json};
use crate::proc::{self, Proc, ProcEvent, Stream};
use crate::report::{self, Run};
use crate::trial::RunError;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A torrent of the payload announcing to a tracker on h0, made by `corvid make`.
pub(crate) struct Made {
    pub(crate) bin: PathBuf,
    pub(crate) torrent: PathBuf,
    pub(crate) tracker_port: u16,
    /// How long `corvid make` took.
    pub(crate) make_s: f64,
}

/// Makes this run's torrent (each run its own tracker port, so a lingering tracker of
/// the previous run cannot answer).
pub(crate) fn make_torrent(t: &Trial) -> Result<Made> {
    let (c, fleet) = (t.s.c, t.fleet);
    let bin = corvid::locate(&c.corvid)?;
    let torrent =
        t.s.work
            .path()
            .join(format!("fleet-{}-{}.torrent", fleet.n, t.run_no));
    let _ = std::fs::remove_file(&torrent);
    let tracker_port = TRACKER_BASE_PORT + t.run_no;
    let make_s = corvid::make(
        &bin,
        &t.s.payload.path,
        &torrent,
        &format!("http://{}:{tracker_port}/announce", fleet.addrs[0]),
        c.piece_size.as_deref(),
    )?
    .as_secs_f64();
    Ok(Made {
        bin,
        torrent,
        tracker_port,
        make_s,
    })
}

/// corvid's seeder and embedded tracker on h0, a peer on every receiver.
/// `--uplink RATE` for corvid on a shaped fleet, nothing on unshaped links.
fn uplink_args(t: &Trial) -> Vec<String> {
    t.s.rate
        .as_ref()
        .map(|r| vec!["--uplink".into(), format!("{}bit", r.bits_per_sec as u64)])
        .unwrap_or_default()
}

pub(super) fn run_corvid(t: &Trial, cpu0: &mut Option<CpuSample>) -> Result<Run, RunError> {
    let fleet = t.fleet;
    let made = make_torrent(t)?;
    let a0 = &fleet.addrs[0];
    *cpu0 = CpuSample::now();
    let swarm = Swarm {
        bin: &made.bin,
        torrent: &made.torrent,
        data_parent: t.s.payload.dir(),
        seed_runner: fleet.runner(0),
        seed_host: "h0".into(),
        seed_listen: format!("{a0}:0"),
        tracker_listen: format!("{a0}:{}", made.tracker_port),
        peers: (1..=fleet.n)
            .map(|h| PeerSpec {
                host: format!("h{h}"),
                runner: fleet.runner(h),
                dest_dir: fleet.recv_dir(),
                listen: format!("{}:0", fleet.addrs[h]),
            })
            .collect(),
        linger: t.s.a.linger,
        timeout: t.timeout,
        // Every host paces its uploads to share its link (see the engine's
        // `swarm/pace.rs`) when it knows the link's rate; a shaped fleet knows it.
        seed_args: uplink_args(t),
        peer_args: uplink_args(t),
    };
    let o = corvid::run_swarm(&swarm)?;
    let mut run = crate::link::swarm_run(o, made.make_s);
    if let Some(seed) = run.procs.first_mut() {
        seed.host = "h0".into();
    }
    Ok(run)
}

/// The stock-client swarm: opentracker and a libtorrent seeder on h0, then aria2c on every
/// receiver at once; a host completes when its aria2c exits 0. The seeder's upload
/// (libtorrent's payload counter) is reported as the seeder's copies. `cpu0` is reset once
/// the seeder serves, so set-up is not counted.
pub(super) fn run_stock(t: &Trial, cpu0: &mut Option<CpuSample>) -> Result<Run, RunError> {
    let fleet = t.fleet;
    let made = make_torrent(t)?;
    let stock = StockSeed::start(t, &made)?;
    *cpu0 = CpuSample::now();
    let torrent = made.torrent.display().to_string();
    let recv = fleet.recv_dir().display().to_string();
    let jobs = (1..=fleet.n)
        .map(|h| Job {
            host: format!("h{h}"),
            cmd: fleet
                .runner(h)
                .command(&baselines::aria2_argv(&torrent, &recv)),
        })
        .collect();
    let done = baselines::run_jobs("stock (aria2c)", jobs, true, t.timeout)?;
    let seeder_up = stock.stop();
    Ok(Run {
        seconds: done.iter().map(|d| d.seconds).fold(0.0, f64::max),
        hosts: done.iter().map(|d| (d.host.clone(), d.seconds)).collect(),
        // Only the seeder's upload is known for stock clients; the rest stays empty.
        corvid: Some(report::CorvidDetail {
            from_seeder: seeder_up,
            ..report::CorvidDetail::default()
        }),
        ..Run::default()
    })
}

/// opentracker (event index 0) and the libtorrent seeder (index 1) on h0, serving.
struct StockSeed {
    _tracker: Proc,
    seed: Proc,
    events: mpsc::Receiver<ProcEvent>,
}

impl StockSeed {
    /// Starts both and waits until the seeder prints `seeding`.
    fn start(t: &Trial, made: &Made) -> Result<StockSeed> {
        let (fleet, work) = (t.fleet, t.s.work.path());
        let a0 = &fleet.addrs[0];
        let port = made.tracker_port.to_string();
        let ot_dir = work.join(format!("opentracker-{port}"));
        whitelist(&made.bin, &made.torrent, &ot_dir)?;
        let script = work.join("lt_seed.py");
        std::fs::write(&script, baselines::LT_SEED_PY).context("write lt_seed.py")?;
        let (tx, rx) = mpsc::channel();
        let ot_argv = [
            "sh".to_string(),
            "-c".into(),
            // The access list is read relative to `-d`.
            format!(
                "exec opentracker -i {a0} -p {port} -P {port} -d '{}' -w whitelist.txt",
                ot_dir.display()
            ),
        ];
        let tracker = Proc::spawn(
            "opentracker on h0",
            &mut fleet.runner(0).command(&ot_argv),
            0,
            tx.clone(),
        )?;
        let seed_argv = [
            "/usr/bin/python3".to_string(),
            script.display().to_string(),
            made.torrent.display().to_string(),
            t.s.payload.dir().display().to_string(),
            a0.clone(),
            format!("{}", t.timeout.as_secs() + 60),
        ];
        let seed = Proc::spawn(
            "libtorrent seed on h0",
            &mut fleet.runner(0).command(&seed_argv),
            1,
            tx,
        )?;
        let s = StockSeed {
            _tracker: tracker,
            seed,
            events: rx,
        };
        s.wait_seeding()?;
        Ok(s)
    }

    fn wait_seeding(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ProcEvent::Line {
                    idx: 1,
                    stream: Stream::Out,
                    text,
                    ..
                }) if text == "seeding" => return Ok(()),
                Ok(ProcEvent::Exit { idx, exit, .. }) => bail!(
                    "stock: {} exited before the seeder served ({}): {}",
                    if idx == 0 {
                        "opentracker"
                    } else {
                        "libtorrent seed"
                    },
                    exit.describe(),
                    self.seed.stderr_tail()
                ),
                Ok(_) => {}
                Err(_) => bail!(
                    "stock: libtorrent seed printed no `seeding` within 60s: {}",
                    self.seed.stderr_tail()
                ),
            }
        }
    }

    /// Stops the seeder; returns the upload counter it prints on SIGTERM (0 if none came
    /// within 10 s). The tracker is killed on drop.
    fn stop(self) -> u64 {
        self.seed.signal(libc::SIGTERM);
        let mut seeder_up = 0;
        let stop_by = Instant::now() + Duration::from_secs(10);
        loop {
            let left = stop_by.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ProcEvent::Line {
                    idx: 1,
                    stream: Stream::Out,
                    text,
                    ..
                }) => {
                    if let Some(v) = text.strip_prefix("up ").and_then(|v| v.parse().ok()) {
                        seeder_up = v;
                    }
                }
                Ok(ProcEvent::Exit { idx: 1, .. }) | Err(_) => return seeder_up,
                Ok(_) => {}
            }
        }
    }
}

/// opentracker serves only whitelisted torrents (Debian's build): writes
/// `dir/whitelist.txt` holding this torrent's info-hash, as `corvid info --json` reports it.
fn whitelist(bin: &Path, torrent: &Path, dir: &Path) -> Result<()> {
    let info = proc::run_ok(
        "corvid info",
        Command::new(bin).arg("info").arg(torrent).arg("--json"),
        Duration::from_secs(30),
    )?;
    let text = info.stdout.join("\n");
    let hash = json::parse(&text)
        .ok()
        .and_then(|v| {
            v.get("info_hash")
                .and_then(Json::as_str)
                .map(str::to_string)
        })
        .filter(|h| h.len() == 40)
        .ok_or_else(|| anyhow!("corvid info printed no info_hash: {text}"))?;
    std::fs::create_dir_all(dir).context("opentracker dir")?;
    std::fs::write(dir.join("whitelist.txt"), format!("{hash}\n")).context("whitelist")?;
    Ok(())
}
