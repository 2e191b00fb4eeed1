//! Fleet methods `deploy` and `deploy-first`: the real `corvid deploy`, run on h0 over
//! the hosts' own sshd, end to end, as an operator runs it (default flags, `--activate`):
//! the command's wall time from start to exit is the run's time, so the check phase, the
//! torrent build, the seeder start, the peers' ssh sessions and their wind-down all count.
//! - `deploy`: corvid is already on every host, as an earlier deploy left it (this
//!   binary stripped of debug info, in a directory on each host's own disk; placed
//!   there untimed), so the install phase only probes it; a run in which any host
//!   installed corvid fails;
//! - `deploy-first`: no corvid on any host (that directory removed), so the deploy
//!   installs it first, as a new user's first deploy does.
//!
//! A host's time is its release in place (the deploy's own `duration_s`, from the
//! deploy's start). The phases are reported beside it (when the seeder was up, how long
//! the install took, when the last host held the release, when the command exited), so
//! a slow run says where its time went. The release goes to `deploy-app` on each host's
//! disk; afterwards the receive directory is made a link to its `current`, so the
//! harness's SHA-1 check reads what the deploy activated (and its next clear removes
//! only the link).
//!
//! `CORVID_BENCH_DEPLOY_ARGS` (whitespace-separated) is appended to the deploy's command
//! line, to measure a flag an operator might add (e.g. `--ssh-option
//! -oKexAlgorithms=curve25519-sha256`); each run prints the command line it ran.

use crate::baselines::{self, Job};
use crate::fleet::Fleet;
use crate::json::{self, Json};
use crate::payload::Payload;
use crate::proc::{Proc, ProcEvent, Stream};
use crate::report::{CorvidDetail, Run};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one deploy's output said, with the time (since the command started) each line
/// arrived.
#[derive(Debug, Default)]
struct Seen {
    seeding_at: Option<f64>,
    peers_stopped_at: Option<f64>,
    hosts: Vec<HostSeen>,
    summary: Option<Json>,
    exit_at: f64,
}

/// One host's line.
#[derive(Debug, Default, PartialEq)]
struct HostSeen {
    host: String,
    result: String,
    duration_s: f64,
    from_seeder: u64,
    from_peers: u64,
    installed_corvid: bool,
    /// Its check done and its peer told to go (deploy clock; NaN where not said).
    checked_s: f64,
    go_s: f64,
}

impl Seen {
    fn line(&mut self, at: f64, text: &str) {
        let Ok(v) = json::parse(text) else {
            return;
        };
        let num = |k: &str| v.get(k).and_then(Json::as_u64).unwrap_or(0);
        match v.get("event").and_then(Json::as_str) {
            Some("seeding") => self.seeding_at = Some(at),
            Some("peers_stopped") => self.peers_stopped_at = Some(at),
            Some("host") => self.hosts.push(HostSeen {
                host: v.get("host").and_then(Json::as_str).unwrap_or("").into(),
                result: v.get("result").and_then(Json::as_str).unwrap_or("").into(),
                duration_s: v
                    .get("duration_s")
                    .and_then(Json::as_f64)
                    .unwrap_or(f64::NAN),
                from_seeder: num("bytes_from_seeder"),
                from_peers: num("bytes_from_peers"),
                installed_corvid: matches!(v.get("installed_corvid"), Some(Json::Bool(true))),
                checked_s: v
                    .get("checked_s")
                    .and_then(Json::as_f64)
                    .unwrap_or(f64::NAN),
                go_s: v.get("go_s").and_then(Json::as_f64).unwrap_or(f64::NAN),
            }),
            Some("summary") => self.summary = Some(v),
            _ => {}
        }
    }

    fn summary_f64(&self, k: &str) -> f64 {
        self.summary
            .as_ref()
            .and_then(|s| s.get(k))
            .and_then(Json::as_f64)
            .unwrap_or(f64::NAN)
    }

    /// One line of where the time went.
    fn phases_line(&self) -> String {
        let mut ds: Vec<f64> = self.hosts.iter().map(|h| h.duration_s).collect();
        ds.sort_by(f64::total_cmp);
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.2}s"));
        let range = |f: &dyn Fn(&HostSeen) -> f64| {
            let v: Vec<f64> = self.hosts.iter().map(f).filter(|x| !x.is_nan()).collect();
            match (
                v.iter().copied().reduce(f64::min),
                v.iter().copied().reduce(f64::max),
            ) {
                (Some(a), Some(b)) => format!("{a:.2}-{b:.2}s"),
                _ => "-".to_string(),
            }
        };
        format!(
            "deploy phases: seeder up at {} (install {:.2}s of it), hosts checked {}, told to go {}, \
             released {:.2}-{:.2}s (deploy clock), peers stopped at {}, exit at {:.2}s (deploy's \
             own elapsed {:.2}s)",
            opt(self.seeding_at),
            self.summary_f64("corvid_install_s"),
            range(&|h| h.checked_s),
            range(&|h| h.go_s),
            ds.first().copied().unwrap_or(f64::NAN),
            ds.last().copied().unwrap_or(f64::NAN),
            opt(self.peers_stopped_at),
            self.exit_at,
            self.summary_f64("elapsed_s"),
        )
    }
}

