//! Policies replaced at run time: each set of policies is one generation of the engine's
//! [`Core`], swapped in whole by [`Limiter::reload`].
//!
//! Every operation loads the generation in force once and holds it to its end, so a decision
//! is made wholly under the old policies or wholly under the new. What a decision leaves
//! behind (concurrency slots, receipts, lease calls under way) holds the generation it was
//! made under, and is released, settled or given back against that generation's limits: the
//! windows and slots that counted the units. A retired generation takes no more leases and
//! gives back those it holds; its deny cache, local fallback state and claims go with it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::claims::Claims;
use super::{Core, Limiter, leasing};
use crate::policy::Policies;
use crate::resilience::LocalFallback;
use crate::resilience::deny_cache::DenyCache;
use crate::store::{MemoryStore, Store};
use crate::telemetry::Telemetry;
use crate::{ConfigError, telemetry};

/// What each generation is made with besides its policies: the builder's settings that a
/// reload keeps.
#[derive(Debug)]
pub(crate) struct Fixed {
    /// The store's identity, when it has one and the limiter claims its buckets.
    pub(crate) claims_on: Option<usize>,
    /// The deny cache's longest memory, when there is one (a remote store).
    pub(crate) deny_cache_max: Option<Duration>,
    /// This instance's share of each limit, under [`FailMode::Local`](crate::FailMode::Local)
    /// with a remote store.
    pub(crate) local_share: Option<f64>,
    /// Whether leased policies lease (a remote store).
    pub(crate) remote: bool,
}

/// The parts of a generation that its policies make.
pub(crate) struct Made {
    pub(crate) policies: Arc<Policies>,
    pub(crate) prefixes: Box<[Box<str>]>,
    pub(crate) claims: Option<Claims>,
    pub(crate) telemetry: Telemetry,
    pub(crate) local: Option<LocalFallback>,
    pub(crate) deny_cache: Option<DenyCache>,
    pub(crate) leases: Option<crate::lease::Leases>,
}

impl Made {
    /// Checks `policies` for the limiter `id` (claims its buckets) and makes what they need.
    /// `local` is the local fallback's store to keep counting in (the last generation's).
    pub(crate) fn new(
        policies: Policies,
        key_prefix: &str,
        fixed: &Fixed,
        id: usize,
        local: Option<&MemoryStore>,
    ) -> Result<Self, ConfigError> {
        let names: Vec<&str> = (0..policies.len())
            .map(|i| policies.entry(i).name())
            .collect();
        // Each policy's key prefix: a tier's buckets have keys of their own.
        let prefixes: Box<[Box<str>]> = (0..policies.len())
            .map(|i| match &policies.entry(i).tier {
                Some(tier) => format!("{key_prefix}.{tier}").into(),
                None => key_prefix.into(),
            })
            .collect();
        let claims = fixed
            .claims_on
            .map(|store| Claims::take(store, id, &prefixes, &policies))
            .transpose()?;
        // Leases save calls to a remote store; an in-process one decides in process anyway.
        let leased = fixed.remote && (0..policies.len()).any(|i| policies.entry(i).lease.is_some());
        Ok(Self {
            telemetry: Telemetry::new(&names),
            local: fixed.local_share.map(|share| {
                let store = local.cloned().unwrap_or_default();
                LocalFallback::new(store, &policies, share)
            }),
            deny_cache: fixed.deny_cache_max.map(DenyCache::new),
            leases: leased.then(crate::lease::Leases::new),
            claims,
            prefixes,
            policies: Arc::new(policies),
        })
    }
}

