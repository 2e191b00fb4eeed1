//! `corvid peer TORRENT DEST`: download a release from the swarm into DEST/NAME, verify
//! every piece, keep seeding for the linger time (Murder's peers stayed ~30 s so the
//! seeder is not a hotspot), exit 0 only when the data on disk is complete and verified.
//!
//! With `--release-dest PATH --tag TAG` (what `corvid deploy` runs on every host) the
//! payload's content lands in `PATH/releases/TAG.partial/`, gets its BEP 47 exec bits and
//! symlinks once every piece is verified, and is renamed to `PATH/releases/TAG` (and with
//! `--activate` `PATH/current` flips to it) while the peer lingers on as a seeder. A host
//! that already holds a verified `releases/TAG` exits 0 at once ("already present").
//! Every path below PATH is reached through directory descriptors that refuse planted
//! symlinks; one process at a time holds a release (`PATH/.corvid/TAG.lock`, exit 9 for
//! the loser); `--stdin-torrent` takes the torrent (and a private swarm's secret) from
//! stdin, as `corvid deploy` sends them, with no shell redirection. Those release steps
//! live in the engine (`corvid_engine::deploy::remote`); this module wires them to the
//! node and its output.
//!
//! A restarted peer keeps the pieces its resume record vouches for without hashing them
//! (see `corvid_engine::node::resume`): `DEST/.corvid/<info-hash>.resume`, or
//! `PATH/.corvid/<info-hash>.<TAG>.resume` for a release (outside `releases/`, removed
//! when the release is complete).
//!
//! Before the swarm, a peer fills what it can from an earlier release on the host
//! (`corvid_engine::reuse`): for a release the one `current` points at, or `--base`;
//! every reused piece is hashed like a downloaded one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;

use corvid_engine::deploy::content;
use corvid_engine::deploy::contract::{PeerLine, ReleaseLine, ReleaseStatus};
use corvid_engine::deploy::release::{OpenRelease, ReleaseError, ReleasePaths, STATE_DIR};
use corvid_engine::deploy::remote::{self, Existing, RemoteError};
use corvid_engine::fsat::Dir;
use corvid_engine::metrics::NodeMetrics;
use corvid_engine::node::resume::{self, ResumeConfig};
use corvid_engine::node::{self, Mode, NodeEvent};
use corvid_engine::peer::auth::Secret;
use corvid_engine::reuse::{Base, Sealed};

use crate::output::print;

