//! Getting corvid onto the hosts, before the release can be deployed with it.
//!
//! The check phase probes every host over ssh: the client address it sees us at, the
//! remote corvid's `--version` and SHA-1, and whether `sha1sum` exists there. Hosts then
//! fall in three groups ([`Found`]): up to date; a corvid that runs but differs (another
//! version or build); none, or one that does not run. Those that need this binary get it
//! one of two ways ([`route`]):
//!
//! - ssh stream: the binary through the session's stdin into a temporary file, `chmod`,
//!   `mv` over the old one. The deployer's uplink carries one full copy per host.
//! - swarm: when at least `--swarm-install-min` hosts need it, the deployer makes a
//!   torrent of its own binary (in memory, [`SWARM_PIECE`] pieces), seeds it on the
//!   deploy's tracker, and every host whose old corvid still runs uses that OLD corvid as
//!   a peer (`OLD peer corvid.torrent DIR --json`, the command the release uses too): the
//!   hosts trade pieces among themselves, so the deployer uploads a fraction of the
//!   copies. Each host then checks the whole file's SHA-1 with `sha1sum` (the old corvid
//!   verified every piece already; this guards against an old corvid's own bugs),
//!   `chmod 755`, and renames it over the old one. The rename happens after the old peer
//!   exited, so nothing holds the new file open for writing when it is executed later
//!   (which would fail with ETXTBSY).
//!
//! Hosts with no usable corvid, and any host where the swarm fails (an old corvid too old
//! for the flags, a stall, a timeout, a wrong SHA-1), get the ssh stream; the per-host
//! result says which way it went and why ([`CorvidInstall`]). Every session has a
//! deadline; a host whose install fails fails alone.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use sha1::{Digest, Sha1};

use crate::metainfo::{self, BuildOptions, Payload};
use crate::node::{NodeError, NodeReport, StopFlag};
use crate::peer::auth::Secret;
use crate::storage::FileSpec;

use super::contract::{remote_exit_text, PeerLine};
use super::host_error::{HostError, RemoteFailure};
use super::hosts::for_each_host;
use super::plan::DeployPlan;
use super::seeder::{seeder_config, spawn_seeder, SeederError};
use super::ssh::{quote, quote_path, receive_files};

mod binary_seeder;
pub use binary_seeder::BinarySeederError;
use binary_seeder::*;

/// Piece size of the binary's torrent: small, so even a 10 MiB release build has 40
/// pieces for the hosts to trade (a whole-file piece could not be shared until done).
pub const SWARM_PIECE: u64 = 256 * 1024;
/// The probe session: connect, `--version`, `sha1sum` of the remote binary.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Streaming the binary over ssh (tens of MiB, a slow link).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(600);
/// The remote old corvid's download of the new one (its `--stall-timeout` ends it sooner
/// when nothing moves); the session gets a little more, to report why.
pub const SWARM_TIMEOUT: Duration = Duration::from_secs(300);
/// Most a host keeps seeding the binary after it has it. Peers trade pieces while they
/// download, so a long linger adds little, and every second of it delays the release.
pub const SWARM_LINGER_MAX: Duration = Duration::from_secs(3);
/// The name of the binary inside its torrent (and of the file the old corvid writes).
const BINARY_NAME: &str = "corvid";

/// This corvid: what every host should end up with.
#[derive(Debug, Clone)]
pub struct LocalBinary {
    pub version: String,
    /// Hex SHA-1 of `bytes`, as `sha1sum` prints it.
    pub sha1: String,
    /// The binary the hosts get (without debug info when [`LocalBinary::shipped`] could
    /// strip it).
    pub bytes: Vec<u8>,
    /// `bytes` compressed with `gzip`, what the ssh stream sends to hosts that have
    /// `gzip` (`None` when gzip is not here or did not make it smaller). Made on first
    /// use ([`LocalBinary::gzipped`]): a deploy to hosts that already run this corvid
    /// never streams it, and compressing took 0.4-1.4 s of its start here.
    gzipped: std::sync::OnceLock<Option<Vec<u8>>>,
    /// The size of the file this corvid runs from.
    pub file_bytes: u64,
    /// Hex SHA-1 of that file: a host running exactly it (debug info and all) is up to
    /// date too.
    pub file_sha1: String,
}

impl LocalBinary {
    /// Reads the binary once: what is streamed, seeded and compared is this snapshot,
    /// even if the file is rebuilt during the deploy.
    pub fn read(path: &Path) -> std::io::Result<LocalBinary> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut bytes)?;
        Ok(LocalBinary::of(bytes, None))
    }

    fn of(bytes: Vec<u8>, file: Option<&LocalBinary>) -> LocalBinary {
        let sha1 = metainfo::hex(&Sha1::digest(&bytes));
        LocalBinary {
            version: format!("corvid {}", env!("CARGO_PKG_VERSION")),
            file_bytes: file.map_or(bytes.len() as u64, |f| f.file_bytes),
            file_sha1: file.map_or_else(|| sha1.clone(), |f| f.file_sha1.clone()),
            sha1,
            bytes,
            gzipped: std::sync::OnceLock::new(),
        }
    }

    /// What a deploy ships: the binary without its debug info (`objcopy
    /// --strip-debug`: a release build carries 15 MB of it, which no host needs to run),
    /// and that compressed for the ssh stream (`gzip -9`; every Linux host can `gzip
    /// -dc`). Either tool missing or failing here means shipping the bytes as they are:
    /// slower, never wrong. The hosts compare their corvid's SHA-1 with the stripped
    /// bytes, so a stripped corvid on a host counts as this one.
    pub fn shipped(path: &Path) -> std::io::Result<LocalBinary> {
        let read = LocalBinary::read(path)?;
        let stripped = strip_debug(path).filter(|s| s.len() < read.bytes.len());
        Ok(match stripped {
            Some(s) => LocalBinary::of(s, Some(&read)),
            None => read,
        })
    }

    /// The compressed binary, made on the first call (concurrent callers wait for it).
    pub fn gzipped(&self) -> Option<&[u8]> {
        self.gzipped
            .get_or_init(|| gzip(&self.bytes).filter(|z| z.len() < self.bytes.len()))
            .as_deref()
    }

    /// What the ssh stream sends to a host (with or without `gzip` there).
    pub fn stream_bytes(&self, host_gzip: bool) -> &[u8] {
        match self.gzipped() {
            Some(z) if host_gzip => z,
            _ => &self.bytes,
        }
    }

    /// What the ssh stream sent per host with `gzip`, as far as known without
    /// compressing now: the plain size while nothing was compressed.
    pub fn streamed_len(&self) -> u64 {
        let z = self.gzipped.get().and_then(|z| z.as_deref());
        z.map_or(self.bytes.len(), <[u8]>::len) as u64
    }
}

