//! The clinic's local API: `/` the reception page, `GET /v1/check` (JSON or FHIR), `POST
//! /v1/declarations`, `POST /v1/consents`, `/v1/health`, `/metrics`, staff login and audit,
//! and FHIR's `POST /fhir/CoverageEligibilityRequest` and `GET /fhir/metadata` — every error
//! a JSON [`ApiError`] (an `OperationOutcome` on the FHIR paths). Handlers send the node
//! commands ([`Runtime::call`], [`Runtime::check`]); none touches the ledger itself.

use shikaku_core::keystore::Presented;
use shikaku_core::CheckQuery;
use std::sync::Arc;

use shikaku_core::text as render;
use shikaku_core::{Date, InsurerNumber};
use shikaku_net::Runtime;

use crate::auth::{ClinicAuth, Operator};
use crate::metrics::metrics_text;
use crate::request::{api_query, json_body, query_params, unknown_member, ApiError};
use crate::serve::{serve_guarded, ApiOptions};
use crate::types::{CheckResponse, ConsentResponse, DeclarationResponse};

/// Serves the clinic's local API on `listener` until the task is dropped.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
) -> std::io::Result<()> {
    serve_api_with(listener, runtime, &ApiOptions::default()).await
}

/// [`serve_api`] with explicit options.
pub async fn serve_api_with(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    options: &ApiOptions,
) -> std::io::Result<()> {
    let auth = Arc::new(ClinicAuth::loopback(runtime.clock().clone()));
    serve_guarded(listener, api_router_with(runtime, auth), options).await
}

/// [`serve_api_with`] with staff authentication (`auth`'s login mode).
pub async fn serve_api_auth(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    auth: Arc<ClinicAuth>,
    options: &ApiOptions,
) -> std::io::Result<()> {
    serve_guarded(listener, api_router_with(runtime, auth), options).await
}

/// The reception page (plain HTML and JavaScript, served from the binary): check a card or a
/// member key, a large clear result, a freshness banner that turns amber then red offline, and
/// the self-declaration flow.
/// Its stale-after threshold is [`shikaku_core::STALE_AFTER_S`], filled in when served.
pub const RECEPTION_PAGE: &str = include_str!("reception.html");

/// The reception page as served (the core's thresholds filled in).
pub fn reception_page() -> String {
    RECEPTION_PAGE.replace("__STALE_AFTER_S__", &shikaku_core::STALE_AFTER_S.to_string())
}

/// The answer as shown to reception: where the sealed record opened, its real member key in
/// place of the reference (the recorded answer keeps the reference).
fn shown_answer(
    answer: &shikaku_core::Answer,
    data: &shikaku_node::MemberData,
) -> shikaku_core::Answer {
    let mut shown = answer.clone();
    if let shikaku_node::MemberData::Opened(record) = data {
        shown.member = Some(record.key.clone());
        if matches!(shown.query, CheckQuery::Member(_)) {
            shown.query = CheckQuery::Member(record.key.clone());
        }
    }
    shown
}

/// Answers what a patient presented (a card, or a member key with the birth date if given),
/// recorded as made by `operator`: the answer and when it was given.
async fn answer_presented(
    rt: &Runtime,
    query: CheckQuery,
    birth: Option<Date>,
    date: Date,
    operator: Option<shikaku_core::StaffId>,
) -> Result<(shikaku_node::PresentedAnswer, u64), ApiError> {
    let presented = match (query, birth) {
        (CheckQuery::Card(token), None) => Presented::Card(token),
        (CheckQuery::Card(_), Some(_)) => {
            return Err(ApiError::invalid(
                "birth_date",
                "give the birth date with a member key, not with a card",
            ))
        }
        (CheckQuery::Member(key), Some(birth)) => Presented::Key { key, birth },
        (CheckQuery::Member(key), None) => Presented::KeyWithoutBirth(key),
    };
    match rt.check_presented(presented, date, operator).await {
        Ok(ok) => Ok(ok),
        Err(e) => {
            if let shikaku_node::NodeError::Sealed(why) = &*e {
                return Err(
                    ApiError::invalid("birth_date", why.to_string()).with_code("missing_field")
                );
            }
            Err(ApiError::internal(e))
        }
    }
}

