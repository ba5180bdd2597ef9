//! A hub front-end over a shared, replicated log (a JetStream stream), sans-IO: the node never
//! talks to NATS. It emits [`Output::Publish`] for a clinic's upload and takes
//! [`Node::handle_stream_events`] (messages the stream delivered, in stream order) and
//! [`Node::handle_published`] (the stream's acknowledgement or failure) as inputs.
//!
//! Every front-end applies the same stream in the same order with the same deterministic
//! rules (an event already held is skipped, a clinic's reused origin sequence is skipped, a
//! message that is not a valid event is skipped and counted), so every front-end's ledger
//! holds the same events at the same positions: a hub position — a cursor, a receipt — is
//! valid on every front-end. A clinic's upload is acknowledged only once the stream has
//! acknowledged it *and* this front-end has applied the stream up to it.
//!
//! The stream sequence applied up to is kept in `log/stream.cursor` (STREAM.md): written
//! after the events it covers are durable, so a restart resumes at or before where it stopped
//! (what it re-reads is skipped as already held).

use super::*;

/// File in the log directory that keeps the stream applied up to.
pub const STREAM_CURSOR_FILE: &str = "stream.cursor";
const STREAM_CURSOR_MAGIC: &[u8; 8] = b"SHKSTRM1";
/// Longest stream name kept (NATS allows 255 bytes... shikaku's are short).
const STREAM_NAME_MAX: usize = 255;

/// How long a front-end holds a clinic's `Hello` whose cursor is beyond what it has applied
/// (it lags the stream) before answering from what it holds, claiming nothing more.
pub const LAGGING_HELLO_WAIT_MS: u64 = 5_000;

/// Which stream a front-end's ledger was built from: its name and the time the stream was
/// created (Unix ns), which tells a re-created stream of the same name apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIdentity {
    /// The stream's name.
    pub name: String,
    /// When the stream was created (Unix ns, as the server says).
    pub created_ns: u64,
}

/// A stream message after decoding: its sequence and the event it carries, or why it is not
/// one.
pub type StreamMessage = (u64, Result<SignedEvent, EventError>);

/// Decodes and verifies stream messages (each the wire form of one event, STREAM.md). Pure
/// computation with no clock (the same on every front-end), for the runtime to run off the
/// node's thread.
pub fn prepare_stream(messages: Vec<(u64, Vec<u8>)>) -> Vec<StreamMessage> {
    let mut out: Vec<StreamMessage> = Vec::with_capacity(messages.len());
    let mut to_verify = Vec::with_capacity(messages.len());
    let mut slots = Vec::with_capacity(messages.len());
    for (seq, bytes) in messages {
        let decoded = event_from_wire(&bytes)
            .map_err(|e| EventError::Malformed(e.to_string()))
            .and_then(|(version, canonical, signature)| {
                SignedEvent::decode_unverified(version, canonical, signature, None, None)
            });
        match decoded {
            Ok(unverified) => {
                slots.push(out.len());
                out.push((seq, Err(EventError::Malformed(String::new()))));
                to_verify.push(unverified);
            }
            Err(e) => out.push((seq, Err(e))),
        }
    }
    for (slot, result) in slots.into_iter().zip(verify_all(to_verify)) {
        out[slot].1 = result;
    }
    out
}

/// A clinic's upload waiting for the stream.
#[derive(Debug)]
pub(super) struct PendingUpload {
    conn: ConnId,
    clinic: NodeId,
    /// Events published (not held before).
    published: u32,
    refused: Vec<Refusal>,
    /// The stream acknowledged every event up to this sequence; `None` while publishing.
    acked_seq: Option<u64>,
}

/// A front-end's state beside the node's: what it applied, what waits for the stream.
#[derive(Debug, Default)]
pub(super) struct Follower {
    identity: Option<StreamIdentity>,
    /// Stream sequence applied up to.
    applied: u64,
    /// The highest stream sequence known to exist (the stream's last sequence at start,
    /// deliveries, acknowledgements): below it, this front-end is catching up.
    known_head: u64,
    /// `applied` as last written to the cursor file.
    written: u64,
    next_token: u64,
    pending: BTreeMap<u64, PendingUpload>,
    /// Sessions whose `Hello` cursor is beyond this front-end's head: the `Hello` and when it
    /// came.
    lagging: Vec<(ConnId, Hello, u64)>,
    /// Damage the scrub found while serving: the ledger no longer matches the stream's
    /// positions, so this front-end stops serving and applying (clinics go to another one)
    /// until it is rebuilt.
    damaged: Option<String>,
}

impl<D: Directory> Node<D> {
    /// Whether this hub is a front-end over a shared stream.
    pub fn follows_stream(&self) -> bool {
        self.config.follows_stream
    }

