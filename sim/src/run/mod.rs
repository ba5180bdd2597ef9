//! The simulation loop: a time-ordered event queue over one hub and N clinics — [`run`] sets
//! the world up and drives it through the safety and liveness phases. Split along its seams:
//! `config` (faults and the run's shape), `schedule` (the event queue and what each event
//! does), `network` (links), `world` (nodes, crashes, restarts), `workload` (checks).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use shikaku_core::{
    Answer, AnswerCode, CheckQuery, Date, Freshness, Hlc, InsurerNumber, MemberKey, Namespace,
    Projection, Replication, SignedEvent, Signer,
};
use shikaku_gen::Rng;
use shikaku_log::fault::{FaultConfig, FaultDirectory};
use shikaku_node::{prepare, Node, NodeConfig, Output, PeerIdentity, Role};
use shikaku_protocol::wire::FrameSplitter;

use crate::check::{Checker, Violation};

mod config;
mod network;
mod schedule;
mod workload;
mod world;

pub use config::*;
use schedule::Ev;

/// Something to draw on the report's timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    /// Cut off from the hub until this simulated time.
    Partition {
        /// End.
        until_ms: u64,
    },
    /// The node crashed.
    Crash,
    /// A check: its staleness and whether it was answered in sync.
    Check {
        /// Seconds since the last hub sync (`None` = never synced).
        staleness_s: Option<u64>,
        /// In sync when answered.
        online: bool,
        /// The converged truth at the end of the run answers this check differently (valid
        /// against not valid, or an `unknown` that is valid): the insurer would have to act.
        contradicted: bool,
    },
}

