//! What the APIs accept: the one JSON error shape ([`ApiError`]), query strings and JSON bodies
//! checked field by field, and the card or member key a request names (typed keys normalised,
//! with notes saying how).

use anyhow::bail;
use shikaku_core::{CardToken, CheckQuery, MemberKey};

/// An API error as every endpoint answers it: `{"error": CODE, "field": NAME?, "message":
/// TEXT}` with its status (protocol/API.md lists the codes).
#[derive(Debug)]
pub struct ApiError {
    status: axum::http::StatusCode,
    code: &'static str,
    field: Option<String>,
    message: String,
}

impl ApiError {
    /// A 400 about one parameter or body field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "invalid_field",
            field: Some(field.to_owned()),
            message: format!("{field}: {message}"),
        }
    }

    /// An error of `status` with `code`, not about one field.
    pub fn new(status: axum::http::StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError { status, code, field: None, message }
    }

    /// A 500: the node could not do what was asked (e.g. record on a full disk).
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{message:#}"),
        )
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = code;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> axum::http::StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let Some(field) = self.field {
            body["field"] = serde_json::Value::String(field);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

/// The parameters of a query string, each name at most once and only `allowed` names.
pub fn query_params(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let mut params = std::collections::BTreeMap::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(ApiError::invalid(
                &name,
                format!("unknown parameter (expected {})", allowed.join(", ")),
            )
            .with_code("unknown_field"));
        }
        if params.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(ApiError::invalid(&name, "given more than once"));
        }
    }
    Ok(params)
}

/// A JSON request body: the content type must be `application/json` (415 otherwise), the
/// body a JSON object with only `allowed` fields, each a string (400 naming the field).
pub fn json_body(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    allowed: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    use axum::http::StatusCode;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be application/json, not {content_type:?}"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let serde_json::Value::Object(object) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body must be a JSON object".to_owned(),
        ));
    };
    let mut fields = std::collections::BTreeMap::new();
    for (name, value) in object {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::invalid(
                &name,
                format!("unknown field (expected {})", allowed.join(", ")),
            )
            .with_code("unknown_field"));
        }
        match value {
            serde_json::Value::String(text) => {
                fields.insert(name, text);
            }
            serde_json::Value::Null => {}
            _ => return Err(ApiError::invalid(&name, "must be a string")),
        }
    }
    Ok(fields)
}

/// The card or member key of an API request (exactly one of them), with notes on what was
/// normalised in a typed member key.
pub fn api_query(
    fields: &std::collections::BTreeMap<String, String>,
) -> Result<(shikaku_core::CheckQuery, Vec<String>), ApiError> {
    match (fields.get("card"), fields.get("member")) {
        (Some(card), None) => {
            parse_typed_query(Some(card), None).map_err(|e| ApiError::invalid("card", e))
        }
        (None, Some(member)) => parse_typed_query(None, Some(member))
            .map_err(|e| ApiError::invalid("member", e)),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "member",
            "give exactly one of card (a 64-hex card token) or member (INSURER:SYMBOL:NUMBER:BRANCH), not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "member",
            "missing: give card (a 64-hex card token) or member (INSURER:SYMBOL:NUMBER:BRANCH)",
        )
        .with_code("missing_field")),
    }
}

/// A 404 naming the card or member key `query` asked about, and why nothing was recorded.
pub fn unknown_member(query: &shikaku_core::CheckQuery, why: &str) -> ApiError {
    let (field, text) = match query {
        shikaku_core::CheckQuery::Card(card) => ("card", card.to_string()),
        shikaku_core::CheckQuery::Member(key) => ("member", key.to_string()),
    };
    ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "unknown_member",
        field: Some(field.to_owned()),
        message: format!("{field} {text}: {why}"),
    }
}

/// Parses a card token or a member key as a person typed it: a member key's full-width digits
/// become ASCII and spaces around it and its parts are trimmed (see
/// [`shikaku_core::member::normalize_typed_key`]). Returns the query and sentences saying what
/// was normalised, for the caller to show.
pub fn parse_typed_query(
    card: Option<&str>,
    member: Option<&str>,
) -> anyhow::Result<(CheckQuery, Vec<String>)> {
    match (card, member) {
        (Some(card), None) => Ok((CheckQuery::Card(card.trim().parse::<CardToken>()?), vec![])),
        (None, Some(member)) => {
            let (text, changes) = shikaku_core::member::normalize_typed_key(member);
            let key = text.parse::<MemberKey>()?;
            let notes = changes
                .iter()
                .map(|change| format!("member key read as {key} ({change})"))
                .collect();
            Ok((CheckQuery::Member(key), notes))
        }
        _ => bail!("give exactly one of --card or --member"),
    }
}
