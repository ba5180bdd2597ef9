//! Running nodes from the command line: `shikaku ca init|issue`, `shikaku hub serve`,
//! `shikaku clinic serve` (with its local check API), and `shikaku check --node URL`.
//!
//! The clinic's local API (loopback by default) is plain HTTP/1.1 JSON, plus the reception page
//! at `/`:
//! `GET /v1/check?member=KEY|card=TOKEN&date=YYYY-MM-DD` answers from the clinic's ledger with
//! freshness and records the check; `GET /v1/health` reports sync state.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use shikaku_core::{Date, InsurerNumber};
use shikaku_log::fs::FileDirectory;
use shikaku_net::runtime::{log_level_from_env, FileNode};
use shikaku_net::{tls, ClinicService, Clock, HubService, Runtime};
use shikaku_node::{Node, NodeConfig, Role};

use crate::render;
use crate::store::{node_identity, take_lock};

/// Registered signing keys per insurer.
pub type InsurerKeys =
    std::collections::BTreeMap<InsurerNumber, std::collections::BTreeSet<shikaku_core::AuthorKey>>;

/// Opens the node in `data_dir` (creating its key and ledger if needed), holding its lock.
pub fn open_node(data_dir: &Path, config: NodeConfig) -> Result<(FileNode, std::fs::File)> {
    let signer = node_identity(data_dir, true)?
        .with_context(|| format!("no node key in {}", data_dir.display()))?;
    let lock = take_lock(data_dir)?;
    crate::store::remove_temporary_files(data_dir);
    let files = FileDirectory::new(data_dir.join("log"))
        .with_context(|| format!("opening {}", data_dir.join("log").display()))?;
    let node = Node::open(files, signer, config)
        .with_context(|| format!("opening the ledger in {}", data_dir.display()))?;
    Ok((node, lock))
}

/// `shikaku ca issue`: creates the node key if needed and writes `<data-dir>/tls/`.
pub fn ca_issue(
    ca_dir: &Path,
    data_dir: &Path,
    role: Role,
    name: &str,
    out: &mut dyn Write,
) -> Result<()> {
    tls::check_name(name)?;
    let signer = node_identity(data_dir, true)?
        .with_context(|| format!("no node key in {}", data_dir.display()))?;
    let tls_dir = data_dir.join(tls::TLS_DIR);
    tls::ca_issue(ca_dir, role, name, signer.node_id(), &tls_dir)?;
    writeln!(
        out,
        "issued a {} certificate for {name} (node {}) in {}",
        role.name(),
        &shikaku_core::hex::encode(&signer.node_id().0)[..16],
        tls_dir.display()
    )?;
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The node's TLS files from `<data-dir>/tls/`, refused unless the certificate is for `role`.
pub fn load_tls(data_dir: &Path, role: Role) -> Result<tls::TlsFiles> {
    let dir = data_dir.join(tls::TLS_DIR);
    let tls_files = tls::load(&dir)?;
    if tls_files.identity.role != role {
        bail!(
            "the certificate in {} is for a {}, not a {}",
            dir.display(),
            tls_files.identity.role.name(),
            role.name()
        );
    }
    Ok(tls_files)
}

/// Refuses an HTTP API address beyond loopback — plain HTTP, no authentication, member data
/// in every answer — unless `insecure_lan` says the operator accepts that (a warning then, at
/// every start).
pub fn check_api_address(
    what: &str,
    addr: SocketAddr,
    insecure_lan: bool,
    err: &mut dyn Write,
) -> Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !insecure_lan {
        bail!(
            "the {what} would listen on {addr}, beyond this machine, in plain HTTP without authentication: bind a loopback address (127.0.0.1 or [::1]), or pass --insecure-lan on a trusted network only"
        );
    }
    writeln!(
        err,
        "warning: the {what} listens on {addr} in plain HTTP without authentication (--insecure-lan): anyone who reaches it can check members and read answers"
    )?;
    Ok(())
}

/// Waits for a shutdown request: Ctrl-C (SIGINT) or SIGTERM, the signal systemd, Docker and
/// Kubernetes stop services with. Both lead to the same clean shutdown. Returns the signal's
/// name.
pub async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.context("listening for Ctrl-C")?;
            Ok("SIGINT")
        }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

