//! A validated token-bucket limit and the arithmetic every store shares.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;

/// The longest time a bucket may take to fill from empty (`capacity × interval`).
///
/// Bucket state is kept as microseconds of the Redis clock in Lua numbers (doubles), which
/// are exact integers up to 2^53 µs (about 285 years since 1970); a century of headroom keeps
/// every sum exact.
const MAX_FILL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The longest name a limit may have, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// One token-bucket limit: `capacity` tokens, refilled continuously at `refill` tokens per
/// `period`.
///
/// `capacity` is the most requests (of cost 1) that can pass at once from a full bucket.
/// The bucket refills one token every `period / refill`; that interval is kept in whole
/// microseconds (rounded to the nearest, at least 1 µs), so every store does exact integer
/// arithmetic and all stores agree to the microsecond.
///
/// Built by [`RateLimitLayer::builder`](crate::RateLimitLayer::builder) or [`Limit::new`],
/// which check every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    name: Arc<str>,
    /// A fixed hash of the name (FNV-1a), for in-process tables.
    name_hash: u64,
    capacity: u64,
    refill: u64,
    period: Duration,
    interval_us: u64,
}

impl Limit {
    /// Checks and builds a limit.
    ///
    /// `name` names the limit in the `RateLimit` header fields and in the store keys: 1 to 64
    /// ASCII letters, digits, `-`, `_` or `.`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when `capacity`, `refill` or `period` is zero, the
    /// name is not valid, the refill is faster than one token per microsecond, or the bucket
    /// would take more than a century to fill.
    pub fn new(
        name: impl Into<String>,
        capacity: u64,
        refill: u64,
        period: Duration,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        check_name(&name, "policy_name")?;
        if capacity == 0 {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        if refill == 0 {
            return Err(ConfigError::Zero { field: "refill" });
        }
        if period.is_zero() {
            return Err(ConfigError::Zero { field: "period" });
        }
        let period_us = period.as_micros();
        if period_us < u128::from(refill) {
            return Err(ConfigError::RefillTooFast { refill, period });
        }
        // Round to the nearest microsecond; refuse a rate that rounding would change by more
        // than 0.1%.
        let interval_us = (period_us + u128::from(refill) / 2) / u128::from(refill);
        let drift = (interval_us * u128::from(refill)).abs_diff(period_us);
        if drift * 1000 > period_us {
            return Err(ConfigError::Imprecise { refill, period });
        }
        let fill = interval_us.checked_mul(u128::from(capacity));
        if fill.is_none_or(|fill| fill > MAX_FILL.as_micros()) {
            return Err(ConfigError::FillTooSlow {
                capacity,
                refill,
                period,
            });
        }
        Ok(Self {
            name_hash: fnv1a(name.as_bytes()),
            name: name.into(),
            capacity,
            refill,
            period,
            interval_us: u64::try_from(interval_us).expect("checked against MAX_FILL"),
        })
    }

    /// The name of the limit, as sent in the `RateLimit` header fields.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    pub(crate) fn name_hash(&self) -> u64 {
        self.name_hash
    }

    /// The most tokens the bucket holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tokens added per [`period`](Self::period).
    pub fn refill(&self) -> u64 {
        self.refill
    }

    /// The period over which [`refill`](Self::refill) tokens are added.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The time to refill one token, in whole microseconds.
    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// The time for an empty bucket to fill, in microseconds.
    pub fn fill_us(&self) -> u64 {
        self.capacity * self.interval_us
    }

    /// Decides a request of `cost` tokens against a bucket that is full at `full_at`, at time
    /// `now` (both in microseconds of one clock). A cost of 0 counts as 1; a cost above the
    /// capacity is denied with a `retry_after` of [`Duration::MAX`]: it can never pass.
    ///
    /// Returns the decision and, when allowed, the bucket's new full-at time (when denied, the
    /// bucket is unchanged). A bucket never seen is full: pass `full_at = now`.
    ///
    /// A `full_at` further ahead than one whole bucket (the clock stepped back since it was
    /// written) counts as an empty bucket, so a clock correction never stops a key for longer
    /// than it takes to fill.
    ///
    /// This is the arithmetic of `lua/token_bucket.lua`, step for step, so every store that
    /// uses it agrees with Redis to the microsecond; a custom [`Store`](crate::Store) can keep
    /// one `u64` per key and call this (or [`decide_all`]) under its own lock.
    pub fn decide(&self, full_at: u64, now: u64, cost: u64) -> (Decision, Option<u64>) {
        let mut full_ats = [full_at];
        let decision = decide_all(std::slice::from_ref(self), &mut full_ats, now, cost);
        (decision, decision.allowed.then_some(full_ats[0]))
    }

