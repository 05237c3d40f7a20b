//! A validated limit: its name, algorithm, capacity and rate, and the decision it reports.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;

mod algorithm;
mod check;
mod decision;
mod lease;

pub use algorithm::Algorithm;
pub(crate) use algorithm::MAX_SUFFIX_LEN;
pub(crate) use check::check_name;
use check::{fnv1a, token_bucket_interval, window_us};
pub(crate) use lease::DEFAULT_LEASE_TIME;
pub(crate) use lease::policy_lease;

/// The largest capacity of a sliding log, whose memory and worst request grow with it (one
/// entry per unit): the dearest request (its whole capacity at once, just after as many
/// entries expired) removes and adds 250 entries, at most about 0.7 ms inside Redis on the
/// reference machine (`benches/redis_worst_case.sh`), and a bucket holds at most about 24 KB.
pub(crate) const MAX_LOG_CAPACITY: u64 = 250;

/// The most slots a [concurrency](Algorithm::Concurrency) limit may have: one sorted-set
/// member each in Redis (about 60 bytes), so a bucket holds at most about 60 KB.
pub(crate) const MAX_CONCURRENCY: u64 = 1_000;

/// The lease of a concurrency limit's slots unless set ([`Limit::concurrency`]).
pub(crate) const DEFAULT_SLOT_TTL: Duration = Duration::from_secs(30);

/// The shortest lease of a concurrency limit's slots ([`Limit::slot_ttl`]): a running
/// request renews its slot every third of the lease, so at 300 ms each renewal has 100 ms, twice
/// the default store timeout, and a slot outlives two renewals lost in a row.
pub(crate) const MIN_SLOT_TTL: Duration = Duration::from_millis(300);

/// The longest name a limit may have, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// One limit: `capacity` units per `period`, counted by an [`Algorithm`].
///
/// - [Token bucket](Algorithm::TokenBucket) ([`Limit::new`]): `capacity` is the most requests
///   (of cost 1) that can pass at once from a full bucket, and the bucket refills one token
///   every `period / refill`. That interval is kept in whole microseconds (rounded to the
///   nearest, at least 1 µs), so every store does exact integer arithmetic and all stores
///   agree to the microsecond.
/// - [Sliding log](Algorithm::SlidingLog), [sliding window](Algorithm::SlidingWindow),
///   [fixed window](Algorithm::FixedWindow) ([`Limit::sliding_log`], …): at most `capacity`
///   units per window of `period` (whole milliseconds), counted exactly, estimated, or per
///   aligned window; see `algorithm`.
///
/// Built by [`TollgateLayer::builder`](crate::TollgateLayer::builder) or these constructors,
/// which check every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    name: Arc<str>,
    /// A fixed hash of the name (FNV-1a), for in-process tables.
    name_hash: u64,
    algorithm: Algorithm,
    capacity: u64,
    refill: u64,
    period: Duration,
    /// Token bucket: microseconds per token. Windows: the window in microseconds.
    interval_us: u64,
    /// Counts requests (one each), not their cost.
    per_request: bool,
    /// Leased ([`Limit::leased`]): the lease time.
    lease: Option<Duration>,
}

