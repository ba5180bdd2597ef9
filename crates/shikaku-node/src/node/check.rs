//! Checks: answers from the projection with the node's freshness, each recorded as the
//! clinic's own `check_performed` event — checks that arrive together in one durable write —
//! and the clinic's other records (declarations, consents).

use shikaku_core::keystore::Presented;
use shikaku_core::seal::{self, DataKey, SealedMember};
use shikaku_core::{Reveal, StaffId, SCHEMA_SEALED, SCHEMA_VERSION};

use super::*;

/// What a check could say about the member's identity, beside the answer. Only ever handed to
/// the caller (the present patient's reception screen): never stored, logged or counted.
#[derive(Clone, PartialEq, Eq)]
pub enum MemberData {
    /// The ledger holds this member in the clear (schema 1).
    Plain,
    /// The sealed record, opened with what the patient presented.
    Opened(Box<SealedMember>),
    /// The member's data was erased: the answer comes from pseudonymous facts only.
    Erased,
    /// The record is sealed and could not be opened here (its key has not arrived yet, or
    /// the key store is unreadable).
    Sealed,
    /// The answer names no member.
    NoMember,
}

impl std::fmt::Debug for MemberData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never member data in debug output.
        f.write_str(match self {
            MemberData::Plain => "Plain",
            MemberData::Opened(_) => "Opened(…)",
            MemberData::Erased => "Erased",
            MemberData::Sealed => "Sealed",
            MemberData::NoMember => "NoMember",
        })
    }
}

impl MemberData {
    /// A short label: `plain`, `opened`, `erased`, `sealed`, `none`.
    pub fn label(&self) -> &'static str {
        match self {
            MemberData::Plain => "plain",
            MemberData::Opened(_) => "opened",
            MemberData::Erased => "erased",
            MemberData::Sealed => "sealed",
            MemberData::NoMember => "none",
        }
    }
}

/// What the patient said at this check about sharing their limit category (the folder
/// interface's `LimitApplicationCertificateRelatedConsFlg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsentAtCheck {
    /// Nothing said: the consent events in the ledger decide.
    #[default]
    AsRecorded,
    /// The patient consents now: a `consent_given` is recorded before the answer (when the
    /// category would otherwise be withheld), so the answer carries the category.
    GivenNow,
}

/// One check of what a patient presented.
#[derive(Debug, Clone)]
pub struct PresentedCheck {
    /// The card, or the member key with or without the birth date.
    pub presented: Presented,
    /// The service date.
    pub date: Date,
    /// The logged-in staff member who asked (schema 3), if any.
    pub operator: Option<StaffId>,
    /// What the patient said about consent.
    pub consent: ConsentAtCheck,
}

/// A check of something a patient presented: the answer (its member and query pseudonymous
/// when the ledger is sealed) and what could be said about the member's identity.
#[derive(Debug, Clone)]
pub struct PresentedAnswer {
    /// The answer, as recorded.
    pub answer: Answer,
    /// The identity, for the present patient only.
    pub member_data: MemberData,
    /// Whether the clinic was in sync with its hub when it answered (the record's mode).
    pub online: bool,
}

impl<D: Directory> Node<D> {
    /// Clinic: answers a check locally and records it in the clinic's namespace (access audit);
    /// the record is pushed to the hub while connected.
    pub fn check(
        &mut self,
        now_ms: u64,
        query: &CheckQuery,
        service_date: Date,
    ) -> Result<Answer, NodeError> {
        let mut answers = self.check_many(now_ms, &[(query.clone(), service_date)])?;
        answers.pop().ok_or_else(|| NodeError::Role("no answer".into()))
    }

