//! shikaku-core: the domain of the eligibility ledger, with no IO, no clock reads and no
//! threads. Time arrives as an argument; bytes arrive as slices; answers leave as values.
//!
//! - [`date`]: calendar days and half-open intervals;
//! - [`member`]: insurer numbers (with check digit), member keys and card tokens;
//! - [`hlc`]: the hybrid logical clock;
//! - [`event`]: the event envelope, every event type, canonical rkyv encoding and signatures;
//! - [`projection`]: the deterministic fold that answers eligibility checks;
//! - [`answer`]: queries, answers and conflicts;
//! - [`text`]: answers, codes and times as people read them, and the HTML escaper.

pub mod answer;
pub mod date;
pub mod event;
pub mod hex;
pub mod hlc;
pub mod keystore;
pub mod member;
pub mod projection;
pub mod seal;
pub mod sealer;
pub mod text;

pub use answer::{
    staleness_s, Answer, Conflict, DamageNote, Freshness, Knowledge, RefetchState, STALE_AFTER_S,
};
pub use date::{Date, DateError, DateRange};
pub use event::{
    verify_all, AnswerCode, AnswerHash, AuthorKey, CheckMode, CheckQuery, DeclarationOutcome,
    EndReason, Event, EventBody, EventError, EventId, EventKind, Namespace, NodeId, Person,
    Relationship, Sex, Signature, SignedEvent, Signer, StaffId, UnverifiedEvent, SCHEMA_ATTRIBUTED,
    SCHEMA_MAX, SCHEMA_SEALED, SCHEMA_VERSION,
};
pub use hlc::{Hlc, HlcClock, HlcError};
pub use member::{CardToken, InsurerNumber, MemberKey, MemberKeyError};
pub use projection::{Projection, Replication, Reveal};
