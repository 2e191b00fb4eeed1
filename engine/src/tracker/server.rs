//! The tracker server: [`Swarms`] keeps who is in which swarm (sans-IO, time passed in),
//! and [`TrackerServer`] serves it over HTTP from one thread.
//!
//! Why one thread with `poll(2)` rather than a pool: the tracker answers a few requests a
//! second, each in microseconds, so one thread is plenty; what it must survive is hostile
//! or broken clients. Every connection gets a fixed deadline from its accept
//! ([`TrackerConfig::request_timeout`]) and a bounded buffer ([`proto::MAX_HEAD`]); when
//! [`TrackerConfig::max_connections`] are open, the oldest is dropped for the newcomer, so
//! a slowloris client must outpace the deadline with ever more sockets to starve anyone.
//! Responses close the connection (HTTP/1.0 style), as tracker clients expect.
//!
//! Against a flood of announces (a public tracker takes them from anyone): swarms live only
//! while they have live peers, each source address has a share of peers and swarms, and a
//! peer's entry answers only to the address that made it; see [`Swarms`].
//!
//! With a [`Topology`] (`--topology`), a downloading peer in a known rack is handed the
//! origin seeders, mostly its own rack's peers and a stable few of other racks', so a
//! piece crosses a rack's oversubscribed uplink about once ([`Swarm::rack_handout`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proto::{
    self, encode_announce_response, encode_failure, encode_scrape_response, AnnounceRequest,
    AnnounceResponse, Event, Head, PeerInfo, ProtoError, ScrapeEntry, TrackerRequest,
};
use super::topology::{RackId, Topology};
use crate::peer::auth::Secret;

mod listen;
mod swarm;
use listen::http_response;
pub use listen::TrackerServer;
use swarm::{ip_key, IpCounts, PeerEntry, Swarm};
pub use swarm::{pair_score, rack_counts, RackCounts};

/// Default of [`TrackerConfig::max_peers_per_ip`].
pub const DEFAULT_MAX_PEERS_PER_IP: usize = 64;
/// Default of [`TrackerConfig::max_swarms_per_ip`].
pub const DEFAULT_MAX_SWARMS_PER_IP: usize = 64;

/// How the tracker behaves; [`Default`] suits a deploy (30 s interval).
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Announce interval told to clients; peers silent for twice this are dropped.
    pub interval: Duration,
    /// `min interval` told to clients.
    pub min_interval: Duration,
    /// If set, only these info-hashes are tracked; others get a failure reason.
    pub allowed: Option<HashSet<[u8; 20]>>,
    /// Peers returned when the client does not say (`numwant`).
    pub default_numwant: u32,
    /// Most peers returned whatever the client asks.
    pub max_numwant: u32,
    /// Most swarms tracked at once, bounding memory against random info-hashes.
    pub max_torrents: usize,
    /// Most peers tracked per swarm.
    pub max_peers_per_torrent: usize,
    /// Most peers one source address may have in one swarm. Several peers per host is
    /// normal (tests and the demo run a whole swarm on 127.0.0.1); thousands is a flood.
    pub max_peers_per_ip: usize,
    /// Most swarms one source address may have peers in, so one host cannot take all
    /// [`TrackerConfig::max_torrents`] slots with random info-hashes.
    pub max_swarms_per_ip: usize,
    /// Record the address a client claims with `ip=` instead of the connection's source.
    /// Only right behind a reverse proxy that sets it: otherwise any client could point a
    /// swarm at a third party's host (a reflection attack), or take another's caps.
    pub trust_ip_param: bool,
    /// Time a connection has, from accept, to send its request and read the answer.
    pub request_timeout: Duration,
    /// Most connections open at once; beyond it the oldest is dropped.
    pub max_connections: usize,
    /// A private tracker: announces and scrapes must carry corvid's `auth` proof of this
    /// secret, or get a failure reason and record nothing.
    pub secret: Option<Secret>,
    /// Racks of the fleet: a peer in a known rack is handed mostly peers of its own rack
    /// (see [`Swarms::announce`]); without it, or for a peer in no rack, every peer is
    /// as good as another.
    pub topology: Option<Arc<Topology>>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            interval: Duration::from_secs(30),
            min_interval: Duration::from_secs(10),
            allowed: None,
            secret: None,
            topology: None,
            default_numwant: 50,
            max_numwant: 200,
            max_torrents: 10_000,
            max_peers_per_torrent: 100_000,
            max_peers_per_ip: DEFAULT_MAX_PEERS_PER_IP,
            max_swarms_per_ip: DEFAULT_MAX_SWARMS_PER_IP,
            trust_ip_param: false,
            request_timeout: Duration::from_secs(5),
            max_connections: 256,
        }
    }
}

/// Counters of what the tracker has done, as a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrackerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Announces answered with peers.
    pub announces: u64,
    /// Scrapes answered.
    pub scrapes: u64,
    /// Requests answered with a bencoded `failure reason`.
    pub failures: u64,
    /// Requests rejected at the HTTP level (400/404/431).
    pub bad_requests: u64,
    /// Connections closed because their deadline passed or to make room.
    pub timeouts: u64,
    /// Swarms tracked at the last request.
    pub torrents: u64,
    /// Peers tracked, over all swarms, at the last request.
    pub peers: u64,
    /// Announces answered with peers, by event (they add up to `announces`).
    pub announces_by_event: AnnounceEvents,
}

/// Announces answered with peers, by the event they carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnnounceEvents {
    /// Regular announces (no `event`).
    pub none: u64,
    pub started: u64,
    pub completed: u64,
    pub stopped: u64,
}

impl AnnounceEvents {
    fn bump(&mut self, e: Event) {
        let c = match e {
            Event::None => &mut self.none,
            Event::Started => &mut self.started,
            Event::Completed => &mut self.completed,
            Event::Stopped => &mut self.stopped,
        };
        *c += 1;
    }
}

#[derive(Default)]
struct StatCells {
    connections: AtomicU64,
    announces: AtomicU64,
    scrapes: AtomicU64,
    failures: AtomicU64,
    bad_requests: AtomicU64,
    timeouts: AtomicU64,
    torrents: AtomicU64,
    peers: AtomicU64,
    /// [`AnnounceEvents`] in field order.
    by_event: [AtomicU64; 4],
}

impl StatCells {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, o: Outcome) {
        Self::bump(match o {
            Outcome::Announce => &self.announces,
            Outcome::Scrape => &self.scrapes,
            Outcome::Failure => &self.failures,
            Outcome::BadRequest => &self.bad_requests,
        });
    }

    fn snapshot(&self) -> TrackerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TrackerStats {
            connections: g(&self.connections),
            announces: g(&self.announces),
            scrapes: g(&self.scrapes),
            failures: g(&self.failures),
            bad_requests: g(&self.bad_requests),
            timeouts: g(&self.timeouts),
            torrents: g(&self.torrents),
            peers: g(&self.peers),
            announces_by_event: AnnounceEvents {
                none: g(&self.by_event[0]),
                started: g(&self.by_event[1]),
                completed: g(&self.by_event[2]),
                stopped: g(&self.by_event[3]),
            },
        }
    }

    fn publish_events(&self, e: AnnounceEvents) {
        for (cell, v) in self
            .by_event
            .iter()
            .zip([e.none, e.started, e.completed, e.stopped])
        {
            cell.store(v, Ordering::Relaxed);
        }
    }
}

