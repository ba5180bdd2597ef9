//! The event envelope and every event type of the eligibility ledger.
//!
//! An [`Event`] is encoded canonically with rkyv (schema version 1); its [`EventId`] is
//! `blake3(schema_version_le16 ‖ canonical bytes)` and its author signs
//! `"shikaku/event/v1" ‖ id` with ed25519. A [`SignedEvent`] can only be built by signing or
//! by [`SignedEvent::decode`], which validates the rkyv archive, every member key, the id and
//! the signature — so holding one means it verified. Byte layout: `protocol/EVENTS.md`.

use std::fmt;

use crate::date::Date;
use crate::hlc::{self, Hlc, HlcError};
use crate::member::{CardToken, InsurerNumber, MemberKey, MemberKeyError};
use crate::seal::{self, Sealed};

/// Schema version 1: member data in the clear (frozen; still read, and written by
/// [`Signer::sign`] for the plaintext interchange and the tests' histories).
pub const SCHEMA_VERSION: u16 = 1;
/// Schema version 2: member data sealed ([`crate::seal`]); written by [`Signer::sign_sealed`].
pub const SCHEMA_SEALED: u16 = 2;
/// Schema version 3: a clinic record (check, declaration, consent) attributed to the staff
/// member who made it — the schema-1 or schema-2 event and a pseudonymous [`StaffId`],
/// signed together; written by [`Signer::sign_attributed`].
pub const SCHEMA_ATTRIBUTED: u16 = 3;
/// The newest schema version this build reads.
pub const SCHEMA_MAX: u16 = SCHEMA_ATTRIBUTED;
/// Largest canonical event encoding accepted, in bytes.
pub const EVENT_BYTES_MAX: usize = 16 * 1024;
/// Longest free text (names, addresses, reasons) accepted, in characters.
pub const TEXT_CHARS_MAX: usize = 200;
/// Domain separation prefix for event signatures.
pub const SIGNATURE_CONTEXT: &[u8] = b"shikaku/event/v1";

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $prefix:expr) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        pub struct $name(pub [u8; $len]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&crate::hex::encode(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}…)", $prefix, &crate::hex::encode(&self.0[..6]))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<$name, String> {
                crate::hex::decode_array::<$len>(text).map($name).ok_or_else(|| {
                    format!("{} must be {} hexadecimal characters", stringify!($name), $len * 2)
                })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

byte_id!(
    /// A clinic staff member, pseudonymously: 8 random bytes the clinic assigned when the
    /// account was made. Only the clinic maps it to a name; the hub sees the id alone.
    StaffId, 8, "StaffId"
);

byte_id!(
    /// Content address of an event: blake3 of its schema version and canonical bytes.
    EventId, 32, "EventId"
);
byte_id!(
    /// A node (clinic or hub) identity: its ed25519 public key.
    NodeId, 32, "NodeId"
);
byte_id!(
    /// The ed25519 public key that signed an event (an insurer key or a clinic key).
    AuthorKey, 32, "AuthorKey"
);
byte_id!(
    /// An ed25519 signature.
    Signature, 64, "Signature"
);
byte_id!(
    /// blake3 of an answer's canonical encoding, recorded with each check.
    AnswerHash, 32, "AnswerHash"
);

/// The replication unit: one per insurer (membership) and one per clinic (its checks).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Namespace {
    /// Membership events of one insurer, written only by the hub holding its key.
    Insurer(InsurerNumber),
    /// Check records, declarations and consents of one clinic.
    Clinic(NodeId),
}

/// Sex as recorded by the insurer.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    /// 男.
    Male,
    /// 女.
    Female,
}

/// Whether a member is the insured person or a dependant of one.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Relationship {
    /// 被保険者.
    Insured,
    /// 被扶養者: coverage ends when the insured person's does.
    Dependant {
        /// The insured person's member key.
        insured: MemberKey,
    },
}

/// Why coverage ended (資格喪失事由).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Left the employer; a new insurer is expected.
    JobChange,
    /// Retired.
    Retirement,
    /// Moved out of the municipality (national health insurance).
    MoveOutOfMunicipality,
    /// Reached 75 and moved to the late-stage elderly system.
    Age75,
    /// Died; the loss date is the day after death.
    Death,
    /// Any other reason (e.g. became a dependant elsewhere).
    Other,
}

/// Online (the node was in sync) or offline (answered from the local replica while cut off).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckMode {
    /// Connected to the hub when answering.
    Online,
    /// Answered from the local replica without a hub connection.
    Offline,
}

/// What a check asks about: a card token or a member key.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckQuery {
    /// Look the person up by card token.
    Card(CardToken),
    /// Look the member up by member key (the old paper card's numbers).
    Member(MemberKey),
}

/// The validity codes of an answer.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AnswerCode {
    /// 有効: covered on the service date.
    Valid,
    /// 無効: not covered on the service date.
    Invalid,
    /// 無効 (新しい資格あり): this key is not covered, but a newer coverage of the same person is.
    InvalidNewerExists,
    /// 該当資格なし: nothing known under this card or key.
    NoMatch,
    /// 複数該当: more than one coverage claims the person on that date.
    MultipleMatches,
    /// Not covered here yet, but the patient self-declared a new insurer that has not registered.
    PendingSuccessor,
    /// The member's insurer is not replicated on this node: the ledger cannot say.
    Unknown,
}

