//! The rate limit service of Envoy, Istio and the other proxies that speak
//! `envoy.service.ratelimit.v3`, as a drop-in for envoyproxy/ratelimit (feature `rls`).
//!
//! So far: [`Config`], that service's YAML configuration read and checked with its error
//! texts, and the search of a request's descriptor in it ([`Config::find`]), with the
//! counter keys of its Redis format ([`Matched::counter_key`]); and a decision as that
//! service makes it ([`Plan`]): each descriptor's limit after `replaces`, the counters to add
//! to, and the statuses and overall code from what the counters say.

mod config;
mod decide;
mod http;
mod json;
mod metrics;
mod runtime;
mod service;

pub use config::{Config, ConfigError, Matched, RateLimit, Unit};
pub use decide::{Count, Descriptor, Hits, Plan, RequestError, Settings, Status};
pub use http::{Health, debug_router, router};
pub use runtime::{Runtime, RuntimeWatcher};
pub use service::{HeaderNames, RateLimitService, ServiceSettings, StoreFailure};
