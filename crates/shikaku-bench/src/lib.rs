//! shikaku-bench: `shikaku bench …`, performance measured against a baseline in the same run.
//! A separate crate so that the released `shikaku` binary carries none of it — not the
//! baselines (bundled SQLite, the `negentropy` crate), not the counting allocator: the
//! command exists only in a build with the `bench` feature
//! (`cargo run --release -p shikaku-cli --features bench -- bench …`).
//!
//! - [`api`]: reception latency over HTTP and throughput with concurrent clients;
//! - [`log`]: durable appends against the raw disk and SQLite, and the node's restart;
//! - [`reconcile`] and [`sync`]: set reconciliation against the `negentropy` crate, in memory
//!   and over QUIC;
//! - [`alloc_counter`]: the counting global allocator (installed by a `bench` build).
//!
//!
//! `bench projection` generates a synthetic insurer stream (not timed), then measures the fold
//! (events/s on one core), check latency (p50/p99 over random card and member-key checks) and
//! heap bytes per member (from the counting allocator), side by side with a naive baseline: a
//! map from member key to that member's events, re-folded on every check.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use shikaku_core::{
    CheckQuery, Date, EventBody, Freshness, Hlc, MemberKey, Projection, Replication, SignedEvent,
};

use crate::alloc_counter::live_bytes;

