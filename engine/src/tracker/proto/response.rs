//! Tracker response bodies: encoding the server's answers (failure, announce, scrape) and
//! parsing them on the client side, compact and dictionary peer lists included.
//!
//! Separate from the parent, which handles the HTTP request side (head, target, query
//! strings): the two halves share only the types, and each is long enough on its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{clamp_i64, AnnounceResponse, PeerInfo, ProtoError, ScrapeEntry};
use crate::bencode::{self, encode_bytes, encode_int, Value};

/// `d14:failure reason<len>:<reason>e`: how trackers report a refused request.
pub fn encode_failure(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 24);
    out.push(b'd');
    encode_bytes(&mut out, b"failure reason");
    encode_bytes(&mut out, reason.as_bytes());
    out.push(b'e');
    out
}

/// Encodes an announce response. With `compact`, IPv4 peers go to `peers` as 6-byte
/// entries (BEP 23) and IPv6 peers to `peers6` as 18-byte entries (BEP 7); otherwise
/// `peers` is a list of dictionaries, with `peer id` when known.
pub fn encode_announce_response(resp: &AnnounceResponse, compact: bool) -> Vec<u8> {
    // Keys must be written in sorted order; they are listed here in that order.
    let mut out = Vec::with_capacity(64 + resp.peers.len() * 8);
    out.push(b'd');
    if let Some(c) = resp.complete {
        encode_bytes(&mut out, b"complete");
        encode_int(&mut out, clamp_i64(c));
    }
    if let Some(c) = resp.incomplete {
        encode_bytes(&mut out, b"incomplete");
        encode_int(&mut out, clamp_i64(c));
    }
    encode_bytes(&mut out, b"interval");
    encode_int(&mut out, i64::from(resp.interval));
    if let Some(m) = resp.min_interval {
        encode_bytes(&mut out, b"min interval");
        encode_int(&mut out, i64::from(m));
    }
    if compact {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for p in &resp.peers {
            match p.addr {
                SocketAddr::V4(a) => {
                    v4.extend_from_slice(&a.ip().octets());
                    v4.extend_from_slice(&a.port().to_be_bytes());
                }
                SocketAddr::V6(a) => {
                    v6.extend_from_slice(&a.ip().octets());
                    v6.extend_from_slice(&a.port().to_be_bytes());
                }
            }
        }
        encode_bytes(&mut out, b"peers");
        encode_bytes(&mut out, &v4);
        if !v6.is_empty() {
            encode_bytes(&mut out, b"peers6");
            encode_bytes(&mut out, &v6);
        }
    } else {
        encode_bytes(&mut out, b"peers");
        out.push(b'l');
        for p in &resp.peers {
            out.push(b'd');
            encode_bytes(&mut out, b"ip");
            encode_bytes(&mut out, p.addr.ip().to_string().as_bytes());
            if let Some(id) = &p.peer_id {
                encode_bytes(&mut out, b"peer id");
                encode_bytes(&mut out, id);
            }
            encode_bytes(&mut out, b"port");
            encode_int(&mut out, i64::from(p.addr.port()));
            out.push(b'e');
        }
        out.push(b'e');
    }
    if let Some(id) = &resp.tracker_id {
        encode_bytes(&mut out, b"tracker id");
        encode_bytes(&mut out, id);
    }
    if let Some(w) = &resp.warning {
        encode_bytes(&mut out, b"warning message");
        encode_bytes(&mut out, w.as_bytes());
    }
    out.push(b'e');
    out
}

/// Encodes a scrape response: `d5:filesd<hash>d8:complete..10:downloaded..10:incomplete..eee`.
pub fn encode_scrape_response(entries: &[([u8; 20], ScrapeEntry)]) -> Vec<u8> {
    let mut sorted: Vec<&([u8; 20], ScrapeEntry)> = entries.iter().collect();
    sorted.sort_by_key(|e| e.0);
    let mut out = Vec::with_capacity(16 + entries.len() * 80);
    out.push(b'd');
    encode_bytes(&mut out, b"files");
    out.push(b'd');
    for (h, e) in sorted {
        encode_bytes(&mut out, h);
        out.push(b'd');
        encode_bytes(&mut out, b"complete");
        encode_int(&mut out, clamp_i64(e.complete));
        encode_bytes(&mut out, b"downloaded");
        encode_int(&mut out, clamp_i64(e.downloaded));
        encode_bytes(&mut out, b"incomplete");
        encode_int(&mut out, clamp_i64(e.incomplete));
        out.push(b'e');
    }
    out.push(b'e');
    out.push(b'e');
    out
}

