//! The rate limit service of Envoy, Istio and the other proxies that speak
//! `envoy.service.ratelimit.v3`, as a drop-in for envoyproxy/ratelimit (feature `rls`).
//!
//! - [`Config`]: that service's YAML configuration, read and checked with its error texts,
//!   and the search of a request's descriptor in it ([`Config::find`]), with the counter keys
//!   of its Redis format ([`Matched::counter_key`]);
//! - [`Plan`]: a decision as that service makes it: each descriptor's limit after
//!   `replaces`, the counters to add to, and the statuses and overall code from what they say;
//! - [`RateLimitService`]: the gRPC service over any tollgate store (mount it with
//!   [`RateLimitService::into_server`]), with the peer's settings ([`ServiceSettings`]) and
//!   tollgate's: fail modes and exact leases of hot counters;
//! - [`Runtime`]: the peer's runtime directory, loaded and watched;
//! - [`router`] and [`debug_router`]: `/json`, `/healthcheck` and `/rlconfig`.
//!
//! The `tollgate-rls` binary puts them together from the peer's environment settings.

mod config;
mod decide;
mod http;
mod json;
mod metrics;
mod runtime;
mod service;

pub use config::{Config, ConfigError, Matched, RateLimit, Unit};
pub use decide::{Count, Descriptor, Hits, MAX_HITS, Plan, RequestError, Settings, Status};
pub use http::{Health, debug_router, router};
pub use runtime::{Runtime, RuntimeWatcher};
pub use service::{HeaderNames, RateLimitService, ServiceSettings, StoreFailure};
