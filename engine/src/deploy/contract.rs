//! The contract between the two halves of a deploy: `corvid deploy` here, and the
//! `corvid peer` it runs on every host over ssh. Both halves are built from this module,
//! so neither can drift from the other:
//!
//! - [`Exit`]: every exit code corvid uses, with the line `corvid --help` prints for it
//!   ([`Exit::help_text`]) and what the deployer says when a host's corvid ends with it
//!   ([`remote_exit_text`]).
//! - [`PeerCommand`]: the remote command line (`corvid peer --release-dest ...`), as an
//!   argument list the CLI's parser is tested against and as the quoted shell command
//!   ssh runs.
//! - [`PeerLine`]: the JSON lines the remote half prints with `--json` that the deployer
//!   reads (progress, release, done, installed), as serde types.
//!
//! The remote release steps themselves (receive the torrent, check an existing release,
//! place the new one) are in [`super::remote`], each failure with its [`Exit`].
//!

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ssh::{quote, quote_path, SSH_FAILED};
use crate::runtime::Network;

/// Exit codes of every corvid subcommand. The numbers are public API (scripts and the
/// deployer read them); the order of [`Exit::ALL`] is the order of `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Verification ran and found bad or missing data.
    DataBad = 1,
    /// Bad flags or arguments (clap's own code; also a `--hosts` entry that is not a
    /// host, or a `--dest` that is not UTF-8).
    Usage = 2,
    /// Bad input: unreadable or invalid torrent, missing or unshareable payload path.
    Input = 3,
    /// Cannot write the output (exists without --force, permission, disk full).
    Output = 4,
    /// A download made no progress for its stall timeout and gave up.
    GaveUp = 5,
    /// io_uring cannot be used on this machine (the message names the cause and fix).
    Unavailable = 6,
    /// Stopped by SIGINT/SIGTERM before the download completed.
    Interrupted = 7,
    /// `deploy`, `status`, `activate`: some hosts failed (the others may have
    /// succeeded).
    HostsFailed = 8,
    /// `peer --release-dest`: another corvid peer is working on the same DEST/TAG.
    Busy = 9,
    /// `peer --after-activate`: the command run after the activation failed or timed out.
    HookFailed = 10,
}

impl Exit {
    /// Every code, in `--help` order.
    pub const ALL: [Exit; 11] = [
        Exit::Ok,
        Exit::DataBad,
        Exit::Usage,
        Exit::Input,
        Exit::Output,
        Exit::GaveUp,
        Exit::Unavailable,
        Exit::Interrupted,
        Exit::HostsFailed,
        Exit::Busy,
        Exit::HookFailed,
    ];

    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The code for a process exit status, if corvid defines it.
    pub fn from_code(code: i32) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| i32::from(e.code()) == code)
    }

    /// Its line in `corvid --help`.
    pub fn help(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::DataBad => "verification found bad or missing data",
            Exit::Usage => "usage error (bad flags or arguments)",
            Exit::Input => "input error (invalid torrent, missing or unshareable payload)",
            Exit::Output => "output error (output exists without --force, cannot write, disk full)",
            Exit::GaveUp => "transfer gave up (no progress within --stall-timeout)",
            Exit::Unavailable => {
                "io_uring unavailable (kernel, sysctl or seccomp; the message says which)"
            }
            Exit::Interrupted => "interrupted by a signal before the download completed",
            Exit::HostsFailed => {
                "deploy/status/activate: some hosts failed (each is listed with its reason)"
            }
            Exit::Busy => {
                "peer: another corvid peer is working on the same release (DEST/.corvid/TAG.lock)"
            }
            Exit::HookFailed => {
                "peer, activate: the --after-activate or --check command failed (the release is active)"
            }
        }
    }

    /// What it means when a host's `corvid peer` (run by the deployer) ends with it;
    /// `None` for codes `corvid peer` does not use to report a failure.
    pub fn remote_meaning(self) -> Option<&'static str> {
        Some(match self {
            Exit::DataBad => "data failed verification",
            Exit::Usage => "usage error (remote corvid too old for these flags?)",
            Exit::Input => "input error (torrent, destination or listen network)",
            Exit::Output => "disk or output error (exists without --force, permission, disk full)",
            Exit::GaveUp => "stalled: no progress within the stall timeout",
            Exit::Unavailable => "io_uring unavailable on the host",
            Exit::Interrupted => "interrupted by a signal",
            Exit::Busy => "busy: another corvid peer is working on this release on the host",
            Exit::HookFailed => "the --after-activate command failed",
            Exit::Ok | Exit::HostsFailed => return None,
        })
    }

    /// The `Exit codes:` section of `corvid --help`, one line per code.
    pub fn help_text() -> String {
        let mut s = String::from("Exit codes:");
        for e in Exit::ALL {
            s.push_str(&format!("\n  {}  {}", e.code(), e.help()));
        }
        s
    }
}

