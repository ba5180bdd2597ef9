//! Invariant checkers (ARCHITECTURE.md, "The system's invariants"), run continuously during a simulation and at quiescence.
//!
//! 1. No acknowledged event is lost: after every restart and at the end, every event a node
//!    acknowledged (stored durably) is still there — media damage (bit flips, misdirected
//!    writes) excepted on clinics, where such events must come back from the hub by repair.
//! 2. Convergence: at quiescence every clinic holds exactly the hub's events of its namespaces
//!    and the same projection digest as a fold of the hub's events of those namespaces.
//! 3. Every answer equals the projection of the events the node held at that moment (a second
//!    projection fed from the ledger), and its freshness is true (no "0 s stale" answer after
//!    the clinic has been cut off for longer than the connection timeout).
//! 4. Nothing unverifiable is served: every event a ledger returns re-verifies.
//! 5. Namespace isolation: a clinic holds only its own namespace and its insurers'.

use std::collections::{BTreeMap, BTreeSet};

use shikaku_core::{
    Answer, CheckQuery, Date, EventId, Freshness, Hlc, Namespace, Projection, Replication,
    SignedEvent,
};
use shikaku_log::fault::FaultDirectory;
use shikaku_node::Node;

use crate::run::Who;

/// A violated invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time.
    pub at_ms: u64,
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

/// What the checker needs of a clinic at quiescence.
#[derive(Debug)]
pub struct ClinicView<'a> {
    /// The node, if up.
    pub node: Option<&'a Node<FaultDirectory>>,
    /// Its own namespace and its insurers'.
    pub namespaces: Vec<Namespace>,
}

/// Continuous and final checks.
#[derive(Debug, Default)]
pub struct Checker {
    acked: BTreeMap<Who, BTreeSet<EventId>>,
    checks: Vec<(usize, CheckQuery, Date, Answer, shikaku_core::Reveal)>,
    violations: Vec<Violation>,
    answers_checked: u64,
    lost_to_media: u64,
    /// Nodes whose disk may lie about fsync: what they lose in a crash is counted, not a
    /// violation (the hub's copy, if any, comes back by repair).
    lying: BTreeSet<Who>,
    lost_to_lying_disk: u64,
    contradicted: Option<(u64, u64)>,
}

const DETECT_SLACK_MS: u64 = 15_000;

impl Checker {
    /// Records a violation (the first per invariant is kept with details; all are counted).
    pub fn violation(&mut self, at_ms: u64, invariant: &'static str, detail: String) {
        if self.violations.len() < 50 {
            self.violations.push(Violation { at_ms, invariant, detail });
        }
    }

    /// Violations so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Declares that `who`'s disk may lie about fsync.
    pub fn disk_may_lie(&mut self, who: Who) {
        self.lying.insert(who);
    }

    /// `who` stored `event` durably.
    pub fn acknowledged(&mut self, who: Who, event: &SignedEvent) {
        self.acked.entry(who).or_default().insert(event.id());
    }

    /// After `who` restarted: everything it acknowledged must still be there, except what the
    /// ledger reports damaged on a clinic (re-fetched later; the end checks that).
    pub fn after_restart(&mut self, at_ms: u64, who: Who, node: Option<&Node<FaultDirectory>>) {
        let Some(node) = node else { return };
        let damaged = !node.ledger().recovery().damaged.is_empty();
        let Some(acked) = self.acked.get(&who) else { return };
        let missing: Vec<EventId> =
            acked.iter().filter(|id| node.ledger().position_of(id).is_none()).copied().collect();
        if missing.is_empty() {
            return;
        }
        if damaged && matches!(who, Who::Clinic(_)) {
            return;
        }
        if self.lying.contains(&who) {
            self.lost_to_lying_disk += missing.len() as u64;
            return;
        }
        self.violation(
            at_ms,
            "no acknowledged event is lost",
            format!(
                "{who:?} lost {} acknowledged events across a crash (first {})",
                missing.len(),
                missing[0]
            ),
        );
    }

    /// A check was answered: compare with the reference projection and the link's truth.
    pub fn answer(
        &mut self,
        at_ms: u64,
        clinic: usize,
        answer: &Answer,
        reference: &Answer,
        partitioned_for_ms: Option<u64>,
    ) {
        self.answers_checked += 1;
        if answer.hash() != reference.hash() {
            self.violation(
                at_ms,
                "answers equal the projection of the events held",
                format!(
                    "clinic {clinic}: node answered {:?}, its ledger's events give {:?}",
                    answer.code, reference.code
                ),
            );
        }
        if answer.knowledge.staleness_s == Some(0)
            && partitioned_for_ms.is_some_and(|p| p > DETECT_SLACK_MS)
        {
            self.violation(
                at_ms,
                "freshness is true",
                format!(
                    "clinic {clinic} claimed 0 s staleness while cut off for {} s",
                    partitioned_for_ms.unwrap_or(0) / 1000
                ),
            );
        }
    }

    /// Keeps a check for the report.
    pub fn record_check(
        &mut self,
        clinic: usize,
        query: CheckQuery,
        date: Date,
        answer: Answer,
        reveal: shikaku_core::Reveal,
    ) {
        self.checks.push((clinic, query, date, answer, reveal));
    }

