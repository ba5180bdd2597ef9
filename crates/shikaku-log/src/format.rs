//! The on-disk format, version 1, byte by byte (specified in `protocol/LOG-FORMAT.md`).
//!
//! A segment file starts with a 128-byte header and holds 16-byte-aligned records. Each
//! record is a 160-byte header, the event's canonical bytes zero-padded to 16, and a 32-byte
//! keyed blake3 checksum of everything before it; that checksum is also the next record's
//! `prev_hash`, so records form one hash chain across segments. A segment that fills is closed
//! by a seal record. Unused preallocated space is zero; a zero length word ends the data.

use shikaku_core::{EventId, Hlc, NodeId, Signature};

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHKKLOG\0";
/// Format version this build writes.
pub const FORMAT_VERSION: u16 = 1;
/// Oldest format version this build can read.
pub const MIN_COMPATIBLE_VERSION: u16 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 128;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 160;
/// Bytes of a checksum.
pub const CHECKSUM_BYTES: usize = 32;
/// Record alignment.
pub const RECORD_ALIGN: usize = 16;
/// Largest payload accepted (an event's canonical bytes).
pub const PAYLOAD_BYTES_MAX: usize = shikaku_core::event::EVENT_BYTES_MAX;
/// Record kind: an event.
pub const KIND_EVENT: u8 = 1;
/// Record kind: the seal that closes a full segment.
pub const KIND_SEAL: u8 = 2;
/// Record flag: the last record of a durable batch.
pub const FLAG_BATCH_END: u8 = 1;
/// Bytes of a seal record's payload: records in the segment (u64) and last sequence (u64).
pub const SEAL_PAYLOAD_BYTES: usize = 16;

/// The little-endian u16 at `at` (the caller has checked the length).
pub fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// The little-endian u32 at `at` (the caller has checked the length).
pub fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The little-endian u64 at `at` (the caller has checked the length).
pub fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Rounds up to the record alignment.
pub fn align(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Total bytes of a record with `payload` bytes.
pub fn record_bytes(payload: usize) -> usize {
    RECORD_HEADER_BYTES + align(payload) + CHECKSUM_BYTES
}

/// The checksum key of a node's log: blake3 derive_key("shikaku log v1 checksum", node id).
pub fn checksum_key(node: &NodeId) -> [u8; 32] {
    blake3::derive_key("shikaku log v1 checksum", &node.0)
}

/// The keyed blake3 checksum of some bytes.
pub fn checksum(key: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key, bytes).as_bytes()
}

/// A segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version that wrote it.
    pub format_version: u16,
    /// Oldest version able to read it.
    pub min_compatible_version: u16,
    /// Preallocated size of the segment file.
    pub segment_bytes: u64,
    /// Position of the segment in the log: 0, 1, 2, …
    pub segment_index: u64,
    /// Sequence number of the first record it holds (the previous segment's last + 1).
    pub first_seq: u64,
    /// The node whose log this is.
    pub node: NodeId,
    /// Checksum of the previous segment's last record (its seal); zeros for segment 0.
    pub prev_hash: [u8; 32],
}

/// Why bytes could not be read as a header or record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The magic bytes are wrong: not a shikaku log segment.
    #[error("not a shikaku log segment (bad magic)")]
    BadMagic,
    /// Written by a newer format this build cannot read.
    #[error("segment format version {found} needs a newer shikaku (this build reads {MIN_COMPATIBLE_VERSION}..={FORMAT_VERSION}; the segment needs at least {min_compatible})")]
    NewerFormat {
        /// Version that wrote it.
        found: u16,
        /// Oldest version that can read it.
        min_compatible: u16,
    },
    /// The header checksum does not match.
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    /// The record's length word is impossible.
    #[error("record length {0} is invalid")]
    BadLength(u32),
    /// Unknown record kind.
    #[error("record kind {0} is unknown")]
    BadKind(u8),
    /// The record checksum does not match its bytes.
    #[error("record checksum mismatch")]
    RecordChecksum,
    /// The bytes between the payload and the checksum are not zero: not the one encoding of
    /// the record.
    #[error("record padding is not zero")]
    NonZeroPadding,
    /// The record does not continue the hash chain.
    #[error("record does not continue the hash chain")]
    BrokenChain,
    /// The record's sequence number is not the next one.
    #[error("record sequence {found} where {expected} was expected")]
    Sequence {
        /// Found.
        found: u64,
        /// Expected.
        expected: u64,
    },
}

