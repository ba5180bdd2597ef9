//! A builder for signed event histories: insurers and a clinic with fixed keys, events
//! stamped at given record days, and helpers that render answers for snapshots.

use std::collections::BTreeMap;

use shikaku_core::{
    Answer, CardToken, CheckQuery, Date, Event, EventBody, EventId, Freshness, Hlc, HlcClock,
    InsurerNumber, MemberKey, Namespace, Person, Projection, Relationship, Replication, Sex,
    SignedEvent, Signer,
};

/// Parses a date literal.
pub fn d(text: &str) -> Date {
    text.parse().expect("test date")
}

/// Parses a member key literal.
#[allow(dead_code)]
pub fn key(text: &str) -> MemberKey {
    text.parse().expect("test member key")
}

/// A card token derived from a label.
pub fn card(label: &str) -> CardToken {
    CardToken(*blake3::hash(label.as_bytes()).as_bytes())
}

/// A person born on `birth`.
pub fn person(name: &str, birth: &str) -> Person {
    Person {
        name: name.to_owned(),
        kana: "テスト".to_owned(),
        sex: Sex::Female,
        birth_date: d(birth),
        address: "東京都新宿区西新宿2丁目8-1".to_owned(),
        municipality: 131_016,
    }
}

/// Insurer numbers used in stories (valid check digits).
pub fn employer_a() -> InsurerNumber {
    InsurerNumber::with_check_digit(613_001)
}
/// A second employees' insurer.
pub fn employer_b() -> InsurerNumber {
    InsurerNumber::with_check_digit(613_008)
}
/// National health insurance of city A (6 digits).
pub fn city_a() -> InsurerNumber {
    InsurerNumber::nhi_with_check_digit(13_101)
}
/// National health insurance of city B.
pub fn city_b() -> InsurerNumber {
    InsurerNumber::nhi_with_check_digit(13_104)
}
/// A late-stage elderly insurer (law 39).
pub fn late_stage() -> InsurerNumber {
    InsurerNumber::with_check_digit(3_913_001)
}

/// A member key at an insurer.
pub fn member(insurer: InsurerNumber, number: &str, branch: u8) -> MemberKey {
    let symbol = if insurer.is_late_stage_elderly() { "" } else { "12" };
    MemberKey::new(insurer, symbol, number, branch).expect("test key")
}

/// A history under construction.
pub struct Story {
    signers: BTreeMap<InsurerNumber, Signer>,
    clinic: Signer,
    hub: Signer,
    clock: HlcClock,
    seqs: BTreeMap<Namespace, u64>,
    record_ms: u64,
    /// Every event signed so far, in record order.
    pub events: Vec<SignedEvent>,
    replication: Replication,
}

impl Default for Story {
    fn default() -> Self {
        Story::new()
    }
}

impl Story {
    /// An empty history.
    pub fn new() -> Story {
        Story {
            signers: BTreeMap::new(),
            clinic: Signer::derived("shikaku tests", b"clinic"),
            hub: Signer::derived("shikaku tests", b"hub"),
            clock: HlcClock::new(),
            seqs: BTreeMap::new(),
            record_ms: 0,
            events: Vec::new(),
            replication: Replication::All,
        }
    }

    /// Limits the projection to these insurers.
    pub fn replicate_only(&mut self, insurers: &[InsurerNumber]) {
        self.replication = Replication::Insurers(insurers.iter().copied().collect());
    }

    /// Sets the record day for the next events (10:00 JST).
    pub fn on(&mut self, day: &str) -> &mut Story {
        self.record_ms = d(day).start_unix_ms_jst() + 10 * 3_600_000;
        self
    }

    fn signer(&mut self, insurer: InsurerNumber) -> &Signer {
        self.signers
            .entry(insurer)
            .or_insert_with(|| Signer::derived("shikaku tests", &insurer.value().to_le_bytes()))
    }

    fn emit(&mut self, namespace: Namespace, body: EventBody) -> EventId {
        let hlc = self.clock.tick(self.record_ms).expect("clock");
        let seq = self.seqs.entry(namespace).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let origin = match namespace {
            Namespace::Insurer(_) => self.hub.node_id(),
            Namespace::Clinic(node) => node,
        };
        let signer = match namespace {
            Namespace::Insurer(insurer) => self.signer(insurer),
            Namespace::Clinic(_) => &self.clinic,
        };
        let event =
            Event { namespace, origin, origin_seq: seq, hlc, author: signer.public(), body };
        let signed = signer.sign(event).expect("valid test event");
        let id = signed.id();
        self.events.push(signed);
        id
    }

    /// An insurer event in the namespace of `insurer`.
    pub fn insurer(&mut self, insurer: InsurerNumber, body: EventBody) -> EventId {
        self.emit(Namespace::Insurer(insurer), body)
    }

    /// A clinic event.
    pub fn clinic(&mut self, body: EventBody) -> EventId {
        let node = self.clinic.node_id();
        self.emit(Namespace::Clinic(node), body)
    }

    /// Registers an insured person (or dependant) and starts coverage.
    pub fn enroll(
        &mut self,
        member: &MemberKey,
        who: Person,
        insured: Option<&MemberKey>,
        start: &str,
        copay_tenths: u8,
    ) -> EventId {
        let relationship = match insured {
            Some(insured) => Relationship::Dependant { insured: insured.clone() },
            None => Relationship::Insured,
        };
        self.insurer(
            member.insurer,
            EventBody::MemberRegistered { member: member.clone(), person: who, relationship },
        );
        self.insurer(
            member.insurer,
            EventBody::CoverageStarted {
                member: member.clone(),
                start: d(start),
                copay_tenths,
                elderly_certificate: false,
            },
        )
    }

