//! `shikaku sim run|swarm`: the deterministic simulator from the command line.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
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
}

/// Parses `24h`, `90m`, `3600s` or milliseconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    let (number, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number
        .parse()
        .with_context(|| format!("duration {text:?}: expected e.g. 24h, 90m, 3600s"))?;
    Ok(match unit {
        "h" => n * 3_600_000,
        "m" => n * 60_000,
        "s" => n * 1_000,
        "" | "ms" => n,
        other => bail!("duration {text:?}: unknown unit {other:?} (h, m, s or ms)"),
    })
}

fn config(seed: u64, shape: &Shape) -> Result<SimConfig> {
    let mut cfg = SimConfig::new(seed, shape.clinics);
    if shape.clinics == 0 {
        bail!("--clinics must be at least 1");
    }
    cfg.duration_ms = parse_duration(&shape.duration)?;
    cfg.members = shape.members;
    cfg.checks_per_day = shape.checks_per_day;
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
            let outcome = run(&cfg);
            for line in &outcome.lines {
                writeln!(out, "{line}")?;
            }
            Ok(if outcome.violations.is_empty() { 0 } else { 1 })
        }
        SimCommand::Swarm { seeds, shape } => {
            let (a, b) = seeds
                .split_once("..")
                .with_context(|| format!("--seeds {seeds:?}: expected A..B"))?;
            let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
            if b <= a {
                bail!("--seeds {seeds}: the range is empty");
            }
            let watch = Stopwatch::start();
            let mut failing = Vec::new();
            for seed in a..b {
                let mut cfg = config(seed, shape)?;
                let mut mix = shikaku_gen::Rng::new(seed ^ 0x5741_524d);
                cfg.faults = Faults::random(&mut mix);
                let outcome = run(&cfg);
                let verdict = match outcome.violations.first() {
                    None => "ok".to_string(),
                    Some(v) => {
                        failing.push(seed);
                        format!("FAILED: {} — {}", v.invariant, v.detail)
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
    }
}
