//! The hub's side of a session: the `Hello` (authorization of every subscription), the
//! merged pump from the clinic's cursors, signed receipts, reconciliation and fetches, the
//! clinic's own events (checked before they are stored), and the insurer import path.

use super::*;

impl<D: Directory> Node<D> {
    /// Hub: also serves every insurer whose namespace the ledger already holds.
    pub fn serve_held_insurers(&mut self) {
        for ns in self.ns.keys() {
            if let Namespace::Insurer(insurer) = ns {
                self.config.insurers.insert(*insurer);
            }
        }
    }

    /// Replaces the insurer key registry (e.g. a reloaded `--insurer-keys` file); events
    /// already stored are not re-judged.
    pub fn set_insurer_keys(
        &mut self,
        keys: BTreeMap<InsurerNumber, BTreeSet<shikaku_core::AuthorKey>>,
    ) {
        self.config.insurer_keys = keys;
    }

    /// Hub: serves `insurer` from now on (an import of its roster).
    pub fn serve_insurer(&mut self, insurer: InsurerNumber) {
        self.config.insurers.insert(insurer);
    }

    /// Hub: why `event` may not be imported here, if it may not — it is not an insurer event,
    /// or it is signed by a key not registered for its insurer.
    pub fn import_refusal(&self, event: &SignedEvent) -> Option<String> {
        import_refusal(&self.config.insurer_keys, event)
    }

    /// Hub: lines of an import over the insurer API that were refused (each named in the
    /// reply), counted under `import_line`.
    pub fn note_import_refusals(&mut self, lines: u64) {
        *self.counters.refusals.entry("import_line").or_default() += lines;
    }

    /// Answers a `Hello` that was held (a front-end waiting for the stream), closing the
    /// session if it is refused.
    pub(super) fn answer_hello(&mut self, conn: ConnId, hello: Hello) {
        if let Err((code, reason)) = self.on_hello(conn, hello) {
            self.close(conn, code, reason);
        }
        self.dirty.insert(conn);
    }

