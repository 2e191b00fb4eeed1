//! A private sshd on 127.0.0.1 for the `link` scenario's scp and rsync baselines:
//! generated host and client keys, a free port, root login by key only, run in the
//! foreground (`-D`) so it is our child and is killed by its PID when dropped.
//!
//! Readiness is sshd's own "Server listening on" log line (with `-e` it logs to
//! stderr), not a guessed delay.

use crate::proc::{self, Proc, ProcEvent, Stream};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The ssh client alias the generated config defines.
pub const HOST: &str = "corvid-bench-local";

pub struct Sshd {
    proc: Proc,
    _events: Receiver<ProcEvent>,
    /// ssh client config (`ssh -F`) that reaches this sshd as [`HOST`].
    pub client_config: PathBuf,
    pub port: u16,
}

impl Sshd {
    pub fn start(work: &Path) -> Result<Sshd> {
        let dir = work.join("sshd");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        for key in ["host_key", "id"] {
            proc::run_ok(
                "ssh-keygen",
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "corvid-bench", "-f"])
                    .arg(dir.join(key)),
                Duration::from_secs(20),
            )?;
        }
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys"))
            .context("writing authorized_keys")?;
        let port = free_port()?;
        let conf = dir.join("sshd_config");
        std::fs::write(
            &conf,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host_key\nPidFile none\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nLogLevel INFO\nSubsystem sftp internal-sftp\n",
                d = dir.display()
            ),
        )
        .context("writing sshd_config")?;
        let client_config = dir.join("ssh_config");
        std::fs::write(
            &client_config,
            format!(
                "Host {HOST}\n    HostName 127.0.0.1\n    Port {port}\n    User root\n    \
                 IdentityFile {d}/id\n    IdentitiesOnly yes\n    StrictHostKeyChecking no\n    \
                 UserKnownHostsFile /dev/null\n    BatchMode yes\n    LogLevel ERROR\n    \
                 ConnectTimeout 5\n",
                d = dir.display()
            ),
        )
        .context("writing ssh_config")?;

        let sshd = which("sshd", &["/usr/sbin/sshd", "/usr/bin/sshd"])?;
        let (tx, rx) = mpsc::channel();
        let proc = Proc::spawn(
            "sshd",
            Command::new(&sshd).arg("-D").arg("-e").arg("-f").arg(&conf),
            0,
            tx,
        )?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(ProcEvent::Line {
                    stream: Stream::Err,
                    text,
                    ..
                }) if text.contains("Server listening on") => break,
                Ok(ProcEvent::Line { .. }) => {}
                Ok(ProcEvent::Exit { exit, .. }) => bail!(
                    "private sshd exited at start ({}): {}",
                    exit.describe(),
                    proc.stderr_tail()
                ),
                Err(_) => bail!(
                    "private sshd did not report listening within 15s: {}",
                    proc.stderr_tail()
                ),
            }
        }
        Ok(Sshd {
            proc,
            _events: rx,
            client_config,
            port,
        })
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

// Dropping `proc` kills sshd by PID (see `Proc`'s Drop); the listener goes with it.

/// A port the kernel just handed out on 127.0.0.1; closed again before use, so another
/// process could take it in between (unlikely; the server then fails to bind, loudly).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Resolves a program: the first existing candidate path, or a PATH lookup.
pub fn which(name: &str, candidates: &[&str]) -> Result<PathBuf> {
    for c in candidates {
        if Path::new(c).is_file() {
            return Ok(PathBuf::from(c));
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("{name} not found; install it (scripts/test-deps installs the baselines)")
}
