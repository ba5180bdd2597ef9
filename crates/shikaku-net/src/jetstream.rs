//! The scaled-out hub's shared log: one replicated NATS JetStream stream per deployment
//! (protocol/STREAM.md). This module is the only code that talks to NATS: connecting (user and
//! password, a `.creds` file, TLS), creating and validating the stream, publishing events
//! (pipelined, each with its event id as `Nats-Msg-Id`, retried through leader elections) and
//! following the stream in order into a front-end node (one ordered consumer per front-end).
//!
//! The node stays sans-IO: it emits `Output::Publish` and takes the stream's deliveries and
//! acknowledgements as inputs (`shikaku_node::node::stream`).

use std::future::IntoFuture as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use shikaku_core::{Namespace, SignedEvent};
use shikaku_node::{prepare_stream, StreamIdentity};
use shikaku_protocol::wire::event_to_wire;

use crate::runtime::Runtime;

/// The stream's name.
pub const STREAM_NAME: &str = "SHIKAKU";
/// The subjects it holds: one per namespace (never member data).
pub const STREAM_SUBJECTS: &str = "shikaku.ev.>";
/// The oldest NATS server the shared log runs on (protocol/STREAM.md, "Server").
pub const SERVER_MIN: (u64, u64, u64) = (2, 12, 0);
/// Replicas `hub stream init` creates by default and the fewest a front-end accepts.
pub const REPLICAS_MIN: usize = 3;
/// The stream's deduplication window (`Nats-Msg-Id`): long enough to cover retries through a
/// leader election and a resumed import; beyond it, front-ends skip an event already held.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Largest message the stream takes (an event's wire form is far smaller).
pub const MESSAGE_BYTES_MAX: i32 = 64 * 1024;
/// Publishes in flight at once (pipelining hides the per-acknowledgement fsync; below the
/// client's 5,000 acknowledgement permits).
pub const PUBLISH_WINDOW: usize = 4096;
/// How long a publish is retried (same message id) before it is reported failed.
pub const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(60);
/// How long a publish waits for its acknowledgement before it is sent again.
pub const ACK_WAIT: Duration = Duration::from_secs(5);
/// Messages a front-end applies per node command at most.
pub const APPLY_BATCH_MAX: usize = 4096;

/// The subject of an event's namespace (protocol/STREAM.md, "Subjects").
pub fn subject(ns: &Namespace) -> String {
    match ns {
        Namespace::Insurer(insurer) => format!("shikaku.ev.ins.{insurer}"),
        Namespace::Clinic(node) => format!("shikaku.ev.cl.{}", shikaku_core::hex::encode(&node.0)),
    }
}

/// How to reach the NATS servers.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Server URLs (`nats://HOST:PORT` or `tls://HOST:PORT`).
    pub urls: Vec<String>,
    /// A `.creds` file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// User and password.
    pub user: Option<(String, String)>,
    /// CA certificate (PEM) that signed the servers' certificates; implies TLS.
    pub ca: Option<PathBuf>,
    /// Name this client gives the servers (monitoring).
    pub name: String,
}

impl NatsOptions {
    /// Parses `--store nats://HOST:PORT[,…]`: every URL must be `nats://` or `tls://`.
    pub fn from_store(store: &str) -> Result<NatsOptions> {
        let mut urls = Vec::new();
        for url in store.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let rest =
                url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://")).ok_or_else(
                    || anyhow!("--store {url}: expected nats://HOST:PORT or tls://HOST:PORT"),
                )?;
            if rest.is_empty() || rest.contains('/') {
                bail!("--store {url}: expected nats://HOST:PORT or tls://HOST:PORT");
            }
            urls.push(url.to_owned());
        }
        if urls.is_empty() {
            bail!("--store names no NATS server (nats://HOST:PORT[,…])");
        }
        Ok(NatsOptions { urls, ..NatsOptions::default() })
    }

    /// The servers, for messages.
    pub fn servers(&self) -> String {
        self.urls.join(",")
    }
}

/// Connects to the NATS servers and checks their version. Servers that do not answer yet
/// (a cluster starting) are retried for 15 s; the error says why none was reached (no answer,
/// a certificate that does not verify, credentials refused).
pub async fn connect(options: &NatsOptions) -> Result<async_nats::Client> {
    let urls: Vec<async_nats::ServerAddr> = options
        .urls
        .iter()
        .map(|u| u.parse().with_context(|| format!("NATS server address {u}")))
        .collect::<Result<_>>()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let client = loop {
        match connect_options(options).await?.connect(urls.as_slice()).await {
            Ok(client) => break client,
            // Only a server not answering (yet) is worth waiting for; a certificate that
            // does not verify or credentials refused are said at once.
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::TimedOut
                ) && tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!("connecting to NATS at {}: {e}; retrying", options.servers());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("no NATS server at {} could be reached: {e}", options.servers()),
        }
    };
    check_server_version(&client.server_info().version)?;
    Ok(client)
}

