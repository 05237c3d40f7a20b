//! [`RateLimitLayer`] and its [`Builder`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tower_layer::Layer;

use crate::breaker::Breaker;
use crate::client::{ApiKey, Bypass, ClientExtractor};
use crate::cost::{CostExtractor, UnitCost};
use crate::deny_cache::DenyCache;
use crate::key::check_prefix;
use crate::outage::OutageLog;
use crate::policy::Policies;
use crate::response::{Rejection, RejectionBody, RejectionHook, Style};
use crate::store::{MemoryStore, Store};
use crate::telemetry::Telemetry;
use crate::{Algorithm, ConfigError, Decision, Limit, RateLimit};

/// The default time a store may take to decide.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The default prefix of every bucket key.
pub const DEFAULT_KEY_PREFIX: &str = "tollgate";
/// The default name of the limit in the `RateLimit` header fields.
pub const DEFAULT_POLICY_NAME: &str = "default";
/// The default most calls to a remote store under way at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// What a request gets when the store fails or does not answer within the timeout.
///
/// | | `Open` (default) | `Closed` | `Local` |
/// |---|---|---|---|
/// | while the store is down or slow | passes, unlimited | `503`, `Retry-After: 1` | decided in this process against [`local_share`](Builder::local_share) of each limit |
/// | nothing passes unlimited | no | yes | yes |
/// | the service stays up | yes | no | yes |
/// | limits hold across instances | no | yes (nothing passes) | approximately: each instance admits its share |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Forward the request unlimited (the default): an outage of the store does not become an
    /// outage of the service, but nothing is limited while it lasts.
    #[default]
    Open,
    /// Answer `503 Service Unavailable` with `Retry-After: 1`: nothing passes unlimited, but
    /// the service is down while the store is.
    Closed,
    /// Decide in this process, with an in-memory store holding a share of each limit
    /// ([`Builder::local_share`], e.g. 1/N for N instances), until the store answers again: the
    /// service stays up and stays limited, approximately. Decisions are the same algorithms
    /// and carry the same fields. The local buckets know nothing of Redis's (a client starts
    /// with whole ones) and carry over from one outage to the next, refilling meanwhile. A
    /// request that costs more than the local share of a limit answers `503` until the store is
    /// back. (With an in-process store, which cannot fail, `Local` is the same as `Open`.)
    Local,
}

impl FailMode {
    /// Every mode, in order.
    pub const ALL: [FailMode; 3] = [Self::Open, Self::Closed, Self::Local];

    /// `open`, `closed` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            "local" => Ok(Self::Local),
            _ => Err(ConfigError::Invalid {
                field: "fail_mode",
                value: s.to_owned(),
                reason: "must be \"open\", \"closed\" or \"local\"",
            }),
        }
    }
}

/// Rate-limits the requests of each client on each endpoint with a token bucket.
///
/// Built with [`RateLimitLayer::builder`]. The store, the client extractor and the policies are
/// created once and shared by every service the layer makes. Cloning is cheap.
pub struct RateLimitLayer<St = MemoryStore, C = ApiKey> {
    shared: Arc<Shared<St, C>>,
}

/// What every service of one layer shares.
pub(crate) struct Shared<St, C> {
    pub(crate) store: St,
    pub(crate) client: C,
    pub(crate) settings: Arc<Settings>,
}

/// Everything but the store and the client extractor; what a response future needs.
pub(crate) struct Settings {
    pub(crate) policies: Policies,
    pub(crate) key_prefix: Box<str>,
    pub(crate) timeout: Duration,
    pub(crate) fail_mode: FailMode,
    pub(crate) headers_on_allowed: bool,
    pub(crate) legacy_headers: bool,
    pub(crate) shadow: bool,
    pub(crate) body: RejectionBody,
    pub(crate) hook: Option<Arc<RejectionHook>>,
    pub(crate) bypass: Bypass,
    pub(crate) cost: Box<dyn CostExtractor>,
    pub(crate) outage: OutageLog,
    pub(crate) telemetry: Telemetry,
    pub(crate) deny_cache: Option<DenyCache>,
    /// Bounds the calls to a remote store; `None` for an in-process store.
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Decides while the store fails, with [`FailMode::Local`] and a remote store.
    pub(crate) local: Option<LocalFallback>,
}

