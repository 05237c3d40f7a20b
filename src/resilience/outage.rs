//! Warnings about a failing store that do not flood the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::time::Instant;

use crate::{FailMode, StoreError};

/// At most one warning per kind of failure per this many milliseconds while the store keeps
/// failing.
const WARN_EVERY_MS: u64 = 1_000;

/// Tracks store failures: the first failure of each kind is logged at once, later ones at
/// most once a second with the count of those not logged, and the first success after a
/// failure once.
#[derive(Debug)]
pub(crate) struct OutageLog {
    start: Instant,
    kinds: [KindLog; StoreError::KINDS.len()],
    /// Failures since the store last answered.
    failures: AtomicU64,
    failing: AtomicBool,
}

#[derive(Debug, Default)]
struct KindLog {
    /// Milliseconds since `start` before which no warning of this kind is logged.
    next_warn_ms: AtomicU64,
    /// Failures of this kind since its last warning.
    suppressed: AtomicU64,
}

impl OutageLog {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            kinds: Default::default(),
            failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn failed(&self, error: &StoreError, fail_mode: FailMode) {
        self.failing.store(true, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        if matches!(error, StoreError::CircuitOpen) {
            // Not a new failure: the breaker said so when it opened.
            return;
        }
        let log = &self.kinds[error.kind_index()];
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = log.next_warn_ms.load(Ordering::Relaxed);
        let claimed = now >= next
            && log
                .next_warn_ms
                .compare_exchange(
                    next,
                    now + WARN_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if claimed {
            let suppressed = log.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                error = %error,
                kind = error.kind(),
                fail_mode = fail_mode.as_str(),
                suppressed,
                "rate-limit store failed; requests follow the fail mode"
            );
        } else {
            log.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn answered(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            let failures = self.failures.swap(0, Ordering::Relaxed);
            let suppressed: u64 = self
                .kinds
                .iter()
                .map(|k| {
                    k.next_warn_ms.store(0, Ordering::Relaxed);
                    k.suppressed.swap(0, Ordering::Relaxed)
                })
                .sum();
            tracing::info!(failures, suppressed, "rate-limit store answers again");
        }
    }
}
