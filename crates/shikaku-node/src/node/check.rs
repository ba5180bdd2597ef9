//! Checks: answers from the projection with the node's freshness, each recorded as the
//! clinic's own `check_performed` event — checks that arrive together in one durable write —
//! and the clinic's other records (declarations, consents).

use super::*;

impl<D: Directory> Node<D> {
    /// Clinic: answers a check locally and records it in the clinic's namespace (access audit);
    /// the record is pushed to the hub while connected.
    pub fn check(
        &mut self,
        now_ms: u64,
        query: &CheckQuery,
        service_date: Date,
    ) -> Result<Answer, NodeError> {
        let mut answers = self.check_many(now_ms, &[(query.clone(), service_date)])?;
        answers.pop().ok_or_else(|| NodeError::Role("no answer".into()))
    }

    /// Clinic: answers checks that arrived together and records them with one durable write
    /// (group commit): every answer is given from the same knowledge, and none is returned
    /// before all the records are durable. Fails as a whole if the records cannot be stored.
    pub fn check_many(
        &mut self,
        now_ms: u64,
        queries: &[(CheckQuery, Date)],
    ) -> Result<Vec<Answer>, NodeError> {
        if self.config.role != Role::Clinic {
            return Err(NodeError::Role("checks are answered by clinic nodes".into()));
        }
        let online = self.in_sync();
        let freshness = self.freshness(now_ms);
        let as_of = Hlc::end_of_ms(now_ms).max(self.clock.last());
        #[cfg(feature = "planted-bugs")]
        let cutoff = if self.config.planted == Some(PlantedBug::CheckIgnoresKnowledge) {
            Hlc(0)
        } else {
            as_of
        };
        #[cfg(not(feature = "planted-bugs"))]
        let cutoff = as_of;
        let mut answers = Vec::with_capacity(queries.len());
        let mut bodies = Vec::with_capacity(queries.len());
        for (query, service_date) in queries {
            let mut answer = self.projection.check(query, *service_date, cutoff, freshness);
            answer.knowledge.as_of = as_of;
            bodies.push(EventBody::CheckPerformed {
                query: query.clone(),
                service_date: *service_date,
                mode: if online { CheckMode::Online } else { CheckMode::Offline },
                knowledge: as_of,
                hub_position: freshness.hub_position.unwrap_or(0),
                code: answer.code,
                answer_hash: AnswerHash(answer.hash().0),
                decided_by: answer.decided_by.clone(),
            });
            answers.push(answer);
        }
        self.record_many(now_ms, bodies)?;
        for answer in &answers {
            self.counters.checks += 1;
            *self.counters.checks_by.entry((answer.code, online)).or_default() += 1;
        }
        Ok(answers)
    }

    pub(super) fn max_acked(&self) -> u64 {
        self.conns
            .values()
            .filter_map(|c| match &c.state {
                SessionState::Clinic(s) => Some(s.acked),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether this node holds anything about the card or member `query` names: an event of
    /// its stream (the member's facts, this clinic's checks and declarations by that card or
    /// key) or, for a card, a link to a member.
    pub fn has_record_of(&self, query: &CheckQuery) -> Result<bool, NodeError> {
        if self.log.stream_version(&shikaku_log::stream_of_query(query))? > 0 {
            return Ok(true);
        }
        Ok(matches!(query, CheckQuery::Card(_)) && self.member_of_card(query).is_some())
    }

    /// The member a query names, when it names exactly one this node knows: a member key this
    /// node has a record of, or the member a card is linked to (none for a card linked to
    /// several members).
    pub fn member_of(&self, query: &CheckQuery) -> Option<MemberKey> {
        match query {
            CheckQuery::Member(key) => {
                self.has_record_of(query).ok().filter(|known| *known).map(|_| key.clone())
            }
            CheckQuery::Card(_) => self.member_of_card(query),
        }
    }

    pub(super) fn member_of_card(&self, query: &CheckQuery) -> Option<MemberKey> {
        // Links do not depend on the service date: any date answers which member it names.
        let answer = self.projection.check(query, Date(0), Hlc(u64::MAX), Freshness::default());
        match answer.code {
            AnswerCode::MultipleMatches => None,
            _ => answer.member,
        }
    }

    /// Signs and stores an event in this node's own namespace (clinic), e.g. a
    /// self-declaration; it is pushed to the hub like check records.
    pub fn record(&mut self, now_ms: u64, body: EventBody) -> Result<SignedEvent, NodeError> {
        let mut events = self.record_many(now_ms, vec![body])?;
        events.pop().ok_or_else(|| NodeError::Role("nothing recorded".into()))
    }

    /// Records several events in the clinic's namespace with one durable write, numbered
    /// consecutively.
    pub fn record_many(
        &mut self,
        now_ms: u64,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<SignedEvent>, NodeError> {
        let me = self.signer.node_id();
        let first = (self.own.keys().next_back().copied().unwrap_or(0).max(self.max_acked()) + 1)
            .max(self.seq_floor);
        debug_assert!(
            self.own.keys().next_back().is_none_or(|held| first > *held),
            "an origin never numbers two events alike"
        );
        let mut events = Vec::with_capacity(bodies.len());
        for (offset, body) in bodies.into_iter().enumerate() {
            let hlc = self.clock.tick(now_ms.saturating_sub(self.ahead_of_hub_ms))?;
            let event = Event {
                namespace: Namespace::Clinic(me),
                origin: me,
                origin_seq: first + offset as u64,
                hlc,
                author: self.signer.public(),
                body,
            };
            events.push(self.signer.sign(event)?);
        }
        self.store(now_ms, &events)?;
        self.counters.record_commits += 1;
        Ok(events)
    }
}
