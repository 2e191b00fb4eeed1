//! The tracker protocol as pure functions: HTTP request heads and announce/scrape query
//! strings in, typed requests out; typed responses in, bencoded bytes out (and back).
//!
//! Contract: no sockets, no clock, no allocation proportional to anything but the bytes
//! given. Everything here is reached by strangers' bytes, so every failure is a
//! [`ProtoError`] naming the field that was wrong, never a panic. Both the server (which
//! parses requests, encodes responses) and the client (which encodes requests, parses
//! responses) use this module, so the two sides are tested against each other.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

mod response;
pub use response::{
    encode_announce_response, encode_failure, encode_scrape_response, parse_announce_response,
    parse_scrape_response,
};

/// Longest request line (method, target, version) the server accepts, in bytes.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest request head (request line plus headers) the server accepts, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers a request may carry; more is a header flood.
pub const MAX_HEADERS: usize = 32;
/// Most info-hashes one scrape may ask about.
pub const MAX_SCRAPE_HASHES: usize = 128;

/// Why a request or a response is unacceptable; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    RequestLineTooLong,
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("malformed HTTP request head: {0}")]
    BadHttp(String),
    #[error("method {0:?} not allowed (only GET)")]
    BadMethod(String),
    #[error("unknown path {0:?} (expected /announce or /scrape)")]
    UnknownPath(String),
    #[error("bad percent-escape in query parameter {0:?}")]
    BadEscape(String),
    #[error("missing query parameter {0:?}")]
    Missing(&'static str),
    #[error("query parameter {0:?} given more than once")]
    Duplicate(&'static str),
    #[error("query parameter {name:?} must be exactly 20 bytes, got {len}")]
    BadHashLength { name: &'static str, len: usize },
    #[error("query parameter {0:?} is not a valid number in range")]
    BadNumber(&'static str),
    #[error("query parameter {0:?} must be 40 hex digits")]
    BadHex(&'static str),
    #[error("query parameter event has unknown value {0:?}")]
    BadEvent(String),
    #[error("too many info_hash parameters in scrape (at most {MAX_SCRAPE_HASHES})")]
    TooManyHashes,
    #[error("full scrape (no info_hash) is not supported")]
    FullScrape,
    #[error("tracker response: {0}")]
    BadResponse(String),
}

/// The `event` of an announce: what just happened to the announcing peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Event {
    /// A regular, periodic announce.
    #[default]
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    /// The query value, or `None` for a regular announce (which sends no `event`).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
}

/// One announce, as a client sends it and as the server parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    /// Ask for the BEP 23 compact peer list (every modern client does).
    pub compact: bool,
    /// How many peers the client would like; `None` leaves it to the tracker.
    pub numwant: Option<u32>,
    /// The address the client claims; the server records it only if its operator trusts
    /// the parameter (`TrackerConfig::trust_ip_param`).
    pub ip: Option<IpAddr>,
    /// corvid's private-swarm extension `auth`: hex of HMAC-SHA1(secret, info_hash ||
    /// peer_id) (see `peer::auth`). Other trackers ignore the unknown parameter.
    pub auth: Option<[u8; 20]>,
}

impl AnnounceRequest {
    /// A `started` announce with compact peers and nothing transferred yet.
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20], port: u16, left: u64) -> Self {
        AnnounceRequest {
            info_hash,
            peer_id,
            port,
            uploaded: 0,
            downloaded: 0,
            left,
            event: Event::Started,
            compact: true,
            numwant: None,
            ip: None,
            auth: None,
        }
    }
}

/// A peer as a tracker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// Only present in non-compact (dictionary) peer lists.
    pub peer_id: Option<[u8; 20]>,
}

/// A successful announce response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceResponse {
    /// Seconds the tracker wants between regular announces.
    pub interval: u32,
    /// Seconds the client must at least wait before announcing again, if the tracker says.
    pub min_interval: Option<u32>,
    /// Seeders in the swarm.
    pub complete: Option<u64>,
    /// Leechers in the swarm.
    pub incomplete: Option<u64>,
    pub peers: Vec<PeerInfo>,
    pub warning: Option<String>,
    pub tracker_id: Option<Vec<u8>>,
}

