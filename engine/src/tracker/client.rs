//! Talking to a tracker: [`announce`] and [`scrape`] as blocking HTTP/1.0 GETs over a
//! `TcpStream`, and [`Announcer`], the sans-IO schedule of when to announce next.
//!
//! The requests are one-shot and low-rate (one per interval per torrent), so a blocking
//! socket with a deadline is simpler and safer than bringing an HTTP stack: the response
//! is read whole into a buffer capped at [`MAX_RESPONSE`], its head parsed with
//! `httparse`, its body with the strict bencode decoder. Only `http://` is supported; a
//! deploy's tracker lives inside the fleet.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::proto::{
    announce_query, parse_announce_response, parse_scrape_response, AnnounceRequest,
    AnnounceResponse, Event, ScrapeEntry,
};
use super::TrackerError;

/// Largest tracker response read, in bytes (head and body); 200 compact peers are 1.2 KB,
/// so this is generous for dictionary lists and still bounded.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Announces to the tracker at `url` (`http://host[:port]/announce`), waiting at most
/// `timeout` in all (name resolution excepted: it is the system resolver's, blocking).
/// A `failure reason` from the tracker is [`TrackerError::Failure`].
pub fn announce(
    url: &str,
    req: &AnnounceRequest,
    timeout: Duration,
) -> Result<AnnounceResponse, TrackerError> {
    announce_from(url, req, timeout, None)
}

/// [`announce`] from local address `from` (a peer listening on one address of a
/// multi-homed host): the tracker hands out the address an announce comes from, and the
/// route to the tracker may pick another one, which the peer does not listen on.
pub fn announce_from(
    url: &str,
    req: &AnnounceRequest,
    timeout: Duration,
    from: Option<IpAddr>,
) -> Result<AnnounceResponse, TrackerError> {
    let body = http_get(url, &announce_query(req), timeout, from)?;
    match parse_announce_response(&body) {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(reason)) => Err(TrackerError::Failure {
            url: url.to_owned(),
            reason,
        }),
        Err(source) => Err(TrackerError::Proto {
            url: url.to_owned(),
            source,
        }),
    }
}

/// Scrapes `hashes` from the tracker whose announce URL is `announce_url`; the scrape URL
/// is derived by the usual convention (last path segment `announce` becomes `scrape`).
pub fn scrape(
    announce_url: &str,
    hashes: &[[u8; 20]],
    timeout: Duration,
) -> Result<Vec<([u8; 20], ScrapeEntry)>, TrackerError> {
    let scrape_url = scrape_url(announce_url)?;
    let body = http_get(
        &scrape_url,
        &super::proto::scrape_query(hashes),
        timeout,
        None,
    )?;
    match parse_scrape_response(&body) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(reason)) => Err(TrackerError::Failure {
            url: scrape_url,
            reason,
        }),
        Err(source) => Err(TrackerError::Proto {
            url: scrape_url,
            source,
        }),
    }
}