/// Outcome of a self-declaration once the facts are known.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DeclarationOutcome {
    /// The new insurer registered the member as declared.
    Confirmed,
    /// The declaration turned out wrong.
    Rejected,
}

/// Demographic facts about a person, as registered by the insurer. Never a My Number.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Person {
    /// Full name, any Unicode, stored exactly as given.
    pub name: String,
    /// Name in kana.
    pub kana: String,
    /// Sex.
    pub sex: Sex,
    /// Birth date.
    pub birth_date: Date,
    /// Address.
    pub address: String,
    /// Municipality code (全国地方公共団体コード, 6 digits with check digit).
    pub municipality: u32,
}

/// Every kind of eligibility event. Corrections never overwrite: they void or supersede.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventBody {
    /// An insurer registers a member (被保険者 or 被扶養者).
    MemberRegistered {
        /// The new member key.
        member: MemberKey,
        /// Demographics.
        person: Person,
        /// Insured person or dependant.
        relationship: Relationship,
    },
    /// Coverage starts on `start` (資格取得日, the date of the fact even when reported late).
    CoverageStarted {
        /// Member.
        member: MemberKey,
        /// First covered day.
        start: Date,
        /// Copay ratio in tenths (1, 2 or 3).
        copay_tenths: u8,
        /// Whether an elderly recipient certificate (高齢受給者証) applies.
        elderly_certificate: bool,
    },
    /// Coverage ends: `loss_date` (資格喪失日) is the first day without coverage.
    CoverageEnded {
        /// Member.
        member: MemberKey,
        /// First day not covered.
        loss_date: Date,
        /// Why.
        reason: EndReason,
    },
    /// The copay ratio changes from `effective` on.
    CopayRatioSet {
        /// Member.
        member: MemberKey,
        /// First day of the new ratio.
        effective: Date,
        /// Copay ratio in tenths (1, 2 or 3).
        copay_tenths: u8,
    },
    /// The high-cost limit category (限度額適用区分) changes from `effective` on.
    LimitCategorySet {
        /// Member.
        member: MemberKey,
        /// First day of the category.
        effective: Date,
        /// Category code, A01–A06 or B01–B10 style: one letter and two digits.
        category: String,
    },
    /// Address or name changes; a move between municipalities is also reported as a coverage
    /// end at the old national health insurance and a registration at the new one.
    DemographicsChanged {
        /// Member.
        member: MemberKey,
        /// Date of the change.
        effective: Date,
        /// New demographics.
        person: Person,
    },
    /// A card is linked to a member (the card holder registered it for insurance use).
    CardLinked {
        /// Card.
        card: CardToken,
        /// Member.
        member: MemberKey,
    },
    /// A card is unlinked from a member (e.g. card reissued).
    CardUnlinked {
        /// Card.
        card: CardToken,
        /// Member.
        member: MemberKey,
    },
    /// A linkage made to the wrong person is revoked: the card stops resolving to the member.
    WrongPersonLinkageRevoked {
        /// Card.
        card: CardToken,
        /// The wrongly linked member.
        member: MemberKey,
        /// Why (free text, no personal data).
        reason: String,
    },
    /// An earlier event is void. A void of a void restores the original.
    EventVoided {
        /// Whom the voided event is about (routes the void without a global index).
        subject: CheckQuery,
        /// The voided event.
        target: EventId,
        /// Why (free text, no personal data).
        reason: String,
    },
    /// An earlier event is replaced by another (published alongside): the target becomes void
    /// and the replacement takes effect. Two supersessions of one event are a conflict.
    EventSuperseded {
        /// Whom both events are about.
        subject: CheckQuery,
        /// The replaced event.
        target: EventId,
        /// The replacing event.
        replacement: EventId,
    },
    /// A clinic answered a check (access audit; the answer can be re-derived and compared).
    CheckPerformed {
        /// What was asked.
        query: CheckQuery,
        /// The service date asked about.
        service_date: Date,
        /// Online or offline.
        mode: CheckMode,
        /// The knowledge cut-off the answer was computed from.
        knowledge: Hlc,
        /// The hub log position the node had synced to (0 when never synced).
        hub_position: u64,
        /// The answer code given.
        code: AnswerCode,
        /// blake3 of the canonical answer.
        answer_hash: AnswerHash,
        /// The events that decided the answer.
        decided_by: Vec<EventId>,
    },
    /// Reception accepted a patient's statement that they just changed insurer.
    SelfDeclarationRecorded {
        /// The card or key the patient presented.
        query: CheckQuery,
        /// The insurer the patient says they joined, if known.
        declared_insurer: Option<InsurerNumber>,
        /// The date the patient says the new coverage started.
        declared_start: Date,
    },
    /// A self-declaration is settled.
    SelfDeclarationResolved {
        /// The card or key of the declaration.
        query: CheckQuery,
        /// The declaration event.
        declaration: EventId,
        /// How it was settled.
        outcome: DeclarationOutcome,
    },
    /// The patient consents to the limit category being shown.
    ConsentGiven {
        /// Member.
        member: MemberKey,
    },
    /// The patient withdraws that consent.
    ConsentWithdrawn {
        /// Member.
        member: MemberKey,
    },
    /// Schema 2: an insurer registers a member whose identity is sealed (replaces
    /// `MemberRegistered`; appended last so schema-1 archives keep their layout).
    MemberSealed {
        /// The member reference.
        member: MemberKey,
        /// [`crate::seal::SealedMember`] under the member's data key.
        sealed: Sealed,
    },
    /// Schema 2: new sealed demographics from `effective` on (replaces `DemographicsChanged`).
    DemographicsSealed {
        /// The member reference.
        member: MemberKey,
        /// Date of the change.
        effective: Date,
        /// [`crate::seal::SealedMember`] under the member's data key.
        sealed: Sealed,
    },
    /// Schema 2: the insurer orders the member's data erased — every node destroys the
    /// member's data key and wraps; the ciphertext stays and every log still verifies.
    MemberErased {
        /// The member reference.
        member: MemberKey,
        /// The member-key lookup tags whose wraps are destroyed: kept so that a check by
        /// member key and birth date still finds the (pseudonymous) facts and can say "member
        /// data erased". A tag confirms a guess of key and birth date; it opens nothing.
        key_tags: Vec<[u8; 32]>,
        /// Why (free text, no personal data).
        reason: String,
    },
}

