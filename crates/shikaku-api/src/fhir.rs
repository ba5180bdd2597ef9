//! A check answer as a FHIR R4 (4.0.1) `CoverageEligibilityResponse`, and the request side:
//! a `CoverageEligibilityRequest` read ([`eligibility_request`]), errors as
//! `OperationOutcome`s, the node's `CapabilityStatement`.
//!
//! Mapping (also in the README's API section):
//! - `status` `active`, `purpose` `[validation]`, `servicedDate` = the service date asked about,
//!   `created` = when the answer was given (JST offset);
//! - `patient`: a logical reference by identifier — the member key
//!   (`urn:shikaku:member-key`, `INSURER:SYMBOL:NUMBER:BRANCH`) when one was identified, else
//!   the card token asked with (`urn:shikaku:card-token`); never a name, never a My Number;
//! - `request`: the answer hash (`urn:shikaku:answer-hash`), which the clinic's check record
//!   carries, so the response can be tied to the audit trail;
//! - `insurer`: the insurer number (保険者番号, JP Core's `urn:oid:1.2.392.100495.20.3.61`), or
//!   a display-only reference when no insurer could be identified;
//! - `outcome` `complete` when the ledger decided (valid, invalid, newer coverage exists,
//!   pending successor), `error` with an `error` entry when it could not (no match, multiple
//!   matches, insurer not replicated here);
//! - `insurance[0]`: the coverage found (`inforce` true only for a valid answer), its
//!   `benefitPeriod` (FHIR periods are inclusive: the end is the day before the loss date), and
//!   the copay ratio as a `copay-percent` benefit;
//! - extensions carry what FHIR has no element for: the shikaku validity code, staleness,
//!   last hub sync, hub position, the events that decided the answer, the successor key.

use serde_json::{json, Value};
use shikaku_core::{Answer, AnswerCode, CheckQuery, Date};

/// Base of the extension URLs.
pub const EXTENSION_BASE: &str = "urn:shikaku:fhir:extension:";

/// The system of Japanese insurer numbers (JP Core).
pub const INSURER_NUMBER_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.61";

fn ext(name: &str, kind: &str, value: Value) -> Value {
    let mut e = serde_json::Map::new();
    e.insert("url".into(), Value::String(format!("{EXTENSION_BASE}{name}")));
    e.insert(kind.into(), value);
    Value::Object(e)
}

/// FHIR `dateTime` in JST of a Unix millisecond.
pub fn date_time_jst(ms: u64) -> String {
    let (h, m, s) = shikaku_core::text::jst_clock(ms);
    format!("{}T{h:02}:{m:02}:{s:02}+09:00", Date::from_unix_ms_jst(ms))
}

