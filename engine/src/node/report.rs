//! What a node tells its caller: events while it runs ([`NodeEvent`]) and the final
//! [`NodeReport`], whose JSON shape is a serde struct (scripts and benches read it).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::stats::Report;

use super::door::SwarmLockReport;
use super::resume::ResumeReport;

/// What happened, for progress bars and JSON lines.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// Listening for peers; `peer_addr` is the bound address.
    Listening {
        peer_addr: SocketAddr,
    },
    /// The start-up check found this many verified pieces already on disk; `resume` says
    /// how many were kept on the resume record's word and how many were hashed.
    Checked {
        have: u32,
        total: u32,
        resume: ResumeReport,
    },
    /// Something went wrong that the node works around (a resume record that cannot be
    /// written); reported once, the node keeps going.
    Warning {
        message: String,
    },
    Progress(Progress),
    /// Every piece is verified, in the page cache like any copy tool's result: the time a
    /// download is measured by. Durable on disk only at [`NodeEvent::Durable`].
    Complete {
        elapsed: Duration,
    },
    /// Every piece is verified and flushed to disk: what a release may be renamed into
    /// place and activated on (after [`NodeEvent::Complete`]; absent when the flush failed,
    /// the node then ends with that error).
    Durable,
    /// A tracker could not be reached or refused us (the node keeps going).
    TrackerError {
        url: String,
        error: String,
    },
    /// A connection closed, with the reason (hostile peers show up here).
    PeerClosed {
        addr: SocketAddr,
        reason: String,
    },
}

/// A snapshot of the node's state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub have: u32,
    pub total: u32,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub peers: usize,
}

/// The final report. Its JSON shape is this struct: the transfer report's fields first
/// (flattened), then the node's own.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    /// Bytes, seeder vs peers, piece latency percentiles.
    #[serde(flatten)]
    pub transfer: Report,
    pub peer_addr: SocketAddr,
    pub complete: bool,
    pub pieces: u32,
    pub bytes_total: u64,
    /// Payload bytes dropped: end-game duplicates and pieces that failed their hash.
    pub wasted: u64,
    /// Addresses banned for sending data that failed its hash.
    pub banned: Vec<IpAddr>,
    /// Start to completion (downloads).
    #[serde(rename = "download_s", serialize_with = "crate::stats::json_seconds")]
    pub download_time: Option<Duration>,
    /// How the start-up check went (resume record used or not, pieces hashed).
    pub resume: ResumeReport,
    /// How long threads waited for the swarm lock and held it (see the node module's
    /// docs for what these numbers decided).
    pub swarm_lock: SwarmLockReport,
    /// With a topology that covers this host: its rack and how its connections were marked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rack: Option<RackReport>,
    /// Start-up milestones and counter samples (see `node::timeline`).
    pub timeline: super::timeline::Timeline,
    /// How uploads were sent (absent if the cores never started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_path: Option<SendPathReport>,
}

/// The send path in use (`copy`, `splice`, `auto` or `zerocopy`, after the start-up
/// probe) and the bytes sent each way (`runtime::send_path`): protocol messages without
/// payload always go by `sendmsg` on the splicing paths, so `copied` is not zero on a
/// splicing node; a zero-copy node sends everything with `SENDMSG_ZC` (`zc_sent`), and
/// `zc_copied` of its `zc_notifs` notifications said the kernel copied the data anyway
/// (every one, towards a socket on the same host).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SendPathReport {
    pub path: String,
    pub spliced: u64,
    pub copied: u64,
    pub zc_sent: u64,
    pub zc_notifs: u64,
    pub zc_copied: u64,
}

/// This host's rack (issue 11) and the connections it marked same-rack at their
/// handshake (rack-mates that are not seeders), for tests and operators to see the
/// topology took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RackReport {
    pub name: String,
    pub local_connections: u64,
}