/// The deployer's text for the exit status of a remote command: corvid's own codes
/// ([`Exit::remote_meaning`]), the shell's "cannot execute" codes, and ssh's own failure.
pub fn remote_exit_text(code: i32) -> &'static str {
    if let Some(text) = Exit::from_code(code).and_then(Exit::remote_meaning) {
        return text;
    }
    match code {
        126 | 127 => "corvid could not be executed on the host",
        SSH_FAILED => "ssh failed (unreachable, refused or authentication)",
        _ => "failed",
    }
}

/// One host's `corvid peer` for a release: what the deployer runs over ssh. The torrent
/// (and a private swarm's secret after it) go through the session's stdin, never on the
/// command line, where the host's process list would show the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCommand {
    /// `--remote-corvid`: absolute or `~/...` (expanded by the remote shell).
    pub corvid: String,
    /// The release base directory (UTF-8: the shell command is text).
    pub dest: String,
    pub tag: String,
    /// Length of the torrent on stdin.
    pub torrent_len: usize,
    /// The secret follows the torrent on stdin (as a length line and its bytes: the
    /// stdin is framed, `--stdin-control`, see [`super::remote::receive_torrent_framed`]).
    pub stdin_secret: bool,
    pub linger: Duration,
    pub stall_timeout: Duration,
    pub seeder: SocketAddr,
    pub activate: bool,
    pub force: bool,
    /// `--keep N`: prune after activating.
    pub keep: Option<usize>,
    /// `--after-activate CMD` and its `--hook-timeout`.
    pub after_activate: Option<(String, Duration)>,
    /// `--base TAG` (else the peer reuses the release `current` points at).
    pub base: Option<String>,
    /// `--listen-network CIDR`: the peer listens on (and dials from) its address there.
    pub listen_network: Option<Network>,
    /// The host's rack and its rack-mates, from the hosts file's `rack=` (issue 11).
    pub racks: Option<PeerRacks>,
    /// `--uplink`, bytes per second (passed as bits, tc's unit).
    pub uplink: Option<u64>,
}

/// What a host's peer is told of the racks (`--topology-rules RULES --rack NAME`): its
/// own rack by name (not by the address it sends from, which the deployer may see
/// otherwise) and the rules of that rack only. Every rule of a deploy's topology is one
/// host's address, so a rack's own rules tell its rack-mates from everyone else, and the
/// command line grows with the rack, not the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRacks {
    pub rack: String,
    /// `ADDR rack=NAME` rules separated by `;`.
    pub rules: String,
}

/// The line a merged check-and-peer session ([`PeerCommand::after_probe`]) prints once
/// its check is complete; it then waits for the deployer's go.
pub const PROBE_END: &str = "corvid-probe-end";

/// What the deployer writes to a waiting merged session before the torrent: `go`, the
/// seeder's address, the torrent's length, a line each. Anything else, or the end of the
/// session's stdin, ends the session with status 0 and no peer.
pub fn go_lines(seeder: SocketAddr, torrent_len: usize) -> String {
    format!("go\n{seeder}\n{torrent_len}\n")
}

impl PeerCommand {
    /// The arguments after the program, as `corvid peer` parses them.
    pub fn args(&self) -> Vec<String> {
        self.arg_list().0
    }

