//! OpenSSH as the fleet transport: the user's own `ssh` with their config, keys and agent.
//!
//! Every session runs `ssh -o BatchMode=yes [user options] -- HOST 'remote command'`:
//! BatchMode, so a host that would ask for a password or a host-key confirmation fails at
//! once instead of hanging the deploy; keep-alives after the user's options (ssh takes the
//! first value it sees, so the user's own `-o ServerAlive...` wins), so a host that dies
//! mid-transfer ends its session in about a minute instead of never; `--` before the host, which [`super::hosts`] has
//! already checked cannot start with `-`. The remote command is one string for the remote
//! shell, so every value in it goes through [`quote`].

use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// ssh's own exit status for "could not connect or authenticate".
pub const SSH_FAILED: i32 = 255;

/// How to reach hosts.
#[derive(Debug, Clone, Default)]
pub struct Ssh {
    /// Extra arguments passed to every `ssh` before the host (`-F file`, `-o X=Y`, `-p 22`).
    pub options: Vec<String>,
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
    /// The command for one session (stdio not yet set).
    pub fn command(&self, host: &str, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-o").arg("BatchMode=yes");
        c.args(&self.options);
        c.args([
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=6",
        ]);
        c.arg("--").arg(host).arg(remote);
        c
    }

    /// Runs `remote` on `host`, feeding `input` to its stdin, and collects the output.
    pub fn run(&self, host: &str, remote: &str, input: &[u8]) -> std::io::Result<Output> {
        let mut child = self
            .command(host, remote)
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
    fn host_goes_after_options_and_double_dash() {
        let ssh = Ssh {
            options: vec!["-F".into(), "cfg".into()],
        };
        let c = ssh.command("h1", "true");
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
    }
}