/// The in-process store of [`FailMode::Local`] and each policy's limits, scaled to this
/// instance's share.
pub(crate) struct LocalFallback {
    pub(crate) store: MemoryStore,
    /// By policy index.
    pub(crate) limits: Box<[Arc<[Limit]>]>,
}

impl LocalFallback {
    fn new(policies: &Policies, share: f64) -> Self {
        Self {
            store: MemoryStore::new(),
            limits: (0..policies.len())
                .map(|i| {
                    policies
                        .entry(i)
                        .limits
                        .iter()
                        .map(|l| l.scaled(share))
                        .collect()
                })
                .collect(),
        }
    }

    /// Decides a request of `cost` named `key` under the policy at `index`.
    pub(crate) fn decide(&self, index: usize, key: &str, cost: u64) -> Decision {
        self.store.decide_now(key, &self.limits[index], cost)
    }
}

impl Settings {
    pub(crate) fn style(&self, grpc: bool) -> Style<'_> {
        Style {
            body: self.body,
            hook: self.hook.as_deref(),
            legacy: self.legacy_headers,
            grpc,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("policies", &self.policies)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("fail_mode", &self.fail_mode)
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

fn policy_names(policies: &Policies) -> Vec<&str> {
    (0..policies.len())
        .map(|i| policies.entry(i).name())
        .collect()
}

impl<St, C> Clone for RateLimitLayer<St, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St, C> std::fmt::Debug for RateLimitLayer<St, C>
where
    St: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("store", &self.shared.store)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a builder: an in-memory store, clients named by [`ApiKey`], fail-open with a
    /// 50 ms timeout. Set either `capacity` and `period` (one limit for every endpoint) or
    /// [`policies`](Builder::policies).
    pub fn builder() -> Builder {
        Builder {
            store: MemoryStore::new(),
            client: ApiKey::default(),
            options: Options {
                algorithm: Algorithm::TokenBucket,
                capacity: None,
                refill: None,
                period: None,
                policy_name: DEFAULT_POLICY_NAME.to_owned(),
                policies: None,
                key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
                timeout: DEFAULT_TIMEOUT,
                fail_mode: FailMode::Open,
                headers_on_allowed: true,
                legacy_headers: false,
                shadow: false,
                body: RejectionBody::Json,
                hook: None,
                bypass: Bypass::new(),
                cost: Box::new(UnitCost),
                deny_cache: true,
                local_share: 1.0,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            },
        }
    }
}

impl<St, C> RateLimitLayer<St, C> {
    /// The store the layer decides with.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The policies the layer applies.
    pub fn policies(&self) -> &Policies {
        &self.shared.settings.policies
    }
}

impl<S, St, C> Layer<S> for RateLimitLayer<St, C> {
    type Service = RateLimit<S, St, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`RateLimitLayer`]; every field is checked by [`Builder::build`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::{FailMode, RateLimitLayer};
///
/// // 10 requests at once, then one more each second, per API key and endpoint.
/// let layer = RateLimitLayer::builder()
///     .capacity(10)
///     .refill(10)
///     .period(Duration::from_secs(10))
///     .fail_mode(FailMode::Closed)
///     .build()
///     .expect("valid configuration");
/// # let _ = layer;
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<St = MemoryStore, C = ApiKey> {
    store: St,
    client: C,
    options: Options,
}

/// The builder's settings other than the store and the client extractor.
struct Options {
    algorithm: Algorithm,
    capacity: Option<u64>,
    refill: Option<u64>,
    period: Option<Duration>,
    policy_name: String,
    policies: Option<Policies>,
    key_prefix: String,
    timeout: Duration,
    fail_mode: FailMode,
    headers_on_allowed: bool,
    legacy_headers: bool,
    shadow: bool,
    body: RejectionBody,
    hook: Option<Arc<RejectionHook>>,
    bypass: Bypass,
    cost: Box<dyn CostExtractor>,
    deny_cache: bool,
    local_share: f64,
    max_in_flight: usize,
}

impl<St: std::fmt::Debug, C> std::fmt::Debug for Builder<St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .field("capacity", &self.options.capacity)
            .field("refill", &self.options.refill)
            .field("period", &self.options.period)
            .field("policies", &self.options.policies)
            .finish_non_exhaustive()
    }
}

