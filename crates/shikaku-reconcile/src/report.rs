//! The report as data: [`compute`] — a pure function of the hub's events with their positions
//! (no clock: `now_ms` is an input) — and the billing rules ([`billing`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use shikaku_core::{
    Answer, AnswerCode, CheckMode, CheckQuery, Conflict, Date, EventBody, EventId, Freshness, Hlc,
    InsurerNumber, MemberKey, Namespace, NodeId, Projection, Replication, SignedEvent,
};

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was computed (Unix ms).
    pub generated_ms: u64,
    /// Events in the hub's ledger.
    pub hub_events: u64,
    /// Totals.
    pub totals: Totals,
    /// Checks the converged truth contradicts, offline ones first.
    pub contradicted: Vec<Contradiction>,
    /// Checks whose recorded answer hash could not be re-derived from the hub's events.
    pub not_rederivable: Vec<CheckRef>,
    /// Self-declarations, unresolved first.
    pub declarations: Vec<Declaration>,
    /// Events the clinics did not have when they answered (recorded later, or not yet
    /// received) that decide those checks' answers now and change them.
    pub retroactive: Vec<Retroactive>,
    /// Conflicts waiting for an insurer's decision: those of the insurers' facts, and those
    /// met by the clinics' checks (a card linked to members of two insurers).
    pub conflicts: Vec<Conflict>,
    /// Checks that relied on a card link later revoked as a wrong-person linkage: which wrong
    /// links were actually used, where and when.
    pub revoked_link_uses: Vec<RevokedLinkUse>,
    /// Clinics, stalest first.
    pub clinics: Vec<ClinicRow>,
    /// References of members whose data was erased (their facts and checks remain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<String>,
    /// Every check, with whom it concerned then and now: what member access reports are
    /// made of ([`crate::access`]). Not part of the report's own forms.
    #[serde(skip)]
    pub accesses: Vec<Access>,
}

/// One check as an access to a member's record: who was named then and now, and what became
/// of the answer.
#[derive(Debug, Clone, Serialize)]
pub struct Access {
    /// The check.
    pub check: CheckRef,
    /// The staff member who made it (schema 3), as the clinic's pseudonymous id.
    pub operator: Option<shikaku_core::StaffId>,
    /// The member the clinic's answer named (when it re-derived).
    pub member_then: Option<MemberKey>,
    /// The member the converged truth names for the same question.
    pub member_now: Option<MemberKey>,
    /// The successor coverage the truth names, if any.
    pub successor_now: Option<MemberKey>,
    /// The converged truth's answer.
    pub truth: AnswerCode,
    /// Whether the truth contradicts the answer given (as in [`Report::contradicted`]).
    pub contradicted: bool,
    /// The card link the check used, when it was later revoked as a wrong-person linkage:
    /// (wrongly linked member, revocation, when).
    pub revoked_link: Option<(MemberKey, EventId, u64)>,
}

/// Headline numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Check records at the hub.
    pub checks: u64,
    /// Of which answered offline.
    pub offline_checks: u64,
    /// Checks whose answer was re-derived exactly (hash match).
    pub rederived: u64,
    /// Checks the truth contradicts.
    pub contradicted: u64,
    /// Of which answered offline.
    pub contradicted_offline: u64,
    /// Sum of refunds due to patients, in tenths of a visit's fee.
    pub refund_tenths: u64,
    /// Sum of what patients still owe, in tenths of a visit's fee.
    pub owed_tenths: u64,
    /// Self-declarations recorded / still unresolved.
    pub declarations: u64,
    /// Unresolved self-declarations.
    pub unresolved_declarations: u64,
    /// Members whose data was erased (`member_erased` orders): their checks still balance,
    /// from pseudonymous facts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub erased_members: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A check record, identified.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRef {
    /// The check record's event id.
    pub check: EventId,
    /// The clinic's display name.
    pub clinic: String,
    /// When the check was answered (Unix ms, the record's hlc).
    pub at_ms: u64,
    /// Online or offline.
    pub mode: CheckMode,
    /// What was asked.
    pub query: CheckQuery,
    /// The service date.
    pub service_date: Date,
    /// The code the clinic answered.
    pub answered: AnswerCode,
}

