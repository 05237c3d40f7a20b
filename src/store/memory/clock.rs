//! The memory store's clock: microseconds since the Unix epoch that never step back.

use tokio::time::Instant;

/// Microseconds since the Unix epoch, read as the Unix time when the store was made plus a
/// monotonic clock since then (so it never steps back).
pub(super) enum Clock {
    /// quanta's clock: the CPU's time-stamp counter where it is reliable, a few nanoseconds a
    /// read.
    Fast(quanta::Clock, quanta::Instant, u64),
    /// tokio's, which tests can pause; it starts at 0, so windows start when the store is made.
    Tokio(Instant),
}

impl Clock {
    pub(super) fn fast() -> Self {
        let clock = quanta::Clock::new();
        let epoch = clock.now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self::Fast(clock, epoch, unix)
    }

    pub(super) fn now_us(&self) -> u64 {
        let (elapsed, start) = match self {
            Self::Fast(clock, epoch, unix) => {
                (clock.now().saturating_duration_since(*epoch), *unix)
            }
            Self::Tokio(epoch) => (epoch.elapsed(), 0),
        };
        start + elapsed.as_secs() * 1_000_000 + u64::from(elapsed.subsec_micros())
    }
}
