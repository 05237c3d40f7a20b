//! What the layer reports: metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`) and `tracing` events.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tollgate_decisions_total` | counter | `policy`, `outcome`: `allowed`, `limited`, `shadow_limited`, `bypassed`, `missing_identity` |
//! | `tollgate_near_limit_total` | counter | `policy`: an allowed decision that left 20% of the capacity or less |
//! | `tollgate_store_errors_total` | counter | `kind`: `timeout`, `connection`, `auth`, `config`, `script`, `other`; and requests that did not ask the store: `overloaded`, `circuit_open` |
//! | `tollgate_fail_mode_total` | counter | `mode`: `open`, `closed`, `local`: a request the fail mode decided |
//! | `tollgate_store_duration_seconds` | histogram | calls to a remote store (Redis), answered or not |
//! | `tollgate_deny_cache_hits_total` | counter | requests denied by the local deny cache, without a store call |
//! | `tollgate_store_in_flight` | gauge | calls to a remote store under way |
//! | `tollgate_leases_total` | counter | `policy`: leases taken (store calls that lent units) |
//! | `tollgate_leased_units_total` | counter | `policy`: units lent to this instance |
//! | `tollgate_lease_returned_units_total` | counter | `policy`: units given back unspent |
//! | `tollgate_lease_decisions_total` | counter | `policy`: decisions served from a lease, with no store call (also counted in `tollgate_decisions_total`) |
//! | `tollgate_settlements_total` | counter | `policy`, `outcome`: `refunded`, `charged`, `unchanged`, `failed`: reservations settled ([`Limiter::settle`](crate::Limiter::settle)) |
//! | `tollgate_background_lost_total` | counter | `job`: `put_back`, `settle`, `finish`, `lease`: background work that could not be queued (the queue was full, or its runtime had shut down); logged once |
//!
//! Label values are bounded: policy names come from the configuration (a rule's name, or
//! `default`) and the rest are fixed words; never a client, an address or a path. Install the
//! metrics recorder (for example `metrics-exporter-prometheus`) before the first request: the
//! layer registers its handles on first use.
//!
//! Tracing: a `debug` event per decision (`policy`, `outcome`, `limit`, `remaining`,
//! `store_us`); a `warn` event when the store fails, at most once a second per kind of failure
//! while it lasts, with the number of failures not logged (`suppressed`); an `info` event when
//! the store answers again.

#[cfg(feature = "metrics")]
use std::sync::OnceLock;
use std::time::Duration;

use crate::{FailMode, StoreError};

/// `tollgate_decisions_total{policy, outcome}`.
pub const DECISIONS_TOTAL: &str = "tollgate_decisions_total";
/// `tollgate_near_limit_total{policy}`.
pub const NEAR_LIMIT_TOTAL: &str = "tollgate_near_limit_total";
/// `tollgate_store_errors_total{kind}`.
pub const STORE_ERRORS_TOTAL: &str = "tollgate_store_errors_total";
/// `tollgate_fail_mode_total{mode}`.
pub const FAIL_MODE_TOTAL: &str = "tollgate_fail_mode_total";
/// `tollgate_store_duration_seconds`.
pub const STORE_DURATION_SECONDS: &str = "tollgate_store_duration_seconds";

/// `tollgate_deny_cache_hits_total`.
pub const DENY_CACHE_HITS_TOTAL: &str = "tollgate_deny_cache_hits_total";
/// `tollgate_store_in_flight`.
pub const STORE_IN_FLIGHT: &str = "tollgate_store_in_flight";
/// `tollgate_settlements_total{policy, outcome}`.
pub const SETTLEMENTS_TOTAL: &str = "tollgate_settlements_total";

/// `tollgate_leases_total{policy}`.
pub const LEASES_TOTAL: &str = "tollgate_leases_total";
/// `tollgate_leased_units_total{policy}`.
pub const LEASED_UNITS_TOTAL: &str = "tollgate_leased_units_total";
/// `tollgate_lease_returned_units_total{policy}`.
pub const LEASE_RETURNED_UNITS_TOTAL: &str = "tollgate_lease_returned_units_total";
/// `tollgate_lease_decisions_total{policy}`.
pub const LEASE_DECISIONS_TOTAL: &str = "tollgate_lease_decisions_total";

