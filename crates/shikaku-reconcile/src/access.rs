//! The member's access report: every check of one member's record across clinics — when,
//! which institution (its certificate name), online or offline, by card or by key, the answer
//! given and whether the converged truth later contradicts it — and the checks that used a card
//! link later revoked as a wrong-person linkage, flagged. Institution-level: no staff names or
//! ids (GDPR Art. 15 as the CJEU read it in C-579/21); the clinic's admin has those.
//!
//! A check concerns the member when its question named them (their key or reference), when
//! the answer the clinic gave named them, or when the converged truth names them for the same
//! question (a card whose link later changed, a successor coverage).

use serde::Serialize;
use shikaku_core::{AnswerCode, CheckMode, CheckQuery, Date, MemberKey};

use crate::report::{Access, Report};

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRow {
    /// When the clinic answered (Unix ms).
    pub at_ms: u64,
    /// The institution, by its certificate name.
    pub institution: String,
    /// Online or offline.
    pub mode: CheckMode,
    /// `card` or `key`.
    pub by: &'static str,
    /// The service date asked about.
    pub service_date: Date,
    /// The answer given.
    pub answered: AnswerCode,
    /// What the converged truth answers now.
    pub truth: AnswerCode,
    /// The truth contradicts the answer given (a refund or claim adjustment follows).
    pub contradicted: bool,
    /// The card's link to the member answered was later revoked as a wrong-person linkage:
    /// this check showed one person's record for another's card.
    pub wrong_person_link: bool,
}

/// The access report of a member.
#[derive(Debug, Clone, Serialize)]
pub struct MemberAccesses {
    /// The member as the insurer's counter names them.
    pub member: String,
    /// From this day (JST), if limited.
    pub from: Option<Date>,
    /// To this day (JST, inclusive), if limited.
    pub to: Option<Date>,
    /// When the report was made (Unix ms).
    pub generated_ms: u64,
    /// Checks, oldest first.
    pub accesses: Vec<AccessRow>,
}

fn concerns(a: &Access, names: &[MemberKey]) -> bool {
    let named = |m: &Option<MemberKey>| m.as_ref().is_some_and(|m| names.contains(m));
    matches!(&a.check.query, CheckQuery::Member(m) if names.contains(m))
        || named(&a.member_then)
        || named(&a.member_now)
        || named(&a.successor_now)
        || a.revoked_link.as_ref().is_some_and(|(m, _, _)| names.contains(m))
}

/// The checks of the member named by any of `names` (its key and, in a sealed ledger, its
/// reference) within `[from, to]` (JST days).
pub fn member_accesses(
    report: &Report,
    member: &str,
    names: &[MemberKey],
    from: Option<Date>,
    to: Option<Date>,
) -> MemberAccesses {
    let mut accesses: Vec<AccessRow> = report
        .accesses
        .iter()
        .filter(|a| concerns(a, names))
        .filter(|a| {
            let day = Date::from_unix_ms_jst(a.check.at_ms);
            from.is_none_or(|f| day >= f) && to.is_none_or(|t| day <= t)
        })
        .map(|a| AccessRow {
            at_ms: a.check.at_ms,
            institution: a.check.clinic.clone(),
            mode: a.check.mode,
            by: match a.check.query {
                CheckQuery::Card(_) => "card",
                CheckQuery::Member(_) => "key",
            },
            service_date: a.check.service_date,
            answered: a.check.answered,
            truth: a.truth,
            contradicted: a.contradicted,
            wrong_person_link: a
                .revoked_link
                .as_ref()
                .is_some_and(|(m, _, _)| names.contains(m) || a.member_then.as_ref() == Some(m)),
        })
        .collect();
    accesses.sort_by(|a, b| (a.at_ms, &a.institution).cmp(&(b.at_ms, &b.institution)));
    MemberAccesses {
        member: member.to_owned(),
        from,
        to,
        generated_ms: report.generated_ms,
        accesses,
    }
}

