//! Human-readable text of answers, codes, dates and times (JST) — what reception staff and
//! insurers read in terminals and reports — and the one HTML escaper. Pure: no IO.

use std::fmt::Write as _;

use crate::{Answer, AnswerCode, CheckQuery, Conflict, Date, EndReason, Hlc};

/// The headline word for an answer code.
pub fn code_text(code: AnswerCode) -> &'static str {
    match code {
        AnswerCode::Valid => "VALID",
        AnswerCode::Invalid => "INVALID",
        AnswerCode::InvalidNewerExists => "INVALID — A NEWER COVERAGE EXISTS",
        AnswerCode::NoMatch => "NO MATCH",
        AnswerCode::MultipleMatches => "MULTIPLE MATCHES",
        AnswerCode::PendingSuccessor => {
            "PENDING SUCCESSOR (self-declared, new insurer not yet registered)"
        }
        AnswerCode::Unknown => "UNKNOWN — not decidable from the insurers replicated here",
    }
}

/// The snake_case name of an answer code, as in the JSON answer (`invalid_newer_exists`).
pub fn code_name(code: AnswerCode) -> String {
    match code {
        AnswerCode::Valid => "valid",
        AnswerCode::Invalid => "invalid",
        AnswerCode::InvalidNewerExists => "invalid_newer_exists",
        AnswerCode::NoMatch => "no_match",
        AnswerCode::MultipleMatches => "multiple_matches",
        AnswerCode::PendingSuccessor => "pending_successor",
        AnswerCode::Unknown => "unknown",
    }
    .to_owned()
}

/// Japanese civil time of day of a Unix millisecond: (hours, minutes, seconds).
pub fn jst_clock(ms: u64) -> (u64, u64, u64) {
    let in_day = (ms + 9 * 3_600_000) % 86_400_000;
    (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60)
}

/// "HH:MM" in Japanese civil time.
pub fn hhmm(ms: u64) -> String {
    let (h, m, _) = jst_clock(ms);
    format!("{h:02}:{m:02}")
}

/// Japanese civil time of a Unix millisecond, "YYYY-MM-DD HH:MM JST".
pub fn jst(ms: u64) -> String {
    format!("{} {} JST", Date::from_unix_ms_jst(ms), hhmm(ms))
}

/// Why a coverage ended, in words ("job change", "75th birthday (late-stage elderly system)").
pub fn reason_text(reason: EndReason) -> &'static str {
    match reason {
        EndReason::JobChange => "job change",
        EndReason::Retirement => "retirement",
        EndReason::MoveOutOfMunicipality => "moved out of the municipality",
        EndReason::Age75 => "75th birthday (late-stage elderly system)",
        EndReason::Death => "death",
        EndReason::Other => "other",
    }
}

/// "1 offline check", "2 offline checks": a count with its noun in the right number.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The first 12 hex digits of an event id, as shown to people.
pub fn short(id: &crate::EventId) -> String {
    id.to_string()[..12].to_owned()
}

