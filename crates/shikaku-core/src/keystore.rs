//! The key store: members' wrapped data keys, outside the hash-chained log, and the set of
//! erased members — a store that sync replicates and that can forget.
//!
//! Its merge is a CRDT: the erased members are a grow-only set (`crdts::GSet`), and a wrap is
//! held only while its member is not in that set. So merging in any order, any number of
//! times, with any stale replica (a backup, a node that missed the erasure) never brings an
//! erased member's key back. A hub (the insurer's side) also holds the members' data keys
//! themselves ([`KeyStore::data_key`]); they never leave it.
//!
//! Items are numbered by the store that created them (`seq`), which is how a clinic asks its
//! hub for what it has not seen. Byte layout of items and the file: `protocol/KEYSTORE.md`.

use std::collections::BTreeMap;

use crdts::{CmRDT, CvRDT, GSet};

use crate::date::Date;
use crate::event::{CheckQuery, EventBody, SignedEvent, SCHEMA_SEALED};
use crate::member::{CardToken, InsurerNumber, MemberKey};
use crate::seal::{self, DataKey, KdfParams, SealError, Sealed};

/// Magic of the key store file.
pub const FILE_MAGIC: &[u8; 8] = b"SHKKEYS1";
/// Largest encoded item accepted, in bytes.
pub const ITEM_BYTES_MAX: usize = 2048;
/// Most wraps a store accepts (a hostile peer must not exhaust memory): 50M.
pub const WRAPS_MAX: usize = 50_000_000;

/// Why key store bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// Bytes end early, hold an unknown tag or an invalid field.
    #[error("key store {what} is malformed at byte {at}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// Offset.
        at: usize,
    },
    /// The file does not start with the key store magic.
    #[error("not a shikaku key store file (magic {0:?})")]
    Magic(Vec<u8>),
    /// The checksum at the end does not match.
    #[error("key store file checksum does not match (damaged or truncated)")]
    Checksum,
    /// An erasure order is not a valid signed schema-2 `member_erased` event.
    #[error("erasure order refused: {0}")]
    Order(String),
    /// A limit was exceeded.
    #[error("key store limit: {0}")]
    Limit(String),
}

/// How a wrap is opened: with the card (its tag is the card tag), or with the member key and
/// birth date through Argon2id at the stored parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WrapKind {
    /// Wrapped under `seal::card_wrap_key(token)`.
    Card,
    /// Wrapped under the member-key secret of `seal::key_secrets` with these parameters.
    MemberKey(KdfParams),
}

/// One wrapped data key, found by its lookup tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Wrap {
    /// Lookup tag: a card tag, or a member-key tag.
    pub tag: [u8; 32],
    /// The member reference whose data key this is.
    pub member: MemberKey,
    /// How it is opened.
    pub kind: WrapKind,
    /// The data key, wrapped.
    pub wrapped: Sealed,
}

/// One replicated item of the key store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A wrapped data key.
    Wrap(Wrap),
    /// An insurer-signed erasure order: the wire form (`u16 schema ‖ canonical ‖ signature`)
    /// of a schema-2 `member_erased` event.
    Erasure(Vec<u8>),
}

/// What [`KeyStore::merge_items`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Wraps added.
    pub wraps_added: u64,
    /// Wraps refused because their member is erased.
    pub wraps_of_erased: u64,
    /// Members newly erased.
    pub erased: u64,
}

/// The key store. See the module documentation.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    /// Random identity of this store, so a replica notices when its source was replaced.
    id: [u8; 16],
    /// Last item number given out here.
    seq: u64,
    /// Wraps by tag, with the number they were stored under here.
    wraps: BTreeMap<[u8; 32], Vec<(u64, Wrap)>>,
    /// Number of wraps.
    wraps_len: usize,
    /// The erased members (grow-only).
    erased: GSet<MemberKey>,
    /// The orders behind them, with their numbers here.
    orders: BTreeMap<MemberKey, (u64, Vec<u8>)>,
    /// Member-key tags of erased members (from their orders) → member.
    erased_tags: BTreeMap<[u8; 32], MemberKey>,
    /// Argon2id parameters in use per insurer (a lookup tries each; usually one).
    kdf: BTreeMap<InsurerNumber, std::collections::BTreeSet<KdfParams>>,
    /// Data keys (insurer side only).
    data_keys: BTreeMap<MemberKey, DataKey>,
    /// Upstream position: the source store's id and the last of its items received.
    upstream: ([u8; 16], u64),
}

