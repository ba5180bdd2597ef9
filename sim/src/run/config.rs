//! What a run is configured with: the fault mix ([`Faults`]), scripted faults, planted bugs
//! and the workload's shape ([`SimConfig`]).

use super::*;

/// How hostile the world is.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Minimum one-way latency.
    pub latency_min_ms: u64,
    /// Mean one-way latency above the minimum (exponential).
    pub latency_mean_ms: u64,
    /// Chance a frame's packets are lost once (costs a retransmission timeout).
    pub loss: f64,
    /// Chance a frame is duplicated on the wire (absorbed by the transport; counted).
    pub duplicate: f64,
    /// Chance a frame is overtaken (shows as extra delay: delivery stays in order).
    pub reorder: f64,
    /// Link bandwidth, bytes per second each way (0 = unlimited).
    pub bandwidth: u64,
    /// Partitions per clinic per simulated day.
    pub partitions_per_day: f64,
    /// Mean partition length.
    pub partition_mean_ms: u64,
    /// Fraction of partitions that cut one direction only.
    pub asymmetric: f64,
    /// Fraction of partitions that flap (several short cuts).
    pub flapping: f64,
    /// Crashes per node per simulated day.
    pub crashes_per_day: f64,
    /// Mean time a crashed node stays down.
    pub downtime_mean_ms: u64,
    /// Clinic disks: torn writes, unsynced writes surviving, misdirected writes.
    pub clinic_disk: FaultConfig,
    /// The hub's disk (none in every preset). A hub whose fsync lies loses what it
    /// acknowledged, and the checkers must say so.
    pub hub_disk: FaultConfig,
    /// Bit flips per clinic per simulated day (in durable data).
    pub bit_flips_per_day: f64,
    /// Times per clinic per simulated day its disk fills up (for `disk_full_ms`).
    pub disk_full_per_day: f64,
    /// How long a full disk stays full.
    pub disk_full_ms: u64,
    /// Largest clock skew (either way).
    pub skew_max_ms: u64,
    /// Largest clock drift, parts per million.
    pub drift_max_ppm: u64,
    /// Clock jumps per node per simulated day (up to `skew_max_ms` either way).
    pub clock_jumps_per_day: f64,
}

impl Faults {
    /// A perfect world.
    pub fn none() -> Faults {
        Faults {
            latency_min_ms: 5,
            latency_mean_ms: 10,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            bandwidth: 0,
            partitions_per_day: 0.0,
            partition_mean_ms: 0,
            asymmetric: 0.0,
            flapping: 0.0,
            crashes_per_day: 0.0,
            downtime_mean_ms: 0,
            clinic_disk: FaultConfig::default(),
            hub_disk: FaultConfig::default(),
            bit_flips_per_day: 0.0,
            disk_full_per_day: 0.0,
            disk_full_ms: 0,
            skew_max_ms: 0,
            drift_max_ppm: 0,
            clock_jumps_per_day: 0.0,
        }
    }

    /// The default hostile mix.
    pub fn hostile() -> Faults {
        Faults {
            latency_min_ms: 5,
            latency_mean_ms: 40,
            loss: 0.02,
            duplicate: 0.01,
            reorder: 0.02,
            bandwidth: 2_000_000,
            partitions_per_day: 4.0,
            partition_mean_ms: 30 * 60_000,
            asymmetric: 0.2,
            flapping: 0.2,
            crashes_per_day: 1.0,
            downtime_mean_ms: 5 * 60_000,
            clinic_disk: FaultConfig {
                torn_write: 0.5,
                unsynced_survives: 0.3,
                // Silent misdirected writes under a running node are detected only when the
                // ledger is reopened (see the closing note of issue 5): not in the default mix.
                misdirected_write: 0.0,
                lying_fsync: 0.002,
                ..FaultConfig::default()
            },
            hub_disk: FaultConfig::default(),
            bit_flips_per_day: 0.5,
            disk_full_per_day: 0.5,
            disk_full_ms: 20 * 60_000,
            skew_max_ms: 120_000,
            drift_max_ppm: 200,
            clock_jumps_per_day: 0.5,
        }
    }