impl AnswerCode {
    /// What the answer bills as: covered (`Some(true)`: valid), not covered (`Some(false)`:
    /// invalid, a newer coverage exists, no match), or neither (pending successor, unknown,
    /// multiple matches). Two answers contradict each other when both decide and differ.
    pub fn covered(self) -> Option<bool> {
        match self {
            AnswerCode::Valid => Some(true),
            AnswerCode::Invalid | AnswerCode::InvalidNewerExists | AnswerCode::NoMatch => {
                Some(false)
            }
            AnswerCode::PendingSuccessor | AnswerCode::Unknown | AnswerCode::MultipleMatches => {
                None
            }
        }
    }
}

/// The type of an event, without its fields: the one exhaustive list every classification
/// (names, membership facts, clinic records) is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// `member_registered`.
    MemberRegistered,
    /// `coverage_started`.
    CoverageStarted,
    /// `coverage_ended`.
    CoverageEnded,
    /// `copay_ratio_set`.
    CopayRatioSet,
    /// `limit_category_set`.
    LimitCategorySet,
    /// `demographics_changed`.
    DemographicsChanged,
    /// `card_linked`.
    CardLinked,
    /// `card_unlinked`.
    CardUnlinked,
    /// `wrong_person_linkage_revoked`.
    WrongPersonLinkageRevoked,
    /// `event_voided`.
    EventVoided,
    /// `event_superseded`.
    EventSuperseded,
    /// `check_performed`.
    CheckPerformed,
    /// `self_declaration_recorded`.
    SelfDeclarationRecorded,
    /// `self_declaration_resolved`.
    SelfDeclarationResolved,
    /// `consent_given`.
    ConsentGiven,
    /// `consent_withdrawn`.
    ConsentWithdrawn,
    /// `member_sealed` (schema 2).
    MemberSealed,
    /// `demographics_sealed` (schema 2).
    DemographicsSealed,
    /// `member_erased` (schema 2).
    MemberErased,
}

impl EventKind {
    /// The snake_case name, as in the JSON Lines format.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::MemberRegistered => "member_registered",
            EventKind::CoverageStarted => "coverage_started",
            EventKind::CoverageEnded => "coverage_ended",
            EventKind::CopayRatioSet => "copay_ratio_set",
            EventKind::LimitCategorySet => "limit_category_set",
            EventKind::DemographicsChanged => "demographics_changed",
            EventKind::CardLinked => "card_linked",
            EventKind::CardUnlinked => "card_unlinked",
            EventKind::WrongPersonLinkageRevoked => "wrong_person_linkage_revoked",
            EventKind::EventVoided => "event_voided",
            EventKind::EventSuperseded => "event_superseded",
            EventKind::CheckPerformed => "check_performed",
            EventKind::SelfDeclarationRecorded => "self_declaration_recorded",
            EventKind::SelfDeclarationResolved => "self_declaration_resolved",
            EventKind::ConsentGiven => "consent_given",
            EventKind::ConsentWithdrawn => "consent_withdrawn",
            EventKind::MemberSealed => "member_sealed",
            EventKind::DemographicsSealed => "demographics_sealed",
            EventKind::MemberErased => "member_erased",
        }
    }

    /// A clinic's own record about a patient it checked: a check, a self-declaration or its
    /// resolution, a consent. Only these may be attributed to a staff member (schema 3).
    pub fn is_clinic_record(self) -> bool {
        matches!(
            self,
            EventKind::CheckPerformed
                | EventKind::SelfDeclarationRecorded
                | EventKind::SelfDeclarationResolved
                | EventKind::ConsentGiven
                | EventKind::ConsentWithdrawn
        )
    }

    /// A membership fact: written by an insurer about one of its members (registration,
    /// coverage, copay, limit category, demographics, card links).
    pub fn is_membership(self) -> bool {
        match self {
            EventKind::MemberRegistered
            | EventKind::CoverageStarted
            | EventKind::CoverageEnded
            | EventKind::CopayRatioSet
            | EventKind::LimitCategorySet
            | EventKind::DemographicsChanged
            | EventKind::CardLinked
            | EventKind::CardUnlinked
            | EventKind::WrongPersonLinkageRevoked
            | EventKind::MemberSealed
            | EventKind::DemographicsSealed
            | EventKind::MemberErased => true,
            EventKind::EventVoided
            | EventKind::EventSuperseded
            | EventKind::CheckPerformed
            | EventKind::SelfDeclarationRecorded
            | EventKind::SelfDeclarationResolved
            | EventKind::ConsentGiven
            | EventKind::ConsentWithdrawn => false,
        }
    }
}

