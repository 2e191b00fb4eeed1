//! Where a corvid fleet run's time goes, from the peers' report timelines (`timeline` in
//! `corvid peer --json`'s done report, see the engine's `node::timeline`): start-up (first
//! tracker answer, first peer, first payload byte), the seeder's uplink and the peers'
//! downlinks in 250 ms bins as a share of the link rate, and the tail from the seeder's
//! last byte to the last peer done. To finish at 1.2 x S/C a peer's downlink must be busy
//! over 83% of the run, so the rows show where it was not (issue 10).
//!
//! The straggler line names the host furthest behind the median at [`BEHIND_S`] with what
//! it had from the seeder by [`EARLY_S`] and from peers by 2 s: in the session-7 runs the
//! slow runs' straggler was always the follower the seeder favoured in the ramp, starved of
//! peers' pieces next (`benches/runs/2026-11-29-vm/fleet-session7-pacing-probes`).
//!
//! Times are each peer's own (from its node's start), which the harness starts at once;
//! the peers' bytes from the seeder add up to the seeder's uplink (it serves only them).

use crate::json::Json;
use crate::report::{median, Run};

/// Bin width of the utilisation rows.
pub const BIN_S: f64 = 0.25;
/// When the seeder's share per peer is read (the end of the ramp).
pub const EARLY_S: f64 = 1.5;
/// When the hosts' progress is compared for the straggler line (capped at 60% of the run).
pub const BEHIND_S: f64 = 4.0;

/// One peer's timeline: milestones and cumulative samples `(s, from seeder, from peers)`.
struct PeerLine {
    tracker_s: Option<f64>,
    peer_s: Option<f64>,
    payload_s: Option<f64>,
    samples: Vec<(f64, f64, f64, f64)>,
}

fn parse(report: &Json) -> Option<PeerLine> {
    let t = report.get("timeline")?;
    let f = |k: &str| t.get(k).and_then(Json::as_f64);
    let Json::Arr(rows) = t.get("samples")? else {
        return None;
    };
    let samples = rows
        .iter()
        .filter_map(|r| match r {
            Json::Arr(v) if v.len() >= 4 => Some((
                v[0].as_f64()? / 1000.0,
                v[1].as_f64()?,
                v[2].as_f64()?,
                v[3].as_f64()?,
            )),
            _ => None,
        })
        .collect();
    Some(PeerLine {
        tracker_s: f("first_tracker_answer_s"),
        peer_s: f("first_peer_s"),
        payload_s: f("first_payload_s"),
        samples,
    })
}

/// A cumulative counter at time `t`, linear between samples (flat after the last).
fn at(samples: &[(f64, f64)], t: f64) -> f64 {
    let i = samples.partition_point(|s| s.0 <= t);
    match (i.checked_sub(1).map(|j| samples[j]), samples.get(i)) {
        (None, _) => 0.0,
        (Some(a), None) => a.1,
        (Some(a), Some(b)) => a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0).max(1e-9),
    }
}

/// Bytes per bin of a cumulative counter, over `bins` bins.
fn binned(samples: &[(f64, f64)], bins: usize) -> Vec<f64> {
    (0..bins)
        .map(|i| at(samples, (i + 1) as f64 * BIN_S) - at(samples, i as f64 * BIN_S))
        .collect()
}

fn pct_row(v: &[f64], cap: f64) -> String {
    v.iter()
        .map(|b| format!("{:.0}", 100.0 * b / cap))
        .collect::<Vec<_>>()
        .join(" ")
}

fn med(v: Vec<f64>) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        format!("{:.3}", median(v))
    }
}

