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
    FRAME_BYTES_FLOOR, FRAME_BYTES_MAX, PROTOCOL_VERSION,
};

use crate::index::NsIndex;
use crate::snapshot::{NodeSnapshot, NODE_SNAPSHOT_FILE};

/// A connection, numbered by the runtime.
pub type ConnId = u64;

/// Who is on the other end of a connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Role the deployment's CA gave it.
    pub role: Role,
    /// Its name.
    pub name: String,
    /// Its node id (ed25519 public key).
    pub node: NodeId,
}

/// How a node behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Hub or clinic.
    pub role: Role,
    /// This node's name (logs only).
    pub name: String,
    /// Hub: the insurers it serves. Clinic: the insurers it subscribes to.
    pub insurers: BTreeSet<InsurerNumber>,
    /// Largest frame body this node accepts.
    pub frame_max: u32,
    /// Events per `Events` frame this node sends (at most [`EVENTS_PER_FRAME_MAX`]).
    pub batch_events: usize,
    /// Hub: an intermediate receipt after this many events of a long pump.
    pub receipt_every: u64,
    /// Clinic: repair attempts per namespace per session before giving up until the next one.
    pub repair_attempts: u32,
    /// Frames queued per connection before the node stops reading from it.
    pub queue_frames_max: usize,
    /// Clinic: members of insurers it does not subscribe to whose events it wants anyway
    /// (appointment prefetch).
    pub prefetch: Vec<shikaku_core::MemberKey>,
    /// The keys each insurer signs with. An insurer event signed by another key is refused
    /// (hub: on import; clinic: when received). Insurers without an entry are not checked.
    pub insurer_keys: BTreeMap<InsurerNumber, BTreeSet<shikaku_core::AuthorKey>>,
    /// Preallocated size of each ledger segment (the simulator uses small ones).
    pub segment_bytes: u64,
    /// A known bug to plant, so tests can show the simulator catches it (a build with the
    /// `planted-bugs` feature only).
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub planted: Option<PlantedBug>,
}

/// Bugs the simulator's tests plant on purpose (see `tests/it/sim.rs`).
#[cfg(feature = "planted-bugs")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The merge drops a received event stamped in the same second as one already held in
    /// its namespace (loses concurrent events).
    MergeDropsConcurrent,
    /// Checks answer from an empty record-time cut-off instead of what the node holds.
    CheckIgnoresKnowledge,
    /// The hub resumes a session one position past the clinic's cursor.
    CursorOffByOne,
    /// Checks ignore voids (corrections).
    CheckIgnoresVoids,
}

