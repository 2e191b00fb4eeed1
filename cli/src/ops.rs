//! `corvid status` and `corvid activate`: what the hosts hold, and rollback.
//!
//! Without `--hosts` each acts on this machine (`corvid_engine::deploy::ops`) and, with
//! `--json`, prints the one line the fleet form reads; with `--hosts` it runs itself on
//! every host over ssh (the host's corvid at `--remote-corvid`, as `deploy` installs it)
//! and prints a table or one JSON line per host. Bad input (a relative `--dest`, a tag
//! that is not a plain name, a host that is not a host) is refused before any host is
//! contacted, with exit 2.

use std::path::PathBuf;

use anyhow::anyhow;
use serde::Serialize;

use corvid_engine::deploy::hosts::parse_hosts;
use corvid_engine::deploy::ops::{
    self, Activated, AfterFlip, HostAnswer, HostStatus, OpsError, Target,
};
use corvid_engine::deploy::release::{validate_dest, validate_tag};
use corvid_engine::deploy::ssh::Ssh;

use crate::output::{human_size, print, printable};
use crate::{Exit, Failure};

/// What both commands share: where, on which hosts, and how to reach them.
#[derive(clap::Args, Debug)]
pub struct Where {
    /// Hosts (a file or h1,h2,...; as for `deploy`). Without it: this machine.
    #[arg(long, value_name = "FILE|LIST")]
    hosts: Option<String>,
    /// The absolute base directory the releases were deployed to.
    #[arg(long, value_name = "PATH")]
    dest: PathBuf,
    /// Where corvid is on the hosts; absolute or ~/...
    #[arg(long, value_name = "PATH", default_value = "~/.local/bin/corvid")]
    remote_corvid: String,
    /// Extra argument for every ssh (repeatable), e.g. --ssh-option -F --ssh-option FILE.
    #[arg(long = "ssh-option", value_name = "ARG", allow_hyphen_values = true)]
    ssh_options: Vec<String>,
    /// Most ssh sessions at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    parallel: usize,
    /// Threads hashing releases to verify them (on each host).
    #[arg(long, value_name = "N", default_value_t = 2)]
    hash_threads: usize,
    /// JSON lines on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: Exit::Usage,
        error: e.into(),
    }
}

impl Where {
    /// Checks everything that needs no host: the hosts (if any) parsed.
    fn validate(&self) -> Result<Option<Vec<String>>, Failure> {
        validate_dest(&self.dest).map_err(usage)?;
        let dest_utf8 = self.dest.to_str().is_some();
        if self.parallel == 0 {
            return Err(usage(anyhow!("--parallel must be at least 1")));
        }
        let Some(h) = &self.hosts else {
            return Ok(None);
        };
        if !dest_utf8 {
            return Err(usage(anyhow!(
                "--dest {:?} is not valid UTF-8; the hosts' shell command can only carry it exactly as UTF-8",
                self.dest
            )));
        }
        let r = &self.remote_corvid;
        if !(r.starts_with('/') || r.starts_with("~/")) || r.contains('\0') {
            return Err(usage(anyhow!(
                "--remote-corvid {r:?} must be an absolute path or start with ~/"
            )));
        }
        Ok(Some(parse_hosts(h).map_err(usage)?))
    }

    fn ssh(&self) -> Ssh {
        Ssh {
            options: self.ssh_options.clone(),
            program: None,
            control_dir: None,
        }
    }

    /// `SUBCOMMAND --dest DEST --hash-threads N EXTRA...` for the hosts' corvid.
    fn remote_args(&self, sub: &str, extra: &[String]) -> Vec<String> {
        let mut a = vec![
            sub.to_string(),
            "--dest".into(),
            self.dest.to_str().unwrap_or_default().to_string(),
            "--hash-threads".into(),
            self.hash_threads.to_string(),
        ];
        a.extend(extra.iter().cloned());
        a
    }
}

fn json_line(v: &impl Serialize) -> Result<(), Failure> {
    let line = serde_json::to_string(v).map_err(|e| Failure::output(anyhow!(e)))?;
    Ok(print(&format!("{line}\n"))?)
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Show what releases each host holds",
    long_about = "Show what releases each host holds under --dest: the release `current` \
        points at, the one before it (what `activate --previous` returns to), every \
        release present with its size and whether it verifies against the torrent it was \
        deployed with (DEST/.corvid/TAG.torrent), leftover TAG.partial directories, and \
        the host's corvid version. Unreachable hosts are listed as such. Exit 0 when \
        every host answered, 8 when some did not.",
    after_help = "Examples:\n  corvid status --hosts web1,web2,web3 --dest /srv/app\n  \
        corvid status --hosts fleet.txt --dest /srv/app --json\n  \
        corvid status --dest /srv/app          # this machine"
)]
pub struct StatusArgs {
    #[command(flatten)]
    at: Where,
}

