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

/// What the caller knows about its own freshness (the projection cannot know it: it is sans-IO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freshness {
    /// The node's current physical time, in Unix milliseconds.
    pub now_ms: u64,
    /// When the node last completed a sync with its hub, if ever.
    pub last_hub_sync_ms: Option<u64>,
    /// The hub log position it had reached then.
    pub hub_position: Option<u64>,
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
}

impl Answer {
    /// blake3 over a canonical encoding of everything except the freshness inputs, so two
    /// nodes that hold the same events give the same hash for the same question.
    pub fn hash(&self) -> AnswerHash {
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