/// A handle on a running tracker's counters, for readers on other threads (the metrics
/// endpoint) that do not own the [`TrackerServer`].
#[derive(Clone)]
pub struct TrackerStatsHandle(Arc<StatCells>);

impl TrackerStatsHandle {
    /// What the tracker has done so far.
    pub fn snapshot(&self) -> TrackerStats {
        self.0.snapshot()
    }
}

/// Every swarm the tracker knows, keyed by info-hash. Sans-IO: the caller passes the
/// connection's source address and the time.
///
/// What bounds it against a flood: a swarm lives only while it has live peers (none
/// announced within two intervals: gone at the next [`Swarms::expire`]), each source
/// network may hold [`TrackerConfig::max_peers_per_ip`] peers in a swarm and be in
/// [`TrackerConfig::max_swarms_per_ip`] swarms, and the totals are capped. So random
/// info-hashes from one host take at most its share of slots, and nothing they take
/// outlives the peers that took it.
#[derive(Debug)]
pub struct Swarms {
    cfg: TrackerConfig,
    swarms: HashMap<[u8; 20], Swarm>,
    /// Swarms each source network has peers in.
    swarms_per_ip: IpCounts,
    /// When [`Swarms::expire`] last ran, so a full tracker sweeps at most once per half
    /// interval however fast newcomers knock.
    last_expire: Option<Instant>,
    /// Announces answered with peers, by event.
    announced: AnnounceEvents,
}

impl Swarms {
    pub fn new(cfg: TrackerConfig) -> Self {
        Swarms {
            cfg,
            swarms: HashMap::new(),
            swarms_per_ip: IpCounts::default(),
            last_expire: None,
            announced: AnnounceEvents::default(),
        }
    }

    /// Records an announce from `source` and answers it, or says why not (the reason goes
    /// to the client as `failure reason`).
    ///
    /// The recorded address is the connection's source, not the `ip` parameter: honouring
    /// a claimed address would let any client point a swarm at a third party's host (a
    /// reflection attack), take another host's per-IP share, or claim another's entries.
    /// Only with [`TrackerConfig::trust_ip_param`] (a reverse proxy in front that sets
    /// it) is the claim recorded, and then it stands for the client everywhere.
    pub fn announce(
        &mut self,
        req: &AnnounceRequest,
        source: IpAddr,
        now: Instant,
    ) -> Result<AnnounceResponse, String> {
        self.admit(req)?;
        let ip = self.recorded_ip(req.ip, source.to_canonical());
        let addr = SocketAddr::new(ip, req.port);
        let rack = self.cfg.topology.as_ref().and_then(|t| t.rack_of(addr));

        if req.event == Event::Stopped {
            return self.stopped(req, ip);
        }

        if !self.swarms.contains_key(&req.info_hash) && self.swarms.len() >= self.cfg.max_torrents {
            // Slots may be held by swarms whose peers all went quiet since the last pass.
            self.expire_if_due(now);
            if self.swarms.len() >= self.cfg.max_torrents {
                return Err(TRACKER_FULL.into());
            }
        }
        let cfg = &self.cfg;
        let swarms_per_ip = &mut self.swarms_per_ip;
        let swarm = self.swarms.entry(req.info_hash).or_default();
        let recorded = Self::record_peer(cfg, swarms_per_ip, swarm, req, addr, rack, now);
        if let Err(reason) = recorded {
            // A refused newcomer must not leave an empty swarm behind to hold a slot.
            if swarm.peers.is_empty() {
                self.swarms.remove(&req.info_hash);
            }
            return Err(reason.into());
        }

        let want = req
            .numwant
            .unwrap_or(cfg.default_numwant)
            .min(cfg.max_numwant) as usize;
        let peers = match rack {
            // A seeder feeds every rack, so it gets the plain rotation too.
            Some(rack) if req.left > 0 => swarm.rack_handout(&req.peer_id, rack, want),
            _ => swarm.handout(&req.peer_id, req.left == 0, want),
        };
        let (complete, incomplete) = swarm.counts();
        Ok(self.response(complete, incomplete, peers))
    }

    /// The checks that come before anything is recorded: the allow-list, the private
    /// tracker's proof of the secret, and a port someone could connect to.
    fn admit(&self, req: &AnnounceRequest) -> Result<(), String> {
        if let Some(allowed) = &self.cfg.allowed {
            if !allowed.contains(&req.info_hash) {
                return Err("info_hash is not allowed on this tracker".into());
            }
        }
        if let Some(secret) = &self.cfg.secret {
            let ok = req
                .auth
                .is_some_and(|a| secret.verify_announce(&req.info_hash, &req.peer_id, &a));
            if !ok {
                return Err(PRIVATE_REFUSAL.into());
            }
        }
        if req.port == 0 {
            return Err("port 0 is not a listening port".into());
        }
        Ok(())
    }

    /// A `stopped` announce from `ip`: forgets the peer if `ip` owns its entry (and the
    /// swarm, if that was its last peer) and answers with the counts and no peers.
    fn stopped(&mut self, req: &AnnounceRequest, ip: IpAddr) -> Result<AnnounceResponse, String> {
        if let Some(swarm) = self.swarms.get_mut(&req.info_hash) {
            match swarm.peers.get(&req.peer_id) {
                Some(p) if p.owner != ip => return Err(NOT_YOURS.into()),
                Some(_) => swarm.remove(&req.peer_id, &mut self.swarms_per_ip),
                None => {}
            }
            if swarm.peers.is_empty() {
                self.swarms.remove(&req.info_hash);
            }
        }
        let (complete, incomplete) = self
            .swarms
            .get(&req.info_hash)
            .map_or((0, 0), Swarm::counts);
        Ok(self.response(complete, incomplete, Vec::new()))
    }