/// Who pays what, as an answer implies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Billing {
    /// The insurer billed, `None` when the patient pays everything.
    pub insurer: Option<InsurerNumber>,
    /// The patient's share in tenths of the fee.
    pub patient_tenths: u8,
}

/// A check the converged truth contradicts.
#[derive(Debug, Clone, Serialize)]
pub struct Contradiction {
    /// The check.
    #[serde(flatten)]
    pub check: CheckRef,
    /// The answer the truth gives now.
    pub truth: AnswerCode,
    /// The member the truth identifies.
    pub truth_member: Option<MemberKey>,
    /// Billing as answered (`None` when the answer could not be re-derived).
    pub billed: Option<Billing>,
    /// Billing as due.
    pub due: Option<Billing>,
    /// Patient paid minus patient owes, in tenths of the fee: > 0 is a refund to the patient.
    pub refund_tenths: Option<i16>,
    /// What to do, in words.
    pub action: String,
    /// The events that decide the truth and that the clinic did not have when it answered
    /// (recorded after the check, or not yet received).
    pub decided_later_by: Vec<EventId>,
}

/// A self-declaration and its state.
#[derive(Debug, Clone, Serialize)]
pub struct Declaration {
    /// The declaration event.
    pub declaration: EventId,
    /// The clinic.
    pub clinic: String,
    /// When it was recorded (Unix ms).
    pub at_ms: u64,
    /// The card or key presented.
    pub query: CheckQuery,
    /// The insurer the patient named.
    pub declared_insurer: Option<InsurerNumber>,
    /// The start date they declared.
    pub declared_start: Date,
    /// Whether the facts now settle it.
    pub resolved: bool,
    /// How: the new coverage found, or the recorded resolution.
    pub resolution: String,
    /// Days open (to the report's time) while unresolved.
    pub open_days: Option<u64>,
}

/// A late or retroactive change and the checks whose answers it changes.
#[derive(Debug, Clone, Serialize)]
pub struct Retroactive {
    /// The event.
    pub event: EventId,
    /// Its kind.
    pub kind: &'static str,
    /// Its insurer.
    pub insurer: Option<InsurerNumber>,
    /// When it was recorded (Unix ms).
    pub recorded_ms: u64,
    /// The checks (answered before it was recorded) whose answer it changes.
    pub checks: Vec<EventId>,
}

/// A check answered through a card link that was later revoked as a wrong-person linkage.
#[derive(Debug, Clone, Serialize)]
pub struct RevokedLinkUse {
    /// The check.
    #[serde(flatten)]
    pub check: CheckRef,
    /// The member the revoked link pointed to (the wrong person).
    pub linked_member: MemberKey,
    /// The revocation event.
    pub revocation: EventId,
    /// When the link was revoked (Unix ms).
    pub revoked_ms: u64,
}

/// One clinic's row.
#[derive(Debug, Clone, Serialize)]
pub struct ClinicRow {
    /// Display name.
    pub clinic: String,
    /// Node id (hex).
    pub node: String,
    /// Check records.
    pub checks: u64,
    /// Of which offline.
    pub offline_checks: u64,
    /// Contradicted checks.
    pub contradicted: u64,
    /// Unresolved self-declarations.
    pub unresolved_declarations: u64,
    /// Time of its last check (Unix ms).
    pub last_check_ms: Option<u64>,
    /// Hub position its knowledge had reached at its last check.
    pub last_hub_position: Option<u64>,
    /// At its last check: for how long the hub had held the first event of this clinic's
    /// insurers that it had not yet received (0 when it had everything the hub held).
    pub staleness_at_last_check_s: u64,
    /// The worst such staleness over all its checks.
    pub max_staleness_s: u64,
}

/// What an answer bills: `None` when it decides nothing (unknown, multiple matches) or is
/// provisional (pending successor — the self-declaration section follows those).
pub fn billing(
    code: AnswerCode,
    insurer: Option<InsurerNumber>,
    copay: Option<u8>,
) -> Option<Billing> {
    match code {
        AnswerCode::Valid => Some(Billing { insurer, patient_tenths: copay.unwrap_or(3) }),
        AnswerCode::Invalid | AnswerCode::InvalidNewerExists | AnswerCode::NoMatch => {
            Some(Billing { insurer: None, patient_tenths: 10 })
        }
        AnswerCode::PendingSuccessor | AnswerCode::Unknown | AnswerCode::MultipleMatches => None,
    }
}

