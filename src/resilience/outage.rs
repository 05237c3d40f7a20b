//! Warnings about a failing store that do not flood the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::sync::AtMostEvery;
use crate::{FailMode, StoreError};

/// At most one warning per kind of failure per this many milliseconds while the store keeps
/// failing.
const WARN_EVERY_MS: u64 = 1_000;

/// Tracks store failures: the first failure of each kind is logged at once, later ones at
/// most once a second with the count of those not logged, and the first success after a
/// failure once.
#[derive(Debug)]
pub(crate) struct OutageLog {
    kinds: [KindLog; StoreError::KINDS.len()],
    /// Failures since the store last answered.
    failures: AtomicU64,
    failing: AtomicBool,
}

#[derive(Debug)]
struct KindLog {
    /// A warning of this kind at most every [`WARN_EVERY_MS`].
    warnings: AtMostEvery,
    /// Failures of this kind since its last warning.
    suppressed: AtomicU64,
}

impl OutageLog {
    pub(crate) fn new() -> Self {
        Self {
            kinds: std::array::from_fn(|_| KindLog {
                warnings: AtMostEvery::new(Duration::from_millis(WARN_EVERY_MS)),
                suppressed: AtomicU64::new(0),
            }),
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
        if log.warnings.try_claim() {
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
                    k.warnings.reset();
                    k.suppressed.swap(0, Ordering::Relaxed)
                })
                .sum();
            tracing::info!(failures, suppressed, "rate-limit store answers again");
        }
    }
}