impl SegmentHeader {
    /// Encodes the header with its checksum.
    pub fn encode(&self, key: &[u8; 32]) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&self.format_version.to_le_bytes());
        out[10..12].copy_from_slice(&self.min_compatible_version.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_index.to_le_bytes());
        out[32..40].copy_from_slice(&self.first_seq.to_le_bytes());
        out[40..72].copy_from_slice(&self.node.0);
        out[72..104].copy_from_slice(&self.prev_hash);
        let sum = checksum(key, &out[..104]);
        out[104..128].copy_from_slice(&sum[..24]);
        out
    }

    /// Decodes a header. The checksum is keyed by the node id *in the header*; the caller
    /// then checks that the node is the expected one.
    pub fn decode(bytes: &[u8; SEGMENT_HEADER_BYTES]) -> Result<SegmentHeader, FormatError> {
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let format_version = le_u16(bytes, 8);
        let min_compatible_version = le_u16(bytes, 10);
        if min_compatible_version > FORMAT_VERSION {
            return Err(FormatError::NewerFormat {
                found: format_version,
                min_compatible: min_compatible_version,
            });
        }
        let mut node = [0u8; 32];
        node.copy_from_slice(&bytes[40..72]);
        let node = NodeId(node);
        let sum = checksum(&checksum_key(&node), &bytes[..104]);
        if bytes[104..128] != sum[..24] {
            return Err(FormatError::HeaderChecksum);
        }
        let mut prev_hash = [0u8; 32];
        prev_hash.copy_from_slice(&bytes[72..104]);
        Ok(SegmentHeader {
            format_version,
            min_compatible_version,
            segment_bytes: le_u64(bytes, 16),
            segment_index: le_u64(bytes, 24),
            first_seq: le_u64(bytes, 32),
            node,
            prev_hash,
        })
    }
}

/// The fixed fields of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// [`KIND_EVENT`] or [`KIND_SEAL`].
    pub kind: u8,
    /// [`FLAG_BATCH_END`] or 0.
    pub flags: u8,
    /// FNV-1a of the event's stream name (0 for seals), for the stream index.
    pub stream_tag: u32,
    /// Event schema version (0 for seals).
    pub schema_version: u16,
    /// Payload length in bytes.
    pub payload_bytes: u32,
    /// Log sequence number (position), from 1.
    pub seq: u64,
    /// The event's hybrid logical clock.
    pub hlc: Hlc,
    /// The event's id (zeros for seals).
    pub event_id: EventId,
    /// The previous record's checksum.
    pub prev_hash: [u8; 32],
    /// The event's signature (zeros for seals).
    pub signature: Signature,
}

impl RecordHeader {
    /// Total bytes of the record.
    pub fn record_bytes(&self) -> usize {
        record_bytes(self.payload_bytes as usize)
    }

    /// Appends the encoded record (header, padded payload, checksum) to `out` and returns its
    /// checksum.
    pub fn encode_into(&self, payload: &[u8], key: &[u8; 32], out: &mut Vec<u8>) -> [u8; 32] {
        let start = out.len();
        let total = record_bytes(payload.len());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.stream_tag.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.hlc.0.to_le_bytes());
        out.extend_from_slice(&self.event_id.0);
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.signature.0);
        out.extend_from_slice(payload);
        out.resize(start + RECORD_HEADER_BYTES + align(payload.len()), 0);
        let sum = checksum(key, &out[start..]);
        out.extend_from_slice(&sum);
        sum
    }

    /// Decodes and verifies one record starting at `bytes[0]` (which must hold at least the
    /// whole record). Returns the header, the payload and the checksum.
    pub fn decode<'a>(
        bytes: &'a [u8],
        key: &[u8; 32],
    ) -> Result<(RecordHeader, &'a [u8], [u8; 32]), FormatError> {
        if bytes.len() < RECORD_HEADER_BYTES + CHECKSUM_BYTES {
            return Err(FormatError::BadLength(bytes.len() as u32));
        }
        let total = le_u32(bytes, 0);
        let payload_bytes = le_u32(bytes, 8);
        if payload_bytes as usize > PAYLOAD_BYTES_MAX
            || total as usize != record_bytes(payload_bytes as usize)
            || total as usize > bytes.len()
        {
            return Err(FormatError::BadLength(total));
        }
        let body_end = total as usize - CHECKSUM_BYTES;
        let sum = checksum(key, &bytes[..body_end]);
        if bytes[body_end..total as usize] != sum {
            return Err(FormatError::RecordChecksum);
        }
        let kind = bytes[4];
        if kind != KIND_EVENT && kind != KIND_SEAL {
            return Err(FormatError::BadKind(kind));
        }
        let mut event_id = [0u8; 32];
        event_id.copy_from_slice(&bytes[32..64]);
        let mut prev_hash = [0u8; 32];
        prev_hash.copy_from_slice(&bytes[64..96]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[96..160]);
        let header = RecordHeader {
            kind,
            flags: bytes[5],
            stream_tag: le_u32(bytes, 12),
            schema_version: u16::from_le_bytes([bytes[6], bytes[7]]),
            payload_bytes,
            seq: le_u64(bytes, 16),
            hlc: Hlc(le_u64(bytes, 24)),
            event_id: EventId(event_id),
            prev_hash,
            signature: Signature(signature),
        };
        let payload_end = RECORD_HEADER_BYTES + payload_bytes as usize;
        if bytes[payload_end..body_end].iter().any(|&b| b != 0) {
            return Err(FormatError::NonZeroPadding);
        }
        let payload = &bytes[RECORD_HEADER_BYTES..payload_end];
        Ok((header, payload, sum))
    }
}