    /// The bucket before a request: its full-at time clamped to `[now, now + fill]`, and the
    /// wait until it would be full again after taking `cost`.
    fn before(&self, full_at: u64, now: u64, cost: u64) -> (u64, u64) {
        let full_at = full_at.clamp(now, now.saturating_add(self.fill_us()));
        let after = (full_at - now).saturating_add(cost.saturating_mul(self.interval_us));
        (full_at, after)
    }

    /// Builds a [`Decision`] from a bucket's state after a decision: whether it allowed, the
    /// whole tokens left and the microseconds until it is full again.
    pub fn decision(
        &self,
        allowed: bool,
        remaining: u64,
        full_after_us: u64,
        cost: u64,
    ) -> Decision {
        let retry_after = if allowed {
            Duration::ZERO
        } else if cost > self.capacity {
            Duration::MAX
        } else {
            // Wait until `cost` tokens exist: the bucket holds `burst - full_after` worth.
            Duration::from_micros(
                full_after_us
                    .saturating_add(cost.max(1).saturating_mul(self.interval_us))
                    .saturating_sub(self.fill_us()),
            )
        };
        Decision::new(
            allowed,
            self.capacity,
            remaining,
            retry_after,
            Duration::from_micros(full_after_us),
        )
    }

    /// Microseconds until at least one token is in a bucket that is full after `full_after_us`.
    pub(crate) fn one_token_after_us(&self, full_after_us: u64) -> u64 {
        full_after_us
            .saturating_add(self.interval_us)
            .saturating_sub(self.fill_us())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The most limits one decision may involve.
pub const MAX_LIMITS: usize = 8;

/// Decides a request of `cost` tokens against several buckets at once, all or nothing: it
/// passes only if every bucket holds `cost` tokens, and then takes them from every bucket
/// (writing each bucket's new full-at time into `full_ats`); otherwise nothing is taken and
/// `full_ats` is unchanged.
///
/// The decision reports one limit, [`Decision::index`]: when denied, the one with the longest
/// wait (so `retry_after` is the longest wait among the denying limits); when allowed, the one
/// with the fewest tokens left; the first on a tie. `lua/token_bucket.lua` does the same.
///
/// # Panics
///
/// When `limits` is empty or `full_ats` is not as long as `limits`.
pub fn decide_all(limits: &[Limit], full_ats: &mut [u64], now: u64, cost: u64) -> Decision {
    assert!(!limits.is_empty() && limits.len() == full_ats.len());
    let cost = cost.max(1);
    // A cost above a capacity can never pass: say so, whatever the other limits say.
    if let Some(i) = limits.iter().position(|l| l.capacity < cost) {
        let (full_at, _) = limits[i].before(full_ats[i], now, cost);
        return denied_decision(limits, i, full_at - now, cost);
    }
    // The denying limit with the longest wait: (index, wait, full after).
    let mut worst: Option<(usize, u64, u64)> = None;
    for (i, (limit, &full_at)) in limits.iter().zip(full_ats.iter()).enumerate() {
        let (full_at, after) = limit.before(full_at, now, cost);
        let burst = limit.fill_us();
        if after > burst && worst.is_none_or(|(_, wait, _)| after - burst > wait) {
            worst = Some((i, after - burst, full_at - now));
        }
    }
    if let Some((i, _, full_after)) = worst {
        return denied_decision(limits, i, full_after, cost);
    }
    let mut afters = [0; MAX_LIMITS];
    for ((limit, full_at), after) in limits
        .iter()
        .zip(full_ats.iter_mut())
        .zip(afters.iter_mut())
    {
        *after = limit.before(*full_at, now, cost).1;
        *full_at = now.saturating_add(*after);
    }
    allowed_decision(limits, &afters[..limits.len()], cost)
}

/// The decision when every limit allowed and bucket `i` is full again after `afters[i]`
/// microseconds: it reports the limit with the fewest whole tokens left (the first on a tie).
pub(crate) fn allowed_decision(limits: &[Limit], afters: &[u64], cost: u64) -> Decision {
    let mut best: Option<Decision> = None;
    for (i, (limit, &after)) in limits.iter().zip(afters).enumerate() {
        let remaining = limit.fill_us().saturating_sub(after) / limit.interval_us;
        if best.is_none_or(|b| remaining < b.remaining) {
            best = Some(limit.decision(true, remaining, after, cost).with_index(i));
        }
    }
    best.expect("limits is not empty")
}

/// The decision when limit `index` refused with the longest wait, its bucket full again after
/// `full_after` microseconds.
pub(crate) fn denied_decision(
    limits: &[Limit],
    index: usize,
    full_after: u64,
    cost: u64,
) -> Decision {
    let limit = &limits[index];
    let remaining = limit.fill_us().saturating_sub(full_after) / limit.interval_us;
    limit
        .decision(false, remaining, full_after, cost)
        .with_index(index)
}

/// Checks a name that goes into headers and keys: 1 to 64 ASCII letters, digits, `-`, `_` or
/// `.`; `field` names it in the error.
pub(crate) fn check_name(name: &str, field: &'static str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            value: name.to_owned(),
            reason: "must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
        })
    }
}

