//! Opening a log is recovery: every segment header and record verified (checksum, chain,
//! sequence) — or, with a valid index checkpoint, only what follows it — a torn,
//! never-acknowledged tail cut, damage before it reported and never served, and evidence of
//! acknowledged events that recovery did not find reported as loss. Writing index checkpoints.

use super::*;

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
    pub(super) fn report_evidence_of_loss(&mut self) {
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
    pub(super) fn load_checkpoint(
        &mut self,
        segments: usize,
    ) -> Result<Option<IndexCheckpoint>, LogError> {
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

    pub(super) fn is_abandoned_segment(&mut self, name: &str) -> Result<bool, LogError> {
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
    pub(super) fn open_segment(
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
    pub(super) fn skip_to(&mut self, seq: u64) {
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

    pub(super) fn find_next_record(
        &self,
        data: &[u8],
        from: usize,
    ) -> Option<(usize, u64, [u8; 32])> {
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
    pub(super) fn accept_record(
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

    pub(super) fn index(
        &mut self,
        seq: u64,
        id: EventId,
        hlc: Hlc,
        tag: u32,
        segment: u32,
        offset: u32,
    ) {
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

    pub(super) fn merge_hlc_tail(&mut self) {
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
}