use crate::roles::{self, NodeArgs, Printer};
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Download a payload from the swarm, verify it, seed it for a while",
    long_about = "Download a payload from the swarm, verify it, seed it for a while.\n\n\
        The payload lands in DEST/NAME (NAME from the torrent). Pieces already on disk \
        and intact (from an earlier, interrupted run) are kept. Exit code 0 means every \
        piece is on disk and verified; 5 means the download made no progress for \
        --stall-timeout and gave up; 7 means it was interrupted; 9 means another corvid \
        peer holds the same --release-dest/--tag (PATH/.corvid/TAG.lock) until its release \
        is in place.",
    after_help = "Examples:\n  corvid peer release-42.torrent /srv/releases\n  \
        corvid peer release-42.torrent /tmp/r --linger 0 --json\n  \
        corvid peer release-42.torrent /tmp/r --peer 10.0.0.5:6881 --no-announce\n  \
        corvid peer release-42.torrent --release-dest /srv/app --tag v42 --activate"
)]
pub struct Args {
    /// The .torrent file (not with --stdin-torrent).
    #[arg(required_unless_present = "stdin_torrent")]
    torrent: Option<PathBuf>,
    /// Directory to download into (the payload is DEST/NAME); not with --release-dest.
    #[arg(
        required_unless_present = "release_dest",
        conflicts_with = "release_dest"
    )]
    dest: Option<PathBuf>,
    /// Release layout: download the payload's content into PATH/releases/TAG.partial,
    /// rename it to PATH/releases/TAG once verified (absolute PATH; needs --tag).
    #[arg(long, value_name = "PATH", requires = "tag")]
    release_dest: Option<PathBuf>,
    /// Release name under PATH/releases (one plain name: no '/', no '..').
    #[arg(long, value_name = "TAG", requires = "release_dest")]
    tag: Option<String>,
    /// With --release-dest: point PATH/current at the release once it is in place.
    #[arg(long, requires = "release_dest")]
    activate: bool,
    /// With --release-dest: replace an existing releases/TAG whose content differs.
    #[arg(long, requires = "release_dest")]
    force: bool,
    /// With --release-dest: read the torrent, BYTES long, from stdin instead of a file
    /// (what `corvid deploy` sends through ssh), and keep it as PATH/.corvid/TAG.torrent.
    #[arg(
        long,
        value_name = "BYTES",
        requires = "release_dest",
        conflicts_with = "torrent"
    )]
    stdin_torrent: Option<usize>,
    /// With --stdin-torrent: the rest of stdin after the torrent is the private swarm's
    /// secret (kept as PATH/.corvid/TAG.secret, mode 0600; never on a command line).
    #[arg(long, requires = "stdin_torrent", conflicts_with = "secret_file")]
    stdin_secret: bool,
    /// With --activate: afterwards remove the oldest releases beyond the newest N (never
    /// the current one nor the one before it).
    #[arg(long, value_name = "N", requires = "activate", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
    /// With --activate: run CMD with `sh -c` after the flip, in the release directory,
    /// with CORVID_RELEASE, CORVID_TAG and CORVID_DEST set; exit 10 if it fails.
    #[arg(long, value_name = "CMD", requires = "activate")]
    after_activate: Option<String>,
    /// Most time --after-activate may take before it is killed (and counts as failed).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = roles::parse_duration)]
    hook_timeout: Duration,
    /// With --stdin-torrent: stdin is framed (the secret as a length line and its bytes)
    /// and stays open; its end stops the linger once the release is in place. This is
    /// how `corvid deploy` stops every peer once the whole fleet holds the release.
    #[arg(long, requires = "stdin_torrent")]
    stdin_control: bool,
    /// Fill pieces from an earlier release before asking the swarm (files at the same
    /// path and size, then any piece whose hash matches a block of an old file; all
    /// verified): with --release-dest a TAG under PATH/releases or a directory, else the
    /// directory holding the old payload's content. With --release-dest the release
    /// `current` points at is used unless --no-base.
    #[arg(long, value_name = "TAG|DIR")]
    base: Option<String>,
    /// Reuse no earlier release.
    #[arg(long, conflicts_with = "base")]
    no_base: bool,
    /// Keep seeding this long after completing.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = roles::parse_duration)]
    linger: Duration,
    /// Give up when no piece was verified for this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = roles::parse_duration)]
    stall_timeout: Duration,
    /// Least time between two resume records while downloading (each syncs the data it
    /// vouches for to disk first; after a crash, newer pieces are re-hashed).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = roles::parse_duration)]
    resume_interval: Duration,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    if let (Some(dest), Some(tag)) = (&args.release_dest, &args.tag) {
        return run_release(&args, dest.clone(), tag.clone());
    }
    let torrent = args
        .torrent
        .as_ref()
        .ok_or_else(|| Failure::input(anyhow!("TORRENT is required without --stdin-torrent")))?;
    let m = crate::info::load(torrent)?;
    let dest = args
        .dest
        .as_ref()
        .ok_or_else(|| Failure::input(anyhow!("DEST or --release-dest is required")))?;
    let root = roles::dest_root(dest)?;
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
    if let Some(dir) = args.base.as_ref().filter(|_| !args.no_base) {
        cfg.base = Some(Base {
            dir: PathBuf::from(dir),
            strip: if m.info.multi_file {
                PathBuf::from(&m.info.name)
            } else {
                PathBuf::new()
            },
            // A directory given by path has no seal: everything taken from it is hashed.
            sealed: None,
        });
    }
    // Beside the payload, not inside it: DEST/.corvid/<info-hash>.resume. Kept once
    // complete, so running the same download again starts without hashing.
    cfg.resume = Some(ResumeConfig {
        path: resume::record_path(dest, &m.info_hash, None),
        keep_when_complete: true,
        interval: args.resume_interval,
    });
    let mut printer = Printer::new(
        args.node.json,
        m.info.lengths.total_length(),
        m.info.lengths.piece_length(),
        "downloading",
    );
    let mut node_metrics = None;
    let _metrics = roles::start_metrics(args.node.metrics_listen, args.node.json, |r| {
        node_metrics = Some(NodeMetrics::register(r));
    })?;
    // BEP 47 exec bits and symlinks, once every piece is verified.
    let mut attrs: Option<Result<(), Failure>> = None;
    let result = node::run_with_metrics(cfg, stop, node_metrics, &mut |ev| {
        printer.event(ev);
        if matches!(ev, NodeEvent::Complete { .. }) && attrs.is_none() {
            attrs = Some(
                Dir::open(dest)
                    .map_err(ReleaseError::from)
                    .and_then(|d| content::apply_attributes_named(&m.info, &d))
                    .map_err(Failure::output),
            );
        }
    });
    match result {
        Ok(report) => {
            printer.report(&report);
            if let Some(Err(f)) = attrs {
                return Err(f);
            }
            Ok(if report.complete {
                Exit::Ok
            } else {
                Exit::GaveUp
            })
        }
        Err(e) => Err(printer.fail(e)),
    }
}

