//! The scaled-out hub in the simulator: several hub front-ends (production nodes with
//! `follows_stream`) over a seeded model of the shared log, with clinics moving between them.
//! Faults: the log unavailable for a while (a leader election: publishes fail), acknowledgements
//! that come late, repeats the log keeps past its deduplication window, front-ends that crash
//! (their disks lose what was not synced) and a front-end that lags (it applies a few messages
//! at a time, behind the clinics' cursors). After the faults heal, the laws are checked:
//!
//! 1. every front-end holds the same event at every position (positions are the stream's);
//! 2. every clinic converged with the front-ends, nothing unacknowledged, in sync;
//! 3. nothing a clinic saw acknowledged is missing (invariant 1 of ARCHITECTURE.md).
//!
//! `shikaku sim front-ends --seeds A..B` runs it; the same seed gives the same run. The node
//! code is the product's; only the log (JetStream) is a model — the real one is exercised by
//! `tests/it/jetstream.rs` over real NATS clusters.

use std::collections::{BTreeMap, BTreeSet};

use shikaku_core::{CheckQuery, Date, Namespace, Signer};
use shikaku_gen::Rng;
use shikaku_log::fault::{FaultConfig, FaultDirectory};
use shikaku_node::{
    prepare, prepare_stream, Node, NodeConfig, Output, PeerIdentity, Role, StreamIdentity,
};
use shikaku_protocol::wire::{event_to_wire, FrameSplitter, FRAME_BYTES_MAX};

/// The shared log: messages in sequence order (sequence = index + 1).
#[derive(Default)]
struct Log {
    messages: Vec<Vec<u8>>,
    /// Event id → first sequence holding it.
    ids: BTreeMap<String, u64>,
    available: bool,
}

impl Log {
    /// Appends events unless the log is down; `dedup` off models a repeat past the window.
    fn publish(
        &mut self,
        events: &[shikaku_core::SignedEvent],
        dedup: bool,
    ) -> Result<u64, String> {
        if !self.available {
            return Err("JetStream system temporarily unavailable".into());
        }
        let mut last = 0;
        for e in events {
            let id = e.id().to_string();
            if let Some(seq) = self.ids.get(&id).filter(|_| dedup) {
                last = last.max(*seq);
                continue;
            }
            self.messages.push(event_to_wire(
                e.schema_version(),
                e.canonical_bytes(),
                &e.signature(),
            ));
            let seq = self.messages.len() as u64;
            self.ids.entry(id).or_insert(seq);
            last = seq;
        }
        Ok(last)
    }
}

/// A front-end: its node, disk and publications in flight.
pub struct FrontEnd {
    /// The node.
    pub node: Node<FaultDirectory>,
    disk: FaultDirectory,
    signer: Signer,
    /// Publications not answered yet: (token, events).
    pub publishing: Vec<(u64, Vec<shikaku_core::SignedEvent>)>,
}

/// Front-ends, clinics and the log.
pub struct Model {
    log: Log,
    /// The front-ends.
    pub fronts: Vec<FrontEnd>,
    /// The clinics.
    pub clinics: Vec<Node<FaultDirectory>>,
    clinic_signers: Vec<Signer>,
    /// Per clinic: (front-end, connection).
    pub links: Vec<Option<(usize, u64)>>,
    next_conn: u64,
    /// Simulated time (Unix ms).
    pub now_ms: u64,
    /// The insurer the clinics subscribe to.
    pub insurer: shikaku_core::InsurerNumber,
    member: shikaku_core::MemberKey,
    identity: StreamIdentity,
    /// What happened, for the summary.
    pub stats: Stats,
}

fn front_config() -> NodeConfig {
    let mut config = NodeConfig::new(Role::Hub, "front-end");
    config.follows_stream = true;
    config.batch_events = 128;
    // Small segments, as in `sim run`: preallocating 64 MiB per node costs more than the run.
    config.segment_bytes = 1 << 20;
    config
}

