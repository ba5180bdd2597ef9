//! The HTML report of a run: the summary, an SVG timeline per clinic of partitions (grey
//! bands), crashes (red ticks) and the staleness of every answer (dots: green in sync, amber up
//! to an hour stale, red beyond; a black ring marks an answer the converged truth contradicts)
//! over an hour axis, and a histogram of answer staleness.

use crate::run::{Mark, Outcome, Who};

use shikaku_core::text::html_escape as escape;

/// Renders a self-contained HTML page.
pub fn html(outcome: &Outcome) -> String {
    let width = 1000.0;
    let row = 28.0;
    let left = 90.0;
    let rows = outcome.clinics + 1;
    let height = row * rows as f64 + 56.0;
    let span = outcome.simulated_ms.max(1) as f64;
    let x = |ms: u64| left + (ms as f64 / span) * (width - left - 10.0);
    let y = |who: Who| match who {
        Who::Hub => 10.0,
        Who::Clinic(i) => 10.0 + row * (i + 1) as f64,
    };
    let mut svg = String::new();
    svg.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">"
    ));
    for r in 0..rows {
        let who = if r == 0 { Who::Hub } else { Who::Clinic(r - 1) };
        let label = if r == 0 { "hub".to_string() } else { format!("clinic {}", r - 1) };
        svg.push_str(&format!(
            "<text x=\"4\" y=\"{:.1}\">{label}</text><line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            y(who) + 14.0,
            width - 10.0,
            y(who) + 10.0,
            y(who) + 10.0
        ));
    }
    // The hour axis under the rows: a tick and a label every hour (every few hours on long
    // runs), labels kept inside the picture.
    let axis_y = row * rows as f64 + 14.0;
    let hours = (span / 3_600_000.0).ceil() as u64;
    let every = (hours / 24).max(1);
    svg.push_str(&format!(
        "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{axis_y:.1}\" y2=\"{axis_y:.1}\" stroke=\"#444\"/>",
        width - 10.0
    ));
    for h in (0..=hours).step_by(every as usize) {
        let at = h * 3_600_000;
        if at as f64 > span {
            break;
        }
        let tx = x(at);
        let anchor = if tx > width - 40.0 { "end" } else { "middle" };
        svg.push_str(&format!(
            "<line x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{axis_y:.1}\" y2=\"{:.1}\" stroke=\"#444\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{h} h</text>",
            axis_y + 5.0,
            axis_y + 17.0
        ));
    }
    let healed = x(outcome.healed_at_ms);
    let anchor = if healed > width - 120.0 { "end" } else { "start" };
    let label_x = if anchor == "end" { healed - 3.0 } else { healed + 3.0 };
    svg.push_str(&format!(
        "<line x1=\"{healed:.1}\" x2=\"{healed:.1}\" y1=\"0\" y2=\"{axis_y:.1}\" stroke=\"#36c\" stroke-dasharray=\"4 3\"/><text x=\"{label_x:.1}\" y=\"{:.1}\" fill=\"#36c\" text-anchor=\"{anchor}\">faults healed</text>",
        height - 4.0
    ));
    for (at, who, mark) in &outcome.timeline {
        let (x0, y0) = (x(*at), y(*who));
        match mark {
            Mark::Partition { until_ms } => svg.push_str(&format!(
                "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"20\" fill=\"#999\" opacity=\"0.35\"><title>partitioned {:.0}–{:.0} s</title></rect>",
                (x(*until_ms) - x0).max(1.0),
                *at as f64 / 1000.0,
                *until_ms as f64 / 1000.0
            )),
            Mark::Crash => svg.push_str(&format!(
                "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"2\" height=\"20\" fill=\"#c00\"><title>crash at {:.0} s</title></rect>",
                *at as f64 / 1000.0
            )),
            Mark::Check { staleness_s, online, contradicted } => {
                let colour = match (online, staleness_s) {
                    (true, _) => "#2a2",
                    (false, Some(s)) if *s <= shikaku_core::STALE_AFTER_S => "#e90",
                    _ => "#c00",
                };
                let stale = staleness_s.map_or("never synced".to_string(), |s| format!("{s} s stale"));
                let (ring, note) = if *contradicted {
                    (" stroke=\"#000\" stroke-width=\"1.5\" class=\"contradicted\"", ", contradicted by the converged truth")
                } else {
                    ("", "")
                };
                svg.push_str(&format!(
                    "<circle cx=\"{x0:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{colour}\"{ring}><title>check at {:.0} s, {stale}{note}</title></circle>",
                    y0 + 10.0,
                    if *contradicted { 4.0 } else { 2.5 },
                    *at as f64 / 1000.0
                ));
            }
        }
    }
    svg.push_str("</svg>");
    let histogram = staleness_histogram(outcome);
    let summary: String = outcome.lines.iter().map(|l| format!("{}\n", escape(l))).collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>shikaku simulation — {}</title>\
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head><body>\
<h1>shikaku simulation</h1><pre>{summary}</pre><h2>Timeline</h2>\
<p>Grey: cut off from the hub. Red tick: crash. Dots: answers — green in sync, amber up to an hour stale, red beyond; a black ring: an answer the converged truth contradicts. Hours from the start of the run.</p>{svg}\
<h2>Answer staleness</h2>{histogram}</body></html>\n",
        escape(outcome.lines.first().map_or("", String::as_str))
    )
}

/// Staleness buckets of the histogram: (upper bound in seconds, label).
const BUCKETS: [(u64, &str); 8] = [
    (0, "in sync (0 s)"),
    (60, "≤ 1 min"),
    (600, "≤ 10 min"),
    (3_600, "≤ 1 h"),
    (6 * 3_600, "≤ 6 h"),
    (24 * 3_600, "≤ 24 h"),
    (u64::MAX - 1, "> 24 h"),
    (u64::MAX, "never synced"),
];

/// An SVG bar chart of how stale the answers were (counts per bucket).
fn staleness_histogram(outcome: &Outcome) -> String {
    let mut counts = [0u64; BUCKETS.len()];
    for (_, _, mark) in &outcome.timeline {
        if let Mark::Check { staleness_s, .. } = mark {
            let s = staleness_s.unwrap_or(u64::MAX);
            let bucket = BUCKETS.iter().position(|(max, _)| s <= *max).unwrap_or(BUCKETS.len() - 1);
            counts[bucket] += 1;
        }
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (bar_width, label_width, row) = (600.0, 110.0, 20.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\" id=\"staleness-histogram\">",
        label_width + bar_width + 80.0,
        row * BUCKETS.len() as f64 + 4.0
    );
    for (i, ((_, label), count)) in BUCKETS.iter().zip(counts).enumerate() {
        let y = row * i as f64;
        let w = bar_width * count as f64 / max;
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{:.1}\">{label}</text><rect x=\"{label_width}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"14\" fill=\"#69c\"/><text x=\"{:.1}\" y=\"{:.1}\">{count}</text>",
            y + 12.0,
            y + 1.0,
            label_width + w + 4.0,
            y + 12.0
        ));
    }
    svg.push_str("</svg>");
    svg
}
