//! `shikaku sim run|swarm`: the deterministic simulator from the command line.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use shikaku_sim::scenario::{apply as apply_scenario_to, parse_duration as parse_sim_duration};
use shikaku_sim::{run, Faults, SimConfig};

use crate::clock::Stopwatch;

/// `shikaku sim …`.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run one seed: a safety phase with faults, then a liveness phase with faults healed.
    /// Prints the seed first and a summary; on a violated invariant, the invariant, the seed
    /// and a short trace, and exits 1. The same seed prints the same bytes.
    Run(RunArgs),
    /// Run a range of seeds (`A..B`, B excluded), each with a fault mix drawn from its seed;
    /// reports the failing seeds and exits 1 if any failed.
    Swarm {
        /// Seeds, `A..B`.
        #[arg(long)]
        seeds: String,
        #[command(flatten)]
        shape: Shape,
    },
    /// The scaled-out hub: three hub front-ends (the third one lagging) and three clinics over
    /// a seeded model of the shared JetStream log — publishes failing while the log is
    /// unavailable, late acknowledgements, repeats past the deduplication window, front-end
    /// crashes — then healing; checks that every front-end holds the same events at the same
    /// positions, that clinics converge, and that nothing acknowledged is lost. Exits 1 on a
    /// violation, naming the law and the seed.
    FrontEnds {
        /// Seeds, `A..B`.
        #[arg(long)]
        seeds: String,
        /// Random steps per seed before the faults heal.
        #[arg(long, default_value_t = 400)]
        steps: usize,
    },
}

/// `A..B` (B excluded, not empty).
fn seed_range(seeds: &str) -> Result<std::ops::Range<u64>> {
    let (a, b) =
        seeds.split_once("..").with_context(|| format!("--seeds {seeds:?}: expected A..B"))?;
    let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
    if b <= a {
        bail!("--seeds {seeds}: the range is empty");
    }
    Ok(a..b)
}

/// Arguments of `shikaku sim run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No faults at all (a baseline).
    #[arg(long)]
    pub calm: bool,
    /// Also write the report as an HTML page with an SVG timeline.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
    /// After the run, print the insurer's reconciliation report over the hub's ledger (the same
    /// report as `shikaku reconcile`: offline answers the truth contradicts, refunds,
    /// self-declarations, late changes, clinics by staleness).
    #[arg(long)]
    pub reconcile: bool,
    /// Chance per write that a clinic's disk misdirects it (off by default: such silent
    /// corruption under a running node is detected only when its ledger is reopened, a known
    /// limitation this knob demonstrates — see sim/README.md).
    #[arg(long, default_value_t = 0.0)]
    pub misdirected_writes: f64,
    /// The fault mix `sim swarm` draws for this seed (to replay a failing swarm seed).
    #[arg(long, conflicts_with = "calm")]
    pub random_faults: bool,
    /// A scenario file (TOML; see sim/README.md and sim/scenarios/): scripted partitions,
    /// crashes and clock jumps at simulated times, and the fault preset.
    #[arg(long)]
    pub scenario: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub shape: Shape,
}

/// The size of a run.
#[derive(Debug, Args)]
pub struct Shape {
    /// Clinics (one hub).
    #[arg(long, default_value_t = 5)]
    pub clinics: usize,
    /// Simulated length of the safety phase: e.g. 24h, 90m, 3600s.
    #[arg(long, default_value = "24h")]
    pub duration: String,
    /// Persons on the generated roster.
    #[arg(long, default_value_t = 2000)]
    pub members: usize,
    /// Checks per clinic per simulated day.
    #[arg(long, default_value_t = 60.0)]
    pub checks_per_day: f64,
    /// Bound on the liveness phase: after the faults heal, everything must have converged
    /// within this much simulated time.
    #[arg(long, default_value = "15m")]
    pub liveness: String,
    /// Seal the world's member data (event schema 2; light Argon2id): checks by member key
    /// and birth date open records through the clinics' synced key stores.
    #[arg(long)]
    pub sealed: bool,
}

/// The fault mix swarm mode draws for a seed.
fn swarm_faults(seed: u64) -> Faults {
    Faults::random(&mut shikaku_gen::Rng::new(seed ^ 0x5741_524d))
}