/// What a tracker answered to an announce: either peers, or a refusal with its reason.
pub fn parse_announce_response(
    body: &[u8],
) -> Result<Result<AnnounceResponse, String>, ProtoError> {
    let v = bencode::decode(body).map_err(|e| ProtoError::BadResponse(e.to_string()))?;
    let d = v
        .as_dict()
        .ok_or_else(|| ProtoError::BadResponse("not a dictionary".into()))?;
    if let Some(reason) = d.get(b"failure reason") {
        let r = reason
            .as_bytes()
            .ok_or_else(|| ProtoError::BadResponse("failure reason is not a string".into()))?;
        return Ok(Err(String::from_utf8_lossy(r).into_owned()));
    }
    let interval = match d.get(b"interval").and_then(Value::as_int) {
        Some(i) => u32::try_from(i)
            .map_err(|_| ProtoError::BadResponse(format!("interval {i} out of range")))?,
        None => return Err(ProtoError::BadResponse("missing interval".into())),
    };
    let min_interval = match d.get(b"min interval").and_then(Value::as_int) {
        Some(i) => Some(
            u32::try_from(i)
                .map_err(|_| ProtoError::BadResponse(format!("min interval {i} out of range")))?,
        ),
        None => None,
    };
    let count = |k: &[u8]| -> Option<u64> {
        d.get(k)
            .and_then(Value::as_int)
            .and_then(|i| u64::try_from(i).ok())
    };
    let mut peers = Vec::new();
    parse_peers(d.get(b"peers"), &mut peers)?;
    if let Some(v6) = d.get(b"peers6") {
        parse_peers6(v6, &mut peers)?;
    }
    Ok(Ok(AnnounceResponse {
        interval,
        min_interval,
        complete: count(b"complete"),
        incomplete: count(b"incomplete"),
        peers,
        warning: d
            .get(b"warning message")
            .and_then(Value::as_bytes)
            .map(|w| String::from_utf8_lossy(w).into_owned()),
        tracker_id: d
            .get(b"tracker id")
            .and_then(Value::as_bytes)
            .map(<[u8]>::to_vec),
    }))
}

/// The `peers` key of an announce response: compact (6 bytes per IPv4 peer) or a list
/// of dictionaries; absent means none.
fn parse_peers(v: Option<&Value<'_>>, peers: &mut Vec<PeerInfo>) -> Result<(), ProtoError> {
    match v {
        Some(Value::Bytes(b)) => {
            if b.len() % 6 != 0 {
                return Err(ProtoError::BadResponse(format!(
                    "compact peers length {} is not a multiple of 6",
                    b.len()
                )));
            }
            for c in b.chunks_exact(6) {
                let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
                let port = u16::from_be_bytes([c[4], c[5]]);
                peers.push(PeerInfo {
                    addr: SocketAddr::new(IpAddr::V4(ip), port),
                    peer_id: None,
                });
            }
        }
        Some(Value::List(list)) => {
            for (i, p) in list.iter().enumerate() {
                let bad = |what: &str| ProtoError::BadResponse(format!("peer {i}: {what}"));
                let pd = p.as_dict().ok_or_else(|| bad("not a dictionary"))?;
                let ip_s = pd
                    .get(b"ip")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("missing ip"))?;
                let Ok(ip) = ip_s.parse::<IpAddr>() else {
                    // A hostname instead of an address (allowed by BEP 3) is skipped:
                    // resolving names from a tracker response is not worth the risk.
                    continue;
                };
                let port = pd
                    .get(b"port")
                    .and_then(Value::as_int)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| bad("missing or bad port"))?;
                let peer_id = pd
                    .get(b"peer id")
                    .and_then(Value::as_bytes)
                    .and_then(|b| <[u8; 20]>::try_from(b).ok());
                peers.push(PeerInfo {
                    addr: SocketAddr::new(ip, port),
                    peer_id,
                });
            }
        }
        None => {}
        Some(_) => {
            return Err(ProtoError::BadResponse(
                "peers is neither string nor list".into(),
            ))
        }
    }
    Ok(())
}

/// The `peers6` key (BEP 7): 18 bytes per IPv6 peer.
fn parse_peers6(v6: &Value<'_>, peers: &mut Vec<PeerInfo>) -> Result<(), ProtoError> {
    let b = v6
        .as_bytes()
        .ok_or_else(|| ProtoError::BadResponse("peers6 is not a string".into()))?;
    if b.len() % 18 != 0 {
        return Err(ProtoError::BadResponse(format!(
            "peers6 length {} is not a multiple of 18",
            b.len()
        )));
    }
    for c in b.chunks_exact(18) {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&c[..16]);
        let port = u16::from_be_bytes([c[16], c[17]]);
        peers.push(PeerInfo {
            addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port),
            peer_id: None,
        });
    }
    Ok(())
}

/// What a tracker answered to a scrape: counts per info-hash, or a refusal.
#[allow(clippy::type_complexity)]
pub fn parse_scrape_response(
    body: &[u8],
) -> Result<Result<Vec<([u8; 20], ScrapeEntry)>, String>, ProtoError> {
    let v = bencode::decode(body).map_err(|e| ProtoError::BadResponse(e.to_string()))?;
    let d = v
        .as_dict()
        .ok_or_else(|| ProtoError::BadResponse("not a dictionary".into()))?;
    if let Some(reason) = d.get(b"failure reason") {
        let r = reason
            .as_bytes()
            .ok_or_else(|| ProtoError::BadResponse("failure reason is not a string".into()))?;
        return Ok(Err(String::from_utf8_lossy(r).into_owned()));
    }
    let files = d
        .get(b"files")
        .and_then(Value::as_dict)
        .ok_or_else(|| ProtoError::BadResponse("missing files dictionary".into()))?;
    let mut out = Vec::with_capacity(files.len());
    for (k, v) in files.iter() {
        let h = <[u8; 20]>::try_from(k)
            .map_err(|_| ProtoError::BadResponse(format!("files key of {} bytes", k.len())))?;
        let e = v
            .as_dict()
            .ok_or_else(|| ProtoError::BadResponse("files entry is not a dictionary".into()))?;
        let n = |key: &[u8]| {
            e.get(key)
                .and_then(Value::as_int)
                .and_then(|i| u64::try_from(i).ok())
                .unwrap_or(0)
        };
        out.push((
            h,
            ScrapeEntry {
                complete: n(b"complete"),
                incomplete: n(b"incomplete"),
                downloaded: n(b"downloaded"),
            },
        ));
    }
    Ok(Ok(out))
}
