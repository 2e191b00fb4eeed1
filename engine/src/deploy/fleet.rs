//! `corvid deploy` as a library: one release to every host, Murder's flow without tar.
//!
//! 1. [`validate`]: the plan is checked and the source tree scanned before anything is
//!    sent (missing DIR, relative --dest, bad TAG, links leaving the tree, empty payload).
//! 2. The embedded tracker binds (a busy `--tracker-port` fails here, still before any
//!    host is contacted). Check phase, per host (at most `parallel` at once): one ssh
//!    session prints `$SSH_CONNECTION` and the remote corvid's `--version` and SHA-1. A
//!    host that cannot be reached fails here, with ssh's message, and the others proceed.
//! 3. The seeder address is `--seeder-addr`, else this machine's own source address
//!    towards the first host ([`choose_seeder_addr`]): a host's `$SSH_CONNECTION` is only
//!    a cross-check ([`cross_check`]), so one hostile host cannot point the fleet's
//!    tracker and seeder at itself.
//! 4. The torrent is built and the release's seeder started in this process (on a thread:
//!    no child to babysit, its listening address comes back as an event, and it stops by
//!    a flag once every host is done). Where the address is known before the checks
//!    (nearly always), this runs beside them, and every host whose corvid is up to date
//!    goes on to step 6 the moment its own check is done and the seeder listens: a fleet's
//!    ssh handshakes overlap its swarm instead of preceding it.
//! 5. Install phase ([`super::install`]), once every check is in: where corvid is missing
//!    or differs, this binary goes over ssh, or, when at least `swarm_install_min` hosts
//!    need it, through a swarm of their old corvids fed by a second seeder here (ssh as
//!    the fallback).
//! 6. Peer phase, per host: one ssh session execs `corvid peer --release-dest DEST --tag
//!    TAG --stdin-torrent LEN --json` ([`PeerCommand`]) with the torrent (and a private
//!    swarm's secret) on its stdin, which that corvid keeps in `DEST/.corvid/` without
//!    following links ([`super::remote`]); its JSON lines ([`PeerLine`]) become progress,
//!    its final lines and exit code ([`super::contract::Exit`]) the result. Where the
//!    fleet fits in `--parallel`, that session is the host's check session of step 2,
//!    left waiting after its probe ([`PeerCommand::after_probe`]) and told the seeder and
//!    the torrent's length on its stdin ([`go_lines`]): a host with corvid up to date
//!    costs one ssh session; one that gets corvid installed closes it and has its own.
//!
//! 7. Once every host holds the release, the deployer closes the peers' stdin
//!    ([`LingerGate`]): they stop lingering and the deploy returns.
//! 8. With `--batch`, the rollout ([`Deploy::rollout`]): activation in waves, each host
//!    through `corvid activate` ([`super::ops`]).
//!
//! Every ssh session of one deploy shares one connection per host
//! ([`ssh::Multiplex`]), closed and its socket directory removed at the end.
//!
//! The steps are the methods of one private `Deploy` value, each on the hosts still live;
//! a host that fails a step gets its [`HostOutcome::Failed`] at once and the others go on.

use std::net::{IpAddr, SocketAddr};
use std::process::{ChildStdin, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::hash::HashPool;
use crate::metainfo::{self, BuildOptions, Payload};
use crate::node::StopFlag;
use crate::tracker::{Topology, TrackerConfig, TrackerServer};

use super::contract::{
    go_lines, remote_exit_text, HookResult, PeerCommand, PeerLine, PeerRacks, ReleaseStatus,
    PROBE_END,
};
use super::host_error::HostError;
use super::hosts::for_each_host;
use super::install::{
    self, CorvidInstall, HostInstall, InstallEvent, InstallSummary, LocalBinary, Probe, Route,
};
use super::ops::{self, Activated, HostAnswer};
use super::piece_cache::PieceCache;
pub use super::plan::{validate, Batch, DeployError, DeployPlan, Validated};
use super::seeder::{seeder_config, spawn_seeder};
pub use super::seeder_addr::{
    choose_seeder_addr, cross_check, routed_from, AddrSeen, SeederAddrError,
};
use super::ssh;

mod rollout;
mod session;
use session::{peer_host, peer_spec, LingerGate, Session};

impl From<InstallEvent> for FleetEvent {
    fn from(e: InstallEvent) -> Self {
        match e {
            InstallEvent::Installing {
                swarm,
                ssh,
                binary_bytes,
                pieces,
            } => FleetEvent::Installing {
                swarm,
                ssh,
                binary_bytes,
                pieces,
            },
            InstallEvent::Installed { host, how } => FleetEvent::Installed { host, how },
        }
    }
}

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// The release was downloaded, verified and put in place.
    Deployed,
    /// `releases/TAG` was already there and verified: nothing was transferred.
    AlreadyPresent,
    Failed(HostError),
}

impl HostOutcome {
    pub fn ok(&self) -> bool {
        !matches!(self, HostOutcome::Failed(_))
    }
    /// A short word for tables and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            HostOutcome::Deployed => "deployed",
            HostOutcome::AlreadyPresent => "skipped",
            HostOutcome::Failed(_) => "failed",
        }
    }
}

