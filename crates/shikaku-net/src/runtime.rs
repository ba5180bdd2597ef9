//! The runtime: tokio tasks that move bytes between quinn streams and the sans-IO
//! [`shikaku_node::Node`], tick it, and read the clock for it.
//!
//! Per connection: one bidirectional stream carries the session. A reader task splits frames
//! (refusing oversized ones before buffering), verifies event signatures on blocking threads —
//! up to [`VERIFY_PIPELINE`] frames in parallel, applied in order — and hands them to the node;
//! a writer task pulls frames from the node (`poll_transmit`) and writes them, waiting on a
//! per-connection `Notify` when there is nothing to send. Backpressure: the writer awaits QUIC
//! flow control, and the node produces pumped frames only when asked.
//!
//! The node lives on its own thread ([`Runtime::new`] starts it): connections, HTTP handlers
//! and timers send it commands through one bounded channel ([`COMMANDS_MAX`]) and await the
//! reply ([`Runtime::call`], [`Runtime::check`]), so no fsync and no ledger scan ever runs on
//! a tokio worker. Checks that are queued together are answered and recorded with one durable
//! write (group commit). Backpressure on a session is a wake-up from its writer, not polling.
//!
//! Invariant: this module decides nothing about sync — every decision is the node's.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use shikaku_core::keystore::Presented;
use shikaku_core::{Answer, CheckQuery, Date, StaffId};
use shikaku_log::fs::FileDirectory;
use shikaku_node::{prepare, ConnId, Level, Node, NodeError, Output, PeerIdentity, Role};
use shikaku_node::{ConsentAtCheck, PresentedAnswer, PresentedCheck};
use shikaku_protocol::wire::{ErrorCode, FrameSplitter};
use tokio::sync::Notify;

pub use crate::clock::Clock;

/// The node type the runtime drives: a ledger on real files.
pub type FileNode = Node<FileDirectory>;

/// Connections a hub holds at most; further ones are refused at the QUIC level.
pub const CONNECTIONS_MAX: usize = 16_384;

/// Frames being verified at once per connection.
pub const VERIFY_PIPELINE: usize = 3;

#[derive(Debug)]
struct ConnEntry {
    notify: Arc<Notify>,
    /// Woken when the writer has taken a frame: the node may want input again.
    readable: Arc<Notify>,
    closing: Option<(ErrorCode, String)>,
}

/// Commands queued for the node thread at most; senders wait beyond it.
pub const COMMANDS_MAX: usize = 1024;

/// Checks answered and recorded with one durable write at most.
pub const CHECKS_PER_COMMIT_MAX: usize = 256;

/// A reply, delivered once the node's outputs of its batch have been acted on (so a caller
/// that sees the reply also sees the closes and wake-ups its command caused).
type Deliver = Box<dyn FnOnce() + Send>;
type Job = Box<dyn FnOnce(&mut FileNode, u64) -> Deliver + Send>;
type CheckReply = tokio::sync::oneshot::Sender<Result<(PresentedAnswer, u64), Arc<NodeError>>>;

/// A front-end node's `Output::Publish`, for the task that talks to the shared stream.
#[derive(Debug)]
pub struct PublishJob {
    /// The node's token for [`shikaku_node::Node::handle_published`].
    pub token: u64,
    /// The events.
    pub events: Vec<shikaku_core::SignedEvent>,
}

/// `f` as a node command whose result goes to `deliver` (after the batch's outputs).
fn job<R: Send + 'static>(
    f: impl FnOnce(&mut FileNode, u64) -> R + Send + 'static,
    deliver: impl FnOnce(R) + Send + 'static,
) -> Job {
    Box::new(move |node, now| {
        let result = f(node, now);
        Box::new(move || deliver(result))
    })
}

enum Command {
    Run(Job),
    Check { check: PresentedCheck, reply: CheckReply },
}

/// Bytes moved by a runtime's connections.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Session frame bytes written.
    pub frame_bytes_sent: AtomicU64,
    /// Session stream bytes read.
    pub frame_bytes_received: AtomicU64,
    /// UDP payload bytes sent (QUIC and TLS overhead included), added when a connection ends.
    pub udp_bytes_sent: AtomicU64,
    /// UDP payload bytes received, added when a connection ends.
    pub udp_bytes_received: AtomicU64,
}

