//! The projection digest (version 2, `protocol/LOG-FORMAT.md`): a hash of the state computed
//! from the set of events folded, equal on every node that holds the same events.

use super::*;

impl Projection {
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
                    FactKind::Registered { birth, insured: SEALED_INSURED } => {
                        (0, i64::from(birth.0), 2)
                    }
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