impl KeyStore {
    /// An empty store with the given random identity.
    pub fn new(id: [u8; 16]) -> KeyStore {
        KeyStore { id, ..KeyStore::default() }
    }

    /// This store's identity.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The last item number given out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Where this replica stands with its source: (source id, last item received).
    pub fn upstream(&self) -> ([u8; 16], u64) {
        self.upstream
    }

    /// Records how far this replica has received its source's items.
    pub fn set_upstream(&mut self, source: [u8; 16], last: u64) {
        self.upstream = (source, last);
    }

    /// Whether this store holds anything of sealed data (wraps or erasures): a clinic then
    /// names cards by tag.
    pub fn is_sealing(&self) -> bool {
        self.wraps_len > 0 || !self.orders.is_empty()
    }

    /// Number of wraps held.
    pub fn wraps_len(&self) -> usize {
        self.wraps_len
    }

    /// Number of data keys held (insurer side).
    pub fn data_keys_len(&self) -> usize {
        self.data_keys.len()
    }

    /// Whether a member has been erased.
    pub fn is_erased(&self, member: &MemberKey) -> bool {
        self.erased.contains(member)
    }

    /// The erased members.
    pub fn erased(&self) -> Vec<MemberKey> {
        self.erased.read().into_iter().collect()
    }

    /// The erasure orders held (wire forms), for sending to the source.
    pub fn orders(&self) -> Vec<Vec<u8>> {
        self.orders.values().map(|(_, order)| order.clone()).collect()
    }

    /// Wraps under a lookup tag.
    pub fn wraps_for(&self, tag: &[u8; 32]) -> Vec<&Wrap> {
        self.wraps.get(tag).map(|list| list.iter().map(|(_, w)| w).collect()).unwrap_or_default()
    }

    fn all_wraps(&self) -> impl Iterator<Item = &(u64, Wrap)> {
        self.wraps.values().flatten()
    }

    /// The erased member a member-key tag belonged to.
    pub fn erased_by_tag(&self, tag: &[u8; 32]) -> Option<&MemberKey> {
        self.erased_tags.get(tag)
    }

    /// The Argon2id parameters member-key wraps of this insurer use.
    pub fn kdf_params(&self, insurer: InsurerNumber) -> Vec<KdfParams> {
        self.kdf.get(&insurer).map(|set| set.iter().copied().collect()).unwrap_or_default()
    }

    /// Every lookup tag of a member's wraps, member-key tags first (insurer side: for an
    /// erasure order).
    pub fn key_tags_of(&self, member: &MemberKey) -> Vec<[u8; 32]> {
        self.all_wraps()
            .filter(|(_, w)| w.member == *member && matches!(w.kind, WrapKind::MemberKey(_)))
            .map(|(_, w)| w.tag)
            .collect()
    }

    fn note_order(&mut self, order: &SignedEvent) {
        if let EventBody::MemberErased { member, key_tags, .. } = &order.event().body {
            for tag in key_tags {
                self.erased_tags.insert(*tag, member.clone());
            }
        }
    }

    fn insert_wrap(&mut self, seq: u64, wrap: Wrap) {
        if let WrapKind::MemberKey(params) = wrap.kind {
            self.kdf.entry(wrap.member.insurer).or_default().insert(params);
        }
        self.wraps.entry(wrap.tag).or_default().push((seq, wrap));
        self.wraps_len += 1;
    }

    /// Every data key held (insurer side).
    pub fn data_keys(&self) -> impl Iterator<Item = (&MemberKey, &DataKey)> {
        self.data_keys.iter()
    }

    /// A member's data key (insurer side).
    pub fn data_key(&self, member: &MemberKey) -> Option<&DataKey> {
        self.data_keys.get(member)
    }

    /// Stores a member's data key (insurer side). Refused for an erased member.
    pub fn put_data_key(&mut self, member: MemberKey, key: DataKey) -> bool {
        if self.is_erased(&member) {
            return false;
        }
        self.data_keys.insert(member, key);
        true
    }

