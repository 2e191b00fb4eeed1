//! A download filled from a base release: the pieces the base supplied are not synced to
//! disk (nor recorded as durable) before the swarm starts. Syncing them there wrote a
//! whole release back to disk per host before a delta deploy fetched its first byte; the
//! record thread records them in the background, and the completion flushes them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corvid_engine::geometry::Lengths;
use corvid_engine::hash::HashPool;
use corvid_engine::node::resume::{Loaded, ResumeConfig};
use corvid_engine::node::{self, Mode, NodeConfig, NodeEvent, StopFlag};
use corvid_engine::reuse::Base;
use corvid_engine::storage::{FileSpec, Storage};

#[test]
fn base_filled_pieces_are_not_synced_before_the_swarm_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    let piece = 256 * 1024u64;
    let len = 8 * piece;
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(old.join("a.bin"), &bytes).unwrap();
    let files = vec![FileSpec {
        path: "a.bin".into(),
        length: len,
        pad: false,
    }];
    let lengths = Lengths::new(len, piece, 8).unwrap();
    let hashes = {
        let s = Storage::open_readonly(&old, &files, lengths).unwrap();
        HashPool::new(1).hash_all(&Arc::new(s), &mut |_| {})
    };
    let record = dir.path().join("resume");
    // No peers: nobody to download from, the node waits in the swarm with what the base gave.
    let cfg = NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 8,
        resume: Some(ResumeConfig {
            path: record.clone(),
            keep_when_complete: false,
            interval: Duration::from_secs(3600),
        }),
        // Every piece but the last: the download cannot complete, so nothing else syncs.
        base: Some(Base {
            dir: old.clone(),
            strip: PathBuf::new(),
            sealed: None,
        }),
        ..NodeConfig::new(
            Mode::Download,
            [3; 20],
            lengths,
            Arc::new(hashes),
            files.clone(),
            new.clone(),
        )
    };
    // The base lacks the last piece's bytes: truncate its copy of the file.
    std::fs::File::options()
        .write(true)
        .open(old.join("a.bin"))
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let stop = StopFlag::new();
    let mut reused = None;
    let mut recorded = None;
    let stopper = stop.clone();
    let _ = node::run(cfg, stop, &mut |ev| match ev {
        NodeEvent::Checked { resume, .. } => {
            reused = resume.reuse.as_ref().map(|r| r.reused_pieces);
        }
        NodeEvent::Listening { .. } => {
            // The swarm has started: what does the record vouch for?
            recorded = Some(
                match Loaded::read(
                    Some(&ResumeConfig {
                        path: record.clone(),
                        keep_when_complete: false,
                        interval: Duration::from_secs(3600),
                    }),
                    8,
                    1,
                ) {
                    Loaded::Found(r) => r.have.count(),
                    // A first run with nothing durable yet writes its first record later.
                    Loaded::Absent => 0,
                    other => panic!("an unreadable record at the swarm's start: {other:?}"),
                },
            );
            stopper.stop();
        }
        _ => {}
    });
    let reused = reused.expect("a checked event with a reuse report");
    assert!(reused >= 1, "the base supplied nothing: {reused}");
    assert_eq!(
        recorded,
        Some(0),
        "the start-up record vouched for base-filled pieces, so it synced them first"
    );
}
