//! A hub and clinics on this machine, in this process: what `shikaku demo` and `shikaku bench
//! api` run. Each node has its own data directory (certificates from a local CA), its own
//! runtime on the shared tokio runtime and clock, and — for clinics — its HTTP API on loopback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use shikaku_core::InsurerNumber;
use shikaku_net::{tls, ClinicService, Clock, HubService, Runtime};
use shikaku_node::{Level, NodeConfig, Role};

/// The insurer keys of a generated world, as a registry.
pub fn keys_of(generated: &shikaku_gen::Generated) -> shikaku_node::data_dir::InsurerKeys {
    generated.insurers.iter().map(|(i, k)| (*i, [*k].into_iter().collect())).collect()
}

/// Creates a CA in `ca_dir` and certifies `hub` and each of `clinics` (directories under
/// `root` named after them).
pub fn certify(root: &Path, ca_dir: &Path, clinics: &[&str]) -> Result<()> {
    tls::ca_init(ca_dir)?;
    let issue = |role: Role, name: &str| -> Result<()> {
        let dir = root.join(name);
        let signer = shikaku_node::data_dir::node_identity(&dir, true)?
            .ok_or_else(|| anyhow::anyhow!("no node key in {}", dir.display()))?;
        tls::ca_issue(ca_dir, role, name, signer.node_id(), &dir.join(tls::TLS_DIR))
    };
    issue(Role::Hub, "hub")?;
    for name in clinics {
        issue(Role::Clinic, name)?;
    }
    Ok(())
}

/// Where and how the local nodes run: their parent directory, shared clock and log level.
pub struct Local<'a> {
    /// Parent of the nodes' data directories (`hub/`, one per clinic).
    pub root: &'a Path,
    /// The clock every node reads.
    pub clock: &'a Arc<Clock>,
    /// The nodes' log level.
    pub level: Level,
}

/// A running hub.
pub struct Hub {
    /// Its node.
    pub runtime: Arc<Runtime>,
    /// Its QUIC service (None while stopped).
    pub service: Option<HubService>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate and key.
    pub tls: tls::TlsFiles,
    _lock: std::fs::File,
}

/// Opens the hub in `root/hub`, imports `generated` through its import path and starts serving
/// on a loopback port. Call inside the tokio runtime's context.
pub fn start_hub(local: &Local<'_>, generated: &shikaku_gen::Generated) -> Result<Hub> {
    let (clock, level) = (local.clock, local.level);
    let dir = local.root.join("hub");
    let tls = shikaku_net::tls::load_for(&dir, Role::Hub)?;
    let mut config = NodeConfig::new(Role::Hub, "hub");
    config.insurers = generated.insurers.iter().map(|(i, _)| *i).collect();
    config.insurer_keys = keys_of(generated);
    let (mut node, lock) = shikaku_node::data_dir::open_node(&dir, config)?;
    for chunk in generated.events.chunks(8_192) {
        node.import(clock.now_ms(), chunk)?;
    }
    let runtime = Runtime::new(node, clock.clone(), level);
    let service = HubService::start(runtime.clone(), &tls, "127.0.0.1:0".parse()?)?;
    let addr = service.local_addr()?;
    Ok(Hub { runtime, service: Some(service), addr, tls, _lock: lock })
}

impl Hub {
    /// Closes every session and the endpoint (the node stays open: insurers can keep
    /// publishing into it); clinics see the hub unreachable.
    pub fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        self.runtime.stop();
        if let Some(service) = self.service.take() {
            rt.block_on(service.shutdown());
        }
    }

    /// Serves again on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.runtime.resume();
        self.service = Some(HubService::start(self.runtime.clone(), &self.tls, self.addr)?);
        Ok(())
    }
}

/// A running clinic with its HTTP API.
pub struct Clinic {
    /// Its name.
    pub name: String,
    /// Its node.
    pub runtime: Arc<Runtime>,
    /// Its sync service (None once shut down).
    pub service: Option<ClinicService>,
    /// Its API's base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The API server task.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    _lock: std::fs::File,
}

/// Opens the clinic in `root/name`, subscribed to `insurers`, syncing with the hub at `hub`,
/// with its API on a loopback port.
pub fn start_clinic(
    rt: &tokio::runtime::Runtime,
    local: &Local<'_>,
    name: &str,
    insurers: BTreeSet<InsurerNumber>,
    keys: shikaku_node::data_dir::InsurerKeys,
    hub: SocketAddr,
) -> Result<Clinic> {
    let (clock, level) = (local.clock, local.level);
    let dir = local.root.join(name);
    let tls_files = shikaku_net::tls::load_for(&dir, Role::Clinic)?;
    let mut config = NodeConfig::new(Role::Clinic, name);
    config.insurers = insurers;
    config.insurer_keys = keys;
    let (node, lock) = shikaku_node::data_dir::open_node(&dir, config)?;
    let runtime = Runtime::new(node, clock.clone(), level);
    let service = ClinicService::start(runtime.clone(), &tls_files, &[hub])?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    // Staff log in where the data directory holds staff accounts (the demo's clinics).
    let auth = Arc::new(crate::auth::ClinicAuth::open(
        &dir,
        true,
        crate::auth::IDLE_DEFAULT_MS,
        clock.clone(),
    )?);
    let served = runtime.clone();
    let server = tokio::spawn(async move {
        let options = crate::serve::ApiOptions::default();
        crate::clinic::serve_api_auth(listener, served, auth, &options).await
    });
    Ok(Clinic { name: name.to_owned(), runtime, service: Some(service), url, server, _lock: lock })
}

impl Clinic {
    /// Stops the API and the sync (receipts persisted).
    pub fn shutdown(&mut self, rt: &tokio::runtime::Runtime) {
        self.server.abort();
        if let Some(service) = self.service.take() {
            rt.block_on(service.shutdown());
        }
    }
}

/// Polls `done` every 50 ms until it holds, for at most `seconds`; returns the seconds waited.
pub fn wait_until(what: &str, seconds: f64, mut done: impl FnMut() -> bool) -> Result<f64> {
    let watch = shikaku_net::clock::Stopwatch::start();
    while !done() {
        if watch.seconds() > seconds {
            anyhow::bail!("timed out after {seconds} s waiting until {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(watch.seconds())
}