/// `POST /fhir/CoverageEligibilityRequest`: the FHIR request side of `/v1/check`. The answer is
/// the `CoverageEligibilityResponse` `/v1/check?format=fhir` renders; every error an
/// `OperationOutcome`.
async fn fhir_eligibility(
    axum::extract::State(rt): axum::extract::State<Arc<Runtime>>,
    operator: Option<axum::Extension<Operator>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let fhir = |status: StatusCode, value: serde_json::Value| {
        (status, [(header::CONTENT_TYPE, "application/fhir+json")], value.to_string())
            .into_response()
    };
    let outcome = |status, code, expression: Option<&str>, message: &str| {
        fhir(status, crate::fhir::operation_outcome(code, expression, message))
    };
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = kind.split(';').next().unwrap_or("").trim();
    if essence != "application/fhir+json" && essence != "application/json" {
        return outcome(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            None,
            "send the resource as application/fhir+json",
        );
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "structure",
                None,
                &format!("not a JSON resource: {e}"),
            )
        }
    };
    let request = match crate::fhir::eligibility_request(&value) {
        Ok(r) => r,
        Err(p) => return outcome(StatusCode::BAD_REQUEST, p.code, Some(p.expression), &p.message),
    };
    let date = request.serviced.unwrap_or_else(|| Date::from_unix_ms_jst(rt.clock().now_ms()));
    let operator = operator.map(|o| o.0.id);
    match answer_presented(&rt, request.query, request.birth_date, date, operator).await {
        Ok((presented, now)) => {
            let shown = shown_answer(&presented.answer, &presented.member_data);
            fhir(StatusCode::OK, crate::fhir::coverage_eligibility_response(&shown, now))
        }
        Err(e) if e.status().is_client_error() => outcome(
            e.status(),
            "required",
            Some("extension"),
            &format!(
                "{} (the birth date goes in the extension urn:shikaku:fhir:extension:birth-date)",
                e.message()
            ),
        ),
        Err(e) => outcome(e.status(), "exception", None, e.message()),
    }
}

/// The body limit of the clinic API's POST requests.
pub const CLINIC_BODY_MAX: usize = 2 << 20;

/// The clinic's local API in the loopback no-login mode.
pub fn api_router(runtime: Arc<Runtime>) -> axum::Router {
    let auth = Arc::new(ClinicAuth::loopback(runtime.clock().clone()));
    api_router_with(runtime, auth)
}

/// The staff member a request came from, if staff log in.
type MaybeOperator = Option<axum::Extension<Operator>>;

