//! The report for people: plain-text tables ([`render_text`]), a self-contained HTML page
//! ([`render_html`]) and JSON, all from the same sections.

use crate::report::*;
use shikaku_core::text::{code_name, short};
use shikaku_core::{CheckMode, CheckQuery};

fn query_text(q: &CheckQuery) -> String {
    match q {
        CheckQuery::Card(card) => format!("card {}…", &card.to_string()[..12]),
        CheckQuery::Member(member) => format!("member {member}"),
    }
}

fn mode_name(mode: CheckMode) -> &'static str {
    match mode {
        CheckMode::Online => "online",
        CheckMode::Offline => "offline",
    }
}

fn billing_text(b: Option<Billing>) -> String {
    match b {
        None => "—".to_owned(),
        Some(Billing { insurer: Some(i), patient_tenths }) => format!("{i} {patient_tenths}/10"),
        Some(Billing { insurer: None, patient_tenths }) => format!("self-pay {patient_tenths}/10"),
    }
}

/// A plain-text table layout: pads every column to its widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    use std::fmt::Write as _;
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("  ");
        for (cell, w) in cells.iter().zip(&width) {
            s.push_str(cell);
            s.push_str(&" ".repeat(w - cell.chars().count() + 2));
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(header.iter().map(|h| h.to_string()).collect()));
    let _ = writeln!(out, "{}", line(width.iter().map(|w| "─".repeat(*w)).collect()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.clone()));
    }
}

/// One table of the report.
struct Section {
    title: &'static str,
    header: &'static [&'static str],
    rows: Vec<Vec<String>>,
    /// Rows shown in the terminal (the JSON and HTML carry them all).
    terminal_rows: usize,
}

/// The report's tables, in order; shared by the terminal and HTML renderings.
fn sections(r: &Report) -> Vec<Section> {
    let jst = shikaku_core::text::jst;
    let section = |title, header, rows: Vec<Vec<String>>| Section {
        title,
        header,
        terminal_rows: rows.len(),
        rows,
    };
    let mut out = vec![section(
        "Checks the converged truth contradicts",
        &[
            "answered",
            "clinic",
            "mode",
            "asked",
            "service",
            "answer",
            "truth",
            "billed",
            "due",
            "action",
            "decided later by",
        ],
        r.contradicted
            .iter()
            .map(|c| {
                vec![
                    jst(c.check.at_ms),
                    c.check.clinic.clone(),
                    mode_name(c.check.mode).to_owned(),
                    query_text(&c.check.query),
                    c.check.service_date.to_string(),
                    code_name(c.check.answered),
                    code_name(c.truth),
                    billing_text(c.billed),
                    billing_text(c.due),
                    c.action.clone(),
                    c.decided_later_by.iter().map(short).collect::<Vec<_>>().join(" "),
                ]
            })
            .collect(),
    )];
    if !r.not_rederivable.is_empty() {
        out.push(section(
            "Checks whose recorded answer could not be re-derived from the hub's events",
            &["check", "clinic", "mode", "asked", "service", "answer"],
            r.not_rederivable
                .iter()
                .map(|c| {
                    vec![
                        short(&c.check),
                        c.clinic.clone(),
                        mode_name(c.mode).to_owned(),
                        query_text(&c.query),
                        c.service_date.to_string(),
                        code_name(c.answered),
                    ]
                })
                .collect(),
        ));
    }
    out.push(section(
        "Self-declarations",
        &["recorded", "clinic", "presented", "insurer", "from", "state", "how"],
        r.declarations
            .iter()
            .map(|d| {
                vec![
                    jst(d.at_ms),
                    d.clinic.clone(),
                    query_text(&d.query),
                    d.declared_insurer.map(|i| i.to_string()).unwrap_or_else(|| "—".into()),
                    d.declared_start.to_string(),
                    if d.resolved { "resolved".into() } else { "UNRESOLVED".into() },
                    d.resolution.clone(),
                ]
            })
            .collect(),
    ));
    out.push(section(
        "Late or retroactive changes that affect past checks",
        &["event", "kind", "insurer", "recorded", "checks changed"],
        r.retroactive
            .iter()
            .map(|x| {
                vec![
                    short(&x.event),
                    x.kind.to_owned(),
                    x.insurer.map(|i| i.to_string()).unwrap_or_default(),
                    jst(x.recorded_ms),
                    x.checks.iter().map(short).collect::<Vec<_>>().join(" "),
                ]
            })
            .collect(),
    ));
    out.push(section(
        "Checks that used a card link later revoked as a wrong-person linkage",
        &["answered", "clinic", "mode", "asked", "service", "answer", "linked to", "revoked"],
        r.revoked_link_uses
            .iter()
            .map(|u| {
                vec![
                    jst(u.check.at_ms),
                    u.check.clinic.clone(),
                    mode_name(u.check.mode).to_owned(),
                    query_text(&u.check.query),
                    u.check.service_date.to_string(),
                    code_name(u.check.answered),
                    u.linked_member.to_string(),
                    jst(u.revoked_ms),
                ]
            })
            .collect(),
    ));
    let mut conflicts = section(
        "Conflicts waiting for a decision",
        &["conflict"],
        r.conflicts.iter().map(|c| vec![shikaku_core::text::conflict_text(c)]).collect(),
    );
    conflicts.terminal_rows = conflicts.rows.len().min(20);
    out.push(conflicts);
    out.push(section(
        "Clinics by staleness (at their last check)",
        &[
            "clinic",
            "checks",
            "offline",
            "contradicted",
            "open decl.",
            "last check",
            "stale then",
            "worst",
        ],
        r.clinics
            .iter()
            .map(|c| {
                vec![
                    c.clinic.clone(),
                    c.checks.to_string(),
                    c.offline_checks.to_string(),
                    c.contradicted.to_string(),
                    c.unresolved_declarations.to_string(),
                    c.last_check_ms.map(jst).unwrap_or_else(|| "—".into()),
                    format!("{} s", c.staleness_at_last_check_s),
                    format!("{} s", c.max_staleness_s),
                ]
            })
            .collect(),
    ));
    out
}