impl EventBody {
    /// The event's type.
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::MemberRegistered { .. } => EventKind::MemberRegistered,
            EventBody::CoverageStarted { .. } => EventKind::CoverageStarted,
            EventBody::CoverageEnded { .. } => EventKind::CoverageEnded,
            EventBody::CopayRatioSet { .. } => EventKind::CopayRatioSet,
            EventBody::LimitCategorySet { .. } => EventKind::LimitCategorySet,
            EventBody::DemographicsChanged { .. } => EventKind::DemographicsChanged,
            EventBody::CardLinked { .. } => EventKind::CardLinked,
            EventBody::CardUnlinked { .. } => EventKind::CardUnlinked,
            EventBody::WrongPersonLinkageRevoked { .. } => EventKind::WrongPersonLinkageRevoked,
            EventBody::EventVoided { .. } => EventKind::EventVoided,
            EventBody::EventSuperseded { .. } => EventKind::EventSuperseded,
            EventBody::CheckPerformed { .. } => EventKind::CheckPerformed,
            EventBody::SelfDeclarationRecorded { .. } => EventKind::SelfDeclarationRecorded,
            EventBody::SelfDeclarationResolved { .. } => EventKind::SelfDeclarationResolved,
            EventBody::ConsentGiven { .. } => EventKind::ConsentGiven,
            EventBody::ConsentWithdrawn { .. } => EventKind::ConsentWithdrawn,
            EventBody::MemberSealed { .. } => EventKind::MemberSealed,
            EventBody::DemographicsSealed { .. } => EventKind::DemographicsSealed,
            EventBody::MemberErased { .. } => EventKind::MemberErased,
        }
    }

    /// The snake_case name of the event type, as in the JSON Lines format.
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// The member a membership fact (insurer namespace) is about.
    pub fn membership_subject(&self) -> Option<&MemberKey> {
        match self.subject() {
            CheckQueryRef::Member(member) if self.kind().is_membership() => Some(member),
            _ => None,
        }
    }

    /// Whom any event is about: the member of a membership fact or consent, else the card or
    /// member named by a void, supersession, check or self-declaration.
    pub fn subject(&self) -> CheckQueryRef<'_> {
        let query = match self {
            EventBody::EventVoided { subject: q, .. }
            | EventBody::EventSuperseded { subject: q, .. }
            | EventBody::CheckPerformed { query: q, .. }
            | EventBody::SelfDeclarationRecorded { query: q, .. }
            | EventBody::SelfDeclarationResolved { query: q, .. } => q,
            EventBody::MemberRegistered { member, .. }
            | EventBody::CoverageStarted { member, .. }
            | EventBody::CoverageEnded { member, .. }
            | EventBody::CopayRatioSet { member, .. }
            | EventBody::LimitCategorySet { member, .. }
            | EventBody::DemographicsChanged { member, .. }
            | EventBody::CardLinked { member, .. }
            | EventBody::CardUnlinked { member, .. }
            | EventBody::WrongPersonLinkageRevoked { member, .. }
            | EventBody::ConsentGiven { member }
            | EventBody::ConsentWithdrawn { member }
            | EventBody::MemberSealed { member, .. }
            | EventBody::DemographicsSealed { member, .. }
            | EventBody::MemberErased { member, .. } => return CheckQueryRef::Member(member),
        };
        match query {
            CheckQuery::Card(card) => CheckQueryRef::Card(card),
            CheckQuery::Member(member) => CheckQueryRef::Member(member),
        }
    }

    /// Whether this event may appear in the given namespace: membership facts only in insurer
    /// namespaces of the member's insurer, clinic records only in clinic namespaces.
    pub fn allowed_in(&self, namespace: &Namespace) -> bool {
        let insurer_of = |member: &MemberKey| *namespace == Namespace::Insurer(member.insurer);
        if let Some(member) = self.membership_subject() {
            return insurer_of(member);
        }
        match self {
            EventBody::EventVoided { subject, .. } | EventBody::EventSuperseded { subject, .. } => {
                match (subject, namespace) {
                    (CheckQuery::Member(member), Namespace::Insurer(_)) => insurer_of(member),
                    (CheckQuery::Card(_), _) | (CheckQuery::Member(_), Namespace::Clinic(_)) => {
                        true
                    }
                }
            }
            _ => matches!(namespace, Namespace::Clinic(_)),
        }
    }
}

/// A borrowed [`CheckQuery`]: whom an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckQueryRef<'a> {
    /// A card.
    Card(&'a CardToken),
    /// A member.
    Member(&'a MemberKey),
}

/// The canonical content of an event (schema version 1): what is hashed and signed.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Event {
    /// The namespace the event belongs to.
    pub namespace: Namespace,
    /// The node that created it.
    pub origin: NodeId,
    /// Its sequence number among the origin's events in this namespace, from 1.
    pub origin_seq: u64,
    /// Hybrid logical clock timestamp: record time.
    pub hlc: Hlc,
    /// The key that signs it.
    pub author: AuthorKey,
    /// What happened.
    pub body: EventBody,
}

/// The canonical content of a schema-3 event: a clinic record and the staff member who made
/// it, hashed and signed together.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Attributed {
    event: Event,
    operator: StaffId,
}

