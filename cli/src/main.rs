//! `corvid`: deploy files to Linux server fleets over BitTorrent.
//!
//! A thin layer over `corvid-engine`: each subcommand lives in its own module, parses its
//! flags with clap, calls one engine entry point and prints the result as text or one JSON
//! object. Errors become one `corvid: error: ...` line on stderr and an exit code from
//! [`Exit`], so scripts can tell "the data is bad" from "you called me wrong".

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod deploy;
mod info;
mod make;
mod output;
mod peer;
mod roles;
mod seed;
mod tracker;
mod verify;

/// Exit codes, documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Verification ran and found bad or missing data.
    DataBad = 1,
    /// Bad flags or arguments (clap's own code; also a `--hosts` entry that is not a host).
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
    /// `deploy`: some hosts failed (the others may have succeeded).
    HostsFailed = 8,
    /// `peer --release-dest`: another corvid peer is working on the same DEST/TAG.
    Busy = 9,
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: Exit::Input,
            error: error.into(),
        }
    }
    pub fn output(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: Exit::Output,
            error: error.into(),
        }
    }
}

impl From<std::io::Error> for Failure {
    /// Writing to stdout/stderr failed; broken pipes are filtered out in `main`.
    fn from(e: std::io::Error) -> Self {
        Failure::output(e)
    }
}

const AFTER_HELP: &str = "\
Examples:
  corvid make ./release-42 --tracker http://seed:8998/announce
  corvid info release-42.torrent --json
  corvid verify release-42.torrent /srv/releases
  corvid seed release-42.torrent .          # embedded tracker on :8998
  corvid peer release-42.torrent /srv/releases --linger 30s
  corvid deploy --hosts web1,web2 --src ./build --dest /srv/app --tag v42 --activate

Exit codes:
  0  success
  1  verification found bad or missing data
  2  usage error (bad flags or arguments)
  3  input error (invalid torrent, missing or unshareable payload)
  4  output error (output exists without --force, cannot write, disk full)
  5  transfer gave up (no progress within --stall-timeout)
  6  io_uring unavailable (kernel, sysctl or seccomp; the message says which)
  7  interrupted by a signal before the download completed
  8  deploy: some hosts failed (each is listed with its reason)
  9  peer: another corvid peer is working on the same release (DEST/.corvid/TAG.lock)";

#[derive(Parser, Debug)]
#[command(name = "corvid", version, about = "Deploy files to Linux server fleets over BitTorrent", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Make(make::Args),
    Verify(verify::Args),
    Info(info::Args),
    Seed(seed::Args),
    Peer(peer::Args),
    Tracker(tracker::Args),
    Deploy(deploy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Make(a) => make::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Info(a) => info::run(a),
        Command::Seed(a) => seed::run(a),
        Command::Peer(a) => peer::run(a),
        Command::Tracker(a) => tracker::run(a),
        Command::Deploy(a) => deploy::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(f) => {
            if is_broken_pipe(&f.error) {
                // The reader went away (`corvid info x | head`): not our failure.
                return ExitCode::from(Exit::Ok as u8);
            }
            // One line: the error and its causes joined, newlines flattened.
            // Errors name files and trackers from the torrent: escaped for the terminal.
            let msg = output::printable(&format!("{:#}", f.error).replace('\n', " "));
            eprintln!("corvid: error: {msg}");
            ExitCode::from(f.code as u8)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
