//! Units the harness reads from flags and prints in reports: byte sizes (`1GiB`,
//! `256MiB`), tc link rates (`1gbit`, `100mbit`) and durations (`0s`, `500ms`).
//!
//! Rates follow tc's own meaning of the suffixes (`gbit` is 10^9 bit/s), because the
//! same string is handed to `scripts/fleet`, which hands it to tc; the lower bound the
//! report draws must use the rate the kernel enforces.

use anyhow::{bail, Context, Result};

/// Parses a byte size: a number with an optional binary (`KiB`, `MiB`, `GiB`, `K`, `M`,
/// `G`) or decimal (`KB`, `MB`, `GB`) suffix; bare numbers are bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .with_context(|| format!("size {s:?}: expected a number such as 1GiB or 256MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => bail!("size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"),
    };
    let bytes = num * mult as f64;
    if !(bytes >= 1.0 && bytes <= (1u64 << 50) as f64) || bytes.fract() != 0.0 {
        bail!("size {s:?}: must be a whole number of bytes between 1 B and 1 PiB");
    }
    Ok(bytes as u64)
}

/// A link rate as tc understands it; `None` means the links are not shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    /// The string handed to tc (validated here so tc cannot reject it halfway through).
    pub tc: String,
    pub bits_per_sec: f64,
}

/// Parses a tc rate (`1gbit`, `500mbit`, `100kbit`, `1gibit`); `none` leaves links unshaped.
pub fn parse_rate(s: &str) -> Result<Option<Rate>> {
    let t = s.trim().to_ascii_lowercase();
    if t == "none" || t == "unshaped" {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .with_context(|| format!("rate {s:?}: expected a number such as 1gbit"))?;
    let mult = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("rate {s:?}: unknown unit {other:?} (use kbit, mbit, gbit, or none)"),
    };
    let bits = num * mult;
    if bits.is_nan() || bits < 8000.0 {
        bail!("rate {s:?}: must be at least 8kbit");
    }
    Ok(Some(Rate {
        tc: t,
        bits_per_sec: bits,
    }))
}

/// Parses a duration such as `0s`, `30s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .with_context(|| format!("duration {s:?}: expected a number such as 30s"))?;
    let secs = match unit {
        "ms" => num / 1000.0,
        "s" | "" => num,
        "m" => num * 60.0,
        other => bail!("duration {s:?}: unknown unit {other:?} (use ms, s, m)"),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        bail!("duration {s:?}: must be between 0s and 24h");
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Formats a byte count with a binary unit, e.g. `1.00 GiB`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// A compact size for file names and labels: `1GiB`, `256MiB`, or bytes when not exact.
pub fn short_size(b: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if b >= 1 << shift && b & ((1 << shift) - 1) == 0 {
            return format!("{}{unit}", b >> shift);
        }
    }
    format!("{b}B")
}

/// Formats a throughput in MB/s (10^6 bytes), the unit scp and rsync users read.
pub fn fmt_mbps(bytes_per_sec: f64) -> String {
    format!("{:.1} MB/s", bytes_per_sec / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("17").unwrap(), 17);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1.3B").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit").unwrap().unwrap().bits_per_sec, 1e9);
        assert_eq!(parse_rate("100Mbit").unwrap().unwrap().tc, "100mbit");
        assert_eq!(parse_rate("none").unwrap(), None);
        assert!(parse_rate("1gbps").is_err());
        assert!(parse_rate("1bit").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s").unwrap().as_millis(), 0);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1h").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_bytes(1 << 30), "1.00 GiB");
        assert_eq!(fmt_bytes(12), "12 B");
        assert_eq!(short_size(256 << 20), "256MiB");
        assert_eq!(short_size(1000), "1000B");
    }
}
