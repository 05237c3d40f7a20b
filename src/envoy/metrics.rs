//! The Envoy service's metrics (with the `metrics` feature): configuration loads, and each
//! descriptor limit's hits by domain and limit, as envoyproxy/ratelimit counts them.

use super::{Hits, Matched};

/// `tollgate_rls_config_loads_total{outcome}`: `success` or `error`.
#[cfg(feature = "metrics")]
pub(crate) const CONFIG_LOADS_TOTAL: &str = "tollgate_rls_config_loads_total";
/// `tollgate_rls_hits_total{domain, limit, outcome}`: `total_hits`, `within_limit`, `near_limit`,
/// `over_limit`, `shadow_mode`. `limit` is the limit's place in the configuration
/// (`domain.key_value.key`), or `request` for a request's own limit: never a request's values,
/// so a client cannot multiply the series.
#[cfg(feature = "metrics")]
pub(crate) const HITS_TOTAL: &str = "tollgate_rls_hits_total";

/// A configuration load came to `success`.
pub(crate) fn config_loaded(success: bool) {
    let _ = success;
    #[cfg(feature = "metrics")]
    {
        let outcome = if success { "success" } else { "error" };
        metrics::counter!(CONFIG_LOADS_TOTAL, "outcome" => outcome).increment(1);
    }
}

/// A request's hits on each of its limits.
pub(crate) fn hits(domain: &str, limits: &[Option<Matched>], hits: &[Hits]) {
    let _ = (domain, limits, hits);
    #[cfg(feature = "metrics")]
    for (matched, hits) in limits.iter().zip(hits) {
        let Some(matched) = matched else { continue };
        let limit = matched.limit();
        let key = match limit.is_override() {
            true => "request".to_owned(),
            false => limit.stats_key().to_owned(),
        };
        for (outcome, n) in [
            ("total_hits", hits.total),
            ("within_limit", hits.within_limit),
            ("near_limit", hits.near_limit),
            ("over_limit", hits.over_limit),
            ("shadow_mode", hits.shadow_mode),
        ] {
            if n > 0 {
                metrics::counter!(HITS_TOTAL, "domain" => domain.to_owned(), "limit" => key.clone(), "outcome" => outcome)
                    .increment(n);
            }
        }
    }
}
