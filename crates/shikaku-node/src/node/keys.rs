//! The node's key store (sealed member records, schema 2): loaded from and persisted to
//! `keys.store` beside the log, erasure orders applied as their events are stored, merged
//! from an insurer's export (`import_keys`), and replicated over the session (protocol 2:
//! the clinic's `KeysFrom`, the hub's `Keys`), the erased set merged both ways.

use shikaku_core::keystore::{self, Item, KeyStore, KeyStoreError};

use super::*;

/// The key store file, in the log directory (mode 0600 like every file there).
pub const KEYS_FILE: &str = "keys.store";
/// Items per `Keys` frame.
pub const KEY_ITEMS_PER_FRAME: usize = 4096;

impl<D: Directory> Node<D> {
    /// Reads `keys.store`; a missing file is an empty store. An unreadable one is reported
    /// (log, health) and replaced by an empty store that sync refills, never silently.
    pub(super) fn load_keys(&mut self) {
        let id = {
            let digest = blake3::derive_key("shikaku 2026 key store id", &self.signer.node_id().0);
            let mut id = [0u8; 16];
            id.copy_from_slice(&digest[..16]);
            id
        };
        self.keys = KeyStore::new(id);
        match self.log.directory_mut().read_whole(KEYS_FILE) {
            Ok(None) => {}
            Ok(Some(bytes)) => match KeyStore::decode_file(&bytes) {
                Ok(store) => self.keys = store,
                Err(e) => {
                    self.keys_damage = Some(format!("{KEYS_FILE} unreadable: {e}"));
                    self.log(
                        Level::Warn,
                        format!("{KEYS_FILE} unreadable, sealed records cannot be opened until sync refills it: {e}"),
                    );
                }
            },
            Err(e) => {
                self.keys_damage = Some(format!("{KEYS_FILE} unreadable: {e}"));
                self.log(Level::Warn, format!("{KEYS_FILE} unreadable: {e}"));
            }
        }
    }

    /// Writes the key store if it changed (atomically: the old file or the new, never half).
    pub(super) fn persist_keys(&mut self) -> Result<(), NodeError> {
        if !self.keys_dirty {
            return Ok(());
        }
        let bytes = self.keys.encode_file();
        self.log
            .directory_mut()
            .write_atomic(KEYS_FILE, &bytes)
            .map_err(|e| NodeError::Log(LogError::Storage { durable: 0, source: e }))?;
        self.keys_dirty = false;
        Ok(())
    }

    /// The key store (read-only), for tools and tests.
    pub fn key_store(&self) -> &KeyStore {
        &self.keys
    }

    /// Why the key store could not be read at open, if it could not.
    pub fn key_store_damage(&self) -> Option<&str> {
        self.keys_damage.as_deref()
    }

    /// A stored `member_erased` event destroys the member's keys here.
    pub(super) fn apply_erasure(&mut self, event: &SignedEvent) {
        if !matches!(event.event().body, EventBody::MemberErased { .. }) {
            return;
        }
        match self.keys.erase(event) {
            Ok(new) => {
                self.keys_dirty = true;
                if new {
                    self.counters.members_erased += 1;
                }
            }
            Err(e) => {
                self.log(Level::Warn, format!("erasure order {} not applied: {e}", event.id()))
            }
        }
    }

    /// Hub (insurer side): merges an insurer's key store export — data keys, wraps and erasure
    /// orders — and persists it. Returns (data keys, wraps) added.
    pub fn import_keys(&mut self, export: &KeyStore) -> Result<(u64, u64), NodeError> {
        if self.config.role != Role::Hub {
            return Err(NodeError::Role("insurer key stores are imported at the hub".into()));
        }
        let mut added = (0, 0);
        for (member, key) in export.data_keys() {
            if self.keys.data_key(member).is_none()
                && self.keys.put_data_key(member.clone(), key.clone())
            {
                added.0 += 1;
            }
        }
        let (items, _) = export.items_since(0, usize::MAX, |_| true);
        let keys_registry = self.config.insurer_keys.clone();
        let outcome = self
            .keys
            .merge_items(items, |wire| verify_order(wire, Some(&keys_registry)))
            .map_err(|e| NodeError::Role(format!("key store refused: {e}")))?;
        added.1 = outcome.wraps_added;
        self.keys_dirty = true;
        self.persist_keys()?;
        Ok(added)
    }

    /// Clinic: the `KeysFrom` to send (after `Welcome` at protocol 2, and after receipts).
    pub(super) fn keys_request(&self) -> Vec<u8> {
        let (store, since) = self.keys.upstream();
        Message::KeysFrom { store, since, erasures: self.keys.orders() }.to_frame()
    }

