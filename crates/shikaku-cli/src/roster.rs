//! `shikaku insurer diff`, sans-IO: a member-management export (the roster CSV of
//! `examples/roster.md`) parsed row by row, and two snapshots of it turned into the events
//! that changed — enrolments, losses with their date and reason, copay, limit-category and
//! demographic changes, card links — each member's change as one [`Transition`] whose id
//! makes a second run publish nothing new. Refusals name the CSV line.

use std::collections::BTreeMap;

use shikaku_core::{
    CardToken, Date, EndReason, EventBody, InsurerNumber, MemberKey, Person, Relationship, Sex,
};

/// The most rows a roster may have.
pub const ROWS_MAX: usize = 2_000_000;

/// The columns, in the documented order; those marked optional may be absent from the header.
pub const COLUMNS: [(&str, bool); 15] = [
    ("member_key", false),
    ("name", false),
    ("kana", false),
    ("sex", false),
    ("birth_date", false),
    ("address", false),
    ("municipality", false),
    ("relationship", false),
    ("insured_key", true),
    ("coverage_start", false),
    ("coverage_end", false),
    ("end_reason", false),
    ("copay_tenths", false),
    ("limit_category", true),
    ("card_tokens", true),
];

/// One member's row.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    /// The CSV line it came from (1 is the header).
    pub line: u64,
    /// The member.
    pub key: MemberKey,
    /// Demographics.
    pub person: Person,
    /// Insured person or dependant.
    pub relationship: Relationship,
    /// The current coverage: its first day, its loss date and reason when it ended, its copay.
    pub coverage: Option<Coverage>,
    /// The limit category in force, if any.
    pub limit_category: Option<String>,
    /// The member's linked cards.
    pub cards: Vec<CardToken>,
    /// The row's own text, normalised (its fields joined), for the transition id.
    text: String,
}

/// A coverage period as the export shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// First covered day.
    pub start: Date,
    /// First day not covered, and why, when it ended.
    pub end: Option<(Date, EndReason)>,
    /// Copay in tenths.
    pub copay_tenths: u8,
}

// Rows hold member data: never in debug output.
impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Row(line {})", self.line)
    }
}

/// A line that cannot be used, and why (no member data in the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which file: `previous` or `current`.
    pub file: &'static str,
    /// The CSV line (1 is the header).
    pub line: u64,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.reason)
    }
}

/// A parsed roster: its rows by member, and the lines refused.
#[derive(Debug, Default)]
pub struct Roster {
    /// Rows by member key.
    pub rows: BTreeMap<MemberKey, Row>,
    /// Refused lines.
    pub refused: Vec<Refusal>,
}

fn date(text: &str, column: &str) -> Result<Date, String> {
    text.parse::<Date>().map_err(|_| format!("{column} must be a date YYYY-MM-DD"))
}

/// An `end_reason` by its name in the events (`job_change` … `age75`).
fn end_reason(text: &str) -> Result<EndReason, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        "end_reason must be job_change, retirement, move_out_of_municipality, age75, death or other"
            .to_owned()
    })
}

/// Parses a roster CSV (UTF-8 text) for `insurer`'s members. `file` names it in refusals.
pub fn parse(text: &str, insurer: InsurerNumber, file: &'static str) -> Result<Roster, String> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| format!("{file}: the header line: {e}"))?.clone();
    let mut index = BTreeMap::new();
    for (i, name) in headers.iter().enumerate() {
        let name = name.trim().trim_start_matches('\u{feff}');
        if !COLUMNS.iter().any(|(c, _)| *c == name) {
            return Err(format!(
                "{file}: unknown column {name:?} in the header (the columns are {})",
                COLUMNS.map(|(c, _)| c).join(", ")
            ));
        }
        if index.insert(name.to_owned(), i).is_some() {
            return Err(format!("{file}: column {name} appears twice in the header"));
        }
    }
    for (column, optional) in COLUMNS {
        if !optional && !index.contains_key(column) {
            return Err(format!("{file}: the header has no {column} column"));
        }
    }
    let mut roster = Roster::default();
    let mut rows: Vec<Row> = Vec::new();
    for (n, record) in reader.records().enumerate() {
        if n >= ROWS_MAX {
            return Err(format!("{file}: more than {ROWS_MAX} rows"));
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        format!("{len} fields where the header has {expected_len}")
                    }
                    csv::ErrorKind::Utf8 { .. } => {
                        "not UTF-8 (give --encoding shift_jis for a Shift_JIS export)".into()
                    }
                    _ => "not a CSV record".into(),
                };
                let line = e.position().map_or(n as u64 + 2, |p| p.line());
                roster.refused.push(Refusal { file, line, reason });
                continue;
            }
        };
        let line = record.position().map_or(n as u64 + 2, |p| p.line());
        let fields = Fields { index: &index, record: &record };
        match row(&fields, line, insurer) {
            Ok(row) => rows.push(row),
            Err(reason) => roster.refused.push(Refusal { file, line, reason }),
        }
    }
    // A member on two lines is refused on both: which line is true cannot be told.
    let mut lines_of: BTreeMap<MemberKey, Vec<u64>> = BTreeMap::new();
    for row in &rows {
        lines_of.entry(row.key.clone()).or_default().push(row.line);
    }
    for row in rows {
        let lines = &lines_of[&row.key];
        if lines.len() > 1 {
            let others: Vec<String> =
                lines.iter().filter(|l| **l != row.line).map(u64::to_string).collect();
            roster.refused.push(Refusal {
                file,
                line: row.line,
                reason: format!("the same member_key as line {}", others.join(", ")),
            });
        } else {
            roster.rows.insert(row.key.clone(), row);
        }
    }
    roster.refused.sort_by_key(|r| r.line);
    Ok(roster)
}