    /// [`PeerCommand::args`], and where in it the two values stand that a merged
    /// session learns only after its check: the torrent's length and the seeder.
    fn arg_list(&self) -> (Vec<String>, [usize; 2]) {
        let mut a: Vec<String> = vec![
            "peer".into(),
            "--release-dest".into(),
            self.dest.clone(),
            "--tag".into(),
            self.tag.clone(),
            "--stdin-torrent".into(),
            self.torrent_len.to_string(),
        ];
        let len_at = a.len() - 1;
        if self.stdin_secret {
            a.push("--stdin-secret".into());
        }
        // The session's stdin stays open; its end stops the linger once the fleet is done.
        a.push("--stdin-control".into());
        a.extend([
            "--linger".into(),
            format!("{}ms", self.linger.as_millis()),
            "--stall-timeout".into(),
            format!("{}ms", self.stall_timeout.as_millis()),
            "--peer".into(),
            self.seeder.to_string(),
            "--json".into(),
        ]);
        let seeder_at = a.len() - 2;
        if self.activate {
            a.push("--activate".into());
        }
        if self.force {
            a.push("--force".into());
        }
        if let Some(n) = self.keep {
            a.extend(["--keep".into(), n.to_string()]);
        }
        if let Some((cmd, timeout)) = &self.after_activate {
            a.extend([
                "--after-activate".into(),
                cmd.clone(),
                "--hook-timeout".into(),
                format!("{}ms", timeout.as_millis()),
            ]);
        }
        if let Some(b) = &self.base {
            a.extend(["--base".into(), b.clone()]);
        }
        if let Some(n) = &self.listen_network {
            a.extend(["--listen-network".into(), n.to_string()]);
        }
        if let Some(r) = &self.racks {
            a.extend([
                "--topology-rules".into(),
                r.rules.clone(),
                "--rack".into(),
                r.rack.clone(),
            ]);
        }
        if let Some(u) = self.uplink {
            a.extend(["--uplink".into(), format!("{}bit", u.saturating_mul(8))]);
        }
        (a, [len_at, seeder_at])
    }

    /// The remote shell command: `exec CORVID ARGS...`, every argument quoted.
    pub fn shell(&self) -> String {
        let mut cmd = format!("exec {}", quote_path(&self.corvid));
        for a in self.args() {
            cmd.push(' ');
            cmd.push_str(&quote(&a));
        }
        cmd
    }

    /// One session for a host's check and its peer: `probe` (the check's commands, whose
    /// stdout the deployer reads), then [`PROBE_END`], then the wait for [`go_lines`] on
    /// stdin, then [`PeerCommand::shell`] with the seeder and the torrent's length as
    /// read (this command's own `seeder` and `torrent_len` are not used). So a host that
    /// already runs this corvid costs the deploy one ssh session, not two: the seeder's
    /// port and the torrent are only known after every host was checked.
    ///
    /// The shell's `read` takes its line byte by byte from a pipe (POSIX), so what
    /// follows on stdin, the torrent, is left whole for corvid. An unexpected first line
    /// or the end of stdin (the deployer installs corvid on this host first, or gave up)
    /// exits 0 without running anything.
    pub fn after_probe(&self, probe: &str) -> String {
        let (args, [len_at, seeder_at]) = self.arg_list();
        let mut cmd = format!(
            "{probe}; echo {end}; IFS= read -r CORVID_GO || exit 0; \
             [ \"$CORVID_GO\" = go ] || exit 0; IFS= read -r CORVID_SEEDER || exit 0; \
             IFS= read -r CORVID_TORRENT_LEN || exit 0; exec {}",
            quote_path(&self.corvid),
            end = quote(PROBE_END),
        );
        for (i, a) in args.iter().enumerate() {
            cmd.push(' ');
            match i {
                _ if i == len_at => cmd.push_str("\"$CORVID_TORRENT_LEN\""),
                _ if i == seeder_at => cmd.push_str("\"$CORVID_SEEDER\""),
                _ => cmd.push_str(&quote(a)),
            }
        }
        cmd
    }
}

