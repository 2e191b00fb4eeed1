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
mod ops;
mod output;
mod peer;
mod roles;
mod seed;
mod tracker;
mod verify;

/// Exit codes, documented in `--help`: one enum with the deployer, which reads them from
/// the hosts' `corvid peer`.
pub use corvid_engine::deploy::contract::Exit;

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

const EXAMPLES: &str = "\
Examples:
  corvid make ./release-42 --tracker http://seed:8998/announce
  corvid info release-42.torrent --json
  corvid verify release-42.torrent /srv/releases
  corvid seed release-42.torrent .          # embedded tracker on :8998
  corvid peer release-42.torrent /srv/releases --linger 30s
  corvid deploy --hosts web1,web2 --src ./build --dest /srv/app --tag v42 --activate
  corvid status --hosts web1,web2 --dest /srv/app
  corvid activate --hosts web1,web2 --dest /srv/app --previous";

/// The examples, then the exit codes from [`Exit::help_text`].
fn after_help() -> String {
    format!("{EXAMPLES}\n\n{}", Exit::help_text())
}

#[derive(Parser, Debug)]
#[command(name = "corvid", version, about = "Deploy files to Linux server fleets over BitTorrent", after_help = after_help())]
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
    Status(ops::StatusArgs),
    Activate(ops::ActivateArgs),
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
        Command::Status(a) => ops::status(a),
        Command::Activate(a) => ops::activate(a),
    };
    match result {
        Ok(code) => ExitCode::from(code.code()),
        Err(f) => {
            if is_broken_pipe(&f.error) {
                // The reader went away (`corvid info x | head`): not our failure.
                return ExitCode::from(Exit::Ok.code());
            }
            // One line: the error and its causes joined, newlines flattened.
            // Errors name files and trackers from the torrent: escaped for the terminal.
            let msg = output::printable(&format!("{:#}", f.error).replace('\n', " "));
            eprintln!("corvid: error: {msg}");
            ExitCode::from(f.code.code())
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
