//! `corvid peer TORRENT DEST`: download a release from the swarm into DEST/NAME, verify
//! every piece, keep seeding for the linger time (Murder's peers stayed ~30 s so the
//! seeder is not a hotspot), exit 0 only when the data on disk is complete and verified.

use std::path::PathBuf;
use std::time::Duration;

use corvid_engine::node::{self, Mode};

use crate::roles::{self, NodeArgs, Printer};
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Download a payload from the swarm, verify it, seed it for a while",
    long_about = "Download a payload from the swarm, verify it, seed it for a while.\n\n\
        The payload lands in DEST/NAME (NAME from the torrent). Pieces already on disk \
        and intact (from an earlier, interrupted run) are kept. Exit code 0 means every \
        piece is on disk and verified; 5 means the download made no progress for \
        --stall-timeout and gave up; 7 means it was interrupted.",
    after_help = "Examples:\n  corvid peer release-42.torrent /srv/releases\n  \
        corvid peer release-42.torrent /tmp/r --linger 0 --json\n  \
        corvid peer release-42.torrent /tmp/r --peer 10.0.0.5:6881 --no-announce"
)]
pub struct Args {
    /// The .torrent file.
    torrent: PathBuf,
    /// Directory to download into (the payload is DEST/NAME).
    dest: PathBuf,
    /// Keep seeding this long after completing.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = roles::parse_duration)]
    linger: Duration,
    /// Give up when no piece was verified for this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = roles::parse_duration)]
    stall_timeout: Duration,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    let m = crate::info::load(&args.torrent)?;
    let root = roles::dest_root(&args.dest)?;
    let stop = roles::stop_on_signals()?;
    let mut cfg = roles::node_config(
        Mode::Download,
        &m,
        root,
        m.info.files.clone(),
        &args.node,
        "0.0.0.0:0".parse().expect("constant address"),
    )?;
    cfg.linger = args.linger;
    cfg.stall_timeout = args.stall_timeout;
    let mut printer = Printer::new(
        args.node.json,
        m.info.lengths.total_length(),
        m.info.lengths.piece_length(),
        "downloading",
    );
    match node::run(cfg, stop, &mut |ev| printer.event(ev)) {
        Ok(report) => {
            printer.report(&report);
            Ok(if report.complete {
                Exit::Ok
            } else {
                Exit::GaveUp
            })
        }
        Err(e) => {
            printer.finish();
            Err(roles::node_failure(e))
        }
    }
}