    /// Updates or adds the announcing peer in `swarm` (after sweeping its stale peers, if
    /// due), or says which cap or ownership rule refuses it. An associated function over
    /// the fields it needs, because the caller holds `swarm` borrowed out of `self.swarms`.
    fn record_peer(
        cfg: &TrackerConfig,
        swarms_per_ip: &mut IpCounts,
        swarm: &mut Swarm,
        req: &AnnounceRequest,
        addr: SocketAddr,
        rack: Option<RackId>,
        now: Instant,
    ) -> Result<(), &'static str> {
        let ip = addr.ip();
        let key = ip_key(ip);
        // Drop this swarm's stale peers now rather than waiting for `expire`, so nobody is
        // handed a peer that has been gone for two intervals.
        // Sweeping is O(peers), so at most once per half interval per swarm: a peer may
        // then be handed out up to 2.5 intervals after its last announce.
        let sweep_due = swarm
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= cfg.interval / 2);
        if let (Some(cut), true) = (now.checked_sub(cfg.interval * 2), sweep_due) {
            swarm.drop_stale(cut, swarms_per_ip);
            swarm.last_sweep = Some(now);
        }
        match swarm.peers.get_mut(&req.peer_id) {
            Some(p) if p.owner != ip => Err(NOT_YOURS),
            Some(p) => {
                if req.event == Event::Completed && p.left > 0 {
                    swarm.downloaded += 1;
                }
                p.addr = addr;
                p.rack = rack;
                p.origin_seed &= req.left == 0;
                p.left = req.left;
                p.last_seen = now;
                Ok(())
            }
            // A new peer's `completed` is not counted: the tracker never saw it download,
            // and counting it would let strangers make up history.
            None => {
                let from_ip = swarm.per_ip.get(&key);
                if swarm.peers.len() >= cfg.max_peers_per_torrent {
                    Err("swarm is full")
                } else if from_ip >= cfg.max_peers_per_ip {
                    Err(TOO_MANY_PEERS_FROM_IP)
                } else if from_ip == 0 && swarms_per_ip.get(&key) >= cfg.max_swarms_per_ip {
                    Err(TOO_MANY_SWARMS_FROM_IP)
                } else {
                    let entry = PeerEntry {
                        addr,
                        owner: ip,
                        left: req.left,
                        last_seen: now,
                        rack,
                        origin_seed: req.left == 0,
                    };
                    swarm.insert(req.peer_id, entry, swarms_per_ip);
                    Ok(())
                }
            }
        }
    }

    /// The address to record for a client: its connection's source, or its `ip=` claim if
    /// the operator trusts claims and the claim is an address a peer can have.
    fn recorded_ip(&self, claimed: Option<IpAddr>, source: IpAddr) -> IpAddr {
        match claimed.map(|c| c.to_canonical()) {
            Some(c) if self.cfg.trust_ip_param && is_unicast(c) => c,
            _ => source,
        }
    }

    fn response(&self, complete: u64, incomplete: u64, peers: Vec<PeerInfo>) -> AnnounceResponse {
        AnnounceResponse {
            interval: secs_u32(self.cfg.interval),
            min_interval: Some(secs_u32(self.cfg.min_interval)),
            complete: Some(complete),
            incomplete: Some(incomplete),
            peers,
            warning: None,
            tracker_id: None,
        }
    }

    /// A private tracker's check of a scrape: one info-hash, with the `peer_id` and `auth`
    /// of an announce for it. `None`: answer it.
    pub fn scrape_refusal(&self, hashes: &[[u8; 20]], query: &str) -> Option<&'static str> {
        let secret = self.cfg.secret.as_ref()?;
        match (hashes, proto::parse_scrape_auth(query)) {
            ([h], Some((peer_id, auth))) if secret.verify_announce(h, &peer_id, &auth) => None,
            _ => Some(PRIVATE_REFUSAL),
        }
    }

    /// Counts for each asked info-hash; unknown ones are zero, disallowed ones omitted.
    pub fn scrape(&self, hashes: &[[u8; 20]]) -> Vec<([u8; 20], ScrapeEntry)> {
        hashes
            .iter()
            .filter(|h| self.cfg.allowed.as_ref().is_none_or(|a| a.contains(*h)))
            .map(|h| {
                let e = self.swarms.get(h).map_or_else(ScrapeEntry::default, |s| {
                    let (complete, incomplete) = s.counts();
                    ScrapeEntry {
                        complete,
                        incomplete,
                        downloaded: s.downloaded,
                    }
                });
                (*h, e)
            })
            .collect()
    }

    /// Forgets peers not seen for twice the interval, and every swarm left without peers
    /// (whatever its history: a swarm nobody is in holds no slot).
    pub fn expire(&mut self, now: Instant) {
        self.last_expire = Some(now);
        let Some(cut) = now.checked_sub(self.cfg.interval * 2) else {
            return;
        };
        let swarms_per_ip = &mut self.swarms_per_ip;
        self.swarms.retain(|_, s| {
            s.drop_stale(cut, swarms_per_ip);
            !s.peers.is_empty()
        });
    }

    fn expire_if_due(&mut self, now: Instant) {
        let due = self
            .last_expire
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.interval / 2);
        if due {
            self.expire(now);
        }
    }

    /// Checks that the per-IP counts agree with the peers tracked and that no swarm is
    /// empty after an announce; for tests and the fuzzer, which call it after each step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut swarms_per_ip: HashMap<IpAddr, usize> = HashMap::new();
        for (hash, s) in &self.swarms {
            let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
            for p in s.peers.values() {
                *per_ip.entry(ip_key(p.owner)).or_default() += 1;
                if p.addr.ip() != p.owner {
                    return Err(format!("peer at {} owned by {}", p.addr, p.owner));
                }
                let rack = self.cfg.topology.as_ref().and_then(|t| t.rack_of(p.addr));
                if p.rack != rack {
                    return Err(format!(
                        "peer at {} in rack {:?}, not {rack:?}",
                        p.addr, p.rack
                    ));
                }
            }
            if per_ip != s.per_ip.0 {
                return Err(format!(
                    "swarm {hash:02x?}: per-IP counts {:?}, peers say {per_ip:?}",
                    s.per_ip.0
                ));
            }
            for (k, n) in &per_ip {
                if *n > self.cfg.max_peers_per_ip {
                    return Err(format!("{k} has {n} peers in swarm {hash:02x?}"));
                }
                *swarms_per_ip.entry(*k).or_default() += 1;
            }
        }
        if swarms_per_ip != self.swarms_per_ip.0 {
            return Err(format!(
                "swarms per IP {:?}, swarms say {swarms_per_ip:?}",
                self.swarms_per_ip.0
            ));
        }
        if let Some((k, n)) = swarms_per_ip
            .iter()
            .find(|(_, n)| **n > self.cfg.max_swarms_per_ip)
        {
            return Err(format!("{k} is in {n} swarms"));
        }
        if self.swarms.len() > self.cfg.max_torrents {
            return Err(format!("{} swarms tracked", self.swarms.len()));
        }
        Ok(())
    }

    /// Swarms tracked.
    pub fn torrents(&self) -> usize {
        self.swarms.len()
    }

    /// Announces answered with peers so far, by event.
    pub fn announces_by_event(&self) -> AnnounceEvents {
        self.announced
    }

    /// Peers tracked, over all swarms.
    pub fn peers(&self) -> usize {
        self.swarms.values().map(|s| s.peers.len()).sum()
    }

    /// Answers the request bytes received so far on one connection from `source`: `None`
    /// while the head is incomplete and within its limits (read more), else the whole HTTP
    /// response to send and what the request came to. This is all the event loop does
    /// with a request, so tests and the fuzzer drive exactly the server's path.
    pub fn handle_request(
        &mut self,
        buf: &[u8],
        source: IpAddr,
        now: Instant,
    ) -> Option<(Vec<u8>, Outcome)> {
        let head = match proto::parse_head(buf) {
            Ok(Head::Partial) => return None,
            Ok(Head::Complete { target }) => Ok(target),
            Err(e) => Err(e),
        };
        Some(self.respond(head, source, now))
    }

    /// Answers one complete request head (or the reason it is not acceptable).
    fn respond(
        &mut self,
        head: Result<String, ProtoError>,
        source: IpAddr,
        now: Instant,
    ) -> (Vec<u8>, Outcome) {
        let target = match head {
            Ok(t) => t,
            Err(e) => {
                let status = match e {
                    ProtoError::RequestLineTooLong => "414 URI Too Long",
                    ProtoError::HeadTooLong => "431 Request Header Fields Too Large",
                    ProtoError::BadMethod(_) => "405 Method Not Allowed",
                    _ => "400 Bad Request",
                };
                let out = http_response(status, &encode_failure(&e.to_string()));
                return (out, Outcome::BadRequest);
            }
        };
        let failure = |reason: &str| {
            let out = http_response("200 OK", &encode_failure(reason));
            (out, Outcome::Failure)
        };
        match proto::parse_target(&target) {
            Ok(TrackerRequest::Announce(req)) => match self.announce(&req, source, now) {
                Ok(resp) => {
                    self.announced.bump(req.event);
                    let body = encode_announce_response(&resp, req.compact);
                    (http_response("200 OK", &body), Outcome::Announce)
                }
                Err(reason) => failure(&reason),
            },
            Ok(TrackerRequest::Scrape(hashes)) => {
                let query = target.split_once('?').map_or("", |(_, q)| q);
                if let Some(reason) = self.scrape_refusal(&hashes, query) {
                    return failure(reason);
                }
                let body = encode_scrape_response(&self.scrape(&hashes));
                (http_response("200 OK", &body), Outcome::Scrape)
            }
            Err(e @ ProtoError::UnknownPath(_)) => {
                let out = http_response("404 Not Found", &encode_failure(&e.to_string()));
                (out, Outcome::BadRequest)
            }
            // Bad parameters: trackers answer 200 with a failure reason, which clients
            // show to the user, rather than an HTTP error they may only log as "400".
            Err(e) => failure(&e.to_string()),
        }
    }
}

