//! [`LimiterBuilder`]: the engine's settings, checked once by [`LimiterBuilder::build`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::reload::{Fixed, Made};
use super::{Core, Limiter, Shared};
use crate::client::Bypass;
use crate::key::check_prefix;
use crate::policy::Policies;
use crate::resilience::FailMode;
use crate::resilience::breaker::Breaker;
use crate::resilience::outage::OutageLog;
use crate::store::{MemoryStore, Store};
use crate::{Algorithm, ConfigError, Limit};

/// The default time a store may take to decide.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The default prefix of every bucket key.
pub(crate) const DEFAULT_KEY_PREFIX: &str = "tollgate";
/// The default name of the single limit (in the `RateLimit` header fields and bucket keys).
pub(crate) const DEFAULT_LIMIT_NAME: &str = "default";
/// The default longest a denial is remembered in process.
pub(crate) const DEFAULT_DENY_CACHE_MAX: Duration = Duration::from_secs(1);
/// The default most calls to a remote store under way at once.
pub(crate) const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Configures a [`Limiter`]; every field is checked by [`LimiterBuilder::build`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::{FailMode, Limiter};
///
/// // 10 at once, then one more each second, per subject.
/// let limiter = Limiter::builder()
///     .capacity(10)
///     .refill(10)
///     .period(Duration::from_secs(10))
///     .fail_mode(FailMode::Closed)
///     .build()
///     .expect("valid configuration");
/// # let _ = limiter;
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct LimiterBuilder<St = MemoryStore> {
    store: St,
    options: Options,
}

/// The builder's settings other than the store.
pub(crate) struct Options {
    algorithm: Algorithm,
    capacity: Option<u64>,
    refill: Option<u64>,
    period: Option<Duration>,
    limit_name: String,
    policies: Option<Policies>,
    key_prefix: String,
    timeout: Duration,
    fail_mode: FailMode,
    shadow: bool,
    bypass: Bypass,
    deny_cache: bool,
    deny_cache_max: Duration,
    share_buckets: bool,
    local_share: f64,
    max_in_flight: usize,
}

impl<St: std::fmt::Debug> std::fmt::Debug for LimiterBuilder<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("store", &self.store)
            .field("capacity", &self.options.capacity)
            .field("refill", &self.options.refill)
            .field("period", &self.options.period)
            .field("policies", &self.options.policies)
            .finish_non_exhaustive()
    }
}

impl LimiterBuilder {
    pub(super) fn new() -> Self {
        Self {
            store: MemoryStore::new(),
            options: Options {
                algorithm: Algorithm::TokenBucket,
                capacity: None,
                refill: None,
                period: None,
                limit_name: DEFAULT_LIMIT_NAME.to_owned(),
                policies: None,
                key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
                timeout: DEFAULT_TIMEOUT,
                fail_mode: FailMode::Open,
                shadow: false,
                bypass: Bypass::new(),
                deny_cache: true,
                deny_cache_max: DEFAULT_DENY_CACHE_MAX,
                share_buckets: false,
                local_share: 1.0,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            },
        }
    }
}

impl<St> LimiterBuilder<St> {
    /// Where buckets are kept: a [`MemoryStore`] unless set, or a
    /// [`RedisStore`](crate::RedisStore) to share limits between instances, or an
    /// [`AnyStore`](crate::store::AnyStore) chosen at run time.
    pub fn store<T: Store>(self, store: T) -> LimiterBuilder<T> {
        LimiterBuilder {
            store,
            options: self.options,
        }
    }