impl<St, C> Builder<St, C> {
    /// Where buckets are kept: a [`MemoryStore`] unless set, or a
    /// [`RedisStore`](crate::RedisStore) to share limits between instances.
    pub fn store<T: Store>(self, store: T) -> Builder<T, C> {
        Builder {
            store,
            client: self.client,
            options: self.options,
        }
    }

    /// How the client of a request is found: [`ApiKey`] unless set, or any
    /// [`ClientExtractor`], such as [`ClientIp`](crate::client::ClientIp) or a closure.
    pub fn client_extractor<T: ClientExtractor>(self, client: T) -> Builder<St, T> {
        Builder {
            store: self.store,
            client,
            options: self.options,
        }
    }

    /// How the single default limit counts (default [`Algorithm::TokenBucket`]); see
    /// [`algorithm`](crate::algorithm).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.options.algorithm = algorithm;
        self
    }

    /// The most requests that can pass per period (a token bucket: at once, from a full
    /// bucket), for the single default limit. Required unless [`policies`](Self::policies) are
    /// set.
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.options.capacity = Some(capacity);
        self
    }

    /// Tokens added back per [`period`](Self::period), continuously (a token bucket). Defaults
    /// to the capacity: an empty bucket is full again after one period. The window algorithms
    /// take back their whole capacity each period and accept no other value.
    pub fn refill(mut self, refill: u64) -> Self {
        self.options.refill = Some(refill);
        self
    }

    /// The period over which [`refill`](Self::refill) tokens come back, or the window.
    /// Required unless [`policies`](Self::policies) are set.
    pub fn period(mut self, period: Duration) -> Self {
        self.options.period = Some(period);
        self
    }

    /// The single limit's name in the `RateLimit` header fields and the bucket keys (default
    /// `default`): 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
    pub fn policy_name(mut self, name: impl Into<String>) -> Self {
        self.options.policy_name = name.into();
        self
    }

    /// Per-route rules and several limits per request, instead of one limit
    /// (`capacity`/`refill`/`period`) for every endpoint.
    pub fn policies(mut self, policies: Policies) -> Self {
        self.options.policies = Some(policies);
        self
    }

    /// The prefix of every bucket key (default `tollgate`): 1 to 64 printable ASCII
    /// characters without spaces or braces. Give each layer sharing a store its own prefix
    /// or its own limit names, or they share buckets.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options.key_prefix = prefix.into();
        self
    }

    /// The longest a store may take to decide (default 50 ms); then the fail mode applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// What a request gets when the store fails (default [`FailMode::Open`]).
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

    /// The most calls to a remote store under way at once (default 1,024); a request beyond
    /// that is not sent and follows the fail mode at once, so a slow store cannot pile up
    /// waiting requests.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.options.max_in_flight = calls;
        self
    }

    /// Whether allowed responses carry the `RateLimit` and `RateLimit-Policy` fields (default
    /// `true`). Refused responses always do.
    pub fn headers_on_allowed(mut self, enabled: bool) -> Self {
        self.options.headers_on_allowed = enabled;
        self
    }

    /// Also send the legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` fields (default off). `X-RateLimit-Reset` is the seconds from now
    /// until the bucket is full again, not a timestamp.
    pub fn legacy_headers(mut self, enabled: bool) -> Self {
        self.options.legacy_headers = enabled;
        self
    }

    /// Shadow mode for every policy (default off): decide and report (the `RateLimit` fields,
    /// logs) but never refuse. Rules can turn it on one by one.
    pub fn shadow(mut self, enabled: bool) -> Self {
        self.options.shadow = enabled;
        self
    }

    /// The body format of the layer's own answers (default [`RejectionBody::Json`]).
    pub fn rejection_body(mut self, body: RejectionBody) -> Self {
        self.options.body = body;
        self
    }

    /// Builds the layer's own answers with `hook` instead; the layer still adds the
    /// `RateLimit` fields, `Retry-After` (unless the hook set one) and the legacy fields. gRPC
    /// requests still get gRPC answers.
    pub fn on_rejection<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Rejection<'_>) -> http::Response<Bytes> + Send + Sync + 'static,
    {
        self.options.hook = Some(Arc::new(hook));
        self
    }

    /// Clients that are never refused (still decided and reported).
    pub fn bypass(mut self, bypass: Bypass) -> Self {
        self.options.bypass = bypass;
        self
    }

    /// How many tokens a request takes (default 1): a [`HeaderCost`](crate::cost::HeaderCost)
    /// or a closure `Fn(&Parts) -> u64`.
    pub fn cost_extractor<T: CostExtractor>(mut self, cost: T) -> Self {
        self.options.cost = Box::new(cost);
        self
    }

    /// The local deny cache (default on): after the store denies a request, later requests of
    /// the same cost or more on the same key are denied in process until the wait is over,
    /// without a store call. Exact, since other instances can only take tokens. Not used with
    /// [`MemoryStore`], which decides in process anyway.
    pub fn deny_cache(mut self, enabled: bool) -> Self {
        self.options.deny_cache = enabled;
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is missing, zero or invalid.
    pub fn build(self) -> Result<RateLimitLayer<St, C>, ConfigError>
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
                    options.policy_name,
                    capacity,
                    options.refill,
                    period,
                )?)
            }
        };
        if options.timeout.is_zero() {
            return Err(ConfigError::Zero { field: "timeout" });
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
        let local = (options.fail_mode == FailMode::Local && St::REMOTE)
            .then(|| LocalFallback::new(&policies, share));
        let settings = Settings {
            telemetry: Telemetry::new(&policy_names(&policies)),
            local,
            policies,
            key_prefix: options.key_prefix.into_boxed_str(),
            timeout: options.timeout,
            fail_mode: options.fail_mode,
            headers_on_allowed: options.headers_on_allowed,
            legacy_headers: options.legacy_headers,
            shadow: options.shadow,
            body: options.body,
            hook: options.hook,
            bypass: options.bypass,
            cost: options.cost,
            outage: OutageLog::new(),
            deny_cache: (options.deny_cache && St::REMOTE).then(DenyCache::new),
            breaker: St::REMOTE.then(|| Breaker::new(options.max_in_flight)),
        };
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                store: self.store,
                client: self.client,
                settings: Arc::new(settings),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: Builder) -> String {
        b.build().unwrap_err().to_string()
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let ok = || {
            RateLimitLayer::builder()
                .capacity(10)
                .period(Duration::from_secs(1))
        };
        assert!(ok().build().is_ok());
        assert!(err(RateLimitLayer::builder().period(Duration::from_secs(1))).contains("capacity"));
        assert!(err(RateLimitLayer::builder().capacity(1)).contains("period"));
        assert!(err(ok().capacity(0)).contains("capacity"));
        assert!(err(ok().refill(0)).contains("refill"));
        assert!(err(ok().period(Duration::ZERO)).contains("period"));
        assert!(err(ok().timeout(Duration::ZERO)).contains("timeout"));
        assert!(err(ok().key_prefix("")).contains("key_prefix"));
        assert!(err(ok().policy_name("")).contains("policy_name"));
        assert!(err(ok().policy_name("a\"b")).contains("policy_name"));
        let window = || ok().algorithm(Algorithm::FixedWindow);
        assert!(window().build().is_ok());
        assert!(err(window().refill(3)).contains("refill"));
        assert!(err(window().period(Duration::from_micros(1500))).contains("period"));
        assert!(err(ok().local_share(0.0)).contains("local_share"));
        assert!(err(ok().local_share(1.5)).contains("local_share"));
        assert!(err(ok().local_share(f64::NAN)).contains("local_share"));
        assert!(err(ok().max_in_flight(0)).contains("max_in_flight"));
        assert!(
            "sideways"
                .parse::<FailMode>()
                .unwrap_err()
                .to_string()
                .contains("fail_mode")
        );
    }
}
