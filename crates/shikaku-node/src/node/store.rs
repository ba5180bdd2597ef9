//! The node's storage: folding the ledger into indexes and projection (from the node snapshot
//! when one verifies), the scrub of checkpoint-covered records, writing snapshots, the
//! clinic's receipt file, and storing verified events (which wakes only the sessions that
//! have something new to send).

use super::*;

impl<D: Directory> Node<D> {
    /// Indexes and folds every event from `from` to the head. A record the index checkpoint
    /// covered that fails its checks is marked damaged and returned; the fold goes on.
    pub(super) fn fold_from(
        &mut self,
        mut from: u64,
    ) -> Result<Vec<shikaku_log::Damage>, NodeError> {
        let mut damaged = Vec::new();
        loop {
            let batch = match self.log.read_from(from, 8192) {
                Ok(batch) => batch,
                // A record an index checkpoint covered, rotten since: mark what fails as damage
                // (as recovery would have) and read on.
                Err(e @ LogError::Corrupt { .. }) => {
                    let (_, found) = self.log.scrub(from, 8192)?;
                    if found.is_empty() {
                        return Err(e.into());
                    }
                    damaged.extend(found);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some((last, _)) = batch.last() else { break };
            from = last + 1;
            for (position, event) in &batch {
                self.index(*position, event);
            }
        }
        Ok(damaged)
    }

    /// Verifies up to `max` more of the records the index checkpoint let [`Node::open`] skip
    /// (the runtime calls this on every tick, [`SCRUB_PER_TICK`] at a time). Damage found is
    /// handled as if open had found it: logged, never served, the node's state rebuilt from
    /// what is readable, and every session restarted so that a clinic re-fetches the damaged
    /// events from its hub. Returns whether records remain to scrub.
    pub fn scrub(&mut self, max: u64) -> Result<bool, NodeError> {
        if self.scrub_next == 0 {
            return Ok(false);
        }
        let (next, found) = self.log.scrub(self.scrub_next, max)?;
        self.scrub_next = if next >= self.log.head() { 0 } else { next };
        if !found.is_empty() {
            if self.config.follows_stream {
                let first = found.first().map(ToString::to_string).unwrap_or_default();
                self.front_end_damaged(first);
            }
            // Rebuilding reads every record again: more of them may turn out rotten.
            let more = self.rebuild()?;
            for damage in found.iter().chain(&more) {
                self.log(
                    Level::Warn,
                    format!(
                        "ledger damage found by scrub, to be re-fetched from the hub: {damage}"
                    ),
                );
            }
            let conns: Vec<ConnId> = self.conns.keys().copied().collect();
            for conn in conns {
                self.close(
                    conn,
                    ErrorCode::Internal,
                    "ledger damage found: session restarted".into(),
                );
            }
        }
        Ok(self.scrub_next != 0)
    }

    /// Derives every index and the projection again from the readable events; returns the
    /// records that turned out rotten on the way (already marked damaged).
    pub(super) fn rebuild(&mut self) -> Result<Vec<shikaku_log::Damage>, NodeError> {
        self.projection = configured(Projection::default(), &self.config);
        self.ns.clear();
        self.own.clear();
        self.clinic_seq.clear();
        self.origin_seqs.clear();
        self.fold_from(1)
    }

    /// Restores indexes, origin sequences, clock and projection from the node snapshot when
    /// one verifies and belongs to this log; returns the position it covers. `Ok(None)`: no
    /// snapshot; `Err`: why the one found is not used.
    pub(super) fn load_snapshot(&mut self) -> Result<Option<u64>, String> {
        let bytes = match self.log.directory_mut().read_whole(NODE_SNAPSHOT_FILE) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("unreadable: {e}")),
        };
        if !self.log.recovery().damaged.is_empty() {
            return Err("the ledger has damage".into());
        }
        let snapshot = NodeSnapshot::decode(&bytes).map_err(|e| e.to_string())?;
        if snapshot.position == 0
            || snapshot.position >= self.log.head()
            || self.log.id_at(snapshot.position) != Some(snapshot.id)
        {
            return Err(format!(
                "position {} does not hold the event it names in this ledger",
                snapshot.position
            ));
        }
        let projection =
            configured(snapshot.projection().map_err(|e| e.to_string())?, &self.config);
        let mut ns: BTreeMap<Namespace, NsIndex> = BTreeMap::new();
        let mut indexes: Vec<Option<NsIndex>> = vec![None; snapshot.namespaces.len()];
        for (offset, which) in snapshot.namespace_of.iter().enumerate() {
            let position = offset as u64 + 1;
            let Some((hlc, id)) = self.log.entry(position) else {
                return Err(format!("position {position} is not in the ledger's index"));
            };
            indexes[*which as usize].get_or_insert_with(NsIndex::new).add(position, hlc, id);
        }
        for (namespace, index) in snapshot.namespaces.iter().zip(indexes) {
            if let Some(index) = index {
                ns.insert(*namespace, index);
            }
        }
        let me = self.signer.node_id();
        for (position, seq) in &snapshot.origins {
            let which = snapshot.namespace_of[(*position - 1) as usize] as usize;
            let Namespace::Clinic(clinic) = snapshot.namespaces[which] else {
                return Err(format!("origin entry at position {position} is not a clinic's"));
            };
            if clinic == me {
                self.own.insert(*seq, *position);
            }
            let held = self.clinic_seq.entry(clinic).or_default();
            *held = (*held).max(*seq);
            if self.config.role == Role::Hub {
                if let Some(id) = self.log.id_at(*position) {
                    self.origin_seqs.entry((clinic, *seq)).or_insert(id);
                }
            }
        }
        if snapshot.clock > self.clock.last() {
            self.clock = HlcClock::resume(snapshot.clock);
        }
        self.ns = ns;
        self.projection = projection;
        Ok(Some(snapshot.position))
    }