/// The clinic's local API behind staff authentication.
pub fn api_router_with(runtime: Arc<Runtime>, auth: Arc<ClinicAuth>) -> axum::Router {
    use axum::extract::{RawQuery, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;

    async fn check(
        State(rt): State<Arc<Runtime>>,
        operator: MaybeOperator,
        RawQuery(raw): RawQuery,
    ) -> Result<axum::response::Response, ApiError> {
        let operator = operator.map(|o| o.0.id);
        let p = query_params(raw.as_deref(), &["card", "member", "birth_date", "date", "format"])?;
        let fhir = match p.get("format").map(String::as_str) {
            None | Some("json") => false,
            Some("fhir") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "format",
                    format!("must be json or fhir, got {other:?}"),
                ))
            }
        };
        let (query, notes) = api_query(&p)?;
        let date = match p.get("date") {
            Some(text) => text.parse::<Date>().map_err(|e| ApiError::invalid("date", e))?,
            None => Date::from_unix_ms_jst(rt.clock().now_ms()),
        };
        let birth = match p.get("birth_date") {
            Some(text) => {
                Some(text.parse::<Date>().map_err(|e| ApiError::invalid("birth_date", e))?)
            }
            None => None,
        };
        let (presented_answer, now) = answer_presented(&rt, query, birth, date, operator).await?;
        let shikaku_node::PresentedAnswer { answer, member_data, .. } = presented_answer;
        if fhir {
            // The present patient's real member key where the record opened (the response
            // goes to the receipt computer at reception); the reference otherwise.
            let shown = shown_answer(&answer, &member_data);
            let resource = crate::fhir::coverage_eligibility_response(&shown, now);
            return Ok((
                [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
                resource.to_string(),
            )
                .into_response());
        }
        // The text reception reads: the opened record's real key in place of the reference,
        // and the patient's name — for the present patient only, never stored.
        let text = match &member_data {
            shikaku_node::MemberData::Opened(record) => {
                let mut text = render::answer(&shown_answer(&answer, &member_data));
                if let Some(first_end) = text.find('\n') {
                    text.insert_str(
                        first_end + 1,
                        &format!(
                            "  patient     {} ({}), born {}\n",
                            record.person.name, record.person.kana, record.person.birth_date
                        ),
                    );
                }
                text
            }
            shikaku_node::MemberData::Erased => {
                render::answer(&answer)
                    + "  MEMBER DATA ERASED: eligibility from pseudonymous facts only\n"
            }
            shikaku_node::MemberData::Sealed => {
                render::answer(&answer)
                    + "  member data sealed: the record cannot be opened here yet\n"
            }
            _ => render::answer(&answer),
        };
        let person = match &member_data {
            shikaku_node::MemberData::Opened(record) => Some(crate::types::PersonView {
                member_key: record.key.to_string(),
                name: record.person.name.clone(),
                kana: record.person.kana.clone(),
                birth_date: record.person.birth_date.to_string(),
                insured: record.insured.as_ref().map(|i| i.reference.to_string()),
            }),
            _ => None,
        };
        let member_data = match member_data {
            shikaku_node::MemberData::Plain | shikaku_node::MemberData::NoMember => None,
            other => Some(other.label().to_owned()),
        };
        Ok(Json(CheckResponse { answer: &answer, text, notes, member_data, person })
            .into_response())
    }

    async fn declare(
        State(rt): State<Arc<Runtime>>,
        operator: MaybeOperator,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Result<(StatusCode, Json<DeclarationResponse>), ApiError> {
        let d =
            json_body(&headers, &body, &["card", "member", "declared_insurer", "declared_start"])?;
        let (query, _) = api_query(&d)?;
        let declared_start = d
            .get("declared_start")
            .ok_or_else(|| {
                ApiError::invalid(
                    "declared_start",
                    "missing: the date the new coverage started (YYYY-MM-DD)",
                )
                .with_code("missing_field")
            })?
            .parse::<Date>()
            .map_err(|e| ApiError::invalid("declared_start", e))?;
        let declared_insurer = match d.get("declared_insurer") {
            Some(text) => Some(
                text.trim()
                    .parse::<InsurerNumber>()
                    .map_err(|e| ApiError::invalid("declared_insurer", e))?,
            ),
            None => None,
        };
        let asked = query.clone();
        let operator = operator.map(|o| o.0.id);
        let event = rt
            .call(move |n, now| {
                // Sealed ledgers: the card by its tag, in schema 2.
                let (asked, schema) = n.record_query(&asked);
                // A declaration follows a check of a patient who is present: one about a card or
                // member this clinic has no record of at all is a typing error.
                if !n.has_record_of(&asked)? {
                    return Ok(None);
                }
                let body = shikaku_core::EventBody::SelfDeclarationRecorded {
                    query: asked,
                    declared_insurer,
                    declared_start,
                };
                n.record_many_by(now, vec![(schema, body)], operator).map(|mut e| e.pop())
            })
            .await
            .map_err(|e: shikaku_node::NodeError| ApiError::internal(e))?;
        let Some(event) = event else {
            return Err(unknown_member(
                &query,
                "this clinic has no record of it (no event and no check): check the patient first",
            ));
        };
        Ok((StatusCode::CREATED, Json(DeclarationResponse { declaration: event.id().to_string() })))
    }

    async fn consent(
        State(rt): State<Arc<Runtime>>,
        operator: MaybeOperator,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Result<(StatusCode, Json<ConsentResponse>), ApiError> {
        let d = json_body(&headers, &body, &["card", "member", "consent"])?;
        let (query, _) = api_query(&d)?;
        let given = match d.get("consent").map(String::as_str) {
            Some("given") => true,
            Some("withdrawn") => false,
            Some(other) => {
                return Err(ApiError::invalid(
                    "consent",
                    format!("must be \"given\" or \"withdrawn\", got {other:?}"),
                ))
            }
            None => {
                return Err(ApiError::invalid("consent", "missing: \"given\" or \"withdrawn\"")
                    .with_code("missing_field"))
            }
        };
        let asked = query.clone();
        let operator = operator.map(|o| o.0.id);
        let recorded = rt
            .call(move |n, now| {
                let (asked, _) = n.record_query(&asked);
                let Some(member) = n.member_of(&asked) else { return Ok(None) };
                let body = if given {
                    shikaku_core::EventBody::ConsentGiven { member: member.clone() }
                } else {
                    shikaku_core::EventBody::ConsentWithdrawn { member: member.clone() }
                };
                let schema = n.record_query(&shikaku_core::CheckQuery::Member(member.clone())).1;
                n.record_many_by(now, vec![(schema, body)], operator)
                    .map(|mut e| e.pop().map(|e| (e, member)))
            })
            .await
            .map_err(|e: shikaku_node::NodeError| ApiError::internal(e))?;
        let Some((event, member)) = recorded else {
            return Err(unknown_member(
                &query,
                "no single member of the insurers held here matches it",
            ));
        };
        Ok((
            StatusCode::CREATED,
            Json(ConsentResponse {
                consent: if given { "given" } else { "withdrawn" }.to_owned(),
                member: member.to_string(),
                event: event.id().to_string(),
            }),
        ))
    }

    async fn health(State(rt): State<Arc<Runtime>>) -> Json<serde_json::Value> {
        let value = rt
            .call(|n, now| {
                let f = n.freshness(now);
                serde_json::json!({
                    "role": n.role().name(),
                    "name": n.config().name,
                    "in_sync": n.in_sync(),
                    "last_hub_sync_ms": f.last_hub_sync_ms,
                    "staleness_s": f.staleness_s(),
                    "hub_position": f.hub_position,
                    "events": n.ledger().len(),
                    "connections": n.connections(),
                    "unacked_records": n.unacked_own(),
                    "damage": n.damage_note(),
                    "receipt": n.receipt().map(|(r, _)| serde_json::json!({
                        "hub": shikaku_core::hex::encode(&r.hub.0),
                        "position": r.position,
                        "count": r.count,
                        "fingerprint": shikaku_core::hex::encode(&r.fingerprint),
                        "complete": r.complete,
                    })),
                })
            })
            .await;
        Json(value)
    }

    async fn metrics(
        State(rt): State<Arc<Runtime>>,
        axum::Extension(auth): axum::Extension<Arc<ClinicAuth>>,
    ) -> ([(axum::http::HeaderName, &'static str); 1], String) {
        let staff = auth.staff();
        let mut text = rt
            .call(move |n, now| {
                let mut text = metrics_text(n, now);
                if !staff.is_empty() {
                    text.push_str(&crate::audit::staff_metrics(&crate::audit::clinic_audit(
                        n, &staff, now,
                    )));
                }
                text
            })
            .await;
        text.push_str(&crate::audit::auth_metrics(&auth.counters()));
        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
    }

    axum::Router::new()
        .route("/v1/check", get(check))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Html(reception_page()) }))
        .route("/v1/declarations", axum::routing::post(declare))
        .route("/v1/consents", axum::routing::post(consent))
        .route("/v1/login", axum::routing::post(crate::auth::login))
        .route("/v1/logout", axum::routing::post(crate::auth::logout))
        .route("/v1/session", get(crate::auth::session))
        .route("/v1/staff", get(crate::auth::staff_list))
        .route("/v1/staff/disable", axum::routing::post(crate::auth::staff_disable))
        .route("/v1/audit", get(crate::audit::audit_view))
        .route("/fhir/CoverageEligibilityRequest", axum::routing::post(fhir_eligibility))
        .route(
            "/fhir/metadata",
            get(|State(rt): State<Arc<Runtime>>| async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
                    crate::fhir::capability_statement(Date::from_unix_ms_jst(rt.clock().now_ms()))
                        .to_string(),
                )
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(CLINIC_BODY_MAX))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(move |request, next| {
            crate::auth::guard(auth.clone(), request, next)
        }))
        .with_state(runtime)
}

/// Every unknown path: a JSON 404 saying what this server is.
async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} (see protocol/API.md)", uri.path()),
    )
}

/// A known path asked with another method.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not answer {method}", uri.path()),
    )
}
