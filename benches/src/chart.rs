//! Horizontal bar charts as hand-written SVG, from the JSON report: one chart per figure, one bar
//! per contender (the median), a whisker for the spread (min to max over the rounds).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The figures charted: JSON metric name, title, unit, decimals.
pub const CHARTS: &[(&str, &str, &str, usize)] = &[
    (
        "server_cpu_us_per_full_handshake",
        "Server CPU per full mTLS handshake (lower is better)",
        "µs",
        0,
    ),
    (
        "server_cpu_us_per_resumed_handshake",
        "Server CPU per resumed handshake (lower is better)",
        "µs",
        0,
    ),
    (
        "server_cpu_s_per_gib",
        "Server CPU per GiB forwarded (lower is better)",
        "s",
        2,
    ),
    (
        "idle_kib_per_connection",
        "RSS per idle proxied connection (lower is better)",
        "KiB",
        1,
    ),
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One chart for `metric`, or `None` if no contender has it.
pub fn render(
    report: &Value,
    metric: &str,
    title: &str,
    unit: &str,
    decimals: usize,
) -> Option<String> {
    let rows: Vec<(String, f64, f64, f64, Option<f64>)> = report["contenders"]
        .as_array()?
        .iter()
        .filter_map(|c| {
            let get = |k: &str| c[k][metric].as_f64().filter(|v| v.is_finite());
            Some((
                c["name"].as_str()?.to_owned(),
                get("median")?,
                get("min")?,
                get("max")?,
                get("ratio_vs_baseline"),
            ))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let (left, bar_w, row_h, top) = (130.0, 400.0, 30.0, 48.0);
    let width = left + bar_w + 170.0;
    let height = top + row_h * rows.len() as f64 + 34.0;
    let max = rows.iter().map(|r| r.3.max(r.1)).fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { bar_w / max } else { 0.0 };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="22" font-size="15" font-weight="bold">{}</text>
"##,
        escape(title)
    );
    for (i, (name, median, min, max, ratio)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let fill = if name.starts_with("mtlsd") {
            "#2b6cb0"
        } else {
            "#a0aec0"
        };
        let w = median * scale;
        let _ = write!(
            svg,
            r##"<text x="{tx}" y="{ty}" text-anchor="end">{name}</text>
<rect x="{left}" y="{y}" width="{w:.1}" height="{bh}" fill="{fill}"/>
<line x1="{x1:.1}" x2="{x2:.1}" y1="{wy}" y2="{wy}" stroke="#1a202c" stroke-width="1.5"/>
<text x="{lx:.1}" y="{ty}">{label} {unit}{times}</text>
"##,
            tx = left - 8.0,
            ty = y + 16.0,
            name = escape(name),
            bh = row_h - 8.0,
            x1 = left + min * scale,
            x2 = left + max * scale,
            wy = y + (row_h - 8.0) / 2.0,
            lx = left + w.max(max * scale) + 6.0,
            unit = escape(unit),
            label = crate::num(&serde_json::json!(median), decimals),
            times = ratio.map_or(String::new(), |r| format!(" · {r:.2}×")),
        );
    }
    let _ = write!(
        svg,
        r##"<text x="10" y="{fy}" font-size="11" fill="#4a5568">median of {rounds} interleaved rounds, whisker min to max, × vs {base}. {date}, {cpu}</text>
</svg>
"##,
        fy = height - 12.0,
        rounds = report["settings"]["rounds"],
        base = escape(report["baseline"].as_str().unwrap_or("")),
        date = escape(report["date"].as_str().unwrap_or("")),
        cpu = escape(report["machine"]["cpu"].as_str().unwrap_or("")),
    );
    Some(svg)
}

/// Writes every chart the report has data for into `dir`; returns the files written.
pub fn render_all(report: &Value, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (metric, title, unit, decimals) in CHARTS {
        if let Some(svg) = render(report, metric, title, unit, *decimals) {
            let path = dir.join(format!("{metric}.svg"));
            std::fs::write(&path, svg)?;
            written.push(path);
        }
    }
    Ok(written)
}