/// The scrape URL for an announce URL, per the convention every tracker follows.
pub fn scrape_url(announce_url: &str) -> Result<String, TrackerError> {
    let (base, query) = match announce_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (announce_url, None),
    };
    let slash = base.rfind('/').unwrap_or(0);
    let Some(rest) = base[slash..].strip_prefix("/announce") else {
        return Err(TrackerError::BadUrl {
            url: announce_url.to_owned(),
            why: "last path segment does not start with \"announce\", so it has no scrape URL",
        });
    };
    let mut out = format!("{}/scrape{rest}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A TCP connection to `to` from local address `from` (the kernel picks the port),
/// within `timeout`. std only connects from the address the route picks, so this binds a
/// socket of its own first.
fn connect_from(from: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket takes no pointers; the result is checked.
    let raw = check(unsafe { libc::socket(family, kind, 0) })?;
    // SAFETY: `raw` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let (local, local_len) = sockaddr(SocketAddr::new(from, 0));
    // SAFETY: `local` is a valid sockaddr of `local_len` bytes, alive for the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&*local as *const libc::sockaddr_in6).cast(),
            local_len,
        )
    })?;
    let (remote, remote_len) = sockaddr(to);
    // SAFETY: as for bind.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&*remote as *const libc::sockaddr_in6).cast(),
            remote_len,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one live pollfd, count 1.
        if check(unsafe { libc::poll(&mut p, 1, ms) })? == 0 {
            return Err(std::io::Error::from(ErrorKind::TimedOut));
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are live and `len` is `err`'s size.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// `addr` as a `sockaddr_in`/`sockaddr_in6` in a buffer big enough for either, and its
/// length.
fn sockaddr(addr: SocketAddr) -> (Box<libc::sockaddr_in6>, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_in6 (and, in its prefix, sockaddr_in).
    let mut buf: Box<libc::sockaddr_in6> = Box::new(unsafe { std::mem::zeroed() });
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in is smaller than sockaddr_in6 and both are plain data;
            // the write stays inside `buf`.
            unsafe { std::ptr::write((&mut *buf as *mut libc::sockaddr_in6).cast(), sin) };
            (
                buf,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            buf.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            buf.sin6_port = a.port().to_be();
            buf.sin6_addr.s6_addr = a.ip().octets();
            buf.sin6_flowinfo = a.flowinfo();
            buf.sin6_scope_id = a.scope_id();
            (
                buf,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// A parsed `http://` URL: where to connect, what to put in `Host:`, and the target.
#[derive(Debug, PartialEq, Eq)]
struct HttpUrl<'a> {
    host: &'a str,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: &'a str,
    /// Path and query, starting with `/`.
    target: &'a str,
}

/// The host and port an `http://` tracker URL names (for a node that needs to know
/// which of its addresses the tracker sees: see `node::racks`).
pub(crate) fn url_host_port(url: &str) -> Option<(&str, u16)> {
    parse_url(url).ok().map(|u| (u.host, u.port))
}

fn parse_url(url: &str) -> Result<HttpUrl<'_>, TrackerError> {
    let bad = |why| TrackerError::BadUrl {
        url: url.to_owned(),
        why,
    };
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(TrackerError::HttpsUnsupported(url.to_owned()));
    }
    if !lower.starts_with("http://") {
        return Err(bad("only http:// URLs are supported"));
    }
    let rest = &url[7..];
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(_) => return Err(bad("query without a path")),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains('@') {
        return Err(bad("credentials in tracker URLs are not supported"));
    }
    if target.contains('#') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("fragment, space or control character in path"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in host"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None if after.is_empty() => (h, 80),
            None => return Err(bad("junk after ]")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None => (authority, 80),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(HttpUrl {
        host,
        port,
        authority,
        target,
    })
}

/// Connects to the first of the tracker's addresses that answers, from `from` where
/// that address can reach it.
fn connect(
    url: &str,
    u: &HttpUrl<'_>,
    from: Option<IpAddr>,
    remaining: &dyn Fn() -> Result<Duration, TrackerError>,
) -> Result<TcpStream, TrackerError> {
    let io = |context, source| TrackerError::Io {
        url: url.to_owned(),
        context,
        source,
    };
    let addrs: Vec<SocketAddr> = (u.host, u.port)
        .to_socket_addrs()
        .map_err(|e| io("resolve host", e))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for a in addrs {
        let connected = match from {
            // Where the tracker cannot be reached from that address (a peer listening
            // on loopback, a remote tracker), the route's own address is better than none.
            Some(ip) if ip.is_ipv4() == a.is_ipv4() => match connect_from(ip, a, remaining()?) {
                Err(e) if e.kind() != ErrorKind::TimedOut => {
                    TcpStream::connect_timeout(&a, remaining()?)
                }
                r => r,
            },
            _ => TcpStream::connect_timeout(&a, remaining()?),
        };
        match connected {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (stream, last_err) {
        (Some(s), _) => Ok(s),
        (None, Some(e)) if e.kind() == ErrorKind::TimedOut => {
            Err(TrackerError::Timeout(url.to_owned()))
        }
        (None, Some(e)) => Err(io("connect", e)),
        (None, None) => Err(io(
            "resolve host",
            std::io::Error::new(ErrorKind::NotFound, "no addresses"),
        )),
    }
}

/// GETs `url` with `query` appended and returns the body of a 200 response. A non-200
/// whose body is a bencoded failure is returned as the body too, so the caller reports
/// the tracker's reason rather than a bare status.
fn http_get(
    url: &str,
    query: &str,
    timeout: Duration,
    from: Option<IpAddr>,
) -> Result<Vec<u8>, TrackerError> {
    let u = parse_url(url)?;
    let deadline = Instant::now() + timeout;
    let io = |context, source| TrackerError::Io {
        url: url.to_owned(),
        context,
        source,
    };
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| TrackerError::Timeout(url.to_owned()))
    };

    let mut stream = connect(url, &u, from, &remaining)?;

    let sep = if u.target.contains('?') { '&' } else { '?' };
    let request = format!(
        "GET {}{sep}{query} HTTP/1.0\r\nHost: {}\r\nUser-Agent: corvid/{}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        u.target,
        u.authority,
        env!("CARGO_PKG_VERSION"),
    );
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(|e| io("set timeout", e))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| io_or_timeout(url, "send request", e))?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    // Bounded by the deadline (each read waits at most the remaining time) and by
    // MAX_RESPONSE (each iteration either grows the buffer or ends).
    loop {
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(|e| io("set timeout", e))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if buf.len() + n > MAX_RESPONSE {
                    return Err(TrackerError::ResponseTooLarge {
                        url: url.to_owned(),
                        limit: MAX_RESPONSE,
                    });
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(done) = complete_len(&buf) {
                    buf.truncate(done);
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_or_timeout(url, "read response", e)),
        }
    }
    split_response(url, &buf)
}

fn io_or_timeout(url: &str, context: &'static str, e: std::io::Error) -> TrackerError {
    match e.kind() {
        // A socket timeout reports as WouldBlock on Linux.
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TrackerError::Timeout(url.to_owned()),
        _ => TrackerError::Io {
            url: url.to_owned(),
            context,
            source: e,
        },
    }
}

/// If `buf` holds a complete response with a Content-Length, its total length; a
/// response without one ends at EOF.
fn complete_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = resp.parse(buf) else {
        return None;
    };
    let len = content_length(resp.headers)?;
    let total = head.checked_add(len)?;
    (buf.len() >= total).then_some(total)
}

fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Splits a whole HTTP response into its body, checking status and framing.
fn split_response(url: &str, buf: &[u8]) -> Result<Vec<u8>, TrackerError> {
    let bad = |why: String| TrackerError::BadHttp {
        url: url.to_owned(),
        why,
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(bad("connection closed inside the head".into()))
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    if resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && !h.value.eq_ignore_ascii_case(b"identity")
    }) {
        // We send HTTP/1.0, to which a server must not answer chunked.
        return Err(bad("transfer-encoding on an HTTP/1.0 response".into()));
    }
    let mut body = &buf[head..];
    if let Some(len) = content_length(resp.headers) {
        if body.len() < len {
            return Err(bad(format!(
                "body is {} bytes, Content-Length says {len}",
                body.len()
            )));
        }
        body = &body[..len];
    }
    if status != 200 && !body.starts_with(b"d14:failure reason") {
        return Err(TrackerError::HttpStatus {
            url: url.to_owned(),
            status,
        });
    }
    Ok(body.to_vec())
}

