//! How many ssh sessions a deploy opens per host, through the library's `fleet::run` with
//! an `ssh` stand-in that logs every session and runs its remote command here (a real
//! seeder, tracker and `corvid peer --release-dest` process each time).
//!
//! A host whose corvid is up to date is checked and runs its peer in one session (the
//! check's session waits for the seeder and the torrent); a host that gets corvid
//! installed first, or a fleet larger than `--parallel`, keeps separate sessions. Errors
//! read the same either way.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use corvid_engine::deploy::fleet::{self, DeployPlan, FleetReport, HostOutcome};
use corvid_engine::deploy::install::CorvidInstall;
use corvid_engine::node::StopFlag;
use support::{corvid_bin, deploy};

/// An `ssh` that appends the host of every session (not `-G` lookups) to `log`, then
/// runs the remote command here; host `h2` is unreachable, as ssh reports it.
fn logging_ssh(dir: &Path, log: &Path) -> PathBuf {
    ssh_logging(dir, log, "$2")
}

/// The same `ssh`, appending `what` of each session (`$2` its host, `$3` its command).
fn ssh_logging(dir: &Path, log: &Path, what: &str) -> PathBuf {
    let p = dir.join("logging-ssh");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n\
             if [ \"$1\" = -G ]; then echo 'hostname 127.0.0.1'; exit 0; fi\n\
             while [ \"$#\" -gt 0 ] && [ \"$1\" != -- ]; do shift; done\n\
             printf '%s\\n' \"{what}\" >> '{}'\n\
             if [ \"$2\" = h2 ]; then \
               echo 'ssh: connect to host h2 port 22: Connection refused' >&2; exit 255; fi\n\
             SSH_CONNECTION='127.0.0.1 40000 127.0.0.1 22' exec sh -c \"$3\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

struct Run {
    report: FleetReport,
    /// Sessions per host name, in the order they started.
    sessions: Vec<String>,
}

fn run(p: &DeployPlan, log: &Path) -> Run {
    let _ = std::fs::remove_file(log);
    let report = fleet::run(p, StopFlag::new(), &mut |_| {}).expect("the deploy runs");
    let sessions = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    Run { report, sessions }
}

fn count(r: &Run, host: &str) -> usize {
    r.sessions.iter().filter(|h| *h == host).count()
}

fn outcome<'a>(r: &'a Run, host: &str) -> &'a HostOutcome {
    &r.report
        .hosts
        .iter()
        .find(|h| h.host == host)
        .unwrap_or_else(|| panic!("no result for {host}: {:?}", r.report))
        .outcome
}

fn src(dir: &Path) -> PathBuf {
    let s = dir.join("src");
    std::fs::create_dir_all(s.join("etc")).unwrap();
    std::fs::write(s.join("etc/app.conf"), b"small release\n").unwrap();
    std::fs::write(s.join("app.bin"), support::pseudo_random(300_000, 7)).unwrap();
    s
}