    /// Adds a wrap made here (numbered), unless its member is erased or it is held.
    pub fn put_wrap(&mut self, wrap: Wrap) -> bool {
        if self.is_erased(&wrap.member) {
            return false;
        }
        let held = self.wraps_for(&wrap.tag).iter().any(|w| w.member == wrap.member);
        if held {
            return false;
        }
        self.seq += 1;
        self.insert_wrap(self.seq, wrap);
        true
    }

    /// Erases a member on a verified order: the member joins the grow-only set, and its data
    /// key and every wrap are destroyed. Returns whether the member was newly erased.
    pub fn erase(&mut self, order: &SignedEvent) -> Result<bool, KeyStoreError> {
        let member = erased_member(order)?;
        let wire = event_wire(order);
        self.note_order(order);
        let new = !self.erased.contains(&member);
        // The GSet is the authority: apply the op (its element), then drop what it covers.
        self.erased.apply(member.clone());
        if !self.orders.contains_key(&member) {
            self.seq += 1;
            self.orders.insert(member.clone(), (self.seq, wire));
        }
        self.forget_erased();
        Ok(new)
    }

    /// Merges another replica's erased set (the CvRDT merge) and forgets what it covers.
    pub fn merge_erased(&mut self, other: GSet<MemberKey>) {
        self.erased.merge(other);
        self.forget_erased();
    }

    fn forget_erased(&mut self) {
        let erased = &self.erased;
        let mut count = 0;
        self.wraps.retain(|_, list| {
            list.retain(|(_, w)| !erased.contains(&w.member));
            count += list.len();
            !list.is_empty()
        });
        self.wraps_len = count;
        self.data_keys.retain(|member, _| !erased.contains(member));
    }

    /// Items numbered after `since` whose member's insurer passes `holds`, at most `max`,
    /// in number order; and the number of the last one returned (or `since`).
    pub fn items_since(
        &self,
        since: u64,
        max: usize,
        holds: impl Fn(InsurerNumber) -> bool,
    ) -> (Vec<Item>, u64) {
        let mut numbered: Vec<(u64, Item)> = self
            .all_wraps()
            .filter(|(seq, w)| *seq > since && holds(w.member.insurer))
            .map(|(seq, w)| (*seq, Item::Wrap(w.clone())))
            .chain(
                self.orders
                    .iter()
                    .filter(|(m, (seq, _))| *seq > since && holds(m.insurer))
                    .map(|(_, (seq, order))| (*seq, Item::Erasure(order.clone()))),
            )
            .collect();
        numbered.sort_by_key(|(seq, _)| *seq);
        numbered.truncate(max);
        let last = numbered.last().map_or(since, |(seq, _)| *seq);
        (numbered.into_iter().map(|(_, item)| item).collect(), last)
    }

    /// Merges items received from a replica. Erasure orders are verified by `verify` (which
    /// decodes and checks the signed event and its author) before the erased set grows;
    /// wraps of erased members are refused, so a stale source cannot resurrect a key.
    pub fn merge_items(
        &mut self,
        items: Vec<Item>,
        verify: impl Fn(&[u8]) -> Result<SignedEvent, KeyStoreError>,
    ) -> Result<MergeOutcome, KeyStoreError> {
        let mut outcome = MergeOutcome::default();
        // Erasures first, so a wrap and its member's erasure in one batch end erased.
        let mut received: GSet<MemberKey> = GSet::new();
        for item in &items {
            if let Item::Erasure(wire) = item {
                let order = verify(wire)?;
                let member = erased_member(&order)?;
                self.note_order(&order);
                if !self.orders.contains_key(&member) {
                    self.seq += 1;
                    self.orders.insert(member.clone(), (self.seq, wire.clone()));
                }
                if !self.erased.contains(&member) {
                    outcome.erased += 1;
                }
                received.insert(member);
            }
        }
        self.merge_erased(received);
        for item in items {
            if let Item::Wrap(wrap) = item {
                if self.is_erased(&wrap.member) {
                    outcome.wraps_of_erased += 1;
                } else if self.wraps_len >= WRAPS_MAX {
                    return Err(KeyStoreError::Limit(format!("more than {WRAPS_MAX} wraps")));
                } else if self.put_wrap(wrap) {
                    outcome.wraps_added += 1;
                }
            }
        }
        Ok(outcome)
    }