impl NetStats {
    /// (frame bytes sent, received, UDP bytes sent, received).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.frame_bytes_sent.load(Ordering::Relaxed),
            self.frame_bytes_received.load(Ordering::Relaxed),
            self.udp_bytes_sent.load(Ordering::Relaxed),
            self.udp_bytes_received.load(Ordering::Relaxed),
        )
    }
}

/// A node on its own thread, and what its connections' tasks share.
pub struct Runtime {
    /// Bytes moved.
    pub stats: NetStats,
    /// Taken by the node thread for each batch of commands, and by [`Runtime::with_node`]
    /// (tools and tests); never by a serving task.
    node: Arc<Mutex<FileNode>>,
    commands: tokio::sync::mpsc::Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    conns: Mutex<HashMap<ConnId, ConnEntry>>,
    next_conn: AtomicU64,
    clock: Arc<Clock>,
    log_level: Level,
    stopping: AtomicBool,
    /// Lines logged, for tests (kept only when `keep_log` is set).
    kept_log: Mutex<Option<Vec<String>>>,
    /// Front-end: the shared stream's publisher task.
    publisher: Mutex<Option<(tokio::sync::mpsc::Sender<PublishJob>, crate::jetstream::Publisher)>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The log level from `SHIKAKU_LOG` (`warn`, `info`, `debug`; default `info`).
pub fn log_level_from_env() -> Level {
    match std::env::var("SHIKAKU_LOG").as_deref() {
        Ok("warn") => Level::Warn,
        Ok("debug") => Level::Debug,
        Ok("off") => Level::Warn,
        _ => Level::Info,
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The channel closes with `commands`; the node thread then ends and drops the node
        // (and its ledger). Wait for it, unless this is that thread.
        let (closed, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(thread) = lock(&self.thread).take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Runtime {
    /// Starts the node's thread.
    pub fn new(node: FileNode, clock: Arc<Clock>, log_level: Level) -> Arc<Runtime> {
        let (commands, receiver) = tokio::sync::mpsc::channel(COMMANDS_MAX);
        let name = format!("shikaku-node-{}", node.config().name);
        let runtime = Arc::new(Runtime {
            stats: NetStats::default(),
            node: Arc::new(Mutex::new(node)),
            commands,
            thread: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            clock,
            log_level,
            stopping: AtomicBool::new(false),
            kept_log: Mutex::new(None),
            publisher: Mutex::new(None),
        });
        let (node, weak) = (runtime.node.clone(), Arc::downgrade(&runtime));
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || node_thread(node, receiver, weak))
        {
            Ok(thread) => *lock(&runtime.thread) = Some(thread),
            // Without a thread, commands are never answered: say so where it shows.
            Err(e) => tracing::error!("could not start the node thread: {e}"),
        }
        runtime
    }

    /// Front-end: where the node's publications go (the shared stream's publisher task),
    /// and the publisher itself (for imports over the insurer API).
    pub fn set_publisher(
        &self,
        jobs: tokio::sync::mpsc::Sender<PublishJob>,
        publisher: crate::jetstream::Publisher,
    ) {
        *lock(&self.publisher) = Some((jobs, publisher));
    }

    /// Front-end: the shared stream's publisher (`None` for an embedded hub).
    pub fn stream_publisher(&self) -> Option<crate::jetstream::Publisher> {
        lock(&self.publisher).as_ref().map(|(_, p)| p.clone())
    }

    /// Runs `f` on the node thread and returns its result; what the node produced (log
    /// lines, closes, wake-ups) is acted on there.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut FileNode, u64) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = job(f, move |result| {
            let _ = tx.send(result);
        });
        if self.commands.send(Command::Run(job)).await.is_err() {
            panic!("the node thread has ended");
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => panic!("a node command panicked"),
        }
    }