/// One host's result.
#[derive(Debug, Clone)]
pub struct HostResult {
    pub host: String,
    pub outcome: HostOutcome,
    /// From the start of the deploy until the release was in place on this host (or it
    /// failed); a peer's linger afterwards is not counted.
    pub duration: Duration,
    pub bytes_from_seeder: u64,
    pub bytes_from_peers: u64,
    /// Bytes the host took from a release it already had (`crate::reuse`).
    pub bytes_reused: u64,
    /// Where the host's own time went, as its peer reported it: from its node's start to
    /// the download complete, and of that, filling from the base release (`None` where
    /// the peer did not say: no download ran, or a corvid from before these fields).
    pub download_time: Option<Duration>,
    pub fill_time: Option<Duration>,
    /// On the deploy's clock: the host's check done, and its peer told to go (the
    /// torrent written to its session), where it got that far.
    pub checked: Option<Duration>,
    pub go: Option<Duration>,
    /// How corvid got onto the host; `None` when the host failed before (unreachable)
    /// or during its install (the failure says which).
    pub corvid: Option<HostInstall>,
    /// Releases `--keep` removed on the host, oldest first.
    pub pruned: Vec<String>,
    /// How `--after-activate` ended on the host.
    pub hook: Option<HookResult>,
}

impl HostResult {
    /// This deploy installed (or replaced) corvid on the host.
    pub fn installed_corvid(&self) -> bool {
        self.corvid.as_ref().is_some_and(|c| c.how.installed())
    }
}

/// Progress, for the CLI's display.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    /// The torrent is built and the seeder and tracker listen.
    Seeding {
        name: String,
        bytes: u64,
        pieces: u32,
        seeder: SocketAddr,
        tracker: String,
        hosts: usize,
        /// Racks the tracker hands peers out by (from the hosts' `rack=`; 0: none).
        racks: usize,
        /// Since the deploy's start: the seeder up, and the hosts checked (`None`: the
        /// seeder was up before the checks ended, see [`FleetEvent::Checked`]); and how
        /// long building the torrent (hashing the whole release here) took, which runs
        /// beside the checks where the seeder's address is known before them.
        at: Duration,
        checked: Option<Duration>,
        torrent_time: Duration,
        /// Of the release's bytes, those hashed for the torrent: the rest came from the
        /// piece-hash cache ([`super::piece_cache`]).
        hashed_bytes: u64,
    },
    /// Every host's check is in (since the deploy's start), `failed` of them failed.
    Checked {
        at: Duration,
        failed: usize,
    },
    /// The install phase starts: this many hosts get corvid by the swarm and by ssh
    /// (`pieces` is the binary torrent's, 0 when no swarm runs).
    Installing {
        swarm: usize,
        ssh: usize,
        binary_bytes: u64,
        pieces: u32,
    },
    /// corvid was installed on a host.
    Installed {
        host: String,
        how: CorvidInstall,
    },
    /// A host's downloaded byte count so far.
    HostProgress {
        host: String,
        bytes_down: u64,
    },
    /// The release is in place on a host (it may linger, seeding, before [`HostDone`]).
    /// `outcome` is [`HostOutcome::Deployed`] or [`HostOutcome::AlreadyPresent`];
    /// `duration` is from the start of the deploy.
    ///
    /// [`HostDone`]: FleetEvent::HostDone
    HostReleased {
        host: String,
        outcome: HostOutcome,
        duration: Duration,
    },
    HostDone(HostResult),
    /// A wave of a rolling activation is over: its hosts, whether every one activated
    /// (hook and check included), and the hosts returned to their previous release.
    Wave {
        wave: usize,
        hosts: Vec<String>,
        ok: bool,
        rolled_back: Vec<String>,
    },
    /// Every host of the peer phase holds the release (or failed): the `peers` sessions
    /// still open were told to stop lingering, and the deploy ends as they exit.
    PeersStopped {
        peers: usize,
    },
    /// Something the operator should know that does not stop the deploy (a host that
    /// reports seeing this machine at another address than the one chosen).
    Warning(String),
}

/// The whole deploy.
#[derive(Debug, Clone)]
pub struct FleetReport {
    pub hosts: Vec<HostResult>,
    pub elapsed: Duration,
    pub payload_bytes: u64,
    /// Payload bytes the seeder uploaded (its uplink is the scarce resource).
    pub seeder_uploaded: u64,
    /// How corvid got onto the hosts, and what it cost the deployer's uplink.
    pub install: InstallSummary,
}

impl FleetReport {
    pub fn all_ok(&self) -> bool {
        self.hosts.iter().all(|h| h.outcome.ok())
    }
}

/// The check phase for one host: what it has at `--remote-corvid`.
fn probe_host(plan: &DeployPlan, local: &LocalBinary, host: &str) -> Result<Probe, HostError> {
    let script = install::probe_script(&plan.remote_corvid);
    let b = plan
        .ssh
        .run_bounded(host, &script, b"", install::PROBE_TIMEOUT, &mut |_| {})
        .map_err(|e| HostError::SshSpawn(e.to_string()))?;
    if b.timed_out {
        return Err(HostError::ProbeTimeout(install::PROBE_TIMEOUT.as_secs()));
    }
    let out = b.output;
    if out.code != 0 {
        return Err(probe_failed(&out));
    }
    Ok(install::parse_probe(&out.stdout, local))
}

/// A check session's failure: ssh's or the remote's last error line, else what its exit
/// status means.
fn probe_failed(out: &ssh::Output) -> HostError {
    let mut line = out.last_error_line();
    if line.is_empty() {
        line = remote_exit_text(out.code).to_string();
    }
    HostError::Probe {
        code: out.code,
        line,
    }
}

