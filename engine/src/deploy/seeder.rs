//! The seeders a deploy runs in its own process (the release's, and the corvid binary's
//! for a swarm install): a node on a thread, no child to babysit, its listening port
//! back as an event, stopped by a flag.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metainfo::{Metainfo, Payload};
use crate::node::{self, Mode, NodeConfig, NodeError, NodeEvent, NodeReport, SeedUntil, StopFlag};
use crate::peer::auth::Secret;
use crate::peer::PeerConfig;

/// Why a seeder did not start listening.
#[derive(Debug, thiserror::Error)]
pub enum SeederError {
    #[error("seeder: {0}")]
    Node(#[from] NodeError),
    #[error("seeder stopped before it listened")]
    Gone,
}

/// A seeder's thread.
pub type SeederThread = JoinHandle<Result<NodeReport, NodeError>>;

/// Starts a seeder node on a thread and waits for its listening port: `(its stop flag,
/// the thread, the port)`.
pub fn spawn_seeder(cfg: NodeConfig) -> Result<(StopFlag, SeederThread, u16), SeederError> {
    let stop = StopFlag::new();
    let (listen_tx, listen_rx) = crossbeam_channel::bounded(1);
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            node::run(cfg, stop, &mut |ev| {
                if let NodeEvent::Listening { peer_addr } = ev {
                    let _ = listen_tx.try_send(*peer_addr);
                }
            })
        })
    };
    match listen_rx.recv() {
        Ok(a) => Ok((stop, thread, a.port())),
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(SeederError::Node(e)),
            _ => Err(SeederError::Gone),
        },
    }
}

/// A seeder of a payload that was hashed moments ago, for a deploy's peers.
pub fn seeder_config(
    m: &Metainfo,
    payload: &Payload,
    threads: usize,
    secret: Option<Secret>,
    url: String,
) -> NodeConfig {
    NodeConfig {
        mode: Mode::Seed,
        info_hash: m.info_hash,
        lengths: m.info.lengths,
        piece_hashes: Arc::new(m.info.pieces.clone()),
        // With the pad files the torrent was built with (deploy aligns), so the layout
        // matches its pieces.
        files: if m.info.pad_files.is_empty() {
            payload.disk_files.clone()
        } else {
            crate::metainfo::aligned(payload, m.info.lengths.piece_length()).disk_files
        },
        root: payload.root.clone(),
        listen: SocketAddr::new([0, 0, 0, 0].into(), 0),
        cores: threads.max(1),
        hash_threads: threads.max(1),
        trackers: vec![url],
        peers: Vec::new(),
        linger: Duration::ZERO,
        seed_until: SeedUntil::Stopped,
        // Hashed moments ago by the build; a change since would fail at the peers.
        trust_data: true,
        stall_timeout: Duration::from_secs(120),
        max_connections: 512,
        peer: PeerConfig {
            secret,
            ..PeerConfig::default()
        },
        swarm: Default::default(),
        tuning: Default::default(),
        announce_port: 0,
        resume: None,
        base: None,
        racks: None,
    }
}
