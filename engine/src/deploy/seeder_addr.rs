//! Which address the hosts are told to reach this machine's tracker and seeder at,
//! without `--seeder-addr`: this machine's own route decides, what hosts report only
//! cross-checks it (so one hostile host cannot point the fleet at itself).

use std::net::{IpAddr, SocketAddr};

/// The warnings for hosts told to reach this machine at `addr`: one routed from another
/// local address, or reporting another client address than our route to it (NAT, or a
/// host that lies), or with no route from here and reporting another address.
pub fn cross_check(addr: IpAddr, seen: &[AddrSeen]) -> Vec<String> {
    let mut warnings = Vec::new();
    for s in seen {
        match (s.routed, s.reported) {
            (Some(r), _) if r != addr => warnings.push(format!(
                "{}: this machine reaches it from {r}, not from {addr} (the seeder \
                 address); pass --seeder-addr if it cannot reach {addr}",
                s.host
            )),
            (Some(r), Some(rep)) if rep != r => warnings.push(format!(
                "{}: says it sees this machine at {rep}, but this machine reaches it \
                 from {r} (NAT, or a host that lies); using {addr}",
                s.host
            )),
            (None, Some(rep)) if rep != addr => warnings.push(format!(
                "{}: no route to it from here, and it says it sees this machine at \
                 {rep}, not {addr}",
                s.host
            )),
            _ => {}
        }
    }
    warnings
}

/// Why no seeder address could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SeederAddrError {
    #[error("cannot tell which address hosts reach this machine at (no route to any host from here, and no host answered with $SSH_CONNECTION); pass --seeder-addr")]
    NoAddress,
    #[error("cannot tell which address hosts reach this machine at: no route to them from here, and they disagree on where they see it ({0}); pass --seeder-addr")]
    Conflict(String),
}

/// What is known about how one host and this machine see each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSeen {
    pub host: String,
    /// This machine's source address towards the host, by its own routing.
    pub routed: Option<IpAddr>,
    /// The client address the host says it sees (first field of its `$SSH_CONNECTION`).
    pub reported: Option<IpAddr>,
}

/// The local address the kernel would send from towards `to`: a UDP socket connected
/// there (connecting a UDP socket sends nothing) reports it. `None` when there is no
/// route.
pub fn routed_from(to: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = match to {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    sock.connect(SocketAddr::new(to, 9)).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The address hosts are told to reach the tracker and seeder at, without
/// `--seeder-addr`: this machine's own route to the first host it has one to, so what a
/// host reports cannot choose it. Every host is then cross-checked: one routed from
/// another local address, or reporting another client address than our route to it
/// (NAT, or a host that lies), is a warning naming both. With no route to any host (all
/// behind a jump host), the hosts' reports are used only when they all agree; hosts that
/// disagree are refused.
pub fn choose_seeder_addr(seen: &[AddrSeen]) -> Result<(IpAddr, Vec<String>), SeederAddrError> {
    if let Some(addr) = seen.iter().find_map(|s| s.routed) {
        return Ok((addr, cross_check(addr, seen)));
    }
    let mut warnings = Vec::new();
    let reports: Vec<(&str, IpAddr)> = seen
        .iter()
        .filter_map(|s| s.reported.map(|r| (s.host.as_str(), r)))
        .collect();
    let Some(&(_, first)) = reports.first() else {
        return Err(SeederAddrError::NoAddress);
    };
    if reports.iter().any(|&(_, r)| r != first) {
        let list: Vec<String> = reports.iter().map(|(h, r)| format!("{h}: {r}")).collect();
        return Err(SeederAddrError::Conflict(list.join(", ")));
    }
    warnings.push(format!(
        "no route to the hosts from here; using {first}, the address all of them report seeing this machine at"
    ));
    Ok((first, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeder_address_comes_from_our_routing_not_from_a_host() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let seen = |host: &str, routed: Option<&str>, reported: Option<&str>| AddrSeen {
            host: host.into(),
            routed: routed.map(ip),
            reported: reported.map(ip),
        };
        // The first host lies about where it sees us: our route wins, with a warning.
        let (a, w) = choose_seeder_addr(&[
            seen("evil", Some("10.0.0.1"), Some("10.6.6.6")),
            seen("h2", Some("10.0.0.1"), Some("10.0.0.1")),
        ])
        .unwrap();
        assert_eq!(a, ip("10.0.0.1"));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("evil:") && w[0].contains("10.6.6.6"),
            "{w:?}"
        );
        // A host routed from another local address: warned, the first route kept.
        let (a, w) = choose_seeder_addr(&[
            seen("h1", None, Some("10.0.0.1")),
            seen("h2", Some("10.0.0.1"), Some("10.0.0.1")),
            seen("h3", Some("192.168.1.5"), Some("192.168.1.5")),
        ])
        .unwrap();
        assert_eq!(a, ip("10.0.0.1"));
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("h3:"), "{w:?}");
        // No route at all: agreeing reports are used (with a warning), disagreeing ones
        // refused, none at all is an error.
        let (a, w) = choose_seeder_addr(&[
            seen("h1", None, Some("10.0.0.9")),
            seen("h2", None, Some("10.0.0.9")),
        ])
        .unwrap();
        assert_eq!((a, w.len()), (ip("10.0.0.9"), 1));
        let e = choose_seeder_addr(&[
            seen("h1", None, Some("10.0.0.9")),
            seen("evil", None, Some("10.6.6.6")),
        ])
        .unwrap_err();
        assert!(matches!(e, SeederAddrError::Conflict(_)), "{e}");
        assert!(e.to_string().contains("evil: 10.6.6.6"), "{e}");
        assert!(matches!(
            choose_seeder_addr(&[seen("h1", None, None)]),
            Err(SeederAddrError::NoAddress)
        ));
        // The routing itself: towards loopback, from loopback.
        assert_eq!(routed_from(ip("127.0.0.1")), Some(ip("127.0.0.1")));
    }
}
