//! Tower middleware that rate-limits requests per client and per endpoint, with limits kept in
//! Redis (one server, a Redis Cluster, or a primary behind Sentinel) so that every instance of a
//! service shares them.
//!
//! Each request is named by its client (an API key by default, see [`ClientExtractor`]) and
//! its endpoint (method and path; the route template when axum matched one). One store call
//! decides it: with [`RedisStore`], one `EVALSHA` of a Lua script that counts by the Redis
//! clock and takes the request's units atomically, with the [algorithm] of each
//! limit: a token bucket (the default), a sliding log, a sliding window counter or a fixed
//! window. Allowed requests go on to the inner service with the `RateLimit` and
//! `RateLimit-Policy` header fields of draft-ietf-httpapi-ratelimit-headers; the others get
//! `429 Too Many Requests`.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tollgate::RateLimitLayer;
//!
//! # fn main() -> Result<(), tollgate::ConfigError> {
//! // 10 requests at once per API key and endpoint, then one more each second.
//! let limit = RateLimitLayer::builder()
//!     .capacity(10)
//!     .refill(10)
//!     .period(Duration::from_secs(10))
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "hello" }))
//!     .layer(limit);
//! # Ok(())
//! # }
//! ```
//!
//! To share the limits between instances, keep the buckets in Redis:
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::{FailMode, RateLimitLayer, RedisStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::open("redis://127.0.0.1:6379/")?;
//! let limit = RateLimitLayer::builder()
//!     .store(store)
//!     .capacity(10)
//!     .period(Duration::from_secs(10))
//!     .timeout(Duration::from_millis(50))
//!     .fail_mode(FailMode::Open)
//!     .build()?;
//! # let _ = limit;
//! # Ok(())
//! # }
//! ```
//!
//! # Responses
//!
//! - Allowed: the inner service's response, plus `RateLimit-Policy: "default";q=10;w=10` and
//!   `RateLimit: "default";r=9` (with `;t=` seconds until the next token when `r=0`), unless
//!   [`Builder::headers_on_allowed`] turned them off.
//! - Limited: `429`, `Retry-After` in whole seconds (rounded up, at least 1), the same two
//!   fields, and `{"allowed":false,"remaining":0,"retry_after_ms":1234}`.
//! - A cost above a limit's capacity: `413`, no `Retry-After`: it can never pass.
//! - No client identity, or a bad cost: `400` with `{"error":"…"}` saying what is wrong.
//! - Store failed or too slow: see below.
//! - gRPC requests (`content-type: application/grpc*`) get gRPC answers instead:
//!   `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail, `INVALID_ARGUMENT`,
//!   `UNAVAILABLE`.
//!
//! Per-route rules and several limits per request: see [`policy`]. Client identity: see
//! [`client`]. Weighted cost: see [`cost`].
//!
//! # Without HTTP
//!
//! Every decision is made by one engine, the [`Limiter`]; the layer is its HTTP adapter. Use
//! the limiter directly for anything that is not one HTTP request (a websocket's messages, a
//! queue consumer): [`Limiter::take`], [`Limiter::peek`] (nothing written),
//! [`Limiter::settle`] and [`Limiter::refund`] (with the [`Receipt`] of what a take took:
//! units go back only where they were counted), and [`Limiter::reset`], with the same
//! buckets, timeout, breaker, fail mode and deny cache; see [`engine`].
//!
//! # Leases
//!
//! A limit marked [leased](Limit::leased) lets an instance take a hot key's units from Redis
//! ahead of its requests, in the call that decides one of them, and admit the next ones in
//! process: about one Redis call per key per lease time instead of one per request, never
//! more admitted than the limit. See [`lease`].
//!
//! # Fail-open
//!
//! Every store call is bounded by the [timeout](Builder::timeout) (50 ms by default), which
//! holds whether Redis refuses connections, hangs or fails over. Then the [`FailMode`] decides:
//! [`FailMode::Open`] (the default) forwards the request unlimited, [`FailMode::Closed`]
//! answers `503` with `Retry-After: 1` and `{"error":"rate limiter unavailable"}`, and
//! [`FailMode::Local`] decides in process against a [share](Builder::local_share) of each
//! limit until Redis answers again. A `tracing` warning is logged, at most once a second per
//! kind of failure while the outage lasts. A store that keeps failing is not waited for: after
//! 5 failures in a row the fail mode answers at once while one probe at a time asks the store
//! again, and at most [`max_in_flight`](Builder::max_in_flight) calls are ever under way. A
//! timed-out call may still run on Redis later and take a unit.
//!
//! Choose open when the limiter protects capacity that can take a short unlimited burst better
//! than an outage; choose closed when what it protects must never be called unlimited (a paid
//! upstream, an abuse-sensitive endpoint).
#![deny(missing_docs, unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod algorithm;
pub mod client;
pub mod cost;
pub mod engine;
mod error;
pub mod key;
mod layer;
pub mod lease;
mod limit;
pub mod policy;
pub mod reserve;
pub mod resilience;
pub mod response;
pub mod store;
mod sync;
pub mod telemetry;
#[cfg(test)]
mod testing;

pub use algorithm::{Algorithm, BucketState, decide_all, decide_each};
pub use client::{ApiKey, ClientExtractor, ClientId, ClientIp, MissingClient, client_fn};
pub use engine::{
    DEFAULT_DENY_CACHE_MAX, DEFAULT_KEY_PREFIX, DEFAULT_MAX_IN_FLIGHT, DEFAULT_POLICY_NAME,
    DEFAULT_TIMEOUT, DecidedBy, Limiter, LimiterBuilder, Outcome, Receipt, Subject, SubjectError,
    Target, Verdict,
};
pub use error::{ConfigError, StoreError};
pub use key::UnmatchedPaths;
pub use layer::{Builder, RateLimit, RateLimitLayer, ResponseFuture};
pub use limit::{
    DEFAULT_LEASE, DEFAULT_LEASE_TIME, Decision, Limit, MAX_CONCURRENCY, MAX_LEASE_TIME,
    MAX_LIMITS, MAX_LOG_CAPACITY, MIN_SLOT_LEASE,
};
pub use policy::{Policies, Rule};
/// The `redis` crate tollgate uses, for the types a [`RedisStore`] is built from
/// (`ConnectionManagerConfig`, `cluster::ClusterClient`, `sentinel::SentinelClient`, ...).
#[cfg(feature = "redis")]
pub use redis;
pub use resilience::FailMode;
pub use response::ResponseBody;
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::{AnyStore, MemoryStore, Store};
