//! Delta releases end to end on this machine: the library's `fleet::run` with an `ssh`
//! stand-in that runs the remote command here, so each deploy is a real seeder, tracker
//! and `corvid peer --release-dest` process. Release 1 goes out in full; release 2, with
//! one file edited, is filled from release 1 on the host (the release `current` points
//! at) and only the changed piece crosses the network. Also the plain `corvid peer
//! --base DIR` path, and corvid downloading an aligned (pad-file) torrent from corvid.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use corvid_engine::deploy::fleet::{DeployPlan, FleetReport, HostOutcome};
use support::{assert_same_tree, corvid, deploy, json_field, pseudo_random, start_seeder, Proc};

const T: Duration = Duration::from_secs(120);
/// deploy's smallest automatic piece size, which these small releases get.
const PIECE: u64 = 256 * 1024;

/// support's plan, piece-aligned (what lets release 2 be filled from release 1).
fn plan(dir: &Path, src: &Path, dest: &Path, tag: &str) -> DeployPlan {
    DeployPlan {
        align: true,
        ..deploy::plan(dir, src, dest, tag)
    }
}

fn deploy(p: &DeployPlan) -> FleetReport {
    let r = deploy::deploy(p);
    assert_eq!(r.hosts[0].outcome, HostOutcome::Deployed, "{r:?}");
    r
}

/// Eight files of unequal sizes (so pads differ), two directories deep.
fn release1(dir: &Path) -> PathBuf {
    let src = dir.join("src1");
    for i in 0..8u64 {
        let p = src.join(format!("d{}/f{i}", i % 2));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pseudo_random(700_000 + 33_333 * i as usize, 100 + i)).unwrap();
    }
    src
}

/// The torrent's length for a release of [`release1`]'s shape: every file but the last
/// (in name order) rounded up to a piece by its pad file.
fn aligned_total(src: &Path) -> u64 {
    let lens: Vec<u64> = (0..8u64)
        .map(|i| format!("d{}/f{i}", i % 2))
        .collect::<std::collections::BTreeSet<_>>()
        .iter()
        .map(|rel| std::fs::metadata(src.join(rel)).unwrap().len())
        .collect();
    let (last, rest) = lens.split_last().unwrap();
    rest.iter().map(|l| l.div_ceil(PIECE) * PIECE).sum::<u64>() + last
}