    /// Hub: a clinic asks for key store items; its erasure orders are merged first.
    pub(super) fn on_keys_from(
        &mut self,
        conn: ConnId,
        store: [u8; 16],
        since: u64,
        erasures: Vec<Vec<u8>>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let SessionState::Hub(session) = &c.state else { return Ok(()) };
        let granted: BTreeSet<InsurerNumber> = session
            .granted
            .iter()
            .filter_map(|ns| match ns {
                Namespace::Insurer(insurer) => Some(*insurer),
                Namespace::Clinic(_) => None,
            })
            .collect();
        if !erasures.is_empty() {
            // A clinic may only bring back orders the hub can vouch for: signed by a key
            // registered for the insurer, or already in the hub's own ledger. (A hub without a
            // registry would otherwise let any clinic erase any member.)
            let registry = self.config.insurer_keys.clone();
            let log = &self.log;
            let vouched = |wire: &[u8]| -> Result<SignedEvent, KeyStoreError> {
                let order = verify_order(wire, Some(&registry))?;
                let Namespace::Insurer(insurer) = order.event().namespace else {
                    return Err(KeyStoreError::Order("not an insurer event".into()));
                };
                if registry.contains_key(&insurer) || log.position_of(&order.id()).is_some() {
                    Ok(order)
                } else {
                    Err(KeyStoreError::Order(format!(
                        "insurer {insurer} has no registered key here and the order is not in this hub's ledger"
                    )))
                }
            };
            // Orders it cannot vouch for are refused one by one (counted, logged), never the
            // session: the clinic syncs on.
            let mut items = Vec::new();
            let mut refused = Vec::new();
            for wire in erasures {
                match vouched(&wire) {
                    Ok(_) => items.push(Item::Erasure(wire)),
                    Err(e) => refused.push(e.to_string()),
                }
            }
            for why in refused {
                self.refuse(RefusalReason::Invalid, format!("erasure order from a clinic: {why}"));
            }
            let registry = self.config.insurer_keys.clone();
            match self.keys.merge_items(items, |wire| verify_order(wire, Some(&registry))) {
                Ok(outcome) => {
                    if outcome.erased > 0 {
                        self.counters.members_erased += outcome.erased;
                        self.keys_dirty = true;
                    }
                }
                Err(e) => {
                    return Err((ErrorCode::Malformed, format!("erasure order refused: {e}")))
                }
            }
            if let Err(e) = self.persist_keys() {
                self.log(Level::Warn, format!("could not persist {KEYS_FILE}: {e}"));
            }
        }
        // Another store, or a position beyond ours (the store was rebuilt): from the start.
        let since = if store != self.keys.id() || since > self.keys.seq() { 0 } else { since };
        let (items, last) =
            self.keys.items_since(since, KEY_ITEMS_PER_FRAME, |insurer| granted.contains(&insurer));
        let more = items.len() == KEY_ITEMS_PER_FRAME;
        let items: Vec<Vec<u8>> = items.iter().map(keystore::encode_item).collect();
        self.counters.key_items_sent += items.len() as u64;
        let frame = Message::Keys { store: self.keys.id(), last, more, items }.to_frame();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.push_back(frame);
        }
        Ok(())
    }

    /// Clinic: key store items from the hub.
    pub(super) fn on_keys(
        &mut self,
        conn: ConnId,
        store: [u8; 16],
        last: u64,
        more: bool,
        items: Vec<Vec<u8>>,
    ) -> Result<(), (ErrorCode, String)> {
        let decoded: Result<Vec<Item>, KeyStoreError> =
            items.iter().map(|bytes| keystore::decode_item(bytes)).collect();
        let decoded =
            decoded.map_err(|e| (ErrorCode::Malformed, format!("key item refused: {e}")))?;
        let outcome = self
            .keys
            .merge_items(decoded, |wire| verify_order(wire, None))
            .map_err(|e| (ErrorCode::Malformed, format!("key items refused: {e}")))?;
        self.counters.members_erased += outcome.erased;
        self.counters.key_items_received += outcome.wraps_added;
        self.keys.set_upstream(store, last);
        self.keys_dirty = true;
        if let Err(e) = self.persist_keys() {
            self.log(Level::Warn, format!("could not persist {KEYS_FILE}: {e}"));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if let SessionState::Clinic(s) = &mut c.state {
                s.keys_pending = false;
                if more {
                    s.keys_asked_head = None;
                }
            }
        }
        if more {
            self.request_keys(conn);
        }
        Ok(())
    }

    /// Clinic: asks the hub for key items unless a request is outstanding or the hub speaks
    /// protocol 1.
    pub(super) fn request_keys(&mut self, conn: ConnId) {
        let frame = self.keys_request();
        let head = self.log.head();
        if let Some(c) = self.conns.get_mut(&conn) {
            if let SessionState::Clinic(s) = &mut c.state {
                if s.keys && !s.keys_pending && s.keys_asked_head != Some(head) {
                    s.keys_pending = true;
                    s.keys_asked_head = Some(head);
                    c.queue.push_back(frame);
                    self.dirty.insert(conn);
                }
            }
        }
    }
}

/// Decodes and verifies an erasure order (a signed schema-2 `member_erased` event); with a
/// key registry (the hub's), its author must be registered for the insurer.
pub fn verify_order(
    wire: &[u8],
    registry: Option<&BTreeMap<InsurerNumber, BTreeSet<shikaku_core::AuthorKey>>>,
) -> Result<SignedEvent, KeyStoreError> {
    let (schema, canonical, signature) = shikaku_protocol::wire::event_from_wire(wire)
        .map_err(|e| KeyStoreError::Order(e.to_string()))?;
    let event = SignedEvent::decode(schema, canonical, signature, None, None)
        .map_err(|e| KeyStoreError::Order(e.to_string()))?;
    keystore::erased_member(&event)?;
    if let Some(registry) = registry {
        if let Some(why) = import_refusal(registry, &event) {
            return Err(KeyStoreError::Order(why));
        }
    }
    Ok(event)
}
