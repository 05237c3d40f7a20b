//! The rate limit service of Envoy, Istio and the other proxies that speak
//! `envoy.service.ratelimit.v3`, as a drop-in for envoyproxy/ratelimit (feature `rls`).
//!
//! So far: [`Config`], that service's YAML configuration read and checked with its error
//! texts, and the search of a request's descriptor in it ([`Config::find`]), with the
//! counter keys of its Redis format ([`Matched::counter_key`]).

mod config;

pub use config::{Config, ConfigError, Matched, RateLimit, Unit};
