//! The node state machine: one type for both roles.
//!
//! **Hub**: holds the insurer namespaces it serves (imported locally, signed by insurer keys)
//! and every clinic's namespace. For each clinic session it grants the subscriptions the clinic
//! may read (its own namespace and served insurers; never another clinic's), pumps every
//! granted namespace from the clinic's cursor (hub log position) to the head and then keeps
//! pushing live, signs completeness receipts, answers reconciliation and fetches, and stores
//! the clinic's own events after checking it may write them — refusals are logged and counted.
//!
//! **Clinic**: sends `Hello` with its cursors (from its last receipts), pushes its own events
//! by origin sequence above what the hub holds, stores verified events from the hub, checks
//! every complete receipt against its own set and starts Negentropy repair on a mismatch (or
//! on damage found in its log), and answers checks locally with honest freshness, recording
//! each check in its own namespace.
//!
//! The code is split along its seams: [`config`] (configuration, outputs, counters, errors),
//! [`prepare`] (decoding and signature checks off the node's thread), `hub` (sessions with
//! clinics), `clinic` (the session with the hub, repair, receipts), `store` (the ledger,
//! indexes, snapshots, scrub, receipt file) and `check` (answers and the clinic's own records).
//!
//! Invariant: the node never reads a clock, a socket or a thread; `now_ms` is always an
//! argument and output is pulled with [`Node::poll_transmit`] / [`Node::poll_event`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use shikaku_core::event::{AnswerHash, CheckMode};
use shikaku_core::{
    verify_all, Answer, AnswerCode, CheckQuery, DamageNote, Date, Event, EventBody, EventError,
    EventId, Freshness, Hlc, HlcClock, InsurerNumber, MemberKey, Namespace, NodeId, Projection,
    Replication, SignedEvent, Signer, UnverifiedEvent,
};
use shikaku_log::storage::Directory;
use shikaku_log::{Log, LogConfig, LogError};
use shikaku_protocol::negentropy::{Accumulator, Reconciler};
use shikaku_protocol::wire::{
    event_from_wire, event_to_wire, Ack, ErrorCode, Hello, Message, Receipt, Refusal,
    RefusalReason, Role, Subscription, Welcome, WireError, EVENTS_PER_FRAME_MAX, FETCH_IDS_MAX,
    FRAME_BYTES_FLOOR, FRAME_BYTES_MAX, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};

use crate::index::NsIndex;
use crate::snapshot::{NodeSnapshot, NODE_SNAPSHOT_FILE};

mod check;
mod clinic;
mod config;
mod hub;
mod keys;
mod prepare;
mod store;
mod stream;

pub use check::{ConsentAtCheck, MemberData, PresentedAnswer, PresentedCheck};
pub use config::*;
pub use hub::import_refusal;
pub use keys::{verify_order, KEYS_FILE, KEY_ITEMS_PER_FRAME};
pub use prepare::{prepare, Inbound};
pub use stream::{
    decode_stream_cursor, encode_stream_cursor, prepare_stream, StreamIdentity, StreamMessage,
    LAGGING_HELLO_WAIT_MS, STREAM_CURSOR_FILE,
};

/// A hub's pump of a session's namespaces to one clinic, merged in log-position order so that
/// any prefix is complete across namespaces up to one position (one cursor, one receipt).
#[derive(Debug)]
struct Pump {
    /// Per granted namespace: index into its position list of the next entry to walk.
    next: Vec<usize>,
    /// Per granted namespace: entries at or below this position were held by the clinic
    /// already (its cursor) and are walked without being sent.
    held_up_to: Vec<u64>,
    /// Accumulator of every entry walked (all granted namespaces' events at or below
    /// `position`).
    acc: Accumulator,
    /// The position walked up to.
    position: u64,
    /// Events walked since the last receipt.
    since_receipt: u64,
    /// A receipt is owed (first pass, events walked, or a fetch answered).
    receipt_due: bool,
}