    /// Clinic: answers checks that arrived together and records them with one durable write
    /// (group commit): every answer is given from the same knowledge, and none is returned
    /// before all the records are durable. Fails as a whole if the records cannot be stored.
    pub fn check_many(
        &mut self,
        now_ms: u64,
        queries: &[(CheckQuery, Date)],
    ) -> Result<Vec<Answer>, NodeError> {
        if self.config.role != Role::Clinic {
            return Err(NodeError::Role("checks are answered by clinic nodes".into()));
        }
        let online = self.in_sync();
        let freshness = self.freshness(now_ms);
        let as_of = Hlc::end_of_ms(now_ms).max(self.clock.last());
        #[cfg(feature = "planted-bugs")]
        let cutoff = if self.config.planted == Some(PlantedBug::CheckIgnoresKnowledge) {
            Hlc(0)
        } else {
            as_of
        };
        #[cfg(not(feature = "planted-bugs"))]
        let cutoff = as_of;
        let mut answers = Vec::with_capacity(queries.len());
        let mut bodies = Vec::with_capacity(queries.len());
        for (query, service_date) in queries {
            let mut answer = self.projection.check(query, *service_date, cutoff, freshness);
            answer.knowledge.as_of = as_of;
            bodies.push(EventBody::CheckPerformed {
                query: query.clone(),
                service_date: *service_date,
                mode: if online { CheckMode::Online } else { CheckMode::Offline },
                knowledge: as_of,
                hub_position: freshness.hub_position.unwrap_or(0),
                code: answer.code,
                answer_hash: AnswerHash(answer.hash().0),
                decided_by: answer.decided_by.clone(),
            });
            answers.push(answer);
        }
        self.record_many(now_ms, bodies)?;
        for answer in &answers {
            self.counters.checks += 1;
            *self.counters.checks_by.entry((answer.code, online)).or_default() += 1;
        }
        Ok(answers)
    }

    /// Clinic: answers checks of what patients presented — a card, or a member key with the
    /// birth date. Where the ledger holds the insurer sealed (schema 2) the key store finds
    /// the member by lookup tag (Argon2id for a member key), the record is opened with what
    /// was presented, the rules that need hidden fields apply to what it revealed, and the
    /// check is recorded in schema 2 naming the member by tag or reference only. Otherwise the
    /// plaintext path of [`Node::check_many`] answers. One durable write for all.
    pub fn check_presented(
        &mut self,
        now_ms: u64,
        presented: &[(Presented, Date)],
    ) -> Result<Vec<PresentedAnswer>, NodeError> {
        let presented: Vec<_> = presented.iter().map(|(p, d)| (p.clone(), *d, None)).collect();
        self.check_presented_by(now_ms, &presented)
    }

    /// [`Node::check_presented`] where each check may have been made by a logged-in staff
    /// member: its record then names that operator (schema 3).
    pub fn check_presented_by(
        &mut self,
        now_ms: u64,
        presented: &[(Presented, Date, Option<StaffId>)],
    ) -> Result<Vec<PresentedAnswer>, NodeError> {
        let checks: Vec<_> = presented
            .iter()
            .map(|(presented, date, operator)| PresentedCheck {
                presented: presented.clone(),
                date: *date,
                operator: *operator,
                consent: ConsentAtCheck::AsRecorded,
            })
            .collect();
        self.check_presented_all(now_ms, &checks)
    }