/// The check phase for one host in the session that also runs its peer
/// ([`PeerCommand::after_probe`]): the same probe, the same errors and deadline as
/// [`probe_host`], and the session left waiting for its go once [`PROBE_END`] came.
/// A session that ended without it (a shell that did not get that far) gives its probe
/// and no session, and the host's peer starts a session of its own as before.
fn probe_waiting(
    plan: &DeployPlan,
    local: &LocalBinary,
    host: &str,
    racks: Option<&PeerRacks>,
) -> Result<(Probe, Option<Session>), HostError> {
    // The seeder and the torrent's length go on the session's stdin with the go.
    let unknown = SocketAddr::new([0, 0, 0, 0].into(), 0);
    let script =
        peer_spec(plan, 0, unknown, racks).after_probe(&install::probe_script(&plan.remote_corvid));
    let mut s =
        Session::start(&plan.ssh, host, &script).map_err(|e| HostError::SshSpawn(e.to_string()))?;
    let deadline = Instant::now() + install::PROBE_TIMEOUT;
    let mut stdout = String::new();
    loop {
        match s.line_by(deadline) {
            Ok(l) if l == PROBE_END => {
                return Ok((install::parse_probe(&stdout, local), Some(s)));
            }
            Ok(l) => {
                stdout.push_str(&l);
                stdout.push('\n');
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                s.kill();
                return Err(HostError::ProbeTimeout(install::PROBE_TIMEOUT.as_secs()));
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    let (code, stderr) = s.wait();
    if code != 0 {
        return Err(probe_failed(&ssh::Output {
            code,
            stdout,
            stderr,
        }));
    }
    Ok((install::parse_probe(&stdout, local), None))
}

/// Runs the deploy. `on_event` is called on this thread. Hosts that fail are reported in
/// the result, not as an error; errors are reserved for a deploy that could not start.
pub fn run(
    plan: &DeployPlan,
    stop: StopFlag,
    on_event: &mut dyn FnMut(&FleetEvent),
) -> Result<FleetReport, DeployError> {
    let start = Instant::now();
    let v = validate(plan)?;
    // One connection per host for every session below; without a directory for the
    // sockets, a connection per session as before.
    let mux = plan
        .ssh_multiplex
        .then(|| ssh::Multiplex::start(&plan.ssh).ok())
        .flatten();
    let shared;
    let plan = match &mux {
        Some(m) => {
            shared = DeployPlan {
                ssh: m.ssh().clone(),
                ..plan.clone()
            };
            &shared
        }
        None => plan,
    };
    let result = run_with(plan, &v, start, stop, on_event);
    if let Some(m) = mux {
        m.close(&v.hosts, plan.parallel);
    }
    result
}

fn run_with(
    plan: &DeployPlan,
    v: &Validated,
    start: Instant,
    stop: StopFlag,
    on_event: &mut dyn FnMut(&FleetEvent),
) -> Result<FleetReport, DeployError> {
    let local =
        LocalBinary::shipped(&plan.local_corvid).map_err(|source| DeployError::LocalBinary {
            path: plan.local_corvid.clone(),
            source,
        })?;
    let (tracker, topology) = bind_tracker(plan)?;
    let racks = topology.as_ref().map_or(0, |t| t.racks());
    let host_racks = peer_racks(plan, topology.as_deref())?;
    let deploy = Deploy {
        plan,
        stop: &stop,
        start,
        results: v.hosts.iter().map(|_| None).collect(),
        hosts: v.hosts.clone(),
        payload_bytes: v.payload.total_length(),
        peer_network_addr: v.peer_network_addr,
        racks,
        host_racks,
        install: InstallSummary {
            binary_bytes: local.bytes.len() as u64,
            file_bytes: local.file_bytes,
            stream_bytes: local.streamed_len(),
            ..InstallSummary::default()
        },
        checked_at: v.hosts.iter().map(|_| None).collect(),
        gate: Arc::new(LingerGate::new(v.hosts.len())),
    };
    let result = deploy.run_phases(&v.payload, &local, &tracker, on_event);
    // Every way out, early or not, stops the tracker.
    tracker.shutdown();
    result
}

/// What each host's peer is told of its rack (issue 11; see [`PeerRacks`]), in host
/// order: `None` for a host without `rack=`. Each rack's rules are written once.
fn peer_racks(
    plan: &DeployPlan,
    topology: Option<&Topology>,
) -> Result<Vec<Option<PeerRacks>>, DeployError> {
    let hosts = super::hosts::parse_host_racks(&plan.hosts)?;
    let Some(t) = topology else {
        return Ok(vec![None; hosts.len()]);
    };
    let mut rules: std::collections::HashMap<String, String> = Default::default();
    Ok(hosts
        .into_iter()
        .map(|(_, rack)| {
            let rack = rack?;
            let id = t.rack_named(&rack)?;
            let rules = rules
                .entry(rack.clone())
                .or_insert_with(|| t.rules_of(id).trim_end().replace('\n', ";"))
                .clone();
            Some(PeerRacks { rack, rules })
        })
        .collect())
}

/// The embedded tracker. It binds first: a busy `--tracker-port` fails before any host
/// is touched.
fn bind_tracker(plan: &DeployPlan) -> Result<(TrackerServer, Option<Arc<Topology>>), DeployError> {
    // Hosts' `rack=` fields make the tracker rack-aware (issue 11).
    let topology =
        super::hosts::host_topology(&plan.hosts, &|h| plan.ssh.resolve(h))?.map(Arc::new);
    let tcfg = TrackerConfig {
        topology: topology.clone(),
        secret: plan.secret.clone(),
        interval: Duration::from_secs(10),
        min_interval: Duration::from_secs(5),
        ..TrackerConfig::default()
    };
    TrackerServer::bind(
        SocketAddr::new([0, 0, 0, 0].into(), plan.tracker_port),
        tcfg,
    )
    .map(|t| (t, topology))
    .map_err(|e| DeployError::Tracker(e.to_string()))
}

/// One deploy in progress: the hosts and what is known of each so far.
struct Deploy<'a> {
    plan: &'a DeployPlan,
    stop: &'a StopFlag,
    start: Instant,
    hosts: Vec<String>,
    /// A host's result once it has one; a host that fails a phase gets it at once and
    /// takes no part in the phases after.
    results: Vec<Option<HostResult>>,
    payload_bytes: u64,
    /// This machine's address in `--peer-network` (without `--seeder-addr`).
    peer_network_addr: Option<IpAddr>,
    /// Racks the embedded tracker knows from the hosts' `rack=` (0: none).
    racks: usize,
    /// Per host (in host order), what its peer is told of its rack.
    host_racks: Vec<Option<PeerRacks>>,
    install: InstallSummary,
    /// Per host, when its check ended (deploy clock).
    checked_at: Vec<Option<Duration>>,
    /// Counts hosts to the end of the peer phase: each host is finished once (its
    /// release, its session's end, or its failure in an earlier step), and the last one
    /// tells the lingering peers to stop.
    gate: Arc<LingerGate>,
}

impl Deploy<'_> {
    /// The phases in order (see the module docs), each on the hosts still live. The
    /// steps run on a thread of their own while this one hands their events to
    /// `on_event` (and stops the seeder on Ctrl-C).
    fn run_phases(
        self,
        payload: &Payload,
        local: &LocalBinary,
        tracker: &TrackerServer,
        on_event: &mut dyn FnMut(&FleetEvent),
    ) -> Result<FleetReport, DeployError> {
        let stop = self.stop;
        let port = tracker.local_addr().port();
        let seed_stop = OnceLock::<StopFlag>::new();
        let (tx, rx) = crossbeam_channel::unbounded::<FleetEvent>();
        std::thread::scope(|s| {
            let seed_stop = &seed_stop;
            let steps = s.spawn(move || self.steps(payload, local, port, seed_stop, tx));
            forward(&rx, on_event, &mut || {
                if stop.is_stopped() {
                    // Ctrl-C: stop seeding so peers stall out; ssh sessions end with them
                    // (the terminal's SIGINT reaches our ssh children too).
                    if let Some(f) = seed_stop.get() {
                        f.stop();
                    }
                }
            });
            steps.join().expect("the deploy's steps do not panic")
        })
    }

    /// The steps, pipelined per host: the seeder starts as soon as its address is known
    /// (nearly always before any host answers), and every host whose corvid is up to
    /// date starts its peer the moment its own check is done and the seeder listens,
    /// without waiting for the rest of the fleet's checks (16 ssh handshakes at once take
    /// seconds). Hosts that need corvid follow once every check is in and the install ran.
    fn steps(
        mut self,
        payload: &Payload,
        local: &LocalBinary,
        port: u16,
        seed_stop: &OnceLock<StopFlag>,
        tx: Sender<FleetEvent>,
    ) -> Result<FleetReport, DeployError> {
        let mut on_event = |e: &FleetEvent| {
            let _ = tx.send(e.clone());
        };
        let (plan, start) = (self.plan, self.start);
        let hosts = self.hosts.clone();
        let host_racks = self.host_racks.clone();
        let gate = self.gate.clone();
        let n = hosts.len();
        let early = self.early_seeder_addr();
        let seeding_event = SeedingEvent {
            hosts: n,
            racks: self.racks,
            bytes: self.payload_bytes,
            start,
        };
        let ready = Ready::new();
        let up = OnceLock::<Seeding>::new();
        let (ctx, crx) = crossbeam_channel::unbounded::<Check>();
        std::thread::scope(|s| {
            // On every way out of this scope, hosts still waiting for the seeder learn
            // there is none (and drop their sessions) so the scope can end.
            let _close = ready.closer();
            // The seeder, beside the checks; `up` once it listens (the go is the loop's
            // below).
            let starter = early.map(|a| {
                let (tx, up) = (tx.clone(), &up);
                s.spawn(move || {
                    let r = start_seeding(plan, payload, a, port, &seeding_event, None, &tx);
                    if let Ok(run) = &r {
                        let _ = seed_stop.set(run.stop.clone());
                        let _ = up.set(run.seeding());
                    }
                    r
                })
            });
            let workers = {
                let (tx, ready, gate) = (tx.clone(), &ready, &gate);
                let (hosts, host_racks) = (&hosts, &host_racks);
                let index: Vec<usize> = (0..n).collect();
                s.spawn(move || {
                    let merge = n <= plan.parallel;
                    for_each_host(&index, plan.parallel, &|&i: &usize| {
                        let racks = host_racks.get(i).and_then(Option::as_ref);
                        let host = Host {
                            i,
                            name: &hosts[i],
                            racks,
                        };
                        check_then_peer(plan, local, start, host, merge, &ctx, ready, &tx, gate)
                    })
                })
            };
            let mut probes: Vec<Option<Probe>> = vec![None; n];
            let mut going = vec![false; n];
            let mut failed = 0;
            // Every worker sends its host's check exactly once, before anything else. The
            // hosts checked so far go together once the seeder listens and the checks
            // settle: all are in, or none came for `CHECKS_SETTLE` (a far host's slow
            // handshake holds nobody back longer than that). Peers that start together
            // let the seeder spread distinct pieces over all of them; a few started
            // while the rest of a burst of checks comes in get pieces from it that the
            // others then ask it for again, and on a machine whose CPU the handshakes and
            // the swarm share (the simulated fleet), each slows the other.
            let mut received = 0;
            while received < n {
                let c = match crx.recv_timeout(CHECKS_SETTLE) {
                    Ok(c) => c,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if received > 0 {
                            if let Some(sd) = up.get() {
                                ready.set(Some(sd.clone()));
                            }
                        }
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
                received += 1;
                self.checked_at[c.i] = Some(c.at);
                match c.result {
                    Ok((p, g)) => {
                        probes[c.i] = Some(p);
                        going[c.i] = g;
                    }
                    Err(why) => {
                        failed += 1;
                        self.fail(c.i, why, c.at, &mut on_event);
                    }
                }
            }
            on_event(&FleetEvent::Checked {
                at: start.elapsed(),
                failed,
            });
            if self.over() {
                return self.end_early();
            }
            let seeder = match starter {
                Some(h) => {
                    let run = h.join().expect("the seeder's start does not panic")?;
                    ready.set(Some(run.seeding()));
                    // Only the warnings: the address was fixed before the checks.
                    self.seeder_addr(&probes, Some(run.addr.ip()), &mut on_event)?;
                    run
                }
                None => {
                    let addr = self.seeder_addr(&probes, None, &mut on_event)?;
                    let checked = Some(start.elapsed());
                    let run =
                        start_seeding(plan, payload, addr, port, &seeding_event, checked, &tx)?;
                    let _ = seed_stop.set(run.stop.clone());
                    ready.set(Some(run.seeding()));
                    run
                }
            };
            let corvid =
                self.install_phase(local, &probes, &seeder.url, seeder.addr.ip(), &mut on_event);
            let later: Vec<usize> = self.live().into_iter().filter(|&i| !going[i]).collect();
            self.peer_phase(&later, &seeder, &corvid, &mut on_event);
            for (i, r) in workers
                .join()
                .expect("check workers do not panic")
                .into_iter()
                .enumerate()
            {
                if let Some(r) = r {
                    self.results[i] = Some(r);
                }
            }
            seeder.stop.stop();
            if let Some(batch) = self.plan.batch {
                self.rollout(batch, &mut on_event);
            }
            let seeder_uploaded = match seeder.thread.join() {
                Ok(Ok(r)) => r.transfer.bytes_up,
                _ => 0,
            };
            Ok(self.report(seeder_uploaded))
        })
    }

    /// Hosts without a result yet, in host order.
    fn live(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.results[i].is_none())
            .collect()
    }

    /// Interrupted, or every host already failed: nothing more runs.
    fn over(&self) -> bool {
        self.stop.is_stopped() || self.live().is_empty()
    }

    fn end_early(self) -> Result<FleetReport, DeployError> {
        if self.stop.is_stopped() {
            return Err(DeployError::Interrupted);
        }
        Ok(self.report(0))
    }

    fn report(self, seeder_uploaded: u64) -> FleetReport {
        FleetReport {
            hosts: self.results.into_iter().flatten().collect(),
            elapsed: self.start.elapsed(),
            payload_bytes: self.payload_bytes,
            seeder_uploaded,
            install: self.install,
        }
    }

    /// Host `i` failed `at` into the deploy: its result, reported at once.
    fn fail(
        &mut self,
        i: usize,
        why: HostError,
        at: Duration,
        on_event: &mut dyn FnMut(&FleetEvent),
    ) {
        let r = HostResult {
            host: self.hosts[i].clone(),
            outcome: HostOutcome::Failed(why),
            duration: at,
            bytes_from_seeder: 0,
            bytes_from_peers: 0,
            bytes_reused: 0,
            download_time: None,
            fill_time: None,
            checked: self.checked_at[i],
            go: None,
            corvid: None,
            pruned: Vec::new(),
            hook: None,
        };
        on_event(&FleetEvent::HostDone(r.clone()));
        self.results[i] = Some(r);
        // A failed host is finished as far as the lingering peers are concerned.
        session::host_finished(&self.gate, on_event);
    }

    /// The seeder's address as far as it is known before the check phase: given, or this
    /// machine's route to the first host, which [`Self::seeder_addr`] picks too unless
    /// that host fails its check (then the torrent is built again for the other).
    fn early_seeder_addr(&self) -> Option<IpAddr> {
        self.plan
            .seeder_addr
            .or(self.peer_network_addr)
            .or_else(|| {
                let first = self.hosts.first()?;
                self.plan.ssh.resolve(first).and_then(routed_from)
            })
    }

    /// `--seeder-addr`, else [`choose_seeder_addr`] over the live hosts; with `fixed`
    /// (the address the seeder already runs at, chosen by the route to the first host
    /// before the checks) that one, cross-checked against the live hosts the same way.
    fn seeder_addr(
        &self,
        probes: &[Option<Probe>],
        fixed: Option<IpAddr>,
        on_event: &mut dyn FnMut(&FleetEvent),
    ) -> Result<IpAddr, DeployError> {
        if let Some(a) = self.plan.seeder_addr.or(self.peer_network_addr) {
            return Ok(a);
        }
        let (plan, hosts) = (self.plan, &self.hosts);
        // `ssh -G` and a name lookup per host: local, but a fleet of names is many
        // lookups, so as parallel as the sessions.
        let seen: Vec<AddrSeen> =
            for_each_host(&self.live(), plan.parallel, &|&i: &usize| AddrSeen {
                host: hosts[i].clone(),
                routed: plan.ssh.resolve(&hosts[i]).and_then(routed_from),
                reported: probes[i].as_ref().and_then(|p| p.client),
            });
        let (a, warnings) = match fixed {
            Some(a) => (a, cross_check(a, &seen)),
            None => choose_seeder_addr(&seen)?,
        };
        for w in warnings {
            on_event(&FleetEvent::Warning(w));
        }
        Ok(a)
    }

    /// Install phase, on worker threads; events forwarded here as they come. Returns how
    /// corvid got onto each host (`None` for hosts that failed).
    fn install_phase(
        &mut self,
        local: &LocalBinary,
        probes: &[Option<Probe>],
        url: &str,
        addr: IpAddr,
        on_event: &mut dyn FnMut(&FleetEvent),
    ) -> Vec<Option<HostInstall>> {
        let live = self.live();
        let live_probes: Vec<Probe> = live.iter().filter_map(|&i| probes[i].clone()).collect();
        let routes = install::route(&live_probes, self.plan.swarm_install_min);
        let to_install: Vec<(String, Route, bool)> = live
            .iter()
            .zip(routes)
            .map(|(&i, r)| {
                let gzip = probes[i].as_ref().is_some_and(|p| p.gzip);
                (self.hosts[i].clone(), r, gzip)
            })
            .collect();
        let install_start = self.start.elapsed();
        let (tx, rx) = crossbeam_channel::unbounded::<InstallEvent>();
        let (plan, stop) = (self.plan, self.stop);
        let (installs, summary) = std::thread::scope(|s| {
            let to_install = &to_install;
            let worker =
                s.spawn(move || install::run_phase(plan, local, to_install, url, addr, stop, &tx));
            forward(&rx, on_event, &mut || {});
            worker.join().expect("install workers do not panic")
        });
        self.install = summary;
        let mut corvid: Vec<Option<HostInstall>> = self.hosts.iter().map(|_| None).collect();
        for (k, r) in installs.into_iter().enumerate() {
            let i = live[k];
            match r {
                Ok(inst) => corvid[i] = Some(inst),
                Err(why) => {
                    let at = install_start + self.install.elapsed;
                    self.fail(i, why, at, on_event);
                }
            }
        }
        corvid
    }

    /// Peer phase for `hosts` (those whose peer did not start right after their check:
    /// corvid was installed first, or the fleet is larger than `--parallel`), each in a
    /// session of its own, each host's result recorded.
    fn peer_phase(
        &mut self,
        hosts: &[usize],
        seeder: &SeederRun,
        corvid: &[Option<HostInstall>],
        on_event: &mut dyn FnMut(&FleetEvent),
    ) {
        let (plan, start, names) = (self.plan, self.start, &self.hosts);
        let (host_racks, checked_at, gate) = (&self.host_racks, &self.checked_at, &*self.gate);
        let (tx, rx) = crossbeam_channel::unbounded::<FleetEvent>();
        let peer_results = std::thread::scope(|s| {
            let worker = s.spawn(move || {
                for_each_host(hosts, plan.parallel, &|&i: &usize| {
                    let h = names[i].as_str();
                    let racks = host_racks.get(i).and_then(Option::as_ref);
                    let end = peer_host(
                        plan,
                        start,
                        h,
                        racks,
                        &seeder.torrent,
                        seeder.addr,
                        None,
                        &tx,
                        gate,
                    );
                    let r = host_result(h, end, start, corvid[i].clone(), checked_at[i]);
                    let _ = tx.send(FleetEvent::HostDone(r.clone()));
                    r
                })
            });
            forward(&rx, on_event, &mut || {});
            worker.join().expect("peer workers do not panic")
        });
        for (k, r) in peer_results.into_iter().enumerate() {
            self.results[hosts[k]] = Some(r);
        }
    }
}

/// How long the check phase must bring no new host before the hosts checked so far are
/// told to go without waiting for the rest: longer than the gaps between the checks of
/// one burst of handshakes (tens to a few hundred ms apart on a loaded 2-core machine
/// running 16), shorter than what a far or slow host costs.
const CHECKS_SETTLE: Duration = Duration::from_millis(500);

/// One host as a check worker sees it.
struct Host<'a> {
    i: usize,
    name: &'a str,
    racks: Option<&'a PeerRacks>,
}

