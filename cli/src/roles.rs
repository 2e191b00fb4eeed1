//! What the swarm roles (`seed`, `peer`) share: flags for the node, turning a torrent
//! into a node configuration, signals, and printing node events as a progress bar on a
//! terminal, JSON lines with `--json`, or a few plain lines otherwise.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};

use corvid_engine::metainfo::{FileSpec, Metainfo};
use corvid_engine::metrics::{MetricsServer, Registry};
use corvid_engine::node::resume::{RecordStatus, ResumeReport};
use corvid_engine::node::{self, Mode, NodeConfig, NodeError, NodeEvent, NodeReport, StopFlag};
use corvid_engine::peer::auth::Secret;
use corvid_engine::runtime::{local_ips, Network};
use corvid_engine::stats::{json_seconds, to_json_line};

use crate::output::{human_size, print, printable};
use crate::{Exit, Failure};

/// One `--json` line of `seed` and `peer`, tagged by `event`; fields in the order printed
/// (scripts, the benches and the deployer read them).
#[derive(serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeLine<'a> {
    Listening {
        peer_addr: SocketAddr,
        /// `seed --tracker`: where its tracker listens.
        #[serde(skip_serializing_if = "Option::is_none")]
        tracker_addr: Option<SocketAddr>,
    },
    Checked {
        have: u32,
        pieces: u32,
        resume: &'a ResumeReport,
    },
    Warning {
        message: &'a str,
    },
    Progress {
        have: u32,
        pieces: u32,
        bytes_down: u64,
        bytes_up: u64,
        peers: usize,
    },
    Complete {
        #[serde(serialize_with = "json_seconds")]
        elapsed_s: Option<Duration>,
    },
    TrackerError {
        url: &'a str,
        error: &'a str,
    },
    PeerClosed {
        addr: SocketAddr,
        reason: &'a str,
    },
    Done {
        report: &'a NodeReport,
    },
    /// `--metrics-listen`: where the Prometheus endpoint listens.
    MetricsListening {
        metrics_addr: SocketAddr,
    },
    /// The node stopped with an error: `kind` is [`NodeError::kind`], `exit` the process's
    /// exit code, `error` the message stderr also gets.
    Failed {
        kind: &'a str,
        exit: u8,
        error: &'a str,
    },
}

impl NodeLine<'_> {
    pub fn listening(peer_addr: SocketAddr, tracker_addr: Option<SocketAddr>) -> Self {
        NodeLine::Listening {
            peer_addr,
            tracker_addr,
        }
    }

    /// The line as printed, without the newline.
    pub fn to_json(&self) -> String {
        to_json_line(self)
    }
}

/// Flags every swarm role takes.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Address to accept peer connections on (port 0: any free port).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Listen on this host's address in network CIDR (e.g. a data network's
    /// 10.1.0.0/16), any free port; connections to peers and the tracker go from that
    /// address too. Fails at start when no interface has an address in CIDR.
    #[arg(long, value_name = "CIDR", conflicts_with = "listen")]
    pub listen_network: Option<Network>,
    /// Event-loop threads, one io_uring each [default: number of CPUs].
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// Hashing threads [default: number of CPUs].
    #[arg(long, value_name = "N")]
    pub hash_threads: Option<usize>,
    /// Peer to connect to at start, besides those the tracker names (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    pub peers: Vec<SocketAddr>,
    /// Announce here instead of the torrent's trackers (repeatable).
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// Do not announce to any tracker (use --peer).
    #[arg(long)]
    pub no_announce: bool,
    /// Most connections at once.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections: usize,
    /// This host's uplink rate, e.g. 10gbit, 100mbit (tc's units): while seeding, the
    /// followers of the seeding plan each get at most 1.5 x an equal share of it, so the
    /// first copies spread over all of them at once; while downloading, uploads together
    /// keep to 97% of it; every socket holds at most 5 ms of it unsent. Unset: no pacing.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub uplink: Option<u64>,
    /// Print JSON lines (events, then a final report) on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics at http://IP:PORT/metrics (port 0: any free port; the
    /// bound address is printed at start).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// How uploads are sent: copy (sendmsg from the mapping), splice (from the file
    /// through a pipe, no copy on this host), auto (splice to other hosts, copy to this
    /// one, where the receiver would pay for it), zerocopy (io_uring SENDMSG_ZC of each
    /// batch; the kernel still copies towards a socket on this host). Falls back to
    /// copy, with a warning, where the kernel cannot do it.
    #[arg(long, value_name = "copy|splice|auto|zerocopy", default_value = "copy")]
    pub send_path: corvid_engine::runtime::SendPath,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub racks: RackArgs,
}

