//! One host's peer phase (step 6 of the parent's list): the remote `corvid peer` command
//! and its stdin, the ssh session that reads its JSON lines into progress events and an
//! outcome, and the [`LingerGate`] that tells every peer when the fleet is done.
//!
//! Separate from the parent, which sequences the deploy's steps over all hosts: this is
//! what happens on one host's session, and it is the longest single step.

use super::*;

/// The remote shell command of a host's peer phase and what its stdin gets: the torrent,
/// then, in a private swarm, the secret. The remote corvid reads both from stdin
/// (`--stdin-torrent LEN --stdin-secret`) and keeps them under `DEST/.corvid/` itself,
/// through a directory descriptor and as new files renamed into place: a shell `>` would
/// follow a link planted there and write the secret wherever it points.
pub(super) fn peer_command(
    plan: &DeployPlan,
    torrent: &[u8],
    seeder: SocketAddr,
    racks: Option<&PeerRacks>,
) -> (String, Vec<u8>) {
    let mut stdin = torrent.to_vec();
    if let Some(secret) = &plan.secret {
        // Framed (`--stdin-control`): the session's stdin stays open after it.
        stdin.extend_from_slice(format!("{}\n", secret.expose().len()).as_bytes());
        stdin.extend_from_slice(secret.expose());
    }
    (peer_spec(plan, torrent.len(), seeder, racks).shell(), stdin)
}

/// The host's `corvid peer` as a [`PeerCommand`] (see [`peer_command`]).
pub(super) fn peer_spec(
    plan: &DeployPlan,
    torrent_len: usize,
    seeder: SocketAddr,
    racks: Option<&PeerRacks>,
) -> PeerCommand {
    PeerCommand {
        corvid: plan.remote_corvid.clone(),
        // UTF-8 by `validate`; anything else was refused, never approximated.
        dest: plan.dest.to_str().unwrap_or_default().to_string(),
        tag: plan.tag.clone(),
        torrent_len,
        stdin_secret: plan.secret.is_some(),
        linger: plan.linger,
        stall_timeout: plan.stall_timeout,
        seeder,
        // A rolling activation flips in waves afterwards, each with its hook and keep.
        activate: plan.activate && plan.batch.is_none(),
        force: plan.force,
        keep: plan.keep.filter(|_| plan.batch.is_none()),
        after_activate: plan
            .after_activate
            .clone()
            .filter(|_| plan.batch.is_none())
            .map(|c| (c, plan.hook_timeout)),
        base: plan.base.clone(),
        listen_network: plan.peer_network,
        racks: racks.cloned(),
        uplink: plan.uplink,
    }
}

pub(super) fn outcome_of(status: ReleaseStatus) -> HostOutcome {
    match status {
        ReleaseStatus::Installed => HostOutcome::Deployed,
        ReleaseStatus::AlreadyPresent => HostOutcome::AlreadyPresent,
    }
}

/// Murder's `stop_all_peering`, without `pkill`: every host's `corvid peer` runs with
/// `--stdin-control`, and its session's stdin stays open here until every host of the
/// peer phase has its release in place (or has failed). Then all of them are closed at
/// once, and each peer, seeing the end of its stdin, stops lingering and exits. So the
/// linger serves slower hosts while some are unfinished and never delays the operator.
pub(super) struct LingerGate {
    pub(super) state: std::sync::Mutex<GateState>,
}

pub(super) struct GateState {
    /// Hosts still without a release (or a failure).
    pub(super) pending: usize,
    /// The open stdins of the sessions started so far.
    pub(super) held: Vec<ChildStdin>,
}

