//! `corvid deploy`: one release to a fleet over SSH, Murder's one command without tar.
//!
//! The flow lives in `corvid_engine::deploy::fleet`; this module parses flags, shows
//! fleet progress (hosts done/failed/total and the aggregate download rate) and prints the
//! per-host table or JSON lines.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};

use corvid_engine::deploy::fleet::{self, Batch, DeployError, DeployPlan, FleetEvent, HostResult};
use corvid_engine::deploy::hosts::HostsError;
use corvid_engine::deploy::install::{CorvidInstall, InstallSummary};
use corvid_engine::deploy::ssh::Ssh;
use corvid_engine::runtime::Network;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::output::{human_size, print, printable};
use crate::roles;
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Deploy a directory to a fleet over SSH, as a BitTorrent swarm",
    long_about = "Deploy a directory to a fleet over SSH, as a BitTorrent swarm.\n\n\
        Builds a torrent of --src here, runs an embedded tracker and a seeder here, and \
        runs `corvid peer` on every host over ssh (your own ssh config, keys and agent; \
        BatchMode, so nothing prompts). Each host downloads the CONTENT of --src into \
        DEST/releases/TAG.partial, verifies every piece, applies exec bits and symlinks, and \
        renames it to DEST/releases/TAG; --activate then points DEST/current at it. The \
        torrent is kept at DEST/.corvid/TAG.torrent (for `corvid verify`).\n\n\
        corvid is looked for at --remote-corvid on each host (by that path, never PATH, \
        which non-interactive ssh sessions often lack) and installed there from this binary \
        when missing or different (version and SHA-1 compared): over ssh, or, when at least \
        --swarm-install-min hosts need it, as a swarm in which each host's old corvid \
        downloads the new one from this machine and from the other hosts (then sha1sum, \
        chmod, rename); hosts without a working corvid, or where the swarm fails, get it \
        over ssh. The result says how (present, ssh, swarm, swarm->ssh). A host that already holds \
        a verified releases/TAG is skipped; one holding different content is refused unless \
        --force. Rerunning the same command finishes only what is missing.\n\n\
        Bad input (missing --src, relative --dest, a TAG with '/' or '..', a symlink leaving \
        the tree) is refused before any host is contacted. An unreachable host is reported \
        as that host's failure and the others proceed. Exit 0 only when every host \
        succeeded; 8 when some failed (listed with reasons).",
    after_help = "Examples:\n  corvid deploy --hosts web1,web2,web3 --src ./build --dest /srv/app --tag v42 --activate\n  \
        corvid deploy --hosts fleet.txt --src ./build --dest /srv/app --tag v42 \\\n      \
        --ssh-option -F --ssh-option ./fleet_ssh_config --json"
)]
pub struct Args {
    /// Hosts: a file (one host per line, # comments) or h1,h2,... Each is a NAME (an
    /// alias from your ssh config works), an IPv4 address or an IPv6 address in
    /// brackets, optionally with USER@ before and :PORT after; anything else is refused
    /// as a usage error (exit 2). A host may end with ` rack=NAME`: the embedded tracker
    /// then hands each host mostly peers of its own rack.
    #[arg(long, value_name = "FILE|LIST")]
    hosts: String,
    /// Directory to deploy (its content lands directly in DEST/releases/TAG).
    #[arg(long, value_name = "DIR")]
    src: PathBuf,
    /// Absolute base directory on every host.
    #[arg(long, value_name = "PATH")]
    dest: PathBuf,
    /// Release name (one plain name: no '/', no '..').
    #[arg(long, value_name = "TAG")]
    tag: String,
    /// Address hosts reach this machine at [default: this machine's own source address
    /// towards the first host, by its routing; hosts' $SSH_CONNECTION is a cross-check].
    #[arg(long, value_name = "IP")]
    seeder_addr: Option<IpAddr>,
    /// Point DEST/current at the release on each host once it is in place.
    #[arg(long)]
    activate: bool,
    /// Replace an existing DEST/releases/TAG whose content differs.
    #[arg(long)]
    force: bool,
    /// How long each peer keeps seeding after it has the release, at most: once every
    /// host holds it, all peers are told to stop and the deploy returns.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = roles::parse_duration)]
    linger: Duration,
    /// A peer gives up when no piece was verified for this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = roles::parse_duration)]
    stall_timeout: Duration,
    /// Most ssh sessions at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    parallel: usize,
    /// Extra argument for every ssh (repeatable), e.g. --ssh-option -F --ssh-option FILE.
    #[arg(long = "ssh-option", value_name = "ARG", allow_hyphen_values = true)]
    ssh_options: Vec<String>,
    /// Where corvid is (or gets installed) on the hosts; absolute or ~/...
    #[arg(long, value_name = "PATH", default_value = "~/.local/bin/corvid")]
    remote_corvid: String,
    /// Install corvid through a swarm of the hosts' old corvids when at least N hosts
    /// need it (fewer: over ssh; 0: always over ssh).
    #[arg(long, value_name = "N", default_value_t = 8)]
    swarm_install_min: usize,
    /// Port of the embedded tracker here (0: any free port; the torrent names it).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    tracker_port: u16,
    /// Threads for hashing and seeding here [default: number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// After activating, keep only the newest N releases on each host (never removing
    /// the current one nor the one before it). Needs --activate.
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Run CMD (with `sh -c`, in the release directory, CORVID_RELEASE/CORVID_TAG/
    /// CORVID_DEST set) on each host after its flip, e.g. 'systemctl reload app'. A
    /// failing CMD fails that host only. Needs --activate.
    #[arg(long, value_name = "CMD")]
    after_activate: Option<String>,
    /// Most time --after-activate may take on a host before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = roles::parse_duration)]
    hook_timeout: Duration,
    /// Rolling activation: download everywhere first, then activate in waves of N hosts
    /// or N% of the fleet (with the hook, --check and --keep per host); a failing wave
    /// stops the rollout and the later waves keep their old release. Needs --activate.
    #[arg(long, value_name = "N|N%")]
    batch: Option<Batch>,
    /// With --batch: run CMD on each host of a wave after its hook (like
    /// --after-activate); a failure stops the rollout.
    #[arg(long, value_name = "CMD")]
    check: Option<String>,
    /// With --batch: return the hosts of a failed wave to the release they ran before.
    #[arg(long)]
    rollback_on_failure: bool,
    /// Open a new ssh connection for every session instead of one shared connection per
    /// host (OpenSSH ControlMaster, with its sockets in a private directory removed at
    /// the end); for ssh setups that cannot multiplex.
    #[arg(long)]
    no_ssh_multiplex: bool,
    /// Keep the release's piece hashes here, so files unchanged since the last deploy of
    /// the same --src (same size, inode, mtime and ctime) are not hashed again
    /// [default: $XDG_CACHE_HOME/corvid/pieces, else ~/.cache/corvid/pieces].
    #[arg(long, value_name = "DIR")]
    hash_cache: Option<PathBuf>,
    /// Hash every piece of the release, with no cache.
    #[arg(long, conflicts_with = "hash_cache")]
    no_hash_cache: bool,
    /// Print JSON lines (one per host, then a summary) on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Start every file on a piece boundary (BEP 47 pad files, as `make --align`), so
    /// hosts also reuse files that moved or changed size from their base release; costs
    /// up to a piece of zeros per file on the wire.
    #[arg(long)]
    align: bool,
    /// The release under DEST/releases that hosts fill unchanged pieces from before
    /// asking the swarm [default: the one DEST/current points at].
    #[arg(long, value_name = "TAG")]
    base: Option<String>,
    /// Run the swarm on this network (e.g. a data network beside the management one ssh
    /// uses): each host's peer listens on, dials and announces from its own address in
    /// CIDR (a host with none fails before it joins), and the seeder and tracker here
    /// listen on this machine's address in CIDR [default: addresses as routed].
    #[arg(long, value_name = "CIDR")]
    peer_network: Option<Network>,
    /// Every host's uplink (and this machine's), e.g. 10gbit: each host and the seeder
    /// pace their uploads to share it (`corvid peer --uplink`) [default: no pacing].
    #[arg(long, value_name = "RATE", value_parser = roles::parse_rate)]
    uplink: Option<u64>,
    /// The secret reaches each host through the ssh session's stdin, into a 0600 file
    /// beside the torrent (DEST/.corvid/TAG.secret).
    #[command(flatten)]
    secret: roles::SecretArgs,
}

/// Fleet progress: a bar on a terminal, plain lines otherwise, nothing but results with
/// --json.
struct Display {
    json: bool,
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    failed: usize,
    bytes: HashMap<String, u64>,
    /// Hosts already counted (at their release, before the linger ends their session).
    counted: HashSet<String>,
    last: (Instant, u64),
    rate: f64,
    /// A rolling activation decides hosts' results after their downloads: their JSON
    /// lines are printed from the final report instead.
    defer_hosts: bool,
}

impl Display {
    fn new(json: bool, total: usize) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} hosts {prefix}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message("deploying");
            bar
        });
        Display {
            json,
            bar,
            total,
            done: 0,
            failed: 0,
            bytes: HashMap::new(),
            counted: HashSet::new(),
            last: (Instant::now(), 0),
            rate: 0.0,
            defer_hosts: false,
        }
    }

    fn say(&self, line: &str) {
        // Host names are checked, but reasons quote what hosts printed: escaped.
        let line = printable(line);
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.json => eprintln!("{line}"),
            None => {}
        }
    }

    fn refresh(&mut self) {
        let sum: u64 = self.bytes.values().sum();
        let now = Instant::now();
        let dt = now.duration_since(self.last.0).as_secs_f64();
        if dt >= 0.5 {
            self.rate = sum.saturating_sub(self.last.1) as f64 / dt;
            self.last = (now, sum);
        }
        if let Some(b) = &self.bar {
            b.set_position((self.done + self.failed) as u64);
            b.set_prefix(format!(
                "({} failed) {}/s, {} total",
                self.failed,
                human_size(self.rate as u64),
                human_size(sum)
            ));
        }
    }

    fn event(&mut self, ev: &FleetEvent) {
        match ev {
            FleetEvent::Seeding {
                name,
                bytes,
                pieces,
                seeder,
                tracker,
                hosts,
                racks,
                at,
                checked,
                torrent_time,
                hashed_bytes,
            } => {
                if self.json {
                    print_line(&DeployLine::Seeding {
                        name,
                        bytes: *bytes,
                        pieces: *pieces,
                        seeder: seeder.to_string(),
                        tracker,
                        hosts: *hosts,
                        racks: *racks,
                        at_s: seconds(*at),
                        checked_s: checked.map(seconds),
                        torrent_s: seconds(*torrent_time),
                        hashed_bytes: *hashed_bytes,
                    });
                }
                let by_rack = match racks {
                    0 => String::new(),
                    n => format!(", peers handed out by rack ({n} racks)"),
                };
                self.say(&format!(
                    "seeding {name} ({}, {pieces} pieces) from {seeder}, tracker {tracker}{by_rack}",
                    human_size(*bytes)
                ));
            }
            FleetEvent::Installing {
                swarm,
                ssh,
                binary_bytes,
                pieces,
            } => self.installing(*swarm, *ssh, *binary_bytes, *pieces),
            FleetEvent::Installed { host, how } => {
                let why = match how {
                    CorvidInstall::SwarmThenSsh(w) => format!(" (swarm failed: {w})"),
                    _ => String::new(),
                };
                self.say(&format!("{host}: installed corvid by {}{why}", how.label()));
            }
            FleetEvent::Warning(w) => {
                if self.json {
                    print_line(&DeployLine::Warning { message: w });
                }
                self.say(&format!("warning: {w}"));
            }
            FleetEvent::Checked { at, failed } => {
                if self.json {
                    print_line(&DeployLine::Checked {
                        at_s: seconds(*at),
                        failed: *failed,
                    });
                }
            }
            FleetEvent::HostProgress { host, bytes_down } => {
                self.bytes.insert(host.clone(), *bytes_down);
            }
            FleetEvent::HostReleased {
                host,
                outcome,
                duration,
            } => {
                if self.counted.insert(host.clone()) {
                    self.done += 1;
                    self.say(&format!(
                        "[{}/{}] {host} {} in {:.1} s",
                        self.done + self.failed,
                        self.total,
                        outcome.label(),
                        duration.as_secs_f64()
                    ));
                }
            }
            FleetEvent::HostDone(r) => self.host_done(r),
            FleetEvent::Wave {
                wave,
                hosts,
                ok,
                rolled_back,
            } => self.wave(*wave, hosts, *ok, rolled_back),
            FleetEvent::PeersStopped { peers } => {
                if self.json {
                    print_line(&DeployLine::PeersStopped { peers: *peers });
                }
                if *peers > 0 {
                    self.say(&format!(
                        "every host holds the release: stopping {peers} lingering peers"
                    ));
                }
            }
        }
        self.refresh();
    }

    fn installing(&mut self, swarm: usize, ssh: usize, binary_bytes: u64, pieces: u32) {
        if swarm > 0 {
            self.say(&format!(
                "installing corvid ({}) on {} hosts: {swarm} by the swarm ({pieces} pieces), {ssh} over ssh",
                human_size(binary_bytes),
                swarm + ssh
            ));
        } else if ssh > 0 {
            self.say(&format!(
                "installing corvid ({}) on {ssh} hosts over ssh",
                human_size(binary_bytes)
            ));
        }
    }

    /// A wave of a rolling activation is over.
    fn wave(&mut self, wave: usize, hosts: &[String], ok: bool, rolled_back: &[String]) {
        if self.json {
            print_line(&DeployLine::Wave {
                wave,
                hosts,
                ok,
                rolled_back,
            });
        }
        let mut line = format!(
            "wave {wave} ({}): {}",
            hosts.join(","),
            if ok {
                "activated"
            } else {
                "FAILED: the rollout stops here, later waves keep their old release"
            }
        );
        if !rolled_back.is_empty() {
            line.push_str(&format!("; rolled back {}", rolled_back.join(",")));
        }
        self.say(&line);
    }

    /// A host's final result: a JSON line, and the count and a line unless its release
    /// was counted already (the caller refreshes the bar).
    fn host_done(&mut self, r: &HostResult) {
        if self.json && !self.defer_hosts {
            print_line(&DeployLine::Host(HostLine::new(r)));
        }
        if !self.counted.insert(r.host.clone()) {
            // Counted at its release already.
            return;
        }
        if r.outcome.ok() {
            self.done += 1;
        } else {
            self.failed += 1;
        }
        if !self.json {
            let why = match &r.outcome {
                fleet::HostOutcome::Failed(w) => format!(": {w}"),
                _ => String::new(),
            };
            self.say(&format!(
                "[{}/{}] {} {} in {:.1} s{why}",
                self.done + self.failed,
                self.total,
                r.host,
                r.outcome.label(),
                r.duration.as_secs_f64()
            ));
        }
    }
}