/// `shikaku hub serve`: serves the insurers given plus every insurer in the ledger.
pub fn hub_serve(
    data_dir: &Path,
    listen: SocketAddr,
    insurers: &[InsurerNumber],
    insurer_keys: InsurerKeys,
    api: Option<SocketAddr>,
    options: &ApiOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let tls_files = load_tls(data_dir, Role::Hub)?;
    let mut config = NodeConfig::new(Role::Hub, &tls_files.identity.name);
    config.insurers = insurers.iter().copied().collect();
    config.insurer_keys = insurer_keys;
    let (mut node, _lock) = open_node(data_dir, config)?;
    node.serve_held_insurers();
    let served = node.config().insurers.len();
    let events = node.ledger().len();
    let rt = runtime()?;
    rt.block_on(async {
        let runtime = Runtime::new(node, Clock::wall(), log_level_from_env());
        let service = HubService::start(runtime, &tls_files, listen)?;
        writeln!(
            out,
            "hub {} listening on {} (QUIC, ALPN shikaku/1): {served} insurers, {events} events",
            tls_files.identity.name,
            service.local_addr()?
        )?;
        if !listen.ip().is_loopback() {
            writeln!(
                out,
                "note: QUIC on {listen} is reachable from the network (mutual TLS: only certificates of this deployment's CA get a session)"
            )?;
        }
        let server = match api {
            Some(api) => {
                let listener = tokio::net::TcpListener::bind(api)
                    .await
                    .with_context(|| format!("binding the insurer API on {api}"))?;
                writeln!(
                    out,
                    "insurer API on http://{} (reconciliation report at /v1/reconcile?format=html)",
                    listener.local_addr()?
                )?;
                let router = hub_router(service.runtime.clone());
                let options = options.clone();
                Some(tokio::spawn(async move { serve_guarded(listener, router, &options).await }))
            }
            None => None,
        };
        out.flush()?;
        let signal = shutdown_signal().await?;
        writeln!(out, "shutting down ({signal})")?;
        out.flush()?;
        if let Some(server) = server {
            server.abort();
        }
        let runtime = service.runtime.clone();
        service.shutdown().await;
        let names = runtime.call(|n, _| n.peer_names().clone()).await;
        save_clinic_names(data_dir, &names)?;
        Ok(())
    })
}

/// The file in a hub's data directory that remembers its clinics' certificate names (for
/// `reconcile` on a stopped hub): `NODE-ID-HEX NAME` lines.
pub const CLINIC_NAMES_FILE: &str = "clinic-names";

/// Clinic names remembered by the hub in `data_dir` (none when the file does not exist).
pub fn load_clinic_names(
    data_dir: &Path,
) -> Result<std::collections::BTreeMap<shikaku_core::NodeId, String>> {
    let path = data_dir.join(CLINIC_NAMES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut names = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad =
            || anyhow::anyhow!("{} line {}: expected NODE-ID-HEX NAME", path.display(), n + 1);
        let (id, name) = line.split_once(' ').ok_or_else(bad)?;
        let id: [u8; 32] = shikaku_core::hex::decode_array(id).ok_or_else(bad)?;
        tls::check_name(name).map_err(|_| bad())?;
        names.insert(shikaku_core::NodeId(id), name.to_owned());
    }
    Ok(names)
}

/// Adds `names` to the hub's remembered clinic names (atomically: a temporary file renamed).
pub fn save_clinic_names(
    data_dir: &Path,
    names: &std::collections::BTreeMap<shikaku_core::NodeId, String>,
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    // A damaged names file (derived data) is replaced by what this hub saw.
    let mut all = load_clinic_names(data_dir).unwrap_or_default();
    all.extend(names.iter().map(|(k, v)| (*k, v.clone())));
    let text: String = all
        .iter()
        .map(|(id, name)| format!("{} {name}\n", shikaku_core::hex::encode(&id.0)))
        .collect();
    crate::store::write_private_atomic(&data_dir.join(CLINIC_NAMES_FILE), text.as_bytes())
}

/// What `shikaku clinic serve` replicates: the insurers, the members to prefetch and the
/// insurers' registered keys.
#[derive(Debug, Clone, Default)]
pub struct Replicated {
    /// Insurers subscribed to.
    pub insurers: Vec<InsurerNumber>,
    /// Members of other insurers whose events to fetch anyway.
    pub prefetch: Vec<shikaku_core::MemberKey>,
    /// Registered insurer keys.
    pub insurer_keys: InsurerKeys,
}