/// A host's check as its worker reports it: the probe and whether the host's peer goes
/// on in the check's own session (corvid up to date), or why the check failed; `at` on
/// the deploy's clock.
struct Check {
    i: usize,
    at: Duration,
    result: Result<(Probe, bool), HostError>,
}

/// What a host's peer is told of the release's seeder.
#[derive(Clone)]
struct Seeding {
    addr: SocketAddr,
    torrent: Arc<Vec<u8>>,
}

/// The seeder's start, told to every check worker at once: set once (`None`: no seeder
/// will come, the deploy is ending), and waiting for it returns when it is.
struct Ready {
    value: OnceLock<Option<Seeding>>,
    open: parking_lot::Mutex<Option<Sender<()>>>,
    closed: crossbeam_channel::Receiver<()>,
}

impl Ready {
    fn new() -> Ready {
        // Nothing is ever sent: dropping the only sender wakes every `recv`.
        let (open, closed) = crossbeam_channel::bounded(0);
        Ready {
            value: OnceLock::new(),
            open: parking_lot::Mutex::new(Some(open)),
            closed,
        }
    }

    /// The first call decides; every waiter wakes.
    fn set(&self, v: Option<Seeding>) {
        let _ = self.value.set(v);
        drop(self.open.lock().take());
    }