impl Limit {
    /// A token bucket: `capacity` tokens, refilled continuously at `refill` tokens per
    /// `period`.
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
        Self::with_algorithm(Algorithm::TokenBucket, name, capacity, Some(refill), period)
    }

    /// A [sliding log](Algorithm::SlidingLog): at most `capacity` units in any `window`,
    /// exactly.
    ///
    /// # Errors
    ///
    /// As [`Limit::with_algorithm`].
    pub fn sliding_log(
        name: impl Into<String>,
        capacity: u64,
        window: Duration,
    ) -> Result<Self, ConfigError> {
        Self::with_algorithm(Algorithm::SlidingLog, name, capacity, None, window)
    }

    /// A [sliding window counter](Algorithm::SlidingWindow): about `capacity` units in any
    /// `window`.
    ///
    /// # Errors
    ///
    /// As [`Limit::with_algorithm`].
    pub fn sliding_window(
        name: impl Into<String>,
        capacity: u64,
        window: Duration,
    ) -> Result<Self, ConfigError> {
        Self::with_algorithm(Algorithm::SlidingWindow, name, capacity, None, window)
    }

    /// A [fixed window](Algorithm::FixedWindow): at most `capacity` units per `window`, the
    /// windows aligned to the Unix epoch (a day's window starts at midnight UTC).
    ///
    /// # Errors
    ///
    /// As [`Limit::with_algorithm`].
    pub fn fixed_window(
        name: impl Into<String>,
        capacity: u64,
        window: Duration,
    ) -> Result<Self, ConfigError> {
        Self::with_algorithm(Algorithm::FixedWindow, name, capacity, None, window)
    }

    /// A [concurrency](Algorithm::Concurrency) limit: at most `capacity` requests in flight at
    /// once, each holding a slot until its response ends. In Redis each slot has a lease of
    /// 30 s (see [`Limit::slot_ttl`]), renewed while its request runs, so only
    /// the slots of an instance that died run out on their own. It counts requests, one each,
    /// whatever their cost.
    ///
    /// ```
    /// use tollgate::{Algorithm, Limit};
    ///
    /// let streams = Limit::concurrency("streams", 2)?;
    /// assert_eq!(streams.algorithm(), Algorithm::Concurrency);
    /// # Ok::<(), tollgate::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Limit::with_algorithm`]; a capacity above 1,000.
    pub fn concurrency(name: impl Into<String>, capacity: u64) -> Result<Self, ConfigError> {
        Self::with_algorithm(
            Algorithm::Concurrency,
            name,
            capacity,
            None,
            DEFAULT_SLOT_TTL,
        )
    }

    /// The same concurrency limit with each slot held for at most `ttl` unless renewed: how
    /// long the slots of an instance that died stay taken (a running request renews its slot
    /// every third of it). The default is 30 s.
    ///
    /// # Errors
    ///
    /// When the limit is not a concurrency limit, when `ttl` is shorter than 300 ms (the
    /// error names the field `slot_ttl`), or as [`Limit::with_algorithm`].
    pub fn slot_ttl(self, ttl: Duration) -> Result<Self, ConfigError> {
        if self.algorithm != Algorithm::Concurrency {
            return Err(ConfigError::Invalid {
                field: "slot_ttl",
                value: format!("{ttl:?}"),
                reason: "only a concurrency limit holds slots",
            });
        }
        let limit = Self::with_algorithm(
            Algorithm::Concurrency,
            self.name(),
            self.capacity,
            None,
            ttl,
        )?;
        Ok(Self {
            per_request: self.per_request,
            lease: self.lease,
            ..limit
        })
    }

    /// A limit of any algorithm. `refill` is the token bucket's (default: `capacity`); the
    /// window algorithms take back their whole capacity each period, so for them it must be
    /// unset or equal to `capacity`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: as [`Limit::new`]; for the window algorithms also a
    /// `refill` other than the capacity, a `period` that is not whole milliseconds, a
    /// `capacity` × `period` in milliseconds of 2^53 or more (the scripts' arithmetic would no
    /// longer be exact), or a sliding log above 250.
    pub fn with_algorithm(
        algorithm: Algorithm,
        name: impl Into<String>,
        capacity: u64,
        refill: Option<u64>,
        period: Duration,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        check_name(&name, "limit_name")?;
        if capacity == 0 {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        if refill == Some(0) {
            return Err(ConfigError::Zero { field: "refill" });
        }
        if period.is_zero() {
            return Err(ConfigError::Zero { field: "period" });
        }
        let interval_us = match algorithm {
            Algorithm::TokenBucket => {
                token_bucket_interval(capacity, refill.unwrap_or(capacity), period)?
            }
            _ => window_us(algorithm, capacity, refill, period)?,
        };
        Ok(Self {
            name_hash: fnv1a(name.as_bytes()),
            name: name.into(),
            algorithm,
            capacity,
            refill: refill.unwrap_or(capacity),
            period,
            interval_us,
            per_request: false,
            lease: None,
        })
    }

    /// The same limit counting requests, one each, rather than their cost: in a policy that
    /// also limits a cost (say tokens per minute with `cost` = the tokens asked for), a limit
    /// of requests per minute. Refunds, charges and settlements leave it alone: the request
    /// was made, whatever its cost turns out to be. A cost above its capacity is no reason
    /// to refuse.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::Limit;
    ///
    /// let requests = Limit::new("requests", 60, 60, Duration::from_secs(60))?.per_request();
    /// assert!(requests.counts_requests());
    /// # Ok::<(), tollgate::ConfigError>(())
    /// ```
    #[must_use]
    pub fn per_request(mut self) -> Self {
        self.per_request = true;
        self
    }

    /// Whether the limit counts requests ([`Limit::per_request`], and every
    /// [concurrency](Algorithm::Concurrency) limit), not their cost.
    #[inline]
    pub fn counts_requests(&self) -> bool {
        self.per_request || self.algorithm == Algorithm::Concurrency
    }

    /// What a request of `cost` takes from this limit: `cost`, or 1 when it counts requests.
    #[inline]
    pub(crate) fn cost_of(&self, cost: u64) -> u64 {
        if self.counts_requests() { 1 } else { cost }
    }

    /// The name of the limit, as sent in the `RateLimit` header fields.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_hash(&self) -> u64 {
        self.name_hash
    }

    /// How the limit counts.
    #[inline]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The most units the limit lets pass per period (a token bucket: at once).
    #[inline]
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tokens added per [`period`](Self::period) (a token bucket; the capacity for windows).
    pub fn refill(&self) -> u64 {
        self.refill
    }

    /// The period over which [`refill`](Self::refill) tokens are added, or the window.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// A token bucket's time to refill one token, in whole microseconds; for the window
    /// algorithms, the window.
    #[inline]
    pub(crate) fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// The bucket of this limit for the requests named `key` (a [`Subject`](crate::Subject)'s
    /// key, or what a [`Store`](crate::store::Store) is given): `key:name`, and for the
    /// algorithms other than the token bucket a suffix that tells them apart (`:sl`, `:sw`,
    /// `:fw`), since their Redis types differ.
    pub fn bucket_key(&self, key: &str) -> String {
        crate::store::bucket_key(key, self)
    }

    /// The time over which the whole capacity comes back, in microseconds: a token bucket's
    /// time to fill from empty (`capacity × interval`), or the window. It is the `w` of the
    /// `RateLimit-Policy` field.
    #[inline]
    pub fn window_us(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.capacity * self.interval_us,
            _ => self.interval_us,
        }
    }

    /// The window in whole milliseconds (the window algorithms).
    pub(crate) fn window_ms(&self) -> u64 {
        (self.interval_us / 1000).max(1)
    }

    /// The same limit with its capacity (and a token bucket's refill) scaled by `share`,
    /// rounded up, at least 1: what one of several instances may admit on its own. (A token
    /// bucket whose scaled rate whole microseconds cannot keep keeps its rate, scaled in
    /// capacity only.)
    pub(crate) fn scaled(&self, share: f64) -> Self {
        let scale = |n: u64| ((n as f64 * share).ceil() as u64).clamp(1, n);
        let capacity = scale(self.capacity);
        let refill = (self.algorithm == Algorithm::TokenBucket).then(|| scale(self.refill));
        let scaled =
            Self::with_algorithm(self.algorithm, self.name(), capacity, refill, self.period)
                .unwrap_or_else(|_| Self {
                    capacity,
                    ..self.clone()
                });
        Self {
            per_request: self.per_request,
            lease: self.lease,
            ..scaled
        }
    }
}