    /// The end of the liveness phase.
    pub fn at_quiescence(
        &mut self,
        at_ms: u64,
        hub: Option<&Node<FaultDirectory>>,
        clinics: &[ClinicView<'_>],
    ) {
        let Some(hub) = hub else {
            self.violation(at_ms, "liveness", "the hub is not running at the end".into());
            return;
        };
        // 1, for the hub; 4, for the hub.
        if let Some(acked) = self.acked.get(&Who::Hub) {
            let missing = acked.iter().filter(|id| hub.ledger().position_of(id).is_none()).count();
            if missing > 0 {
                self.violation(
                    at_ms,
                    "no acknowledged event is lost",
                    format!("the hub lacks {missing} events it acknowledged"),
                );
            }
        }
        let hub_events = self.served(at_ms, "hub", hub);
        for (i, view) in clinics.iter().enumerate() {
            let Some(node) = view.node else {
                self.violation(at_ms, "liveness", format!("clinic {i} is not running at the end"));
                continue;
            };
            // 5. Namespace isolation.
            for ns in node.namespaces() {
                if !view.namespaces.contains(&ns) {
                    self.violation(
                        at_ms,
                        "clinics never receive another namespace",
                        format!("clinic {i} holds {ns:?}"),
                    );
                }
            }
            // 2. Convergence.
            if !node.in_sync() {
                self.violation(
                    at_ms,
                    "liveness: converged after healing",
                    format!("clinic {i} is not in sync with the hub"),
                );
            }
            for ns in &view.namespaces {
                let (a, b) = (node.namespace_state(ns), hub.namespace_state(ns));
                if a != b {
                    self.violation(
                        at_ms,
                        "event sets converge",
                        format!(
                            "clinic {i} holds {} events of {ns:?}, the hub {}",
                            a.count(),
                            b.count()
                        ),
                    );
                }
            }
            let insurers = view.namespaces.iter().filter_map(|ns| match ns {
                Namespace::Insurer(i) => Some(*i),
                Namespace::Clinic(_) => None,
            });
            let mut truth = Projection::new(Replication::Insurers(insurers.collect()));
            for (_, e) in &hub_events {
                if view.namespaces.contains(&e.event().namespace) {
                    truth.apply(e);
                }
            }
            if truth.digest() != node.projection().digest() {
                self.violation(
                    at_ms,
                    "projection digests converge",
                    format!(
                        "clinic {i}'s projection digest differs from a fold of the hub's events"
                    ),
                );
            }
            // 1, for the clinic (its own events must be at the clinic and at the hub).
            if let Some(acked) = self.acked.get(&Who::Clinic(i)) {
                let mut missing = 0;
                for id in acked {
                    let here = node.ledger().position_of(id).is_some();
                    let at_hub = hub.ledger().position_of(id).is_some();
                    if !here && !at_hub {
                        // Destroyed by media damage before it reached the hub.
                        self.lost_to_media += 1;
                    } else if !here {
                        missing += 1;
                    }
                }
                if missing > 0 {
                    self.violation(
                        at_ms,
                        "no acknowledged event is lost",
                        format!(
                            "clinic {i} lacks {missing} events it acknowledged (the hub has them)"
                        ),
                    );
                }
            }
            // 4.
            self.served(at_ms, &format!("clinic {i}"), node);
        }
        // Offline answers later contradicted by the converged truth.
        let converged = hub.projection();
        let mut contradicted = 0;
        let mut offline = 0;
        for (_, query, date, answer, reveal) in &self.checks {
            if answer.knowledge.staleness_s == Some(0) {
                continue;
            }
            offline += 1;
            let truth =
                converged.check_revealed(query, *date, Hlc(u64::MAX), Freshness::default(), reveal);
            if answer.code != shikaku_core::AnswerCode::Unknown
                && (truth.code != answer.code || truth.copay_tenths != answer.copay_tenths)
            {
                contradicted += 1;
            }
        }
        self.contradicted = Some((contradicted, offline));
    }

    /// Every event the ledger serves, each re-verified; positions it refuses to serve
    /// (damage found on open and since re-fetched) are skipped — refusing is correct.
    fn served(
        &mut self,
        at_ms: u64,
        who: &str,
        node: &Node<FaultDirectory>,
    ) -> Vec<(u64, SignedEvent)> {
        let events: Vec<(u64, SignedEvent)> = (1..node.ledger().head())
            .filter_map(|p| node.ledger().read(p).ok().map(|e| (p, e)))
            .collect();
        let unverified: Vec<_> =
            events.iter().filter_map(|(_, e)| e.clone().recheck().ok()).collect();
        let good = shikaku_core::verify_all(unverified).into_iter().filter(Result::is_ok).count();
        if good != events.len() {
            self.violation(
                at_ms,
                "nothing unverifiable is served",
                format!(
                    "{who}: {} of {} served events do not verify",
                    events.len() - good,
                    events.len()
                ),
            );
        }
        events
    }

    /// Report lines.
    pub fn report(&self, staleness: &[u64]) -> Vec<String> {
        let mut s = staleness.to_vec();
        s.sort_unstable();
        let pct =
            |p: f64| s.get(((s.len().saturating_sub(1)) as f64 * p) as usize).copied().unwrap_or(0);
        let mut lines = vec![format!(
            "answers: {} checked against the reference projection; staleness p50 {} s, p90 {} s, p99 {} s, max {} s",
            self.answers_checked,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            s.last().copied().unwrap_or(0)
        )];
        if let Some((contradicted, offline)) = self.contradicted {
            lines.push(format!("offline answers later contradicted by the converged truth: {contradicted} of {offline}"));
        }
        if self.lost_to_lying_disk > 0 {
            lines.push(format!("acknowledged events lost to a disk that lied about fsync (then re-fetched where the hub had them): {}", self.lost_to_lying_disk));
        }
        if self.lost_to_media > 0 {
            lines.push(format!(
                "own events destroyed by media damage before reaching the hub: {}",
                self.lost_to_media
            ));
        }
        lines
    }
}
