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

/// `shikaku hub serve`: serves the insurers given plus every insurer in the ledger.
pub fn hub_serve(
    data_dir: &Path,
    listen: SocketAddr,
    insurers: &[InsurerNumber],
    insurer_keys: InsurerKeys,
    api: Option<SocketAddr>,
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
                Some(tokio::spawn(serve_hub_api(listener, service.runtime.clone())))
            }
            None => None,
        };
        out.flush()?;
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        writeln!(out, "shutting down")?;
        if let Some(server) = server {
            server.abort();
        }
        let runtime = service.runtime.clone();
        service.shutdown().await;
        let names = runtime.with_node(|n, _| n.peer_names().clone());
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
    let mut all = load_clinic_names(data_dir)?;
    all.extend(names.iter().map(|(k, v)| (*k, v.clone())));
    let text: String = all
        .iter()
        .map(|(id, name)| format!("{} {name}\n", shikaku_core::hex::encode(&id.0)))
        .collect();
    let path = data_dir.join(CLINIC_NAMES_FILE);
    let tmp = data_dir.join(format!("{CLINIC_NAMES_FILE}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// `shikaku clinic serve`: background sync with the hub and the local check API.
pub fn clinic_serve(
    data_dir: &Path,
    hub: SocketAddr,
    insurers: &[InsurerNumber],
    prefetch: &[shikaku_core::MemberKey],
    insurer_keys: InsurerKeys,
    api: SocketAddr,
    out: &mut dyn Write,
) -> Result<()> {
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
        let server = tokio::spawn(serve_api(listener, runtime.clone()));
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        writeln!(out, "shutting down")?;
        server.abort();
        service.shutdown().await;
        Ok(())
    })
}

/// `POST /v1/declarations`: a patient told "invalid" says they just changed insurer.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclarationBody {
    card: Option<String>,
    member: Option<String>,
    /// The insurer the patient says they joined, if known.
    declared_insurer: Option<String>,
    /// The date the new coverage started (YYYY-MM-DD).
    declared_start: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckParams {
    card: Option<String>,
    member: Option<String>,
    date: Option<String>,
    /// `json` (default): shikaku's answer; `fhir`: a FHIR R4 CoverageEligibilityResponse.
    format: Option<String>,
}

/// The card or member key of an API request (exactly one of them).
fn api_query(card: Option<&str>, member: Option<&str>) -> Result<shikaku_core::CheckQuery> {
    match (card, member) {
        (Some(_), None) | (None, Some(_)) => crate::parse_query(card, member),
        _ => bail!("give exactly one of card (a 64-hex card token) or member (INSURER:SYMBOL:NUMBER:BRANCH)"),
    }
}

/// Serves the clinic's local API on `listener` until the task is dropped.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
) -> std::io::Result<()> {
    axum::serve(listener, api_router(runtime)).await
}

/// The reception page (plain HTML and JavaScript, served from the binary): check a card or a
/// member key, a large clear result, a freshness banner that turns amber then red offline, and
/// the self-declaration flow.
pub const RECEPTION_PAGE: &str = include_str!("reception.html");

/// The clinic's local API.
pub fn api_router(runtime: Arc<Runtime>) -> axum::Router {
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Json;

    async fn check(
        State(rt): State<Arc<Runtime>>,
        Query(p): Query<CheckParams>,
    ) -> Result<axum::response::Response, (StatusCode, String)> {
        use axum::response::IntoResponse;
        let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}\n"));
        let fhir = match p.format.as_deref() {
            None | Some("json") => false,
            Some("fhir") => true,
            Some(other) => {
                return Err(bad(anyhow::anyhow!("format must be json or fhir, got {other:?}")))
            }
        };
        let query = api_query(p.card.as_deref(), p.member.as_deref()).map_err(bad)?;
        let date = match p.date.as_deref() {
            Some(text) => text.parse::<Date>().map_err(|e| bad(e.into()))?,
            None => Date::from_unix_ms_jst(rt.clock().now_ms()),
        };
        let (answer, now) = rt
            .with_node(|n, now| n.check(now, &query, date).map(|a| (a, now)))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
        if fhir {
            let resource = crate::fhir::coverage_eligibility_response(&answer, now);
            return Ok((
                [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
                resource.to_string(),
            )
                .into_response());
        }
        let text = render::answer(&answer);
        Ok(Json(serde_json::json!({ "answer": answer, "text": text })).into_response())
    }

    async fn declare(
        State(rt): State<Arc<Runtime>>,
        Json(d): Json<DeclarationBody>,
    ) -> Result<(StatusCode, Json<serde_json::Value>), (StatusCode, String)> {
        let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}\n"));
        let query = api_query(d.card.as_deref(), d.member.as_deref()).map_err(bad)?;
        let declared_start = d
            .declared_start
            .parse::<Date>()
            .map_err(|e| bad(anyhow::Error::from(e).context("declared_start")))?;
        let declared_insurer = match d.declared_insurer.as_deref() {
            Some(text) => Some(
                text.parse::<InsurerNumber>()
                    .map_err(|e| bad(anyhow::Error::from(e).context("declared_insurer")))?,
            ),
            None => None,
        };
        let body = shikaku_core::EventBody::SelfDeclarationRecorded {
            query,
            declared_insurer,
            declared_start,
        };
        let event = rt
            .with_node(|n, now| n.record(now, body))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
        Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "declaration": event.id().to_string() })),
        ))
    }

    async fn health(State(rt): State<Arc<Runtime>>) -> Json<serde_json::Value> {
        let value = rt.with_node(|n, now| {
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
            })
        });
        Json(value)
    }

    async fn metrics(
        State(rt): State<Arc<Runtime>>,
    ) -> ([(axum::http::HeaderName, &'static str); 1], String) {
        let text = rt.with_node(|n, now| metrics_text(n, now));
        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
    }

    axum::Router::new()
        .route("/v1/check", get(check))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Html(RECEPTION_PAGE) }))
        .route("/v1/declarations", axum::routing::post(declare))
        .with_state(runtime)
}

