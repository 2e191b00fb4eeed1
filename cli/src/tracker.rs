//! `corvid tracker`: the HTTP tracker alone (BEP 3 announce, BEP 23 compact peers,
//! scrape), for swarms whose seeder runs without its embedded one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;

use corvid_engine::tracker::{
    Topology, TrackerConfig, TrackerServer, DEFAULT_MAX_PEERS_PER_IP, DEFAULT_MAX_SWARMS_PER_IP,
};

use corvid_engine::metrics::{MetricsServer, Registry, TrackerCollector};
use corvid_engine::stats::to_json_line;

use crate::output::print;
use crate::roles;
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Run an HTTP BitTorrent tracker",
    long_about = "Run an HTTP BitTorrent tracker (announce with compact peer lists, and \
        scrape) until SIGINT/SIGTERM. Murder's default port 8998.",
    after_help = "Examples:\n  corvid tracker\n  corvid tracker --listen 127.0.0.1:0 --json\n  \
        corvid tracker --topology racks.txt    # lines: 10.1.0.0/16 rack=r1"
)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:8998")]
    listen: SocketAddr,
    /// Announce interval told to peers.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = roles::parse_duration)]
    interval: Duration,
    /// Most peers one source address (an IPv6 /64) may have in one swarm.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PEERS_PER_IP)]
    max_peers_per_ip: usize,
    /// Most swarms one source address (an IPv6 /64) may have peers in.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SWARMS_PER_IP)]
    max_swarms_per_ip: usize,
    /// Record the address clients claim with `ip=` instead of the connection's source:
    /// only behind a reverse proxy that sets it, since any client can claim any address.
    #[arg(long)]
    trust_ip_param: bool,
    /// Racks of the fleet: lines `ADDR rack=NAME` (ADDR an IP, IP:PORT or CIDR network,
    /// `#` comments). Peers in a known rack get mostly same-rack peers from the tracker.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Print the listening address as a JSON line.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics at http://IP:PORT/metrics (port 0: any free port; the
    /// bound address is printed at start).
    #[arg(long, value_name = "IP:PORT")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    secret: roles::SecretArgs,
}

/// The `--json` lines, one object each, `event` first.
#[derive(serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Line {
    Listening { tracker_addr: String },
    MetricsListening { metrics_addr: SocketAddr },
    Done { announces: u64, scrapes: u64 },
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    let stop = roles::stop_on_signals()?;
    let cfg = TrackerConfig {
        secret: args.secret.load()?,
        interval: args.interval,
        min_interval: args.interval.min(Duration::from_secs(10)),
        max_peers_per_ip: args.max_peers_per_ip,
        max_swarms_per_ip: args.max_swarms_per_ip,
        trust_ip_param: args.trust_ip_param,
        topology: load_topology(args.topology.as_deref())?,
        ..TrackerConfig::default()
    };
    let server = TrackerServer::bind(args.listen, cfg).map_err(|e| {
        Failure::output(anyhow!("cannot start the tracker on {}: {e}", args.listen))
    })?;
    let addr = server.local_addr();
    if args.json {
        let line = Line::Listening {
            tracker_addr: addr.to_string(),
        };
        print(&format!("{}\n", to_json_line(&line)))?;
    } else {
        print(&format!("tracker listening on {addr}\n"))?;
    }
    let _metrics = match args.metrics_listen {
        None => None,
        Some(listen) => {
            let mut registry = Registry::default();
            TrackerCollector::register(&mut registry, server.stats_handle());
            let m = MetricsServer::start(listen, Arc::new(registry))
                .map_err(|e| Failure::output(anyhow!("cannot serve metrics: {e}")))?;
            let metrics_addr = m.local_addr();
            if args.json {
                let line = Line::MetricsListening { metrics_addr };
                print(&format!("{}\n", to_json_line(&line)))?;
            } else {
                eprintln!("metrics on http://{metrics_addr}/metrics");
            }
            Some(m)
        }
    };
    // The server runs on its own thread; this one only waits for a signal. Polling a flag
    // is what signal-hook's flag API offers; 100 ms bounds the delay of a clean stop.
    while !stop.is_stopped() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = server.stats();
    server.shutdown();
    if args.json {
        let line = Line::Done {
            announces: stats.announces,
            scrapes: stats.scrapes,
        };
        print(&format!("{}\n", to_json_line(&line)))?;
    }
    Ok(Exit::Ok)
}

/// Reads `--topology`; a bad file is the operator's input error, named by line.
pub fn load_topology(path: Option<&Path>) -> Result<Option<Arc<Topology>>, Failure> {
    path.map(|p| Topology::load(p).map(Arc::new).map_err(Failure::input))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripts and the e2e tests read these lines: the bytes stay as they were when they
    /// were written by hand.
    #[test]
    fn json_lines_keep_their_shape() {
        let listening = Line::Listening {
            tracker_addr: "127.0.0.1:8998".into(),
        };
        assert_eq!(
            to_json_line(&listening),
            r#"{"event":"listening","tracker_addr":"127.0.0.1:8998"}"#
        );
        let done = Line::Done {
            announces: 3,
            scrapes: 1,
        };
        assert_eq!(
            to_json_line(&done),
            r#"{"event":"done","announces":3,"scrapes":1}"#
        );
        let metrics = Line::MetricsListening {
            metrics_addr: "127.0.0.1:9100".parse().unwrap(),
        };
        assert_eq!(
            to_json_line(&metrics),
            r#"{"event":"metrics_listening","metrics_addr":"127.0.0.1:9100"}"#
        );
    }
}
