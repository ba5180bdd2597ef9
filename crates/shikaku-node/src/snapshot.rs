//! The node snapshot (`node.snapshot` in the data directory's log folder): everything
//! [`crate::Node::open`] would otherwise rebuild by reading and folding every event — which
//! namespace each position belongs to, the clinics' origin sequences, the clock, and the
//! projection (its own snapshot format, verified by its state digest). Specified byte by byte
//! in `protocol/LOG-FORMAT.md` ("Node snapshot"); golden vector `node_snapshot` of
//! `protocol/vectors/log-v1.json`.
//!
//! Derived and disposable: a snapshot that does not verify, that belongs to another log or
//! role, or that meets a damaged log is ignored (said so in a log line) and the node folds the
//! log in full. No IO here: bytes in, bytes out.

use std::collections::HashMap;

use shikaku_core::{EventId, Hlc, Namespace, Projection};
use shikaku_log::storage::Directory;
use shikaku_log::{Log, LogError};
use shikaku_protocol::wire::{put_namespace, Reader, Role};

/// File name, in the directory the log lives in.
pub const NODE_SNAPSHOT_FILE: &str = "node.snapshot";
const MAGIC: [u8; 8] = *b"SHKNODE\0";
const VERSION: u16 = 1;
/// Fixed header bytes (magic to clock).
pub const HEADER_BYTES: usize = 64;

/// A node's derived state at a log position.
#[derive(Debug)]
pub struct NodeSnapshot {
    /// The role of the node that wrote it (informational: the state is the same for both).
    pub role: Role,
    /// Last log position covered (every position `1..=position` is described).
    pub position: u64,
    /// Id of the event at `position` (ties the snapshot to this log).
    pub id: EventId,
    /// The node's clock: the largest hlc it has seen.
    pub clock: Hlc,
    /// Distinct namespaces, in the order `namespace_of` refers to them.
    pub namespaces: Vec<Namespace>,
    /// For each position `1..=position`, the index in `namespaces` of its event's namespace.
    pub namespace_of: Vec<u32>,
    /// `(position, origin sequence)` of every event in a clinic's namespace whose origin is
    /// that clinic, ascending by position.
    pub origins: Vec<(u64, u64)>,
    /// The projection's own snapshot bytes (covering `position`).
    pub projection: Vec<u8>,
}

/// Why a node snapshot was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeSnapshotError {
    /// Not a node snapshot, or a version this build does not read.
    #[error("not a version-{VERSION} node snapshot")]
    Format,
    /// The checksum does not match.
    #[error("node snapshot checksum mismatch")]
    Checksum,
    /// The bytes end early or hold an impossible value.
    #[error("node snapshot is malformed: {0}")]
    Malformed(String),
}

fn malformed(e: impl std::fmt::Display) -> NodeSnapshotError {
    NodeSnapshotError::Malformed(e.to_string())
}