    /// [`Node::check_presented_by`] with what each patient said about consent: a patient who
    /// consents now has a `consent_given` recorded (durably, before the check it precedes)
    /// and their answer is computed after it.
    pub fn check_presented_all(
        &mut self,
        now_ms: u64,
        presented: &[PresentedCheck],
    ) -> Result<Vec<PresentedAnswer>, NodeError> {
        if self.config.role != Role::Clinic {
            return Err(NodeError::Role("checks are answered by clinic nodes".into()));
        }
        let online = self.in_sync();
        let freshness = self.freshness(now_ms);
        let as_of = Hlc::end_of_ms(now_ms).max(self.clock.last());
        let mut out = Vec::with_capacity(presented.len());
        let mut bodies = Vec::with_capacity(presented.len());
        for check in presented {
            let PresentedCheck { presented: what, date: service_date, operator, consent } = check;
            let lookup = self.keys.lookup(what).map_err(NodeError::Sealed)?;
            let (query, schema, reveal, opened) = match lookup.query {
                None => {
                    let query = match what {
                        Presented::Card(token) => CheckQuery::Card(*token),
                        Presented::Key { key, .. }
                        | Presented::KeyDerived { key, .. }
                        | Presented::KeyWithoutBirth(key) => CheckQuery::Member(key.clone()),
                    };
                    (query, SCHEMA_VERSION, Reveal::default(), Vec::new())
                }
                Some(query) => {
                    let mut reveal = Reveal::default();
                    let mut opened = Vec::new();
                    for (reference, data_key) in &lookup.keys {
                        if let Some(record) = self.open_record(reference, data_key) {
                            if let Presented::Key { key, birth }
                            | Presented::KeyDerived { key, birth, .. } = what
                            {
                                // The tag matched; the record must say the same.
                                if record.key != *key || record.person.birth_date != *birth {
                                    continue;
                                }
                            }
                            reveal.insert(
                                reference.clone(),
                                record.person.birth_date,
                                record
                                    .insured
                                    .as_ref()
                                    // An erased insured person's birth date is not used.
                                    .filter(|i| !self.keys.is_erased(&i.reference))
                                    .map(|i| (i.reference.clone(), i.birth_date)),
                            );
                            opened.push((reference.clone(), record));
                        }
                    }
                    (query, SCHEMA_SEALED, reveal, opened)
                }
            };
            let mut answer =
                self.projection.check_revealed(&query, *service_date, as_of, freshness, &reveal);
            answer.knowledge.as_of = as_of;
            if let (ConsentAtCheck::GivenNow, true, Some(member)) =
                (consent, answer.limit_category_withheld, answer.member.clone())
            {
                // The consent is recorded first, then the answer computed from knowledge
                // that includes it (so the insurer's re-derivation of this check agrees).
                let body = EventBody::ConsentGiven { member };
                self.record_all(now_ms, vec![(schema, body, *operator)])?;
                let after = Hlc::end_of_ms(now_ms).max(self.clock.last());
                answer = self.projection.check_revealed(
                    &query,
                    *service_date,
                    after,
                    freshness,
                    &reveal,
                );
                answer.knowledge.as_of = after;
            }
            let knowledge = answer.knowledge.as_of;
            let member_data = match (&answer.member, schema) {
                (None, _) => MemberData::NoMember,
                (Some(_), SCHEMA_VERSION) => MemberData::Plain,
                (Some(member), _) => {
                    match opened.into_iter().find(|(reference, _)| reference == member) {
                        Some((_, record)) => {
                            self.counters.records_opened += 1;
                            MemberData::Opened(Box::new(record))
                        }
                        None if self.keys.is_erased(member) || lookup.erased.contains(member) => {
                            MemberData::Erased
                        }
                        None => MemberData::Sealed,
                    }
                }
            };
            bodies.push((
                schema,
                EventBody::CheckPerformed {
                    query,
                    service_date: *service_date,
                    mode: if online { CheckMode::Online } else { CheckMode::Offline },
                    knowledge,
                    hub_position: freshness.hub_position.unwrap_or(0),
                    code: answer.code,
                    answer_hash: AnswerHash(answer.hash().0),
                    decided_by: answer.decided_by.clone(),
                },
                *operator,
            ));
            out.push(PresentedAnswer { answer, member_data, online });
        }
        self.record_all(now_ms, bodies)?;
        for p in &out {
            self.counters.checks += 1;
            *self.counters.checks_by.entry((p.answer.code, online)).or_default() += 1;
        }
        Ok(out)
    }