    /// Blocks until [`Ready::set`]; `None` when there is no seeder.
    fn wait(&self) -> Option<Seeding> {
        let _ = self.closed.recv();
        self.value.get().cloned().flatten()
    }

    /// Sets `None` when dropped, unless set before: no waiter is left behind on an
    /// early return.
    fn closer(&self) -> impl Drop + '_ {
        struct Closer<'a>(&'a Ready);
        impl Drop for Closer<'_> {
            fn drop(&mut self) {
                self.0.set(None);
            }
        }
        Closer(self)
    }
}

/// The release's seeder once it listens.
struct SeederRun {
    addr: SocketAddr,
    url: String,
    torrent: Arc<Vec<u8>>,
    stop: StopFlag,
    thread: super::seeder::SeederThread,
}

impl SeederRun {
    fn seeding(&self) -> Seeding {
        Seeding {
            addr: self.addr,
            torrent: self.torrent.clone(),
        }
    }
}

/// What the seeding event says besides the seeder's own numbers.
#[derive(Clone, Copy)]
struct SeedingEvent {
    hosts: usize,
    racks: usize,
    bytes: u64,
    start: Instant,
}

/// Builds the torrent announcing at `addr:port` (this process's tracker) and starts the
/// release's seeder; announces it with `checked` (when the checks ended, if they had).
fn start_seeding(
    plan: &DeployPlan,
    payload: &Payload,
    addr: IpAddr,
    port: u16,
    ev: &SeedingEvent,
    checked: Option<Duration>,
    events: &Sender<FleetEvent>,
) -> Result<SeederRun, DeployError> {
    let url = format!("http://{}/announce", SocketAddr::new(addr, port));
    let t = Instant::now();
    let (m, torrent, hashed_bytes) = build_torrent(plan, payload, &url)?;
    let torrent_time = t.elapsed();
    let mut seed_cfg = seeder_config(&m, payload, plan.threads, plan.secret.clone(), url.clone());
    seed_cfg.swarm.uplink = plan.uplink;
    if plan.peer_network.is_some() {
        // On the data network only, dialling from it too.
        seed_cfg.listen = SocketAddr::new(addr, 0);
    }
    let (stop, thread, seeder_port) = spawn_seeder(seed_cfg)?;
    let seeder_addr = SocketAddr::new(addr, seeder_port);
    let _ = events.send(FleetEvent::Seeding {
        name: m.info.name.clone(),
        bytes: ev.bytes,
        pieces: m.info.lengths.piece_count(),
        seeder: seeder_addr,
        tracker: url.clone(),
        hosts: ev.hosts,
        racks: ev.racks,
        at: ev.start.elapsed(),
        checked,
        torrent_time,
        hashed_bytes,
    });
    Ok(SeederRun {
        addr: seeder_addr,
        url,
        torrent: Arc::new(torrent),
        stop,
        thread,
    })
}