    /// How the single default limit counts (default [`Algorithm::TokenBucket`]); see
    /// `algorithm`.
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.options.algorithm = algorithm;
        self
    }

    /// The most units that can pass per period (a token bucket: at once, from a full bucket),
    /// for the single default limit. Required unless [`policies`](Self::policies) are set.
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.options.capacity = Some(capacity);
        self
    }

    /// Units added back per [`period`](Self::period), continuously (a token bucket). Defaults
    /// to the capacity: an empty bucket is full again after one period. The window algorithms
    /// take back their whole capacity each period and accept no other value.
    pub fn refill(mut self, refill: u64) -> Self {
        self.options.refill = Some(refill);
        self
    }

    /// The period over which [`refill`](Self::refill) units come back, or the window.
    /// Required unless [`policies`](Self::policies) are set.
    pub fn period(mut self, period: Duration) -> Self {
        self.options.period = Some(period);
        self
    }

    /// The single limit's name in the `RateLimit` header fields and the bucket keys (default
    /// `default`): 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
    pub fn limit_name(mut self, name: impl Into<String>) -> Self {
        self.options.limit_name = name.into();
        self
    }

    /// Per-route rules and several limits per subject, instead of one limit
    /// (`capacity`/`refill`/`period`) for everything.
    pub fn policies(mut self, policies: Policies) -> Self {
        self.options.policies = Some(policies);
        self
    }

    /// The prefix of every bucket key (default `tollgate`): 1 to 64 printable ASCII
    /// characters without spaces or braces. Give each limiter sharing a store its own prefix
    /// or its own limit names, or they share buckets.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options.key_prefix = prefix.into();
        self
    }

    /// The longest a store may take to answer (default 50 ms); then the fail mode applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// What a decision gets when the store fails (default [`FailMode::Open`]).
    pub fn fail_mode(mut self, fail_mode: FailMode) -> Self {
        self.options.fail_mode = fail_mode;
        self
    }

    /// The share of each limit this instance admits on its own with [`FailMode::Local`] while
    /// the store fails (default 1.0, the whole limit): 1/N for N instances sharing the limits
    /// evenly. Capacities (and a token bucket's refill) are scaled and rounded up, at least 1.
    pub fn local_share(mut self, share: f64) -> Self {
        self.options.local_share = share;
        self
    }

    /// The most calls to a remote store under way at once (default 1,024); a decision beyond
    /// that is not sent and follows the fail mode at once, so a slow store cannot pile up
    /// waiting callers.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.options.max_in_flight = calls;
        self
    }

    /// Shadow mode for every policy (default off): decide and report (the `RateLimit` fields,
    /// logs, metrics) but never refuse. Rules can turn it on one by one.
    pub fn shadow(mut self, enabled: bool) -> Self {
        self.options.shadow = enabled;
        self
    }

    /// Clients that are never refused (still decided and reported).
    pub fn bypass(mut self, bypass: Bypass) -> Self {
        self.options.bypass = bypass;
        self
    }

    /// The local deny cache (default on): after the store denies a subject, later decisions
    /// of the same cost or more on it are denied in process until the wait is over (at most
    /// [`deny_cache_max`](Self::deny_cache_max)), without a store call. Exact while the store
    /// keeps its state, since other instances can only take units; [`Limiter::refund`] and
    /// [`Limiter::reset`] clear it for a subject. Not used with a store that is
    /// not [remote](Store::is_remote), which decides in process anyway.
    pub fn deny_cache(mut self, enabled: bool) -> Self {
        self.options.deny_cache = enabled;
        self
    }

    /// The longest the deny cache remembers a denial (default 1 s), however long the store
    /// said to wait: the bound on how long this instance can deny what the store would allow
    /// after units came back other than by time (a key deleted, Redis restarted empty, a
    /// refund or reset on another instance, a raised limit). Each cached subject costs the
    /// store at most one call per this long.
    pub fn deny_cache_max(mut self, max: Duration) -> Self {
        self.options.deny_cache_max = max;
        self
    }

    /// Whether this limiter may share its buckets with another limiter (or layer) of this
    /// process on the same store, with the same key prefix and limit names (default `false`:
    /// [`build`](Self::build) refuses, since each would charge the same buckets, so a request
    /// through both would count twice). Set it on both when that is what you mean.
    pub fn share_buckets(mut self, share: bool) -> Self {
        self.options.share_buckets = share;
        self
    }

    /// Checks the configuration and builds the limiter.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is missing, zero or invalid, or
    /// `key_prefix` when another live limiter on the same store uses the same prefix and
    /// limit names (see [`share_buckets`](Self::share_buckets)).
    pub fn build(self) -> Result<Limiter<St>, ConfigError>
    where
        St: Store,
    {
        let options = self.options;
        let single = options.capacity.is_some()
            || options.period.is_some()
            || options.refill.is_some()
            || options.algorithm != Algorithm::TokenBucket;
        let policies = match options.policies {
            Some(_) if single => {
                return Err(ConfigError::Invalid {
                    field: "policies",
                    value: "capacity/refill/period".into(),
                    reason: "set either capacity, refill, period and algorithm, or policies, not both",
                });
            }
            Some(policies) => policies,
            None => {
                let capacity = options
                    .capacity
                    .ok_or(ConfigError::Missing { field: "capacity" })?;
                let period = options
                    .period
                    .ok_or(ConfigError::Missing { field: "period" })?;
                Policies::single(Limit::with_algorithm(
                    options.algorithm,
                    options.limit_name,
                    capacity,
                    options.refill,
                    period,
                )?)
            }
        };
        if options.timeout.is_zero() {
            return Err(ConfigError::Zero { field: "timeout" });
        }
        if options.deny_cache_max.is_zero() {
            return Err(ConfigError::Zero {
                field: "deny_cache_max",
            });
        }
        if options.max_in_flight == 0 {
            return Err(ConfigError::Zero {
                field: "max_in_flight",
            });
        }
        let share = options.local_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(ConfigError::Invalid {
                field: "local_share",
                value: share.to_string(),
                reason: "must be more than 0 and at most 1 (1/N for N instances)",
            });
        }
        check_prefix(&options.key_prefix)?;
        let remote = self.store.is_remote();
        let fixed = Fixed {
            claims_on: self.store.identity().filter(|_| !options.share_buckets),
            deny_cache_max: (options.deny_cache && remote).then_some(options.deny_cache_max),
            local_share: (options.fail_mode == FailMode::Local && remote).then_some(share),
            remote,
        };
        let id = {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        let made = Made::new(policies, &options.key_prefix, &fixed, id, None)?;
        let core = Core {
            policies: made.policies,
            prefixes: made.prefixes,
            _claims: made.claims,
            telemetry: made.telemetry,
            local: made.local,
            deny_cache: made.deny_cache,
            leases: made.leases,
            key_prefix: options.key_prefix.into_boxed_str(),
            timeout: options.timeout,
            fail_mode: options.fail_mode,
            shadow: options.shadow,
            bypass: options.bypass,
            outage: Arc::new(OutageLog::new()),
            breaker: remote.then(|| Breaker::new(options.max_in_flight)),
            // A quarter of the calls in flight at most: decisions keep most of the room.
            worker: remote.then(|| super::Worker::new(options.max_in_flight / 4)),
            id,
            generation: 0,
            loaded_at: SystemTime::now(),
            fixed: Arc::new(fixed),
        };
        crate::telemetry::policies_loaded(core.loaded_at);
        Ok(Limiter {
            shared: Arc::new(Shared {
                store: self.store,
                core: ArcSwap::from_pointee(core),
                reloading: parking_lot::Mutex::new(()),
            }),
        })
    }
}
