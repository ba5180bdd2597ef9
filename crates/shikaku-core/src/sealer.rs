//! The insurer's side of sealing: turning plaintext (schema-1) membership facts into sealed
//! (schema-2) ones, with the key store items that open them — and `upgrade`, which converts
//! a whole schema-1 history (used by `shikaku ledger upgrade` and `shikaku gen --sealed`).
//!
//! Pure: data keys and nonces come from the caller's `fill` (the operating system's random
//! source in production, a seeded generator in the synthetic generator).

use std::collections::{BTreeMap, HashMap};

use crate::event::{CheckQuery, Event, EventBody, EventId, Relationship, SignedEvent, Signer};
use crate::keystore::{KeyStore, Wrap, WrapKind};
use crate::member::{CardToken, InsurerNumber, MemberKey};
use crate::seal::{self, DataKey, KdfParams, SealError, SealedInsured, SealedMember};
use crate::{AuthorKey, Date};

/// A source of random bytes (data keys, nonces).
pub type Fill<'a> = &'a mut dyn FnMut(&mut [u8]);

/// The member-reference secret of an insurer, derived from its signing key (so the key file
/// is the one secret an insurer keeps): `blake3::derive_key("shikaku 2026 member reference
/// secret v2", signing secret)`.
pub fn ref_secret_of(signer: &Signer) -> [u8; 32] {
    signer.derive_secret("shikaku 2026 member reference secret v2")
}

/// Why a body could not be sealed. Never carries member data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealerError {
    /// A fact names a member whose registration has not been sealed yet.
    #[error("a {0} event names a member not registered before it (register first)")]
    Unregistered(&'static str),
    /// The body is a clinic record, which only the clinic signs.
    #[error("a {0} event is a clinic record: only the clinic can sign it")]
    ClinicRecord(&'static str),
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// No signer for an author.
    #[error("no insurer key for author {0}")]
    NoSigner(AuthorKey),
    /// Signing the sealed event failed.
    #[error("sealed event refused: {0}")]
    Event(String),
}

#[derive(Debug, Clone)]
struct Known {
    birth: Date,
    insured: Option<SealedInsured>,
}

/// Seals one insurer's membership facts. See the module documentation.
pub struct Sealer {
    ref_secret: [u8; 32],
    params: KdfParams,
    members: HashMap<MemberKey, Known>,
    /// Birth dates of members known before their registration is sealed (a history sealed
    /// as a whole may register a dependant before the insured person).
    births: HashMap<MemberKey, Date>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} members, {})", self.members.len(), self.params)
    }
}

impl Sealer {
    /// A sealer with the insurer's reference secret and the member-key tag's parameters.
    pub fn new(ref_secret: [u8; 32], params: KdfParams) -> Sealer {
        Sealer { ref_secret, params, members: HashMap::new(), births: HashMap::new() }
    }

    /// Notes a member's birth date ahead of sealing (see [`upgrade`]).
    pub fn note_birth(&mut self, key: &MemberKey, birth: Date) {
        self.births.insert(key.clone(), birth);
    }

    /// The reference of a real member key.
    pub fn reference(&self, key: &MemberKey) -> MemberKey {
        seal::member_ref(&self.ref_secret, key)
    }

    fn nonce(fill: Fill<'_>) -> [u8; 24] {
        let mut nonce = [0u8; 24];
        fill(&mut nonce);
        nonce
    }

    fn data_key(&self, store: &mut KeyStore, reference: &MemberKey, fill: Fill<'_>) -> DataKey {
        if let Some(key) = store.data_key(reference) {
            return key.clone();
        }
        let mut bytes = [0u8; 32];
        fill(&mut bytes);
        let key = DataKey(bytes);
        store.put_data_key(reference.clone(), key.clone());
        key
    }

    fn seal_record(
        &mut self,
        key: &MemberKey,
        person: &crate::event::Person,
        relationship: Option<&Relationship>,
        store: &mut KeyStore,
        fill: Fill<'_>,
    ) -> Result<(MemberKey, seal::Sealed), SealerError> {
        let reference = self.reference(key);
        let insured = match relationship {
            Some(Relationship::Dependant { insured }) => {
                let birth = match self.members.get(insured) {
                    Some(known) => known.birth,
                    None => *self
                        .births
                        .get(insured)
                        .ok_or(SealerError::Unregistered("member_registered (dependant)"))?,
                };
                Some(SealedInsured { reference: self.reference(insured), birth_date: birth })
            }
            Some(Relationship::Insured) => None,
            // Demographics change: the relationship stays as registered.
            None => self.members.get(key).and_then(|k| k.insured.clone()),
        };
        let data_key = self.data_key(store, &reference, fill);
        let record =
            SealedMember { key: key.clone(), person: person.clone(), insured: insured.clone() };
        let sealed = seal::seal_member(&data_key, Self::nonce(fill), &reference, &record)?;
        let new_birth = self.members.get(key).is_none_or(|k| k.birth != person.birth_date);
        if new_birth {
            let secrets = seal::key_secrets(key, person.birth_date, self.params)?;
            let wrapped = seal::wrap_data_key(
                &secrets.wrap,
                Self::nonce(fill),
                &secrets.tag,
                &reference,
                &data_key,
            );
            store.put_wrap(Wrap {
                tag: secrets.tag,
                member: reference.clone(),
                kind: WrapKind::MemberKey(self.params),
                wrapped,
            });
        }
        self.members.insert(key.clone(), Known { birth: person.birth_date, insured });
        Ok((reference, sealed))
    }

