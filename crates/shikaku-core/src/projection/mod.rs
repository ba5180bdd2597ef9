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
//!
//! Split along its seams: `store` (tables and [`Projection::apply`]), `rules` (voids, a member's
//! view, the evaluation of a date), `query` ([`Projection::check`]), `audit` (conflicts and
//! the checks events decided), `digest` and `snapshot`.

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

mod audit;
mod digest;
mod query;
mod rules;
mod snapshot;
mod store;

pub use snapshot::SnapshotError;

/// What opening sealed member records revealed for one check: per member reference, the
/// birth date and the insured person's reference (for a dependant), so the rules that need
/// hidden fields (the 75th birthday, dependants following their insured person) apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reveal {
    /// What each opened record revealed, by member reference.
    pub members: BTreeMap<MemberKey, Revealed1>,
}

/// One opened record: the birth date, and the insured person's reference and birth date for
/// a dependant.
pub type Revealed1 = (Date, Option<(MemberKey, Date)>);

impl Reveal {
    /// Adds what one record revealed.
    pub fn insert(
        &mut self,
        reference: MemberKey,
        birth: Date,
        insured: Option<(MemberKey, Date)>,
    ) {
        self.members.insert(reference, (birth, insured));
    }
}

/// [`Reveal`] as the rules read it: looked up per member index (an insured person's birth
/// date, sealed in a dependant's record, counts too).
#[derive(Debug, Default)]
struct Revealed<'a> {
    reveal: Option<&'a Reveal>,
    insured_births: BTreeMap<MemberKey, Date>,
}

impl Projection {
    fn revealed_get(&self, revealed: &Revealed<'_>, member: u32) -> Option<(Date, u32)> {
        let reveal = revealed.reveal?;
        let key = self.key_of(member)?;
        if let Some((birth, insured)) = reveal.members.get(&key) {
            let insured =
                insured.as_ref().and_then(|(k, _)| self.find_member(k)).unwrap_or(NO_MEMBER);
            return Some((*birth, insured));
        }
        revealed.insured_births.get(&key).map(|birth| (*birth, NO_MEMBER))
    }
}

const NO_MEMBER: u32 = u32::MAX;
/// The insured index of a sealed registration: the relationship is known only once opened.
const SEALED_INSURED: u32 = u32::MAX - 1;
/// The birth date of a sealed registration until it is opened.
const SEALED_BIRTH: Date = Date(i32::MIN);
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
}