/// One result line for `corvid deploy` (and people): `{"event":"release",...}` with
/// `--json`, else a sentence on stderr.
fn say_release(
    json: bool,
    status: ReleaseStatus,
    rp: &ReleasePaths,
    activated: bool,
    after: AfterActivate,
) {
    if json {
        let line = PeerLine::Release(ReleaseLine {
            status,
            path: rp.finished().display().to_string(),
            activated,
            pruned: after.pruned,
            hook: after.hook,
        });
        let _ = print(&format!("{}\n", line.to_json()));
    } else {
        let what = match status {
            ReleaseStatus::AlreadyPresent => "already present",
            ReleaseStatus::Installed => "installed",
        };
        let act = if activated {
            ", current points at it"
        } else {
            ""
        };
        eprintln!("release {what}: {}{act}", rp.finished().display());
    }
}

/// The end of the linger under `--stdin-control`: the deployer closes the session's
/// stdin once every host holds the release (Murder's `stop_all_peering`), and the peer
/// stops as soon as both that has happened and its own release is in place. Before the
/// release is placed an early end of stdin (the deployer went away) changes nothing:
/// the download finishes and only the linger is skipped.
struct LingerEnd {
    state: std::sync::Arc<LingerState>,
}

struct LingerState {
    eof: std::sync::atomic::AtomicBool,
    placed: std::sync::atomic::AtomicBool,
    stop: node::StopFlag,
}

impl LingerState {
    /// Both set: stop. Each side sets its own flag and then checks the other's, so
    /// whichever comes second sees both (SeqCst).
    fn check(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.eof.load(SeqCst) && self.placed.load(SeqCst) {
            self.stop.stop();
        }
    }
}

impl LingerEnd {
    /// A thread reads what is left of stdin (after the torrent and secret) to its end.
    /// It is not joined: a peer that ends by itself (linger over) exits with it blocked.
    fn watch_stdin(stop: node::StopFlag) -> LingerEnd {
        let state = std::sync::Arc::new(LingerState {
            eof: false.into(),
            placed: false.into(),
            stop,
        });
        let s = state.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut input = std::io::stdin().lock();
            // Nothing but the end is meaningful; a read error counts as the end too.
            while let Ok(n) = std::io::Read::read(&mut input, &mut sink) {
                if n == 0 {
                    break;
                }
            }
            s.eof.store(true, std::sync::atomic::Ordering::SeqCst);
            s.check();
        });
        LingerEnd { state }
    }

    fn placed(&self) {
        self.state
            .placed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.check();
    }
}

/// What followed an activation: the `--after-activate` command, then (only when it
/// succeeded, so a failed host keeps its older releases to roll back to) `--keep`.
#[derive(Default)]
struct AfterActivate {
    hook: Option<corvid_engine::deploy::contract::HookResult>,
    pruned: Vec<String>,
}