/// The most limits one decision may involve.
pub(crate) const MAX_LIMITS: usize = 8;

pub use decision::Decision;
pub(crate) use decision::{ceil_millis, ceil_secs};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_fields_by_name() {
        let d = Duration::from_secs(1);
        let field = |r: Result<Limit, ConfigError>| r.unwrap_err().to_string();
        assert!(field(Limit::new("a", 0, 1, d)).contains("capacity"));
        assert!(field(Limit::new("a", 1, 0, d)).contains("refill"));
        assert!(field(Limit::new("a", 1, 1, Duration::ZERO)).contains("period"));
        assert!(field(Limit::new("", 1, 1, d)).contains("limit_name"));
        assert!(field(Limit::new("a:b", 1, 1, d)).contains("limit_name"));
        assert!(field(Limit::new("a", 1, 2_000_000, d)).contains("refill"));
        // 1.5 µs per token cannot be kept in whole microseconds within 0.1%.
        let odd = Duration::from_micros(1_500_000);
        assert!(field(Limit::new("a", 1, 1_000_001, odd)).contains("refill"));
        assert!(field(Limit::new("a", u64::MAX, 1, d)).contains("capacity"));
        // Windows: whole milliseconds, no refill of their own, exact arithmetic.
        let f = |algorithm, capacity, refill, period| {
            field(Limit::with_algorithm(
                algorithm, "w", capacity, refill, period,
            ))
        };
        for algorithm in [
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
        ] {
            assert!(f(algorithm, 10, Some(5), d).contains("refill"));
            assert!(f(algorithm, 10, None, Duration::from_micros(1500)).contains("period"));
            assert!(f(algorithm, 0, None, d).contains("capacity"));
            assert!(Limit::with_algorithm(algorithm, "w", 10, Some(10), d).is_ok());
        }
        let day = Duration::from_secs(86_400);
        assert!(f(Algorithm::SlidingWindow, 200_000_000, None, day).contains("2^53"));
        assert!(Limit::sliding_window("w", 100_000_000, day).is_ok());
        assert!(f(Algorithm::SlidingLog, 100_001, None, d).contains("sliding_window"));
    }

    #[test]
    fn interval_rounds_to_nearest_microsecond() {
        let limit = |c, r, ms| Limit::new("t", c, r, Duration::from_millis(ms)).unwrap();
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
    fn a_share_of_a_limit_rounds_up() {
        let bucket = Limit::new("t", 10, 10, Duration::from_secs(10)).unwrap();
        let third = bucket.scaled(1.0 / 3.0);
        assert_eq!((third.capacity(), third.refill()), (4, 4));
        assert_eq!(third.interval_us(), 2_500_000);
        let window = Limit::fixed_window("w", 100, Duration::from_secs(60)).unwrap();
        let half = window.scaled(0.5);
        assert_eq!((half.capacity(), half.window_us()), (50, 60_000_000));
        assert_eq!(window.scaled(0.000_1).capacity(), 1);
    }
}