/// The `--json` lines of `corvid deploy`, one object per line, keys in this order.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum DeployLine<'a> {
    Seeding {
        name: &'a str,
        bytes: u64,
        pieces: u32,
        seeder: String,
        tracker: &'a str,
        hosts: usize,
        #[serde(skip_serializing_if = "is_zero_usize")]
        racks: usize,
        /// When the seeder was up and the hosts' checks ended (deploy clock), and how
        /// long the torrent's build took (beside the checks where it could).
        at_s: Box<RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        checked_s: Option<Box<RawValue>>,
        torrent_s: Box<RawValue>,
        /// Release bytes hashed for the torrent (the rest came from the hash cache).
        hashed_bytes: u64,
    },
    Warning {
        message: &'a str,
    },
    /// Every host's check is in (deploy clock); `failed` of them failed.
    Checked {
        at_s: Box<RawValue>,
        failed: usize,
    },
    /// A wave of a rolling activation.
    Wave {
        wave: usize,
        hosts: &'a [String],
        ok: bool,
        rolled_back: &'a [String],
    },
    /// Every host holds the release; this many lingering peers were told to stop.
    PeersStopped {
        peers: usize,
    },
    Host(HostLine<'a>),
    Summary(SummaryLine<'a>),
}

/// One host's result.
#[derive(Serialize)]
struct HostLine<'a> {
    host: &'a str,
    result: &'static str,
    duration_s: Box<RawValue>,
    bytes_from_seeder: u64,
    bytes_from_peers: u64,
    /// Taken from a release already on the host (omitted when none was).
    #[serde(skip_serializing_if = "is_zero")]
    bytes_reused: u64,
    /// The host's node start to its download complete, and of that, the base fill.
    #[serde(skip_serializing_if = "Option::is_none")]
    download_s: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reuse_s: Option<Box<RawValue>>,
    /// On the deploy's clock: the host's check done, and its peer told to go.
    #[serde(skip_serializing_if = "Option::is_none")]
    checked_s: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    go_s: Option<Box<RawValue>>,
    installed_corvid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    corvid: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corvid_swarm_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corvid_from_seeder: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corvid_from_peers: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pruned: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_status: Option<Option<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_output: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl<'a> HostLine<'a> {
    fn new(r: &'a HostResult) -> Self {
        let c = r.corvid.as_ref();
        let swarmed = c.filter(|c| c.swarm_from_seeder + c.swarm_from_peers > 0);
        HostLine {
            host: &r.host,
            result: r.outcome.label(),
            duration_s: seconds(r.duration),
            bytes_from_seeder: r.bytes_from_seeder,
            bytes_from_peers: r.bytes_from_peers,
            bytes_reused: r.bytes_reused,
            download_s: r.download_time.map(seconds),
            reuse_s: r.fill_time.map(seconds),
            checked_s: r.checked.map(seconds),
            go_s: r.go.map(seconds),
            installed_corvid: r.installed_corvid(),
            corvid: c.map(|c| c.how.label()),
            corvid_swarm_error: c.and_then(|c| match &c.how {
                CorvidInstall::SwarmThenSsh(w) => Some(w.to_string()),
                _ => None,
            }),
            corvid_from_seeder: swarmed.map(|c| c.swarm_from_seeder),
            corvid_from_peers: swarmed.map(|c| c.swarm_from_peers),
            pruned: &r.pruned,
            hook_status: r.hook.as_ref().map(|h| h.status),
            hook_output: r.hook.as_ref().map(|h| h.tail.as_slice()),
            error: match &r.outcome {
                fleet::HostOutcome::Failed(w) => Some(w.to_string()),
                _ => None,
            },
        }
    }
}

/// The last line: counts, bytes, and what installing corvid cost.
#[derive(Serialize)]
struct SummaryLine<'a> {
    hosts: usize,
    deployed: usize,
    skipped: usize,
    failed: usize,
    failed_hosts: Vec<&'a str>,
    elapsed_s: Box<RawValue>,
    payload_bytes: u64,
    seeder_uploaded: u64,
    corvid_bytes: u64,
    corvid_file_bytes: u64,
    corvid_stream_bytes: u64,
    corvid_by_swarm: usize,
    corvid_by_ssh: usize,
    corvid_fell_back: usize,
    corvid_seeder_uploaded: u64,
    corvid_peers_exchanged: u64,
    corvid_ssh_uploaded: u64,
    corvid_install_s: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corvid_swarm_error: Option<&'a str>,
}

