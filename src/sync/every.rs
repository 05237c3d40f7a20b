//! [`AtMostEvery`]: a turn at most once per interval, claimed without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Hands out a turn at most once per interval, to whichever caller claims it first. Timed by
/// tokio's clock, so tests can pause it.
#[derive(Debug)]
pub(crate) struct AtMostEvery {
    start: Instant,
    every_ms: u64,
    /// Milliseconds since `start` before which no turn is handed out.
    next_ms: AtomicU64,
}

impl AtMostEvery {
    /// A turn is available now, then at most once per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            start: Instant::now(),
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this caller gets the turn: the interval since the last turn has passed, and no
    /// other caller took it meanwhile.
    pub(crate) fn try_claim(&self) -> bool {
        let now = self.now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.every_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// No turn until a whole interval from now.
    pub(crate) fn postpone(&self) {
        let next = self.now_ms().saturating_add(self.every_ms);
        self.next_ms.store(next, Ordering::Relaxed);
    }

    /// A turn is available again now.
    pub(crate) fn reset(&self) {
        self.next_ms.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_turn_per_interval() {
        let every = AtMostEvery::new(Duration::from_millis(100));
        assert!(every.try_claim());
        assert!(!every.try_claim());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!every.try_claim());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(every.try_claim());
        every.postpone();
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!every.try_claim());
        every.reset();
        assert!(every.try_claim());
    }
}
