//! `corvid deploy` on the simulated fleet (scripts/fleet: one network + mount namespace
//! and one sshd per host). `corvid deploy` itself runs on h0 and reaches h1..h8 over real
//! ssh with the fleet's ssh config; every host has its own private directory (the fleet's
//! `disk`), used as the deploy base and for the installed corvid.
//!
//! Needs root (namespaces, sshd): without it these tests FAIL with a message, they never
//! pass silently. Each test uses its own fleet name and a guard that runs `down`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOSTS: usize = 8;

fn fleet_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fleet")
}

fn require_root() {
    let id = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        text(&id.stdout).trim(),
        "0",
        "deploy_fleet tests need root (network namespaces and sshd for the simulated fleet); \
         run them as root, as CI does"
    );
}

/// A fleet that is taken down when the test ends, pass or fail.
struct Fleet {
    name: String,
}

impl Fleet {
    fn up(tag: &str, n: usize) -> Fleet {
        require_root();
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let f = Fleet { name };
        let out = f.script(&["up", &n.to_string()]);
        assert!(out.status.success(), "fleet up: {}", text(&out.stderr));
        f
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(fleet_script())
            .arg("--name")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run scripts/fleet")
    }

    fn line(&self, args: &[&str]) -> String {
        text(&self.script(args).stdout).trim().to_string()
    }

    /// The per-host private directory, as seen on every host.
    fn disk(&self) -> String {
        self.line(&["disk"])
    }

    /// Host `i`'s private directory as seen from here (what `disk` is bind-mounted from).
    fn host_dir(&self, i: usize) -> PathBuf {
        Path::new(&self.disk())
            .parent()
            .expect("disk has a parent")
            .join(format!("hosts/h{i}"))
    }

    /// `corvid deploy` run on h0 against h1..hN.
    fn deploy(&self, src: &Path, tag: &str, extra: &[&str]) -> (Output, Vec<String>) {
        let disk = self.disk();
        let cfg = self.line(&["ssh-config"]);
        let hosts: Vec<String> = (1..=HOSTS).map(|i| format!("h{i}")).collect();
        let mut args: Vec<String> = vec![
            "exec".into(),
            "0".into(),
            env!("CARGO_BIN_EXE_corvid").into(),
            "deploy".into(),
            "--hosts".into(),
            hosts.join(","),
            "--src".into(),
            src.display().to_string(),
            "--dest".into(),
            format!("{disk}/app"),
            "--tag".into(),
            tag.into(),
            "--remote-corvid".into(),
            format!("{disk}/bin/corvid"),
            "--ssh-option".into(),
            "-F".into(),
            "--ssh-option".into(),
            cfg,
            "--linger".into(),
            "1s".into(),
            "--stall-timeout".into(),
            "30s".into(),
            "--threads".into(),
            "1".into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.script(&refs);
        let lines = text(&out.stdout).lines().map(str::to_string).collect();
        (out, lines)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `result` of each host's JSON line, by host name.
fn results(lines: &[String]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter(|l| l.contains("\"event\":\"host\""))
        .map(|l| {
            let field = |k: &str| {
                let pat = format!("\"{k}\":\"");
                l.find(&pat)
                    .map(|i| {
                        let rest = &l[i + pat.len()..];
                        rest[..rest.find('"').unwrap_or(rest.len())].to_string()
                    })
                    .unwrap_or_default()
            };
            (field("host"), field("result"), field("error"))
        })
        .collect()
}

/// Every entry of a tree: relative path, then "dir", "link TARGET", or "file MODE SHA".
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            if n == ".git" {
                continue;
            }
            let p = dir.join(&n);
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} link {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel} dir"));
                walk(root, &p, out);
            } else {
                let exec = m.permissions().mode() & 0o111 != 0;
                let bytes = std::fs::read(&p).unwrap();
                out.push(format!(
                    "{rel} file exec={exec} {} {}",
                    bytes.len(),
                    checksum(&bytes)
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn checksum(b: &[u8]) -> u64 {
    // FNV-1a: enough to tell two payloads apart in a test.
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
    })
}

/// The release tree: nested dirs, empty files, a few MiB, an executable, a symlink inside.
fn make_src(root: &Path, seed: u64) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib/deep/er")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/HEAD"), b"ref: x\n").unwrap();
    std::fs::write(
        root.join("lib/big.bin"),
        support::pseudo_random(3 << 20, seed),
    )
    .unwrap();
    std::fs::write(root.join("lib/deep/er/empty"), b"").unwrap();
    std::fs::write(root.join("empty-top"), b"").unwrap();
    std::fs::write(root.join("lib/deep/conf"), format!("seed {seed}\n")).unwrap();
    std::fs::write(root.join("bin/run"), b"#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(root.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../lib/big.bin", root.join("bin/big")).unwrap();
    std::os::unix::fs::symlink("run", root.join("bin/run-link")).unwrap();
}