impl<'a> SummaryLine<'a> {
    fn new(report: &'a fleet::FleetReport) -> Self {
        let count = |l: &str| {
            report
                .hosts
                .iter()
                .filter(|h| h.outcome.label() == l)
                .count()
        };
        let i = &report.install;
        SummaryLine {
            hosts: report.hosts.len(),
            deployed: count("deployed"),
            skipped: count("skipped"),
            failed: count("failed"),
            failed_hosts: report
                .hosts
                .iter()
                .filter(|h| !h.outcome.ok())
                .map(|h| h.host.as_str())
                .collect(),
            elapsed_s: seconds(report.elapsed),
            payload_bytes: report.payload_bytes,
            seeder_uploaded: report.seeder_uploaded,
            corvid_bytes: i.binary_bytes,
            corvid_file_bytes: i.file_bytes,
            corvid_stream_bytes: i.stream_bytes,
            corvid_by_swarm: i.by_swarm,
            corvid_by_ssh: i.by_ssh,
            corvid_fell_back: i.fell_back,
            corvid_seeder_uploaded: i.seeder_uploaded,
            corvid_peers_exchanged: i.peers_exchanged,
            corvid_ssh_uploaded: i.ssh_uploaded,
            corvid_install_s: seconds(i.elapsed),
            corvid_swarm_error: i.swarm_error.as_deref(),
        }
    }
}

