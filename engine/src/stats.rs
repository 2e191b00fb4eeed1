//! Transfer counters and latency histograms, and the [`Report`] the CLI prints.
//!
//! A [`TransferStats`] is owned by one thread (one per runtime core) and updated without
//! locks or atomics; at the end the cores' stats are [`TransferStats::merge`]d and turned
//! into a [`Report`], a plain value the CLI renders as text ([`std::fmt::Display`]) or as
//! one JSON object ([`Report::to_json`]). The report is its own JSON shape (serde), so its
//! keys and their order are written down once, and serde_json does the escaping.
//!
//! Piece latency is measured from the first request of a piece to its hash verdict, in
//! microseconds, into an HdrHistogram (3 significant digits, 1 µs to 1 hour; longer
//! values saturate at the top rather than being dropped).

use std::fmt;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

/// Highest latency the histogram resolves: an hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Byte and piece counters and the piece latency histogram of one transfer.
#[derive(Debug, Clone)]
pub struct TransferStats {
    started: Instant,
    ended: Option<Instant>,
    bytes_down: u64,
    bytes_up: u64,
    bytes_from_seeder: u64,
    bytes_from_peers: u64,
    pieces_verified: u64,
    pieces_failed: u64,
    piece_latency_us: Histogram<u64>,
}

impl TransferStats {
    /// Starts counting at `now`.
    pub fn new(now: Instant) -> Self {
        TransferStats {
            started: now,
            ended: None,
            bytes_down: 0,
            bytes_up: 0,
            bytes_from_seeder: 0,
            bytes_from_peers: 0,
            pieces_verified: 0,
            pieces_failed: 0,
            piece_latency_us: latency_histogram(),
        }
    }

    /// Payload bytes received; `from_seeder` says whether the sender was the seeder,
    /// which is how the report shows how much the peers carried.
    pub fn record_download(&mut self, bytes: u64, from_seeder: bool) {
        self.bytes_down = self.bytes_down.saturating_add(bytes);
        if from_seeder {
            self.bytes_from_seeder = self.bytes_from_seeder.saturating_add(bytes);
        } else {
            self.bytes_from_peers = self.bytes_from_peers.saturating_add(bytes);
        }
    }

    /// Payload bytes sent.
    pub fn record_upload(&mut self, bytes: u64) {
        self.bytes_up = self.bytes_up.saturating_add(bytes);
    }

    /// A piece passed its hash check `latency` after it was first requested.
    pub fn record_piece_verified(&mut self, latency: Duration) {
        self.pieces_verified += 1;
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        self.piece_latency_us.saturating_record(us);
    }

    /// A piece failed its hash check (it will be fetched again).
    pub fn record_piece_failed(&mut self) {
        self.pieces_failed += 1;
    }

    /// The transfer ended at `now`; later reports use this as their end.
    pub fn finish(&mut self, now: Instant) {
        self.ended = Some(now);
    }

    /// Adds another core's counts: the earliest start and latest end win.
    pub fn merge(&mut self, other: &TransferStats) {
        self.started = self.started.min(other.started);
        self.ended = match (self.ended, other.ended) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.bytes_down = self.bytes_down.saturating_add(other.bytes_down);
        self.bytes_up = self.bytes_up.saturating_add(other.bytes_up);
        self.bytes_from_seeder = self
            .bytes_from_seeder
            .saturating_add(other.bytes_from_seeder);
        self.bytes_from_peers = self.bytes_from_peers.saturating_add(other.bytes_from_peers);
        self.pieces_verified += other.pieces_verified;
        self.pieces_failed += other.pieces_failed;
        // Both histograms have the same bounds, so adding cannot fail; if it somehow
        // did, the latencies of `other` are lost rather than the report.
        let _ = self.piece_latency_us.add(&other.piece_latency_us);
    }

    /// The numbers so far; an unfinished transfer is measured up to `now`.
    pub fn report(&self, now: Instant) -> Report {
        let end = self.ended.unwrap_or(now);
        let elapsed = end.saturating_duration_since(self.started);
        let piece_latency_us = LatencySummary::of(&self.piece_latency_us);
        Report {
            label: None,
            elapsed,
            bytes_down: self.bytes_down,
            bytes_up: self.bytes_up,
            bytes_from_seeder: self.bytes_from_seeder,
            bytes_from_peers: self.bytes_from_peers,
            pieces_verified: self.pieces_verified,
            pieces_failed: self.pieces_failed,
            down_rate_bps: rate(self.bytes_down, elapsed),
            piece_latency_us,
        }
    }
}

fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds (low >= 1, high >= 2 * low, sigfig <= 5): cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Quantiles of a latency distribution, in the unit of the field that holds it (`_us`, `_ns`); all zero when nothing was
/// recorded. Values are HdrHistogram's (within 0.1% of the recorded ones).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    #[serde(serialize_with = "json_number")]
    pub mean: f64,
}

impl LatencySummary {
    /// The quantiles of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The summary of one transfer, for printing. Its JSON shape is this struct (keys in
/// field order; durations in seconds as `_s` or microseconds as `_us`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What the report is about (a host name, a run id), set by the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(rename = "elapsed_s", serialize_with = "json_duration")]
    pub elapsed: Duration,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub bytes_from_seeder: u64,
    pub bytes_from_peers: u64,
    pub pieces_verified: u64,
    pub pieces_failed: u64,
    /// Download rate in bytes per second over `elapsed` (0 if no time passed), computed
    /// once by [`TransferStats::report`].
    #[serde(serialize_with = "json_number")]
    pub down_rate_bps: f64,
    pub piece_latency_us: LatencySummary,
}

impl Report {
    /// The report as one JSON object on one line (no trailing newline).
    pub fn to_json(&self) -> String {
        to_json_line(self)
    }
}

/// Bytes per second over `elapsed`, 0 if no time passed.
fn rate(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        bytes as f64 / s
    } else {
        0.0
    }
}

fn json_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    json_number(&d.as_secs_f64(), s)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(label) = &self.label {
            writeln!(f, "{label}")?;
        }
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "  {:.1} MiB down in {:.2} s ({:.1} MiB/s), {:.1} MiB up",
            mib(self.bytes_down),
            self.elapsed.as_secs_f64(),
            self.down_rate_bps / (1024.0 * 1024.0),
            mib(self.bytes_up)
        )?;
        writeln!(
            f,
            "  from seeder {:.1} MiB, from peers {:.1} MiB",
            mib(self.bytes_from_seeder),
            mib(self.bytes_from_peers)
        )?;
        let l = &self.piece_latency_us;
        write!(
            f,
            "  pieces: {} verified, {} failed; latency p50 {} us, p90 {} us, p99 {} us, max {} us",
            self.pieces_verified, self.pieces_failed, l.p50, l.p90, l.p99, l.max
        )
    }
}

/// `value` as one line of JSON, with U+2028, U+2029 and DEL escaped as well: valid JSON
/// raw, but they break JavaScript and some terminals, and they can only occur inside
/// strings, so escaping them after serde_json is exact.
pub fn to_json_line<T: Serialize + ?Sized>(value: &T) -> String {
    // serde_json fails only on maps with non-string keys or a Serialize impl that errors;
    // the shapes printed here are structs of numbers and strings.
    let raw = serde_json::to_string(value).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot encode as JSON: {e}") }).to_string()
    });
    if !raw.contains(['\u{2028}', '\u{2029}', '\u{7f}']) {
        return raw;
    }
    raw.replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .replace('\u{7f}', "\\u007f")
}

/// `s` as a JSON string literal, quotes included; the one escaper every JSON line corvid
/// prints goes through.
pub fn json_string(s: &str) -> String {
    to_json_line(s)
}