    /// Links a card.
    pub fn link(&mut self, token: CardToken, member: &MemberKey) -> EventId {
        self.insurer(member.insurer, EventBody::CardLinked { card: token, member: member.clone() })
    }

    /// Folds every event.
    pub fn projection(&self) -> Projection {
        let mut projection = Projection::new(self.replication.clone());
        for event in &self.events {
            projection.apply(event);
        }
        projection
    }

    /// The answer to a check, as known at the end of `as_of` (or with everything).
    pub fn answer(&self, query: &CheckQuery, service: &str, as_of: Option<&str>) -> Answer {
        let cutoff = as_of
            .map(|day| Hlc::end_of_ms(d(day).add_days(1).start_unix_ms_jst() - 1))
            .unwrap_or(Hlc(u64::MAX));
        let now = Freshness { now_ms: 0, last_hub_sync_ms: None, hub_position: None, damage: None };
        self.projection().check(query, d(service), cutoff, now)
    }
}

/// Renders a list of captioned answers for a snapshot.
pub fn report(story: &Story, checks: &[(&str, CheckQuery, &str, Option<&str>)]) -> String {
    let mut out = String::new();
    let names = event_names(story);
    for (caption, query, service, as_of) in checks {
        let answer = story.answer(query, service, *as_of);
        out.push_str(&format!("## {caption}\n"));
        let mut text = shikaku_core::text::answer(&answer);
        for (id, name) in &names {
            text = text.replace(&id.to_string()[..12], name);
        }
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// Names each event `#index:type` so snapshots read as stories rather than hashes.
pub fn event_names(story: &Story) -> Vec<(EventId, String)> {
    story
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id(), format!("#{i}:{}", e.event().body.type_name())))
        .collect()
}

/// Adds clinic-side and correction events about members of a generated stream: checks,
/// self-declarations (one resolved), consents, a void and a void of that void, and a competing
/// correction, so that law tests see every kind of event.
pub fn extra_clinic_events(story: &mut Story, events: &[SignedEvent]) {
    let members: Vec<MemberKey> = events
        .iter()
        .filter_map(|e| match &e.event().body {
            EventBody::MemberRegistered { member, .. } => Some(member.clone()),
            _ => None,
        })
        .take(40)
        .collect();
    let cards: Vec<CardToken> = events
        .iter()
        .filter_map(|e| match &e.event().body {
            EventBody::CardLinked { card, .. } => Some(*card),
            _ => None,
        })
        .take(10)
        .collect();
    story.on("2025-09-01");
    for (i, m) in members.iter().enumerate().take(10) {
        story.clinic(EventBody::ConsentGiven { member: m.clone() });
        let declaration = story.clinic(EventBody::SelfDeclarationRecorded {
            query: CheckQuery::Member(m.clone()),
            declared_insurer: None,
            declared_start: d("2025-08-01"),
        });
        if i % 2 == 0 {
            story.clinic(EventBody::SelfDeclarationResolved {
                query: CheckQuery::Member(m.clone()),
                declaration,
                outcome: shikaku_core::DeclarationOutcome::Rejected,
            });
        }
    }
    for (i, token) in cards.iter().enumerate() {
        story.clinic(EventBody::CheckPerformed {
            query: CheckQuery::Card(*token),
            service_date: d("2025-09-01"),
            mode: if i % 2 == 0 {
                shikaku_core::CheckMode::Online
            } else {
                shikaku_core::CheckMode::Offline
            },
            knowledge: Hlc(0),
            hub_position: 0,
            code: shikaku_core::AnswerCode::Valid,
            answer_hash: shikaku_core::AnswerHash([i as u8; 32]),
            decided_by: vec![events[i].id()],
        });
    }
    // A wrong-person linkage, revoked.
    if let (Some(token), Some(m)) = (cards.first(), members.get(1)) {
        story.link(*token, m);
        story.insurer(
            m.insurer,
            EventBody::WrongPersonLinkageRevoked {
                card: *token,
                member: m.clone(),
                reason: "test".into(),
            },
        );
    }
    // A void, and a void of that void, of some insurer's coverage end; a competing correction.
    if let Some(end) =
        events.iter().find(|e| matches!(e.event().body, EventBody::CoverageEnded { .. }))
    {
        let EventBody::CoverageEnded { member, .. } = &end.event().body else { return };
        let insurer = member.insurer;
        let subject = CheckQuery::Member(member.clone());
        let void = story.insurer(
            insurer,
            EventBody::EventVoided {
                subject: subject.clone(),
                target: end.id(),
                reason: "test".into(),
            },
        );
        story.insurer(
            insurer,
            EventBody::EventVoided {
                subject: subject.clone(),
                target: void,
                reason: "test".into(),
            },
        );
        let fix_a = story.insurer(
            insurer,
            EventBody::CoverageEnded {
                member: member.clone(),
                loss_date: d("2025-09-10"),
                reason: shikaku_core::EndReason::Other,
            },
        );
        let fix_b = story.insurer(
            insurer,
            EventBody::CoverageEnded {
                member: member.clone(),
                loss_date: d("2025-09-20"),
                reason: shikaku_core::EndReason::Other,
            },
        );
        story.insurer(
            insurer,
            EventBody::EventSuperseded {
                subject: subject.clone(),
                target: end.id(),
                replacement: fix_a,
            },
        );
        story.insurer(
            insurer,
            EventBody::EventSuperseded { subject, target: end.id(), replacement: fix_b },
        );
    }
}