/// Seconds with exactly three decimals (`2.775`, `0.000`), as these lines always had.
fn seconds(d: Duration) -> Box<RawValue> {
    RawValue::from_string(format!("{:.3}", d.as_secs_f64()))
        .expect("a formatted float is a JSON number")
}

impl DeployLine<'_> {
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("deploy lines have string keys and plain values")
    }
}

/// Prints one line; a closed stdout ends the output, not the deploy.
fn print_line(line: &DeployLine<'_>) {
    let _ = print(&format!("{}\n", line.to_json()));
}

/// The install phase in one line (none when nothing was installed): what the binary
/// cost the deployer's uplink, by the swarm and over ssh, and what hosts traded.
fn install_line(i: &InstallSummary) -> Option<String> {
    if i.by_swarm + i.by_ssh == 0 {
        return None;
    }
    let mut line = format!(
        "corvid ({}; {} with debug info, {} compressed over ssh) installed on {} hosts in {:.1} s: {} by the swarm, {} over ssh",
        human_size(i.binary_bytes),
        human_size(i.file_bytes),
        human_size(i.stream_bytes),
        i.by_swarm + i.by_ssh,
        i.elapsed.as_secs_f64(),
        i.by_swarm,
        i.by_ssh
    );
    if i.fell_back > 0 {
        line.push_str(&format!(" ({} after the swarm failed)", i.fell_back));
    }
    line.push_str(&format!(
        "; this machine uploaded {} to the swarm and {} over ssh",
        human_size(i.seeder_uploaded),
        human_size(i.ssh_uploaded)
    ));
    if i.pieces > 0 {
        line.push_str(&format!(", hosts traded {}", human_size(i.peers_exchanged)));
    }
    if let Some(e) = &i.swarm_error {
        line.push_str(&format!(" (no swarm: {e})"));
    }
    line.push('\n');
    Some(line)
}