/// The outcome of one rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may pass. When it may, its tokens were taken.
    pub allowed: bool,
    /// The bucket's capacity.
    pub limit: u64,
    /// Whole tokens left in the bucket after this decision.
    pub remaining: u64,
    /// When denied, the exact wait until enough tokens exist for this request; zero when
    /// allowed; [`Duration::MAX`] when the request costs more than the capacity and can never
    /// pass.
    pub retry_after: Duration,
    /// The wait until the bucket is full again.
    pub reset_after: Duration,
    /// Which of the request's limits this decision reports, by position: when denied the one
    /// with the longest wait, when allowed the one with the fewest tokens left.
    pub index: usize,
}

impl Decision {
    /// Builds a decision; for [`Store`](crate::Store) implementations.
    pub fn new(
        allowed: bool,
        limit: u64,
        remaining: u64,
        retry_after: Duration,
        reset_after: Duration,
    ) -> Self {
        Self {
            allowed,
            limit,
            remaining,
            retry_after,
            reset_after,
            index: 0,
        }
    }

    /// The same decision, reporting the limit at position `index`.
    pub fn with_index(mut self, index: usize) -> Self {
        self.index = index;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(capacity: u64, refill: u64, period_ms: u64) -> Limit {
        Limit::new("t", capacity, refill, Duration::from_millis(period_ms)).unwrap()
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let d = Duration::from_secs(1);
        let field = |r: Result<Limit, ConfigError>| r.unwrap_err().to_string();
        assert!(field(Limit::new("a", 0, 1, d)).contains("capacity"));
        assert!(field(Limit::new("a", 1, 0, d)).contains("refill"));
        assert!(field(Limit::new("a", 1, 1, Duration::ZERO)).contains("period"));
        assert!(field(Limit::new("", 1, 1, d)).contains("policy_name"));
        assert!(field(Limit::new("a:b", 1, 1, d)).contains("policy_name"));
        assert!(field(Limit::new("a", 1, 2_000_000, d)).contains("refill"));
        // 1.5 µs per token cannot be kept in whole microseconds within 0.1%.
        let odd = Duration::from_micros(1_500_000);
        assert!(field(Limit::new("a", 1, 1_000_001, odd)).contains("refill"));
        assert!(field(Limit::new("a", u64::MAX, 1, d)).contains("capacity"));
    }

    #[test]
    fn interval_rounds_to_nearest_microsecond() {
        assert_eq!(limit(10, 10, 10_000).interval_us(), 1_000_000);
        assert_eq!(limit(3, 3, 1_000).interval_us(), 333_333);
        assert_eq!(limit(7, 7, 10).interval_us(), 1_429);
        let err = Limit::new("a", 6, 6, Duration::from_millis(1)).unwrap_err();
        assert!(
            matches!(err, ConfigError::Imprecise { refill: 6, .. }),
            "{err}"
        );
    }

    #[test]
    fn new_bucket_starts_full() {
        let l = limit(10, 10, 10_000);
        let (d, full_at) = l.decide(0, 5_000_000, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
        assert_eq!(d.reset_after, Duration::from_secs(1));
        assert_eq!(d.retry_after, Duration::ZERO);
        assert_eq!(full_at, Some(6_000_000));
    }

    #[test]
    fn extreme_costs_and_clocks_never_overflow() {
        let l = limit(10, 10, 10_000);
        let now = 1_000_000_000;
        for cost in [11, 1 << 40, u64::MAX] {
            let (d, none) = l.decide(0, now, cost);
            assert!(!d.allowed);
            assert_eq!(none, None);
            assert_eq!(d.remaining, 10);
            assert_eq!(d.retry_after, Duration::MAX);
        }
        // Cost 0 is cost 1.
        assert_eq!(l.decide(0, now, 0).0.remaining, 9);
        // The clock stepped back by an hour: the bucket counts as empty, not as stopped for an
        // hour.
        let (d, _) = l.decide(now + 3_600_000_000, now, 1);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset_after, Duration::from_secs(10));
        let (d, _) = l.decide(u64::MAX, u64::MAX - 5, u64::MAX);
        assert!(!d.allowed);
    }

    #[test]
    fn several_limits_are_all_or_nothing() {
        let burst = limit(2, 2, 2_000); // 2 at once, one per second
        let daily = limit(3, 3, 86_400_000); // 3 a day
        let limits = [burst, daily];
        let now = 1_000_000_000;
        let mut full_ats = [now, now];
        let d = decide_all(&limits, &mut full_ats, now, 1);
        // Both took a token: 1 left of the burst, 2 of the daily; the burst is reported.
        assert!(d.allowed);
        assert_eq!((d.index, d.remaining), (0, 1));
        let d = decide_all(&limits, &mut full_ats, now, 1);
        assert_eq!((d.allowed, d.index, d.remaining), (true, 0, 0));
        // The burst limit is empty: denied, and the daily limit keeps its last token.
        let before = full_ats;
        let d = decide_all(&limits, &mut full_ats, now, 1);
        assert_eq!((d.allowed, d.index), (false, 0));
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(full_ats, before);
        // A second later the burst limit has a token, the daily one its last: both end at 0,
        // and the first is reported on the tie.
        let d = decide_all(&limits, &mut full_ats, now + 1_000_000, 1);
        assert_eq!((d.allowed, d.index, d.remaining), (true, 0, 0));
        // At 2 s the burst limit would allow, the daily one denies: 8 h after its first token
        // was taken, less the 2 s gone.
        let d = decide_all(&limits, &mut full_ats, now + 2_000_000, 1);
        assert_eq!((d.allowed, d.index), (false, 1));
        assert_eq!(d.retry_after, Duration::from_secs(8 * 3600 - 2));
    }

    #[test]
    fn a_cost_above_any_capacity_never_passes_even_beside_a_longer_wait() {
        let small = limit(2, 2, 2_000);
        let slow = limit(100, 1, 3_600_000);
        let now = 1_000_000_000;
        // The slow limit is empty (an hour to the next token); the small one is full.
        let mut full_ats = [now, now + 100 * 3_600_000_000];
        let d = decide_all(&[small, slow], &mut full_ats, now, 3);
        assert_eq!((d.allowed, d.index), (false, 0));
        assert_eq!(d.retry_after, Duration::MAX);
        // And nothing overflows when the clock is at its end.
        let l = limit(10, 10, 10_000);
        let (d, full_at) = l.decide(0, u64::MAX - 5, 1);
        assert!(d.allowed);
        assert_eq!(full_at, Some(u64::MAX));
    }

    #[test]
    fn denial_reports_exact_wait_and_takes_nothing() {
        let l = limit(2, 1, 1_000);
        let now = 1_000_000;
        let (_, f) = l.decide(0, now, 1);
        let (_, f) = l.decide(f.unwrap(), now + 100, 1);
        let full_at = f.unwrap();
        let (d, none) = l.decide(full_at, now + 250_000, 1);
        assert!(!d.allowed);
        assert_eq!(none, None);
        assert_eq!(d.remaining, 0);
        // The first token comes back one interval after the first request, the bucket is full
        // two intervals after it.
        assert_eq!(d.retry_after, Duration::from_micros(750_000));
        assert_eq!(d.reset_after, Duration::from_micros(1_750_000));
    }
}