/// `objcopy --strip-debug` of `path` into a temporary file: its bytes if that worked and
/// they still look like an ELF file.
fn strip_debug(path: &Path) -> Option<Vec<u8>> {
    let dir = tempfile::Builder::new()
        .prefix("corvid-strip-")
        .tempdir()
        .ok()?;
    let out = dir.path().join("corvid");
    let status = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(path)
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let bytes = std::fs::read(&out).ok()?;
    (status.success() && bytes.starts_with(b"\x7fELF")).then_some(bytes)
}

/// `gzip -6` of `bytes` (the tool, not a crate: one more process per deploy is cheaper
/// than a compressor in every corvid, and the hosts decompress with the same tool).
/// Level 6, not 9: on a 4.3 MB stripped corvid, 1.71 MB in 0.35 s against 1.70 MB in
/// 1.4 s (measured here on a loaded machine): the 10 KB are not worth a second.
fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut c = std::process::Command::new("gzip")
        .arg("-6c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = c.stdin.take()?;
    // Written from another thread: gzip's output would fill its pipe while we write.
    let out = std::thread::scope(|s| {
        s.spawn(move || std::io::Write::write_all(&mut stdin, bytes));
        let mut out = Vec::new();
        c.stdout.take()?.read_to_end(&mut out).ok()?;
        Some(out)
    })?;
    c.wait().ok()?.success().then_some(out)
}

/// What a host has at `--remote-corvid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Same version and SHA-1: nothing to do.
    UpToDate,
    /// A corvid that runs (it printed `version`) but is not this one.
    Differs { version: String },
    /// Nothing there, not executable, or it printed no version (wrong architecture,
    /// truncated file).
    Unusable,
}

/// One host's check result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The address the host saw us at (first field of `$SSH_CONNECTION`).
    pub client: Option<IpAddr>,
    pub found: Found,
    /// `sha1sum` exists on the host: a swarm download can be checked there.
    pub sha1sum: bool,
    /// `gzip` exists on the host: the ssh stream can be compressed.
    pub gzip: bool,
}

/// The check session's remote command.
pub fn probe_script(remote_corvid: &str) -> String {
    let p = quote_path(remote_corvid);
    format!(
        "echo \"conn $SSH_CONNECTION\"; command -v sha1sum >/dev/null 2>&1 && echo 'sha1sum yes'; \
         command -v gzip >/dev/null 2>&1 && echo 'gzip yes'; \
         P={p}; if [ -x \"$P\" ]; then echo \"version $(\"$P\" --version </dev/null 2>/dev/null)\"; \
         echo \"sha1 $(sha1sum < \"$P\" 2>/dev/null)\"; fi"
    )
}

/// Reads [`probe_script`]'s output.
pub fn parse_probe(stdout: &str, local: &LocalBinary) -> Probe {
    let mut client = None;
    let mut version: Option<String> = None;
    let mut sum = None;
    let mut sha1sum = false;
    let mut gzip = false;
    for line in stdout.lines() {
        if let Some(c) = line.strip_prefix("conn ") {
            client = c.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(v) = line.strip_prefix("version ") {
            version = Some(v.trim().to_string());
        } else if let Some(s) = line.strip_prefix("sha1 ") {
            sum = s.split_whitespace().next().map(str::to_string);
        } else if line.trim() == "sha1sum yes" {
            sha1sum = true;
        } else if line.trim() == "gzip yes" {
            gzip = true;
        }
    }
    let found = match version {
        None => Found::Unusable,
        Some(v) if v.is_empty() => Found::Unusable,
        // Without sha1sum on the host the version is all there is to compare.
        Some(v)
            if v == local.version
                && sum
                    .as_deref()
                    .is_none_or(|s| s == local.sha1 || s == local.file_sha1) =>
        {
            Found::UpToDate
        }
        Some(version) => Found::Differs { version },
    };
    Probe {
        client,
        found,
        sha1sum,
        gzip,
    }
}

/// How a host is to get corvid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Already up to date.
    Keep,
    Ssh,
    Swarm,
}

/// The install decision for the hosts that answered the probe: when at least
/// `swarm_min` of them need the binary (0: never), those whose old corvid runs and that
/// can check a SHA-1 go by the swarm; everyone else who needs it by ssh.
pub fn route(probes: &[Probe], swarm_min: usize) -> Vec<Route> {
    let needing = probes.iter().filter(|p| p.found != Found::UpToDate).count();
    let swarm = swarm_min > 0 && needing >= swarm_min;
    probes
        .iter()
        .map(|p| match p.found {
            Found::UpToDate => Route::Keep,
            Found::Differs { .. } if swarm && p.sha1sum => Route::Swarm,
            _ => Route::Ssh,
        })
        .collect()
}