/// What an answer bills, following `invalid_newer_exists` to the successor's coverage (the
/// clinic bills the successor insurer at its copay).
fn answer_billing(p: &Projection, a: &Answer, cutoff: Hlc) -> Option<Billing> {
    if let (AnswerCode::InvalidNewerExists, Some(successor)) = (a.code, &a.successor) {
        let fresh = Freshness::default();
        let s = p.check(&CheckQuery::Member(successor.clone()), a.service_date, cutoff, fresh);
        if s.code == AnswerCode::Valid {
            return billing(s.code, s.insurer, s.copay_tenths);
        }
    }
    billing(a.code, a.insurer, a.copay_tenths)
}

fn action_text(billed: Option<Billing>, due: Billing) -> String {
    let who = |b: Billing| match b.insurer {
        Some(i) => format!("insurer {i} covers {}/10", 10 - b.patient_tenths),
        None => "not covered: the patient pays 10/10".to_owned(),
    };
    match billed {
        None => format!("re-bill: {}", who(due)),
        Some(b) => {
            let diff = i16::from(b.patient_tenths) - i16::from(due.patient_tenths);
            let money = match diff.cmp(&0) {
                std::cmp::Ordering::Greater => {
                    format!("refund {diff}/10 of the fee to the patient")
                }
                std::cmp::Ordering::Less => {
                    format!("the patient owes {}/10 of the fee more", -diff)
                }
                std::cmp::Ordering::Equal => "patient's share unchanged".to_owned(),
            };
            let claim = match (b.insurer, due.insurer) {
                (Some(a), Some(d)) if a != d => format!("; move the claim from insurer {a} to {d}"),
                (Some(a), None) => format!("; withdraw the claim to insurer {a}"),
                (None, Some(d)) => {
                    format!("; claim {}/10 from insurer {d}", 10 - due.patient_tenths)
                }
                _ => String::new(),
            };
            format!("{money}{claim}")
        }
    }
}

/// What to do about a check answered `unknown` that the truth now answers as covered.
fn unknown_action_text(due: Billing) -> String {
    match due.insurer {
        Some(insurer) => format!(
            "answered unknown, covered by insurer {insurer}: if the patient paid in full, refund {}/10 and claim {}/10 from insurer {insurer}",
            10 - due.patient_tenths,
            10 - due.patient_tenths
        ),
        None => "answered unknown: not covered, the patient pays 10/10".to_owned(),
    }
}

struct CheckRec {
    event: SignedEvent,
    hub_position: u64,
    knowledge: Hlc,
    code: AnswerCode,
    mode: CheckMode,
    query: CheckQuery,
    service_date: Date,
    /// The re-derived answer (hash-verified) and what it billed.
    then: Option<(Answer, Option<Billing>)>,
}

fn insurer_of_event(e: &SignedEvent) -> Option<InsurerNumber> {
    match e.event().namespace {
        Namespace::Insurer(i) => Some(i),
        Namespace::Clinic(_) => None,
    }
}

/// Display name of a clinic: from `names`, else `clinic <8 hex digits>`.
pub fn clinic_name(names: &BTreeMap<NodeId, String>, node: &NodeId) -> String {
    names
        .get(node)
        .cloned()
        .unwrap_or_else(|| format!("clinic {}", &shikaku_core::hex::encode(&node.0)[..8]))
}

/// [`compute`] as of the hub's last record time (a replayable "now": the simulator's report
/// is then deterministic for its seed).
pub fn compute_at_last_event(
    events: &[(u64, SignedEvent)],
    names: &BTreeMap<NodeId, String>,
) -> Report {
    let last = events.iter().map(|(_, e)| e.event().hlc.physical_ms()).max();
    compute(events, names, last.unwrap_or(0))
}

/// Computes the report from the hub's events with their log positions (any order).
pub fn compute(
    events: &[(u64, SignedEvent)],
    names: &BTreeMap<NodeId, String>,
    now_ms: u64,
) -> Report {
    compute_revealed(events, names, now_ms, None)
}