    /// The whole store as a file (KEYSTORE.md): magic, identity, numbers, upstream, items,
    /// data keys, and a blake3 checksum.
    pub fn encode_file(&self) -> Vec<u8> {
        let mut out = FILE_MAGIC.to_vec();
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.upstream.0);
        out.extend_from_slice(&self.upstream.1.to_le_bytes());
        let mut items: Vec<(u64, Item)> = self
            .all_wraps()
            .map(|(seq, w)| (*seq, Item::Wrap(w.clone())))
            .chain(self.orders.values().map(|(seq, o)| (*seq, Item::Erasure(o.clone()))))
            .collect();
        items.sort_by_key(|(seq, _)| *seq);
        out.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for (seq, item) in &items {
            out.extend_from_slice(&seq.to_le_bytes());
            let bytes = encode_item(item);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(&(self.data_keys.len() as u64).to_le_bytes());
        for (member, key) in &self.data_keys {
            put_key(&mut out, member);
            out.extend_from_slice(&key.0);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(&sum.as_bytes()[..16]);
        out
    }

    /// Reads a store file. Erasure orders were verified before they were stored; their
    /// members are re-derived from the stored events.
    pub fn decode_file(bytes: &[u8]) -> Result<KeyStore, KeyStoreError> {
        if bytes.len() < 8 || &bytes[..8] != FILE_MAGIC {
            return Err(KeyStoreError::Magic(bytes[..bytes.len().min(8)].to_vec()));
        }
        if bytes.len() < 8 + 16 + 8 + 16 + 8 + 8 + 8 + 16 {
            return Err(KeyStoreError::Malformed { what: "file header", at: bytes.len() });
        }
        let (body, sum) = bytes.split_at(bytes.len() - 16);
        if blake3::hash(body).as_bytes()[..16] != *sum {
            return Err(KeyStoreError::Checksum);
        }
        let mut r = ByteReader { bytes: body, at: 8 };
        let mut store = KeyStore::new(r.array("store id")?);
        let seq = r.u64("sequence")?;
        store.upstream = (r.array("upstream id")?, r.u64("upstream position")?);
        let n = r.u64("item count")?;
        let mut last = 0;
        for _ in 0..n {
            let item_seq = r.u64("item number")?;
            if item_seq <= last || item_seq > seq {
                return Err(KeyStoreError::Malformed { what: "item number", at: r.at });
            }
            last = item_seq;
            let len = r.u32("item length")? as usize;
            let item = decode_item(r.take(len, "item")?)?;
            match item {
                Item::Wrap(wrap) => {
                    if store.wraps_len >= WRAPS_MAX {
                        return Err(KeyStoreError::Limit(format!("more than {WRAPS_MAX} wraps")));
                    }
                    store.insert_wrap(item_seq, wrap);
                }
                Item::Erasure(wire) => {
                    let order = stored_order(&wire)?;
                    store.note_order(&order);
                    let member = erased_member(&order)?;
                    store.erased.apply(member.clone());
                    store.orders.insert(member, (item_seq, wire));
                }
            }
        }
        store.seq = seq;
        let keys = r.u64("data key count")?;
        for _ in 0..keys {
            let member = r.key()?;
            let key = DataKey(r.array("data key")?);
            store.data_keys.insert(member, key);
        }
        if r.at != body.len() {
            return Err(KeyStoreError::Malformed { what: "trailing bytes", at: r.at });
        }
        store.forget_erased();
        Ok(store)
    }
}

/// What a patient presents at reception: the card, or the member key and birth date.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// The card's token.
    Card(CardToken),
    /// The member key (old paper card, eligibility certificate) and the birth date.
    Key {
        /// Member key.
        key: MemberKey,
        /// Birth date.
        birth: Date,
    },
    /// A member key without a birth date: answers only where the insurer is not sealed here.
    KeyWithoutBirth(MemberKey),
    /// [`Presented::Key`] with the member-key secrets already derived for these parameters
    /// (the runtime runs Argon2id on a blocking thread, not on the node's); parameters the
    /// store uses that are missing here are derived during the lookup.
    KeyDerived {
        /// Member key.
        key: MemberKey,
        /// Birth date.
        birth: Date,
        /// Secrets per parameter set.
        secrets: Vec<(KdfParams, seal::KeySecrets)>,
    },
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never member data in debug output.
        match self {
            Presented::Card(_) => f.write_str("Presented::Card(…)"),
            Presented::Key { key, .. }
            | Presented::KeyDerived { key, .. }
            | Presented::KeyWithoutBirth(key) => write!(f, "Presented::Key({}…)", key.insurer),
        }
    }
}