pub mod alloc_counter;
pub mod api;
pub mod hub;
pub mod log;
pub mod privacy;
pub mod reconcile;
pub mod sync;
use shikaku_net::clock::Stopwatch;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Set reconciliation in memory (no network yet): bytes and round trips to find the
    /// differences, shikaku's reconciler beside the `negentropy` crate and a naive
    /// send-every-id baseline, for the in-sync, one-new-event, week-offline (newest 100k
    /// missing) and 10k-random-differences cases.
    Reconcile {
        /// Items held by the hub.
        #[arg(long, default_value_t = 1_000_000)]
        items: usize,
        /// Frame limit in bytes (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        frame_bytes: usize,
    },
    /// Clinic ↔ hub sync over real QUIC on loopback (mutual TLS, ledgers on disk): in sync,
    /// one new event, a week offline (newest events missing), a restore missing random events,
    /// a fresh clinic's initial sync — each beside the `negentropy` crate reconciling the same
    /// sets and a send-everything baseline — then concurrent clinic connections on one hub.
    Sync {
        /// Directory for the benchmark's ledgers (removed afterwards).
        #[arg(long, default_value = "shikaku-bench-tmp")]
        dir: std::path::PathBuf,
        /// Events the hub holds.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Newest events missing at the clinic that was a week offline.
        #[arg(long, default_value_t = 100_000)]
        week: usize,
        /// Random events missing at the restored clinic.
        #[arg(long, default_value_t = 10_000)]
        random: usize,
        /// Concurrent clinic connections for the capacity test (0 to skip).
        #[arg(long, default_value_t = 1000)]
        clinics: usize,
    },
    /// The scaled-out hub beside the embedded one, in the same run, on a NATS JetStream
    /// cluster you run (docs/DEPLOY.md; stream SHIKAKU must be empty or absent): import
    /// throughput (embedded ledger vs the R3 stream, and each of two front-ends following
    /// it), a fresh clinic's initial sync (embedded hub vs front-end), and many clinics over
    /// two front-ends (connected, synced, live-push latency to all).
    Hub {
        /// Directory for the benchmark's ledgers (removed afterwards).
        #[arg(long, default_value = "shikaku-bench-tmp")]
        dir: std::path::PathBuf,
        /// Members on the generated roster (M tier: 1,600,000, about 5M events).
        #[arg(long, default_value_t = 1_600_000)]
        members: usize,
        /// Clinics spread over the two front-ends.
        #[arg(long, default_value_t = 2_000)]
        clinics: usize,
        /// The cluster: nats://HOST:PORT[,…].
        #[arg(long)]
        store: String,
        /// NATS user (with --nats-password or SHIKAKU_NATS_PASSWORD).
        #[arg(long, requires = "nats_password")]
        nats_user: Option<String>,
        /// NATS password.
        #[arg(long, env = "SHIKAKU_NATS_PASSWORD", hide_env_values = true)]
        nats_password: Option<String>,
    },
    /// Simulator speed: one hub + N clinics over a simulated day (simulated time per wall
    /// second), and seeds per minute in swarm mode.
    Sim {
        /// Clinics.
        #[arg(long, default_value_t = 50)]
        clinics: usize,
        /// Swarm seeds to time (5 clinics, 6 h each).
        #[arg(long, default_value_t = 20)]
        swarm_seeds: u64,
    },
    /// Opening a large ledger: with the index checkpoint and projection snapshot against a
    /// full scan and fold of the same ledger, in the same run.
    Open {
        /// Directory for the benchmark's ledger (on the disk to measure; removed afterwards).
        #[arg(long, default_value = "shikaku-bench-tmp")]
        dir: std::path::PathBuf,
        /// Events in the ledger.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
    },
    /// Durable append throughput of the ledger at batch sizes 1, 64, 512 and 4096, side by side
    /// with the raw disk (sequential write + fdatasync of the same bytes) and SQLite (WAL,
    /// synchronous=FULL, the same events as blobs, the same batches); single-append latency
    /// against one fdatasync; recovery scan speed.
    Log {
        /// Directory for the benchmark's files (on the disk to measure; removed afterwards).
        #[arg(long, default_value = "shikaku-bench-tmp")]
        dir: std::path::PathBuf,
        /// Events per batch-size run (batch 1 uses a tenth, at most 3,000).
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Events for the recovery-scan measurement.
        #[arg(long, default_value_t = 1_000_000)]
        scan_events: usize,
    },
    /// Reception's view: check latency at a clinic node answered every way in the same run —
    /// the projection alone (baseline), the node's check with its durable record, the HTTP
    /// API in JSON and in FHIR, in a logged-in staff session (and what a login costs), the
    /// folder interface (a request file renamed into req until its answer appears in res, and
    /// requests/s with all dropped at once) — and throughput with concurrent HTTP clients.
    Api {
        /// Members on the generated roster (S tier: 20,000).
        #[arg(long, default_value_t = 20_000)]
        members: usize,
        /// Checks per way.
        #[arg(long, default_value_t = 2_000)]
        requests: usize,
        /// Concurrent HTTP clients for the throughput run.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// What sealing member data costs and protects: the member-key tag's per-guess cost
    /// (Argon2id) and the core-years to open a stolen clinic ledger in bulk, the insurer's
    /// sealing rate, fold speed and memory sealed beside schema 1, and reception's check
    /// latency at an offline clinic by card and by key (KDF included) beside the projection.
    Privacy {
        /// Members sealed at the chosen parameters (the insurer's cost, and the clinic's world).
        #[arg(long, default_value_t = 2_000)]
        members: usize,
        /// Members of the fold comparison (light parameters: the KDF is not part of a fold).
        #[arg(long, default_value_t = 100_000)]
        fold_members: usize,
        /// Reception checks to time.
        #[arg(long, default_value_t = 500)]
        checks: usize,
        /// Argon2id memory in KiB (default: the production setting).
        #[arg(long, default_value_t = shikaku_core::seal::KdfParams::RECEPTION.m_kib)]
        m_kib: u32,
        /// Argon2id passes.
        #[arg(long, default_value_t = shikaku_core::seal::KdfParams::RECEPTION.t)]
        t: u32,
    },
    /// Projection fold throughput, check latency and memory per member.
    Projection {
        /// Members on the generated roster.
        #[arg(long, default_value_t = 1_000_000)]
        members: usize,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Checks to time.
        #[arg(long, default_value_t = 200_000)]
        checks: usize,
    },
}

/// Runs a benchmark.
pub fn run(command: &BenchCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        BenchCommand::Projection { members, seed, checks } => {
            projection(*members, *seed, *checks, out)
        }
        BenchCommand::Open { dir, events } => crate::log::open(dir, *events, out),
        BenchCommand::Api { members, requests, clients } => {
            crate::api::run(*members, *requests, *clients, out)
        }
        BenchCommand::Reconcile { items, frame_bytes } => {
            crate::reconcile::run(*items, *frame_bytes, out)
        }
        BenchCommand::Sim { clinics, swarm_seeds } => sim_speed(*clinics, *swarm_seeds, out),
        BenchCommand::Sync { dir, events, week, random, clinics } => {
            crate::sync::run(dir, *events, *week, *random, *clinics, out)
        }
        BenchCommand::Hub { dir, members, clinics, store, nats_user, nats_password } => {
            let mut nats = shikaku_net::jetstream::NatsOptions::from_store(store)?;
            nats.user = nats_user.clone().zip(nats_password.clone());
            nats.name = "shikaku bench hub".into();
            crate::hub::run(dir, *members, *clinics, &nats, out)
        }
        BenchCommand::Privacy { members, fold_members, checks, m_kib, t } => {
            let params = shikaku_core::seal::KdfParams { m_kib: *m_kib, t: *t, p: 1 };
            params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            crate::privacy::run(*members, *fold_members, *checks, params, out)
        }
        BenchCommand::Log { dir, events, scan_events } => {
            crate::log::run(dir, *events, *scan_events, out)
        }
    }
}