/// [`compute`] for a hub holding sealed records (schema 2): `reveal` is what its data keys
/// open (every member's birth date and insured person), so checks re-derive with the rules
/// that need them, as the clinic answered.
pub fn compute_revealed(
    events: &[(u64, SignedEvent)],
    names: &BTreeMap<NodeId, String>,
    now_ms: u64,
    reveal: Option<&shikaku_core::Reveal>,
) -> Report {
    let (mut hub, clinics) = HubView::of(events, now_ms);
    hub.reveal = reveal;
    let erased: BTreeSet<String> = events
        .iter()
        .filter_map(|(_, e)| match &e.event().body {
            EventBody::MemberErased { member, .. } => Some(member.to_string()),
            _ => None,
        })
        .collect();
    let mut report = Report {
        generated_ms: now_ms,
        hub_events: events.len() as u64,
        totals: Totals::default(),
        contradicted: Vec::new(),
        not_rederivable: Vec::new(),
        declarations: Vec::new(),
        retroactive: Vec::new(),
        conflicts: hub.global.conflicts(Hlc(u64::MAX)),
        revoked_link_uses: Vec::new(),
        clinics: Vec::new(),
        erased: erased.into_iter().collect(),
        accesses: Vec::new(),
    };
    report.totals.erased_members = report.erased.len() as u64;
    let mut check_conflicts: BTreeSet<Conflict> = BTreeSet::new();
    let mut retro: BTreeMap<EventId, BTreeSet<EventId>> = BTreeMap::new();
    for (node, own) in clinics {
        let found = ClinicFindings {
            report: &mut report,
            conflicts: &mut check_conflicts,
            retroactive: &mut retro,
        };
        clinic_section(&hub, names, node, own, found);
    }
    let by_id = &hub.by_id;
    for conflict in check_conflicts {
        if !report.conflicts.contains(&conflict) {
            report.conflicts.push(conflict);
        }
    }
    report.revoked_link_uses.sort_by_key(|u| (u.revoked_ms, u.check.at_ms));
    for (event, checks) in retro {
        let Some((_, e)) = by_id.get(&event) else { continue };
        report.retroactive.push(Retroactive {
            event,
            kind: e.event().body.type_name(),
            insurer: insurer_of_event(e),
            recorded_ms: e.event().hlc.physical_ms(),
            checks: checks.into_iter().collect(),
        });
    }
    report.contradicted.sort_by_key(|c| (c.check.mode != CheckMode::Offline, c.check.at_ms));
    report.declarations.sort_by_key(|d| (d.resolved, d.at_ms));
    report.clinics.sort_by(|a, b| {
        (b.staleness_at_last_check_s, b.max_staleness_s, &a.clinic).cmp(&(
            a.staleness_at_last_check_s,
            a.max_staleness_s,
            &b.clinic,
        ))
    });
    report
}

/// The hub's side of the report: its insurer events in position order and by id, when it held
/// each position, the converged truth, and every wrong-person linkage revocation.
struct HubView<'a> {
    insurer: Vec<(u64, &'a SignedEvent)>,
    by_id: HashMap<EventId, (u64, &'a SignedEvent)>,
    /// `(position, held since ms)`, ascending.
    by_position: Vec<(u64, u64)>,
    global: Projection,
    /// `(card, member, revocation event, when)`.
    revocations: Vec<(shikaku_core::CardToken, MemberKey, EventId, u64)>,
    fresh: Freshness,
    now_ms: u64,
    /// What the hub's data keys reveal of sealed records (birth dates, insured persons), so
    /// sealed checks re-derive with the rules that need them.
    reveal: Option<&'a shikaku_core::Reveal>,
}

impl HubView<'_> {
    fn check(
        &self,
        p: &Projection,
        query: &CheckQuery,
        date: shikaku_core::Date,
        cutoff: Hlc,
    ) -> Answer {
        match self.reveal {
            Some(reveal) => p.check_revealed(query, date, cutoff, self.fresh, reveal),
            None => p.check(query, date, cutoff, self.fresh),
        }
    }
}

type ClinicEvents<'a> = BTreeMap<NodeId, Vec<&'a SignedEvent>>;

