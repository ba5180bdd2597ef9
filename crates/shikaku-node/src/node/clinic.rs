//! The clinic's side of the session with its hub: cursors in the `Hello`, the `Welcome`,
//! pushing its own records by origin sequence, storing the hub's events, checking receipts
//! and running Negentropy repair, and the freshness its answers carry.

use super::*;

impl<D: Directory> Node<D> {
    /// Clinic: its own records (checks, declarations) the hub has not acknowledged yet, as of
    /// the last session (all of them before the first).
    pub fn unacked_own(&self) -> u64 {
        self.own.range(self.hub_acked.saturating_add(1)..).count() as u64
    }

    /// Whether a clinic is *online*: it has a session with the hub whose last complete receipt
    /// matched this clinic's set of the session's namespaces, where a difference explained by
    /// this clinic's own records not yet acknowledged keeps the state it had (the receipt that
    /// follows their acknowledgement decides). Live pushes keep such a session current. This
    /// is the `online` mode recorded in checks; see protocol/API.md.
    pub fn in_sync(&self) -> bool {
        self.conns.values().any(|c| matches!(&c.state, SessionState::Clinic(s) if s.in_sync))
    }

    /// The ledger damage this node has not repaired yet: found on open (or proven by durable
    /// evidence) and not yet made good by a session whose complete receipt matched.
    pub fn damage_note(&self) -> Option<DamageNote> {
        if self.damage_repaired {
            return None;
        }
        self.log.recovery().damage_note(shikaku_core::RefetchState::Pending)
    }

