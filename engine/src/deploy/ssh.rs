//! OpenSSH as the fleet transport: the user's own `ssh` with their config, keys and agent.
//!
//! Every session runs `ssh -o BatchMode=yes [user options] -- HOST 'remote command'`:
//! BatchMode, so a host that would ask for a password or a host-key confirmation fails at
//! once instead of hanging the deploy; keep-alives after the user's options (ssh takes the
//! first value it sees, so the user's own `-o ServerAlive...` wins), so a host that dies
//! mid-transfer ends its session in about a minute instead of never; the host's own
//! `-l USER` and `-p PORT` (from `user@host:port`), then `--` before the bare host, which
//! [`super::hosts`] has checked is a name or an address and nothing else. The remote command is one string for the remote
//! shell, so every value in it goes through [`quote`].

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::hosts::Destination;

/// ssh's own exit status for "could not connect or authenticate".
pub const SSH_FAILED: i32 = 255;

/// How to reach hosts.
#[derive(Debug, Clone, Default)]
pub struct Ssh {
    /// Extra arguments passed to every `ssh` before the host (`-F file`, `-o X=Y`, `-p 22`).
    pub options: Vec<String>,
    /// The ssh client to run [default: `ssh` from PATH]; tests put a stand-in here that
    /// runs the remote command locally.
    pub program: Option<std::path::PathBuf>,
    /// Share one connection per host between sessions (OpenSSH ControlMaster), with the
    /// control sockets in this private directory ([`Multiplex`]).
    pub control_dir: Option<std::path::PathBuf>,
}

/// Takes the child's stdout and stderr and reads them on two threads: its stdout lines
/// (without line ends) as they come, and all of its stderr once it closes.
pub(super) fn output_readers(
    child: &mut std::process::Child,
) -> (
    crossbeam_channel::Receiver<String>,
    crossbeam_channel::Receiver<String>,
) {
    let (err_tx, err_rx) = crossbeam_channel::bounded(1);
    let mut err = child.stderr.take();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        let _ = err_tx.send(s);
    });
    let (line_tx, line_rx) = crossbeam_channel::unbounded::<String>();
    let out = child.stdout.take();
    std::thread::spawn(move || {
        let Some(out) = out else { return };
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if line_tx
                        .send(line.trim_end_matches(['\n', '\r']).to_string())
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    (line_rx, err_rx)
}

/// What one session returned.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status (the remote command's, or 255 for ssh's own failure; -1 if killed).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last non-empty stderr line: where ssh and corvid put their one-line errors.
    pub fn last_error_line(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
    }
}

impl Ssh {
    /// The command for one session (stdio not yet set). The host is split into `-l USER`,
    /// `-p PORT` and the bare host after `--` ([`Destination`]); one that is not a host
    /// is refused here too, whoever the caller is.
    pub fn command(&self, host: &str, remote: &str) -> std::io::Result<Command> {
        let dest = Destination::parse(host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut c = Command::new(
            self.program
                .as_deref()
                .unwrap_or(std::path::Path::new("ssh")),
        );
        c.arg("-o").arg("BatchMode=yes");
        c.args(&self.options);
        c.args([
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=6",
        ]);
        if let Some(d) = &self.control_dir {
            c.args(control_args(d));
        }
        // After the user's options: ssh takes the last -p and -l it sees on the command
        // line, so a host's own port and user win over a fleet-wide `--ssh-option -p`.
        c.args(dest.ssh_args());
        c.arg("--").arg(&dest.host).arg(remote);
        Ok(c)
    }

    /// The address ssh would connect to for `host`, as `ssh -G` resolves it (aliases,
    /// `HostName`, the user's `-F` config), then looked up here if it is a name. `None`
    /// when ssh or the lookup cannot say (no such name, a stand-in ssh without `-G`).
    pub fn resolve(&self, host: &str) -> Option<std::net::IpAddr> {
        use std::net::ToSocketAddrs;
        let dest = Destination::parse(host).ok()?;
        let out = Command::new(
            self.program
                .as_deref()
                .unwrap_or(std::path::Path::new("ssh")),
        )
        .arg("-G")
        .args(&self.options)
        .args(dest.ssh_args())
        .arg("--")
        .arg(&dest.host)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("hostname "))?
            .trim();
        if let Ok(ip) = name.parse() {
            return Some(ip);
        }
        // Only a name that is a host name reaches the resolver.
        Destination::parse(name).ok()?;
        (name, 22).to_socket_addrs().ok()?.next().map(|a| a.ip())
    }