/// One record's fields by column name.
struct Fields<'a> {
    index: &'a BTreeMap<String, usize>,
    record: &'a csv::StringRecord,
}

impl<'a> Fields<'a> {
    /// The column's text, trimmed; empty when absent.
    fn get(&self, column: &str) -> &'a str {
        self.index.get(column).and_then(|&i| self.record.get(i)).map_or("", str::trim)
    }

    /// The column's text, refused when empty.
    fn required(&self, column: &str) -> Result<&'a str, String> {
        match self.get(column) {
            "" => Err(format!("{column} is empty")),
            text => Ok(text),
        }
    }
}

fn row(f: &Fields<'_>, line: u64, insurer: InsurerNumber) -> Result<Row, String> {
    let get = |column: &str| f.get(column);
    let required = |column: &str| f.required(column);
    let (key_text, _) = shikaku_core::member::normalize_typed_key(get("member_key"));
    let key: MemberKey = key_text.parse().map_err(|_| {
        "member_key must be INSURER:SYMBOL:NUMBER:BRANCH with a valid insurer number".to_owned()
    })?;
    if key.insurer != insurer {
        return Err(format!(
            "member_key is of insurer {}, but the key signs for insurer {insurer}",
            key.insurer
        ));
    }
    let sex = match required("sex")? {
        "male" | "M" | "m" | "1" | "男" => Sex::Male,
        "female" | "F" | "f" | "2" | "女" => Sex::Female,
        _ => return Err("sex must be male or female (M/F, 1/2, 男/女)".into()),
    };
    let municipality: u32 = required("municipality")?
        .parse()
        .ok()
        .filter(|m| (10_000..1_000_000).contains(m))
        .ok_or("municipality must be the 6-digit local government code")?;
    let person = Person {
        name: required("name")?.to_owned(),
        kana: required("kana")?.to_owned(),
        sex,
        birth_date: date(required("birth_date")?, "birth_date")?,
        address: required("address")?.to_owned(),
        municipality,
    };
    for (column, text) in
        [("name", &person.name), ("kana", &person.kana), ("address", &person.address)]
    {
        if text.chars().count() > 200
            || text.chars().any(|c| c.is_control() || shikaku_core::member::is_format_char(c))
        {
            return Err(format!("{column} must be at most 200 characters, without control or invisible format characters"));
        }
    }
    let relationship = match required("relationship")? {
        "insured" | "本人" => Relationship::Insured,
        "dependant" | "家族" => {
            let (text, _) = shikaku_core::member::normalize_typed_key(required("insured_key")?);
            let insured: MemberKey =
                text.parse().map_err(|_| "insured_key must be a member key".to_owned())?;
            Relationship::Dependant { insured }
        }
        _ => return Err("relationship must be insured or dependant (本人/家族)".into()),
    };
    if matches!(relationship, Relationship::Insured) && !get("insured_key").is_empty() {
        return Err("insured_key is only for a dependant".into());
    }
    let coverage = match get("coverage_start") {
        "" => {
            if !get("coverage_end").is_empty() || !get("end_reason").is_empty() {
                return Err("coverage_end without coverage_start".into());
            }
            None
        }
        start => {
            let start = date(start, "coverage_start")?;
            let end = match (get("coverage_end"), get("end_reason")) {
                ("", "") => None,
                ("", _) => return Err("end_reason without coverage_end".into()),
                (_, "") => return Err("coverage_end needs its end_reason".into()),
                (end, reason) => {
                    let end = date(end, "coverage_end")?;
                    if end <= start {
                        return Err("coverage_end (the first day without coverage) must be after coverage_start".into());
                    }
                    Some((end, end_reason(reason)?))
                }
            };
            let copay_tenths = match required("copay_tenths")? {
                "1" => 1,
                "2" => 2,
                "3" => 3,
                _ => return Err("copay_tenths must be 1, 2 or 3".into()),
            };
            Some(Coverage { start, end, copay_tenths })
        }
    };
    let limit_category = match get("limit_category") {
        "" => None,
        text => {
            let b = text.as_bytes();
            if b.len() != 3
                || !matches!(b[0], b'A' | b'B')
                || !b[1..].iter().all(u8::is_ascii_digit)
            {
                return Err("limit_category must be A01–A06 or B01–B10".into());
            }
            Some(text.to_owned())
        }
    };
    let mut cards = Vec::new();
    for token in get("card_tokens").split_whitespace() {
        let digits = token.chars().filter(|c| !matches!(c, '-' | ' ')).count();
        if digits == 12 && token.chars().all(|c| c.is_ascii_digit() || c == '-') {
            return Err("card_tokens holds what looks like an Individual Number (My Number): only the card's opaque token is accepted".into());
        }
        let card: CardToken = token
            .parse()
            .map_err(|_| "card_tokens must be 64-hex card tokens separated by spaces".to_owned())?;
        if !cards.contains(&card) {
            cards.push(card);
        }
    }
    cards.sort();
    let text = COLUMNS.iter().map(|(c, _)| get(c)).collect::<Vec<_>>().join("\u{1f}");
    Ok(Row { line, key, person, relationship, coverage, limit_category, cards, text })
}

