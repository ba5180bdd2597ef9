//! The one import loop behind `ledger import`, `hub import` and `POST /v1/import`: JSON Lines
//! read line by line, ids and signatures verified in parallel batches, screened, stored in
//! batches; every refused line reported as a typed [`RefusedLine`].

use std::io::BufRead;

use anyhow::Result;
use shikaku_core::{verify_all, SignedEvent};

use crate::jsonl;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportSummary {
    /// Lines read (non-empty).
    pub lines: u64,
    /// Events newly stored.
    pub imported: u64,
    /// Good events already in the ledger (or repeated in the input).
    pub duplicates: u64,
    /// Lines refused.
    pub rejected: u64,
}

impl ImportSummary {
    /// Good, duplicate and refused lines so far: what an import has got through.
    pub fn handled(&self) -> u64 {
        self.imported + self.duplicates + self.rejected
    }
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported {} new events from {} lines ({} already present, {} rejected)",
            self.imported, self.lines, self.duplicates, self.rejected
        )
    }
}

/// A line an import refused, and why (its number counts every line of the input, from 1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefusedLine {
    /// Line number in the input.
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
}

impl RefusedLine {
    /// The same refusal numbered within a larger input whose piece started at `first_line`
    /// (a request within a file, a piece within a request body).
    pub fn in_input_from(self, first_line: u64) -> RefusedLine {
        RefusedLine { line: self.line + first_line - 1, ..self }
    }
}

impl std::fmt::Display for RefusedLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Events read per verification batch during import.
const IMPORT_CHUNK_LINES: usize = 4_096;

/// The import loop shared by `ledger import` and `hub import`: reads JSON Lines, verifies ids
/// and signatures in parallel batches, refuses what `screen` names a reason for (asked once
/// per batch, a reason or none for each verified event, in order), and hands the
/// good events to `sink` (which returns how many were new). Refused lines go to `refused`, in
/// line order; `progress` sees the running summary and the bytes read after every batch.
pub fn import_stream(
    reader: impl BufRead,
    refused: &mut dyn FnMut(RefusedLine) -> Result<()>,
    screen: &mut dyn FnMut(&[SignedEvent]) -> Vec<Option<String>>,
    sink: &mut dyn FnMut(&[SignedEvent]) -> Result<u64>,
    progress: &mut dyn FnMut(&ImportSummary, u64),
) -> Result<ImportSummary> {
    let now_ms = shikaku_net::clock::now_ms();
    let mut summary = ImportSummary::default();
    let mut bytes = 0u64;
    let mut pending: Vec<(u64, shikaku_core::UnverifiedEvent)> = Vec::new();
    let mut errors: Vec<(u64, String)> = Vec::new();
    let mut flush = |pending: &mut Vec<(u64, shikaku_core::UnverifiedEvent)>,
                     errors: &mut Vec<(u64, String)>,
                     summary: &mut ImportSummary,
                     refused: &mut dyn FnMut(RefusedLine) -> Result<()>|
     -> Result<()> {
        let numbers: Vec<u64> = pending.iter().map(|(n, _)| *n).collect();
        let events = pending.drain(..).map(|(_, e)| e).collect();
        let mut verified: Vec<(u64, SignedEvent)> = Vec::new();
        for (number, result) in numbers.into_iter().zip(verify_all(events)) {
            match result {
                Ok(event) => verified.push((number, event)),
                Err(e) => errors.push((number, e.to_string())),
            }
        }
        let (numbers, verified): (Vec<u64>, Vec<SignedEvent>) = verified.into_iter().unzip();
        let reasons = screen(&verified);
        let mut good: Vec<SignedEvent> = Vec::with_capacity(verified.len());
        // A shorter answer than the batch leaves the rest unrefused, never dropped.
        for ((number, event), reason) in numbers
            .into_iter()
            .zip(verified)
            .zip(reasons.into_iter().map(Some).chain(std::iter::repeat(None)))
        {
            match reason.flatten() {
                Some(why) => errors.push((number, why)),
                None => good.push(event),
            }
        }
        // Report this chunk's refusals in line order, whichever check caught them.
        errors.sort_by_key(|(number, _)| *number);
        for (number, reason) in errors.drain(..) {
            summary.rejected += 1;
            refused(RefusedLine { line: number, reason })?;
        }
        let offered = good.len() as u64;
        let new = sink(&good)?;
        summary.imported += new;
        summary.duplicates += offered - new;
        Ok(())
    };
    for (index, line) in reader.lines().enumerate() {
        let number = index as u64 + 1;
        let mut line = match line {
            Ok(line) => line,
            // Invalid UTF-8: the line was consumed, so the next one can still be read.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                summary.lines += 1;
                errors.push((number, format!("unreadable: {e}")));
                continue;
            }
            // Anything else (EISDIR, EIO) would repeat forever: stop, keeping what was stored.
            Err(e) => {
                flush(&mut pending, &mut errors, &mut summary, refused)?;
                progress(&summary, bytes);
                return Err(anyhow::Error::from(e)
                    .context(format!("reading the input stopped at line {number}")));
            }
        };
        bytes += line.len() as u64 + 1;
        // A UTF-8 byte-order mark (as Windows tools write) is not part of the first record.
        if number == 1 && line.starts_with('\u{feff}') {
            line.drain(..'\u{feff}'.len_utf8());
        }
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        match jsonl::decode_unverified(&line, Some(now_ms)) {
            Ok(event) => pending.push((number, event)),
            Err(e) => errors.push((number, e.to_string())),
        }
        if pending.len() + errors.len() >= IMPORT_CHUNK_LINES {
            flush(&mut pending, &mut errors, &mut summary, refused)?;
            progress(&summary, bytes);
        }
    }
    flush(&mut pending, &mut errors, &mut summary, refused)?;
    progress(&summary, bytes);
    Ok(summary)
}