impl<'a> HubView<'a> {
    fn of(events: &'a [(u64, SignedEvent)], now_ms: u64) -> (HubView<'a>, ClinicEvents<'a>) {
        let mut insurer: Vec<(u64, &SignedEvent)> = Vec::new();
        let mut clinics: ClinicEvents<'a> = BTreeMap::new();
        // Insurer events by id, with their hub positions (their insurer and record time are
        // read from the event).
        let mut by_id: HashMap<EventId, (u64, &SignedEvent)> = HashMap::new();
        for (position, e) in events {
            match e.event().namespace {
                Namespace::Insurer(_) => {
                    insurer.push((*position, e));
                    by_id.insert(e.id(), (*position, e));
                }
                Namespace::Clinic(node) => clinics.entry(node).or_default().push(e),
            }
        }
        insurer.sort_by_key(|(p, _)| *p);
        // When the hub held each position, as well as its ledger can tell: no earlier than the
        // latest record time at or before that position (the hub refuses events from the
        // future, and a position is taken only after every earlier one). Record times alone
        // would date a roster imported today by its enrolment history, years back.
        let mut by_position: Vec<(u64, u64)> =
            events.iter().map(|(p, e)| (*p, e.event().hlc.physical_ms())).collect();
        by_position.sort_unstable();
        let mut latest = 0u64;
        for entry in &mut by_position {
            latest = latest.max(entry.1);
            entry.1 = latest;
        }
        let mut global = Projection::new(Replication::All);
        for (_, e) in &insurer {
            global.apply(e);
        }
        let revocations = insurer
            .iter()
            .filter_map(|(_, e)| match &e.event().body {
                EventBody::WrongPersonLinkageRevoked { card, member, .. } => {
                    Some((*card, member.clone(), e.id(), e.event().hlc.physical_ms()))
                }
                _ => None,
            })
            .collect();
        let fresh = Freshness { now_ms, last_hub_sync_ms: None, hub_position: None, damage: None };
        let hub = HubView {
            insurer,
            by_id,
            by_position,
            global,
            revocations,
            fresh,
            now_ms,
            reveal: None,
        };
        (hub, clinics)
    }

    /// When the hub held `position` (see [`HubView::of`]).
    fn held_since_ms(&self, position: u64) -> u64 {
        let at = self.by_position.partition_point(|(p, _)| *p <= position);
        at.checked_sub(1).map_or(0, |i| self.by_position[i].1)
    }
}

/// Where one clinic's findings go.
struct ClinicFindings<'r> {
    report: &'r mut Report,
    conflicts: &'r mut BTreeSet<Conflict>,
    retroactive: &'r mut BTreeMap<EventId, BTreeSet<EventId>>,
}

