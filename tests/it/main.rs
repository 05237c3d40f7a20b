//! Integration tests: a real `redis-server` per test (started and stopped by the test), real
//! HTTP servers and a real HTTP client. One test binary; each concern in its own module.

mod algorithms;
mod changes;
mod cluster;
mod concurrency;
mod contract;
#[cfg(feature = "rls")]
mod counters;
mod direct;
mod exact;
mod examples;
mod faults;
mod gateway;
mod harness;
mod history;
mod lease;
mod loadtest;
mod nodes;
mod observability;
mod redis_store;
mod reload;
mod reserve;
#[cfg(feature = "rls")]
mod rls;
#[cfg(feature = "rls")]
mod rls_binary;
#[cfg(feature = "rls")]
mod rls_runtime;
#[cfg(feature = "rls")]
mod rls_scenarios;
mod sentinel;
mod tiers;
mod watch;