    pub(super) fn on_hello(
        &mut self,
        conn: ConnId,
        hello: Hello,
    ) -> Result<(), (ErrorCode, String)> {
        let Hello { version, role, frame_max, cursor, subscriptions, prefetch } = hello;
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let peer = c.peer.clone();
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            return Err((ErrorCode::Handshake, format!("protocol version {version} is not spoken here (this hub speaks {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION})")));
        }
        if role != Role::Clinic || peer.role != Role::Clinic {
            return Err((
                ErrorCode::Handshake,
                format!(
                    "only clinics open sessions with a hub (certificate says {}, Hello says {})",
                    peer.role.name(),
                    role.name()
                ),
            ));
        }
        if frame_max < FRAME_BYTES_FLOOR {
            return Err((
                ErrorCode::Handshake,
                format!("frame limit {frame_max} is below the floor of {FRAME_BYTES_FLOOR}"),
            ));
        }
        let own = Namespace::Clinic(peer.node);
        let mut granted = vec![own];
        let mut cursors = vec![cursor];
        let mut verdicts = Vec::with_capacity(subscriptions.len());
        for s in subscriptions {
            let verdict = match s.namespace {
                ns if granted.contains(&ns) => None,
                Namespace::Clinic(_) => Some(RefusalReason::OtherClinic),
                Namespace::Insurer(insurer) if self.config.insurers.contains(&insurer) => None,
                Namespace::Insurer(_) => Some(RefusalReason::NotServed),
            };
            match verdict {
                None if !granted.contains(&s.namespace) => {
                    granted.push(s.namespace);
                    cursors.push(s.cursor.unwrap_or(cursor));
                }
                None => {}
                Some(reason) => {
                    self.refuse(
                        reason,
                        format!("clinic {} asked to read {}", peer.name, ns_label(&s.namespace)),
                    );
                }
            }
            verdicts.push(verdict);
        }
        // A cursor beyond this hub's log (a ledger restored from another hub, or a hub
        // restored from an older backup) claims events this hub never held: it is treated as
        // unknown — nothing is assumed held, the complete receipt then disagrees and the
        // clinic reconciles. Refused (counted) under its own reason, never trusted.
        let head = self.log.head().saturating_sub(1);
        let mut ahead = false;
        for c in cursors.iter_mut() {
            if *c != CURSOR_UNKNOWN && *c > head {
                *c = CURSOR_UNKNOWN;
                ahead = true;
            }
        }
        if ahead {
            *self.counters.refusals.entry("cursor_ahead_of_log").or_default() += 1;
            self.log(
                Level::Warn,
                format!(
                    "clinic {} sent a cursor beyond this hub's log head {head}: treated as unknown",
                    peer.name
                ),
            );
        }
        let pump = self.start_pump(&granted, &cursors);
        let mut prefetch_positions = VecDeque::new();
        for key in prefetch {
            let Ok(member) = key.parse::<shikaku_core::MemberKey>() else { continue };
            let ns = Namespace::Insurer(member.insurer);
            if !self.config.insurers.contains(&member.insurer) || granted.contains(&ns) {
                continue;
            }
            if let Ok(events) = self.log.read_stream(&format!("member:{member}")) {
                for e in events {
                    if let Some(p) = self.log.position_of(&e.id()) {
                        prefetch_positions.push_back(p);
                    }
                }
            }
        }
        // One session per clinic: a newer one replaces an older (a reconnect after a network
        // change, while the old connection has not timed out yet).
        let older: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| {
                **id != conn && c.peer.node == peer.node && matches!(c.state, SessionState::Hub(_))
            })
            .map(|(id, _)| *id)
            .collect();
        for old in older {
            self.close(
                old,
                ErrorCode::Shutdown,
                format!("clinic {} opened a newer session", peer.name),
            );
        }
        let own_seq = self.clinic_seq.get(&peer.node).copied().unwrap_or(0);
        let welcome = Message::Welcome(Welcome {
            // The clinic's version when older: a version-1 clinic never sees key messages.
            version: version.min(PROTOCOL_VERSION),
            frame_max: self.config.frame_max,
            verdicts,
            own_seq,
        });
        self.log(
            Level::Info,
            format!(
                "connection {conn}: session with clinic {} ({} namespaces)",
                peer.name,
                granted.len()
            ),
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer_frame_max = frame_max.min(FRAME_BYTES_MAX);
            c.queue.push_back(welcome.to_frame());
            let scope = shikaku_protocol::wire::scope_digest(&granted);
            c.state = SessionState::Hub(Box::new(HubSession {
                peer,
                granted,
                scope,
                pump,
                echo_skip: HashSet::new(),
                prefetch: prefetch_positions,
            }));
        }
        Ok(())
    }

    /// A pump over `granted` namespaces, each held by the clinic up to its cursor: it starts
    /// at the lowest cursor (the entries below are accounted for without being walked).
    pub(super) fn start_pump(&self, granted: &[Namespace], cursors: &[u64]) -> Pump {
        let start = cursors.iter().copied().min().unwrap_or(0);
        #[cfg(feature = "planted-bugs")]
        let start = if self.config.planted == Some(PlantedBug::CursorOffByOne)
            && start > 0
            && start != CURSOR_UNKNOWN
        {
            start + 1
        } else {
            start
        };
        let mut next = Vec::with_capacity(granted.len());
        let mut acc = Accumulator::default();
        for ns in granted {
            let (index, prefix) =
                self.ns.get(ns).map(|ix| ix.after_cursor(start)).unwrap_or_default();
            next.push(index);
            acc.merge(&prefix);
        }
        let head = self.log.head().saturating_sub(1);
        let position = if start == CURSOR_UNKNOWN { head } else { start.min(head) };
        Pump {
            next,
            held_up_to: cursors.to_vec(),
            acc,
            position,
            since_receipt: 0,
            receipt_due: true,
        }
    }

    /// The peer's frame limit, after checking that `ns` was granted in `conn`'s hub session.
    pub(super) fn granted(
        &self,
        conn: ConnId,
        ns: &Namespace,
        what: &str,
    ) -> Result<Option<usize>, (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(None) };
        let SessionState::Hub(s) = &c.state else { return Ok(None) };
        if !s.granted.contains(ns) {
            return Err((
                ErrorCode::Unexpected,
                format!("{what} for {}, which was not granted", ns_label(ns)),
            ));
        }
        Ok(Some(c.peer_frame_max as usize))
    }

    /// `Events` frames holding the stored events `ids` of namespace `ns` (others skipped).
    pub(super) fn event_frames(
        &mut self,
        ids: impl IntoIterator<Item = EventId>,
        ns: &Namespace,
        frame_max: usize,
    ) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut batch = EventBatch::new(frame_max, self.config.batch_events);
        for id in ids {
            let Some(event) = self.log.position_of(&id).and_then(|p| self.log.read(p).ok()) else {
                continue;
            };
            if event.event().namespace != *ns {
                continue;
            }
            self.counters.events_sent += 1;
            if !batch.try_push(&event) {
                let full = std::mem::replace(
                    &mut batch,
                    EventBatch::new(frame_max, self.config.batch_events),
                );
                frames.push(full.into_frame());
                batch.try_push(&event);
            }
        }
        if !batch.is_empty() {
            frames.push(batch.into_frame());
        }
        frames
    }

    pub(super) fn on_reconcile(
        &mut self,
        conn: ConnId,
        ns: Namespace,
        message: &[u8],
    ) -> Result<(), (ErrorCode, String)> {
        let Some(frame_max) = self.granted(conn, &ns, "Reconcile")? else { return Ok(()) };
        let items = self.ns.entry(ns).or_default().sorted();
        let reply = Reconciler::new(items, frame_max - 64)
            .and_then(|mut r| r.respond(message))
            .map_err(|e| (ErrorCode::Malformed, format!("reconciliation: {e}")))?;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.push_back(Message::ReconcileReply { namespace: ns, message: reply }.to_frame());
        }
        Ok(())
    }

    pub(super) fn on_fetch(
        &mut self,
        conn: ConnId,
        ns: Namespace,
        ids: &[EventId],
    ) -> Result<(), (ErrorCode, String)> {
        let Some(frame_max) = self.granted(conn, &ns, "Fetch")? else { return Ok(()) };
        let frames = self.event_frames(ids.iter().copied(), &ns, frame_max);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.extend(frames);
            if let SessionState::Hub(s) = &mut c.state {
                s.pump.receipt_due = true;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn sign_receipt(
        &self,
        clinic: NodeId,
        scope: [u8; 16],
        position: u64,
        acc: &Accumulator,
        complete: bool,
        now_ms: u64,
    ) -> Receipt {
        let mut r = Receipt {
            hub: self.signer.node_id(),
            clinic,
            scope,
            position,
            count: acc.count(),
            fingerprint: acc.fingerprint(),
            complete,
            issued_ms: now_ms,
            signature: shikaku_core::Signature([0; 64]),
        };
        r.signature = self.signer.sign_bytes(&r.signed_bytes());
        r
    }

    /// Hub: the next frame the pump owes `conn`, if any — events of the granted namespaces in
    /// log-position order, a receipt every `receipt_every` events, and a complete receipt when
    /// everything held has been walked.
    pub(super) fn pump_hub(&mut self, now_ms: u64, conn: ConnId) -> Option<Vec<u8>> {
        let peer_max = self.conns.get(&conn)?.peer_frame_max as usize;
        let batch_max = self.config.batch_events.clamp(1, EVENTS_PER_FRAME_MAX);
        let receipt_every = self.config.receipt_every.max(1);
        let SessionState::Hub(s) = &mut self.conns.get_mut(&conn)?.state else { return None };
        if !s.prefetch.is_empty() {
            let mut batch = EventBatch::new(peer_max, batch_max);
            while let Some(p) = s.prefetch.front().copied() {
                if let Ok(e) = self.log.read(p) {
                    if !batch.try_push(&e) {
                        break;
                    }
                }
                s.prefetch.pop_front();
            }
            self.counters.events_sent += batch.len() as u64;
            return Some(batch.into_frame());
        }
        let indexes: Vec<&NsIndex> = s
            .granted
            .iter()
            .map(|ns| self.ns.get(ns))
            .map(|ix| ix.unwrap_or(&EMPTY_INDEX))
            .collect();
        let pump = &mut s.pump;
        let mut events = Vec::new();
        let mut bytes = 16usize;
        while events.len() < batch_max && pump.since_receipt < receipt_every {
            // The namespace whose next entry has the lowest position.
            let mut best: Option<(usize, u64)> = None;
            for (k, ix) in indexes.iter().enumerate() {
                if let Some((position, _)) = ix.by_position().get(pump.next[k]) {
                    if best.is_none_or(|(_, p)| *position < p) {
                        best = Some((k, *position));
                    }
                }
            }
            let Some((k, position)) = best else { break };
            let item = indexes[k].by_position()[pump.next[k]].1;
            if position > pump.held_up_to[k] && !s.echo_skip.remove(&position) {
                // A damaged entry is not served; the clinic's fingerprint check notices.
                if let Ok(e) = self.log.read(position) {
                    let wire =
                        event_to_wire(e.schema_version(), e.canonical_bytes(), &e.signature());
                    if bytes + wire.len() + 4 > peer_max && !events.is_empty() {
                        break;
                    }
                    bytes += wire.len() + 4;
                    events.push(wire);
                }
            }
            pump.next[k] += 1;
            pump.acc.add(&item.id);
            pump.position = pump.position.max(position);
            pump.since_receipt += 1;
            pump.receipt_due = true;
        }
        if !events.is_empty() {
            self.counters.events_sent += events.len() as u64;
            return Some(Message::Events { events }.to_frame());
        }
        if pump.receipt_due {
            let complete =
                indexes.iter().enumerate().all(|(k, ix)| pump.next[k] >= ix.by_position().len());
            // A receipt never claims a position this hub does not hold.
            let head = self.log.head().saturating_sub(1);
            let position = if complete { pump.position.max(head) } else { pump.position };
            let position = position.min(head);
            pump.position = position;
            let acc = pump.acc;
            pump.receipt_due = false;
            pump.since_receipt = 0;
            let (clinic, scope) = (s.peer.node, s.scope);
            let receipt = self.sign_receipt(clinic, scope, position, &acc, complete, now_ms);
            self.counters.receipts += 1;
            return Some(Message::Receipt(receipt).to_frame());
        }
        None
    }

    pub(super) fn on_events(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        events: Vec<Result<SignedEvent, (u32, EventError)>>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let peer = c.peer.clone();
        match &c.state {
            SessionState::Hub(_) => self.hub_store_clinic_events(now_ms, conn, &peer, events),
            SessionState::Clinic(s) => {
                let granted = s.granted.clone();
                self.clinic_store_hub_events(now_ms, conn, &granted, events)
            }
            SessionState::Handshake => {
                Err((ErrorCode::Unexpected, "Events before the handshake finished".into()))
            }
            SessionState::Closing => Ok(()),
        }
    }

    pub(super) fn hub_store_clinic_events(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        peer: &PeerIdentity,
        events: Vec<Result<SignedEvent, (u32, EventError)>>,
    ) -> Result<(), (ErrorCode, String)> {
        let own_ns = Namespace::Clinic(peer.node);
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        let mut batch_seqs: HashMap<u64, EventId> = HashMap::new();
        for (i, result) in events.into_iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let verdict = match result {
                Err((_, e)) => Err((
                    RefusalReason::Invalid,
                    format!("event {index} from clinic {}: {e}", peer.name),
                )),
                Ok(event) => {
                    let e = event.event();
                    if e.namespace != own_ns {
                        Err((
                            RefusalReason::NotWritable,
                            format!(
                                "clinic {} tried to write {} (event {})",
                                peer.name,
                                ns_label(&e.namespace),
                                event.id()
                            ),
                        ))
                    } else if e.author.0 != peer.node.0 || e.origin != peer.node {
                        Err((
                            RefusalReason::WrongAuthor,
                            format!(
                                "event {} in clinic {}'s namespace is not signed by it",
                                event.id(),
                                peer.name
                            ),
                        ))
                    } else if let Some(other) = batch_seqs
                        .get(&e.origin_seq)
                        .or_else(|| self.origin_seqs.get(&(peer.node, e.origin_seq)))
                        .filter(|other| **other != event.id())
                    {
                        *self.counters.refusals.entry("origin_seq_reused").or_default() += 1;
                        Err((
                            RefusalReason::Invalid,
                            format!(
                                "origin_seq_reused: origin_seq {} of clinic {} already numbers event {other}, not {}",
                                e.origin_seq,
                                peer.name,
                                event.id()
                            ),
                        ))
                    } else {
                        batch_seqs.insert(e.origin_seq, event.id());
                        Ok(event)
                    }
                }
            };
            match verdict {
                Ok(event) => accepted.push(event),
                Err((reason, detail)) => {
                    self.refuse(reason, detail.clone());
                    refused.push(Refusal { index, reason, detail });
                }
            }
        }
        if self.config.follows_stream {
            // Acknowledged once the shared stream has stored them and this front-end has
            // applied them (`handle_stream_events`).
            self.publish_upload(conn, peer.node, accepted, refused);
            return Ok(());
        }
        let stored = self
            .store(now_ms, &accepted)
            .map_err(|e| (ErrorCode::Internal, format!("storing events: {e}")))?;
        if let Some(c) = self.conns.get_mut(&conn) {
            if let SessionState::Hub(s) = &mut c.state {
                s.echo_skip.extend(stored.iter().copied());
            }
        }
        let own_seq = self.clinic_seq.get(&peer.node).copied().unwrap_or(0);
        let ack = Message::Ack(Ack { own_seq, stored: stored.len() as u32, refused });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.push_back(ack.to_frame());
        }
        Ok(())
    }

    /// Hub: imports events signed by the insurers it serves (a local, trusted path).
    pub fn import(&mut self, now_ms: u64, events: &[SignedEvent]) -> Result<usize, NodeError> {
        if self.config.role != Role::Hub {
            return Err(NodeError::Role("only a hub imports insurer events".into()));
        }
        if self.config.follows_stream {
            return Err(NodeError::Role(
                "a hub front-end stores only what the shared stream delivers: import into the stream (shikaku hub import --store nats://…)".into(),
            ));
        }
        for e in events {
            if let Some(why) = self.wrong_insurer_key(e) {
                return Err(NodeError::Refused(why));
            }
            match e.event().namespace {
                Namespace::Insurer(insurer) if self.config.insurers.contains(&insurer) => {}
                other => {
                    return Err(NodeError::Refused(format!(
                        "event {} is in {}, which this hub does not serve",
                        e.id(),
                        ns_label(&other)
                    )))
                }
            }
        }
        Ok(self.store(now_ms, events)?.len())
    }

    /// Why an insurer event is not signed by a key registered for its insurer, if it is not.
    pub(super) fn wrong_insurer_key(&self, event: &SignedEvent) -> Option<String> {
        wrong_insurer_key(&self.config.insurer_keys, event)
    }
}