    fn card(
        &mut self,
        card: &CardToken,
        member: &MemberKey,
        store: &mut KeyStore,
        fill: Fill<'_>,
        wrap: bool,
    ) -> (CardToken, MemberKey) {
        let reference = self.reference(member);
        let tag = seal::card_tag(card);
        if wrap {
            let data_key = self.data_key(store, &reference, fill);
            let wrapped = seal::wrap_data_key(
                &seal::card_wrap_key(card),
                Self::nonce(fill),
                &tag.0,
                &reference,
                &data_key,
            );
            store.put_wrap(Wrap {
                tag: tag.0,
                member: reference.clone(),
                kind: WrapKind::Card,
                wrapped,
            });
        }
        (tag, reference)
    }

    fn query(&self, query: &CheckQuery) -> CheckQuery {
        match query {
            CheckQuery::Card(card) => CheckQuery::Card(seal::card_tag(card)),
            CheckQuery::Member(key) => CheckQuery::Member(self.reference(key)),
        }
    }

    /// Seals one schema-1 membership body into its schema-2 form, adding data keys and wraps
    /// to `store`. `ids` maps schema-1 event ids to their schema-2 replacements (for voids and
    /// supersessions).
    pub fn seal_body(
        &mut self,
        body: &EventBody,
        ids: &BTreeMap<EventId, EventId>,
        store: &mut KeyStore,
        fill: Fill<'_>,
    ) -> Result<EventBody, SealerError> {
        let map_id = |id: &EventId| ids.get(id).copied().unwrap_or(*id);
        let r = |key: &MemberKey| seal::member_ref(&self.ref_secret, key);
        Ok(match body {
            EventBody::MemberRegistered { member, person, relationship } => {
                let (member, sealed) =
                    self.seal_record(member, person, Some(relationship), store, fill)?;
                EventBody::MemberSealed { member, sealed }
            }
            EventBody::DemographicsChanged { member, effective, person } => {
                if !self.members.contains_key(member) {
                    return Err(SealerError::Unregistered("demographics_changed"));
                }
                let (member, sealed) = self.seal_record(member, person, None, store, fill)?;
                EventBody::DemographicsSealed { member, effective: *effective, sealed }
            }
            EventBody::CardLinked { card, member } => {
                let (card, member) = self.card(card, member, store, fill, true);
                EventBody::CardLinked { card, member }
            }
            EventBody::CardUnlinked { card, member } => {
                let (card, member) = self.card(card, member, store, fill, false);
                EventBody::CardUnlinked { card, member }
            }
            EventBody::WrongPersonLinkageRevoked { card, member, reason } => {
                let (card, member) = self.card(card, member, store, fill, false);
                EventBody::WrongPersonLinkageRevoked { card, member, reason: reason.clone() }
            }
            EventBody::CoverageStarted { member, start, copay_tenths, elderly_certificate } => {
                EventBody::CoverageStarted {
                    member: r(member),
                    start: *start,
                    copay_tenths: *copay_tenths,
                    elderly_certificate: *elderly_certificate,
                }
            }
            EventBody::CoverageEnded { member, loss_date, reason } => EventBody::CoverageEnded {
                member: r(member),
                loss_date: *loss_date,
                reason: *reason,
            },
            EventBody::CopayRatioSet { member, effective, copay_tenths } => {
                EventBody::CopayRatioSet {
                    member: r(member),
                    effective: *effective,
                    copay_tenths: *copay_tenths,
                }
            }
            EventBody::LimitCategorySet { member, effective, category } => {
                EventBody::LimitCategorySet {
                    member: r(member),
                    effective: *effective,
                    category: category.clone(),
                }
            }
            EventBody::EventVoided { subject, target, reason } => EventBody::EventVoided {
                subject: self.query(subject),
                target: map_id(target),
                reason: reason.clone(),
            },
            EventBody::EventSuperseded { subject, target, replacement } => {
                EventBody::EventSuperseded {
                    subject: self.query(subject),
                    target: map_id(target),
                    replacement: map_id(replacement),
                }
            }
            EventBody::ConsentGiven { .. }
            | EventBody::ConsentWithdrawn { .. }
            | EventBody::CheckPerformed { .. }
            | EventBody::SelfDeclarationRecorded { .. }
            | EventBody::SelfDeclarationResolved { .. } => {
                return Err(SealerError::ClinicRecord(body.type_name()))
            }
            EventBody::MemberSealed { .. }
            | EventBody::DemographicsSealed { .. }
            | EventBody::MemberErased { .. } => body.clone(),
        })
    }
}