impl AfterActivate {
    fn exit(&self) -> Exit {
        match &self.hook {
            Some(h) if !h.ok() => Exit::HookFailed,
            _ => Exit::Ok,
        }
    }
}

fn after_activate(args: &Args, dest: &std::path::Path, tag: &str) -> AfterActivate {
    let mut after = AfterActivate::default();
    if let Some(cmd) = &args.after_activate {
        let h = corvid_engine::deploy::ops::run_hook(cmd, dest, tag, args.hook_timeout);
        if !h.ok() {
            eprintln!(
                "corvid: error: --after-activate failed ({}): {}",
                h.status
                    .map_or("killed".to_string(), |c| format!("exit {c}")),
                h.tail.last().map_or("", String::as_str)
            );
            after.hook = Some(h);
            return after;
        }
        after.hook = Some(h);
    }
    if let Some(n) = args.keep {
        match corvid_engine::deploy::ops::prune(dest, n as usize) {
            Ok(p) => after.pruned = p,
            // The release is active; a prune that failed leaves more than asked.
            Err(e) => eprintln!("corvid: warning: --keep {n}: {e}"),
        }
    }
    after
}

/// The release to reuse pieces from: `--base TAG` (under DEST/releases) or `--base DIR`,
/// else the one `current` points at; never the release being made. A base that does not
/// exist reuses nothing (the swarm has every piece).
fn release_base(args: &Args, dest: &Path, tag: &str) -> Option<Base> {
    if args.no_base {
        return None;
    }
    let releases = dest.join("releases");
    let base_tag = match &args.base {
        Some(b) if b.contains('/') => {
            return Some(Base {
                dir: PathBuf::from(b),
                strip: Path::new("releases").join(format!("{tag}.partial")),
                sealed: None,
            })
        }
        Some(b) if b == tag => return None,
        Some(b) => b.clone(),
        None => ReleasePaths::active_tag(dest).filter(|t| t != tag)?,
    };
    Some(Base {
        dir: releases.join(&base_tag),
        strip: Path::new("releases").join(format!("{tag}.partial")),
        // Its seal, from when it was verified and put in place (none: all hashed).
        sealed: Sealed::load(&dest.join(STATE_DIR), &base_tag),
    })
}

/// A release step's failure, with the exit code the contract gives it.
fn remote_failure(e: impl Into<RemoteError>) -> Failure {
    let e = e.into();
    Failure {
        code: e.exit(),
        error: e.into(),
    }
}

