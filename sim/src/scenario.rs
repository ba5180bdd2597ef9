//! Scenario files: a run's scripted faults in TOML (partitions, crashes, clock jumps, bursts)
//! over the random fault mix. The format is documented in `sim/README.md`.

use crate::run::{Faults, Scripted, SimConfig};

/// Why a scenario file was refused, naming the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(ScenarioError(format!($($arg)*)))
    };
}

/// Parses `24h`, `90m`, `3600s` or milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, ScenarioError> {
    let (number, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| ScenarioError(format!("duration {text:?}: expected e.g. 24h, 90m, 3600s")))?;
    Ok(match unit {
        "h" => n * 3_600_000,
        "m" => n * 60_000,
        "s" => n * 1_000,
        "" | "ms" => n,
        other => fail!("duration {text:?}: unknown unit {other:?} (h, m, s or ms)"),
    })
}

/// A scenario file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// `hostile` (default) or `calm`: the random faults around the scripted ones.
    #[serde(default)]
    faults: Option<String>,
    /// Clinics, overriding `--clinics`.
    #[serde(default)]
    clinics: Option<usize>,
    /// Safety-phase length, overriding `--duration`.
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    partition: Vec<ScenarioPartition>,
    #[serde(default)]
    crash: Vec<ScenarioCrash>,
    #[serde(default)]
    clock: Vec<ScenarioClock>,
    #[serde(default)]
    burst: Vec<ScenarioBurst>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioBurst {
    at: String,
    /// How many of the insurer's next changes land at once.
    events: usize,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioPartition {
    /// From (`HH:MM` after the start, or a duration such as `90m`).
    from: String,
    /// Until.
    until: String,
    /// Clinics cut off from the hub (empty or absent: all).
    #[serde(default)]
    clinics: Vec<usize>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioCrash {
    at: String,
    /// `hub` or a clinic index.
    node: toml::Value,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioClock {
    at: String,
    clinic: usize,
    /// `+10m`, `-30s`, …
    jump: String,
}

/// `HH:MM` (after the start) or a duration (`90m`, `2h`, `3600s`).
fn parse_at(text: &str) -> Result<u64, ScenarioError> {
    if let Some((h, m)) = text.split_once(':') {
        let (h, m): (u64, u64) = (
            h.parse().map_err(|_| ScenarioError(format!("time {text:?}")))?,
            m.parse().map_err(|_| ScenarioError(format!("time {text:?}")))?,
        );
        if m >= 60 {
            fail!("time {text:?}: minutes must be below 60");
        }
        return Ok((h * 60 + m) * 60_000);
    }
    parse_duration(text)
}

/// Applies a scenario (TOML) to a run's configuration.
pub fn apply(cfg: &mut SimConfig, text: &str) -> Result<(), ScenarioError> {
    let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError(e.to_string()))?;
    match scenario.faults.as_deref() {
        None | Some("hostile") => {}
        Some("calm") => cfg.faults = Faults::none(),
        Some(other) => fail!("faults = {other:?}: expected \"hostile\" or \"calm\""),
    }
    if let Some(n) = scenario.clinics {
        if n == 0 {
            fail!("clinics must be at least 1");
        }
        cfg.clinics = n;
    }
    if let Some(d) = &scenario.duration {
        cfg.duration_ms = parse_duration(d)?;
    }
    for p in &scenario.partition {
        let (from, until) = (parse_at(&p.from)?, parse_at(&p.until)?);
        if until <= from {
            fail!("partition from {} until {}: the end must come after the start", p.from, p.until);
        }
        if let Some(bad) = p.clinics.iter().find(|c| **c >= cfg.clinics) {
            fail!(
                "partition names clinic {bad}, but there are {} clinics (0..{})",
                cfg.clinics,
                cfg.clinics
            );
        }
        cfg.script.push((
            from,
            Scripted::Partition { clinics: p.clinics.clone(), duration_ms: until - from },
        ));
    }
    for c in &scenario.crash {
        let who = match &c.node {
            toml::Value::String(s) if s == "hub" => None,
            toml::Value::Integer(i) if *i >= 0 && (*i as usize) < cfg.clinics => Some(*i as usize),
            other => fail!(
                "crash node = {other:?}: expected \"hub\" or a clinic index below {}",
                cfg.clinics
            ),
        };
        cfg.script.push((parse_at(&c.at)?, Scripted::Crash(who)));
    }
    for b in &scenario.burst {
        cfg.script.push((parse_at(&b.at)?, Scripted::Burst { events: b.events }));
    }
    for c in &scenario.clock {
        if c.clinic >= cfg.clinics {
            fail!("clock names clinic {}, but there are {} clinics", c.clinic, cfg.clinics);
        }
        let (sign, rest) = match c.jump.strip_prefix('-') {
            Some(rest) => (-1i64, rest),
            None => (1, c.jump.trim_start_matches('+')),
        };
        cfg.script.push((
            parse_at(&c.at)?,
            Scripted::ClockJump { clinic: c.clinic, by_ms: sign * parse_duration(rest)? as i64 },
        ));
    }
    Ok(())
}