#[test]
fn deploy_to_fleet_with_failures_reruns_and_second_tag() {
    let fleet = Fleet::up("dp", HOSTS);
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("v1src");
    let v2 = tmp.path().join("v2src");
    make_src(&v1, 1);
    make_src(&v2, 2);

    // 1. Every host gets v1, activated.
    let (out, lines) = fleet.deploy(&v1, "v1", &["--activate"]);
    assert!(
        out.status.success(),
        "deploy v1 failed: {}\n{}",
        text(&out.stderr),
        lines.join("\n")
    );
    let r = results(&lines);
    assert_eq!(r.len(), HOSTS, "{lines:?}");
    assert!(r.iter().all(|(_, res, _)| res == "deployed"), "{r:?}");
    assert!(lines.last().unwrap().contains("\"event\":\"summary\""));
    let want_v1 = listing(&v1);
    assert!(want_v1.iter().any(|l| l == "bin/big link ../lib/big.bin"));
    assert!(want_v1
        .iter()
        .any(|l| l.starts_with("bin/run file exec=true")));
    for i in 1..=HOSTS {
        let app = fleet.host_dir(i).join("app");
        assert_eq!(listing(&app.join("releases/v1")), want_v1, "h{i}");
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            PathBuf::from("releases/v1"),
            "h{i}"
        );
        assert!(!app.join("releases/v1.partial").exists(), "h{i}");
    }
    // Stock clients read the BEP 47 attributes (libtorrent: executable and symlink flags).
    let torrent = fleet.host_dir(1).join("app/.corvid/v1.torrent");
    let py = Command::new(support::python())
        .arg("-c")
        .arg(
            "import sys, libtorrent as lt\n\
             fs = lt.torrent_info(sys.argv[1]).files()\n\
             for i in range(fs.num_files()):\n\
             \x20   fl = fs.file_flags(i)\n\
             \x20   print(fs.file_path(i), 'x' if fl & lt.file_storage.flag_executable else '-', \
             fs.symlink(i) if fl & lt.file_storage.flag_symlink else '')\n",
        )
        .arg(&torrent)
        .output()
        .expect("run python3 (python3-libtorrent is installed by scripts/test-deps)");
    let lt_files = text(&py.stdout);
    assert!(py.status.success(), "libtorrent: {}", text(&py.stderr));
    assert!(lt_files.contains("v1src/bin/run x"), "{lt_files}");
    assert!(
        lt_files.contains("v1src/bin/big - v1src/lib/big.bin"),
        "{lt_files}"
    );

    // 2. h3's sshd is down: v2 reaches the others, h3 is reported failed, exit non-zero.
    let down = fleet.script(&["sshd", "3", "stop"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    let (out, lines) = fleet.deploy(&v2, "v2", &["--activate"]);
    assert!(
        !out.status.success(),
        "deploy with h3 down succeeded: {lines:?}"
    );
    assert_eq!(out.status.code(), Some(8));
    let r = results(&lines);
    assert_eq!(r.len(), HOSTS, "{lines:?}");
    for (host, res, err) in &r {
        if host == "h3" {
            assert_eq!(res, "failed");
            assert!(err.contains("ssh"), "{err}");
        } else {
            assert_eq!(res, "deployed", "{host}: {err}");
        }
    }
    assert!(
        text(&out.stderr).contains("h3 failed"),
        "{}",
        text(&out.stderr)
    );
    assert!(!fleet.host_dir(3).join("app/releases/v2").exists());

    // 3. The same command with h3 back finishes only h3.
    let up = fleet.script(&["sshd", "3", "start"]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    let (out, lines) = fleet.deploy(&v2, "v2", &["--activate"]);
    assert!(
        out.status.success(),
        "rerun: {}\n{lines:?}",
        text(&out.stderr)
    );
    for (host, res, err) in results(&lines) {
        let want = if host == "h3" { "deployed" } else { "skipped" };
        assert_eq!(res, want, "{host}: {err}");
    }
    let want_v2 = listing(&v2);
    assert_ne!(want_v1, want_v2);
    for i in 1..=HOSTS {
        let app = fleet.host_dir(i).join("app");
        assert_eq!(listing(&app.join("releases/v2")), want_v2, "h{i}");
        // The first release is left as it was.
        assert_eq!(listing(&app.join("releases/v1")), want_v1, "h{i}");
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            PathBuf::from("releases/v2"),
            "h{i}"
        );
    }

    // 4. An existing release with other content is refused unless --force.
    let conf = fleet.host_dir(5).join("app/releases/v1/lib/deep/conf");
    std::fs::write(&conf, b"tampered\n").unwrap();
    let (out, lines) = fleet.deploy(&v1, "v1", &[]);
    assert_eq!(out.status.code(), Some(8), "{lines:?}");
    for (host, res, err) in results(&lines) {
        if host == "h5" {
            assert_eq!(res, "failed");
            assert!(err.contains("different content"), "{err}");
        } else {
            assert_eq!(res, "skipped", "{host}: {err}");
        }
    }
    assert_eq!(std::fs::read(&conf).unwrap(), b"tampered\n");
    let (out, lines) = fleet.deploy(&v1, "v1", &["--force"]);
    assert!(
        out.status.success(),
        "--force: {}\n{lines:?}",
        text(&out.stderr)
    );
    for (host, res, err) in results(&lines) {
        let want = if host == "h5" { "deployed" } else { "skipped" };
        assert_eq!(res, want, "{host}: {err}");
    }
    let app5 = fleet.host_dir(5).join("app");
    assert_eq!(listing(&app5.join("releases/v1")), want_v1);
    // Without --activate, current stays where it was.
    assert_eq!(
        std::fs::read_link(app5.join("current")).unwrap(),
        PathBuf::from("releases/v2")
    );
}

#[test]
fn bad_input_is_refused_before_contacting_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    // A host that does not exist: reaching it would fail differently (and slowly).
    let run = |src: &Path, dest: &str, tag: &str| {
        Command::new(env!("CARGO_BIN_EXE_corvid"))
            .args(["deploy", "--hosts", "nonexistent.invalid", "--src"])
            .arg(src)
            .args(["--dest", dest, "--tag", tag])
            .args(["--ssh-option", "-oConnectTimeout=1"])
            .output()
            .unwrap()
    };
    for (s, dest, tag, want) in [
        (
            tmp.path().join("missing"),
            "/srv/app",
            "v1",
            "not a directory",
        ),
        (src.clone(), "srv/app", "v1", "not an absolute path"),
        (src.clone(), "/srv/app", "a/b", "not a plain name"),
        (src.clone(), "/srv/app", "..", "not a plain name"),
    ] {
        let out = run(&s, dest, tag);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(want), "{err:?} lacks {want:?}");
        assert!(
            !err.contains("nonexistent.invalid"),
            "a host was contacted: {err}"
        );
    }
    std::os::unix::fs::symlink("/etc/passwd", src.join("escape")).unwrap();
    let out = run(&src, "/srv/app", "v1");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("leaves the shared tree"),
        "{}",
        text(&out.stderr)
    );
}