/// One host's `status --hosts ... --json` line.
#[derive(Serialize)]
struct StatusLine<'a> {
    host: &'a str,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    status: Option<&'a HostStatus>,
}

fn releases_text(s: &HostStatus) -> String {
    if s.releases.is_empty() {
        return "-".into();
    }
    s.releases
        .iter()
        .map(|r| {
            let v = match (r.verified, &r.problem) {
                (Some(true), _) => "ok".to_string(),
                (Some(false), Some(p)) => format!("BAD: {p}"),
                (Some(false), None) => "BAD".into(),
                (None, _) => "unverified (no torrent)".into(),
            };
            format!("{} {} {v}", r.tag, human_size(r.bytes))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn status_table(rows: &[(String, HostAnswer<HostStatus>)]) -> String {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<w$}  {:<14}  {:<10}  {:<10}  {:<10}  releases\n",
        "host", "corvid", "current", "previous", "partial"
    );
    for (h, a) in rows {
        match a {
            HostAnswer::Ok(s) => {
                let partial = if s.partial.is_empty() {
                    "-".to_string()
                } else {
                    s.partial.join(",")
                };
                out.push_str(&format!(
                    "{h:<w$}  {:<14}  {:<10}  {:<10}  {:<10}  {}\n",
                    s.corvid,
                    s.current.as_deref().unwrap_or("-"),
                    s.previous.as_deref().unwrap_or("-"),
                    partial,
                    releases_text(s)
                ));
            }
            HostAnswer::Unreachable(e) => {
                out.push_str(&format!("{h:<w$}  UNREACHABLE: {}\n", printable(e)))
            }
            HostAnswer::Failed(e) => out.push_str(&format!("{h:<w$}  FAILED: {}\n", printable(e))),
        }
    }
    out
}

pub fn status(args: StatusArgs) -> Result<Exit, Failure> {
    let at = &args.at;
    let Some(hosts) = at.validate()? else {
        let s = ops::status(&at.dest, at.hash_threads).map_err(ops_failure)?;
        if at.json {
            json_line(&s)?;
        } else {
            print(&status_table(&[("localhost".into(), HostAnswer::Ok(s))]))?;
        }
        return Ok(Exit::Ok);
    };
    let answers: Vec<HostAnswer<HostStatus>> = ops::on_hosts(
        &at.ssh(),
        &hosts,
        at.parallel,
        &at.remote_corvid,
        &at.remote_args("status", &[]),
    );
    let rows: Vec<(String, HostAnswer<HostStatus>)> = hosts.into_iter().zip(answers).collect();
    if at.json {
        for (h, a) in &rows {
            let (reachable, error, status) = match a {
                HostAnswer::Ok(s) => (true, None, Some(s)),
                HostAnswer::Unreachable(e) => (false, Some(e.as_str()), None),
                HostAnswer::Failed(e) => (true, Some(e.as_str()), None),
            };
            json_line(&StatusLine {
                host: h,
                reachable,
                error,
                status,
            })?;
        }
    } else {
        print(&status_table(&rows))?;
    }
    let all = rows.iter().all(|(_, a)| matches!(a, HostAnswer::Ok(_)));
    Ok(if all { Exit::Ok } else { Exit::HostsFailed })
}

fn ops_failure(e: OpsError) -> Failure {
    Failure {
        code: e.exit(),
        error: e.into(),
    }
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Point current at a release already present (rollback)",
    long_about = "Point DEST/current at a release already present on each host, atomically \
        (a new symlink renamed over the old one), e.g. to roll back. The release must be a \
        directory under DEST/releases that verifies against DEST/.corvid/TAG.torrent; a \
        host where it is missing or does not verify is refused with the reason and keeps \
        its current release. --previous picks, on each host, the release that was current \
        before the last activation. Exit 0 when every host was activated, 8 when some \
        were refused or unreachable.",
    after_help = "Examples:\n  corvid activate --hosts web1,web2 --dest /srv/app --tag v41\n  \
        corvid activate --hosts fleet.txt --dest /srv/app --previous --json"
)]
pub struct ActivateArgs {
    #[command(flatten)]
    at: Where,
    /// The release to point current at.
    #[arg(
        long,
        value_name = "TAG",
        required_unless_present = "previous",
        conflicts_with = "previous"
    )]
    tag: Option<String>,
    /// The release that was current before the last activation (per host).
    #[arg(long)]
    previous: bool,
    /// Run CMD (sh -c, in the release directory, CORVID_RELEASE/CORVID_TAG/CORVID_DEST
    /// set) on each host after its flip; a failure fails that host.
    #[arg(long, value_name = "CMD")]
    after_activate: Option<String>,
    /// Run CMD after --after-activate succeeded (the same way); a failure fails the host.
    #[arg(long, value_name = "CMD")]
    check: Option<String>,
    /// Most time --after-activate and --check may each take.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::roles::parse_duration)]
    hook_timeout: std::time::Duration,
    /// After the flip (and a successful hook and check), keep only the newest N releases
    /// (never the current or the previous one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
}