/// Swarm counts for one info-hash, as scrape reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrapeEntry {
    pub complete: u64,
    pub incomplete: u64,
    pub downloaded: u64,
}

/// What a request to the tracker asks for, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerRequest {
    Announce(AnnounceRequest),
    Scrape(Vec<[u8; 20]>),
}

/// The result of looking at the bytes of a request received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// Not a complete head yet, and nothing wrong so far: read more.
    Partial,
    /// A complete head; `target` is the request target (path and query).
    Complete { target: String },
}

/// Looks at the bytes of an HTTP request received so far. Enforces the size limits
/// ([`MAX_REQUEST_LINE`], [`MAX_HEAD`], [`MAX_HEADERS`]) before the head is complete, so a
/// caller can stop reading from a hostile peer as soon as it is over a limit.
pub fn parse_head(buf: &[u8]) -> Result<Head, ProtoError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    match line_end {
        None if buf.len() > MAX_REQUEST_LINE => return Err(ProtoError::RequestLineTooLong),
        Some(n) if n > MAX_REQUEST_LINE => return Err(ProtoError::RequestLineTooLong),
        _ => {}
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                Err(ProtoError::HeadTooLong)
            } else {
                Ok(Head::Partial)
            }
        }
        Ok(httparse::Status::Complete(n)) => {
            if n > MAX_HEAD {
                return Err(ProtoError::HeadTooLong);
            }
            let method = req.method.unwrap_or("");
            if method != "GET" {
                return Err(ProtoError::BadMethod(truncated(method)));
            }
            let target = req.path.unwrap_or("");
            Ok(Head::Complete {
                target: target.to_owned(),
            })
        }
        Err(e) => Err(ProtoError::BadHttp(e.to_string())),
    }
}

/// Parses a request target (`/announce?...` or `/scrape?...`) into a validated request.
pub fn parse_target(target: &str) -> Result<TrackerRequest, ProtoError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    match path {
        "/announce" => parse_announce_query(query).map(TrackerRequest::Announce),
        "/scrape" => parse_scrape_query(query).map(TrackerRequest::Scrape),
        other => Err(ProtoError::UnknownPath(truncated(other))),
    }
}

/// Parses the query string of an announce (BEP 3, with BEP 23 `compact`).
pub fn parse_announce_query(query: &str) -> Result<AnnounceRequest, ProtoError> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut uploaded = None;
    let mut downloaded = None;
    let mut left = None;
    let mut event = None;
    let mut compact = None;
    let mut numwant = None;
    let mut ip = None;
    let mut auth = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_val) = pair.split_once('=').unwrap_or((pair, ""));
        let key =
            percent_decode(raw_key).ok_or_else(|| ProtoError::BadEscape(truncated(raw_key)))?;
        let name: &'static str = match key.as_slice() {
            b"info_hash" => "info_hash",
            b"peer_id" => "peer_id",
            b"port" => "port",
            b"uploaded" => "uploaded",
            b"downloaded" => "downloaded",
            b"left" => "left",
            b"event" => "event",
            b"compact" => "compact",
            b"numwant" => "numwant",
            b"ip" => "ip",
            b"auth" => "auth",
            // Unknown parameters (key, corrupt, supportcrypto, ...) are ignored, as every
            // tracker does; clients add their own.
            _ => continue,
        };
        let val = percent_decode(raw_val).ok_or_else(|| ProtoError::BadEscape(name.to_owned()))?;
        macro_rules! set_once {
            ($slot:ident, $v:expr) => {{
                if $slot.is_some() {
                    return Err(ProtoError::Duplicate(name));
                }
                $slot = Some($v);
            }};
        }
        match name {
            "info_hash" => set_once!(info_hash, hash20(name, &val)?),
            "peer_id" => set_once!(peer_id, hash20(name, &val)?),
            "port" => set_once!(port, number::<u16>(name, &val)?),
            "uploaded" => set_once!(uploaded, number::<u64>(name, &val)?),
            "downloaded" => set_once!(downloaded, number::<u64>(name, &val)?),
            "left" => set_once!(left, number::<u64>(name, &val)?),
            "numwant" => set_once!(numwant, number::<u32>(name, &val)?),
            "compact" => set_once!(compact, number::<u8>(name, &val)? != 0),
            "auth" => set_once!(auth, hex20(name, &val)?),
            "event" => set_once!(
                event,
                match val.as_slice() {
                    b"started" => Event::Started,
                    b"completed" => Event::Completed,
                    b"stopped" => Event::Stopped,
                    // Some clients send `event=` or `event=empty` for a regular announce.
                    b"" | b"empty" => Event::None,
                    other => {
                        return Err(ProtoError::BadEvent(truncated(&String::from_utf8_lossy(
                            other,
                        ))));
                    }
                }
            ),
            // A claimed address that does not parse is ignored rather than fatal: it is
            // only advisory, and only honoured where the operator trusts it.
            "ip" => set_once!(
                ip,
                std::str::from_utf8(&val)
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok())
            ),
            _ => {}
        }
    }
    Ok(AnnounceRequest {
        info_hash: info_hash.ok_or(ProtoError::Missing("info_hash"))?,
        peer_id: peer_id.ok_or(ProtoError::Missing("peer_id"))?,
        port: port.ok_or(ProtoError::Missing("port"))?,
        // BEP 3 makes these required, but many trackers default them; `left` matters for
        // seeder counts, so it is required, the byte counters are not.
        uploaded: uploaded.unwrap_or(0),
        downloaded: downloaded.unwrap_or(0),
        left: left.ok_or(ProtoError::Missing("left"))?,
        event: event.unwrap_or_default(),
        // Compact is the default answer: only an explicit `compact=0` gets dictionaries.
        compact: compact.unwrap_or(true),
        numwant,
        ip: ip.flatten(),
        auth,
    })
}