/// The release layout: check for an existing release, download into the partial
/// directory, then (on the completion event, so the linger that follows seeds a finished
/// release) apply attributes, rename into place and activate. Every path below DEST is
/// reached through the descriptors of [`OpenRelease`](corvid_engine::deploy::release::OpenRelease), refusing planted links.
fn run_release(args: &Args, dest: PathBuf, tag: String) -> Result<Exit, Failure> {
    let rp = ReleasePaths::new(&dest, &tag).map_err(remote_failure)?;
    let rel = rp.prepare().map_err(remote_failure)?;
    // Held until the release is in place (or this process ends): a second run on the
    // same DEST/TAG stops here with its own exit code instead of writing under us.
    let mut lock = Some(rel.lock().map_err(remote_failure)?);
    let (m, secret) = release_torrent(args, &rel)?;
    let json = args.node.json;
    let hash_threads = args.node.hash_threads.unwrap_or(2);
    let replace =
        match remote::check_existing(&rel, &m, args.force, hash_threads).map_err(remote_failure)? {
            Existing::Same => {
                let mut after = AfterActivate::default();
                if args.activate {
                    rel.activate().map_err(remote_failure)?;
                    after = after_activate(args, &dest, &tag);
                }
                let code = after.exit();
                say_release(
                    json,
                    ReleaseStatus::AlreadyPresent,
                    &rp,
                    args.activate,
                    after,
                );
                return Ok(code);
            }
            Existing::Absent => false,
            Existing::Replace => true,
        };
    let partial = rel.partial_dir().map_err(Failure::output)?;
    content::prune_partial(&m.info, &partial).map_err(Failure::output)?;
    let stop = roles::stop_on_signals()?;
    let linger_end = args
        .stdin_control
        .then(|| LingerEnd::watch_stdin(stop.clone()));
    let cfg = release_node_config(args, &m, &rel, &dest, &tag, secret)?;
    let mut printer = Printer::new(
        json,
        m.info.lengths.total_length(),
        m.info.lengths.piece_length(),
        "downloading",
    );
    let mut node_metrics = None;
    let _metrics = roles::start_metrics(args.node.metrics_listen, json, |r| {
        node_metrics = Some(NodeMetrics::register(r));
    })?;
    // Set on the completion event: Ok once the release is in place, or why it is not.
    let mut placed: Option<Result<(), Failure>> = None;
    // What a failed --after-activate makes of a placed release.
    let mut hook_exit = Exit::Ok;
    let result = node::run_with_metrics(cfg, stop.clone(), node_metrics, &mut |ev| {
        printer.event(ev);
        // Placed only once flushed: a crash after the rename must not leave `current`
        // pointing at files whose pages never reached the disk.
        if let NodeEvent::Durable = ev {
            if placed.is_some() {
                return;
            }
            let r =
                remote::place(&rel, &m, &partial, replace, args.activate).map_err(remote_failure);
            if r.is_ok() {
                // Placed: the linger only reads it. A rerun may check it (and find it
                // present) while this one seeds.
                lock = None;
                let after = if args.activate {
                    after_activate(args, &dest, &tag)
                } else {
                    AfterActivate::default()
                };
                hook_exit = after.exit();
                say_release(json, ReleaseStatus::Installed, &rp, args.activate, after);
                if let Some(end) = &linger_end {
                    end.placed();
                }
            } else {
                // No point lingering with a release that could not be placed.
                stop.stop();
            }
            placed = Some(r);
        }
    });
    release_exit(result, &mut printer, placed, hook_exit)
}

/// The release's torrent (and private-swarm secret): from the deployer on stdin, or a file.
fn release_torrent(
    args: &Args,
    rel: &OpenRelease,
) -> Result<(corvid_engine::metainfo::Metainfo, Option<Secret>), Failure> {
    let stdin = &mut std::io::stdin().lock();
    match args.stdin_torrent {
        Some(len) if args.stdin_control => {
            remote::receive_torrent_framed(stdin, len, args.stdin_secret, rel)
                .map_err(remote_failure)
        }
        Some(len) => {
            remote::receive_torrent(stdin, len, args.stdin_secret, rel).map_err(remote_failure)
        }
        None => {
            let torrent = args.torrent.as_ref().ok_or_else(|| {
                Failure::input(anyhow!("TORRENT is required without --stdin-torrent"))
            })?;
            Ok((crate::info::load(torrent)?, None))
        }
    }
}

/// The download of a release: into `releases/TAG.partial/`, with its base release and
/// resume record.
fn release_node_config(
    args: &Args,
    m: &corvid_engine::metainfo::Metainfo,
    rel: &OpenRelease,
    dest: &Path,
    tag: &str,
    secret: Option<Secret>,
) -> Result<node::NodeConfig, Failure> {
    // Storage starts at DEST and reaches the files through `releases/TAG.partial/`,
    // refusing a link anywhere on the way (DEST itself is the operator's path).
    let mut cfg = roles::node_config(
        Mode::Download,
        m,
        dest.to_path_buf(),
        rel.partial_files(&content::release_files(&m.info)),
        &args.node,
        "0.0.0.0:0".parse().expect("constant address"),
    )?;
    if secret.is_some() {
        cfg.peer.secret = secret;
    }
    cfg.linger = args.linger;
    cfg.stall_timeout = args.stall_timeout;
    cfg.base = release_base(args, dest, tag);
    // PATH/.corvid/<info-hash>.<TAG>.resume: outside releases/, so the record is never
    // part of the tree renamed into place (or pruned from the partial directory), and
    // removed once the release is complete (the partial directory it describes is gone).
    cfg.resume = Some(ResumeConfig {
        path: resume::record_path(dest, &m.info_hash, Some(tag)),
        keep_when_complete: false,
        interval: args.resume_interval,
    });
    Ok(cfg)
}