    /// How the node was opened: whether its snapshot was used (or why not) and how many
    /// events were folded.
    pub fn open_note(&self) -> &str {
        &self.open_note
    }

    /// Writes the node snapshot (and the log's index checkpoint) at the current head, so the
    /// next open reads two files instead of folding the ledger. Refused while the ledger has
    /// damage (the snapshot would describe events it cannot read).
    pub fn write_snapshot(&mut self, now_ms: u64) -> Result<(), NodeError> {
        let position = self.log.head() - 1;
        let Some(id) = self.log.id_at(position) else { return Ok(()) };
        self.log.write_checkpoint()?;
        let namespaces: Vec<Namespace> = self.ns.keys().copied().collect();
        let mut namespace_of = vec![u32::MAX; position as usize];
        for (which, index) in self.ns.values().enumerate() {
            for (at, _) in index.by_position() {
                namespace_of[(*at - 1) as usize] = which as u32;
            }
        }
        debug_assert!(
            namespace_of.iter().all(|w| *w != u32::MAX),
            "a position outside every index"
        );
        let mut origins: Vec<(u64, u64)> = match self.config.role {
            Role::Clinic => self.own.iter().map(|(seq, at)| (*at, *seq)).collect(),
            Role::Hub => self
                .origin_seqs
                .iter()
                .filter_map(|((_, seq), id)| Some((self.log.position_of(id)?, *seq)))
                .collect(),
        };
        origins.sort_unstable();
        let snapshot = NodeSnapshot {
            role: self.config.role,
            position,
            id,
            clock: self.clock.last(),
            namespaces,
            namespace_of,
            origins,
            projection: self.projection.encode_snapshot(position),
        };
        self.log
            .directory_mut()
            .write_atomic(NODE_SNAPSHOT_FILE, &snapshot.encode())
            .map_err(|e| NodeError::Log(LogError::Storage { durable: 0, source: e }))?;
        self.snapshot_taken = (self.log.len(), Some(now_ms));
        Ok(())
    }

    /// Writes the node snapshot if events arrived since it was last written or loaded and the
    /// ledger is whole (a damaged ledger is never snapshotted); returns whether it did.
    pub fn write_snapshot_if_changed(&mut self, now_ms: u64) -> Result<bool, NodeError> {
        if self.log.len() == self.snapshot_taken.0 || !self.log.recovery().damaged.is_empty() {
            return Ok(false);
        }
        self.write_snapshot(now_ms)?;
        Ok(true)
    }