    /// Front-end: the stream sequence applied up to (the next delivery starts after it).
    pub fn stream_applied(&self) -> u64 {
        self.follower.applied
    }

    /// Front-end: the stream holds messages up to `seq` (its last sequence when the
    /// front-end started, or later news): until it has applied them, this front-end is
    /// catching up and holds clinics' `Hello`s.
    pub fn note_stream_head(&mut self, seq: u64) {
        self.follower.known_head = self.follower.known_head.max(seq);
    }

    /// Front-end: the damage that stopped it serving, if any (it must be rebuilt from the
    /// stream: emptied and started again).
    pub fn front_end_damage(&self) -> Option<&str> {
        self.follower.damaged.as_deref()
    }

    /// Front-end: the scrub found `damage` in the ledger. A front-end cannot re-fetch a record
    /// at its position (a clinic can, from its hub): it stops applying the stream and serving,
    /// closing every session so clinics fail over, and says why at every `Hello`.
    pub(super) fn front_end_damaged(&mut self, damage: String) {
        if self.follower.damaged.is_none() {
            self.log(
                Level::Warn,
                format!("this front-end's ledger is damaged ({damage}): it stops serving; empty its data directory and start it again to rebuild it from the stream"),
            );
            self.follower.damaged = Some(damage);
        }
    }

    /// Front-end: whether it has applied everything it knows the stream holds.
    pub fn caught_up(&self) -> bool {
        self.follower.applied >= self.follower.known_head
    }

    /// Front-end: binds this ledger to `identity` before following it. A ledger built from
    /// another stream (or one of the same name re-created), or a hub ledger that was never
    /// built from a stream, is refused: the directory must be emptied and is rebuilt from the
    /// stream. A new ledger is bound at once (the cursor file written).
    pub fn bind_stream(&mut self, identity: StreamIdentity) -> Result<u64, NodeError> {
        if !self.config.follows_stream {
            return Err(NodeError::Role("this node does not follow a stream".into()));
        }
        let kept = self.log.directory_mut().read_whole(STREAM_CURSOR_FILE).map_err(storage)?;
        match kept {
            None if self.log.is_empty() => {
                self.follower.identity = Some(identity);
                self.write_stream_cursor()?;
            }
            None => {
                return Err(NodeError::Refused(format!(
                    "this data directory holds a hub ledger of {} events that was not built from stream {}: give each front-end an empty data directory (it is rebuilt from the stream)",
                    self.log.len(),
                    identity.name
                )))
            }
            Some(bytes) => {
                let (kept, applied) = decode_stream_cursor(&bytes).map_err(|why| {
                    NodeError::Refused(format!(
                        "{STREAM_CURSOR_FILE} is unreadable ({why}): empty the data directory, the front-end rebuilds it from the stream"
                    ))
                })?;
                if kept != identity {
                    return Err(NodeError::Refused(format!(
                        "this data directory was built from stream {} created at {} ns, not from stream {} created at {} ns: empty it, the front-end rebuilds it from the stream",
                        kept.name, kept.created_ns, identity.name, identity.created_ns
                    )));
                }
                self.follower.identity = Some(kept);
                self.follower.applied = applied;
                self.follower.written = applied;
            }
        }
        // Every insurer the stream brought so far is served (more as they arrive).
        self.serve_held_insurers();
        if let Some(damage) = self.log.recovery().damaged.first() {
            return Err(NodeError::Refused(format!(
                "this front-end's ledger is damaged ({damage}): empty the data directory, the front-end rebuilds it from the stream"
            )));
        }
        Ok(self.follower.applied)
    }

