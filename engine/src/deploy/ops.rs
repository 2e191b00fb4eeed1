//! Fleet operations on releases already deployed: what each host holds
//! (`corvid status`), pointing `current` at a release that is there (`corvid activate`,
//! rollback), and pruning old releases (`deploy --keep N`).
//!
//! Each runs on the host itself, as the host's corvid (`corvid status --dest PATH
//! --json`, `corvid activate --dest PATH --tag TAG --json`), printing one JSON line
//! ([`HostStatus`], [`Activated`]); with `--hosts` the same command runs that over ssh on
//! every host ([`on_hosts`]) and gathers the lines. So the checks happen where the data
//! is, with the same code a deploy uses: a release verifies when every piece matches
//! `DEST/.corvid/TAG.torrent` ([`super::content::differs`]).
//!
//! `.corvid/previous` holds the release `current` pointed at before the last activation
//! that changed it (written by [`super::release::OpenRelease::activate`]): that is what
//! `--previous` returns to, and what `--keep` never removes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{FileType, OFlags};
use serde::{Deserialize, Serialize};

use crate::fsat::{Dir, DirError};
use crate::hash::HashPool;
use crate::metainfo::Metainfo;

use super::content;
use super::contract::{remote_exit_text, Exit, HookResult};
use super::hosts::for_each_host;
use super::release::{validate_dest, validate_tag, ReleaseError, ReleasePaths, STATE_DIR};
use super::ssh::{quote, quote_path, run_child, Ssh};

/// The file in `.corvid/` naming the release that was current before the last change.
pub const PREVIOUS_FILE: &str = "previous";
/// Most a status or activation session may take on one host (hashing included).
pub const OPS_TIMEOUT: Duration = Duration::from_secs(600);

/// Why an operation on this host failed; each names the path or tag involved.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("{0:?} does not exist")]
    NoDest(PathBuf),
    #[error("release {tag:?} is not present ({path:?} is missing)")]
    Missing { tag: String, path: PathBuf },
    #[error("{0:?} is not a directory (a link or a file); not activated")]
    NotADirectory(PathBuf),
    #[error("release {tag:?} cannot be verified: {path:?} is missing or unreadable")]
    NoTorrent { tag: String, path: PathBuf },
    #[error("release {tag:?} does not verify: {why}")]
    DoesNotVerify { tag: String, why: String },
    #[error("no previous release is recorded ({0:?} is missing)")]
    NoPrevious(PathBuf),
}

impl OpsError {
    /// The exit code of a local `corvid activate` that fails with this.
    pub fn exit(&self) -> Exit {
        match self {
            OpsError::DoesNotVerify { .. } => Exit::DataBad,
            OpsError::Release(ReleaseError::BadTag(_) | ReleaseError::DestNotAbsolute(_)) => {
                Exit::Usage
            }
            OpsError::Release(_) | OpsError::Dir(_) => Exit::Output,
            _ => Exit::Input,
        }
    }
}

/// One release on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseState {
    pub tag: String,
    /// Bytes of the regular files in it (links not followed).
    pub bytes: u64,
    /// Every piece matches `.corvid/TAG.torrent`; `None` when there is no torrent to
    /// check against.
    pub verified: Option<bool>,
    /// Why it does not verify (or cannot be checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What one host holds under DEST: the `status` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's `corvid --version`.
    pub corvid: String,
    /// The release `current` points at (`None`: no `current`, or not into `releases/`).
    pub current: Option<String>,
    /// The release that was current before (`.corvid/previous`).
    pub previous: Option<String>,
    /// Finished releases, oldest first (by their torrent's time).
    pub releases: Vec<ReleaseState>,
    /// Leftover `releases/TAG.partial` directories (a download that did not finish).
    pub partial: Vec<String>,
}

/// The `activate` line: `current` now points at `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activated {
    pub tag: String,
    /// What `current` pointed at before.
    pub was: Option<String>,
    /// `--after-activate`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookResult>,
    /// `--check`, when given (run only after a hook that succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HookResult>,
    /// Releases `--keep` removed (only when hook and check succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
}

