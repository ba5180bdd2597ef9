//! Check answers, the knowledge they were computed from, and conflicts.
//!
//! An [`Answer`] carries the validity code, the service date asked about, the member and
//! coverage it found, the ids of the events that decided it, the conflicts it ran into and the
//! [`Knowledge`] (cut-off, last hub sync, staleness) it was computed from, so that reception can
//! say how fresh it is and an insurer can later re-derive it.

use crate::date::{Date, DateRange};
use crate::event::{AnswerCode, AnswerHash, CheckQuery, EndReason, EventId};
use crate::hlc::Hlc;
use crate::member::{CardToken, InsurerNumber, MemberKey};

/// Offline answers older than this are shown as stale (red) rather than ageing (amber), in the
/// reception page and the simulator's report alike.
pub const STALE_AFTER_S: u64 = 3600;

/// How old knowledge last synced at `synced_ms` is at `now_ms`, in whole seconds (0 when the
/// sync is stamped later than now): the one definition of staleness.
pub fn staleness_s(now_ms: u64, synced_ms: u64) -> u64 {
    now_ms.saturating_sub(synced_ms) / 1000
}

/// What the caller knows about its own freshness (the projection cannot know it: it is sans-IO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freshness {
    /// The node's current physical time, in Unix milliseconds.
    pub now_ms: u64,
    /// When the node last completed a sync with its hub, if ever.
    pub last_hub_sync_ms: Option<u64>,
    /// The hub log position it had reached then.
    pub hub_position: Option<u64>,
    /// Damage in the node's ledger not yet repaired: answers then carry it.
    pub damage: Option<DamageNote>,
}

impl Freshness {
    /// Seconds since the last hub sync ([`staleness_s`]), or `None` before any.
    pub fn staleness_s(&self) -> Option<u64> {
        self.last_hub_sync_ms.map(|synced| staleness_s(self.now_ms, synced))
    }
}

/// Damage in the ledger an answer was computed from. Which namespace an unreadable record
/// belonged to cannot be known, so until the damage is repaired it is taken to touch every
/// namespace: every answer carries it (its code is still the best the readable events give,
/// but it may be wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DamageNote {
    /// Damaged ranges.
    pub ranges: u32,
    /// Records known missing or unreadable (0 when a range's size is unknown).
    pub records: u64,
    /// The first damaged log position.
    pub first_position: u64,
    /// Whether a hub will send the missing events back (a clinic or hub node), or not (a
    /// local ledger).
    pub refetch: RefetchState,
}

/// Whether damaged events will come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefetchState {
    /// The node re-fetches them from its hub at the next session (repair path).
    Pending,
    /// No hub: repair the ledger (`ledger verify --repair`) and import the events again.
    NoHub,
}

/// The knowledge an answer was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Knowledge {
    /// Record-time cut-off: only events with `hlc <= as_of` were considered.
    pub as_of: Hlc,
    /// How many distinct events the node held (at any record time).
    pub events_held: u64,
    /// Last completed hub sync, Unix ms; `None` when never synced (e.g. imported locally).
    pub last_hub_sync_ms: Option<u64>,
    /// Hub log position reached at that sync.
    pub hub_position: Option<u64>,
    /// Seconds since the last completed hub sync; `None` when never synced.
    pub staleness_s: Option<u64>,
}

/// Concurrent, non-dominated statements that the fold refuses to settle silently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Conflict {
    /// Two coverage periods of one member key overlap.
    OverlappingCoverage {
        /// Member.
        member: MemberKey,
        /// The coverage-start events involved.
        events: Vec<EventId>,
    },
    /// Two coverage ends with different loss dates claim the same period.
    CompetingEnds {
        /// Member.
        member: MemberKey,
        /// The coverage-end events involved (the earliest loss date is applied).
        events: Vec<EventId>,
    },
    /// Two different values take effect on the same day (copay ratio or limit category).
    CompetingValues {
        /// Member.
        member: MemberKey,
        /// "copay_tenths" or "limit_category".
        field: &'static str,
        /// The events involved (the later in (hlc, id) order is applied).
        events: Vec<EventId>,
    },
    /// One event was superseded twice, by different corrections.
    CompetingCorrections {
        /// The corrected event.
        target: EventId,
        /// The supersession events.
        events: Vec<EventId>,
    },
    /// One card resolves to more than one member covered on the same date.
    MultipleMembers {
        /// Card.
        card: CardToken,
        /// Members covered on the date.
        members: Vec<MemberKey>,
    },
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Answer {
    /// Validity code.
    pub code: AnswerCode,
    /// The service date asked about.
    pub service_date: Date,
    /// What was asked.
    pub query: CheckQuery,
    /// The member the answer is about, when one was identified.
    pub member: Option<MemberKey>,
    /// That member's insurer.
    pub insurer: Option<InsurerNumber>,
    /// Whether the member is a dependant.
    pub dependant: Option<bool>,
    /// The coverage period containing the service date, or the latest one before it.
    pub coverage: Option<DateRange>,
    /// Why that coverage ended, when it has.
    pub end_reason: Option<EndReason>,
    /// Copay ratio in tenths on the service date (valid answers only).
    pub copay_tenths: Option<u8>,
    /// Limit category on the service date, only with the patient's consent.
    pub limit_category: Option<String>,
    /// A limit category exists but is withheld for lack of consent.
    pub limit_category_withheld: bool,
    /// When withheld because the patient withdrew their consent: the record time of the
    /// withdrawal (absent when consent was never given). Derived from the events that the
    /// hash already covers, so it is not hashed itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent_withdrawn: Option<Hlc>,
    /// For `invalid_newer_exists`: the member key of the newer coverage.
    pub successor: Option<MemberKey>,
    /// For `pending_successor`: the self-declaration event.
    pub declaration: Option<EventId>,
    /// The events that decided the answer, sorted.
    pub decided_by: Vec<EventId>,
    /// Conflicts met while answering.
    pub conflicts: Vec<Conflict>,
    /// The knowledge the answer was computed from.
    pub knowledge: Knowledge,
    /// The ledger's damage not yet repaired when this answer was given (not hashed: it is
    /// about the node, not the events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<DamageNote>,
}

