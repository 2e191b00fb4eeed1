//! A node on a multi-homed host: listening on one address, it dials from that address
//! too, so the peers it dials (and any tracker they report to) see where it listens.

use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use corvid_engine::geometry::Lengths;
use corvid_engine::node::{self, Mode, NodeConfig, StopFlag};
use corvid_engine::storage::FileSpec;

#[test]
fn a_node_listening_on_one_address_dials_from_it() {
    let dir = tempfile::tempdir().unwrap();
    // The "remote" peer: a plain listener on another loopback address, which only looks
    // at where the connection comes from.
    let remote = TcpListener::bind("127.0.0.3:0").unwrap();
    let remote_addr = remote.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        if let Ok((_conn, from)) = remote.accept() {
            let _ = seen_tx.send(from);
        }
    });

    let len = 256 * 1024u64;
    let files = vec![FileSpec {
        path: "x.bin".into(),
        length: len,
        pad: false,
    }];
    let cfg = NodeConfig {
        listen: "127.0.0.2:0".parse().unwrap(),
        peers: vec![remote_addr],
        max_connections: 8,
        ..NodeConfig::new(
            Mode::Download,
            [9; 20],
            Lengths::new(len, len, 1).unwrap(),
            Arc::new(vec![[0; 20]]),
            files,
            dir.path().to_path_buf(),
        )
    };
    let stop = StopFlag::new();
    let node = {
        let stop = stop.clone();
        std::thread::spawn(move || node::run(cfg, stop, &mut |_| {}))
    };
    let seen = seen_rx.recv_timeout(Duration::from_secs(30));
    stop.stop();
    let _ = node.join().expect("node thread");
    let seen = seen.expect("the node dialled the remote peer");
    assert_eq!(
        seen.ip().to_string(),
        "127.0.0.2",
        "the remote peer saw the connection from {seen}, not from the listen address"
    );
}