/// `shikaku clinic serve`: background sync with the hub and the local check API.
pub fn clinic_serve(
    data_dir: &Path,
    hub: SocketAddr,
    replicated: Replicated,
    api: SocketAddr,
    options: &ApiOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let Replicated { insurers, prefetch, insurer_keys } = replicated;
    let tls_files = load_tls(data_dir, Role::Clinic)?;
    if insurers.is_empty() {
        bail!("a clinic must subscribe to at least one insurer (--insurer NUMBER)");
    }
    let mut config = NodeConfig::new(Role::Clinic, &tls_files.identity.name);
    config.insurers = insurers.iter().copied().collect();
    config.prefetch = prefetch.to_vec();
    config.insurer_keys = insurer_keys;
    let (node, _lock) = open_node(data_dir, config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let runtime = Runtime::new(node, Clock::wall(), log_level_from_env());
        let service = ClinicService::start(runtime.clone(), &tls_files, hub)?;
        let listener = tokio::net::TcpListener::bind(api)
            .await
            .with_context(|| format!("binding the check API on {api}"))?;
        writeln!(
            out,
            "clinic {} syncing with hub {hub}; check API on http://{}",
            tls_files.identity.name,
            listener.local_addr()?
        )?;
        out.flush()?;
        let server = {
            let (runtime, options) = (runtime.clone(), options.clone());
            tokio::spawn(async move { serve_api_with(listener, runtime, &options).await })
        };
        let signal = shutdown_signal().await?;
        writeln!(out, "shutting down ({signal})")?;
        out.flush()?;
        server.abort();
        service.shutdown().await;
        Ok(())
    })
}

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
    fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "invalid_field",
            field: Some(field.to_owned()),
            message: format!("{field}: {message}"),
        }
    }

    /// An error of `status` with `code`, not about one field.
    fn new(status: axum::http::StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError { status, code, field: None, message }
    }

    /// A 500: the node could not do what was asked (e.g. record on a full disk).
    fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{message:#}"),
        )
    }

    fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = code;
        self
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
fn query_params(
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
fn json_body(
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
fn api_query(
    fields: &std::collections::BTreeMap<String, String>,
) -> Result<(shikaku_core::CheckQuery, Vec<String>), ApiError> {
    match (fields.get("card"), fields.get("member")) {
        (Some(card), None) => {
            crate::parse_typed_query(Some(card), None).map_err(|e| ApiError::invalid("card", e))
        }
        (None, Some(member)) => crate::parse_typed_query(None, Some(member))
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
fn unknown_member(query: &shikaku_core::CheckQuery, why: &str) -> ApiError {
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

/// How an HTTP API is served: its connection limits and the host names (besides its address)
/// clients may call it by.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Timeouts and the connection cap.
    pub limits: crate::http::HttpLimits,
    /// Extra names for the Host check (e.g. the reception PC's name on the LAN).
    pub host_names: Vec<String>,
}

/// The header every request that records something must carry: a browser sends a custom
/// header only to its own origin (anything else needs a CORS preflight, which these APIs never
/// grant), so a page on another site cannot write into the audit trail through the reception
/// PC's browser.
pub const CLIENT_HEADER: &str = "X-Shikaku-Client";

/// The guard in front of both APIs: the Host must be one of the API's own names (DNS
/// rebinding), and a request that records something must come from the same origin — no
/// `Sec-Fetch-Site` other than same-origin/none, no foreign `Origin`, and the
/// [`CLIENT_HEADER`].
async fn guard(
    hosts: Arc<Vec<String>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, Method, StatusCode};
    use axum::response::IntoResponse;
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!("this API answers only as {}: Host {host:?} is refused", hosts.join(", ")),
        )
        .into_response();
    }
    let path = request.uri().path();
    let records = matches!(
        (request.method(), path),
        (&Method::GET, "/v1/check")
            | (&Method::POST, "/v1/declarations")
            | (&Method::POST, "/v1/consents")
            | (&Method::POST, "/v1/import")
    );
    if records {
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let foreign_origin = origin.is_some_and(|o| {
            let authority = o.split_once("://").map_or(o, |(_, rest)| rest);
            !hosts.iter().any(|h| h.eq_ignore_ascii_case(authority))
        });
        if site.is_some_and(|s| s != "same-origin" && s != "none") || foreign_origin {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site",
                format!("{path} records in the audit trail: it answers only requests from its own pages and programs"),
            )
            .into_response();
        }
        if headers.get(CLIENT_HEADER).is_none_or(|v| v.is_empty()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "missing_client_header",
                format!("{path} records in the audit trail: send the header {CLIENT_HEADER} (the reception page and shikaku's commands do)"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// `router` behind [`guard`], served on `listener` with `options`.
async fn serve_guarded(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    options: &ApiOptions,
) -> std::io::Result<()> {
    let hosts = Arc::new(crate::http::allowed_hosts(listener.local_addr()?, &options.host_names));
    let router = router
        .layer(axum::middleware::from_fn(move |request, next| guard(hosts.clone(), request, next)));
    crate::http::serve(listener, router, options.limits.clone()).await
}

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
    serve_guarded(listener, api_router(runtime), options).await
}

/// The reception page (plain HTML and JavaScript, served from the binary): check a card or a
/// member key, a large clear result, a freshness banner that turns amber then red offline, and
/// the self-declaration flow.
pub const RECEPTION_PAGE: &str = include_str!("reception.html");

/// The body limit of the clinic API's POST requests.
pub const CLINIC_BODY_MAX: usize = 2 << 20;

/// The clinic's local API.
pub fn api_router(runtime: Arc<Runtime>) -> axum::Router {
    use axum::extract::{RawQuery, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;

    async fn check(
        State(rt): State<Arc<Runtime>>,
        RawQuery(raw): RawQuery,
    ) -> Result<axum::response::Response, ApiError> {
        let p = query_params(raw.as_deref(), &["card", "member", "date", "format"])?;
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
        let (answer, now) = rt.check(query, date).await.map_err(ApiError::internal)?;
        if fhir {
            let resource = crate::fhir::coverage_eligibility_response(&answer, now);
            return Ok((
                [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
                resource.to_string(),
            )
                .into_response());
        }
        let text = render::answer(&answer);
        let mut body = serde_json::json!({ "answer": answer, "text": text });
        if !notes.is_empty() {
            body["notes"] = serde_json::json!(notes);
        }
        Ok(Json(body).into_response())
    }

    async fn declare(
        State(rt): State<Arc<Runtime>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
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
        let body = shikaku_core::EventBody::SelfDeclarationRecorded {
            query: query.clone(),
            declared_insurer,
            declared_start,
        };
        let asked = query.clone();
        let event = rt
            .call(move |n, now| {
                // A declaration follows a check of a patient who is present: one about a card or
                // member this clinic has no record of at all is a typing error.
                if !n.has_record_of(&asked)? {
                    return Ok(None);
                }
                n.record(now, body).map(Some)
            })
            .await
            .map_err(|e: shikaku_node::NodeError| ApiError::internal(e))?;
        let Some(event) = event else {
            return Err(unknown_member(
                &query,
                "this clinic has no record of it (no event and no check): check the patient first",
            ));
        };
        Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "declaration": event.id().to_string() })),
        ))
    }

    async fn consent(
        State(rt): State<Arc<Runtime>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
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
        let recorded = rt
            .call(move |n, now| {
                let Some(member) = n.member_of(&asked) else { return Ok(None) };
                let body = if given {
                    shikaku_core::EventBody::ConsentGiven { member: member.clone() }
                } else {
                    shikaku_core::EventBody::ConsentWithdrawn { member: member.clone() }
                };
                n.record(now, body).map(|e| Some((e, member)))
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
            Json(serde_json::json!({
                "consent": if given { "given" } else { "withdrawn" },
                "member": member.to_string(),
                "event": event.id().to_string(),
            })),
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
                    "staleness_s": f.last_hub_sync_ms.map(|t| now.saturating_sub(t) / 1000),
                    "hub_position": f.hub_position,
                    "events": n.ledger().len(),
                    "connections": n.connections(),
                    "unacked_records": n.unacked_own(),
                    "damage": n.damage_note(),
                })
            })
            .await;
        Json(value)
    }

    async fn metrics(
        State(rt): State<Arc<Runtime>>,
    ) -> ([(axum::http::HeaderName, &'static str); 1], String) {
        let text = rt.call(|n, now| metrics_text(n, now)).await;
        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
    }

    axum::Router::new()
        .route("/v1/check", get(check))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Html(RECEPTION_PAGE) }))
        .route("/v1/declarations", axum::routing::post(declare))
        .route("/v1/consents", axum::routing::post(consent))
        .layer(axum::extract::DefaultBodyLimit::max(CLINIC_BODY_MAX))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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

