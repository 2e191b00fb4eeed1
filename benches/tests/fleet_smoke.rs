//! Runs corvid-bench's `fleet` scenario end to end on a tiny simulated fleet: real
//! namespaces, shaped links, sshd per host, scp and rsync fan-out, SHA-1 checks on every
//! host, results.json and chart.svg written. Needs root (CI runs as root); without it
//! the tests fail and say so rather than pass vacuously.
//!
//! The corvid path of the harness is exercised with a test double of the `corvid` CLI
//! contract (a shell script that copies the file; it is not corvid and measures nothing
//! about corvid): it proves the seeder readiness, `done`-report parsing, per-process
//! usage and teardown work, and that corrupted data fails the run loudly (exit code 3,
//! naming host and method). One test also runs the `link` scenario through every
//! method, as it shares the root requirement (a private sshd) and the test double.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "fleet_smoke needs root (network namespaces, tc, sshd); run the tests as root \
         (CI does: scripts/test)"
    );
}

/// A fleet name unique to this process and test (scripts/fleet allows 1-8 of a-z0-9).
fn fleet_name() -> String {
    format!(
        "s{}{}",
        std::process::id() % 1_000_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "corvid-bench-smoke-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the harness; the fleet is always torn down again (the harness does it, and this
/// does it once more by name in case the harness itself died).
fn bench(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let script = repo_root().join("scripts/fleet");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corvid-bench"));
    cmd.args(args)
        .arg("--fleet-name")
        .arg(name)
        .arg("--fleet-script")
        .arg(&script);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running corvid-bench");
    let down = Command::new(&script)
        .args(["--name", name, "down"])
        .output()
        .expect("scripts/fleet down");
    assert!(down.status.success(), "fleet down failed: {down:?}");
    assert!(
        !Path::new("/run/corvid-fleet").join(name).exists(),
        "fleet {name} state left behind"
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn fleet_of_three_with_scp_and_rsync() {
    require_root();
    let tmp = scratch("base");
    let out_dir = tmp.join("out");
    let data = tmp.join("data");
    let name = fleet_name();
    let o = bench(
        &name,
        &[
            "fleet",
            "--peers",
            "3",
            "--size",
            "4MiB",
            "--runs",
            "1",
            "--rate",
            "1gbit",
            "--methods",
            "scp-par,rsync",
            "--out",
            out_dir.to_str().unwrap(),
            "--dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let results = std::fs::read_to_string(out_dir.join("results.json")).expect("results.json");
    let chart = std::fs::read_to_string(out_dir.join("chart.svg")).expect("chart.svg");
    for m in ["scp-par", "rsync"] {
        assert!(
            results.contains(&format!("\"method\": \"{m}\"")),
            "{results}"
        );
        assert!(chart.contains(&format!(">{m}<")), "{chart}");
    }
    assert!(results.contains("\"status\": \"ok\""), "{results}");
    assert!(!results.contains("\"status\": \"failed\""), "{results}");
    for h in ["h1", "h2", "h3"] {
        assert!(results.contains(&format!("\"host\": \"{h}\"")), "{results}");
    }
    assert!(chart.contains("bound S/C"));
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).expect("summary.txt");
    assert!(summary.contains("hosts done at (s):"), "{summary}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("SHA-1 verified on all 3 hosts"), "{stdout}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A stand-in for the corvid CLI contract (see the module docs): `make` writes the
/// source path into the "torrent", `seed` announces itself and waits to be killed,
/// `peer` copies the file and prints a done report.
const FAKE_CORVID: &str = r#"#!/bin/bash
set -eu
cmd=$1; shift
case $cmd in
  --version) echo "fake-corvid (test double)" ;;
  make)
    src=$1; shift; out=
    while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift 2 ;; *) shift ;; esac; done
    echo "$src" > "$out" ;;
  seed)
    echo '{"event":"listening","peer_addr":"127.0.0.1:1","tracker_addr":"127.0.0.1:2"}'
    exec sleep 600 ;;
  peer)
    torrent=$1; dest=$2; src=$(cat "$torrent")
    cp "$src" "$dest/"
    if [ -n "${FAKE_CORVID_CORRUPT:-}" ]; then
      printf 'X' | dd of="$dest/$(basename "$src")" bs=1 seek=1000 conv=notrunc status=none
    fi
    size=$(stat -c %s "$src")
    echo '{"event":"progress"}'
    echo "{\"event\":\"complete\",\"elapsed_s\":0.001}"
    echo "{\"event\":\"done\",\"report\":{\"bytes_down\":$size,\"bytes_up\":0,\"bytes_from_seeder\":$size,\"bytes_from_peers\":0,\"elapsed_s\":0.001,\"piece_latency_us\":{\"p50\":10,\"p99\":20}}}" ;;
  *) echo "fake-corvid: unknown command $cmd" >&2; exit 2 ;;
esac
"#;

fn fake_corvid(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("fake-corvid");
    std::fs::write(&p, FAKE_CORVID).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn corvid_path_collects_reports_and_usage() {
    require_root();
    let tmp = scratch("corvid");
    let out_dir = tmp.join("out");
    let data = tmp.join("data");
    let fake = fake_corvid(&tmp);
    let o = bench(
        &fleet_name(),
        &[
            "fleet",
            "--peers",
            "2",
            "--size",
            "1MiB",
            "--runs",
            "1",
            "--methods",
            "corvid",
            "--corvid",
            fake.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let results = std::fs::read_to_string(out_dir.join("results.json")).unwrap();
    assert!(
        results.contains("\"bytes_from_seeder\": 2097152"),
        "{results}"
    );
    assert!(results.contains("\"role\": \"corvid seed\""), "{results}");
    assert!(results.contains("\"role\": \"corvid peer\""), "{results}");
    assert!(
        results.contains("\"piece_latency_p99_us_max_over_peers\": 20"),
        "{results}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn corrupted_data_fails_loudly() {
    require_root();
    let tmp = scratch("corrupt");
    let out_dir = tmp.join("out");
    let data = tmp.join("data");
    let fake = fake_corvid(&tmp);
    let o = bench(
        &fleet_name(),
        &[
            "fleet",
            "--peers",
            "2",
            "--size",
            "1MiB",
            "--runs",
            "1",
            "--methods",
            "corvid",
            "--corvid",
            fake.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--dir",
            data.to_str().unwrap(),
        ],
        &[("FAKE_CORVID_CORRUPT", "1")],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("DATA LOSS"), "{stderr}");
    assert!(
        stderr.contains("corvid") && stderr.contains("h1") && stderr.contains("h2"),
        "{stderr}"
    );
    let results = std::fs::read_to_string(out_dir.join("results.json")).unwrap();
    assert!(results.contains("\"status\": \"data-loss\""), "{results}");
    assert!(
        !results.contains("\"median_s\""),
        "a corrupt run must not report a time: {results}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn missing_corvid_is_reported_and_others_continue() {
    require_root();
    let tmp = scratch("missing");
    let out_dir = tmp.join("out");
    let data = tmp.join("data");
    let o = bench(
        &fleet_name(),
        &[
            "fleet",
            "--peers",
            "1",
            "--size",
            "1MiB",
            "--runs",
            "1",
            "--methods",
            "corvid,rsync",
            "--corvid",
            "/nonexistent/corvid",
            "--out",
            out_dir.to_str().unwrap(),
            "--dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let results = std::fs::read_to_string(out_dir.join("results.json")).unwrap();
    assert!(
        results.contains("cargo build --release -p corvid"),
        "{results}"
    );
    assert!(
        results.contains("\"status\": \"ok\""),
        "rsync should still run: {results}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The `link` scenario through every method once (corvid via the test double), small
/// payload: private sshd started and killed, iperf3 parsed, copies verified.
#[test]
fn link_scenario_runs_every_method() {
    require_root();
    let tmp = scratch("link");
    let out_dir = tmp.join("out");
    let data = tmp.join("data");
    let fake = fake_corvid(&tmp);
    let o = Command::new(env!("CARGO_BIN_EXE_corvid-bench"))
        .args(["link", "--size", "2MiB", "--runs", "1", "--corvid"])
        .arg(&fake)
        .arg("--out")
        .arg(&out_dir)
        .arg("--dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let results = std::fs::read_to_string(out_dir.join("results.json")).unwrap();
    for m in ["iperf3", "scp", "scp-gcm", "rsync", "corvid"] {
        assert!(
            results.contains(&format!("\"method\": \"{m}\"")),
            "{results}"
        );
    }
    assert!(!results.contains("\"status\": \"failed\""), "{results}");
    assert!(results.contains("\"fraction_of_iperf3\""), "{results}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let pid: i32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("link: private sshd pid "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("sshd pid line");
    // The private sshd is gone (killed by PID and reaped) once the harness exits.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sshd {pid} still running"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