fn mode_text(mode: CheckMode) -> &'static str {
    match mode {
        CheckMode::Online => "online",
        CheckMode::Offline => "offline",
    }
}

/// The report as terminal text.
pub fn accesses_text(r: &MemberAccesses) -> String {
    use shikaku_core::text::{code_name, jst};
    use std::fmt::Write as _;
    let mut out = format!("Checks of member {}'s eligibility record", r.member);
    match (r.from, r.to) {
        (Some(f), Some(t)) => {
            let _ = write!(out, " from {f} to {t}");
        }
        (Some(f), None) => {
            let _ = write!(out, " from {f}");
        }
        (None, Some(t)) => {
            let _ = write!(out, " up to {t}");
        }
        (None, None) => {}
    }
    let _ = writeln!(
        out,
        ": {}\n",
        shikaku_core::text::count(r.accesses.len() as u64, "check", "checks")
    );
    let _ = writeln!(
        out,
        "{:<20} {:<22} {:<8} {:<5} {:<11} {:<24} later",
        "when (JST)", "institution", "mode", "by", "for", "answer given"
    );
    for a in &r.accesses {
        let later = match (a.contradicted, a.wrong_person_link) {
            (_, true) => format!("WRONG-PERSON LINK (revoked); truth: {}", code_name(a.truth)),
            (true, false) => format!("contradicted: {}", code_name(a.truth)),
            (false, false) => "stands".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<22} {:<8} {:<5} {:<11} {:<24} {}",
            jst(a.at_ms),
            a.institution,
            mode_text(a.mode),
            a.by,
            a.service_date.to_string(),
            code_name(a.answered),
            later
        );
    }
    out
}

/// The report as a printable HTML page, to hand a member at the insurer's counter.
pub fn accesses_html(r: &MemberAccesses) -> String {
    use shikaku_core::text::{code_name, html_escape as esc, jst};
    use std::fmt::Write as _;
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Who checked your eligibility record</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;width:100%}\
         td,th{padding:.3em .5em;border:1px solid #999;text-align:left}.flag{background:#fdd}\
         @media print{body{margin:0}}</style>",
    );
    let _ = write!(
        out,
        "<h1>Who checked your eligibility record</h1><p>Member <b>{}</b>",
        esc(&r.member)
    );
    if let Some(f) = r.from {
        let _ = write!(out, ", from {f}");
    }
    if let Some(t) = r.to {
        let _ = write!(out, ", to {t}");
    }
    let _ = write!(
        out,
        ". Made {}. Every check a medical institution made of your record is listed: when, which institution, whether it was online or offline, whether you showed your card or your insurance key, and the answer. Staff names are not shown; the institution can tell you who.</p>",
        esc(&jst(r.generated_ms))
    );
    out.push_str("<table><tr><th>when (JST)</th><th>institution</th><th>mode</th><th>by</th><th>for</th><th>answer given</th><th>later</th></tr>");
    for a in &r.accesses {
        let later = match (a.contradicted, a.wrong_person_link) {
            (_, true) => format!(
                "A card was linked to your record by mistake (the link has been revoked): this check may have shown your record for someone else's card. Now: {}",
                code_name(a.truth)
            ),
            (true, false) => format!("Corrected later: {}", code_name(a.truth)),
            (false, false) => "—".to_owned(),
        };
        let flag = a.contradicted || a.wrong_person_link;
        let _ = write!(
            out,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if flag { " class=\"flag\"" } else { "" },
            esc(&jst(a.at_ms)),
            esc(&a.institution),
            mode_text(a.mode),
            if a.by == "card" { "card" } else { "insurance key" },
            a.service_date,
            esc(&code_name(a.answered)),
            esc(&later)
        );
    }
    if r.accesses.is_empty() {
        out.push_str("<tr><td colspan=\"7\">No checks.</td></tr>");
    }
    out.push_str("</table></html>\n");
    out
}

