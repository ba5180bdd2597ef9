//! The eligibility rules: voids and supersessions (a void of a void restores), a member's
//! view at a knowledge cut-off (registration, coverage periods, copay, limit category, card
//! links), and the evaluation of a service date — dependants follow their insured person, the
//! 75th birthday moves a member to the elderly system.

use super::*;

impl Projection {
    /// Whether an event is void at the cut-off: some visible void or supersession targets it
    /// and is not itself void (a void of a void restores the original).
    pub(super) fn is_voided(&self, event: u32, cutoff: Hlc, depth: u32) -> bool {
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

    pub(super) fn visible(&self, hlc: Hlc, event: u32, cutoff: Hlc) -> bool {
        hlc <= cutoff && !self.is_voided(event, cutoff, 0)
    }

    pub(super) fn supersede_conflict(&self, event: u32, cutoff: Hlc) -> Option<Conflict> {
        self.supersede_conflict_for(&self.ids[event as usize], cutoff)
    }

    pub(super) fn supersede_conflict_for(&self, target: &EventId, cutoff: Hlc) -> Option<Conflict> {
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
    pub(super) fn key_of(&self, member: u32) -> Option<MemberKey> {
        decode_compact_key(&self.members[member as usize].key)
    }

    pub(super) fn insurer_of(&self, member: u32) -> Option<InsurerNumber> {
        let bytes = self.members[member as usize].key.get(..4)?;
        Some(InsurerNumber::from_validated(u32::from_le_bytes(bytes.try_into().ok()?)))
    }

    pub(super) fn view(&self, member: u32, cutoff: Hlc, revealed: &Revealed<'_>) -> MemberView {
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
                    let (birth, insured) = match insured {
                        // Sealed: what opening the record revealed, or nothing.
                        SEALED_INSURED => {
                            self.revealed_get(revealed, member).unwrap_or((SEALED_BIRTH, NO_MEMBER))
                        }
                        _ => (birth, insured),
                    };
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
            if !insurer.is_late_stage_elderly() && birth != SEALED_BIRTH {
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

    pub(super) fn evaluate(
        &self,
        member: u32,
        date: Date,
        cutoff: Hlc,
        depth: u32,
        revealed: &Revealed<'_>,
    ) -> (MemberView, Evaluation) {
        let mut view = self.view(member, cutoff, revealed);
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
                    let (insured_view, insured_eval) =
                        self.evaluate(insured, date, cutoff, 1, revealed);
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
    pub(super) fn alive_links(&self, card: u32, cutoff: Hlc) -> Vec<(u32, u32)> {
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

    pub(super) fn pending_declaration(
        &self,
        queries: &[CheckQuery],
        date: Date,
        cutoff: Hlc,
    ) -> Option<u32> {
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
}
