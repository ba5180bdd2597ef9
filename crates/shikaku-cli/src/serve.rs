//! Running nodes from the command line: `shikaku ca init|issue`, `shikaku hub serve`,
//! `shikaku clinic serve` (with its local check API), and `shikaku check --node URL`.
//!
//! The clinic's local API (loopback by default) is plain HTTP/1.1 JSON, plus the reception page
//! at `/`:
//! `GET /v1/check?member=KEY|card=TOKEN&date=YYYY-MM-DD` answers from the clinic's ledger with
//! freshness and records the check; `GET /v1/health` reports sync state.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use shikaku_core::InsurerNumber;
use shikaku_net::jetstream::{self, NatsOptions};
use shikaku_net::runtime::log_level_from_env;
use shikaku_net::{tls, ClinicService, Clock, HubService, Runtime};
use shikaku_node::{NodeConfig, Role};

use crate::store::node_identity;
use shikaku_api::client::{check_path, http_get, http_request, post_json, status_error};
use shikaku_api::clinic::serve_api_auth;
use shikaku_api::hub::{import_into, IMPORT_BODY_MAX};
use shikaku_api::serve::{serve_guarded, ApiOptions};
use shikaku_api::types::{CheckResponse, ConsentRequest, ConsentResponse, ImportResponse};

pub use shikaku_node::data_dir::{
    load_clinic_names, open_node, save_clinic_names, InsurerKeys, CLINIC_NAMES_FILE,
};

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
pub use shikaku_net::tls::load_for as load_tls;

/// Refuses an HTTP API address beyond loopback without TLS: member data would cross the
/// network in the clear. (Who may log in is checked when the API starts.)
pub fn check_api_address(what: &str, addr: SocketAddr, tls: bool) -> Result<()> {
    if addr.ip().is_loopback() || tls {
        return Ok(());
    }
    bail!(
        "the {what} would listen on {addr}, beyond this machine, without TLS: bind a loopback address (127.0.0.1 or [::1]), or serve HTTPS with --api-cert FILE --api-key FILE (`shikaku ca issue-api` makes them from the deployment CA)"
    );
}

/// `shikaku hub account …`.
pub fn account_command(
    data_dir: &Path,
    command: &crate::AccountCommand,
    out: &mut dyn Write,
) -> Result<()> {
    use shikaku_api::insurer_auth::AccountsFile;
    shikaku_node::data_dir::create_private_dir(data_dir)?;
    let mut file = AccountsFile::load(data_dir)?;
    match command {
        crate::AccountCommand::Add { name, insurers } => {
            let insurers = crate::parse_insurers(insurers)?;
            let token = file.add(name, &insurers, shikaku_net::clock::now_ms())?;
            file.save(data_dir)?;
            writeln!(
                out,
                "added insurer account {name} for {}; its API token (shown once, keep it in a 0600 file):\n{token}",
                insurers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )?;
        }
        crate::AccountCommand::Revoke { name } => {
            file.revoke(name)?;
            file.save(data_dir)?;
            writeln!(out, "revoked {name}'s token")?;
        }
        crate::AccountCommand::List => {
            if file.accounts.is_empty() {
                writeln!(out, "no insurer accounts: the insurer API answers on loopback only, for every insurer")?;
            }
            for a in &file.accounts {
                writeln!(
                    out,
                    "{:<20} {:<30} {}",
                    a.name,
                    a.insurers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                    if a.revoked { "revoked" } else { "active" }
                )?;
            }
        }
    }
    Ok(())
}

/// `shikaku member accesses` on a stopped hub's data directory.
pub fn member_accesses_offline(
    data_dir: &Path,
    key: &shikaku_core::MemberKey,
    from: Option<shikaku_core::Date>,
    to: Option<shikaku_core::Date>,
    format: &str,
    err: &mut dyn Write,
) -> Result<String> {
    let store = crate::store::Store::open_existing(data_dir)?;
    let events = store.log().read_from(1, usize::MAX)?;
    let names = load_clinic_names(data_dir).unwrap_or_else(|e| {
        let _ = writeln!(err, "warning: {e:#}; clinics are shown by node id");
        Default::default()
    });
    let keys_path = data_dir.join("log").join(shikaku_node::KEYS_FILE);
    let keys = match std::fs::read(&keys_path) {
        Err(_) => shikaku_core::keystore::KeyStore::default(),
        Ok(bytes) => shikaku_core::keystore::KeyStore::decode_file(&bytes)
            .with_context(|| format!("reading {}", keys_path.display()))?,
    };
    let (report, known_as) = shikaku_api::hub::report_and_names(
        &events,
        &names,
        &keys,
        shikaku_net::clock::now_ms(),
        Some(key),
    );
    let r =
        shikaku_reconcile::access::member_accesses(&report, &key.to_string(), &known_as, from, to);
    Ok(match format {
        "html" => shikaku_reconcile::access::accesses_html(&r),
        "json" => serde_json::to_string_pretty(&r)? + "\n",
        _ => shikaku_reconcile::access::accesses_text(&r),
    })
}

