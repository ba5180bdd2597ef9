//! Answering checks by member key or by card, with the knowledge and conflicts the answer
//! carries.

use super::*;

impl Projection {
    /// Answers a check: is the person behind `query` covered on `service_date`, as known at
    /// record time `as_of`? `freshness` is the caller's knowledge of its own sync state.
    pub fn check(
        &self,
        query: &CheckQuery,
        service_date: Date,
        as_of: Hlc,
        freshness: Freshness,
    ) -> Answer {
        self.check_revealed(query, service_date, as_of, freshness, &Reveal::default())
    }

    /// [`Projection::check`] with what opening sealed records revealed (schema 2): the birth
    /// dates and insured persons the rules need. Members not revealed are answered from their
    /// pseudonymous facts alone.
    pub fn check_revealed(
        &self,
        query: &CheckQuery,
        service_date: Date,
        as_of: Hlc,
        freshness: Freshness,
        reveal: &Reveal,
    ) -> Answer {
        let revealed = Revealed {
            reveal: (!reveal.members.is_empty()).then_some(reveal),
            insured_births: reveal
                .members
                .values()
                .filter_map(|(_, insured)| insured.clone())
                .collect(),
        };
        let revealed = &revealed;
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
                self.check_member(key, service_date, as_of, &mut answer, &mut decided, revealed)
            }
            CheckQuery::Card(card) => {
                self.check_card(card, service_date, as_of, &mut answer, &mut decided, revealed)
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

    pub(super) fn fill(&self, answer: &mut Answer, member: u32, eval: &Evaluation) {
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

    pub(super) fn check_member(
        &self,
        key: &MemberKey,
        date: Date,
        cutoff: Hlc,
        answer: &mut Answer,
        decided: &mut Vec<u32>,
        revealed: &Revealed<'_>,
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
        let (view, eval) = self.evaluate(member, date, cutoff, 0, revealed);
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
                let (_, other_eval) = self.evaluate(other, date, cutoff, 0, revealed);
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

    pub(super) fn check_card(
        &self,
        token: &CardToken,
        date: Date,
        cutoff: Hlc,
        answer: &mut Answer,
        decided: &mut Vec<u32>,
        revealed: &Revealed<'_>,
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
            let (_, eval) = self.evaluate(member, date, cutoff, 0, revealed);
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
}
