//! The log: recovery on open ([`recovery`]), group-committed appends ([`append`]), reads
//! ([`read`]), the eventstore API ([`stream`]), scrub and verification ([`verify`]); the types
//! and the in-memory indexes they share are here.

use std::collections::HashMap;

use shikaku_core::event::CheckQueryRef;
use shikaku_core::{EventId, Hlc, NodeId, SignedEvent};

use crate::checkpoint::{IndexCheckpoint, INDEX_CHECKPOINT_FILE};
use crate::format::{
    self, checksum_key, record_bytes, FormatError, RecordHeader, SegmentHeader, FLAG_BATCH_END,
    FORMAT_VERSION, KIND_EVENT, KIND_SEAL, MIN_COMPATIBLE_VERSION, RECORD_HEADER_BYTES,
    SEAL_PAYLOAD_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::storage::{Directory, Storage, StorageError};

mod append;
mod read;
mod recovery;
mod stream;
mod verify;

pub use stream::{stream_of, stream_of_query, Subscription, SubscriptionBatch};
use stream::{stream_tag, write_stream};

/// How a log is laid out.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The node whose log this is (keys the checksums; every segment must name it).
    pub node: NodeId,
    /// Preallocated size of each segment file.
    pub segment_bytes: u64,
}

impl LogConfig {
    /// 64 MiB segments.
    pub fn new(node: NodeId) -> LogConfig {
        LogConfig { node, segment_bytes: 64 * 1024 * 1024 }
    }
}

/// A damaged range found on open or verify: never served; the sync layer re-fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Segment file.
    pub segment: String,
    /// Byte offset in it where the damage starts.
    pub offset: u64,
    /// First sequence number missing because of it.
    pub first_seq: u64,
    /// Sequence numbers missing (0 when the count is unknown: damage at the end of a sealed
    /// segment's data).
    pub missing: u64,
    /// What was wrong.
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} offset {}: {} (sequence {} onward, {} records unreadable)",
            self.segment, self.offset, self.reason, self.first_seq, self.missing
        )
    }
}

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments opened.
    pub segments: usize,
    /// Records (events and seals) verified.
    pub records: u64,
    /// A torn tail that was never acknowledged and was cut: (segment, offset, bytes).
    pub truncated_tail: Option<(String, u64, u64)>,
    /// Damage before the tail.
    pub damaged: Vec<Damage>,
    /// Whether an index checkpoint was used (or why it was ignored).
    pub checkpoint: Option<String>,
    /// Events a durable record of this log (its index checkpoint) proves were stored: when
    /// more than recovery found, the difference is reported as loss in `damaged`.
    pub evidence_events: Option<u64>,
}

impl Recovery {
    /// The damage this log was opened with, as an answer carries it (`None` when whole);
    /// `refetch` says whether a hub will send the missing events back.
    pub fn damage_note(
        &self,
        refetch: shikaku_core::RefetchState,
    ) -> Option<shikaku_core::DamageNote> {
        (!self.damaged.is_empty()).then(|| shikaku_core::DamageNote {
            ranges: self.damaged.len() as u32,
            records: self.damaged.iter().map(|d| d.missing).sum(),
            first_position: self.damaged.iter().map(|d| d.first_seq).min().unwrap_or(0),
            refetch,
        })
    }
}

/// Why a log operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The storage failed (full disk, IO error). `durable` events of the batch were made
    /// durable before the failure; the rest were not stored.
    #[error("storage failed after {durable} events of the batch were made durable: {source}")]
    Storage {
        /// The storage error.
        source: StorageError,
        /// Events of the batch that are durable.
        durable: usize,
    },
    /// A segment belongs to another node's log.
    #[error("segment {segment} belongs to node {found}, not to this node ({expected})")]
    ForeignSegment {
        /// Segment file.
        segment: String,
        /// Node named in it.
        found: NodeId,
        /// This node.
        expected: NodeId,
    },
    /// A segment header cannot be read (bad magic, newer format, checksum).
    #[error("segment {segment}: {source}")]
    Segment {
        /// Segment file.
        segment: String,
        /// Why.
        source: FormatError,
    },
    /// A segment is missing from the sequence.
    #[error("segment {expected} is missing (found {found} instead)")]
    MissingSegment {
        /// Expected file.
        expected: String,
        /// Found file.
        found: String,
    },
    /// The sequence number does not exist.
    #[error("no event at sequence {0}")]
    NoSuchSequence(u64),
    /// The record at that sequence lies in a damaged range and is not served.
    #[error("sequence {seq} is in a damaged range ({damage})")]
    Damaged {
        /// Sequence asked for.
        seq: u64,
        /// The damage.
        damage: String,
    },
    /// A record read back failed verification.
    #[error("record at sequence {seq} ({segment} offset {offset}) is corrupt: {reason}")]
    Corrupt {
        /// Sequence.
        seq: u64,
        /// Segment.
        segment: String,
        /// Offset.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// Optimistic concurrency: the stream moved since the writer read it.
    #[error("stream {stream} is at version {current}, not {expected:?}")]
    WrongExpectedVersion {
        /// Stream.
        stream: String,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// Where the stream is.
        current: u64,
    },
    /// An event appended to a stream is about another stream.
    #[error("event {event} belongs to stream {actual}, not {stream}")]
    EventOutsideStream {
        /// Stream appended to.
        stream: String,
        /// The event's own stream.
        actual: String,
        /// The event.
        event: EventId,
    },
    /// An event is larger than a segment can hold.
    #[error("event of {0} bytes does not fit in a segment")]
    TooLarge(usize),
    /// The configuration cannot describe a log (a segment size outside what the format's
    /// 32-bit offsets address).
    #[error("invalid log configuration: {0}")]
    Config(String),
}