/// How long to wait after failed announces: `initial`, doubling per consecutive failure,
/// capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl BackoffPolicy {
    /// The wait after the `failures`-th consecutive failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// When to announce, and with which event, for one torrent on one tracker. Sans-IO: the
/// runtime asks [`Announcer::next_due`], performs the announce, and reports the outcome.
///
/// The first announce is `started`; regular ones follow the tracker's `interval`; a
/// [`Announcer::completed`] or [`Announcer::stopped`] is due at once (BEP 3 wants those
/// sent when they happen; `min interval` governs only regular announces). Failures back
/// off per [`BackoffPolicy`], keeping the pending event so it is not lost.
#[derive(Debug, Clone)]
pub struct Announcer {
    policy: BackoffPolicy,
    next_due: Instant,
    failures: u32,
    pending: Event,
    stopped_done: bool,
    interval: Option<Duration>,
    min_interval: Option<Duration>,
    last_success: Option<Instant>,
}

impl Announcer {
    /// A schedule whose first announce (`started`) is due at `now`.
    pub fn new(now: Instant, policy: BackoffPolicy) -> Self {
        Announcer {
            policy,
            next_due: now,
            failures: 0,
            pending: Event::Started,
            stopped_done: false,
            interval: None,
            min_interval: None,
            last_success: None,
        }
    }