/// Where the fleet's racks come from (issue 11).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RackArgs {
    /// Racks of the fleet, in the format `corvid tracker --topology` reads (lines `ADDR
    /// rack=NAME`, ADDR an IP, IP:PORT or CIDR network). A downloading peer then asks
    /// connections to peers of its own rack for what they have and fetches across racks
    /// only what no rack-mate has; `seed` also gives it to its embedded tracker.
    #[arg(long, value_name = "FILE", conflicts_with = "topology_rules")]
    pub topology: Option<PathBuf>,
    /// The same rules as --topology, as text (lines or `;`-separated): what `corvid
    /// deploy` passes, for it has no file on the host.
    #[arg(long, value_name = "RULES")]
    pub topology_rules: Option<String>,
    /// This host's rack [default: the rack of the address it listens on, or sends from
    /// towards its first --peer or tracker].
    #[arg(long, value_name = "NAME")]
    pub rack: Option<String>,
}

impl RackArgs {
    /// The topology from --topology or --topology-rules, checked (a bad line, or a
    /// --rack no rule names, is the operator's input error).
    pub fn load(&self) -> Result<Option<node::NodeRacks>, Failure> {
        let topology = match (&self.topology, &self.topology_rules) {
            (Some(path), _) => crate::tracker::load_topology(Some(path))?,
            (None, Some(rules)) => Some(Arc::new(
                corvid_engine::tracker::Topology::parse(
                    &rules.replace(';', "\n"),
                    "--topology-rules",
                )
                .map_err(Failure::input)?,
            )),
            (None, None) => {
                if let Some(r) = &self.rack {
                    return Err(Failure::input(anyhow!(
                        "--rack {r} needs --topology (which racks the other hosts are in)"
                    )));
                }
                return Ok(None);
            }
        };
        let Some(topology) = topology else {
            return Ok(None);
        };
        if let Some(r) = &self.rack {
            if topology.rack_named(r).is_none() {
                return Err(Failure::input(anyhow!(
                    "--rack {r}: no rule of the topology names that rack"
                )));
            }
        }
        Ok(Some(node::NodeRacks {
            topology,
            rack: self.rack.clone(),
        }))
    }
}

/// Where a private swarm's shared secret comes from. Never a command-line value: any
/// user on the host could read it in the process list.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// Make the swarm private: read the shared secret from FILE (trailing newlines are
    /// dropped), or set it in the environment variable CORVID_SECRET. There is no flag
    /// taking the secret itself, since the process list would show it. Peers and tracker
    /// then admit only those that prove the secret (HMAC challenge, never sent in clear).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

/// The environment variable a secret may come from instead of `--secret-file`.
pub const SECRET_ENV: &str = "CORVID_SECRET";

impl SecretArgs {
    /// The secret from `--secret-file`, else from `CORVID_SECRET`, else none (public).
    pub fn load(&self) -> Result<Option<Secret>, Failure> {
        let bytes = if let Some(path) = &self.secret_file {
            let mut b = std::fs::read(path).map_err(|e| {
                Failure::input(anyhow!(
                    "cannot read the secret file {}: {e}",
                    path.display()
                ))
            })?;
            while matches!(b.last(), Some(b'\n' | b'\r')) {
                b.pop();
            }
            if b.is_empty() {
                return Err(Failure::input(anyhow!(
                    "the secret file {} is empty",
                    path.display()
                )));
            }
            b
        } else {
            match std::env::var_os(SECRET_ENV) {
                Some(v) if !v.is_empty() => v.into_encoded_bytes(),
                _ => return Ok(None),
            }
        };
        Secret::new(&bytes)
            .map(Some)
            .map_err(|e| Failure::input(anyhow!("{e}")))
    }
}