/// The node's counters in the Prometheus text format (no member data).
pub fn metrics_text<D: shikaku_log::storage::Directory>(n: &Node<D>, now_ms: u64) -> String {
    use std::fmt::Write as _;
    let c = n.counters();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let by: Vec<(String, u64)> = c
        .checks_by
        .iter()
        .map(|((code, online), count)| {
            let code = render::code_name(*code);
            let mode = if *online { "online" } else { "offline" };
            (format!("{{result=\"{code}\",mode=\"{mode}\"}}"), *count)
        })
        .collect();
    metric("shikaku_checks_total", "counter", "Checks answered, by result and mode.", by);
    let freshness = n.freshness(now_ms);
    let staleness = freshness.last_hub_sync_ms.map(|t| now_ms.saturating_sub(t) / 1000);
    metric(
        "shikaku_in_sync",
        "gauge",
        "1 while a session with the hub is in sync.",
        vec![(String::new(), u64::from(n.in_sync()))],
    );
    metric(
        "shikaku_ever_synced",
        "gauge",
        "1 once the node has completed a sync with its hub.",
        vec![(String::new(), u64::from(staleness.is_some()))],
    );
    metric(
        "shikaku_staleness_seconds",
        "gauge",
        "Seconds since the last completed hub sync (0 before the first).",
        vec![(String::new(), staleness.unwrap_or(0))],
    );
    metric(
        "shikaku_sync_unacked_records",
        "gauge",
        "This clinic's records (checks, declarations) not yet acknowledged by the hub: the upload lag.",
        vec![(String::new(), n.unacked_own())],
    );
    let damage = n.damage_note();
    metric(
        "shikaku_ledger_damaged_ranges",
        "gauge",
        "Damaged ranges in the ledger not yet repaired (answers carry the damage while > 0).",
        vec![(String::new(), damage.map_or(0, |d| u64::from(d.ranges)))],
    );
    metric(
        "shikaku_ledger_damaged_records",
        "gauge",
        "Records unreadable or missing in those ranges, waiting to be re-fetched from the hub.",
        vec![(String::new(), damage.map_or(0, |d| d.records))],
    );
    metric(
        "shikaku_hub_position",
        "gauge",
        "Hub log position of the last receipt kept.",
        vec![(String::new(), freshness.hub_position.unwrap_or(0))],
    );
    metric(
        "shikaku_events_held",
        "gauge",
        "Events in the ledger.",
        vec![(String::new(), n.ledger().len())],
    );
    metric(
        "shikaku_connections",
        "gauge",
        "Open sessions.",
        vec![(String::new(), n.connections() as u64)],
    );
    let refusals = c
        .refusals
        .iter()
        .map(|(reason, count)| (format!("{{reason=\"{reason}\"}}"), *count))
        .collect();
    metric(
        "shikaku_refusals_total",
        "counter",
        "Refused events, subscriptions and connections, by reason.",
        refusals,
    );
    for (name, help, value) in [
        (
            "shikaku_events_received_total",
            "Events stored that came from a peer.",
            c.events_received,
        ),
        ("shikaku_events_sent_total", "Events sent to peers.", c.events_sent),
        ("shikaku_receipts_total", "Receipts kept (clinic) or signed (hub).", c.receipts),
        (
            "shikaku_receipt_mismatches_total",
            "Complete receipts that disagreed with this clinic's set.",
            c.receipt_mismatches,
        ),
        ("shikaku_repairs_total", "Reconciliations started.", c.repairs),
        ("shikaku_repaired_events_total", "Events fetched by repair.", c.repaired_events),
        ("shikaku_connect_failures_total", "Failed attempts to reach the hub.", c.connect_failures),
        (
            "shikaku_protocol_errors_total",
            "Sessions closed for a protocol error.",
            c.protocol_errors,
        ),
    ] {
        metric(name, "counter", help, vec![(String::new(), value)]);
    }
    out
}