/// Why `event` may not be imported under the insurer key registry `keys`, if it may not: it
/// is not an insurer event, or it is signed by a key not registered for its insurer (insurers
/// without an entry are not checked). A hub's import path and `hub import --store` (which
/// publishes into the shared stream without a node) both ask this.
pub fn import_refusal(
    keys: &BTreeMap<InsurerNumber, BTreeSet<shikaku_core::AuthorKey>>,
    event: &SignedEvent,
) -> Option<String> {
    match event.event().namespace {
        Namespace::Insurer(_) => wrong_insurer_key(keys, event),
        other => Some(format!(
            "event {} is in {}: only insurer events are imported",
            event.id(),
            ns_label(&other)
        )),
    }
}

fn wrong_insurer_key(
    keys: &BTreeMap<InsurerNumber, BTreeSet<shikaku_core::AuthorKey>>,
    event: &SignedEvent,
) -> Option<String> {
    let Namespace::Insurer(insurer) = event.event().namespace else { return None };
    let registered = keys.get(&insurer)?;
    (!registered.contains(&event.event().author)).then(|| {
        format!(
            "event {} of insurer {insurer} is signed by key {}, not one registered for that insurer",
            event.id(),
            &shikaku_core::hex::encode(&event.event().author.0)[..16]
        )
    })
}