    /// Writes the node snapshot when it is due: [`SNAPSHOT_EVERY_EVENTS`] events (and a tenth
    /// of the ledger) since the last one, or any new event after [`SNAPSHOT_EVERY_MS`].
    /// Failures are logged; the ledger itself is unaffected.
    pub fn snapshot_if_due(&mut self, now_ms: u64) -> bool {
        let (held, at) = self.snapshot_taken;
        let since = self.log.len().saturating_sub(held);
        let by_count = since >= SNAPSHOT_EVERY_EVENTS.max(self.log.len() / 10);
        // The timer starts at the first tick that sees new events.
        if since > 0 && at.is_none() {
            self.snapshot_taken.1 = Some(now_ms);
        }
        let by_time =
            since > 0 && at.is_some_and(|at| now_ms.saturating_sub(at) >= SNAPSHOT_EVERY_MS);
        if !(by_count || by_time) || !self.log.recovery().damaged.is_empty() {
            return false;
        }
        match self.write_snapshot(now_ms) {
            Ok(()) => true,
            Err(e) => {
                self.log(Level::Warn, format!("could not write the node snapshot: {e}"));
                self.snapshot_taken = (self.log.len(), Some(now_ms));
                false
            }
        }
    }

    pub(super) fn index(&mut self, position: u64, event: &SignedEvent) {
        let e = event.event();
        if e.hlc > self.clock.last() {
            self.clock = HlcClock::resume(e.hlc);
        }
        self.ns.entry(e.namespace).or_default().add(position, e.hlc, event.id());
        if let Namespace::Clinic(clinic) = e.namespace {
            if clinic == self.signer.node_id() && e.origin == clinic {
                self.own.insert(e.origin_seq, position);
            }
            let seq = self.clinic_seq.entry(clinic).or_default();
            if e.origin == clinic {
                *seq = (*seq).max(e.origin_seq);
                // Only a hub checks clinics' numbers (a clinic's own are in `own`).
                if self.config.role == Role::Hub {
                    self.origin_seqs.entry((clinic, e.origin_seq)).or_insert(event.id());
                }
            }
        }
        self.projection.apply(event);
        self.apply_erasure(event);
    }