/// Parses a link rate in tc's units (`100mbit`, `10gbit`, `500kbit`, `1000000bit`) into
/// bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, m)| t.strip_suffix(unit).map(|n| (n.to_owned(), *m)))
        .ok_or_else(|| format!("{s:?} is not a rate (e.g. 10gbit, 100mbit, 500kbit)"))?;
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 10gbit, 100mbit, 500kbit)"))?;
    let bytes = v * mult / 8.0;
    if !bytes.is_finite() || !(1.0..=1e13).contains(&bytes) {
        return Err(format!("{s:?} is out of range (1 byte/s to 80 tbit)"));
    }
    Ok(bytes as u64)
}

/// Parses `30s`, `2m`, `1h`, `500ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 2m, 500ms)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A node configuration for `m` with the payload at `root`/`files`.
pub fn node_config(
    mode: Mode,
    m: &Metainfo,
    root: PathBuf,
    files: Vec<FileSpec>,
    args: &NodeArgs,
    default_listen: SocketAddr,
) -> Result<NodeConfig, Failure> {
    if args.cores == Some(0) || args.hash_threads == Some(0) {
        return Err(Failure::input(anyhow!(
            "--cores and --hash-threads must be at least 1"
        )));
    }
    let trackers = if args.no_announce {
        Vec::new()
    } else if !args.trackers.is_empty() {
        args.trackers.clone()
    } else {
        m.trackers()
    };
    let peer = corvid_engine::peer::PeerConfig {
        secret: args.secret.load()?,
        ..Default::default()
    };
    Ok(NodeConfig {
        mode,
        info_hash: m.info_hash,
        lengths: m.info.lengths,
        piece_hashes: Arc::new(m.info.pieces.clone()),
        files,
        root,
        listen: listen_addr(args, default_listen)?,
        cores: args.cores.unwrap_or_else(cpus),
        hash_threads: args.hash_threads.unwrap_or_else(cpus),
        trackers,
        peers: args.peers.clone(),
        linger: Duration::ZERO,
        seed_until: node::SeedUntil::Stopped,
        trust_data: false,
        stall_timeout: Duration::from_secs(120),
        max_connections: args.max_connections,
        peer,
        swarm: corvid_engine::swarm::SwarmConfig {
            uplink: args.uplink,
            ..Default::default()
        },
        tuning: node::NodeTuning {
            send_path: args.send_path,
            ..Default::default()
        },
        announce_port: 0,
        resume: None,
        base: None,
        racks: args.racks.load()?,
    })
}

/// `--listen`, else this host's address in `--listen-network` (port as `default`'s), else
/// `default`.
fn listen_addr(args: &NodeArgs, default: SocketAddr) -> Result<SocketAddr, Failure> {
    let Some(net) = &args.listen_network else {
        return Ok(args.listen.unwrap_or(default));
    };
    let ips = local_ips().map_err(|e| {
        Failure::input(anyhow!(
            "--listen-network {net}: cannot list this host's addresses: {e}"
        ))
    })?;
    match ips.iter().find(|ip| net.contains(**ip)) {
        Some(ip) => Ok(SocketAddr::new(*ip, default.port())),
        None => {
            let have: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            Err(Failure::input(anyhow!(
                "--listen-network {net}: no address of this host is in that network (it has {})",
                have.join(", ")
            )))
        }
    }
}

/// Starts the `--metrics-listen` endpoint, if asked, serving what `fill` registers, and
/// says where it listens (a `metrics_listening` JSON line, or a line on stderr).
pub fn start_metrics(
    listen: Option<SocketAddr>,
    json: bool,
    fill: impl FnOnce(&mut Registry),
) -> Result<Option<MetricsServer>, Failure> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let mut registry = Registry::default();
    fill(&mut registry);
    let server = MetricsServer::start(addr, Arc::new(registry))
        .map_err(|e| Failure::output(anyhow!("cannot serve metrics: {e}")))?;
    let metrics_addr = server.local_addr();
    if json {
        let line = NodeLine::MetricsListening { metrics_addr };
        print(&format!("{}\n", line.to_json()))?;
    } else {
        eprintln!("metrics on http://{metrics_addr}/metrics");
    }
    Ok(Some(server))
}