    /// A random mix for swarm runs, drawn from `rng`.
    pub fn random(rng: &mut Rng) -> Faults {
        let mut f = Faults::hostile();
        f.loss = rng.unit() * 0.1;
        f.duplicate = rng.unit() * 0.05;
        f.reorder = rng.unit() * 0.05;
        f.latency_mean_ms = 1 + rng.below(200);
        f.bandwidth = if rng.chance(0.5) { 0 } else { 100_000 + rng.below(5_000_000) };
        f.partitions_per_day = rng.unit() * 12.0;
        f.partition_mean_ms = 1_000 + rng.below(3 * 3_600_000);
        f.asymmetric = rng.unit() * 0.5;
        f.flapping = rng.unit() * 0.5;
        f.crashes_per_day = rng.unit() * 4.0;
        f.downtime_mean_ms = 1_000 + rng.below(30 * 60_000);
        f.clinic_disk.torn_write = rng.unit();
        f.clinic_disk.unsynced_survives = rng.unit() * 0.5;
        f.clinic_disk.lying_fsync = if rng.chance(0.3) { rng.unit() * 0.01 } else { 0.0 };
        f.bit_flips_per_day = rng.unit() * 3.0;
        f.disk_full_per_day = rng.unit() * 2.0;
        f.disk_full_ms = 1_000 + rng.below(3_600_000);
        f.skew_max_ms = rng.below(240_000);
        f.drift_max_ppm = rng.below(500);
        f.clock_jumps_per_day = rng.unit() * 2.0;
        f
    }
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed everything derives from.
    pub seed: u64,
    /// Clinics (one hub).
    pub clinics: usize,
    /// Persons on the generated roster.
    pub members: usize,
    /// Simulated length of the safety phase (faults on).
    pub duration_ms: u64,
    /// Bound on the liveness phase: after healing, everything must converge within it.
    pub liveness_ms: u64,
    /// Checks per clinic per simulated day.
    pub checks_per_day: f64,
    /// The fault mix.
    pub faults: Faults,
    /// Scripted events at simulated offsets from the start.
    pub script: Vec<(u64, Scripted)>,
    /// A known bug to plant (tests show the checkers catch each; a build with the
    /// `planted-bugs` feature only).
    #[cfg(feature = "planted-bugs")]
    pub plant: Option<Plant>,
    /// Hand back the hub's ledger in [`Outcome::hub_events`] (for the insurer's
    /// reconciliation); off by default, so swarms and benchmarks do not read it.
    pub keep_hub_ledger: bool,
    /// Seal the world's member data (event schema 2, light Argon2id parameters): reception
    /// presents member keys with birth dates, clinics open records through their synced key
    /// stores, and each answer is checked against the reference projection with what that
    /// clinic could open.
    pub sealed: bool,
}

/// Known bugs the simulator must find (faults the system must survive, such as a disk that
/// lies about fsync, are [`Faults`] instead).
#[cfg(feature = "planted-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// In the node (clinics): a merge that loses concurrent events.
    MergeDropsConcurrent,
    /// In the node (clinics): a check that ignores what the node knows.
    CheckIgnoresKnowledge,
    /// In the hub: a session resumes one position past the clinic's cursor.
    CursorOffByOne,
    /// In the node (clinics): checks ignore voids.
    CheckIgnoresVoids,
}

/// A scripted fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Scripted {
    /// The hub is unreachable from these clinics (all when empty) for this long.
    Partition {
        /// Clinics cut off (empty = all).
        clinics: Vec<usize>,
        /// How long.
        duration_ms: u64,
    },
    /// A node crashes (clinic index, or `None` for the hub).
    Crash(Option<usize>),
    /// The insurer publishes this many of the next changes at once (a burst of job changes).
    Burst {
        /// Events.
        events: usize,
    },
    /// A clinic's clock jumps by this much.
    ClockJump {
        /// The clinic.
        clinic: usize,
        /// By how much (negative = back).
        by_ms: i64,
    },
}

impl SimConfig {
    /// A day of S-tier traffic: `clinics` clinics, 2,000 persons, 60 checks a day each.
    pub fn new(seed: u64, clinics: usize) -> SimConfig {
        SimConfig {
            seed,
            clinics,
            members: 2_000,
            duration_ms: 24 * 3_600_000,
            liveness_ms: 15 * 60_000,
            checks_per_day: 60.0,
            faults: Faults::hostile(),
            script: Vec::new(),
            #[cfg(feature = "planted-bugs")]
            plant: None,
            keep_hub_ledger: false,
            sealed: false,
        }
    }
}