/// The path of a check API request with its parameters URL-encoded (a symbol may hold `&`,
/// `+`, `%`, `#` or kanji, none of which may go into a query string as they are).
pub fn check_path(params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    format!("/v1/check?{}", query.finish())
}

/// The check API path asking `query` (on `date`, in `format`, when given).
pub fn check_path_for(
    query: &shikaku_core::CheckQuery,
    date: Option<Date>,
    format: Option<&str>,
) -> String {
    let who = match query {
        shikaku_core::CheckQuery::Card(card) => ("card", card.to_string()),
        shikaku_core::CheckQuery::Member(key) => ("member", key.to_string()),
    };
    let date = date.map(|d| d.to_string());
    let mut params = vec![(who.0, who.1.as_str())];
    if let Some(date) = &date {
        params.push(("date", date));
    }
    if let Some(format) = format {
        params.push(("format", format));
    }
    check_path(&params)
}

/// `shikaku check --node URL`: asks a running clinic node.
pub fn check_remote(url: &str, args: &crate::CheckArgs, out: &mut dyn Write) -> Result<()> {
    if args.as_of.is_some() {
        bail!("--as-of is answered from a local ledger only (omit --node)");
    }
    let mut params = Vec::new();
    if let Some(card) = &args.card {
        params.push(("card", card.as_str()));
    }
    if let Some(member) = &args.member {
        params.push(("member", member.as_str()));
    }
    if let Some(date) = &args.date {
        params.push(("date", date.as_str()));
    }
    let body = http_get(url, &check_path(&params))?;
    let value: serde_json::Value =
        serde_json::from_str(&body).context("the node's answer is not JSON")?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value["answer"])?)?;
    } else {
        write!(out, "{}", value["text"].as_str().unwrap_or_default())?;
    }
    Ok(())
}