impl Activated {
    /// The hook and the check (those that ran) succeeded.
    pub fn ok(&self) -> bool {
        self.hook.as_ref().is_none_or(HookResult::ok)
            && self.check.as_ref().is_none_or(HookResult::ok)
    }

    /// Why not [`Activated::ok`], in one line.
    pub fn failure(&self) -> Option<String> {
        let line = |what: &str, h: &HookResult| {
            let how = match (h.status, h.timed_out) {
                (_, true) => "timed out".to_string(),
                (Some(c), _) => format!("failed (exit {c})"),
                (None, _) => "was killed".to_string(),
            };
            format!("{what} {how}: {}", h.tail.last().map_or("", String::as_str))
        };
        match (&self.hook, &self.check) {
            (Some(h), _) if !h.ok() => Some(line("--after-activate", h)),
            (_, Some(c)) if !c.ok() => Some(line("--check", c)),
            _ => None,
        }
    }
}

/// What runs after an activation on the host: `--after-activate`, then `--check`, then
/// (both having succeeded) `--keep`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterFlip {
    pub hook: Option<String>,
    pub check: Option<String>,
    pub timeout: Duration,
    pub keep: Option<usize>,
}

/// [`activate`], then what [`AfterFlip`] asks for; a failing hook or check is in the
/// result (see [`Activated::ok`]), not an error: the flip happened.
pub fn activate_with(
    dest: &Path,
    target: &Target,
    hash_threads: usize,
    after: &AfterFlip,
) -> Result<Activated, OpsError> {
    let mut a = activate(dest, target, hash_threads)?;
    if let Some(cmd) = &after.hook {
        a.hook = Some(run_hook(cmd, dest, &a.tag, after.timeout));
    }
    if let Some(cmd) = after.check.as_ref().filter(|_| a.ok()) {
        a.check = Some(run_hook(cmd, dest, &a.tag, after.timeout));
    }
    if let Some(n) = after.keep.filter(|_| a.ok()) {
        a.pruned = prune(dest, n)?;
    }
    Ok(a)
}

/// This corvid's version line, as `--version` prints it.
pub fn version() -> String {
    format!("corvid {}", env!("CARGO_PKG_VERSION"))
}

/// The torrent a release was deployed with, read without following a link.
fn load_torrent(state: Option<&Dir>, tag: &str) -> Option<Metainfo> {
    use std::io::Read;
    let mut f = state?
        .open_file(format!("{tag}.torrent"), OFlags::RDONLY, 0)
        .ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    Metainfo::from_bytes(&bytes).ok()
}

