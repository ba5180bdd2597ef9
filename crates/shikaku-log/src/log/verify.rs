//! Verification: the scrub of records recovery skipped, `ledger stats`, and `ledger verify`
//! (every record and signature).

use super::*;

impl<D: Directory> Log<D> {
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