/// The exit of a release download: once the release is in place, a later failure while
/// lingering is not the deploy's failure.
fn release_exit(
    result: Result<node::NodeReport, node::NodeError>,
    printer: &mut Printer,
    placed: Option<Result<(), Failure>>,
    hook_exit: Exit,
) -> Result<Exit, Failure> {
    match result {
        Ok(report) => {
            printer.report(&report);
            match placed {
                Some(Ok(())) => Ok(hook_exit),
                Some(Err(f)) => Err(f),
                None => Ok(Exit::GaveUp),
            }
        }
        Err(e) => match placed {
            Some(Ok(())) => {
                printer.finish();
                Ok(hook_exit)
            }
            _ => Err(printer.fail(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use corvid_engine::deploy::contract::{PeerCommand, PeerRacks};

    #[derive(Parser)]
    struct PeerCli {
        #[command(flatten)]
        args: Args,
    }

    /// The command line the deployer builds is one this `corvid peer` accepts, read as
    /// the deployer meant it.
    #[test]
    fn parses_the_command_line_the_deployer_sends() {
        for (secret, activate, force) in [(false, false, false), (true, true, true)] {
            let c = PeerCommand {
                corvid: "~/.local/bin/corvid".into(),
                dest: "/srv/my app".into(),
                tag: "v42".into(),
                torrent_len: 321,
                stdin_secret: secret,
                linger: Duration::from_millis(2500),
                stall_timeout: Duration::from_secs(90),
                seeder: "10.0.0.1:6881".parse().unwrap(),
                activate,
                force,
                keep: activate.then_some(3),
                after_activate: activate.then(|| {
                    (
                        "systemctl reload 'my app'".to_string(),
                        Duration::from_secs(7),
                    )
                }),
                base: secret.then(|| "v41".to_string()),
                listen_network: force.then(|| "10.98.0.0/16".parse().unwrap()),
                racks: secret.then(|| PeerRacks {
                    rack: "r1".into(),
                    rules: "10.0.0.1 rack=r1;10.0.0.2 rack=r1".into(),
                }),
                uplink: secret.then_some(12_500_000),
            };
            let argv = c.args();
            assert_eq!(argv[0], "peer");
            let a = PeerCli::try_parse_from(
                std::iter::once("corvid-peer".into()).chain(argv.into_iter().skip(1)),
            )
            .unwrap()
            .args;
            assert_eq!(a.release_dest, Some(PathBuf::from("/srv/my app")));
            assert_eq!(a.tag.as_deref(), Some("v42"));
            assert_eq!(a.stdin_torrent, Some(321));
            assert_eq!(a.stdin_secret, secret);
            assert!(a.stdin_control);
            assert_eq!(a.linger, Duration::from_millis(2500));
            assert_eq!(a.stall_timeout, Duration::from_secs(90));
            assert_eq!((a.activate, a.force), (activate, force));
            assert_eq!(a.keep, activate.then_some(3));
            assert_eq!(
                a.after_activate.as_deref(),
                activate.then_some("systemctl reload 'my app'")
            );
            if activate {
                assert_eq!(a.hook_timeout, Duration::from_secs(7));
            }
            assert_eq!(a.base.as_deref(), secret.then_some("v41"));
            assert_eq!(
                a.node.listen_network.map(|n| n.to_string()),
                force.then(|| "10.98.0.0/16".to_string())
            );
            assert_eq!(a.node.uplink, secret.then_some(12_500_000));
            assert!(a.node.json);
            assert_eq!(a.node.peers, vec!["10.0.0.1:6881".parse().unwrap()]);
            assert!(a.torrent.is_none() && a.dest.is_none());
            // The rack's rules read back as the deployer's topology for that rack.
            let racks = a.node.racks.load().unwrap();
            assert_eq!(racks.is_some(), secret);
            if let Some(r) = racks {
                assert_eq!(r.rack.as_deref(), Some("r1"));
                let id = r.topology.rack_named("r1").unwrap();
                assert_eq!(
                    r.topology.rules_of(id),
                    "10.0.0.1 rack=r1\n10.0.0.2 rack=r1\n"
                );
            }
        }
    }
}