/// When a release was deployed: its torrent's modification time (written anew by each
/// deploy of the tag), else the directory's.
fn deployed_at(dest: &Path, tag: &str) -> SystemTime {
    let t = |p: PathBuf| std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
    t(dest.join(STATE_DIR).join(format!("{tag}.torrent")))
        .or_else(|| t(dest.join("releases").join(tag)))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Bytes of the regular files below `dir`, links not followed.
fn tree_bytes(dir: &Dir) -> u64 {
    let Ok(entries) = dir.entries() else { return 0 };
    entries
        .into_iter()
        .map(|(name, kind)| match kind {
            FileType::Directory => dir
                .open_dir(&name)
                .ok()
                .flatten()
                .map_or(0, |d| tree_bytes(&d)),
            FileType::RegularFile => {
                std::fs::symlink_metadata(dir.path().join(&name)).map_or(0, |m| m.len())
            }
            _ => 0,
        })
        .sum()
}

/// The tag `.corvid/previous` names, if it is a valid one.
fn read_previous(state: Option<&Dir>) -> Option<String> {
    use std::io::Read;
    let mut f = state?.open_file(PREVIOUS_FILE, OFlags::RDONLY, 0).ok()?;
    let mut s = String::new();
    f.by_ref().take(256).read_to_string(&mut s).ok()?;
    let tag = s.trim().to_string();
    validate_tag(&tag).ok().map(|()| tag)
}

/// Checks one release directory against its torrent: `(verified, problem)`.
fn verify(
    dest: &Path,
    state: Option<&Dir>,
    tag: &str,
    pool: &HashPool,
) -> (Option<bool>, Option<String>) {
    let Some(m) = load_torrent(state, tag) else {
        return (
            None,
            Some(format!("no {STATE_DIR}/{tag}.torrent to verify against")),
        );
    };
    match content::differs(
        &m.info,
        &dest.join("releases").join(tag),
        &m.info.pieces,
        pool,
    ) {
        None => (Some(true), None),
        Some(why) => (Some(false), Some(why)),
    }
}

/// What this host holds under `dest`; nothing is created or changed.
pub fn status(dest: &Path, hash_threads: usize) -> Result<HostStatus, OpsError> {
    validate_dest(dest)?;
    let root = match Dir::open(dest) {
        Ok(d) => d,
        Err(_) if !dest.exists() => return Err(OpsError::NoDest(dest.to_path_buf())),
        Err(e) => return Err(e.into()),
    };
    let state = root.open_dir(STATE_DIR).ok().flatten();
    let pool = HashPool::new(hash_threads.max(1));
    let mut releases = Vec::new();
    let mut partial = Vec::new();
    if let Some(rel) = root.open_dir("releases")? {
        let mut names: Vec<(String, FileType)> = rel
            .entries()?
            .into_iter()
            .filter_map(|(n, k)| n.into_string().ok().map(|n| (n, k)))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in names {
            if let Some(tag) = name.strip_suffix(".partial") {
                partial.push(tag.to_string());
                continue;
            }
            if kind != FileType::Directory || validate_tag(&name).is_err() {
                continue;
            }
            let bytes = rel
                .open_dir(&name)
                .ok()
                .flatten()
                .map_or(0, |d| tree_bytes(&d));
            let (verified, problem) = verify(dest, state.as_ref(), &name, &pool);
            releases.push(ReleaseState {
                tag: name,
                bytes,
                verified,
                problem,
            });
        }
    }
    releases.sort_by_key(|r| (deployed_at(dest, &r.tag), r.tag.clone()));
    Ok(HostStatus {
        corvid: version(),
        current: ReleasePaths::active_tag(dest),
        previous: read_previous(state.as_ref()),
        releases,
        partial,
    })
}

/// Which release `activate` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tag(String),
    /// The one `.corvid/previous` names.
    Previous,
}

/// Points `current` at a release present on this host, after checking that it is a
/// directory and verifies against its torrent; refused (nothing changed) otherwise.
pub fn activate(dest: &Path, target: &Target, hash_threads: usize) -> Result<Activated, OpsError> {
    validate_dest(dest)?;
    let root = match Dir::open(dest) {
        Ok(d) => d,
        Err(_) if !dest.exists() => return Err(OpsError::NoDest(dest.to_path_buf())),
        Err(e) => return Err(e.into()),
    };
    let state = root.open_dir(STATE_DIR).ok().flatten();
    let tag = match target {
        Target::Tag(t) => t.clone(),
        Target::Previous => read_previous(state.as_ref())
            .ok_or_else(|| OpsError::NoPrevious(dest.join(STATE_DIR).join(PREVIOUS_FILE)))?,
    };
    let paths = ReleasePaths::new(dest, &tag)?;
    let kind = match root.open_dir("releases")? {
        Some(r) => r.kind(&tag)?,
        None => None,
    };
    match kind {
        None => {
            return Err(OpsError::Missing {
                path: paths.finished(),
                tag,
            })
        }
        Some(FileType::Directory) => {}
        Some(_) => return Err(OpsError::NotADirectory(paths.finished())),
    }
    let pool = HashPool::new(hash_threads.max(1));
    match verify(dest, state.as_ref(), &tag, &pool) {
        (Some(true), _) => {}
        (Some(false), why) => {
            return Err(OpsError::DoesNotVerify {
                tag,
                why: why.unwrap_or_default(),
            })
        }
        (None, _) => {
            return Err(OpsError::NoTorrent {
                path: dest.join(STATE_DIR).join(format!("{tag}.torrent")),
                tag,
            })
        }
    }
    let was = ReleasePaths::active_tag(dest);
    paths.prepare()?.activate()?;
    Ok(Activated {
        tag,
        was,
        hook: None,
        check: None,
        pruned: Vec::new(),
    })
}