/// `shikaku clinic staff …`.
pub fn staff_command(
    data_dir: &Path,
    command: &crate::StaffCommand,
    out: &mut dyn Write,
) -> Result<()> {
    use shikaku_api::staff::{new_password, StaffFile, StaffRole};
    let read_password = |from_stdin: bool| -> Result<(String, bool)> {
        if !from_stdin {
            return Ok((new_password()?, true));
        }
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        Ok((line.trim_end_matches(['\r', '\n']).to_owned(), false))
    };
    let mut file = StaffFile::load(data_dir)?;
    let now = shikaku_net::clock::now_ms();
    match command {
        crate::StaffCommand::Add { name, roles, password_stdin } => {
            let roles = roles
                .iter()
                .map(|r| r.parse::<StaffRole>().map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?;
            let (password, generated) = read_password(*password_stdin)?;
            let account = file.add(name, &roles, &password, now)?.clone();
            file.save(data_dir)?;
            writeln!(
                out,
                "added staff account {name} ({}), id {}",
                account.roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(", "),
                account.id
            )?;
            if generated {
                writeln!(out, "password (shown once; hand it over in person): {password}")?;
            }
        }
        crate::StaffCommand::Reset { name, password_stdin } => {
            let (password, generated) = read_password(*password_stdin)?;
            file.reset(name, &password, now)?;
            file.save(data_dir)?;
            writeln!(out, "new password set for {name}; its open sessions have ended")?;
            if generated {
                writeln!(out, "password (shown once; hand it over in person): {password}")?;
            }
        }
        crate::StaffCommand::Disable { name } => {
            file.disable(name)?;
            file.save(data_dir)?;
            writeln!(out, "disabled {name}: it cannot log in, and its open sessions have ended")?;
        }
        crate::StaffCommand::List => {
            if file.accounts.is_empty() {
                writeln!(
                    out,
                    "no staff accounts: the check API runs in the loopback no-login mode"
                )?;
            }
            for a in &file.accounts {
                writeln!(
                    out,
                    "{:<20} {}  {:<17} {}",
                    a.name,
                    a.id,
                    a.roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(","),
                    if a.disabled { "disabled" } else { "active" }
                )?;
            }
        }
    }
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

/// What `hub serve` serves from: its own ledger, or a shared stream it follows.
#[derive(Debug, Clone)]
pub enum HubStore {
    /// The embedded log in the data directory (the default).
    Embedded,
    /// A front-end over the deployment's JetStream stream (its ledger in the data directory
    /// is a rebuildable copy), refusing a stream with fewer replicas than given.
    Stream(NatsOptions, usize),
}

/// `shikaku hub serve`: serves the insurers given plus every insurer in the ledger.
#[allow(clippy::too_many_arguments)]
pub fn hub_serve(
    data_dir: &Path,
    listen: SocketAddr,
    insurers: &[InsurerNumber],
    insurer_keys: InsurerKeys,
    api: Option<SocketAddr>,
    options: &ApiOptions,
    store: HubStore,
    out: &mut dyn Write,
) -> Result<()> {
    let tls_files = load_tls(data_dir, Role::Hub)?;
    let mut config = NodeConfig::new(Role::Hub, &tls_files.identity.name);
    config.insurers = insurers.iter().copied().collect();
    config.insurer_keys = insurer_keys;
    config.follows_stream = matches!(store, HubStore::Stream(..));
    let rt = runtime()?;
    // The stream first: a wrong configuration or an unreachable cluster is refused before the
    // ledger is opened or a port bound.
    let stream = match &store {
        HubStore::Embedded => None,
        HubStore::Stream(nats, replicas_min) => {
            let mut nats = nats.clone();
            nats.name = format!("shikaku hub {}", tls_files.identity.name);
            Some(rt.block_on(async {
                let client = jetstream::connect(&nats).await?;
                let (stream, identity) = jetstream::open_stream(&client, *replicas_min).await?;
                anyhow::Ok((client, stream, identity, nats.servers()))
            })?)
        }
    };
    let (mut node, _lock) = open_node(data_dir, config)?;
    node.serve_held_insurers();
    let served = node.config().insurers.len();
    let events = node.ledger().len();
    rt.block_on(async {
        let runtime = Runtime::new(node, Clock::wall(), log_level_from_env());
        let front_end = match stream {
            Some((client, stream, identity, servers)) => {
                let name = identity.name.clone();
                let front_end =
                    jetstream::FrontEnd::start(runtime.clone(), &client, stream, identity).await?;
                let applied = runtime.call(|n, _| n.stream_applied()).await;
                writeln!(
                    out,
                    "following stream {name} at {servers} (applied up to sequence {applied})"
                )?;
                Some((front_end, client))
            }
            None => None,
        };
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
                let auth = std::sync::Arc::new(shikaku_api::insurer_auth::HubAuth::open(
                    data_dir,
                    api.ip().is_loopback(),
                    service.runtime.clock().clone(),
                )?);
                let router = shikaku_api::hub::hub_router_with(service.runtime.clone(), auth);
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
        if let Some((front_end, client)) = front_end {
            front_end.stop();
            runtime.call(|n, _| n.write_stream_cursor_if_changed()).await?;
            // Publications still queued are flushed; nothing acknowledged depends on it.
            let _ = client.drain().await;
        }
        let names = runtime.call(|n, _| n.peer_names().clone()).await;
        save_clinic_names(data_dir, &names)?;
        Ok(())
    })
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

/// The clinic's check API as `clinic serve` runs it.
#[derive(Debug, Clone)]
pub struct ClinicApi {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Limits and TLS.
    pub options: ApiOptions,
    /// Idle time after which a staff session ends.
    pub session_idle_ms: u64,
}

/// `shikaku clinic serve`: background sync with the hub, the local check API and, with
/// `ovs`, the folder interface.
pub fn clinic_serve(
    data_dir: &Path,
    hubs: &[SocketAddr],
    replicated: Replicated,
    api: &ClinicApi,
    ovs: Option<shikaku_api::ovs::OvsOptions>,
    out: &mut dyn Write,
) -> Result<()> {
    let ClinicApi { addr: api, options, session_idle_ms } = api;
    let (api, session_idle_ms) = (*api, *session_idle_ms);
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
        let clock = Clock::wall();
        let auth = std::sync::Arc::new(shikaku_api::auth::ClinicAuth::open(
            data_dir,
            api.ip().is_loopback(),
            session_idle_ms,
            clock.clone(),
        )?);
        let runtime = Runtime::new(node, clock, log_level_from_env());
        let service = ClinicService::start(runtime.clone(), &tls_files, hubs)?;
        let listener = tokio::net::TcpListener::bind(api)
            .await
            .with_context(|| format!("binding the check API on {api}"))?;
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let login = match auth.mode() {
            shikaku_api::auth::LoginMode::Required => format!(
                "staff log in ({} accounts; sessions end after {} s idle)",
                auth.staff().accounts.len(),
                session_idle_ms / 1000
            ),
            shikaku_api::auth::LoginMode::Loopback => {
                "loopback no-login mode (no staff accounts)".to_owned()
            }
        };
        let folder = match &ovs {
            Some(options) => {
                Some(shikaku_api::ovs::OvsFolder::start(runtime.clone(), options.clone())?)
            }
            None => None,
        };
        writeln!(
            out,
            "clinic {} syncing with hub {}; {login}; check API on {scheme}://{}",
            tls_files.identity.name,
            hubs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            listener.local_addr()?
        )?;
        if let (Some(options), Some(folder)) = (&ovs, &folder) {
            let recovered = folder.stats.recovered.load(std::sync::atomic::Ordering::Relaxed);
            writeln!(
                out,
                "folder interface: requests in {}, answers in {}, refused requests in {}{}",
                options.dir.join("req").display(),
                options.dir.join("res").display(),
                options.dir.join("err").display(),
                if recovered > 0 {
                    format!(" ({recovered} answered before a stop finished now)")
                } else {
                    String::new()
                }
            )?;
        }
        out.flush()?;
        let server = {
            let (runtime, options) = (runtime.clone(), options.clone());
            tokio::spawn(async move { serve_api_auth(listener, runtime, auth, &options).await })
        };
        let signal = shutdown_signal().await?;
        writeln!(out, "shutting down ({signal})")?;
        out.flush()?;
        server.abort();
        if let Some(folder) = folder {
            folder.shutdown().await;
        }
        service.shutdown().await;
        Ok(())
    })
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
    let reply: CheckResponse<serde_json::Value> =
        serde_json::from_str(&body).context("the node's answer is not a check answer")?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reply.answer)?)?;
    } else {
        write!(out, "{}", reply.text)?;
    }
    Ok(())
}