/// What a `release` line says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Downloaded, verified and renamed into place.
    Installed,
    /// `releases/TAG` was there already with the same content.
    AlreadyPresent,
}

/// The `release` line: the release is in place on the host (a linger may follow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseLine {
    pub status: ReleaseStatus,
    /// `DEST/releases/TAG`, for people reading the log.
    pub path: String,
    /// `DEST/current` points at it.
    pub activated: bool,
    /// Releases `--keep` removed after the activation, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// What `--after-activate` did, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookResult>,
}

/// How a host's `--after-activate` command (or `--check`) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookResult {
    /// Its exit status; `None` when it was killed (by a signal, or at its timeout).
    pub status: Option<i32>,
    pub timed_out: bool,
    /// The last lines it printed (stdout and stderr together).
    pub tail: Vec<String>,
}

impl HookResult {
    pub fn ok(&self) -> bool {
        self.status == Some(0) && !self.timed_out
    }
}

/// Of the final `done` line's report, what the deployer reads (the report has more).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneTransfer {
    /// From the node's start on the host (its start-up check and base reuse included)
    /// until the download was complete; `None` when it never was.
    #[serde(
        default,
        rename = "download_s",
        deserialize_with = "ms_of_seconds",
        serialize_with = "seconds_of_ms"
    )]
    pub download_ms: Option<u64>,
    #[serde(default)]
    pub bytes_from_seeder: u64,
    #[serde(default)]
    pub bytes_from_peers: u64,
    #[serde(default)]
    pub resume: DoneResume,
}

/// The `resume` object of the `done` report: what the start-up check found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneResume {
    /// Present when the peer had a base release to reuse.
    #[serde(default)]
    pub reuse: Option<DoneReuse>,
}

/// Of `resume.reuse`, the bytes the host took from its base release instead of the swarm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneReuse {
    #[serde(default)]
    pub reused_bytes: u64,
    /// How long filling from the base took on the host.
    #[serde(default)]
    pub fill_ms: u64,
}

/// A report's seconds (a JSON number, or null) as whole milliseconds, so the line types
/// stay `Eq`.
fn ms_of_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s: Option<f64> = Option::deserialize(d)?;
    Ok(s.filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| (s * 1000.0).round() as u64))
}

fn seconds_of_ms<S: serde::Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_f64(*ms as f64 / 1000.0),
        None => s.serialize_none(),
    }
}

impl DoneTransfer {
    /// Bytes the host took from a release it already had.
    pub fn bytes_reused(&self) -> u64 {
        self.resume.reuse.map_or(0, |r| r.reused_bytes)
    }

    /// How long filling from that release took, when there was one.
    pub fn fill_ms(&self) -> Option<u64> {
        self.resume.reuse.map(|r| r.fill_ms)
    }
}

/// A `--json` line of the remote half, by its `event` field: the ones the deployer acts
/// on. Other events (and fields) are for people and are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PeerLine {
    /// Bytes downloaded so far.
    Progress {
        bytes_down: u64,
    },
    Release(ReleaseLine),
    /// The node's final report.
    Done {
        report: DoneTransfer,
    },
    /// The swarm install's script put the new binary in place.
    Installed,
}

impl PeerLine {
    /// One output line, `None` for lines the deployer does not act on (other events,
    /// text, a line cut short).
    pub fn parse(line: &str) -> Option<PeerLine> {
        serde_json::from_str(line).ok()
    }