/// One host's check worker: the probe, reported at once; then, for a host whose corvid
/// is up to date and whose check session waits for its go, the host's whole peer phase in
/// that session as soon as the seeder listens. `None` where the host's peer is left to
/// the later peer phase (or there is no seeder).
#[allow(clippy::too_many_arguments)]
fn check_then_peer(
    plan: &DeployPlan,
    local: &LocalBinary,
    start: Instant,
    host: Host<'_>,
    merge: bool,
    checks: &Sender<Check>,
    ready: &Ready,
    events: &Sender<FleetEvent>,
    gate: &LingerGate,
) -> Option<HostResult> {
    let c = if merge {
        probe_waiting(plan, local, host.name, host.racks)
    } else {
        probe_host(plan, local, host.name).map(|p| (p, None))
    };
    let at = start.elapsed();
    let (probe, session) = match c {
        Ok(c) => c,
        Err(why) => {
            let _ = checks.send(Check {
                i: host.i,
                at,
                result: Err(why),
            });
            return None;
        }
    };
    let going = probe.found == install::Found::UpToDate && session.is_some();
    let _ = checks.send(Check {
        i: host.i,
        at,
        result: Ok((probe, going)),
    });
    // corvid goes on first (its peer gets a session of its own): dropping the session
    // hangs it up.
    let session = session.filter(|_| going)?;
    let seeding = ready.wait()?;
    let end = peer_host(
        plan,
        start,
        host.name,
        host.racks,
        &seeding.torrent,
        seeding.addr,
        Some(session),
        events,
        gate,
    );
    let r = host_result(
        host.name,
        end,
        start,
        Some(HostInstall::present()),
        Some(at),
    );
    let _ = events.send(FleetEvent::HostDone(r.clone()));
    Some(r)
}