/// Removes the oldest releases beyond the newest `keep`, never the one `current` points
/// at nor the previous one, nor anything while `current` is not a release here (a
/// prune with no anchor could take what the operator runs). Returns the tags removed,
/// oldest first; their torrents and secrets in `.corvid/` go with them.
pub fn prune(dest: &Path, keep: usize) -> Result<Vec<String>, OpsError> {
    validate_dest(dest)?;
    let root = Dir::open(dest)?;
    let Some(current) = ReleasePaths::active_tag(dest) else {
        return Ok(Vec::new());
    };
    let Some(rel) = root.open_dir("releases")? else {
        return Ok(Vec::new());
    };
    let state = root.open_dir(STATE_DIR)?;
    let previous = read_previous(state.as_ref());
    let mut tags: Vec<String> = rel
        .entries()?
        .into_iter()
        .filter(|(_, k)| *k == FileType::Directory)
        .filter_map(|(n, _)| n.into_string().ok())
        .filter(|n| !n.ends_with(".partial") && validate_tag(n).is_ok())
        .collect();
    // Newest first.
    tags.sort_by_key(|t| std::cmp::Reverse((deployed_at(dest, t), t.clone())));
    let mut removed = Vec::new();
    for t in tags.into_iter().skip(keep.max(1)) {
        if t == current || Some(&t) == previous.as_ref() {
            continue;
        }
        rel.remove(&t)?;
        if let Some(s) = &state {
            s.remove(format!("{t}.torrent"))?;
            s.remove(format!("{t}.secret"))?;
        }
        removed.push(t);
    }
    removed.reverse();
    Ok(removed)
}

/// Lines of a hook's output kept for the report.
pub const HOOK_TAIL: usize = 10;

/// Runs an operator's command (`--after-activate`, `--check`) on this host with `sh -c`,
/// in the release directory, with `CORVID_RELEASE` (that directory), `CORVID_TAG` and
/// `CORVID_DEST` in its environment and nothing on its stdin; killed at `timeout`.
/// Its output (stderr merged into stdout) is kept, the last [`HOOK_TAIL`] lines.
pub fn run_hook(cmd: &str, dest: &Path, tag: &str, timeout: Duration) -> HookResult {
    let release = dest.join("releases").join(tag);
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(format!("exec 2>&1\n{cmd}"))
        .current_dir(&release)
        .env("CORVID_RELEASE", &release)
        .env("CORVID_TAG", tag)
        .env("CORVID_DEST", dest);
    match run_child(c, b"", timeout, &mut |_| {}) {
        Ok(b) => {
            let lines: Vec<&str> = b.output.stdout.lines().collect();
            let tail = lines[lines.len().saturating_sub(HOOK_TAIL)..]
                .iter()
                .map(|l| l.to_string())
                .collect();
            HookResult {
                status: (!b.timed_out && b.output.code >= 0).then_some(b.output.code),
                timed_out: b.timed_out,
                tail,
            }
        }
        Err(e) => HookResult {
            status: None,
            timed_out: false,
            tail: vec![format!("cannot run sh in {}: {e}", release.display())],
        },
    }
}

/// One host's answer to an operation run over ssh: its JSON line parsed, or why there
/// is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAnswer<T> {
    Ok(T),
    /// ssh could not reach the host (exit 255 or no session).
    Unreachable(String),
    /// The host's corvid refused or failed (its last error line).
    Failed(String),
}