    /// The latest of a member's identity events (registration, demographics change, sealed
    /// or not) that can be read and that `take` makes something of.
    fn latest_identity<T>(
        &self,
        member: &MemberKey,
        take: impl Fn(&EventBody) -> Option<T>,
    ) -> Option<T> {
        let ids = self.projection.identity_events(member, Hlc(u64::MAX));
        ids.iter().rev().find_map(|id| {
            let event = self.log.read(self.log.position_of(id)?).ok()?;
            take(&event.event().body)
        })
    }

    /// Opens a member's current sealed record (the latest identity event that opens).
    pub(super) fn open_record(&self, reference: &MemberKey, key: &DataKey) -> Option<SealedMember> {
        self.latest_identity(reference, |body| match body {
            EventBody::MemberSealed { sealed, .. }
            | EventBody::DemographicsSealed { sealed, .. } => {
                seal::open_member(key, reference, sealed).ok()
            }
            _ => None,
        })
    }

    /// A member held in the clear (schema 1): their current demographics (the latest
    /// registration or demographics change that can be read) — for the present patient's
    /// answer only, as [`MemberData::Opened`] is for a sealed one.
    pub fn plain_identity(&self, member: &MemberKey) -> Option<shikaku_core::Person> {
        self.latest_identity(member, |body| match body {
            EventBody::MemberRegistered { person, .. }
            | EventBody::DemographicsChanged { person, .. } => Some(person.clone()),
            _ => None,
        })
    }

    /// Hub (insurer side): a member's current record, opened with the data key it holds.
    pub fn open_member_record(&self, reference: &MemberKey) -> Option<SealedMember> {
        let key = self.keys.data_key(reference)?;
        self.open_record(reference, key)
    }

    /// The query and schema a clinic record about `query` is written in: where the ledger is
    /// sealed, a card by its tag and a member reference as given, in schema 2; otherwise the
    /// query itself in schema 1.
    pub fn record_query(&self, query: &CheckQuery) -> (CheckQuery, u16) {
        match query {
            CheckQuery::Card(token) if self.keys.is_sealing() => {
                (CheckQuery::Card(seal::card_tag(token)), SCHEMA_SEALED)
            }
            CheckQuery::Member(key) if seal::is_member_ref(key) => (query.clone(), SCHEMA_SEALED),
            _ => (query.clone(), SCHEMA_VERSION),
        }
    }

    /// Clinic: its own records (checks, declarations, consents) in origin-sequence order —
    /// the clinic's own audit trail. Records that cannot be read back are skipped and counted
    /// in the second value.
    pub fn own_records(&self) -> (Vec<SignedEvent>, u64) {
        self.own_records_since(0)
    }

    /// [`Node::own_records`] recorded at or after `since_ms`: read newest first, stopping at
    /// the first older one, so the cost is bounded by the window, not the clinic's history.
    pub fn own_records_since(&self, since_ms: u64) -> (Vec<SignedEvent>, u64) {
        let mut unreadable = 0;
        let mut records = Vec::new();
        for position in self.own.values().rev() {
            match self.log.read(*position) {
                Ok(event) if event.event().hlc.physical_ms() < since_ms => break,
                Ok(event) => records.push(event),
                Err(_) => unreadable += 1,
            }
        }
        records.reverse();
        (records, unreadable)
    }

    /// Whether this node holds sealed data of `insurer` (a member-key lookup then needs the
    /// birth date).
    pub fn insurer_sealed(&self, insurer: InsurerNumber) -> bool {
        !self.keys.kdf_params(insurer).is_empty()
    }

