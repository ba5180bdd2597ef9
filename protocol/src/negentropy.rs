//! Range-based set reconciliation, byte-compatible with Negentropy protocol v1 (version byte
//! 0x61; see hoytech/negentropy `docs/negentropy-protocol-v1.md`).
//!
//! Items are `(timestamp, 32-byte id)` sorted by timestamp then id; for shikaku the timestamp
//! is the event's hlc and the id its event id. Each side holds a sorted slice; the initiator
//! sends fingerprints of ranges, the other side answers with finer ranges or id lists where they
//! differ, until the initiator knows which ids it has that the other lacks (`have`) and which
//! it lacks (`need`). A range fingerprint is the first 16 bytes of
//! SHA-256(sum of ids as 256-bit little-endian integers mod 2^256 ‖ varint(count)).
//!
//! Sans-IO: [`Reconciler`] turns messages into messages. Every message is bounded by
//! `frame_bytes_max` (0 = unbounded; otherwise at least 4,096), and malformed input is a typed
//! [`ReconcileError`], never a panic.

use sha2::{Digest, Sha256};

/// The protocol version byte.
pub const PROTOCOL_VERSION: u8 = 0x61;
/// Bytes of an id.
pub const ID_BYTES: usize = 32;
/// Bytes of a fingerprint.
pub const FINGERPRINT_BYTES: usize = 16;
/// Ranges are split into this many buckets.
const BUCKETS: usize = 16;
/// Smallest non-zero frame limit.
pub const FRAME_BYTES_MIN: usize = 4096;

/// One element of a reconciled set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    /// Timestamp (shikaku: the hybrid logical clock).
    pub timestamp: u64,
    /// Id (shikaku: the event id).
    pub id: [u8; ID_BYTES],
}

/// A range boundary: a timestamp and an id prefix (zero-padded), exclusive upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bound {
    item: Item,
    prefix_len: usize,
}

impl Bound {
    fn timestamp(timestamp: u64) -> Bound {
        Bound { item: Item { timestamp, id: [0; ID_BYTES] }, prefix_len: 0 }
    }

    fn infinity() -> Bound {
        Bound::timestamp(u64::MAX)
    }
}

/// Why a message could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The message is empty or ends inside a field.
    #[error("reconciliation message ends prematurely")]
    Truncated,
    /// The first byte is not a Negentropy protocol version (0x60..=0x6F).
    #[error("not a negentropy message (version byte {0:#04x})")]
    NotNegentropy(u8),
    /// The peer speaks another version and we are the initiator.
    #[error("peer speaks negentropy version {0:#04x}; this side speaks 0x61")]
    UnsupportedVersion(u8),
    /// A mode other than skip (0), fingerprint (1) or id list (2).
    #[error("unknown range mode {0}")]
    BadMode(u64),
    /// A bound's id prefix is longer than an id.
    #[error("bound id prefix of {0} bytes is longer than an id")]
    BadBound(u64),
    /// Bounds do not increase.
    #[error("range bounds are out of order")]
    OutOfOrder,
    /// The frame limit is below the minimum.
    #[error("frame limit {0} is below the minimum of {FRAME_BYTES_MIN} bytes")]
    FrameLimitTooSmall(usize),
    /// The local items are not sorted and unique.
    #[error("items must be sorted by (timestamp, id) without duplicates")]
    Unsorted,
    /// Called on the wrong side (initiate twice, respond as initiator, …).
    #[error("{0}")]
    WrongRole(&'static str),
}