fn table(report: &fleet::FleetReport) -> String {
    let w = report
        .hosts
        .iter()
        .map(|h| h.host.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<w$}  {:>8}  {:>10}  {:>10}  {:>10}  {:<10}  result\n",
        "host", "time", "reused", "seeder", "peers", "corvid"
    );
    for h in &report.hosts {
        let result = match &h.outcome {
            fleet::HostOutcome::AlreadyPresent => "skipped (already present)".to_string(),
            fleet::HostOutcome::Failed(w) => format!("FAILED: {}", printable(&w.to_string())),
            o => o.label().to_string(),
        };
        let result = if h.pruned.is_empty() {
            result
        } else {
            format!("{result}; pruned {}", h.pruned.join(","))
        };
        out.push_str(&format!(
            "{:<w$}  {:>7.1}s  {:>10}  {:>10}  {:>10}  {:<10}  {result}\n",
            h.host,
            h.duration.as_secs_f64(),
            human_size(h.bytes_reused),
            human_size(h.bytes_from_seeder),
            human_size(h.bytes_from_peers),
            h.corvid.as_ref().map_or("-", |c| c.how.label()),
        ));
    }
    if let Some(line) = install_line(&report.install) {
        out.push_str(&line);
    }
    let ok = report.hosts.iter().filter(|h| h.outcome.ok()).count();
    out.push_str(&format!(
        "{ok}/{} hosts ok in {:.1} s; payload {}, seeder uploaded {} ({:.2} copies)\n",
        report.hosts.len(),
        report.elapsed.as_secs_f64(),
        human_size(report.payload_bytes),
        human_size(report.seeder_uploaded),
        report.seeder_uploaded as f64 / report.payload_bytes.max(1) as f64
    ));
    out
}

