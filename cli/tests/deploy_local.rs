//! The deploy path end to end on this machine: the library's `fleet::run` with an `ssh`
//! stand-in that runs each remote command here through `sh`, so every host session is a
//! real `corvid peer --release-dest ... --stdin-torrent` process fed by a real seeder and
//! tracker on loopback. Used for attacks on the host's side of a deploy: links planted
//! at the paths corvid derives under DEST, and two peers on one release.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corvid_engine::deploy::fleet::{self, DeployPlan, FleetEvent, HostOutcome};
use corvid_engine::node::StopFlag;
use corvid_engine::peer::auth::Secret;
use support::deploy::{self as local, deploy, fake_ssh_seen_from};
use support::{corvid, json_u64, make_torrent, start_seeder, Proc, SlowRelay};

/// A source tree of a few files.
fn make_src(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("app.bin"), support::pseudo_random(300_000, 7)).unwrap();
    std::fs::write(src.join("sub/conf"), b"listen 80\n").unwrap();
    src
}

/// Release v1 of `src` to `dest` (see support's plan), authenticated with `secret` if given.
fn plan(dir: &Path, src: &Path, dest: &Path, secret: Option<&[u8]>) -> DeployPlan {
    DeployPlan {
        secret: secret.map(|s| Secret::new(s).unwrap()),
        ..local::plan(dir, src, dest, "v1")
    }
}

/// Every entry under `root` with its bytes (links as `-> target`), for before/after.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
                out.push((p, b"<dir>".to_vec()));
            } else if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((p, format!("-> {}", t.display()).into_bytes()));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A directory outside DEST that an attacker points links at, with something to lose.
fn outside(dir: &Path) -> PathBuf {
    let o = dir.join("outside");
    std::fs::create_dir_all(o.join("keep")).unwrap();
    std::fs::write(o.join("victim"), b"not corvid's\n").unwrap();
    std::fs::write(o.join("keep/also"), b"nor this\n").unwrap();
    std::fs::write(o.join("world-readable"), b"public\n").unwrap();
    std::fs::set_permissions(
        o.join("world-readable"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    o
}

#[test]
fn a_link_planted_at_the_partial_release_is_refused_and_nothing_outside_changes() {
    let t = tempfile::tempdir().unwrap();
    let src = make_src(t.path());
    let out = outside(t.path());
    let before = snapshot(&out);
    let dest = t.path().join("dest");
    std::fs::create_dir_all(dest.join("releases")).unwrap();
    std::os::unix::fs::symlink(&out, dest.join("releases/v1.partial")).unwrap();

    let r = deploy(&plan(t.path(), &src, &dest, None));
    match &r.hosts[0].outcome {
        HostOutcome::Failed(why) => {
            let why = why.to_string();
            assert!(
                why.contains("v1.partial") && why.contains("symbolic link"),
                "{why}"
            )
        }
        o => panic!("deployed through a planted link: {o:?}"),
    }
    // Nothing outside was pruned, and no payload landed there.
    assert_eq!(snapshot(&out), before);
    assert!(!dest.join("releases/v1").exists());
    assert!(std::fs::symlink_metadata(dest.join("current")).is_err());

    // With the link gone, the same deploy goes through.
    std::fs::remove_file(dest.join("releases/v1.partial")).unwrap();
    let r = deploy(&plan(t.path(), &src, &dest, None));
    assert_eq!(r.hosts[0].outcome, HostOutcome::Deployed, "{r:?}");
    assert_eq!(
        std::fs::read(dest.join("current/sub/conf")).unwrap(),
        b"listen 80\n"
    );
    assert_eq!(snapshot(&out), before);
}

#[test]
fn links_planted_in_the_state_directory_never_receive_the_secret() {
    let t = tempfile::tempdir().unwrap();
    let src = make_src(t.path());
    let out = outside(t.path());
    let before = snapshot(&out);
    let dest = t.path().join("dest");
    let state = dest.join(".corvid");
    std::fs::create_dir_all(&state).unwrap();
    for name in ["v1.secret", "v1.torrent", "v1.incoming"] {
        std::os::unix::fs::symlink(out.join("world-readable"), state.join(name)).unwrap();
    }
    let secret = b"fleet secret 8c1f";
    let r = deploy(&plan(t.path(), &src, &dest, Some(secret)));
    assert_eq!(r.hosts[0].outcome, HostOutcome::Deployed, "{r:?}");
    // The link's target is untouched: the secret went to a new file in corvid's place.
    assert_eq!(snapshot(&out), before);
    let s = state.join("v1.secret");
    let m = std::fs::symlink_metadata(&s).unwrap();
    assert!(m.is_file(), "{m:?}");
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&s).unwrap(), secret);
    assert!(std::fs::symlink_metadata(state.join("v1.torrent"))
        .unwrap()
        .is_file());
    assert_eq!(
        std::fs::read(dest.join("current/sub/conf")).unwrap(),
        b"listen 80\n"
    );
}

