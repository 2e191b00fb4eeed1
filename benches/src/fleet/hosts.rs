//! The simulated fleet itself: `scripts/fleet` brings it up and down, runs a command on
//! one host or on every receiver, empties the receive directories and checks by SHA-1
//! what each receiver holds.

use crate::baselines::{self, Job};
use crate::corvid::Runner;
use crate::payload::Payload;
use crate::proc;
use crate::units::Rate;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running fleet; dropping it runs `scripts/fleet --name NAME down`.
pub struct Fleet {
    script: PathBuf,
    name: String,
    pub n: usize,
    pub disk: PathBuf,
    pub ssh_config: PathBuf,
    pub addrs: Vec<String>,
    cleanup_key: u64,
}

fn fleet_cmd(script: &Path, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(script);
    c.arg("--name").arg(name).args(args);
    c
}

fn fleet_out(script: &Path, name: &str, args: &[&str]) -> Result<String> {
    let f = proc::run_ok(
        &format!("scripts/fleet {}", args.join(" ")),
        &mut fleet_cmd(script, name, args),
        Duration::from_secs(30),
    )?;
    Ok(f.stdout.join("\n").trim().to_string())
}

fn fleet_down(script: &Path, name: &str) {
    match proc::run(
        "scripts/fleet down",
        &mut fleet_cmd(script, name, &["down"]),
        Duration::from_secs(120),
    ) {
        Ok(f) if f.exit.success() => {}
        Ok(f) => eprintln!(
            "fleet {name}: down failed ({}): {}",
            f.exit.describe(),
            f.stderr_tail
        ),
        Err(e) => eprintln!("fleet {name}: down failed: {e:#}"),
    }
}

impl Fleet {
    pub fn up(script: &Path, name: &str, n: usize, rate: Option<&Rate>) -> Result<Fleet> {
        // Registered before `up` so an interrupt during the build still tears it down.
        let (s, nm) = (script.to_path_buf(), name.to_string());
        let cleanup_key = proc::on_interrupt(Box::new(move || fleet_down(&s, &nm)));
        let mut fleet = Fleet {
            script: script.to_path_buf(),
            name: name.to_string(),
            n,
            disk: PathBuf::new(),
            ssh_config: PathBuf::new(),
            addrs: Vec::new(),
            cleanup_key,
        };
        let mut args = vec!["up".to_string(), n.to_string()];
        if let Some(r) = rate {
            args.push("--rate".into());
            args.push(r.tc.clone());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        proc::run_ok(
            "scripts/fleet up",
            &mut fleet_cmd(script, name, &argv),
            Duration::from_secs(60 + 2 * n as u64),
        )?;
        fleet.disk = PathBuf::from(fleet_out(script, name, &["disk"])?);
        fleet.ssh_config = PathBuf::from(fleet_out(script, name, &["ssh-config"])?);
        for h in 0..=n {
            fleet
                .addrs
                .push(fleet_out(script, name, &["addr", &h.to_string()])?);
        }
        Ok(fleet)
    }

    pub fn runner(&self, host: usize) -> Runner {
        Runner::Fleet {
            script: self.script.clone(),
            name: self.name.clone(),
            host,
        }
    }

    pub(crate) fn recv_dir(&self) -> PathBuf {
        self.disk.join("recv")
    }

    /// Runs `argv(h)` on every receiver at once.
    pub(crate) fn on_receivers(
        &self,
        what: &str,
        argv: impl Fn(usize) -> Vec<String>,
    ) -> Result<Vec<baselines::JobDone>> {
        let jobs = (1..=self.n)
            .map(|h| Job {
                host: format!("h{h}"),
                cmd: self.runner(h).command(&argv(h)),
            })
            .collect();
        baselines::run_jobs(what, jobs, true, Duration::from_secs(120 + self.n as u64))
    }

    /// Empties every receiver's receive directory.
    pub(crate) fn clear(&self) -> Result<()> {
        let d = self.recv_dir().display().to_string();
        self.on_receivers("clear receive dirs", |_| {
            vec![
                "sh".into(),
                "-c".into(),
                format!("rm -rf '{d}' && mkdir -p '{d}'"),
            ]
        })?;
        Ok(())
    }

    /// SHA-1 of the payload on every receiver: one line per host that differs (empty
    /// when all match). An error means the check itself could not run.
    pub(crate) fn verify(&self, p: &Payload) -> Result<Vec<String>> {
        let file = self.recv_dir().join(p.name()).display().to_string();
        let jobs = (1..=self.n)
            .map(|h| Job {
                host: format!("h{h}"),
                cmd: self.runner(h).command(&[
                    "sh".to_string(),
                    "-c".into(),
                    // A missing file prints "missing" rather than failing the batch, so
                    // the report can name every host that lacks it.
                    format!("if [ -f '{file}' ]; then stat -c %s '{file}'; sha1sum '{file}'; else echo missing; fi"),
                ]),
            })
            .collect();
        let done = baselines::run_jobs("verify", jobs, true, Duration::from_secs(300))?;
        let mut bad = Vec::new();
        for d in &done {
            match d.stdout.as_slice() {
                [size, sum, ..] => {
                    let sum = sum.split_whitespace().next().unwrap_or("");
                    if size.trim() != p.size.to_string() {
                        bad.push(format!(
                            "{}: {} has {} bytes, expected {}",
                            d.host,
                            file,
                            size.trim(),
                            p.size
                        ));
                    } else if sum != p.sha1 {
                        bad.push(format!(
                            "{}: {} has SHA-1 {sum}, expected {}",
                            d.host, file, p.sha1
                        ));
                    }
                }
                _ => bad.push(format!("{}: {file} is missing", d.host)),
            }
        }
        Ok(bad)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        fleet_down(&self.script, &self.name);
        proc::forget_cleanup(self.cleanup_key);
    }
}

pub(crate) fn locate_script(arg: &Option<PathBuf>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match arg {
        Some(p) => vec![p.clone()],
        None => vec![
            PathBuf::from("scripts/fleet"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fleet"),
        ],
    };
    for c in &candidates {
        if c.is_file() {
            return c
                .canonicalize()
                .with_context(|| format!("resolving {}", c.display()));
        }
    }
    bail!(
        "scripts/fleet not found (tried {}); run from the repository root or pass --fleet-script",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn default_fleet_name() -> String {
    format!("b{}", std::process::id() % 10_000_000)
}
