//! The log: recovery on open, group-committed appends, reads, indexes and the eventstore API.

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

/// The stream an event belongs to: its member key, else its card, else its clinic.
pub fn stream_of(signed: &SignedEvent) -> String {
    let mut out = String::new();
    write_stream(&mut out, signed);
    out
}

/// The stream of everything about the card or member a query names (the stream its check
/// records and the member's facts go to).
pub fn stream_of_query(query: &shikaku_core::CheckQuery) -> String {
    match query {
        shikaku_core::CheckQuery::Member(member) => format!("member:{member}"),
        shikaku_core::CheckQuery::Card(card) => format!("card:{card}"),
    }
}

/// Writes the stream name of an event into `out` (cleared first), without allocating when
/// `out` has room.
fn write_stream(out: &mut String, signed: &SignedEvent) {
    use std::fmt::Write as _;
    out.clear();
    let _ = match signed.event().body.subject() {
        CheckQueryRef::Member(member) => write!(out, "member:{member}"),
        CheckQueryRef::Card(card) => write!(out, "card:{card}"),
    };
}

/// The stream tag stored in each record header: FNV-1a (32 bit) of the stream name. Tags
/// only narrow the search; streams are always confirmed by decoding the event.
fn stream_tag(stream: &str) -> u32 {
    stream
        .bytes()
        .fold(0x811c_9dc5u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
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
    /// Opens the log in `dir`, verifying every segment header and every record's checksum,
    /// chain link and sequence; cuts a torn, never-acknowledged tail and reports (and never
    /// serves) damage before it.
    pub fn open(dir: D, config: LogConfig) -> Result<Log<D>, LogError> {
        // Record offsets are stored as u32 (index checkpoint, in-memory locations).
        let smallest = (SEGMENT_HEADER_BYTES + 2 * record_bytes(SEAL_PAYLOAD_BYTES)) as u64;
        if config.segment_bytes > u64::from(u32::MAX) || config.segment_bytes < smallest {
            return Err(LogError::Config(format!(
                "segment_bytes must be between {smallest} and {} (32-bit record offsets), got {}",
                u32::MAX,
                config.segment_bytes
            )));
        }
        let key = checksum_key(&config.node);
        let names: Vec<String> = dir
            .list()
            .map_err(storage(0))?
            .into_iter()
            .filter(|n| n.starts_with("segment-") && n.ends_with(".shk"))
            .collect();
        let mut log = Log {
            dir,
            config,
            key,
            segments: Vec::new(),
            last_hash: [0; 32],
            next_seq: 1,
            locations: Vec::new(),
            by_id: IdMap::default(),
            stream_base: Vec::new(),
            stream_tail: HashMap::new(),
            opening: true,
            by_hlc: Vec::new(),
            by_hlc_tail: Vec::new(),
            record_bytes: 0,
            recovery: Recovery::default(),
            uncheckpointed: 0,
        };
        let mut names = names;
        // A segment whose creation never became durable (its header is not readable and it
        // holds no record) is the torn tail of a crash during segment roll-over: remove it.
        while let Some(last) = names.last().cloned() {
            if !log.is_abandoned_segment(&last)? {
                break;
            }
            log.dir.remove(&last).map_err(storage(0))?;
            log.dir.sync().map_err(storage(0))?;
            log.recovery.truncated_tail = Some((last, 0, 0));
            names.pop();
        }
        let count = names.len();
        for (index, name) in names.iter().enumerate() {
            let expected = segment_name(index as u64);
            if *name != expected {
                return Err(LogError::MissingSegment { expected, found: name.clone() });
            }
        }
        let checkpoint = log.load_checkpoint(count)?;
        for (index, name) in names.into_iter().enumerate() {
            let resume = match &checkpoint {
                Some(cp) if (index as u64) + 1 < cp.segments => Some((u64::MAX, true)),
                Some(cp) if (index as u64) + 1 == cp.segments => {
                    Some((cp.resume_offset, cp.last_sealed))
                }
                _ => None,
            };
            log.open_segment(name, index, index + 1 == count, resume)?;
        }
        log.recovery.segments = log.segments.len();
        log.stream_base.sort_unstable();
        log.opening = false;
        log.report_evidence_of_loss();
        Ok(log)
    }

    /// Evidence of loss: a checkpoint that names more events than recovery found proves
    /// acknowledged events are gone (a truncated, zero-filled or deleted segment) — that is
    /// damage, never a torn tail that was never acknowledged.
    fn report_evidence_of_loss(&mut self) {
        let Some(proven) = self.recovery.evidence_events else { return };
        let found = self.next_seq - 1;
        if proven <= found {
            return;
        }
        let segment = self.segments.last().map_or_else(|| segment_name(0), |s| s.name.clone());
        let offset = self.segments.last().map_or(0, |s| s.write_offset);
        self.recovery.damaged.push(Damage {
            segment,
            offset,
            first_seq: found + 1,
            missing: proven - found,
            reason: format!(
                "the index checkpoint records {proven} events, but only {found} were found: acknowledged events are missing (a truncated, zero-filled or deleted segment)"
            ),
        });
        if let Some((name, offset, bytes)) = self.recovery.truncated_tail.take() {
            // Not "never acknowledged" after all: part of the loss above.
            self.recovery.checkpoint = Some(format!(
                "{}; the cut at {name} offset {offset} ({bytes} bytes) was acknowledged data",
                self.recovery.checkpoint.clone().unwrap_or_default()
            ));
        }
    }

    /// Loads the index checkpoint if it verifies against the log; `None` (and a note in the
    /// recovery report) otherwise.
    fn load_checkpoint(&mut self, segments: usize) -> Result<Option<IndexCheckpoint>, LogError> {
        let Some(bytes) = self.dir.read_whole(INDEX_CHECKPOINT_FILE).map_err(storage(0))? else {
            return Ok(None);
        };
        let mut checkpoint = match IndexCheckpoint::decode(&bytes, &self.key) {
            Ok(cp) => cp,
            Err(reason) => {
                self.recovery.checkpoint = Some(format!("ignored: {reason}"));
                return Ok(None);
            }
        };
        // A checkpoint that verifies is durable evidence of how many events existed, whether
        // or not it still fits the log.
        self.recovery.evidence_events = Some(checkpoint.next_seq.saturating_sub(1));
        let usable = checkpoint.segments >= 1
            && checkpoint.segments as usize <= segments
            && checkpoint.next_seq == checkpoint.locations.len() as u64 + 1
            && checkpoint.resume_offset >= (SEGMENT_HEADER_BYTES + format::CHECKSUM_BYTES) as u64;
        if !usable {
            self.recovery.checkpoint = Some("ignored: does not fit this log".into());
            return Ok(None);
        }
        // The 32 bytes that end the covered part of the log must be the recorded chain hash.
        let name = segment_name(checkpoint.segments - 1);
        let file = self.dir.open(&name).map_err(storage(0))?;
        let mut tail = [0u8; 32];
        let at = checkpoint.resume_offset - format::CHECKSUM_BYTES as u64;
        if file.read_at(at, &mut tail).is_err() || tail != checkpoint.last_hash {
            self.recovery.checkpoint = Some("ignored: the log does not end where it says".into());
            return Ok(None);
        }
        self.by_id.reserve(checkpoint.locations.len());
        self.stream_base.reserve(checkpoint.locations.len());
        for (seq, location) in checkpoint.locations.iter().enumerate() {
            if location.segment == DAMAGED {
                self.recovery.checkpoint = Some("ignored: covers damage".into());
                self.locations.clear();
                self.by_id.clear();
                self.stream_base.clear();
                return Ok(None);
            }
            self.by_id.insert(location.id, seq as u64 + 1);
            self.stream_base.push((location.tag, seq as u64 + 1));
        }
        self.by_hlc = checkpoint
            .locations
            .iter()
            .enumerate()
            .map(|(seq, location)| (location.hlc, seq as u64 + 1))
            .collect();
        self.by_hlc.sort_unstable();
        self.locations = std::mem::take(&mut checkpoint.locations);
        self.next_seq = checkpoint.next_seq;
        self.last_hash = checkpoint.last_hash;
        self.record_bytes = checkpoint.record_bytes;
        self.recovery.checkpoint = Some(format!(
            "used: {} events up to position {}",
            self.locations.len(),
            self.next_seq - 1
        ));
        Ok(Some(checkpoint))
    }

    /// Saves the indexes at the current (durable) position, atomically, so that the next open
    /// only scans what was appended after it. Refused while the log has damage.
    pub fn write_checkpoint(&mut self) -> Result<(), LogError> {
        if !self.recovery.damaged.is_empty() {
            return Err(LogError::Damaged {
                seq: self.recovery.damaged[0].first_seq,
                damage: "not checkpointing a damaged log".into(),
            });
        }
        let Some(last) = self.segments.last() else { return Ok(()) };
        if last.write_offset < (SEGMENT_HEADER_BYTES + format::CHECKSUM_BYTES) as u64 + 1 {
            return Ok(());
        }
        let checkpoint = IndexCheckpoint {
            next_seq: self.next_seq,
            segments: self.segments.len() as u64,
            resume_offset: last.write_offset,
            last_sealed: last.sealed,
            record_bytes: self.record_bytes,
            last_hash: self.last_hash,
            locations: self.locations.clone(),
        };
        let bytes = checkpoint.encode(&self.key);
        self.dir.write_atomic(INDEX_CHECKPOINT_FILE, &bytes).map_err(storage(0))?;
        self.uncheckpointed = 0;
        Ok(())
    }

    /// Events indexed since the last checkpoint (a caller's cue to write the next one).
    pub fn events_since_checkpoint(&self) -> u64 {
        self.uncheckpointed
    }

    fn is_abandoned_segment(&mut self, name: &str) -> Result<bool, LogError> {
        let file = self.dir.open(name).map_err(storage(0))?;
        let len = file.len().map_err(storage(0))?;
        let mut data = vec![0u8; (len as usize).min(SEGMENT_HEADER_BYTES)];
        file.read_at(0, &mut data).map_err(storage(0))?;
        let header_ok = data.len() >= SEGMENT_HEADER_BYTES && {
            let mut header = [0u8; SEGMENT_HEADER_BYTES];
            header.copy_from_slice(&data[..SEGMENT_HEADER_BYTES]);
            SegmentHeader::decode(&header).is_ok()
        };
        if header_ok {
            return Ok(false);
        }
        // Only a header that was never written (all zeros) counts as abandoned: the header is
        // made durable before any record is written, so records behind a missing header were
        // never durably acknowledged (only a disk that lied about fsync produces them). Any
        // other unreadable header is damage to report.
        Ok(data.iter().take(SEGMENT_HEADER_BYTES).all(|&b| b == 0))
    }

    /// Opens one segment. `resume` = (offset, sealed) when an index checkpoint already covers
    /// it up to `offset`: the header is still checked, but only records after `offset` are
    /// scanned (none when sealed).
    fn open_segment(
        &mut self,
        name: String,
        index: usize,
        is_last: bool,
        resume: Option<(u64, bool)>,
    ) -> Result<(), LogError> {
        let mut file = self.dir.open(&name).map_err(storage(0))?;
        let len = file.len().map_err(storage(0))?;
        let mut header_bytes = [0u8; SEGMENT_HEADER_BYTES];
        let decoded = if len < SEGMENT_HEADER_BYTES as u64 {
            Err(FormatError::BadLength(len as u32))
        } else {
            file.read_at(0, &mut header_bytes).map_err(storage(0))?;
            SegmentHeader::decode(&header_bytes)
        };
        let header = match decoded {
            Ok(header) => header,
            // A segment from a newer format is not damage: refuse to open rather than guess.
            Err(source @ FormatError::NewerFormat { .. }) => {
                return Err(LogError::Segment { segment: name, source })
            }
            Err(source) => {
                // A damaged header: the whole segment is unreadable. Report it, never serve
                // it, and resynchronise the chain at the next segment's header.
                self.recovery.damaged.push(Damage {
                    segment: name.clone(),
                    offset: 0,
                    first_seq: self.next_seq,
                    missing: 0,
                    reason: format!("segment header: {source}"),
                });
                let header = SegmentHeader {
                    format_version: FORMAT_VERSION,
                    min_compatible_version: MIN_COMPATIBLE_VERSION,
                    segment_bytes: len,
                    segment_index: index as u64,
                    first_seq: self.next_seq,
                    node: self.config.node,
                    prev_hash: self.last_hash,
                };
                self.segments.push(Segment { name, file, header, write_offset: len, sealed: true });
                return Ok(());
            }
        };
        if header.node != self.config.node {
            return Err(LogError::ForeignSegment {
                segment: name,
                found: header.node,
                expected: self.config.node,
            });
        }
        if header.segment_index != index as u64 {
            return Err(LogError::MissingSegment {
                expected: segment_name(index as u64),
                found: name,
            });
        }
        // Segments are preallocated: read only as far as the data goes, in chunks.
        let mut data: Vec<u8> = Vec::new();
        let ensure = |data: &mut Vec<u8>, upto: usize| -> Result<(), LogError> {
            let upto = upto.min(len as usize);
            if data.len() >= upto {
                return Ok(());
            }
            let target = (upto.max(data.len() + LOAD_CHUNK_BYTES)).min(len as usize);
            let start = data.len();
            data.resize(target, 0);
            file.read_at(start as u64, &mut data[start..]).map_err(storage(0))
        };
        let segment_number = self.segments.len() as u32;
        if let Some((offset, true)) = resume {
            let write_offset = offset.min(len);
            self.segments.push(Segment { name, file, header, write_offset, sealed: true });
            return Ok(());
        }
        ensure(&mut data, SEGMENT_HEADER_BYTES + 4)?;
        if resume.is_some() {
            // Covered by the checkpoint: the chain was checked when it was written.
        } else if header.prev_hash != self.last_hash || header.first_seq != self.next_seq {
            // The previous segment's tail was damaged; the chain restarts here.
            if self.recovery.damaged.is_empty() || header.first_seq < self.next_seq {
                self.recovery.damaged.push(Damage {
                    segment: name.clone(),
                    offset: 0,
                    first_seq: self.next_seq,
                    missing: header.first_seq.saturating_sub(self.next_seq),
                    reason: "segment does not continue the previous segment's hash chain".into(),
                });
            }
            self.skip_to(header.first_seq);
            self.last_hash = header.prev_hash;
        }
        let mut offset = match resume {
            Some((offset, _)) => offset as usize,
            None => SEGMENT_HEADER_BYTES,
        };
        let mut sealed = false;
        loop {
            ensure(&mut data, offset + 4)?;
            if offset + 4 > data.len() {
                break;
            }
            let length = u32::from_le_bytes([
                data[offset],
                data[offset + 1],
                data[offset + 2],
                data[offset + 3],
            ]);
            if length == 0 {
                break;
            }
            ensure(
                &mut data,
                offset + (length as usize).min(format::record_bytes(format::PAYLOAD_BYTES_MAX)),
            )?;
            match self.accept_record(&data[offset..], segment_number, offset) {
                Ok((kind, size)) => {
                    offset += size;
                    if kind == KIND_SEAL {
                        sealed = true;
                        break;
                    }
                }
                Err(reason) => {
                    ensure(&mut data, len as usize)?;
                    // Is anything valid after this point? If not, and this is the last
                    // segment, it is a torn tail that was never acknowledged.
                    match self.find_next_record(&data, offset + format::RECORD_ALIGN) {
                        None if is_last => {
                            let garbage = data.len() as u64 - offset as u64;
                            let zeros = vec![0u8; garbage as usize];
                            file.write_at(offset as u64, &zeros).map_err(storage(0))?;
                            file.sync().map_err(storage(0))?;
                            self.recovery.truncated_tail =
                                Some((name.clone(), offset as u64, garbage));
                            break;
                        }
                        None => {
                            self.recovery.damaged.push(Damage {
                                segment: name.clone(),
                                offset: offset as u64,
                                first_seq: self.next_seq,
                                missing: 0,
                                reason,
                            });
                            sealed = true;
                            offset = data.len();
                            break;
                        }
                        Some((next_offset, next_seq, prev_hash)) => {
                            self.recovery.damaged.push(Damage {
                                segment: name.clone(),
                                offset: offset as u64,
                                first_seq: self.next_seq,
                                missing: next_seq.saturating_sub(self.next_seq),
                                reason,
                            });
                            self.skip_to(next_seq);
                            self.last_hash = prev_hash;
                            offset = next_offset;
                        }
                    }
                }
            }
        }
        self.segments.push(Segment { name, file, header, write_offset: offset as u64, sealed });
        Ok(())
    }

    /// Marks sequence numbers up to `seq` (exclusive) as damaged: they exist but are unreadable.
    fn skip_to(&mut self, seq: u64) {
        while self.next_seq < seq {
            self.locations.push(Location {
                segment: DAMAGED,
                offset: 0,
                tag: 0,
                hlc: Hlc(0),
                id: EventId([0; 32]),
            });
            self.next_seq += 1;
        }
    }

    fn find_next_record(&self, data: &[u8], from: usize) -> Option<(usize, u64, [u8; 32])> {
        let mut offset = from.div_ceil(format::RECORD_ALIGN) * format::RECORD_ALIGN;
        while offset + RECORD_HEADER_BYTES + format::CHECKSUM_BYTES <= data.len() {
            if let Ok((header, _, _)) = RecordHeader::decode(&data[offset..], &self.key) {
                if header.seq > self.next_seq {
                    return Some((offset, header.seq, header.prev_hash));
                }
            }
            offset += format::RECORD_ALIGN;
        }
        None
    }

    /// Verifies one record at the chain's head and indexes it. Returns (kind, size).
    fn accept_record(
        &mut self,
        bytes: &[u8],
        segment: u32,
        offset: usize,
    ) -> Result<(u8, usize), String> {
        let (header, payload, sum) =
            RecordHeader::decode(bytes, &self.key).map_err(|e| e.to_string())?;
        if header.prev_hash != self.last_hash {
            return Err(FormatError::BrokenChain.to_string());
        }
        if header.kind == KIND_SEAL {
            self.last_hash = sum;
            self.recovery.records += 1;
            self.record_bytes += header.record_bytes() as u64;
            return Ok((KIND_SEAL, header.record_bytes()));
        }
        if header.seq != self.next_seq {
            return Err(
                FormatError::Sequence { found: header.seq, expected: self.next_seq }.to_string()
            );
        }
        // The keyed checksum covers the id and the payload; the id itself is re-derived from
        // the payload on every read and by `verify`, so open does not hash twice.
        let _ = payload;
        self.index(
            header.seq,
            header.event_id,
            header.hlc,
            header.stream_tag,
            segment,
            offset as u32,
        );
        self.last_hash = sum;
        self.next_seq += 1;
        self.recovery.records += 1;
        self.record_bytes += header.record_bytes() as u64;
        Ok((KIND_EVENT, header.record_bytes()))
    }

    fn index(&mut self, seq: u64, id: EventId, hlc: Hlc, tag: u32, segment: u32, offset: u32) {
        debug_assert_eq!(self.locations.len() as u64 + 1, seq);
        self.locations.push(Location { segment, offset, tag, hlc, id });
        self.uncheckpointed += 1;
        self.by_id.insert(id, seq);
        if self.opening {
            self.stream_base.push((tag, seq));
        } else {
            self.stream_tail.entry(tag).or_default().push(seq);
        }
        if self.by_hlc_tail.is_empty() && self.by_hlc.last().is_none_or(|last| *last <= (hlc, seq))
        {
            self.by_hlc.push((hlc, seq));
        } else {
            self.by_hlc_tail.push((hlc, seq));
            if self.by_hlc_tail.len() > (self.by_hlc.len() / 8).max(4096) {
                self.merge_hlc_tail();
            }
        }
    }

    fn merge_hlc_tail(&mut self) {
        let mut tail = std::mem::take(&mut self.by_hlc_tail);
        tail.sort_unstable();
        let sorted = std::mem::take(&mut self.by_hlc);
        let mut merged = Vec::with_capacity(sorted.len() + tail.len());
        let (mut a, mut b) = (sorted.into_iter().peekable(), tail.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x <= y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.by_hlc = merged;
    }

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

    /// The id of the event at a position (`None` if absent or damaged).
    pub fn id_at(&self, seq: u64) -> Option<EventId> {
        let location = self.locations.get((seq as usize).checked_sub(1)?)?;
        (location.segment != DAMAGED).then_some(location.id)
    }

    /// The hlc and id of the event at a position, from the index (no read; `None` if absent
    /// or damaged).
    pub fn entry(&self, seq: u64) -> Option<(Hlc, EventId)> {
        let location = self.locations.get((seq as usize).checked_sub(1)?)?;
        (location.segment != DAMAGED).then_some((location.hlc, location.id))
    }

    /// Verifies the records at positions `from..from + max` by reading them — what recovery
    /// skips for the records an index checkpoint covers. A record that fails (bit rot since
    /// it was written) is marked damaged, added to [`Log::recovery`]'s damage and never served
    /// again, exactly as if recovery had found it. Returns the next position to scrub (the
    /// head when done) and the damage found.
    pub fn scrub(&mut self, from: u64, max: u64) -> Result<(u64, Vec<Damage>), LogError> {
        let end = from.max(1).saturating_add(max).min(self.next_seq);
        let mut found = Vec::new();
        for seq in from.max(1)..end {
            match self.read(seq) {
                Ok(_) | Err(LogError::Damaged { .. }) => {}
                Err(LogError::Corrupt { seq, segment, offset, reason }) => {
                    let location = &mut self.locations[(seq - 1) as usize];
                    let id = location.id;
                    location.segment = DAMAGED;
                    // The same event may be held again at a later position (re-fetched
                    // after earlier damage): that copy stays.
                    if self.by_id.get(&id) == Some(&seq) {
                        self.by_id.remove(&id);
                    }
                    let damage = Damage {
                        segment,
                        offset,
                        first_seq: seq,
                        missing: 1,
                        reason: format!("found by scrub: {reason}"),
                    };
                    self.recovery.damaged.push(damage.clone());
                    found.push(damage);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((end, found))
    }

    /// The sequence of an event, if held.
    pub fn position_of(&self, id: &EventId) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// Appends events in one group commit: one write and one sync per segment touched. An
    /// event is acknowledged (its position returned) only once durable. Events already held
    /// are not stored again.
    pub fn append(&mut self, events: &[SignedEvent]) -> Result<AppendOutcome, LogError> {
        let mut outcome = AppendOutcome { positions: Vec::with_capacity(events.len()), new: 0 };
        let mut batch: Vec<u8> = Vec::new();
        let mut staged: Vec<(u64, EventId, Hlc, u32, u64)> = Vec::new();
        let mut seen: IdMap<u64> = IdMap::default();
        let mut stream = String::with_capacity(64);
        batch.reserve(events.len().min(4096) * 640);
        let mut next_seq = self.next_seq;
        let mut last_hash = self.last_hash;
        let mut durable = 0usize;
        if self.segments.last().is_none_or(|s| s.sealed) {
            self.new_segment().map_err(storage(0))?;
        }
        for event in events {
            let id = event.id();
            if let Some(seq) = self.by_id.get(&id).or(seen.get(&id)) {
                outcome.positions.push(*seq);
                continue;
            }
            let payload = event.canonical_bytes();
            let size = record_bytes(payload.len()) as u64;
            let seal = record_bytes(SEAL_PAYLOAD_BYTES) as u64;
            if size + seal + SEGMENT_HEADER_BYTES as u64 > self.config.segment_bytes {
                return Err(LogError::TooLarge(payload.len()));
            }
            let segment = self.segments.len() - 1;
            let start = self.segments[segment].write_offset + batch.len() as u64;
            if start + size + seal > self.config.segment_bytes {
                // This segment is full: make the batch so far durable, seal, start the next.
                self.commit(&mut batch, &mut staged, next_seq).map_err(storage(durable))?;
                durable = outcome.new;
                last_hash = self.seal().map_err(storage(durable))?;
                self.new_segment().map_err(storage(durable))?;
            }
            let segment = self.segments.len() - 1;
            let offset = self.segments[segment].write_offset + batch.len() as u64;
            write_stream(&mut stream, event);
            let tag = stream_tag(&stream);
            let header = RecordHeader {
                kind: KIND_EVENT,
                flags: 0,
                stream_tag: tag,
                schema_version: event.schema_version(),
                payload_bytes: payload.len() as u32,
                seq: next_seq,
                hlc: event.event().hlc,
                event_id: id,
                prev_hash: last_hash,
                signature: event.signature(),
            };
            let sum = header.encode_into(payload, &self.key, &mut batch);
            staged.push((next_seq, id, header.hlc, tag, offset));
            seen.insert(id, next_seq);
            outcome.positions.push(next_seq);
            outcome.new += 1;
            last_hash = sum;
            next_seq += 1;
        }
        self.commit(&mut batch, &mut staged, next_seq).map_err(storage(durable))?;
        Ok(outcome)
    }

    /// Writes the staged records with one write and one sync, then (and only then) indexes
    /// them and advances the head.
    fn commit(
        &mut self,
        batch: &mut Vec<u8>,
        staged: &mut Vec<(u64, EventId, Hlc, u32, u64)>,
        next_seq: u64,
    ) -> Result<(), StorageError> {
        let Some(&(_, _, _, _, last_offset)) = staged.last() else {
            return Ok(());
        };
        let segment_number = (self.segments.len() - 1) as u32;
        let segment = self.segments.last_mut().ok_or(StorageError::Io("no segment".into()))?;
        // Mark the batch's last record so recovery can tell whole batches apart; its
        // checksum, recomputed, is the new head of the chain.
        let last_start = (last_offset - segment.write_offset) as usize;
        batch[last_start + 5] |= FLAG_BATCH_END;
        let end = batch.len() - format::CHECKSUM_BYTES;
        let last_hash = format::checksum(&self.key, &batch[last_start..end]);
        batch[end..].copy_from_slice(&last_hash);
        segment.file.write_at(segment.write_offset, batch)?;
        segment.file.sync()?;
        segment.write_offset += batch.len() as u64;
        self.record_bytes += batch.len() as u64;
        for (seq, id, hlc, tag, offset) in staged.drain(..) {
            self.index(seq, id, hlc, tag, segment_number, offset as u32);
        }
        self.next_seq = next_seq;
        self.last_hash = last_hash;
        batch.clear();
        Ok(())
    }

    /// Closes the current segment with a seal record; returns the seal's checksum.
    fn seal(&mut self) -> Result<[u8; 32], StorageError> {
        let key = self.key;
        let last_seq = self.next_seq - 1;
        let segment = self.segments.last_mut().ok_or(StorageError::Io("no segment".into()))?;
        let count = last_seq + 1 - segment.header.first_seq;
        let mut payload = [0u8; SEAL_PAYLOAD_BYTES];
        payload[..8].copy_from_slice(&count.to_le_bytes());
        payload[8..].copy_from_slice(&last_seq.to_le_bytes());
        let header = RecordHeader {
            kind: KIND_SEAL,
            flags: FLAG_BATCH_END,
            stream_tag: 0,
            schema_version: 0,
            payload_bytes: SEAL_PAYLOAD_BYTES as u32,
            seq: last_seq,
            hlc: Hlc(0),
            event_id: EventId([0; 32]),
            prev_hash: self.last_hash,
            signature: shikaku_core::Signature([0; 64]),
        };
        let mut bytes = Vec::new();
        let sum = header.encode_into(&payload, &key, &mut bytes);
        segment.file.write_at(segment.write_offset, &bytes)?;
        segment.file.sync()?;
        segment.write_offset += bytes.len() as u64;
        segment.sealed = true;
        self.record_bytes += bytes.len() as u64;
        self.last_hash = sum;
        Ok(sum)
    }

    fn new_segment(&mut self) -> Result<(), StorageError> {
        let index = self.segments.len() as u64;
        let name = segment_name(index);
        let header = SegmentHeader {
            format_version: FORMAT_VERSION,
            min_compatible_version: MIN_COMPATIBLE_VERSION,
            segment_bytes: self.config.segment_bytes,
            segment_index: index,
            first_seq: self.next_seq,
            node: self.config.node,
            prev_hash: self.last_hash,
        };
        let mut file = self.dir.create(&name)?;
        let result = (|| {
            file.set_len(self.config.segment_bytes)?;
            file.write_at(0, &header.encode(&self.key))?;
            file.sync()?;
            self.dir.sync()
        })();
        if let Err(error) = result {
            // Leave no half-made segment behind: it would not open.
            let _ = self.dir.remove(&name);
            let _ = self.dir.sync();
            return Err(error);
        }
        self.segments.push(Segment {
            name,
            file,
            header,
            write_offset: SEGMENT_HEADER_BYTES as u64,
            sealed: false,
        });
        Ok(())
    }

    fn location(&self, seq: u64) -> Result<Location, LogError> {
        let location = *self
            .locations
            .get((seq as usize).wrapping_sub(1))
            .ok_or(LogError::NoSuchSequence(seq))?;
        if location.segment == DAMAGED {
            let damage = self
                .recovery
                .damaged
                .iter()
                .rev()
                .find(|d| d.first_seq <= seq)
                .map(ToString::to_string)
                .unwrap_or_else(|| "unreadable".into());
            return Err(LogError::Damaged { seq, damage });
        }
        Ok(location)
    }

    /// Reads one event, verifying its checksum and id (never serving a damaged record).
    pub fn read(&self, seq: u64) -> Result<SignedEvent, LogError> {
        let location = self.location(seq)?;
        let segment = &self.segments[location.segment as usize];
        let mut head = [0u8; RECORD_HEADER_BYTES];
        segment.file.read_at(u64::from(location.offset), &mut head).map_err(storage(0))?;
        let total = format::le_u32(&head, 0) as usize;
        if total > record_bytes(format::PAYLOAD_BYTES_MAX) || total < RECORD_HEADER_BYTES {
            return Err(self.corrupt(
                seq,
                location,
                FormatError::BadLength(total as u32).to_string(),
            ));
        }
        let mut bytes = vec![0u8; total];
        segment.file.read_at(u64::from(location.offset), &mut bytes).map_err(storage(0))?;
        self.decode_record(seq, location, &bytes)
    }

    fn corrupt(&self, seq: u64, location: Location, reason: String) -> LogError {
        LogError::Corrupt {
            seq,
            segment: self.segments[location.segment as usize].name.clone(),
            offset: u64::from(location.offset),
            reason,
        }
    }

    /// Verifies one record's bytes (checksum, position, kind, id) and decodes its event.
    fn decode_record(
        &self,
        seq: u64,
        location: Location,
        bytes: &[u8],
    ) -> Result<SignedEvent, LogError> {
        let (header, payload, _) = RecordHeader::decode(bytes, &self.key)
            .map_err(|e| self.corrupt(seq, location, e.to_string()))?;
        if header.seq != seq || header.kind != KIND_EVENT {
            return Err(self.corrupt(
                seq,
                location,
                format!("found record {} of kind {}", header.seq, header.kind),
            ));
        }
        SignedEvent::decode_stored(
            header.schema_version,
            payload,
            header.signature,
            header.event_id,
        )
        .map_err(|e| self.corrupt(seq, location, e.to_string()))
    }

    /// Reads up to `max` events from `from` (inclusive), skipping damaged positions. Returns
    /// `(seq, event)` pairs; the next position to read is the last seq + 1. Consecutive
    /// records are read in large blocks, each record still verified on its own.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, SignedEvent)>, LogError> {
        const BLOCK_BYTES: u64 = 1 << 20;
        let mut out = Vec::new();
        let mut seq = from.max(1);
        while seq < self.next_seq && out.len() < max {
            let location = match self.location(seq) {
                Ok(location) => location,
                Err(LogError::Damaged { .. }) => {
                    seq += 1;
                    continue;
                }
                Err(error) => return Err(error),
            };
            // Extend the block over following records of the same segment.
            let start = u64::from(location.offset);
            let mut last = seq;
            while last + 1 < self.next_seq && out.len() + ((last + 1 - seq) as usize) < max {
                let next = self.locations[last as usize];
                if next.segment != location.segment || u64::from(next.offset) - start > BLOCK_BYTES
                {
                    break;
                }
                last += 1;
            }
            let segment = &self.segments[location.segment as usize];
            let end = match self.locations.get(last as usize) {
                Some(next) if next.segment == location.segment => u64::from(next.offset),
                _ => segment.write_offset,
            };
            let mut block = vec![0u8; end.saturating_sub(start) as usize];
            segment.file.read_at(start, &mut block).map_err(storage(0))?;
            for s in seq..=last {
                let at = self.locations[s as usize - 1];
                let from_block = (u64::from(at.offset) - start) as usize;
                match block.get(from_block..) {
                    Some(bytes) => out.push((s, self.decode_record(s, at, bytes)?)),
                    None => out.push((s, self.read(s)?)),
                }
            }
            seq = last + 1;
        }
        Ok(out)
    }

    /// Sequence numbers of events whose hlc lies in `[from, to]`, in `(hlc, seq)` order.
    pub fn positions_by_hlc(&self, from: Hlc, to: Hlc) -> Vec<u64> {
        let start = self.by_hlc.partition_point(|entry| *entry < (from, 0));
        let mut found: Vec<(Hlc, u64)> =
            self.by_hlc[start..].iter().take_while(|(hlc, _)| *hlc <= to).copied().collect();
        let sorted_len = found.len();
        found.extend(self.by_hlc_tail.iter().filter(|(hlc, _)| *hlc >= from && *hlc <= to));
        if found.len() > sorted_len {
            found.sort_unstable();
        }
        found.into_iter().map(|(_, seq)| seq).collect()
    }

    /// The events of one stream, in log order.
    pub fn read_stream(&self, stream: &str) -> Result<Vec<SignedEvent>, LogError> {
        let mut out = Vec::new();
        let tag = stream_tag(stream);
        let start = self.stream_base.partition_point(|entry| *entry < (tag, 0));
        let base =
            self.stream_base[start..].iter().take_while(|(t, _)| *t == tag).map(|(_, seq)| seq);
        for &seq in base.chain(self.stream_tail.get(&tag).into_iter().flatten()) {
            let event = self.read(seq)?;
            if stream_of(&event) == stream {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// The number of events in a stream (its version).
    pub fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        Ok(self.read_stream(stream)?.len() as u64)
    }

    /// Appends events to one stream if it is at the expected version (optimistic
    /// concurrency): a stale writer gets [`LogError::WrongExpectedVersion`], never a silent
    /// overwrite. Returns the stream's new version.
    pub fn append_to_stream(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[SignedEvent],
    ) -> Result<u64, LogError> {
        for event in events {
            let actual = stream_of(event);
            if actual != stream {
                return Err(LogError::EventOutsideStream {
                    stream: stream.to_owned(),
                    actual,
                    event: event.id(),
                });
            }
        }
        let current = self.stream_version(stream)?;
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(version) => current == version,
        };
        if !ok {
            return Err(LogError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                current,
            });
        }
        let outcome = self.append(events)?;
        Ok(current + outcome.new as u64)
    }

    /// Statistics.
    pub fn stats(&self) -> Result<LogStats, LogError> {
        let mut file_bytes = 0;
        for segment in &self.segments {
            file_bytes += segment.file.len().map_err(storage(0))?;
        }
        let ends = self.by_hlc.first().into_iter().chain(self.by_hlc.last());
        let first = ends.clone().chain(&self.by_hlc_tail).map(|(h, _)| *h).min();
        let last = ends.chain(&self.by_hlc_tail).map(|(h, _)| *h).max();
        Ok(LogStats {
            segments: self.segments.len(),
            events: self.len(),
            record_bytes: self.record_bytes,
            file_bytes,
            streams: {
                let mut tags: Vec<u32> = self.stream_base.iter().map(|(t, _)| *t).collect();
                tags.extend(self.stream_tail.keys());
                tags.sort_unstable();
                tags.dedup();
                tags.len()
            },
            hlc_range: first.zip(last),
            damaged: self.recovery.damaged.clone(),
            next_seq: self.next_seq,
        })
    }

    /// Re-reads every record and verifies checksum, id and payload, and every signature (in
    /// batches). Damage found on open is reported too.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        for damage in &self.recovery.damaged {
            report.problems.push(damage.to_string());
        }
        let mut pending = Vec::new();
        for seq in 1..self.next_seq {
            match self.read(seq) {
                Ok(event) => {
                    report.records += 1;
                    match event.recheck() {
                        Ok(u) => pending.push((seq, u)),
                        Err(e) => report.problems.push(format!("sequence {seq}: {e}")),
                    }
                }
                Err(LogError::Damaged { .. }) => {}
                Err(error) => report.problems.push(error.to_string()),
            }
            if pending.len() >= 4096 || seq + 1 == self.next_seq {
                let seqs: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
                let events = pending.drain(..).map(|(_, u)| u).collect();
                for (seq, result) in seqs.into_iter().zip(shikaku_core::verify_all(events)) {
                    match result {
                        Ok(_) => report.signatures += 1,
                        Err(e) => report.problems.push(format!("sequence {seq}: {e}")),
                    }
                }
            }
        }
        report
    }
}

/// A catch-up subscription: reads history from a position, then keeps up with new appends
/// ("live") — the runtime wakes it when the log's head moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    next: u64,
}

/// One poll of a subscription.
#[derive(Debug)]
pub struct SubscriptionBatch {
    /// Events read, with their positions.
    pub events: Vec<(u64, SignedEvent)>,
    /// True when the subscription has caught up with the head (it is now live).
    pub live: bool,
}

impl Subscription {
    /// Starts at `position` (1 = the beginning).
    pub fn from(position: u64) -> Subscription {
        Subscription { next: position.max(1) }
    }

    /// The next position it will read.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Reads up to `max` events.
    pub fn poll<D: Directory>(
        &mut self,
        log: &Log<D>,
        max: usize,
    ) -> Result<SubscriptionBatch, LogError> {
        let events = log.read_from(self.next, max)?;
        if let Some((seq, _)) = events.last() {
            self.next = seq + 1;
        } else {
            self.next = self.next.max(log.head());
        }
        if events.len() < max {
            self.next = log.head();
        }
        Ok(SubscriptionBatch { live: self.next >= log.head(), events })
    }
}