impl Model {
    /// A generated world (200 members) in the log, `fronts` front-ends that have applied
    /// nothing yet, `clinics` clinics of its first insurer, none connected.
    pub fn new(seed: u64, fronts: usize, clinics: usize) -> Model {
        let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(200, seed))
            .expect("the generator's configuration is valid");
        let insurers: Vec<_> = g.insurers.iter().map(|(i, _)| *i).collect();
        let (events, now_ms) = (g.events, g.last_hlc.physical_ms() + 60_000);
        let mut log = Log { available: true, ..Log::default() };
        let _ = log.publish(&events, true);
        let identity = StreamIdentity { name: "SHIKAKU".into(), created_ns: 1 };
        let fronts = (0..fronts)
            .map(|i| {
                let signer = Signer::derived("shikaku model front-end", &[i as u8]);
                let disk = FaultDirectory::new(FaultConfig::default(), 500 + i as u64);
                let mut node = Node::open(disk.clone(), signer.clone(), front_config())
                    .expect("a fresh front-end opens");
                node.note_stream_head(log.messages.len() as u64);
                node.bind_stream(identity.clone()).expect("a fresh ledger binds");
                FrontEnd { node, disk, signer, publishing: Vec::new() }
            })
            .collect();
        let member = events
            .iter()
            .find_map(|e| {
                e.event().body.membership_subject().filter(|m| m.insurer == insurers[0]).cloned()
            })
            .expect("the world has a member of its first insurer");
        let mut model = Model {
            log,
            fronts,
            clinics: Vec::new(),
            clinic_signers: Vec::new(),
            links: Vec::new(),
            next_conn: 1,
            now_ms,
            insurer: insurers[0],
            member,
            identity,
            stats: Stats::default(),
        };
        for i in 0..clinics {
            let signer = Signer::derived("shikaku model clinic", &[i as u8]);
            let mut config = NodeConfig::new(Role::Clinic, &format!("clinic-{i}"));
            config.insurers = [model.insurer].into_iter().collect();
            config.segment_bytes = 1 << 20;
            let disk = FaultDirectory::new(FaultConfig::default(), 900 + i as u64);
            model.clinics.push(Node::open(disk, signer.clone(), config).expect("a clinic opens"));
            model.clinic_signers.push(signer);
            model.links.push(None);
        }
        model
    }

    /// Front-end `f` applies the log up to `upto` messages past what it applied.
    pub fn follow(&mut self, f: usize, upto: usize) -> Result<(), String> {
        let node = &mut self.fronts[f].node;
        let from = node.stream_applied() as usize;
        let to = (from + upto).min(self.log.messages.len());
        if from >= to {
            return Ok(());
        }
        let batch: Vec<(u64, Vec<u8>)> =
            (from..to).map(|i| (i as u64 + 1, self.log.messages[i].clone())).collect();
        // As a delivery says: how many messages are still pending after it.
        node.note_stream_head(self.log.messages.len() as u64);
        node.handle_stream_events(self.now_ms, prepare_stream(batch))
            .map_err(|e| format!("front-end {f} could not apply the log: {e}"))
    }

    /// Connects clinic `c` to front-end `f` (dropping its current link).
    pub fn connect(&mut self, c: usize, f: usize) {
        self.disconnect(c);
        let conn = self.next_conn;
        self.next_conn += 1;
        let clinic = PeerIdentity {
            role: Role::Clinic,
            name: format!("clinic-{c}"),
            node: self.clinic_signers[c].node_id(),
        };
        let hub = PeerIdentity {
            role: Role::Hub,
            name: format!("front-end-{f}"),
            node: self.fronts[f].signer.node_id(),
        };
        self.fronts[f].node.handle_connected(self.now_ms, conn, clinic);
        self.clinics[c].handle_connected(self.now_ms, conn, hub);
        self.links[c] = Some((f, conn));
    }

    /// Drops clinic `c`'s link.
    pub fn disconnect(&mut self, c: usize) {
        if let Some((f, conn)) = self.links[c].take() {
            self.fronts[f].node.handle_disconnected(self.now_ms, conn);
            self.clinics[c].handle_disconnected(self.now_ms, conn);
        }
    }

    /// Moves frames until quiet; collects publications; drops links the nodes closed.
    pub fn pump(&mut self) {
        loop {
            let mut progress = false;
            for c in 0..self.clinics.len() {
                let Some((f, conn)) = self.links[c] else { continue };
                while let Some(frame) = self.clinics[c].poll_transmit(self.now_ms, conn) {
                    deliver(&mut self.fronts[f].node, self.now_ms, conn, &frame);
                    progress = true;
                }
                while let Some(frame) = self.fronts[f].node.poll_transmit(self.now_ms, conn) {
                    deliver(&mut self.clinics[c], self.now_ms, conn, &frame);
                    progress = true;
                }
            }
            let mut closed = Vec::new();
            for (f, front) in self.fronts.iter_mut().enumerate() {
                while let Some(out) = front.node.poll_event() {
                    match out {
                        Output::Publish { token, events } => front.publishing.push((token, events)),
                        Output::Close { conn, .. } => {
                            self.stats.closes += 1;
                            closed.push((f, conn))
                        }
                        Output::Log { .. } => {}
                    }
                }
            }
            for clinic in &mut self.clinics {
                while let Some(out) = clinic.poll_event() {
                    if let Output::Close { conn, .. } = out {
                        closed.push((usize::MAX, conn));
                    }
                }
            }
            for (_, conn) in closed {
                if let Some(c) = self.links.iter().position(|l| l.is_some_and(|(_, k)| k == conn)) {
                    self.disconnect(c);
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Answers front-end `f`'s oldest publication: stored (deduplicated or not) or failed.
    fn answer_publish(&mut self, f: usize, dedup: bool) {
        if self.fronts[f].publishing.is_empty() {
            return;
        }
        let (token, events) = self.fronts[f].publishing.remove(0);
        let result = self.log.publish(&events, dedup);
        match &result {
            Ok(_) => self.stats.published += 1,
            Err(_) => self.stats.publish_failures += 1,
        }
        self.fronts[f].node.handle_published(token, result);
    }

    /// kill -9 of front-end `f`: its disk loses what was not synced, its sessions end, its
    /// publications in flight may or may not have reached the log.
    fn crash(&mut self, f: usize, rng: &mut Rng) -> Result<(), String> {
        self.stats.crashes += 1;
        for (_, events) in std::mem::take(&mut self.fronts[f].publishing) {
            if rng.chance(0.5) {
                let _ = self.log.publish(&events, true);
            }
        }
        self.fronts[f].disk.crash();
        self.restart(f)
    }

    /// Stops front-end `f` cleanly and opens it again from its disk (as a restart of the
    /// process: its clinics' sessions end).
    pub fn restart(&mut self, f: usize) -> Result<(), String> {
        for c in 0..self.clinics.len() {
            if self.links[c].is_some_and(|(g, _)| g == f) {
                self.disconnect(c);
            }
        }
        let front = &mut self.fronts[f];
        front.node = Node::open(front.disk.clone(), front.signer.clone(), front_config())
            .map_err(|e| format!("front-end {f} does not reopen: {e}"))?;
        front.node.note_stream_head(self.log.messages.len() as u64);
        front
            .node
            .bind_stream(self.identity.clone())
            .map_err(|e| format!("front-end {f} refuses its own ledger: {e}"))?;
        Ok(())
    }

    /// Front-end `f`'s disk (to damage it).
    pub fn disk(&self, f: usize) -> &FaultDirectory {
        &self.fronts[f].disk
    }

    fn check(&mut self, c: usize) -> Result<(), String> {
        let date = Date::from_ymd(2026, 11, 20).ok_or("a valid date")?;
        self.stats.checks += 1;
        self.clinics[c]
            .check(self.now_ms, &CheckQuery::Member(self.member.clone()), date)
            .map(|_| ())
            .map_err(|e| format!("clinic {c} could not answer a check: {e}"))
    }

    /// Every front-end's holdings, per namespace.
    fn holdings(&self, f: usize) -> BTreeMap<String, (u64, [u8; 16])> {
        self.fronts[f]
            .node
            .namespaces()
            .into_iter()
            .map(|ns| {
                let acc = self.fronts[f].node.namespace_state(&ns);
                (format!("{ns:?}"), (acc.count(), acc.fingerprint()))
            })
            .collect()
    }
}

/// What a front-end run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Publications the log stored.
    pub published: u64,
    /// Publications that failed (the log unavailable).
    pub publish_failures: u64,
    /// Front-end crashes.
    pub crashes: u64,
    /// Sessions the nodes closed (failed publishes, "catching up", …).
    pub closes: u64,
    /// Checks answered (each recorded).
    pub checks: u64,
    /// Messages in the log at the end (repeats included).
    pub log_messages: u64,
    /// Events each front-end holds at the end.
    pub events: u64,
    /// Clinic records seen acknowledged (all found again at the end).
    pub acknowledged: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} publications stored, {} failed, {} crashes, {} sessions closed, {} checks; log {} messages, front-ends {} events each; {} acknowledged records all held",
            self.published,
            self.publish_failures,
            self.crashes,
            self.closes,
            self.checks,
            self.log_messages,
            self.events,
            self.acknowledged
        )
    }
}