/// Runs one deploy of `p` to h1..hN (tag `r{run_no}`), `first`: with no corvid on the
/// hosts beforehand. The receive directories are empty (the harness cleared them).
pub fn run(
    fleet: &Fleet,
    bin: &Path,
    p: &Payload,
    work: &Path,
    first: bool,
    run_no: u16,
    timeout: Duration,
) -> Result<Run> {
    let src = release_dir(p, work)?;
    let (recv, app) = (fleet.disk.join("recv"), fleet.disk.join("deploy-app"));
    on_hosts(fleet, "clear the deploy directory", |_| {
        format!("rm -rf '{}'", app.display())
    })?;
    let dir = fleet.disk.join("corvid-bin");
    let remote = dir.join("corvid");
    if first {
        on_hosts(fleet, "remove corvid from the hosts", |_| {
            format!("rm -rf '{}'", dir.display())
        })?;
    } else {
        let stripped = stripped_binary(bin, work)?;
        on_hosts(fleet, "place corvid on the hosts", |_| {
            format!(
                "mkdir -p '{}' && cp '{}' '{}'",
                dir.display(),
                stripped.display(),
                remote.display()
            )
        })?;
    }
    let argv = deploy_argv(fleet, bin, &src, &app, &remote, run_no);
    if !extra_args().is_empty() {
        println!("  deploy command: {}", argv.join(" "));
    }
    let seen = watch(fleet, &argv, timeout)?;
    println!("  {}", seen.phases_line());
    let bad: Vec<String> = seen
        .hosts
        .iter()
        .filter(|h| h.result != "deployed")
        .map(|h| format!("{}: {}", h.host, h.result))
        .collect();
    if seen.hosts.len() != fleet.n || !bad.is_empty() {
        bail!(
            "deploy: {} host line(s) of {}, not deployed: {}",
            seen.hosts.len(),
            fleet.n,
            bad.join(", ")
        );
    }
    let installed = seen.hosts.iter().filter(|h| h.installed_corvid).count();
    if !first && installed > 0 {
        bail!("deploy: corvid was to be present, yet {installed} host(s) installed it");
    }
    on_hosts(fleet, "make recv a link to current", |_| {
        format!(
            "rm -rf '{r}' && ln -s '{}' '{r}'",
            app.join("current").display(),
            r = recv.display()
        )
    })?;
    Ok(Run {
        seconds: seen.exit_at,
        hosts: seen
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.duration_s))
            .collect(),
        corvid: Some(CorvidDetail {
            seed_ready_s: seen.seeding_at.unwrap_or(f64::NAN),
            from_seeder: seen.hosts.iter().map(|h| h.from_seeder).sum(),
            from_peers: seen.hosts.iter().map(|h| h.from_peers).sum(),
            reports: seen
                .summary
                .iter()
                .map(|s| ("deploy summary".to_string(), s.clone()))
                .collect(),
            ..CorvidDetail::default()
        }),
        ..Run::default()
    })
}

/// The release directory: the payload alone in a directory of its own (a hard link on
/// this machine's side, a copy where that fails), so `--src` holds nothing else.
fn release_dir(p: &Payload, work: &Path) -> Result<PathBuf> {
    let src = work.join("deploy-src");
    let file = src.join(p.name());
    if std::fs::metadata(&file).is_ok_and(|m| m.len() == p.size) {
        return Ok(src);
    }
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let _ = std::fs::remove_file(&file);
    if std::fs::hard_link(&p.path, &file).is_err() {
        std::fs::copy(&p.path, &file)
            .with_context(|| format!("copying the payload to {}", file.display()))?;
    }
    Ok(src)
}

/// `corvid deploy` of `src` to h1..hN at `app`, as an operator runs it (`--activate`,
/// default linger), with the fleet's ssh config.
fn deploy_argv(
    fleet: &Fleet,
    bin: &Path,
    src: &Path,
    app: &Path,
    remote: &Path,
    run_no: u16,
) -> Vec<String> {
    let hosts: Vec<String> = (1..=fleet.n).map(|h| format!("h{h}")).collect();
    [
        bin.display().to_string(),
        "deploy".into(),
        "--hosts".into(),
        hosts.join(","),
        "--src".into(),
        src.display().to_string(),
        "--dest".into(),
        app.display().to_string(),
        "--tag".into(),
        format!("r{run_no}"),
        "--activate".into(),
        "--remote-corvid".into(),
        remote.display().to_string(),
        "--ssh-option".into(),
        "-F".into(),
        "--ssh-option".into(),
        fleet.ssh_config.display().to_string(),
        "--json".into(),
    ]
    .into_iter()
    .chain(extra_args())
    .collect()
}