/// A number as JSON: an integral value (within the range f64 holds exactly) without a
/// fraction, as corvid has always printed it (`"down_rate_bps":0`); others as the
/// shortest decimal that reads back the same; NaN and infinities, which JSON lacks, as
/// `null`.
pub fn json_number<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if !v.is_finite() {
        s.serialize_none()
    } else if v.fract() == 0.0 && v.abs() <= EXACT {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Seconds with exactly six decimals (`1.500000`), as the node's JSON lines always printed
/// durations; `None` as `null`.
pub fn json_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    match d {
        None => s.serialize_none(),
        Some(d) => serde_json::value::RawValue::from_string(format!("{:.6}", d.as_secs_f64()))
            .map_err(S::Error::custom)?
            .serialize(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let t0 = Instant::now();
        let mut s = TransferStats::new(t0);
        s.record_download(1000, true);
        s.record_download(3000, false);
        s.record_upload(500);
        for ms in 1..=100u64 {
            s.record_piece_verified(Duration::from_millis(ms));
        }
        s.record_piece_failed();
        s.finish(t0 + Duration::from_secs(2));
        let r = s.report(t0 + Duration::from_secs(99));
        assert_eq!(r.elapsed, Duration::from_secs(2), "finish fixes the end");
        assert_eq!(
            (r.bytes_down, r.bytes_from_seeder, r.bytes_from_peers),
            (4000, 1000, 3000)
        );
        assert_eq!(r.bytes_up, 500);
        assert_eq!((r.pieces_verified, r.pieces_failed), (100, 1));
        assert_eq!(r.down_rate_bps, 2000.0);
        let l = r.piece_latency_us;
        assert_eq!(l.count, 100);
        // Within HdrHistogram's 3-significant-digit precision of the exact values.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(l.min, 1_000), "{l:?}");
        assert!(near(l.p50, 50_000), "{l:?}");
        assert!(near(l.p90, 90_000), "{l:?}");
        assert!(near(l.p99, 99_000), "{l:?}");
        assert!(near(l.max, 100_000), "{l:?}");
        assert!((l.mean - 50_500.0).abs() < 100.0, "{l:?}");
    }

    #[test]
    fn empty_and_extreme_values() {
        let t0 = Instant::now();
        let mut s = TransferStats::new(t0);
        let r = s.report(t0);
        assert_eq!(r.piece_latency_us, LatencySummary::default());
        assert_eq!(r.down_rate_bps, 0.0);
        assert!(
            r.to_json().contains("\"down_rate_bps\":0,"),
            "{}",
            r.to_json()
        );
        s.record_piece_verified(Duration::ZERO);
        s.record_piece_verified(Duration::from_secs(100_000));
        s.record_download(u64::MAX, false);
        s.record_download(1, false);
        let r = s.report(t0 + Duration::from_secs(1));
        assert_eq!(r.piece_latency_us.count, 2);
        assert_eq!(r.piece_latency_us.min, 1, "zero is clamped to 1 us");
        assert!(
            r.piece_latency_us.max >= MAX_LATENCY_US,
            "saturates at the top"
        );
        assert_eq!(r.bytes_down, u64::MAX, "counters saturate");
    }

    #[test]
    fn merge_combines_cores() {
        let t0 = Instant::now();
        let mut a = TransferStats::new(t0 + Duration::from_secs(1));
        let mut b = TransferStats::new(t0);
        a.record_download(10, true);
        a.record_piece_verified(Duration::from_millis(5));
        b.record_download(20, false);
        b.record_upload(7);
        b.record_piece_verified(Duration::from_millis(50));
        a.finish(t0 + Duration::from_secs(3));
        b.finish(t0 + Duration::from_secs(4));
        a.merge(&b);
        let r = a.report(t0);
        assert_eq!(r.elapsed, Duration::from_secs(4));
        assert_eq!(
            (
                r.bytes_down,
                r.bytes_from_seeder,
                r.bytes_from_peers,
                r.bytes_up
            ),
            (30, 10, 20, 7)
        );
        assert_eq!(r.piece_latency_us.count, 2);
        assert_eq!(r.pieces_verified, 2);
    }

    #[test]
    fn json_is_exact_and_escaped() {
        let r = Report {
            label: Some("host \"a\"\\b\n\u{1}\u{2028}é".into()),
            elapsed: Duration::from_millis(1500),
            bytes_down: 3,
            bytes_up: 4,
            bytes_from_seeder: 1,
            bytes_from_peers: 2,
            pieces_verified: 5,
            pieces_failed: 0,
            down_rate_bps: 2.0,
            piece_latency_us: LatencySummary {
                count: 5,
                min: 1,
                p50: 2,
                p90: 3,
                p99: 4,
                max: 5,
                mean: 2.5,
            },
        };
        assert_eq!(
            r.to_json(),
            "{\"label\":\"host \\\"a\\\"\\\\b\\n\\u0001\\u2028é\",\"elapsed_s\":1.5,\
             \"bytes_down\":3,\"bytes_up\":4,\"bytes_from_seeder\":1,\"bytes_from_peers\":2,\
             \"pieces_verified\":5,\"pieces_failed\":0,\"down_rate_bps\":2,\
             \"piece_latency_us\":{\"count\":5,\"min\":1,\"p50\":2,\"p90\":3,\"p99\":4,\"max\":5,\"mean\":2.5}}"
        );
        let mut nan = r.clone();
        nan.piece_latency_us.mean = f64::NAN;
        nan.elapsed = Duration::ZERO;
        let j = nan.to_json();
        assert!(j.contains("\"mean\":null}"), "{j}");
        assert!(j.contains("\"elapsed_s\":0,"), "{j}");
        assert_eq!(json_string("\u{7f}\u{2029}\t"), "\"\\u007f\\u2029\\t\"");
        let text = r.to_string();
        assert!(text.contains("p99 4 us"), "{text}");
    }
}
