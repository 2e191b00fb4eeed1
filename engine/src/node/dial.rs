//! Dialling: which addresses may be dialled (a tracker's answer is untrusted input) and
//! handing a dial to a core without opening two connections to one peer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use super::service::NodeMsg;
use super::shared::Shared;

/// Most addresses of one tracker response that are dialled (what we ask for: `numwant`
/// 200). A tracker may send ~174,000 in one response; dialling them all would fill every
/// connection slot with whatever the tracker chose.
pub const MAX_TRACKER_PEERS: usize = 200;

/// Whether an address a tracker handed us may be dialled: never port 0, an unspecified,
/// multicast or broadcast address, or one in 0.0.0.0/8; loopback only when
/// `allow_loopback` (see [`loopback_peers_allowed`]), since otherwise a remote tracker
/// could point us at services on our own host.
pub fn dialable(addr: SocketAddr, allow_loopback: bool) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || (ip.is_loopback() && !allow_loopback) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_broadcast() && v4.octets()[0] != 0,
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .is_none_or(|v4| dialable(SocketAddr::new(IpAddr::V4(v4), 1), allow_loopback)),
    }
}

/// Loopback peers from a tracker are dialled only when the tracker itself is on this host
/// (its URL names `localhost`, 127.0.0.0/8 or ::1) or we listen on loopback: then they are
/// peers on this host (a test swarm, the seeder's own), not a remote tracker's pick of our
/// local services.
pub fn loopback_peers_allowed(tracker_url: &str, listen: SocketAddr) -> bool {
    if listen.ip().is_loopback() {
        return true;
    }
    let rest = tracker_url
        .split_once("://")
        .map_or(tracker_url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The addresses of a tracker response worth dialling: not ours, [`dialable`], at most
/// [`MAX_TRACKER_PEERS`].
pub fn tracker_peers_to_dial(
    peers: &[crate::tracker::proto::PeerInfo],
    our_id: &[u8; 20],
    allow_loopback: bool,
) -> Vec<SocketAddr> {
    peers
        .iter()
        .filter(|p| p.peer_id.as_ref() != Some(our_id))
        .map(|p| p.addr)
        .filter(|a| dialable(*a, allow_loopback))
        .take(MAX_TRACKER_PEERS)
        .collect()
}

/// Dials `addr` from the next core in turn, unless a connection to it is open already.
pub(super) fn dial(
    shared: &Shared,
    mailboxes: &[crate::runtime::Mailbox<NodeMsg>],
    addr: SocketAddr,
) {
    let reaches = shared.same_peer.lock().get(&addr).copied();
    if reaches.is_some_and(|id| shared.peer_ids.lock().contains_key(&id)) {
        return;
    }
    if !shared.dialled.lock().insert(addr) {
        return;
    }
    let n = shared.counters.dials.fetch_add(1, Ordering::Relaxed) as usize;
    if let Some(mb) = mailboxes.get(n % mailboxes.len().max(1)) {
        if mb.dial(addr).is_err() {
            shared.dialled.lock().remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_addresses_are_filtered_before_dialling() {
        let ok = |a: &str, lo: bool| dialable(a.parse().unwrap(), lo);
        assert!(ok("10.1.2.3:6881", false));
        assert!(ok("[2001:db8::1]:6881", false));
        for bad in [
            "10.1.2.3:0",
            "0.0.0.0:6881",
            "0.1.2.3:6881",
            "255.255.255.255:6881",
            "224.0.0.1:6881",
            "239.1.2.3:6881",
            "[::]:6881",
            "[ff02::1]:6881",
            "[::ffff:255.255.255.255]:6881",
            "127.0.0.1:6881",
            "127.9.9.9:6881",
            "[::1]:6881",
            "[::ffff:127.0.0.1]:6881",
        ] {
            assert!(!ok(bad, false), "{bad} dialled");
        }
        assert!(ok("127.0.0.1:6881", true) && ok("[::1]:6881", true));
        assert!(!ok("127.0.0.1:0", true) && !ok("224.0.0.1:1", true));
    }

    #[test]
    fn loopback_peers_only_from_a_tracker_on_this_host() {
        let any: SocketAddr = "0.0.0.0:6881".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for url in [
            "http://127.0.0.1:8998/announce",
            "http://127.3.2.1/announce",
            "http://localhost:8998/announce?x=1",
            "http://[::1]:8998/announce",
            "http://user@127.0.0.1:1/a",
        ] {
            assert!(loopback_peers_allowed(url, any), "{url}");
        }
        for url in [
            "http://tracker.example:8998/announce",
            "http://10.0.0.1:8998/announce",
            "http://[2001:db8::1]:8998/announce",
            "http://127.0.0.1.evil.example/announce",
            "http://localhost.evil.example/announce",
        ] {
            assert!(!loopback_peers_allowed(url, any), "{url}");
        }
        assert!(loopback_peers_allowed(
            "http://tracker.example/announce",
            lo
        ));
    }

    #[test]
    fn a_huge_tracker_response_is_capped_and_our_own_entry_skipped() {
        use crate::tracker::proto::PeerInfo;
        let me = [9u8; 20];
        let mut peers: Vec<PeerInfo> = (0..174_000u32)
            .map(|i| PeerInfo {
                addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6881)),
                peer_id: None,
            })
            .collect();
        peers.insert(
            0,
            PeerInfo {
                addr: "10.9.9.9:1".parse().unwrap(),
                peer_id: Some(me),
            },
        );
        peers.insert(
            1,
            PeerInfo {
                addr: "224.0.0.1:1".parse().unwrap(),
                peer_id: None,
            },
        );
        let d = tracker_peers_to_dial(&peers, &me, false);
        assert_eq!(d.len(), MAX_TRACKER_PEERS);
        assert!(!d.contains(&"10.9.9.9:1".parse().unwrap()));
        assert!(d.iter().all(|a| dialable(*a, false)));
    }
}