/// Marks the checks the hub's converged projection answers differently at the end of the run.
fn mark_contradicted(sim: &mut Sim) {
    let Some(hub) = sim.hub.node.as_ref() else { return };
    let truth = hub.projection();
    for (index, query, date, code) in &sim.asked {
        let now = truth.check(query, *date, Hlc(u64::MAX), Freshness::default()).code;
        let contradicted = match (code.covered(), now.covered()) {
            (Some(then), Some(now)) => then != now,
            (None, Some(true)) => *code == AnswerCode::Unknown,
            _ => false,
        };
        if let Some((_, _, Mark::Check { contradicted: mark, .. })) = sim.timeline.get_mut(*index) {
            *mark = contradicted;
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Timeline marks: (simulated ms, node, mark).
    pub timeline: Vec<(u64, Who, Mark)>,
    /// When the faults were healed.
    pub healed_at_ms: u64,
    /// Clinics in the run.
    pub clinics: usize,
    /// The report, line by line (deterministic for a seed).
    pub lines: Vec<String>,
    /// Invariant violations found (empty = the run passed).
    pub violations: Vec<Violation>,
    /// Simulated milliseconds covered.
    pub simulated_ms: u64,
    /// The hub's ledger at the end, with log positions (for the insurer's reconciliation);
    /// empty unless [`SimConfig::keep_hub_ledger`].
    pub hub_events: Vec<(u64, SignedEvent)>,
    /// The clinics' names by node id.
    pub clinic_names: BTreeMap<shikaku_core::NodeId, String>,
    /// A sealed run with the hub's ledger kept: what the insurers' data keys reveal (the
    /// reconciliation re-derives sealed checks with it).
    pub hub_reveal: Option<shikaku_core::Reveal>,
}

/// Which node: the hub or a clinic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    /// The hub.
    Hub,
    /// Clinic `i`.
    Clinic(usize),
}

#[derive(Debug, Clone, Copy)]
struct NodeClock {
    skew_ms: i64,
    drift_ppm: i64,
    jumps_ms: i64,
}

impl NodeClock {
    fn local(&self, now: u64) -> u64 {
        let drift = (now as i128 * self.drift_ppm as i128 / 1_000_000) as i64;
        (now as i64 + self.skew_ms + drift + self.jumps_ms).max(0) as u64
    }
}

#[derive(Debug)]
struct Link {
    conn: u64,
    /// When the session started (a session that lasted resets the reconnect backoff).
    since: u64,
    /// Next time each direction is free (bandwidth), and the last arrival (in-order stream).
    up_free: u64,
    down_free: u64,
    up_last: u64,
    down_last: u64,
}

struct Site {
    signer: Signer,
    config: NodeConfig,
    disk: FaultDirectory,
    node: Option<Node<FaultDirectory>>,
    clock: NodeClock,
    /// A second projection fed from the ledger right after each append: the reference the
    /// checker compares every answer with.
    reference: Projection,
    folded: u64,
}

struct ClinicState {
    link: Option<Link>,
    /// Partitioned directions, until when.
    cut_up: Option<u64>,
    cut_down: Option<u64>,
    partitioned_since: Option<u64>,
    /// The clinic's ledger reported damage when it was last opened, and no session has been
    /// in sync since: every answer must carry the damage (invariant 7).
    damage_open: bool,
    backoff_ms: u64,
    connect_pending: bool,
    insurers: Vec<InsurerNumber>,
}

/// Per-run counters printed in the summary.
#[derive(Debug, Default, Clone)]
struct Stats {
    frames: u64,
    bytes: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    partitions: u64,
    crashes: u64,
    restarts: u64,
    bit_flips: u64,
    disk_full: u64,
    clock_jumps: u64,
    sessions: u64,
    published: u64,
    checks: u64,
    offline_checks: u64,
    declarations: u64,
    staleness_s: Vec<u64>,
    refusals: u64,
}

const DETECT_MS: u64 = 10_000;
const TICK_MS: u64 = 500;
const DAY_MS: f64 = 86_400_000.0;

struct Sim {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    net: Rng,
    disk_rng: Rng,
    clock_rng: Rng,
    work: Rng,
    hub: Site,
    clinics: Vec<Site>,
    cstate: Vec<ClinicState>,
    next_conn: u64,
    /// Workload: batches of events to publish, at offsets.
    batches: Vec<Vec<SignedEvent>>,
    members: BTreeMap<InsurerNumber, Vec<MemberKey>>,
    healed: bool,
    stats: Stats,
    checker: Checker,
    trace: Vec<String>,
    base_ms: u64,
    timeline: Vec<(u64, Who, Mark)>,
    /// Every check's question and answer code, by its index in `timeline`, to mark the ones
    /// the converged truth contradicts when the run ends.
    asked: Vec<(usize, CheckQuery, Date, AnswerCode)>,
    /// A sealed world's insurer side: the key store the hub imports, and per real member key
    /// the birth date, the reference and what opening its record reveals.
    sealed: Option<SealedWorld>,
}

fn stream(seed: u64, name: u64) -> Rng {
    Rng::new(seed ^ name.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn exp(rng: &mut Rng, mean: f64) -> u64 {
    (-(1.0 - rng.unit()).max(1e-12).ln() * mean) as u64
}

impl Sim {}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> Outcome {
    let mut sim = match world(cfg) {
        Ok(sim) => sim,
        Err(why) => return generation_failed(cfg, &why),
    };
    start_workload(&mut sim, cfg);
    random_faults(&mut sim, cfg);
    scripted_faults(&mut sim, cfg);
    let duration = cfg.duration_ms;
    sim.schedule(duration, Ev::Heal);
    let end = duration + cfg.liveness_ms;
    while let Some(Reverse((at, _, ev))) = sim.queue.pop() {
        if at > end {
            break;
        }
        sim.now = at;
        sim.handle(ev);
        sim.pump();
    }
    sim.now = end;
    outcome(sim, cfg, end)
}

/// The insurer side of a sealed run.
struct SealedWorld {
    keys: shikaku_core::keystore::KeyStore,
    people: BTreeMap<MemberKey, (Date, MemberKey, shikaku_core::Reveal)>,
}

impl SealedWorld {
    /// The key store, the people and the schema-2 history of a generated world.
    fn of(
        generated: &shikaku_gen::Generated,
        gen_seed: u64,
    ) -> Result<(SealedWorld, Vec<SignedEvent>), String> {
        let (events, keys) =
            shikaku_gen::seal_generated(generated, gen_seed, shikaku_core::seal::KdfParams::LIGHT)
                .map_err(|e| e.to_string())?;
        let full = shikaku_core::sealer::reveal_from(&events, &keys);
        let mut people = BTreeMap::new();
        for e in &generated.events {
            if let shikaku_core::EventBody::MemberRegistered { member, person, .. } =
                &e.event().body
            {
                let signer = shikaku_gen::insurer_signer(gen_seed, member.insurer);
                let reference = shikaku_core::seal::member_ref(
                    &shikaku_core::sealer::ref_secret_of(&signer),
                    member,
                );
                let mut reveal = shikaku_core::Reveal::default();
                if let Some((birth, insured)) = full.members.get(&reference) {
                    reveal.insert(reference.clone(), *birth, insured.clone());
                }
                people.insert(member.clone(), (person.birth_date, reference, reveal));
            }
        }
        Ok((SealedWorld { keys, people }, events))
    }
}

/// The world a run starts from: a generated history, the hub and the clinics (their disks,
/// clocks and subscriptions drawn from the seed's streams), every ledger opened; why not, when
/// the workload cannot be generated.
fn world(cfg: &SimConfig) -> Result<Sim, String> {
    let seed = cfg.seed;
    let mut workload = stream(seed, 4);
    let gen_seed = workload.next_u64();
    let generated = match shikaku_gen::generate(&shikaku_gen::GenConfig::new(cfg.members, gen_seed))
    {
        Ok(g) => g,
        Err(e) => return Err(e.to_string()),
    };
    let (sealed, sealed_events) = if cfg.sealed {
        let (world, events) = SealedWorld::of(&generated, gen_seed)?;
        (Some(world), Some(events))
    } else {
        (None, None)
    };
    let base_ms = generated.last_hlc.physical_ms() + 3_600_000;
    let mut clock_rng = stream(seed, 3);
    let mut members: BTreeMap<InsurerNumber, BTreeSet<MemberKey>> = BTreeMap::new();
    for e in &generated.events {
        if let Some(m) = e.event().body.membership_subject() {
            members.entry(m.insurer).or_default().insert(m.clone());
        }
    }
    let members: BTreeMap<InsurerNumber, Vec<MemberKey>> =
        members.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect();
    let insurers: Vec<InsurerNumber> = members.keys().copied().collect();
    let f = &cfg.faults;
    let clock_for = |rng: &mut Rng| NodeClock {
        skew_ms: if f.skew_max_ms == 0 {
            0
        } else {
            rng.below(2 * f.skew_max_ms + 1) as i64 - f.skew_max_ms as i64
        },
        drift_ppm: if f.drift_max_ppm == 0 {
            0
        } else {
            rng.below(2 * f.drift_max_ppm + 1) as i64 - f.drift_max_ppm as i64
        },
        jumps_ms: 0,
    };
    let site = |role: Role,
                name: &str,
                signer: Signer,
                insurers: BTreeSet<InsurerNumber>,
                disk: FaultDirectory,
                clock: NodeClock| {
        let mut config = NodeConfig::new(role, name);
        config.insurers = insurers.clone();
        config.segment_bytes = 1 << 20;
        config.batch_events = 512;
        let replication =
            if role == Role::Hub { Replication::All } else { Replication::Insurers(insurers) };
        Site {
            signer,
            config,
            disk,
            node: None,
            clock,
            reference: Projection::new(replication),
            folded: 0,
        }
    };
    let hub_clock = NodeClock { skew_ms: 0, drift_ppm: 0, jumps_ms: 0 };
    #[cfg_attr(not(feature = "planted-bugs"), allow(unused_mut))]
    let mut hub = site(
        Role::Hub,
        "hub",
        Signer::derived("shikaku sim hub", &seed.to_le_bytes()),
        insurers.iter().copied().collect(),
        FaultDirectory::new(cfg.faults.hub_disk.clone(), seed ^ 1),
        hub_clock,
    );
    #[cfg(feature = "planted-bugs")]
    if cfg.plant == Some(Plant::CursorOffByOne) {
        hub.config.planted = Some(shikaku_node::PlantedBug::CursorOffByOne);
    }
    let mut clinics = Vec::new();
    let mut cstate = Vec::new();
    for i in 0..cfg.clinics {
        let mut subscribed = vec![insurers[i % insurers.len()]];
        let extra = insurers[(i * 7 + 3) % insurers.len()];
        if !subscribed.contains(&extra) {
            subscribed.push(extra);
        }
        let signer = Signer::derived(
            "shikaku sim clinic",
            &[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat(),
        );
        let disk = FaultDirectory::new(cfg.faults.clinic_disk.clone(), seed ^ (0x100 + i as u64));
        let clock = clock_for(&mut clock_rng);
        #[cfg_attr(not(feature = "planted-bugs"), allow(unused_mut))]
        let mut clinic = site(
            Role::Clinic,
            &format!("clinic-{i}"),
            signer,
            subscribed.iter().copied().collect(),
            disk,
            clock,
        );
        #[cfg(feature = "planted-bugs")]
        {
            clinic.config.planted = match cfg.plant {
                Some(Plant::MergeDropsConcurrent) => {
                    Some(shikaku_node::PlantedBug::MergeDropsConcurrent)
                }
                Some(Plant::CheckIgnoresKnowledge) => {
                    Some(shikaku_node::PlantedBug::CheckIgnoresKnowledge)
                }
                Some(Plant::CheckIgnoresVoids) => Some(shikaku_node::PlantedBug::CheckIgnoresVoids),
                _ => None,
            };
        }
        clinics.push(clinic);
        cstate.push(ClinicState {
            link: None,
            cut_up: None,
            cut_down: None,
            partitioned_since: None,
            damage_open: false,
            backoff_ms: 100,
            connect_pending: false,
            insurers: subscribed,
        });
    }
    // Workload: the roster at the start, the rest of the history spread over the safety phase.
    let events = sealed_events.unwrap_or(generated.events);
    let roster = events.len() * 6 / 10;
    let mut batches = vec![events[..roster].to_vec()];
    let rest = &events[roster..];
    let pieces = 96usize;
    for chunk in rest.chunks(rest.len().div_ceil(pieces).max(1)) {
        batches.push(chunk.to_vec());
    }
    let mut sim = Sim {
        cfg: cfg.clone(),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        net: stream(seed, 1),
        disk_rng: stream(seed, 2),
        clock_rng,
        work: workload,
        hub,
        clinics,
        cstate,
        next_conn: 0,
        batches,
        members,
        healed: false,
        stats: Stats::default(),
        checker: Checker::default(),
        trace: Vec::new(),
        base_ms,
        timeline: Vec::new(),
        asked: Vec::new(),
        sealed,
    };
    // Nodes run on the simulated clock, offset to just after the generated history.
    for site in std::iter::once(&mut sim.hub).chain(sim.clinics.iter_mut()) {
        site.clock.skew_ms += base_ms as i64;
    }
    if cfg.faults.clinic_disk.lying_fsync > 0.0 {
        for i in 0..cfg.clinics {
            sim.checker.disk_may_lie(Who::Clinic(i));
        }
    }
    if let Err(e) = sim.open(Who::Hub) {
        sim.checker.violation(0, "ledger opens", e);
    }
    for i in 0..cfg.clinics {
        if let Err(e) = sim.open(Who::Clinic(i)) {
            sim.checker.violation(0, "ledger opens", e);
        }
    }
    Ok(sim)
}

/// The outcome of a run whose workload could not be generated.
fn generation_failed(cfg: &SimConfig, why: &str) -> Outcome {
    Outcome {
        timeline: Vec::new(),
        healed_at_ms: 0,
        clinics: cfg.clinics,
        lines: vec![format!("seed {}", cfg.seed), format!("workload generation failed: {why}")],
        violations: Vec::new(),
        simulated_ms: 0,
        hub_events: Vec::new(),
        clinic_names: BTreeMap::new(),
        hub_reveal: None,
    }
}

/// The workload's schedule: the history published in batches over the safety phase, ticks,
/// each clinic's first connection and first check.
fn start_workload(sim: &mut Sim, cfg: &SimConfig) {
    let duration = cfg.duration_ms;
    let n_batches = sim.batches.len();
    sim.schedule(0, Ev::Publish(0));
    for b in 1..n_batches {
        let at = duration * b as u64 / n_batches as u64;
        sim.schedule(at, Ev::Publish(b));
    }
    sim.schedule(0, Ev::Tick);
    for i in 0..cfg.clinics {
        sim.cstate[i].connect_pending = true;
        sim.schedule(1 + i as u64, Ev::Connect(i));
        let first = exp(&mut sim.work, DAY_MS / cfg.checks_per_day.max(0.001));
        sim.schedule(first, Ev::Check(i));
    }
}

/// Random partitions, crashes, bit flips, full disks and clock jumps, each from its own stream.
fn random_faults(sim: &mut Sim, cfg: &SimConfig) {
    let duration = cfg.duration_ms;
    let f = cfg.faults.clone();
    // Random partitions, crashes, bit flips and clock jumps (each from its own stream).
    for i in 0..cfg.clinics {
        if f.partitions_per_day > 0.0 {
            let mut t = exp(&mut sim.net, DAY_MS / f.partitions_per_day);
            while t < duration {
                let len = 1_000 + exp(&mut sim.net, f.partition_mean_ms as f64);
                let asym = sim.net.chance(f.asymmetric);
                let up_only = sim.net.chance(0.5);
                let (up, down) = if asym { (up_only, !up_only) } else { (true, true) };
                if sim.net.chance(f.flapping) {
                    let mut s = t;
                    while s < t + len {
                        let on = 500 + sim.net.below(20_000);
                        sim.schedule(s, Ev::PartitionStart { clinic: i, up, down, until: s + on });
                        s += on + 500 + sim.net.below(20_000);
                    }
                } else {
                    sim.schedule(t, Ev::PartitionStart { clinic: i, up, down, until: t + len });
                }
                t += len + exp(&mut sim.net, DAY_MS / f.partitions_per_day);
            }
        }
        if f.crashes_per_day > 0.0 {
            let t = exp(&mut sim.disk_rng, DAY_MS / f.crashes_per_day);
            sim.schedule(t, Ev::Crash(Who::Clinic(i)));
        }
        if f.bit_flips_per_day > 0.0 {
            let t = exp(&mut sim.disk_rng, DAY_MS / f.bit_flips_per_day);
            sim.schedule(t, Ev::BitFlip(i));
        }
        if f.disk_full_per_day > 0.0 {
            let mut t = exp(&mut sim.disk_rng, DAY_MS / f.disk_full_per_day);
            while t < duration {
                sim.schedule(t, Ev::DiskFull { clinic: i, full: true });
                sim.schedule(t + f.disk_full_ms, Ev::DiskFull { clinic: i, full: false });
                t += f.disk_full_ms + exp(&mut sim.disk_rng, DAY_MS / f.disk_full_per_day);
            }
        }
        if f.clock_jumps_per_day > 0.0 && f.skew_max_ms > 0 {
            let mut t = exp(&mut sim.clock_rng, DAY_MS / f.clock_jumps_per_day);
            while t < duration {
                let by = sim.clock_rng.below(2 * f.skew_max_ms + 1) as i64 - f.skew_max_ms as i64;
                sim.schedule(t, Ev::ClockJump { who: Who::Clinic(i), by_ms: by });
                t += 1 + exp(&mut sim.clock_rng, DAY_MS / f.clock_jumps_per_day);
            }
        }
    }
    if f.crashes_per_day > 0.0 {
        let t = exp(&mut sim.disk_rng, DAY_MS / f.crashes_per_day);
        sim.schedule(t, Ev::Crash(Who::Hub));
    }
}

/// The scenario's scripted faults.
fn scripted_faults(sim: &mut Sim, cfg: &SimConfig) {
    for (at, s) in &cfg.script {
        match s {
            Scripted::Partition { clinics, duration_ms } => {
                let targets: Vec<usize> =
                    if clinics.is_empty() { (0..cfg.clinics).collect() } else { clinics.clone() };
                for i in targets.into_iter().filter(|i| *i < cfg.clinics) {
                    sim.schedule(
                        *at,
                        Ev::PartitionStart {
                            clinic: i,
                            up: true,
                            down: true,
                            until: at + duration_ms,
                        },
                    );
                }
            }
            Scripted::Crash(who) => {
                let who = who.map_or(Who::Hub, Who::Clinic);
                sim.schedule(*at, Ev::Crash(who));
            }
            Scripted::ClockJump { clinic, by_ms } => {
                sim.schedule(*at, Ev::ClockJump { who: Who::Clinic(*clinic), by_ms: *by_ms })
            }
            Scripted::Burst { events } => sim.schedule(*at, Ev::Burst(*events)),
        }
    }
}

/// What the run found: the checkers' verdict at quiescence, the report lines, the timeline.
fn outcome(mut sim: Sim, cfg: &SimConfig, end: u64) -> Outcome {
    let (seed, duration) = (cfg.seed, cfg.duration_ms);
    mark_contradicted(&mut sim);
    let stats = sim.stats.clone();
    let views: Vec<crate::check::ClinicView<'_>> = sim
        .clinics
        .iter()
        .zip(&sim.cstate)
        .map(|(site, st)| crate::check::ClinicView {
            node: site.node.as_ref(),
            namespaces: std::iter::once(Namespace::Clinic(site.signer.node_id()))
                .chain(st.insurers.iter().map(|i| Namespace::Insurer(*i)))
                .collect(),
        })
        .collect();
    sim.checker.at_quiescence(end, sim.hub.node.as_ref(), &views);
    // Without disk damage or crashes, a complete receipt never disagrees with the clinic: the
    // fast path alone must have delivered everything (repairs are for damage and restores).
    if stats.crashes == 0 && stats.bit_flips == 0 {
        for (i, site) in sim.clinics.iter().enumerate() {
            let mismatches = site.node.as_ref().map_or(0, |n| n.counters().receipt_mismatches);
            if mismatches > 0 {
                sim.checker.violation(
                    end,
                    "the fast path is complete without damage",
                    format!("clinic {i} needed {mismatches} repairs with no crash or damage"),
                );
            }
        }
    }
    let report = sim.checker.report(&stats.staleness_s);
    let mut lines = vec![format!("seed {seed}")];
    lines.push(format!(
        "one hub + {} clinics, {} persons, {:.1} h of faults then {:.1} min to converge (simulated), clock base {}",
        cfg.clinics,
        cfg.members,
        cfg.duration_ms as f64 / 3_600_000.0,
        cfg.liveness_ms as f64 / 60_000.0,
        Hlc::new(sim.base_ms, 0).physical_ms()
    ));
    lines.push(format!(
        "network: {} frames, {} bytes, {} lost (retransmitted), {} duplicated, {} reordered, {} sessions, {} partitions",
        stats.frames, stats.bytes, stats.lost, stats.duplicated, stats.reordered, stats.sessions, stats.partitions
    ));
    lines.push(format!(
        "nodes: {} crashes, {} restarts, {} bit flips, {} full disks, {} clock jumps, {} refusals logged",
        stats.crashes, stats.restarts, stats.bit_flips, stats.disk_full, stats.clock_jumps, stats.refusals
    ));
    lines.push(format!(
        "workload: {} events published, {} checks ({} offline), {} self-declarations",
        stats.published, stats.checks, stats.offline_checks, stats.declarations
    ));
    lines.extend(report);
    let violations = sim.checker.violations().to_vec();
    if violations.is_empty() {
        lines.push("result: every invariant held".into());
    } else {
        for v in &violations {
            lines.push(format!(
                "VIOLATED at {:.3}s: {} — {}",
                v.at_ms as f64 / 1000.0,
                v.invariant,
                v.detail
            ));
        }
        lines.push(format!("replay: shikaku sim run --seed {seed} --clinics {}", cfg.clinics));
        lines.push("trace (last events):".into());
        lines.extend(sim.trace.iter().rev().take(20).rev().cloned());
    }
    let hub_events = sim
        .hub
        .node
        .as_ref()
        .filter(|_| cfg.keep_hub_ledger)
        .and_then(|n| n.ledger().read_from(1, usize::MAX).ok())
        .unwrap_or_default();
    let clinic_names =
        sim.clinics.iter().map(|c| (c.signer.node_id(), c.config.name.clone())).collect();
    let hub_reveal = sim
        .sealed
        .as_ref()
        .filter(|_| cfg.keep_hub_ledger)
        .map(|w| shikaku_core::sealer::reveal_from(hub_events.iter().map(|(_, e)| e), &w.keys));
    Outcome {
        timeline: sim.timeline,
        healed_at_ms: duration,
        clinics: cfg.clinics,
        lines,
        violations,
        simulated_ms: end,
        hub_events,
        clinic_names,
        hub_reveal,
    }
}
