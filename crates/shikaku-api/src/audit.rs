//! The clinic's own audit view (admin): its check records per staff member, and the anomaly
//! signal — per account, checks in the last hour and lookups by member key of members this
//! clinic never saw again — in `GET /v1/audit` and `/metrics`.
//!
//! Why those two: a check by card needs the card in the reader, so the patient was there; a
//! lookup by member key does not, which is how staff look up relatives and neighbours (the
//! Estonian lesson). Such a lookup of someone never checked again at this clinic is the
//! pattern. The thresholds ([`CHECKS_PER_HOUR_FLAG`], [`ONE_OFF_KEY_LOOKUPS_FLAG`]) are set
//! above what one receptionist does at the morning peak; crossing either flags the account
//! for the admin to look at, it blocks nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use shikaku_core::{CheckMode, CheckQuery, EventBody, StaffId};
use shikaku_net::runtime::FileNode;

use crate::auth::{AuthCounters, ClinicAuth};
use crate::staff::StaffFile;

/// Checks by one account within an hour above which it is flagged.
pub const CHECKS_PER_HOUR_FLAG: u64 = 40;
/// Lookups by member key, within the last 24 hours, of members checked only that once at this
/// clinic (within the window), above which an account is flagged.
pub const ONE_OFF_KEY_LOOKUPS_FLAG: u64 = 5;
/// Rows of recent checks the view lists.
pub const RECENT_ROWS: usize = 200;
/// The view covers this many days back (read on the node's thread at every request and
/// `/metrics` scrape, so its cost is bounded by the window, not the clinic's history).
pub const WINDOW_DAYS: u64 = 30;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// One account's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StaffFigures {
    /// The pseudonymous id the records carry.
    pub id: Option<StaffId>,
    /// The login name; `(no login)` for records made in the loopback no-login mode.
    pub name: String,
    /// Checks recorded in all.
    pub checks: u64,
    /// Checks in the last hour.
    pub checks_last_hour: u64,
    /// The most checks in any one hour (clock hours).
    pub checks_max_hour: u64,
    /// Lookups by member key.
    pub key_lookups: u64,
    /// Lookups by member key in the last 24 hours of members checked only that once here.
    pub one_off_key_lookups_24h: u64,
    /// Declarations and consents recorded.
    pub other_records: u64,
    /// Whether a threshold is crossed.
    pub flagged: bool,
}

/// One check as the admin sees it: when, who, how, what was answered — not whom.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    /// Record time (Unix ms).
    pub at_ms: u64,
    /// The staff member's name.
    pub staff: String,
    /// `card` or `key`.
    pub by: &'static str,
    /// Online or offline.
    pub mode: CheckMode,
    /// The answer code.
    pub code: shikaku_core::AnswerCode,
}

/// The clinic's audit view, over the last [`WINDOW_DAYS`] days.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClinicAudit {
    /// Days covered.
    pub window_days: u64,
    /// Per account (and `(no login)`), by name.
    pub staff: Vec<StaffFigures>,
    /// The latest checks, newest first.
    pub recent: Vec<AuditRow>,
    /// Own records that could not be read back.
    pub unreadable_records: u64,
    /// The thresholds.
    pub checks_per_hour_flag: u64,
    /// The thresholds.
    pub one_off_key_lookups_flag: u64,
}

/// The audit view from the node's own records and the staff file.
pub fn clinic_audit(n: &FileNode, staff: &StaffFile, now_ms: u64) -> ClinicAudit {
    let (records, unreadable) = n.own_records_since(now_ms.saturating_sub(WINDOW_DAYS * DAY_MS));
    let name_of = |id: Option<StaffId>| match id {
        Some(id) => staff.by_id(id).map_or_else(|| format!("staff {id}"), |a| a.name.clone()),
        None => "(no login)".to_owned(),
    };
    // How often each subject was checked here.
    let mut times_checked: BTreeMap<&CheckQuery, u64> = BTreeMap::new();
    for e in &records {
        if let EventBody::CheckPerformed { query, .. } = &e.event().body {
            *times_checked.entry(query).or_default() += 1;
        }
    }
    let mut figures: BTreeMap<Option<StaffId>, StaffFigures> = BTreeMap::new();
    let mut hours: BTreeMap<(Option<StaffId>, u64), u64> = BTreeMap::new();
    let mut recent = Vec::new();
    for e in &records {
        let who = e.operator();
        let f = figures.entry(who).or_insert_with(|| StaffFigures {
            id: who,
            name: name_of(who),
            ..StaffFigures::default()
        });
        let at = e.event().hlc.physical_ms();
        match &e.event().body {
            EventBody::CheckPerformed { query, mode, code, .. } => {
                f.checks += 1;
                f.checks_last_hour += u64::from(now_ms.saturating_sub(at) < HOUR_MS);
                *hours.entry((who, at / HOUR_MS)).or_default() += 1;
                let by_key = matches!(query, CheckQuery::Member(_));
                if by_key {
                    f.key_lookups += 1;
                    if times_checked.get(query) == Some(&1) && now_ms.saturating_sub(at) < DAY_MS {
                        f.one_off_key_lookups_24h += 1;
                    }
                }
                recent.push(AuditRow {
                    at_ms: at,
                    staff: f.name.clone(),
                    by: if by_key { "key" } else { "card" },
                    mode: *mode,
                    code: *code,
                });
            }
            _ => f.other_records += 1,
        }
    }
    for ((who, _), count) in hours {
        if let Some(f) = figures.get_mut(&who) {
            f.checks_max_hour = f.checks_max_hour.max(count);
        }
    }
    let mut staff_rows: Vec<StaffFigures> = figures.into_values().collect();
    for f in &mut staff_rows {
        f.flagged = f.checks_last_hour > CHECKS_PER_HOUR_FLAG
            || f.one_off_key_lookups_24h > ONE_OFF_KEY_LOOKUPS_FLAG;
    }
    // Accounts that recorded nothing yet are listed too.
    for a in &staff.accounts {
        if !staff_rows.iter().any(|f| f.id == Some(a.id)) {
            staff_rows.push(StaffFigures {
                id: Some(a.id),
                name: a.name.clone(),
                ..StaffFigures::default()
            });
        }
    }
    staff_rows.sort_by(|a, b| a.name.cmp(&b.name));
    recent.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
    recent.truncate(RECENT_ROWS);
    ClinicAudit {
        window_days: WINDOW_DAYS,
        staff: staff_rows,
        recent,
        unreadable_records: unreadable,
        checks_per_hour_flag: CHECKS_PER_HOUR_FLAG,
        one_off_key_lookups_flag: ONE_OFF_KEY_LOOKUPS_FLAG,
    }
}

