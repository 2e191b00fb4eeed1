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

    /// `corvid deploy` run on h0 against h1..h8.
    fn deploy(&self, src: &Path, tag: &str, extra: &[&str]) -> (Output, Vec<String>) {
        self.deploy_to(HOSTS, src, tag, extra)
    }

    /// `corvid deploy` run on h0 against h1..hN (`--linger 1s` unless `extra` says).
    fn deploy_to(&self, n: usize, src: &Path, tag: &str, extra: &[&str]) -> (Output, Vec<String>) {
        self.deploy_in(None, n, src, tag, extra)
    }

    /// [`Fleet::deploy_to`] with `TMPDIR` set for the deployer.
    fn deploy_in(
        &self,
        tmpdir: Option<&Path>,
        n: usize,
        src: &Path,
        tag: &str,
        extra: &[&str],
    ) -> (Output, Vec<String>) {
        let hosts: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
        self.deploy_spec(tmpdir, &hosts.join(","), src, tag, extra)
    }

    /// [`Fleet::deploy_in`] with `--hosts SPEC` as given (`rack=` fields, say).
    fn deploy_spec(
        &self,
        tmpdir: Option<&Path>,
        spec: &str,
        src: &Path,
        tag: &str,
        extra: &[&str],
    ) -> (Output, Vec<String>) {
        let disk = self.disk();
        let cfg = self.line(&["ssh-config"]);
        let mut args: Vec<String> = vec!["exec".into(), "0".into(), "env".into()];
        if let Some(t) = tmpdir {
            args.push(format!("TMPDIR={}", t.display()));
        }
        args.extend([
            env!("CARGO_BIN_EXE_corvid").into(),
            "deploy".into(),
            "--hosts".into(),
            spec.into(),
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
            "--stall-timeout".into(),
            "30s".into(),
            "--threads".into(),
            "1".into(),
            "--json".into(),
        ]);
        if !extra.contains(&"--linger") {
            args.extend(["--linger".into(), "1s".into()]);
        }
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

/// `sha1sum` of a file, as the deploy compares it on the hosts.
fn sha1_of(path: &Path) -> String {
    let out = Command::new("sha1sum")
        .arg(path)
        .output()
        .expect("run sha1sum");
    assert!(
        out.status.success(),
        "sha1sum {}: {}",
        path.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Host `i`'s corvid (what `--remote-corvid` names on that host).
fn host_corvid(fleet: &Fleet, i: usize) -> PathBuf {
    fleet.host_dir(i).join("bin/corvid")
}

/// Puts `bytes` at host `i`'s corvid, executable.
fn place_corvid(fleet: &Fleet, i: usize, bytes: &[u8]) {
    let p = host_corvid(fleet, i);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A build of corvid that differs from this one but runs and reports the same version:
/// this binary with bytes appended (an ELF ignores what follows its sections).
fn other_build() -> Vec<u8> {
    let mut b = std::fs::read(env!("CARGO_BIN_EXE_corvid")).unwrap();
    b.extend_from_slice(b"\nanother build of corvid\n");
    b
}

/// This corvid as the deploy ships it: without debug info (`objcopy --strip-debug`).
fn shipped_corvid() -> (PathBuf, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("corvid");
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_corvid"))
        .arg(&p)
        .status()
        .expect("run objcopy (binutils)");
    assert!(st.success());
    (p, d)
}

/// Every host ends with exactly this corvid as shipped (stripped), executable, and no
/// install leftovers.
fn assert_hosts_have_this_corvid(fleet: &Fleet) {
    let (shipped, _d) = shipped_corvid();
    let want = sha1_of(&shipped);
    for i in 1..=HOSTS {
        let p = host_corvid(fleet, i);
        assert_eq!(sha1_of(&p), want, "h{i}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "h{i}");
        let names: Vec<String> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["corvid"], "h{i}: leftovers beside the binary");
    }
}

/// The host line of `host` and the summary line.
fn host_line<'a>(lines: &'a [String], host: &str) -> &'a str {
    let tag = format!("\"host\":\"{host}\"");
    lines
        .iter()
        .find(|l| l.contains("\"event\":\"host\"") && l.contains(&tag))
        .unwrap_or_else(|| panic!("no line for {host}: {lines:?}"))
}

fn summary_line(lines: &[String]) -> &str {
    lines
        .iter()
        .find(|l| l.contains("\"event\":\"summary\""))
        .unwrap_or_else(|| panic!("no summary: {lines:?}"))
}

#[test]
fn corvid_is_installed_by_the_swarm_from_the_threshold_on() {
    let fleet = Fleet::up("sw", HOSTS);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_src(&src, 5);
    let file_size = std::fs::metadata(env!("CARGO_BIN_EXE_corvid"))
        .unwrap()
        .len();
    let size = std::fs::metadata(shipped_corvid().0).unwrap().len();
    assert!(size < file_size / 2, "{size} of {file_size}");
    // h1..h6 run another build of corvid; h7 and h8 have none.
    let other = other_build();
    for i in 1..=6 {
        place_corvid(&fleet, i, &other);
    }
    let (out, lines) = fleet.deploy(&src, "v1", &["--swarm-install-min", "4"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        lines.join("\n")
    );
    for (host, res, err) in results(&lines) {
        assert_eq!(res, "deployed", "{host}: {err}");
    }
    let mut from_seeder = 0;
    let mut from_peers = 0;
    for i in 1..=HOSTS {
        let l = host_line(&lines, &format!("h{i}"));
        let want = if i <= 6 { "swarm" } else { "ssh" };
        assert_eq!(support::json_field(l, "corvid"), Some(want), "{l}");
        assert_eq!(
            support::json_field(l, "installed_corvid"),
            Some("true"),
            "{l}"
        );
        if i <= 6 {
            // Each old corvid downloaded the whole binary, from the seeder and from the
            // other hosts (end-game duplicates may add a block or two, never less).
            let (s, p) = (
                support::json_u64(l, "corvid_from_seeder"),
                support::json_u64(l, "corvid_from_peers"),
            );
            assert!(s + p >= size, "h{i}: {s} + {p} < {size}");
            from_seeder += s;
            from_peers += p;
        }
    }
    assert_hosts_have_this_corvid(&fleet);
    let sum = summary_line(&lines);
    assert_eq!(support::json_u64(sum, "corvid_bytes"), size, "{sum}");
    assert_eq!(
        support::json_u64(sum, "corvid_file_bytes"),
        file_size,
        "{sum}"
    );
    let stream = support::json_u64(sum, "corvid_stream_bytes");
    assert!(stream < size, "not compressed: {sum}");
    assert_eq!(support::json_u64(sum, "corvid_by_swarm"), 6, "{sum}");
    assert_eq!(support::json_u64(sum, "corvid_by_ssh"), 2, "{sum}");
    assert_eq!(support::json_u64(sum, "corvid_fell_back"), 0, "{sum}");
    assert_eq!(
        support::json_u64(sum, "corvid_ssh_uploaded"),
        2 * stream,
        "{sum}"
    );
    assert_eq!(
        support::json_u64(sum, "corvid_peers_exchanged"),
        from_peers,
        "{sum}"
    );
    // What the hosts got from the seeder, the seeder sent (its count may also hold
    // blocks in flight when a host completed elsewhere).
    let seeder_up = support::json_u64(sum, "corvid_seeder_uploaded");
    assert!(
        seeder_up >= from_seeder,
        "{seeder_up} < {from_seeder}: {sum}"
    );
    // A swarm: the hosts carried part of it, so the deployer sent fewer than 6 copies
    // (2.9 to 3.6 in runs on a 2-core VM with unshaped links).
    assert!(from_peers > 0, "hosts traded nothing: {sum}");
    assert!(seeder_up < 6 * size, "the seeder sent every copy: {sum}");
    eprintln!(
        "binary {size} B: seeder uploaded {seeder_up} B ({:.2} copies) for 6 swarm hosts, \
         hosts traded {from_peers} B; install {} s",
        seeder_up as f64 / size as f64,
        support::json_field(sum, "corvid_install_s").unwrap_or("?")
    );

    // Everything is in place now: a rerun installs nothing.
    let (out, lines) = fleet.deploy(&src, "v1", &["--swarm-install-min", "4"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for i in 1..=HOSTS {
        let l = host_line(&lines, &format!("h{i}"));
        assert_eq!(support::json_field(l, "corvid"), Some("present"), "{l}");
    }
    assert_eq!(
        support::json_u64(summary_line(&lines), "corvid_ssh_uploaded"),
        0
    );

    // A private deploy: the binary's swarm needs the secret too (tracker, seeder and
    // the old corvids all prove it), and it still goes by the swarm.
    for i in 1..=4 {
        place_corvid(&fleet, i, &other);
    }
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, b"fleet secret\n").unwrap();
    let secret_arg = secret.display().to_string();
    let (out, lines) = fleet.deploy(
        &src,
        "v2",
        &["--swarm-install-min", "4", "--secret-file", &secret_arg],
    );
    assert!(
        out.status.success(),
        "private deploy failed: {}\n{}",
        text(&out.stderr),
        lines.join("\n")
    );
    for i in 1..=HOSTS {
        let l = host_line(&lines, &format!("h{i}"));
        let want = if i <= 4 { "swarm" } else { "present" };
        assert_eq!(support::json_field(l, "corvid"), Some(want), "{l}");
        assert_eq!(support::json_field(l, "result"), Some("deployed"), "{l}");
    }
    assert_hosts_have_this_corvid(&fleet);
}

#[test]
fn below_the_threshold_corvid_goes_over_ssh_and_a_failed_swarm_falls_back() {
    let fleet = Fleet::up("si", HOSTS);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_src(&src, 6);
    let file_size = std::fs::metadata(env!("CARGO_BIN_EXE_corvid"))
        .unwrap()
        .len();
    let size = std::fs::metadata(shipped_corvid().0).unwrap().len();
    let other = other_build();
    for i in 1..=3 {
        place_corvid(&fleet, i, &other);
    }
    // 8 hosts need corvid, one fewer than the threshold: all over ssh.
    let (out, lines) = fleet.deploy(&src, "v1", &["--swarm-install-min", "9"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        lines.join("\n")
    );
    for i in 1..=HOSTS {
        let l = host_line(&lines, &format!("h{i}"));
        assert_eq!(support::json_field(l, "corvid"), Some("ssh"), "{l}");
        assert_eq!(support::json_field(l, "result"), Some("deployed"), "{l}");
    }
    let sum = summary_line(&lines);
    assert_eq!(support::json_u64(sum, "corvid_by_ssh"), 8, "{sum}");
    // Stripped, then gzip -9 on the wire: a fraction of the file this corvid runs from.
    let stream = support::json_u64(sum, "corvid_stream_bytes");
    assert_eq!(support::json_u64(sum, "corvid_bytes"), size, "{sum}");
    assert!(stream < size && size < file_size, "{sum}");
    assert_eq!(
        support::json_u64(sum, "corvid_ssh_uploaded"),
        8 * stream,
        "{sum}"
    );
    assert_eq!(support::json_u64(sum, "corvid_seeder_uploaded"), 0, "{sum}");
    eprintln!(
        "binary {file_size} B (stripped {size} B, gzip {stream} B) over ssh to 8 hosts: \
         install {} s",
        support::json_field(sum, "corvid_install_s").unwrap_or("?")
    );
    assert_hosts_have_this_corvid(&fleet);

    // h1 and h2 hold a corvid that answers --version like this one but cannot be a peer
    // (a usage error, as from a much older corvid); h3 another build that works. With
    // the swarm on for a single host, h3 goes by the swarm, h1 and h2 fall back to ssh.
    let version = Command::new(env!("CARGO_BIN_EXE_corvid"))
        .arg("--version")
        .output()
        .unwrap();
    let version = text(&version.stdout).trim().to_string();
    let too_old = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{version}'; exit 0; fi\n\
         echo \"error: unexpected argument '$1'\" >&2; exit 2\n"
    );
    for i in 1..=2 {
        place_corvid(&fleet, i, too_old.as_bytes());
    }
    place_corvid(&fleet, 3, &other);
    let (out, lines) = fleet.deploy(&src, "v2", &["--swarm-install-min", "1"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        lines.join("\n")
    );
    for i in 1..=HOSTS {
        let l = host_line(&lines, &format!("h{i}"));
        let want = match i {
            1 | 2 => "swarm->ssh",
            3 => "swarm",
            _ => "present",
        };
        assert_eq!(support::json_field(l, "corvid"), Some(want), "{l}");
        assert_eq!(support::json_field(l, "result"), Some("deployed"), "{l}");
        if i <= 2 {
            let why = support::json_field(l, "corvid_swarm_error").unwrap_or_default();
            assert!(why.contains("usage error"), "h{i}: {l}");
        }
    }
    let sum = summary_line(&lines);
    assert_eq!(support::json_u64(sum, "corvid_by_swarm"), 1, "{sum}");
    assert_eq!(support::json_u64(sum, "corvid_by_ssh"), 2, "{sum}");
    assert_eq!(support::json_u64(sum, "corvid_fell_back"), 2, "{sum}");
    assert_eq!(
        support::json_u64(sum, "corvid_ssh_uploaded"),
        2 * support::json_u64(sum, "corvid_stream_bytes"),
        "{sum}"
    );
    assert!(
        support::json_u64(sum, "corvid_seeder_uploaded") >= size,
        "{sum}"
    );
    assert_hosts_have_this_corvid(&fleet);
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

/// Once every host holds the release the deploy tells the lingering peers to stop and
/// returns: a 10-minute --linger does not hold it up.
#[test]
fn deploy_returns_once_every_host_holds_the_release() {
    const N: usize = 3;
    let fleet = Fleet::up("lg", N);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_src(&src, 7);
    let (out, lines) = fleet.deploy_to(N, &src, "v1", &["--activate", "--linger", "600s"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        lines.join("\n")
    );
    // Order: the stop comes after every release and before any session ended (host
    // lines are printed as sessions end), and it reached every lingering peer.
    let stopped = lines
        .iter()
        .position(|l| l.contains("\"event\":\"peers_stopped\""))
        .unwrap_or_else(|| panic!("no peers_stopped line: {lines:?}"));
    assert_eq!(support::json_u64(&lines[stopped], "peers"), N as u64);
    let hosts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"event\":\"host\""))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hosts.len(), N, "{lines:?}");
    assert!(hosts.iter().all(|&i| i > stopped), "{lines:?}");
    for (host, res, err) in results(&lines) {
        assert_eq!(res, "deployed", "{host}: {err}");
    }
    // A guard, not the synchronisation: far below the 600 s linger.
    let elapsed: f64 = support::json_field(summary_line(&lines), "elapsed_s")
        .unwrap()
        .parse()
        .unwrap();
    assert!(elapsed < 120.0, "deploy took {elapsed} s");
    // The peers are gone: a second deploy of the same release is not refused as busy
    // and finds it present everywhere.
    let (out, lines) = fleet.deploy_to(N, &src, "v1", &["--linger", "600s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (host, res, err) in results(&lines) {
        assert_eq!(res, "skipped", "{host}: {err}");
    }
    eprintln!("deploy with --linger 600s to {N} hosts returned in {elapsed} s");
}

/// A far host does not hold back the near ones: every host whose corvid is up to date
/// starts its peer the moment its own check is done and the seeder listens, so with h3's
/// link delayed (400 ms each way: its ssh handshake takes seconds) h1 and h2 hold the
/// release before h3's check has even ended; h3 then deploys too. Before, every peer
/// waited for the last check.
#[test]
fn a_slow_host_check_does_not_hold_back_the_others() {
    const N: usize = 3;
    let fleet = Fleet::up("pl", N);
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    make_src(&v1, 21);
    make_src(&v2, 22);
    // corvid onto every host first, so the checks below find it up to date.
    let (out, lines) = fleet.deploy_to(N, &v1, "v1", &[]);
    assert!(out.status.success(), "v1: {}\n{lines:?}", text(&out.stderr));
    let shaped = fleet.script(&["shape", "3", "--delay", "400ms"]);
    assert!(shaped.status.success(), "shape: {}", text(&shaped.stderr));
    let (out, lines) = fleet.deploy_to(N, &v2, "v2", &["--activate"]);
    assert!(out.status.success(), "v2: {}\n{lines:?}", text(&out.stderr));
    let f = |host: &str, k: &str| -> f64 {
        support::json_field(host_line(&lines, host), k)
            .unwrap_or_else(|| panic!("{host}: no {k} in {lines:?}"))
            .parse()
            .unwrap()
    };
    let far_checked = f("h3", "checked_s");
    for h in ["h1", "h2"] {
        assert!(
            f(h, "duration_s") < far_checked,
            "{h} released at {} s, h3 checked at {far_checked} s: {lines:?}",
            f(h, "duration_s")
        );
    }
    for (host, res, err) in results(&lines) {
        assert_eq!(res, "deployed", "{host}: {err}");
    }
    let want = listing(&v2);
    for i in 1..=N {
        assert_eq!(
            listing(&fleet.host_dir(i).join("app/releases/v2")),
            want,
            "h{i}"
        );
    }
    eprintln!(
        "near hosts released at {:.2} s and {:.2} s, the far host checked at {far_checked:.2} s, released at {:.2} s",
        f("h1", "duration_s"),
        f("h2", "duration_s"),
        f("h3", "duration_s")
    );
}

impl Fleet {
    /// `corvid SUB --hosts H --dest DISK/app ...` run on h0, with the fleet's ssh config
    /// and the hosts' corvid.
    fn ops(&self, sub: &str, hosts: &str, extra: &[&str]) -> (Output, Vec<String>) {
        let disk = self.disk();
        let cfg = self.line(&["ssh-config"]);
        let mut args: Vec<String> = vec![
            "exec".into(),
            "0".into(),
            env!("CARGO_BIN_EXE_corvid").into(),
            sub.into(),
            "--hosts".into(),
            hosts.into(),
            "--dest".into(),
            format!("{disk}/app"),
            "--remote-corvid".into(),
            format!("{disk}/bin/corvid"),
            "--ssh-option".into(),
            "-F".into(),
            "--ssh-option".into(),
            cfg,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.script(&refs);
        let lines = text(&out.stdout).lines().map(str::to_string).collect();
        (out, lines)
    }
}

/// The JSON line of `host` among `lines` (any event).
fn line_of<'a>(lines: &'a [String], host: &str) -> &'a str {
    let tag = format!("\"host\":\"{host}\"");
    lines
        .iter()
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no line for {host}: {lines:?}"))
}

/// `status` shows every case (current, previous, sizes, a release that does not verify,
/// a leftover partial, an unreachable host), and `activate` flips where the release
/// verifies and refuses, with the reason, where it does not or is missing.
#[test]
fn status_and_activate_show_and_flip_releases() {
    const N: usize = 3;
    let fleet = Fleet::up("st", N);
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    make_src(&v1, 11);
    make_src(&v2, 12);
    for (src, tag) in [(&v1, "v1"), (&v2, "v2")] {
        let (out, lines) = fleet.deploy_to(N, src, tag, &["--activate"]);
        assert!(out.status.success(), "{}\n{lines:?}", text(&out.stderr));
    }
    let size = |d: &Path| -> u64 {
        listing(d)
            .iter()
            .filter_map(|l| l.split(" file exec=").nth(1))
            .map(|r| r.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
            .sum()
    };
    // h2: v1 tampered with, a download left half-done; h3: unreachable.
    let app2 = fleet.host_dir(2).join("app");
    std::fs::write(app2.join("releases/v1/lib/deep/conf"), b"tampered\n").unwrap();
    std::fs::create_dir_all(app2.join("releases/v3.partial")).unwrap();
    assert!(fleet.script(&["sshd", "3", "stop"]).status.success());

    let (out, lines) = fleet.ops("status", "h1,h2,h3", &["--json"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    let h1 = line_of(&lines, "h1");
    let version = text(
        &Command::new(env!("CARGO_BIN_EXE_corvid"))
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(
        support::json_field(h1, "corvid"),
        Some(version.trim()),
        "{h1}"
    );
    assert_eq!(support::json_field(h1, "current"), Some("v2"), "{h1}");
    assert_eq!(support::json_field(h1, "previous"), Some("v1"), "{h1}");
    let want = format!(
        r#""releases":[{{"tag":"v1","bytes":{},"verified":true}},{{"tag":"v2","bytes":{},"verified":true}}],"partial":[]"#,
        size(&v1),
        size(&v2)
    );
    assert!(h1.contains(&want), "{h1}\nlacks {want}");
    let h2 = line_of(&lines, "h2");
    assert!(
        h2.contains(r#"{"tag":"v1","bytes":"#) && h2.contains(r#""verified":false,"problem":"#),
        "{h2}"
    );
    assert!(h2.contains(r#""partial":["v3"]"#), "{h2}");
    let h3 = line_of(&lines, "h3");
    assert_eq!(support::json_field(h3, "reachable"), Some("false"), "{h3}");
    assert!(
        support::json_field(h3, "error").unwrap().contains("ssh"),
        "{h3}"
    );

    let (out, lines) = fleet.ops("status", "h1,h2,h3", &[]);
    assert_eq!(out.status.code(), Some(8));
    let table = lines.join("\n");
    assert!(
        line_of_text(&table, "h3").contains("UNREACHABLE"),
        "{table}"
    );
    assert!(line_of_text(&table, "h2").contains("BAD: "), "{table}");
    assert!(line_of_text(&table, "h2").contains("v3"), "{table}");

    // Roll back to v1: h1 flips, h2 refuses (v1 does not verify there) and stays on v2.
    assert!(fleet.script(&["sshd", "3", "start"]).status.success());
    let (out, lines) = fleet.ops("activate", "h1,h2,h3", &["--tag", "v1", "--json"]);
    assert_eq!(out.status.code(), Some(8), "{lines:?}");
    let l = line_of(&lines, "h1");
    assert_eq!(support::json_field(l, "result"), Some("activated"), "{l}");
    assert_eq!(support::json_field(l, "was"), Some("v2"), "{l}");
    let l = line_of(&lines, "h2");
    assert_eq!(support::json_field(l, "result"), Some("refused"), "{l}");
    assert!(
        l.contains(r#""error":"release \"v1\" does not verify: "#),
        "{l}"
    );
    assert_eq!(
        support::json_field(line_of(&lines, "h3"), "result"),
        Some("activated")
    );
    let current = |i: usize| std::fs::read_link(fleet.host_dir(i).join("app/current")).unwrap();
    assert_eq!(current(1), PathBuf::from("releases/v1"));
    assert_eq!(current(2), PathBuf::from("releases/v2"));
    assert_eq!(current(3), PathBuf::from("releases/v1"));

    // --previous returns h1 and h3 to v2; a missing tag is refused everywhere.
    let (out, lines) = fleet.ops("activate", "h1,h3", &["--previous"]);
    assert!(out.status.success(), "{}\n{lines:?}", text(&out.stderr));
    assert_eq!(current(1), PathBuf::from("releases/v2"));
    assert_eq!(current(3), PathBuf::from("releases/v2"));
    let (out, lines) = fleet.ops("activate", "h1,h2", &["--tag", "v9"]);
    assert_eq!(out.status.code(), Some(8));
    for h in ["h1", "h2"] {
        let l = line_of_text(&lines.join("\n"), h);
        assert!(l.contains("REFUSED") && l.contains("not present"), "{l}");
    }
}

/// The line of a table that starts with `host`.
fn line_of_text(table: &str, host: &str) -> String {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no row for {host}: {table}"))
        .to_string()
}

/// `--keep 1` prunes all but the new release and the previous one; `--after-activate`
/// runs on each host after its flip with the release in its environment, and a host
/// where it fails is that host's failure alone (and keeps its old releases).
#[test]
fn keep_prunes_old_releases_and_a_failing_hook_fails_its_host_only() {
    const N: usize = 3;
    let fleet = Fleet::up("kp", N);
    let tmp = tempfile::tempdir().unwrap();
    for (i, tag) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
        make_src(&tmp.path().join(tag), 20 + i as u64);
    }
    for tag in ["v1", "v2", "v3"] {
        let (out, lines) = fleet.deploy_to(N, &tmp.path().join(tag), tag, &["--activate"]);
        assert!(out.status.success(), "{}\n{lines:?}", text(&out.stderr));
    }
    // Back to v1, so v1 becomes the previous release when v4 is activated.
    let (out, lines) = fleet.ops("activate", "h1,h2,h3", &["--tag", "v1"]);
    assert!(out.status.success(), "{}\n{lines:?}", text(&out.stderr));
    std::fs::write(fleet.host_dir(2).join("app/fail-hook"), b"").unwrap();
    let hook = "echo \"hook $CORVID_TAG $CORVID_RELEASE $(cat lib/deep/conf)\"; \
                if [ -e \"$CORVID_DEST/fail-hook\" ]; then echo failing here >&2; exit 4; fi";
    let (out, lines) = fleet.deploy_to(
        N,
        &tmp.path().join("v4"),
        "v4",
        &["--activate", "--keep", "1", "--after-activate", hook],
    );
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}\n{lines:?}",
        text(&out.stderr)
    );
    let disk = fleet.disk();
    for i in 1..=N {
        let l = host_line(&lines, &format!("h{i}"));
        let app = fleet.host_dir(i).join("app");
        // Every host flipped before its hook ran.
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            PathBuf::from("releases/v4"),
            "h{i}"
        );
        let mut left: Vec<String> = std::fs::read_dir(app.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert!(
            l.contains(&format!(
                r#""hook_output":["hook v4 {disk}/app/releases/v4 seed 23""#
            )),
            "{l}"
        );
        if i == 2 {
            assert_eq!(support::json_field(l, "result"), Some("failed"), "{l}");
            assert_eq!(support::json_field(l, "hook_status"), Some("4"), "{l}");
            assert!(l.contains(r#""failing here"]"#), "{l}");
            assert!(
                l.contains("--after-activate failed (exit 4): failing here"),
                "{l}"
            );
            assert!(!l.contains("pruned"), "{l}");
            assert_eq!(left, ["v1", "v2", "v3", "v4"], "h2");
        } else {
            assert_eq!(support::json_field(l, "result"), Some("deployed"), "{l}");
            assert_eq!(support::json_field(l, "hook_status"), Some("0"), "{l}");
            assert!(l.contains(r#""pruned":["v2","v3"]"#), "{l}");
            // The newest (current) and the previous one stay.
            assert_eq!(left, ["v1", "v4"], "h{i}");
            assert!(!app.join(".corvid/v2.torrent").exists());
        }
    }
    let err = text(&out.stderr);
    assert!(
        err.contains("h2 failed: --after-activate failed (exit 4)"),
        "{err}"
    );
}

/// Bad flags for the fleet operations are refused before any host is contacted, each
/// with the usage exit code.
#[test]
fn ops_flags_are_checked_before_any_host() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let src = src.display().to_string();
    let corvid = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .args(args)
            .args(["--ssh-option", "-oConnectTimeout=1"])
            .output()
            .unwrap();
        (out.status.code(), text(&out.stderr))
    };
    let deploy = [
        "deploy",
        "--hosts",
        "nonexistent.invalid",
        "--src",
        &src,
        "--dest",
        "/srv/app",
        "--tag",
        "v1",
    ];
    for (extra, want) in [
        (
            &["--activate", "--keep", "0"][..],
            "--keep must be at least 1",
        ),
        (&["--keep", "2"][..], "--keep needs --activate"),
        (
            &["--activate", "--after-activate", " "][..],
            "--after-activate is empty",
        ),
        (
            &["--after-activate", "true"][..],
            "--after-activate needs --activate",
        ),
        (
            &["--activate", "--batch", "2"][..],
            "--batch 2 is larger than the fleet (1 hosts)",
        ),
        (&["--activate", "--batch", "0"][..], "at least 1"),
        (
            &["--activate", "--check", "true"][..],
            "--check needs --batch",
        ),
        (
            &["--activate", "--batch", "1", "--check", ""][..],
            "--check is empty",
        ),
    ] {
        let args: Vec<&str> = deploy.iter().chain(extra).copied().collect();
        let (code, err) = corvid(&args);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(
            !err.contains("nonexistent.invalid"),
            "a host was contacted: {err}"
        );
    }
    let on = ["--hosts", "nonexistent.invalid", "--dest", "/srv/app"];
    for (args, want) in [
        (vec!["activate", "--tag", "../v1"], "not a plain name"),
        (vec!["activate", "--tag", "v1.partial"], "not a plain name"),
        (
            vec!["status", "--parallel", "0"],
            "--parallel must be at least 1",
        ),
    ] {
        let args: Vec<&str> = args.into_iter().chain(on).collect();
        let (code, err) = corvid(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !err.contains("nonexistent.invalid"),
            "a host was contacted: {err}"
        );
    }
    let (code, err) = corvid(&["activate", "--dest", "relative", "--tag", "v1"]);
    assert_eq!(code, Some(2), "{err}");
}

/// Rolling activation: everyone downloads first, then waves of 2; a failing `--check` in
/// wave 2 stops the rollout with wave 3 untouched (old release active, new one present);
/// with `--rollback-on-failure` the failed wave goes back to what it ran before.
#[test]
fn a_failing_check_in_wave_2_stops_the_rollout_and_can_roll_it_back() {
    const N: usize = 6;
    let fleet = Fleet::up("rl", N);
    let tmp = tempfile::tempdir().unwrap();
    for (i, tag) in ["v1", "v2", "v3"].iter().enumerate() {
        make_src(&tmp.path().join(tag), 30 + i as u64);
    }
    let (out, lines) = fleet.deploy_to(N, &tmp.path().join("v1"), "v1", &["--activate"]);
    assert!(out.status.success(), "{}\n{lines:?}", text(&out.stderr));
    std::fs::write(fleet.host_dir(3).join("app/fail-check"), b"").unwrap();
    let check = "if [ -e \"$CORVID_DEST/fail-check\" ]; then echo unhealthy; exit 3; fi";
    let current = |i: usize| {
        std::fs::read_link(fleet.host_dir(i).join("app/current"))
            .unwrap()
            .display()
            .to_string()
    };
    let waves = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("\"event\":\"wave\""))
            .cloned()
            .collect()
    };

    let (out, lines) = fleet.deploy_to(
        N,
        &tmp.path().join("v2"),
        "v2",
        &["--activate", "--batch", "2", "--check", check],
    );
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}\n{lines:?}",
        text(&out.stderr)
    );
    let w = waves(&lines);
    assert_eq!(
        w,
        [
            r#"{"event":"wave","wave":1,"hosts":["h1","h2"],"ok":true,"rolled_back":[]}"#,
            r#"{"event":"wave","wave":2,"hosts":["h3","h4"],"ok":false,"rolled_back":[]}"#,
        ],
        "{lines:?}"
    );
    for i in 1..=N {
        let l = host_line(&lines, &format!("h{i}"));
        // Everyone downloaded the release before any activation.
        assert!(fleet.host_dir(i).join("app/releases/v2").is_dir(), "h{i}");
        match i {
            1 | 2 | 4 => {
                assert_eq!(support::json_field(l, "result"), Some("deployed"), "{l}");
                assert_eq!(current(i), "releases/v2", "h{i}");
            }
            3 => {
                assert!(l.contains("--check failed (exit 3): unhealthy"), "{l}");
                assert_eq!(current(i), "releases/v2", "h{i}");
            }
            _ => {
                assert!(l.contains("the rollout stopped after wave 2 failed"), "{l}");
                assert_eq!(current(i), "releases/v1", "h{i}: wave 3 was touched");
            }
        }
    }

    let (out, lines) = fleet.deploy_to(
        N,
        &tmp.path().join("v3"),
        "v3",
        &[
            "--activate",
            "--batch",
            "33%",
            "--check",
            check,
            "--rollback-on-failure",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}\n{lines:?}",
        text(&out.stderr)
    );
    let w = waves(&lines);
    assert_eq!(w.len(), 2, "{lines:?}");
    assert!(
        w[1].contains(r#""ok":false,"rolled_back":["h3","h4"]"#),
        "{w:?}"
    );
    let expect = [
        "releases/v3",
        "releases/v3",
        "releases/v2",
        "releases/v2",
        "releases/v1",
        "releases/v1",
    ];
    for i in 1..=N {
        assert_eq!(current(i), expect[i - 1], "h{i}");
    }
    let l4 = host_line(&lines, "h4");
    assert!(l4.contains("rolled back to v2"), "{l4}");
}

/// Every process whose command line mentions `needle` (read from /proc; nothing is
/// signalled).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(c);
            }
        }
    }
    out
}

/// The deploy shares one ssh connection per host (ControlMaster) and leaves neither
/// control sockets nor master processes behind; the deploy overhead for a small
/// release is measured with and without sharing.
#[test]
fn ssh_connections_are_shared_and_leave_nothing_behind() {
    let fleet = Fleet::up("mx", HOSTS);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.conf"), b"small release\n").unwrap();
    let t = tmp.path().join("deployer-tmp");
    std::fs::create_dir_all(&t).unwrap();
    // The first run installs corvid; the measured ones find it present.
    let (out, lines) = fleet.deploy_in(Some(&t), HOSTS, &src, "v0", &["--activate"]);
    assert!(out.status.success(), "{}\n{lines:?}", text(&out.stderr));
    let needle = t.display().to_string();
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..3 {
        for (k, extra) in [&[][..], &["--no-ssh-multiplex"][..]].iter().enumerate() {
            let tag = format!("r{round}m{k}");
            let mut args = vec!["--activate", "--linger", "0s"];
            args.extend_from_slice(extra);
            let (out, lines) = fleet.deploy_in(Some(&t), HOSTS, &src, &tag, &args);
            assert!(out.status.success(), "{}\n{lines:?}", text(&out.stderr));
            for (h, res, err) in results(&lines) {
                assert_eq!(res, "deployed", "{h}: {err}");
            }
            let el: f64 = support::json_field(summary_line(&lines), "elapsed_s")
                .unwrap()
                .parse()
                .unwrap();
            times[k].push(el);
            // Nothing left: the private socket directory is gone, no master runs.
            let left: Vec<_> = std::fs::read_dir(&t).unwrap().flatten().collect();
            assert!(left.is_empty(), "left in TMPDIR: {left:?}");
            let masters = processes_mentioning(&needle);
            assert!(masters.is_empty(), "still running: {masters:?}");
        }
    }
    for v in &mut times {
        v.sort_by(f64::total_cmp);
    }
    eprintln!(
        "deploy of a 14-byte release to {HOSTS} hosts, corvid present, --linger 0s: \
         shared connections {:?} s (median {}), a connection per session {:?} s (median {})",
        times[0], times[0][1], times[1], times[1][1]
    );
}

/// Delta releases on the fleet: v2 differs from v1 (current on every host) by one byte of
/// `lib/big.bin`, so each host fills v2 from v1 and fetches one piece; on h3 a byte of an
/// unchanged piece of v1 rotted after v1 was deployed, so h3 fetches that piece too rather
/// than copying it. Every host ends with v2 exactly as a full deploy writes it.
#[test]
fn a_delta_release_reuses_the_current_one_and_fetches_only_the_change() {
    const PIECE: u64 = 256 * 1024;
    let fleet = Fleet::up("dl", HOSTS);
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("v1src");
    let v2 = tmp.path().join("v2src");
    make_src(&v1, 7);
    make_src(&v2, 7);
    let big = v2.join("lib/big.bin");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[PIECE as usize + 5] ^= 0x5a;
    std::fs::write(&big, &bytes).unwrap();

    let (out, lines) = fleet.deploy(&v1, "v1", &["--activate"]);
    assert!(out.status.success(), "v1: {}\n{lines:?}", text(&out.stderr));
    for i in 1..=HOSTS {
        let l = host_line(&lines, &format!("h{i}"));
        assert!(!l.contains("bytes_reused"), "first deploy reused: {l}");
    }
    let rotten = fleet.host_dir(3).join("app/releases/v1/lib/big.bin");
    let mut b = std::fs::read(&rotten).unwrap();
    b[2 * PIECE as usize + 77] ^= 1;
    std::fs::write(&rotten, &b).unwrap();

    let (out, lines) = fleet.deploy(&v2, "v2", &["--activate"]);
    assert!(out.status.success(), "v2: {}\n{lines:?}", text(&out.stderr));
    let want = listing(&v2);
    for i in 1..=HOSTS {
        let l = host_line(&lines, &format!("h{i}"));
        let fetched =
            support::json_u64(l, "bytes_from_seeder") + support::json_u64(l, "bytes_from_peers");
        let want_fetched = if i == 3 { 2 * PIECE } else { PIECE };
        assert_eq!(fetched, want_fetched, "h{i}: {l}");
        assert!(
            support::json_u64(l, "bytes_reused") >= 3 * PIECE,
            "h{i}: {l}"
        );
        let app = fleet.host_dir(i).join("app");
        assert_eq!(listing(&app.join("releases/v2")), want, "h{i}");
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            PathBuf::from("releases/v2"),
            "h{i}"
        );
    }
    // The seeder sent about one piece per host, not the release again.
    let s = summary_line(&lines);
    let uploaded = support::json_u64(s, "seeder_uploaded");
    assert!(uploaded <= (HOSTS as u64 + 1) * PIECE, "{s}");
}

/// Issue 11's leftover: a hosts list with `rack=`, its hosts named by aliases of the ssh
/// config (resolved as ssh does, `ssh -G`; the system resolver does not know them, and
/// the deploy failed before any host was touched): the embedded tracker gets both racks
/// and every host deploys.
#[test]
fn a_deploy_with_racks_gives_the_tracker_its_racks() {
    let fleet = Fleet::up("dr", 4);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_src(&src, 1);
    let spec = "h1 rack=a,h2 rack=a,h3 rack=b,h4 rack=b";
    let (out, lines) = fleet.deploy_spec(None, spec, &src, "v1", &["--activate"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        lines.join("\n")
    );
    let seeding = lines
        .iter()
        .find(|l| l.contains("\"event\":\"seeding\""))
        .expect("a seeding line");
    assert!(seeding.contains("\"racks\":2"), "{seeding}");
    let r = results(&lines);
    assert_eq!(r.len(), 4, "{lines:?}");
    assert!(r.iter().all(|(_, res, _)| res == "deployed"), "{r:?}");
}