/// The run's time split, as indented lines; `None` without peer timelines (older corvid,
/// or a method that is not corvid's swarm). `rate_bps`: the shaped link rate.
pub fn lines(r: &Run, rate_bps: f64) -> Option<String> {
    let c = r.corvid.as_ref()?;
    let named: Vec<(&str, PeerLine)> = c
        .reports
        .iter()
        .filter_map(|(h, j)| Some((h.as_str(), parse(j)?)))
        .collect();
    let straggler = straggler(&named, (0.6 * r.seconds).min(BEHIND_S));
    let peers: Vec<PeerLine> = named.into_iter().map(|(_, p)| p).collect();
    if peers.is_empty() || rate_bps <= 0.0 {
        return None;
    }
    let cap = rate_bps / 8.0 * BIN_S;
    let bins = (r.seconds / BIN_S).ceil() as usize;
    let seeder: Vec<Vec<(f64, f64)>> = peers
        .iter()
        .map(|p| p.samples.iter().map(|s| (s.0, s.1)).collect())
        .collect();
    let mut up = vec![0.0; bins];
    for s in &seeder {
        for (u, b) in up.iter_mut().zip(binned(s, bins)) {
            *u += b;
        }
    }
    let downs: Vec<Vec<f64>> = peers
        .iter()
        .map(|p| {
            let s: Vec<(f64, f64)> = p.samples.iter().map(|s| (s.0, s.1 + s.2)).collect();
            binned(&s, bins)
        })
        .collect();
    let down_med: Vec<f64> = (0..bins)
        .map(|i| median(downs.iter().map(|d| d[i]).collect()))
        .collect();
    let ups: Vec<Vec<f64>> = peers
        .iter()
        .map(|p| {
            let s: Vec<(f64, f64)> = p.samples.iter().map(|s| (s.0, s.3)).collect();
            binned(&s, bins)
        })
        .collect();
    let up_med: Vec<f64> = (0..bins)
        .map(|i| median(ups.iter().map(|d| d[i]).collect()))
        .collect();
    // The seeder's last byte: when the last peer's count from the seeder reached its end.
    let last_seeder_byte = seeder
        .iter()
        .filter_map(|s| {
            let end = s.last()?.1;
            s.iter().find(|x| x.1 >= end).map(|x| x.0)
        })
        .fold(0.0, f64::max);
    // How evenly the seeder's uplink is shared in the ramp (uneven on the namespace fleet,
    // see the engine's `swarm::plan` docs): MiB each peer had from it after 1.5 s.
    let early: Vec<String> = seeder
        .iter()
        .map(|s| format!("{:.1}", at(s, EARLY_S) / f64::from(1 << 20)))
        .collect();
    let col = |f: fn(&PeerLine) -> Option<f64>| med(peers.iter().filter_map(f).collect());
    Some(format!(
        "    start-up (median over peers, s after the peer's start): tracker answer {}, first peer {}, first payload {}\n\
         \x20   seeder uplink, % of rate per {BIN_S} s: {}\n\
         \x20   peers' downlink, median % of rate per {BIN_S} s: {}\n\
         \x20   peers' uplink, median % of rate per {BIN_S} s: {}\n\
         \x20   from the seeder by {EARLY_S} s, MiB per peer: {}\n\
         \x20   tail: seeder's last byte {:.2} s, last peer done {:.2} s\n\
         \x20   {straggler}\n",
        col(|p| p.tracker_s),
        col(|p| p.peer_s),
        col(|p| p.payload_s),
        pct_row(&up, cap),
        pct_row(&down_med, cap),
        pct_row(&up_med, cap),
        early.join(" "),
        last_seeder_byte,
        r.seconds,
    ))
}

/// The host furthest behind the median at `t`, and what it had from the seeder by
/// [`EARLY_S`] and from peers by 2 s, as one line.
fn straggler(peers: &[(&str, PeerLine)], t: f64) -> String {
    let mib = f64::from(1 << 20);
    let col = |p: &PeerLine, f: fn(&(f64, f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        p.samples.iter().map(|s| (s.0, f(s))).collect()
    };
    let held: Vec<f64> = peers
        .iter()
        .map(|(_, p)| at(&col(p, |s| s.1 + s.2), t))
        .collect();
    let Some((i, &least)) = held.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)) else {
        return "straggler: -".into();
    };
    let (host, p) = &peers[i];
    format!(
        "furthest behind at {t:.1} s: {host}, {:.1} MiB behind the median host ({:.1} MiB from the seeder by {EARLY_S} s, {:.1} MiB from peers by 2 s)",
        (median(held.clone()) - least) / mib,
        at(&col(p, |s| s.1), EARLY_S) / mib,
        at(&col(p, |s| s.2), 2.0) / mib,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CorvidDetail;

    fn report(samples: &str) -> Json {
        crate::json::parse(&format!(
            r#"{{"timeline":{{"first_tracker_answer_s":0.01,"first_peer_s":0.02,"first_payload_s":0.1,"samples":{samples}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn bins_add_the_peers_seeder_bytes_and_find_the_tail() {
        // 100 Mbit/s: 3.125 MB per 250 ms bin. Peer 1 gets 3.125 MB from the seeder in
        // the first bin, peer 2 the same in the second; both then fetch from peers.
        let a = report(
            "[[0,0,0,0],[250,3125000,0,0],[500,3125000,3125000,3125000],[1000,3125000,3125000,3125000]]",
        );
        let b = report("[[0,0,0,0],[250,0,0,0],[500,3125000,0,0],[1000,3125000,3125000,3125000]]");
        let r = Run {
            seconds: 1.0,
            corvid: Some(CorvidDetail {
                reports: vec![("h1".into(), a), ("h2".into(), b)],
                ..CorvidDetail::default()
            }),
            ..Run::default()
        };
        let l = lines(&r, 100e6).unwrap();
        assert!(
            l.contains("seeder uplink, % of rate per 0.25 s: 100 100 0 0"),
            "{l}"
        );
        assert!(
            l.contains("median % of rate per 0.25 s: 50 100 25 25"),
            "{l}"
        );
        assert!(
            l.contains("uplink, median % of rate per 0.25 s: 0 50 25 25"),
            "{l}"
        );
        assert!(
            l.contains("seeder's last byte 0.50 s, last peer done 1.00 s"),
            "{l}"
        );
        assert!(l.contains("by 1.5 s, MiB per peer: 3.0 3.0"), "{l}");
        assert!(l.contains("first payload 0.100"), "{l}");
        // At 0.6 s h2 holds 3.125 MB + 20% of its next 3.125 MB, h1 6.25 MB + 20% of 0.
        assert!(
            l.contains("furthest behind at 0.6 s: h2, 1.2 MiB behind the median host (3.0 MiB from the seeder by 1.5 s, 3.0 MiB from peers by 2 s)"),
            "{l}"
        );
        assert!(lines(&Run::default(), 100e6).is_none());
    }
}