/// The `p` quantile (0..=1, nearest rank) of sorted samples; 0 when there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The naive baseline: events grouped by member, re-folded at every check.
struct Naive {
    by_member: HashMap<MemberKey, Vec<SignedEvent>>,
    by_card: HashMap<shikaku_core::CardToken, Vec<MemberKey>>,
}

impl Naive {
    fn fold(events: &[SignedEvent]) -> Naive {
        let mut naive = Naive { by_member: HashMap::new(), by_card: HashMap::new() };
        for event in events {
            let member = match &event.event().body {
                EventBody::MemberRegistered { member, .. }
                | EventBody::CoverageStarted { member, .. }
                | EventBody::CoverageEnded { member, .. }
                | EventBody::CopayRatioSet { member, .. }
                | EventBody::LimitCategorySet { member, .. }
                | EventBody::DemographicsChanged { member, .. } => member,
                EventBody::CardLinked { card, member } => {
                    naive.by_card.entry(*card).or_default().push(member.clone());
                    member
                }
                _ => continue,
            };
            naive.by_member.entry(member.clone()).or_default().push(event.clone());
        }
        naive
    }

    fn covered(&self, member: &MemberKey, date: Date) -> bool {
        let Some(events) = self.by_member.get(member) else { return false };
        let mut sorted: Vec<&SignedEvent> = events.iter().collect();
        sorted.sort_by_key(|e| e.order_key());
        let mut covered = false;
        for event in sorted {
            match &event.event().body {
                EventBody::CoverageStarted { start, .. } if *start <= date => covered = true,
                EventBody::CoverageEnded { loss_date, .. } if *loss_date <= date => covered = false,
                _ => {}
            }
        }
        covered
    }

    fn check(&self, query: &CheckQuery, date: Date) -> bool {
        match query {
            CheckQuery::Member(member) => self.covered(member, date),
            CheckQuery::Card(card) => self
                .by_card
                .get(card)
                .is_some_and(|members| members.iter().any(|m| self.covered(m, date))),
        }
    }
}