#[derive(Debug)]
struct HubSession {
    peer: PeerIdentity,
    /// The clinic's own namespace first, then the granted subscriptions.
    granted: Vec<Namespace>,
    scope: [u8; 16],
    pump: Pump,
    /// Positions stored from this clinic's own frames: not echoed back to it.
    echo_skip: HashSet<u64>,
    /// Prefetched member events still to send (positions).
    prefetch: VecDeque<u64>,
}

#[derive(Debug, Default)]
struct Repair {
    attempts: u32,
    running: bool,
}

#[derive(Debug)]
struct ClinicSession {
    hub: NodeId,
    /// Own namespace first, then granted subscriptions.
    granted: Vec<Namespace>,
    scope: [u8; 16],
    /// Next origin sequence of our own events to push.
    push_next: u64,
    /// Highest own origin sequence the hub acknowledged.
    acked: u64,
    repairs: BTreeMap<Namespace, Repair>,
    /// Whether the last complete receipt matched this clinic's set.
    in_sync: bool,
    /// Repair round trips per namespace in this session (Reconcile frames and Fetch waves).
    rounds: BTreeMap<Namespace, u32>,
    /// The hub refused some of our events (a clock too far ahead): push again from the last
    /// acknowledged sequence at this local time.
    retry_at_ms: Option<u64>,
    /// Largest Negentropy message this clinic sends: the smaller of the two frame limits,
    /// less 64 bytes for the frame header and namespace.
    reconcile_bytes_max: usize,
    /// The hub speaks protocol 2 (key store replication).
    keys: bool,
    /// A `KeysFrom` is outstanding.
    keys_pending: bool,
    /// Ledger head when key items were last asked for: asked again after a receipt only
    /// when events arrived since (new members' wraps follow their events).
    keys_asked_head: Option<u64>,
}

/// How long a clinic waits before pushing events the hub refused once more.
pub const REFUSED_RETRY_MS: u64 = 60_000;

#[derive(Debug)]
enum SessionState {
    /// Hub: waiting for `Hello`. Clinic: `Hello` sent, waiting for `Welcome`.
    Handshake,
    Hub(Box<HubSession>),
    Clinic(Box<ClinicSession>),
    /// An error was sent; nothing more is read or pumped.
    Closing,
}

#[derive(Debug)]
struct Conn {
    peer: PeerIdentity,
    state: SessionState,
    queue: VecDeque<Vec<u8>>,
    /// Largest frame the peer accepts.
    peer_frame_max: u32,
    /// When the connection came up.
    since_ms: u64,
    /// Clinic: the session cursor and subscriptions its `Hello` sent (the `Welcome`'s verdicts
    /// answer exactly these).
    hello: Option<(u64, Vec<Subscription>)>,
}

/// A hub closes a connection that has not completed its handshake within this time.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Peer names remembered for reports (one per clinic; a hub holds at most 16,384 sessions).
pub const PEER_NAMES_MAX: usize = 100_000;

/// The cursor a clinic sends when it holds events of a namespace but no receipt for it.
pub const CURSOR_UNKNOWN: u64 = u64::MAX;

static EMPTY_INDEX: NsIndex = NsIndex::new();

/// Events gathered into one `Events` frame, within the peer's frame limit and the batch size.
struct EventBatch {
    events: Vec<Vec<u8>>,
    bytes: usize,
    frame_max: usize,
    batch_max: usize,
}

impl EventBatch {
    fn new(frame_max: usize, batch_max: usize) -> EventBatch {
        EventBatch {
            events: Vec::new(),
            bytes: 16,
            frame_max,
            batch_max: batch_max.clamp(1, EVENTS_PER_FRAME_MAX),
        }
    }