fn config(seed: u64, shape: &Shape) -> Result<SimConfig> {
    let mut cfg = SimConfig::new(seed, shape.clinics);
    if shape.clinics == 0 {
        bail!("--clinics must be at least 1");
    }
    cfg.duration_ms = parse_duration(&shape.duration)?;
    cfg.members = shape.members;
    cfg.checks_per_day = shape.checks_per_day;
    cfg.liveness_ms = parse_duration(&shape.liveness)?;
    cfg.sealed = shape.sealed;
    Ok(cfg)
}

/// Runs a `shikaku sim` command; the exit status is 1 when an invariant was violated.
pub fn run_command(command: &SimCommand, out: &mut dyn Write) -> Result<i32> {
    match command {
        SimCommand::Run(args) => {
            let mut cfg = config(args.seed, &args.shape)?;
            if args.calm {
                cfg.faults = Faults::none();
            }
            if args.random_faults {
                cfg.faults = swarm_faults(args.seed);
            }
            if !(0.0..=1.0).contains(&args.misdirected_writes) {
                bail!("--misdirected-writes must be a probability in [0, 1]");
            }
            cfg.faults.clinic_disk.misdirected_write = args.misdirected_writes;
            if let Some(path) = &args.scenario {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                apply_scenario(&mut cfg, &text)
                    .with_context(|| format!("scenario {}", path.display()))?;
            }
            cfg.keep_hub_ledger = args.reconcile;
            let outcome = run(&cfg);
            for line in &outcome.lines {
                writeln!(out, "{line}")?;
            }
            if args.reconcile {
                let last =
                    outcome.hub_events.iter().map(|(_, e)| e.event().hlc.physical_ms()).max();
                let report = shikaku_reconcile::compute_revealed(
                    &outcome.hub_events,
                    &outcome.clinic_names,
                    last.unwrap_or(0),
                    outcome.hub_reveal.as_ref(),
                );
                writeln!(out)?;
                write!(out, "{}", shikaku_reconcile::render_text(&report))?;
            }
            if let Some(path) = &args.html {
                std::fs::write(path, shikaku_sim::html(&outcome))
                    .with_context(|| format!("writing {}", path.display()))?;
                writeln!(out, "report: {}", path.display())?;
            }
            Ok(if outcome.violations.is_empty() { 0 } else { 1 })
        }
        SimCommand::Swarm { seeds, shape } => {
            let range = seed_range(seeds)?;
            let (a, b) = (range.start, range.end);
            let watch = Stopwatch::start();
            let mut failing = Vec::new();
            for seed in a..b {
                let mut cfg = config(seed, shape)?;
                cfg.faults = swarm_faults(seed);
                let outcome = run(&cfg);
                let verdict = match outcome.violations.first() {
                    None => "ok".to_string(),
                    Some(v) => {
                        failing.push(seed);
                        format!(
                            "FAILED: {} — {} (replay: shikaku sim run --seed {seed} --random-faults --clinics {} --duration {} --members {})",
                            v.invariant, v.detail, shape.clinics, shape.duration, shape.members
                        )
                    }
                };
                writeln!(out, "seed {seed}: {verdict}")?;
                out.flush()?;
            }
            let seconds = watch.seconds();
            writeln!(
                out,
                "{} seeds, {} failing {:?}; {:.1} seeds per minute",
                b - a,
                failing.len(),
                failing,
                (b - a) as f64 * 60.0 / seconds
            )?;
            Ok(if failing.is_empty() { 0 } else { 1 })
        }
        SimCommand::FrontEnds { seeds, steps } => {
            let range = seed_range(seeds)?;
            let mut failing = Vec::new();
            for seed in range.clone() {
                match shikaku_sim::frontends::run(seed, *steps) {
                    Ok(stats) => writeln!(out, "seed {seed}: ok — {stats}")?,
                    Err(violation) => {
                        failing.push(seed);
                        writeln!(out, "seed {seed}: FAILED: {violation}")?;
                    }
                }
                out.flush()?;
            }
            writeln!(
                out,
                "{} seeds, {} failing {:?}",
                range.end - range.start,
                failing.len(),
                failing
            )?;
            Ok(if failing.is_empty() { 0 } else { 1 })
        }
    }
}

/// Parses `24h`, `90m`, `3600s` or milliseconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    Ok(parse_sim_duration(text)?)
}

/// Applies a scenario (TOML) to a run's configuration (see [`shikaku_sim::scenario`]).
pub fn apply_scenario(cfg: &mut SimConfig, text: &str) -> Result<()> {
    Ok(apply_scenario_to(cfg, text)?)
}