/// `$XDG_CACHE_HOME/corvid/pieces`, else `$HOME/.cache/corvid/pieces` (absolute paths
/// only, as the XDG spec asks); `None` without either: no cache.
fn default_hash_cache() -> Option<PathBuf> {
    let abs = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(abs)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(abs)
                .map(|h| h.join(".cache"))
        })
        .map(|c| c.join("corvid/pieces"))
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    let local_corvid = std::env::current_exe()
        .map_err(|e| Failure::input(anyhow!("cannot find this corvid binary: {e}")))?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let plan = DeployPlan {
        hosts: args.hosts,
        src: args.src,
        dest: args.dest,
        tag: args.tag,
        seeder_addr: args.seeder_addr,
        activate: args.activate,
        force: args.force,
        linger: args.linger,
        stall_timeout: args.stall_timeout,
        parallel: args.parallel,
        ssh: Ssh {
            options: args.ssh_options,
            program: None,
            control_dir: None,
        },
        ssh_multiplex: !args.no_ssh_multiplex,
        remote_corvid: args.remote_corvid,
        local_corvid,
        swarm_install_min: args.swarm_install_min,
        tracker_port: args.tracker_port,
        threads,
        secret: args.secret.load()?,
        keep: args.keep,
        after_activate: args.after_activate,
        hook_timeout: args.hook_timeout,
        batch: args.batch,
        check: args.check,
        rollback_on_failure: args.rollback_on_failure,
        align: args.align,
        base: args.base,
        peer_network: args.peer_network,
        hash_cache: if args.no_hash_cache {
            None
        } else {
            args.hash_cache.or_else(default_hash_cache)
        },
        uplink: args.uplink,
    };
    // Checked here first so a usage mistake is reported before anything starts.
    // A host that is not a host is a usage mistake like a bad flag (exit 2).
    let v = fleet::validate(&plan).map_err(|e| match e {
        DeployError::Hosts(HostsError::BadHost(_))
        | DeployError::DestNotUtf8(_)
        | DeployError::Keep
        | DeployError::NeedsActivate(_)
        | DeployError::EmptyHook
        | DeployError::HookTimeout
        | DeployError::BatchTooLarge { .. }
        | DeployError::NeedsBatch(_)
        | DeployError::EmptyCheck
        | DeployError::NotInPeerNetwork { .. } => Failure {
            code: Exit::Usage,
            error: e.into(),
        },
        e => Failure::input(e),
    })?;
    let stop = roles::stop_on_signals()?;
    let mut display = Display::new(args.json, v.hosts.len());
    display.defer_hosts = plan.batch.is_some();
    let report = fleet::run(&plan, stop, &mut |ev| display.event(ev)).map_err(|e| match e {
        DeployError::Seeder(_) | DeployError::Tracker(_) => Failure::output(e),
        DeployError::Interrupted => Failure {
            code: Exit::Interrupted,
            error: e.into(),
        },
        e => Failure::input(e),
    });
    if let Some(b) = display.bar.take() {
        b.finish_and_clear();
    }
    let report = report?;
    if args.json && display.defer_hosts {
        for h in &report.hosts {
            print_line(&DeployLine::Host(HostLine::new(h)));
        }
    }
    if args.json {
        print(&format!(
            "{}\n",
            DeployLine::Summary(SummaryLine::new(&report)).to_json()
        ))?;
    } else {
        print(&table(&report))?;
    }
    if report.all_ok() {
        return Ok(Exit::Ok);
    }
    for h in &report.hosts {
        if let fleet::HostOutcome::Failed(w) = &h.outcome {
            eprintln!("corvid: {} failed: {}", h.host, printable(&w.to_string()));
        }
    }
    Ok(Exit::HostsFailed)
}