    /// Adds the event unless the frame is full (a first event always fits: events are far
    /// below the smallest frame limit).
    fn try_push(&mut self, event: &SignedEvent) -> bool {
        let wire =
            event_to_wire(event.schema_version(), event.canonical_bytes(), &event.signature());
        let full =
            self.events.len() >= self.batch_max || self.bytes + wire.len() + 4 > self.frame_max;
        if full && !self.events.is_empty() {
            return false;
        }
        self.bytes += wire.len() + 4;
        self.events.push(wire);
        true
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    fn into_frame(self) -> Vec<u8> {
        Message::Events { events: self.events }.to_frame()
    }
}

/// A connection failure with the same reason is logged at warn at most this often.
pub const CONNECT_WARNING_EVERY_MS: u64 = 60_000;

/// How far a restarted clinic's numbering jumps ahead of what its ledger holds until the hub
/// confirms where its records end: more than a clinic records between two durable writes, so
/// a lost tail's numbers are never reused (gaps are allowed, reuse is not).
pub const RESTART_SEQ_GAP: u64 = 1 << 16;

/// A serving node writes its snapshot after this many new events (and a tenth of its ledger).
pub const SNAPSHOT_EVERY_EVENTS: u64 = 50_000;
/// ... or after this long with any new event.
pub const SNAPSHOT_EVERY_MS: u64 = 10 * 60 * 1000;

/// Records a serving node scrubs per tick.
pub const SCRUB_PER_TICK: u64 = 8192;

/// Name of the clinic's receipt file in its data directory.
pub const RECEIPTS_FILE: &str = "receipts.shk";
/// Receipt file version 1: the receipt and its namespaces (still read).
const RECEIPTS_MAGIC_V1: &[u8; 8] = b"SHKRCPT1";
/// Version 2 adds the last hub sync time and the hub's acknowledged own sequence, so a clinic
/// restarted while the hub is down still says how fresh it is and what is still unsent.
const RECEIPTS_MAGIC: &[u8; 8] = b"SHKRCPT2";

/// A hub or clinic node.
pub struct Node<D: Directory> {
    config: NodeConfig,
    /// Names of the peers seen since start (from their certificates), for reports.
    peer_names: BTreeMap<NodeId, String>,
    /// Clinic: the highest own sequence the hub last said it holds (0 before any session).
    hub_acked: u64,
    /// Clinic: the lowest origin sequence its next record may take until the hub has told it
    /// (in `Welcome`) how far its records go — after a restart the ledger may have lost a tail
    /// that the hub already holds (a disk that lied about fsync), and a number must never be
    /// used twice. 0 once confirmed.
    seq_floor: u64,
    /// A complete receipt has matched since the ledger was opened: damage found then is
    /// repaired (the missing events were fetched back).
    damage_repaired: bool,
    /// Clinic: when and why the last connection failure was logged at warn.
    last_connect_warning: Option<(u64, String)>,
    /// Hub: every clinic event's origin sequence (origin = its clinic) and id: a clinic never
    /// numbers two different events alike (SPEC.md, "Origin sequences").
    origin_seqs: HashMap<(NodeId, u64), EventId>,
    signer: Signer,
    log: Log<D>,
    projection: Projection,
    /// Wrapped data keys and erased members (schema 2).
    keys: shikaku_core::keystore::KeyStore,
    keys_dirty: bool,
    /// Why `keys.store` could not be read at open.
    keys_damage: Option<String>,
    clock: HlcClock,
    ns: BTreeMap<Namespace, NsIndex>,
    conns: BTreeMap<ConnId, Conn>,
    events: VecDeque<Output>,
    dirty: BTreeSet<ConnId>,
    counters: Counters,
    /// Clinic: the latest receipt (cursor and evidence) and the namespaces it covers.
    receipt: Option<(Receipt, Vec<Namespace>)>,
    receipts_dirty: bool,
    /// Clinic: when it last was in sync with the hub (Unix ms).
    last_sync_ms: Option<u64>,
    /// Clinic: own events by origin sequence → log position.
    own: BTreeMap<u64, u64>,
    /// Hub: highest origin sequence held per clinic.
    clinic_seq: BTreeMap<NodeId, u64>,
    /// Clinic: how far its clock runs ahead of the hub's (from receipts), when it does; event
    /// timestamps are taken from the hub-aligned time so the hub does not refuse them.
    ahead_of_hub_ms: u64,
    /// Events held when the node snapshot was last written or loaded, and when (Unix ms;
    /// `None` until the first tick).
    snapshot_taken: (u64, Option<u64>),
    /// How [`Node::open`] built the state (snapshot used or why not, events folded).
    open_note: String,
    /// Next position to scrub (0: nothing left).
    scrub_next: u64,
    /// Hub front-end over a shared stream: what it applied, uploads waiting for the stream.
    follower: stream::Follower,
}

impl<D: Directory> std::fmt::Debug for Node<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("role", &self.config.role)
            .field("name", &self.config.name)
            .field("events", &self.log.len())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<D: Directory> Node<D> {
    /// Opens (or creates) the node's ledger in `dir`, rebuilding its indexes and projection.
    pub fn open(dir: D, signer: Signer, config: NodeConfig) -> Result<Node<D>, NodeError> {
        let mut log_config = LogConfig::new(signer.node_id());
        log_config.segment_bytes = config.segment_bytes;
        let log = Log::open(dir, log_config)?;
        let projection = configured(Projection::default(), &config);
        let mut node = Node {
            peer_names: BTreeMap::new(),
            hub_acked: 0,
            seq_floor: 0,
            damage_repaired: false,
            last_connect_warning: None,
            origin_seqs: HashMap::new(),
            projection,
            keys: shikaku_core::keystore::KeyStore::default(),
            keys_dirty: false,
            keys_damage: None,
            signer,
            log,
            clock: HlcClock::new(),
            ns: BTreeMap::new(),
            conns: BTreeMap::new(),
            events: VecDeque::new(),
            dirty: BTreeSet::new(),
            counters: Counters::default(),
            receipt: None,
            receipts_dirty: false,
            last_sync_ms: None,
            own: BTreeMap::new(),
            clinic_seq: BTreeMap::new(),
            ahead_of_hub_ms: 0,
            snapshot_taken: (0, None),
            open_note: String::new(),
            scrub_next: 0,
            follower: stream::Follower::default(),
            config,
        };
        node.load_keys();
        let (from, mut note) = match node.load_snapshot() {
            Ok(Some(position)) => {
                (position + 1, format!("node snapshot at position {position} used"))
            }
            Ok(None) => (1, "no node snapshot".to_owned()),
            Err(why) => {
                node.log(Level::Info, format!("node snapshot not used, folding the log: {why}"));
                (1, format!("node snapshot not used ({why})"))
            }
        };
        // Damage found while folding joins the recovery's, logged below.
        node.fold_from(from)?;
        note.push_str(&format!(", {} events folded", node.log.head() - from));
        node.open_note = note;
        // Records an index checkpoint covered were not re-read on open: the node scrubs them
        // while serving, so bit rot since they were written is found and re-fetched.
        if node.log.recovery().checkpoint.as_deref().is_some_and(|c| c.starts_with("used")) {
            node.scrub_next = 1;
        }
        node.snapshot_taken = (from - 1, None);
        for damage in node.log.recovery().damaged.clone() {
            node.log(
                Level::Warn,
                format!("ledger damage, to be re-fetched from the hub: {damage}"),
            );
        }
        if node.config.role == Role::Clinic {
            node.load_receipts();
            if !node.log.is_empty() {
                let own_max = node.own.keys().next_back().copied().unwrap_or(0);
                node.seq_floor = own_max + RESTART_SEQ_GAP + 1;
            }
        }
        Ok(node)
    }

    fn log(&mut self, level: Level, message: String) {
        self.events.push_back(Output::Log { level, message });
    }

    fn refuse(&mut self, reason: RefusalReason, message: String) {
        *self.counters.refusals.entry(reason.label()).or_default() += 1;
        self.log(Level::Warn, format!("refused ({}): {message}", reason.label()));
    }

    /// The names of peers seen since this node was opened (their certificates' names).
    pub fn peer_names(&self) -> &BTreeMap<NodeId, String> {
        &self.peer_names
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.signer.node_id()
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.config.role
    }

    /// The config.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The ledger.
    pub fn ledger(&self) -> &Log<D> {
        &self.log
    }

    /// The projection.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The latest receipt kept (clinic) and the namespaces it covers.
    pub fn receipt(&self) -> Option<&(Receipt, Vec<Namespace>)> {
        self.receipt.as_ref()
    }

    /// Count and fingerprint of what this node holds in a namespace.
    pub fn namespace_state(&self, ns: &Namespace) -> Accumulator {
        self.ns.get(ns).map(NsIndex::accumulator).unwrap_or_default()
    }

    /// A digest of what this node holds: every namespace with its count and fingerprint, in
    /// namespace order (BLAKE3). Two hubs — front-ends of one stream — hold the same events
    /// exactly when their digests are equal.
    pub fn holdings_digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (ns, ix) in &self.ns {
            let mut bytes = Vec::new();
            shikaku_protocol::wire::put_namespace(&mut bytes, ns);
            let acc = ix.accumulator();
            h.update(&bytes);
            h.update(&acc.count().to_le_bytes());
            h.update(&acc.fingerprint());
        }
        *h.finalize().as_bytes()
    }