    pub(super) fn load_receipts(&mut self) {
        let bytes = match self.log.directory_mut().read_whole(RECEIPTS_FILE) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(e) => {
                self.log(Level::Warn, format!("receipts unreadable, syncing from scratch: {e}"));
                return;
            }
        };
        match decode_receipt_file(&bytes) {
            Ok((receipt, namespaces, kept)) => {
                // A restarted clinic that cannot reach its hub says when it last synced (and
                // what the hub had acknowledged), not "never". A version-1 file has no sync
                // time: its complete receipt's signing time stands in.
                match kept {
                    Some(KeptState { last_sync_ms, hub_acked }) => {
                        self.last_sync_ms = (last_sync_ms > 0).then_some(last_sync_ms);
                        self.hub_acked = hub_acked;
                    }
                    None if receipt.complete => self.last_sync_ms = Some(receipt.issued_ms),
                    None => {}
                }
                self.receipt = Some((receipt, namespaces));
            }
            Err(e) => self.log(Level::Warn, format!("receipt file invalid, ignored: {e}")),
        }
    }

    /// Writes the receipts file if receipts changed since it was last written.
    pub fn persist_receipts(&mut self) -> Result<(), NodeError> {
        if !self.receipts_dirty {
            return Ok(());
        }
        let Some((receipt, namespaces)) = &self.receipt else { return Ok(()) };
        let mut out = RECEIPTS_MAGIC.to_vec();
        out.extend_from_slice(&receipt.hub.0);
        out.extend_from_slice(&receipt.clinic.0);
        receipt.encode(&mut out);
        out.extend_from_slice(&self.last_sync_ms.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.hub_acked.to_le_bytes());
        // Sorted and de-duplicated, as the scope digest reads them (SPEC.md).
        let sorted = shikaku_protocol::wire::scope_order(namespaces);
        out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
        for ns in &sorted {
            shikaku_protocol::wire::put_namespace(&mut out, ns);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        self.log
            .directory_mut()
            .write_atomic(RECEIPTS_FILE, &out)
            .map_err(|e| NodeError::Log(LogError::Storage { durable: 0, source: e }))?;
        self.receipts_dirty = false;
        Ok(())
    }

    /// Stores verified events durably and indexes the new ones; returns their positions.
    pub(super) fn store(
        &mut self,
        now_ms: u64,
        events: &[SignedEvent],
    ) -> Result<Vec<u64>, NodeError> {
        #[cfg(feature = "planted-bugs")]
        let planted: Vec<SignedEvent>;
        #[cfg(feature = "planted-bugs")]
        let events = if self.config.planted == Some(PlantedBug::MergeDropsConcurrent) {
            let second = |ns: Namespace, hlc: u64| (ns, (hlc >> 16) / 1000);
            let mut held: BTreeSet<(Namespace, u64)> = self
                .ns
                .iter()
                .flat_map(|(ns, ix)| {
                    ix.by_position().iter().map(move |(_, item)| second(*ns, item.timestamp))
                })
                .collect();
            planted = events
                .iter()
                .filter(|e| {
                    self.log.position_of(&e.id()).is_some()
                        || held.insert(second(e.event().namespace, e.event().hlc.0))
                })
                .cloned()
                .collect();
            &planted[..]
        } else {
            events
        };
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for e in events {
            // Clock skew beyond the drift limit was refused by `prepare`; remember the rest.
            let _ = self.clock.observe(e.event().hlc, now_ms);
        }
        let outcome = self.log.append(events)?;
        let head_before = self.log.head() - outcome.new as u64;
        let mut new_positions = Vec::with_capacity(outcome.new);
        let mut touched: BTreeSet<Namespace> = BTreeSet::new();
        for (event, position) in events.iter().zip(&outcome.positions) {
            // New events get increasing positions in input order; a duplicate within the batch
            // repeats an earlier one.
            if *position >= head_before && new_positions.last().is_none_or(|last| position > last) {
                new_positions.push(*position);
                touched.insert(event.event().namespace);
                self.index(*position, event);
            }
        }
        debug_assert!(
            new_positions.windows(2).all(|w| w[0] < w[1]),
            "new events are stored at increasing positions"
        );
        debug_assert_eq!(new_positions.len(), outcome.new, "every new event is indexed once");
        self.counters.events_received += new_positions.len() as u64;
        // An erasure order among them destroyed keys: make that durable now.
        self.persist_keys()?;
        // Wake only the sessions that have something new to send: a hub session whose grants
        // cover a new event's namespace, a clinic's session to its hub (its own records).
        let woken: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| match &c.state {
                SessionState::Hub(s) => s.granted.iter().any(|ns| touched.contains(ns)),
                SessionState::Clinic(_) => true,
                SessionState::Handshake | SessionState::Closing => false,
            })
            .map(|(id, _)| *id)
            .collect();
        self.dirty.extend(woken);
        Ok(new_positions)
    }
}

/// What a version-2 receipt file keeps beside the receipt.
struct KeptState {
    last_sync_ms: u64,
    hub_acked: u64,
}

type ReceiptFile = (Receipt, Vec<Namespace>, Option<KeptState>);

fn decode_receipt_file(bytes: &[u8]) -> Result<ReceiptFile, String> {
    let v2 = bytes.get(..8) == Some(&RECEIPTS_MAGIC[..]);
    if bytes.len() < 8 + 32 || !(v2 || &bytes[..8] == RECEIPTS_MAGIC_V1) {
        return Err("not a receipt file".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch".into());
    }
    let mut r = shikaku_protocol::wire::Reader::new(&body[8..]);
    let hub = NodeId(r.array("receipt hub").map_err(|e| e.to_string())?);
    let clinic = NodeId(r.array("receipt clinic").map_err(|e| e.to_string())?);
    let mut receipt = Receipt::decode(&mut r).map_err(|e| e.to_string())?;
    receipt.hub = hub;
    receipt.clinic = clinic;
    let kept = if v2 {
        Some(KeptState {
            last_sync_ms: r.u64("last sync").map_err(|e| e.to_string())?,
            hub_acked: r.u64("acknowledged own sequence").map_err(|e| e.to_string())?,
        })
    } else {
        None
    };
    let n = r.u32("namespace count").map_err(|e| e.to_string())?;
    let mut namespaces = Vec::new();
    for _ in 0..n.min(4096) {
        namespaces.push(r.namespace().map_err(|e| e.to_string())?);
    }
    if shikaku_protocol::wire::scope_digest(&namespaces) != receipt.scope {
        return Err("namespaces do not match the receipt's scope".into());
    }
    Ok((receipt, namespaces, kept))
}
