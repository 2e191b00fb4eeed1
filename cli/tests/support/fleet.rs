//! The simulated fleet (scripts/fleet) for tests: a guard that brings it up under a name
//! of its own and takes it down when dropped, pass or fail, plus `corvid` run on a host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn fleet_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fleet")
}

/// The fleet needs root (namespaces, iptables, sshd): these tests fail saying so, never
/// pass silently (CI runs them as root).
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} needs root (network namespaces, iptables, sshd for the simulated fleet); \
         run the tests as root, as CI does (scripts/test)"
    );
}

/// corvid-netem, the delayer scripts/fleet runs where the kernel has no sch_netem: built
/// by the corvid-bench package into the same target directory as `corvid`.
pub fn netem_bin() -> PathBuf {
    let bin = super::corvid_bin().with_file_name("corvid-netem");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p corvid-bench --bin corvid-netem` \
         (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A fleet that is taken down when the guard is dropped.
pub struct Fleet {
    pub name: String,
}

impl Fleet {
    /// Hosts h0..h`n`, with `up`'s extra options (`--rate`, `--delay`, `--loss`).
    pub fn up(tag: &str, n: usize, opts: &[&str]) -> Fleet {
        require_root(tag);
        let name = format!(
            "{tag}{}{}",
            std::process::id() % 10_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let f = Fleet { name };
        let mut args = vec!["up".to_string(), n.to_string()];
        args.extend(opts.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = f.script(&refs);
        assert!(
            out.status.success(),
            "fleet up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        f
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(fleet_script())
            .arg("--name")
            .arg(&self.name)
            .args(args)
            .env("CORVID_NETEM", netem_bin());
        c
    }

    pub fn script(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run scripts/fleet")
    }

    /// Runs the script and fails the test naming the command when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "scripts/fleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn addr(&self, host: usize) -> String {
        self.ok(&["addr", &host.to_string()]).trim().to_string()
    }

    /// `corvid ARGS` on host `host` (its network and mount namespace).
    pub fn corvid(&self, host: usize, args: &[&str]) -> Command {
        let mut c = self.command(&["exec", &host.to_string()]);
        c.arg(super::corvid_bin()).args(args);
        c
    }

    /// Host `host`'s fault counters (`scripts/fleet faults`), by name.
    pub fn faults(&self, host: usize) -> Vec<(String, String)> {
        self.ok(&["faults", &host.to_string()])
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// A numeric fault counter of host `host`.
    pub fn fault_count(&self, host: usize, key: &str) -> u64 {
        let all = self.faults(host);
        all.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {key} in h{host}'s faults: {all:?}"))
    }

    /// Round-trip time of a TCP connect (SYN to SYN-ACK) from host `from` to `to`'s sshd,
    /// in milliseconds, timed inside the namespace by bash.
    pub fn connect_rtt_ms(&self, from: usize, to: usize) -> f64 {
        let script = format!(
            "s=$(date +%s%N); exec 3<>/dev/tcp/{}/22; e=$(date +%s%N); exec 3>&-; echo $(( (e - s) / 1000 ))",
            self.addr(to)
        );
        let out = self.ok(&[
            "exec",
            &from.to_string(),
            "timeout",
            "20",
            "bash",
            "-c",
            &script,
        ]);
        let us: f64 = out
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("connect time from h{from} to h{to}: {out:?}"));
        us / 1000.0
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}