/// Runs `corvid ARGS --json` (at `remote_corvid`) on every host, at most `parallel` at
/// once, and parses each one's last JSON line as `T`.
pub fn on_hosts<T: serde::de::DeserializeOwned + Send>(
    ssh: &Ssh,
    hosts: &[String],
    parallel: usize,
    remote_corvid: &str,
    args: &[String],
) -> Vec<HostAnswer<T>> {
    let mut cmd = format!("exec {}", quote_path(remote_corvid));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    cmd.push_str(" --json");
    for_each_host(hosts, parallel.max(1), &|h: &String| {
        let b = match ssh.run_bounded(h, &cmd, b"", OPS_TIMEOUT, &mut |_| {}) {
            Ok(b) => b,
            Err(e) => return HostAnswer::Unreachable(e.to_string()),
        };
        if b.timed_out {
            return HostAnswer::Failed(format!("no answer within {} s", OPS_TIMEOUT.as_secs()));
        }
        let out = b.output;
        let parsed = out
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<T>(l).ok());
        match (out.code, parsed) {
            // A line means the operation happened; a failure after it (a hook) is in it.
            (_, Some(v)) => HostAnswer::Ok(v),
            (code, _) => {
                let line = out.last_error_line();
                let line = line.strip_prefix("corvid: error: ").unwrap_or(&line);
                let text = if line.is_empty() {
                    remote_exit_text(code).to_string()
                } else {
                    line.to_string()
                };
                if code == super::ssh::SSH_FAILED {
                    HostAnswer::Unreachable(text)
                } else {
                    HostAnswer::Failed(format!("{text} (exit {code})"))
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions};

    /// A release TAG in `dest` as a deploy leaves it: the directory and its torrent.
    fn deployed(dest: &Path, tag: &str, content: &[u8]) {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), content).unwrap();
        std::fs::create_dir_all(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/g"), b"more").unwrap();
        let pool = HashPool::new(1);
        let (_, t) = build(src.path(), &BuildOptions::default(), &pool, &mut |_| {}).unwrap();
        let rel = ReleasePaths::new(dest, tag).unwrap().prepare().unwrap();
        rel.state
            .write_new(format!("{tag}.torrent"), &t, 0o644)
            .unwrap();
        let r = dest.join("releases").join(tag);
        std::fs::create_dir_all(r.join("d")).unwrap();
        std::fs::write(r.join("f"), content).unwrap();
        std::fs::write(r.join("d/g"), b"more").unwrap();
        // Distinct deploy times, oldest first, whatever the clock's resolution.
        let n = std::fs::read_dir(dest.join("releases")).unwrap().count() as u64;
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + n);
        std::fs::File::options()
            .write(true)
            .open(dest.join(STATE_DIR).join(format!("{tag}.torrent")))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn status_activate_and_previous_on_one_host() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path();
        assert!(matches!(
            status(&dest.join("nothing"), 1),
            Err(OpsError::NoDest(_))
        ));
        deployed(dest, "v1", b"one");
        deployed(dest, "v2", b"two!");
        std::fs::create_dir_all(dest.join("releases/v3.partial")).unwrap();
        let s = status(dest, 1).unwrap();
        assert_eq!(s.current, None);
        assert_eq!(s.partial, ["v3"]);
        let tags: Vec<&str> = s.releases.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["v1", "v2"]);
        assert_eq!(s.releases[0].bytes, 3 + 4);
        assert_eq!(s.releases[1].bytes, 4 + 4);
        assert!(s.releases.iter().all(|r| r.verified == Some(true)));

        let a = activate(dest, &Target::Tag("v1".into()), 1).unwrap();
        assert_eq!((a.tag.as_str(), a.was.as_deref()), ("v1", None));
        assert!(a.ok() && a.failure().is_none());
        let a = activate(dest, &Target::Tag("v2".into()), 1).unwrap();
        assert_eq!(a.was.as_deref(), Some("v1"));
        let s = status(dest, 1).unwrap();
        assert_eq!(
            (s.current.as_deref(), s.previous.as_deref()),
            (Some("v2"), Some("v1"))
        );
        // --previous goes back, and then forth.
        let a = activate(dest, &Target::Previous, 1).unwrap();
        assert_eq!((a.tag.as_str(), a.was.as_deref()), ("v1", Some("v2")));
        assert_eq!(std::fs::read(dest.join("current/f")).unwrap(), b"one");
        assert_eq!(
            activate(dest, &Target::Previous, 1).unwrap().tag,
            "v2".to_string()
        );

        // Refusals change nothing and say why.
        let e = activate(dest, &Target::Tag("v9".into()), 1).unwrap_err();
        assert!(matches!(e, OpsError::Missing { .. }), "{e}");
        assert_eq!(e.exit(), Exit::Input);
        std::fs::write(dest.join("releases/v1/f"), b"ONE").unwrap();
        let e = activate(dest, &Target::Tag("v1".into()), 1).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        assert_eq!(e.exit(), Exit::DataBad);
        std::fs::remove_file(dest.join(".corvid/v2.torrent")).unwrap();
        let e = activate(dest, &Target::Tag("v2".into()), 1).unwrap_err();
        assert!(matches!(e, OpsError::NoTorrent { .. }), "{e}");
        std::os::unix::fs::symlink(dest.join("releases/v2"), dest.join("releases/v4")).unwrap();
        let e = activate(dest, &Target::Tag("v4".into()), 1).unwrap_err();
        assert!(matches!(e, OpsError::NotADirectory(_)), "{e}");
        let e = activate(dest, &Target::Tag("../x".into()), 1).unwrap_err();
        assert_eq!(e.exit(), Exit::Usage);
        assert_eq!(ReleasePaths::active_tag(dest).as_deref(), Some("v2"));

        let s = status(dest, 1).unwrap();
        let v1 = &s.releases.iter().find(|r| r.tag == "v1").unwrap();
        assert_eq!(v1.verified, Some(false));
        assert!(v1.problem.as_deref().unwrap().contains("fail their hash"));
        let v2 = &s.releases.iter().find(|r| r.tag == "v2").unwrap();
        assert_eq!(v2.verified, None);
        // The link at releases/v4 is not a release.
        assert!(s.releases.iter().all(|r| r.tag != "v4"));
    }

    #[test]
    fn a_hook_gets_the_release_and_reports_status_output_and_timeout() {
        let d = tempfile::tempdir().unwrap();
        deployed(d.path(), "v1", b"one");
        let r = run_hook(
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i; done; \
             echo \"$CORVID_TAG $CORVID_RELEASE $(cat f)\" >&2; exit 3",
            d.path(),
            "v1",
            Duration::from_secs(30),
        );
        assert_eq!(r.status, Some(3));
        assert!(!r.ok() && !r.timed_out);
        assert_eq!(r.tail.len(), HOOK_TAIL);
        assert_eq!(r.tail[0], "line 4");
        assert_eq!(
            r.tail[9],
            format!("v1 {} one", d.path().join("releases/v1").display())
        );
        assert!(run_hook("true", d.path(), "v1", Duration::from_secs(30)).ok());
        let t = run_hook(
            "echo started; sleep 30",
            d.path(),
            "v1",
            Duration::from_millis(300),
        );
        assert!(t.timed_out && t.status.is_none() && !t.ok());
        assert_eq!(t.tail, ["started"]);
    }

    #[test]
    fn prune_keeps_the_newest_and_never_current_or_previous() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path();
        for t in ["v1", "v2", "v3", "v4", "v5"] {
            deployed(dest, t, t.as_bytes());
        }
        // Nothing is pruned without a current release to anchor on.
        assert!(prune(dest, 1).unwrap().is_empty());
        // v2 current, then v1 current: v2 is the previous one.
        activate(dest, &Target::Tag("v2".into()), 1).unwrap();
        activate(dest, &Target::Tag("v1".into()), 1).unwrap();
        let removed = prune(dest, 1).unwrap();
        assert_eq!(removed, ["v3", "v4"]);
        let left: Vec<String> = status(dest, 1)
            .unwrap()
            .releases
            .into_iter()
            .map(|r| r.tag)
            .collect();
        assert_eq!(left, ["v1", "v2", "v5"]);
        assert!(!dest.join(".corvid/v3.torrent").exists());
        assert!(dest.join(".corvid/v5.torrent").exists());
        assert!(prune(dest, 3).unwrap().is_empty());
    }
}