impl NodeReport {
    /// One JSON object: the transfer report's fields, then the node's own.
    pub fn to_json(&self) -> String {
        crate::stats::to_json_line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::resume;

    fn sample_report(download_time: Option<Duration>, reason: Option<&str>) -> NodeReport {
        NodeReport {
            peer_addr: "[::1]:6881".parse().unwrap(),
            complete: true,
            pieces: 4,
            bytes_total: 1000,
            wasted: 7,
            banned: vec!["10.0.0.9".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            download_time,
            transfer: Report {
                label: None,
                elapsed: Duration::from_millis(1500),
                bytes_down: 1000,
                bytes_up: 3,
                bytes_from_seeder: 600,
                bytes_from_peers: 400,
                pieces_verified: 4,
                pieces_failed: 1,
                down_rate_bps: 1000.0 / 1.5,
                piece_latency_us: Default::default(),
            },
            resume: ResumeReport {
                record: resume::RecordStatus::Mismatch,
                reason: reason.map(str::to_owned),
                trusted_pieces: 1,
                rechecked_pieces: 3,
                rechecked_bytes: 750,
                reuse: None,
            },
            swarm_lock: SwarmLockReport {
                acquisitions: 10,
                per_second: 2.5,
                held_fraction: 0.125,
                wait_ns: Default::default(),
                hold_ns: Default::default(),
            },
            rack: None,
            timeline: crate::node::Timeline {
                first_tracker_answer_s: Some(0.012),
                first_peer_s: Some(0.034),
                first_payload_s: None,
                samples: vec![[0, 0, 0, 0], [100, 600, 400, 3]],
            },
            send_path: None,
        }
    }

    /// The `done` line's report, byte for byte as corvid has printed it (scripts and the
    /// benches read these fields); `swarm_lock` was added at the end (issue 13).
    #[test]
    fn the_report_json_keeps_its_bytes() {
        let r = sample_report(
            Some(Duration::from_micros(1_250_000)),
            Some("a.bin changed"),
        );
        assert_eq!(
            r.to_json(),
            r#"{"elapsed_s":1.5,"bytes_down":1000,"bytes_up":3,"bytes_from_seeder":600,"bytes_from_peers":400,"pieces_verified":4,"pieces_failed":1,"down_rate_bps":666.6666666666666,"piece_latency_us":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"peer_addr":"[::1]:6881","complete":true,"pieces":4,"bytes_total":1000,"wasted":7,"banned":["10.0.0.9","2001:db8::1"],"download_s":1.250000,"resume":{"record":"mismatch","reason":"a.bin changed","trusted_pieces":1,"rechecked_pieces":3,"rechecked_bytes":750},"swarm_lock":{"acquisitions":10,"per_second":2.5,"held_fraction":0.125,"wait_ns":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"hold_ns":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0}},"timeline":{"first_tracker_answer_s":0.012,"first_peer_s":0.034,"first_payload_s":null,"samples":[[0,0,0,0],[100,600,400,3]]}}"#
        );
        let r = sample_report(None, None);
        assert_eq!(
            r.to_json(),
            r#"{"elapsed_s":1.5,"bytes_down":1000,"bytes_up":3,"bytes_from_seeder":600,"bytes_from_peers":400,"pieces_verified":4,"pieces_failed":1,"down_rate_bps":666.6666666666666,"piece_latency_us":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"peer_addr":"[::1]:6881","complete":true,"pieces":4,"bytes_total":1000,"wasted":7,"banned":["10.0.0.9","2001:db8::1"],"download_s":null,"resume":{"record":"mismatch","reason":null,"trusted_pieces":1,"rechecked_pieces":3,"rechecked_bytes":750},"swarm_lock":{"acquisitions":10,"per_second":2.5,"held_fraction":0.125,"wait_ns":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0},"hold_ns":{"count":0,"min":0,"p50":0,"p90":0,"p99":0,"max":0,"mean":0}},"timeline":{"first_tracker_answer_s":0.012,"first_peer_s":0.034,"first_payload_s":null,"samples":[[0,0,0,0],[100,600,400,3]]}}"#
        );
    }
}