/// What [`upgrade`] produced.
#[derive(Debug)]
pub struct Upgraded {
    /// The history in schema 2 (insurer events re-sealed and re-signed; clinic records kept
    /// as they were, in schema 1, because only their clinic can sign them), in input order.
    pub events: Vec<SignedEvent>,
    /// Schema-1 id → schema-2 id of every converted event.
    pub ids: BTreeMap<EventId, EventId>,
    /// Clinic records kept in schema 1.
    pub kept_clinic_records: u64,
}

/// Converts a schema-1 history (in record order) to schema 2. Insurer events are sealed with
/// the insurer's [`Sealer`] (from `signers`: each insurer's signing key, which also gives its
/// reference secret, [`ref_secret_of`]) and re-signed with the same origin, sequence and clock;
/// events already in schema 2 pass through. Data keys and wraps go into `store`.
pub fn upgrade(
    events: &[SignedEvent],
    signers: &BTreeMap<InsurerNumber, Signer>,
    params: KdfParams,
    store: &mut KeyStore,
    fill: Fill<'_>,
) -> Result<Upgraded, SealerError> {
    let mut sealers: BTreeMap<InsurerNumber, Sealer> = BTreeMap::new();
    for signed in events {
        if let (
            crate::event::Namespace::Insurer(insurer),
            EventBody::MemberRegistered { member, person, .. },
        ) = (signed.event().namespace, &signed.event().body)
        {
            if let Some(signer) = signers.get(&insurer) {
                sealers
                    .entry(insurer)
                    .or_insert_with(|| Sealer::new(ref_secret_of(signer), params))
                    .note_birth(member, person.birth_date);
            }
        }
    }
    let mut out = Upgraded {
        events: Vec::with_capacity(events.len()),
        ids: BTreeMap::new(),
        kept_clinic_records: 0,
    };
    for signed in events {
        let event = signed.event();
        let insurer = match event.namespace {
            crate::event::Namespace::Insurer(insurer) if signed.schema_version() == 1 => insurer,
            crate::event::Namespace::Clinic(_) if signed.schema_version() == 1 => {
                out.kept_clinic_records += 1;
                out.events.push(signed.clone());
                continue;
            }
            _ => {
                out.events.push(signed.clone());
                continue;
            }
        };
        let signer = signers.get(&insurer).ok_or(SealerError::NoSigner(event.author))?;
        if signer.public() != event.author {
            return Err(SealerError::NoSigner(event.author));
        }
        let sealer =
            sealers.entry(insurer).or_insert_with(|| Sealer::new(ref_secret_of(signer), params));
        let body = sealer.seal_body(&event.body, &out.ids, store, fill)?;
        let sealed = signer
            .sign_sealed(Event { body, ..event.clone() })
            .map_err(|e| SealerError::Event(e.to_string()))?;
        out.ids.insert(signed.id(), sealed.id());
        out.events.push(sealed);
    }
    Ok(out)
}

/// What a store's data keys reveal of the sealed records among `events` (insurer side): per
/// member, the birth date and insured person of its current record — the input a hub's
/// reconciliation re-derives sealed checks with.
pub fn reveal_from<'a>(
    events: impl IntoIterator<Item = &'a SignedEvent>,
    store: &KeyStore,
) -> crate::Reveal {
    let mut records: Vec<(crate::Hlc, EventId, &'a MemberKey, &'a seal::Sealed)> = Vec::new();
    for event in events {
        if let EventBody::MemberSealed { member, sealed }
        | EventBody::DemographicsSealed { member, sealed, .. } = &event.event().body
        {
            records.push((event.event().hlc, event.id(), member, sealed));
        }
    }
    records.sort_by_key(|r| (r.0, r.1));
    let mut reveal = crate::Reveal::default();
    for (_, _, member, sealed) in records {
        let Some(key) = store.data_key(member) else { continue };
        if let Ok(record) = seal::open_member(key, member, sealed) {
            // An erased insured person's birth date, though sealed in the dependant's record,
            // is not used (as at a clinic): the erasure makes it unreadable everywhere.
            reveal.insert(
                member.clone(),
                record.person.birth_date,
                record
                    .insured
                    .filter(|i| !store.is_erased(&i.reference))
                    .map(|i| (i.reference, i.birth_date)),
            );
        }
    }
    reveal
}

/// The reference a hub's sealed ledger names the member with key `key` by: the registration
/// whose record, opened with the data key the hub holds, carries that key. `None` when the
/// ledger holds no sealed record of it (a plaintext ledger names the key itself).
pub fn reference_of<'a>(
    events: impl IntoIterator<Item = &'a SignedEvent>,
    store: &KeyStore,
    key: &crate::MemberKey,
) -> Option<crate::MemberKey> {
    events.into_iter().find_map(|event| match &event.event().body {
        EventBody::MemberSealed { member, sealed } if member.insurer == key.insurer => {
            let data_key = store.data_key(member)?;
            let record = seal::open_member(data_key, member, sealed).ok()?;
            (record.key == *key).then(|| member.clone())
        }
        _ => None,
    })
}