/// Release 1 with one byte of `d1/f3` changed in place (its second piece).
fn release2(dir: &Path, src1: &Path) -> PathBuf {
    let src = dir.join("src2");
    for i in 0..8u64 {
        let rel = format!("d{}/f{i}", i % 2);
        let mut bytes = std::fs::read(src1.join(&rel)).unwrap();
        if i == 3 {
            bytes[PIECE as usize + 5] ^= 0x5a;
        }
        std::fs::create_dir_all(src.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(src.join(&rel), bytes).unwrap();
    }
    src
}

#[test]
fn a_delta_deploy_takes_unchanged_pieces_from_the_current_release() {
    let t = tempfile::tempdir().unwrap();
    let src1 = release1(t.path());
    let src2 = release2(t.path(), &src1);
    let dest = t.path().join("dest");
    let r1 = deploy(&plan(t.path(), &src1, &dest, "v1"));
    let h1 = &r1.hosts[0];
    assert_eq!(h1.bytes_reused, 0, "{h1:?}");
    // v1 was sealed as it was put in place: v2 trusts its unchanged files unhashed.
    let seal = std::fs::read_to_string(dest.join(".corvid/v1.seal")).unwrap();
    assert!(seal.contains("\"d0/f0\""), "{seal}");
    // The first deploy sends everything, pad zeros included.
    assert_eq!(
        h1.bytes_from_seeder + h1.bytes_from_peers,
        aligned_total(&src1)
    );

    let r2 = deploy(&plan(t.path(), &src2, &dest, "v2"));
    let h2 = &r2.hosts[0];
    let fetched = h2.bytes_from_seeder + h2.bytes_from_peers;
    // Every file starts a piece (deploy aligns), so the one changed byte costs one piece.
    assert_eq!(fetched, PIECE, "{h2:?}");
    assert_eq!(h2.bytes_reused + fetched, aligned_total(&src2), "{h2:?}");
    assert_same_tree(&src2, &dest.join("releases/v2"));
    assert_same_tree(&src1, &dest.join("releases/v1"));
    assert_eq!(
        std::fs::read_link(dest.join("current")).unwrap(),
        Path::new("releases/v2")
    );
    // No file of v2 is the same inode as v1's (copies or reflinks, never hard links).
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(dest.join("releases/v1/d0/f0")).unwrap();
    let b = std::fs::metadata(dest.join("releases/v2/d0/f0")).unwrap();
    assert_ne!(a.ino(), b.ino());
    assert!(!dest.join("releases/v2/.pad").exists());

    // The same release deployed in full elsewhere is byte-identical.
    let full = t.path().join("full");
    let r3 = deploy(&plan(t.path(), &src2, &full, "v2"));
    assert_eq!(r3.hosts[0].bytes_reused, 0);
    assert_same_tree(&full.join("releases/v2"), &dest.join("releases/v2"));

    // Rolling back to v1's content as v3 with `--base v1` (current is v2): all reused.
    let mut p = plan(t.path(), &src1, &dest, "v3");
    p.base = Some("v1".into());
    let r4 = deploy(&p);
    let h4 = &r4.hosts[0];
    assert_eq!(h4.bytes_from_seeder + h4.bytes_from_peers, 0, "{h4:?}");
    assert_eq!(h4.bytes_reused, aligned_total(&src1), "{h4:?}");
    assert_same_tree(&src1, &dest.join("releases/v3"));
}

#[test]
fn a_corrupted_base_file_is_fetched_from_the_swarm_not_copied() {
    let t = tempfile::tempdir().unwrap();
    let src1 = release1(t.path());
    let src2 = release2(t.path(), &src1);
    let dest = t.path().join("dest");
    deploy(&plan(t.path(), &src1, &dest, "v1"));
    // Bit rot in an unchanged file of the base release, same size.
    let victim = dest.join("releases/v1/d0/f6");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[2 * PIECE as usize + 77] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();

    let r2 = deploy(&plan(t.path(), &src2, &dest, "v2"));
    let h2 = &r2.hosts[0];
    // The edited piece and the rotten one come from the swarm.
    assert_eq!(
        h2.bytes_from_seeder + h2.bytes_from_peers,
        2 * PIECE,
        "{h2:?}"
    );
    assert_eq!(h2.bytes_reused + 2 * PIECE, aligned_total(&src2), "{h2:?}");
    assert_same_tree(&src2, &dest.join("releases/v2"));
}

/// `corvid peer TORRENT DEST --base DIR` outside the release layout, on an aligned torrent
/// made by `corvid make --align` and seeded by corvid: the `--json` report names what the
/// base supplied, and only the rest is downloaded.
#[test]
fn corvid_peer_reuses_a_base_directory_for_an_aligned_torrent() {
    let t = tempfile::tempdir().unwrap();
    let src1 = release1(t.path());
    let src2 = release2(t.path(), &src1);
    let parent = t.path().join("seed");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::rename(&src2, parent.join("payload")).unwrap();
    let torrent = t.path().join("r2.torrent");
    let o = corvid(&["make", "--align", "--threads", "1", "--json"])
        .arg(parent.join("payload"))
        .arg("-o")
        .arg(&torrent)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let made = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(json_field(&made, "files"), Some("8"), "{made}");
    assert_eq!(json_field(&made, "pad_files"), Some("7"), "{made}");
    let (mut seed, addr) = start_seeder(&torrent, &parent, &["--no-tracker"], T);

    let run = |dest: &Path, base: Option<&Path>| -> String {
        let mut cmd = corvid(&["peer"]);
        cmd.arg(&torrent).arg(dest);
        cmd.args([
            "--peer",
            &addr.to_string(),
            "--no-announce",
            "--linger",
            "0",
        ]);
        cmd.args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"]);
        cmd.args(["--hash-threads", "1", "--stall-timeout", "60s"]);
        if let Some(b) = base {
            cmd.arg("--base").arg(b);
        }
        let mut p = Proc::spawn("corvid peer", &mut cmd);
        let (code, lines, err) = p.wait_exit(T);
        assert_eq!(code, Some(0), "{}\n{err}", lines.join("\n"));
        lines
            .into_iter()
            .find(|l| l.contains("\"event\":\"done\""))
            .expect("done report")
    };
    let with_base = t.path().join("delta");
    let done = run(&with_base, Some(&src1));
    assert_same_tree(&parent.join("payload"), &with_base.join("payload"));
    let down = support::json_u64(&done, "bytes_down");
    let reused = support::json_u64(&done, "reused_bytes");
    assert!(done.contains("\"reuse\":{\"base\":"), "{done}");
    assert!(down <= 2 * PIECE, "downloaded {down}: {done}");
    assert_eq!(
        reused + down,
        support::json_u64(&done, "bytes_total"),
        "{done}"
    );

    // Without a base the same torrent downloads in full, to the same bytes.
    let plain = t.path().join("plain");
    let done = run(&plain, None);
    assert!(!done.contains("\"reuse\""), "{done}");
    assert_same_tree(&plain.join("payload"), &with_base.join("payload"));
    assert!(!plain.join("payload/.pad").exists());
    seed.finish(T);
}

/// The seeder does not wait for the hosts' checks: the torrent is hashed and the seeder
/// started while the checks (ssh handshakes and probes, seconds for a fleet) run, so it
/// is up before they end, and a host whose corvid is up to date starts its peer as soon
/// as its own check is done.
#[test]
fn the_seeder_is_up_while_the_hosts_are_checked() {
    use corvid_engine::deploy::fleet::{self, FleetEvent};
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), pseudo_random(96 << 20, 5)).unwrap();
    // The probe is the session that prints $SSH_CONNECTION.
    let slow = t.path().join("slow-ssh");
    std::fs::write(
        &slow,
        "#!/bin/sh\n\
         if [ \"$1\" = -G ]; then echo 'hostname 127.0.0.1'; exit 0; fi\n\
         while [ \"$#\" -gt 0 ] && [ \"$1\" != -- ]; do shift; done\n\
         case \"$3\" in *SSH_CONNECTION*) sleep 3 ;; esac\n\
         SSH_CONNECTION='127.0.0.1 40000 127.0.0.1 22' exec sh -c \"$3\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut p = deploy::plan(t.path(), &src, &t.path().join("dest"), "v1");
    p.ssh.program = Some(slow);
    let (mut seeding, mut checked) = (None, None);
    let r = fleet::run(
        &p,
        corvid_engine::node::StopFlag::new(),
        &mut |ev| match ev {
            FleetEvent::Seeding {
                at,
                checked: c,
                torrent_time,
                ..
            } => seeding = Some((*at, *c, *torrent_time)),
            FleetEvent::Checked { at, failed } => checked = Some((*at, *failed)),
            _ => {}
        },
    )
    .expect("the deploy runs");
    assert_eq!(r.hosts[0].outcome, HostOutcome::Deployed, "{r:?}");
    let (at, during, torrent) = seeding.expect("a seeding event");
    let (checked, failed) = checked.expect("a checked event");
    assert_eq!(failed, 0);
    assert!(checked >= Duration::from_secs(3), "checks took {checked:?}");
    // Up before the checks ended (so it says no check time), after hashing alone.
    assert!(
        at < checked && during.is_none(),
        "seeder up at {at:?}, checks ended at {checked:?}"
    );
    assert!(torrent <= at, "hashing {torrent:?}, seeder up at {at:?}");
    // The host went once its check was done, not later.
    let h = &r.hosts[0];
    let (c, go) = (h.checked.expect("checked"), h.go.expect("told to go"));
    assert!(
        go >= c && go - c < Duration::from_secs(2),
        "checked {c:?}, go {go:?}"
    );
    assert_same_tree(&src, &t.path().join("dest/releases/v1"));
}