/// One member's change between the snapshots: the events it publishes, what it says, and its
/// id (blake3 of the member's previous and current row texts and the as-of date).
#[derive(Debug, Clone)]
pub struct Transition {
    /// The member.
    pub member: MemberKey,
    /// The current file's line.
    pub line: u64,
    /// The transition id, hex.
    pub id: String,
    /// The events, in order.
    pub events: Vec<EventBody>,
    /// What changed, in words (no member data).
    pub summary: Vec<String>,
}

/// The changes from `previous` to `current`, with `as_of` as the effective date of changes
/// the export does not date (demographics, copay, limit category). Members whose change
/// cannot be said in events are refused, naming the current line.
pub fn diff(previous: &Roster, current: &Roster, as_of: Date) -> (Vec<Transition>, Vec<Refusal>) {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for (key, row) in &current.rows {
        let before = previous.rows.get(key);
        match transition(before, row, as_of) {
            Ok(Some(mut t)) => {
                let mut h = blake3::Hasher::new();
                h.update(b"shikaku/roster-transition/v1\0");
                h.update(before.map_or("", |b| b.text.as_str()).as_bytes());
                h.update(b"\0");
                h.update(row.text.as_bytes());
                h.update(b"\0");
                h.update(as_of.to_string().as_bytes());
                t.id = h.finalize().to_hex().to_string();
                out.push(t);
            }
            Ok(None) => {}
            Err(reason) => refused.push(Refusal { file: "current", line: row.line, reason }),
        }
    }
    for (key, row) in &previous.rows {
        if !current.rows.contains_key(key) {
            refused.push(Refusal {
                file: "previous",
                line: row.line,
                reason: "this member is not among the current export's accepted lines: a loss of coverage is a coverage_end with its end_reason, not a removed row; nothing published for them".into(),
            });
        }
    }
    out.sort_by_key(|t| t.line);
    refused.sort_by_key(|r| (r.file, r.line));
    (out, refused)
}

