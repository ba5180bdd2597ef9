//! The projection: a deterministic, order-independent fold of signed events into the state
//! that answers eligibility checks.
//!
//! **Invariant:** the projection is a function of the *set* of events applied. Every list is
//! kept sorted by the ordering key `(hlc, id)` and de-duplicated by id, every map is keyed by
//! content (member key, card token, event id), and nothing depends on arrival order; so any
//! permutation of an event set, with duplicates, yields the same [`Projection::digest`] and the
//! same answers.
//!
//! The fold stores compact facts (24 bytes each) per member and per card, and resolves voids,
//! supersessions, coverage periods, copay, limit category, consent, card links and
//! self-declarations at query time under a record-time cut-off (`as_of`), which is what makes
//! "eligible on the service date, as known at time T" a first-class query.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashTable;

use crate::answer::{Answer, Conflict, Freshness, Knowledge};
use crate::date::{Date, DateRange};
use crate::event::{
    AnswerCode, CheckQuery, DeclarationOutcome, EndReason, EventBody, EventId, Relationship,
    SignedEvent,
};
use crate::hlc::Hlc;
use crate::member::{CardToken, InsurerNumber, MemberKey};

mod snapshot;

pub use snapshot::SnapshotError;

const NO_MEMBER: u32 = u32::MAX;
/// Longest void-of-void chain followed; longer chains count as voided (they cannot occur
/// honestly, and the bound keeps a hostile input from exhausting the stack).
const VOID_CHAIN_DEPTH_MAX: u32 = 32;

/// A small fixed (unseeded) hasher, so that the projection behaves identically in every
/// process and in the simulator.
#[derive(Debug, Default, Clone, Copy)]
pub struct FixedHasher(u64);