/// Appends a member key as `u16 LE length ‖ its text form` (`INSURER:SYMBOL:NUMBER:BB`).
fn put_key(out: &mut Vec<u8>, key: &MemberKey) {
    let text = key.to_string();
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_ids(out: &mut Vec<u8>, ids: &[EventId]) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.0);
    }
}

/// The canonical bytes of a conflict inside the answer hash (protocol/EVENTS.md).
fn put_conflict(out: &mut Vec<u8>, conflict: &Conflict) {
    match conflict {
        Conflict::OverlappingCoverage { member, events } => {
            out.push(0);
            put_key(out, member);
            put_ids(out, events);
        }
        Conflict::CompetingEnds { member, events } => {
            out.push(1);
            put_key(out, member);
            put_ids(out, events);
        }
        Conflict::CompetingValues { member, field, events } => {
            out.push(2);
            put_key(out, member);
            out.extend_from_slice(&(field.len() as u16).to_le_bytes());
            out.extend_from_slice(field.as_bytes());
            put_ids(out, events);
        }
        Conflict::CompetingCorrections { target, events } => {
            out.push(3);
            out.extend_from_slice(&target.0);
            put_ids(out, events);
        }
        Conflict::MultipleMembers { card, members } => {
            out.push(4);
            out.extend_from_slice(&card.0);
            out.extend_from_slice(&(members.len() as u32).to_le_bytes());
            for m in members {
                put_key(out, m);
            }
        }
    }
}

impl Answer {
    /// The bytes the answer hash (v2) is computed over: everything except the freshness
    /// inputs, each field in one canonical byte form (protocol/EVENTS.md, "The answer hash"),
    /// so two nodes that hold the same events give the same hash for the same question, and
    /// anyone can recompute a check record's hash by hand.
    pub fn hash_input(&self) -> Vec<u8> {
        let mut out = b"shikaku/answer/v2".to_vec();
        out.push(self.code as u8);
        out.extend_from_slice(&self.service_date.0.to_le_bytes());
        match &self.query {
            CheckQuery::Card(card) => {
                out.push(0);
                out.extend_from_slice(&card.0);
            }
            CheckQuery::Member(member) => {
                out.push(1);
                put_key(&mut out, member);
            }
        }
        let opt_key = |out: &mut Vec<u8>, key: &Option<MemberKey>| match key {
            None => out.push(0),
            Some(key) => {
                out.push(1);
                put_key(out, key);
            }
        };
        opt_key(&mut out, &self.member);
        match self.coverage {
            None => out.push(0),
            Some(range) => {
                out.push(1);
                out.extend_from_slice(&range.start.0.to_le_bytes());
                match range.end {
                    None => out.push(0),
                    Some(end) => {
                        out.push(1);
                        out.extend_from_slice(&end.0.to_le_bytes());
                    }
                }
            }
        }
        out.push(self.end_reason.map_or(0xFF, |r| r as u8));
        out.push(self.copay_tenths.unwrap_or(0));
        match &self.limit_category {
            None => out.push(0),
            Some(category) => {
                out.push(1);
                out.extend_from_slice(&(category.len() as u16).to_le_bytes());
                out.extend_from_slice(category.as_bytes());
            }
        }
        out.push(u8::from(self.limit_category_withheld));
        opt_key(&mut out, &self.successor);
        match &self.declaration {
            None => out.push(0),
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.0);
            }
        }
        put_ids(&mut out, &self.decided_by);
        out.extend_from_slice(&(self.conflicts.len() as u32).to_le_bytes());
        for conflict in &self.conflicts {
            put_conflict(&mut out, conflict);
        }
        out.extend_from_slice(&self.knowledge.as_of.0.to_le_bytes());
        out
    }

    /// blake3 of [`Answer::hash_input`]: what a check record's `answer_hash` holds.
    pub fn hash(&self) -> AnswerHash {
        AnswerHash(*blake3::hash(&self.hash_input()).as_bytes())
    }

    /// The answer hash of releases before v2 (built from Debug texts); kept only so that check
    /// records written then can still be re-derived. Never written any more.
    pub fn hash_v1(&self) -> AnswerHash {
        let mut h = blake3::Hasher::new();
        h.update(b"shikaku/answer/v1");
        let mut text = |s: &str| {
            h.update(&(s.len() as u32).to_le_bytes());
            h.update(s.as_bytes());
        };
        text(&format!("{:?}", self.code));
        text(&self.service_date.to_string());
        text(&match &self.query {
            CheckQuery::Card(card) => format!("card:{card}"),
            CheckQuery::Member(member) => format!("member:{member}"),
        });
        text(&self.member.as_ref().map(ToString::to_string).unwrap_or_default());
        text(&format!("{:?}", self.coverage));
        text(&format!("{:?}", self.end_reason));
        text(&format!("{:?}", self.copay_tenths));
        text(&format!("{:?}/{}", self.limit_category, self.limit_category_withheld));
        text(&self.successor.as_ref().map(ToString::to_string).unwrap_or_default());
        text(&self.declaration.map(|d| d.to_string()).unwrap_or_default());
        for id in &self.decided_by {
            text(&id.to_string());
        }
        text(&format!("{:?}", self.conflicts));
        text(&format!("{:?}", self.knowledge.as_of));
        AnswerHash(*h.finalize().as_bytes())
    }
}
