//! Prometheus metrics for `seed`, `peer` and `tracker` (`--metrics-listen IP:PORT`).
//!
//! Three parts:
//! - [`NodeMetrics`]: what a node reports. Counts that the node already keeps for its
//!   `--json` report (bytes by source, connections, the hash queue) are *read* at scrape
//!   time through a [`NodeLive`] source the node attaches, so a scrape and the report can
//!   never disagree; events the report only keeps per run (piece verdicts, close reasons,
//!   announces) are *pushed* by the node into prometheus-client's atomic counters.
//! - [`TrackerCollector`]: the tracker server's own counters ([`TrackerStats`]), read at
//!   scrape time.
//! - [`MetricsServer`]: a minimal HTTP/1.1 responder on one std thread answering
//!   `GET /metrics` with the Prometheus text format (0.0.4). Scrapes come every few seconds
//!   from one collector, so one thread serving one request at a time is plenty; every
//!   connection gets a short deadline so a stuck client delays a scrape, never the node.
//!
//! Metric names are fixed here (and listed in the README); counters get prometheus-client's
//! `_total` suffix. Label values come from small fixed sets (close reasons are classified,
//! never copied: a remote's error text must not create unbounded series).

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry;

use crate::tracker::proto::Event;
use crate::tracker::server::{TrackerStats, TrackerStatsHandle};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint {addr}: {context}: {source}")]
    Io {
        addr: SocketAddr,
        context: &'static str,
        source: std::io::Error,
    },
}

/// One label pair; every label set here is built from static strings.
type Labels = Vec<(&'static str, &'static str)>;

/// The counts a node keeps for its report, read at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeLive {
    pub bytes_from_seeder: u64,
    pub bytes_from_peers: u64,
    pub bytes_up: u64,
    /// End-game duplicates and pieces that failed their hash.
    pub bytes_wasted: u64,
    /// Connections open (handshaking or established).
    pub connections: u64,
    /// Connections past their handshake.
    pub established: u64,
    /// Inbound connections refused (connection or per-address limits).
    pub refused: u64,
    /// Outbound connections attempted.
    pub dials: u64,
    /// Pieces waiting for or being hashed.
    pub hash_queue: u64,
    pub pieces_have: u64,
    pub pieces_total: u64,
}

type LiveFn = Box<dyn Fn() -> Option<NodeLive> + Send + Sync>;

/// Where [`NodeLive`] comes from: nothing yet, the running node, or its last numbers once
/// it stopped (counters must not drop to zero after the node is gone).
enum LiveSource {
    None,
    Running(LiveFn),
    Stopped(NodeLive),
}

/// A node's metrics; see the module docs. Shared (`Arc`) between the node, which updates
/// it, and the registry, which encodes it.
pub struct NodeMetrics {
    pieces_verified: Counter,
    pieces_failed: Counter,
    /// First payload byte of a piece to its hash verdict, in seconds.
    piece_latency: Histogram,
    closed: Family<Labels, Counter>,
    announces: Family<Labels, Counter>,
    live: Mutex<LiveSource>,
}