/// A host's result from how its peer session ended.
fn host_result(
    host: &str,
    end: session::PeerEnd,
    start: Instant,
    corvid: Option<HostInstall>,
    checked: Option<Duration>,
) -> HostResult {
    HostResult {
        host: host.to_string(),
        outcome: end.outcome,
        // From the start of the deploy to the release in place (the linger that follows
        // is service to others, not this host's wait).
        duration: end
            .released_at
            .unwrap_or_else(Instant::now)
            .duration_since(start),
        bytes_from_seeder: end.from_seeder,
        bytes_from_peers: end.from_peers,
        bytes_reused: end.reused,
        download_time: end.download_ms.map(Duration::from_millis),
        fill_time: end.fill_ms.map(Duration::from_millis),
        checked,
        go: end.go_at.map(|t| t.duration_since(start)),
        corvid,
        pruned: end.pruned,
        hook: end.hook,
    }
}

/// The release's torrent, announcing at `url`: the metainfo, its bytes, and how many of
/// the release's bytes were hashed for it (with `--hash-cache`, only pieces the cache
/// cannot vouch for; the cache then holds this build's pieces).
fn build_torrent(
    plan: &DeployPlan,
    payload: &Payload,
    url: &str,
) -> Result<(metainfo::Metainfo, Vec<u8>, u64), DeployError> {
    let pool = HashPool::new(plan.threads.max(1));
    let opts = BuildOptions {
        trackers: vec![url.to_string()],
        comment: Some(format!("corvid deploy {}", plan.tag)),
        // Off by default: hosts fill unchanged files from their base release by path
        // (`crate::reuse`) at whatever offset, so only the pieces of a changed file and
        // at most its two boundary pieces are fetched anyway; alignment adds reuse of
        // moved or resized files but puts up to a piece of zeros per file on the wire
        // (18% on 200 files of 128 MiB in 256 KiB pieces, measured by corvid-bench delta).
        align: plan.align,
        ..BuildOptions::default()
    };
    let mut hashed = 0;
    let Some(dir) = &plan.hash_cache else {
        let (m, bytes) = metainfo::build_payload(payload, &opts, &pool, &mut |b| hashed = b)?;
        return Ok((m, bytes, hashed));
    };
    let cache = PieceCache::for_source(dir, &plan.src);
    let mut keys = None;
    let (m, bytes) = metainfo::build_payload_known(
        payload,
        &opts,
        &pool,
        &mut |storage| {
            let (known, k) = cache.lookup(storage);
            keys = Some(k);
            known
        },
        &mut |b| hashed = b,
    )?;
    if let Some(k) = keys {
        // A cache that cannot be written costs the next deploy its hashing, no more.
        let _ = cache.store(&k, &m.info.pieces);
    }
    Ok((m, bytes, hashed))
}