/// One host's `activate --hosts ... --json` line.
#[derive(Serialize)]
struct ActivateLine<'a> {
    host: &'a str,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    was: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl<'a> ActivateLine<'a> {
    fn new(host: &'a str, a: &'a HostAnswer<Activated>) -> Self {
        let (result, tag, was, error) = match a {
            HostAnswer::Ok(x) => match x.failure() {
                None => ("activated", Some(x.tag.as_str()), x.was.as_deref(), None),
                Some(w) => ("failed", Some(x.tag.as_str()), x.was.as_deref(), Some(w)),
            },
            HostAnswer::Failed(e) => ("refused", None, None, Some(e.clone())),
            HostAnswer::Unreachable(e) => ("unreachable", None, None, Some(e.clone())),
        };
        ActivateLine {
            host,
            result,
            tag,
            was,
            error,
        }
    }
}

pub fn activate(args: ActivateArgs) -> Result<Exit, Failure> {
    let at = &args.at;
    let target = match &args.tag {
        Some(t) => {
            validate_tag(t).map_err(usage)?;
            Target::Tag(t.clone())
        }
        None => Target::Previous,
    };
    for (flag, c) in [
        ("--after-activate", &args.after_activate),
        ("--check", &args.check),
    ] {
        if c.as_ref().is_some_and(|c| c.trim().is_empty()) {
            return Err(usage(anyhow!("{flag} is empty: give the command to run")));
        }
    }
    if args.hook_timeout.is_zero() {
        return Err(usage(anyhow!("--hook-timeout must be more than 0")));
    }
    let after = AfterFlip {
        hook: args.after_activate.clone(),
        check: args.check.clone(),
        timeout: args.hook_timeout,
        keep: args.keep.map(|n| n as usize),
    };
    let Some(hosts) = at.validate()? else {
        let a =
            ops::activate_with(&at.dest, &target, at.hash_threads, &after).map_err(ops_failure)?;
        if at.json {
            json_line(&a)?;
        } else {
            eprintln!(
                "current -> releases/{} (was {})",
                a.tag,
                a.was.as_deref().unwrap_or("none")
            );
        }
        if let Some(why) = a.failure() {
            eprintln!("corvid: error: {why}");
            return Ok(Exit::HookFailed);
        }
        return Ok(Exit::Ok);
    };
    let mut extra = match &target {
        Target::Tag(t) => vec!["--tag".to_string(), t.clone()],
        Target::Previous => vec!["--previous".to_string()],
    };
    for (flag, v) in [
        ("--after-activate", args.after_activate.clone()),
        ("--check", args.check.clone()),
        ("--keep", args.keep.map(|n| n.to_string())),
        (
            "--hook-timeout",
            Some(format!("{}ms", args.hook_timeout.as_millis())),
        ),
    ] {
        if let Some(v) = v {
            extra.extend([flag.to_string(), v]);
        }
    }
    let answers: Vec<HostAnswer<Activated>> = ops::on_hosts(
        &at.ssh(),
        &hosts,
        at.parallel,
        &at.remote_corvid,
        &at.remote_args("activate", &extra),
    );
    let mut ok = true;
    let w = hosts.iter().map(String::len).max().unwrap_or(4).max(4);
    for (h, a) in hosts.iter().zip(&answers) {
        let line = ActivateLine::new(h, a);
        ok &= line.result == "activated";
        if at.json {
            json_line(&line)?;
        } else {
            let text = match a {
                HostAnswer::Ok(x) if !x.ok() => format!(
                    "FAILED after activating {}: {}",
                    x.tag,
                    printable(&x.failure().unwrap_or_default())
                ),
                HostAnswer::Ok(x) => format!(
                    "activated {} (was {})",
                    x.tag,
                    x.was.as_deref().unwrap_or("none")
                ),
                HostAnswer::Failed(e) => format!("REFUSED: {}", printable(e)),
                HostAnswer::Unreachable(e) => format!("UNREACHABLE: {}", printable(e)),
            };
            print(&format!("{h:<w$}  {text}\n"))?;
        }
    }
    Ok(if ok { Exit::Ok } else { Exit::HostsFailed })
}
