//! The one wall clock: every read of the time of day in shikaku goes through [`now_ms`] (the
//! runtime's [`Clock`] adds its test offset to it), so `SHIKAKU_NOW_MS` pins "now" for the
//! command line and the serving nodes alike. Everything below the runtime takes time as an
//! argument (sans-IO). [`Stopwatch`] is the one monotonic timer (benchmarks, progress).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

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

/// The wall clock, with an adjustable offset (tests and demos move time forward).
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// The real clock.
    pub fn wall() -> Arc<Clock> {
        Arc::new(Clock::default())
    }

    /// Unix milliseconds now ([`now_ms`]) plus the offset.
    pub fn now_ms(&self) -> u64 {
        (now_ms() as i64 + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Moves this clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
