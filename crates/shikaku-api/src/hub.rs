//! The insurer's API on a hub: the reconciliation report, JSON Lines import (streamed, one at
//! a time, only with an insurer key registry), health and metrics.

use std::sync::Arc;

use anyhow::{Context, Result};
use shikaku_net::runtime::FileNode;
use shikaku_net::Runtime;

use crate::import::RefusedLine;
use crate::insurer_auth::{HubAuth, LoggedMember, Scope};
use crate::metrics::metrics_text;
use crate::request::ApiError;
use crate::serve::{serve_guarded, ApiOptions};
use crate::types::ImportResponse;
use shikaku_core::MemberKey;

/// Stores verified, screened insurer events at a hub, serving their insurers from now on;
/// returns how many were new.
pub fn import_into(
    n: &mut FileNode,
    now_ms: u64,
    good: &[shikaku_core::SignedEvent],
) -> Result<u64> {
    for e in good {
        if let shikaku_core::Namespace::Insurer(i) = e.event().namespace {
            n.serve_insurer(i);
        }
    }
    Ok(n.import(now_ms, good).context("storing the batch")? as u64)
}

/// One import at a time per hub (`POST /v1/import`).
#[derive(Debug, Clone)]
pub struct ImportSlot(Arc<tokio::sync::Semaphore>);

/// `POST /v1/import` imports its body in pieces of whole lines of about this size.
const IMPORT_PIECE_BYTES: usize = 4 << 20;

/// The largest JSON Lines body `POST /v1/import` accepts.
pub const IMPORT_BODY_MAX: usize = 64 << 20;

/// The reconciliation report of a running hub (clinic names from the certificates seen).
/// The ledger is read while holding the node; the report is computed after letting it go, so
/// sync is held up only for the read.
pub async fn hub_report(rt: &Runtime) -> Result<shikaku_reconcile::Report> {
    Ok(hub_report_for(rt, None).await?.0)
}

/// [`hub_report`], and with `member` the names the ledger knows that member by (its key and,
/// sealed, its reference): what a member access report is filtered by.
pub async fn hub_report_for(
    rt: &Runtime,
    member: Option<MemberKey>,
) -> Result<(shikaku_reconcile::Report, Vec<MemberKey>)> {
    let (events, names, now, keys) = rt
        .call(|n, now| {
            let keys = n.key_store().clone();
            (n.ledger().read_from(1, usize::MAX), n.peer_names().clone(), now, keys)
        })
        .await;
    let events = events?;
    tokio::task::spawn_blocking(move || {
        report_and_names(&events, &names, &keys, now, member.as_ref())
    })
    .await
    .context("computing the report")
}

/// The report over a hub's events (sealed records re-derived with what its data keys open)
/// and the names `member` goes by in them.
pub fn report_and_names(
    events: &[(u64, shikaku_core::SignedEvent)],
    names: &std::collections::BTreeMap<shikaku_core::NodeId, String>,
    keys: &shikaku_core::keystore::KeyStore,
    now_ms: u64,
    member: Option<&MemberKey>,
) -> (shikaku_reconcile::Report, Vec<MemberKey>) {
    let reveal = shikaku_core::sealer::reveal_from(events.iter().map(|(_, e)| e), keys);
    let report = shikaku_reconcile::compute_revealed(events, names, now_ms, Some(&reveal));
    let mut known_as = Vec::new();
    if let Some(key) = member {
        known_as.push(key.clone());
        known_as.extend(shikaku_core::sealer::reference_of(
            events.iter().map(|(_, e)| e),
            keys,
            key,
        ));
    }
    (report, known_as)
}

/// Serves the hub's insurer API on `listener` until the task is dropped.
pub async fn serve_hub_api(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
) -> std::io::Result<()> {
    serve_guarded(listener, hub_router(runtime), &ApiOptions::default()).await
}

/// The insurer's API on a hub: `GET /v1/reconcile?format=html|json|table`, `POST /v1/import`
/// (JSON Lines, only on a hub with an insurer key registry), `/v1/health`, `/metrics`.
pub fn hub_router(runtime: Arc<Runtime>) -> axum::Router {
    let auth = Arc::new(HubAuth::unrecorded_open(runtime.clock().clone()));
    hub_router_with(runtime, auth)
}