/// What the key store found for something presented.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The pseudonymous query to ask the projection and to record.
    pub query: Option<CheckQuery>,
    /// Data keys opened, per member reference.
    pub keys: Vec<(MemberKey, DataKey)>,
    /// Members found whose data is erased.
    pub erased: Vec<MemberKey>,
}

impl KeyStore {
    /// The Argon2id parameter sets a member-key lookup of `insurer` derives its tag with: those
    /// its wraps here use; for an insurer not held by a sealing store (a walk-in, answered
    /// "unknown"), one set this store uses, so the check is recorded by a tag and never by the
    /// key itself; none for a plaintext store.
    pub fn key_params(&self, insurer: InsurerNumber) -> Vec<KdfParams> {
        let mut params = self.kdf_params(insurer);
        if params.is_empty() && self.is_sealing() {
            params.extend(self.kdf.values().flatten().next().copied());
            if params.is_empty() {
                params.push(KdfParams::RECEPTION);
            }
        }
        params
    }

    /// Looks up what the patient presented: the card tag, or the member-key tag computed with
    /// each Argon2id parameter set this insurer uses (one, normally); then unwraps the data
    /// keys found. A store holding nothing of the insurer gives no query (not sealed here).
    pub fn lookup(&self, presented: &Presented) -> Result<Lookup, SealError> {
        let mut out = Lookup::default();
        match presented {
            Presented::Card(token) => {
                let tag = seal::card_tag(token);
                let wrap_key = seal::card_wrap_key(token);
                for wrap in self.wraps_for(&tag.0) {
                    if let Ok(key) =
                        seal::unwrap_data_key(&wrap_key, &tag.0, &wrap.member, &wrap.wrapped)
                    {
                        out.keys.push((wrap.member.clone(), key));
                    }
                }
                if self.is_sealing() {
                    out.query = Some(CheckQuery::Card(tag));
                }
            }
            Presented::KeyWithoutBirth(key) => {
                // A sealing node never records a typed key in the clear, even of an insurer it
                // does not hold: without the birth date there is no tag to record it by.
                if !self.kdf_params(key.insurer).is_empty() || self.is_sealing() {
                    return Err(SealError::BirthDateRequired(key.insurer));
                }
            }
            Presented::Key { key, birth } | Presented::KeyDerived { key, birth, .. } => {
                let derived = match presented {
                    Presented::KeyDerived { secrets, .. } => secrets.as_slice(),
                    _ => &[],
                };
                for params in self.key_params(key.insurer) {
                    let secrets = match derived.iter().find(|(p, _)| *p == params) {
                        Some((_, secrets)) => secrets.clone(),
                        None => seal::key_secrets(key, *birth, params)?,
                    };
                    for wrap in self.wraps_for(&secrets.tag) {
                        if let Ok(data_key) = seal::unwrap_data_key(
                            &secrets.wrap,
                            &secrets.tag,
                            &wrap.member,
                            &wrap.wrapped,
                        ) {
                            out.query.get_or_insert(CheckQuery::Member(wrap.member.clone()));
                            out.keys.push((wrap.member.clone(), data_key));
                        }
                    }
                    if let Some(member) = self.erased_by_tag(&secrets.tag) {
                        out.query.get_or_insert(CheckQuery::Member(member.clone()));
                        out.erased.push(member.clone());
                    }
                    out.query.get_or_insert(CheckQuery::Member(seal::unmatched_ref(
                        key.insurer,
                        &secrets.tag,
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// The member an erasure order erases: it must be a schema-2 `member_erased` event.
pub fn erased_member(order: &SignedEvent) -> Result<MemberKey, KeyStoreError> {
    if order.schema_version() != SCHEMA_SEALED {
        return Err(KeyStoreError::Order("not a schema-2 event".into()));
    }
    match &order.event().body {
        EventBody::MemberErased { member, .. } => Ok(member.clone()),
        other => {
            Err(KeyStoreError::Order(format!("a {} event is no erasure order", other.type_name())))
        }
    }
}

fn event_wire(event: &SignedEvent) -> Vec<u8> {
    let mut out = event.schema_version().to_le_bytes().to_vec();
    out.extend_from_slice(event.canonical_bytes());
    out.extend_from_slice(&event.signature().0);
    out
}

fn stored_order(wire: &[u8]) -> Result<SignedEvent, KeyStoreError> {
    if wire.len() < 2 + 64 {
        return Err(KeyStoreError::Order("too short".into()));
    }
    let schema = u16::from_le_bytes([wire[0], wire[1]]);
    let (canonical, signature) = wire[2..].split_at(wire.len() - 2 - 64);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(signature);
    let id = crate::event::event_id(schema, canonical);
    SignedEvent::decode_stored(schema, canonical, crate::event::Signature(sig), id)
        .map_err(|e| KeyStoreError::Order(e.to_string()))
}

fn put_key(out: &mut Vec<u8>, key: &MemberKey) {
    let text = key.to_string();
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// Encodes one item (KEYSTORE.md, "Items").
pub fn encode_item(item: &Item) -> Vec<u8> {
    let mut out = Vec::new();
    match item {
        Item::Wrap(wrap) => {
            out.push(1);
            out.extend_from_slice(&wrap.tag);
            put_key(&mut out, &wrap.member);
            match wrap.kind {
                WrapKind::Card => out.push(0),
                WrapKind::MemberKey(params) => {
                    out.push(1);
                    out.extend_from_slice(&params.m_kib.to_le_bytes());
                    out.extend_from_slice(&params.t.to_le_bytes());
                    out.extend_from_slice(&params.p.to_le_bytes());
                }
            }
            out.extend_from_slice(&wrap.wrapped.nonce);
            out.push(wrap.wrapped.ciphertext.len() as u8);
            out.extend_from_slice(&wrap.wrapped.ciphertext);
        }
        Item::Erasure(wire) => {
            out.push(2);
            out.extend_from_slice(&(wire.len() as u32).to_le_bytes());
            out.extend_from_slice(wire);
        }
    }
    out
}

/// Decodes one item; never panics.
pub fn decode_item(bytes: &[u8]) -> Result<Item, KeyStoreError> {
    if bytes.len() > ITEM_BYTES_MAX {
        return Err(KeyStoreError::Limit(format!("item of {} bytes", bytes.len())));
    }
    let mut r = ByteReader { bytes, at: 0 };
    let item = match r.u8("item type")? {
        1 => {
            let tag = r.array("tag")?;
            let member = r.key()?;
            if !seal::is_member_ref(&member) {
                return Err(KeyStoreError::Malformed { what: "member reference", at: r.at });
            }
            let kind = match r.u8("wrap kind")? {
                0 => WrapKind::Card,
                1 => {
                    let params = KdfParams {
                        m_kib: r.u32("memory")?,
                        t: r.u32("iterations")?,
                        p: r.u32("lanes")?,
                    };
                    params.validate().map_err(|_| KeyStoreError::Malformed {
                        what: "kdf parameters",
                        at: r.at,
                    })?;
                    WrapKind::MemberKey(params)
                }
                _ => return Err(KeyStoreError::Malformed { what: "wrap kind", at: r.at }),
            };
            let nonce = r.array("nonce")?;
            let len = usize::from(r.u8("wrapped length")?);
            if len != 48 {
                return Err(KeyStoreError::Malformed { what: "wrapped length", at: r.at });
            }
            let ciphertext = r.take(len, "wrapped key")?.to_vec();
            Item::Wrap(Wrap { tag, member, kind, wrapped: Sealed { nonce, ciphertext } })
        }
        2 => {
            let len = r.u32("order length")? as usize;
            Item::Erasure(r.take(len, "erasure order")?.to_vec())
        }
        _ => return Err(KeyStoreError::Malformed { what: "item type", at: 0 }),
    };
    if r.at != bytes.len() {
        return Err(KeyStoreError::Malformed { what: "trailing bytes", at: r.at });
    }
    Ok(item)
}

struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], KeyStoreError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(KeyStoreError::Malformed { what, at: self.at })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], KeyStoreError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, KeyStoreError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, KeyStoreError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, KeyStoreError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn key(&mut self) -> Result<MemberKey, KeyStoreError> {
        let at = self.at;
        let len = usize::from(self.u8("member key length")?);
        let text = std::str::from_utf8(self.take(len, "member key")?)
            .map_err(|_| KeyStoreError::Malformed { what: "member key", at })?;
        text.parse().map_err(|_| KeyStoreError::Malformed { what: "member key", at })
    }
}