    /// Front-end: messages the stream delivered, in stream order from
    /// [`Node::stream_applied`]` + 1`. Each valid event not held yet is stored (durably, in
    /// order); a clinic event reusing an origin sequence and a message that is not a valid
    /// event are skipped and counted — the same on every front-end. Uploads the stream has
    /// acknowledged up to here are then acknowledged to their clinics.
    pub fn handle_stream_events(
        &mut self,
        now_ms: u64,
        messages: Vec<StreamMessage>,
    ) -> Result<(), NodeError> {
        let Some(last) = messages.last().map(|(seq, _)| *seq) else { return Ok(()) };
        if self.follower.damaged.is_some() {
            return Ok(());
        }
        let mut batch: Vec<SignedEvent> = Vec::with_capacity(messages.len());
        let mut batch_seqs: HashMap<(NodeId, u64), EventId> = HashMap::new();
        for (seq, message) in messages {
            if seq <= self.follower.applied {
                continue;
            }
            match message {
                Err(e) => {
                    *self.counters.refusals.entry("stream_message").or_default() += 1;
                    self.log(
                        Level::Warn,
                        format!("stream message {seq} is not a valid event, skipped: {e}"),
                    );
                }
                Ok(event) => {
                    let e = event.event();
                    if let Namespace::Clinic(clinic) = e.namespace {
                        let key = (clinic, e.origin_seq);
                        let other = batch_seqs
                            .get(&key)
                            .or_else(|| self.origin_seqs.get(&key))
                            .filter(|other| **other != event.id());
                        if let Some(other) = other {
                            *self.counters.refusals.entry("origin_seq_reused").or_default() += 1;
                            self.log(
                                Level::Warn,
                                format!(
                                    "stream message {seq}: origin_seq_reused: origin_seq {} of {} already numbers event {other}, not {}; skipped",
                                    e.origin_seq,
                                    ns_label(&e.namespace),
                                    event.id()
                                ),
                            );
                            continue;
                        }
                        batch_seqs.insert(key, event.id());
                    }
                    if let Namespace::Insurer(insurer) = e.namespace {
                        self.config.insurers.insert(insurer);
                    }
                    batch.push(event);
                }
            }
        }
        self.store(now_ms, &batch)?;
        self.follower.applied = self.follower.applied.max(last);
        self.note_stream_head(last);
        self.release_uploads();
        self.retry_lagging_hellos(now_ms);
        Ok(())
    }

    /// Front-end: the stream's answer to [`Output::Publish`] `token` — the highest sequence
    /// it stored the events at, or why it did not. A failure closes the clinic's session
    /// (nothing is acknowledged; the clinic pushes the events again in its next session).
    pub fn handle_published(&mut self, token: u64, result: Result<u64, String>) {
        match result {
            Ok(seq) => {
                self.note_stream_head(seq);
                if let Some(p) = self.follower.pending.get_mut(&token) {
                    p.acked_seq = Some(seq);
                }
                self.release_uploads();
            }
            Err(why) => {
                let Some(p) = self.follower.pending.remove(&token) else { return };
                *self.counters.refusals.entry("stream_publish_failed").or_default() += 1;
                self.close(
                    p.conn,
                    ErrorCode::Internal,
                    format!("the hub's shared log did not store the upload ({why}); push it again"),
                );
            }
        }
    }

    /// Front-end: `accepted` events of a clinic's frame go to the stream; the `Ack` waits.
    pub(super) fn publish_upload(
        &mut self,
        conn: ConnId,
        clinic: NodeId,
        accepted: Vec<SignedEvent>,
        refused: Vec<Refusal>,
    ) {
        let events: Vec<SignedEvent> =
            accepted.into_iter().filter(|e| self.log.position_of(&e.id()).is_none()).collect();
        let published = u32::try_from(events.len()).unwrap_or(u32::MAX);
        let token = self.follower.next_token;
        self.follower.next_token += 1;
        let acked_seq = if events.is_empty() { Some(0) } else { None };
        self.follower
            .pending
            .insert(token, PendingUpload { conn, clinic, published, refused, acked_seq });
        if events.is_empty() {
            self.release_uploads();
        } else {
            self.events.push_back(Output::Publish { token, events });
        }
    }

    /// Acknowledges every upload the stream acknowledged and this front-end has applied.
    fn release_uploads(&mut self) {
        let applied = self.follower.applied;
        let ready: Vec<u64> = self
            .follower
            .pending
            .iter()
            .filter(|(_, p)| p.acked_seq.is_some_and(|seq| seq <= applied))
            .map(|(token, _)| *token)
            .collect();
        for token in ready {
            let Some(p) = self.follower.pending.remove(&token) else { continue };
            let own_seq = self.clinic_seq.get(&p.clinic).copied().unwrap_or(0);
            let ack = Message::Ack(Ack { own_seq, stored: p.published, refused: p.refused });
            if let Some(c) = self.conns.get_mut(&p.conn) {
                c.queue.push_back(ack.to_frame());
                self.dirty.insert(p.conn);
            }
        }
    }

    /// Front-end: holds a `Hello` while this front-end is catching up with the stream or the
    /// clinic's cursor is beyond what it has applied, at most [`LAGGING_HELLO_WAIT_MS`]; a
    /// session it still cannot serve then is closed (`Shutdown`, "catching up"), and the
    /// clinic moves to another front-end — a lagging front-end never answers as if it held
    /// what it has not applied (nor refuses an insurer it has not reached yet). Returns the
    /// `Hello` when it is to be answered now.
    pub(super) fn hold_lagging_hello(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        hello: Hello,
    ) -> Option<Hello> {
        if !self.config.follows_stream {
            return Some(hello);
        }
        if let Some(damage) = self.follower.damaged.clone() {
            *self.counters.refusals.entry("front_end_damaged").or_default() += 1;
            self.close(
                conn,
                ErrorCode::Internal,
                format!("this hub front-end's ledger is damaged ({damage}) and must be rebuilt from the shared log: try another front-end"),
            );
            return None;
        }
        if !self.lags_for(&hello) {
            return Some(hello);
        }
        self.log(
            Level::Info,
            format!(
                "connection {conn}: catching up with the shared log (applied {} of {}); the session waits",
                self.follower.applied, self.follower.known_head
            ),
        );
        self.follower.lagging.push((conn, hello, now_ms));
        None
    }