/// `shikaku consent --node URL`: records a consent or its withdrawal at a running clinic.
pub fn consent_remote(args: &crate::ConsentArgs, out: &mut dyn Write) -> Result<()> {
    let mut body = serde_json::Map::new();
    if let Some(card) = &args.card {
        body.insert("card".into(), card.clone().into());
    }
    if let Some(member) = &args.member {
        body.insert("member".into(), member.clone().into());
    }
    let consent = if args.withdraw { "withdrawn" } else { "given" };
    body.insert("consent".into(), consent.into());
    let body = serde_json::Value::Object(body).to_string();
    let (status, reply) = http_request(&args.node, "POST", "/v1/consents", Some(&body))?;
    if status != 201 {
        bail!("{}", status_error(&args.node, "/v1/consents", status, &reply));
    }
    let reply: serde_json::Value =
        serde_json::from_str(&reply).context("the node's reply is not JSON")?;
    let member = reply["member"].as_str().unwrap_or_default();
    let event = reply["event"].as_str().unwrap_or_default();
    let what = if args.withdraw { "consent withdrawn" } else { "consent given" };
    writeln!(out, "{what} for {member} (event {})", event.get(..12).unwrap_or(event))?;
    Ok(())
}

/// A progress bar on a terminal (redrawn in place), or a line every 10% elsewhere. Writing
/// through `&Progress` (refused-line reports) goes to the same output, so one writer serves
/// the bar and the report.
pub struct Progress<'a> {
    out: std::cell::RefCell<&'a mut dyn Write>,
    terminal: bool,
    total_bytes: Option<u64>,
    watch: crate::clock::Stopwatch,
    last_decile: std::cell::Cell<u64>,
}

impl<'a> Progress<'a> {
    /// A bar for a job of `total_bytes` (unknown for standard input).
    pub fn new(out: &'a mut dyn Write, terminal: bool, total_bytes: Option<u64>) -> Progress<'a> {
        Progress {
            out: std::cell::RefCell::new(out),
            terminal,
            total_bytes,
            watch: crate::clock::Stopwatch::start(),
            last_decile: std::cell::Cell::new(0),
        }
    }

    /// Shows the state after `bytes` of input and `events` handled.
    pub fn update(&self, bytes: u64, events: u64, done: bool) {
        let rate = events as f64 / self.watch.seconds().max(1e-3);
        let fraction = match self.total_bytes {
            Some(total) if total > 0 => (bytes as f64 / total as f64).min(1.0),
            _ => 0.0,
        };
        let line = if self.total_bytes.is_some() {
            let filled = (fraction * 30.0).round() as usize;
            format!(
                "[{}{}] {:>3.0}%  {events} events  {:.1}k events/s",
                "#".repeat(filled),
                "-".repeat(30 - filled),
                fraction * 100.0,
                rate / 1000.0
            )
        } else {
            format!("{events} events  {:.1}k events/s", rate / 1000.0)
        };
        let mut out = self.out.borrow_mut();
        if self.terminal {
            let _ = write!(out, "\r{line}");
            if done {
                let _ = writeln!(out);
            }
        } else {
            // A line per 10% (the final state once, however it is reached).
            let decile = (fraction * 10.0) as u64;
            let last = self.last_decile.get();
            if decile > last || (done && last < 10) {
                self.last_decile.set(if done { 10 } else { decile });
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
    }
}

impl Write for &Progress<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.borrow_mut().flush()
    }
}

/// `shikaku hub import`: imports an insurer roster or change stream (JSON Lines) into the hub's
/// ledger through the hub's own import path (namespaces served, insurer key registry), with a
/// progress bar on `err` (where refused lines are reported too). The hub must not be serving
/// (its ledger is locked).
pub fn hub_import(
    data_dir: &Path,
    file: &str,
    insurer_keys: InsurerKeys,
    err: &mut dyn Write,
    terminal: bool,
) -> Result<crate::ImportSummary> {
    let name = tls::load(&data_dir.join(tls::TLS_DIR))
        .map(|t| t.identity.name)
        .unwrap_or_else(|_| "hub".to_owned());
    let mut config = NodeConfig::new(Role::Hub, &name);
    config.insurer_keys = insurer_keys;
    // The input first: an unreadable one is refused before the data directory is touched.
    let (reader, total) = crate::open_input(file)?;
    let existed_before = data_dir.exists();
    let (mut node, lock) = open_node(data_dir, config)?;
    node.serve_held_insurers();
    let bar = Progress::new(err, terminal, total);
    let cell = std::cell::RefCell::new(&mut node);
    let summary = crate::import_stream(
        std::io::BufReader::new(reader),
        &mut &bar,
        &|e| cell.borrow().import_refusal(e),
        &mut |good| import_into(&mut cell.borrow_mut(), crate::clock::now_ms(), good),
        &mut |s, bytes| bar.update(bytes, s.handled(), false),
    );
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            let stored_nothing = node.ledger().is_empty();
            drop((node, lock));
            crate::remove_if_created_empty(data_dir, existed_before, stored_nothing);
            return Err(e);
        }
    };
    bar.update(total.unwrap_or(0), summary.handled(), true);
    Ok(summary)
}