    /// Runs `remote` on `host`, feeding `input` to its stdin, and collects the output.
    pub fn run(&self, host: &str, remote: &str, input: &[u8]) -> std::io::Result<Output> {
        let mut child = self
            .command(host, remote)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Write stdin on its own thread: the remote may write output before it has read
        // all its input, and two full pipes would deadlock.
        let mut stdin = child.stdin.take();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            if let Some(s) = stdin.as_mut() {
                // A remote that exits early closes the pipe: its status says why.
                let _ = s.write_all(&input);
            }
            drop(stdin);
        });
        let mut err = child.stderr.take();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let mut stdout = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut stdout);
        }
        let status = child.wait()?;
        let _ = writer.join();
        let stderr = err_reader.join().unwrap_or_default();
        Ok(Output {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        })
    }

    /// [`Ssh::run`] with a deadline, handing each stdout line to `on_line` as it comes
    /// (for progress). A session still running at `timeout` is killed: its [`Output`]
    /// has `code` -1 and [`Bounded::timed_out`] is set. Reader threads of a killed
    /// session are left to end on their own (a process ssh started could still hold the
    /// pipes), so this returns within a couple of seconds of the deadline whatever the
    /// remote does.
    pub fn run_bounded(
        &self,
        host: &str,
        remote: &str,
        input: &[u8],
        timeout: Duration,
        on_line: &mut dyn FnMut(&str),
    ) -> std::io::Result<Bounded> {
        run_child(self.command(host, remote)?, input, timeout, on_line)
    }
}

/// The options that make ssh share one master connection per host through a socket
/// in `dir` (`%C`: a hash of the local host, remote host, port and user), kept up to
/// 120 s while idle (the deploy ends it sooner, [`Multiplex::close`]).
fn control_args(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut path = dir.as_os_str().to_os_string();
    path.push("/%C");
    let mut cp = std::ffi::OsString::from("ControlPath=");
    cp.push(path);
    vec![
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        cp,
        "-o".into(),
        "ControlPersist=120".into(),
    ]
}

/// One ssh connection per host for a whole deploy: every session (check, install,
/// peer, activation) runs over the host's master connection, so a host costs one TCP and
/// key exchange, not one per step. The control sockets live in a private directory
/// (mode 0700, from `tempfile`), which [`Multiplex::close`] empties by asking each
/// master to exit (`ssh -O exit`) and then removes; dropping it without `close` still
/// removes the directory, and the masters exit on their own after 120 s idle.
pub struct Multiplex {
    dir: tempfile::TempDir,
    ssh: Ssh,
}

impl Multiplex {
    /// `ssh` with a fresh control directory.
    pub fn start(ssh: &Ssh) -> std::io::Result<Multiplex> {
        use std::os::unix::fs::PermissionsExt;
        // Only we may reach the sockets: whoever can connect to one runs commands on
        // the host as us.
        let dir = tempfile::Builder::new()
            .prefix("corvid-ssh-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        let ssh = Ssh {
            control_dir: Some(dir.path().to_path_buf()),
            ..ssh.clone()
        };
        Ok(Multiplex { dir, ssh })
    }

    /// The ssh that shares connections.
    pub fn ssh(&self) -> &Ssh {
        &self.ssh
    }