/// The deployer's piece-hash cache through the real deploy: once the source's files have
/// settled, a deploy of the same tree hashes nothing, one with a file changed hashes only
/// the pieces that file touches, and every host still ends with exactly the source (it
/// verifies every piece against the torrent built from the cache).
#[test]
fn the_deployers_hash_cache_hashes_only_what_changed() {
    use corvid_engine::deploy::fleet::{self, FleetEvent};
    use corvid_engine::deploy::piece_cache::SETTLE;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..6u64 {
        let p = src.join(format!("d/f{i}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pseudo_random(300_000 + 10_000 * i as usize, 40 + i)).unwrap();
    }
    let total: u64 = (0..6).map(|i| 300_000 + 10_000 * i).sum();
    let dest = t.path().join("dest");
    let cache = t.path().join("cache");
    let run = |tag: &str| {
        let mut p = deploy::plan(t.path(), &src, &dest, tag);
        p.hash_cache = Some(cache.clone());
        let mut hashed = None;
        let r = fleet::run(&p, corvid_engine::node::StopFlag::new(), &mut |ev| {
            if let FleetEvent::Seeding { hashed_bytes, .. } = ev {
                hashed = Some(*hashed_bytes);
            }
        })
        .expect("the deploy runs");
        assert_eq!(r.hosts[0].outcome, HostOutcome::Deployed, "{r:?}");
        assert_same_tree(&src, &dest.join("releases").join(tag));
        hashed.expect("a seeding event")
    };
    // An empty cache: everything hashed. Files changed within SETTLE are not cached (a
    // write in the same clock tick would not show), so v2 hashes everything again if v1
    // hashed before they settled (the usual case), nothing if a loaded machine made v1
    // slower than that; from then on they are cached.
    assert_eq!(run("v1"), total);
    std::thread::sleep(SETTLE + Duration::from_millis(100));
    let v2 = run("v2");
    assert!(v2 == total || v2 == 0, "hashed {v2} of {total}");
    assert_eq!(run("v3"), 0);
    // One file edited in place (same size): its pieces only, the first piece of the next
    // file at most with it.
    let f2 = src.join("d/f2");
    let mut b = std::fs::read(&f2).unwrap();
    b[1000] ^= 0xff;
    std::fs::write(&f2, &b).unwrap();
    let hashed = run("v4");
    assert!(
        hashed > 0 && hashed <= 320_000 + 2 * PIECE,
        "hashed {hashed} of {total}"
    );
}