/// Hands events to `on_event` until every sender is gone; `idle` runs at least every
/// 100 ms meanwhile (to notice Ctrl-C).
fn forward<E: Into<FleetEvent>>(
    rx: &crossbeam_channel::Receiver<E>,
    on_event: &mut dyn FnMut(&FleetEvent),
    idle: &mut dyn FnMut(),
) {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => on_event(&ev.into()),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        idle();
    }
}

#[cfg(test)]
mod tests {
    use super::session::peer_command;
    use super::*;
    use crate::deploy::ssh::Ssh;
    use crate::peer::auth::Secret;
    use std::path::{Path, PathBuf};

    fn plan(src: &Path) -> DeployPlan {
        DeployPlan {
            hosts: "h1,h2".into(),
            src: src.to_path_buf(),
            dest: "/srv/app".into(),
            tag: "v1".into(),
            seeder_addr: None,
            activate: false,
            force: false,
            linger: Duration::ZERO,
            stall_timeout: Duration::from_secs(10),
            parallel: 4,
            ssh: Ssh::default(),
            ssh_multiplex: false,
            remote_corvid: "~/.local/bin/corvid".into(),
            local_corvid: "/nonexistent".into(),
            swarm_install_min: 8,
            tracker_port: 0,
            threads: 1,
            secret: None,
            keep: None,
            after_activate: None,
            hook_timeout: Duration::from_secs(60),
            batch: None,
            check: None,
            rollback_on_failure: false,
            align: false,
            base: None,
            peer_network: None,
            hash_cache: None,
            uplink: None,
        }
    }

    #[test]
    fn private_deploy_sends_the_secret_by_stdin_never_on_the_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = plan(tmp.path());
        p.dest = tmp.path().join("dest dir");
        // `exec echo peer ...` shows what the host would run, without running a node.
        p.remote_corvid = "/bin/echo".into();
        p.secret = Some(Secret::new(b"s3cret \x00\xff bytes").unwrap());
        let torrent = b"d8:announce3:urle".to_vec();
        let seeder: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let (cmd, stdin) = peer_command(&p, &torrent, seeder, None);
        assert!(!cmd.contains("s3cret"), "secret on the command line: {cmd}");
        // No shell redirection writes anything: the remote corvid does, safely.
        assert!(!cmd.contains('>'), "{cmd}");
        assert_eq!(stdin, [&torrent[..], b"15\ns3cret \x00\xff bytes"].concat());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .unwrap();
        assert!(out.status.success());
        let echoed = String::from_utf8_lossy(&out.stdout);
        let want = format!(
            "peer --release-dest {} --tag v1 --stdin-torrent {} --stdin-secret ",
            p.dest.display(),
            torrent.len()
        );
        assert!(echoed.starts_with(&want), "{echoed}");

        // Without a secret: the torrent alone, no secret flag.
        p.secret = None;
        let (cmd, stdin) = peer_command(&p, &torrent, seeder, None);
        assert_eq!(stdin, torrent);
        assert!(!cmd.contains("secret"), "{cmd}");
    }

    #[test]
    fn bad_input_is_refused_before_any_host() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let ok = plan(d.path());
        assert_eq!(validate(&ok).unwrap().hosts, vec!["h1", "h2"]);
        let cases: Vec<(DeployPlan, &str)> = vec![
            (
                DeployPlan {
                    dest: "rel/x".into(),
                    ..ok.clone()
                },
                "absolute",
            ),
            (
                DeployPlan {
                    tag: "a/b".into(),
                    ..ok.clone()
                },
                "plain name",
            ),
            (
                DeployPlan {
                    tag: "..".into(),
                    ..ok.clone()
                },
                "plain name",
            ),
            (
                DeployPlan {
                    src: d.path().join("missing"),
                    ..ok.clone()
                },
                "not a directory",
            ),
            (
                DeployPlan {
                    hosts: "-oProxyCommand=x".into(),
                    ..ok.clone()
                },
                "is not a host",
            ),
            (
                DeployPlan {
                    remote_corvid: "bin/corvid".into(),
                    ..ok.clone()
                },
                "absolute path",
            ),
            (
                DeployPlan {
                    parallel: 0,
                    ..ok.clone()
                },
                "--parallel",
            ),
            (
                DeployPlan {
                    keep: Some(0),
                    activate: true,
                    ..ok.clone()
                },
                "--keep must be at least 1",
            ),
            (
                DeployPlan {
                    keep: Some(2),
                    ..ok.clone()
                },
                "--keep needs --activate",
            ),
            (
                DeployPlan {
                    after_activate: Some("  ".into()),
                    activate: true,
                    ..ok.clone()
                },
                "--after-activate is empty",
            ),
            (
                DeployPlan {
                    after_activate: Some("true".into()),
                    ..ok.clone()
                },
                "--after-activate needs --activate",
            ),
        ];
        let not_utf8 = DeployPlan {
            dest: PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                    b"/srv/app\xff".to_vec(),
                ),
            ),
            ..ok.clone()
        };
        assert!(matches!(
            validate(&not_utf8),
            Err(DeployError::DestNotUtf8(_))
        ));
        for (p, want) in cases {
            let e = validate(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("out")).unwrap();
        assert!(matches!(validate(&ok), Err(DeployError::Source(_))));
    }
}
