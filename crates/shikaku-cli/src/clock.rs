//! The one place the command line reads the wall clock. Everything below it takes time as an
//! argument (sans-IO), so this is also the seam a test uses to pin "now".

/// Unix milliseconds now, or the value of `SHIKAKU_NOW_MS` when set (tests, demos, replays).
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    if let Some(pinned) = std::env::var("SHIKAKU_NOW_MS").ok().and_then(|v| v.parse().ok()) {
        return pinned;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic stopwatch for benchmarks and progress output.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts timing.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }

    /// Seconds elapsed.
    pub fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// Nanoseconds elapsed.
    pub fn nanos(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}