    /// [`Runtime::call`] from a thread that is not a tokio worker (a `spawn_blocking` task,
    /// a tool): blocks until the node thread has run `f`.
    pub fn call_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut FileNode, u64) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job = job(f, move |result| {
            let _ = tx.send(result);
        });
        if self.commands.blocking_send(Command::Run(job)).is_err() {
            panic!("the node thread has ended");
        }
        match rx.recv() {
            Ok(result) => result,
            Err(_) => panic!("a node command panicked"),
        }
    }

    /// Answers a check on the node thread: checks queued together are recorded with one
    /// durable write. Returns the answer and the time it was given.
    pub async fn check(
        &self,
        query: CheckQuery,
        date: Date,
    ) -> Result<(Answer, u64), Arc<NodeError>> {
        let presented = match query {
            CheckQuery::Card(token) => Presented::Card(token),
            CheckQuery::Member(key) => Presented::KeyWithoutBirth(key),
        };
        self.check_presented(presented, date, None).await.map(|(p, now)| (p.answer, now))
    }

    /// Answers a check of what a patient presented (a card, or a member key and birth date),
    /// with what could be said about the member's identity; checks that arrive together are
    /// recorded with one durable write.
    /// `operator` is the logged-in staff member who asked, recorded with the check.
    pub async fn check_presented(
        &self,
        presented: Presented,
        date: Date,
        operator: Option<StaffId>,
    ) -> Result<(PresentedAnswer, u64), Arc<NodeError>> {
        let consent = ConsentAtCheck::AsRecorded;
        self.check_presented_with(PresentedCheck { presented, date, operator, consent }).await
    }

    /// [`Runtime::check_presented`] with what the patient said about consent.
    pub async fn check_presented_with(
        &self,
        check: PresentedCheck,
    ) -> Result<(PresentedAnswer, u64), Arc<NodeError>> {
        let PresentedCheck { presented, date, operator, consent } = check;
        // Argon2id (tens of milliseconds by design) runs on a blocking thread, so the node's
        // thread keeps answering other checks and syncing meanwhile.
        let presented = match presented {
            Presented::Key { key, birth } => {
                let insurer = key.insurer;
                let params = self.call(move |n, _| n.key_store().key_params(insurer)).await;
                let derive_key = key.clone();
                let secrets = tokio::task::spawn_blocking(move || {
                    params
                        .into_iter()
                        .filter_map(|p| {
                            shikaku_core::seal::key_secrets(&derive_key, birth, p)
                                .ok()
                                .map(|s| (p, s))
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                Presented::KeyDerived { key, birth, secrets }
            }
            other => other,
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let check = PresentedCheck { presented, date, operator, consent };
        if self.commands.send(Command::Check { check, reply }).await.is_err() {
            panic!("the node thread has ended");
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => panic!("a node command panicked"),
        }
    }

    /// Keeps every log line in memory (tests read them with [`Runtime::log_lines`]).
    pub fn keep_log(&self) {
        *lock(&self.kept_log) = Some(Vec::new());
    }

    /// Log lines kept so far.
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.kept_log).clone().unwrap_or_default()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Runs `f` on the node from the calling thread, waiting for the node thread to finish
    /// its current batch — for tools, the demo and tests, which inspect a node between steps;
    /// serving tasks use [`Runtime::call`].
    pub fn with_node<R>(&self, f: impl FnOnce(&mut FileNode, u64) -> R) -> R {
        let now = self.clock.now_ms();
        let mut node = lock(&self.node);
        let result = f(&mut node, now);
        self.dispatch(&mut node);
        result
    }

    /// Acts on what the node produced: log lines, closes, wake-ups.
    fn dispatch(&self, node: &mut FileNode) {
        let dirty = node.take_dirty();
        let mut outputs = Vec::new();
        while let Some(out) = node.poll_event() {
            outputs.push(out);
        }
        let name = node.config().name.clone();
        let mut unpublished = Vec::new();
        let mut conns = lock(&self.conns);
        for out in outputs {
            match out {
                Output::Log { level, message } => {
                    if level <= self.log_level {
                        if let Some(kept) = lock(&self.kept_log).as_mut() {
                            let tag = match level {
                                Level::Warn => "WARN",
                                Level::Info => "INFO",
                                Level::Debug => "DEBUG",
                            };
                            kept.push(format!("{tag} {name}: {message}"));
                        } else {
                            // The subscriber (installed by the binary) puts an RFC 3339 time
                            // on every line.
                            match level {
                                Level::Warn => tracing::warn!(node = %name, "{message}"),
                                Level::Info => tracing::info!(node = %name, "{message}"),
                                Level::Debug => tracing::debug!(node = %name, "{message}"),
                            }
                        }
                    }
                }
                Output::Publish { token, events } => {
                    let sent = lock(&self.publisher)
                        .as_ref()
                        .map(|(p, _)| p.try_send(PublishJob { token, events }).is_ok());
                    if sent != Some(true) {
                        unpublished.push(token);
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(entry) = conns.get_mut(&conn) {
                        entry.closing = Some((code, reason));
                        entry.notify.notify_one();
                        entry.readable.notify_one();
                    }
                }
            }
        }
        for conn in dirty {
            if let Some(entry) = conns.get(&conn) {
                entry.notify.notify_one();
            }
        }
        drop(conns);
        if !unpublished.is_empty() {
            // No publisher, or its queue is full: the uploads fail (their sessions close, the
            // clinics push again) instead of waiting unbounded.
            for token in unpublished {
                node.handle_published(
                    token,
                    Err("no publisher for the shared stream, or its queue is full".into()),
                );
            }
            self.dispatch(node);
        }
    }

    fn closing(&self, conn: ConnId) -> Option<(ErrorCode, String)> {
        lock(&self.conns).get(&conn).and_then(|e| e.closing.clone())
    }

    /// Drives one established QUIC connection until it ends. The clinic (client) opens the
    /// session stream; the hub (server) accepts it.
    pub async fn serve_connection(
        self: &Arc<Self>,
        conn: quinn::Connection,
        expect: Role,
    ) -> Result<()> {
        let peer = match crate::tls::peer_identity(&conn) {
            Ok(peer) if peer.role == expect => peer,
            Ok(peer) => {
                let why = format!(
                    "{} {} connected where a {} was expected",
                    peer.role.name(),
                    peer.name,
                    expect.name()
                );
                self.call(move |n, _| n.note_refused_connection(&why)).await;
                conn.close(ErrorCode::Handshake.code().into(), b"wrong role");
                return Ok(());
            }
            Err(e) => {
                conn.close(ErrorCode::Handshake.code().into(), b"no identity");
                return Err(e);
            }
        };
        let (send, recv) = match expect {
            Role::Hub => conn.open_bi().await.context("opening the session stream")?,
            Role::Clinic => {
                match tokio::time::timeout(
                    Duration::from_millis(shikaku_node::node::HANDSHAKE_TIMEOUT_MS),
                    conn.accept_bi(),
                )
                .await
                {
                    Ok(stream) => stream.context("accepting the session stream")?,
                    Err(_) => {
                        conn.close(ErrorCode::Handshake.code().into(), b"no session stream");
                        anyhow::bail!("clinic {} opened no session stream within 10 s", peer.name);
                    }
                }
            }
        };
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let readable = Arc::new(Notify::new());
        lock(&self.conns).insert(
            id,
            ConnEntry { notify: notify.clone(), readable: readable.clone(), closing: None },
        );
        let who = peer.clone();
        self.call(move |n, now| n.handle_connected(now, id, who)).await;
        let writer = tokio::spawn(write_loop(
            self.clone(),
            id,
            send,
            (notify, readable.clone()),
            conn.clone(),
        ));
        // A reader error (a verifier task that failed) ends the session like a closed stream.
        let _ = self.read_loop(id, recv, readable).await;
        // The reader ended (peer closed, error, or we are closing): let the writer finish.
        if let Some(entry) = lock(&self.conns).get(&id) {
            entry.notify.notify_one();
        }
        if self.closing(id).is_none() {
            writer.abort();
        }
        let _ = writer.await;
        self.call(move |n, now| n.handle_disconnected(now, id)).await;
        lock(&self.conns).remove(&id);
        let quic = conn.stats();
        self.stats.udp_bytes_sent.fetch_add(quic.udp_tx.bytes, Ordering::Relaxed);
        self.stats.udp_bytes_received.fetch_add(quic.udp_rx.bytes, Ordering::Relaxed);
        Ok(())
    }

    async fn read_loop(
        self: &Arc<Self>,
        id: ConnId,
        mut recv: quinn::RecvStream,
        readable: Arc<Notify>,
    ) -> Result<()> {
        let frame_max = self.call(|n, _| n.config().frame_max).await;
        let mut splitter = FrameSplitter::new(frame_max);
        let mut pending: VecDeque<tokio::task::JoinHandle<(shikaku_node::Inbound, u64)>> =
            VecDeque::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if self.closing(id).is_some() {
                return Ok(());
            }
            // Apply verified frames in order; keep up to VERIFY_PIPELINE in flight.
            while pending.front().is_some_and(|h| h.is_finished())
                || pending.len() >= VERIFY_PIPELINE
            {
                let Some(handle) = pending.pop_front() else { break };
                let (inbound, now) = handle.await.context("verifier task")?;
                self.call(move |n, _| n.handle_inbound(now, id, inbound)).await;
            }
            let read = if pending.is_empty() {
                recv.read(&mut buf).await
            } else {
                // Something is verifying: read if bytes come, else apply the oldest result.
                tokio::select! {
                    r = recv.read(&mut buf) => r,
                    done = async { match pending.front_mut() { Some(h) => h.await, None => std::future::pending().await } } => {
                        pending.pop_front();
                        let (inbound, now) = done.context("verifier task")?;
                        self.call(move |n, _| n.handle_inbound(now, id, inbound)).await;
                        continue;
                    }
                }
            };
            match read {
                Ok(Some(n)) => {
                    self.stats.frame_bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    splitter.push(&buf[..n]);
                }
                Ok(None) | Err(_) => break,
            }
            loop {
                match splitter.next_frame() {
                    Ok(Some(body)) => {
                        let now = self.clock.now_ms();
                        pending.push_back(tokio::task::spawn_blocking(move || {
                            (prepare(&body, now), now)
                        }));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        for handle in pending.drain(..) {
                            let (inbound, now) = handle.await.context("verifier task")?;
                            self.call(move |n, _| n.handle_inbound(now, id, inbound)).await;
                        }
                        self.call(move |n, _| n.handle_stream_error(id, &e)).await;
                        return Ok(());
                    }
                }
            }
            // Backpressure: stop reading while the node has too much queued for this peer;
            // the writer wakes this reader each time it takes a frame.
            while !self.call(move |n, _| n.wants_input(id)).await && self.closing(id).is_none() {
                readable.notified().await;
            }
        }
        for handle in pending.drain(..) {
            let (inbound, now) = handle.await.context("verifier task")?;
            self.call(move |n, _| n.handle_inbound(now, id, inbound)).await;
        }
        Ok(())
    }

    /// Whether [`Runtime::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Clears the stopping mark so a service can be started again on this node.
    pub fn resume(&self) {
        self.stopping.store(false, Ordering::Relaxed);
    }

    /// Marks the runtime as stopping (connectors stop reconnecting).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Periodic work (receipts persisted) until stopped.
    pub async fn tick_loop(self: Arc<Self>) {
        while !self.is_stopping() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.call(|n, now| n.handle_tick(now)).await;
        }
    }
}

async fn write_loop(
    rt: Arc<Runtime>,
    id: ConnId,
    mut send: quinn::SendStream,
    (notify, readable): (Arc<Notify>, Arc<Notify>),
    conn: quinn::Connection,
) {
    loop {
        // Read before the poll: a close decided in the same batch of node commands as the
        // poll is seen on the next turn (it also wakes `notify`), once its Error frame, queued
        // with it, has been polled and sent.
        let closing = rt.closing(id);
        match rt.call(move |n, now| n.poll_transmit(now, id)).await {
            Some(frame) => {
                readable.notify_one();
                if send.write_all(&frame).await.is_err() {
                    return;
                }
                rt.stats.frame_bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
            None => match closing {
                Some((code, reason)) => {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                    conn.close(code.code().into(), reason.as_bytes());
                    return;
                }
                None => notify.notified().await,
            },
        }
    }
}

/// QUIC transport settings: keep-alives so a dead hub is noticed within seconds, generous
/// stream windows for initial syncs, and a bounded number of streams.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))));
    t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// Stops a service: no more reconnects, every connection closed with `Shutdown`, the endpoint
/// idle, its tasks finished (or aborted after 2 s), the node's receipt persisted and its
/// snapshot written (unless the ledger is damaged or nothing changed since the last one).
async fn shutdown(
    runtime: &Runtime,
    endpoint: &quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    reason: &[u8],
) {
    runtime.stop();
    endpoint.close(ErrorCode::Shutdown.code().into(), reason);
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    for mut t in tasks {
        if tokio::time::timeout(Duration::from_secs(2), &mut t).await.is_err() {
            t.abort();
        }
    }
    runtime
        .call(|n, now| {
            n.handle_tick(now);
            // The next start reads this instead of folding the ledger.
            if let Err(e) = n.write_snapshot_if_changed(now) {
                tracing::warn!("could not write the node snapshot on shutdown: {e}");
            }
        })
        .await;
}

/// A running hub: its endpoint and accept loop.
#[derive(Debug)]
pub struct HubService {
    /// The node.
    pub runtime: Arc<Runtime>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HubService {
    /// Binds `addr` (port 0 for any) and serves clinics.
    pub fn start(
        runtime: Arc<Runtime>,
        tls: &crate::tls::TlsFiles,
        addr: SocketAddr,
    ) -> Result<HubService> {
        let config = crate::tls::server_config(tls, transport())?;
        let endpoint =
            quinn::Endpoint::server(config, addr).with_context(|| format!("binding {addr}"))?;
        let accept = {
            let endpoint = endpoint.clone();
            let rt = runtime.clone();
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    if lock(&rt.conns).len() >= CONNECTIONS_MAX {
                        rt.call(|n, _| {
                            n.note_refused_connection(&format!(
                                "{CONNECTIONS_MAX} connections already held"
                            ))
                        })
                        .await;
                        incoming.refuse();
                        continue;
                    }
                    let rt = rt.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => {
                                if let Err(e) = rt.serve_connection(conn, Role::Clinic).await {
                                    let why = format!("{e:#}");
                                    rt.call(move |n, _| n.note_refused_connection(&why)).await;
                                }
                            }
                            Err(e) => {
                                let why = format!("handshake failed: {e}");
                                rt.call(move |n, _| n.note_refused_connection(&why)).await;
                            }
                        }
                    });
                }
            })
        };
        let ticker = tokio::spawn(runtime.clone().tick_loop());
        Ok(HubService { runtime, endpoint, tasks: vec![accept, ticker] })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Closes every connection and waits for the endpoint to go idle.
    pub async fn shutdown(self) {
        shutdown(&self.runtime, &self.endpoint, self.tasks, b"hub shutting down").await;
    }
}