/// serde's `skip_serializing_if` for counters shown only when something was counted.
fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use corvid_engine::deploy::fleet::{FleetReport, HostOutcome};
    use corvid_engine::deploy::host_error::HostError;
    use corvid_engine::deploy::install::HostInstall;

    /// A host that reused its base release: `bytes_reused` in its JSON line (after the
    /// swarm's counters) and the table's `reused` column, as README.md shows them.
    #[test]
    fn reused_bytes_show_in_the_line_and_the_table() {
        let h = HostResult {
            host: "h1".into(),
            outcome: HostOutcome::Deployed,
            duration: Duration::from_millis(1248),
            bytes_from_seeder: 524288,
            bytes_from_peers: 0,
            bytes_reused: 6962643,
            download_time: Some(Duration::from_millis(1100)),
            fill_time: Some(Duration::from_millis(300)),
            checked: Some(Duration::from_millis(40)),
            go: Some(Duration::from_millis(61)),
            corvid: Some(HostInstall::present()),
            pruned: Vec::new(),
            hook: None,
        };
        assert_eq!(
            DeployLine::Host(HostLine::new(&h)).to_json(),
            r#"{"event":"host","host":"h1","result":"deployed","duration_s":1.248,"bytes_from_seeder":524288,"bytes_from_peers":0,"bytes_reused":6962643,"download_s":1.100,"reuse_s":0.300,"checked_s":0.040,"go_s":0.061,"installed_corvid":false,"corvid":"present"}"#
        );
        let report = FleetReport {
            hosts: vec![h],
            elapsed: Duration::from_millis(2000),
            payload_bytes: 7000000,
            seeder_uploaded: 524288,
            install: InstallSummary::default(),
        };
        let t = table(&report);
        let mut lines = t.lines();
        assert_eq!(
            lines.next(),
            Some("host      time      reused      seeder       peers  corvid      result")
        );
        assert_eq!(
            lines.next(),
            Some("h1        1.2s     6.6 MiB   512.0 KiB         0 B  present     deployed")
        );
    }

    /// The lines README.md shows, byte for byte, and the optional fields in their places.
    #[test]
    fn json_lines_keep_their_bytes() {
        let skipped = HostResult {
            host: "h4".into(),
            outcome: HostOutcome::AlreadyPresent,
            duration: Duration::from_millis(3048),
            bytes_from_seeder: 0,
            bytes_from_peers: 0,
            bytes_reused: 0,
            download_time: None,
            fill_time: None,
            checked: None,
            go: None,
            corvid: Some(HostInstall::present()),
            pruned: Vec::new(),
            hook: None,
        };
        assert_eq!(
            DeployLine::Host(HostLine::new(&skipped)).to_json(),
            r#"{"event":"host","host":"h4","result":"skipped","duration_s":3.048,"bytes_from_seeder":0,"bytes_from_peers":0,"installed_corvid":false,"corvid":"present"}"#
        );
        let deployed = HostResult {
            host: "h2".into(),
            outcome: HostOutcome::Deployed,
            duration: Duration::from_millis(2775),
            bytes_from_seeder: 3000007,
            ..skipped.clone()
        };
        let report = FleetReport {
            hosts: vec![deployed, skipped.clone()],
            elapsed: Duration::from_millis(7940),
            payload_bytes: 3000007,
            seeder_uploaded: 3000007,
            install: InstallSummary {
                binary_bytes: 4594256,
                file_bytes: 53409584,
                stream_bytes: 1613185,
                ..InstallSummary::default()
            },
        };
        assert_eq!(
            DeployLine::Summary(SummaryLine::new(&report)).to_json(),
            r#"{"event":"summary","hosts":2,"deployed":1,"skipped":1,"failed":0,"failed_hosts":[],"elapsed_s":7.940,"payload_bytes":3000007,"seeder_uploaded":3000007,"corvid_bytes":4594256,"corvid_file_bytes":53409584,"corvid_stream_bytes":1613185,"corvid_by_swarm":0,"corvid_by_ssh":0,"corvid_fell_back":0,"corvid_seeder_uploaded":0,"corvid_peers_exchanged":0,"corvid_ssh_uploaded":0,"corvid_install_s":0.000}"#
        );

        let failed = HostResult {
            host: "h\"3".into(),
            outcome: HostOutcome::Failed(HostError::NoRelease),
            corvid: Some(HostInstall {
                how: CorvidInstall::SwarmThenSsh(HostError::NoSwarm),
                swarm_from_seeder: 5,
                swarm_from_peers: 0,
                ssh_bytes: 9,
            }),
            ..skipped
        };
        assert_eq!(
            DeployLine::Host(HostLine::new(&failed)).to_json(),
            r#"{"event":"host","host":"h\"3","result":"failed","duration_s":3.048,"bytes_from_seeder":0,"bytes_from_peers":0,"installed_corvid":true,"corvid":"swarm->ssh","corvid_swarm_error":"no swarm","corvid_from_seeder":5,"corvid_from_peers":0,"error":"peer exited 0 without reporting a release"}"#
        );
        assert_eq!(
            DeployLine::Warning { message: "w\n" }.to_json(),
            r#"{"event":"warning","message":"w\n"}"#
        );
    }
}