    /// A digest of everything [`Node::open`] derives from the ledger — every namespace's
    /// positions and items, the origin sequences, the own-record map, the clock and the
    /// projection digest — so tests can show that opening from the node snapshot and folding
    /// every event give the same node.
    pub fn derived_state_digest(&mut self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (ns, index) in &mut self.ns {
            let mut bytes = Vec::new();
            shikaku_protocol::wire::put_namespace(&mut bytes, ns);
            h.update(&bytes);
            for (position, item) in index.by_position() {
                h.update(&position.to_le_bytes());
                h.update(&item.timestamp.to_le_bytes());
                h.update(&item.id);
            }
            for item in index.sorted() {
                h.update(&item.id);
            }
        }
        for (seq, position) in &self.own {
            h.update(&seq.to_le_bytes());
            h.update(&position.to_le_bytes());
        }
        for (clinic, seq) in &self.clinic_seq {
            h.update(&clinic.0);
            h.update(&seq.to_le_bytes());
        }
        let mut origins: Vec<_> = self.origin_seqs.iter().collect();
        origins.sort_unstable();
        for ((clinic, seq), id) in origins {
            h.update(&clinic.0);
            h.update(&seq.to_le_bytes());
            h.update(&id.0);
        }
        h.update(&self.clock.last().0.to_le_bytes());
        h.update(&self.projection.digest());
        *h.finalize().as_bytes()
    }