/// A running clinic: background sync with reconnects.
#[derive(Debug)]
pub struct ClinicService {
    /// The node.
    pub runtime: Arc<Runtime>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClinicService {
    /// Starts syncing with the hub at one of `hubs` (front-ends of one deployment, or one
    /// embedded hub): the first that answers, moving on to the next whenever a session ends
    /// or an address cannot be reached, with a backoff from 100 ms to 5 s, jittered by up to
    /// half so that clinics cut off together do not come back together.
    pub fn start(
        runtime: Arc<Runtime>,
        tls: &crate::tls::TlsFiles,
        hubs: &[SocketAddr],
    ) -> Result<ClinicService> {
        let Some(first) = hubs.first().copied() else {
            anyhow::bail!("no hub address given");
        };
        let config = crate::tls::client_config(tls, transport())?;
        let bind: SocketAddr = match (first.is_ipv6(), hubs.iter().all(|h| h.ip().is_loopback())) {
            (true, true) => "[::1]:0".parse()?,
            (false, true) => "127.0.0.1:0".parse()?,
            (true, false) => "[::]:0".parse()?,
            (false, false) => "0.0.0.0:0".parse()?,
        };
        let mut endpoint = quinn::Endpoint::client(bind).context("binding the client endpoint")?;
        endpoint.set_default_client_config(config);
        let connector = {
            let endpoint = endpoint.clone();
            let rt = runtime.clone();
            let hubs = hubs.to_vec();
            // Jitter from the node id and the time: no shared random source needed.
            let mut jitter = Jitter::new(&tls.identity.name, rt.clock.now_ms());
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(100);
                let mut next = 0usize;
                while !rt.is_stopping() {
                    let hub = hubs[next % hubs.len()];
                    next += 1;
                    match endpoint.connect(hub, "shikaku-hub") {
                        Ok(connecting) => match connecting.await {
                            Ok(conn) => {
                                let started = tokio::time::Instant::now();
                                if let Err(e) = rt.serve_connection(conn, Role::Hub).await {
                                    let why = format!("{e:#}");
                                    rt.call(move |n, _| n.note_refused_connection(&why)).await;
                                }
                                // Only a session that lasted resets the backoff: one that
                                // fails at once (a full disk, a refused handshake) must not
                                // turn into a reconnect storm.
                                if started.elapsed() >= Duration::from_secs(30) {
                                    backoff = Duration::from_millis(100);
                                }
                                // A session that ended (the hub going away) tries the next
                                // address at once; the backoff applies from there.
                                if hubs.len() > 1 && started.elapsed() >= Duration::from_secs(1) {
                                    continue;
                                }
                            }
                            Err(e) => {
                                let why = format!("hub {hub} unreachable: {e}");
                                rt.call(move |n, now| n.note_connect_failure(now, &why)).await;
                            }
                        },
                        Err(e) => {
                            let why = format!("cannot connect to {hub}: {e}");
                            rt.call(move |n, now| n.note_connect_failure(now, &why)).await;
                        }
                    }
                    if rt.is_stopping() {
                        break;
                    }
                    // Every address tried once in a row before backing off further.
                    if next.is_multiple_of(hubs.len()) {
                        tokio::time::sleep(jitter.spread(backoff)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    } else {
                        tokio::time::sleep(jitter.spread(Duration::from_millis(50))).await;
                    }
                }
            })
        };
        let ticker = tokio::spawn(runtime.clone().tick_loop());
        Ok(ClinicService { runtime, endpoint, tasks: vec![connector, ticker] })
    }