/// `shikaku consent --node URL`: records a consent or its withdrawal at a running clinic.
pub fn consent_remote(args: &crate::ConsentArgs, out: &mut dyn Write) -> Result<()> {
    let request = ConsentRequest {
        card: args.card.clone(),
        member: args.member.clone(),
        consent: if args.withdraw { "withdrawn" } else { "given" }.to_owned(),
    };
    let reply: ConsentResponse = post_json(&args.node, "/v1/consents", &request, 201)?;
    let (member, event) = (reply.member.as_str(), reply.event.as_str());
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
    key_store: Option<&Path>,
    err: &mut dyn Write,
    terminal: bool,
) -> Result<crate::ImportSummary> {
    let key_store = key_store
        .map(|path| -> Result<shikaku_core::keystore::KeyStore> {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            shikaku_core::keystore::KeyStore::decode_file(&bytes)
                .with_context(|| format!("{} is not a usable key store", path.display()))
        })
        .transpose()?;
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
        &mut |refused| Ok(writeln!(&bar, "{refused}")?),
        &mut |events| events.iter().map(|e| cell.borrow().import_refusal(e)).collect(),
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
    if let Some(store) = &key_store {
        let (keys, wraps) = node.import_keys(store)?;
        writeln!(&bar, "key store: {keys} data keys and {wraps} wraps added")?;
    }
    // The node snapshot (and index checkpoint) `hub serve` starts from. Derived: failing to
    // write it (a full disk) loses nothing stored, the next start folds the ledger instead.
    if let Err(e) = node.write_snapshot_if_changed(crate::clock::now_ms()) {
        writeln!(&bar, "warning: every event is stored, but the node snapshot could not be written ({e}); the next start folds the ledger instead")?;
    }
    Ok(summary)
}