/// The canonical bytes of `event` under `schema`: the event's archive (schemas 1 and 2), or
/// that of the event with its operator (schema 3, which needs one).
pub fn canonical_bytes_as(
    schema: u16,
    event: &Event,
    operator: Option<StaffId>,
) -> Result<Vec<u8>, EventError> {
    match (schema, operator) {
        (SCHEMA_ATTRIBUTED, Some(operator)) => {
            rkyv::to_bytes::<rkyv::rancor::Error>(&Attributed { event: event.clone(), operator })
                .map(|b| b.to_vec())
                .map_err(|e| EventError::Malformed(e.to_string()))
        }
        (SCHEMA_ATTRIBUTED, None) => {
            Err(field_error("operator", "schema 3 events name the staff member who made them"))
        }
        (_, Some(_)) => Err(field_error("operator", "only schema 3 events name an operator")),
        (_, None) => Ok(event.canonical_bytes()?.to_vec()),
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The schema version is not one this build reads.
    #[error("unknown schema version {found}; this build reads versions 1 to {supported}")]
    UnknownSchemaVersion {
        /// The version in the input.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The canonical bytes are larger than [`EVENT_BYTES_MAX`].
    #[error("event is {0} bytes; at most {EVENT_BYTES_MAX} are accepted")]
    TooLarge(usize),
    /// The bytes are not a valid rkyv archive of an event.
    #[error("event bytes are not a valid archive of their schema: {0}")]
    Malformed(String),
    /// Re-encoding the decoded event does not give the same bytes.
    #[error("event bytes are not in canonical form")]
    NotCanonical,
    /// The id given does not match the content.
    #[error("event id {claimed} does not match its content (computed {computed})")]
    IdMismatch {
        /// The id that came with the event.
        claimed: EventId,
        /// The id of the bytes.
        computed: EventId,
    },
    /// The signature does not verify under the author key.
    #[error("signature of event {0} does not verify under its author key")]
    BadSignature(EventId),
    /// The author key is not a valid ed25519 point.
    #[error("author key of event {0} is not a valid ed25519 public key")]
    BadAuthorKey(EventId),
    /// A member key inside the event is invalid.
    #[error("event holds an invalid member key: {0}")]
    MemberKey(#[from] MemberKeyError),
    /// A field is out of range (copay ratio, text length, sequence 0, …).
    #[error("event field {field} is invalid: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The event type does not belong in its namespace.
    #[error("a {event_type} event may not appear in namespace {namespace:?}")]
    WrongNamespace {
        /// Event type name.
        event_type: &'static str,
        /// The namespace it claimed.
        namespace: Namespace,
    },
    /// The timestamp is too far in the future.
    #[error("event timestamp refused: {0}")]
    Clock(#[from] HlcError),
}

fn field_error(field: &'static str, reason: impl Into<String>) -> EventError {
    EventError::Field { field, reason: reason.into() }
}

fn check_text(field: &'static str, text: &str) -> Result<(), EventError> {
    if text.chars().count() > TEXT_CHARS_MAX {
        return Err(field_error(field, format!("longer than {TEXT_CHARS_MAX} characters")));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(field_error(field, "contains control characters"));
    }
    if text.chars().any(crate::member::is_format_char) {
        return Err(field_error(
            field,
            "contains invisible format characters (bidi overrides or zero-width characters)",
        ));
    }
    Ok(())
}

fn check_copay(copay_tenths: u8) -> Result<(), EventError> {
    if !(1..=3).contains(&copay_tenths) {
        return Err(field_error("copay_tenths", format!("{copay_tenths} is not 1, 2 or 3")));
    }
    Ok(())
}

fn check_person(person: &Person) -> Result<(), EventError> {
    check_text("person.name", &person.name)?;
    check_text("person.kana", &person.kana)?;
    check_text("person.address", &person.address)?;
    if person.name.is_empty() {
        return Err(field_error("person.name", "empty"));
    }
    if person.municipality > 999_999 {
        return Err(field_error("person.municipality", "more than 6 digits"));
    }
    Ok(())
}

fn check_query(query: &CheckQuery) -> Result<(), EventError> {
    match query {
        CheckQuery::Card(_) => Ok(()),
        CheckQuery::Member(member) => Ok(member.validate()?),
    }
}

fn check_ref(field: &'static str, key: &MemberKey) -> Result<(), EventError> {
    key.validate()?;
    if !seal::is_member_ref(key) {
        return Err(field_error(
            field,
            "schema 2 names members by reference (~ and 19 hex digits)",
        ));
    }
    Ok(())
}

fn check_sealed(sealed: &Sealed) -> Result<(), EventError> {
    if sealed.ciphertext.len() < 16 || sealed.ciphertext.len() > seal::SEALED_BYTES_MAX {
        return Err(field_error(
            "sealed",
            format!("ciphertext must be 16..={} bytes", seal::SEALED_BYTES_MAX),
        ));
    }
    Ok(())
}

impl Event {
    /// Validates a schema-1 event (see [`Event::validate_as`]).
    pub fn validate(&self) -> Result<(), EventError> {
        self.validate_as(SCHEMA_VERSION)
    }

    /// Validates every field that the type system cannot: member keys, ratios, text limits,
    /// category codes, sequence numbers, the namespace rule, and the schema's own rules —
    /// schema 1 has no sealed variants; schema 2 has no plaintext demographics and names every
    /// member by reference.
    pub fn validate_as(&self, schema: u16) -> Result<(), EventError> {
        match schema {
            SCHEMA_ATTRIBUTED => {
                // A clinic record, written as its clinic writes it (plaintext or sealed).
                if !self.body.kind().is_clinic_record() {
                    return Err(field_error(
                        "type",
                        "schema 3 attributes only clinic records (checks, declarations, consents)",
                    ));
                }
                return self
                    .validate_as(SCHEMA_SEALED)
                    .or_else(|_| self.validate_as(SCHEMA_VERSION));
            }
            SCHEMA_VERSION => {
                if matches!(
                    self.body.kind(),
                    EventKind::MemberSealed
                        | EventKind::DemographicsSealed
                        | EventKind::MemberErased
                ) {
                    return Err(field_error("type", "sealed event types need schema 2"));
                }
            }
            SCHEMA_SEALED => {
                if matches!(
                    self.body.kind(),
                    EventKind::MemberRegistered | EventKind::DemographicsChanged
                ) {
                    return Err(field_error(
                        "type",
                        "schema 2 carries demographics only sealed (member_sealed, demographics_sealed)",
                    ));
                }
                if let CheckQueryRef::Member(member) = self.body.subject() {
                    check_ref("member", member)?;
                }
                match &self.body {
                    EventBody::MemberSealed { sealed, .. }
                    | EventBody::DemographicsSealed { sealed, .. } => check_sealed(sealed)?,
                    EventBody::MemberErased { reason, key_tags, .. } => {
                        check_text("reason", reason)?;
                        if key_tags.len() > 8 {
                            return Err(field_error("key_tags", "more than 8 tags"));
                        }
                    }
                    _ => {}
                }
            }
            found => return Err(EventError::UnknownSchemaVersion { found, supported: SCHEMA_MAX }),
        }
        if self.origin_seq == 0 {
            return Err(field_error("origin_seq", "sequence numbers start at 1"));
        }
        if let Namespace::Insurer(insurer) = self.namespace {
            InsurerNumber::new(insurer.value())?;
        }
        match &self.body {
            EventBody::MemberRegistered { member, person, relationship } => {
                member.validate()?;
                check_person(person)?;
                if let Relationship::Dependant { insured } = relationship {
                    insured.validate()?;
                    if insured == member {
                        return Err(field_error(
                            "relationship",
                            "a member cannot depend on itself",
                        ));
                    }
                    if insured.insurer != member.insurer {
                        return Err(field_error(
                            "relationship",
                            "a dependant belongs to the insured person's insurer",
                        ));
                    }
                }
            }
            EventBody::CoverageStarted { member, copay_tenths, .. }
            | EventBody::CopayRatioSet { member, copay_tenths, .. } => {
                member.validate()?;
                check_copay(*copay_tenths)?;
            }
            EventBody::LimitCategorySet { member, category, .. } => {
                member.validate()?;
                let bytes = category.as_bytes();
                let well_formed = bytes.len() == 3
                    && bytes[0].is_ascii_uppercase()
                    && bytes[1..].iter().all(u8::is_ascii_digit);
                if !well_formed {
                    return Err(field_error("category", format!("{category:?} is not like A01")));
                }
            }
            EventBody::DemographicsChanged { member, person, .. } => {
                member.validate()?;
                check_person(person)?;
            }
            EventBody::CoverageEnded { member, .. }
            | EventBody::CardLinked { member, .. }
            | EventBody::CardUnlinked { member, .. }
            | EventBody::ConsentGiven { member }
            | EventBody::ConsentWithdrawn { member } => member.validate()?,
            EventBody::WrongPersonLinkageRevoked { member, reason, .. } => {
                member.validate()?;
                check_text("reason", reason)?;
            }
            EventBody::EventVoided { subject, reason, .. } => {
                check_query(subject)?;
                check_text("reason", reason)?;
            }
            EventBody::EventSuperseded { subject, target, replacement } => {
                check_query(subject)?;
                if target == replacement {
                    return Err(field_error("replacement", "an event cannot supersede itself"));
                }
            }
            EventBody::CheckPerformed { query, decided_by, .. } => {
                check_query(query)?;
                if decided_by.len() > 64 {
                    return Err(field_error("decided_by", "more than 64 event ids"));
                }
            }
            EventBody::SelfDeclarationRecorded { query, declared_insurer, .. } => {
                check_query(query)?;
                if let Some(insurer) = declared_insurer {
                    InsurerNumber::new(insurer.value())?;
                }
            }
            EventBody::SelfDeclarationResolved { query, .. } => check_query(query)?,
            EventBody::MemberSealed { member, .. }
            | EventBody::DemographicsSealed { member, .. }
            | EventBody::MemberErased { member, .. } => member.validate()?,
        }
        if !self.body.allowed_in(&self.namespace) {
            return Err(EventError::WrongNamespace {
                event_type: self.body.type_name(),
                namespace: self.namespace,
            });
        }
        Ok(())
    }

    /// The canonical rkyv encoding (the same layout in schema versions 1 and 2).
    pub fn canonical_bytes(&self) -> Result<rkyv::util::AlignedVec, EventError> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| EventError::Malformed(e.to_string()))
    }
}

/// The id of canonical bytes under a schema version.
pub fn event_id(schema_version: u16, canonical: &[u8]) -> EventId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&schema_version.to_le_bytes());
    hasher.update(canonical);
    EventId(*hasher.finalize().as_bytes())
}