/// What a request came to; the server counts each kind in [`TrackerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with peers.
    Announce,
    /// Answered with counts.
    Scrape,
    /// Answered 200 with a bencoded `failure reason` (refused, or bad parameters).
    Failure,
    /// Rejected at the HTTP level (400, 404, 405, 414, 431).
    BadRequest,
}

/// What a private tracker tells a client without a valid proof of the secret.
const PRIVATE_REFUSAL: &str = "private tracker: missing or wrong auth (corvid --secret-file)";
/// An announce for a peer id whose entry was made from another address.
const NOT_YOURS: &str = "peer_id is registered from another address";
const TRACKER_FULL: &str = "tracker is full: too many torrents";
const TOO_MANY_PEERS_FROM_IP: &str = "too many peers from your address in this swarm";
const TOO_MANY_SWARMS_FROM_IP: &str = "too many swarms from your address";

/// An address other peers could connect to: not unspecified, multicast or broadcast.
fn is_unicast(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::proto::parse_announce_response;

    fn req(id: u8, port: u16, left: u64, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            event,
            ..AnnounceRequest::new([7; 20], [id; 20], port, left)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_swarms_record_only_authenticated_peers() {
        let t0 = Instant::now();
        let secret = Secret::new(b"k").unwrap();
        let mut s = Swarms::new(TrackerConfig {
            secret: Some(secret.clone()),
            ..TrackerConfig::default()
        });
        let r = s.announce(&req(1, 7001, 5, Event::Started), ip("10.0.0.1"), t0);
        assert_eq!(r, Err(PRIVATE_REFUSAL.to_owned()));
        assert_eq!(s.peers(), 0);
        let mut good = req(2, 7002, 5, Event::Started);
        good.auth = Some(secret.announce_proof(&[7; 20], &[2; 20]));
        assert!(s.announce(&good, ip("10.0.0.2"), t0).is_ok());
        assert_eq!(s.peers(), 1);
        assert_eq!(s.scrape_refusal(&[[7; 20]], ""), Some(PRIVATE_REFUSAL));
    }

    #[test]
    fn peers_see_each_other_not_themselves() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig::default());
        let a = s
            .announce(&req(1, 1001, 100, Event::Started), ip("10.0.0.1"), t0)
            .unwrap();
        assert!(a.peers.is_empty());
        assert_eq!((a.complete, a.incomplete), (Some(0), Some(1)));
        let b = s
            .announce(&req(2, 1002, 0, Event::Started), ip("10.0.0.2"), t0)
            .unwrap();
        assert_eq!(b.peers.len(), 1);
        assert_eq!(b.peers[0].addr, "10.0.0.1:1001".parse().unwrap());
        assert_eq!((b.complete, b.incomplete), (Some(1), Some(1)));
        let a = s
            .announce(&req(1, 1001, 100, Event::None), ip("10.0.0.1"), t0)
            .unwrap();
        assert_eq!(a.peers.len(), 1);
        assert_eq!(a.peers[0].addr, "10.0.0.2:1002".parse().unwrap());
        assert_eq!(a.interval, 30);
        assert_eq!(a.min_interval, Some(10));
    }

    #[test]
    fn seeders_are_not_sent_to_seeders() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig::default());
        s.announce(&req(1, 1, 0, Event::Started), ip("10.0.0.1"), t0)
            .unwrap();
        let b = s
            .announce(&req(2, 2, 0, Event::Started), ip("10.0.0.2"), t0)
            .unwrap();
        assert!(b.peers.is_empty());
        assert_eq!(b.complete, Some(2));
    }

    #[test]
    fn stopped_removes_and_completed_counts() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig::default());
        s.announce(&req(1, 1, 10, Event::Started), ip("10.0.0.1"), t0)
            .unwrap();
        s.announce(&req(2, 2, 10, Event::Started), ip("10.0.0.2"), t0)
            .unwrap();
        s.announce(&req(1, 1, 0, Event::Completed), ip("10.0.0.1"), t0)
            .unwrap();
        // A repeated completed does not count twice.
        s.announce(&req(1, 1, 0, Event::Completed), ip("10.0.0.1"), t0)
            .unwrap();
        let sc = s.scrape(&[[7; 20], [8; 20]]);
        assert_eq!(
            sc,
            vec![
                (
                    [7; 20],
                    ScrapeEntry {
                        complete: 1,
                        incomplete: 1,
                        downloaded: 1
                    }
                ),
                ([8; 20], ScrapeEntry::default())
            ]
        );
        let r = s
            .announce(&req(2, 2, 10, Event::Stopped), ip("10.0.0.2"), t0)
            .unwrap();
        assert!(r.peers.is_empty());
        assert_eq!((r.complete, r.incomplete), (Some(1), Some(0)));
        assert_eq!(s.peers(), 1);
    }

    #[test]
    fn peers_expire_after_two_intervals() {
        let t0 = Instant::now();
        let cfg = TrackerConfig {
            interval: Duration::from_secs(10),
            ..TrackerConfig::default()
        };
        let mut s = Swarms::new(cfg);
        s.announce(&req(1, 1, 10, Event::Started), ip("10.0.0.1"), t0)
            .unwrap();
        s.announce(
            &req(2, 2, 10, Event::Started),
            ip("10.0.0.2"),
            t0 + Duration::from_secs(15),
        )
        .unwrap();
        s.expire(t0 + Duration::from_secs(20));
        assert_eq!(s.peers(), 2, "exactly 2x interval is still alive");
        s.expire(t0 + Duration::from_secs(21));
        assert_eq!(s.peers(), 1);
        // An announce also drops stale peers of its swarm before answering.
        let r = s
            .announce(
                &req(3, 3, 10, Event::Started),
                ip("10.0.0.3"),
                t0 + Duration::from_secs(36),
            )
            .unwrap();
        assert!(r.peers.is_empty());
        s.expire(t0 + Duration::from_secs(100));
        assert_eq!(s.torrents(), 0);
    }

    #[test]
    fn claimed_ip_is_ignored_unless_trusted() {
        let t0 = Instant::now();
        let claimed = |id: u8, to: &str| {
            let mut r = req(id, u16::from(id), 10, Event::Started);
            r.ip = Some(ip(to));
            r
        };
        // Default: the claim is ignored from anywhere, loopback included (a local reverse
        // proxy would otherwise let every client behind it spoof).
        let mut s = Swarms::new(TrackerConfig::default());
        s.announce(&claimed(1, "192.0.2.7"), ip("203.0.113.5"), t0)
            .unwrap();
        s.announce(&claimed(2, "192.0.2.8"), ip("127.0.0.1"), t0)
            .unwrap();
        let r3 = s
            .announce(&req(3, 3, 10, Event::Started), ip("::ffff:10.0.0.3"), t0)
            .unwrap();
        let mut got: Vec<SocketAddr> = r3.peers.iter().map(|p| p.addr).collect();
        got.sort();
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:2".parse().unwrap(),
            "203.0.113.5:1".parse().unwrap(),
        ];
        assert_eq!(got, want);
        // The v4-mapped source was recorded as plain IPv4.
        let r1 = s
            .announce(&req(1, 1, 10, Event::None), ip("203.0.113.5"), t0)
            .unwrap();
        assert!(r1
            .peers
            .iter()
            .any(|p| p.addr == "10.0.0.3:3".parse().unwrap()));
        s.check_invariants().unwrap();

        // Trusted: a usable claim is recorded from any source; unusable ones are not.
        let mut s = Swarms::new(TrackerConfig {
            trust_ip_param: true,
            ..TrackerConfig::default()
        });
        s.announce(&claimed(1, "192.0.2.7"), ip("127.0.0.1"), t0)
            .unwrap();
        s.announce(&claimed(2, "0.0.0.0"), ip("10.0.0.2"), t0)
            .unwrap();
        s.announce(&claimed(4, "224.0.0.1"), ip("10.0.0.4"), t0)
            .unwrap();
        let r3 = s
            .announce(&req(3, 3, 10, Event::Started), ip("10.0.0.3"), t0)
            .unwrap();
        let mut got: Vec<SocketAddr> = r3.peers.iter().map(|p| p.addr).collect();
        got.sort();
        let want: Vec<SocketAddr> = vec![
            "10.0.0.2:2".parse().unwrap(),
            "10.0.0.4:4".parse().unwrap(),
            "192.0.2.7:1".parse().unwrap(),
        ];
        assert_eq!(got, want);
        // And the claimed address is the entry's owner: the proxy's own address is not.
        assert_eq!(
            s.announce(&req(1, 1, 10, Event::Stopped), ip("127.0.0.1"), t0),
            Err(NOT_YOURS.into())
        );
        s.announce(&claimed(1, "192.0.2.7"), ip("127.0.0.1"), t0)
            .unwrap();
    }

    /// The flood of issue 12: `completed` from brand-new peers under random info-hashes
    /// until the tracker is full. Before the fix those swarms never expired and every new
    /// torrent was refused until restart.
    #[test]
    fn completed_flood_expires_and_new_torrents_get_in() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        let mut s = Swarms::new(TrackerConfig {
            interval,
            max_torrents: 300,
            ..TrackerConfig::default()
        });
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..300u32 {
            let mut hash = [0u8; 20];
            for b in &mut hash {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let mut r = req(1, 6881, 0, Event::Completed);
            r.info_hash = hash;
            // Many sources, as an attacker past the per-IP caps would use.
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            s.announce(&r, src, t0).unwrap();
            assert_eq!(
                s.scrape(&[hash])[0].1.downloaded,
                0,
                "a stranger's completed"
            );
        }
        assert_eq!(s.torrents(), 300);
        let newcomer = req(2, 7000, 10, Event::Started);
        assert_eq!(
            s.announce(&newcomer, ip("192.0.2.1"), t0 + interval),
            Err(TRACKER_FULL.into())
        );
        // Right at the peer expiry the flood's peers are still alive...
        assert_eq!(
            s.announce(&newcomer, ip("192.0.2.1"), t0 + interval * 2),
            Err(TRACKER_FULL.into())
        );
        // ...and after it the newcomer's own announce sweeps them out (sweeps on demand
        // are half an interval apart, however fast newcomers knock).
        let later = t0 + interval * 2 + interval / 2;
        s.announce(&newcomer, ip("192.0.2.1"), later).unwrap();
        assert_eq!((s.torrents(), s.peers()), (1, 1));
        s.check_invariants().unwrap();
        // A swarm with a real download expires like any other once its peers are gone.
        s.announce(&req(3, 7001, 0, Event::Completed), ip("192.0.2.3"), later)
            .unwrap();
        s.announce(&req(2, 7000, 0, Event::Completed), ip("192.0.2.1"), later)
            .unwrap();
        assert_eq!(s.scrape(&[[7; 20]])[0].1.downloaded, 1);
        s.expire(later + interval * 3);
        assert_eq!(s.torrents(), 0);
        s.check_invariants().unwrap();
    }

    #[test]
    fn per_ip_caps_bound_peers_and_swarms() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig {
            max_peers_per_ip: 3,
            max_swarms_per_ip: 2,
            ..TrackerConfig::default()
        });
        let in_swarm = |h: u8, id: u8, event: Event| {
            let mut r = req(id, 6000 + u16::from(id), 10, event);
            r.info_hash = [h; 20];
            r
        };
        let a = ip("10.0.0.1");
        for id in 1..=3 {
            s.announce(&in_swarm(7, id, Event::Started), a, t0).unwrap();
        }
        assert_eq!(
            s.announce(&in_swarm(7, 4, Event::Started), a, t0),
            Err(TOO_MANY_PEERS_FROM_IP.into())
        );
        // Known peers still announce; other addresses are not held back.
        s.announce(&in_swarm(7, 1, Event::None), a, t0).unwrap();
        s.announce(&in_swarm(7, 4, Event::Started), ip("10.0.0.2"), t0)
            .unwrap();
        // Swarms: a second is fine, a third is not, and the refusal leaves nothing behind.
        s.announce(&in_swarm(8, 1, Event::Started), a, t0).unwrap();
        assert_eq!(
            s.announce(&in_swarm(9, 1, Event::Started), a, t0),
            Err(TOO_MANY_SWARMS_FROM_IP.into())
        );
        assert_eq!(s.torrents(), 2);
        s.check_invariants().unwrap();
        // Leaving a swarm gives its slot back.
        s.announce(&in_swarm(8, 1, Event::Stopped), a, t0).unwrap();
        s.announce(&in_swarm(9, 1, Event::Started), a, t0).unwrap();
        // An IPv6 /64 counts as one source; another /64 does not.
        for (n, src) in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::3"]
            .iter()
            .enumerate()
        {
            s.announce(&in_swarm(7, 20 + n as u8, Event::Started), ip(src), t0)
                .unwrap();
        }
        assert_eq!(
            s.announce(&in_swarm(7, 30, Event::Started), ip("2001:db8:0:1::9"), t0),
            Err(TOO_MANY_PEERS_FROM_IP.into())
        );
        s.announce(&in_swarm(7, 30, Event::Started), ip("2001:db8:0:2::9"), t0)
            .unwrap();
        s.check_invariants().unwrap();
        // Expiry gives every slot back.
        s.expire(t0 + Duration::from_secs(61));
        assert_eq!((s.torrents(), s.peers()), (0, 0));
        s.check_invariants().unwrap();
        assert!(s.swarms_per_ip.0.is_empty());
    }

    #[test]
    fn entries_belong_to_the_address_that_made_them() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig::default());
        s.announce(&req(1, 1001, 10, Event::Started), ip("10.0.0.1"), t0)
            .unwrap();
        // Another address with the same peer id can neither move nor remove the entry.
        assert_eq!(
            s.announce(&req(1, 6666, 10, Event::None), ip("10.6.6.6"), t0),
            Err(NOT_YOURS.into())
        );
        assert_eq!(
            s.announce(&req(1, 6666, 10, Event::Stopped), ip("10.6.6.6"), t0),
            Err(NOT_YOURS.into())
        );
        let b = s
            .announce(&req(2, 1002, 10, Event::Started), ip("10.0.0.2"), t0)
            .unwrap();
        let got: Vec<SocketAddr> = b.peers.iter().map(|p| p.addr).collect();
        assert_eq!(got, ["10.0.0.1:1001".parse::<SocketAddr>().unwrap()]);
        // Its own address still can; once expired, the id is free for anyone.
        s.announce(&req(1, 1001, 10, Event::Stopped), ip("10.0.0.1"), t0)
            .unwrap();
        s.announce(&req(1, 1001, 10, Event::Started), ip("10.0.0.1"), t0)
            .unwrap();
        let later = t0 + Duration::from_secs(61);
        s.announce(&req(1, 7777, 10, Event::Started), ip("10.7.7.7"), later)
            .unwrap();
        s.check_invariants().unwrap();
    }

    #[test]
    fn ipv6_peers_are_encoded_in_peers6() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig::default());
        s.announce(&req(1, 1001, 10, Event::Started), ip("2001:db8::1"), t0)
            .unwrap();
        s.announce(&req(2, 1002, 10, Event::Started), ip("10.0.0.2"), t0)
            .unwrap();
        let r = s
            .announce(&req(3, 1003, 10, Event::Started), ip("10.0.0.3"), t0)
            .unwrap();
        let body = encode_announce_response(&r, true);
        let back = parse_announce_response(&body).unwrap().unwrap();
        let mut got: Vec<SocketAddr> = back.peers.iter().map(|p| p.addr).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                "10.0.0.2:1002".parse().unwrap(),
                "[2001:db8::1]:1001".parse().unwrap()
            ]
        );
        let six = b"6:peers618:";
        assert!(
            body.windows(six.len()).any(|w| w == six),
            "one 18-byte entry in peers6"
        );
    }

    #[test]
    fn limits_and_allow_list() {
        let t0 = Instant::now();
        let cfg = TrackerConfig {
            allowed: Some([[7; 20], [9; 20]].into_iter().collect()),
            max_torrents: 1,
            max_peers_per_torrent: 2,
            max_numwant: 1,
            ..TrackerConfig::default()
        };
        let mut s = Swarms::new(cfg);
        let mut other = req(1, 1, 10, Event::Started);
        other.info_hash = [8; 20];
        assert_eq!(
            s.announce(&other, ip("10.0.0.1"), t0),
            Err("info_hash is not allowed on this tracker".into())
        );
        assert!(s.scrape(&[[8; 20]]).is_empty());
        s.announce(&req(1, 1, 10, Event::Started), ip("10.0.0.1"), t0)
            .unwrap();
        s.announce(&req(2, 2, 10, Event::Started), ip("10.0.0.2"), t0)
            .unwrap();
        assert_eq!(
            s.announce(&req(3, 3, 10, Event::Started), ip("10.0.0.3"), t0),
            Err("swarm is full".into())
        );
        other.info_hash = [9; 20];
        assert_eq!(
            s.announce(&other, ip("10.0.0.1"), t0),
            Err("tracker is full: too many torrents".into())
        );
        assert_eq!(
            s.announce(&req(4, 0, 10, Event::Started), ip("10.0.0.4"), t0),
            Err("port 0 is not a listening port".into())
        );
    }

    #[test]
    fn numwant_caps_and_rotates() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig::default());
        for id in 1..=10u8 {
            s.announce(
                &req(id, u16::from(id), 10, Event::Started),
                ip("10.0.0.1"),
                t0,
            )
            .unwrap();
        }
        let mut seen = HashSet::new();
        for _ in 0..5 {
            let mut r = req(1, 1, 10, Event::None);
            r.numwant = Some(3);
            let resp = s.announce(&r, ip("10.0.0.1"), t0).unwrap();
            assert_eq!(resp.peers.len(), 3);
            assert!(resp.peers.iter().all(|p| p.peer_id != Some([1; 20])));
            seen.extend(resp.peers.iter().map(|p| p.addr));
        }
        assert_eq!(seen.len(), 9, "rotation reaches every other peer");
    }

    /// A swarm of `per_rack` leechers in each of racks a (10.1.0.0/16) and b (10.2.0.0/16)
    /// plus one seeder at 10.1.0.100, and the tracker that knows it.
    fn racked_swarm(per_rack: u8) -> (Swarms, Instant) {
        let t0 = Instant::now();
        let topology = Topology::parse(
            "10.1.0.0/16 rack=a\n10.2.0.0/16 rack=b\n10.3.0.0/16 rack=c\n",
            "t",
        )
        .unwrap();
        let mut s = Swarms::new(TrackerConfig {
            topology: Some(Arc::new(topology)),
            ..TrackerConfig::default()
        });
        s.announce(&req(200, 6881, 0, Event::Started), ip("10.1.0.100"), t0)
            .unwrap();
        for i in 1..=per_rack {
            for net in [1u8, 2] {
                let id = i + if net == 2 { 100 } else { 0 };
                let src = IpAddr::from([10, net, 0, i]);
                s.announce(&req(id, 6881, 10, Event::Started), src, t0)
                    .unwrap();
            }
        }
        s.check_invariants().unwrap();
        (s, t0)
    }

    fn in_net(p: &PeerInfo, net: u8) -> bool {
        matches!(p.addr.ip(), IpAddr::V4(v4) if v4.octets()[..2] == [10, net])
    }

    #[test]
    fn racked_peers_get_mostly_their_own_rack_and_always_the_seeder() {
        let (mut s, t0) = racked_swarm(40);
        let seeder: SocketAddr = "10.1.0.100:6881".parse().unwrap();
        for (id, src, home, away) in [(1u8, "10.1.0.1", 1u8, 2u8), (101, "10.2.0.1", 2, 1)] {
            let mut seen_away: Option<HashSet<SocketAddr>> = None;
            for round in 0..4 {
                let resp = s
                    .announce(&req(id, 6881, 10, Event::None), ip(src), t0)
                    .unwrap();
                assert_eq!(resp.peers.len(), 50, "round {round}");
                assert_eq!(resp.peers[0].addr, seeder, "the seeder comes first");
                let leechers = &resp.peers[1..];
                let near = leechers.iter().filter(|p| in_net(p, home)).count();
                let far = leechers.iter().filter(|p| in_net(p, away)).count();
                assert_eq!(near + far, 49);
                assert!((36..=37).contains(&near), "{near} same-rack of 49");
                assert!(leechers.iter().all(|p| p.peer_id != Some([id; 20])));
                let away_now: HashSet<SocketAddr> = leechers
                    .iter()
                    .filter(|p| in_net(p, away))
                    .map(|p| p.addr)
                    .collect();
                let first = seen_away.get_or_insert_with(|| away_now.clone());
                assert_eq!(*first, away_now, "the cross-rack peers stay the same");
            }
        }
        s.check_invariants().unwrap();
    }

    #[test]
    fn small_racked_swarms_are_not_joined_all_to_all() {
        // Three leechers a rack: each gets the seeder, both rack mates and one peer of
        // the other rack, where the plain handout gives all six.
        let (mut s, t0) = racked_swarm(3);
        let r = s
            .announce(&req(102, 6881, 10, Event::None), ip("10.2.0.2"), t0)
            .unwrap();
        assert_eq!(r.peers.len(), 4, "{:?}", r.peers);
        assert_eq!(r.peers.iter().filter(|p| in_net(p, 2)).count(), 2);
        assert_eq!(r.peers.iter().filter(|p| in_net(p, 1)).count(), 2);
        assert_eq!(r.peers[0].addr, "10.1.0.100:6881".parse().unwrap());
        // A peer alone in its rack gets everyone.
        let t = s
            .announce(&req(150, 6881, 10, Event::Started), ip("10.3.9.9"), t0)
            .unwrap();
        assert_eq!(t.peers.len(), 7);
    }

    #[test]
    fn peers_outside_the_topology_and_seeders_get_the_plain_handout() {
        let (mut s, t0) = racked_swarm(3);
        let outside = s
            .announce(&req(77, 6881, 10, Event::Started), ip("192.0.2.1"), t0)
            .unwrap();
        assert_eq!(outside.peers.len(), 7, "everyone, as without a topology");
        let seeder = s
            .announce(&req(200, 6881, 0, Event::None), ip("10.1.0.100"), t0)
            .unwrap();
        assert_eq!(seeder.peers.len(), 7, "a seeder sees every leecher");
        // The peer outside the topology counts as another rack's for racked askers.
        let r = s
            .announce(&req(1, 6881, 10, Event::None), ip("10.1.0.1"), t0)
            .unwrap();
        assert_eq!(r.peers.len(), 4, "{:?}", r.peers);
        s.check_invariants().unwrap();
    }

    #[test]
    fn finished_peers_stay_rack_members_not_seeders_for_all() {
        let (mut s, t0) = racked_swarm(3);
        for id in [101, 102] {
            s.announce(
                &req(id, 6881, 0, Event::Completed),
                ip(&format!("10.2.0.{}", id - 100)),
                t0,
            )
            .unwrap();
        }
        let r = s
            .announce(&req(1, 6881, 10, Event::None), ip("10.1.0.1"), t0)
            .unwrap();
        assert_eq!(r.peers.len(), 4, "{:?}", r.peers);
        assert_eq!(r.peers[0].addr, "10.1.0.100:6881".parse().unwrap());
        assert_eq!(r.peers.iter().filter(|p| in_net(p, 2)).count(), 1);
        // In their own rack they serve as the neighbours they are.
        let b = s
            .announce(&req(103, 6881, 10, Event::None), ip("10.2.0.3"), t0)
            .unwrap();
        let mates: HashSet<SocketAddr> = b
            .peers
            .iter()
            .filter(|p| in_net(p, 2))
            .map(|p| p.addr)
            .collect();
        assert_eq!(mates.len(), 2, "{:?}", b.peers);
        s.check_invariants().unwrap();
    }

    /// The handout's sizes as the fleet simulator takes them: a full rack's peer gets
    /// about a quarter of its list from other racks, a peer alone in its rack all of it.
    #[test]
    fn rack_counts_split_a_list_between_racks() {
        let c = rack_counts(1, 39, 960, 50);
        assert_eq!((c.seeds, c.same, c.other), (1, 37, 12));
        // Alone in its rack: every slot goes to other racks.
        let c = rack_counts(1, 0, 999, 50);
        assert_eq!((c.seeds, c.same, c.other), (1, 0, 49));
        // Few rack-mates: a third of them, at least one, from other racks.
        let c = rack_counts(1, 2, 999, 50);
        assert_eq!((c.seeds, c.same, c.other), (1, 2, 1));
        // Never more than asked for, nor more than there are.
        for (seeds, same, other, want) in [(3, 5, 2, 4), (0, 0, 0, 9), (2, 100, 100, 1)] {
            let c = rack_counts(seeds, same, other, want);
            assert!(c.seeds + c.same + c.other <= want, "{c:?}");
            assert!(
                c.seeds <= seeds && c.same <= same && c.other <= other,
                "{c:?}"
            );
        }
    }

    proptest::proptest! {
        /// Any swarm of origin seeders, leechers and finished peers over racks a, b and no
        /// rack: a leecher's list is within numwant, has no duplicates and not the asker;
        /// a racked leecher's lists origin seeders first and holds at most a third as many
        /// cross-rack peers as same-rack ones (at least one).
        #[test]
        fn rack_handouts_keep_their_bounds(
            peers in proptest::collection::vec((0u8..3, 0u8..3), 0..60),
            asker_rack in 0u8..3,
            numwant in 0u32..80,
        ) {
            let t0 = Instant::now();
            let topology =
                Topology::parse("10.1.0.0/16 rack=a\n10.2.0.0/16 rack=b\n", "t").unwrap();
            let mut s = Swarms::new(TrackerConfig {
                topology: Some(Arc::new(topology)),
                ..TrackerConfig::default()
            });
            let mut origin = HashSet::new();
            for (i, (rack, kind)) in peers.iter().enumerate() {
                let id = i as u8 + 1;
                let src = IpAddr::from([10, rack + 1, 0, id]);
                let left = if *kind == 0 { 0 } else { 10 };
                s.announce(&req(id, 6881, left, Event::Started), src, t0).unwrap();
                if *kind == 2 {
                    s.announce(&req(id, 6881, 0, Event::Completed), src, t0).unwrap();
                }
                if *kind == 0 {
                    origin.insert(SocketAddr::new(src, 6881));
                }
            }
            let mut r = req(250, 6881, 10, Event::Started);
            r.numwant = Some(numwant);
            let src = IpAddr::from([10, asker_rack + 1, 0, 250]);
            let resp = s.announce(&r, src, t0).unwrap();
            s.check_invariants().unwrap();
            let got: Vec<SocketAddr> = resp.peers.iter().map(|p| p.addr).collect();
            proptest::prop_assert!(got.len() <= numwant as usize);
            let unique: HashSet<_> = got.iter().collect();
            proptest::prop_assert_eq!(unique.len(), got.len());
            proptest::prop_assert!(resp.peers.iter().all(|p| p.peer_id != Some([250; 20])));
            if asker_rack < 2 {
                let seeds = got.iter().take_while(|a| origin.contains(a)).count();
                proptest::prop_assert!(got[seeds..].iter().all(|a| !origin.contains(a)));
                let rest = &resp.peers[seeds..];
                let same = rest.iter().filter(|p| in_net(p, asker_rack + 1)).count();
                let cross = rest.len() - same;
                if same > 0 {
                    proptest::prop_assert!(cross <= same.div_ceil(3).max(1), "{same} {cross}");
                }
            }
        }
    }

    #[test]
    fn a_racks_own_seeder_is_handed_out_else_every_racks() {
        let (mut s, t0) = racked_swarm(3);
        s.announce(&req(201, 6881, 0, Event::Started), ip("10.2.0.100"), t0)
            .unwrap();
        let mut r = req(1, 6881, 10, Event::None);
        r.numwant = Some(3);
        let resp = s.announce(&r, ip("10.1.0.1"), t0).unwrap();
        let addrs: Vec<String> = resp.peers.iter().map(|p| p.addr.to_string()).collect();
        assert_eq!(addrs.len(), 3, "{addrs:?}");
        assert_eq!(addrs[0], "10.1.0.100:6881", "the same-rack seeder only");
        assert!(resp.peers[1..].iter().all(|p| in_net(p, 1)), "{addrs:?}");
        // A rack without a seeder of its own gets every rack's.
        s.announce(&req(150, 6881, 10, Event::Started), ip("10.3.0.1"), t0)
            .unwrap();
        let lone = s
            .announce(&req(151, 6881, 10, Event::Started), ip("10.3.0.2"), t0)
            .unwrap();
        let seeders: HashSet<String> = lone.peers[..2].iter().map(|p| p.addr.to_string()).collect();
        let want: HashSet<String> = ["10.1.0.100:6881", "10.2.0.100:6881"]
            .map(String::from)
            .into();
        assert_eq!(seeders, want, "{:?}", lone.peers);
    }

    #[test]
    fn requests_get_whole_http_answers() {
        let t0 = Instant::now();
        let mut s = Swarms::new(TrackerConfig::default());
        let src = ip("10.0.0.1");
        let q = proto::announce_query(&req(1, 1, 10, Event::Started));
        let head = format!("GET /announce?{q} HTTP/1.0\r\n\r\n");
        assert_eq!(s.handle_request(&head.as_bytes()[..20], src, t0), None);
        let (out, o) = s.handle_request(head.as_bytes(), src, t0).unwrap();
        assert_eq!(o, Outcome::Announce);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        let body = &out[text.find("\r\n\r\n").unwrap() + 4..];
        assert!(parse_announce_response(body).unwrap().is_ok());
        let long = format!(
            "GET /{} HTTP/1.0\r\n\r\n",
            "a".repeat(proto::MAX_REQUEST_LINE)
        );
        let (out, o) = s.handle_request(long.as_bytes(), src, t0).unwrap();
        assert_eq!(o, Outcome::BadRequest);
        assert!(out.starts_with(b"HTTP/1.0 414 "));
        let (out, o) = s
            .handle_request(b"GET /announce?info_hash=x HTTP/1.0\r\n\r\n", src, t0)
            .unwrap();
        assert_eq!(o, Outcome::Failure);
        assert!(out.starts_with(b"HTTP/1.0 200 OK"));
        assert!(out.ends_with(
            b"d14:failure reason59:query parameter \"info_hash\" must be exactly 20 bytes, got 1e"
        ));
        let (out, o) = s
            .handle_request(b"GET /nope HTTP/1.0\r\n\r\n", src, t0)
            .unwrap();
        assert_eq!(o, Outcome::BadRequest);
        assert!(out.starts_with(b"HTTP/1.0 404 "));
        let (out, o) = s
            .handle_request(b"POST /announce HTTP/1.0\r\n\r\n", src, t0)
            .unwrap();
        assert_eq!(o, Outcome::BadRequest);
        assert!(out.starts_with(b"HTTP/1.0 405 "));
    }
}