    /// Stops the masters of `hosts` (those that have one), waits (up to
    /// [`MASTER_EXIT_WAIT`] each) until they have exited, and removes the directory.
    /// `ssh -O exit` returns once the master took the request, before it is gone; the
    /// master was started by ssh, not by us, so its exit is watched through a pidfd
    /// opened before it is told to exit (so it is that very process, whatever reuses its
    /// number later).
    pub fn close(self, hosts: &[String], parallel: usize) {
        let any = std::fs::read_dir(self.dir.path()).is_ok_and(|mut d| d.next().is_some());
        if any {
            super::hosts::for_each_host(hosts, parallel.max(1), &|h: &String| {
                let Ok(dest) = Destination::parse(h) else {
                    return;
                };
                let control = |op: &str| {
                    let mut c = Command::new(
                        self.ssh
                            .program
                            .as_deref()
                            .unwrap_or(std::path::Path::new("ssh")),
                    );
                    c.args(&self.ssh.options)
                        .args(control_args(self.dir.path()))
                        .args(dest.ssh_args())
                        .args(["-O", op, "--"])
                        .arg(&dest.host)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped());
                    c
                };
                let master = control("check")
                    .output()
                    .ok()
                    .and_then(|o| master_pid(&String::from_utf8_lossy(&o.stderr)))
                    .and_then(|pid| {
                        let pid = rustix::process::Pid::from_raw(pid)?;
                        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
                    });
                let _ = control("exit").output();
                if let Some(fd) = master {
                    // Readable once the process has exited.
                    let mut fds = [rustix::event::PollFd::new(
                        &fd,
                        rustix::event::PollFlags::IN,
                    )];
                    let wait = rustix::event::Timespec {
                        tv_sec: MASTER_EXIT_WAIT.as_secs() as _,
                        tv_nsec: 0,
                    };
                    let _ = rustix::event::poll(&mut fds, Some(&wait));
                }
            });
        }
        drop(self.dir);
    }
}

/// How long [`Multiplex::close`] waits for one master to exit after `ssh -O exit`.
pub const MASTER_EXIT_WAIT: Duration = Duration::from_secs(2);

/// The master's process id in `ssh -O check`'s answer ("Master running (pid=1234)").
fn master_pid(answer: &str) -> Option<i32> {
    let rest = answer.split("(pid=").nth(1)?;
    rest.split(')').next()?.trim().parse().ok()
}

/// What [`Ssh::run_bounded`] returned.
#[derive(Debug, Clone)]
pub struct Bounded {
    pub output: Output,
    /// The deadline passed and the session was killed.
    pub timed_out: bool,
}