/// Parses the query string of a scrape: one or more `info_hash` parameters.
pub fn parse_scrape_query(query: &str) -> Result<Vec<[u8; 20]>, ProtoError> {
    let mut hashes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_val) = pair.split_once('=').unwrap_or((pair, ""));
        let key =
            percent_decode(raw_key).ok_or_else(|| ProtoError::BadEscape(truncated(raw_key)))?;
        if key != b"info_hash" {
            continue;
        }
        if hashes.len() == MAX_SCRAPE_HASHES {
            return Err(ProtoError::TooManyHashes);
        }
        let val =
            percent_decode(raw_val).ok_or_else(|| ProtoError::BadEscape("info_hash".into()))?;
        let h = hash20("info_hash", &val)?;
        if !hashes.contains(&h) {
            hashes.push(h);
        }
    }
    if hashes.is_empty() {
        return Err(ProtoError::FullScrape);
    }
    Ok(hashes)
}

/// Decodes `%XX` escapes and `+` (as space, per form encoding). A `%` not followed by two
/// hex digits is an error rather than passed through, so a truncated binary hash cannot
/// silently become a different 20 bytes.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).and_then(|&c| hex_val(c))?;
                let lo = b.get(i + 2).and_then(|&c| hex_val(c))?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Appends `bytes` percent-encoded: unreserved characters (RFC 3986) as is, the rest as
/// `%XX`, which is what trackers expect for binary info-hashes and peer ids.
pub fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in bytes {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 15)] as char);
        }
    }
}

/// The query string (without `?`) of an announce.
pub fn announce_query(req: &AnnounceRequest) -> String {
    let mut q = String::with_capacity(256);
    q.push_str("info_hash=");
    percent_encode_into(&mut q, &req.info_hash);
    q.push_str("&peer_id=");
    percent_encode_into(&mut q, &req.peer_id);
    q.push_str(&format!(
        "&port={}&uploaded={}&downloaded={}&left={}&compact={}",
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        u8::from(req.compact)
    ));
    if let Some(ev) = req.event.as_str() {
        q.push_str("&event=");
        q.push_str(ev);
    }
    if let Some(n) = req.numwant {
        q.push_str(&format!("&numwant={n}"));
    }
    if let Some(ip) = req.ip {
        q.push_str("&ip=");
        percent_encode_into(&mut q, ip.to_string().as_bytes());
    }
    if let Some(a) = req.auth {
        q.push_str("&auth=");
        push_hex(&mut q, &a);
    }
    q
}

