//! When io_uring is blocked (here: a seccomp filter like Docker's default profile, applied
//! to the child process only), `corvid peer` and `corvid seed` exit with code 6 and one
//! line naming the cause and the fix, instead of a panic or a hang.
//!
//! The global `kernel.io_uring_disabled` sysctl is deliberately not used: it would break
//! every other test running at the same time.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{corvid, make_tree, Proc};

/// Unavailable, from `corvid --help`'s exit codes.
const EXIT_UNAVAILABLE: i32 = 6;

/// Installs a seccomp filter in the calling process: `io_uring_setup` fails with EPERM,
/// every other system call is allowed.
///
/// # Safety
/// Meant for a `pre_exec` hook: it only calls `prctl`, which is async-signal-safe, and
/// allocates nothing.
unsafe fn deny_io_uring_setup() -> std::io::Result<()> {
    // Classic BPF opcodes: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 0, 3, AUDIT_ARCH),
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ins(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls; `prog` and `filter` outlive them and the kernel copies
    // the program. NO_NEW_PRIVS is what lets an unprivileged process install a filter.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `cmd` under the filter; it must exit by itself within 60 s (a node that did
/// start would run on: `wait_exit` then fails the test and `Proc` kills it).
fn run_blocked(what: &str, mut cmd: Command) -> Blocked {
    // SAFETY: the hook runs in the forked child before exec and only calls prctl (see
    // `deny_io_uring_setup`), which is safe there.
    unsafe {
        cmd.pre_exec(|| deny_io_uring_setup());
    }
    let mut p = Proc::spawn(what, &mut cmd);
    let (code, stdout, stderr) = p.wait_exit(Duration::from_secs(60));
    Blocked {
        code,
        stdout: stdout.join("\n"),
        stderr,
    }
}

struct Blocked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn release(dir: &Path) -> std::path::PathBuf {
    let payload = dir.join("src/payload");
    make_tree(&payload, 200_000, 31);
    let torrent = dir.join("r.torrent");
    let out = corvid(&["make"])
        .arg(&payload)
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-size", "16K", "--threads", "1"])
        .output()
        .expect("corvid make");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    torrent
}

/// Exit code 6 and exactly one stderr line naming seccomp and what to allow.
fn assert_unavailable(what: &str, out: &Blocked) {
    let err = &out.stderr;
    assert_eq!(
        out.code,
        Some(EXIT_UNAVAILABLE),
        "{what}: exit code\nstdout: {}\nstderr: {err}",
        out.stdout
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got:\n{err}");
    let line = lines[0];
    assert!(line.contains("io_uring"), "{what}: {line}");
    assert!(line.contains("seccomp"), "{what}: cause not named: {line}");
    assert!(
        line.contains("io_uring_setup"),
        "{what}: the fix (which calls to allow) is not named: {line}"
    );
}

#[test]
fn peer_exits_6_when_io_uring_is_blocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let torrent = release(dir.path());
    let mut cmd = corvid(&["peer"]);
    cmd.arg(&torrent).arg(dir.path().join("dest"));
    cmd.args(["--no-announce", "--listen", "127.0.0.1:0", "--linger", "0"]);
    cmd.args([
        "--cores",
        "1",
        "--hash-threads",
        "1",
        "--stall-timeout",
        "30s",
    ]);
    assert_unavailable("corvid peer", &run_blocked("corvid peer", cmd));
}

#[test]
fn seed_exits_6_when_io_uring_is_blocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let torrent = release(dir.path());
    let mut cmd = corvid(&["seed"]);
    cmd.arg(&torrent).arg(dir.path().join("src"));
    cmd.args(["--no-tracker", "--listen", "127.0.0.1:0"]);
    cmd.args(["--cores", "1", "--hash-threads", "1"]);
    assert_unavailable("corvid seed", &run_blocked("corvid seed", cmd));
}