/// One seeded run: 3 front-ends (the third one lags), 3 clinics, `steps` random steps with
/// faults, then healing; `Err` names the law broken and the seed.
pub fn run(seed: u64, steps: usize) -> Result<Stats, String> {
    let mut rng = Rng::new(seed ^ 0x5348_4152_4544_4c47);
    let mut m = Model::new(seed, 3, 3);
    let mut acked_ids: BTreeSet<String> = BTreeSet::new();
    for _ in 0..steps {
        m.now_ms += 200 + rng.below(2_000);
        match rng.below(100) {
            0..=14 => {
                let (c, f) = (rng.below(3) as usize, rng.below(3) as usize);
                m.connect(c, f);
            }
            15..=19 => m.disconnect(rng.below(3) as usize),
            20..=39 => m.check(rng.below(3) as usize)?,
            40..=59 => {
                let f = rng.below(3) as usize;
                // The lagging front-end applies little at a time.
                let upto =
                    if f == 2 { 1 + rng.below(5) as usize } else { 1 + rng.below(400) as usize };
                m.follow(f, upto)?;
            }
            60..=74 => {
                let f = rng.below(3) as usize;
                let dedup = !rng.chance(0.1);
                m.answer_publish(f, dedup);
            }
            75..=79 => m.log.available = !m.log.available,
            80..=82 => {
                let f = rng.below(3) as usize;
                m.crash(f, &mut rng)?;
            }
            _ => {
                for f in 0..3 {
                    m.fronts[f].node.handle_tick(m.now_ms);
                }
                for c in &mut m.clinics {
                    c.handle_tick(m.now_ms);
                }
            }
        }
        m.pump();
        // What a clinic saw acknowledged must never be lost (checked at the end).
        for (c, clinic) in m.clinics.iter().enumerate() {
            if clinic.unacked_own() == 0 {
                let own = Namespace::Clinic(m.clinic_signers[c].node_id());
                for p in 1..clinic.ledger().head() {
                    if let Ok(e) = clinic.ledger().read(p) {
                        if e.event().namespace == own {
                            acked_ids.insert(e.id().to_string());
                        }
                    }
                }
            }
        }
    }
    // Heal: the log comes back, publications are answered, every front-end catches up, every
    // clinic syncs with some front-end.
    m.log.available = true;
    for round in 0..40 {
        m.now_ms += 6_000;
        for f in 0..3 {
            while !m.fronts[f].publishing.is_empty() {
                m.answer_publish(f, true);
            }
            m.follow(f, usize::MAX / 2)?;
            m.fronts[f].node.handle_tick(m.now_ms);
        }
        for c in 0..3 {
            if m.links[c].is_none() {
                m.connect(c, (c + round) % 3);
            }
            m.clinics[c].handle_tick(m.now_ms);
        }
        m.pump();
        let quiet = m.fronts.iter().all(|f| f.publishing.is_empty())
            && m.clinics.iter().all(|c| c.in_sync() && c.unacked_own() == 0)
            && m.fronts.iter().all(|f| f.node.stream_applied() == m.log.messages.len() as u64);
        if quiet {
            break;
        }
    }
    // Law 1: every front-end holds the same events at the same positions.
    let first = m.holdings(0);
    let len = m.fronts[0].node.ledger().len();
    for f in 1..3 {
        if m.holdings(f) != first || m.fronts[f].node.ledger().len() != len {
            return Err(format!(
                "seed {seed}: law 1: front-end {f} holds other events than front-end 0"
            ));
        }
        for p in 1..m.fronts[0].node.ledger().head() {
            let a = m.fronts[0].node.ledger().read(p).map(|e| e.id()).ok();
            let b = m.fronts[f].node.ledger().read(p).map(|e| e.id()).ok();
            if a != b {
                return Err(format!("seed {seed}: law 1: position {p} differs on front-end {f}"));
            }
        }
    }
    // Law 2: every clinic converged, nothing unacknowledged, in sync.
    for (c, clinic) in m.clinics.iter().enumerate() {
        if !clinic.in_sync() || clinic.unacked_own() != 0 {
            return Err(format!(
                "seed {seed}: law 2: clinic {c} after healing: in sync {}, {} records unacknowledged",
                clinic.in_sync(),
                clinic.unacked_own()
            ));
        }
        for ns in [Namespace::Insurer(m.insurer), Namespace::Clinic(m.clinic_signers[c].node_id())]
        {
            if clinic.namespace_state(&ns) != m.fronts[0].node.namespace_state(&ns) {
                return Err(format!(
                    "seed {seed}: law 2: clinic {c} differs from the front-ends in {ns:?}"
                ));
            }
        }
    }
    // Law 3: nothing a clinic saw acknowledged is missing from the front-ends.
    for id in &acked_ids {
        let held = id
            .parse::<shikaku_core::EventId>()
            .ok()
            .and_then(|id| m.fronts[0].node.ledger().position_of(&id));
        if held.is_none() {
            return Err(format!("seed {seed}: law 3: acknowledged record {id} lost"));
        }
    }
    m.stats.log_messages = m.log.messages.len() as u64;
    m.stats.events = len;
    m.stats.acknowledged = acked_ids.len() as u64;
    Ok(m.stats)
}

/// Splits a frame and hands it to the node the way the runtime does.
fn deliver(node: &mut Node<FaultDirectory>, now_ms: u64, conn: u64, frame: &[u8]) {
    let mut splitter = FrameSplitter::new(FRAME_BYTES_MAX);
    splitter.push(frame);
    match splitter.next_frame() {
        Ok(Some(body)) => node.handle_inbound(now_ms, conn, prepare(&body, now_ms)),
        Ok(None) => {}
        Err(e) => node.handle_stream_error(conn, &e),
    }
}
