//! `corvid seed TORRENT PATH`: serve a release to the fleet, with an embedded tracker
//! (Murder's port 8998) so a deploy needs no other process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;

use corvid_engine::metrics::{NodeMetrics, TrackerCollector};
use corvid_engine::node::{self, Mode, SeedUntil};
use corvid_engine::tracker::{
    TrackerConfig, TrackerServer, DEFAULT_MAX_PEERS_PER_IP, DEFAULT_MAX_SWARMS_PER_IP,
};

use crate::output::print;
use crate::roles::{self, NodeArgs, Printer};
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Seed a payload to peers, with an embedded tracker",
    long_about = "Seed a payload to peers, with an embedded tracker.\n\n\
        PATH is the directory containing the payload (PATH/NAME for a torrent named NAME) \
        or the payload itself. The data is hash-checked once at start unless --trust-data. \
        An HTTP tracker runs inside the seeder on --tracker-listen (default 0.0.0.0:8998, \
        Murder's port) unless --no-tracker; make the torrent with that tracker's URL. \
        Runs until SIGINT/SIGTERM (or, with --until-distributed, until every piece was \
        uploaded once and connected peers announced every piece), then prints a report.",
    after_help = "Examples:\n  corvid make ./release-42 --tracker http://seed.example:8998/announce\n  \
        corvid seed release-42.torrent .\n  \
        corvid seed release-42.torrent /srv/releases --no-tracker --json"
)]
pub struct Args {
    /// The .torrent file.
    torrent: PathBuf,
    /// Directory containing the payload, or the payload itself.
    path: PathBuf,
    /// Address of the embedded tracker.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:8998")]
    tracker_listen: SocketAddr,
    /// Run no embedded tracker (an external one is used).
    #[arg(long)]
    no_tracker: bool,
    /// Announce interval the embedded tracker tells peers.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = roles::parse_duration)]
    tracker_interval: Duration,
    /// Most peers one source address (an IPv6 /64) may have in one swarm of the embedded
    /// tracker.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PEERS_PER_IP)]
    tracker_max_peers_per_ip: usize,
    /// Most swarms one source address (an IPv6 /64) may have peers in on the embedded
    /// tracker.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SWARMS_PER_IP)]
    tracker_max_swarms_per_ip: usize,
    /// Have the embedded tracker record the address clients claim with `ip=` instead of
    /// the connection's source: only behind a reverse proxy that sets it.
    #[arg(long)]
    tracker_trust_ip_param: bool,
    /// Skip the start-up hash check of the data.
    #[arg(long)]
    trust_data: bool,
    /// Stop once every piece has been uploaded at least once and connected peers have
    /// announced every piece (the peers then hold everything between them).
    #[arg(long)]
    until_distributed: bool,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    let m = crate::info::load(&args.torrent)?;
    let (root, files) = crate::verify::locate(&m, &args.path)?;
    let stop = roles::stop_on_signals()?;
    let tracker = if args.no_tracker {
        None
    } else {
        let cfg = TrackerConfig {
            secret: args.node.secret.load()?,
            interval: args.tracker_interval,
            min_interval: args.tracker_interval.min(Duration::from_secs(10)),
            max_peers_per_ip: args.tracker_max_peers_per_ip,
            max_swarms_per_ip: args.tracker_max_swarms_per_ip,
            trust_ip_param: args.tracker_trust_ip_param,
            topology: args.node.racks.load()?.map(|r| r.topology),
            ..TrackerConfig::default()
        };
        Some(TrackerServer::bind(args.tracker_listen, cfg).map_err(|e| {
            Failure::output(anyhow!(
                "cannot start the embedded tracker on {} ({e}); use --tracker-listen or --no-tracker",
                args.tracker_listen
            ))
        })?)
    };
    let mut cfg = roles::node_config(
        Mode::Seed,
        &m,
        root,
        files,
        &args.node,
        "0.0.0.0:6881".parse().expect("constant address"),
    )?;
    cfg.trust_data = args.trust_data;
    if args.until_distributed {
        cfg.seed_until = SeedUntil::EveryPieceUploaded;
    }
    let mut printer = Printer::new(
        args.node.json,
        m.info.lengths.total_length(),
        m.info.lengths.piece_length(),
        "seeding",
    );
    let tracker_addr = tracker.as_ref().map(|t| t.local_addr());
    let json = args.node.json;
    let mut node_metrics = None;
    let _metrics = roles::start_metrics(args.node.metrics_listen, json, |r| {
        node_metrics = Some(NodeMetrics::register(r));
        if let Some(t) = &tracker {
            TrackerCollector::register(r, t.stats_handle());
        }
    })?;
    let result = node::run_with_metrics(cfg, stop, node_metrics, &mut |ev| {
        if let (node::NodeEvent::Listening { peer_addr }, Some(t)) = (ev, tracker_addr) {
            // One line that says where both listen, for scripts and tests.
            if json {
                let line = roles::NodeLine::listening(*peer_addr, Some(t));
                let _ = print(&format!("{}\n", line.to_json()));
                return;
            }
            eprintln!("tracker listening on {t}");
        }
        printer.event(ev)
    });
    if let Some(t) = tracker {
        t.shutdown();
    }
    match result {
        Ok(report) => {
            printer.report(&report);
            Ok(Exit::Ok)
        }
        Err(e) => Err(printer.fail(e)),
    }
}