fn projection(members: usize, seed: u64, checks: usize, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "bench projection: {members} members, seed {seed}, {checks} checks")?;
    let watch = Stopwatch::start();
    let generated = shikaku_gen::generate(&shikaku_gen::GenConfig::new(members, seed))?;
    let events = generated.events;
    writeln!(
        out,
        "generated and signed {} events in {:.1} s (not part of any measurement)",
        events.len(),
        watch.seconds()
    )?;

    let mut queries: Vec<CheckQuery> = Vec::new();
    for event in &events {
        match &event.event().body {
            EventBody::CardLinked { card, .. } => queries.push(CheckQuery::Card(*card)),
            EventBody::MemberRegistered { member, .. } => {
                queries.push(CheckQuery::Member(member.clone()))
            }
            _ => {}
        }
    }
    let mut rng = shikaku_gen::Rng::new(seed ^ 0xbe4c);
    let picks: Vec<(usize, Date)> = (0..checks)
        .map(|_| {
            let query = rng.below(queries.len() as u64) as usize;
            let date =
                Date::from_ymd(2025, 4, 1).unwrap_or(Date(0)).add_days(rng.below(570) as i32);
            (query, date)
        })
        .collect();

    // Fold: shikaku's projection.
    let before = live_bytes();
    let watch = Stopwatch::start();
    let mut projection = Projection::new(Replication::All);
    for event in &events {
        projection.apply(event);
    }
    projection.shrink_to_fit();
    let fold_s = watch.seconds();
    let projection_bytes = live_bytes().saturating_sub(before);

    // Fold: naive baseline.
    let before = live_bytes();
    let watch = Stopwatch::start();
    let naive = Naive::fold(&events);
    let naive_fold_s = watch.seconds();
    let naive_bytes = live_bytes().saturating_sub(before);

    let fresh = Freshness { now_ms: 0, last_hub_sync_ms: None, hub_position: None, damage: None };
    let mut latencies = Vec::with_capacity(checks);
    let (mut card_latencies, mut key_latencies) = (Vec::new(), Vec::new());
    let mut valid = 0u64;
    for (query, date) in &picks {
        let watch = Stopwatch::start();
        let answer = projection.check(&queries[*query], *date, Hlc(u64::MAX), fresh);
        let nanos = watch.nanos();
        latencies.push(nanos);
        match &queries[*query] {
            CheckQuery::Card(_) => card_latencies.push(nanos),
            CheckQuery::Member(_) => key_latencies.push(nanos),
        }
        valid += u64::from(answer.code == shikaku_core::AnswerCode::Valid);
    }
    latencies.sort_unstable();
    card_latencies.sort_unstable();
    key_latencies.sort_unstable();
    let mut naive_latencies = Vec::with_capacity(checks);
    let mut naive_valid = 0u64;
    for (query, date) in &picks {
        let watch = Stopwatch::start();
        naive_valid += u64::from(naive.check(&queries[*query], *date));
        naive_latencies.push(watch.nanos());
    }
    naive_latencies.sort_unstable();

    let n = events.len() as f64;
    let people = projection.members_len().max(1) as f64;
    writeln!(out, "\n{:<34} {:>16} {:>16}", "measure", "shikaku", "naive baseline")?;
    writeln!(
        out,
        "{:<34} {:>16.0} {:>16.0}",
        "fold events/s (one core)",
        n / fold_s,
        n / naive_fold_s
    )?;
    writeln!(
        out,
        "{:<34} {:>16.2} {:>16.2}",
        "check p50 µs",
        percentile(&latencies, 0.5) as f64 / 1e3,
        percentile(&naive_latencies, 0.5) as f64 / 1e3
    )?;
    writeln!(
        out,
        "{:<34} {:>16.2} {:>16.2}",
        "check p99 µs",
        percentile(&latencies, 0.99) as f64 / 1e3,
        percentile(&naive_latencies, 0.99) as f64 / 1e3
    )?;
    writeln!(
        out,
        "{:<34} {:>16.2}",
        "  card checks p99 µs",
        percentile(&card_latencies, 0.99) as f64 / 1e3
    )?;
    writeln!(
        out,
        "{:<34} {:>16.2}",
        "  member-key checks p99 µs",
        percentile(&key_latencies, 0.99) as f64 / 1e3
    )?;
    writeln!(
        out,
        "{:<34} {:>16.0} {:>16.0}",
        "heap bytes per member key",
        projection_bytes as f64 / people,
        naive_bytes as f64 / people
    )?;
    writeln!(out, "{:<34} {:>16} {:>16}", "valid answers (sanity)", valid, naive_valid)?;
    writeln!(out, "\n{} member keys, {} events ({:.2} per key); targets: fold ≥ 1,000,000 events/s, check p99 ≤ 5 µs, ≤ 200 bytes per member", projection.members_len(), events.len(), n / people)?;
    Ok(())
}

/// `shikaku bench sim`.
fn sim_speed(clinics: usize, swarm_seeds: u64, out: &mut dyn Write) -> Result<()> {
    let cfg = shikaku_sim::SimConfig::new(1, clinics);
    let watch = shikaku_net::clock::Stopwatch::start();
    let outcome = shikaku_sim::run(&cfg);
    let seconds = watch.seconds();
    writeln!(
        out,
        "one hub + {clinics} clinics, hostile faults, {:.1} h simulated in {seconds:.2} s: {:.0}x real time ({} invariant violations)",
        outcome.simulated_ms as f64 / 3_600_000.0,
        outcome.simulated_ms as f64 / 1000.0 / seconds,
        outcome.violations.len()
    )?;
    let watch = shikaku_net::clock::Stopwatch::start();
    let mut failing = 0;
    for seed in 0..swarm_seeds {
        let mut cfg = shikaku_sim::SimConfig::new(1000 + seed, 5);
        cfg.duration_ms = 6 * 3_600_000;
        cfg.faults = shikaku_sim::Faults::random(&mut shikaku_gen::Rng::new(seed));
        failing += usize::from(!shikaku_sim::run(&cfg).violations.is_empty());
    }
    let seconds = watch.seconds();
    writeln!(
        out,
        "swarm: {swarm_seeds} seeds (5 clinics, 6 h each, random fault mixes) in {seconds:.1} s = {:.0} seeds per minute ({failing} failing)",
        swarm_seeds as f64 * 60.0 / seconds
    )?;
    Ok(())
}
