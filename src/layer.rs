//! [`RateLimitLayer`] and its [`Builder`].

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tower_layer::Layer;

use crate::key::{ApiKey, ClientExtractor, check_prefix};
use crate::outage::OutageLog;
use crate::response::policy_value;
use crate::store::{MemoryStore, Store};
use crate::{ConfigError, Limit, RateLimit};

/// The default time a store may take to decide.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The default prefix of every bucket key.
pub const DEFAULT_KEY_PREFIX: &str = "tollgate";
/// The default name of the limit in the `RateLimit` header fields.
pub const DEFAULT_POLICY_NAME: &str = "default";

/// What a request gets when the store fails or does not answer within the timeout.
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
}

impl FailMode {
    /// `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            _ => Err(ConfigError::Invalid {
                field: "fail_mode",
                value: s.to_owned(),
                reason: "must be \"open\" or \"closed\"",
            }),
        }
    }
}

/// Rate-limits the requests of each client on each endpoint with a token bucket.
///
/// Built with [`RateLimitLayer::builder`]. The store, the client extractor and the limit are
/// created once and shared by every service the layer makes. Cloning is cheap.
pub struct RateLimitLayer<St = MemoryStore, C = ApiKey> {
    shared: Arc<Shared<St, C>>,
}

/// What every service of one layer shares.
pub(crate) struct Shared<St, C> {
    pub(crate) store: St,
    pub(crate) client: C,
    pub(crate) policy: Arc<Policy>,
}

/// The settings a response future needs.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) limit: Limit,
    pub(crate) policy_header: HeaderValue,
    pub(crate) key_prefix: Box<str>,
    pub(crate) timeout: Duration,
    pub(crate) fail_mode: FailMode,
    pub(crate) headers_on_allowed: bool,
    pub(crate) outage: OutageLog,
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
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a builder: an in-memory store, clients named by [`ApiKey`], fail-open with a
    /// 50 ms timeout. `capacity` and `period` must be set.
    pub fn builder() -> Builder {
        Builder {
            store: MemoryStore::new(),
            client: ApiKey::default(),
            capacity: None,
            refill: None,
            period: None,
            policy_name: DEFAULT_POLICY_NAME.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            fail_mode: FailMode::Open,
            headers_on_allowed: true,
        }
    }
}

impl<St, C> RateLimitLayer<St, C> {
    /// The store the layer decides with.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The limit the layer applies.
    pub fn limit(&self) -> &Limit {
        &self.shared.policy.limit
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
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<St = MemoryStore, C = ApiKey> {
    store: St,
    client: C,
    capacity: Option<u64>,
    refill: Option<u64>,
    period: Option<Duration>,
    policy_name: String,
    key_prefix: String,
    timeout: Duration,
    fail_mode: FailMode,
    headers_on_allowed: bool,
}

impl<St, C> Builder<St, C> {
    /// Where buckets are kept: a [`MemoryStore`] unless set, or a
    /// [`RedisStore`](crate::RedisStore) to share limits between instances.
    pub fn store<T: Store>(self, store: T) -> Builder<T, C> {
        Builder {
            store,
            client: self.client,
            capacity: self.capacity,
            refill: self.refill,
            period: self.period,
            policy_name: self.policy_name,
            key_prefix: self.key_prefix,
            timeout: self.timeout,
            fail_mode: self.fail_mode,
            headers_on_allowed: self.headers_on_allowed,
        }
    }

    /// How the client of a request is found: [`ApiKey`] unless set, or any
    /// [`ClientExtractor`], such as a closure.
    pub fn client_extractor<T: ClientExtractor>(self, client: T) -> Builder<St, T> {
        Builder {
            store: self.store,
            client,
            capacity: self.capacity,
            refill: self.refill,
            period: self.period,
            policy_name: self.policy_name,
            key_prefix: self.key_prefix,
            timeout: self.timeout,
            fail_mode: self.fail_mode,
            headers_on_allowed: self.headers_on_allowed,
        }
    }

    /// The most requests that can pass at once from a full bucket. Required.
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Tokens added back per [`period`](Self::period), continuously. Defaults to the capacity:
    /// an empty bucket is full again after one period.
    pub fn refill(mut self, refill: u64) -> Self {
        self.refill = Some(refill);
        self
    }

    /// The period over which [`refill`](Self::refill) tokens come back. Required.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }

    /// The limit's name in the `RateLimit` header fields and the bucket keys (default
    /// `default`): 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
    pub fn policy_name(mut self, name: impl Into<String>) -> Self {
        self.policy_name = name.into();
        self
    }

    /// The prefix of every bucket key (default `tollgate`): 1 to 64 printable ASCII
    /// characters without spaces or braces.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The longest a store may take to decide (default 50 ms); then the fail mode applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What a request gets when the store fails (default [`FailMode::Open`]).
    pub fn fail_mode(mut self, fail_mode: FailMode) -> Self {
        self.fail_mode = fail_mode;
        self
    }

    /// Whether allowed responses carry the `RateLimit` and `RateLimit-Policy` fields (default
    /// `true`). Limited responses always do.
    pub fn headers_on_allowed(mut self, enabled: bool) -> Self {
        self.headers_on_allowed = enabled;
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is missing, zero or invalid.
    pub fn build(self) -> Result<RateLimitLayer<St, C>, ConfigError> {
        let capacity = self
            .capacity
            .ok_or(ConfigError::Missing { field: "capacity" })?;
        let period = self
            .period
            .ok_or(ConfigError::Missing { field: "period" })?;
        let limit = Limit::new(
            self.policy_name,
            capacity,
            self.refill.unwrap_or(capacity),
            period,
        )?;
        if self.timeout.is_zero() {
            return Err(ConfigError::Zero { field: "timeout" });
        }
        check_prefix(&self.key_prefix)?;
        let policy = Policy {
            policy_header: policy_value(&limit),
            limit,
            key_prefix: self.key_prefix.into_boxed_str(),
            timeout: self.timeout,
            fail_mode: self.fail_mode,
            headers_on_allowed: self.headers_on_allowed,
            outage: OutageLog::new(),
        };
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                store: self.store,
                client: self.client,
                policy: Arc::new(policy),
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
        assert!(
            "sideways"
                .parse::<FailMode>()
                .unwrap_err()
                .to_string()
                .contains("fail_mode")
        );
    }
}