    /// Whether this front-end cannot answer `hello` yet: it is catching up with the stream,
    /// or the clinic holds positions beyond its head.
    fn lags_for(&self, hello: &Hello) -> bool {
        let head = self.log.head().saturating_sub(1);
        let beyond = |c: u64| c != CURSOR_UNKNOWN && c > head;
        !self.caught_up()
            || beyond(hello.cursor)
            || hello.subscriptions.iter().any(|s| s.cursor.is_some_and(beyond))
    }

    /// Answers the held `Hello`s this front-end can answer now; closes those held for
    /// [`LAGGING_HELLO_WAIT_MS`] that it still cannot.
    pub(super) fn retry_lagging_hellos(&mut self, now_ms: u64) {
        if self.follower.lagging.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.follower.lagging);
        for (conn, hello, since) in held {
            // Gone, or closed meanwhile (a shutdown, damage found): nothing to answer.
            if !self.conns.get(&conn).is_some_and(|c| matches!(c.state, SessionState::Handshake)) {
                continue;
            }
            if self.follower.damaged.is_some() {
                // Refused as a new Hello would be.
                let _ = self.hold_lagging_hello(now_ms, conn, hello);
                continue;
            }
            if !self.lags_for(&hello) {
                self.answer_hello(conn, hello);
            } else if now_ms.saturating_sub(since) >= LAGGING_HELLO_WAIT_MS {
                *self.counters.refusals.entry("catching_up").or_default() += 1;
                let why = format!(
                    "this hub front-end is catching up with the shared log (applied {} of {}, head position {}): try another front-end",
                    self.follower.applied,
                    self.follower.known_head,
                    self.log.head().saturating_sub(1)
                );
                self.close(conn, ErrorCode::Shutdown, why);
            } else {
                self.follower.lagging.push((conn, hello, since));
            }
        }
    }

    /// Front-end: writes the cursor file if the stream applied up to has moved (the events
    /// it covers are durable already).
    pub fn write_stream_cursor_if_changed(&mut self) -> Result<(), NodeError> {
        if self.config.follows_stream && self.follower.applied != self.follower.written {
            self.write_stream_cursor()?;
        }
        Ok(())
    }

    fn write_stream_cursor(&mut self) -> Result<(), NodeError> {
        let Some(identity) = &self.follower.identity else { return Ok(()) };
        let bytes = encode_stream_cursor(identity, self.follower.applied);
        self.log.directory_mut().write_atomic(STREAM_CURSOR_FILE, &bytes).map_err(storage)?;
        self.follower.written = self.follower.applied;
        Ok(())
    }
}

fn storage(e: shikaku_log::storage::StorageError) -> NodeError {
    NodeError::Log(LogError::Storage { durable: 0, source: e })
}

/// `log/stream.cursor` (STREAM.md): magic, the stream's creation time and name, the sequence
/// applied up to, and a BLAKE3 checksum of everything before it.
pub fn encode_stream_cursor(identity: &StreamIdentity, applied: u64) -> Vec<u8> {
    let name = &identity.name.as_bytes()[..identity.name.len().min(STREAM_NAME_MAX)];
    let mut out = Vec::with_capacity(8 + 8 + 2 + name.len() + 8 + 32);
    out.extend_from_slice(STREAM_CURSOR_MAGIC);
    out.extend_from_slice(&identity.created_ns.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&applied.to_le_bytes());
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Reads `log/stream.cursor`.
pub fn decode_stream_cursor(bytes: &[u8]) -> Result<(StreamIdentity, u64), String> {
    if bytes.len() < 8 + 8 + 2 + 8 + 32 || &bytes[..8] != STREAM_CURSOR_MAGIC {
        return Err("not a stream cursor file".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch".into());
    }
    let u64_at = |at: usize| {
        body.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| "truncated".to_string())
    };
    let created_ns = u64_at(8)?;
    let len = u16::from_le_bytes([body[16], body[17]]) as usize;
    if body.len() != 18 + len + 8 {
        return Err("length mismatch".into());
    }
    let name = std::str::from_utf8(&body[18..18 + len])
        .map_err(|_| "stream name is not UTF-8".to_string())?
        .to_owned();
    let applied = u64_at(18 + len)?;
    Ok((StreamIdentity { name, created_ns }, applied))
}