    /// The line as the remote half prints it (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("PeerLine has only string keys and plain values")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_lists_every_code_once_in_order() {
        let h = Exit::help_text();
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines[0], "Exit codes:");
        assert_eq!(lines.len(), Exit::ALL.len() + 1);
        for (i, l) in lines[1..].iter().enumerate() {
            assert!(l.starts_with(&format!("  {i}  ")), "{l:?}");
        }
        assert_eq!(
            lines[10],
            "  9  peer: another corvid peer is working on the same release (DEST/.corvid/TAG.lock)"
        );
        for c in 0..=10 {
            assert_eq!(Exit::from_code(c).map(|e| i32::from(e.code())), Some(c));
        }
        assert_eq!(Exit::from_code(11), None);
        assert_eq!(Exit::from_code(-1), None);
    }

    #[test]
    fn remote_exit_statuses_read_as_the_deployer_reports_them() {
        assert_eq!(
            remote_exit_text(5),
            "stalled: no progress within the stall timeout"
        );
        assert_eq!(
            remote_exit_text(9),
            "busy: another corvid peer is working on this release on the host"
        );
        assert_eq!(
            remote_exit_text(127),
            "corvid could not be executed on the host"
        );
        assert_eq!(
            remote_exit_text(255),
            "ssh failed (unreachable, refused or authentication)"
        );
        assert_eq!(remote_exit_text(8), "failed");
        assert_eq!(remote_exit_text(-1), "failed");
    }

    #[test]
    fn reads_the_lines_the_deployer_acts_on_and_skips_the_rest() {
        let done = r#"{"event":"done","report":{"elapsed_s":1.5,"bytes_from_seeder":10,"bytes_from_peers":20,"piece_latency_us":{"count":1}}}"#;
        assert_eq!(
            PeerLine::parse(done),
            Some(PeerLine::Done {
                report: DoneTransfer {
                    bytes_from_seeder: 10,
                    bytes_from_peers: 20,
                    ..DoneTransfer::default()
                }
            })
        );
        let reused = r#"{"event":"done","report":{"bytes_from_seeder":1,"download_s":2.3456,"resume":{"record":"off","reuse":{"base":"/r/v1","reused_bytes":4096,"reused_pieces":1,"fill_ms":812}}}}"#;
        match PeerLine::parse(reused) {
            Some(PeerLine::Done { report }) => {
                assert_eq!(report.bytes_reused(), 4096);
                assert_eq!(report.fill_ms(), Some(812));
                assert_eq!(report.download_ms, Some(2346));
            }
            other => panic!("{other:?}"),
        }
        // A download that never completed says null; an older peer says nothing.
        let never = r#"{"event":"done","report":{"download_s":null}}"#;
        match PeerLine::parse(never) {
            Some(PeerLine::Done { report }) => {
                assert_eq!((report.download_ms, report.fill_ms()), (None, None))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            PeerLine::parse(r#"{"event":"progress","bytes_down":7,"pieces":1}"#),
            Some(PeerLine::Progress { bytes_down: 7 })
        );
        assert_eq!(
            PeerLine::parse(r#"{"event":"installed"}"#),
            Some(PeerLine::Installed)
        );
        for skipped in [
            r#"{"event":"listening","peer_addr":"1.2.3.4:5"}"#,
            r#"{"event":"progress"}"#,
            r#"{"event":"release","status":"exploded","path":"/x","activated":false}"#,
            r#"{"event":"done","rep"#,
            "corvid: error: x",
            "",
        ] {
            assert_eq!(PeerLine::parse(skipped), None, "{skipped}");
        }
    }

    #[test]
    fn the_release_line_round_trips_byte_for_byte() {
        let line = PeerLine::Release(ReleaseLine {
            status: ReleaseStatus::AlreadyPresent,
            path: "/srv/app/releases/v\"1\u{1b}".into(),
            activated: true,
            pruned: Vec::new(),
            hook: None,
        });
        let text = line.to_json();
        assert_eq!(
            text,
            r#"{"event":"release","status":"already_present","path":"/srv/app/releases/v\"1\u001b","activated":true}"#
        );
        assert_eq!(PeerLine::parse(&text), Some(line));
    }

    #[test]
    fn the_command_line_quotes_every_argument_and_carries_no_secret() {
        let c = PeerCommand {
            corvid: "~/bin/corvid".into(),
            dest: "/srv/my app'; rm -rf /".into(),
            tag: "v1".into(),
            torrent_len: 123,
            stdin_secret: true,
            linger: Duration::from_secs(2),
            stall_timeout: Duration::from_millis(1500),
            seeder: "127.0.0.1:6881".parse().unwrap(),
            activate: true,
            force: false,
            keep: Some(3),
            after_activate: Some((
                "systemctl reload 'app'; echo $CORVID_RELEASE".into(),
                Duration::from_secs(5),
            )),
            base: Some("v0 x".into()),
            listen_network: Some("10.98.0.0/16".parse().unwrap()),
            racks: Some(PeerRacks {
                rack: "r1".into(),
                rules: "10.0.0.1 rack=r1;10.0.0.2 rack=r1".into(),
            }),
            uplink: Some(1_250_000_000),
        };
        let args = c.args();
        assert!(
            args.windows(2)
                .any(|w| w == ["--listen-network", "10.98.0.0/16"]),
            "{args:?}"
        );
        assert!(
            args.windows(2).any(|w| w == ["--uplink", "10000000000bit"]),
            "{args:?}"
        );
        let at = args.iter().position(|a| a == "--topology-rules").unwrap();
        assert_eq!(
            args[at..at + 4],
            [
                "--topology-rules",
                "10.0.0.1 rack=r1;10.0.0.2 rack=r1",
                "--rack",
                "r1"
            ]
        );
        assert_eq!(
            args[..3],
            ["peer", "--release-dest", "/srv/my app'; rm -rf /"]
        );
        assert!(args.contains(&"--stdin-secret".to_string()));
        assert!(args.contains(&"--stdin-control".to_string()));
        assert!(args.contains(&"--activate".to_string()));
        assert!(!args.contains(&"--force".to_string()));
        // The shell gives back exactly the arguments.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                c.shell()
                    .replacen("exec ~/'bin/corvid'", "printf '%s\\n'", 1),
            )
            .output()
            .unwrap();
        let echoed: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(echoed, args);
    }

    /// The merged session: the check's output and [`PROBE_END`] first; on the go lines
    /// corvid gets exactly [`PeerCommand::args`] with the seeder and length read, and the
    /// rest of stdin (the torrent) whole; without them nothing runs and the status is 0.
    #[test]
    fn a_merged_session_checks_then_runs_the_peer_it_is_told_to() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let corvid = d.path().join("fake corvid");
        std::fs::write(
            &corvid,
            "#!/bin/sh\nprintf 'arg %s\\n' \"$@\"; printf 'stdin '; cat\n",
        )
        .unwrap();
        std::fs::set_permissions(&corvid, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = PeerCommand {
            corvid: corvid.to_str().unwrap().into(),
            dest: "/srv/a b".into(),
            tag: "v1".into(),
            torrent_len: 0,
            stdin_secret: false,
            linger: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(2),
            seeder: "0.0.0.0:1".parse().unwrap(),
            activate: true,
            force: false,
            keep: None,
            after_activate: None,
            base: None,
            listen_network: None,
            racks: None,
            uplink: None,
        };
        let run = |stdin: &[u8]| {
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(c.after_probe("echo 'checked here'"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            let out = child.wait_with_output().unwrap();
            (out.status.code(), String::from_utf8(out.stdout).unwrap())
        };
        let seeder: SocketAddr = "[fe80::1]:6881".parse().unwrap();
        let torrent = b"d4:infod6:lengthi1eee\nand a second line";
        let mut stdin = go_lines(seeder, torrent.len()).into_bytes();
        stdin.extend_from_slice(torrent);
        let (code, out) = run(&stdin);
        assert_eq!(code, Some(0), "{out}");
        let (check, peer) = out.split_once(&format!("{PROBE_END}\n")).unwrap();
        assert_eq!(check, "checked here\n");
        let want = PeerCommand {
            seeder,
            torrent_len: torrent.len(),
            ..c.clone()
        };
        let mut lines = want
            .args()
            .iter()
            .map(|a| format!("arg {a}\n"))
            .collect::<String>();
        lines.push_str("stdin ");
        lines.push_str(std::str::from_utf8(torrent).unwrap());
        assert_eq!(peer, lines);
        // Told nothing (stdin closed), or something else: the check alone.
        for stdin in [&b""[..], b"stop\n", b"go\n"] {
            let (code, out) = run(stdin);
            assert_eq!(code, Some(0));
            assert_eq!(out, format!("checked here\n{PROBE_END}\n"));
        }
    }
}