    /// Namespaces held.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.ns.keys().copied().collect()
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Clinic: round trips of the current session — the handshake plus the longest repair
    /// (namespaces are repaired concurrently); `None` without a session.
    pub fn session_round_trips(&self) -> Option<u32> {
        self.conns.values().find_map(|c| match &c.state {
            SessionState::Clinic(s) => Some(1 + s.rounds.values().copied().max().unwrap_or(0)),
            _ => None,
        })
    }

    /// Connections that may have new frames to send since the last call.
    pub fn take_dirty(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// The next non-frame output.
    pub fn poll_event(&mut self) -> Option<Output> {
        self.events.pop_front()
    }

    /// Whether the node wants more input from `conn` (its queue is below the limit).
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.queue.len() < self.config.queue_frames_max)
    }

    // ---------------------------------------------------------------- connections

    /// The runtime refused a connection before any session (no or wrong certificate
    /// identity, failed TLS handshake): logged and counted.
    pub fn note_refused_connection(&mut self, why: &str) {
        *self.counters.refusals.entry("connection").or_default() += 1;
        self.log(Level::Warn, format!("connection refused: {why}"));
    }

    /// A connection to `peer` is up (its certificate verified by the runtime). A clinic sends
    /// `Hello` at once.
    pub fn handle_connected(&mut self, now_ms: u64, conn: ConnId, peer: PeerIdentity) {
        if self.peer_names.len() < PEER_NAMES_MAX {
            self.peer_names.insert(peer.node, peer.name.clone());
        }
        let mut c = Conn {
            peer: peer.clone(),
            state: SessionState::Handshake,
            queue: VecDeque::new(),
            peer_frame_max: FRAME_BYTES_FLOOR,
            since_ms: now_ms,
            hello: None,
        };
        if self.config.role == Role::Clinic {
            let (cursor, subscriptions) = self.cursors();
            let hello = Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Clinic,
                frame_max: self.config.frame_max,
                cursor,
                subscriptions: subscriptions.clone(),
                prefetch: self.config.prefetch.iter().map(ToString::to_string).collect(),
            });
            c.queue.push_back(hello.to_frame());
            c.hello = Some((cursor, subscriptions));
            self.dirty.insert(conn);
        }
        self.log(Level::Info, format!("connection {conn}: {} {} up", peer.role.name(), peer.name));
        self.conns.insert(conn, c);
    }

    /// The connection is gone.
    pub fn handle_disconnected(&mut self, now_ms: u64, conn: ConnId) {
        let was_in_sync = self
            .conns
            .get(&conn)
            .is_some_and(|c| matches!(&c.state, SessionState::Clinic(s) if s.in_sync));
        if was_in_sync {
            self.last_sync_ms = Some(now_ms);
            self.receipts_dirty = true;
        }
        if let Some(c) = self.conns.remove(&conn) {
            self.log(
                Level::Info,
                format!("connection {conn}: {} {} down", c.peer.role.name(), c.peer.name),
            );
        }
    }

    fn close(&mut self, conn: ConnId, code: ErrorCode, reason: String) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.push_back(
                Message::Error { code: code.code(), message: reason.clone() }.to_frame(),
            );
            c.state = SessionState::Closing;
            self.dirty.insert(conn);
        }
        self.counters.protocol_errors += 1;
        self.log(Level::Warn, format!("connection {conn}: closing session: {reason}"));
        self.events.push_back(Output::Close { conn, code, reason });
    }

    /// A frame that could not even be split (oversized length): close the session.
    pub fn handle_stream_error(&mut self, conn: ConnId, error: &WireError) {
        self.close(conn, error.code(), error.to_string());
    }

    /// A prepared frame from `conn`.
    pub fn handle_inbound(&mut self, now_ms: u64, conn: ConnId, inbound: Inbound) {
        let Some(c) = self.conns.get(&conn) else { return };
        if matches!(c.state, SessionState::Closing) {
            return;
        }
        let result = match inbound {
            Inbound::Bad(e) => Err((e.code(), e.to_string())),
            Inbound::Events(events) => self.on_events(now_ms, conn, events),
            Inbound::Message(m) => self.on_message(now_ms, conn, m),
        };
        if let Err((code, reason)) = result {
            self.close(conn, code, reason);
        }
        self.dirty.insert(conn);
    }

    fn on_message(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        m: Message,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let unexpected = |m: &Message, state: &str| {
            Err((ErrorCode::Unexpected, format!("{} is not allowed {state}", m.name())))
        };
        match (&c.state, self.config.role) {
            (SessionState::Handshake, Role::Hub) => match m {
                Message::Hello(hello) => match self.hold_lagging_hello(now_ms, conn, hello) {
                    Some(hello) => self.on_hello(conn, hello),
                    None => Ok(()),
                },
                other => unexpected(&other, "before Hello"),
            },
            (SessionState::Handshake, Role::Clinic) => match m {
                Message::Welcome(Welcome { version, frame_max, verdicts, own_seq }) => {
                    self.on_welcome(conn, version, frame_max, verdicts, own_seq)
                }
                Message::Error { code, message } => Err((
                    ErrorCode::from_code(code).unwrap_or(ErrorCode::Unexpected),
                    format!("hub refused the session: {message}"),
                )),
                other => unexpected(&other, "before Welcome"),
            },
            (SessionState::Hub(_), _) => match m {
                Message::Reconcile { namespace, message } => {
                    self.on_reconcile(conn, namespace, &message)
                }
                Message::Fetch { namespace, ids } => self.on_fetch(conn, namespace, &ids),
                Message::KeysFrom { store, since, erasures } => {
                    self.on_keys_from(conn, store, since, erasures)
                }
                Message::Error { code, message } => {
                    self.log(
                        Level::Warn,
                        format!("connection {conn}: clinic sent error {code}: {message}"),
                    );
                    Ok(())
                }
                other => unexpected(&other, "from a clinic in session"),
            },
            (SessionState::Clinic(_), _) => match m {
                Message::Receipt(r) => self.on_receipt(now_ms, conn, r),
                Message::Ack(Ack { own_seq, stored, refused }) => {
                    self.on_ack(now_ms, conn, own_seq, stored, refused);
                    Ok(())
                }
                Message::ReconcileReply { namespace, message } => {
                    self.on_reconcile_reply(conn, namespace, &message)
                }
                Message::Keys { store, last, more, items } => {
                    self.on_keys(conn, store, last, more, items)
                }
                Message::Error { code, message } => Err((
                    ErrorCode::from_code(code).unwrap_or(ErrorCode::Unexpected),
                    format!("hub closed the session: {message}"),
                )),
                other => unexpected(&other, "from a hub in session"),
            },
            (SessionState::Closing, _) => Ok(()),
        }
    }

    // ---------------------------------------------------------------- driving the node

    /// The next frame to send on `conn`, if any: queued replies first, then pumped events and
    /// receipts. Call until `None` whenever the connection is in [`Node::take_dirty`].
    pub fn poll_transmit(&mut self, now_ms: u64, conn: ConnId) -> Option<Vec<u8>> {
        let c = self.conns.get_mut(&conn)?;
        if let Some(frame) = c.queue.pop_front() {
            return Some(frame);
        }
        match &c.state {
            SessionState::Hub(_) => self.pump_hub(now_ms, conn),
            SessionState::Clinic(_) => self.pump_clinic(conn),
            _ => None,
        }
    }

    /// Periodic work: persists the receipt; a hub closes connections that have not said
    /// `Hello` within [`HANDSHAKE_TIMEOUT_MS`].
    pub fn handle_tick(&mut self, now_ms: u64) {
        if let Err(e) = self.persist_keys() {
            self.log(Level::Warn, format!("could not persist {KEYS_FILE}: {e}"));
        }
        if let Err(e) = self.persist_receipts() {
            self.log(Level::Warn, format!("could not persist receipts: {e}"));
        }
        if let Err(e) = self.scrub(SCRUB_PER_TICK) {
            self.log(Level::Warn, format!("scrub failed: {e}"));
        }
        self.snapshot_if_due(now_ms);
        if let Err(e) = self.write_stream_cursor_if_changed() {
            self.log(Level::Warn, format!("could not write {STREAM_CURSOR_FILE}: {e}"));
        }
        self.retry_lagging_hellos(now_ms);
        let mut retry = Vec::new();
        for (id, c) in &mut self.conns {
            if let SessionState::Clinic(s) = &mut c.state {
                if s.retry_at_ms.is_some_and(|at| now_ms >= at) {
                    s.retry_at_ms = None;
                    s.push_next = s.push_next.min(s.acked + 1);
                    retry.push(*id);
                }
            }
        }
        self.dirty.extend(retry);
        if self.config.role == Role::Hub {
            let stalled: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    matches!(c.state, SessionState::Handshake)
                        && now_ms.saturating_sub(c.since_ms) > HANDSHAKE_TIMEOUT_MS
                })
                .map(|(id, _)| *id)
                .collect();
            for conn in stalled {
                self.close(conn, ErrorCode::Handshake, "no Hello within 10 s".into());
            }
        }
    }
}

/// `projection` set up as `config` says: what it replicates (a hub every insurer, a clinic
/// its subscriptions), the members it prefetches, and a planted bug if any. The fold never
/// depends on these, so a projection loaded from a snapshot is configured the same way.
fn configured(mut projection: Projection, config: &NodeConfig) -> Projection {
    projection.set_replication(match config.role {
        Role::Hub => Replication::All,
        Role::Clinic => Replication::Insurers(config.insurers.clone()),
    });
    projection.set_prefetched(config.prefetch.iter().cloned());
    #[cfg(feature = "planted-bugs")]
    if config.planted == Some(PlantedBug::CheckIgnoresVoids) {
        projection.plant_ignore_voids();
    }
    projection
}

/// A namespace for logs: the insurer number, or "clinic" and the first 8 hex digits of its id.
pub fn ns_label(ns: &Namespace) -> String {
    match ns {
        Namespace::Insurer(i) => format!("insurer {i}"),
        Namespace::Clinic(node) => format!("clinic {}", &shikaku_core::hex::encode(&node.0)[..8]),
    }
}