fn push_hex(q: &mut String, bytes: &[u8]) {
    for b in bytes {
        q.push_str(&format!("{b:02x}"));
    }
}

/// The `peer_id` and `auth` a scrape of a private tracker carries (corvid's extension;
/// one info-hash per scrape, since the proof covers one). Missing or malformed: `None`.
pub fn parse_scrape_auth(query: &str) -> Option<([u8; 20], [u8; 20])> {
    let mut peer_id = None;
    let mut auth = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=')?;
        let v = percent_decode(v)?;
        match k {
            "peer_id" => peer_id = Some(hash20("peer_id", &v).ok()?),
            "auth" => auth = Some(hex20("auth", &v).ok()?),
            _ => {}
        }
    }
    Some((peer_id?, auth?))
}

/// The query string (without `?`) of a private tracker's scrape for one info-hash.
pub fn scrape_query_with_auth(info_hash: &[u8; 20], peer_id: &[u8; 20], auth: &[u8; 20]) -> String {
    let mut q = scrape_query(&[*info_hash]);
    q.push_str("&peer_id=");
    percent_encode_into(&mut q, peer_id);
    q.push_str("&auth=");
    push_hex(&mut q, auth);
    q
}

/// The query string (without `?`) of a scrape for `hashes`.
pub fn scrape_query(hashes: &[[u8; 20]]) -> String {
    let mut q = String::with_capacity(hashes.len() * 70);
    for (i, h) in hashes.iter().enumerate() {
        if i > 0 {
            q.push('&');
        }
        q.push_str("info_hash=");
        percent_encode_into(&mut q, h);
    }
    q
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hash20(name: &'static str, v: &[u8]) -> Result<[u8; 20], ProtoError> {
    <[u8; 20]>::try_from(v).map_err(|_| ProtoError::BadHashLength { name, len: v.len() })
}

/// 40 hex digits (either case) into 20 bytes.
fn hex20(name: &'static str, v: &[u8]) -> Result<[u8; 20], ProtoError> {
    if v.len() != 40 {
        return Err(ProtoError::BadHex(name));
    }
    let mut out = [0u8; 20];
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        let hi = hex_val(pair[0]).ok_or(ProtoError::BadHex(name))?;
        let lo = hex_val(pair[1]).ok_or(ProtoError::BadHex(name))?;
        *o = hi << 4 | lo;
    }
    Ok(out)
}

