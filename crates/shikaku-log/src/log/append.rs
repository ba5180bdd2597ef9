//! Appending: one group commit per batch (one write and one sync per segment touched), a seal
//! when a segment fills, and new segments created durably.

use super::*;

impl<D: Directory> Log<D> {
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
    pub(super) fn commit(
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
    pub(super) fn seal(&mut self) -> Result<[u8; 32], StorageError> {
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

    pub(super) fn new_segment(&mut self) -> Result<(), StorageError> {
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
}