fn signed_message(id: &EventId) -> [u8; 48] {
    let mut message = [0u8; 48];
    message[..16].copy_from_slice(SIGNATURE_CONTEXT);
    message[16..].copy_from_slice(&id.0);
    message
}

/// An event whose canonical bytes, id and signature have been checked (or just produced).
#[derive(Clone, PartialEq, Eq)]
pub struct SignedEvent {
    schema: u16,
    event: Event,
    operator: Option<StaffId>,
    canonical: Vec<u8>,
    id: EventId,
    signature: Signature,
}

impl fmt::Debug for SignedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Member data stays out of debug output: only type, id and clock.
        f.debug_struct("SignedEvent")
            .field("type", &self.event.body.type_name())
            .field("id", &self.id)
            .field("hlc", &self.event.hlc)
            .finish()
    }
}

/// An ed25519 signing identity (an insurer key or a clinic node key).
#[derive(Clone)]
pub struct Signer {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({:?})", self.public())
    }
}

impl Signer {
    /// A signer from 32 secret bytes (derived from a seed in tests and the generator; read from
    /// the node's key file in production).
    pub fn from_secret(secret: [u8; 32]) -> Signer {
        Signer { key: ed25519_dalek::SigningKey::from_bytes(&secret) }
    }

    /// A signer whose secret is blake3(`context` ‖ `seed`), for reproducible test identities.
    pub fn derived(context: &str, seed: &[u8]) -> Signer {
        Signer::from_secret(blake3::derive_key(context, seed))
    }