/// How corvid got onto a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorvidInstall {
    /// It was already there and up to date.
    Present,
    Ssh,
    Swarm,
    /// The swarm failed for this reason; the ssh stream that followed worked.
    SwarmThenSsh(HostError),
}

impl CorvidInstall {
    /// A short word for tables and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            CorvidInstall::Present => "present",
            CorvidInstall::Ssh => "ssh",
            CorvidInstall::Swarm => "swarm",
            CorvidInstall::SwarmThenSsh(_) => "swarm->ssh",
        }
    }

    /// This deploy wrote the binary on the host.
    pub fn installed(&self) -> bool {
        *self != CorvidInstall::Present
    }
}

/// One host's install: how, and the bytes it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInstall {
    pub how: CorvidInstall,
    /// Binary bytes this host's old corvid downloaded from the deployer's seeder and
    /// from other hosts (zero unless the swarm was tried).
    pub swarm_from_seeder: u64,
    pub swarm_from_peers: u64,
    /// Binary bytes streamed to it over ssh.
    pub ssh_bytes: u64,
}

impl HostInstall {
    /// Nothing installed, nothing transferred.
    pub fn present() -> HostInstall {
        HostInstall {
            how: CorvidInstall::Present,
            swarm_from_seeder: 0,
            swarm_from_peers: 0,
            ssh_bytes: 0,
        }
    }
}

/// The install phase as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallSummary {
    /// The binary the hosts get (stripped of debug info where `objcopy` could).
    pub binary_bytes: u64,
    /// The deployer's own binary file, before stripping.
    pub file_bytes: u64,
    /// What the ssh stream sends per host (gzip-compressed where that is smaller).
    pub stream_bytes: u64,
    /// Pieces of the binary's torrent (0: no swarm was run).
    pub pieces: u32,
    pub by_swarm: usize,
    pub by_ssh: usize,
    /// Hosts where the swarm failed and ssh followed (counted in `by_ssh` too).
    pub fell_back: usize,
    /// Binary bytes the deployer's seeder uploaded to the swarm.
    pub seeder_uploaded: u64,
    /// Binary bytes hosts downloaded from each other.
    pub peers_exchanged: u64,
    /// Binary bytes the deployer streamed over ssh.
    pub ssh_uploaded: u64,
    /// Wall time of the install phase (zero when nothing was installed).
    pub elapsed: Duration,
    /// Why no swarm ran although hosts were routed to it (the seeder did not start).
    pub swarm_error: Option<String>,
}

/// The ssh stream's remote command: stdin into a temporary file beside the binary, then
/// `chmod` and `mv` over it, so no host ever runs a half-written corvid. The temporary
/// file comes from `mktemp` (a new file, random name), so nothing planted at a guessable
/// name is written through.
///
/// With `gzipped` the stream is `gzip -9` output and the host decompresses it (`gzip
/// -dc`, whose CRC check fails a cut stream before anything is renamed).
pub fn stream_command(remote_corvid: &str, gzipped: bool) -> String {
    let p = quote_path(remote_corvid);
    let copy = if gzipped { "gzip -dc" } else { "cat" };
    format!(
        "set -e; P={p}; mkdir -p \"$(dirname \"$P\")\"; T=$(mktemp \"$P.tmp.XXXXXX\"); \
         trap 'rm -f \"$T\"' EXIT; {copy} > \"$T\"; chmod 755 \"$T\"; mv -f \"$T\" \"$P\""
    )
}

/// What a swarm install session needs.
#[derive(Debug, Clone)]
pub struct SwarmJob {
    /// The binary's torrent.
    pub torrent: Vec<u8>,
    /// The deployer's binary seeder, as hosts reach it.
    pub seeder: SocketAddr,
    pub sha1: String,
    pub linger: Duration,
    pub stall_timeout: Duration,
    /// The remote `timeout` around the old corvid's download.
    pub timeout: Duration,
    pub secret: Option<Secret>,
}

/// The swarm install's remote command and its stdin (the torrent, then a private swarm's
/// secret). In a private directory beside the binary (same filesystem, so the final `mv`
/// is a rename; made with a plain `mkdir`, which fails rather than reuse whatever was
/// planted at its name, so the shell's `>` into it cannot follow a link): the OLD corvid downloads the new one as a peer, `sha1sum` checks the
/// whole file, `chmod 755`, `mv` over the old binary, then `{"event":"installed"}`.
/// The script's own steps exit with codes of their own (65 a wrong SHA-1, 73 no room for
/// the download directory, 74 no `sha1sum` result, 75 the rename, 124 the `timeout`), so
/// they are not mistaken for the old corvid's; the directory goes in every case.
pub fn swarm_command(remote_corvid: &str, job: &SwarmJob) -> (String, Vec<u8>) {
    let p = quote_path(remote_corvid);
    let receive = receive_files(
        "\"$D/corvid.torrent\"",
        "\"$D/secret\"",
        "\"$D/incoming\"",
        job.torrent.len(),
        job.secret.is_some(),
    );
    let secret_flag = if job.secret.is_some() {
        " --secret-file \"$D/secret\""
    } else {
        ""
    };
    let mut stdin = job.torrent.clone();
    if let Some(s) = &job.secret {
        stdin.extend_from_slice(s.expose());
    }
    let cmd = format!(
        "set -e; P={p}; D=\"$P.swarm.$$\"; \
         trap 'rm -rf \"$D\"' EXIT; trap 'exit 129' HUP INT TERM PIPE; \
         {{ rm -rf \"$D\" && mkdir -m 700 \"$D\" && {receive}; }} || exit 73; \
         timeout -k 5 {t} \"$P\" peer \"$D/corvid.torrent\" \"$D\" --linger {l}ms \
         --stall-timeout {s}ms --peer {seeder} --json{secret_flag}; \
         F=\"$D/{name}\"; S=$(sha1sum < \"$F\") || exit 74; S=${{S%% *}}; \
         if [ \"$S\" != {sha} ]; then echo \"corvid: error: the downloaded binary has SHA-1 $S, not {sha}\" >&2; exit 65; fi; \
         {{ chmod 755 \"$F\" && mv -f \"$F\" \"$P\"; }} || exit 75; echo {installed}",
        t = job.timeout.as_secs().max(1),
        l = job.linger.as_millis(),
        s = job.stall_timeout.as_millis(),
        seeder = quote(&job.seeder.to_string()),
        name = BINARY_NAME,
        sha = quote(&job.sha1),
        installed = quote(&PeerLine::Installed.to_json()),
    );
    (cmd, stdin)
}