    /// Stops syncing, closes the connection and waits for the endpoint to go idle.
    pub async fn shutdown(self) {
        shutdown(&self.runtime, &self.endpoint, self.tasks, b"clinic shutting down").await;
    }
}

/// Reconnect jitter: a small xorshift generator seeded from the node's name and start time.
struct Jitter(u64);

impl Jitter {
    fn new(name: &str, now_ms: u64) -> Jitter {
        let seed = blake3::hash(format!("{name}/{now_ms}").as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&seed.as_bytes()[..8]);
        Jitter(u64::from_le_bytes(bytes) | 1)
    }

    /// `base` plus up to half of it.
    fn spread(&mut self, base: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let half = (base.as_millis() as u64 / 2).max(1);
        base + Duration::from_millis(self.0 % half)
    }
}

/// The peer identity type, re-exported for services.
pub type Peer = PeerIdentity;

/// The node thread: takes the commands queued since the last batch (blocking for the first),
/// runs them in order on the node — consecutive checks answered and recorded together — and
/// then acts on what the node produced. Ends when every sender is gone.
fn node_thread(
    node: Arc<Mutex<FileNode>>,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    runtime: std::sync::Weak<Runtime>,
) {
    while let Some(first) = commands.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < CHECKS_PER_COMMIT_MAX {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let Some(rt) = runtime.upgrade() else { return };
        let now = rt.clock.now_ms();
        let mut guard = lock(&node);
        let mut checks: Vec<(PresentedCheck, CheckReply)> = Vec::new();
        let mut replies: Vec<Deliver> = Vec::new();
        for command in batch {
            match command {
                Command::Check { check, reply } => checks.push((check, reply)),
                Command::Run(job) => {
                    answer_checks(&mut guard, now, &mut checks, &mut replies);
                    // A job that panics loses its reply (its caller panics), not the node.
                    let node: &mut FileNode = &mut guard;
                    if let Ok(deliver) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(node, now)))
                    {
                        replies.push(deliver);
                    }
                }
            }
        }
        answer_checks(&mut guard, now, &mut checks, &mut replies);
        rt.dispatch(&mut guard);
        drop(guard);
        for deliver in replies {
            deliver();
        }
    }
}

/// Group commit: the queued checks answered together, their records made durable with one
/// write, then every reply sent.
fn answer_checks(
    node: &mut FileNode,
    now: u64,
    checks: &mut Vec<(PresentedCheck, CheckReply)>,
    replies: &mut Vec<Deliver>,
) {
    if checks.is_empty() {
        return;
    }
    let queries: Vec<PresentedCheck> = checks.iter().map(|(check, _)| check.clone()).collect();
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        node.check_presented_all(now, &queries)
    }));
    // A panic drops the replies: their callers panic, the node thread goes on.
    let Ok(answered) = answered else {
        checks.clear();
        return;
    };
    match answered {
        Ok(answers) => {
            for ((_, reply), answer) in checks.drain(..).zip(answers) {
                replies.push(Box::new(move || {
                    let _ = reply.send(Ok((answer, now)));
                }));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for (_, reply) in checks.drain(..) {
                let e = e.clone();
                replies.push(Box::new(move || {
                    let _ = reply.send(Err(e));
                }));
            }
        }
    }
}
