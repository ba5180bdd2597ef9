//! The JSON Lines interchange format for events (specified in `protocol/EVENTS-JSONL.md`).
//!
//! One event per line: `{"v":1,"id":…,"sig":…,"namespace":…,"origin":…,"origin_seq":…,
//! "hlc":…,"author":…,"body":{"type":…,…}}`. Reading re-encodes the event canonically, checks
//! the id against the content and the signature against the author key, so a line that
//! imports is byte-for-byte the event that was exported.

use shikaku_core::{Event, EventError, EventId, Signature, SignedEvent, UnverifiedEvent};

/// Longest line accepted, in bytes.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

#[derive(serde::Serialize)]
struct LineOut<'a> {
    v: u16,
    id: EventId,
    sig: Signature,
    /// Schema 3: the staff member who made the clinic record.
    #[serde(skip_serializing_if = "Option::is_none")]
    operator: Option<shikaku_core::StaffId>,
    #[serde(flatten)]
    event: &'a Event,
}

#[derive(serde::Deserialize)]
struct LineIn {
    v: u16,
    id: EventId,
    sig: Signature,
    #[serde(default)]
    operator: Option<shikaku_core::StaffId>,
    #[serde(flatten)]
    event: Event,
}

/// Why a line was refused.
#[derive(Debug)]
pub enum LineError {
    /// The line is longer than [`LINE_BYTES_MAX`].
    TooLong(usize),
    /// The line is not valid JSON of the expected shape.
    Json(String),
    /// The event inside it failed validation.
    Event(EventError),
}

impl std::error::Error for LineError {}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::TooLong(n) => {
                write!(f, "line is {n} bytes; at most {LINE_BYTES_MAX} are accepted")
            }
            LineError::Json(e) => write!(f, "not a valid event line: {e}"),
            LineError::Event(e) => write!(f, "{e}"),
        }
    }
}

/// Encodes one event as a line (without the newline).
pub fn encode(event: &SignedEvent) -> String {
    let line = LineOut {
        v: event.schema_version(),
        id: event.id(),
        sig: event.signature(),
        operator: event.operator(),
        event: event.event(),
    };
    serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Decodes one line, checking everything but the signature (see [`shikaku_core::verify_all`]).
pub fn decode_unverified(line: &str, now_ms: Option<u64>) -> Result<UnverifiedEvent, LineError> {
    if line.len() > LINE_BYTES_MAX {
        return Err(LineError::TooLong(line.len()));
    }
    if !line.trim_start().starts_with('{') {
        return Err(LineError::Json("the line is not a JSON object".into()));
    }
    let parsed: LineIn =
        serde_json::from_str(line).map_err(|e| LineError::Json(json_reason(&e)))?;
    if !(shikaku_core::SCHEMA_VERSION..=shikaku_core::SCHEMA_MAX).contains(&parsed.v) {
        return Err(LineError::Event(EventError::UnknownSchemaVersion {
            found: parsed.v,
            supported: shikaku_core::SCHEMA_MAX,
        }));
    }
    let canonical =
        shikaku_core::event::canonical_bytes_as(parsed.v, &parsed.event, parsed.operator)
            .map_err(LineError::Event)?;
    SignedEvent::decode_unverified(parsed.v, &canonical, parsed.sig, Some(parsed.id), now_ms)
        .map_err(LineError::Event)
}

/// The JSON parser's complaint without its own "at line 1 column N" (a JSON Lines record is
/// always line 1 to the parser, which misleads next to the file's line number): the column is
/// kept.
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(reason) if e.column() > 0 => format!("{reason} (column {})", e.column()),
        Some(reason) => reason.to_owned(),
        None => text,
    }
}

/// Decodes and fully verifies one line.
pub fn decode(line: &str, now_ms: Option<u64>) -> Result<SignedEvent, LineError> {
    decode_unverified(line, now_ms)?.verify().map_err(LineError::Event)
}
