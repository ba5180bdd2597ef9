//! What an insurer asks of the fold after the fact: open conflicts, the checks an event
//! decided, and the checks that used a card link later revoked as a wrong-person linkage.

use super::*;

impl Projection {
    /// Every conflict visible at the cut-off, across all members, sorted.
    pub fn conflicts(&self, as_of: Hlc) -> Vec<Conflict> {
        let mut all: BTreeSet<Conflict> = BTreeSet::new();
        for member in 0..self.members.len() as u32 {
            all.extend(self.view(member, as_of, &Revealed::default()).conflicts);
        }
        for target in self.voids.keys() {
            all.extend(self.supersede_conflict_for(target, as_of));
        }
        all.into_iter().collect()
    }

    /// The events that carry a member's identity (registration and demographics changes,
    /// sealed or not), visible at the cut-off, in record order: the last one that opens is
    /// the member's current record.
    pub fn identity_events(&self, member: &MemberKey, as_of: Hlc) -> Vec<EventId> {
        let Some(m) = self.find_member(member) else { return Vec::new() };
        self.members[m as usize]
            .facts
            .iter()
            .filter(|f| matches!(f.kind, FactKind::Registered { .. } | FactKind::Demographics))
            .filter(|f| self.visible(f.hlc, f.event, as_of))
            .map(|f| self.ids[f.event as usize])
            .collect()
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
}