fn transition(before: Option<&Row>, row: &Row, as_of: Date) -> Result<Option<Transition>, String> {
    let member = row.key.clone();
    let mut events = Vec::new();
    let mut summary = Vec::new();
    let m = || member.clone();
    let start_events = |c: &Coverage, events: &mut Vec<EventBody>, summary: &mut Vec<String>| {
        events.push(EventBody::CoverageStarted {
            member: m(),
            start: c.start,
            copay_tenths: c.copay_tenths,
            elderly_certificate: false,
        });
        summary.push(format!("coverage from {} (copay {} tenths)", c.start, c.copay_tenths));
        if let Some((loss, reason)) = c.end {
            events.push(EventBody::CoverageEnded { member: m(), loss_date: loss, reason });
            summary.push(format!(
                "coverage lost on {loss} ({})",
                shikaku_core::text::reason_text(reason)
            ));
        }
    };
    let Some(before) = before else {
        events.push(EventBody::MemberRegistered {
            member: m(),
            person: row.person.clone(),
            relationship: row.relationship.clone(),
        });
        summary.push("enrolled".into());
        if let Some(c) = &row.coverage {
            start_events(c, &mut events, &mut summary);
        }
        if let Some(category) = &row.limit_category {
            let effective = row.coverage.map_or(as_of, |c| c.start);
            events.push(EventBody::LimitCategorySet {
                member: m(),
                effective,
                category: category.clone(),
            });
            summary.push(format!("limit category {category} from {effective}"));
        }
        for card in &row.cards {
            events.push(EventBody::CardLinked { card: *card, member: m() });
            summary.push("card linked".into());
        }
        return Ok(Some(Transition { member, line: row.line, id: String::new(), events, summary }));
    };
    if before.text == row.text {
        return Ok(None);
    }
    if before.relationship != row.relationship {
        return Err("relationship changed: a member who becomes (or stops being) a dependant gets a new member key".into());
    }
    if before.person != row.person {
        let mut what = Vec::new();
        let (a, b) = (&before.person, &row.person);
        for (name, changed) in [
            ("name", a.name != b.name || a.kana != b.kana),
            ("sex", a.sex != b.sex),
            ("birth date", a.birth_date != b.birth_date),
            ("address", a.address != b.address || a.municipality != b.municipality),
        ] {
            if changed {
                what.push(name);
            }
        }
        events.push(EventBody::DemographicsChanged {
            member: m(),
            effective: as_of,
            person: row.person.clone(),
        });
        summary.push(format!("demographics changed from {as_of} ({})", what.join(", ")));
    }
    match (&before.coverage, &row.coverage) {
        (None, None) => {}
        (None, Some(c)) => start_events(c, &mut events, &mut summary),
        (Some(_), None) => {
            return Err("coverage_start was removed: a coverage is ended with coverage_end and end_reason, or voided with `insurer sign` (event_voided)".into())
        }
        (Some(a), Some(b)) if a.start == b.start => {
            match (a.end, b.end) {
                (None, Some((loss, reason))) => {
                    events.push(EventBody::CoverageEnded { member: m(), loss_date: loss, reason });
                    summary.push(format!("coverage lost on {loss} ({})", shikaku_core::text::reason_text(reason)));
                }
                (x, y) if x == y => {}
                (Some(_), None) => {
                    return Err("coverage_end was removed: undoing a loss is a correction (event_voided of the coverage_ended, with `insurer sign`)".into())
                }
                _ => {
                    return Err("coverage_end or end_reason changed: correcting a loss is a supersession (event_superseded, with `insurer sign`)".into())
                }
            }
            if a.copay_tenths != b.copay_tenths {
                events.push(EventBody::CopayRatioSet { member: m(), effective: as_of, copay_tenths: b.copay_tenths });
                summary.push(format!("copay {} → {} tenths from {as_of}", a.copay_tenths, b.copay_tenths));
            }
        }
        (Some(a), Some(b)) => {
            // A new period after the old one ended: a re-enrolment under the same key.
            match a.end {
                Some((loss, _)) if b.start >= loss => start_events(b, &mut events, &mut summary),
                Some(_) => return Err("coverage_start moved into the ended period: a correction (event_superseded, with `insurer sign`)".into()),
                None => {
                    return Err("coverage_start changed while the old coverage has no coverage_end: end the old coverage first, or correct it with `insurer sign`".into());
                }
            }
        }
    }
    match (&before.limit_category, &row.limit_category) {
        (a, b) if a == b => {}
        (None, None) => {}
        (_, Some(category)) => {
            events.push(EventBody::LimitCategorySet { member: m(), effective: as_of, category: category.clone() });
            summary.push(format!("limit category {category} from {as_of}"));
        }
        (Some(_), None) => {
            return Err("limit_category was cleared: shikaku has no event that removes a category (set the one that applies)".into())
        }
    }
    for card in &row.cards {
        if !before.cards.contains(card) {
            events.push(EventBody::CardLinked { card: *card, member: m() });
            summary.push("card linked".into());
        }
    }
    for card in &before.cards {
        if !row.cards.contains(card) {
            events.push(EventBody::CardUnlinked { card: *card, member: m() });
            summary.push("card unlinked".into());
        }
    }
    if events.is_empty() {
        return Ok(None);
    }
    Ok(Some(Transition { member, line: row.line, id: String::new(), events, summary }))
}