/// The node's counters in the Prometheus text format (no member data).
pub fn metrics_text(n: &FileNode, now_ms: u64) -> String {
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

/// `shikaku check --node URL`: asks a running clinic node.
pub fn check_remote(url: &str, args: &crate::CheckArgs, out: &mut dyn Write) -> Result<()> {
    let mut query = String::new();
    if let Some(card) = &args.card {
        query.push_str(&format!("card={card}"));
    }
    if let Some(member) = &args.member {
        query.push_str(&format!("member={}", member.replace(':', "%3A")));
    }
    if let Some(date) = &args.date {
        query.push_str(&format!("&date={date}"));
    }
    if args.as_of.is_some() {
        bail!("--as-of is answered from a local ledger only (omit --node)");
    }
    let body = http_get(url, &format!("/v1/check?{query}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&body).context("the node's answer is not JSON")?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value["answer"])?)?;
    } else {
        write!(out, "{}", value["text"].as_str().unwrap_or_default())?;
    }
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
    let (mut node, _lock) = open_node(data_dir, config)?;
    node.serve_held_insurers();
    let (reader, total) = crate::open_input(file)?;
    let bar = Progress::new(err, terminal, total);
    let node = std::cell::RefCell::new(&mut node);
    let summary = crate::import_stream(
        std::io::BufReader::new(reader),
        &mut &bar,
        &|e| node.borrow().import_refusal(e),
        &mut |good| import_into(&mut node.borrow_mut(), crate::clock::now_ms(), good),
        &mut |s, bytes| bar.update(bytes, s.handled(), false),
    )?;
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
            bail!("the hub refused the import ({status}): {}", body.trim());
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
        bail!("the node answered {status}: {}", body.trim());
    }
    Ok(body)
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
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{head}Connection: close\r\n\r\n{body}"
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
pub fn hub_report(rt: &Runtime) -> Result<crate::reconcile::Report> {
    let (events, names, now) =
        rt.with_node(|n, now| (n.ledger().read_from(1, usize::MAX), n.peer_names().clone(), now));
    Ok(crate::reconcile::compute(&events?, &names, now))
}

/// Serves the hub's insurer API on `listener` until the task is dropped.
pub async fn serve_hub_api(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
) -> std::io::Result<()> {
    axum::serve(listener, hub_router(runtime)).await
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
        let rt2 = rt.clone();
        let body = tokio::task::spawn_blocking(move || {
            let report = hub_report(&rt2)?;
            crate::reconcile::render(&report, &format)
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")))?;
        Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
    }

    async fn health(State(rt): State<Arc<Runtime>>) -> axum::Json<serde_json::Value> {
        axum::Json(rt.with_node(|n, _| {
            serde_json::json!({
                "role": n.role().name(),
                "name": n.config().name,
                "events": n.ledger().len(),
                "head": n.ledger().head(),
                "connections": n.connections(),
                "insurers": n.config().insurers.len(),
            })
        }))
    }

    async fn metrics(
        State(rt): State<Arc<Runtime>>,
    ) -> ([(axum::http::HeaderName, &'static str); 1], String) {
        let text = rt.with_node(|n, now| metrics_text(n, now));
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
    }

    async fn import(
        State(rt): State<Arc<Runtime>>,
        body: String,
    ) -> Result<axum::Json<serde_json::Value>, (StatusCode, String)> {
        if rt.with_node(|n, _| n.config().insurer_keys.is_empty()) {
            return Err((
                StatusCode::FORBIDDEN,
                "this hub has no insurer key registry (hub serve --insurer-keys): importing over the network needs one\n".into(),
            ));
        }
        let result = tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
            let mut refused = Vec::new();
            let summary = crate::import_stream(
                body.as_bytes(),
                &mut refused,
                &|e| rt.with_node(|n, _| n.import_refusal(e)),
                &mut |good| rt.with_node(|n, now| import_into(n, now, good)),
                &mut |_, _| {},
            )?;
            let refused: Vec<serde_json::Value> = String::from_utf8_lossy(&refused)
                .lines()
                .filter_map(|l| l.strip_prefix("line ")?.split_once(": "))
                .map(|(n, reason)| {
                    serde_json::json!({ "line": n.parse::<u64>().unwrap_or(0), "reason": reason })
                })
                .collect();
            Ok(serde_json::json!({
                "lines": summary.lines,
                "imported": summary.imported,
                "duplicates": summary.duplicates,
                "rejected": summary.rejected,
                "refused": refused,
            }))
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")))?;
        Ok(axum::Json(result))
    }

    axum::Router::new()
        .route("/v1/import", axum::routing::post(import))
        .layer(axum::extract::DefaultBodyLimit::max(IMPORT_BODY_MAX))
        .route("/v1/reconcile", get(report))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(runtime)
}