/// Renders an answer as a short block of text.
pub fn answer(answer: &Answer) -> String {
    let mut s = String::new();
    let asked = match &answer.query {
        CheckQuery::Card(card) => format!("card {}…", &card.to_string()[..12]),
        CheckQuery::Member(member) => format!("member {member}"),
    };
    let _ = writeln!(s, "{} — {asked} on {}", code_text(answer.code), answer.service_date);
    if let Some(damage) = &answer.damage {
        let _ = writeln!(s, "  DAMAGE      {}", damage_text(damage));
    }
    if let Some(member) = &answer.member {
        let role = match answer.dependant {
            Some(true) => " (dependant)",
            Some(false) => " (insured person)",
            None => "",
        };
        let _ = writeln!(s, "  member      {member}{role}");
    }
    if let Some(insurer) = answer.insurer {
        let _ = writeln!(s, "  insurer     {insurer}");
    }
    if let Some(coverage) = answer.coverage {
        let _ = writeln!(s, "  coverage    {}", coverage_text(coverage));
    }
    if let Some(reason) = answer.end_reason {
        let _ = writeln!(s, "  ended by    {}", reason_text(reason));
    }
    if let Some(copay) = answer.copay_tenths {
        let _ = writeln!(s, "  copay       {copay} tenths ({}%)", copay * 10);
    }
    match (&answer.limit_category, answer.limit_category_withheld) {
        (Some(category), _) => {
            let _ = writeln!(s, "  limit       {category} (shown with the patient's consent)");
        }
        (None, true) => match answer.consent_withdrawn {
            Some(at) => {
                let on = Date::from_unix_ms_jst(at.physical_ms());
                let _ = writeln!(s, "  limit       withheld: consent withdrawn on {on}");
            }
            None => {
                let _ = writeln!(s, "  limit       withheld: no consent recorded");
            }
        },
        _ => {}
    }
    if let Some(successor) = &answer.successor {
        let _ = writeln!(s, "  newer key   {successor}");
    }
    if let Some(declaration) = &answer.declaration {
        let _ = writeln!(s, "  declared    self-declaration {}", short(declaration));
    }
    let ids: Vec<String> = answer.decided_by.iter().map(short).collect();
    let _ = writeln!(s, "  decided by  {} event(s): {}", ids.len(), ids.join(", "));
    for conflict in &answer.conflicts {
        let _ = writeln!(s, "  CONFLICT    {}", conflict_text(conflict));
    }
    let k = &answer.knowledge;
    let as_of = if k.as_of == Hlc(u64::MAX) {
        "everything held".to_owned()
    } else {
        format!("as known at {}", jst(k.as_of.physical_ms()))
    };
    let sync = match (k.last_hub_sync_ms, k.staleness_s) {
        (Some(at), Some(stale)) => format!("last hub sync {} ({stale} s ago)", jst(at)),
        _ => "never synced with a hub (local import)".to_owned(),
    };
    let _ = writeln!(s, "  knowledge   {as_of} · {} events held · {sync}", k.events_held);
    s
}

/// A coverage period for people: the last covered day (inclusive), not the loss date the
/// half-open interval ends with — "until 2026-01-15" next to INVALID on the 15th reads as
/// covered on the 15th. The JSON keeps the half-open dates.
pub fn coverage_text(coverage: crate::DateRange) -> String {
    match coverage.end {
        Some(end) => format!(
            "{} to {} (last covered day; coverage lost from {end})",
            coverage.start,
            end.add_days(-1)
        ),
        None => format!("{} onwards (no end recorded)", coverage.start),
    }
}

/// The warning an answer from a damaged ledger carries.
pub fn damage_text(d: &crate::DamageNote) -> String {
    let records = if d.records > 0 {
        format!("{} records unreadable or missing", d.records)
    } else {
        "records unreadable".to_owned()
    };
    let repair = match d.refetch {
        crate::RefetchState::Pending => "re-fetch from the hub pending",
        crate::RefetchState::NoHub => {
            "no hub to re-fetch from: run `shikaku ledger verify --repair` and import them again"
        }
    };
    format!(
        "LEDGER DAMAGED: {records} from position {} ({} range(s)); this answer may be wrong — {repair}",
        d.first_position, d.ranges
    )
}

/// One line describing a conflict.
pub fn conflict_text(conflict: &Conflict) -> String {
    let ids = |events: &[crate::EventId]| events.iter().map(short).collect::<Vec<_>>().join(", ");
    match conflict {
        Conflict::OverlappingCoverage { member, events } => {
            format!("overlapping coverage for {member}: {}", ids(events))
        }
        Conflict::CompetingEnds { member, events } => {
            format!("competing coverage ends for {member} (earliest applied): {}", ids(events))
        }
        Conflict::CompetingValues { member, field, events } => {
            format!("competing {field} for {member} on one day: {}", ids(events))
        }
        Conflict::CompetingCorrections { target, events } => {
            format!("event {} corrected twice: {}", short(target), ids(events))
        }
        Conflict::MultipleMembers { card, members } => format!(
            "card {}… resolves to {} covered members: {}",
            &card.to_string()[..12],
            members.len(),
            members.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Escapes text for HTML element content and attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