/// The anomaly signal as Prometheus text, by pseudonymous staff id (never names in metrics).
pub fn staff_metrics(audit: &ClinicAudit) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let rows: Vec<(String, &StaffFigures)> = audit
        .staff
        .iter()
        .map(|f| (f.id.map_or_else(|| "none".to_owned(), |id| id.to_string()), f))
        .collect();
    for (metric, help, value) in [
        (
            "shikaku_staff_checks_last_hour",
            "Checks recorded by the staff account in the last hour.",
            (|f: &StaffFigures| f.checks_last_hour) as fn(&StaffFigures) -> u64,
        ),
        (
            "shikaku_staff_one_off_key_lookups_24h",
            "Lookups by member key in the last 24 h of members checked only that once here.",
            |f| f.one_off_key_lookups_24h,
        ),
        ("shikaku_staff_flagged", "1 if the account crosses an anomaly threshold.", |f| {
            u64::from(f.flagged)
        }),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for (id, f) in &rows {
            let _ = writeln!(out, "{metric}{{staff=\"{id}\"}} {}", value(f));
        }
    }
    out
}

/// Login counters as Prometheus text.
pub fn auth_metrics(c: &AuthCounters) -> String {
    format!(
        "# HELP shikaku_staff_logins_total Successful staff logins.\n# TYPE shikaku_staff_logins_total counter\nshikaku_staff_logins_total {}\n\
         # HELP shikaku_staff_login_failures_total Wrong names or passwords.\n# TYPE shikaku_staff_login_failures_total counter\nshikaku_staff_login_failures_total {}\n\
         # HELP shikaku_staff_login_throttled_total Logins refused by the rate limit.\n# TYPE shikaku_staff_login_throttled_total counter\nshikaku_staff_login_throttled_total {}\n\
         # HELP shikaku_staff_sessions_expired_total Sessions ended by idle expiry.\n# TYPE shikaku_staff_sessions_expired_total counter\nshikaku_staff_sessions_expired_total {}\n",
        c.logins, c.login_failures, c.login_throttled, c.sessions_expired
    )
}

/// `GET /v1/audit?format=json|html` (admin).
pub async fn audit_view(
    axum::extract::State(rt): axum::extract::State<Arc<shikaku_net::Runtime>>,
    axum::Extension(auth): axum::Extension<Arc<ClinicAuth>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<axum::response::Response, crate::ApiError> {
    use axum::response::IntoResponse;
    let p = crate::request::query_params(raw.as_deref(), &["format"])?;
    let html = match p.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("html") => true,
        Some(other) => {
            return Err(crate::ApiError::invalid(
                "format",
                format!("must be json or html, got {other:?}"),
            ))
        }
    };
    let staff = auth.staff();
    let audit = rt.call(move |n, now| clinic_audit(n, &staff, now)).await;
    if html {
        return Ok(axum::response::Html(audit_html(&audit)).into_response());
    }
    Ok(axum::Json(audit).into_response())
}

fn audit_html(a: &ClinicAudit) -> String {
    use shikaku_core::text::html_escape as esc;
    use std::fmt::Write as _;
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Clinic audit</title>\
         <style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .6em;border-bottom:1px solid #ccc}\
         .flag{background:#fdd}</style><h1>This clinic's checks by staff member</h1>",
    );
    let _ = write!(out, "<p>The last {} days.</p>", a.window_days);
    let _ = write!(
        out,
        "<p>Flagged when an account makes more than {} checks in an hour, or more than {} lookups by member key in 24 h of members never checked here again.</p>\
         <table><tr><th>staff</th><th>checks</th><th>last hour</th><th>busiest hour</th><th>by key</th><th>one-off by key (24 h)</th><th>other records</th><th></th></tr>",
        a.checks_per_hour_flag, a.one_off_key_lookups_flag
    );
    for f in &a.staff {
        let _ = write!(
            out,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if f.flagged { " class=\"flag\"" } else { "" },
            esc(&f.name),
            f.checks,
            f.checks_last_hour,
            f.checks_max_hour,
            f.key_lookups,
            f.one_off_key_lookups_24h,
            f.other_records,
            if f.flagged { "FLAGGED" } else { "" }
        );
    }
    out.push_str("</table><h2>Latest checks</h2><table><tr><th>when (JST)</th><th>staff</th><th>by</th><th>mode</th><th>answer</th></tr>");
    for r in &a.recent {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
            esc(&shikaku_core::text::jst(r.at_ms)),
            esc(&r.staff),
            r.by,
            r.mode,
            esc(&shikaku_core::text::code_name(r.code))
        );
    }
    out.push_str("</table></html>\n");
    out
}