/// Text for a swarm install's exit status.
fn swarm_exit_text(code: i32) -> &'static str {
    match code {
        124 | 137 => "timed out on the host",
        65 => "the downloaded binary's SHA-1 is wrong",
        73 => "cannot make the download directory beside the binary",
        74 => "cannot checksum the download",
        75 => "cannot put the new binary in place",
        129 => "the session was cut",
        c => remote_exit_text(c),
    }
}

/// Streams the binary over ssh (compressed where the host has `gzip`); `Ok` is the
/// bytes sent.
fn stream(
    plan: &DeployPlan,
    local: &LocalBinary,
    host: &str,
    host_gzip: bool,
) -> Result<u64, HostError> {
    let bytes = local.stream_bytes(host_gzip);
    let cmd = stream_command(&plan.remote_corvid, bytes.len() != local.bytes.len());
    let b = plan
        .ssh
        .run_bounded(host, &cmd, bytes, STREAM_TIMEOUT, &mut |_| {})
        .map_err(|e| HostError::SshSpawn(e.to_string()))?;
    if b.timed_out {
        return Err(HostError::StreamTimeout(STREAM_TIMEOUT.as_secs()));
    }
    if b.output.code != 0 {
        return Err(HostError::Stream {
            path: plan.remote_corvid.clone(),
            failure: RemoteFailure::new(b.output.code, &b.output.last_error_line(), "error"),
        });
    }
    Ok(bytes.len() as u64)
}

/// Bytes a host's old corvid reported downloading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SwarmBytes {
    from_seeder: u64,
    from_peers: u64,
}

/// The swarm install on one host: `Ok` once the binary is verified and in place.
fn swarm(plan: &DeployPlan, job: &SwarmJob, host: &str) -> (Result<(), HostError>, SwarmBytes) {
    let (cmd, stdin) = swarm_command(&plan.remote_corvid, job);
    let mut bytes = SwarmBytes::default();
    let mut installed = false;
    let r = plan.ssh.run_bounded(
        host,
        &cmd,
        &stdin,
        job.timeout + Duration::from_secs(15),
        &mut |line| match PeerLine::parse(line) {
            Some(PeerLine::Done { report }) => {
                bytes.from_seeder = report.bytes_from_seeder;
                bytes.from_peers = report.bytes_from_peers;
            }
            Some(PeerLine::Installed) => installed = true,
            _ => {}
        },
    );
    let result = match r {
        Err(e) => Err(HostError::SshSpawn(e.to_string())),
        Ok(b) if b.timed_out => Err(HostError::SwarmTimeout(
            (job.timeout + Duration::from_secs(15)).as_secs(),
        )),
        Ok(b) if b.output.code == 0 && installed => Ok(()),
        Ok(b) if b.output.code == 0 => Err(HostError::SwarmUnconfirmed),
        Ok(b) => Err(HostError::Swarm(RemoteFailure::new(
            b.output.code,
            &b.output.last_error_line(),
            swarm_exit_text(b.output.code),
        ))),
    };
    (result, bytes)
}

/// Installs corvid on one host along `route`; `job` is the swarm to use, or why there
/// is none. `Err` is the host's failure.
pub(super) fn install_host(
    plan: &DeployPlan,
    local: &LocalBinary,
    host: &str,
    route: Route,
    job: &Result<SwarmJob, HostError>,
    host_gzip: bool,
) -> Result<HostInstall, HostError> {
    let mut out = HostInstall::present();
    let why = match route {
        Route::Keep => return Ok(out),
        Route::Ssh => None,
        Route::Swarm => {
            let tried = match job {
                Ok(job) => {
                    let (r, b) = swarm(plan, job, host);
                    out.swarm_from_seeder = b.from_seeder;
                    out.swarm_from_peers = b.from_peers;
                    r
                }
                Err(e) => Err(e.clone()),
            };
            match tried {
                Ok(()) => {
                    out.how = CorvidInstall::Swarm;
                    return Ok(out);
                }
                Err(why) => Some(why),
            }
        }
    };
    let sent = match (stream(plan, local, host, host_gzip), why) {
        (Ok(n), None) => {
            out.how = CorvidInstall::Ssh;
            n
        }
        (Ok(n), Some(why)) => {
            out.how = CorvidInstall::SwarmThenSsh(why);
            n
        }
        (Err(e), None) => return Err(e),
        (Err(e), Some(why)) => {
            return Err(HostError::SwarmThenStream {
                swarm: Box::new(why),
                stream: Box::new(e),
            })
        }
    };
    out.ssh_bytes = sent;
    Ok(out)
}