    /// When the next announce should go out.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Whether an announce should go out at `now`. False for good once `stopped` was
    /// delivered.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.stopped_done && now >= self.next_due
    }

    /// The event to put in the announce about to be sent.
    pub fn event(&self) -> Event {
        self.pending
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the `stopped` announce has been delivered (nothing more to send).
    pub fn is_finished(&self) -> bool {
        self.stopped_done
    }

    /// The download finished: announce `completed` now (unless a stop is pending).
    pub fn completed(&mut self, now: Instant) {
        if matches!(self.pending, Event::None) {
            self.pending = Event::Completed;
            self.next_due = now;
        }
    }

    /// Leaving the swarm: announce `stopped` now.
    pub fn stopped(&mut self, now: Instant) {
        self.pending = Event::Stopped;
        self.failures = 0;
        self.next_due = now;
    }

    /// The announce that carried `sent` succeeded at `now` with `resp`.
    pub fn on_success(&mut self, now: Instant, sent: Event, resp: &AnnounceResponse) {
        self.failures = 0;
        self.last_success = Some(now);
        let interval = Duration::from_secs(u64::from(resp.interval.max(1)));
        let min = resp.min_interval.map(|m| Duration::from_secs(u64::from(m)));
        self.interval = Some(interval);
        self.min_interval = min;
        if sent == Event::Stopped {
            self.stopped_done = true;
        }
        if sent == self.pending {
            self.pending = Event::None;
            self.next_due = now + interval.max(min.unwrap_or(Duration::ZERO));
        } else {
            // Another event was queued while this one was in flight: send it now.
            self.next_due = now;
        }
    }

    /// The announce failed at `now`; returns the wait before the retry.
    pub fn on_failure(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let mut delay = self.policy.delay(self.failures);
        // Never retry sooner than the tracker allowed, if it ever told us.
        if let (Some(min), Some(last)) = (self.min_interval, self.last_success) {
            let earliest = (last + min).saturating_duration_since(now);
            delay = delay.max(earliest);
        }
        self.next_due = now + delay;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multi-homed peer listens on 127.0.0.2 and announces to a tracker on 127.0.0.1:
    /// from the route's address (127.0.0.1) the tracker would hand out an address the
    /// peer does not listen on (every other peer's dial refused, the opentracker symptom
    /// of issue 15); announced from its listen address, it is handed out there.
    #[test]
    fn an_announce_from_a_given_address_is_handed_out_at_that_address() {
        use crate::tracker::{TrackerConfig, TrackerServer};
        let t =
            TrackerServer::bind("127.0.0.1:0".parse().unwrap(), TrackerConfig::default()).unwrap();
        let url = format!("http://{}/announce", t.local_addr());
        let hash = [7u8; 20];
        let wait = Duration::from_secs(5);
        let multi = AnnounceRequest::new(hash, [1u8; 20], 6881, 100);
        let from: IpAddr = "127.0.0.2".parse().unwrap();
        announce_from(&url, &multi, wait, Some(from)).unwrap();
        let plain = AnnounceRequest::new(hash, [2u8; 20], 6882, 100);
        let resp = announce(&url, &plain, wait).unwrap();
        let seen: Vec<SocketAddr> = resp.peers.iter().map(|p| p.addr).collect();
        assert_eq!(seen, ["127.0.0.2:6881".parse::<SocketAddr>().unwrap()]);
        // The other way round: the plain peer is at the route's address.
        let resp = announce_from(&url, &multi, wait, Some(from)).unwrap();
        let seen: Vec<SocketAddr> = resp.peers.iter().map(|p| p.addr).collect();
        assert_eq!(seen, ["127.0.0.1:6882".parse::<SocketAddr>().unwrap()]);
        t.shutdown();
    }

    #[test]
    fn url_parsing() {
        let u = parse_url("http://127.0.0.1:8998/announce").unwrap();
        assert_eq!(
            u,
            HttpUrl {
                host: "127.0.0.1",
                port: 8998,
                authority: "127.0.0.1:8998",
                target: "/announce"
            }
        );
        let u = parse_url("HTTP://[::1]/a?passkey=x").unwrap();
        assert_eq!((u.host, u.port, u.target), ("::1", 80, "/a?passkey=x"));
        assert_eq!(parse_url("http://h").unwrap().target, "/");
        assert!(matches!(
            parse_url("https://t.example/announce"),
            Err(TrackerError::HttpsUnsupported(_))
        ));
        let e = parse_url("https://t.example/announce")
            .unwrap_err()
            .to_string();
        assert!(e.contains("https trackers are not supported"), "{e}");
        for bad in [
            "udp://t:1/announce",
            "http://",
            "http://:80/",
            "http://h:99999/",
            "http://h:x/",
            "http://u@h/",
            "http://h/a b",
            "http://[::1/",
            "http://h?x",
            "",
        ] {
            assert!(
                matches!(parse_url(bad), Err(TrackerError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn scrape_url_convention() {
        assert_eq!(
            scrape_url("http://t:1/announce").unwrap(),
            "http://t:1/scrape"
        );
        assert_eq!(
            scrape_url("http://t:1/x/announce.php?k=1").unwrap(),
            "http://t:1/x/scrape.php?k=1"
        );
        assert!(scrape_url("http://t:1/a").is_err());
    }

    #[test]
    fn response_splitting() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhelloTRAILING";
        assert_eq!(split_response("u", ok).unwrap(), b"hello");
        assert_eq!(complete_len(ok), Some(ok.len() - 8));
        assert_eq!(
            complete_len(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhel"),
            None
        );
        let eof = b"HTTP/1.1 200 OK\r\n\r\nd8:intervali1ee";
        assert_eq!(split_response("u", eof).unwrap(), b"d8:intervali1ee");
        let fail = b"HTTP/1.0 400 Bad\r\n\r\nd14:failure reason3:nope";
        assert_eq!(
            split_response("u", fail).unwrap(),
            b"d14:failure reason3:nope"
        );
        assert!(matches!(
            split_response("u", b"HTTP/1.0 500 X\r\n\r\n<html>"),
            Err(TrackerError::HttpStatus { status: 500, .. })
        ));
        assert!(matches!(
            split_response("u", b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
            Err(TrackerError::BadHttp { .. })
        ));
        assert!(matches!(
            split_response(
                "u",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc"
            ),
            Err(TrackerError::BadHttp { .. })
        ));
        assert!(matches!(
            split_response("u", b"\x00garbage"),
            Err(TrackerError::BadHttp { .. })
        ));
        assert!(matches!(
            split_response("u", b"HTTP/1.0 200 OK\r\n"),
            Err(TrackerError::BadHttp { .. })
        ));
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let p = BackoffPolicy::default();
        let got: Vec<u64> = (1..=9).map(|f| p.delay(f).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(60));
    }

    fn resp(interval: u32, min: Option<u32>) -> AnnounceResponse {
        AnnounceResponse {
            interval,
            min_interval: min,
            ..AnnounceResponse::default()
        }
    }

    #[test]
    fn announcer_schedule() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut a = Announcer::new(t0, BackoffPolicy::default());
        assert!(a.is_due(t0));
        assert_eq!(a.event(), Event::Started);
        // Started fails twice: backoff 1 s then 2 s, event kept.
        assert_eq!(a.on_failure(t0), Duration::from_secs(1));
        assert!(!a.is_due(t0));
        assert!(a.is_due(s(1)));
        assert_eq!(a.on_failure(s(1)), Duration::from_secs(2));
        assert_eq!(a.next_due(), s(3));
        assert_eq!(a.event(), Event::Started);
        // Success: regular announces every interval.
        a.on_success(s(3), Event::Started, &resp(30, Some(10)));
        assert_eq!(a.failures(), 0);
        assert_eq!(a.event(), Event::None);
        assert_eq!(a.next_due(), s(33));
        // A failure right after success waits at least min interval since that success.
        assert_eq!(a.on_failure(s(4)), Duration::from_secs(9));
        assert_eq!(a.next_due(), s(13));
        a.on_success(s(13), Event::None, &resp(30, Some(10)));
        // Completed is due at once and only sent once.
        a.completed(s(20));
        assert!(a.is_due(s(20)));
        assert_eq!(a.event(), Event::Completed);
        a.on_success(s(20), Event::Completed, &resp(30, None));
        assert_eq!(a.event(), Event::None);
        assert_eq!(a.next_due(), s(50));
        // A stop queued while a regular announce is in flight is sent right after it.
        a.stopped(s(50));
        a.on_success(s(51), Event::None, &resp(30, None));
        assert_eq!(a.event(), Event::Stopped);
        assert!(a.is_due(s(51)));
        a.on_success(s(51), Event::Stopped, &resp(30, None));
        assert!(a.is_finished());
        assert!(!a.is_due(s(1000)));
    }

    #[test]
    fn interval_min_interval_larger_wins() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0, BackoffPolicy::default());
        a.on_success(t0, Event::Started, &resp(5, Some(20)));
        assert_eq!(a.next_due(), t0 + Duration::from_secs(20));
        let mut b = Announcer::new(t0, BackoffPolicy::default());
        b.on_success(t0, Event::Started, &resp(0, None));
        assert_eq!(
            b.next_due(),
            t0 + Duration::from_secs(1),
            "interval 0 is clamped"
        );
    }
}
