//! Hybrid logical clock: 48 bits of physical milliseconds and a 16-bit counter in one `u64`.
//!
//! Physical time is always an input (`physical_ms`), never read here, so the simulator can skew
//! and jump clocks. Timestamps compare as plain integers; with the event id they form the
//! ordering key `(hlc, id)` used everywhere.

use std::fmt;

/// How far a remote timestamp may lead our physical clock before it is refused (5 minutes).
pub const HLC_FUTURE_DRIFT_MS_MAX: u64 = 5 * 60 * 1000;

/// A hybrid logical clock timestamp: `physical_ms << 16 | counter`.
#[derive(
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// Builds a timestamp from its parts.
    pub fn new(physical_ms: u64, counter: u16) -> Hlc {
        Hlc((physical_ms & 0xFFFF_FFFF_FFFF) << 16 | u64::from(counter))
    }

    /// The physical milliseconds part.
    pub fn physical_ms(self) -> u64 {
        self.0 >> 16
    }

    /// The logical counter part.
    pub fn counter(self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }

    /// The largest timestamp whose physical part is `physical_ms` (inclusive cut-off).
    pub fn end_of_ms(physical_ms: u64) -> Hlc {
        Hlc::new(physical_ms, u16::MAX)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.physical_ms(), self.counter())
    }
}

/// Why the clock refused to advance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlcError {
    /// A remote timestamp is further ahead of our physical clock than allowed.
    #[error("timestamp {remote_ms} ms is {ahead_ms} ms ahead of the local clock ({local_ms} ms); at most {max_ms} ms is accepted")]
    TooFarInFuture {
        /// Physical part of the remote timestamp.
        remote_ms: u64,
        /// Our physical clock.
        local_ms: u64,
        /// How far ahead it was.
        ahead_ms: u64,
        /// The limit.
        max_ms: u64,
    },
    /// The 16-bit counter would overflow within one millisecond.
    #[error("hybrid logical clock counter overflow at {0} ms")]
    CounterOverflow(u64),
}

/// A node's hybrid logical clock.
#[derive(Debug, Clone, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> HlcClock {
        HlcClock::default()
    }

    /// A clock resumed after restart from the largest timestamp it had issued or seen.
    pub fn resume(last: Hlc) -> HlcClock {
        HlcClock { last }
    }

    /// The largest timestamp issued or observed so far.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new timestamp for a local event, given the physical clock.
    pub fn tick(&mut self, physical_ms: u64) -> Result<Hlc, HlcError> {
        let next = if physical_ms > self.last.physical_ms() {
            Hlc::new(physical_ms, 0)
        } else {
            let counter = self
                .last
                .counter()
                .checked_add(1)
                .ok_or(HlcError::CounterOverflow(self.last.physical_ms()))?;
            Hlc::new(self.last.physical_ms(), counter)
        };
        debug_assert!(next > self.last, "the clock only moves forward");
        self.last = next;
        Ok(next)
    }

    /// Merges a timestamp received from another node, refusing ones too far in the future.
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64) -> Result<(), HlcError> {
        check_not_future(remote, physical_ms)?;
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }
}

/// Refuses a timestamp further than [`HLC_FUTURE_DRIFT_MS_MAX`] ahead of `physical_ms`.
pub fn check_not_future(remote: Hlc, physical_ms: u64) -> Result<(), HlcError> {
    let remote_ms = remote.physical_ms();
    if remote_ms > physical_ms.saturating_add(HLC_FUTURE_DRIFT_MS_MAX) {
        return Err(HlcError::TooFarInFuture {
            remote_ms,
            local_ms: physical_ms,
            ahead_ms: remote_ms - physical_ms,
            max_ms: HLC_FUTURE_DRIFT_MS_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_when_the_clock_goes_back() {
        let mut clock = HlcClock::new();
        let a = clock.tick(1_000).unwrap();
        let b = clock.tick(900).unwrap();
        let c = clock.tick(1_000).unwrap();
        let d = clock.tick(1_001).unwrap();
        assert!(a < b && b < c && c < d);
        assert_eq!((b.physical_ms(), b.counter()), (1_000, 1));
        assert_eq!(d, Hlc::new(1_001, 0));
    }

    #[test]
    fn observing_the_future_is_refused_and_named() {
        let mut clock = HlcClock::new();
        let far = Hlc::new(1_000 + HLC_FUTURE_DRIFT_MS_MAX + 1, 0);
        assert!(matches!(clock.observe(far, 1_000), Err(HlcError::TooFarInFuture { .. })));
        clock.observe(Hlc::new(2_000, 7), 1_000).unwrap();
        assert_eq!(clock.tick(1_500).unwrap(), Hlc::new(2_000, 8));
    }
}