    pub(super) fn max_acked(&self) -> u64 {
        self.conns
            .values()
            .filter_map(|c| match &c.state {
                SessionState::Clinic(s) => Some(s.acked),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether this node holds anything about the card or member `query` names: an event of
    /// its stream (the member's facts, this clinic's checks and declarations by that card or
    /// key) or, for a card, a link to a member.
    pub fn has_record_of(&self, query: &CheckQuery) -> Result<bool, NodeError> {
        if self.log.stream_version(&shikaku_log::stream_of_query(query))? > 0 {
            return Ok(true);
        }
        Ok(matches!(query, CheckQuery::Card(_)) && self.member_of_card(query).is_some())
    }

    /// The member a query names, when it names exactly one this node knows: a member key this
    /// node has a record of, or the member a card is linked to (none for a card linked to
    /// several members).
    pub fn member_of(&self, query: &CheckQuery) -> Option<MemberKey> {
        match query {
            CheckQuery::Member(key) => {
                self.has_record_of(query).ok().filter(|known| *known).map(|_| key.clone())
            }
            CheckQuery::Card(_) => self.member_of_card(query),
        }
    }

    pub(super) fn member_of_card(&self, query: &CheckQuery) -> Option<MemberKey> {
        // Links do not depend on the service date: any date answers which member it names.
        let answer = self.projection.check(query, Date(0), Hlc(u64::MAX), Freshness::default());
        match answer.code {
            AnswerCode::MultipleMatches => None,
            _ => answer.member,
        }
    }

    /// Signs and stores an event in this node's own namespace (clinic), e.g. a
    /// self-declaration; it is pushed to the hub like check records.
    pub fn record(&mut self, now_ms: u64, body: EventBody) -> Result<SignedEvent, NodeError> {
        let mut events = self.record_many(now_ms, vec![body])?;
        events.pop().ok_or_else(|| NodeError::Role("nothing recorded".into()))
    }

    /// Records several events in the clinic's namespace with one durable write, numbered
    /// consecutively.
    pub fn record_many(
        &mut self,
        now_ms: u64,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<SignedEvent>, NodeError> {
        self.record_many_as(now_ms, bodies.into_iter().map(|b| (SCHEMA_VERSION, b)).collect())
    }

    /// [`Node::record_many`] with each body's schema version (2 names members by reference).
    pub fn record_many_as(
        &mut self,
        now_ms: u64,
        bodies: Vec<(u16, EventBody)>,
    ) -> Result<Vec<SignedEvent>, NodeError> {
        self.record_all(now_ms, bodies.into_iter().map(|(s, b)| (s, b, None)).collect())
    }

    /// [`Node::record_many_as`] made by staff member `operator`, when given.
    pub fn record_many_by(
        &mut self,
        now_ms: u64,
        bodies: Vec<(u16, EventBody)>,
        operator: Option<StaffId>,
    ) -> Result<Vec<SignedEvent>, NodeError> {
        self.record_all(now_ms, bodies.into_iter().map(|(s, b)| (s, b, operator)).collect())
    }

    /// Records in the clinic's namespace with one durable write: each body in its schema, or,
    /// where a staff member made it, in schema 3 naming that operator.
    fn record_all(
        &mut self,
        now_ms: u64,
        bodies: Vec<(u16, EventBody, Option<StaffId>)>,
    ) -> Result<Vec<SignedEvent>, NodeError> {
        let me = self.signer.node_id();
        let first = (self.own.keys().next_back().copied().unwrap_or(0).max(self.max_acked()) + 1)
            .max(self.seq_floor);
        debug_assert!(
            self.own.keys().next_back().is_none_or(|held| first > *held),
            "an origin never numbers two events alike"
        );
        let mut events = Vec::with_capacity(bodies.len());
        for (offset, (schema, body, operator)) in bodies.into_iter().enumerate() {
            let hlc = self.clock.tick(now_ms.saturating_sub(self.ahead_of_hub_ms))?;
            let event = Event {
                namespace: Namespace::Clinic(me),
                origin: me,
                origin_seq: first + offset as u64,
                hlc,
                author: self.signer.public(),
                body,
            };
            events.push(match operator {
                Some(operator) => self.signer.sign_attributed(event, operator)?,
                None => self.signer.sign_as(schema, event)?,
            });
        }
        self.store(now_ms, &events)?;
        self.counters.record_commits += 1;
        Ok(events)
    }
}
