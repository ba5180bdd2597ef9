//! The workload's checks: reception asks a clinic about one of its insurers' members or cards;
//! every answer is checked against the reference projection of what the clinic holds.

use super::*;

impl Sim {
    pub(super) fn check(&mut self, i: usize) {
        let insurers = self.cstate[i].insurers.clone();
        let work = &mut self.work;
        // Mostly members of subscribed insurers; sometimes a walk-in from elsewhere.
        let insurer = if work.chance(0.9) {
            insurers[work.below(insurers.len() as u64) as usize]
        } else {
            let all: Vec<&InsurerNumber> = self.members.keys().collect();
            *all[work.below(all.len() as u64) as usize]
        };
        let Some(list) = self.members.get(&insurer) else { return };
        let member = list[work.below(list.len() as u64) as usize].clone();
        let date =
            Date(Date::from_ymd(2025, 4, 1).map_or(20_179, |d| d.0) + work.below(570) as i32);
        let query = CheckQuery::Member(member.clone());
        let site = &mut self.clinics[i];
        let local = site.clock.local(self.now);
        let Some(node) = site.node.as_mut() else { return };
        let freshness: Freshness = node.freshness(local);
        let online = node.in_sync();
        let damage_open = self.cstate[i].damage_open;
        // A sealed world: reception presents the member key and the birth date; the answer
        // and the record name the member by reference, and the reference projection is asked
        // the same pseudonymous query with what this clinic could open.
        let sealed = self.sealed.as_ref().and_then(|w| w.people.get(&member));
        let (answer, query, reveal) = match sealed {
            Some((birth, _, reveal)) => {
                let presented =
                    shikaku_core::keystore::Presented::Key { key: member.clone(), birth: *birth };
                match node.check_presented(local, &[(presented, date)]) {
                    Ok(mut answered) => match answered.pop() {
                        Some(p) => {
                            let opened =
                                matches!(p.member_data, shikaku_node::MemberData::Opened(_));
                            let query = p.answer.query.clone();
                            (
                                p.answer,
                                query,
                                if opened { reveal.clone() } else { Default::default() },
                            )
                        }
                        None => return,
                    },
                    Err(e) => {
                        self.note(format!("clinic {i} check failed: {e}"));
                        return;
                    }
                }
            }
            None => match node.check(local, &query, date) {
                Ok(a) => (a, query, shikaku_core::Reveal::default()),
                Err(e) => {
                    self.note(format!("clinic {i} check failed: {e}"));
                    return;
                }
            },
        };
        let as_of = answer.knowledge.as_of;
        let reference: Answer =
            site.reference.check_revealed(&query, date, as_of, freshness, &reveal);
        self.stats.checks += 1;
        self.asked.push((self.timeline.len(), query.clone(), date, answer.code));
        self.timeline.push((
            self.now,
            Who::Clinic(i),
            Mark::Check { staleness_s: answer.knowledge.staleness_s, online, contradicted: false },
        ));
        if !online {
            self.stats.offline_checks += 1;
        }
        if let Some(s) = answer.knowledge.staleness_s {
            self.stats.staleness_s.push(s);
        }
        let partitioned_for =
            self.cstate[i].partitioned_since.map(|since| self.now.saturating_sub(since));
        self.checker.answer(self.now, i, &answer, &reference, partitioned_for);
        if damage_open && answer.damage.is_none() {
            self.checker.violation(
                self.now,
                "no answer from a projection with unreported damage",
                format!(
                    "clinic {i} answered {:?} from a damaged ledger without saying so",
                    answer.code
                ),
            );
        }
        // A patient told "invalid" who says they just changed jobs: reception records a
        // self-declaration (pushed to the hub like every clinic event).
        if matches!(
            answer.code,
            shikaku_core::AnswerCode::Invalid | shikaku_core::AnswerCode::InvalidNewerExists
        ) && self.work.chance(0.5)
        {
            let body = shikaku_core::EventBody::SelfDeclarationRecorded {
                query: query.clone(),
                declared_insurer: None,
                declared_start: date,
            };
            let local = self.clinics[i].clock.local(self.now);
            if let Some(node) = self.clinics[i].node.as_mut() {
                let schema = node.record_query(&query).1;
                match node.record_many_as(local, vec![(schema, body)]) {
                    Ok(_) => self.stats.declarations += 1,
                    Err(e) => {
                        self.note(format!("clinic {i} could not record a self-declaration: {e}"))
                    }
                }
            }
        }
        self.checker.record_check(i, query, date, answer, reveal);
        self.fold_new(Who::Clinic(i));
    }
}
