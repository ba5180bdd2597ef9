//! The fold's storage: members, cards and events interned in tables, facts kept in `(hlc,
//! event id)` order per member, and [`Projection::apply`] — the same state whatever order the
//! events arrive in (duplicates by id count once).

use super::*;

impl Projection {
    pub(super) fn find_member(&self, key: &MemberKey) -> Option<u32> {
        let key = CompactKey::new(key);
        let bytes = key.as_slice();
        self.member_table
            .find(hash_bytes(bytes), |&m| *self.members[m as usize].key == *bytes)
            .copied()
    }

    pub(super) fn member_index(&mut self, key: &MemberKey) -> u32 {
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

    pub(super) fn find_card(&self, token: &CardToken) -> Option<u32> {
        let hash = hash_bytes(&token.0);
        self.card_table.find(hash, |&c| self.cards[c as usize].token == *token).copied()
    }

    pub(super) fn card_index(&mut self, token: &CardToken) -> u32 {
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

    pub(super) fn order(&self, hlc: Hlc, event: u32) -> (Hlc, &EventId) {
        (hlc, &self.ids[event as usize])
    }

    /// Position of `(hlc, id)` in a list sorted by the ordering key: `Ok` when present.
    pub(super) fn search<T>(
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

    pub(super) fn push_id(&mut self, id: EventId) -> u32 {
        self.ids.push(id);
        (self.ids.len() - 1) as u32
    }

    /// Inserts a member fact unless the event is already there; returns the new event index.
    pub(super) fn insert_member_fact(
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
        debug_assert!(
            position == 0 || facts[position - 1].hlc <= hlc,
            "a member's facts stay in (hlc, id) order"
        );
        Some(event)
    }

    pub(super) fn insert_marker(
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
            EventBody::MemberSealed { member, .. } => {
                // Birth date and relationship are sealed: the rules that need them run when
                // the record is opened at query time (`Reveal`).
                let m = self.member_index(member);
                let kind = FactKind::Registered { birth: SEALED_BIRTH, insured: SEALED_INSURED };
                self.insert_member_fact(m, hlc, id, kind).is_some()
            }
            EventBody::DemographicsChanged { member, .. }
            | EventBody::DemographicsSealed { member, .. }
            | EventBody::MemberErased { member, .. } => {
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

    pub(super) fn apply_link(
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
}