impl fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("pieces_verified", &self.pieces_verified.get())
            .field("pieces_failed", &self.pieces_failed.get())
            .finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Creates the node's metrics and registers them with `registry`.
    pub fn register(registry: &mut Registry) -> Arc<NodeMetrics> {
        let m = Arc::new(NodeMetrics {
            pieces_verified: Counter::default(),
            pieces_failed: Counter::default(),
            // 1 ms to about 65 s, doubling: a piece on a fast link takes milliseconds,
            // one behind a stalled peer tens of seconds.
            piece_latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            closed: Family::default(),
            announces: Family::default(),
            live: Mutex::new(LiveSource::None),
        });
        registry.register(
            "corvid_pieces_verified",
            "Pieces that passed their hash check",
            m.pieces_verified.clone(),
        );
        registry.register(
            "corvid_pieces_failed",
            "Pieces that failed their hash check (fetched again)",
            m.pieces_failed.clone(),
        );
        registry.register(
            "corvid_piece_latency_seconds",
            "Time from a piece's first payload byte to its hash verdict",
            m.piece_latency.clone(),
        );
        registry.register(
            "corvid_connections_closed",
            "Peer connections closed, by reason",
            m.closed.clone(),
        );
        registry.register(
            "corvid_announces",
            "Announces sent to trackers, by event and result",
            m.announces.clone(),
        );
        registry.register_collector(Box::new(LiveCollector(m.clone())));
        m
    }

    /// The node is running: scrapes read its counts through `f` (which answers `None`
    /// once the node is gone).
    pub fn attach(&self, f: LiveFn) {
        *self.live.lock() = LiveSource::Running(f);
    }

    /// The node stops: its last counts stay what scrapes see.
    pub fn detach(&self) {
        let mut live = self.live.lock();
        let last = match &*live {
            LiveSource::Running(f) => f().unwrap_or_default(),
            LiveSource::Stopped(l) => *l,
            LiveSource::None => return,
        };
        *live = LiveSource::Stopped(last);
    }

    fn live(&self) -> Option<NodeLive> {
        match &*self.live.lock() {
            LiveSource::None => None,
            LiveSource::Running(f) => f(),
            LiveSource::Stopped(l) => Some(*l),
        }
    }

    /// A piece passed its hash check `latency` after its first payload byte.
    pub fn piece_verified(&self, latency: Duration) {
        self.pieces_verified.inc();
        self.piece_latency.observe(latency.as_secs_f64());
    }

    /// A piece failed its hash check.
    pub fn piece_failed(&self) {
        self.pieces_failed.inc();
    }

    /// A connection closed for `reason` (the text the node logs; see [`close_reason_label`]).
    pub fn connection_closed(&self, reason: &str) {
        self.closed
            .get_or_create(&vec![("reason", close_reason_label(reason))])
            .inc();
    }

    /// An announce with `event` was sent; `ok` if the tracker answered with peers.
    pub fn announced(&self, event: Event, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.announces
            .get_or_create(&vec![("event", event_label(event)), ("result", result)])
            .inc();
    }
}

/// An announce event as a label value (`periodic` for the regular one without `event`).
pub fn event_label(e: Event) -> &'static str {
    match e {
        Event::None => "periodic",
        Event::Started => "started",
        Event::Completed => "completed",
        Event::Stopped => "stopped",
    }
}

/// The reason a connection closed, as one of a fixed set of label values. The node logs
/// reasons as text (the runtime's, the protocol's and its own); this maps each known
/// prefix, and `other` for anything new, so a remote's error text never becomes a label.
/// A unit test checks every reason the protocol and runtime define maps to a known label.
pub fn close_reason_label(reason: &str) -> &'static str {
    const TABLE: &[(&str, &str)] = &[
        ("peer closed the connection", "peer_closed"),
        ("socket error", "socket_error"),
        ("connect failed", "connect_failed"),
        ("message larger than", "message_too_large"),
        ("closed locally", "local"),
        ("runtime shutting down", "shutdown"),
        ("connected to ourselves", "self_connection"),
        ("already connected", "duplicate"),
        ("both sides have the whole torrent", "both_complete"),
        ("no handshake within", "handshake_timeout"),
        ("nothing received for longer", "idle"),
        ("stalled", "stalled"),
        ("peer address is banned", "banned"),
        ("private swarm", "not_authorized"),
        ("handshake for info-hash", "wrong_info_hash"),
        ("malformed message", "malformed"),
    ];
    let r = reason.strip_prefix("protocol error: ").unwrap_or(reason);
    if let Some((_, label)) = TABLE.iter().find(|(p, _)| r.starts_with(p)) {
        return label;
    }
    if r.starts_with("more than ") && r.contains("replies queued") {
        return "send_queue_overflow";
    }
    const VIOLATIONS: &[&str] = &[
        "after the first message",
        "past the end of the torrent",
        "outside the torrent",
        "which we do not have",
        "was never requested",
        "without the fast extension",
        "without the extension protocol",
    ];
    if VIOLATIONS.iter().any(|v| r.contains(v)) {
        return "protocol_violation";
    }
    "other"
}