fn encode_varint(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = (n & 0x7F) as u8;
        len += 1;
        n >>= 7;
        if n == 0 {
            break;
        }
    }
    for i in (0..len).rev() {
        out.push(digits[i] | if i > 0 { 0x80 } else { 0 });
    }
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn varint(&mut self) -> Result<u64, ReconcileError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.0.iter().enumerate() {
            if i >= 10 {
                return Err(ReconcileError::Truncated);
            }
            value = (value << 7) | u64::from(byte & 0x7F);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(ReconcileError::Truncated)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ReconcileError> {
        if self.0.len() < n {
            return Err(ReconcileError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

/// The fingerprint of a run of items.
pub fn fingerprint(items: &[Item]) -> [u8; FINGERPRINT_BYTES] {
    let mut acc = Accumulator::default();
    for item in items {
        acc.add(&item.id);
    }
    acc.fingerprint()
}

/// A running fingerprint: the sum of ids mod 2^256 and the count, so a set's fingerprint can be
/// kept up to date as items arrive instead of re-summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accumulator {
    sum: [u64; 4],
    count: u64,
}

impl Accumulator {
    /// The empty set's accumulator.
    pub const ZERO: Accumulator = Accumulator { sum: [0; 4], count: 0 };

    /// Adds one id.
    pub fn add(&mut self, id: &[u8; ID_BYTES]) {
        let mut carry = 0u64;
        for (lane, chunk) in self.sum.iter_mut().zip(id.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let (a, c1) = lane.overflowing_add(u64::from_le_bytes(word));
            let (b, c2) = a.overflowing_add(carry);
            *lane = b;
            carry = u64::from(c1 | c2);
        }
        self.count += 1;
    }

    /// Adds everything another accumulator holds (the union of disjoint sets).
    pub fn merge(&mut self, other: &Accumulator) {
        let mut carry = 0u64;
        for (lane, add) in self.sum.iter_mut().zip(other.sum) {
            let (a, c1) = lane.overflowing_add(add);
            let (b, c2) = a.overflowing_add(carry);
            *lane = b;
            carry = u64::from(c1 | c2);
        }
        self.count += other.count;
    }

    /// Items added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The Negentropy fingerprint of the items added.
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_BYTES] {
        let mut hasher = Sha256::new();
        for lane in self.sum {
            hasher.update(lane.to_le_bytes());
        }
        let mut count = Vec::with_capacity(10);
        encode_varint(self.count, &mut count);
        hasher.update(&count);
        let digest = hasher.finalize();
        let mut out = [0u8; FINGERPRINT_BYTES];
        out.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
        out
    }
}

/// One side of a reconciliation over a sorted slice of items.
#[derive(Debug)]
pub struct Reconciler<'a> {
    items: &'a [Item],
    frame_bytes_max: usize,
    initiator: bool,
    last_timestamp_in: u64,
    last_timestamp_out: u64,
}

const MODE_SKIP: u64 = 0;
const MODE_FINGERPRINT: u64 = 1;
const MODE_ID_LIST: u64 = 2;

impl<'a> Reconciler<'a> {
    /// A reconciler over `items` (sorted by `(timestamp, id)`, unique). `frame_bytes_max` bounds
    /// every message this side sends: 0 for no bound, else at least 4,096.
    pub fn new(
        items: &'a [Item],
        frame_bytes_max: usize,
    ) -> Result<Reconciler<'a>, ReconcileError> {
        if frame_bytes_max != 0 && frame_bytes_max < FRAME_BYTES_MIN {
            return Err(ReconcileError::FrameLimitTooSmall(frame_bytes_max));
        }
        if items.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ReconcileError::Unsorted);
        }
        Ok(Reconciler {
            items,
            frame_bytes_max,
            initiator: false,
            last_timestamp_in: 0,
            last_timestamp_out: 0,
        })
    }

    /// An initiator that has already sent its first message and processes answers over the
    /// (possibly grown) `items`: lets a session keep no borrow between messages.
    pub fn resume_initiator(
        items: &'a [Item],
        frame_bytes_max: usize,
    ) -> Result<Reconciler<'a>, ReconcileError> {
        let mut r = Reconciler::new(items, frame_bytes_max)?;
        r.initiator = true;
        Ok(r)
    }

    /// The first message (this side becomes the initiator).
    pub fn initiate(&mut self) -> Result<Vec<u8>, ReconcileError> {
        if self.initiator {
            return Err(ReconcileError::WrongRole("initiate() was already called"));
        }
        self.initiator = true;
        self.last_timestamp_out = 0;
        let mut out = vec![PROTOCOL_VERSION];
        self.split_range(0, self.items.len(), Bound::infinity(), &mut out);
        Ok(out)
    }

    /// The responder's answer to a message.
    pub fn respond(&mut self, message: &[u8]) -> Result<Vec<u8>, ReconcileError> {
        if self.initiator {
            return Err(ReconcileError::WrongRole("the initiator uses reconcile(), not respond()"));
        }
        self.process(message, &mut Vec::new(), &mut Vec::new())
    }

    /// The initiator's processing of an answer: ids it has that the peer lacks go to `have`,
    /// ids the peer has that it lacks go to `need`; returns the next message, or `None` when
    /// reconciliation is complete.
    pub fn reconcile(
        &mut self,
        message: &[u8],
        have: &mut Vec<[u8; ID_BYTES]>,
        need: &mut Vec<[u8; ID_BYTES]>,
    ) -> Result<Option<Vec<u8>>, ReconcileError> {
        if !self.initiator {
            return Err(ReconcileError::WrongRole("only the initiator reconciles answers"));
        }
        let out = self.process(message, have, need)?;
        Ok((out.len() > 1).then_some(out))
    }

    fn frame_full(&self, bytes: usize) -> bool {
        self.frame_bytes_max != 0 && bytes > self.frame_bytes_max - 200
    }

    fn lower_bound(&self, from: usize, bound: &Bound) -> usize {
        from + self.items[from..].partition_point(|item| *item < bound.item)
    }

    fn process(
        &mut self,
        message: &[u8],
        have: &mut Vec<[u8; ID_BYTES]>,
        need: &mut Vec<[u8; ID_BYTES]>,
    ) -> Result<Vec<u8>, ReconcileError> {
        self.last_timestamp_in = 0;
        self.last_timestamp_out = 0;
        let mut input = Input(message);
        let version = *input.bytes(1)?.first().ok_or(ReconcileError::Truncated)?;
        if !(0x60..=0x6F).contains(&version) {
            return Err(ReconcileError::NotNegentropy(version));
        }
        let mut full = vec![PROTOCOL_VERSION];
        if version != PROTOCOL_VERSION {
            if self.initiator {
                return Err(ReconcileError::UnsupportedVersion(version));
            }
            // Answer with our version alone: the peer may retry with it.
            return Ok(full);
        }
        let mut prev_bound = Bound::timestamp(0);
        let mut prev_index = 0usize;
        let mut skip = false;
        let mut emitted_index = 0usize;
        while !input.0.is_empty() {
            let mut o: Vec<u8> = Vec::new();
            let bound = self.decode_bound(&mut input)?;
            if bound.item < prev_bound.item {
                return Err(ReconcileError::OutOfOrder);
            }
            let mode = input.varint()?;
            let lower = prev_index;
            let mut upper = self.lower_bound(prev_index, &bound);
            match mode {
                MODE_SKIP => skip = true,
                MODE_FINGERPRINT => {
                    let theirs = input.bytes(FINGERPRINT_BYTES)?;
                    if theirs != fingerprint(&self.items[lower..upper]) {
                        if skip {
                            skip = false;
                            self.encode_bound(&prev_bound, &mut o);
                            encode_varint(MODE_SKIP, &mut o);
                        }
                        self.split_range(lower, upper, bound, &mut o);
                    } else {
                        skip = true;
                    }
                }
                MODE_ID_LIST => {
                    let count = input.varint()?;
                    if count > (input.0.len() / ID_BYTES) as u64 {
                        return Err(ReconcileError::Truncated);
                    }
                    let mut theirs: Vec<[u8; ID_BYTES]> = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        let mut id = [0u8; ID_BYTES];
                        id.copy_from_slice(input.bytes(ID_BYTES)?);
                        theirs.push(id);
                    }
                    theirs.sort_unstable();
                    theirs.dedup();
                    if self.initiator {
                        skip = true;
                        let mut ours: Vec<[u8; ID_BYTES]> =
                            self.items[lower..upper].iter().map(|i| i.id).collect();
                        ours.sort_unstable();
                        have.extend(ours.iter().filter(|id| theirs.binary_search(id).is_err()));
                        need.extend(theirs.iter().filter(|id| ours.binary_search(id).is_err()));
                    } else {
                        if skip {
                            skip = false;
                            self.encode_bound(&prev_bound, &mut o);
                            encode_varint(MODE_SKIP, &mut o);
                        }
                        let mut ids: Vec<u8> = Vec::new();
                        let mut sent = 0u64;
                        let mut end_bound = bound;
                        for index in lower..upper {
                            if self.frame_full(full.len() + ids.len()) {
                                let item = self.items[index];
                                end_bound = Bound { item, prefix_len: ID_BYTES };
                                upper = index;
                                break;
                            }
                            ids.extend_from_slice(&self.items[index].id);
                            sent += 1;
                        }
                        self.encode_bound(&end_bound, &mut o);
                        encode_varint(MODE_ID_LIST, &mut o);
                        encode_varint(sent, &mut o);
                        o.extend_from_slice(&ids);
                        full.extend_from_slice(&o);
                        o.clear();
                        emitted_index = upper;
                    }
                }
                other => return Err(ReconcileError::BadMode(other)),
            }
            if self.frame_full(full.len() + o.len()) {
                // Out of room: one fingerprint covers everything not yet answered.
                let rest = fingerprint(&self.items[emitted_index..]);
                self.encode_bound(&Bound::infinity(), &mut full);
                encode_varint(MODE_FINGERPRINT, &mut full);
                full.extend_from_slice(&rest);
                break;
            }
            if !o.is_empty() {
                emitted_index = upper;
            }
            full.extend_from_slice(&o);
            prev_index = upper;
            prev_bound = bound;
        }
        Ok(full)
    }

    fn split_range(&mut self, lower: usize, upper: usize, upper_bound: Bound, out: &mut Vec<u8>) {
        let count = upper - lower;
        if count < 2 * BUCKETS {
            self.encode_bound(&upper_bound, out);
            encode_varint(MODE_ID_LIST, out);
            encode_varint(count as u64, out);
            for item in &self.items[lower..upper] {
                out.extend_from_slice(&item.id);
            }
            return;
        }
        let per_bucket = count / BUCKETS;
        let with_extra = count % BUCKETS;
        let mut current = lower;
        for bucket in 0..BUCKETS {
            let size = per_bucket + usize::from(bucket < with_extra);
            let print = fingerprint(&self.items[current..current + size]);
            current += size;
            let bound = if current == upper {
                upper_bound
            } else {
                minimal_bound(&self.items[current - 1], &self.items[current])
            };
            self.encode_bound(&bound, out);
            encode_varint(MODE_FINGERPRINT, out);
            out.extend_from_slice(&print);
        }
    }

    fn encode_bound(&mut self, bound: &Bound, out: &mut Vec<u8>) {
        let timestamp = bound.item.timestamp;
        if timestamp == u64::MAX {
            self.last_timestamp_out = u64::MAX;
            encode_varint(0, out);
        } else {
            let delta = timestamp.saturating_sub(self.last_timestamp_out);
            self.last_timestamp_out = timestamp;
            encode_varint(delta.saturating_add(1), out);
        }
        encode_varint(bound.prefix_len as u64, out);
        out.extend_from_slice(&bound.item.id[..bound.prefix_len]);
    }

    fn decode_bound(&mut self, input: &mut Input<'_>) -> Result<Bound, ReconcileError> {
        let raw = input.varint()?;
        let timestamp =
            if raw == 0 { u64::MAX } else { (raw - 1).saturating_add(self.last_timestamp_in) };
        self.last_timestamp_in = timestamp;
        let prefix_len = input.varint()?;
        if prefix_len > ID_BYTES as u64 {
            return Err(ReconcileError::BadBound(prefix_len));
        }
        let mut id = [0u8; ID_BYTES];
        id[..prefix_len as usize].copy_from_slice(input.bytes(prefix_len as usize)?);
        Ok(Bound { item: Item { timestamp, id }, prefix_len: prefix_len as usize })
    }
}

/// The shortest bound that separates `prev` from `next` (which follows it).
fn minimal_bound(prev: &Item, next: &Item) -> Bound {
    if next.timestamp != prev.timestamp {
        return Bound::timestamp(next.timestamp);
    }
    let shared = prev.id.iter().zip(&next.id).take_while(|(a, b)| a == b).count();
    let prefix_len = (shared + 1).min(ID_BYTES);
    let mut id = [0u8; ID_BYTES];
    id[..prefix_len].copy_from_slice(&next.id[..prefix_len]);
    Bound { item: Item { timestamp: next.timestamp, id }, prefix_len }
}