/// `CORVID_BENCH_DEPLOY_ARGS`, split at whitespace (none when unset).
fn extra_args() -> Vec<String> {
    std::env::var("CORVID_BENCH_DEPLOY_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `bin` without debug info (`objcopy --strip-debug`, as `corvid deploy` ships it), made
/// once per harness run.
pub fn stripped_binary(bin: &Path, work: &Path) -> Result<PathBuf> {
    let out = work.join("corvid-stripped");
    if !out.is_file() {
        crate::proc::run_ok(
            "objcopy --strip-debug",
            std::process::Command::new("objcopy")
                .arg("--strip-debug")
                .arg(bin)
                .arg(&out),
            Duration::from_secs(60),
        )?;
    }
    Ok(out)
}

/// Runs `sh -c script(h)` on every receiver at once.
pub fn on_hosts(fleet: &Fleet, what: &str, script: impl Fn(usize) -> String) -> Result<()> {
    let jobs = (1..=fleet.n)
        .map(|h| Job {
            host: format!("h{h}"),
            cmd: fleet
                .runner(h)
                .command(&["sh".to_string(), "-c".into(), script(h)]),
        })
        .collect();
    baselines::run_jobs(what, jobs, true, Duration::from_secs(60))?;
    Ok(())
}

/// Runs `argv` on h0 and reads its JSON lines as they come, until it exits.
fn watch(fleet: &Fleet, argv: &[String], timeout: Duration) -> Result<Seen> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    let proc = Proc::spawn(
        "corvid deploy on h0",
        &mut fleet.runner(0).command(argv),
        0,
        tx,
    )?;
    let deadline = t0 + timeout;
    let mut seen = Seen::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ProcEvent::Line {
                stream: Stream::Out,
                at,
                text,
                ..
            }) => seen.line(at.duration_since(t0).as_secs_f64(), &text),
            Ok(ProcEvent::Line { .. }) => {}
            Ok(ProcEvent::Exit { at, exit, .. }) => {
                seen.exit_at = at.duration_since(t0).as_secs_f64();
                if !exit.success() {
                    bail!(
                        "corvid deploy failed ({}): {}; {}",
                        exit.describe(),
                        proc.stderr_tail(),
                        seen.phases_line()
                    );
                }
                return Ok(seen);
            }
            Err(_) => {
                return Err(anyhow!(
                    "corvid deploy did not end within {:.0}s: {}",
                    timeout.as_secs_f64(),
                    proc.stderr_tail()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_lines_become_phases_and_host_times() {
        let mut s = Seen::default();
        s.line(1.5, r#"{"event":"seeding","name":"x","bytes":1,"pieces":1,"seeder":"a","tracker":"t","hosts":2}"#);
        s.line(7.0, r#"{"event":"host","host":"h1","result":"deployed","duration_s":6.200,"bytes_from_seeder":10,"bytes_from_peers":5,"installed_corvid":false,"checked_s":0.800,"go_s":1.600}"#);
        s.line(7.1, r#"{"event":"peers_stopped","peers":1}"#);
        s.line(7.2, r#"{"event":"host","host":"h2","result":"failed","duration_s":6.900,"bytes_from_seeder":0,"bytes_from_peers":0,"installed_corvid":true}"#);
        s.line(
            7.3,
            r#"{"event":"summary","elapsed_s":7.100,"corvid_install_s":0.250}"#,
        );
        s.line(7.4, "not json");
        s.exit_at = 7.5;
        assert_eq!(s.seeding_at, Some(1.5));
        assert_eq!(s.peers_stopped_at, Some(7.1));
        assert_eq!(s.hosts.len(), 2);
        let h1 = HostSeen {
            host: "h1".into(),
            result: "deployed".into(),
            duration_s: 6.2,
            from_seeder: 10,
            from_peers: 5,
            installed_corvid: false,
            checked_s: 0.8,
            go_s: 1.6,
        };
        assert_eq!(s.hosts[0], h1);
        assert_eq!(s.hosts[1].result, "failed");
        assert!(s.hosts[1].installed_corvid);
        assert_eq!(
            s.phases_line(),
            "deploy phases: seeder up at 1.50s (install 0.25s of it), hosts checked 0.80-0.80s, \
             told to go 1.60-1.60s, released 6.20-6.90s (deploy clock), peers stopped at 7.10s, \
             exit at 7.50s (deploy's own elapsed 7.10s)"
        );
    }
}