/// The insurer's API behind insurer accounts (`auth`): every answer scoped to the account's
/// insurers, every use recorded. Adds `GET /v1/members/{key}/accesses`.
pub fn hub_router_with(runtime: Arc<Runtime>, auth: Arc<HubAuth>) -> axum::Router {
    use axum::extract::{Query, State};
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReportParams {
        format: Option<String>,
    }

    async fn report(
        State(rt): State<Arc<Runtime>>,
        axum::Extension(scope): axum::Extension<Scope>,
        Query(p): Query<ReportParams>,
    ) -> Result<axum::response::Response, (StatusCode, String)> {
        let format = p.format.unwrap_or_else(|| "html".to_owned());
        let kind = match format.as_str() {
            "html" => "text/html; charset=utf-8",
            "json" => "application/json",
            "table" => "text/plain; charset=utf-8",
            other => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("format must be html, json or table, got {other:?}\n"),
                ))
            }
        };
        let report = hub_report(&rt)
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")))?;
        // An insurer never sees another insurer's members.
        let report = match &scope.insurers {
            Some(insurers) => report.scoped(insurers),
            None => report,
        };
        let body = tokio::task::spawn_blocking(move || shikaku_reconcile::render(&report, &format))
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")))?;
        Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
    }

    async fn health(State(rt): State<Arc<Runtime>>) -> axum::Json<serde_json::Value> {
        axum::Json(
            rt.call(|n, _| {
                serde_json::json!({
                    "role": n.role().name(),
                    "name": n.config().name,
                    "events": n.ledger().len(),
                    "head": n.ledger().head(),
                    "connections": n.connections(),
                    "insurers": n.config().insurers.len(),
                    "holdings": shikaku_core::hex::encode(&n.holdings_digest()),
                    "stream_applied": n.follows_stream().then(|| n.stream_applied()),
                    "damage": n.front_end_damage(),
                })
            })
            .await,
        )
    }

    async fn metrics(
        State(rt): State<Arc<Runtime>>,
    ) -> ([(axum::http::HeaderName, &'static str); 1], String) {
        let text = rt.call(|n, now| metrics_text(n, now)).await;
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
    }

    async fn import(
        State(rt): State<Arc<Runtime>>,
        axum::Extension(slot): axum::Extension<ImportSlot>,
        axum::Extension(scope): axum::Extension<Scope>,
        body: axum::body::Body,
    ) -> Result<axum::Json<ImportResponse>, ApiError> {
        use http_body_util::BodyExt as _;
        // Refused before a byte of the body is read.
        if rt.call(|n, _| n.config().insurer_keys.is_empty()).await {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "no_key_registry",
                "this hub has no insurer key registry (hub serve --insurer-keys): importing over the network needs one".into(),
            ));
        }
        let Ok(_turn) = slot.0.clone().try_acquire_owned() else {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "import_busy",
                "another import is running on this hub: one at a time, try again when it ends"
                    .into(),
            ));
        };
        // The body is read and imported in pieces of whole lines, so memory stays bounded by
        // one piece whatever the body's size.
        let mut body = body;
        let mut pending: Vec<u8> = Vec::new();
        let mut total = 0usize;
        let mut first_line = 1u64;
        let mut summary = crate::ImportSummary::default();
        let mut refused: Vec<RefusedLine> = Vec::new();
        loop {
            let frame = body.frame().await;
            let end = match frame {
                None => true,
                Some(Err(e)) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "body_unreadable",
                        format!("reading the body: {e}"),
                    ))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len();
                        if total > IMPORT_BODY_MAX {
                            return Err(ApiError::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "body_too_large",
                                format!("an import body is at most {IMPORT_BODY_MAX} bytes: send more requests (hub import --hub does)"),
                            ));
                        }
                        pending.extend_from_slice(&data);
                    }
                    false
                }
            };
            if !end && pending.len() < IMPORT_PIECE_BYTES {
                continue;
            }
            let cut = if end {
                pending.len()
            } else {
                match pending.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None => continue,
                }
            };
            let piece: Vec<u8> = pending.drain(..cut).collect();
            let lines = piece.iter().filter(|&&b| b == b'\n').count() as u64
                + u64::from(!piece.is_empty() && !piece.ends_with(b"\n"));
            let rt2 = rt.clone();
            let scope = scope.clone();
            let (part, part_refused) = tokio::task::spawn_blocking(move || {
                let mut refused = Vec::new();
                let part = crate::import_stream(
                    piece.as_slice(),
                    &mut |r| {
                        refused.push(r);
                        Ok(())
                    },
                    // One node command per batch, not per event.
                    &mut |events| {
                        let events = events.to_vec();
                        let scope = scope.clone();
                        rt2.call_blocking(move |n, _| {
                            events
                                .iter()
                                .map(|e| match e.event().namespace {
                                    shikaku_core::Namespace::Insurer(i) if !scope.covers(i) => {
                                        Some(format!(
                                            "event {} is of insurer {i}, which account {} may not write",
                                            e.id(),
                                            scope.account
                                        ))
                                    }
                                    _ => n.import_refusal(e),
                                })
                                .collect()
                        })
                    },
                    &mut |good| match rt2.stream_publisher() {
                        // A front-end: into the shared stream; every front-end (this one
                        // too) stores the events when the stream delivers them.
                        Some(publisher) => {
                            let published = tokio::runtime::Handle::current()
                                .block_on(publisher.publish(good))
                                .map_err(|f| {
                                    anyhow::anyhow!(
                                        "the shared stream stored {} of {} events of this batch: {}",
                                        f.durable,
                                        good.len(),
                                        f.error
                                    )
                                })?;
                            Ok(published.new)
                        }
                        None => {
                            let good = good.to_vec();
                            rt2.call_blocking(move |n, now| import_into(n, now, &good))
                        }
                    },
                    &mut |_, _| {},
                );
                (part, refused)
            })
            .await
            .map_err(ApiError::internal)?;
            let part = part.map_err(ApiError::internal)?;
            // Numbered within the piece: renumbered within the body.
            let listed: Vec<RefusedLine> =
                part_refused.into_iter().map(|r| r.in_input_from(first_line)).collect();
            // Refused lines count at the hub too, not only in this reply.
            let count = listed.len() as u64;
            if count > 0 {
                rt.call(move |n, _| n.note_import_refusals(count)).await;
            }
            refused.extend(listed);
            summary.lines += part.lines;
            summary.imported += part.imported;
            summary.duplicates += part.duplicates;
            summary.rejected += part.rejected;
            first_line += lines;
            if end {
                break;
            }
        }
        Ok(axum::Json(ImportResponse {
            lines: summary.lines,
            imported: summary.imported,
            duplicates: summary.duplicates,
            rejected: summary.rejected,
            refused,
        }))
    }

    async fn accesses(
        State(rt): State<Arc<Runtime>>,
        axum::Extension(scope): axum::Extension<Scope>,
        axum::extract::Path(key): axum::extract::Path<String>,
        axum::extract::RawQuery(raw): axum::extract::RawQuery,
    ) -> Result<axum::response::Response, ApiError> {
        let p = crate::request::query_params(raw.as_deref(), &["from", "to", "format"])?;
        let key: MemberKey = key.parse().map_err(|e| ApiError::invalid("member", e))?;
        let day = |field: &str| {
            p.get(field)
                .map(|t| t.parse::<shikaku_core::Date>().map_err(|e| ApiError::invalid(field, e)))
                .transpose()
        };
        let (from, to) = (day("from")?, day("to")?);
        let format = p.get("format").map_or("json", String::as_str).to_owned();
        if !["json", "html", "table"].contains(&format.as_str()) {
            return Err(ApiError::invalid(
                "format",
                format!("must be json, html or table, got {format:?}"),
            ));
        }
        if !scope.covers(key.insurer) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_member",
                format!("no such member among the insurers account {} may see", scope.account),
            ));
        }
        let tag = crate::insurer_auth::member_tag(&key);
        let (report, known_as) =
            hub_report_for(&rt, Some(key.clone())).await.map_err(ApiError::internal)?;
        let r = shikaku_reconcile::access::member_accesses(
            &report,
            &key.to_string(),
            &known_as,
            from,
            to,
        );
        let mut response = match format.as_str() {
            "html" => {
                axum::response::Html(shikaku_reconcile::access::accesses_html(&r)).into_response()
            }
            "table" => (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                shikaku_reconcile::access::accesses_text(&r),
            )
                .into_response(),
            _ => axum::Json(r).into_response(),
        };
        response.extensions_mut().insert(LoggedMember(tag));
        Ok(response)
    }

    axum::Router::new()
        .route("/v1/import", axum::routing::post(import))
        .layer(axum::Extension(ImportSlot(Arc::new(tokio::sync::Semaphore::new(1)))))
        .route("/v1/reconcile", get(report))
        .route("/v1/members/{key}/accesses", get(accesses))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(move |request, next| {
            crate::insurer_auth::guard(auth.clone(), request, next)
        }))
        .with_state(runtime)
}