/// Stores verified, screened insurer events at a hub, serving their insurers from now on;
/// returns how many were new.
fn import_into(n: &mut FileNode, now_ms: u64, good: &[shikaku_core::SignedEvent]) -> Result<u64> {
    for e in good {
        if let shikaku_core::Namespace::Insurer(i) = e.event().namespace {
            n.serve_insurer(i);
        }
    }
    Ok(n.import(now_ms, good).context("storing the batch")? as u64)
}

/// Lines per request of `hub import --hub` (each request at most [`IMPORT_BODY_MAX`]).
const IMPORT_CHUNK_LINES_REMOTE: usize = 20_000;

/// One import at a time per hub (`POST /v1/import`).
#[derive(Debug, Clone)]
struct ImportSlot(Arc<tokio::sync::Semaphore>);

/// `POST /v1/import` imports its body in pieces of whole lines of about this size.
const IMPORT_PIECE_BYTES: usize = 4 << 20;

/// The largest JSON Lines body `POST /v1/import` accepts.
pub const IMPORT_BODY_MAX: usize = 64 << 20;

/// `shikaku hub import --hub URL`: sends the file to a running hub's insurer API in chunks
/// (`POST /v1/import`), with the same progress bar and refused-line report as a local import;
/// clinics connected to the hub receive the new events live.
pub fn hub_import_remote(
    url: &str,
    file: &str,
    err: &mut dyn Write,
    terminal: bool,
) -> Result<crate::ImportSummary> {
    use std::io::BufRead as _;
    let (reader, total) = crate::open_input(file)?;
    let bar = Progress::new(err, terminal, total);
    let mut summary = crate::ImportSummary::default();
    let (mut bytes, mut first_line) = (0u64, 1u64);
    let mut lines = std::io::BufReader::new(reader).lines();
    loop {
        let mut chunk = String::new();
        let mut count = 0u64;
        for line in lines.by_ref() {
            let line = line.with_context(|| format!("reading {file}"))?;
            if chunk.len() + line.len() + 1 > IMPORT_BODY_MAX {
                bail!("line {} is longer than {IMPORT_BODY_MAX} bytes", first_line + count);
            }
            chunk.push_str(&line);
            chunk.push('\n');
            count += 1;
            if count as usize >= IMPORT_CHUNK_LINES_REMOTE || chunk.len() > IMPORT_BODY_MAX / 2 {
                break;
            }
        }
        if count == 0 {
            break;
        }
        bytes += chunk.len() as u64;
        let (status, body) = http_request(url, "POST", "/v1/import", Some(&chunk))?;
        if status != 200 {
            bail!("the hub refused the import: {}", status_error(url, "/v1/import", status, &body));
        }
        let reply: serde_json::Value =
            serde_json::from_str(&body).context("the hub's import reply is not JSON")?;
        let field = |name: &str| reply[name].as_u64().unwrap_or(0);
        summary.lines += field("lines");
        summary.imported += field("imported");
        summary.duplicates += field("duplicates");
        summary.rejected += field("rejected");
        for refusal in reply["refused"].as_array().into_iter().flatten() {
            let line = refusal["line"].as_u64().unwrap_or(0) + first_line - 1;
            let reason = refusal["reason"].as_str().unwrap_or_default();
            writeln!(&bar, "line {line}: {reason}")?;
        }
        first_line += count;
        bar.update(bytes, summary.handled(), false);
    }
    bar.update(total.unwrap_or(0), summary.handled(), true);
    Ok(summary)
}