/// Lines per request of `hub import --hub` (each request at most [`IMPORT_BODY_MAX`]).
const IMPORT_CHUNK_LINES_REMOTE: usize = 20_000;

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
        let reply: ImportResponse = serde_json::from_str(&body)
            .context("the hub's import reply is not an import answer")?;
        summary.lines += reply.lines;
        summary.imported += reply.imported;
        summary.duplicates += reply.duplicates;
        summary.rejected += reply.rejected;
        for refused in reply.refused {
            // Numbered within the request: renumbered within the file.
            writeln!(&bar, "{}", refused.in_input_from(first_line))?;
        }
        first_line += count;
        bar.update(bytes, summary.handled(), false);
    }
    bar.update(total.unwrap_or(0), summary.handled(), true);
    Ok(summary)
}

/// `shikaku hub stream init`: creates the deployment's stream (or checks the one there).
pub fn hub_stream_init(nats: &NatsOptions, replicas: usize, out: &mut dyn Write) -> Result<()> {
    let rt = runtime()?;
    let report = rt.block_on(async {
        let client = jetstream::connect(nats).await?;
        jetstream::init_stream(&client, replicas).await
    })?;
    writeln!(
        out,
        "stream {} {} on nats-server {} at {}: {} replicas, {} events, subjects {}",
        jetstream::STREAM_NAME,
        if report.created { "created" } else { "exists and is configured correctly" },
        report.server,
        nats.servers(),
        report.replicas,
        report.messages,
        jetstream::STREAM_SUBJECTS
    )?;
    Ok(())
}

/// `shikaku hub import --store nats://…`: verifies and screens the file as a local import
/// does, then publishes the events into the deployment's stream (pipelined; every front-end
/// stores them as the stream delivers them). The summary's "imported" counts events the
/// stream stored now, "duplicates" those it already held. A failure says how many events are
/// durable; running the same import again resumes without duplicates.
pub fn hub_import_stream(
    nats: &NatsOptions,
    file: &str,
    insurer_keys: InsurerKeys,
    err: &mut dyn Write,
    terminal: bool,
) -> Result<crate::ImportSummary> {
    let (reader, total) = crate::open_input(file)?;
    let rt = runtime()?;
    let publisher = rt.block_on(async {
        let client = jetstream::connect(nats).await?;
        jetstream::open_stream(&client, 1).await?;
        anyhow::Ok(jetstream::Publisher::new(&client))
    })?;
    let bar = Progress::new(err, terminal, total);
    let mut durable = 0u64;
    let summary = crate::import_stream(
        std::io::BufReader::new(reader),
        &mut |refused| Ok(writeln!(&bar, "{refused}")?),
        &mut |events| {
            events.iter().map(|e| shikaku_node::node::import_refusal(&insurer_keys, e)).collect()
        },
        &mut |good| match rt.block_on(publisher.publish(good)) {
            Ok(published) => {
                durable += good.len() as u64;
                Ok(published.new)
            }
            Err(failure) => {
                durable += failure.durable as u64;
                Err(anyhow::anyhow!(
                    "{durable} events of this import are durable in the stream; the rest is not: {} (run the same import again to resume: events the stream holds are not stored twice)",
                    failure.error
                ))
            }
        },
        &mut |s, bytes| bar.update(bytes, s.handled(), false),
    )?;
    bar.update(total.unwrap_or(0), summary.handled(), true);
    Ok(summary)
}