#[test]
fn a_host_with_corvid_up_to_date_costs_one_session() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("sessions");
    let src = src(tmp.path());
    let dest = tmp.path().join("app");
    let mut p = deploy::plan(tmp.path(), &src, &dest, "v1");
    p.ssh.program = Some(logging_ssh(tmp.path(), &log));

    // Up to date, the fleet within --parallel: the check's session runs the peer too.
    let r = run(&p, &log);
    assert_eq!(*outcome(&r, "h1"), HostOutcome::Deployed, "{:?}", r.report);
    assert_eq!(r.sessions, ["h1"]);
    support::assert_same_tree(&src, &dest.join("current"));

    // A second host unreachable: its error is ssh's line and status, as before; h1
    // still one session.
    p.hosts = "h1,h2".into();
    p.tag = "v2".into();
    let merged = run(&p, &log);
    assert_eq!(*outcome(&merged, "h1"), HostOutcome::Deployed);
    assert_eq!(count(&merged, "h1"), 1, "{:?}", merged.sessions);
    let unreachable = outcome(&merged, "h2").clone();
    match &unreachable {
        HostOutcome::Failed(e) => assert_eq!(
            e.to_string(),
            "ssh: connect to host h2 port 22: Connection refused (exit 255)"
        ),
        o => panic!("{o:?}"),
    }

    // More hosts than --parallel: sessions stay within it, so h1 is checked in one and
    // runs its peer in another; h2 fails exactly as in the merged session.
    p.parallel = 1;
    p.tag = "v3".into();
    let split = run(&p, &log);
    assert_eq!(*outcome(&split, "h1"), HostOutcome::Deployed);
    assert_eq!(count(&split, "h1"), 2, "{:?}", split.sessions);
    assert_eq!(*outcome(&split, "h2"), unreachable);

    // The peer fails on the host (its release directory cannot be made: DEST's parent
    // is a file): the same exit code and message through the merged session as through
    // a session of its own.
    let file = tmp.path().join("a file");
    std::fs::write(&file, b"").unwrap();
    p.dest = file.join("app");
    p.tag = "v4".into();
    let split = run(&p, &log);
    assert_eq!(count(&split, "h1"), 2, "{:?}", split.sessions);
    p.hosts = "h1".into();
    let merged = run(&p, &log);
    assert_eq!(merged.sessions, ["h1"]);
    let failed = outcome(&merged, "h1");
    assert!(
        matches!(failed, HostOutcome::Failed(e) if e.to_string().contains("exit 4")),
        "{failed:?}"
    );
    assert_eq!(failed, outcome(&split, "h1"));
}

/// A host without corvid: the check's session is closed, corvid streams over ssh in a
/// second, and the peer runs in a third, as before.
#[test]
fn a_host_that_gets_corvid_installed_keeps_separate_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("sessions");
    let src = src(tmp.path());
    let dest = tmp.path().join("app");
    let remote = tmp.path().join("host bin/corvid");
    let p = DeployPlan {
        remote_corvid: remote.to_str().unwrap().into(),
        local_corvid: corvid_bin(),
        ..deploy::plan(tmp.path(), &src, &dest, "v1")
    };
    let mut p = p;
    p.ssh.program = Some(logging_ssh(tmp.path(), &log));
    let r = run(&p, &log);
    assert_eq!(*outcome(&r, "h1"), HostOutcome::Deployed, "{:?}", r.report);
    assert_eq!(r.sessions, ["h1", "h1", "h1"]);
    assert_eq!(
        r.report.hosts[0].corvid.as_ref().map(|c| &c.how),
        Some(&CorvidInstall::Ssh)
    );
    assert!(remote.is_file());
    support::assert_same_tree(&src, &dest.join("current"));

    // Next deploy: the installed corvid is up to date, one session.
    p.tag = "v2".into();
    let r = run(&p, &log);
    assert_eq!(*outcome(&r, "h1"), HostOutcome::Deployed, "{:?}", r.report);
    assert_eq!(r.sessions, ["h1"]);
}

/// `deploy --uplink`: every host's peer is started with it (and runs with it: the
/// release arrives), and the deployer's seeder paces with it (issue 10).
#[test]
fn an_uplink_given_to_the_deploy_reaches_every_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("commands");
    let src = src(tmp.path());
    let dest = tmp.path().join("app");
    let mut p = deploy::plan(tmp.path(), &src, &dest, "v1");
    p.ssh.program = Some(ssh_logging(tmp.path(), &log, "$3"));
    p.uplink = Some(12_500_000);
    let r = run(&p, &log);
    assert_eq!(*outcome(&r, "h1"), HostOutcome::Deployed, "{:?}", r.report);
    support::assert_same_tree(&src, &dest.join("current"));
    let commands = std::fs::read_to_string(&log).unwrap();
    assert!(commands.contains("'--uplink' '100000000bit'"), "{commands}");
}