    /// The freshness this node can honestly claim at `now_ms`: now while a session is in sync
    /// (live push keeps it current), else when it last was.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        let last = if self.in_sync() { Some(now_ms) } else { self.last_sync_ms };
        let hub_position = self.receipt.as_ref().map(|(r, _)| r.position);
        Freshness { now_ms, last_hub_sync_ms: last, hub_position, damage: self.damage_note() }
    }

    /// The session cursor (the last receipt's position) and the subscriptions with their own
    /// cursors where that one does not apply: 0 for a namespace not covered by the receipt
    /// and holding nothing, [`CURSOR_UNKNOWN`] for one holding events no receipt covers (a
    /// restored or locally imported ledger) — the hub then only sends a receipt for it and
    /// the clinic reconciles instead of receiving everything again.
    pub(super) fn cursors(&self) -> (u64, Vec<Subscription>) {
        let own = Namespace::Clinic(self.signer.node_id());
        let covered: &[Namespace] = self.receipt.as_ref().map_or(&[], |(_, ns)| ns.as_slice());
        let override_for = |ns: &Namespace| {
            if covered.contains(ns) {
                None
            } else if self.ns.get(ns).is_some_and(|ix| !ix.is_empty()) {
                Some(CURSOR_UNKNOWN)
            } else {
                Some(0)
            }
        };
        let session = match (&self.receipt, override_for(&own)) {
            (Some((r, _)), None) => r.position,
            // No receipt for the own namespace: the session cursor is its cursor.
            (_, Some(c)) => c,
            (None, None) => 0,
        };
        let subscriptions = self
            .config
            .insurers
            .iter()
            .map(|i| {
                let namespace = Namespace::Insurer(*i);
                let cursor = match override_for(&namespace) {
                    Some(c) if c == session => None,
                    Some(c) => Some(c),
                    None if self.receipt.as_ref().is_some_and(|(r, _)| r.position == session) => {
                        None
                    }
                    None => self.receipt.as_ref().map(|(r, _)| r.position),
                };
                Subscription { namespace, cursor }
            })
            .collect();
        (session, subscriptions)
    }

    /// The runtime could not reach the hub (the clinic keeps answering from its ledger).
    pub fn note_connect_failure(&mut self, now_ms: u64, why: &str) {
        self.counters.connect_failures += 1;
        // At warn the first time, when the reason changes, and then at most once a minute (a
        // clinic retries every few seconds): a wrong CA or an expired certificate must not
        // hide at debug level, nor flood the log.
        let repeat = self.last_connect_warning.as_ref().is_some_and(|(at, reason)| {
            reason == why && now_ms.saturating_sub(*at) < CONNECT_WARNING_EVERY_MS
        });
        if repeat {
            self.log(Level::Debug, why.to_owned());
        } else {
            self.last_connect_warning = Some((now_ms, why.to_owned()));
            self.log(Level::Warn, format!("cannot sync with the hub: {why}"));
        }
    }

    pub(super) fn on_welcome(
        &mut self,
        conn: ConnId,
        version: u16,
        frame_max: u32,
        verdicts: Vec<Option<RefusalReason>>,
        own_seq: u64,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let peer = c.peer.clone();
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            return Err((
                ErrorCode::Handshake,
                format!("hub speaks protocol version {version}, this clinic {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION}"),
            ));
        }
        if peer.role != Role::Hub {
            return Err((
                ErrorCode::Handshake,
                "Welcome from a peer whose certificate is not a hub's".into(),
            ));
        }
        if frame_max < FRAME_BYTES_FLOOR {
            return Err((
                ErrorCode::Handshake,
                format!("hub frame limit {frame_max} is below the floor of {FRAME_BYTES_FLOOR}"),
            ));
        }
        // What our Hello said, not what the cursors would be now: an event stored while the
        // handshake was under way must not change which namespaces count as "unknown".
        let (cursor, subscriptions) = c.hello.clone().unwrap_or_default();
        let own_ns = Namespace::Clinic(self.signer.node_id());
        let own_cursor = cursor;
        if verdicts.len() != subscriptions.len() {
            return Err((
                ErrorCode::Handshake,
                format!(
                    "Welcome has {} verdicts for {} subscriptions",
                    verdicts.len(),
                    subscriptions.len()
                ),
            ));
        }
        let mut granted = vec![Namespace::Clinic(self.signer.node_id())];
        for (sub, verdict) in subscriptions.iter().zip(&verdicts) {
            match verdict {
                None => granted.push(sub.namespace),
                Some(reason) => self.log(
                    Level::Warn,
                    format!(
                        "hub refused subscription to {}: {}",
                        ns_label(&sub.namespace),
                        reason.label()
                    ),
                ),
            }
        }
        let damaged = !self.log.recovery().damaged.is_empty();
        self.hub_acked = own_seq;
        // The hub has said how far this clinic's records go: numbering continues above both.
        self.seq_floor = 0;
        let mut session = ClinicSession {
            hub: peer.node,
            scope: shikaku_protocol::wire::scope_digest(&granted),
            granted: granted.clone(),
            push_next: own_seq + 1,
            acked: own_seq,
            repairs: BTreeMap::new(),
            in_sync: false,
            rounds: BTreeMap::new(),
            retry_at_ms: None,
            // Negentropy messages go to the hub: bounded by its frame limit (and ours).
            reconcile_bytes_max: (frame_max.min(self.config.frame_max).min(FRAME_BYTES_MAX)
                as usize)
                .saturating_sub(64),
            keys: version >= 2,
            keys_pending: false,
            keys_asked_head: None,
        };
        let mut first = Vec::new();
        let unknown: Vec<Namespace> = std::iter::once((own_ns, own_cursor))
            .chain(subscriptions.iter().map(|s| (s.namespace, s.cursor.unwrap_or(cursor))))
            .filter(|(_, c)| *c == CURSOR_UNKNOWN)
            .map(|(ns, _)| ns)
            .collect();
        for ns in &granted {
            // Unreadable ranges in the ledger: reconcile every namespace now. Events held
            // without a receipt: reconcile those namespaces now rather than after the receipt.
            if damaged || unknown.contains(ns) {
                if let Some(frame) = self.start_repair(&mut session, *ns) {
                    first.push(frame);
                }
            }
        }
        let local_max = self.own.keys().next_back().copied().unwrap_or(0);
        if own_seq > local_max {
            self.log(Level::Warn, format!("the hub holds {own_seq} of this clinic's events, the ledger only {local_max}: restored from a backup? fetching them back"));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer_frame_max = frame_max.min(FRAME_BYTES_MAX);
            c.queue.extend(first);
            c.state = SessionState::Clinic(Box::new(session));
        }
        self.request_keys(conn);
        Ok(())
    }

    pub(super) fn start_repair(
        &mut self,
        session: &mut ClinicSession,
        ns: Namespace,
    ) -> Option<Vec<u8>> {
        let repair = session.repairs.entry(ns).or_default();
        if repair.running || repair.attempts >= self.config.repair_attempts {
            return None;
        }
        repair.attempts += 1;
        repair.running = true;
        *session.rounds.entry(ns).or_default() += 1;
        self.counters.repairs += 1;
        let limit = session.reconcile_bytes_max;
        let items = self.ns.entry(ns).or_default().sorted();
        let message = Reconciler::new(items, limit).and_then(|mut r| r.initiate());
        match message {
            Ok(message) => {
                self.events.push_back(Output::Log {
                    level: Level::Info,
                    message: format!("repair of {} started", ns_label(&ns)),
                });
                Some(Message::Reconcile { namespace: ns, message }.to_frame())
            }
            Err(e) => {
                self.events.push_back(Output::Log {
                    level: Level::Warn,
                    message: format!("repair of {} could not start: {e}", ns_label(&ns)),
                });
                None
            }
        }
    }

    pub(super) fn clinic_session_mut(&mut self, conn: ConnId) -> Option<&mut ClinicSession> {
        match &mut self.conns.get_mut(&conn)?.state {
            SessionState::Clinic(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn clinic_store_hub_events(
        &mut self,
        now_ms: u64,
        _conn: ConnId,
        granted: &[Namespace],
        events: Vec<Result<SignedEvent, (u32, EventError)>>,
    ) -> Result<(), (ErrorCode, String)> {
        let own = self.signer.node_id();
        let mut accepted = Vec::with_capacity(events.len());
        for result in events {
            match result {
                Err((index, e)) => {
                    self.refuse(RefusalReason::Invalid, format!("event {index} from the hub: {e}"))
                }
                Ok(event) => {
                    let ns = event.event().namespace;
                    let prefetched = matches!(ns, Namespace::Insurer(_))
                        && event
                            .event()
                            .body
                            .membership_subject()
                            .is_some_and(|m| self.config.prefetch.contains(m));
                    if !granted.contains(&ns) && !prefetched {
                        self.refuse(
                            RefusalReason::NotWritable,
                            format!(
                                "hub sent event {} of {}, not subscribed",
                                event.id(),
                                ns_label(&ns)
                            ),
                        );
                    } else if let Some(why) = self.wrong_insurer_key(&event) {
                        self.refuse(RefusalReason::WrongAuthor, why);
                    } else if matches!(ns, Namespace::Clinic(c) if c == own)
                        && event.event().author.0 != own.0
                    {
                        self.refuse(
                            RefusalReason::WrongAuthor,
                            format!(
                                "event {} in this clinic's namespace is not signed by it",
                                event.id()
                            ),
                        );
                    } else {
                        accepted.push(event);
                    }
                }
            }
        }
        self.store(now_ms, &accepted)
            .map_err(|e| (ErrorCode::Internal, format!("storing events: {e}")))?;
        Ok(())
    }

    pub(super) fn on_receipt(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        mut r: Receipt,
    ) -> Result<(), (ErrorCode, String)> {
        let own = self.signer.node_id();
        let Some(session) = self.clinic_session_mut(conn) else { return Ok(()) };
        r.hub = session.hub;
        r.clinic = own;
        if r.scope != session.scope {
            return Err((
                ErrorCode::Unexpected,
                "receipt covers other namespaces than this session's".into(),
            ));
        }
        let granted = session.granted.clone();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&r.hub.0)
            .map_err(|_| (ErrorCode::Handshake, "hub node id is not a valid key".to_string()))?;
        let signature = ed25519_dalek::Signature::from_bytes(&r.signature.0);
        if key.verify_strict(&r.signed_bytes(), &signature).is_err() {
            return Err((ErrorCode::Malformed, "receipt signature does not verify".into()));
        }
        self.counters.receipts += 1;
        // The hub signed this moments ago: a local clock far ahead of it would stamp events the
        // hub refuses; follow the hub's time for timestamps instead (and say so).
        let ahead = now_ms.saturating_sub(r.issued_ms);
        if ahead > 60_000 && self.ahead_of_hub_ms == 0 {
            self.log(
                Level::Warn,
                format!(
                    "this clock runs {} s ahead of the hub's; timestamps follow the hub's time",
                    ahead / 1000
                ),
            );
        }
        self.ahead_of_hub_ms = if ahead > 60_000 { ahead } else { 0 };
        self.receipt = Some((r, granted.clone()));
        self.receipts_dirty = true;
        if !r.complete {
            return Ok(());
        }
        let mut local = Accumulator::default();
        for ns in &granted {
            local.merge(&self.namespace_state(ns));
        }
        let matches = local.count() == r.count && local.fingerprint() == r.fingerprint;
        let local_own_max = self.own.keys().next_back().copied().unwrap_or(0);
        let Some(session) = self.clinic_session_mut(conn) else { return Ok(()) };
        if matches {
            session.in_sync = true;
            // New members may have come with the events: their wraps follow.
            self.request_keys(conn);
            let Some(session) = self.clinic_session_mut(conn) else { return Ok(()) };
            for rep in session.repairs.values_mut() {
                rep.attempts = 0;
            }
            // Whatever was damaged on open has come back from the hub: the set is whole.
            self.damage_repaired = true;
            self.last_sync_ms = Some(now_ms);
            self.receipts_dirty = true;
            return Ok(());
        }
        // Our own events still on their way to the hub may explain the difference: wait for the
        // receipt that follows their acknowledgement before reconciling anything (found by the
        // simulator: reconciling every namespace here was pure waste). Nor does this clinic's
        // own upload lag make it any less current in what the hub sends it: a session that was
        // in sync stays so (a check recorded while the previous record was still in flight was
        // otherwise recorded as offline, with staleness 0).
        if session.acked < local_own_max {
            return Ok(());
        }
        session.in_sync = false;
        self.counters.receipt_mismatches += 1;
        self.log(
            Level::Info,
            format!(
                "hub holds {} events of this session's namespaces, this clinic {}: reconciling",
                r.count,
                local.count()
            ),
        );
        let mut session_taken = match self
            .conns
            .get_mut(&conn)
            .map(|c| std::mem::replace(&mut c.state, SessionState::Closing))
        {
            Some(SessionState::Clinic(s)) => s,
            Some(other) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = other;
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        let mut frames = Vec::new();
        for ns in &granted {
            frames.extend(self.start_repair(&mut session_taken, *ns));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = SessionState::Clinic(session_taken);
            c.queue.extend(frames);
        }
        Ok(())
    }

    pub(super) fn on_ack(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        own_seq: u64,
        stored: u32,
        refused: Vec<Refusal>,
    ) {
        let any_refused = !refused.is_empty();
        if own_seq > self.hub_acked {
            self.hub_acked = own_seq;
            // Kept with the receipt: a restart must not count acknowledged records as unsent.
            self.receipts_dirty = true;
        }
        if let Some(s) = self.clinic_session_mut(conn) {
            s.acked = s.acked.max(own_seq);
            if any_refused && s.retry_at_ms.is_none() {
                s.retry_at_ms = Some(now_ms + REFUSED_RETRY_MS);
            }
        }
        for r in refused {
            self.log(
                Level::Warn,
                format!(
                    "hub refused event {} of ours ({}): {}",
                    r.index,
                    r.reason.label(),
                    r.detail
                ),
            );
        }
        self.log(
            Level::Debug,
            format!("hub acknowledged {stored} events, up to own sequence {own_seq}"),
        );
    }

    pub(super) fn on_reconcile_reply(
        &mut self,
        conn: ConnId,
        ns: Namespace,
        message: &[u8],
    ) -> Result<(), (ErrorCode, String)> {
        let own_ns = Namespace::Clinic(self.signer.node_id());
        // The session's Negentropy limit, if a repair of `ns` is running in it.
        let Some(limit) = self
            .clinic_session_mut(conn)
            .filter(|s| s.repairs.get(&ns).is_some_and(|r| r.running))
            .map(|s| s.reconcile_bytes_max)
        else {
            return Err((
                ErrorCode::Unexpected,
                format!("ReconcileReply for {} without a repair running", ns_label(&ns)),
            ));
        };
        let items = self.ns.entry(ns).or_default().sorted();
        let mut have = Vec::new();
        let mut need = Vec::new();
        let next = Reconciler::resume_initiator(items, limit)
            .and_then(|mut r| r.reconcile(message, &mut have, &mut need))
            .map_err(|e| (ErrorCode::Malformed, format!("reconciliation: {e}")))?;
        let mut frames = Vec::new();
        for chunk in need.chunks(FETCH_IDS_MAX) {
            frames.push(
                Message::Fetch {
                    namespace: ns,
                    ids: chunk.iter().map(|id| EventId(*id)).collect(),
                }
                .to_frame(),
            );
        }
        self.counters.repaired_events += need.len() as u64;
        if !have.is_empty() {
            if ns == own_ns {
                let frame_max =
                    self.conns.get(&conn).map_or(FRAME_BYTES_FLOOR, |c| c.peer_frame_max) as usize;
                frames.extend(self.event_frames(
                    have.iter().map(|id| EventId(*id)),
                    &ns,
                    frame_max,
                ));
            } else {
                self.log(
                    Level::Warn,
                    format!(
                        "{}: this clinic holds {} events the hub does not",
                        ns_label(&ns),
                        have.len()
                    ),
                );
            }
        }
        let done = next.is_none();
        let fetching = !need.is_empty();
        if let Some(message) = next {
            frames.push(Message::Reconcile { namespace: ns, message }.to_frame());
        }
        if let Some(s) = self.clinic_session_mut(conn) {
            // Another round trip when the reconciliation goes on, or when it ends by fetching.
            if !done || fetching {
                *s.rounds.entry(ns).or_default() += 1;
            }
            if done {
                if let Some(r) = s.repairs.get_mut(&ns) {
                    r.running = false;
                }
            }
        }
        if done {
            self.log(
                Level::Info,
                format!(
                    "repair of {} reconciled: fetching {} events, sending {}",
                    ns_label(&ns),
                    need.len(),
                    if ns == own_ns { have.len() } else { 0 }
                ),
            );
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.extend(frames);
        }
        Ok(())
    }

    /// Clinic: the next own-event frame owed to the hub.
    pub(super) fn pump_clinic(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        let batch_max = self.config.batch_events.clamp(1, EVENTS_PER_FRAME_MAX);
        let peer_max = self.conns.get(&conn)?.peer_frame_max as usize;
        let s = self.clinic_session_mut(conn)?;
        let from = s.push_next;
        let mut batch = EventBatch::new(peer_max, batch_max);
        let mut next = from;
        for (seq, position) in self.own.range(from..) {
            // An unreadable (damaged) own event is skipped; the hub's copy comes back by repair.
            if let Ok(e) = self.log.read(*position) {
                if !batch.try_push(&e) {
                    break;
                }
            }
            next = seq + 1;
        }
        if let Some(s) = self.clinic_session_mut(conn) {
            s.push_next = next;
        }
        if batch.is_empty() {
            return None;
        }
        self.counters.events_sent += batch.len() as u64;
        Some(batch.into_frame())
    }
}