    /// The public key.
    pub fn public(&self) -> AuthorKey {
        AuthorKey(self.key.verifying_key().to_bytes())
    }

    /// The public key as a node id (a node signs its own namespace with its node key).
    pub fn node_id(&self) -> NodeId {
        NodeId(self.public().0)
    }

    /// A secret derived from this signer's secret key for another purpose (an insurer's
    /// member-reference secret): `blake3::derive_key(context, secret)`; reveals nothing of the
    /// signing key.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, self.key.as_bytes())
    }

    /// Signs arbitrary bytes (receipts); callers put a domain-separation context first.
    pub fn sign_bytes(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature(self.key.sign(message).to_bytes())
    }

    /// Validates, encodes and signs a schema-1 (plaintext) event. The event's `author` must be
    /// this signer.
    pub fn sign(&self, event: Event) -> Result<SignedEvent, EventError> {
        self.sign_as(SCHEMA_VERSION, event)
    }

    /// Validates, encodes and signs a schema-2 (sealed) event.
    pub fn sign_sealed(&self, event: Event) -> Result<SignedEvent, EventError> {
        self.sign_as(SCHEMA_SEALED, event)
    }

    /// Validates, encodes and signs an event under a schema version.
    pub fn sign_as(&self, schema: u16, event: Event) -> Result<SignedEvent, EventError> {
        self.sign_with(schema, event, None)
    }

    /// Validates, encodes and signs a clinic record made by staff member `operator`
    /// (schema 3).
    pub fn sign_attributed(
        &self,
        event: Event,
        operator: StaffId,
    ) -> Result<SignedEvent, EventError> {
        self.sign_with(SCHEMA_ATTRIBUTED, event, Some(operator))
    }

    fn sign_with(
        &self,
        schema: u16,
        event: Event,
        operator: Option<StaffId>,
    ) -> Result<SignedEvent, EventError> {
        use ed25519_dalek::Signer as _;
        event.validate_as(schema)?;
        if event.author != self.public() {
            return Err(field_error("author", "the event names another author key"));
        }
        let canonical = canonical_bytes_as(schema, &event, operator)?;
        if canonical.len() > EVENT_BYTES_MAX {
            return Err(EventError::TooLarge(canonical.len()));
        }
        let id = event_id(schema, &canonical);
        let signature = Signature(self.key.sign(&signed_message(&id)).to_bytes());
        Ok(SignedEvent { schema, event, operator, canonical, id, signature })
    }
}

/// An event whose bytes, id and fields checked out but whose signature has not been verified
/// yet. Turn it into a [`SignedEvent`] with [`UnverifiedEvent::verify`] or, much faster for
/// many events, [`verify_all`].
#[derive(Debug, Clone)]
pub struct UnverifiedEvent(SignedEvent);

impl UnverifiedEvent {
    /// The content id.
    pub fn id(&self) -> EventId {
        self.0.id
    }

    /// The decoded (not yet authenticated) event.
    pub fn event(&self) -> &Event {
        &self.0.event
    }

    /// Verifies the signature.
    pub fn verify(self) -> Result<SignedEvent, EventError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0.event.author.0)
            .map_err(|_| EventError::BadAuthorKey(self.0.id))?;
        let signature = ed25519_dalek::Signature::from_bytes(&self.0.signature.0);
        key.verify_strict(&signed_message(&self.0.id), &signature)
            .map_err(|_| EventError::BadSignature(self.0.id))?;
        Ok(self.0)
    }

    /// Accepts the signature without checking it. Only for events read back from this node's
    /// own ledger, whose signatures were verified before they were stored and whose bytes are
    /// re-checked against their id on every read.
    pub fn trust_stored_signature(self) -> SignedEvent {
        self.0
    }
}

/// Events verified per ed25519 batch.
pub const VERIFY_BATCH_EVENTS: usize = 256;

