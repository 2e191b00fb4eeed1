//! Output helpers: JSON string escaping, a progress bar that only exists on a terminal,
//! and stdout writing that reports errors (so a closed pipe ends us quietly) instead of
//! panicking like `println!`.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

/// Writes `text` to stdout, returning write errors (a broken pipe included) to the caller.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// `s` made safe for a terminal: control characters (C0 with ESC, DEL, C1) and the
/// bidirectional-text overrides are written as `\x1b` / `\u{202e}` escapes. Names,
/// paths, comments and tracker URLs come from torrents anyone can write; printed raw, an
/// escape sequence in them could retitle the terminal, hide lines or move the cursor
/// over other output, and a bidi override could make a path read as another one. JSON
/// output needs none of this: its strings are escaped by serde_json
/// ([`corvid_engine::stats::to_json_line`]).
pub fn printable(s: &str) -> String {
    use std::fmt::Write as _;
    let risky = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(risky) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !risky(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    out
}

/// A bar over `len` payload bytes on stderr, or a hidden one when stderr is not a terminal (logs
/// and pipes get no control characters).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// Human-readable byte count (binary units).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12), "12 B");
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        assert_eq!(printable("plain/päth ünïcode"), "plain/päth ünïcode");
        assert_eq!(printable("a\x1b]0;owned\x07b"), "a\\x1b]0;owned\\x07b");
        assert_eq!(
            printable("x\ny\rz\t\x7f\u{9b}"),
            "x\\x0ay\\x0dz\\x09\\x7f\\x9b"
        );
        assert_eq!(printable("gpj.\u{202e}exe"), "gpj.\\u{202e}exe");
        for c in (0u32..0x20).chain(0x7f..0xa0) {
            let c = char::from_u32(c).unwrap();
            assert!(!printable(&c.to_string()).contains(c), "{c:?}");
        }
    }
}
