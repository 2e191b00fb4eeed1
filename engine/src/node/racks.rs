//! Which rack this node is in (issue 11), so the cores can mark connections to
//! rack-mates at their handshake (rack-aware picking, `swarm/pick.rs`).
//!
//! A node finds its own rack in the topology by the address others see it at: the
//! listening address when it names an IP, else the source address the kernel picks
//! towards its first `--peer` or tracker (a connected UDP socket: nothing is sent), with
//! the listening port (so `IP:PORT` rules of a test machine work too). Named explicitly
//! (`--rack`), that wins. A host the topology does not cover marks nothing, with a warning.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::tracker::topology::HostRack;

use super::config::{Mode, NodeConfig};

/// This node's rack, or a warning saying why it has none (only when a topology was given).
pub(super) fn host_rack(cfg: &NodeConfig) -> (Option<HostRack>, Option<String>) {
    let Some(racks) = &cfg.racks else {
        return (None, None);
    };
    if cfg.mode == Mode::Seed && racks.rack.is_none() {
        // A seeder marks nothing; it needs only the topology (racks of its peers).
        return (None, None);
    }
    let topology = racks.topology.clone();
    if let Some(name) = &racks.rack {
        return match topology.rack_named(name) {
            Some(r) => (Some(HostRack::new(topology, r)), None),
            None => (
                None,
                Some(format!(
                    "rack {name:?} is named by no rule of the topology: no connection is marked same-rack"
                )),
            ),
        };
    }
    let Some(me) = own_address(cfg) else {
        return (
            None,
            Some(
                "topology: cannot tell this host's address (listening on every address, and \
                 no route to a --peer or tracker): no connection is marked same-rack"
                    .to_string(),
            ),
        );
    };
    match HostRack::of(topology, me) {
        Some(r) => (Some(r), None),
        None => (
            None,
            Some(format!(
                "topology: this host ({me}) is in no rack: no connection is marked same-rack"
            )),
        ),
    }
}

/// The address peers and trackers see this node at (see the module docs).
fn own_address(cfg: &NodeConfig) -> Option<SocketAddr> {
    let port = cfg.listen.port();
    if !cfg.listen.ip().is_unspecified() {
        return Some(cfg.listen);
    }
    let toward = cfg.peers.first().map(|a| a.ip()).or_else(|| {
        cfg.trackers.iter().find_map(|url| {
            let (host, port) = crate::tracker::client::url_host_port(url)?;
            (host, port).to_socket_addrs().ok()?.next().map(|a| a.ip())
        })
    })?;
    let ip = crate::deploy::seeder_addr::routed_from(toward)?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::geometry::Lengths;
    use crate::node::config::NodeRacks;
    use crate::tracker::Topology;

    /// A downloader's configuration with only what the rack lookup reads set.
    fn cfg(listen: &str, peers: &[&str], trackers: &[&str], rules: &str) -> NodeConfig {
        NodeConfig {
            listen: listen.parse().unwrap(),
            trackers: trackers.iter().map(|t| t.to_string()).collect(),
            peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
            racks: Some(NodeRacks {
                topology: Arc::new(Topology::parse(rules, "test").unwrap()),
                rack: None,
            }),
            ..NodeConfig::new(
                Mode::Download,
                [0; 20],
                Lengths::new(16384, 16384, 1).unwrap(),
                Arc::new(vec![[0; 20]]),
                Vec::new(),
                std::path::PathBuf::new(),
            )
        }
    }

    /// Listening on every address, the node is found by the kernel's source address
    /// towards its first peer, or else its tracker, with its own listening port: two
    /// rules for the same IP on two ports tell which port was used.
    #[test]
    fn a_node_on_every_address_finds_its_rack_by_the_route_and_its_port() {
        let ip = crate::deploy::seeder_addr::routed_from([127, 0, 0, 9].into())
            .expect("a route to 127.0.0.9");
        let rules = format!("{ip}:7000 rack=a\n{ip}:7001 rack=b\n");
        let (rack, warning) = host_rack(&cfg("0.0.0.0:7000", &["127.0.0.9:1"], &[], &rules));
        assert_eq!(rack.map(|r| r.name().to_string()).as_deref(), Some("a"));
        assert_eq!(warning, None);
        let by_tracker = cfg(
            "0.0.0.0:7001",
            &[],
            &["http://127.0.0.9:6969/announce"],
            &rules,
        );
        let (rack, _) = host_rack(&by_tracker);
        assert_eq!(rack.map(|r| r.name().to_string()).as_deref(), Some("b"));
    }

    /// With nothing to route towards, or an address no rule covers, the node marks
    /// nothing and says why.
    #[test]
    fn a_node_it_cannot_place_says_why() {
        let (rack, warning) = host_rack(&cfg("0.0.0.0:7000", &[], &[], "10.0.0.1 rack=a"));
        assert!(rack.is_none());
        assert!(warning.unwrap().contains("cannot tell this host's address"));
        let (rack, warning) = host_rack(&cfg(
            "127.0.0.1:7000",
            &["127.0.0.9:1"],
            &[],
            "10.0.0.1 rack=a",
        ));
        assert!(rack.is_none());
        assert!(warning.unwrap().contains("(127.0.0.1:7000) is in no rack"));
    }
}