fn insurer_of_access(a: &Access) -> Option<shikaku_core::InsurerNumber> {
    a.member_then
        .as_ref()
        .or(a.member_now.as_ref())
        .or(a.successor_now.as_ref())
        .or(match &a.check.query {
            CheckQuery::Member(m) => Some(m),
            CheckQuery::Card(_) => None,
        })
        .map(|m| m.insurer)
}

impl Report {
    /// The report as an account scoped to `insurers` may see it: only findings about their
    /// members, totals and clinic rows recounted from their checks alone. Checks whose member
    /// nobody can name (a card that matched no one) belong to no insurer and are left out.
    pub fn scoped(
        &self,
        insurers: &std::collections::BTreeSet<shikaku_core::InsurerNumber>,
    ) -> Report {
        use shikaku_core::Conflict;
        let mine = |m: &MemberKey| insurers.contains(&m.insurer);
        let accesses: Vec<Access> = self
            .accesses
            .iter()
            .filter(|a| insurer_of_access(a).is_some_and(|i| insurers.contains(&i)))
            .cloned()
            .collect();
        let in_scope: std::collections::BTreeSet<shikaku_core::EventId> =
            accesses.iter().map(|a| a.check.check).collect();
        let mut r = self.clone();
        r.contradicted.retain(|c| in_scope.contains(&c.check.check));
        r.not_rederivable.retain(|c| in_scope.contains(&c.check));
        r.declarations.retain(|d| {
            d.declared_insurer.is_some_and(|i| insurers.contains(&i))
                || matches!(&d.query, CheckQuery::Member(m) if mine(m))
        });
        r.retroactive.retain(|x| x.insurer.is_some_and(|i| insurers.contains(&i)));
        r.conflicts.retain(|c| match c {
            Conflict::OverlappingCoverage { member, .. }
            | Conflict::CompetingEnds { member, .. }
            | Conflict::CompetingValues { member, .. } => mine(member),
            Conflict::MultipleMembers { members, .. } => members.iter().any(mine),
            // Which insurer a double correction belongs to is not in the conflict itself.
            Conflict::CompetingCorrections { .. } => false,
        });
        r.revoked_link_uses.retain(|u| mine(&u.linked_member));
        r.erased.retain(|e| {
            e.split("::")
                .next()
                .and_then(|i| i.parse::<shikaku_core::InsurerNumber>().ok())
                .is_some_and(|i| insurers.contains(&i))
        });
        let mut t = crate::report::Totals::default();
        for a in &accesses {
            t.checks += 1;
            t.offline_checks += u64::from(a.check.mode == CheckMode::Offline);
        }
        t.rederived = t.checks.saturating_sub(r.not_rederivable.len() as u64);
        for c in &r.contradicted {
            t.contradicted += 1;
            t.contradicted_offline += u64::from(c.check.mode == CheckMode::Offline);
            match c.refund_tenths {
                Some(x) if x > 0 => t.refund_tenths += x as u64,
                Some(x) if x < 0 => t.owed_tenths += (-x) as u64,
                _ => {}
            }
        }
        t.declarations = r.declarations.len() as u64;
        t.unresolved_declarations = r.declarations.iter().filter(|d| !d.resolved).count() as u64;
        t.erased_members = r.erased.len() as u64;
        r.totals = t;
        for row in &mut r.clinics {
            let theirs = accesses.iter().filter(|a| a.check.clinic == row.clinic);
            row.checks = theirs.clone().count() as u64;
            row.offline_checks =
                theirs.clone().filter(|a| a.check.mode == CheckMode::Offline).count() as u64;
            row.contradicted = theirs.filter(|a| a.contradicted).count() as u64;
            row.unresolved_declarations =
                r.declarations.iter().filter(|d| d.clinic == row.clinic && !d.resolved).count()
                    as u64;
        }
        r.clinics.retain(|row| row.checks > 0 || row.unresolved_declarations > 0);
        r.accesses = accesses;
        r
    }
}
