//! Reading: one record (verified on every read), ranges in large blocks, positions by hlc.

use super::*;

impl<D: Directory> Log<D> {
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

    /// The sequence of an event, if held.
    pub fn position_of(&self, id: &EventId) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    pub(super) fn location(&self, seq: u64) -> Result<Location, LogError> {
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

    pub(super) fn corrupt(&self, seq: u64, location: Location, reason: String) -> LogError {
        LogError::Corrupt {
            seq,
            segment: self.segments[location.segment as usize].name.clone(),
            offset: u64::from(location.offset),
            reason,
        }
    }

    /// Verifies one record's bytes (checksum, position, kind, id) and decodes its event.
    pub(super) fn decode_record(
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
}
