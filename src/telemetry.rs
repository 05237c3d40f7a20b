//! What the layer reports: metrics through the `metrics` facade and logs through `tracing`
//! (users read `docs/metrics.md`).

#[cfg(feature = "metrics")]
use std::sync::OnceLock;
use std::time::Duration;

use crate::{FailMode, StoreError};

/// `tollgate_decisions_total{policy, outcome}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const DECISIONS_TOTAL: &str = "tollgate_decisions_total";
/// `tollgate_near_limit_total{policy}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const NEAR_LIMIT_TOTAL: &str = "tollgate_near_limit_total";
/// `tollgate_store_errors_total{kind}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const STORE_ERRORS_TOTAL: &str = "tollgate_store_errors_total";
/// `tollgate_fail_mode_total{mode}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const FAIL_MODE_TOTAL: &str = "tollgate_fail_mode_total";
/// `tollgate_store_duration_seconds`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const STORE_DURATION_SECONDS: &str = "tollgate_store_duration_seconds";

/// `tollgate_deny_cache_hits_total`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const DENY_CACHE_HITS_TOTAL: &str = "tollgate_deny_cache_hits_total";
/// `tollgate_store_in_flight`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const STORE_IN_FLIGHT: &str = "tollgate_store_in_flight";
/// `tollgate_settlements_total{policy, outcome}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const SETTLEMENTS_TOTAL: &str = "tollgate_settlements_total";

/// `tollgate_leases_total{policy}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const LEASES_TOTAL: &str = "tollgate_leases_total";
/// `tollgate_leased_units_total{policy}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const LEASED_UNITS_TOTAL: &str = "tollgate_leased_units_total";
/// `tollgate_lease_returned_units_total{policy}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const LEASE_RETURNED_UNITS_TOTAL: &str = "tollgate_lease_returned_units_total";
/// `tollgate_lease_decisions_total{policy}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const LEASE_DECISIONS_TOTAL: &str = "tollgate_lease_decisions_total";

/// `tollgate_background_lost_total{job}`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const BACKGROUND_LOST_TOTAL: &str = "tollgate_background_lost_total";

/// `tollgate_policy_reloads_total{outcome}`: `applied` or `rejected`.
#[cfg(any(feature = "metrics", test))]
pub(crate) const POLICY_RELOADS_TOTAL: &str = "tollgate_policy_reloads_total";
/// `tollgate_policies_loaded_timestamp_seconds`: when the policies in force were loaded (Unix
/// time).
#[cfg(any(feature = "metrics", test))]
pub(crate) const POLICIES_LOADED_TIMESTAMP: &str = "tollgate_policies_loaded_timestamp_seconds";

/// Every metric name the crate exports.
#[cfg(test)]
pub(crate) const METRIC_NAMES: &[&str] = &[
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
    POLICY_RELOADS_TOTAL,
    POLICIES_LOADED_TIMESTAMP,
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

/// Policies were loaded at `at`: when a limiter is built, and by each reload applied.
pub(crate) fn policies_loaded(at: std::time::SystemTime) {
    let _ = at;
    #[cfg(feature = "metrics")]
    {
        let unix = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        metrics::gauge!(POLICIES_LOADED_TIMESTAMP).set(unix);
    }
}

/// A reload was applied (`true`) or rejected.
pub(crate) fn policies_reloaded(applied: bool) {
    let _ = applied;
    #[cfg(feature = "metrics")]
    {
        let outcome = if applied { "applied" } else { "rejected" };
        metrics::counter!(POLICY_RELOADS_TOTAL, "outcome" => outcome).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::METRIC_NAMES;

    #[test]
    fn the_grafana_board_uses_only_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/grafana/tollgate.json"
        );
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(board["title"].is_string() && board["schemaVersion"].is_number());
        let panels = board["panels"].as_array().expect("panels");
        let mut used = std::collections::BTreeSet::new();
        for panel in panels {
            let targets = panel["targets"]
                .as_array()
                .expect("every panel has targets");
            assert!(!targets.is_empty(), "{panel}");
            for target in targets {
                let expr = target["expr"].as_str().expect("a PromQL expr");
                let names: Vec<&str> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("tollgate_"))
                    .collect();
                assert!(!names.is_empty(), "{expr}");
                for name in names {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                        .unwrap_or(name);
                    assert!(METRIC_NAMES.contains(&base), "{name} in {expr}");
                    used.insert(base.to_owned());
                }
            }
        }
        for name in METRIC_NAMES {
            assert!(used.contains(*name), "no panel shows {name}");
        }
    }
}
