//! Why one host failed while the others went on: a typed value the deploy's report
//! carries per host ([`super::fleet::HostOutcome::Failed`]), and what a swarm install
//! that fell back to ssh says about the swarm ([`super::install::CorvidInstall`]).
//! Causes that come from elsewhere (an ssh child, the remote corvid's last error line)
//! are kept as their text, so a result can be cloned and compared.

/// Why one host failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// ssh itself could not be started here.
    #[error("cannot run ssh: {0}")]
    SshSpawn(String),
    /// The check session did not finish in time.
    #[error("ssh: no answer within {0} s")]
    ProbeTimeout(u64),
    /// The check session failed: ssh's own message or the remote error line.
    #[error("{}{line} (exit {code})", ssh_prefix(.line))]
    Probe { code: i32, line: String },
    #[error("streaming corvid over ssh timed out after {0} s")]
    StreamTimeout(u64),
    /// Streaming the binary over ssh ended with a failure status.
    #[error("installing corvid at {path} over ssh failed: {failure}")]
    Stream {
        path: String,
        failure: RemoteFailure,
    },
    /// The swarm install's session did not finish in time.
    #[error("timed out after {0} s")]
    SwarmTimeout(u64),
    #[error("the host did not confirm the install")]
    SwarmUnconfirmed,
    /// The swarm install's script ended with a failure status.
    #[error(transparent)]
    Swarm(RemoteFailure),
    /// No swarm could be offered: the deployer's binary seeder did not start.
    #[error("the binary's seeder did not start: {0}")]
    SeederDown(String),
    /// No swarm runs in this deploy.
    #[error("no swarm")]
    NoSwarm,
    /// The swarm failed and the ssh stream after it too.
    #[error("swarm install failed ({swarm}); then {stream}")]
    SwarmThenStream {
        swarm: Box<HostError>,
        stream: Box<HostError>,
    },
    #[error("interrupted before corvid was installed")]
    Interrupted,
    /// `corvid peer` ended with success but never printed its `release` line.
    #[error("peer exited 0 without reporting a release")]
    NoRelease,
    /// The `--after-activate` command failed on the host (the release is active there).
    #[error("--after-activate {}: {last}", hook_how(*.status, *.timed_out))]
    Hook {
        status: Option<i32>,
        timed_out: bool,
        last: String,
    },
    /// A rolling activation failed on the host: refused, unreachable, or its hook or
    /// check failed (then the release is active unless it was rolled back; the text says).
    #[error("activation: {0}")]
    Activation(String),
    /// A rolling activation stopped at an earlier wave: the host holds the release but
    /// still runs its old one.
    #[error(
        "not activated: the rollout stopped after wave {0} failed; this host keeps its old release"
    )]
    NotActivated(usize),
    /// `corvid peer` failed: the meaning of its exit status and its last error line.
    #[error("{text} (exit {code}): {detail}")]
    Peer {
        code: i32,
        text: &'static str,
        detail: String,
    },
}

fn hook_how(status: Option<i32>, timed_out: bool) -> String {
    match (status, timed_out) {
        (_, true) => "timed out".into(),
        (Some(c), _) => format!("failed (exit {c})"),
        (None, _) => "was killed".into(),
    }
}

/// A remote command's failure status: what the status means and the command's last
/// error line (without corvid's `corvid: error: ` prefix), if it printed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text} (exit {code}){}", detail_suffix(.detail))]
pub struct RemoteFailure {
    pub code: i32,
    pub text: &'static str,
    pub detail: String,
}

impl RemoteFailure {
    /// From the exit status, its meaning and the last line of stderr.
    pub fn new(code: i32, last: &str, text: &'static str) -> Self {
        RemoteFailure {
            code,
            text,
            detail: last
                .strip_prefix("corvid: error: ")
                .unwrap_or(last)
                .to_string(),
        }
    }
}

fn ssh_prefix(line: &str) -> &'static str {
    if line.starts_with("ssh:") {
        ""
    } else {
        "ssh: "
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_reads_as_one_line_naming_what_failed() {
        let probe = HostError::Probe {
            code: 255,
            line: "ssh: connect to host h1 port 22: Connection refused".into(),
        };
        assert_eq!(
            probe.to_string(),
            "ssh: connect to host h1 port 22: Connection refused (exit 255)"
        );
        let probe = HostError::Probe {
            code: 127,
            line: "corvid could not be executed on the host".into(),
        };
        assert_eq!(
            probe.to_string(),
            "ssh: corvid could not be executed on the host (exit 127)"
        );
        let f = RemoteFailure::new(65, "corvid: error: bad sha", "wrong");
        assert_eq!(f.to_string(), "wrong (exit 65): bad sha");
        assert_eq!(RemoteFailure::new(1, "", "x").to_string(), "x (exit 1)");
        let both = HostError::SwarmThenStream {
            swarm: Box::new(HostError::Swarm(f)),
            stream: Box::new(HostError::StreamTimeout(600)),
        };
        assert_eq!(
            both.to_string(),
            "swarm install failed (wrong (exit 65): bad sha); then streaming corvid over ssh timed out after 600 s"
        );
    }
}