/// Encodes one metric without labels.
fn one(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: &impl EncodeMetric,
) -> Result<(), fmt::Error> {
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

/// Encodes one metric as several label sets of one label.
fn by_label<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &'static str,
    values: &[(&'static str, M)],
) -> Result<(), fmt::Error> {
    let mut e = enc.encode_descriptor(name, help, None, kind)?;
    for (v, m) in values {
        let labels: Labels = vec![(label, *v)];
        m.encode(e.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Reads [`NodeLive`] at scrape time.
struct LiveCollector(Arc<NodeMetrics>);

impl fmt::Debug for LiveCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveCollector")
    }
}

impl Collector for LiveCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(l) = self.0.live() else {
            return Ok(());
        };
        let c = ConstCounter::new;
        let g = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        by_label(
            &mut enc,
            "corvid_bytes_down",
            "Payload bytes received, by sender (the seeder or other peers)",
            MetricType::Counter,
            "source",
            &[
                ("seeder", c(l.bytes_from_seeder)),
                ("peers", c(l.bytes_from_peers)),
            ],
        )?;
        let counters = [
            ("corvid_bytes_up", "Payload bytes sent", l.bytes_up),
            (
                "corvid_bytes_wasted",
                "Payload bytes dropped: end-game duplicates and failed pieces",
                l.bytes_wasted,
            ),
            (
                "corvid_connections_refused",
                "Inbound connections refused by the connection limits",
                l.refused,
            ),
            ("corvid_dials", "Outbound connections attempted", l.dials),
        ];
        for (name, help, v) in counters {
            one(&mut enc, name, help, &c(v))?;
        }
        by_label(
            &mut enc,
            "corvid_connections",
            "Peer connections open, by state",
            MetricType::Gauge,
            "state",
            &[
                (
                    "handshaking",
                    g(l.connections.saturating_sub(l.established)),
                ),
                ("established", g(l.established)),
            ],
        )?;
        let gauges = [
            (
                "corvid_hash_queue_depth",
                "Pieces queued for or being hashed",
                l.hash_queue,
            ),
            (
                "corvid_pieces_have",
                "Pieces verified and held",
                l.pieces_have,
            ),
            ("corvid_pieces", "Pieces in the torrent", l.pieces_total),
        ];
        for (name, help, v) in gauges {
            one(&mut enc, name, help, &g(v))?;
        }
        Ok(())
    }
}

/// The tracker server's counters, read at scrape time.
pub struct TrackerCollector(pub TrackerStatsHandle);

impl fmt::Debug for TrackerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrackerCollector")
    }
}

impl TrackerCollector {
    /// Registers the tracker behind `stats` with `registry`.
    pub fn register(registry: &mut Registry, stats: TrackerStatsHandle) {
        registry.register_collector(Box::new(TrackerCollector(stats)));
    }
}

impl Collector for TrackerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s: TrackerStats = self.0.snapshot();
        let c = ConstCounter::new;
        let g = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        by_label(
            &mut enc,
            "corvid_tracker_requests",
            "Tracker requests, by outcome",
            MetricType::Counter,
            "outcome",
            &[
                ("announce", c(s.announces)),
                ("scrape", c(s.scrapes)),
                ("failure", c(s.failures)),
                ("bad_request", c(s.bad_requests)),
            ],
        )?;
        let e = &s.announces_by_event;
        by_label(
            &mut enc,
            "corvid_tracker_announces",
            "Announces the tracker answered with peers, by event",
            MetricType::Counter,
            "event",
            &[
                (event_label(Event::Started), c(e.started)),
                (event_label(Event::Completed), c(e.completed)),
                (event_label(Event::Stopped), c(e.stopped)),
                (event_label(Event::None), c(e.none)),
            ],
        )?;
        one(
            &mut enc,
            "corvid_tracker_connections",
            "Connections the tracker accepted",
            &c(s.connections),
        )?;
        one(
            &mut enc,
            "corvid_tracker_timeouts",
            "Tracker connections dropped at their deadline or to make room",
            &c(s.timeouts),
        )?;
        one(
            &mut enc,
            "corvid_tracker_swarms",
            "Swarms (info-hashes) tracked",
            &g(s.torrents),
        )?;
        one(
            &mut enc,
            "corvid_tracker_peers",
            "Peers tracked, over all swarms",
            &g(s.peers),
        )?;
        Ok(())
    }
}

