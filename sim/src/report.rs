//! The HTML report of a run: the summary, and an SVG timeline per clinic of partitions
//! (grey bands), crashes (red ticks) and the staleness of every answer (dots: green in sync,
//! amber up to an hour stale, red beyond).

use crate::run::{Mark, Outcome, Who};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Renders a self-contained HTML page.
pub fn html(outcome: &Outcome) -> String {
    let width = 1000.0;
    let row = 28.0;
    let left = 90.0;
    let rows = outcome.clinics + 1;
    let height = row * rows as f64 + 40.0;
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
    let healed = x(outcome.healed_at_ms);
    svg.push_str(&format!(
        "<line x1=\"{healed:.1}\" x2=\"{healed:.1}\" y1=\"0\" y2=\"{:.1}\" stroke=\"#36c\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#36c\">faults healed</text>",
        height - 20.0,
        healed + 3.0,
        height - 8.0
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
            Mark::Check { staleness_s, online } => {
                let colour = match (online, staleness_s) {
                    (true, _) => "#2a2",
                    (false, Some(s)) if *s <= 3600 => "#e90",
                    _ => "#c00",
                };
                let stale = staleness_s.map_or("never synced".to_string(), |s| format!("{s} s stale"));
                svg.push_str(&format!(
                    "<circle cx=\"{x0:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"><title>check at {:.0} s, {stale}</title></circle>",
                    y0 + 10.0,
                    *at as f64 / 1000.0
                ));
            }
        }
    }
    svg.push_str("</svg>");
    let summary: String = outcome.lines.iter().map(|l| format!("{}\n", escape(l))).collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>shikaku simulation — {}</title>\
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head><body>\
<h1>shikaku simulation</h1><pre>{summary}</pre><h2>Timeline</h2>\
<p>Grey: cut off from the hub. Red tick: crash. Dots: answers — green in sync, amber up to an hour stale, red beyond.</p>{svg}</body></html>\n",
        escape(outcome.lines.first().map_or("", String::as_str))
    )
}