fn storage(durable: usize) -> impl Fn(StorageError) -> LogError {
    move |source| LogError::Storage { source, durable }
}

/// Optimistic-concurrency expectation for [`Log::append_to_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have exactly this many events.
    Exact(u64),
}

/// Event ids are blake3 outputs, already uniformly random: their first eight bytes are a
/// perfectly good hash, and much cheaper than SipHash over 32 bytes.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(chunk) = bytes.chunks(8).next() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
}

type IdMap<V> = HashMap<EventId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// What [`Log::append`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppendOutcome {
    /// Sequence number of each input event (the existing one for duplicates).
    pub positions: Vec<u64>,
    /// How many were new.
    pub new: usize,
}

/// Counts for `shikaku ledger stats`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Segment files.
    pub segments: usize,
    /// Events held.
    pub events: u64,
    /// Bytes of records written (headers, payloads, checksums, seals).
    pub record_bytes: u64,
    /// Bytes of segment files on disk (preallocated).
    pub file_bytes: u64,
    /// Distinct streams.
    pub streams: usize,
    /// Smallest and largest hlc.
    pub hlc_range: Option<(Hlc, Hlc)>,
    /// Damaged ranges (never served).
    pub damaged: Vec<Damage>,
    /// Next sequence number.
    pub next_seq: u64,
}

/// What [`Log::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Records whose checksum, chain, id and payload verified.
    pub records: u64,
    /// Events whose signatures verified.
    pub signatures: u64,
    /// Problems, in log order.
    pub problems: Vec<String>,
}

#[derive(Debug)]
struct Segment<F> {
    name: String,
    file: F,
    header: SegmentHeader,
    write_offset: u64,
    sealed: bool,
}

/// Where an event lives, and what the indexes need to know about it (also the unit of the
/// index checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) tag: u32,
    pub(crate) hlc: Hlc,
    pub(crate) id: EventId,
}

const DAMAGED: u32 = u32::MAX;
/// How much of a segment recovery reads at a time.
const LOAD_CHUNK_BYTES: usize = 4 * 1024 * 1024;

fn segment_name(index: u64) -> String {
    format!("segment-{index:010}.shk")
}

/// A node's log. One writer (`&mut self`); reads through `&self`.
#[derive(Debug)]
pub struct Log<D: Directory> {
    dir: D,
    config: LogConfig,
    key: [u8; 32],
    segments: Vec<Segment<D::File>>,
    last_hash: [u8; 32],
    next_seq: u64,
    locations: Vec<Location>,
    by_id: IdMap<u64>,
    /// `(stream tag, seq)` for everything found on open, sorted once: one allocation for
    /// millions of streams instead of one per stream.
    stream_base: Vec<(u32, u64)>,
    /// Streams of events appended since open.
    stream_tail: HashMap<u32, Vec<u64>>,
    /// True while open() is indexing (index into `stream_base`, sorted at the end).
    opening: bool,
    /// `(hlc, seq)` kept sorted: events arrive almost in hlc order, so this is a push.
    by_hlc: Vec<(Hlc, u64)>,
    /// Entries that arrived out of hlc order (a clinic receives namespace after namespace),
    /// merged into `by_hlc` when they reach an eighth of it: amortised O(1) per event instead
    /// of an O(n) insert each.
    by_hlc_tail: Vec<(Hlc, u64)>,
    record_bytes: u64,
    recovery: Recovery,
    /// Events indexed since the last checkpoint was written or loaded.
    uncheckpointed: u64,
}

impl<D: Directory> Log<D> {
    /// The node whose log this is.
    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// What opening the log found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The directory the log lives in, for the node's other small files (written with
    /// [`Directory::write_atomic`]; the log only reads `segment-*` and its index checkpoint).
    pub fn directory_mut(&mut self) -> &mut D {
        &mut self.dir
    }

    /// The next sequence number (the log's head position).
    pub fn head(&self) -> u64 {
        self.next_seq
    }

    /// Events held (excluding damaged ranges).
    pub fn len(&self) -> u64 {
        self.by_id.len() as u64
    }

    /// Whether the log holds no event.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