/// Verifies many signatures in batches of [`VERIFY_BATCH_EVENTS`] (about twice as fast as one
/// at a time); a batch that fails is re-checked one by one so each bad event gets its own
/// error. The output is in input order.
pub fn verify_all(events: Vec<UnverifiedEvent>) -> Vec<Result<SignedEvent, EventError>> {
    let mut out = Vec::with_capacity(events.len());
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let batch: Vec<UnverifiedEvent> = events.by_ref().take(VERIFY_BATCH_EVENTS).collect();
        let messages: Vec<[u8; 48]> = batch.iter().map(|e| signed_message(&e.0.id)).collect();
        let message_refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let signatures: Vec<ed25519_dalek::Signature> =
            batch.iter().map(|e| ed25519_dalek::Signature::from_bytes(&e.0.signature.0)).collect();
        let keys: Option<Vec<ed25519_dalek::VerifyingKey>> = batch
            .iter()
            .map(|e| ed25519_dalek::VerifyingKey::from_bytes(&e.0.event.author.0).ok())
            .collect();
        let all_good = keys.is_some_and(|keys| {
            ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).is_ok()
        });
        if all_good {
            out.extend(batch.into_iter().map(|e| Ok(e.0)));
        } else {
            out.extend(batch.into_iter().map(UnverifiedEvent::verify));
        }
    }
    out
}

impl SignedEvent {
    /// Decodes and verifies an event from its wire parts: schema version, canonical bytes and
    /// signature, and optionally the id the sender claimed. `now_ms`, when given, refuses
    /// timestamps too far in the future. Never panics on any input.
    pub fn decode(
        schema_version: u16,
        canonical: &[u8],
        signature: Signature,
        claimed_id: Option<EventId>,
        now_ms: Option<u64>,
    ) -> Result<SignedEvent, EventError> {
        SignedEvent::decode_unverified(schema_version, canonical, signature, claimed_id, now_ms)?
            .verify()
    }

    /// Decodes an event read back from the node's own ledger, whose record checksum has just
    /// verified: the id is re-derived from the bytes and the archive is read with validation,
    /// but the canonical re-encoding, field checks and signature — all done before the event
    /// was stored — are not repeated (see [`SignedEvent::recheck`]).
    pub fn decode_stored(
        schema_version: u16,
        canonical: &[u8],
        signature: Signature,
        id: EventId,
    ) -> Result<SignedEvent, EventError> {
        SignedEvent::decode_archive(schema_version, canonical, signature, Some(id))
    }

    /// Everything [`SignedEvent::decode`] checks except the signature.
    pub fn decode_unverified(
        schema_version: u16,
        canonical: &[u8],
        signature: Signature,
        claimed_id: Option<EventId>,
        now_ms: Option<u64>,
    ) -> Result<UnverifiedEvent, EventError> {
        let unverified =
            SignedEvent::decode_archive(schema_version, canonical, signature, claimed_id)?
                .recheck()?;
        if let Some(now_ms) = now_ms {
            hlc::check_not_future(unverified.0.event.hlc, now_ms)?;
        }
        Ok(unverified)
    }

    /// Schema version, size, id (against the claimed one, if any) and the validated rkyv read.
    fn decode_archive(
        schema_version: u16,
        canonical: &[u8],
        signature: Signature,
        claimed_id: Option<EventId>,
    ) -> Result<SignedEvent, EventError> {
        if !(SCHEMA_VERSION..=SCHEMA_MAX).contains(&schema_version) {
            return Err(EventError::UnknownSchemaVersion {
                found: schema_version,
                supported: SCHEMA_MAX,
            });
        }
        if canonical.len() > EVENT_BYTES_MAX {
            return Err(EventError::TooLarge(canonical.len()));
        }
        let id = event_id(schema_version, canonical);
        if let Some(claimed) = claimed_id {
            if claimed != id {
                return Err(EventError::IdMismatch { claimed, computed: id });
            }
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(canonical.len());
        aligned.extend_from_slice(canonical);
        let (event, operator) = if schema_version == SCHEMA_ATTRIBUTED {
            let a = rkyv::from_bytes::<Attributed, rkyv::rancor::Error>(&aligned)
                .map_err(|e| EventError::Malformed(e.to_string()))?;
            (a.event, Some(a.operator))
        } else {
            let event = rkyv::from_bytes::<Event, rkyv::rancor::Error>(&aligned)
                .map_err(|e| EventError::Malformed(e.to_string()))?;
            (event, None)
        };
        Ok(SignedEvent {
            schema: schema_version,
            event,
            operator,
            canonical: canonical.to_vec(),
            id,
            signature,
        })
    }

    /// Re-runs, on a decoded event, the checks that [`SignedEvent::decode_stored`] skips —
    /// canonical form and field validation — and hands it over for signature verification.
    pub fn recheck(self) -> Result<UnverifiedEvent, EventError> {
        // Bytes that validate but are not what we would write (padding, alternative layouts)
        // would give one event two ids: refuse them.
        if canonical_bytes_as(self.schema, &self.event, self.operator)?.as_slice()
            != self.canonical.as_slice()
        {
            return Err(EventError::NotCanonical);
        }
        self.event.validate_as(self.schema)?;
        Ok(UnverifiedEvent(self))
    }

    /// The decoded event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The canonical bytes.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.canonical
    }

    /// The content id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The author's signature.
    pub fn signature(&self) -> Signature {
        self.signature
    }

    /// The schema version.
    pub fn schema_version(&self) -> u16 {
        self.schema
    }

    /// The staff member who made this clinic record (schema 3 only).
    pub fn operator(&self) -> Option<StaffId> {
        self.operator
    }

    /// The ordering key used everywhere: (hlc, id).
    pub fn order_key(&self) -> (Hlc, EventId) {
        (self.event.hlc, self.id)
    }
}