/// SIGINT and SIGTERM set the stop flag: the node finishes cleanly (announces `stopped`,
/// flushes, prints its report).
pub fn stop_on_signals() -> Result<StopFlag, Failure> {
    let stop = StopFlag::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.as_arc())
            .map_err(|e| Failure::output(anyhow!("cannot install a signal handler: {e}")))?;
    }
    Ok(stop)
}

/// Prints node events: JSON lines, a progress bar on a terminal, or nothing but the
/// important lines.
pub struct Printer {
    json: bool,
    bar: Option<ProgressBar>,
    total_bytes: u64,
    piece_length: u64,
}

impl Printer {
    pub fn new(json: bool, total_bytes: u64, piece_length: u64, what: &str) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_bytes);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {prefix}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.to_owned());
            bar
        });
        Printer {
            json,
            bar,
            total_bytes,
            piece_length,
        }
    }

    /// A line for humans: above the bar on a terminal, on stderr otherwise (stdout stays
    /// for results).
    fn say(&self, line: &str) {
        // Tracker URLs and messages may come from the torrent or a tracker: escaped.
        let line = printable(line);
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn json_line(&self, line: &NodeLine<'_>) {
        let _ = print(&format!("{}\n", to_json_line(line)));
    }

    pub fn event(&mut self, ev: &NodeEvent) {
        match ev {
            NodeEvent::Listening { peer_addr } => {
                if self.json {
                    self.json_line(&NodeLine::listening(*peer_addr, None));
                } else {
                    self.say(&format!("listening for peers on {peer_addr}"));
                }
            }
            NodeEvent::Checked {
                have,
                total,
                resume,
            } => {
                if self.json {
                    self.json_line(&NodeLine::Checked {
                        have: *have,
                        pieces: *total,
                        resume,
                    });
                } else {
                    if let Some(line) = resume_line(resume, *total) {
                        self.say(&line);
                    }
                    if let Some(r) = &resume.reuse {
                        self.say(&format!(
                            "base {}: {} pieces ({}) reused, {} failed their hash{}",
                            printable(&r.base),
                            r.reused_pieces,
                            human_size(r.reused_bytes),
                            r.rejected_pieces,
                            r.warning
                                .as_deref()
                                .map(|w| format!(" ({})", printable(w)))
                                .unwrap_or_default()
                        ));
                    }
                    if *have > 0 && have < total {
                        self.say(&format!(
                            "resuming: {have} of {total} pieces already verified"
                        ));
                    }
                }
            }
            NodeEvent::Warning { message } => {
                if self.json {
                    self.json_line(&NodeLine::Warning { message });
                } else {
                    self.say(&format!("warning: {message}"));
                }
            }
            NodeEvent::Progress(p) => {
                let done = (u64::from(p.have) * self.piece_length).min(self.total_bytes);
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                    bar.set_prefix(format!("up {} peers {}", human_size(p.bytes_up), p.peers));
                } else if self.json {
                    self.json_line(&NodeLine::Progress {
                        have: p.have,
                        pieces: p.total,
                        bytes_down: p.bytes_down,
                        bytes_up: p.bytes_up,
                        peers: p.peers,
                    });
                }
            }
            NodeEvent::Complete { elapsed } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(self.total_bytes);
                }
                if self.json {
                    self.json_line(&NodeLine::Complete {
                        elapsed_s: Some(*elapsed),
                    });
                } else {
                    self.say(&format!(
                        "complete: {} verified in {:.2} s",
                        human_size(self.total_bytes),
                        elapsed.as_secs_f64()
                    ));
                }
            }
            NodeEvent::TrackerError { url, error } => {
                if self.json {
                    self.json_line(&NodeLine::TrackerError { url, error });
                } else {
                    self.say(&format!("tracker {url}: {error}"));
                }
            }
            NodeEvent::PeerClosed { addr, reason } => {
                if self.json {
                    self.json_line(&NodeLine::PeerClosed {
                        addr: *addr,
                        reason,
                    });
                }
            }
            // The release line that follows says what was done with the durable payload.
            NodeEvent::Durable => {}
        }
    }

    /// The final report: `{"event":"done","report":{...}}` or a short text summary.
    pub fn report(&mut self, r: &NodeReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.json {
            self.json_line(&NodeLine::Done { report: r });
            return;
        }
        let t = &r.transfer;
        let mut lines = vec![format!(
            "down {} (seeder {}, peers {}), up {}, {:.2} s",
            human_size(t.bytes_down),
            human_size(t.bytes_from_seeder),
            human_size(t.bytes_from_peers),
            human_size(t.bytes_up),
            t.elapsed.as_secs_f64()
        )];
        if t.piece_latency_us.count > 0 {
            lines.push(format!(
                "piece latency p50 {:.1} ms, p99 {:.1} ms",
                t.piece_latency_us.p50 as f64 / 1000.0,
                t.piece_latency_us.p99 as f64 / 1000.0
            ));
        }
        if t.pieces_failed > 0 || !r.banned.is_empty() {
            lines.push(format!(
                "{} pieces failed their hash and were fetched again; banned: {:?}",
                t.pieces_failed, r.banned
            ));
        }
        for l in lines {
            self.say(&l);
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// The node failed: clears the bar, says so on stdout with `--json` (a `failed` line
    /// naming the kind of error and the exit code), and returns the failure for `main`.
    pub fn fail(&mut self, e: NodeError) -> Failure {
        self.finish();
        let kind = e.kind();
        let f = node_failure(e);
        if self.json {
            let error = format!("{:#}", f.error);
            self.json_line(&NodeLine::Failed {
                kind,
                exit: f.code.code(),
                error: &error,
            });
        }
        f
    }
}

/// The one human line about the start-up check of a download, or nothing for a fresh
/// download (no record, nothing on disk) or a seeder.
fn resume_line(r: &ResumeReport, total: u32) -> Option<String> {
    let hashed = format!(
        "{} pieces ({}) hashed",
        r.rechecked_pieces,
        human_size(r.rechecked_bytes)
    );
    let why = r
        .reason
        .as_deref()
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    match r.record {
        RecordStatus::Off => None,
        RecordStatus::Absent if r.rechecked_pieces == 0 => None,
        RecordStatus::Used => Some(format!(
            "resume record used: {} of {total} pieces trusted without hashing, {hashed}{why}",
            r.trusted_pieces
        )),
        RecordStatus::Absent => Some(format!("no resume record: {hashed}")),
        RecordStatus::Mismatch | RecordStatus::Invalid => {
            Some(format!("resume record ignored{why}: {hashed}"))
        }
    }
}

/// The exit code and message for a node that failed.
pub fn node_failure(e: NodeError) -> Failure {
    let code = match &e {
        NodeError::Uring(_) => Exit::Unavailable,
        NodeError::Storage(_) => Exit::Output,
        NodeError::BadSeedData { .. } => Exit::DataBad,
        NodeError::Stalled { .. } => Exit::GaveUp,
        NodeError::Interrupted { .. } => Exit::Interrupted,
        NodeError::Runtime(_) => Exit::Output,
        NodeError::StorageWrite { .. } => Exit::Output,
    };
    Failure {
        code,
        error: anyhow::Error::new(e),
    }
}

/// Where the downloaded payload goes: `dest/NAME`, refusing a destination that is a
/// file.
pub fn dest_root(dest: &Path) -> Result<PathBuf, Failure> {
    if dest.exists() && !dest.is_dir() {
        return Err(Failure::input(anyhow!(
            "destination {} exists and is not a directory",
            dest.display()
        )));
    }
    std::fs::create_dir_all(dest)
        .map_err(|e| Failure::output(anyhow!("cannot create {}: {e}", dest.display())))?;
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corvid_engine::stats::Report;

    /// Every kind of line, byte for byte as the hand-written builder printed it.
    #[test]
    fn rates_parse_in_tc_units_and_bad_ones_say_why() {
        assert_eq!(parse_rate("100mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("10Gbit"), Ok(1_250_000_000));
        assert_eq!(parse_rate("1.5mbit"), Ok(187_500));
        assert_eq!(parse_rate("800bit"), Ok(100));
        for bad in ["", "100", "100mb", "fastbit", "0bit", "-5mbit", "1e30gbit"] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn json_lines_keep_their_bytes() {
        let addr: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let tracker: SocketAddr = "[::1]:8998".parse().unwrap();
        let resume = ResumeReport {
            record: RecordStatus::Invalid,
            reason: Some("torn \"record\"\n".into()),
            trusted_pieces: 0,
            rechecked_pieces: 4,
            rechecked_bytes: 1000,
            reuse: None,
        };
        let report = NodeReport {
            peer_addr: addr,
            complete: false,
            pieces: 4,
            bytes_total: 1000,
            wasted: 0,
            banned: Vec::new(),
            download_time: None,
            transfer: Report {
                label: None,
                elapsed: Duration::from_secs(2),
                bytes_down: 0,
                bytes_up: 0,
                bytes_from_seeder: 0,
                bytes_from_peers: 0,
                pieces_verified: 0,
                pieces_failed: 0,
                down_rate_bps: 0.0,
                piece_latency_us: Default::default(),
            },
            resume: ResumeReport::off(),
            swarm_lock: Default::default(),
            rack: None,
            timeline: Default::default(),
            send_path: None,
        };
        let cases = [
            (
                NodeLine::listening(addr, None),
                r#"{"event":"listening","peer_addr":"127.0.0.1:6881"}"#,
            ),
            (
                NodeLine::listening(addr, Some(tracker)),
                r#"{"event":"listening","peer_addr":"127.0.0.1:6881","tracker_addr":"[::1]:8998"}"#,
            ),
            (
                NodeLine::MetricsListening {
                    metrics_addr: tracker,
                },
                r#"{"event":"metrics_listening","metrics_addr":"[::1]:8998"}"#,
            ),
            (
                NodeLine::Checked {
                    have: 0,
                    pieces: 4,
                    resume: &resume,
                },
                r#"{"event":"checked","have":0,"pieces":4,"resume":{"record":"invalid","reason":"torn \"record\"\n","trusted_pieces":0,"rechecked_pieces":4,"rechecked_bytes":1000}}"#,
            ),
            (
                NodeLine::Warning {
                    message: "disk full\u{2028}",
                },
                r#"{"event":"warning","message":"disk full\u2028"}"#,
            ),
            (
                NodeLine::Progress {
                    have: 1,
                    pieces: 4,
                    bytes_down: 250,
                    bytes_up: 10,
                    peers: 3,
                },
                r#"{"event":"progress","have":1,"pieces":4,"bytes_down":250,"bytes_up":10,"peers":3}"#,
            ),
            (
                NodeLine::Complete {
                    elapsed_s: Some(Duration::from_millis(2500)),
                },
                r#"{"event":"complete","elapsed_s":2.500000}"#,
            ),
            (
                NodeLine::TrackerError {
                    url: "http://t/a",
                    error: "refused",
                },
                r#"{"event":"tracker_error","url":"http://t/a","error":"refused"}"#,
            ),
            (
                NodeLine::PeerClosed {
                    addr,
                    reason: "stalled: 40 s",
                },
                r#"{"event":"peer_closed","addr":"127.0.0.1:6881","reason":"stalled: 40 s"}"#,
            ),
            (
                NodeLine::Failed {
                    kind: "storage_write",
                    exit: 4,
                    error: "writing received payload to /d/a failed",
                },
                r#"{"event":"failed","kind":"storage_write","exit":4,"error":"writing received payload to /d/a failed"}"#,
            ),
            (
                NodeLine::Done { report: &report },
                r#"{"event":"done","report":{"elapsed_s":2,"bytes_down":0,"bytes_up":0,"bytes_from_seeder":0,"bytes_from_peers":0,"pieces_verified":0,"pieces_failed":0,"down_rate_bps":0,"piece_latency_us":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"peer_addr":"127.0.0.1:6881","complete":false,"pieces":4,"bytes_total":1000,"wasted":0,"banned":[],"download_s":null,"resume":{"record":"off","reason":null,"trusted_pieces":0,"rechecked_pieces":0,"rechecked_bytes":0},"swarm_lock":{"acquisitions":0,"per_second":0,"held_fraction":0,"wait_ns":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"hold_ns":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0}},"timeline":{"first_tracker_answer_s":null,"first_peer_s":null,"first_payload_s":null,"samples":[]}}}"#,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(line.to_json(), want);
        }
    }
}