impl Hasher for FixedHasher {
    fn finish(&self) -> u64 {
        // The multiply-rotate rounds leave the low bits (which pick the bucket) depending only
        // on the low bytes of each word; member keys differ in their last digits, so mix the
        // high bits down (murmur3's finaliser) or hash tables degrade into long probe chains.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(tail) ^ (rest.len() as u64) << 59);
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type FixedMap<K, V> = HashMap<K, V, BuildHasherDefault<FixedHasher>>;

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = FixedHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

/// Which insurers' namespaces this node holds. Outside them the projection answers
/// "unknown (not replicated here)", never "no match".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Replication {
    /// Every insurer (the hub, or a local import).
    #[default]
    All,
    /// Only these insurers (a clinic's subscription).
    Insurers(BTreeSet<InsurerNumber>),
}

impl Replication {
    /// Whether events of this insurer are held here.
    pub fn holds(&self, insurer: InsurerNumber) -> bool {
        match self {
            Replication::All => true,
            Replication::Insurers(set) => set.contains(&insurer),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Linked,
    Unlinked,
    Revoked,
}

#[derive(Debug, Clone, Copy)]
enum FactKind {
    Registered { birth: Date, insured: u32 },
    Started { start: Date, copay: u8 },
    Ended { loss: Date, reason: EndReason },
    Copay { effective: Date, copay: u8 },
    Limit { effective: Date, category: [u8; 3] },
    Demographics,
    Link { card: u32, state: LinkState },
    Consent(bool),
}

/// One fact about a member: when it was recorded, which event said it, and what it said.
#[derive(Debug, Clone, Copy)]
struct Fact {
    hlc: Hlc,
    event: u32,
    kind: FactKind,
}

#[derive(Debug)]
struct MemberState {
    key: Box<[u8]>,
    facts: Vec<Fact>,
}

#[derive(Debug, Clone, Copy)]
struct LinkFact {
    hlc: Hlc,
    event: u32,
    member: u32,
    state: LinkState,
}

#[derive(Debug)]
struct CardState {
    token: CardToken,
    links: Vec<LinkFact>,
}

#[derive(Debug, Clone, Copy)]
struct Marker {
    hlc: Hlc,
    event: u32,
    flag: u8,
    date: Date,
}

#[derive(Debug)]
struct CheckInfo {
    hlc: Hlc,
    code: AnswerCode,
}

/// Size of the void-target filter: 2^20 bits (128 KiB), allocated on the first void.
const VOID_FILTER_WORDS: usize = 1 << 14;

fn void_filter_bit(id: &EventId) -> usize {
    (u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) as usize) % (VOID_FILTER_WORDS * 64)
}

/// Room for any valid compact key: 6 header bytes and two fields of at most 20 characters of
/// at most 4 bytes each.
const COMPACT_KEY_INLINE_BYTES: usize = 6 + 2 * 4 * crate::member::MEMBER_FIELD_CHARS_MAX;

/// A member key encoded compactly — insurer (u32 LE), branch, symbol length, symbol, number —
/// on the stack, so looking a member up allocates nothing. (A key too long to be valid spills
/// to the heap rather than failing.)
struct CompactKey {
    inline: [u8; COMPACT_KEY_INLINE_BYTES],
    len: usize,
    spill: Vec<u8>,
}

impl CompactKey {
    fn new(key: &MemberKey) -> CompactKey {
        let insurer = key.insurer.value().to_le_bytes();
        let parts: [&[u8]; 5] = [
            &insurer,
            &[key.branch],
            &[key.symbol.len() as u8],
            key.symbol.as_bytes(),
            key.number.as_bytes(),
        ];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = CompactKey { inline: [0; COMPACT_KEY_INLINE_BYTES], len, spill: Vec::new() };
        if len > COMPACT_KEY_INLINE_BYTES {
            out.spill = parts.concat();
        } else {
            let mut at = 0;
            for part in parts {
                out.inline[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
        }
        out
    }

    fn as_slice(&self) -> &[u8] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

fn decode_compact_key(bytes: &[u8]) -> Option<MemberKey> {
    let insurer = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let branch = *bytes.get(4)?;
    let symbol_len = usize::from(*bytes.get(5)?);
    let symbol = std::str::from_utf8(bytes.get(6..6 + symbol_len)?).ok()?;
    let number = std::str::from_utf8(bytes.get(6 + symbol_len..)?).ok()?;
    // Keys were validated before they were stored; rebuilding them needs no re-validation.
    Some(MemberKey {
        insurer: InsurerNumber::from_validated(insurer),
        symbol: symbol.to_owned(),
        number: number.to_owned(),
        branch,
    })
}

/// A coverage period as resolved at query time.
#[derive(Debug, Clone, Copy)]
struct Period {
    start: Date,
    end: Option<Date>,
    copay: u8,
    start_event: u32,
    end_event: Option<u32>,
    end_reason: Option<EndReason>,
    /// The end is implied by the 75th birthday, not reported by the insurer.
    implied_end: bool,
}

impl Period {
    fn range(&self) -> DateRange {
        DateRange { start: self.start, end: self.end }
    }
}

/// Everything known about one member at a cut-off.
#[derive(Debug, Default)]
struct MemberView {
    exists: bool,
    registered: Option<(Date, u32, u32)>,
    periods: Vec<Period>,
    copays: Vec<(Date, u8, u32)>,
    limits: Vec<(Date, [u8; 3], u32)>,
    /// The latest consent fact: given or withdrawn, its event, its record time.
    consent: Option<(bool, u32, Hlc)>,
    cards: Vec<u32>,
    conflicts: Vec<Conflict>,
}

/// The outcome of evaluating one member on one date.
#[derive(Debug, Default)]
struct Evaluation {
    covered: Option<Period>,
    reference: Option<Period>,
    dependant: bool,
    copay: Option<u8>,
    limit: Option<[u8; 3]>,
    limit_withheld: bool,
    consent_withdrawn: Option<Hlc>,
    end_reason: Option<EndReason>,
    decided: Vec<u32>,
    conflicts: Vec<Conflict>,
}

/// The eligibility projection. See the module documentation for its invariant.
#[derive(Debug, Default)]
pub struct Projection {
    replication: Replication,
    /// Members of insurers outside `replication` whose events were fetched individually
    /// (appointment prefetch): answered from what is held, not "unknown".
    prefetched: BTreeSet<MemberKey>,
    /// A bug the simulator's tests plant on purpose: voids are ignored. Never set otherwise.
    #[cfg(feature = "planted-bugs")]
    planted_ignore_voids: bool,
    ids: Vec<EventId>,
    members: Vec<MemberState>,
    member_table: HashTable<u32>,
    cards: Vec<CardState>,
    card_table: HashTable<u32>,
    voids: FixedMap<EventId, Vec<Marker>>,
    /// A one-hash Bloom filter over void targets: most facts are never voided, and this lets
    /// `is_voided` skip the map lookup for them.
    void_filter: Vec<u64>,
    declarations: BTreeMap<CheckQuery, Vec<Marker>>,
    resolutions: FixedMap<EventId, Vec<Marker>>,
    checks: FixedMap<EventId, CheckInfo>,
    checks_by_decider: FixedMap<EventId, Vec<EventId>>,
}

impl Projection {
    /// An empty projection holding the given insurers.
    pub fn new(replication: Replication) -> Projection {
        Projection { replication, ..Projection::default() }
    }

    /// Which insurers this projection holds.
    pub fn replication(&self) -> &Replication {
        &self.replication
    }

    /// Insurers with at least one member known here (from any event naming one of their
    /// members).
    pub fn insurers_known(&self) -> BTreeSet<InsurerNumber> {
        (0..self.members.len() as u32).filter_map(|m| self.insurer_of(m)).collect()
    }

    /// Treats the insurers known here as the only ones held: a local ledger imported from
    /// some insurers' streams then answers `unknown` for a member of any other insurer (it
    /// never held that insurer, so "no match" would be a claim it cannot make), as a clinic's
    /// subscription does. The fold itself never filters by replication, so this changes
    /// only how absences are answered.
    pub fn hold_only_known_insurers(&mut self) {
        self.replication = Replication::Insurers(self.insurers_known());
    }

    /// Replaces what this projection replicates (the fold never filters by it, so a state
    /// loaded from a snapshot taken under another replication stays exact).
    pub fn set_replication(&mut self, replication: Replication) {
        self.replication = replication;
    }

    /// Plants a known bug (voids ignored) so the simulator's tests can show they catch it.
    #[doc(hidden)]
    #[cfg(feature = "planted-bugs")]
    pub fn plant_ignore_voids(&mut self) {
        self.planted_ignore_voids = true;
    }

    /// Declares members whose events are held although their insurer is not replicated here
    /// (a clinic's appointment prefetch).
    pub fn set_prefetched(&mut self, members: impl IntoIterator<Item = MemberKey>) {
        self.prefetched = members.into_iter().collect();
    }

    /// How many distinct events have been applied.
    pub fn events_held(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Releases spare capacity after a bulk load (the fold's tables grow by doubling).
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.members.shrink_to_fit();
        self.cards.shrink_to_fit();
        self.member_table.shrink_to_fit(|&m| hash_bytes(&self.members[m as usize].key));
        self.card_table.shrink_to_fit(|&c| hash_bytes(&self.cards[c as usize].token.0));
    }

    /// How many member keys are known (including ones only referenced).
    pub fn members_len(&self) -> usize {
        self.members.len()
    }

    fn find_member(&self, key: &MemberKey) -> Option<u32> {
        let key = CompactKey::new(key);
        let bytes = key.as_slice();
        self.member_table
            .find(hash_bytes(bytes), |&m| *self.members[m as usize].key == *bytes)
            .copied()
    }

    fn member_index(&mut self, key: &MemberKey) -> u32 {
        let key = CompactKey::new(key);
        let bytes = key.as_slice();
        let hash = hash_bytes(bytes);
        let members = &mut self.members;
        if let Some(&index) = self.member_table.find(hash, |&m| *members[m as usize].key == *bytes)
        {
            return index;
        }
        let index = members.len() as u32;
        members.push(MemberState { key: bytes.into(), facts: Vec::new() });
        self.member_table.insert_unique(hash, index, |&m| hash_bytes(&members[m as usize].key));
        index
    }

    fn find_card(&self, token: &CardToken) -> Option<u32> {
        let hash = hash_bytes(&token.0);
        self.card_table.find(hash, |&c| self.cards[c as usize].token == *token).copied()
    }

    fn card_index(&mut self, token: &CardToken) -> u32 {
        let hash = hash_bytes(&token.0);
        let cards = &mut self.cards;
        if let Some(&index) = self.card_table.find(hash, |&c| cards[c as usize].token == *token) {
            return index;
        }
        let index = cards.len() as u32;
        cards.push(CardState { token: *token, links: Vec::new() });
        self.card_table.insert_unique(hash, index, |&c| hash_bytes(&cards[c as usize].token.0));
        index
    }

    fn order(&self, hlc: Hlc, event: u32) -> (Hlc, &EventId) {
        (hlc, &self.ids[event as usize])
    }

    /// Position of `(hlc, id)` in a list sorted by the ordering key: `Ok` when present.
    fn search<T>(
        &self,
        list: &[T],
        key: impl Fn(&T) -> (Hlc, u32),
        hlc: Hlc,
        id: &EventId,
    ) -> Result<usize, usize> {
        list.binary_search_by(|item| {
            let (item_hlc, item_event) = key(item);
            self.order(item_hlc, item_event).cmp(&(hlc, id))
        })
    }

    fn push_id(&mut self, id: EventId) -> u32 {
        self.ids.push(id);
        (self.ids.len() - 1) as u32
    }

    /// Inserts a member fact unless the event is already there; returns the new event index.
    fn insert_member_fact(
        &mut self,
        member: u32,
        hlc: Hlc,
        id: EventId,
        kind: FactKind,
    ) -> Option<u32> {
        let facts = &self.members[member as usize].facts;
        let position = self.search(facts, |f| (f.hlc, f.event), hlc, &id).err()?;
        let event = self.push_id(id);
        // Members hold a handful of facts: grow exactly rather than by doubling.
        let facts = &mut self.members[member as usize].facts;
        facts.reserve_exact(1);
        facts.insert(position, Fact { hlc, event, kind });
        Some(event)
    }

    fn insert_marker(
        &mut self,
        list: Vec<Marker>,
        hlc: Hlc,
        id: EventId,
        flag: u8,
        date: Date,
    ) -> (Vec<Marker>, bool) {
        let mut list = list;
        match self.search(&list, |m| (m.hlc, m.event), hlc, &id) {
            Ok(_) => (list, false),
            Err(position) => {
                let event = self.push_id(id);
                list.insert(position, Marker { hlc, event, flag, date });
                (list, true)
            }
        }
    }

    /// Applies one verified event. Returns `false` when the event was already applied.
    /// Order-independent and idempotent (see the module invariant).
    pub fn apply(&mut self, signed: &SignedEvent) -> bool {
        let id = signed.id();
        let event = signed.event();
        let hlc = event.hlc;
        match &event.body {
            EventBody::MemberRegistered { member, person, relationship } => {
                let m = self.member_index(member);
                let insured = match relationship {
                    Relationship::Insured => NO_MEMBER,
                    Relationship::Dependant { insured } => self.member_index(insured),
                };
                let kind = FactKind::Registered { birth: person.birth_date, insured };
                self.insert_member_fact(m, hlc, id, kind).is_some()
            }
            EventBody::CoverageStarted { member, start, copay_tenths, .. } => {
                let m = self.member_index(member);
                let kind = FactKind::Started { start: *start, copay: *copay_tenths };
                self.insert_member_fact(m, hlc, id, kind).is_some()
            }
            EventBody::CoverageEnded { member, loss_date, reason } => {
                let m = self.member_index(member);
                let kind = FactKind::Ended { loss: *loss_date, reason: *reason };
                self.insert_member_fact(m, hlc, id, kind).is_some()
            }
            EventBody::CopayRatioSet { member, effective, copay_tenths } => {
                let m = self.member_index(member);
                let kind = FactKind::Copay { effective: *effective, copay: *copay_tenths };
                self.insert_member_fact(m, hlc, id, kind).is_some()
            }
            EventBody::LimitCategorySet { member, effective, category } => {
                let m = self.member_index(member);
                let mut code = [0u8; 3];
                let bytes = category.as_bytes();
                code[..bytes.len().min(3)].copy_from_slice(&bytes[..bytes.len().min(3)]);
                let kind = FactKind::Limit { effective: *effective, category: code };
                self.insert_member_fact(m, hlc, id, kind).is_some()
            }
            EventBody::DemographicsChanged { member, .. } => {
                let m = self.member_index(member);
                let kind = FactKind::Demographics;
                self.insert_member_fact(m, hlc, id, kind).is_some()
            }
            EventBody::CardLinked { card, member } => {
                self.apply_link(hlc, id, card, member, LinkState::Linked)
            }
            EventBody::CardUnlinked { card, member } => {
                self.apply_link(hlc, id, card, member, LinkState::Unlinked)
            }
            EventBody::WrongPersonLinkageRevoked { card, member, .. } => {
                self.apply_link(hlc, id, card, member, LinkState::Revoked)
            }
            EventBody::ConsentGiven { member } | EventBody::ConsentWithdrawn { member } => {
                let m = self.member_index(member);
                let given = matches!(event.body, EventBody::ConsentGiven { .. });
                self.insert_member_fact(m, hlc, id, FactKind::Consent(given)).is_some()
            }
            EventBody::EventVoided { target, .. } | EventBody::EventSuperseded { target, .. } => {
                let flag = u8::from(matches!(event.body, EventBody::EventSuperseded { .. }));
                let list = self.voids.remove(target).unwrap_or_default();
                let (list, new) = self.insert_marker(list, hlc, id, flag, Date(0));
                self.voids.insert(*target, list);
                if self.void_filter.is_empty() {
                    self.void_filter = vec![0; VOID_FILTER_WORDS];
                }
                let bit = void_filter_bit(target);
                self.void_filter[bit / 64] |= 1 << (bit % 64);
                new
            }
            EventBody::SelfDeclarationRecorded { query, declared_start, .. } => {
                let list = self.declarations.remove(query).unwrap_or_default();
                let (list, new) = self.insert_marker(list, hlc, id, 0, *declared_start);
                self.declarations.insert(query.clone(), list);
                new
            }
            EventBody::SelfDeclarationResolved { declaration, outcome, .. } => {
                let flag = u8::from(*outcome == DeclarationOutcome::Confirmed);
                let list = self.resolutions.remove(declaration).unwrap_or_default();
                let (list, new) = self.insert_marker(list, hlc, id, flag, Date(0));
                self.resolutions.insert(*declaration, list);
                new
            }
            EventBody::CheckPerformed { decided_by, code, .. } => {
                if self.checks.contains_key(&id) {
                    return false;
                }
                self.push_id(id);
                self.checks.insert(id, CheckInfo { hlc, code: *code });
                for decider in decided_by {
                    let users = self.checks_by_decider.entry(*decider).or_default();
                    if let Err(position) = users.binary_search(&id) {
                        users.insert(position, id);
                    }
                }
                true
            }
        }
    }

    fn apply_link(
        &mut self,
        hlc: Hlc,
        id: EventId,
        card: &CardToken,
        member: &MemberKey,
        state: LinkState,
    ) -> bool {
        let m = self.member_index(member);
        let c = self.card_index(card);
        let Some(event) = self.insert_member_fact(m, hlc, id, FactKind::Link { card: c, state })
        else {
            return false;
        };
        let links = &self.cards[c as usize].links;
        let position = match self.search(links, |l| (l.hlc, l.event), hlc, &id) {
            Ok(position) | Err(position) => position,
        };
        let links = &mut self.cards[c as usize].links;
        links.reserve_exact(1);
        links.insert(position, LinkFact { hlc, event, member: m, state });
        true
    }

    /// Whether an event is void at the cut-off: some visible void or supersession targets it
    /// and is not itself void (a void of a void restores the original).
    fn is_voided(&self, event: u32, cutoff: Hlc, depth: u32) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.planted_ignore_voids {
            return false;
        }
        let id = &self.ids[event as usize];
        let bit = void_filter_bit(id);
        if self.void_filter.get(bit / 64).is_none_or(|word| word & (1 << (bit % 64)) == 0) {
            return false;
        }
        let Some(voids) = self.voids.get(id) else {
            return false;
        };
        voids.iter().any(|v| {
            v.hlc <= cutoff
                && (depth >= VOID_CHAIN_DEPTH_MAX || !self.is_voided(v.event, cutoff, depth + 1))
        })
    }

    fn visible(&self, hlc: Hlc, event: u32, cutoff: Hlc) -> bool {
        hlc <= cutoff && !self.is_voided(event, cutoff, 0)
    }

    fn supersede_conflict(&self, event: u32, cutoff: Hlc) -> Option<Conflict> {
        self.supersede_conflict_for(&self.ids[event as usize], cutoff)
    }

    fn supersede_conflict_for(&self, target: &EventId, cutoff: Hlc) -> Option<Conflict> {
        let voids = self.voids.get(target)?;
        let supersessions: Vec<EventId> = voids
            .iter()
            .filter(|v| v.flag == 1 && self.visible(v.hlc, v.event, cutoff))
            .map(|v| self.ids[v.event as usize])
            .collect();
        (supersessions.len() > 1)
            .then_some(Conflict::CompetingCorrections { target: *target, events: supersessions })
    }

    /// The member key stored at an index.
    fn key_of(&self, member: u32) -> Option<MemberKey> {
        decode_compact_key(&self.members[member as usize].key)
    }

    fn insurer_of(&self, member: u32) -> Option<InsurerNumber> {
        let bytes = self.members[member as usize].key.get(..4)?;
        Some(InsurerNumber::from_validated(u32::from_le_bytes(bytes.try_into().ok()?)))
    }

    fn view(&self, member: u32, cutoff: Hlc) -> MemberView {
        let mut view = MemberView::default();
        let mut starts: Vec<Period> = Vec::new();
        let mut ends: Vec<(Date, EndReason, u32)> = Vec::new();
        for fact in &self.members[member as usize].facts {
            if fact.hlc > cutoff {
                break;
            }
            if self.is_voided(fact.event, cutoff, 0) {
                if let Some(conflict) = self.supersede_conflict(fact.event, cutoff) {
                    view.conflicts.push(conflict);
                }
                continue;
            }
            match fact.kind {
                FactKind::Registered { birth, insured } => {
                    view.exists = true;
                    view.registered = Some((birth, insured, fact.event));
                }
                FactKind::Started { start, copay } => {
                    view.exists = true;
                    starts.push(Period {
                        start,
                        end: None,
                        copay,
                        start_event: fact.event,
                        end_event: None,
                        end_reason: None,
                        implied_end: false,
                    });
                }
                FactKind::Ended { loss, reason } => ends.push((loss, reason, fact.event)),
                FactKind::Copay { effective, copay } => {
                    view.copays.push((effective, copay, fact.event))
                }
                FactKind::Limit { effective, category } => {
                    view.limits.push((effective, category, fact.event))
                }
                FactKind::Demographics => {}
                FactKind::Link { card, .. } => {
                    if !view.cards.contains(&card) {
                        view.cards.push(card);
                    }
                }
                FactKind::Consent(given) => view.consent = Some((given, fact.event, fact.hlc)),
            }
        }
        // Facts are in (hlc, id) order; periods are needed in start-date order, ties by that.
        starts.sort_by_key(|p| p.start);
        let key = || self.key_of(member);
        // Each end belongs to the latest period that started on or before its loss date; the
        // earliest loss date wins and differing claims on one period are a conflict.
        let mut claims: Vec<(usize, Date, u32)> = Vec::new();
        for (loss, reason, event) in ends {
            let Some(index) = starts.iter().rposition(|p| p.start <= loss) else { continue };
            claims.push((index, loss, event));
            let period = &mut starts[index];
            if period.end.is_none_or(|end| (loss, event) < (end, period.end_event.unwrap_or(0))) {
                period.end = Some(loss);
                period.end_event = Some(event);
                period.end_reason = Some(reason);
            }
        }
        if claims.len() > 1 {
            claims.sort_unstable_by_key(|c| c.0);
            for group in claims.chunk_by(|a, b| a.0 == b.0) {
                if group.iter().any(|c| c.1 != group[0].1) {
                    if let Some(member) = key() {
                        let mut events: Vec<EventId> =
                            group.iter().map(|c| self.ids[c.2 as usize]).collect();
                        events.sort();
                        view.conflicts.push(Conflict::CompetingEnds { member, events });
                    }
                }
            }
        }
        // Transfer at 75: coverage outside the late-stage elderly system ends on the 75th
        // birthday even before the insurer reports it.
        if let (Some((birth, _, registered)), Some(insurer)) =
            (view.registered, self.insurer_of(member))
        {
            if !insurer.is_late_stage_elderly() {
                let birthday = birth.add_years(75);
                for period in &mut starts {
                    let capped = period.start.max(birthday);
                    if period.end.is_none_or(|end| end > capped) {
                        period.end = Some(capped);
                        period.end_event = Some(registered);
                        period.end_reason = Some(EndReason::Age75);
                        period.implied_end = true;
                    }
                }
            }
        }
        for pair in starts.windows(2) {
            if pair[0].range().overlaps(&pair[1].range()) {
                if let Some(member) = key() {
                    let mut events = vec![
                        self.ids[pair[0].start_event as usize],
                        self.ids[pair[1].start_event as usize],
                    ];
                    events.sort();
                    view.conflicts.push(Conflict::OverlappingCoverage { member, events });
                }
            }
        }
        view.periods = starts;
        view
    }

    fn evaluate(
        &self,
        member: u32,
        date: Date,
        cutoff: Hlc,
        depth: u32,
    ) -> (MemberView, Evaluation) {
        let mut view = self.view(member, cutoff);
        let mut eval =
            Evaluation { conflicts: std::mem::take(&mut view.conflicts), ..Evaluation::default() };
        let covering = view.periods.iter().rev().find(|p| p.range().contains(date)).copied();
        let reference = covering.or_else(|| {
            view.periods.iter().rev().find(|p| p.start <= date).or(view.periods.first()).copied()
        });
        eval.reference = reference;
        eval.covered = covering;
        if let Some((_, insured, registered)) = view.registered {
            if insured != NO_MEMBER {
                eval.dependant = true;
                eval.decided.push(registered);
                if depth == 0 {
                    let (insured_view, insured_eval) = self.evaluate(insured, date, cutoff, 1);
                    eval.conflicts.extend(insured_eval.conflicts);
                    if insured_view.exists && covering.is_some() {
                        match insured_eval.covered {
                            Some(period) => eval.decided.push(period.start_event),
                            None => {
                                eval.covered = None;
                                if let Some(period) = insured_eval.reference {
                                    eval.end_reason = period.end_reason;
                                    eval.decided.extend(period.end_event);
                                    // Show the dependant's coverage as ending with the insured's.
                                    if let (Some(own), Some(end)) =
                                        (eval.reference.as_mut(), period.end)
                                    {
                                        if own.end.is_none_or(|own_end| own_end > end) {
                                            own.end = Some(end.max(own.start));
                                            own.implied_end = false;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        match eval.covered {
            Some(period) => {
                eval.decided.push(period.start_event);
                eval.decided.extend(period.end_event);
                let mut copay = (period.start, period.copay, period.start_event);
                let mut candidates: Vec<&(Date, u8, u32)> =
                    view.copays.iter().filter(|c| c.0 <= date && c.0 >= period.start).collect();
                candidates.sort_by_key(|c| c.0);
                if let Some(latest) = candidates.last() {
                    let same_day: Vec<&&(Date, u8, u32)> =
                        candidates.iter().filter(|c| c.0 == latest.0).collect();
                    if same_day.iter().any(|c| c.1 != latest.1) {
                        if let Some(member) = self.key_of(member) {
                            let mut events: Vec<EventId> =
                                same_day.iter().map(|c| self.ids[c.2 as usize]).collect();
                            events.sort();
                            eval.conflicts.push(Conflict::CompetingValues {
                                member,
                                field: "copay_tenths",
                                events,
                            });
                        }
                    }
                    // Facts are in (hlc, id) order, so the last of the same day is the latest.
                    if let Some(last) = same_day.last() {
                        copay = ***last;
                    }
                }
                eval.copay = Some(copay.1);
                if copay.2 != period.start_event {
                    eval.decided.push(copay.2);
                }
                if let Some(limit) = view
                    .limits
                    .iter()
                    .filter(|l| l.0 <= date)
                    .max_by(|a, b| a.0.cmp(&b.0).then(Ordering::Less))
                {
                    match view.consent {
                        Some((true, consent, _)) => {
                            eval.limit = Some(limit.1);
                            eval.decided.push(limit.2);
                            eval.decided.push(consent);
                        }
                        Some((false, _, withdrawn)) => {
                            eval.limit_withheld = true;
                            eval.consent_withdrawn = Some(withdrawn);
                        }
                        None => eval.limit_withheld = true,
                    }
                }
            }
            None => {
                if let Some(period) = reference {
                    if eval.end_reason.is_none() {
                        let ended_by = period.end.filter(|end| *end <= date).and(period.end_event);
                        match ended_by {
                            // The coverage ended on or before the service date.
                            Some(event) => {
                                eval.end_reason = period.end_reason;
                                eval.decided.push(event);
                            }
                            // The coverage starts after the service date.
                            None => eval.decided.push(period.start_event),
                        }
                    }
                } else if let Some((_, _, registered)) = view.registered {
                    eval.decided.push(registered);
                }
            }
        }
        (view, eval)
    }

    /// Members whose link to the card is alive at the cut-off, with the deciding link event.
    fn alive_links(&self, card: u32, cutoff: Hlc) -> Vec<(u32, u32)> {
        // (member, latest state, deciding event, ever revoked); links are few per card.
        let mut latest: Vec<(u32, LinkState, u32, bool)> = Vec::with_capacity(2);
        for link in &self.cards[card as usize].links {
            if !self.visible(link.hlc, link.event, cutoff) {
                continue;
            }
            let revoked = link.state == LinkState::Revoked;
            match latest.iter_mut().find(|entry| entry.0 == link.member) {
                Some(entry) => {
                    entry.1 = link.state;
                    entry.2 = link.event;
                    entry.3 |= revoked;
                }
                None => latest.push((link.member, link.state, link.event, revoked)),
            }
        }
        // Content order (member key), never arrival order, so answers are order-independent.
        latest.sort_unstable_by(|a, b| {
            self.members[a.0 as usize].key.cmp(&self.members[b.0 as usize].key)
        });
        latest
            .into_iter()
            .filter(|entry| entry.1 == LinkState::Linked && !entry.3)
            .map(|entry| (entry.0, entry.2))
            .collect()
    }

    fn pending_declaration(&self, queries: &[CheckQuery], date: Date, cutoff: Hlc) -> Option<u32> {
        queries
            .iter()
            .filter_map(|query| self.declarations.get(query))
            .flatten()
            .filter(|d| d.date <= date && self.visible(d.hlc, d.event, cutoff))
            .filter(|d| {
                let resolved = self
                    .resolutions
                    .get(&self.ids[d.event as usize])
                    .is_some_and(|rs| rs.iter().any(|r| self.visible(r.hlc, r.event, cutoff)));
                !resolved
            })
            .max_by(|a, b| self.order(a.hlc, a.event).cmp(&self.order(b.hlc, b.event)))
            .map(|d| d.event)
    }

    /// Answers a check: is the person behind `query` covered on `service_date`, as known at
    /// record time `as_of`? `freshness` is the caller's knowledge of its own sync state.
    pub fn check(
        &self,
        query: &CheckQuery,
        service_date: Date,
        as_of: Hlc,
        freshness: Freshness,
    ) -> Answer {
        let knowledge = Knowledge {
            as_of,
            events_held: self.events_held(),
            last_hub_sync_ms: freshness.last_hub_sync_ms,
            hub_position: freshness.hub_position,
            staleness_s: freshness.staleness_s(),
        };
        let mut answer = Answer {
            code: AnswerCode::NoMatch,
            service_date,
            query: query.clone(),
            member: None,
            insurer: None,
            dependant: None,
            coverage: None,
            end_reason: None,
            copay_tenths: None,
            limit_category: None,
            limit_category_withheld: false,
            consent_withdrawn: None,
            successor: None,
            declaration: None,
            decided_by: Vec::new(),
            conflicts: Vec::new(),
            knowledge,
            damage: freshness.damage,
        };
        let mut decided: Vec<u32> = Vec::new();
        match query {
            CheckQuery::Member(key) => {
                self.check_member(key, service_date, as_of, &mut answer, &mut decided)
            }
            CheckQuery::Card(card) => {
                self.check_card(card, service_date, as_of, &mut answer, &mut decided)
            }
        }
        let mut ids: Vec<EventId> = decided.iter().map(|&e| self.ids[e as usize]).collect();
        ids.sort();
        ids.dedup();
        answer.decided_by = ids;
        answer.conflicts.sort();
        answer.conflicts.dedup();
        answer
    }

    fn fill(&self, answer: &mut Answer, member: u32, eval: &Evaluation) {
        answer.member = self.key_of(member);
        answer.insurer = self.insurer_of(member);
        answer.dependant = Some(eval.dependant);
        // An end implied by a future 75th birthday is not shown as the coverage's end date.
        answer.coverage = eval.covered.or(eval.reference).map(|p| DateRange {
            start: p.start,
            end: p.end.filter(|end| !(p.implied_end && *end > answer.service_date)),
        });
        answer.end_reason = if eval.covered.is_some() { None } else { eval.end_reason };
        answer.copay_tenths = eval.copay;
        answer.limit_category =
            eval.limit.map(|code| String::from_utf8_lossy(&code).trim_end_matches('\0').to_owned());
        answer.limit_category_withheld = eval.limit_withheld;
        answer.consent_withdrawn = eval.consent_withdrawn;
        answer.conflicts.extend(eval.conflicts.iter().cloned());
    }

    fn check_member(
        &self,
        key: &MemberKey,
        date: Date,
        cutoff: Hlc,
        answer: &mut Answer,
        decided: &mut Vec<u32>,
    ) {
        let not_held = if self.replication.holds(key.insurer) || self.prefetched.contains(key) {
            AnswerCode::NoMatch
        } else {
            AnswerCode::Unknown
        };
        let Some(member) = self.find_member(key) else {
            answer.code = not_held;
            return;
        };
        let (view, eval) = self.evaluate(member, date, cutoff, 0);
        if !view.exists {
            answer.code = not_held;
            return;
        }
        self.fill(answer, member, &eval);
        decided.extend(&eval.decided);
        if eval.covered.is_some() {
            answer.code = AnswerCode::Valid;
            return;
        }
        // Not covered under this key: is the same person covered under a newer one?
        let mut queries = vec![CheckQuery::Member(key.clone())];
        for &card in &view.cards {
            let links = self.alive_links(card, cutoff);
            if !links.iter().any(|&(m, _)| m == member) {
                continue;
            }
            queries.push(CheckQuery::Card(self.cards[card as usize].token));
            for &(other, link_event) in &links {
                if other == member {
                    continue;
                }
                let (_, other_eval) = self.evaluate(other, date, cutoff, 0);
                if let Some(period) = other_eval.covered {
                    answer.code = AnswerCode::InvalidNewerExists;
                    answer.successor = self.key_of(other);
                    decided.extend([link_event, period.start_event]);
                    return;
                }
            }
        }
        if let Some(declaration) = self.pending_declaration(&queries, date, cutoff) {
            answer.code = AnswerCode::PendingSuccessor;
            answer.declaration = Some(self.ids[declaration as usize]);
            decided.push(declaration);
            return;
        }
        answer.code = AnswerCode::Invalid;
    }

    fn check_card(
        &self,
        token: &CardToken,
        date: Date,
        cutoff: Hlc,
        answer: &mut Answer,
        decided: &mut Vec<u32>,
    ) {
        let partial = matches!(self.replication, Replication::Insurers(_));
        let links = self.find_card(token).map(|c| self.alive_links(c, cutoff)).unwrap_or_default();
        let mut queries = vec![CheckQuery::Card(*token)];
        if links.is_empty() {
            if let Some(declaration) = self.pending_declaration(&queries, date, cutoff) {
                answer.code = AnswerCode::PendingSuccessor;
                answer.declaration = Some(self.ids[declaration as usize]);
                decided.push(declaration);
            } else {
                answer.code = if partial { AnswerCode::Unknown } else { AnswerCode::NoMatch };
            }
            return;
        }
        let mut covered: Vec<(u32, u32, Evaluation)> = Vec::new();
        let mut latest: Option<(Date, u32, u32, Evaluation)> = None;
        for &(member, link_event) in &links {
            let (_, eval) = self.evaluate(member, date, cutoff, 0);
            if let Some(key) = self.key_of(member) {
                queries.push(CheckQuery::Member(key));
            }
            if eval.covered.is_some() {
                covered.push((member, link_event, eval));
            } else {
                let start = eval.reference.map(|p| p.start).unwrap_or(Date(i32::MIN));
                if latest.as_ref().is_none_or(|l| start >= l.0) {
                    latest = Some((start, member, link_event, eval));
                }
            }
        }
        match covered.len() {
            0 => {
                if let Some((_, member, link_event, eval)) = latest {
                    self.fill(answer, member, &eval);
                    decided.extend(&eval.decided);
                    decided.push(link_event);
                }
                if let Some(declaration) = self.pending_declaration(&queries, date, cutoff) {
                    answer.code = AnswerCode::PendingSuccessor;
                    answer.declaration = Some(self.ids[declaration as usize]);
                    decided.push(declaration);
                } else if partial {
                    // A newer coverage may exist at an insurer this node does not hold.
                    answer.code = AnswerCode::Unknown;
                } else {
                    answer.code = AnswerCode::Invalid;
                }
            }
            1 => {
                let (member, link_event, eval) = &covered[0];
                self.fill(answer, *member, eval);
                decided.extend(&eval.decided);
                decided.push(*link_event);
                answer.code = AnswerCode::Valid;
            }
            _ => {
                answer.code = AnswerCode::MultipleMatches;
                let mut members: Vec<MemberKey> = Vec::new();
                for (member, link_event, eval) in &covered {
                    decided.extend(&eval.decided);
                    decided.push(*link_event);
                    answer.conflicts.extend(eval.conflicts.iter().cloned());
                    members.extend(self.key_of(*member));
                }
                members.sort();
                answer.conflicts.push(Conflict::MultipleMembers { card: *token, members });
            }
        }
    }

    /// Every conflict visible at the cut-off, across all members, sorted.
    pub fn conflicts(&self, as_of: Hlc) -> Vec<Conflict> {
        let mut all: BTreeSet<Conflict> = BTreeSet::new();
        for member in 0..self.members.len() as u32 {
            all.extend(self.view(member, as_of).conflicts);
        }
        for target in self.voids.keys() {
            all.extend(self.supersede_conflict_for(target, as_of));
        }
        all.into_iter().collect()
    }

    /// Checks (ids of `check_performed` events) whose answer was decided by `event` — e.g. the
    /// checks that relied on a card link later revoked as a wrong-person linkage.
    pub fn checks_decided_by(&self, event: &EventId) -> Vec<EventId> {
        self.checks_by_decider.get(event).cloned().unwrap_or_default()
    }

    /// Checks that relied on any link of `card` to `member` which is revoked at the cut-off.
    pub fn checks_using_revoked_link(
        &self,
        card: &CardToken,
        member: &MemberKey,
        as_of: Hlc,
    ) -> Vec<EventId> {
        let (Some(c), Some(m)) = (self.find_card(card), self.find_member(member)) else {
            return Vec::new();
        };
        let links = &self.cards[c as usize].links;
        let revoked = links.iter().any(|l| {
            l.member == m && l.state == LinkState::Revoked && self.visible(l.hlc, l.event, as_of)
        });
        if !revoked {
            return Vec::new();
        }
        let mut checks: Vec<EventId> = links
            .iter()
            .filter(|l| l.member == m && l.state == LinkState::Linked)
            .flat_map(|l| self.checks_decided_by(&self.ids[l.event as usize]))
            .collect();
        checks.sort();
        checks.dedup();
        checks
    }

    /// A digest of the whole derived state, computed in canonical (sorted) order and from
    /// content only (ids, keys, tokens — never arrival positions). Two projections hold the
    /// same state exactly when their digests match.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        // v2: declarations and check codes are hashed in the canonical byte forms below, not
        // through their Debug text (v1), so no change of a Debug impl can move a digest.
        h.update(b"shikaku/projection/v2");
        let id = |event: u32| &self.ids[event as usize].0;
        let mut members: Vec<&MemberState> = self.members.iter().collect();
        members.sort_by(|a, b| a.key.cmp(&b.key));
        for member in members {
            h.update(&(member.key.len() as u32).to_le_bytes());
            h.update(&member.key);
            h.update(&(member.facts.len() as u32).to_le_bytes());
            for fact in &member.facts {
                h.update(&fact.hlc.0.to_le_bytes());
                h.update(id(fact.event));
                // Each fact as (tag, value, value) with references replaced by content.
                let (tag, a, b): (u8, i64, i64) = match fact.kind {
                    FactKind::Registered { birth, insured } => {
                        if insured != NO_MEMBER {
                            h.update(&self.members[insured as usize].key);
                        }
                        (0, i64::from(birth.0), i64::from(insured != NO_MEMBER))
                    }
                    FactKind::Started { start, copay } => (1, i64::from(start.0), i64::from(copay)),
                    FactKind::Ended { loss, reason } => (2, i64::from(loss.0), reason as i64),
                    FactKind::Copay { effective, copay } => {
                        (3, i64::from(effective.0), i64::from(copay))
                    }
                    FactKind::Limit { effective, category } => (
                        4,
                        i64::from(effective.0),
                        i64::from(u32::from_le_bytes([category[0], category[1], category[2], 0])),
                    ),
                    FactKind::Demographics => (5, 0, 0),
                    FactKind::Link { card, state } => {
                        h.update(&self.cards[card as usize].token.0);
                        (6, state as i64, 0)
                    }
                    FactKind::Consent(given) => (7, i64::from(given), 0),
                };
                h.update(&[tag]);
                h.update(&a.to_le_bytes());
                h.update(&b.to_le_bytes());
            }
        }
        let mut cards: Vec<&CardState> = self.cards.iter().collect();
        cards.sort_by_key(|c| c.token);
        for card in cards {
            h.update(&card.token.0);
            for link in &card.links {
                h.update(&link.hlc.0.to_le_bytes());
                h.update(id(link.event));
                h.update(&self.members[link.member as usize].key);
                h.update(&[link.state as u8]);
            }
        }
        let markers = |h: &mut blake3::Hasher, list: &[Marker]| {
            for marker in list {
                h.update(&marker.hlc.0.to_le_bytes());
                h.update(id(marker.event));
                h.update(&[marker.flag]);
                h.update(&marker.date.0.to_le_bytes());
            }
        };
        let mut voids: Vec<(&EventId, &Vec<Marker>)> = self.voids.iter().collect();
        voids.sort_by_key(|(target, _)| **target);
        for (target, list) in voids {
            h.update(b"void");
            h.update(&target.0);
            markers(&mut h, list);
        }
        for (query, list) in &self.declarations {
            h.update(b"declaration");
            match query {
                CheckQuery::Card(card) => {
                    h.update(&[0]);
                    h.update(&card.0);
                }
                CheckQuery::Member(member) => {
                    let key = CompactKey::new(member);
                    h.update(&[1]);
                    h.update(&(key.as_slice().len() as u32).to_le_bytes());
                    h.update(key.as_slice());
                }
            }
            markers(&mut h, list);
        }
        let mut resolutions: Vec<(&EventId, &Vec<Marker>)> = self.resolutions.iter().collect();
        resolutions.sort_by_key(|(target, _)| **target);
        for (target, list) in resolutions {
            h.update(b"resolution");
            h.update(&target.0);
            markers(&mut h, list);
        }
        let mut checks: Vec<(&EventId, &CheckInfo)> = self.checks.iter().collect();
        checks.sort_by_key(|(check, _)| **check);
        for (check, info) in checks {
            h.update(b"check");
            h.update(&check.0);
            h.update(&info.hlc.0.to_le_bytes());
            h.update(&[info.code as u8]);
        }
        *h.finalize().as_bytes()
    }
}