/// Parses a decimal number; anything else (sign, spaces, overflow, empty) is an error.
fn number<T: std::str::FromStr>(name: &'static str, v: &[u8]) -> Result<T, ProtoError> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ProtoError::BadNumber(name));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<T>().ok())
        .ok_or(ProtoError::BadNumber(name))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Cuts attacker-supplied text that is echoed in an error to a short prefix.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode;

    const H: [u8; 20] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x00, 0xff, b'a', b'%', b'&', b'=', b'+',
        b' ', 0x7f, 0x80, 0x01, 0x02,
    ];
    const P: [u8; 20] = *b"-CV0001-abcdefghijkl";

    #[test]
    fn auth_round_trips_and_bad_hex_is_refused() {
        let mut req = AnnounceRequest::new(H, P, 6881, 30);
        req.auth = Some([0xab; 20]);
        let q = announce_query(&req);
        assert!(q.contains(&format!("&auth={}", "ab".repeat(20))));
        assert_eq!(parse_announce_query(&q).unwrap().auth, Some([0xab; 20]));
        let short = q.replace(&"ab".repeat(20), "abc");
        assert_eq!(
            parse_announce_query(&short),
            Err(ProtoError::BadHex("auth"))
        );
        let bad = q.replace(&"ab".repeat(20), &"zz".repeat(20));
        assert_eq!(parse_announce_query(&bad), Err(ProtoError::BadHex("auth")));
        let sq = scrape_query_with_auth(&H, &P, &[0xcd; 20]);
        assert_eq!(parse_scrape_auth(&sq), Some((P, [0xcd; 20])));
        assert_eq!(parse_scrape_query(&sq), Ok(vec![H]));
        assert_eq!(parse_scrape_auth(&scrape_query(&[H])), None);
    }

    fn good_query() -> String {
        announce_query(&AnnounceRequest {
            info_hash: H,
            peer_id: P,
            port: 6881,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event: Event::Started,
            compact: true,
            numwant: Some(50),
            ip: Some("10.0.0.1".parse().unwrap()),
            auth: None,
        })
    }

    #[test]
    fn announce_query_round_trips() {
        let q = good_query();
        let r = parse_announce_query(&q).unwrap();
        assert_eq!(r.info_hash, H);
        assert_eq!(r.peer_id, P);
        assert_eq!(r.port, 6881);
        assert_eq!((r.uploaded, r.downloaded, r.left), (10, 20, 30));
        assert_eq!(r.event, Event::Started);
        assert!(r.compact);
        assert_eq!(r.numwant, Some(50));
        assert_eq!(r.ip, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn parses_real_client_style_query() {
        // Lower-case escapes, raw unreserved bytes, unknown keys, event missing.
        let q = "info_hash=%124Vx%9a%bc%de%f0%00%ffa%25%26%3d%2b%20%7f%80%01%02\
                 &peer_id=-CV0001-abcdefghijkl&port=1&left=0&key=abc&supportcrypto=1";
        let r = parse_announce_query(q).unwrap();
        assert_eq!(r.info_hash, H);
        assert_eq!(r.event, Event::None);
        assert!(r.compact, "compact is the default");
        assert_eq!(r.uploaded, 0);
    }

    #[test]
    fn target_routing() {
        let t = format!("/announce?{}", good_query());
        assert!(matches!(parse_target(&t), Ok(TrackerRequest::Announce(_))));
        let s = format!("/scrape?{}", scrape_query(&[H, P]));
        assert_eq!(parse_target(&s), Ok(TrackerRequest::Scrape(vec![H, P])));
        assert_eq!(
            parse_target("/etc/passwd"),
            Err(ProtoError::UnknownPath("/etc/passwd".into()))
        );
        assert_eq!(parse_target("/scrape"), Err(ProtoError::FullScrape));
    }

    #[test]
    fn hostile_queries_are_errors() {
        let base = good_query();
        let cases: Vec<(String, ProtoError)> = vec![
            (
                base.replace("info_hash=", "info_hash=%"),
                ProtoError::BadEscape("info_hash".into()),
            ),
            (format!("{base}%"), ProtoError::BadEscape("ip".into())),
            (
                format!("{base}&port=%zz"),
                ProtoError::BadEscape("port".into()),
            ),
            (
                "info_hash=abc&peer_id=-CV0001-abcdefghijkl&port=1&left=0".into(),
                ProtoError::BadHashLength {
                    name: "info_hash",
                    len: 3,
                },
            ),
            (
                format!("info_hash={}&peer_id=short&port=1&left=0", "a".repeat(20)),
                ProtoError::BadHashLength {
                    name: "peer_id",
                    len: 5,
                },
            ),
            (
                format!(
                    "info_hash={}&peer_id={}&port=1&left=0",
                    "a".repeat(21),
                    "b".repeat(20)
                ),
                ProtoError::BadHashLength {
                    name: "info_hash",
                    len: 21,
                },
            ),
            (
                base.replace("port=6881", "port=65536"),
                ProtoError::BadNumber("port"),
            ),
            (
                base.replace("port=6881", "port=-1"),
                ProtoError::BadNumber("port"),
            ),
            (
                base.replace("left=30", "left=99999999999999999999999999999"),
                ProtoError::BadNumber("left"),
            ),
            (
                base.replace("left=30", "left=18446744073709551616"),
                ProtoError::BadNumber("left"),
            ),
            (
                base.replace("left=30", "left="),
                ProtoError::BadNumber("left"),
            ),
            (
                base.replace("left=30", "left=1e3"),
                ProtoError::BadNumber("left"),
            ),
            (
                base.replace("event=started", "event=bogus"),
                ProtoError::BadEvent("bogus".into()),
            ),
            (format!("{base}&port=1"), ProtoError::Duplicate("port")),
            (base.replace("&port=6881", ""), ProtoError::Missing("port")),
            (base.replace("&left=30", ""), ProtoError::Missing("left")),
            ("".into(), ProtoError::Missing("info_hash")),
            (
                base.replace("&peer_id=", "&x="),
                ProtoError::Missing("peer_id"),
            ),
        ];
        for (q, want) in cases {
            assert_eq!(parse_announce_query(&q), Err(want), "query {q:?}");
        }
    }

    #[test]
    fn claimed_ip_that_does_not_parse_is_ignored() {
        let q = good_query().replace("ip=10.0.0.1", "ip=not-an-ip");
        assert_eq!(parse_announce_query(&q).unwrap().ip, None);
    }

    #[test]
    fn scrape_limits() {
        let many: Vec<[u8; 20]> = (0..=MAX_SCRAPE_HASHES as u32)
            .map(|i| {
                let mut h = [0u8; 20];
                h[..4].copy_from_slice(&i.to_be_bytes());
                h
            })
            .collect();
        assert_eq!(
            parse_scrape_query(&scrape_query(&many)),
            Err(ProtoError::TooManyHashes)
        );
        assert_eq!(
            parse_scrape_query(&scrape_query(&many[..MAX_SCRAPE_HASHES])).map(|v| v.len()),
            Ok(MAX_SCRAPE_HASHES)
        );
        assert_eq!(
            parse_scrape_query("info_hash=%4"),
            Err(ProtoError::BadEscape("info_hash".into()))
        );
        assert_eq!(
            parse_scrape_query("info_hash=short"),
            Err(ProtoError::BadHashLength {
                name: "info_hash",
                len: 5
            })
        );
    }

    #[test]
    fn head_parsing_and_limits() {
        let good = b"GET /announce?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..good.len() {
            assert_eq!(parse_head(&good[..cut]), Ok(Head::Partial), "cut at {cut}");
        }
        assert_eq!(
            parse_head(good),
            Ok(Head::Complete {
                target: "/announce?x=1".into()
            })
        );
        // Request line too long, even before it ends.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(parse_head(&long), Err(ProtoError::RequestLineTooLong));
        long.extend_from_slice(b" HTTP/1.0\r\n\r\n");
        assert_eq!(parse_head(&long), Err(ProtoError::RequestLineTooLong));
        // Header flood: too many headers.
        let mut flood = b"GET / HTTP/1.0\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            flood.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        flood.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&flood), Err(ProtoError::BadHttp(_))));
        // Head too long without finishing: a few huge headers.
        let mut big = b"GET / HTTP/1.0\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(b"X-A: ");
            big.extend(std::iter::repeat_n(b'b', 4000));
            big.extend_from_slice(b"\r\n");
        }
        assert_eq!(parse_head(&big), Err(ProtoError::HeadTooLong));
        // Binary garbage and wrong methods.
        assert!(matches!(
            parse_head(b"\x00\x01\x02\xff\r\n\r\n"),
            Err(ProtoError::BadHttp(_))
        ));
        assert_eq!(
            parse_head(b"POST /announce HTTP/1.0\r\n\r\n"),
            Err(ProtoError::BadMethod("POST".into()))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Deterministic xorshift noise, plus mutations of a good request.
        let good = format!("GET /announce?{} HTTP/1.1\r\nHost: t\r\n\r\n", good_query());
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let mut buf = good.as_bytes().to_vec();
            if round % 2 == 0 {
                buf = (0..(next() % 300)).map(|_| next() as u8).collect();
            } else {
                for _ in 0..(next() % 8 + 1) {
                    let i = (next() as usize) % buf.len();
                    buf[i] = next() as u8;
                }
            }
            if let Ok(Head::Complete { target }) = parse_head(&buf) {
                let _ = parse_target(&target);
            }
            let _ = parse_announce_response(&buf);
            let _ = parse_scrape_response(&buf);
        }
        // Non-ASCII in the path: rejected or parsed, never a panic.
        let _ = parse_head(b"GET /announce?info_hash=\xff\xfe HTTP/1.0\r\n\r\n");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2B"), Some(b"a b c+".to_vec()));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%a"), None);
        assert_eq!(percent_decode("%g0"), None);
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = String::new();
        percent_encode_into(&mut enc, &all);
        assert_eq!(percent_decode(&enc), Some(all));
    }

    #[test]
    fn compact_response_bytes_are_exact() {
        let resp = AnnounceResponse {
            interval: 30,
            min_interval: Some(15),
            complete: Some(1),
            incomplete: Some(2),
            peers: vec![
                PeerInfo {
                    addr: "10.1.2.3:6881".parse().unwrap(),
                    peer_id: None,
                },
                PeerInfo {
                    addr: "[::1]:258".parse().unwrap(),
                    peer_id: None,
                },
            ],
            warning: None,
            tracker_id: None,
        };
        let bytes = encode_announce_response(&resp, true);
        let mut want =
            b"d8:completei1e10:incompletei2e8:intervali30e12:min intervali15e5:peers6:".to_vec();
        want.extend_from_slice(&[10, 1, 2, 3, 0x1a, 0xe1]);
        want.extend_from_slice(b"6:peers618:");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2]);
        want.push(b'e');
        assert_eq!(bytes, want);
        // And the client reads back what the server wrote.
        assert_eq!(parse_announce_response(&bytes), Ok(Ok(resp)));
    }

    #[test]
    fn dict_response_round_trips() {
        let resp = AnnounceResponse {
            interval: 1800,
            min_interval: None,
            complete: Some(0),
            incomplete: Some(1),
            peers: vec![PeerInfo {
                addr: "192.168.0.9:51413".parse().unwrap(),
                peer_id: Some(P),
            }],
            warning: Some("be nice".into()),
            tracker_id: Some(b"tid".to_vec()),
        };
        let bytes = encode_announce_response(&resp, false);
        assert!(bytes.starts_with(b"d8:completei0e10:incompletei1e8:intervali1800e5:peersld2:ip11:192.168.0.97:peer id20:-CV0001-abcdefghijkl4:porti51413ee"));
        assert_eq!(
            bencode::decode(&bytes).map(|_| ()),
            Ok(()),
            "canonical bencode"
        );
        assert_eq!(parse_announce_response(&bytes), Ok(Ok(resp)));
    }

    #[test]
    fn client_parses_foreign_responses() {
        // A dictionary list with a hostname entry (skipped) and no peer ids.
        let body =
            b"d8:intervali900e5:peersld2:ip9:127.0.0.14:porti80eed2:ip11:example.com4:porti1eeee";
        let r = parse_announce_response(body).unwrap().unwrap();
        assert_eq!(r.interval, 900);
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, "127.0.0.1:80".parse().unwrap());
        // Failure reason.
        assert_eq!(
            parse_announce_response(&encode_failure("torrent not registered")),
            Ok(Err("torrent not registered".into()))
        );
        // Broken ones.
        for bad in [
            &b"d8:intervali900e5:peers5:abcdee"[..],
            b"d5:peers0:e",
            b"d8:intervali-1e5:peers0:e",
            b"le",
            b"garbage",
            b"d8:intervali900e5:peersld2:ip9:127.0.0.1eee",
            b"d8:intervali900e5:peers0:6:peers63:abce",
        ] {
            assert!(
                matches!(
                    parse_announce_response(bad),
                    Err(ProtoError::BadResponse(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn scrape_response_round_trips() {
        let e = ScrapeEntry {
            complete: 3,
            incomplete: 4,
            downloaded: 5,
        };
        let bytes = encode_scrape_response(&[(P, ScrapeEntry::default()), (H, e)]);
        assert!(bytes.starts_with(b"d5:filesd20:"));
        let mut back = parse_scrape_response(&bytes).unwrap().unwrap();
        back.sort_by_key(|e| e.0);
        let mut want = vec![(H, e), (P, ScrapeEntry::default())];
        want.sort_by_key(|e| e.0);
        assert_eq!(back, want);
    }
}