/// The registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a collector's fmt::Error would only cut the text.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// Time a scrape connection has to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(2);
/// Most bytes of a request head read.
const MAX_HEAD: usize = 8192;

/// The HTTP endpoint serving one registry. Dropping it stops the thread.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (port 0: any free port) and serves `registry` from a thread.
    pub fn start(addr: SocketAddr, registry: Arc<Registry>) -> Result<MetricsServer, MetricsError> {
        let err = |context, source| MetricsError::Io {
            addr,
            context,
            source,
        };
        let listener = TcpListener::bind(addr).map_err(|e| err("bind", e))?;
        let local_addr = listener.local_addr().map_err(|e| err("local_addr", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corvid-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    // Accept errors (EMFILE, ECONNABORTED) pass; the next scrape retries.
                    if let Ok(stream) = conn {
                        serve(stream, &registry);
                    }
                }
            })
            .map_err(|e| err("spawn thread", e))?;
        Ok(MetricsServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The thread blocks in accept: one connection wakes it to see the flag. If the
        // connect fails the listener is already broken and the thread has left.
        let _ = TcpStream::connect_timeout(&wake_addr(self.local_addr), DEADLINE);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The bound address, with an unspecified IP replaced by loopback so it can be dialled.
fn wake_addr(a: SocketAddr) -> SocketAddr {
    let mut a = a;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// Answers one connection: `GET /metrics` (or `/`) gets the text, anything else a 404 or
/// 405; bad or slow requests are dropped.
fn serve(mut stream: TcpStream, registry: &Registry) {
    let deadline = Instant::now() + DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (status, body) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("");
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                break match (req.method, path) {
                    (Some("GET"), "/metrics" | "/") => ("200 OK", encode(registry)),
                    (Some("GET"), _) => ("404 Not Found", "try /metrics\n".to_string()),
                    _ => ("405 Method Not Allowed", "GET only\n".to_string()),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => break ("400 Bad Request", "bad request\n".to_string()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        body.len()
    );
    let _ = stream.set_write_timeout(Some(DEADLINE));
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::CloseReason;
    use crate::runtime::CloseCause as RtClose;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn every_known_close_reason_has_a_label() {
        let peer = [
            CloseReason::WrongInfoHash([1; 20]),
            CloseReason::HandshakeTimeout,
            CloseReason::Idle,
            CloseReason::Stalled,
            CloseReason::Banned,
            CloseReason::BitfieldNotFirst("bitfield"),
            CloseReason::HaveOutOfRange(9),
            CloseReason::RequestOutsideTorrent {
                index: 1,
                begin: 2,
                len: 3,
            },
            CloseReason::RequestForMissingPiece(3),
            CloseReason::UnrequestedPiece {
                index: 1,
                begin: 2,
                len: 3,
            },
            CloseReason::FastNotNegotiated("have all"),
            CloseReason::ExtendedNotNegotiated,
            CloseReason::BothComplete,
            CloseReason::SelfConnection,
            CloseReason::SendQueueOverflow(1 << 20),
            CloseReason::NotAuthorized("bad proof"),
        ];
        for r in peer {
            let text = r.to_string();
            assert_ne!(close_reason_label(&text), "other", "{text}");
            let wrapped = RtClose::Protocol(r).to_string();
            assert_eq!(
                close_reason_label(&wrapped),
                close_reason_label(&text),
                "{wrapped}"
            );
        }
        let rt: [RtClose<CloseReason>; 5] = [
            RtClose::PeerClosed,
            RtClose::Io(std::io::Error::from(ErrorKind::ConnectionReset)),
            RtClose::MessageTooLarge(1),
            RtClose::Local,
            RtClose::Shutdown,
        ];
        for r in rt {
            assert_ne!(close_reason_label(&r.to_string()), "other", "{r}");
        }
        assert_eq!(
            close_reason_label("connect failed: refused"),
            "connect_failed"
        );
        assert_eq!(close_reason_label("whatever a remote says"), "other");
        assert_eq!(
            close_reason_label("protocol error: nothing received for longer than x"),
            "idle"
        );
    }

    #[test]
    fn node_metrics_encode_live_and_pushed_counts() {
        let mut reg = Registry::default();
        let m = NodeMetrics::register(&mut reg);
        assert!(
            !encode(&reg).contains("corvid_bytes_down"),
            "no live source yet"
        );
        let live = Arc::new(Mutex::new(NodeLive {
            bytes_from_seeder: 100,
            bytes_from_peers: 20,
            bytes_up: 7,
            connections: 3,
            established: 2,
            hash_queue: 4,
            pieces_have: 5,
            pieces_total: 9,
            ..NodeLive::default()
        }));
        let src = live.clone();
        m.attach(Box::new(move || Some(*src.lock())));
        m.piece_verified(Duration::from_millis(3));
        m.piece_failed();
        m.connection_closed("peer closed the connection");
        m.connection_closed("peer closed the connection");
        m.announced(Event::Started, true);
        let text = encode(&reg);
        for want in [
            "corvid_bytes_down_total{source=\"seeder\"} 100\n",
            "corvid_bytes_down_total{source=\"peers\"} 20\n",
            "corvid_bytes_up_total 7\n",
            "corvid_connections{state=\"handshaking\"} 1\n",
            "corvid_connections{state=\"established\"} 2\n",
            "corvid_hash_queue_depth 4\n",
            "corvid_pieces_have 5\n",
            "corvid_pieces 9\n",
            "corvid_pieces_verified_total 1\n",
            "corvid_pieces_failed_total 1\n",
            "corvid_piece_latency_seconds_bucket{le=\"0.004\"} 1\n",
            "corvid_piece_latency_seconds_bucket{le=\"0.002\"} 0\n",
            "corvid_piece_latency_seconds_count 1\n",
            "corvid_connections_closed_total{reason=\"peer_closed\"} 2\n",
            "corvid_announces_total{event=\"started\",result=\"ok\"} 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Detached: the last numbers stay even when the source moves on or goes.
        m.detach();
        live.lock().bytes_from_seeder = 1;
        assert!(encode(&reg).contains("corvid_bytes_down_total{source=\"seeder\"} 100\n"));
    }

    #[test]
    fn server_answers_get_metrics_and_refuses_the_rest() {
        let mut reg = Registry::default();
        let m = NodeMetrics::register(&mut reg);
        m.piece_failed();
        let srv = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(reg)).unwrap();
        let addr = srv.local_addr();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("corvid_pieces_failed_total 1\n"), "{ok}");
        let missing = get(addr, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(addr, "POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let junk = get(addr, "\x01\x02 garbage\r\n\r\n");
        assert!(junk.starts_with("HTTP/1.1 400"), "{junk}");
        // A client that sends nothing is dropped at the deadline; the next scrape works.
        let idle = TcpStream::connect(addr).unwrap();
        let again = get(addr, "GET / HTTP/1.0\r\n\r\n");
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        drop(idle);
        drop(srv);
        assert!(TcpStream::connect(addr).is_err(), "stopped on drop");
    }
}