/// Progress of the install phase (the deploy forwards it as its own events).
#[derive(Debug, Clone)]
pub enum InstallEvent {
    /// This many hosts get corvid by the swarm and by ssh (`pieces` is the binary
    /// torrent's, 0 when no swarm runs).
    Installing {
        swarm: usize,
        ssh: usize,
        binary_bytes: u64,
        pieces: u32,
    },
    /// corvid was installed on a host.
    Installed { host: String, how: CorvidInstall },
}

/// The install phase for `hosts`, their routes and whether each has `gzip`. Starts the binary seeder when any
/// host goes by the swarm, installs on at most `plan.parallel` hosts at once (no new
/// host once `stop` is set), and returns each host's result, in order.
pub(super) fn run_phase(
    plan: &DeployPlan,
    local: &LocalBinary,
    hosts: &[(String, Route, bool)],
    tracker_url: &str,
    addr: IpAddr,
    stop: &StopFlag,
    events: &Sender<InstallEvent>,
) -> (Vec<Result<HostInstall, HostError>>, InstallSummary) {
    let start = Instant::now();
    let mut summary = InstallSummary {
        binary_bytes: local.bytes.len() as u64,
        file_bytes: local.file_bytes,
        stream_bytes: local.streamed_len(),
        ..InstallSummary::default()
    };
    let count = |r: Route| hosts.iter().filter(|(_, x, _)| *x == r).count();
    let want_swarm = count(Route::Swarm) > 0;
    let seeder = if want_swarm {
        Some(start_binary_seeder(plan, local, tracker_url, addr))
    } else {
        None
    };
    let job: Result<SwarmJob, HostError> = match &seeder {
        Some(Ok(s)) => Ok(s.job.clone()),
        Some(Err(e)) => Err(HostError::SeederDown(e.to_string())),
        None => Err(HostError::NoSwarm),
    };
    if let Err(e) = &job {
        if want_swarm {
            summary.swarm_error = Some(e.to_string());
        }
    }
    let needing: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].1 != Route::Keep)
        .collect();
    let _ = events.send(InstallEvent::Installing {
        swarm: count(Route::Swarm),
        ssh: count(Route::Ssh),
        binary_bytes: summary.binary_bytes,
        pieces: match &seeder {
            Some(Ok(s)) => s.pieces,
            _ => 0,
        },
    });
    let done = for_each_host(&needing, plan.parallel, &|&i: &usize| {
        let (h, route, gzip) = (&hosts[i].0, hosts[i].1, hosts[i].2);
        if stop.is_stopped() {
            return Err(HostError::Interrupted);
        }
        let r = install_host(plan, local, h, route, &job, gzip);
        if let Ok(inst) = &r {
            let _ = events.send(InstallEvent::Installed {
                host: h.to_string(),
                how: inst.how.clone(),
            });
        }
        r
    });
    if let Some(Ok(s)) = seeder {
        s.stop.stop();
        if let Ok(Ok(report)) = s.thread.join() {
            summary.seeder_uploaded = report.transfer.bytes_up;
        }
        summary.pieces = s.pieces;
    }
    let mut results: Vec<Result<HostInstall, HostError>> =
        hosts.iter().map(|_| Ok(HostInstall::present())).collect();
    for (k, r) in done.into_iter().enumerate() {
        if let Ok(h) = &r {
            summary.peers_exchanged += h.swarm_from_peers;
            summary.ssh_uploaded += h.ssh_bytes;
            match h.how {
                CorvidInstall::Swarm => summary.by_swarm += 1,
                CorvidInstall::Ssh => summary.by_ssh += 1,
                CorvidInstall::SwarmThenSsh(_) => {
                    summary.by_ssh += 1;
                    summary.fell_back += 1;
                }
                CorvidInstall::Present => {}
            }
        }
        results[needing[k]] = r;
    }
    if !needing.is_empty() {
        summary.elapsed = start.elapsed();
    }
    // Known now if any host was streamed to.
    summary.stream_bytes = local.streamed_len();
    (results, summary)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::super::ssh::{run_child, Ssh};
    use super::*;

    fn local(bytes: &[u8]) -> LocalBinary {
        LocalBinary {
            version: "corvid 9.9.9".into(),
            sha1: metainfo::hex(&Sha1::digest(bytes)),
            bytes: bytes.to_vec(),
            gzipped: std::sync::OnceLock::from(gzip(bytes)),
            file_bytes: bytes.len() as u64,
            file_sha1: metainfo::hex(&Sha1::digest(b"the unstripped file")),
        }
    }

    fn probe(found: Found, sha1sum: bool) -> Probe {
        Probe {
            client: None,
            found,
            sha1sum,
            gzip: true,
        }
    }

    fn sh(cmd: &str, stdin: &[u8]) -> super::super::ssh::Bounded {
        let mut c = Command::new("sh");
        c.arg("-c").arg(cmd);
        run_child(c, stdin, Duration::from_secs(60), &mut |_| {}).unwrap()
    }

    fn write_exec(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_probe_sorts_hosts_into_three_groups() {
        let l = local(b"this corvid");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin dir/corvid");
        let run = |p: &Path| {
            parse_probe(
                &sh(&probe_script(p.to_str().unwrap()), b"").output.stdout,
                &l,
            )
        };

        // Missing: unusable, and the host's sha1sum is seen all the same.
        let r = run(&p);
        assert_eq!(r.found, Found::Unusable);
        assert!(r.sha1sum);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // A binary that prints no version (wrong architecture, truncated): unusable.
        write_exec(&p, "#!/bin/sh\nexit 1\n");
        assert_eq!(run(&p).found, Found::Unusable);
        // Same version, other bytes: differs.
        write_exec(&p, "#!/bin/sh\necho 'corvid 9.9.9'\n");
        assert_eq!(
            run(&p).found,
            Found::Differs {
                version: "corvid 9.9.9".into()
            }
        );
        // Byte for byte this one: up to date.
        let same = local(&std::fs::read(&p).unwrap());
        let out = sh(&probe_script(p.to_str().unwrap()), b"").output.stdout;
        assert_eq!(parse_probe(&out, &same).found, Found::UpToDate);
        // The file this corvid was stripped from (the same build with debug info): up
        // to date as well, never replaced by the stripped copy.
        let stripped_of_it = LocalBinary {
            sha1: "0".repeat(40),
            file_sha1: same.sha1.clone(),
            ..same.clone()
        };
        assert_eq!(parse_probe(&out, &stripped_of_it).found, Found::UpToDate);
        let other = LocalBinary {
            file_sha1: "1".repeat(40),
            ..stripped_of_it
        };
        assert!(matches!(
            parse_probe(&out, &other).found,
            Found::Differs { .. }
        ));
        // Another version: differs, whatever the bytes.
        let newer = LocalBinary {
            version: "corvid 10.0.0".into(),
            ..same.clone()
        };
        assert!(matches!(
            parse_probe(&out, &newer).found,
            Found::Differs { .. }
        ));

        // Output from a host without sha1sum: the version decides, and no swarm.
        let r = parse_probe(
            "conn 10.0.0.1 5000 10.0.0.2 22\nversion corvid 9.9.9\nsha1 \n",
            &l,
        );
        assert_eq!(r.found, Found::UpToDate);
        assert!(!r.sha1sum);
        assert_eq!(r.client, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_swarm_starts_at_the_threshold_and_takes_only_hosts_whose_corvid_runs() {
        let differs = || {
            probe(
                Found::Differs {
                    version: "corvid 0.0.1".into(),
                },
                true,
            )
        };
        // 3 differ, 1 has none, 1 up to date, 1 differs but cannot check a SHA-1.
        let no_sum = probe(
            Found::Differs {
                version: "corvid 0.0.1".into(),
            },
            false,
        );
        let hosts = vec![
            differs(),
            probe(Found::Unusable, true),
            differs(),
            probe(Found::UpToDate, true),
            differs(),
            no_sum,
        ];
        use Route::*;
        // 5 need it: at a threshold of 5 or less the swarm runs.
        for min in [1, 5] {
            assert_eq!(
                route(&hosts, min),
                [Swarm, Ssh, Swarm, Keep, Swarm, Ssh],
                "min {min}"
            );
        }
        // Above it, or disabled: all over ssh.
        for min in [6, 0] {
            assert_eq!(
                route(&hosts, min),
                [Ssh, Ssh, Ssh, Keep, Ssh, Ssh],
                "min {min}"
            );
        }
        assert!(route(&[probe(Found::UpToDate, true)], 1) == [Keep]);
        assert!(route(&[], 1).is_empty());
    }

    /// What a deploy ships of a real binary with debug info (this test executable): no
    /// debug info, still runs, and the gzip stream the host unpacks gives it back exactly;
    /// a cut stream leaves the old binary in place.
    #[test]
    fn the_shipped_binary_is_stripped_compressed_and_still_runs() {
        let exe = std::env::current_exe().unwrap();
        let b = LocalBinary::shipped(&exe).unwrap();
        let on_disk = std::fs::metadata(&exe).unwrap().len();
        assert_eq!(b.file_bytes, on_disk);
        assert!(
            (b.bytes.len() as u64) < on_disk,
            "not stripped: {} of {on_disk}",
            b.bytes.len()
        );
        assert_eq!(b.sha1, metainfo::hex(&Sha1::digest(&b.bytes)));
        assert_eq!(
            b.streamed_len(),
            b.bytes.len() as u64,
            "compressed on first use only"
        );
        let z = b.gzipped().expect("gzip is here").to_vec();
        assert_eq!(b.streamed_len(), z.len() as u64);
        assert!(z.len() < b.bytes.len());
        eprintln!(
            "test binary {on_disk} B, stripped {} B, gzip -6 {} B",
            b.bytes.len(),
            z.len()
        );
        assert_eq!(b.stream_bytes(true), &z[..]);
        assert_eq!(b.stream_bytes(false), &b.bytes[..]);

        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin/corvid");
        let out = sh(&stream_command(p.to_str().unwrap(), true), &z);
        assert_eq!(out.output.code, 0, "{}", out.output.stderr);
        assert_eq!(std::fs::read(&p).unwrap(), b.bytes);
        assert_eq!(mode(&p), 0o755);
        // The stripped test executable still runs (it lists this very test).
        let listed = Command::new(&p).arg("--list").output().unwrap();
        assert!(listed.status.success());
        assert!(String::from_utf8_lossy(&listed.stdout)
            .contains("the_shipped_binary_is_stripped_compressed_and_still_runs"));

        // A stream cut short fails the gzip check: nothing replaced, nothing left over.
        let out = sh(
            &stream_command(p.to_str().unwrap(), true),
            &z[..z.len() / 2],
        );
        assert_ne!(out.output.code, 0);
        assert_eq!(std::fs::read(&p).unwrap(), b.bytes);
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["corvid"]);
    }

    #[test]
    fn the_ssh_stream_replaces_the_binary_in_one_rename() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new dir/corvid");
        let out = sh(&stream_command(p.to_str().unwrap(), false), b"new binary");
        assert_eq!(out.output.code, 0, "{}", out.output.stderr);
        assert_eq!(std::fs::read(&p).unwrap(), b"new binary");
        assert_eq!(mode(&p), 0o755);
        // An old one is replaced, and no temporary file is left beside it.
        let out = sh(&stream_command(p.to_str().unwrap(), false), b"newer");
        assert_eq!(out.output.code, 0, "{}", out.output.stderr);
        assert_eq!(std::fs::read(&p).unwrap(), b"newer");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["corvid"]);
    }

    /// A stand-in for an old corvid at `p`: `--version` answers, `peer` checks the
    /// torrent it was given, records its arguments (and a secret file's content and
    /// mode) in `d`, writes `payload` as the download and prints a final report; with
    /// `payload` `None` it is too old for `peer` (usage error, exit 2).
    fn old_corvid(p: &Path, d: &Path, torrent: &[u8], payload: Option<&[u8]>) {
        std::fs::write(d.join("want.torrent"), torrent).unwrap();
        let body = match payload {
            None => "echo 'error: unexpected argument' >&2; exit 2".to_string(),
            Some(b) => {
                std::fs::write(d.join("payload"), b).unwrap();
                format!(
                    "echo \"$@\" > {log}\n\
                     cmp -s \"$2\" {want} || {{ echo 'corvid: error: wrong torrent' >&2; exit 3; }}\n\
                     prev=; for a in \"$@\"; do if [ \"$prev\" = --secret-file ]; then \
                     cp \"$a\" {secret}; stat -c %a \"$a\" > {smode}; fi; prev=$a; done\n\
                     cp {payload} \"$3/corvid\"\n\
                     echo '{{\"event\":\"done\",\"report\":{{\"bytes_down\":{n},\"bytes_from_seeder\":7,\"bytes_from_peers\":9}}}}'",
                    log = quote(d.join("args").to_str().unwrap()),
                    want = quote(d.join("want.torrent").to_str().unwrap()),
                    secret = quote(d.join("secret").to_str().unwrap()),
                    smode = quote(d.join("secret.mode").to_str().unwrap()),
                    payload = quote(d.join("payload").to_str().unwrap()),
                    n = b.len(),
                )
            }
        };
        write_exec(
            p,
            &format!(
                "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'corvid 0.0.1'; exit 0; fi\n{body}\n"
            ),
        );
    }

    fn job(l: &LocalBinary) -> SwarmJob {
        SwarmJob {
            torrent: b"d4:infod6:lengthi3eee".to_vec(),
            seeder: "10.1.2.3:6881".parse().unwrap(),
            sha1: l.sha1.clone(),
            linger: Duration::from_millis(1500),
            stall_timeout: Duration::from_secs(20),
            timeout: Duration::from_secs(30),
            secret: None,
        }
    }

    #[test]
    fn the_swarm_command_installs_only_a_download_whose_sha1_matches() {
        let l = local(b"the new corvid");
        let j = job(&l);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin/corvid");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let run = |j: &SwarmJob| {
            let (cmd, stdin) = swarm_command(p.to_str().unwrap(), j);
            let mut lines = Vec::new();
            let mut c = Command::new("sh");
            c.arg("-c").arg(&cmd);
            let b = run_child(c, &stdin, Duration::from_secs(60), &mut |x| {
                lines.push(x.to_string())
            })
            .unwrap();
            (b, lines, cmd)
        };
        let leftovers = || {
            std::fs::read_dir(p.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n != "corvid")
                .collect::<Vec<_>>()
        };

        // The old corvid downloads the right bytes: installed, 0755, nothing left over.
        old_corvid(&p, d.path(), &j.torrent, Some(&l.bytes));
        let (b, lines, _) = run(&j);
        assert_eq!(b.output.code, 0, "{}", b.output.stderr);
        assert_eq!(lines.last().unwrap(), r#"{"event":"installed"}"#);
        assert_eq!(std::fs::read(&p).unwrap(), l.bytes);
        assert_eq!(mode(&p), 0o755);
        assert!(leftovers().is_empty(), "{:?}", leftovers());
        let args = std::fs::read_to_string(d.path().join("args")).unwrap();
        for want in [
            "--linger 1500ms",
            "--stall-timeout 20000ms",
            "--peer 10.1.2.3:6881",
            "--json",
        ] {
            assert!(args.contains(want), "{args} lacks {want}");
        }
        assert!(!args.contains("--secret-file"), "{args}");

        // Wrong bytes: exit 65, the old binary stays.
        old_corvid(&p, d.path(), &j.torrent, Some(b"tampered"));
        let old = std::fs::read(&p).unwrap();
        let (b, lines, _) = run(&j);
        assert_eq!(b.output.code, 65);
        assert!(
            b.output.last_error_line().contains("SHA-1"),
            "{}",
            b.output.stderr
        );
        assert!(!lines.iter().any(|l| l.contains("installed")));
        assert_eq!(std::fs::read(&p).unwrap(), old);
        assert!(leftovers().is_empty(), "{:?}", leftovers());

        // An old corvid without these flags: its usage error, the old binary stays.
        old_corvid(&p, d.path(), &j.torrent, None);
        let old = std::fs::read(&p).unwrap();
        let (b, _, _) = run(&j);
        assert_eq!(b.output.code, 2);
        assert_eq!(std::fs::read(&p).unwrap(), old);
        assert!(leftovers().is_empty(), "{:?}", leftovers());

        // No room beside the binary (its directory is a file): the script's own code.
        let f = d.path().join("plain file");
        std::fs::write(&f, b"").unwrap();
        let (cmd, stdin) = swarm_command(f.join("corvid").to_str().unwrap(), &j);
        let b = sh(&cmd, &stdin);
        assert_eq!(b.output.code, 73, "{}", b.output.stderr);
        assert_eq!(
            swarm_exit_text(73),
            "cannot make the download directory beside the binary"
        );

        // A private swarm: the secret arrives by stdin in a 0600 file, never in the command.
        let mut js = j.clone();
        js.secret = Some(Secret::new(b"hush \x00 bytes").unwrap());
        old_corvid(&p, d.path(), &js.torrent, Some(&l.bytes));
        let (b, _, cmd) = run(&js);
        assert_eq!(b.output.code, 0, "{}", b.output.stderr);
        assert!(!cmd.contains("hush"), "{cmd}");
        assert_eq!(
            std::fs::read(d.path().join("secret")).unwrap(),
            b"hush \x00 bytes"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("secret.mode"))
                .unwrap()
                .trim(),
            "600"
        );
        assert_eq!(std::fs::read(&p).unwrap(), l.bytes);
    }

    /// A plan whose `ssh` runs the remote command here, through `sh`.
    fn local_plan(d: &Path, remote: &Path) -> DeployPlan {
        let fake_ssh = d.join("fake-ssh");
        write_exec(
            &fake_ssh,
            "#!/bin/sh\nwhile [ \"$#\" -gt 0 ] && [ \"$1\" != -- ]; do shift; done\nexec sh -c \"$3\"\n",
        );
        DeployPlan {
            hosts: "h1".into(),
            src: d.to_path_buf(),
            dest: "/srv/app".into(),
            tag: "v1".into(),
            seeder_addr: None,
            activate: false,
            force: false,
            linger: Duration::ZERO,
            stall_timeout: Duration::from_secs(10),
            parallel: 2,
            ssh: Ssh {
                options: Vec::new(),
                program: Some(fake_ssh),
                control_dir: None,
            },
            ssh_multiplex: false,
            remote_corvid: remote.to_str().unwrap().into(),
            local_corvid: "/nonexistent".into(),
            swarm_install_min: 1,
            tracker_port: 0,
            threads: 1,
            secret: None,
            keep: None,
            after_activate: None,
            hook_timeout: Duration::from_secs(60),
            batch: None,
            check: None,
            rollback_on_failure: false,
            align: false,
            base: None,
            peer_network: None,
            hash_cache: None,
            uplink: None,
        }
    }

    #[test]
    fn a_host_whose_swarm_install_fails_falls_back_to_ssh_and_says_why() {
        let l = local(b"the new corvid, a few bytes");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin/corvid");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let plan = local_plan(d.path(), &p);
        let j: Result<SwarmJob, HostError> = Ok(job(&l));
        let size = l.bytes.len() as u64;

        // Swarm works: by the swarm, the old corvid's byte counts kept, nothing by ssh.
        old_corvid(&p, d.path(), &j.as_ref().unwrap().torrent, Some(&l.bytes));
        let r = install_host(&plan, &l, "h1", Route::Swarm, &j, false).unwrap();
        assert_eq!(r.how, CorvidInstall::Swarm);
        assert_eq!(
            (r.swarm_from_seeder, r.swarm_from_peers, r.ssh_bytes),
            (7, 9, 0)
        );
        assert_eq!(std::fs::read(&p).unwrap(), l.bytes);

        // The download is wrong: ssh follows, and the reason is kept.
        old_corvid(&p, d.path(), &j.as_ref().unwrap().torrent, Some(b"bad"));
        let r = install_host(&plan, &l, "h1", Route::Swarm, &j, false).unwrap();
        match &r.how {
            CorvidInstall::SwarmThenSsh(why) => {
                assert!(why.to_string().contains("SHA-1"), "{why}")
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(r.ssh_bytes, size);
        assert_eq!(std::fs::read(&p).unwrap(), l.bytes);
        assert_eq!(mode(&p), 0o755);

        // The old corvid is too old for the flags.
        old_corvid(&p, d.path(), &j.as_ref().unwrap().torrent, None);
        let r = install_host(&plan, &l, "h1", Route::Swarm, &j, false).unwrap();
        match &r.how {
            CorvidInstall::SwarmThenSsh(why) => {
                assert!(why.to_string().contains("usage error"), "{why}")
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(std::fs::read(&p).unwrap(), l.bytes);

        // No seeder: straight to ssh, with that reason.
        std::fs::remove_file(&p).unwrap();
        let none: Result<SwarmJob, HostError> = Err(HostError::SeederDown("seeder down".into()));
        let r = install_host(&plan, &l, "h1", Route::Swarm, &none, false).unwrap();
        assert_eq!(
            r.how,
            CorvidInstall::SwarmThenSsh(HostError::SeederDown("seeder down".into()))
        );
        assert_eq!(std::fs::read(&p).unwrap(), l.bytes);

        // Up to date: untouched. Plain ssh: installed where nothing was.
        let r = install_host(&plan, &l, "h1", Route::Keep, &none, false).unwrap();
        assert_eq!(r.how, CorvidInstall::Present);
        assert!(!r.how.installed());
        let q = d.path().join("other/corvid");
        let plan_q = local_plan(d.path(), &q);
        let r = install_host(&plan_q, &l, "h1", Route::Ssh, &none, false).unwrap();
        assert_eq!(r.how, CorvidInstall::Ssh);
        assert_eq!(std::fs::read(&q).unwrap(), l.bytes);

        // A host where even ssh cannot write the binary fails, naming both attempts.
        let f = d.path().join("a file");
        std::fs::write(&f, b"").unwrap();
        let plan_bad = local_plan(d.path(), &f.join("corvid"));
        let e = install_host(&plan_bad, &l, "h1", Route::Swarm, &none, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("seeder down") && e.contains("over ssh failed"),
            "{e}"
        );
        let e = install_host(&plan_bad, &l, "h1", Route::Ssh, &none, false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("installing corvid at"), "{e}");
    }
}