/// The body of [`Ssh::run_bounded`], for any command (tests run `sh` here).
pub fn run_child(
    mut cmd: Command,
    input: &[u8],
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
) -> std::io::Result<Bounded> {
    let deadline = Instant::now() + timeout;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            // A remote that exits early closes the pipe: its status says why.
            let _ = s.write_all(&input);
        }
    });
    let (line_rx, err_rx) = output_readers(&mut child);
    let mut stdout = String::new();
    let mut timed_out = false;
    loop {
        match line_rx.recv_deadline(deadline) {
            Ok(line) => {
                on_line(&line);
                stdout.push_str(&line);
                stdout.push('\n');
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                timed_out = true;
                // Not yet reaped, so the PID is still this child's.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    // stderr ends with stdout unless something the session started keeps it open.
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    Ok(Bounded {
        output: Output {
            code: if timed_out {
                -1
            } else {
                status.code().unwrap_or(-1)
            },
            stdout,
            stderr,
        },
        timed_out,
    })
}

/// A shell snippet that splits the session's stdin into a torrent file (`torrent_len`
/// bytes) and, when `secret` is set, a secret file made 0600 by a umask in a subshell
/// (so nothing else created by the command inherits that mode). The secret travels on
/// stdin because a command line shows in the remote process list. All three paths are
/// shell words, already quoted.
pub fn receive_files(
    torrent: &str,
    secret_file: &str,
    bundle: &str,
    torrent_len: usize,
    secret: bool,
) -> String {
    if secret {
        format!(
            "(umask 077; cat > {bundle}; head -c {torrent_len} {bundle} > {torrent}; \
             tail -c +{next} {bundle} > {secret_file}; rm -f {bundle})",
            next = torrent_len + 1,
        )
    } else {
        format!("cat > {torrent}")
    }
}

/// Quotes `s` as one word for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes a path, keeping a leading `~/` unquoted so the remote shell expands it to the
/// remote user's home.
pub fn quote_path(p: &str) -> String {
    match p.strip_prefix("~/") {
        Some(rest) => format!("~/{}", quote(rest)),
        None => quote(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_pid_is_read_from_its_check_answer() {
        assert_eq!(master_pid("Master running (pid=4321)\r\n"), Some(4321));
        assert_eq!(master_pid("Control socket connect(/x): No such file"), None);
        assert_eq!(master_pid("Master running (pid=abc)"), None);
    }

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "with space", "it's", "$(rm -rf /)", "a\"b`c`", ""] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote_path("~/x y")))
            .env("HOME", "/home/u")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "/home/u/x y");
    }

    #[test]
    fn a_session_past_its_deadline_is_killed_and_says_so() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo first; echo oops >&2; exec sleep 30");
        let mut lines = Vec::new();
        let t0 = Instant::now();
        let b = run_child(cmd, b"", Duration::from_millis(300), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        assert!(b.timed_out);
        assert_eq!(b.output.code, -1);
        assert_eq!(lines, ["first"]);
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

        // One that ends in time: its status, all its output, and its stdin was fed.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("cat; echo bad >&2; exit 3");
        let b = run_child(cmd, b"a\nb\n", Duration::from_secs(20), &mut |_| {}).unwrap();
        assert!(!b.timed_out);
        assert_eq!(b.output.code, 3);
        assert_eq!(b.output.stdout, "a\nb\n");
        assert_eq!(b.output.last_error_line(), "bad");
    }

    #[test]
    fn received_files_split_at_the_torrent_length() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        let s = d.path().join("s");
        let b = d.path().join("b");
        let (t, s, b) = (
            quote(t.to_str().unwrap()),
            quote(s.to_str().unwrap()),
            quote(b.to_str().unwrap()),
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(receive_files(&t, &s, &b, 5, true));
        let out = run_child(cmd, b"12345secret\n", Duration::from_secs(20), &mut |_| {}).unwrap();
        assert_eq!(out.output.code, 0, "{}", out.output.stderr);
        assert_eq!(std::fs::read(d.path().join("t")).unwrap(), b"12345");
        assert_eq!(std::fs::read(d.path().join("s")).unwrap(), b"secret\n");
        assert!(!d.path().join("b").exists());
    }

    #[test]
    fn host_goes_after_options_and_double_dash() {
        let ssh = Ssh {
            options: vec!["-F".into(), "cfg".into()],
            program: None,
            control_dir: None,
        };
        // Shared connections: the control options after the user's (whose own
        // ControlPath, coming first, wins in ssh), the socket in the private directory.
        let m = Multiplex::start(&ssh).unwrap();
        let dir = m.ssh().control_dir.clone().unwrap();
        assert!(dir.is_dir());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dir).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        let c = m.ssh().command("h1", "true").unwrap();
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_str().unwrap().to_string())
            .collect();
        let cp = format!("ControlPath={}/%C", dir.display());
        assert_eq!(
            args[8..14],
            [
                "-o",
                "ControlMaster=auto",
                "-o",
                cp.as_str(),
                "-o",
                "ControlPersist=120"
            ]
        );
        m.close(&["h1".to_string()], 1);
        assert!(!dir.exists());
        let c = ssh.command("h1", "true").unwrap();
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "-F",
                "cfg",
                "-o",
                "ServerAliveInterval=10",
                "-o",
                "ServerAliveCountMax=6",
                "--",
                "h1",
                "true"
            ]
        );
        // User and port become ssh's own flags; the host alone follows `--`.
        let c = ssh.command("deploy@[fe80::2]:2222", "true").unwrap();
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args[args.len() - 7..],
            ["-l", "deploy", "-p", "2222", "--", "fe80::2", "true"]
        );
        // Not a host: no command at all.
        let e = ssh.command("a$(id>/tmp/x)b", "true").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("is not a host"), "{e}");
    }
}
