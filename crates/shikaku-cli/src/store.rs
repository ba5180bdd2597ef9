//! The interim ledger store: the node's events as a JSON Lines file in its data directory
//! (`ledger.jsonl`, the format of `protocol/EVENTS-JSONL.md`), appended and fsynced on import.
//!
//! Signatures are verified before anything is stored; on reading back, every event's bytes are
//! re-checked against its id. The durable segmented log (issue 3) replaces this file; the
//! command names and flags that use it stay.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shikaku_core::{EventId, Projection, Replication, SignedEvent};

use crate::jsonl;

/// File name of the interim ledger inside the data directory.
pub const LEDGER_FILE: &str = "ledger.jsonl";

/// A node's events, loaded.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    events: Vec<SignedEvent>,
    ids: HashSet<EventId>,
}

impl Store {
    /// Opens (or starts) the ledger in `dir`. Any damaged line is an error naming the line:
    /// nothing is served from a ledger that does not verify.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.join(LEDGER_FILE);
        let mut store = Store { path: path.clone(), events: Vec::new(), ids: HashSet::new() };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.is_empty() {
                continue;
            }
            let event = jsonl::decode_unverified(&line, None)
                .map_err(|e| {
                    anyhow::anyhow!("{} line {}: damaged: {e}", path.display(), number + 1)
                })?
                .trust_stored_signature();
            if store.ids.insert(event.id()) {
                store.events.push(event);
            }
        }
        Ok(store)
    }

    /// Whether no ledger file exists yet.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events, in the order they were stored.
    pub fn events(&self) -> &[SignedEvent] {
        &self.events
    }

    /// Whether an event is stored.
    pub fn contains(&self, id: &EventId) -> bool {
        self.ids.contains(id)
    }

    /// Appends verified events not already stored and makes them durable (write + fsync, and
    /// the directory on first creation). Returns how many were new.
    pub fn append(&mut self, events: Vec<SignedEvent>) -> Result<usize> {
        let fresh: Vec<SignedEvent> =
            events.into_iter().filter(|e| !self.ids.contains(&e.id())).collect();
        let mut unique = Vec::with_capacity(fresh.len());
        let mut seen = HashSet::new();
        for event in fresh {
            if seen.insert(event.id()) {
                unique.push(event);
            }
        }
        if unique.is_empty() {
            return Ok(0);
        }
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let created = !self.path.exists();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {} for append", self.path.display()))?;
        let mut buffer = String::with_capacity(unique.len() * 512);
        for event in &unique {
            buffer.push_str(&jsonl::encode(event));
            buffer.push('\n');
        }
        file.write_all(buffer.as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        if created {
            File::open(&dir).and_then(|d| d.sync_all()).ok();
        }
        let count = unique.len();
        for event in unique {
            self.ids.insert(event.id());
            self.events.push(event);
        }
        Ok(count)
    }

    /// Folds every stored event into a projection.
    pub fn projection(&self, replication: Replication) -> Projection {
        let mut projection = Projection::new(replication);
        for event in &self.events {
            projection.apply(event);
        }
        projection.shrink_to_fit();
        projection
    }

    /// Refuses to work on a ledger file that is not ours.
    pub fn ensure_dir_usable(dir: &Path) -> Result<()> {
        if dir.exists() && !dir.is_dir() {
            bail!("data directory {} exists and is not a directory", dir.display());
        }
        Ok(())
    }
}