/// The answer as a `CoverageEligibilityResponse` resource, created at `created_ms`.
pub fn coverage_eligibility_response(answer: &Answer, created_ms: u64) -> Value {
    let hash = answer.hash().to_string();
    let patient = match (&answer.member, &answer.query) {
        (Some(member), _) | (None, CheckQuery::Member(member)) => json!({
            "identifier": { "system": "urn:shikaku:member-key", "value": member.to_string() }
        }),
        (None, CheckQuery::Card(card)) => json!({
            "identifier": { "system": "urn:shikaku:card-token", "value": card.to_string() }
        }),
    };
    let insurer = match answer.insurer {
        Some(insurer) => json!({
            "identifier": { "system": INSURER_NUMBER_SYSTEM, "value": insurer.to_string() }
        }),
        None => json!({ "display": "insurer not identified" }),
    };
    let (outcome, error) = match answer.code {
        AnswerCode::Valid
        | AnswerCode::Invalid
        | AnswerCode::InvalidNewerExists
        | AnswerCode::PendingSuccessor => ("complete", None),
        AnswerCode::NoMatch => {
            ("error", Some(("no-match", "nothing is known under this card or key")))
        }
        AnswerCode::MultipleMatches => (
            "error",
            Some(("multiple-matches", "more than one coverage claims the person on that date")),
        ),
        AnswerCode::Unknown => (
            "error",
            Some(("not-replicated", "this member's insurer is not replicated on this node")),
        ),
    };
    let mut extension =
        vec![ext("validity-code", "valueCode", json!(shikaku_core::text::code_name(answer.code)))];
    let k = &answer.knowledge;
    if let Some(s) = k.staleness_s {
        extension.push(ext("staleness-seconds", "valueDecimal", json!(s)));
    }
    if let Some(ms) = k.last_hub_sync_ms {
        extension.push(ext("last-hub-sync", "valueDateTime", json!(date_time_jst(ms))));
    }
    if let Some(p) = k.hub_position {
        extension.push(ext("hub-position", "valueString", json!(p.to_string())));
    }
    extension.push(ext("knowledge-as-of", "valueString", json!(k.as_of.0.to_string())));
    if let Some(damage) = &answer.damage {
        extension.push(ext(
            "ledger-damage",
            "valueString",
            json!(shikaku_core::text::damage_text(damage)),
        ));
    }
    for id in &answer.decided_by {
        extension.push(ext("decided-by", "valueString", json!(id.to_string())));
    }
    if let Some(successor) = &answer.successor {
        extension.push(ext("successor-member-key", "valueString", json!(successor.to_string())));
    }
    if let Some(declaration) = &answer.declaration {
        extension.push(ext("self-declaration", "valueString", json!(declaration.to_string())));
    }
    if !answer.conflicts.is_empty() {
        extension.push(ext("conflicts", "valueUnsignedInt", json!(answer.conflicts.len())));
    }
    let mut resource = json!({
        "resourceType": "CoverageEligibilityResponse",
        "id": &hash[..32],
        "extension": extension,
        "status": "active",
        "purpose": ["validation"],
        "patient": patient,
        "servicedDate": answer.service_date.to_string(),
        "created": date_time_jst(created_ms),
        "request": { "identifier": { "system": "urn:shikaku:answer-hash", "value": hash } },
        "outcome": outcome,
        "disposition": shikaku_core::text::code_text(answer.code),
        "insurer": insurer,
    });
    if let (Some(member), Some(coverage)) = (&answer.member, &answer.coverage) {
        let mut period = serde_json::Map::new();
        period.insert("start".into(), json!(coverage.start.to_string()));
        if let Some(end) = coverage.end {
            period.insert("end".into(), json!(end.add_days(-1).to_string()));
        }
        let mut insurance = json!({
            "coverage": {
                "identifier": { "system": "urn:shikaku:member-key", "value": member.to_string() }
            },
            "inforce": answer.code == AnswerCode::Valid,
            "benefitPeriod": Value::Object(period),
        });
        if let Some(tenths) = answer.copay_tenths {
            insurance["item"] = json!([{
                "category": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/ex-benefitcategory",
                    "code": "30",
                    "display": "Health Benefit Plan Coverage"
                }]},
                "benefit": [{
                    "type": { "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/benefit-type",
                        "code": "copay-percent",
                        "display": "Copayment Percent per service"
                    }]},
                    "allowedUnsignedInt": u32::from(tenths) * 10
                }]
            }]);
        }
        resource["insurance"] = json!([insurance]);
    }
    if let Some((code, text)) = error {
        resource["error"] = json!([{
            "code": {
                "coding": [{ "system": "urn:shikaku:fhir:error", "code": code }],
                "text": text
            }
        }]);
    }
    resource
}

/// What a `CoverageEligibilityRequest` asks: the card or member key (and, for a sealed member
/// key, the birth date), and the service date if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EligibilityRequest {
    /// The card token or member key of `patient.identifier`.
    pub query: CheckQuery,
    /// `extension[birth-date].valueDate`: needed with a member key where records are sealed.
    pub birth_date: Option<Date>,
    /// `servicedDate` (today, JST, when absent).
    pub serviced: Option<Date>,
}

/// Why a request resource was refused: the FHIR issue code and what is wrong (the path of the
/// element first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestProblem {
    /// `OperationOutcome.issue.code` (`structure`, `required`, `value`, `not-supported`).
    pub code: &'static str,
    /// `OperationOutcome.issue.expression[0]`.
    pub expression: &'static str,
    /// `OperationOutcome.issue.diagnostics`.
    pub message: String,
}

