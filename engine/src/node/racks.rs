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