/// `tollgate_background_lost_total{job}`.
pub const BACKGROUND_LOST_TOTAL: &str = "tollgate_background_lost_total";

/// Every metric name the crate exports.
pub const METRIC_NAMES: &[&str] = &[
    DECISIONS_TOTAL,
    NEAR_LIMIT_TOTAL,
    STORE_ERRORS_TOTAL,
    FAIL_MODE_TOTAL,
    STORE_DURATION_SECONDS,
    DENY_CACHE_HITS_TOTAL,
    STORE_IN_FLIGHT,
    SETTLEMENTS_TOTAL,
    LEASES_TOTAL,
    LEASED_UNITS_TOTAL,
    LEASE_RETURNED_UNITS_TOTAL,
    LEASE_DECISIONS_TOTAL,
    BACKGROUND_LOST_TOTAL,
];

/// What a settlement came to, as the `outcome` label of `tollgate_settlements_total` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    // The discriminants index `Settled::ALL`.
    Refunded = 0,
    Charged = 1,
    Unchanged = 2,
    Failed = 3,
}

impl Settled {
    #[cfg(feature = "metrics")]
    const ALL: [Settled; 4] = [Self::Refunded, Self::Charged, Self::Unchanged, Self::Failed];

    #[cfg(feature = "metrics")]
    fn as_str(self) -> &'static str {
        match self {
            Self::Refunded => "refunded",
            Self::Charged => "charged",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
        }
    }
}

/// The outcome of a request the layer saw, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    // The discriminants index `Outcome::ALL`.
    Allowed = 0,
    Limited = 1,
    ShadowLimited = 2,
    Bypassed = 3,
    MissingIdentity = 4,
}

impl Outcome {
    #[cfg(feature = "metrics")]
    const ALL: [Outcome; 5] = [
        Self::Allowed,
        Self::Limited,
        Self::ShadowLimited,
        Self::Bypassed,
        Self::MissingIdentity,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::ShadowLimited => "shadow_limited",
            Self::Bypassed => "bypassed",
            Self::MissingIdentity => "missing_identity",
        }
    }
}

