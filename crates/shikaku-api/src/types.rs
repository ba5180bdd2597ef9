//! The typed bodies of both APIs, shared by the servers, the client and the tests (field names
//! as `protocol/API.md` specifies them).

use serde::{Deserialize, Serialize};

use crate::import::RefusedLine;

/// `GET /v1/check`: the answer (the core's `Answer` when served; any JSON when read back),
/// its text as reception reads it, and notes on how a typed key was read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResponse<A> {
    /// The answer.
    pub answer: A,
    /// The answer as text.
    pub text: String,
    /// What was normalised in a typed member key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Where the ledger is sealed: `opened` (the record opened with what was presented),
    /// `erased` (the member's data was erased; the answer comes from pseudonymous facts),
    /// `sealed` (the record could not be opened here yet). Absent for plaintext ledgers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_data: Option<String>,
    /// The present patient's identity from the opened record (never stored at the clinic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<PersonView>,
}

/// What reception is shown of an opened record: no address (data minimisation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersonView {
    /// The real member key.
    pub member_key: String,
    /// Name.
    pub name: String,
    /// Kana.
    pub kana: String,
    /// Birth date.
    pub birth_date: String,
    /// The insured person's member reference, for a dependant (a dependant's record does not
    /// name the insured person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insured: Option<String>,
}

/// `POST /v1/consents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsentRequest {
    /// The card, or …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
    /// … the member key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// `given` or `withdrawn`.
    pub consent: String,
}

/// What `POST /v1/consents` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsentResponse {
    /// `given` or `withdrawn`.
    pub consent: String,
    /// The member it is about.
    pub member: String,
    /// The recorded event's id.
    pub event: String,
}

/// What `POST /v1/declarations` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclarationResponse {
    /// The recorded declaration's event id.
    pub declaration: String,
}

/// What `POST /v1/import` did with a body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportResponse {
    /// Lines read (non-empty).
    pub lines: u64,
    /// Events newly stored.
    pub imported: u64,
    /// Good events already held.
    pub duplicates: u64,
    /// Lines refused.
    pub rejected: u64,
    /// The refused lines (numbered within the body) and why.
    pub refused: Vec<RefusedLine>,
}