#[test]
fn a_link_planted_as_a_directory_corvid_makes_is_refused() {
    // `releases` or `.corvid` themselves: the peer stops before reading anything.
    for planted in ["releases", ".corvid"] {
        let t = tempfile::tempdir().unwrap();
        let src = make_src(t.path());
        let out = outside(t.path());
        let before = snapshot(&out);
        let dest = t.path().join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink(&out, dest.join(planted)).unwrap();
        let r = deploy(&plan(t.path(), &src, &dest, Some(b"fleet secret")));
        match &r.hosts[0].outcome {
            HostOutcome::Failed(why) => {
                let why = why.to_string();
                assert!(
                    why.contains(planted) && why.contains("symbolic link"),
                    "{why}"
                )
            }
            o => panic!("{planted}: deployed through a planted link: {o:?}"),
        }
        assert_eq!(snapshot(&out), before, "{planted}");
    }
}

/// `corvid peer --release-dest DEST --tag v1` from `from` alone, text errors on stderr.
fn release_peer(name: &str, torrent: &Path, dest: &Path, from: SocketAddr, linger: &str) -> Proc {
    let mut cmd = corvid(&["peer"]);
    cmd.arg(torrent).arg("--release-dest").arg(dest);
    cmd.args(["--tag", "v1", "--linger", linger, "--json"]);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--hash-threads",
        "1",
    ]);
    cmd.args(["--stall-timeout", "60s", "--no-announce"]);
    cmd.args(["--peer", &from.to_string()]);
    Proc::spawn(name, &mut cmd)
}

#[test]
fn a_second_peer_on_the_same_release_exits_busy_while_the_first_downloads() {
    const T: Duration = Duration::from_secs(90);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("payload");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), support::pseudo_random(3 << 20, 11)).unwrap();
    let torrent = t.path().join("r.torrent");
    make_torrent(&src, &torrent, "http://127.0.0.1:9/announce", "256KiB");
    let (mut seeder, seed_addr) = start_seeder(&torrent, t.path(), &["--no-tracker"], T);
    // About 1 MiB/s: the first peer is mid-download for a few seconds.
    let relay = SlowRelay::start(seed_addr, 1 << 20);
    let dest = t.path().join("app");

    let mut first = release_peer("first", &torrent, &dest, relay.addr, "60s");
    let line = first.wait_line("\"event\":\"progress\"", T);
    assert!(json_u64(&line, "have") < 12, "finished early: {line}");
    // A second process on the same DEST/TAG: refused at once, with its own code.
    let mut second = release_peer("second", &torrent, &dest, seed_addr, "0");
    let (code, _, err) = second.wait_exit(T);
    assert_eq!(code, Some(9), "{err}");
    assert!(
        err.contains("busy") && err.contains(".corvid/v1.lock"),
        "{err}"
    );
    assert!(err.contains(&format!("PID {}", first.pid())), "{err}");
    assert!(
        !dest.join("releases/v1").exists(),
        "the loser placed a release"
    );

    // Once the first has its release in place it lets go (its linger only reads): a
    // rerun finds the release present while the first still seeds.
    first.wait_line("\"event\":\"release\"", T);
    let mut third = release_peer("third", &torrent, &dest, seed_addr, "0");
    let (code, lines, err) = third.wait_exit(T);
    assert_eq!(code, Some(0), "{}\n{err}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("already_present")),
        "{}",
        lines.join("\n")
    );
    first.finish(T);
    drop(relay);
    seeder.finish(T);
    assert_eq!(
        std::fs::read(dest.join("releases/v1/big.bin")).unwrap(),
        support::pseudo_random(3 << 20, 11)
    );
}

#[test]
fn a_host_cannot_point_the_fleet_at_another_seeder_address() {
    // The host claims to see the deployer at 10.66.66.66 (its own address, say). Before,
    // that became the tracker and seeder address of the whole fleet.
    let t = tempfile::tempdir().unwrap();
    let src = make_src(t.path());
    let dest = t.path().join("dest");
    let mut p = plan(t.path(), &src, &dest, None);
    p.seeder_addr = None;
    p.stall_timeout = Duration::from_secs(10);
    p.ssh.program = Some(fake_ssh_seen_from(t.path(), "10.66.66.66"));
    let mut seeder = None;
    let mut warnings = Vec::new();
    let r = fleet::run(&p, StopFlag::new(), &mut |ev| match ev {
        FleetEvent::Seeding { seeder: s, .. } => seeder = Some(*s),
        FleetEvent::Warning(w) => warnings.push(w.clone()),
        _ => {}
    })
    .expect("the deploy runs");
    // Our own route towards the host (127.0.0.1, per ssh -G) chose the address.
    assert_eq!(
        seeder.map(|s| s.ip()),
        Some([127, 0, 0, 1].into()),
        "{warnings:?}"
    );
    assert_eq!(r.hosts[0].outcome, HostOutcome::Deployed, "{r:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("h1:") && w.contains("10.66.66.66")),
        "{warnings:?}"
    );
}
