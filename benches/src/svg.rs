//! Hand-written SVG charts (no plotting dependency): for `fleet`, completion time
//! against fleet size per method with the physical lower bound S/C as a dashed line;
//! for `link`, median throughput per method as bars with min–max whiskers; for `delta`,
//! each shape's wall times side by side (corvid full, corvid delta, rsync delta).

use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One method's line: (fleet size, median seconds, min, max) per point.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum and step covering `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| s * 5.0 >= max)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn header(out: &mut String, title: &str) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        esc(title)
    );
}

fn y_axis(out: &mut String, ymax: f64, ystep: f64, label: &str) {
    let ph = H - TOP - BOTTOM;
    let mut v = 0.0;
    while v <= ymax + ystep * 0.01 {
        let y = TOP + ph - v / ymax * ph;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            trim_num(v)
        );
        v += ystep;
    }
    let _ = writeln!(
        out,
        r#"<text transform="translate(22,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(label)
    );
    let _ = writeln!(
        out,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        TOP + ph,
        TOP + ph,
        W - RIGHT,
        TOP + ph
    );
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn legend(out: &mut String, items: &[(String, String, bool)]) {
    let x = W - RIGHT + 16.0;
    for (i, (label, color, dashed)) in items.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 20.0;
        let dash = if *dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{:.0}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.0}" y="{:.0}">{}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0,
            esc(label)
        );
    }
}

/// The fleet chart's scales: whole-host ticks on x, seconds on y.
struct FleetPlot {
    xmin: f64,
    xmax: f64,
    xstep: f64,
    ymax: f64,
    ystep: f64,
}

impl FleetPlot {
    fn new(series: &[Series], bound: &[(f64, f64)]) -> FleetPlot {
        let xmax_raw = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .chain(bound.iter().map(|b| b.0))
            .fold(0.0, f64::max);
        // Fleet sizes are whole hosts: integer ticks, and room to the right of the last point.
        let (_, xstep) = nice_axis(xmax_raw.max(1.0) * 1.1);
        let xstep = xstep.ceil().max(1.0);
        let xmax = (xmax_raw.max(1.0) * 1.1 / xstep).ceil() * xstep;
        let ymax_raw = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.3))
            .chain(bound.iter().map(|b| b.1))
            .fold(0.0, f64::max);
        let (ymax, ystep) = nice_axis(ymax_raw * 1.05);
        FleetPlot {
            xmin: 0.0,
            xmax,
            xstep,
            ymax,
            ystep,
        }
    }

    fn sx(&self, x: f64) -> f64 {
        LEFT + (x - self.xmin) / (self.xmax - self.xmin) * (W - LEFT - RIGHT)
    }

    fn sy(&self, y: f64) -> f64 {
        let ph = H - TOP - BOTTOM;
        TOP + ph - y / self.ymax * ph
    }

    fn x_axis(&self, out: &mut String) {
        let ph = H - TOP - BOTTOM;
        let mut v = self.xmin;
        while v <= self.xmax + self.xstep * 0.01 {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                self.sx(v),
                TOP + ph + 18.0,
                trim_num(v)
            );
            v += self.xstep;
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">receiving hosts N</text>"#,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 16.0
        );
    }

    /// The dashed S/C line. With a single N it still runs across the plot: the bound
    /// does not depend on N.
    fn bound_line(&self, out: &mut String, bound: &[(f64, f64)]) {
        let pts: Vec<String> = if bound.len() == 1 {
            vec![
                format!("{:.1},{:.1}", self.sx(self.xmin), self.sy(bound[0].1)),
                format!("{:.1},{:.1}", self.sx(self.xmax), self.sy(bound[0].1)),
            ]
        } else {
            bound
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", self.sx(*x), self.sy(*y)))
                .collect()
        };
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#444" stroke-width="2" stroke-dasharray="6,4"/>"##,
            pts.join(" ")
        );
    }

    /// One method: its line, and per point the median with a min-max whisker.
    fn series(&self, out: &mut String, s: &Series, color: &str) {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", self.sx(p.0), self.sy(p.1)))
            .collect();
        if pts.len() > 1 {
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                pts.join(" ")
            );
        }
        for p in &s.points {
            let _ = writeln!(
                out,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}"/><circle cx="{x:.1}" cy="{:.1}" r="4" fill="{color}"><title>{} N={}: {:.3}s (min {:.3}, max {:.3})</title></circle>"#,
                self.sy(p.2),
                self.sy(p.3),
                self.sy(p.1),
                esc(&s.label),
                p.0,
                p.1,
                p.2,
                p.3,
                x = self.sx(p.0)
            );
        }
    }
}

/// Completion time vs fleet size. `bound` holds (N, S/C seconds) when links are shaped.
pub fn fleet_chart(title: &str, series: &[Series], bound: &[(f64, f64)]) -> String {
    let mut out = String::new();
    header(&mut out, title);
    let plot = FleetPlot::new(series, bound);
    y_axis(
        &mut out,
        plot.ymax,
        plot.ystep,
        "seconds until every host holds the payload",
    );
    plot.x_axis(&mut out);
    let mut items = Vec::new();
    if !bound.is_empty() {
        plot.bound_line(&mut out, bound);
        items.push(("bound S/C".to_string(), "#444".to_string(), true));
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        plot.series(&mut out, s, color);
        let label = if s.points.is_empty() {
            format!("{} (failed)", s.label)
        } else {
            s.label.clone()
        };
        items.push((label, color.to_string(), false));
    }
    legend(&mut out, &items);
    out.push_str("</svg>\n");
    out
}