fn problem(
    code: &'static str,
    expression: &'static str,
    message: impl Into<String>,
) -> RequestProblem {
    RequestProblem { code, expression, message: message.into() }
}

/// Reads a FHIR R4 `CoverageEligibilityRequest` (JSON): `resourceType`, `status` `active`,
/// `purpose` containing `validation`, `patient.identifier` with system
/// `urn:shikaku:card-token` or `urn:shikaku:member-key`, optional `servicedDate` and the
/// optional extension `urn:shikaku:fhir:extension:birth-date` (`valueDate`).
pub fn eligibility_request(body: &Value) -> Result<EligibilityRequest, RequestProblem> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    if body["resourceType"] != "CoverageEligibilityRequest" {
        return Err(problem(
            "structure",
            "resourceType",
            "this endpoint takes a CoverageEligibilityRequest resource",
        ));
    }
    if body["status"] != "active" {
        return Err(problem("value", "status", "status must be \"active\""));
    }
    let purposes = body["purpose"].as_array().cloned().unwrap_or_default();
    if !purposes.iter().any(|p| p == "validation") {
        return Err(problem(
            "not-supported",
            "purpose",
            "only purpose \"validation\" (is the patient covered on the date) is answered",
        ));
    }
    let identifier = &body["patient"]["identifier"];
    let (Some(system), Some(value)) = (text(&identifier["system"]), text(&identifier["value"]))
    else {
        return Err(problem(
            "required",
            "patient.identifier",
            "patient.identifier needs a system (urn:shikaku:card-token or urn:shikaku:member-key) and a value",
        ));
    };
    let query = match system.as_str() {
        "urn:shikaku:card-token" => CheckQuery::Card(
            value.parse().map_err(|e| problem("value", "patient.identifier.value", format!("{e}")))?,
        ),
        "urn:shikaku:member-key" => CheckQuery::Member(
            value.parse().map_err(|e| problem("value", "patient.identifier.value", format!("{e}")))?,
        ),
        other => {
            return Err(problem(
                "not-supported",
                "patient.identifier.system",
                format!("identifier system {other:?} is not one this node answers (urn:shikaku:card-token, urn:shikaku:member-key)"),
            ))
        }
    };
    let date = |v: &Value, expression: &'static str| -> Result<Option<Date>, RequestProblem> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => s
                .parse::<Date>()
                .map(Some)
                .map_err(|e| problem("value", expression, format!("{e}"))),
            _ => Err(problem("value", expression, "a date is a string YYYY-MM-DD")),
        }
    };
    let serviced = date(&body["servicedDate"], "servicedDate")?;
    let mut birth_date = None;
    for e in body["extension"].as_array().into_iter().flatten() {
        if e["url"] == format!("{EXTENSION_BASE}birth-date") {
            birth_date = date(&e["valueDate"], "extension.valueDate")?;
        }
    }
    Ok(EligibilityRequest { query, birth_date, serviced })
}

/// An `OperationOutcome` with one error issue.
pub fn operation_outcome(code: &str, expression: Option<&str>, diagnostics: &str) -> Value {
    let mut issue = json!({ "severity": "error", "code": code, "diagnostics": diagnostics });
    if let Some(expression) = expression {
        issue["expression"] = json!([expression]);
    }
    json!({ "resourceType": "OperationOutcome", "issue": [issue] })
}

/// The clinic node's `CapabilityStatement` (`GET /fhir/metadata`): FHIR 4.0.1, JSON, the
/// `CoverageEligibilityRequest` create interaction answered with a `CoverageEligibilityResponse`.
pub fn capability_statement(date: Date) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.to_string(),
        "kind": "instance",
        "software": { "name": "shikaku", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "shikaku clinic node: eligibility answered from the local ledger, with its freshness" },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "resource": [{
                "type": "CoverageEligibilityRequest",
                "interaction": [{ "code": "create" }],
                "documentation": "POST a CoverageEligibilityRequest (patient.identifier: urn:shikaku:card-token or urn:shikaku:member-key; with a member key of a sealed insurer the extension urn:shikaku:fhir:extension:birth-date); the answer is a CoverageEligibilityResponse, errors an OperationOutcome"
            }]
        }]
    })
}
