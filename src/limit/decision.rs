//! [`Decision`]: what one decision reports of a limit.

use std::time::Duration;

/// The outcome of one rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may pass. When it may, its units were taken.
    pub allowed: bool,
    /// The limit's capacity.
    pub limit: u64,
    /// Whole units left after this decision.
    pub remaining: u64,
    /// When denied, the wait until this request would fit, if nothing else is taken
    /// meanwhile; zero when allowed; [`Duration::MAX`] when the request costs more than the
    /// capacity and can never pass.
    pub retry_after: Duration,
    /// The wait until the limit is whole again (nothing counted against it).
    pub reset_after: Duration,
    /// When no unit is left, the wait until at least one is (the `t` of the `RateLimit`
    /// field); zero otherwise.
    pub available_after: Duration,
    /// Which of the request's limits this decision reports, by position: when denied the one
    /// with the longest wait, when allowed the one with the fewest units left.
    pub index: usize,
}

impl Decision {
    /// Builds a decision; for [`Store`](crate::store::Store) implementations. When no unit is left,
    /// `available_after` is taken to be the wait of a denied request, or `reset_after`; set
    /// it exactly with [`Decision::with_available_after`].
    #[inline]
    pub fn new(
        allowed: bool,
        limit: u64,
        remaining: u64,
        retry_after: Duration,
        reset_after: Duration,
    ) -> Self {
        let available_after = match remaining {
            0 if !allowed && retry_after != Duration::MAX => retry_after,
            0 => reset_after,
            _ => Duration::ZERO,
        };
        Self::reported(
            allowed,
            limit,
            remaining,
            retry_after,
            reset_after,
            available_after,
        )
    }

    /// A decision with every wait given: what the algorithms report.
    pub(crate) fn reported(
        allowed: bool,
        limit: u64,
        remaining: u64,
        retry_after: Duration,
        reset_after: Duration,
        available_after: Duration,
    ) -> Self {
        Self {
            allowed,
            limit,
            remaining,
            retry_after,
            reset_after,
            available_after,
            index: 0,
        }
    }

    /// The same decision, reporting the limit at position `index`.
    #[inline]
    pub fn with_index(mut self, index: usize) -> Self {
        self.index = index;
        self
    }

    /// The same decision, with a unit available again after `wait`.
    #[inline]
    pub fn with_available_after(mut self, wait: Duration) -> Self {
        self.available_after = wait;
        self
    }
}

/// Seconds, rounded up (saturating).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Milliseconds, rounded up (saturating).
pub(crate) fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX)
}