/// Median throughput per method (bars) with min–max whiskers, in MB/s.
/// Methods in `failed` are listed in the legend without a bar.
pub fn link_chart(title: &str, bars: &[(String, f64, f64, f64)], failed: &[String]) -> String {
    let mut out = String::new();
    header(&mut out, title);
    let ymax_raw = bars.iter().map(|b| b.3).fold(0.0, f64::max);
    let (ymax, ystep) = nice_axis(ymax_raw * 1.05);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sy = |y: f64| TOP + ph - y / ymax * ph;
    y_axis(&mut out, ymax, ystep, "throughput, MB/s (10^6 bytes/s)");
    let slot = pw / bars.len().max(1) as f64;
    let mut items = Vec::new();
    for (i, (label, med, min, max)) in bars.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let w = slot * 0.6;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{color}"><title>{}: {:.1} MB/s</title></rect>"#,
            sy(*med),
            (sy(0.0) - sy(*med)).max(0.0),
            esc(label),
            med
        );
        let cx = x + w / 2.0;
        let _ = writeln!(
            out,
            r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            sy(*min),
            sy(*max),
            TOP + ph + 18.0,
            esc(label)
        );
        items.push((format!("{label} {med:.0} MB/s"), color.to_string(), false));
    }
    for f in failed {
        items.push((format!("{f} (failed)"), "#bbb".to_string(), true));
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">method (bar: median of runs; whisker: min to max)</text>"#,
        LEFT + pw / 2.0,
        H - 16.0
    );
    legend(&mut out, &items);
    out.push_str("</svg>\n");
    out
}

/// `delta`: per shape (a group), one bar per method in seconds, the bar's label above it.
/// `groups`: (shape, [(method, seconds)]); methods keep their colour across groups.
pub fn delta_chart(title: &str, groups: &[(String, Vec<(String, f64)>)]) -> String {
    let mut out = String::new();
    header(&mut out, title);
    let ymax_raw = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|b| b.1))
        .fold(0.0, f64::max);
    let (ymax, ystep) = nice_axis(ymax_raw * 1.1);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sy = |y: f64| TOP + ph - y / ymax * ph;
    y_axis(
        &mut out,
        ymax,
        ystep,
        "wall time until every host holds it, s",
    );
    let mut methods: Vec<String> = Vec::new();
    let slot = pw / groups.len().max(1) as f64;
    for (g, (shape, bars)) in groups.iter().enumerate() {
        let w = slot * 0.8 / bars.len().max(1) as f64;
        for (i, (method, secs)) in bars.iter().enumerate() {
            let k = methods.iter().position(|m| m == method).unwrap_or_else(|| {
                methods.push(method.clone());
                methods.len() - 1
            });
            let color = COLORS[k % COLORS.len()];
            let x = LEFT + slot * g as f64 + slot * 0.1 + w * i as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}, {}: {secs:.2} s</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle">{secs:.1}</text>"#,
                sy(*secs),
                w * 0.9,
                (sy(0.0) - sy(*secs)).max(0.0),
                esc(shape),
                esc(method),
                x + w * 0.45,
                sy(*secs) - 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + slot * g as f64 + slot / 2.0,
            TOP + ph + 18.0,
            esc(shape)
        );
    }
    let items: Vec<(String, String, bool)> = methods
        .iter()
        .enumerate()
        .map(|(k, m)| (m.clone(), COLORS[k % COLORS.len()].to_string(), false))
        .collect();
    legend(&mut out, &items);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_chart_groups_shapes_and_keeps_method_colours() {
        let s = delta_chart(
            "delta <x>",
            &[
                (
                    "files".into(),
                    vec![("corvid delta".into(), 9.5), ("rsync".into(), 4.0)],
                ),
                (
                    "block".into(),
                    vec![("corvid delta".into(), 9.7), ("rsync".into(), 8.1)],
                ),
            ],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("delta &lt;x&gt;"));
        assert_eq!(
            s.matches("<rect x=").count(),
            4,
            "a bar per shape and method: {s}"
        );
        assert!(s.contains("files, rsync: 4.00 s") && s.contains("block, corvid delta: 9.70 s"));
        // One colour per method, in both groups.
        let fill = |t: &str| {
            let i = s.find(t).unwrap();
            let before = &s[..i];
            let f = before.rfind("fill=\"").unwrap();
            before[f + 6..f + 13].to_string()
        };
        assert_eq!(fill("files, rsync"), fill("block, rsync"));
        assert_ne!(fill("files, rsync"), fill("files, corvid delta"));
    }

    #[test]
    fn axis_is_nice() {
        let close =
            |(a, b): (f64, f64), (c, d): (f64, f64)| (a - c).abs() < 1e-9 && (b - d).abs() < 1e-9;
        assert!(close(nice_axis(9.3), (10.0, 2.0)));
        assert!(close(nice_axis(0.27), (0.3, 0.1)));
        assert!(close(nice_axis(0.0), (1.0, 0.2)));
    }

    #[test]
    fn fleet_chart_has_axes_legend_and_bound() {
        let s = fleet_chart(
            "fleet <test>",
            &[Series {
                label: "scp-par".into(),
                points: vec![(2.0, 1.0, 0.9, 1.1), (4.0, 2.0, 1.9, 2.2)],
            }],
            &[(2.0, 0.3), (4.0, 0.3)],
        );
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("fleet &lt;test&gt;"));
        assert!(s.contains("receiving hosts N"));
        assert!(s.contains("bound S/C"));
        assert!(s.contains(">scp-par<"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }

    #[test]
    fn link_chart_has_bars() {
        let s = link_chart(
            "link",
            &[("scp".into(), 300.0, 280.0, 320.0)],
            &["corvid".to_string()],
        );
        assert!(s.contains("corvid (failed)"));
        assert!(s.contains("<rect x="));
        assert!(s.contains("scp 300 MB/s"));
        assert!(!s.contains("NaN"));
    }
}