impl NodeSnapshot {
    /// The bytes of the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_BYTES
                + self.namespace_of.len() * 4
                + self.origins.len() * 16
                + self.projection.len()
                + 1024,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(match self.role {
            Role::Hub => 0,
            Role::Clinic => 1,
        });
        out.resize(16, 0);
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.clock.0.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_BYTES);
        out.extend_from_slice(&(self.namespaces.len() as u32).to_le_bytes());
        for ns in &self.namespaces {
            put_namespace(&mut out, ns);
        }
        for index in &self.namespace_of {
            out.extend_from_slice(&index.to_le_bytes());
        }
        out.extend_from_slice(&(self.origins.len() as u64).to_le_bytes());
        for (position, seq) in &self.origins {
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out.extend_from_slice(&(self.projection.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.projection);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Decodes and checks the file's own consistency (checksum, counts, indexes in range);
    /// whether it belongs to a log is the caller's question.
    pub fn decode(bytes: &[u8]) -> Result<NodeSnapshot, NodeSnapshotError> {
        let body_len = bytes.len().checked_sub(32).ok_or(NodeSnapshotError::Format)?;
        if bytes.len() < HEADER_BYTES + 32
            || bytes[..8] != MAGIC
            || bytes[8..10] != VERSION.to_le_bytes()
        {
            return Err(NodeSnapshotError::Format);
        }
        let (body, sum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != sum {
            return Err(NodeSnapshotError::Checksum);
        }
        let mut r = Reader::new(&body[10..]);
        let role = match r.u8("role").map_err(malformed)? {
            0 => Role::Hub,
            1 => Role::Clinic,
            other => return Err(malformed(format!("role {other}"))),
        };
        if r.array::<5>("reserved").map_err(malformed)? != [0; 5] {
            return Err(malformed("reserved bytes are not zero"));
        }
        let position = r.u64("position").map_err(malformed)?;
        let id = EventId(r.array("event id").map_err(malformed)?);
        let clock = Hlc(r.u64("clock").map_err(malformed)?);
        let count = r.u32("namespace count").map_err(malformed)? as usize;
        // A namespace takes at least five bytes.
        if count > r.remaining() / 5 {
            return Err(malformed(format!("{count} namespaces do not fit the file")));
        }
        let mut namespaces = Vec::with_capacity(count);
        for _ in 0..count {
            namespaces.push(r.namespace().map_err(malformed)?);
        }
        let positions = usize::try_from(position).map_err(malformed)?;
        if positions > r.remaining() / 4 {
            return Err(malformed(format!("{position} positions do not fit the file")));
        }
        let mut namespace_of = Vec::with_capacity(positions);
        for _ in 0..positions {
            let index = r.u32("namespace index").map_err(malformed)?;
            if index as usize >= namespaces.len() {
                return Err(malformed(format!("namespace index {index} out of range")));
            }
            namespace_of.push(index);
        }
        let origin_count = r.u64("origin count").map_err(malformed)?;
        if origin_count > (r.remaining() / 16) as u64 {
            return Err(malformed(format!("{origin_count} origin entries do not fit the file")));
        }
        let mut origins = Vec::with_capacity(origin_count as usize);
        let mut previous = 0;
        for _ in 0..origin_count {
            let at = r.u64("origin position").map_err(malformed)?;
            let seq = r.u64("origin sequence").map_err(malformed)?;
            if at <= previous || at > position {
                return Err(malformed(format!("origin entry at position {at} out of order")));
            }
            previous = at;
            origins.push((at, seq));
        }
        let length = r.u64("projection length").map_err(malformed)?;
        if length != r.remaining() as u64 {
            return Err(malformed(format!(
                "projection length {length} but {} bytes remain",
                r.remaining()
            )));
        }
        let projection = body[body.len() - r.remaining()..].to_vec();
        Ok(NodeSnapshot {
            role,
            position,
            id,
            clock,
            namespaces,
            namespace_of,
            origins,
            projection,
        })
    }

    /// Decodes the projection (its digest recomputed and compared) and checks it covers this
    /// snapshot's position and holds exactly its events.
    pub fn projection(&self) -> Result<Projection, NodeSnapshotError> {
        let (projection, covered) = Projection::decode_snapshot(&self.projection)
            .map_err(|e| NodeSnapshotError::Malformed(e.to_string()))?;
        if covered != self.position || projection.events_held() != self.position {
            return Err(malformed(format!(
                "projection covers position {covered} with {} events, not {}",
                projection.events_held(),
                self.position
            )));
        }
        Ok(projection)
    }
}

/// Builds the snapshot of a ledger from its events (for tools that hold a bare [`Log`], such
/// as an offline import): reads every event once. `projection` must be the fold of exactly
/// the log's events.
pub fn of_log<D: Directory>(
    log: &Log<D>,
    role: Role,
    projection: &Projection,
) -> Result<Option<NodeSnapshot>, LogError> {
    let position = log.head() - 1;
    let Some(id) = log.id_at(position) else { return Ok(None) };
    let mut namespaces: Vec<Namespace> = Vec::new();
    let mut which: HashMap<Namespace, u32> = HashMap::new();
    let mut namespace_of = Vec::with_capacity(position as usize);
    let mut origins = Vec::new();
    let mut clock = Hlc(0);
    let mut next = 1;
    while next <= position {
        let batch = log.read_from(next, 65_536)?;
        let Some((last, _)) = batch.last() else { break };
        next = last + 1;
        for (at, event) in &batch {
            let e = event.event();
            let index = *which.entry(e.namespace).or_insert_with(|| {
                namespaces.push(e.namespace);
                namespaces.len() as u32 - 1
            });
            namespace_of.push(index);
            if matches!(e.namespace, Namespace::Clinic(clinic) if clinic == e.origin) {
                origins.push((*at, e.origin_seq));
            }
            clock = clock.max(e.hlc);
        }
    }
    Ok(Some(NodeSnapshot {
        role,
        position,
        id,
        clock,
        namespaces,
        namespace_of,
        origins,
        projection: projection.encode_snapshot(position),
    }))
}
