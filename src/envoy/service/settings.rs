//! How the service answers: [`ServiceSettings`].

use crate::envoy::Settings;

/// What a decision gets when the store fails or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreFailure {
    /// The call fails with the store's error (gRPC `UNKNOWN`), as envoyproxy/ratelimit's
    /// does: Envoy then applies its own `failure_mode_deny`.
    #[default]
    Error,
    /// Every descriptor is OK, unlimited by this instance.
    Open,
    /// Every descriptor with a counted limit is over.
    Closed,
}

/// The response headers of `LIMIT_RESPONSE_HEADERS_ENABLED`: their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    /// `LIMIT_LIMIT_HEADER` (default `RateLimit-Limit`).
    pub limit: String,
    /// `LIMIT_REMAINING_HEADER` (default `RateLimit-Remaining`).
    pub remaining: String,
    /// `LIMIT_RESET_HEADER` (default `RateLimit-Reset`).
    pub reset: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            limit: "RateLimit-Limit".to_owned(),
            remaining: "RateLimit-Remaining".to_owned(),
            reset: "RateLimit-Reset".to_owned(),
        }
    }
}

/// How the service answers, beyond each decision's [`Settings`].
#[derive(Debug, Clone, Default)]
pub struct ServiceSettings {
    /// `SHADOW_MODE`, `QUOTA_MODE`, `NEAR_LIMIT_RATIO`.
    pub decide: Settings,
    /// `CACHE_KEY_PREFIX`: before every counter's key.
    pub key_prefix: String,
    /// `EXPIRATION_JITTER_MAX_SECONDS`: a counter expires its window plus up to this many
    /// seconds after its last hit (0: exactly its window).
    pub expiration_jitter_max_s: u64,
    /// `TOLLGATE_FAIL_MODE`.
    pub store_failure: StoreFailure,
    /// `LIMIT_RESPONSE_HEADERS_ENABLED` and the header names.
    pub headers: Option<HeaderNames>,
    /// `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`: when a hit would put one of a request's
    /// counters over its limit, only such counters are added to; the others are left as
    /// they are (the request is refused, so it does not use them up). As the peer does it,
    /// the counters are read first and added to after, two calls that are not one atomic
    /// step: two requests at once may both pass the read.
    pub stop_increment_when_over: bool,
    /// `RESPONSE_DYNAMIC_METADATA`: every response carries the Struct the peer sets.
    pub dynamic_metadata: bool,
    /// `TOLLGATE_LEASES`: hot descriptors are served from units taken ahead from their
    /// counters, exactly: no window admits more than its limit across instances. Not with
    /// [`stop_increment_when_over`](Self::stop_increment_when_over), which decides each
    /// request on what its counters hold together.
    pub leases: bool,
}