impl LingerGate {
    pub(super) fn new(hosts: usize) -> LingerGate {
        LingerGate {
            state: std::sync::Mutex::new(GateState {
                pending: hosts,
                held: Vec::new(),
            }),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // Nothing panics while holding it; a poisoned lock still holds valid counts.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a session's stdin open until the fleet is done (closes it at once when it
    /// is done already).
    pub(super) fn hold(&self, stdin: ChildStdin) {
        let mut s = self.lock();
        if s.pending > 0 {
            s.held.push(stdin);
        }
    }

    /// One host is finished; when it is the last, the held stdins are handed back, for
    /// the caller to announce and then close (so the announcement comes before any
    /// session ends because of it).
    pub(super) fn finished(&self) -> Option<Vec<ChildStdin>> {
        let mut s = self.lock();
        s.pending = s.pending.checked_sub(1)?;
        if s.pending > 0 {
            return None;
        }
        Some(std::mem::take(&mut s.held))
    }
}

/// The peer phase for one host.
#[allow(clippy::too_many_arguments)]
pub(super) fn peer_host(
    plan: &DeployPlan,
    start: Instant,
    host: &str,
    racks: Option<&PeerRacks>,
    torrent: &[u8],
    seeder: SocketAddr,
    waiting: Option<Session>,
    events: &Sender<FleetEvent>,
    gate: &LingerGate,
) -> PeerEnd {
    // This host counts as finished once, at its release or else at its session's end.
    let mut counted = false;
    let finish = |counted: &mut bool| {
        if !std::mem::replace(counted, true) {
            host_finished(gate, &mut |e| {
                let _ = events.send(e.clone());
            });
        }
    };
    let r = peer_session(
        plan,
        start,
        host,
        racks,
        torrent,
        seeder,
        waiting,
        events,
        gate,
        &mut || finish(&mut counted),
    );
    finish(&mut counted);
    r
}

/// One host is finished (released, its session ended, or failed before its peer ran):
/// when it is the last, the lingering peers are told to stop, announced first.
pub(super) fn host_finished(gate: &LingerGate, on_event: &mut dyn FnMut(&FleetEvent)) {
    if let Some(stdins) = gate.finished() {
        on_event(&FleetEvent::PeersStopped {
            peers: stdins.len(),
        });
        drop(stdins);
    }
}

/// A running ssh session whose stdout and stderr are read on threads of their own: its
/// stdout as lines, as they come, its stderr whole at the end. A host's merged session
/// ([`PeerCommand::after_probe`]) is one from its check to its peer's exit, which is
/// why the lines are a channel and not a reader borrowed for one phase.
pub(super) struct Session {
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: crossbeam_channel::Receiver<String>,
    stderr: crossbeam_channel::Receiver<String>,
}

impl Session {
    /// Starts `remote` on `host` over `ssh`.
    pub(super) fn start(ssh: &ssh::Ssh, host: &str, remote: &str) -> std::io::Result<Session> {
        let mut child = ssh
            .command(host, remote)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (lines, stderr) = ssh::output_readers(&mut child);
        Ok(Session {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        })
    }

    /// The next stdout line by `deadline`; `Err` when stdout ended or the deadline passed.
    pub(super) fn line_by(
        &self,
        deadline: Instant,
    ) -> Result<String, crossbeam_channel::RecvTimeoutError> {
        self.lines.recv_deadline(deadline)
    }

    /// Waits for the session's end: its exit status (-1 if killed) and its stderr.
    pub(super) fn wait(&mut self) -> (i32, String) {
        drop(self.stdin.take());
        let code = self.child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        (code, self.stderr.recv().unwrap_or_default())
    }

    /// Kills the session (its deadline passed) and reaps it.
    pub(super) fn kill(&mut self) {
        // Not yet reaped, so the PID is still this child's.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    /// A session nobody waited for (the deploy ended before this host's peer, or the host
    /// gets corvid installed first): its stdin closes, which ends a merged session's wait
    /// for the go; it is reaped once its stdout ends, killed if that takes over 5 s.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        let _ = self.child.wait();
    }
}

/// One host's `corvid peer` session; `released` is called at its release line. With
/// `waiting`, the host's merged session after its check is told to go
/// ([`super::super::contract::go_lines`]); else a session of its own starts here.
#[allow(clippy::too_many_arguments)]
pub(super) fn peer_session(
    plan: &DeployPlan,
    start: Instant,
    host: &str,
    racks: Option<&PeerRacks>,
    torrent: &[u8],
    seeder: SocketAddr,
    waiting: Option<Session>,
    events: &Sender<FleetEvent>,
    gate: &LingerGate,
    released: &mut dyn FnMut(),
) -> PeerEnd {
    let (cmd, stdin_bytes) = peer_command(plan, torrent, seeder, racks);
    let (mut session, stdin_bytes) = match waiting {
        Some(s) => {
            let mut go = go_lines(seeder, torrent.len()).into_bytes();
            go.extend_from_slice(&stdin_bytes);
            (s, go)
        }
        None => match Session::start(&plan.ssh, host, &cmd) {
            Ok(s) => (s, stdin_bytes),
            Err(e) => return PeerEnd::failed(HostError::SshSpawn(e.to_string())),
        },
    };
    if let Some(mut stdin) = session.stdin.take() {
        // The torrent is small (hashes only); the remote corvid reads it before anything
        // else happens, so this cannot block on our unread stdout.
        let _ = std::io::Write::write_all(&mut stdin, &stdin_bytes);
        let _ = std::io::Write::flush(&mut stdin);
        gate.hold(stdin);
    }
    let go_at = Instant::now();
    let mut end = PeerEnd::failed(HostError::NoRelease);
    end.go_at = Some(go_at);
    let mut status = None;
    {
        for line in session.lines.iter() {
            match PeerLine::parse(&line) {
                Some(PeerLine::Progress { bytes_down }) => {
                    let _ = events.send(FleetEvent::HostProgress {
                        host: host.to_string(),
                        bytes_down,
                    });
                }
                Some(PeerLine::Release(r)) => {
                    status = Some(r.status);
                    let now = Instant::now();
                    end.released_at = Some(now);
                    end.pruned = r.pruned;
                    end.hook = r.hook;
                    let _ = events.send(FleetEvent::HostReleased {
                        host: host.to_string(),
                        outcome: outcome_of(r.status),
                        duration: now.duration_since(start),
                    });
                    released();
                }
                Some(PeerLine::Done { report }) => {
                    end.from_seeder = report.bytes_from_seeder;
                    end.from_peers = report.bytes_from_peers;
                    end.reused = report.bytes_reused();
                    end.download_ms = report.download_ms;
                    end.fill_ms = report.fill_ms();
                }
                Some(PeerLine::Installed) | None => {}
            }
        }
    }
    let (code, stderr) = session.wait();
    let last = ssh::Output {
        code,
        stdout: String::new(),
        stderr,
    }
    .last_error_line();
    end.outcome = final_outcome(code, status, end.hook.as_ref(), &last);
    end
}

/// A host's outcome from the session's exit code, the release status it reported (if
/// any), its hook's result and the last line of its stderr.
fn final_outcome(
    code: i32,
    status: Option<ReleaseStatus>,
    hook: Option<&HookResult>,
    last: &str,
) -> HostOutcome {
    let hook_failed = hook.filter(|h| !h.ok());
    match (code, status) {
        // The release is active, but the operator's command after it failed.
        (_, Some(_)) if hook_failed.is_some() => {
            let h = hook_failed.expect("checked");
            HostOutcome::Failed(HostError::Hook {
                status: h.status,
                timed_out: h.timed_out,
                last: h.tail.last().cloned().unwrap_or_default(),
            })
        }
        (0, Some(s)) => outcome_of(s),
        (0, None) => HostOutcome::Failed(HostError::NoRelease),
        (c, _) => {
            let detail = last.strip_prefix("corvid: error: ").unwrap_or(last);
            HostOutcome::Failed(HostError::Peer {
                code: c,
                text: remote_exit_text(c),
                detail: detail.to_string(),
            })
        }
    }
}

/// How one host's peer session ended.
pub(super) struct PeerEnd {
    pub(super) outcome: HostOutcome,
    pub(super) from_seeder: u64,
    pub(super) from_peers: u64,
    /// Bytes the host took from a release it already had (`--base`).
    pub(super) reused: u64,
    /// The host's own times, from its `done` report.
    pub(super) download_ms: Option<u64>,
    pub(super) fill_ms: Option<u64>,
    /// When the release was in place: the host's time, before its linger.
    pub(super) released_at: Option<Instant>,
    /// When the peer was told to go (its torrent written to the session).
    pub(super) go_at: Option<Instant>,
    pub(super) pruned: Vec<String>,
    pub(super) hook: Option<HookResult>,
}

impl PeerEnd {
    pub(super) fn failed(why: HostError) -> PeerEnd {
        PeerEnd {
            outcome: HostOutcome::Failed(why),
            from_seeder: 0,
            from_peers: 0,
            reused: 0,
            download_ms: None,
            fill_ms: None,
            released_at: None,
            go_at: None,
            pruned: Vec::new(),
            hook: None,
        }
    }
}