/// One clinic's part of the report: its checks re-derived and compared with the truth, its
/// declarations, the revoked links its checks used, its staleness row.
fn clinic_section(
    hub: &HubView<'_>,
    names: &BTreeMap<NodeId, String>,
    node: NodeId,
    mut own: Vec<&SignedEvent>,
    found: ClinicFindings<'_>,
) {
    let ClinicFindings { report, conflicts: check_conflicts, retroactive: retro } = found;
    let name = clinic_name(names, &node);
    own.sort_by_key(|e| e.event().origin_seq);
    // Which insurers this clinic evidently held: those whose events decided its answers.
    let mut held: BTreeSet<InsurerNumber> = BTreeSet::new();
    for e in &own {
        if let EventBody::CheckPerformed { decided_by, .. } = &e.event().body {
            held.extend(
                decided_by
                    .iter()
                    .filter_map(|id| hub.by_id.get(id))
                    .filter_map(|(_, e)| insurer_of_event(e)),
            );
        }
    }
    // next_held[i]: the first insurer event at or after i (by position) of an insurer this
    // clinic holds — the only events it could be missing.
    let mut next_held = vec![usize::MAX; hub.insurer.len() + 1];
    for i in (0..hub.insurer.len()).rev() {
        let mine = insurer_of_event(hub.insurer[i].1).is_some_and(|n| held.contains(&n));
        next_held[i] = if mine { i } else { next_held[i + 1] };
    }
    let mut all = Projection::new(Replication::All);
    // What the clinic held: only the insurers it evidently subscribed to (it never
    // received the others' events), tried first; then everything.
    let mut subset = Projection::new(Replication::Insurers(held.clone()));
    let mut next = 0usize;
    let mut checks: Vec<CheckRec> = Vec::new();
    let mut declarations: Vec<(&SignedEvent, CheckQuery, Option<InsurerNumber>, Date)> = Vec::new();
    let mut resolutions: HashMap<EventId, String> = HashMap::new();
    let mut row = ClinicRow {
        clinic: name.clone(),
        node: shikaku_core::hex::encode(&node.0),
        checks: 0,
        offline_checks: 0,
        contradicted: 0,
        unresolved_declarations: 0,
        last_check_ms: None,
        last_hub_position: None,
        staleness_at_last_check_s: 0,
        max_staleness_s: 0,
    };
    for e in own {
        match &e.event().body {
            EventBody::CheckPerformed {
                query,
                service_date,
                mode,
                knowledge,
                hub_position,
                code,
                answer_hash,
                ..
            } => {
                while next < hub.insurer.len() && hub.insurer[next].0 <= *hub_position {
                    all.apply(hub.insurer[next].1);
                    if insurer_of_event(hub.insurer[next].1).is_some_and(|i| held.contains(&i)) {
                        subset.apply(hub.insurer[next].1);
                    }
                    next += 1;
                }
                let then = [&subset, &all].into_iter().find_map(|p| {
                    let a = hub.check(p, query, *service_date, *knowledge);
                    // Records written before the v2 answer hash carry the v1 one.
                    (a.hash() == *answer_hash || a.hash_v1() == *answer_hash).then(|| {
                        let billed = answer_billing(p, &a, *knowledge);
                        (a, billed)
                    })
                });
                let at = e.event().hlc.physical_ms();
                // The first event of its insurers that the hub held and it had not
                // received: how long the hub had held it when the clinic answered.
                let stale = match hub.insurer.get(next_held[next]) {
                    Some((position, _)) => {
                        shikaku_core::staleness_s(at, hub.held_since_ms(*position))
                    }
                    None => 0,
                };
                row.checks += 1;
                row.offline_checks += u64::from(*mode == CheckMode::Offline);
                row.last_check_ms = Some(at);
                row.last_hub_position = Some(*hub_position);
                row.staleness_at_last_check_s = stale;
                row.max_staleness_s = row.max_staleness_s.max(stale);
                checks.push(CheckRec {
                    event: e.clone(),
                    hub_position: *hub_position,
                    knowledge: *knowledge,
                    code: *code,
                    mode: *mode,
                    query: query.clone(),
                    service_date: *service_date,
                    then,
                });
            }
            EventBody::SelfDeclarationRecorded { query, declared_insurer, declared_start } => {
                declarations.push((e, query.clone(), *declared_insurer, *declared_start));
            }
            EventBody::SelfDeclarationResolved { declaration, outcome, .. } => {
                resolutions.insert(*declaration, format!("resolved by the clinic: {outcome:?}"));
            }
            _ => {}
        }
        all.apply(e);
        subset.apply(e);
    }
    // The converged truth for this clinic: every insurer event and all its own records.
    while next < hub.insurer.len() {
        all.apply(hub.insurer[next].1);
        next += 1;
    }
    let truth = all;
    // Checks that used a link revoked since, by check id.
    let mut revoked_uses: HashMap<EventId, (MemberKey, EventId, u64)> = HashMap::new();
    for (card, member, revocation, at) in &hub.revocations {
        for check in truth.checks_using_revoked_link(card, member, Hlc(u64::MAX)) {
            revoked_uses.entry(check).or_insert_with(|| (member.clone(), *revocation, *at));
        }
    }
    for c in checks {
        report.totals.checks += 1;
        report.totals.offline_checks += u64::from(c.mode == CheckMode::Offline);
        let check = CheckRef {
            check: c.event.id(),
            clinic: name.clone(),
            at_ms: c.event.event().hlc.physical_ms(),
            mode: c.mode,
            query: c.query.clone(),
            service_date: c.service_date,
            answered: c.code,
        };
        let now = hub.check(&truth, &c.query, c.service_date, Hlc(u64::MAX));
        check_conflicts.extend(now.conflicts.iter().cloned());
        if let Some((then, _)) = &c.then {
            check_conflicts.extend(then.conflicts.iter().cloned());
        }
        if let Some((linked_member, revocation, revoked_ms)) = revoked_uses.get(&check.check) {
            report.revoked_link_uses.push(RevokedLinkUse {
                check: check.clone(),
                linked_member: linked_member.clone(),
                revocation: *revocation,
                revoked_ms: *revoked_ms,
            });
        }
        let decided_later_by: Vec<EventId> = now
            .decided_by
            .iter()
            .copied()
            .filter(|id| {
                // An insurer event recorded after the check, or not yet received by the
                // clinic then.
                hub.by_id.get(id).is_some_and(|(position, e)| {
                    e.event().hlc > c.knowledge || *position > c.hub_position
                })
            })
            .collect();
        let due = answer_billing(&truth, &now, Hlc(u64::MAX));
        // An `unknown` the truth now answers as covered is a billing question too: the
        // clinic could bill no insurer, so the patient may have paid in full.
        let unknown_now_covered =
            c.code == AnswerCode::Unknown && due.is_some_and(|d| d.insurer.is_some());
        let (billed, contradicted) = match &c.then {
            Some((_, b)) => {
                report.totals.rederived += 1;
                (*b, (b.is_some() && due.is_some() && *b != due) || unknown_now_covered)
            }
            None => {
                report.not_rederivable.push(check.clone());
                let differs = match (c.code.covered(), now.code.covered()) {
                    (Some(a), Some(b)) => a != b,
                    _ => false,
                };
                (None, differs || unknown_now_covered)
            }
        };
        report.accesses.push(Access {
            check: check.clone(),
            operator: c.event.operator(),
            member_then: c.then.as_ref().and_then(|(a, _)| a.member.clone()),
            member_now: now.member.clone(),
            successor_now: now.successor.clone(),
            truth: now.code,
            contradicted: contradicted && due.is_some(),
            revoked_link: revoked_uses.get(&check.check).cloned(),
        });
        if !contradicted {
            continue;
        }
        let Some(due) = due else { continue };
        for id in &decided_later_by {
            retro.entry(*id).or_default().insert(check.check);
        }
        let refund = billed.map(|b| i16::from(b.patient_tenths) - i16::from(due.patient_tenths));
        match refund {
            Some(r) if r > 0 => report.totals.refund_tenths += r as u64,
            Some(r) if r < 0 => report.totals.owed_tenths += (-r) as u64,
            _ => {}
        }
        report.totals.contradicted += 1;
        report.totals.contradicted_offline += u64::from(c.mode == CheckMode::Offline);
        row.contradicted += 1;
        let action = if c.code == AnswerCode::Unknown {
            unknown_action_text(due)
        } else {
            action_text(billed, due)
        };
        report.contradicted.push(Contradiction {
            action,
            check,
            truth: now.code,
            truth_member: now.member.clone(),
            billed,
            due: Some(due),
            refund_tenths: refund,
            decided_later_by,
        });
    }
    for (e, query, declared_insurer, declared_start) in declarations {
        let now = hub.check(&truth, &query, declared_start, Hlc(u64::MAX));
        let explicit = resolutions.get(&e.id()).cloned();
        let covered_as = match now.code {
            AnswerCode::Valid => now.member.clone(),
            AnswerCode::InvalidNewerExists => now.successor.clone(),
            _ => None,
        };
        let found = covered_as.map(|key| {
            format!("covered from {declared_start} as member {key} of insurer {}", key.insurer)
        });
        let resolution = explicit.or(found);
        let at_ms = e.event().hlc.physical_ms();
        let resolved = resolution.is_some();
        report.totals.declarations += 1;
        if !resolved {
            report.totals.unresolved_declarations += 1;
            row.unresolved_declarations += 1;
        }
        report.declarations.push(Declaration {
            declaration: e.id(),
            clinic: name.clone(),
            at_ms,
            query,
            declared_insurer,
            declared_start,
            resolved,
            resolution: resolution
                .unwrap_or_else(|| "no coverage from the declared date yet".to_owned()),
            open_days: (!resolved).then(|| hub.now_ms.saturating_sub(at_ms) / 86_400_000),
        });
    }
    report.clinics.push(row);
}
