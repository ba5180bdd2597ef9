//! What a node is configured with and what it reports: identities, configuration, log lines
//! and outputs for the runtime, counters, errors.

use super::*;

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
    /// Hub: a front-end over a shared stream (JetStream): clinic uploads are published
    /// ([`Output::Publish`]) and stored when the stream delivers them, not stored directly.
    pub follows_stream: bool,
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
            follows_stream: false,
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
    /// Front-end: publish these events to the shared stream (each with its id as the
    /// message id), then call [`Node::handle_published`] with `token`.
    Publish {
        /// Names this publication in the answer.
        token: u64,
        /// The events, in order.
        events: Vec<SignedEvent>,
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
    /// Members erased here (their keys destroyed).
    pub members_erased: u64,
    /// Key store items sent to clinics (hub).
    pub key_items_sent: u64,
    /// Wraps received from the hub (clinic).
    pub key_items_received: u64,
    /// Sealed records opened for a present patient (clinic).
    pub records_opened: u64,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The ledger failed.
    #[error("ledger: {0}")]
    Log(#[from] LogError),
    /// A sealed record could not be looked up (a missing birth date, bad parameters).
    #[error("{0}")]
    Sealed(shikaku_core::seal::SealError),
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