/// A layer's metric handles, registered on first use.
#[derive(Debug)]
pub(crate) struct Telemetry {
    /// The policies' label values, in order.
    #[cfg(feature = "metrics")]
    names: Box<[Box<str>]>,
    #[cfg(feature = "metrics")]
    policies: Box<[OnceLock<PolicyMetrics>]>,
    #[cfg(feature = "metrics")]
    store: OnceLock<StoreMetrics>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct PolicyMetrics {
    decisions: [metrics::Counter; 5],
    near_limit: metrics::Counter,
    settlements: [metrics::Counter; 4],
    /// Leases taken, units leased, units returned, decisions served from a lease.
    leases: [metrics::Counter; 4],
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct StoreMetrics {
    errors: [metrics::Counter; StoreError::KINDS.len()],
    fail_modes: [metrics::Counter; 3],
    in_flight: metrics::Gauge,
    duration: metrics::Histogram,
    deny_cache_hits: metrics::Counter,
}

impl Telemetry {
    /// Handles for `names`, the policies' label values in order.
    pub(crate) fn new(names: &[&str]) -> Self {
        let _ = names;
        Self {
            #[cfg(feature = "metrics")]
            names: names.iter().map(|&n| n.into()).collect(),
            #[cfg(feature = "metrics")]
            policies: names.iter().map(|_| OnceLock::new()).collect(),
            #[cfg(feature = "metrics")]
            store: OnceLock::new(),
        }
    }

    #[cfg(feature = "metrics")]
    fn policy(&self, index: usize) -> &PolicyMetrics {
        self.policies[index].get_or_init(|| {
            let policy = self.names[index].to_string();
            PolicyMetrics {
                decisions: Outcome::ALL.map(|outcome| {
                    metrics::counter!(DECISIONS_TOTAL, "policy" => policy.clone(), "outcome" => outcome.as_str())
                }),
                near_limit: metrics::counter!(NEAR_LIMIT_TOTAL, "policy" => policy.clone()),
                settlements: Settled::ALL.map(|outcome| {
                    metrics::counter!(SETTLEMENTS_TOTAL, "policy" => policy.clone(), "outcome" => outcome.as_str())
                }),
                leases: [
                    LEASES_TOTAL,
                    LEASED_UNITS_TOTAL,
                    LEASE_RETURNED_UNITS_TOTAL,
                    LEASE_DECISIONS_TOTAL,
                ]
                .map(|name| metrics::counter!(name, "policy" => policy.clone())),
            }
        })
    }

    #[cfg(feature = "metrics")]
    fn store(&self) -> &StoreMetrics {
        self.store.get_or_init(|| StoreMetrics {
            errors: StoreError::KINDS
                .map(|kind| metrics::counter!(STORE_ERRORS_TOTAL, "kind" => kind)),
            fail_modes: FailMode::ALL
                .map(|mode| metrics::counter!(FAIL_MODE_TOTAL, "mode" => mode.as_str())),
            in_flight: metrics::gauge!(STORE_IN_FLIGHT),
            duration: metrics::histogram!(STORE_DURATION_SECONDS),
            deny_cache_hits: metrics::counter!(DENY_CACHE_HITS_TOTAL),
        })
    }

    /// A decision (or a request refused before one) under the policy at `index`.
    pub(crate) fn decision(&self, index: usize, outcome: Outcome, near_limit: bool) {
        let _ = (index, outcome, near_limit);
        #[cfg(feature = "metrics")]
        {
            let policy = self.policy(index);
            policy.decisions[outcome as usize].increment(1);
            if near_limit {
                policy.near_limit.increment(1);
            }
        }
    }

    /// A settlement under the policy at `index`.
    pub(crate) fn settled(&self, index: usize, outcome: Settled) {
        let _ = (index, outcome);
        #[cfg(feature = "metrics")]
        self.policy(index).settlements[outcome as usize].increment(1);
    }

    /// A lease of `units` taken under the policy at `index`.
    pub(crate) fn leased(&self, index: usize, units: u64) {
        let _ = (index, units);
        #[cfg(feature = "metrics")]
        {
            let leases = &self.policy(index).leases;
            leases[0].increment(1);
            leases[1].increment(units);
        }
    }

    /// `units` of a lease under the policy at `index` given back unspent.
    pub(crate) fn lease_returned(&self, index: usize, units: u64) {
        let _ = (index, units);
        #[cfg(feature = "metrics")]
        self.policy(index).leases[2].increment(units);
    }

    /// A decision under the policy at `index` served from a lease.
    pub(crate) fn lease_decision(&self, index: usize) {
        let _ = index;
        #[cfg(feature = "metrics")]
        self.policy(index).leases[3].increment(1);
    }

    /// A store call other than a decision failed (no fail mode applies).
    pub(crate) fn store_error(&self, error: &StoreError) {
        let _ = error;
        #[cfg(feature = "metrics")]
        self.store().errors[error.kind_index()].increment(1);
    }

    /// A store call's time, answered or not.
    pub(crate) fn store_duration(&self, elapsed: Duration) {
        let _ = elapsed;
        #[cfg(feature = "metrics")]
        self.store().duration.record(elapsed.as_secs_f64());
    }

    /// A request denied by the local deny cache.
    pub(crate) fn deny_cache_hit(&self) {
        #[cfg(feature = "metrics")]
        self.store().deny_cache_hits.increment(1);
    }

    /// A store failure (or a request that did not ask it), and the fail mode that decided the
    /// request.
    pub(crate) fn store_failed(&self, error: &StoreError, mode: FailMode) {
        let _ = (error, mode);
        #[cfg(feature = "metrics")]
        {
            let store = self.store();
            store.errors[error.kind_index()].increment(1);
            store.fail_modes[mode as usize].increment(1);
        }
    }

    /// Calls to a remote store under way now.
    pub(crate) fn in_flight(&self, calls: usize) {
        let _ = calls;
        #[cfg(feature = "metrics")]
        self.store().in_flight.set(calls as f64);
    }
}
