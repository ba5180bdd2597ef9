//! An independent, deliberately naive recomputation of coverage used to cross-check the
//! projection: it re-reads the raw events for every question and shares no code with
//! `shikaku_core::projection` beyond the event types.

use std::collections::{HashMap, HashSet};

use shikaku_core::{Date, EventBody, EventId, MemberKey, SignedEvent};

/// What the reference model says about one member on one date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Covered on the date.
    pub covered: bool,
    /// Copay ratio when covered.
    pub copay: Option<u8>,
}

/// All events, indexed the simple way.
pub struct Reference<'a> {
    events: &'a [SignedEvent],
    voided: HashSet<EventId>,
}

impl<'a> Reference<'a> {
    /// Indexes the events (as known now: every event counts).
    pub fn new(events: &'a [SignedEvent]) -> Reference<'a> {
        let mut targets: HashMap<EventId, Vec<EventId>> = HashMap::new();
        for event in events {
            match &event.event().body {
                EventBody::EventVoided { target, .. }
                | EventBody::EventSuperseded { target, .. } => {
                    targets.entry(*target).or_default().push(event.id())
                }
                _ => {}
            }
        }
        fn is_void(id: &EventId, targets: &HashMap<EventId, Vec<EventId>>) -> bool {
            targets.get(id).is_some_and(|voids| voids.iter().any(|v| !is_void(v, targets)))
        }
        let voided = events.iter().map(|e| e.id()).filter(|id| is_void(id, &targets)).collect();
        Reference { events, voided }
    }

    fn about(&self, member: &MemberKey) -> Vec<&'a SignedEvent> {
        let mut mine: Vec<&SignedEvent> = self
            .events
            .iter()
            .filter(|e| !self.voided.contains(&e.id()))
            .filter(|e| match &e.event().body {
                EventBody::MemberRegistered { member: m, .. }
                | EventBody::CoverageStarted { member: m, .. }
                | EventBody::CoverageEnded { member: m, .. }
                | EventBody::CopayRatioSet { member: m, .. } => m == member,
                _ => false,
            })
            .collect();
        mine.sort_by_key(|e| e.order_key());
        mine
    }

    /// Coverage of `member` on `date`.
    pub fn expected(&self, member: &MemberKey, date: Date) -> Expected {
        self.expected_inner(member, date, true)
    }

    fn expected_inner(&self, member: &MemberKey, date: Date, follow_insured: bool) -> Expected {
        let events = self.about(member);
        let mut birth = None;
        let mut insured = None;
        let mut periods: Vec<(Date, Option<Date>, u8)> = Vec::new();
        for e in &events {
            match &e.event().body {
                EventBody::MemberRegistered { person, relationship, .. } => {
                    birth = Some(person.birth_date);
                    insured = match relationship {
                        shikaku_core::Relationship::Dependant { insured } => Some(insured.clone()),
                        shikaku_core::Relationship::Insured => None,
                    };
                }
                EventBody::CoverageStarted { start, copay_tenths, .. } => {
                    periods.push((*start, None, *copay_tenths))
                }
                _ => {}
            }
        }
        periods.sort_by_key(|p| p.0);
        for e in &events {
            if let EventBody::CoverageEnded { loss_date, .. } = &e.event().body {
                // The end belongs to the latest period that started on or before it.
                let mut owner = None;
                for (i, p) in periods.iter().enumerate() {
                    if p.0 <= *loss_date {
                        owner = Some(i);
                    }
                }
                if let Some(i) = owner {
                    periods[i].1 =
                        Some(periods[i].1.map_or(*loss_date, |end: Date| end.min(*loss_date)));
                }
            }
        }
        if let Some(birth) = birth {
            if !member.insurer.is_late_stage_elderly() {
                let (y, m, dd) = birth.ymd();
                let birthday = Date::from_ymd(y + 75, m, dd)
                    .unwrap_or_else(|| Date::from_ymd(y + 75, 3, 1).unwrap());
                for p in &mut periods {
                    let cap = p.0.max(birthday);
                    if p.1.is_none_or(|end| end > cap) {
                        p.1 = Some(cap);
                    }
                }
            }
        }
        let covering =
            periods.iter().rev().find(|p| p.0 <= date && p.1.is_none_or(|end| date < end));
        let Some(&(start, _, base_copay)) = covering else {
            return Expected { covered: false, copay: None };
        };
        if follow_insured {
            if let Some(insured) = &insured {
                let exists = !self.about(insured).is_empty();
                if exists && !self.expected_inner(insured, date, false).covered {
                    return Expected { covered: false, copay: None };
                }
            }
        }
        let mut copay = (start, base_copay);
        for e in &events {
            if let EventBody::CopayRatioSet { effective, copay_tenths, .. } = &e.event().body {
                if *effective <= date && *effective >= start && *effective >= copay.0 {
                    copay = (*effective, *copay_tenths);
                }
            }
        }
        Expected { covered: true, copay: Some(copay.1) }
    }
}