async fn connect_options(options: &NatsOptions) -> Result<async_nats::ConnectOptions> {
    let mut connect = async_nats::ConnectOptions::new()
        .name(&options.name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if let Some(path) = &options.creds {
        connect = connect
            .credentials_file(path)
            .await
            .with_context(|| format!("reading NATS credentials {}", path.display()))?;
    }
    if let Some((user, password)) = &options.user {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &options.ca {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    if options.urls.iter().any(|u| u.starts_with("tls://")) {
        connect = connect.require_tls(true);
    }
    Ok(connect)
}

/// Refuses a server older than [`SERVER_MIN`], naming its version.
pub fn check_server_version(version: &str) -> Result<()> {
    let parsed: Vec<u64> = version
        .split(['.', '-', '+'])
        .take(3)
        .map(|p| p.trim_start_matches('v').parse().unwrap_or(0))
        .collect();
    let found = (
        parsed.first().copied().unwrap_or(0),
        parsed.get(1).copied().unwrap_or(0),
        parsed.get(2).copied().unwrap_or(0),
    );
    if found < SERVER_MIN {
        let (a, b, c) = SERVER_MIN;
        bail!(
            "NATS server {version} is too old: the shared log needs nats-server {a}.{b}.{c} or newer (older servers let several writers win the same expected sequence and have no sync_interval: always; see docs/DEPLOY.md)"
        );
    }
    Ok(())
}

/// The stream configuration `hub stream init` creates.
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM_NAME.to_owned(),
        description: Some("shikaku hub log (protocol/STREAM.md)".to_owned()),
        subjects: vec![STREAM_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MESSAGE_BYTES_MAX,
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// What is wrong with an existing stream's configuration for a shared hub log, naming the
/// setting (each a reason a front-end refuses to start).
pub fn config_problems(config: &stream::Config, replicas_min: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if config.subjects != [STREAM_SUBJECTS] {
        problems.push(format!("subjects are {:?}, not [\"{STREAM_SUBJECTS}\"]", config.subjects));
    }
    if config.num_replicas < replicas_min {
        problems.push(format!(
            "replicas is {}, fewer than {replicas_min} (one dead server would lose acknowledged events)",
            config.num_replicas
        ));
    }
    if config.storage != stream::StorageType::File {
        problems.push("storage is memory, not file".to_owned());
    }
    if config.retention != stream::RetentionPolicy::Limits {
        problems.push(format!(
            "retention is {:?}, not limits (the log must keep every event)",
            config.retention
        ));
    }
    if config.max_age != Duration::ZERO
        || config.max_messages > 0
        || config.max_bytes > 0
        || config.max_messages_per_subject > 0
    {
        problems.push(
            "a limit (max_age, max_msgs, max_bytes or max_msgs_per_subject) is set: the log must keep every event"
                .to_owned(),
        );
    }
    if !config.deny_delete || !config.deny_purge {
        problems.push(
            "deny_delete and deny_purge must both be set (events are never removed)".to_owned(),
        );
    }
    if config.sealed {
        problems.push("the stream is sealed (it takes no more events)".to_owned());
    }
    problems
}

/// What `hub stream init` did.
#[derive(Debug)]
pub struct StreamReport {
    /// Created now (or it existed and is valid).
    pub created: bool,
    /// Replicas.
    pub replicas: usize,
    /// Messages held.
    pub messages: u64,
    /// The server version.
    pub server: String,
}

/// `hub stream init`: creates the stream, or checks that the one there is configured as the
/// shared log needs.
pub async fn init_stream(client: &async_nats::Client, replicas: usize) -> Result<StreamReport> {
    if replicas < REPLICAS_MIN && replicas != 1 {
        bail!("--replicas {replicas}: use {REPLICAS_MIN} (5 for a national deployment)");
    }
    let js = jetstream::new(client.clone());
    let server = client.server_info().version;
    // Right after a cluster starts, lookups answer "unavailable" for a while: retried; a
    // stream that is not there is created.
    let existing = find_stream(&js).await?;
    let (mut stream, created) = match existing {
        Some(stream) => (stream, false),
        None => {
            let stream = retry_unavailable(|| js.create_stream(stream_config(replicas)))
                .await
                .context("creating the stream")?;
            (stream, true)
        }
    };
    let info = stream.info().await.context("reading the stream's configuration")?.clone();
    let problems = config_problems(&info.config, replicas.min(REPLICAS_MIN));
    if !problems.is_empty() {
        bail!("stream {STREAM_NAME} is configured wrongly: {}", problems.join("; "));
    }
    Ok(StreamReport {
        created,
        replicas: info.config.num_replicas,
        messages: info.state.messages,
        server,
    })
}

/// The deployment's stream, or `None` if it is not there (lookups retried while the cluster
/// is unavailable).
async fn find_stream(js: &jetstream::Context) -> Result<Option<stream::Stream>> {
    let is_not_found = |e: &jetstream::context::GetStreamError| {
        matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
    };
    retry_unavailable(|| async {
        match js.get_stream(STREAM_NAME).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await
    .with_context(|| format!("looking up stream {STREAM_NAME}"))
}

/// A stream create answers "temporarily unavailable" for a while after a cluster starts: retry.
async fn retry_unavailable<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    mut attempt: impl FnMut() -> F,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(anyhow!("{e}")),
        }
    }
}

/// Opens the deployment's stream for a front-end: it must exist (`hub stream init`) and be
/// configured as the shared log needs; returns it with its identity.
pub async fn open_stream(
    client: &async_nats::Client,
    replicas_min: usize,
) -> Result<(stream::Stream, StreamIdentity)> {
    let js = jetstream::new(client.clone());
    let Some(mut stream) = find_stream(&js).await? else {
        bail!(
            "stream {STREAM_NAME} is not there: create it with `shikaku hub stream init --store …`"
        );
    };
    let info = stream.info().await.context("reading the stream's configuration")?.clone();
    let problems = config_problems(&info.config, replicas_min);
    if !problems.is_empty() {
        bail!("stream {STREAM_NAME} is configured wrongly: {}", problems.join("; "));
    }
    let created_ns = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
    Ok((stream, StreamIdentity { name: STREAM_NAME.to_owned(), created_ns }))
}

/// What a publication stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Events the stream stored now.
    pub new: u64,
    /// Events it already held (same message id inside its window).
    pub duplicates: u64,
    /// The highest sequence among them.
    pub last_seq: u64,
}

/// Publishes events to the stream: [`PUBLISH_WINDOW`] in flight, each with its event id as
/// `Nats-Msg-Id`. An event whose publish fails or whose acknowledgement does not come (a
/// leader election, a server killed) is published again with the same id until
/// [`PUBLISH_RETRY_FOR`] passes without progress; then the error is returned and `durable`
/// says how many of `events` (a prefix) the stream acknowledged.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

/// A publication that failed: how many events (a prefix of the input) are durable, and why.
#[derive(Debug)]
pub struct PublishFailure {
    /// What was stored before the failure: every event before index `durable`.
    pub stored: Published,
    /// Events (a prefix) the stream acknowledged.
    pub durable: usize,
    /// Why the rest was not.
    pub error: String,
}

impl Publisher {
    /// A publisher on `client`.
    pub fn new(client: &async_nats::Client) -> Publisher {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        Publisher { js }
    }

    /// Publishes `events` (in order); see [`Publisher`].
    pub async fn publish(&self, events: &[SignedEvent]) -> Result<Published, PublishFailure> {
        let mut done = Published::default();
        let mut durable = 0usize;
        for window in events.chunks(PUBLISH_WINDOW) {
            let mut acks: Vec<Option<jetstream::publish::PublishAck>> = vec![None; window.len()];
            let mut last_progress = tokio::time::Instant::now();
            let mut backoff = Duration::from_millis(100);
            let mut last_error = String::new();
            while acks.iter().any(Option::is_none) {
                let mut futures = Vec::new();
                for (i, event) in window.iter().enumerate().filter(|(i, _)| acks[*i].is_none()) {
                    match self.send(event).await {
                        Ok(future) => futures.push((i, future)),
                        Err(e) => last_error = e,
                    }
                }
                // Awaited together: acknowledgements lost with a killed server cost one
                // ACK_WAIT per round, not one each.
                let answers = futures_util::future::join_all(futures.into_iter().map(
                    |(i, future)| async move {
                        (i, tokio::time::timeout(ACK_WAIT, future.into_future()).await)
                    },
                ))
                .await;
                for (i, answer) in answers {
                    match answer {
                        Ok(Ok(ack)) => {
                            acks[i] = Some(ack);
                            last_progress = tokio::time::Instant::now();
                        }
                        Ok(Err(e)) => last_error = format!("{e}"),
                        Err(_) => {
                            last_error =
                                format!("no acknowledgement within {} s", ACK_WAIT.as_secs())
                        }
                    }
                }
                if acks.iter().all(Option::is_some) {
                    break;
                }
                if last_progress.elapsed() > PUBLISH_RETRY_FOR {
                    let durable = durable + acks.iter().take_while(|a| a.is_some()).count();
                    return Err(PublishFailure {
                        stored: done,
                        durable,
                        error: format!(
                            "the stream acknowledged nothing for {} s: {last_error}",
                            PUBLISH_RETRY_FOR.as_secs()
                        ),
                    });
                }
                tracing::warn!("publish to the shared log retried: {last_error}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            for ack in acks.into_iter().flatten() {
                if ack.duplicate {
                    done.duplicates += 1;
                } else {
                    done.new += 1;
                }
                done.last_seq = done.last_seq.max(ack.sequence);
            }
            durable += window.len();
        }
        Ok(done)
    }

    async fn send(
        &self,
        event: &SignedEvent,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id().to_string().as_str());
        let wire =
            event_to_wire(event.schema_version(), event.canonical_bytes(), &event.signature());
        self.js
            .publish_with_headers(subject(&event.event().namespace), headers, wire.into())
            .await
            .map_err(|e| format!("{e}"))
    }
}

/// A front-end's link to the stream: publishes what its node asks to publish and follows the
/// stream into it.
pub struct FrontEnd {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FrontEnd {
    /// Binds the node's ledger to the stream and starts the follower and the publisher.
    pub async fn start(
        runtime: Arc<Runtime>,
        client: &async_nats::Client,
        stream: stream::Stream,
        identity: StreamIdentity,
    ) -> Result<FrontEnd> {
        // The stream's last sequence now: until the front-end has applied it, clinics'
        // sessions wait (or go to another front-end).
        let head = stream.cached_info().state.last_sequence;
        runtime
            .call(move |n, _| {
                n.note_stream_head(head);
                n.bind_stream(identity)
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::runtime::PublishJob>(1024);
        let publisher = Publisher::new(client);
        runtime.set_publisher(tx, publisher.clone());
        let rt = runtime.clone();
        let publishing = tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let (publisher, rt) = (publisher.clone(), rt.clone());
                // Each job on its own task: one clinic's upload waiting out a leader election
                // does not hold another's.
                tokio::spawn(async move {
                    let result = publisher
                        .publish(&job.events)
                        .await
                        .map(|p| p.last_seq)
                        .map_err(|f| f.error);
                    rt.call(move |n, _| n.handle_published(job.token, result)).await;
                });
            }
        });
        let following = tokio::spawn(follow(runtime, stream));
        Ok(FrontEnd { tasks: vec![publishing, following] })
    }

    /// Stops following and publishing.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Follows the stream from what the node has applied, in order, with one ordered consumer
/// (re-created from the node's applied sequence after any failure).
async fn follow(runtime: Arc<Runtime>, stream: stream::Stream) {
    let mut backoff = Duration::from_millis(100);
    while !runtime.is_stopping() {
        let start = runtime.call(|n, _| n.stream_applied()).await + 1;
        let config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| format!("{e}")),
            Err(e) => Err(format!("{e}")),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!("following the shared log from {start}: {e}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let first = match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                Err(_) if runtime.is_stopping() => return,
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::warn!("following the shared log: {e}");
                    break;
                }
                Ok(Some(Ok(m))) => m,
            };
            let (mut batch, mut head) = (Vec::new(), 0u64);
            let mut ok = push_message(&mut batch, &mut head, first);
            while ok && batch.len() < APPLY_BATCH_MAX {
                match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                    Ok(Some(Ok(m))) => ok = push_message(&mut batch, &mut head, m),
                    _ => break,
                }
            }
            let prepared = match tokio::task::spawn_blocking(move || prepare_stream(batch)).await {
                Ok(prepared) => prepared,
                Err(_) => break,
            };
            let applied = runtime
                .call(move |n, now| {
                    n.note_stream_head(head);
                    n.handle_stream_events(now, prepared)
                })
                .await;
            if let Err(e) = applied {
                tracing::error!("applying the shared log: {e}");
                break;
            }
            backoff = Duration::from_millis(100);
            if !ok {
                break;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Adds a delivered message with its stream sequence; false (logged) if it has none.
fn push_message(batch: &mut Vec<(u64, Vec<u8>)>, head: &mut u64, m: jetstream::Message) -> bool {
    match m.info() {
        Ok(info) => {
            // What is still pending after this message tells how far the stream goes.
            *head = (*head).max(info.stream_sequence + info.pending);
            batch.push((info.stream_sequence, m.message.payload.to_vec()));
            true
        }
        Err(e) => {
            tracing::warn!("a stream message without its sequence: {e}");
            false
        }
    }
}