impl NodeConfig {
    /// Defaults for a role.
    pub fn new(role: Role, name: &str) -> NodeConfig {
        NodeConfig {
            role,
            name: name.to_owned(),
            insurers: BTreeSet::new(),
            frame_max: 1024 * 1024,
            batch_events: 2048,
            receipt_every: 65_536,
            repair_attempts: 3,
            queue_frames_max: 256,
            prefetch: Vec::new(),
            insurer_keys: BTreeMap::new(),
            segment_bytes: 64 * 1024 * 1024,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}

/// Log line severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Refusals, failures.
    Warn,
    /// Sessions, repairs.
    Info,
    /// Per-frame detail.
    Debug,
}

/// Something the runtime must act on, other than frames to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Close the connection's session stream with this error (an `Error` frame has been queued
    /// before it; send it, then close).
    Close {
        /// The connection.
        conn: ConnId,
        /// Code.
        code: ErrorCode,
        /// Detail.
        reason: String,
    },
    /// A log line. Never contains member data.
    Log {
        /// Severity.
        level: Level,
        /// Text.
        message: String,
    },
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Refusals by reason label.
    pub refusals: BTreeMap<&'static str, u64>,
    /// Sessions closed because of a protocol error, by code.
    pub protocol_errors: u64,
    /// Events stored that came from a peer.
    pub events_received: u64,
    /// Events sent to peers.
    pub events_sent: u64,
    /// Receipts kept (clinic) or signed (hub).
    pub receipts: u64,
    /// Complete receipts that did not match the local set (clinic).
    pub receipt_mismatches: u64,
    /// Repairs started (clinic).
    pub repairs: u64,
    /// Events fetched by repair (clinic).
    pub repaired_events: u64,
    /// Checks answered (clinic).
    pub checks: u64,
    /// Checks answered by answer code and mode (clinic), for metrics.
    pub checks_by: BTreeMap<(shikaku_core::AnswerCode, bool), u64>,
    /// Failed attempts to reach the hub (clinic).
    pub connect_failures: u64,
    /// Durable writes of the clinic's own records (one per group of checks recorded together).
    pub record_commits: u64,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The ledger failed.
    #[error("ledger: {0}")]
    Log(#[from] LogError),
    /// An event could not be built or was refused.
    #[error("event: {0}")]
    Event(#[from] EventError),
    /// A clock problem (HLC).
    #[error("clock: {0}")]
    Clock(#[from] shikaku_core::HlcError),
    /// An operation not allowed for this role.
    #[error("{0}")]
    Role(String),
    /// Refused by authorization.
    #[error("refused: {0}")]
    Refused(String),
}

/// A frame after [`prepare`]: decoded, and for `Events`, decoded and signature-verified.
#[derive(Debug)]
pub enum Inbound {
    /// Any message but `Events`.
    Message(Message),
    /// Events, each verified or refused with its index in the frame.
    Events(Vec<Result<SignedEvent, (u32, EventError)>>),
    /// The frame was not valid.
    Bad(WireError),
}

/// Decodes a frame body and verifies the signatures of any events in it (in ed25519 batches).
/// Pure computation, so the runtime can run it off the node's thread, in parallel.
pub fn prepare(body: &[u8], now_ms: u64) -> Inbound {
    match Message::decode(body) {
        Err(e) => Inbound::Bad(e),
        Ok(Message::Events { events }) => {
            let mut out: Vec<Result<SignedEvent, (u32, EventError)>> =
                Vec::with_capacity(events.len());
            let mut to_verify: Vec<UnverifiedEvent> = Vec::with_capacity(events.len());
            let mut slots = Vec::with_capacity(events.len());
            for (i, bytes) in events.iter().enumerate() {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let decoded = event_from_wire(bytes)
                    .map_err(|e| EventError::Malformed(e.to_string()))
                    .and_then(|(version, canonical, signature)| {
                        SignedEvent::decode_unverified(
                            version,
                            canonical,
                            signature,
                            None,
                            Some(now_ms),
                        )
                    });
                match decoded {
                    Ok(unverified) => {
                        slots.push(out.len());
                        out.push(Err((index, EventError::Malformed(String::new()))));
                        to_verify.push(unverified);
                    }
                    Err(e) => out.push(Err((index, e))),
                }
            }
            for (slot, result) in slots.into_iter().zip(verify_all(to_verify)) {
                let index = match &out[slot] {
                    Err((index, _)) => *index,
                    Ok(_) => 0,
                };
                out[slot] = result.map_err(|e| (index, e));
            }
            Inbound::Events(out)
        }
        Ok(message) => Inbound::Message(message),
    }
}

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
        let replication = match config.role {
            Role::Hub => Replication::All,
            Role::Clinic => Replication::Insurers(config.insurers.clone()),
        };
        let mut projection = Projection::new(replication);
        projection.set_prefetched(config.prefetch.iter().cloned());
        #[cfg(feature = "planted-bugs")]
        if config.planted == Some(PlantedBug::CheckIgnoresVoids) {
            projection.plant_ignore_voids();
        }
        let mut node = Node {
            peer_names: BTreeMap::new(),
            hub_acked: 0,
            seq_floor: 0,
            damage_repaired: false,
            last_connect_warning: None,
            origin_seqs: HashMap::new(),
            projection,
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
            config,
        };
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

    /// Indexes and folds every event from `from` to the head.
    fn fold_from(&mut self, mut from: u64) -> Result<(), NodeError> {
        loop {
            let batch = match self.log.read_from(from, 8192) {
                Ok(batch) => batch,
                // A record an index checkpoint covered, rotten since: mark what fails as damage
                // (as recovery would have) and read on.
                Err(e @ LogError::Corrupt { .. }) => {
                    let (_, found) = self.log.scrub(from, 8192)?;
                    if found.is_empty() {
                        return Err(e.into());
                    }
                    for damage in found {
                        self.log(
                            Level::Warn,
                            format!("ledger damage, to be re-fetched from the hub: {damage}"),
                        );
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some((last, _)) = batch.last() else { break };
            from = last + 1;
            for (position, event) in &batch {
                self.index(*position, event);
            }
        }
        Ok(())
    }

    /// Verifies up to `max` more of the records the index checkpoint let [`Node::open`] skip
    /// (the runtime calls this on every tick, [`SCRUB_PER_TICK`] at a time). Damage found is
    /// handled as if open had found it: logged, never served, the node's state rebuilt from
    /// what is readable, and every session restarted so that a clinic re-fetches the damaged
    /// events from its hub. Returns whether records remain to scrub.
    pub fn scrub(&mut self, max: u64) -> Result<bool, NodeError> {
        if self.scrub_next == 0 {
            return Ok(false);
        }
        let (next, found) = self.log.scrub(self.scrub_next, max)?;
        self.scrub_next = if next >= self.log.head() { 0 } else { next };
        if !found.is_empty() {
            for damage in &found {
                self.log(
                    Level::Warn,
                    format!(
                        "ledger damage found by scrub, to be re-fetched from the hub: {damage}"
                    ),
                );
            }
            self.rebuild()?;
            let conns: Vec<ConnId> = self.conns.keys().copied().collect();
            for conn in conns {
                self.close(
                    conn,
                    ErrorCode::Internal,
                    "ledger damage found: session restarted".into(),
                );
            }
        }
        Ok(self.scrub_next != 0)
    }

    /// Derives every index and the projection again from the readable events.
    fn rebuild(&mut self) -> Result<(), NodeError> {
        let mut projection = Projection::new(self.projection.replication().clone());
        projection.set_prefetched(self.config.prefetch.iter().cloned());
        #[cfg(feature = "planted-bugs")]
        if self.config.planted == Some(PlantedBug::CheckIgnoresVoids) {
            projection.plant_ignore_voids();
        }
        self.projection = projection;
        self.ns.clear();
        self.own.clear();
        self.clinic_seq.clear();
        self.origin_seqs.clear();
        self.fold_from(1)
    }

    /// Restores indexes, origin sequences, clock and projection from the node snapshot when
    /// one verifies and belongs to this log; returns the position it covers. `Ok(None)`: no
    /// snapshot; `Err`: why the one found is not used.
    fn load_snapshot(&mut self) -> Result<Option<u64>, String> {
        let bytes = match self.log.directory_mut().read_whole(NODE_SNAPSHOT_FILE) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("unreadable: {e}")),
        };
        if !self.log.recovery().damaged.is_empty() {
            return Err("the ledger has damage".into());
        }
        let snapshot = NodeSnapshot::decode(&bytes).map_err(|e| e.to_string())?;
        if snapshot.position == 0
            || snapshot.position >= self.log.head()
            || self.log.id_at(snapshot.position) != Some(snapshot.id)
        {
            return Err(format!(
                "position {} does not hold the event it names in this ledger",
                snapshot.position
            ));
        }
        let mut projection = snapshot.projection().map_err(|e| e.to_string())?;
        projection.set_replication(self.projection.replication().clone());
        projection.set_prefetched(self.config.prefetch.iter().cloned());
        #[cfg(feature = "planted-bugs")]
        if self.config.planted == Some(PlantedBug::CheckIgnoresVoids) {
            projection.plant_ignore_voids();
        }
        let mut ns: BTreeMap<Namespace, NsIndex> = BTreeMap::new();
        let mut indexes: Vec<Option<NsIndex>> = vec![None; snapshot.namespaces.len()];
        for (offset, which) in snapshot.namespace_of.iter().enumerate() {
            let position = offset as u64 + 1;
            let Some((hlc, id)) = self.log.entry(position) else {
                return Err(format!("position {position} is not in the ledger's index"));
            };
            indexes[*which as usize].get_or_insert_with(NsIndex::new).add(position, hlc, id);
        }
        for (namespace, index) in snapshot.namespaces.iter().zip(indexes) {
            if let Some(index) = index {
                ns.insert(*namespace, index);
            }
        }
        let me = self.signer.node_id();
        for (position, seq) in &snapshot.origins {
            let which = snapshot.namespace_of[(*position - 1) as usize] as usize;
            let Namespace::Clinic(clinic) = snapshot.namespaces[which] else {
                return Err(format!("origin entry at position {position} is not a clinic's"));
            };
            if clinic == me {
                self.own.insert(*seq, *position);
            }
            let held = self.clinic_seq.entry(clinic).or_default();
            *held = (*held).max(*seq);
            if self.config.role == Role::Hub {
                if let Some(id) = self.log.id_at(*position) {
                    self.origin_seqs.entry((clinic, *seq)).or_insert(id);
                }
            }
        }
        if snapshot.clock > self.clock.last() {
            self.clock = HlcClock::resume(snapshot.clock);
        }
        self.ns = ns;
        self.projection = projection;
        Ok(Some(snapshot.position))
    }

    /// How the node was opened: whether its snapshot was used (or why not) and how many
    /// events were folded.
    pub fn open_note(&self) -> &str {
        &self.open_note
    }

    /// Writes the node snapshot (and the log's index checkpoint) at the current head, so the
    /// next open reads two files instead of folding the ledger. Refused while the ledger has
    /// damage (the snapshot would describe events it cannot read).
    pub fn write_snapshot(&mut self, now_ms: u64) -> Result<(), NodeError> {
        let position = self.log.head() - 1;
        let Some(id) = self.log.id_at(position) else { return Ok(()) };
        self.log.write_checkpoint()?;
        let namespaces: Vec<Namespace> = self.ns.keys().copied().collect();
        let mut namespace_of = vec![u32::MAX; position as usize];
        for (which, index) in self.ns.values().enumerate() {
            for (at, _) in index.by_position() {
                namespace_of[(*at - 1) as usize] = which as u32;
            }
        }
        debug_assert!(
            namespace_of.iter().all(|w| *w != u32::MAX),
            "a position outside every index"
        );
        let mut origins: Vec<(u64, u64)> = match self.config.role {
            Role::Clinic => self.own.iter().map(|(seq, at)| (*at, *seq)).collect(),
            Role::Hub => self
                .origin_seqs
                .iter()
                .filter_map(|((_, seq), id)| Some((self.log.position_of(id)?, *seq)))
                .collect(),
        };
        origins.sort_unstable();
        let snapshot = NodeSnapshot {
            role: self.config.role,
            position,
            id,
            clock: self.clock.last(),
            namespaces,
            namespace_of,
            origins,
            projection: self.projection.encode_snapshot(position),
        };
        self.log
            .directory_mut()
            .write_atomic(NODE_SNAPSHOT_FILE, &snapshot.encode())
            .map_err(|e| NodeError::Log(LogError::Storage { durable: 0, source: e }))?;
        self.snapshot_taken = (self.log.len(), Some(now_ms));
        Ok(())
    }

    /// Whether events arrived since the node snapshot was last written or loaded, and the
    /// ledger is whole (a damaged ledger is never snapshotted).
    pub fn has_unsnapshotted_events(&self) -> bool {
        self.log.len() != self.snapshot_taken.0 && self.log.recovery().damaged.is_empty()
    }

    /// Writes the node snapshot when it is due: [`SNAPSHOT_EVERY_EVENTS`] events (and a tenth
    /// of the ledger) since the last one, or any new event after [`SNAPSHOT_EVERY_MS`].
    /// Failures are logged; the ledger itself is unaffected.
    pub fn snapshot_if_due(&mut self, now_ms: u64) -> bool {
        let (held, at) = self.snapshot_taken;
        let since = self.log.len().saturating_sub(held);
        let by_count = since >= SNAPSHOT_EVERY_EVENTS.max(self.log.len() / 10);
        let by_time = since > 0
            && match at {
                Some(at) => now_ms.saturating_sub(at) >= SNAPSHOT_EVERY_MS,
                None => {
                    self.snapshot_taken.1 = Some(now_ms);
                    false
                }
            };
        if !(by_count || by_time) || !self.log.recovery().damaged.is_empty() {
            return false;
        }
        match self.write_snapshot(now_ms) {
            Ok(()) => true,
            Err(e) => {
                self.log(Level::Warn, format!("could not write the node snapshot: {e}"));
                self.snapshot_taken = (self.log.len(), Some(now_ms));
                false
            }
        }
    }

    fn index(&mut self, position: u64, event: &SignedEvent) {
        let e = event.event();
        if e.hlc > self.clock.last() {
            self.clock = HlcClock::resume(e.hlc);
        }
        self.ns.entry(e.namespace).or_default().add(position, e.hlc, event.id());
        if let Namespace::Clinic(clinic) = e.namespace {
            if clinic == self.signer.node_id() && e.origin == clinic {
                self.own.insert(e.origin_seq, position);
            }
            let seq = self.clinic_seq.entry(clinic).or_default();
            if e.origin == clinic {
                *seq = (*seq).max(e.origin_seq);
                // Only a hub checks clinics' numbers (a clinic's own are in `own`).
                if self.config.role == Role::Hub {
                    self.origin_seqs.entry((clinic, e.origin_seq)).or_insert(event.id());
                }
            }
        }
        self.projection.apply(event);
    }

    fn load_receipts(&mut self) {
        let bytes = match self.log.directory_mut().read_whole(RECEIPTS_FILE) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(e) => {
                self.log(Level::Warn, format!("receipts unreadable, syncing from scratch: {e}"));
                return;
            }
        };
        match decode_receipt_file(&bytes) {
            Ok((receipt, namespaces, kept)) => {
                // A restarted clinic that cannot reach its hub says when it last synced (and
                // what the hub had acknowledged), not "never". A version-1 file has no sync
                // time: its complete receipt's signing time stands in.
                match kept {
                    Some(KeptState { last_sync_ms, hub_acked }) => {
                        self.last_sync_ms = (last_sync_ms > 0).then_some(last_sync_ms);
                        self.hub_acked = hub_acked;
                    }
                    None if receipt.complete => self.last_sync_ms = Some(receipt.issued_ms),
                    None => {}
                }
                self.receipt = Some((receipt, namespaces));
            }
            Err(e) => self.log(Level::Warn, format!("receipt file invalid, ignored: {e}")),
        }
    }

    /// Writes the receipts file if receipts changed since it was last written.
    pub fn persist_receipts(&mut self) -> Result<(), NodeError> {
        if !self.receipts_dirty {
            return Ok(());
        }
        let Some((receipt, namespaces)) = &self.receipt else { return Ok(()) };
        let mut out = RECEIPTS_MAGIC.to_vec();
        out.extend_from_slice(&receipt.hub.0);
        out.extend_from_slice(&receipt.clinic.0);
        receipt.encode(&mut out);
        out.extend_from_slice(&self.last_sync_ms.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.hub_acked.to_le_bytes());
        // Sorted and de-duplicated, as the scope digest reads them (SPEC.md).
        let sorted = shikaku_protocol::wire::scope_order(namespaces);
        out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
        for ns in &sorted {
            shikaku_protocol::wire::put_namespace(&mut out, ns);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        self.log
            .directory_mut()
            .write_atomic(RECEIPTS_FILE, &out)
            .map_err(|e| NodeError::Log(LogError::Storage { durable: 0, source: e }))?;
        self.receipts_dirty = false;
        Ok(())
    }

    fn log(&mut self, level: Level, message: String) {
        self.events.push_back(Output::Log { level, message });
    }

    fn refuse(&mut self, reason: RefusalReason, message: String) {
        *self.counters.refusals.entry(reason.label()).or_default() += 1;
        self.log(Level::Warn, format!("refused ({}): {message}", reason.label()));
    }

    /// Hub: also serves every insurer whose namespace the ledger already holds.
    pub fn serve_held_insurers(&mut self) {
        for ns in self.ns.keys() {
            if let Namespace::Insurer(insurer) = ns {
                self.config.insurers.insert(*insurer);
            }
        }
    }

    /// Replaces the insurer key registry (e.g. a reloaded `--insurer-keys` file); events
    /// already stored are not re-judged.
    pub fn set_insurer_keys(
        &mut self,
        keys: BTreeMap<InsurerNumber, BTreeSet<shikaku_core::AuthorKey>>,
    ) {
        self.config.insurer_keys = keys;
    }

    /// Hub: serves `insurer` from now on (an import of its roster).
    pub fn serve_insurer(&mut self, insurer: InsurerNumber) {
        self.config.insurers.insert(insurer);
    }

    /// Hub: why `event` may not be imported here, if it may not — it is not an insurer event,
    /// or it is signed by a key not registered for its insurer.
    pub fn import_refusal(&self, event: &SignedEvent) -> Option<String> {
        match event.event().namespace {
            Namespace::Insurer(_) => self.wrong_insurer_key(event),
            other => Some(format!(
                "event {} is in {}: only insurer events are imported",
                event.id(),
                ns_label(&other)
            )),
        }
    }

    /// Clinic: its own records (checks, declarations) the hub has not acknowledged yet, as of
    /// the last session (all of them before the first).
    pub fn unacked_own(&self) -> u64 {
        self.own.range(self.hub_acked.saturating_add(1)..).count() as u64
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

    /// Whether a clinic is *online*: it has a session with the hub whose last complete receipt
    /// matched this clinic's set of the session's namespaces, where a difference explained by
    /// this clinic's own records not yet acknowledged keeps the state it had (the receipt that
    /// follows their acknowledgement decides). Live pushes keep such a session current. This
    /// is the `online` mode recorded in checks; see protocol/API.md.
    pub fn in_sync(&self) -> bool {
        self.conns.values().any(|c| matches!(&c.state, SessionState::Clinic(s) if s.in_sync))
    }

    /// The ledger damage this node has not repaired yet: found on open (or proven by durable
    /// evidence) and not yet made good by a session whose complete receipt matched.
    pub fn damage_note(&self) -> Option<DamageNote> {
        if self.damage_repaired {
            return None;
        }
        self.log.recovery().damage_note(shikaku_core::RefetchState::Pending)
    }

    /// The freshness this node can honestly claim at `now_ms`: now while a session is in sync
    /// (live push keeps it current), else when it last was.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        let last = if self.in_sync() { Some(now_ms) } else { self.last_sync_ms };
        let hub_position = self.receipt.as_ref().map(|(r, _)| r.position);
        Freshness { now_ms, last_hub_sync_ms: last, hub_position, damage: self.damage_note() }
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

    /// The session cursor (the last receipt's position) and the subscriptions with their own
    /// cursors where that one does not apply: 0 for a namespace not covered by the receipt
    /// and holding nothing, [`CURSOR_UNKNOWN`] for one holding events no receipt covers (a
    /// restored or locally imported ledger) — the hub then only sends a receipt for it and
    /// the clinic reconciles instead of receiving everything again.
    fn cursors(&self) -> (u64, Vec<Subscription>) {
        let own = Namespace::Clinic(self.signer.node_id());
        let covered: &[Namespace] = self.receipt.as_ref().map_or(&[], |(_, ns)| ns.as_slice());
        let override_for = |ns: &Namespace| {
            if covered.contains(ns) {
                None
            } else if self.ns.get(ns).is_some_and(|ix| !ix.is_empty()) {
                Some(CURSOR_UNKNOWN)
            } else {
                Some(0)
            }
        };
        let session = match (&self.receipt, override_for(&own)) {
            (Some((r, _)), None) => r.position,
            // No receipt for the own namespace: the session cursor is its cursor.
            (_, Some(c)) => c,
            (None, None) => 0,
        };
        let subscriptions = self
            .config
            .insurers
            .iter()
            .map(|i| {
                let namespace = Namespace::Insurer(*i);
                let cursor = match override_for(&namespace) {
                    Some(c) if c == session => None,
                    Some(c) => Some(c),
                    None if self.receipt.as_ref().is_some_and(|(r, _)| r.position == session) => {
                        None
                    }
                    None => self.receipt.as_ref().map(|(r, _)| r.position),
                };
                Subscription { namespace, cursor }
            })
            .collect();
        (session, subscriptions)
    }

    /// Hub: lines of an import over the insurer API that were refused (each named in the
    /// reply), counted under `import_line`.
    pub fn note_import_refusals(&mut self, lines: u64) {
        *self.counters.refusals.entry("import_line").or_default() += lines;
    }

    /// The runtime refused a connection before any session (no or wrong certificate
    /// identity, failed TLS handshake): logged and counted.
    pub fn note_refused_connection(&mut self, why: &str) {
        *self.counters.refusals.entry("connection").or_default() += 1;
        self.log(Level::Warn, format!("connection refused: {why}"));
    }

    /// The runtime could not reach the hub (the clinic keeps answering from its ledger).
    pub fn note_connect_failure(&mut self, now_ms: u64, why: &str) {
        self.counters.connect_failures += 1;
        // At warn the first time, when the reason changes, and then at most once a minute (a
        // clinic retries every few seconds): a wrong CA or an expired certificate must not
        // hide at debug level, nor flood the log.
        let repeat = self.last_connect_warning.as_ref().is_some_and(|(at, reason)| {
            reason == why && now_ms.saturating_sub(*at) < CONNECT_WARNING_EVERY_MS
        });
        if repeat {
            self.log(Level::Debug, why.to_owned());
        } else {
            self.last_connect_warning = Some((now_ms, why.to_owned()));
            self.log(Level::Warn, format!("cannot sync with the hub: {why}"));
        }
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
                Message::Hello(Hello {
                    version,
                    role,
                    frame_max,
                    cursor,
                    subscriptions,
                    prefetch,
                }) => {
                    self.on_hello(conn, version, role, frame_max, cursor, subscriptions, prefetch)
                }
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
                Message::Error { code, message } => Err((
                    ErrorCode::from_code(code).unwrap_or(ErrorCode::Unexpected),
                    format!("hub closed the session: {message}"),
                )),
                other => unexpected(&other, "from a hub in session"),
            },
            (SessionState::Closing, _) => Ok(()),
        }
    }

    // ---------------------------------------------------------------- hub side

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        conn: ConnId,
        version: u16,
        role: Role,
        frame_max: u32,
        cursor: u64,
        subscriptions: Vec<Subscription>,
        prefetch: Vec<String>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let peer = c.peer.clone();
        if version != PROTOCOL_VERSION {
            return Err((ErrorCode::Handshake, format!("protocol version {version} is not spoken here (this hub speaks {PROTOCOL_VERSION})")));
        }
        if role != Role::Clinic || peer.role != Role::Clinic {
            return Err((
                ErrorCode::Handshake,
                format!(
                    "only clinics open sessions with a hub (certificate says {}, Hello says {})",
                    peer.role.name(),
                    role.name()
                ),
            ));
        }
        if frame_max < FRAME_BYTES_FLOOR {
            return Err((
                ErrorCode::Handshake,
                format!("frame limit {frame_max} is below the floor of {FRAME_BYTES_FLOOR}"),
            ));
        }
        let own = Namespace::Clinic(peer.node);
        let mut granted = vec![own];
        let mut cursors = vec![cursor];
        let mut verdicts = Vec::with_capacity(subscriptions.len());
        for s in subscriptions {
            let verdict = match s.namespace {
                ns if granted.contains(&ns) => None,
                Namespace::Clinic(_) => Some(RefusalReason::OtherClinic),
                Namespace::Insurer(insurer) if self.config.insurers.contains(&insurer) => None,
                Namespace::Insurer(_) => Some(RefusalReason::NotServed),
            };
            match verdict {
                None if !granted.contains(&s.namespace) => {
                    granted.push(s.namespace);
                    cursors.push(s.cursor.unwrap_or(cursor));
                }
                None => {}
                Some(reason) => {
                    self.refuse(
                        reason,
                        format!("clinic {} asked to read {}", peer.name, ns_label(&s.namespace)),
                    );
                }
            }
            verdicts.push(verdict);
        }
        // A cursor beyond this hub's log (a ledger restored from another hub, or a hub
        // restored from an older backup) claims events this hub never held: it is treated as
        // unknown — nothing is assumed held, the complete receipt then disagrees and the
        // clinic reconciles. Refused (counted) under its own reason, never trusted.
        let head = self.log.head().saturating_sub(1);
        let mut ahead = false;
        for c in cursors.iter_mut() {
            if *c != CURSOR_UNKNOWN && *c > head {
                *c = CURSOR_UNKNOWN;
                ahead = true;
            }
        }
        if ahead {
            *self.counters.refusals.entry("cursor_ahead_of_log").or_default() += 1;
            self.log(
                Level::Warn,
                format!(
                    "clinic {} sent a cursor beyond this hub's log head {head}: treated as unknown",
                    peer.name
                ),
            );
        }
        let pump = self.start_pump(&granted, &cursors);
        let mut prefetch_positions = VecDeque::new();
        for key in prefetch {
            let Ok(member) = key.parse::<shikaku_core::MemberKey>() else { continue };
            let ns = Namespace::Insurer(member.insurer);
            if !self.config.insurers.contains(&member.insurer) || granted.contains(&ns) {
                continue;
            }
            if let Ok(events) = self.log.read_stream(&format!("member:{member}")) {
                for e in events {
                    if let Some(p) = self.log.position_of(&e.id()) {
                        prefetch_positions.push_back(p);
                    }
                }
            }
        }
        // One session per clinic: a newer one replaces an older (a reconnect after a network
        // change, while the old connection has not timed out yet).
        let older: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| {
                **id != conn && c.peer.node == peer.node && matches!(c.state, SessionState::Hub(_))
            })
            .map(|(id, _)| *id)
            .collect();
        for old in older {
            self.close(
                old,
                ErrorCode::Shutdown,
                format!("clinic {} opened a newer session", peer.name),
            );
        }
        let own_seq = self.clinic_seq.get(&peer.node).copied().unwrap_or(0);
        let welcome = Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            frame_max: self.config.frame_max,
            verdicts,
            own_seq,
        });
        self.log(
            Level::Info,
            format!(
                "connection {conn}: session with clinic {} ({} namespaces)",
                peer.name,
                granted.len()
            ),
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer_frame_max = frame_max.min(FRAME_BYTES_MAX);
            c.queue.push_back(welcome.to_frame());
            let scope = shikaku_protocol::wire::scope_digest(&granted);
            c.state = SessionState::Hub(Box::new(HubSession {
                peer,
                granted,
                scope,
                pump,
                echo_skip: HashSet::new(),
                prefetch: prefetch_positions,
            }));
        }
        Ok(())
    }

    /// A pump over `granted` namespaces, each held by the clinic up to its cursor: it starts
    /// at the lowest cursor (the entries below are accounted for without being walked).
    fn start_pump(&self, granted: &[Namespace], cursors: &[u64]) -> Pump {
        let start = cursors.iter().copied().min().unwrap_or(0);
        #[cfg(feature = "planted-bugs")]
        let start = if self.config.planted == Some(PlantedBug::CursorOffByOne)
            && start > 0
            && start != CURSOR_UNKNOWN
        {
            start + 1
        } else {
            start
        };
        let mut next = Vec::with_capacity(granted.len());
        let mut acc = Accumulator::default();
        for ns in granted {
            let (index, prefix) =
                self.ns.get(ns).map(|ix| ix.after_cursor(start)).unwrap_or_default();
            next.push(index);
            acc.merge(&prefix);
        }
        let head = self.log.head().saturating_sub(1);
        let position = if start == CURSOR_UNKNOWN { head } else { start.min(head) };
        Pump {
            next,
            held_up_to: cursors.to_vec(),
            acc,
            position,
            since_receipt: 0,
            receipt_due: true,
        }
    }

    /// The peer's frame limit, after checking that `ns` was granted in `conn`'s hub session.
    fn granted(
        &self,
        conn: ConnId,
        ns: &Namespace,
        what: &str,
    ) -> Result<Option<usize>, (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(None) };
        let SessionState::Hub(s) = &c.state else { return Ok(None) };
        if !s.granted.contains(ns) {
            return Err((
                ErrorCode::Unexpected,
                format!("{what} for {}, which was not granted", ns_label(ns)),
            ));
        }
        Ok(Some(c.peer_frame_max as usize))
    }

    /// `Events` frames holding the stored events `ids` of namespace `ns` (others skipped).
    fn event_frames(
        &mut self,
        ids: impl IntoIterator<Item = EventId>,
        ns: &Namespace,
        frame_max: usize,
    ) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut batch = EventBatch::new(frame_max, self.config.batch_events);
        for id in ids {
            let Some(event) = self.log.position_of(&id).and_then(|p| self.log.read(p).ok()) else {
                continue;
            };
            if event.event().namespace != *ns {
                continue;
            }
            self.counters.events_sent += 1;
            if !batch.try_push(&event) {
                let full = std::mem::replace(
                    &mut batch,
                    EventBatch::new(frame_max, self.config.batch_events),
                );
                frames.push(full.into_frame());
                batch.try_push(&event);
            }
        }
        if !batch.is_empty() {
            frames.push(batch.into_frame());
        }
        frames
    }

    fn on_reconcile(
        &mut self,
        conn: ConnId,
        ns: Namespace,
        message: &[u8],
    ) -> Result<(), (ErrorCode, String)> {
        let Some(frame_max) = self.granted(conn, &ns, "Reconcile")? else { return Ok(()) };
        let items = self.ns.entry(ns).or_default().sorted();
        let reply = Reconciler::new(items, frame_max - 64)
            .and_then(|mut r| r.respond(message))
            .map_err(|e| (ErrorCode::Malformed, format!("reconciliation: {e}")))?;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.push_back(Message::ReconcileReply { namespace: ns, message: reply }.to_frame());
        }
        Ok(())
    }

    fn on_fetch(
        &mut self,
        conn: ConnId,
        ns: Namespace,
        ids: &[EventId],
    ) -> Result<(), (ErrorCode, String)> {
        let Some(frame_max) = self.granted(conn, &ns, "Fetch")? else { return Ok(()) };
        let frames = self.event_frames(ids.iter().copied(), &ns, frame_max);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.extend(frames);
            if let SessionState::Hub(s) = &mut c.state {
                s.pump.receipt_due = true;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn sign_receipt(
        &self,
        clinic: NodeId,
        scope: [u8; 16],
        position: u64,
        acc: &Accumulator,
        complete: bool,
        now_ms: u64,
    ) -> Receipt {
        let mut r = Receipt {
            hub: self.signer.node_id(),
            clinic,
            scope,
            position,
            count: acc.count(),
            fingerprint: acc.fingerprint(),
            complete,
            issued_ms: now_ms,
            signature: shikaku_core::Signature([0; 64]),
        };
        r.signature = self.signer.sign_bytes(&r.signed_bytes());
        r
    }

    /// Hub: the next frame the pump owes `conn`, if any — events of the granted namespaces in
    /// log-position order, a receipt every `receipt_every` events, and a complete receipt when
    /// everything held has been walked.
    fn pump_hub(&mut self, now_ms: u64, conn: ConnId) -> Option<Vec<u8>> {
        let peer_max = self.conns.get(&conn)?.peer_frame_max as usize;
        let batch_max = self.config.batch_events.clamp(1, EVENTS_PER_FRAME_MAX);
        let receipt_every = self.config.receipt_every.max(1);
        let SessionState::Hub(s) = &mut self.conns.get_mut(&conn)?.state else { return None };
        if !s.prefetch.is_empty() {
            let mut batch = EventBatch::new(peer_max, batch_max);
            while let Some(p) = s.prefetch.front().copied() {
                if let Ok(e) = self.log.read(p) {
                    if !batch.try_push(&e) {
                        break;
                    }
                }
                s.prefetch.pop_front();
            }
            self.counters.events_sent += batch.len() as u64;
            return Some(batch.into_frame());
        }
        let indexes: Vec<&NsIndex> = s
            .granted
            .iter()
            .map(|ns| self.ns.get(ns))
            .map(|ix| ix.unwrap_or(&EMPTY_INDEX))
            .collect();
        let pump = &mut s.pump;
        let mut events = Vec::new();
        let mut bytes = 16usize;
        while events.len() < batch_max && pump.since_receipt < receipt_every {
            // The namespace whose next entry has the lowest position.
            let mut best: Option<(usize, u64)> = None;
            for (k, ix) in indexes.iter().enumerate() {
                if let Some((position, _)) = ix.by_position().get(pump.next[k]) {
                    if best.is_none_or(|(_, p)| *position < p) {
                        best = Some((k, *position));
                    }
                }
            }
            let Some((k, position)) = best else { break };
            let item = indexes[k].by_position()[pump.next[k]].1;
            if position > pump.held_up_to[k] && !s.echo_skip.remove(&position) {
                // A damaged entry is not served; the clinic's fingerprint check notices.
                if let Ok(e) = self.log.read(position) {
                    let wire =
                        event_to_wire(e.schema_version(), e.canonical_bytes(), &e.signature());
                    if bytes + wire.len() + 4 > peer_max && !events.is_empty() {
                        break;
                    }
                    bytes += wire.len() + 4;
                    events.push(wire);
                }
            }
            pump.next[k] += 1;
            pump.acc.add(&item.id);
            pump.position = pump.position.max(position);
            pump.since_receipt += 1;
            pump.receipt_due = true;
        }
        if !events.is_empty() {
            self.counters.events_sent += events.len() as u64;
            return Some(Message::Events { events }.to_frame());
        }
        if pump.receipt_due {
            let complete =
                indexes.iter().enumerate().all(|(k, ix)| pump.next[k] >= ix.by_position().len());
            // A receipt never claims a position this hub does not hold.
            let head = self.log.head().saturating_sub(1);
            let position = if complete { pump.position.max(head) } else { pump.position };
            let position = position.min(head);
            pump.position = position;
            let acc = pump.acc;
            pump.receipt_due = false;
            pump.since_receipt = 0;
            let (clinic, scope) = (s.peer.node, s.scope);
            let receipt = self.sign_receipt(clinic, scope, position, &acc, complete, now_ms);
            self.counters.receipts += 1;
            return Some(Message::Receipt(receipt).to_frame());
        }
        None
    }

    fn on_events(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        events: Vec<Result<SignedEvent, (u32, EventError)>>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let peer = c.peer.clone();
        match &c.state {
            SessionState::Hub(_) => self.hub_store_clinic_events(now_ms, conn, &peer, events),
            SessionState::Clinic(s) => {
                let granted = s.granted.clone();
                self.clinic_store_hub_events(now_ms, conn, &granted, events)
            }
            SessionState::Handshake => {
                Err((ErrorCode::Unexpected, "Events before the handshake finished".into()))
            }
            SessionState::Closing => Ok(()),
        }
    }

    fn hub_store_clinic_events(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        peer: &PeerIdentity,
        events: Vec<Result<SignedEvent, (u32, EventError)>>,
    ) -> Result<(), (ErrorCode, String)> {
        let own_ns = Namespace::Clinic(peer.node);
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        let mut batch_seqs: HashMap<u64, EventId> = HashMap::new();
        for (i, result) in events.into_iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let verdict = match result {
                Err((_, e)) => Err((
                    RefusalReason::Invalid,
                    format!("event {index} from clinic {}: {e}", peer.name),
                )),
                Ok(event) => {
                    let e = event.event();
                    if e.namespace != own_ns {
                        Err((
                            RefusalReason::NotWritable,
                            format!(
                                "clinic {} tried to write {} (event {})",
                                peer.name,
                                ns_label(&e.namespace),
                                event.id()
                            ),
                        ))
                    } else if e.author.0 != peer.node.0 || e.origin != peer.node {
                        Err((
                            RefusalReason::WrongAuthor,
                            format!(
                                "event {} in clinic {}'s namespace is not signed by it",
                                event.id(),
                                peer.name
                            ),
                        ))
                    } else if let Some(other) = batch_seqs
                        .get(&e.origin_seq)
                        .or_else(|| self.origin_seqs.get(&(peer.node, e.origin_seq)))
                        .filter(|other| **other != event.id())
                    {
                        *self.counters.refusals.entry("origin_seq_reused").or_default() += 1;
                        Err((
                            RefusalReason::Invalid,
                            format!(
                                "origin_seq_reused: origin_seq {} of clinic {} already numbers event {other}, not {}",
                                e.origin_seq,
                                peer.name,
                                event.id()
                            ),
                        ))
                    } else {
                        batch_seqs.insert(e.origin_seq, event.id());
                        Ok(event)
                    }
                }
            };
            match verdict {
                Ok(event) => accepted.push(event),
                Err((reason, detail)) => {
                    self.refuse(reason, detail.clone());
                    refused.push(Refusal { index, reason, detail });
                }
            }
        }
        let stored = self
            .store(now_ms, &accepted)
            .map_err(|e| (ErrorCode::Internal, format!("storing events: {e}")))?;
        if let Some(c) = self.conns.get_mut(&conn) {
            if let SessionState::Hub(s) = &mut c.state {
                s.echo_skip.extend(stored.iter().copied());
            }
        }
        let own_seq = self.clinic_seq.get(&peer.node).copied().unwrap_or(0);
        let ack = Message::Ack(Ack { own_seq, stored: stored.len() as u32, refused });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.push_back(ack.to_frame());
        }
        Ok(())
    }

    /// Stores verified events durably and indexes the new ones; returns their positions.
    fn store(&mut self, now_ms: u64, events: &[SignedEvent]) -> Result<Vec<u64>, NodeError> {
        #[cfg(feature = "planted-bugs")]
        let planted: Vec<SignedEvent>;
        #[cfg(feature = "planted-bugs")]
        let events = if self.config.planted == Some(PlantedBug::MergeDropsConcurrent) {
            let second = |ns: Namespace, hlc: u64| (ns, (hlc >> 16) / 1000);
            let mut held: BTreeSet<(Namespace, u64)> = self
                .ns
                .iter()
                .flat_map(|(ns, ix)| {
                    ix.by_position().iter().map(move |(_, item)| second(*ns, item.timestamp))
                })
                .collect();
            planted = events
                .iter()
                .filter(|e| {
                    self.log.position_of(&e.id()).is_some()
                        || held.insert(second(e.event().namespace, e.event().hlc.0))
                })
                .cloned()
                .collect();
            &planted[..]
        } else {
            events
        };
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for e in events {
            // Clock skew beyond the drift limit was refused by `prepare`; remember the rest.
            let _ = self.clock.observe(e.event().hlc, now_ms);
        }
        let outcome = self.log.append(events)?;
        let head_before = self.log.head() - outcome.new as u64;
        let mut new_positions = Vec::with_capacity(outcome.new);
        let mut touched: BTreeSet<Namespace> = BTreeSet::new();
        for (event, position) in events.iter().zip(&outcome.positions) {
            // New events get increasing positions in input order; a duplicate within the batch
            // repeats an earlier one.
            if *position >= head_before && new_positions.last().is_none_or(|last| position > last) {
                new_positions.push(*position);
                touched.insert(event.event().namespace);
                self.index(*position, event);
            }
        }
        self.counters.events_received += new_positions.len() as u64;
        // Wake only the sessions that have something new to send: a hub session whose grants
        // cover a new event's namespace, a clinic's session to its hub (its own records).
        let woken: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| match &c.state {
                SessionState::Hub(s) => s.granted.iter().any(|ns| touched.contains(ns)),
                SessionState::Clinic(_) => true,
                SessionState::Handshake | SessionState::Closing => false,
            })
            .map(|(id, _)| *id)
            .collect();
        self.dirty.extend(woken);
        Ok(new_positions)
    }

    /// Hub: imports events signed by the insurers it serves (a local, trusted path).
    pub fn import(&mut self, now_ms: u64, events: &[SignedEvent]) -> Result<usize, NodeError> {
        if self.config.role != Role::Hub {
            return Err(NodeError::Role("only a hub imports insurer events".into()));
        }
        for e in events {
            if let Some(why) = self.wrong_insurer_key(e) {
                return Err(NodeError::Refused(why));
            }
            match e.event().namespace {
                Namespace::Insurer(insurer) if self.config.insurers.contains(&insurer) => {}
                other => {
                    return Err(NodeError::Refused(format!(
                        "event {} is in {}, which this hub does not serve",
                        e.id(),
                        ns_label(&other)
                    )))
                }
            }
        }
        Ok(self.store(now_ms, events)?.len())
    }

    /// Why an insurer event is not signed by a key registered for its insurer, if it is not.
    fn wrong_insurer_key(&self, event: &SignedEvent) -> Option<String> {
        let Namespace::Insurer(insurer) = event.event().namespace else { return None };
        let keys = self.config.insurer_keys.get(&insurer)?;
        (!keys.contains(&event.event().author)).then(|| {
            format!(
                "event {} of insurer {insurer} is signed by key {}, not one registered for that insurer",
                event.id(),
                &shikaku_core::hex::encode(&event.event().author.0)[..16]
            )
        })
    }

    // ---------------------------------------------------------------- clinic side

    fn on_welcome(
        &mut self,
        conn: ConnId,
        version: u16,
        frame_max: u32,
        verdicts: Vec<Option<RefusalReason>>,
        own_seq: u64,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let peer = c.peer.clone();
        if version != PROTOCOL_VERSION {
            return Err((
                ErrorCode::Handshake,
                format!("hub speaks protocol version {version}, this clinic {PROTOCOL_VERSION}"),
            ));
        }
        if peer.role != Role::Hub {
            return Err((
                ErrorCode::Handshake,
                "Welcome from a peer whose certificate is not a hub's".into(),
            ));
        }
        if frame_max < FRAME_BYTES_FLOOR {
            return Err((
                ErrorCode::Handshake,
                format!("hub frame limit {frame_max} is below the floor of {FRAME_BYTES_FLOOR}"),
            ));
        }
        // What our Hello said, not what the cursors would be now: an event stored while the
        // handshake was under way must not change which namespaces count as "unknown".
        let (cursor, subscriptions) = c.hello.clone().unwrap_or_default();
        let own_ns = Namespace::Clinic(self.signer.node_id());
        let own_cursor = cursor;
        if verdicts.len() != subscriptions.len() {
            return Err((
                ErrorCode::Handshake,
                format!(
                    "Welcome has {} verdicts for {} subscriptions",
                    verdicts.len(),
                    subscriptions.len()
                ),
            ));
        }
        let mut granted = vec![Namespace::Clinic(self.signer.node_id())];
        for (sub, verdict) in subscriptions.iter().zip(&verdicts) {
            match verdict {
                None => granted.push(sub.namespace),
                Some(reason) => self.log(
                    Level::Warn,
                    format!(
                        "hub refused subscription to {}: {}",
                        ns_label(&sub.namespace),
                        reason.label()
                    ),
                ),
            }
        }
        let damaged = !self.log.recovery().damaged.is_empty();
        self.hub_acked = own_seq;
        // The hub has said how far this clinic's records go: numbering continues above both.
        self.seq_floor = 0;
        let mut session = ClinicSession {
            hub: peer.node,
            scope: shikaku_protocol::wire::scope_digest(&granted),
            granted: granted.clone(),
            push_next: own_seq + 1,
            acked: own_seq,
            repairs: BTreeMap::new(),
            in_sync: false,
            rounds: BTreeMap::new(),
            retry_at_ms: None,
            // Negentropy messages go to the hub: bounded by its frame limit (and ours).
            reconcile_bytes_max: (frame_max.min(self.config.frame_max).min(FRAME_BYTES_MAX)
                as usize)
                .saturating_sub(64),
        };
        let mut first = Vec::new();
        let unknown: Vec<Namespace> = std::iter::once((own_ns, own_cursor))
            .chain(subscriptions.iter().map(|s| (s.namespace, s.cursor.unwrap_or(cursor))))
            .filter(|(_, c)| *c == CURSOR_UNKNOWN)
            .map(|(ns, _)| ns)
            .collect();
        for ns in &granted {
            // Unreadable ranges in the ledger: reconcile every namespace now. Events held
            // without a receipt: reconcile those namespaces now rather than after the receipt.
            if damaged || unknown.contains(ns) {
                if let Some(frame) = self.start_repair(&mut session, *ns) {
                    first.push(frame);
                }
            }
        }
        let local_max = self.own.keys().next_back().copied().unwrap_or(0);
        if own_seq > local_max {
            self.log(Level::Warn, format!("the hub holds {own_seq} of this clinic's events, the ledger only {local_max}: restored from a backup? fetching them back"));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer_frame_max = frame_max.min(FRAME_BYTES_MAX);
            c.queue.extend(first);
            c.state = SessionState::Clinic(Box::new(session));
        }
        Ok(())
    }

    fn start_repair(&mut self, session: &mut ClinicSession, ns: Namespace) -> Option<Vec<u8>> {
        let repair = session.repairs.entry(ns).or_default();
        if repair.running || repair.attempts >= self.config.repair_attempts {
            return None;
        }
        repair.attempts += 1;
        repair.running = true;
        *session.rounds.entry(ns).or_default() += 1;
        self.counters.repairs += 1;
        let limit = session.reconcile_bytes_max;
        let items = self.ns.entry(ns).or_default().sorted();
        let message = Reconciler::new(items, limit).and_then(|mut r| r.initiate());
        match message {
            Ok(message) => {
                self.events.push_back(Output::Log {
                    level: Level::Info,
                    message: format!("repair of {} started", ns_label(&ns)),
                });
                Some(Message::Reconcile { namespace: ns, message }.to_frame())
            }
            Err(e) => {
                self.events.push_back(Output::Log {
                    level: Level::Warn,
                    message: format!("repair of {} could not start: {e}", ns_label(&ns)),
                });
                None
            }
        }
    }

    fn clinic_session_mut(&mut self, conn: ConnId) -> Option<&mut ClinicSession> {
        match &mut self.conns.get_mut(&conn)?.state {
            SessionState::Clinic(s) => Some(s),
            _ => None,
        }
    }

    fn clinic_store_hub_events(
        &mut self,
        now_ms: u64,
        _conn: ConnId,
        granted: &[Namespace],
        events: Vec<Result<SignedEvent, (u32, EventError)>>,
    ) -> Result<(), (ErrorCode, String)> {
        let own = self.signer.node_id();
        let mut accepted = Vec::with_capacity(events.len());
        for result in events {
            match result {
                Err((index, e)) => {
                    self.refuse(RefusalReason::Invalid, format!("event {index} from the hub: {e}"))
                }
                Ok(event) => {
                    let ns = event.event().namespace;
                    let prefetched = matches!(ns, Namespace::Insurer(_))
                        && event
                            .event()
                            .body
                            .membership_subject()
                            .is_some_and(|m| self.config.prefetch.contains(m));
                    if !granted.contains(&ns) && !prefetched {
                        self.refuse(
                            RefusalReason::NotWritable,
                            format!(
                                "hub sent event {} of {}, not subscribed",
                                event.id(),
                                ns_label(&ns)
                            ),
                        );
                    } else if let Some(why) = self.wrong_insurer_key(&event) {
                        self.refuse(RefusalReason::WrongAuthor, why);
                    } else if matches!(ns, Namespace::Clinic(c) if c == own)
                        && event.event().author.0 != own.0
                    {
                        self.refuse(
                            RefusalReason::WrongAuthor,
                            format!(
                                "event {} in this clinic's namespace is not signed by it",
                                event.id()
                            ),
                        );
                    } else {
                        accepted.push(event);
                    }
                }
            }
        }
        self.store(now_ms, &accepted)
            .map_err(|e| (ErrorCode::Internal, format!("storing events: {e}")))?;
        Ok(())
    }

    fn on_receipt(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        mut r: Receipt,
    ) -> Result<(), (ErrorCode, String)> {
        let own = self.signer.node_id();
        let Some(session) = self.clinic_session_mut(conn) else { return Ok(()) };
        r.hub = session.hub;
        r.clinic = own;
        if r.scope != session.scope {
            return Err((
                ErrorCode::Unexpected,
                "receipt covers other namespaces than this session's".into(),
            ));
        }
        let granted = session.granted.clone();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&r.hub.0)
            .map_err(|_| (ErrorCode::Handshake, "hub node id is not a valid key".to_string()))?;
        let signature = ed25519_dalek::Signature::from_bytes(&r.signature.0);
        if key.verify_strict(&r.signed_bytes(), &signature).is_err() {
            return Err((ErrorCode::Malformed, "receipt signature does not verify".into()));
        }
        self.counters.receipts += 1;
        // The hub signed this moments ago: a local clock far ahead of it would stamp events the
        // hub refuses; follow the hub's time for timestamps instead (and say so).
        let ahead = now_ms.saturating_sub(r.issued_ms);
        if ahead > 60_000 && self.ahead_of_hub_ms == 0 {
            self.log(
                Level::Warn,
                format!(
                    "this clock runs {} s ahead of the hub's; timestamps follow the hub's time",
                    ahead / 1000
                ),
            );
        }
        self.ahead_of_hub_ms = if ahead > 60_000 { ahead } else { 0 };
        self.receipt = Some((r, granted.clone()));
        self.receipts_dirty = true;
        if !r.complete {
            return Ok(());
        }
        let mut local = Accumulator::default();
        for ns in &granted {
            local.merge(&self.namespace_state(ns));
        }
        let matches = local.count() == r.count && local.fingerprint() == r.fingerprint;
        let local_own_max = self.own.keys().next_back().copied().unwrap_or(0);
        let Some(session) = self.clinic_session_mut(conn) else { return Ok(()) };
        if matches {
            session.in_sync = true;
            for rep in session.repairs.values_mut() {
                rep.attempts = 0;
            }
            // Whatever was damaged on open has come back from the hub: the set is whole.
            self.damage_repaired = true;
            self.last_sync_ms = Some(now_ms);
            self.receipts_dirty = true;
            return Ok(());
        }
        // Our own events still on their way to the hub may explain the difference: wait for the
        // receipt that follows their acknowledgement before reconciling anything (found by the
        // simulator: reconciling every namespace here was pure waste). Nor does this clinic's
        // own upload lag make it any less current in what the hub sends it: a session that was
        // in sync stays so (a check recorded while the previous record was still in flight was
        // otherwise recorded as offline, with staleness 0).
        if session.acked < local_own_max {
            return Ok(());
        }
        session.in_sync = false;
        self.counters.receipt_mismatches += 1;
        self.log(
            Level::Info,
            format!(
                "hub holds {} events of this session's namespaces, this clinic {}: reconciling",
                r.count,
                local.count()
            ),
        );
        let mut session_taken = match self
            .conns
            .get_mut(&conn)
            .map(|c| std::mem::replace(&mut c.state, SessionState::Closing))
        {
            Some(SessionState::Clinic(s)) => s,
            Some(other) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = other;
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        let mut frames = Vec::new();
        for ns in &granted {
            frames.extend(self.start_repair(&mut session_taken, *ns));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = SessionState::Clinic(session_taken);
            c.queue.extend(frames);
        }
        Ok(())
    }

    fn on_ack(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        own_seq: u64,
        stored: u32,
        refused: Vec<Refusal>,
    ) {
        let any_refused = !refused.is_empty();
        if own_seq > self.hub_acked {
            self.hub_acked = own_seq;
            // Kept with the receipt: a restart must not count acknowledged records as unsent.
            self.receipts_dirty = true;
        }
        if let Some(s) = self.clinic_session_mut(conn) {
            s.acked = s.acked.max(own_seq);
            if any_refused && s.retry_at_ms.is_none() {
                s.retry_at_ms = Some(now_ms + REFUSED_RETRY_MS);
            }
        }
        for r in refused {
            self.log(
                Level::Warn,
                format!(
                    "hub refused event {} of ours ({}): {}",
                    r.index,
                    r.reason.label(),
                    r.detail
                ),
            );
        }
        self.log(
            Level::Debug,
            format!("hub acknowledged {stored} events, up to own sequence {own_seq}"),
        );
    }

    fn on_reconcile_reply(
        &mut self,
        conn: ConnId,
        ns: Namespace,
        message: &[u8],
    ) -> Result<(), (ErrorCode, String)> {
        let own_ns = Namespace::Clinic(self.signer.node_id());
        // The session's Negentropy limit, if a repair of `ns` is running in it.
        let Some(limit) = self
            .clinic_session_mut(conn)
            .filter(|s| s.repairs.get(&ns).is_some_and(|r| r.running))
            .map(|s| s.reconcile_bytes_max)
        else {
            return Err((
                ErrorCode::Unexpected,
                format!("ReconcileReply for {} without a repair running", ns_label(&ns)),
            ));
        };
        let items = self.ns.entry(ns).or_default().sorted();
        let mut have = Vec::new();
        let mut need = Vec::new();
        let next = Reconciler::resume_initiator(items, limit)
            .and_then(|mut r| r.reconcile(message, &mut have, &mut need))
            .map_err(|e| (ErrorCode::Malformed, format!("reconciliation: {e}")))?;
        let mut frames = Vec::new();
        for chunk in need.chunks(FETCH_IDS_MAX) {
            frames.push(
                Message::Fetch {
                    namespace: ns,
                    ids: chunk.iter().map(|id| EventId(*id)).collect(),
                }
                .to_frame(),
            );
        }
        self.counters.repaired_events += need.len() as u64;
        if !have.is_empty() {
            if ns == own_ns {
                let frame_max =
                    self.conns.get(&conn).map_or(FRAME_BYTES_FLOOR, |c| c.peer_frame_max) as usize;
                frames.extend(self.event_frames(
                    have.iter().map(|id| EventId(*id)),
                    &ns,
                    frame_max,
                ));
            } else {
                self.log(
                    Level::Warn,
                    format!(
                        "{}: this clinic holds {} events the hub does not",
                        ns_label(&ns),
                        have.len()
                    ),
                );
            }
        }
        let done = next.is_none();
        let fetching = !need.is_empty();
        if let Some(message) = next {
            frames.push(Message::Reconcile { namespace: ns, message }.to_frame());
        }
        if let Some(s) = self.clinic_session_mut(conn) {
            // Another round trip when the reconciliation goes on, or when it ends by fetching.
            if !done || fetching {
                *s.rounds.entry(ns).or_default() += 1;
            }
            if done {
                if let Some(r) = s.repairs.get_mut(&ns) {
                    r.running = false;
                }
            }
        }
        if done {
            self.log(
                Level::Info,
                format!(
                    "repair of {} reconciled: fetching {} events, sending {}",
                    ns_label(&ns),
                    need.len(),
                    if ns == own_ns { have.len() } else { 0 }
                ),
            );
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.extend(frames);
        }
        Ok(())
    }

    /// Clinic: the next own-event frame owed to the hub.
    fn pump_clinic(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        let batch_max = self.config.batch_events.clamp(1, EVENTS_PER_FRAME_MAX);
        let peer_max = self.conns.get(&conn)?.peer_frame_max as usize;
        let s = self.clinic_session_mut(conn)?;
        let from = s.push_next;
        let mut batch = EventBatch::new(peer_max, batch_max);
        let mut next = from;
        for (seq, position) in self.own.range(from..) {
            // An unreadable (damaged) own event is skipped; the hub's copy comes back by repair.
            if let Ok(e) = self.log.read(*position) {
                if !batch.try_push(&e) {
                    break;
                }
            }
            next = seq + 1;
        }
        if let Some(s) = self.clinic_session_mut(conn) {
            s.push_next = next;
        }
        if batch.is_empty() {
            return None;
        }
        self.counters.events_sent += batch.len() as u64;
        Some(batch.into_frame())
    }

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
        if let Err(e) = self.persist_receipts() {
            self.log(Level::Warn, format!("could not persist receipts: {e}"));
        }
        if let Err(e) = self.scrub(SCRUB_PER_TICK) {
            self.log(Level::Warn, format!("scrub failed: {e}"));
        }
        self.snapshot_if_due(now_ms);
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

    // ---------------------------------------------------------------- checks

    /// Clinic: answers a check locally and records it in the clinic's namespace (access audit);
    /// the record is pushed to the hub while connected.
    pub fn check(
        &mut self,
        now_ms: u64,
        query: &CheckQuery,
        service_date: Date,
    ) -> Result<Answer, NodeError> {
        let mut answers = self.check_many(now_ms, &[(query.clone(), service_date)])?;
        answers.pop().ok_or_else(|| NodeError::Role("no answer".into()))
    }

    /// Clinic: answers checks that arrived together and records them with one durable write
    /// (group commit): every answer is given from the same knowledge, and none is returned
    /// before all the records are durable. Fails as a whole if the records cannot be stored.
    pub fn check_many(
        &mut self,
        now_ms: u64,
        queries: &[(CheckQuery, Date)],
    ) -> Result<Vec<Answer>, NodeError> {
        if self.config.role != Role::Clinic {
            return Err(NodeError::Role("checks are answered by clinic nodes".into()));
        }
        let online = self.in_sync();
        let freshness = self.freshness(now_ms);
        let as_of = Hlc::end_of_ms(now_ms).max(self.clock.last());
        #[cfg(feature = "planted-bugs")]
        let cutoff = if self.config.planted == Some(PlantedBug::CheckIgnoresKnowledge) {
            Hlc(0)
        } else {
            as_of
        };
        #[cfg(not(feature = "planted-bugs"))]
        let cutoff = as_of;
        let mut answers = Vec::with_capacity(queries.len());
        let mut bodies = Vec::with_capacity(queries.len());
        for (query, service_date) in queries {
            let mut answer = self.projection.check(query, *service_date, cutoff, freshness);
            answer.knowledge.as_of = as_of;
            bodies.push(EventBody::CheckPerformed {
                query: query.clone(),
                service_date: *service_date,
                mode: if online { CheckMode::Online } else { CheckMode::Offline },
                knowledge: as_of,
                hub_position: freshness.hub_position.unwrap_or(0),
                code: answer.code,
                answer_hash: AnswerHash(answer.hash().0),
                decided_by: answer.decided_by.clone(),
            });
            answers.push(answer);
        }
        self.record_many(now_ms, bodies)?;
        for answer in &answers {
            self.counters.checks += 1;
            *self.counters.checks_by.entry((answer.code, online)).or_default() += 1;
        }
        Ok(answers)
    }

    fn max_acked(&self) -> u64 {
        self.conns
            .values()
            .filter_map(|c| match &c.state {
                SessionState::Clinic(s) => Some(s.acked),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether this node holds anything about the card or member `query` names: an event of
    /// its stream (the member's facts, this clinic's checks and declarations by that card or
    /// key) or, for a card, a link to a member.
    pub fn has_record_of(&self, query: &CheckQuery) -> Result<bool, NodeError> {
        if self.log.stream_version(&shikaku_log::stream_of_query(query))? > 0 {
            return Ok(true);
        }
        Ok(matches!(query, CheckQuery::Card(_)) && self.member_of_card(query).is_some())
    }

    /// The member a query names, when it names exactly one this node knows: a member key this
    /// node has a record of, or the member a card is linked to (none for a card linked to
    /// several members).
    pub fn member_of(&self, query: &CheckQuery) -> Option<MemberKey> {
        match query {
            CheckQuery::Member(key) => {
                self.has_record_of(query).ok().filter(|known| *known).map(|_| key.clone())
            }
            CheckQuery::Card(_) => self.member_of_card(query),
        }
    }

    fn member_of_card(&self, query: &CheckQuery) -> Option<MemberKey> {
        // Links do not depend on the service date: any date answers which member it names.
        let answer = self.projection.check(query, Date(0), Hlc(u64::MAX), Freshness::default());
        match answer.code {
            AnswerCode::MultipleMatches => None,
            _ => answer.member,
        }
    }

    /// Signs and stores an event in this node's own namespace (clinic), e.g. a
    /// self-declaration; it is pushed to the hub like check records.
    pub fn record(&mut self, now_ms: u64, body: EventBody) -> Result<SignedEvent, NodeError> {
        let mut events = self.record_many(now_ms, vec![body])?;
        events.pop().ok_or_else(|| NodeError::Role("nothing recorded".into()))
    }

    /// Records several events in the clinic's namespace with one durable write, numbered
    /// consecutively.
    pub fn record_many(
        &mut self,
        now_ms: u64,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<SignedEvent>, NodeError> {
        let me = self.signer.node_id();
        let first = (self.own.keys().next_back().copied().unwrap_or(0).max(self.max_acked()) + 1)
            .max(self.seq_floor);
        let mut events = Vec::with_capacity(bodies.len());
        for (offset, body) in bodies.into_iter().enumerate() {
            let hlc = self.clock.tick(now_ms.saturating_sub(self.ahead_of_hub_ms))?;
            let event = Event {
                namespace: Namespace::Clinic(me),
                origin: me,
                origin_seq: first + offset as u64,
                hlc,
                author: self.signer.public(),
                body,
            };
            events.push(self.signer.sign(event)?);
        }
        self.store(now_ms, &events)?;
        self.counters.record_commits += 1;
        Ok(events)
    }
}

/// A namespace for logs: the insurer number, or "clinic" and the first 8 hex digits of its id.
pub fn ns_label(ns: &Namespace) -> String {
    match ns {
        Namespace::Insurer(i) => format!("insurer {i}"),
        Namespace::Clinic(node) => format!("clinic {}", &shikaku_core::hex::encode(&node.0)[..8]),
    }
}

/// What a version-2 receipt file keeps beside the receipt.
struct KeptState {
    last_sync_ms: u64,
    hub_acked: u64,
}

type ReceiptFile = (Receipt, Vec<Namespace>, Option<KeptState>);

fn decode_receipt_file(bytes: &[u8]) -> Result<ReceiptFile, String> {
    let v2 = bytes.get(..8) == Some(&RECEIPTS_MAGIC[..]);
    if bytes.len() < 8 + 32 || !(v2 || &bytes[..8] == RECEIPTS_MAGIC_V1) {
        return Err("not a receipt file".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch".into());
    }
    let mut r = shikaku_protocol::wire::Reader::new(&body[8..]);
    let hub = NodeId(r.array("receipt hub").map_err(|e| e.to_string())?);
    let clinic = NodeId(r.array("receipt clinic").map_err(|e| e.to_string())?);
    let mut receipt = Receipt::decode(&mut r).map_err(|e| e.to_string())?;
    receipt.hub = hub;
    receipt.clinic = clinic;
    let kept = if v2 {
        Some(KeptState {
            last_sync_ms: r.u64("last sync").map_err(|e| e.to_string())?,
            hub_acked: r.u64("acknowledged own sequence").map_err(|e| e.to_string())?,
        })
    } else {
        None
    };
    let n = r.u32("namespace count").map_err(|e| e.to_string())?;
    let mut namespaces = Vec::new();
    for _ in 0..n.min(4096) {
        namespaces.push(r.namespace().map_err(|e| e.to_string())?);
    }
    if shikaku_protocol::wire::scope_digest(&namespaces) != receipt.scope {
        return Err("namespaces do not match the receipt's scope".into());
    }
    Ok((receipt, namespaces, kept))
}