/// The report as terminal tables.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write as _;
    let t = &r.totals;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Reconciliation at {} over {} hub events",
        shikaku_core::text::jst(r.generated_ms),
        r.hub_events
    );
    let _ = writeln!(
        s,
        "{} checks ({} offline), {} re-derived exactly from their recorded hash; {} contradicted by the converged truth ({} of them offline): refunds due {}/10, patients owe {}/10 of a visit's fee",
        t.checks, t.offline_checks, t.rederived, t.contradicted, t.contradicted_offline, t.refund_tenths, t.owed_tenths
    );
    let _ = writeln!(
        s,
        "{} self-declarations, {} unresolved; {} late or retroactive changes affect past checks; {} conflicts wait for a decision",
        t.declarations,
        t.unresolved_declarations,
        r.retroactive.len(),
        r.conflicts.len()
    );
    if t.erased_members > 0 {
        let _ = writeln!(
            s,
            "{} members' data erased ({}): their facts and checks still count, named by reference only",
            t.erased_members,
            r.erased.join(", ")
        );
    }
    for section in sections(r) {
        let _ = writeln!(s, "\n{}", section.title);
        if section.rows.is_empty() {
            let _ = writeln!(s, "  none");
            continue;
        }
        // The terminal leaves out the list of deciding events (in the JSON and HTML).
        let columns = if section.header.last() == Some(&"decided later by") {
            section.header.len() - 1
        } else {
            section.header.len()
        };
        let rows: Vec<Vec<String>> = section.rows[..section.terminal_rows]
            .iter()
            .map(|row| row[..columns].to_vec())
            .collect();
        table(&mut s, &section.header[..columns], &rows);
        if section.terminal_rows < section.rows.len() {
            let _ = writeln!(
                s,
                "  … and {} more (see the JSON or HTML report)",
                section.rows.len() - section.terminal_rows
            );
        }
    }
    s
}

use shikaku_core::text::html_escape as esc;

fn html_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    use std::fmt::Write as _;
    if rows.is_empty() {
        out.push_str("<p class=none>none</p>\n");
        return;
    }
    out.push_str("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", esc(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The report as one self-contained HTML page (no scripts, no external resources).
pub fn render_html(r: &Report) -> String {
    use std::fmt::Write as _;
    let t = &r.totals;
    let mut s = String::from(
        "<!doctype html><html lang=en><meta charset=utf-8><title>shikaku reconciliation</title>\n<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}th{background:#eee}.k{font-size:1.6em;font-weight:bold}.cards{display:flex;gap:2em;flex-wrap:wrap}.cards>div{border:1px solid #ccc;border-radius:.4em;padding:.6em 1em}.none{color:#666}</style>\n",
    );
    let _ = writeln!(
        s,
        "<h1>Reconciliation</h1><p>At {} over {} hub events.</p>",
        esc(&shikaku_core::text::jst(r.generated_ms)),
        r.hub_events
    );
    let _ = writeln!(
        s,
        "<div class=cards><div><div class=k id=contradicted>{}</div>checks contradicted ({} offline)</div><div><div class=k>{}/10</div>refunds due (fee tenths)</div><div><div class=k>{}/10</div>patients owe</div><div><div class=k id=unresolved>{}</div>unresolved of {} self-declarations</div><div><div class=k>{}</div>late or retroactive changes</div><div><div class=k>{}</div>conflicts</div><div><div class=k>{} / {}</div>checks re-derived exactly ({} offline)</div></div>",
        t.contradicted, t.contradicted_offline, t.refund_tenths, t.owed_tenths, t.unresolved_declarations,
        t.declarations, r.retroactive.len(), r.conflicts.len(), t.rederived, t.checks, t.offline_checks
    );
    for section in sections(r) {
        let _ = writeln!(s, "<h2>{}</h2>", esc(section.title));
        html_table(&mut s, section.header, &section.rows);
    }
    s.push_str("</html>\n");
    s
}

/// The report in `format`: `table`, `json` or `html`.
pub fn render(report: &Report, format: &str) -> Result<String, FormatError> {
    Ok(match format {
        "table" => render_text(report),
        "json" => format!(
            "{}\n",
            serde_json::to_string_pretty(report).map_err(|e| FormatError::Json(e.to_string()))?
        ),
        "html" => render_html(report),
        other => return Err(FormatError::Unknown(other.to_owned())),
    })
}

/// Why a report could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A format other than table, json or html.
    #[error("format must be table, json or html, got {0:?}")]
    Unknown(String),
    /// JSON encoding failed.
    #[error("encoding the report as JSON: {0}")]
    Json(String),
}