impl<St: Store> Limiter<St> {
    /// Replaces the policies (rules, limits, tiers) while the limiter runs, atomically: a
    /// decision is made wholly under the old policies or wholly under the new ones, and the
    /// layer, the direct calls and every clone of this limiter see the new ones from the next
    /// call. The builder's other settings (store, key prefix, timeout, fail mode, deny cache,
    /// bypass list) stay.
    ///
    /// - A limit that keeps its name and algorithm (in the same rule and tier) keeps its
    ///   buckets, and a new capacity or rate applies to the state they hold (see
    ///   `docs/policies.md`, "Changing a limit"); one whose algorithm changed starts afresh
    ///   under a new key.
    /// - What a decision under the old policies holds is released or settled against the old
    ///   limits, which counted it: concurrency slots, [receipts](crate::Receipt), and lease
    ///   calls under way. Units held on lease are given back (in the background), the deny
    ///   cache starts empty, and a [`Subject`](crate::Subject) made before is resolved again by
    ///   each call that uses it.
    ///
    /// Counted in `tollgate_policy_reloads_total{outcome}`, and
    /// `tollgate_policies_loaded_timestamp_seconds` says when the policies in force were
    /// loaded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::Method;
    /// use tollgate::{Limit, Limiter, Policies, Target};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let per_minute = |n| Limit::fixed_window("per_minute", n, Duration::from_secs(60));
    /// let limiter = Limiter::builder()
    ///     .policies(Policies::single(per_minute(2)?))
    ///     .build()?;
    /// let alice = limiter.subject("alice", Target::route(&Method::GET, "/"))?;
    /// assert!(limiter.take(&alice, 2).await.is_allowed());
    /// assert!(!limiter.take(&alice, 1).await.is_allowed());
    ///
    /// // A raised limit: the same window, which has counted 2 of 5 now.
    /// limiter.reload(Policies::single(per_minute(5)?))?;
    /// assert!(limiter.take(&alice, 3).await.is_allowed());
    /// assert!(!limiter.take(&alice, 1).await.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming what is wrong, and the old policies stay in force: new
    /// policies that claim another limiter's buckets (as [`build`](crate::LimiterBuilder::build)
    /// checks), or that are [tiered](Policies::tiered) where the old were not, or the other
    /// way round (a layer finds a request's tier only when built for tiers; the field is
    /// `tiers`).
    pub fn reload(&self, policies: Policies) -> Result<(), ConfigError> {
        let result = self.swap(policies);
        telemetry::policies_reloaded(result.is_ok());
        result
    }

    fn swap(&self, policies: Policies) -> Result<(), ConfigError> {
        let _one_at_a_time = self.shared.reloading.lock();
        let old = self.shared.core();
        if policies.is_tiered() != old.policies.is_tiered() {
            return Err(ConfigError::Invalid {
                field: "tiers",
                value: if policies.is_tiered() {
                    "tiered".into()
                } else {
                    "untiered".into()
                },
                reason: "a reload keeps the policies tiered, or untiered, as they were built \
                         (a layer finds a request's tier only when built for tiers); rebuild \
                         the limiter to change that",
            });
        }
        let made = Made::new(
            policies,
            &old.key_prefix,
            &old.fixed,
            old.id,
            old.local.as_ref().map(LocalFallback::store),
        )?;
        let new = Core {
            policies: made.policies,
            prefixes: made.prefixes,
            _claims: made.claims,
            telemetry: made.telemetry,
            local: made.local,
            deny_cache: made.deny_cache,
            leases: made.leases,
            key_prefix: old.key_prefix.clone(),
            timeout: old.timeout,
            fail_mode: old.fail_mode,
            shadow: old.shadow,
            bypass: old.bypass.clone(),
            outage: Arc::clone(&old.outage),
            breaker: old.breaker.clone(),
            worker: old.worker.clone(),
            id: old.id,
            generation: old.generation + 1,
            loaded_at: SystemTime::now(),
            fixed: Arc::clone(&old.fixed),
        };
        telemetry::policies_loaded(new.loaded_at);
        self.shared.core.store(Arc::new(new));
        // The old generation lends no more, and gives back what it holds on lease to the
        // limits that lent it.
        if let Some(leases) = &old.leases {
            for unspent in leases.retire() {
                leasing::spawn_give_back(&self.shared, &old, unspent);
            }
        }
        Ok(())
    }

    /// When the policies in force were loaded: built, or last [reloaded](Self::reload).
    pub fn loaded_at(&self) -> SystemTime {
        self.shared.core.load().loaded_at
    }
}