/// A plain HTTP/1.1 GET of `path` on the node at `url` (`http://HOST:PORT`); the body of a 200
/// answer, else an error naming the status and the node's message.
pub fn http_get(url: &str, path: &str) -> Result<String> {
    let (status, body) = http_request(url, "GET", path, None)?;
    if status != 200 {
        bail!("{}", status_error(url, path, status, &body));
    }
    Ok(body)
}

/// What to tell a person about a non-success answer: the URL asked, the status, the server's
/// message (the `message` of a JSON error body, else its text), and for a 404 that does not
/// come from a shikaku API, that the address is probably not a shikaku node.
pub fn status_error(url: &str, path: &str, status: u16, body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = json
        .as_ref()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().chars().take(300).collect());
    let from_shikaku = json.as_ref().is_some_and(|v| v["error"].is_string());
    let target = format!("{}{path}", url.trim_end_matches('/'));
    match status {
        404 if !from_shikaku || json.as_ref().is_some_and(|v| v["error"] == "not_found") => format!(
            "{target} answered 404 Not Found: {url} is probably not a shikaku node's API (a clinic's `clinic serve --api` address, or a hub's `hub serve --api`){}",
            if message.is_empty() { String::new() } else { format!(" ({message})") }
        ),
        _ if message.is_empty() => format!("{target} answered {status}"),
        _ => format!("{target} answered {status}: {message}"),
    }
}

/// One HTTP/1.1 request (`body` sent as JSON) to the node at `url` (`http://HOST:PORT`);
/// returns the status and the body. Answers are capped at 64 MiB.
pub fn http_request(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let host = url
        .strip_prefix("http://")
        .with_context(|| format!("the node's address must be an http:// URL, got {url}"))?
        .trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host)
        .with_context(|| format!("connecting to the node at {host}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let head = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{CLIENT_HEADER}: shikaku-cli\r\n{head}Connection: close\r\n\r\n{body}"
    )?;
    let mut response = Vec::new();
    stream.take(64 << 20).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").context("the node sent no HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .context("the node's HTTP status line is malformed")?;
    Ok((status, body.to_owned()))
}

/// The reconciliation report of a running hub (clinic names from the certificates seen).
/// The ledger is read while holding the node; the report is computed after letting it go, so
/// sync is held up only for the read.
pub async fn hub_report(rt: &Runtime) -> Result<crate::reconcile::Report> {
    let (events, names, now) =
        rt.call(|n, now| (n.ledger().read_from(1, usize::MAX), n.peer_names().clone(), now)).await;
    let events = events?;
    tokio::task::spawn_blocking(move || crate::reconcile::compute(&events, &names, now))
        .await
        .context("computing the report")
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
        let body = tokio::task::spawn_blocking(move || crate::reconcile::render(&report, &format))
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
        body: axum::body::Body,
    ) -> Result<axum::Json<serde_json::Value>, ApiError> {
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
        let mut refused: Vec<serde_json::Value> = Vec::new();
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
            let (part, part_refused) = tokio::task::spawn_blocking(move || {
                let mut refused = Vec::new();
                let part = crate::import_stream(
                    piece.as_slice(),
                    &mut refused,
                    &|e| {
                        let e = e.clone();
                        rt2.call_blocking(move |n, _| n.import_refusal(&e))
                    },
                    &mut |good| {
                        let good = good.to_vec();
                        rt2.call_blocking(move |n, now| import_into(n, now, &good))
                    },
                    &mut |_, _| {},
                );
                (part, refused)
            })
            .await
            .map_err(ApiError::internal)?;
            let part = part.map_err(ApiError::internal)?;
            let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&part_refused)
                .lines()
                .filter_map(|l| l.strip_prefix("line ")?.split_once(": "))
                .map(|(n, reason)| {
                    let line = n.parse::<u64>().unwrap_or(0) + first_line - 1;
                    serde_json::json!({ "line": line, "reason": reason })
                })
                .collect();
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
        Ok(axum::Json(serde_json::json!({
            "lines": summary.lines,
            "imported": summary.imported,
            "duplicates": summary.duplicates,
            "rejected": summary.rejected,
            "refused": refused,
        })))
    }

    axum::Router::new()
        .route("/v1/import", axum::routing::post(import))
        .layer(axum::Extension(ImportSlot(Arc::new(tokio::sync::Semaphore::new(1)))))
        .route("/v1/reconcile", get(report))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(runtime)
}
