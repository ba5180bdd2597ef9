//! Index checkpoints: the log's derived indexes saved at a durable position so that opening a
//! large ledger reads one file instead of re-verifying every record. Specified in
//! `protocol/LOG-FORMAT.md` ("Index checkpoint").
//!
//! A checkpoint is trusted only if its keyed checksum verifies *and* the 32 bytes that end the
//! covered part of the log are the chain hash it recorded; anything else is ignored (and said
//! so in the recovery report) and the log is scanned in full.

use shikaku_core::{EventId, Hlc};

use crate::format::{checksum, le_u16, le_u32, le_u64};
use crate::log::Location;

/// File name, inside the log directory.
pub const INDEX_CHECKPOINT_FILE: &str = "checkpoint-index.shkc";
const MAGIC: [u8; 8] = *b"SHKKIDX\0";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 128;
const ENTRY_BYTES: usize = 56;

/// The saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexCheckpoint {
    pub(crate) next_seq: u64,
    pub(crate) segments: u64,
    pub(crate) resume_offset: u64,
    pub(crate) last_sealed: bool,
    pub(crate) record_bytes: u64,
    pub(crate) last_hash: [u8; 32],
    pub(crate) locations: Vec<Location>,
}

impl IndexCheckpoint {
    pub(crate) fn encode(&self, key: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.locations.len() * ENTRY_BYTES + 32);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&u16::from(self.last_sealed).to_le_bytes());
        out.extend_from_slice(&(ENTRY_BYTES as u32).to_le_bytes());
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out.extend_from_slice(&self.segments.to_le_bytes());
        out.extend_from_slice(&self.resume_offset.to_le_bytes());
        out.extend_from_slice(&self.record_bytes.to_le_bytes());
        out.extend_from_slice(&(self.locations.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.last_hash);
        out.resize(HEADER_BYTES, 0);
        for location in &self.locations {
            out.extend_from_slice(&location.id.0);
            out.extend_from_slice(&location.hlc.0.to_le_bytes());
            out.extend_from_slice(&location.segment.to_le_bytes());
            out.extend_from_slice(&location.offset.to_le_bytes());
            out.extend_from_slice(&location.tag.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        let sum = checksum(key, &out);
        out.extend_from_slice(&sum);
        out
    }

    pub(crate) fn decode(bytes: &[u8], key: &[u8; 32]) -> Result<IndexCheckpoint, String> {
        if bytes.len() < HEADER_BYTES + 32 || bytes[..8] != MAGIC {
            return Err("not an index checkpoint".into());
        }
        if le_u16(bytes, 8) != VERSION || le_u32(bytes, 12) as usize != ENTRY_BYTES {
            return Err(format!("index checkpoint version {} is not {VERSION}", le_u16(bytes, 8)));
        }
        let count = le_u64(bytes, 48) as usize;
        if bytes.len() != HEADER_BYTES + count.saturating_mul(ENTRY_BYTES) + 32 {
            return Err("index checkpoint length does not match its entry count".into());
        }
        let body = &bytes[..bytes.len() - 32];
        if checksum(key, body) != bytes[bytes.len() - 32..] {
            return Err("index checkpoint checksum mismatch".into());
        }
        let mut last_hash = [0u8; 32];
        last_hash.copy_from_slice(&bytes[56..88]);
        let mut locations = Vec::with_capacity(count);
        for entry in body[HEADER_BYTES..].chunks_exact(ENTRY_BYTES) {
            let mut id = [0u8; 32];
            id.copy_from_slice(&entry[..32]);
            let mut hlc = [0u8; 8];
            hlc.copy_from_slice(&entry[32..40]);
            locations.push(Location {
                id: EventId(id),
                hlc: Hlc(u64::from_le_bytes(hlc)),
                segment: le_u32(entry, 40),
                offset: le_u32(entry, 44),
                tag: le_u32(entry, 48),
            });
        }
        Ok(IndexCheckpoint {
            next_seq: le_u64(bytes, 16),
            segments: le_u64(bytes, 24),
            resume_offset: le_u64(bytes, 32),
            last_sealed: le_u16(bytes, 10) == 1,
            record_bytes: le_u64(bytes, 40),
            last_hash,
            locations,
        })
    }
}
