//! [`RateLimitService`]: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over a
//! tollgate store, answering as envoyproxy/ratelimit does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService as Rls;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

use super::{Config, Count, Descriptor, Plan, RequestError, Status};
use crate::store::{Counter, MemoryStore, Store};
use crate::{Limiter, StoreError};

mod leasing;
mod response;
mod settings;
mod tasks;

pub use settings::{HeaderNames, ServiceSettings, StoreFailure};

use leasing::{Leasing, Wanted};
use tasks::Tasks;

pub(crate) use response::to_json;

/// envoyproxy/ratelimit's service over a tollgate store: mount it on any tonic server with
/// [`RateLimitService::into_server`]. Every store call goes through the limiter's timeout,
/// breaker and bound on calls in flight; a store failure answers as
/// [`ServiceSettings::store_failure`] says. The configuration can be replaced at any time
/// ([`RateLimitService::set_config`]); until one is set every call fails with
/// `no rate limit configuration loaded`. Cloning shares everything.
pub struct RateLimitService<St = MemoryStore> {
    inner: Arc<Inner<St>>,
}

struct Inner<St> {
    limiter: Limiter<St>,
    config: ArcSwapOption<Generation>,
    /// The task that gives back ended leases runs.
    sweeping: std::sync::atomic::AtomicBool,
    /// Lease calls and give-backs under way.
    tasks: Arc<Tasks>,
    settings: ServiceSettings,
    /// Spreads counter expiries (`EXPIRATION_JITTER_MAX_SECONDS`).
    jitter: AtomicU64,
}

/// One configuration and what its leases hold.
struct Generation {
    config: Arc<Config>,
    leasing: Option<Arc<Leasing>>,
}

impl<St> Clone for RateLimitService<St> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<St> std::fmt::Debug for RateLimitService<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService")
            .field("settings", &self.inner.settings)
            .field("loaded", &self.inner.config.load().is_some())
            .finish_non_exhaustive()
    }
}

impl<St: Store> RateLimitService<St> {
    /// The service counting in `limiter`'s store, bounded by its timeout and breaker.
    pub fn new(limiter: Limiter<St>, settings: ServiceSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                limiter,
                config: ArcSwapOption::empty(),
                sweeping: std::sync::atomic::AtomicBool::new(false),
                tasks: Arc::default(),
                settings,
                jitter: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            }),
        }
    }

    /// The service counting in `store`, each call bounded by `timeout` (and the limiter's
    /// breaker and bound on calls in flight).
    ///
    /// # Errors
    ///
    /// A zero `timeout`.
    pub fn on_store(
        store: St,
        timeout: std::time::Duration,
        settings: ServiceSettings,
    ) -> Result<Self, crate::ConfigError> {
        let limiter = Limiter::builder()
            .store(store)
            // The service counts with the store's counters: the limiter only bounds the calls
            // and logs outages, and its own limit (which a limiter must have) is never used.
            .capacity(1)
            .period(std::time::Duration::from_secs(1))
            .timeout(timeout)
            .share_buckets(true)
            .build()?;
        Ok(Self::new(limiter, settings))
    }

    /// Puts `config` in force, atomically: a call is decided wholly under one configuration.
    /// What the old configuration's leases hold is given back.
    pub fn set_config(&self, config: Config) {
        let settings = &self.inner.settings;
        let generation = Generation {
            config: Arc::new(config),
            leasing: (settings.leases && !settings.stop_increment_when_over)
                .then(|| Arc::new(Leasing::new(Arc::clone(&self.inner.tasks)))),
        };
        let old = self.inner.config.swap(Some(Arc::new(generation)));
        if let Some(leasing) = old.as_ref().and_then(|g| g.leasing.as_ref()) {
            leasing.retire(&self.inner.limiter);
        }
    }

    /// The configuration in force, if one was set.
    pub fn config(&self) -> Option<Arc<Config>> {
        self.inner
            .config
            .load_full()
            .map(|generation| Arc::clone(&generation.config))
    }

    /// For a shutdown: lends no more, gives back what every lease holds, and waits until the
    /// store took it and every lease call under way ended. Until the next
    /// [`set_config`](Self::set_config) every request is counted in the store.
    pub async fn give_back_leases(&self) {
        if let Some(leasing) = self
            .inner
            .config
            .load_full()
            .and_then(|g| g.leasing.clone())
        {
            leasing.give_back_all(&self.inner.limiter).await;
        }
    }

    /// The tonic service to add to a server.
    pub fn into_server(
        self,
    ) -> envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer<Self>
    {
        envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer::new(self)
    }

    /// Decides `request` at `now_s` (Unix seconds).
    ///
    /// # Errors
    ///
    /// envoyproxy/ratelimit's errors (an empty domain or descriptor list, no configuration),
    /// a limit override without a unit, or the store's failure under [`StoreFailure::Error`].
    pub async fn decide(
        &self,
        request: &RateLimitRequest,
        now_s: u64,
    ) -> Result<RateLimitResponse, tonic::Status> {
        let descriptors: Vec<Descriptor<'_>> = request
            .descriptors
            .iter()
            .map(|d| Descriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()))
                    .collect(),
                limit: d.limit.as_ref().map(|l| (l.requests_per_unit, l.unit)),
                hits_addend: d.hits_addend.as_ref().map(|h| h.value),
            })
            .collect();
        if request.domain.is_empty() {
            return Err(unknown(RequestError::EmptyDomain));
        }
        if descriptors.is_empty() {
            return Err(unknown(RequestError::NoDescriptors));
        }
        let Some(generation) = self.inner.config.load_full() else {
            return Err(tonic::Status::unknown("no rate limit configuration loaded"));
        };
        let domain = request.domain.as_str();
        let plan = Plan::new(
            &generation.config,
            domain,
            &descriptors,
            request.hits_addend,
        )
        .map_err(|error| match error {
            RequestError::OverrideUnit(_) | RequestError::TooManyHits(_) => {
                tonic::Status::invalid_argument(error.to_string())
            }
            other => unknown(other),
        })?;
        let settings = &self.inner.settings;
        let counts = plan.counts(&settings.key_prefix, domain, &descriptors, now_s);
        let counted = match &generation.leasing {
            Some(leasing) if !counts.is_empty() => {
                self.sweep_leases();
                // Without the jitter: it is added to those the store is asked for.
                let wanted = counts
                    .into_iter()
                    .map(|c| Wanted {
                        limit: c.limit,
                        window_end_s: (now_s / c.window_s + 1) * c.window_s,
                        counter: Counter {
                            key: c.key,
                            hits: c.hits,
                            expire_s: c.window_s,
                        },
                    })
                    .collect();
                let jitter = || self.jitter();
                leasing.count(&self.inner.limiter, wanted, jitter).await
            }
            _ => self.count(counts).await,
        };
        let after = match counted {
            Ok(after) => after,
            Err(error) => return self.failed(request, &plan, error, now_s),
        };
        let (statuses, hits, over) = plan.statuses(&settings.decide, &after, now_s);
        super::metrics::hits(domain, plan.limits(), &hits);
        Ok(self.response(request, &plan, &statuses, over, now_s))
    }

    /// The store's counter of `count`: its key and hits, expiring after its window and the
    /// jitter.
    fn counter(&self, count: Count) -> Counter {
        Counter {
            key: count.key,
            hits: count.hits,
            expire_s: count.window_s + self.jitter(),
        }
    }

    /// Adds each count's hits to its counter and returns their values after. With
    /// [`ServiceSettings::stop_increment_when_over`], reads them first and, when a hit would
    /// put one over its limit, adds only to those.
    async fn count(&self, counts: Vec<Count>) -> Result<Vec<u64>, StoreError> {
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let core = self.inner.limiter.core();
        let store = self.inner.limiter.store();
        if !self.inner.settings.stop_increment_when_over {
            let counters: Vec<Counter> = counts.into_iter().map(|c| self.counter(c)).collect();
            return core.bounded(store.count(&counters)).await;
        }
        let limits: Vec<u64> = counts.iter().map(|c| c.limit).collect();
        let mut counters: Vec<Counter> = counts.into_iter().map(|c| self.counter(c)).collect();
        // A read renews the expiry as the count would, jitter included.
        let reads: Vec<Counter> = counters
            .iter()
            .map(|c| Counter {
                hits: 0,
                ..c.clone()
            })
            .collect();
        let now = core.bounded(store.count(&reads)).await?;
        let over: Vec<bool> = (counters.iter().zip(&now).zip(&limits))
            .map(|((c, now), limit)| now.saturating_add(c.hits) > *limit)
            .collect();
        if over.contains(&true) {
            for (counter, over) in counters.iter_mut().zip(over) {
                if !over {
                    counter.hits = 0;
                }
            }
        }
        core.bounded(store.count(&counters)).await
    }

    /// Starts the task that gives back ended leases, once: it runs while the service lives.
    fn sweep_leases(&self) {
        // Read first: once it runs, no request writes the flag's cache line again.
        if self.inner.sweeping.load(Ordering::Relaxed)
            || self.inner.sweeping.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(leasing::LEASE_TIME / 4);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if let Some(leasing) = inner.config.load_full().and_then(|g| g.leasing.clone()) {
                    leasing.sweep(&inner.limiter);
                }
            }
        });
    }

    /// What [`StoreFailure`] makes of a store failure.
    fn failed(
        &self,
        request: &RateLimitRequest,
        plan: &Plan,
        error: StoreError,
        now_s: u64,
    ) -> Result<RateLimitResponse, tonic::Status> {
        let closed = match self.inner.settings.store_failure {
            StoreFailure::Error => return Err(tonic::Status::unknown(error.to_string())),
            StoreFailure::Open => false,
            StoreFailure::Closed => true,
        };
        let statuses: Vec<Status> = plan
            .limits()
            .iter()
            .map(|matched| {
                let counted = matched.as_ref().and_then(|m| {
                    let limit = m.limit();
                    let unit = limit.unit().filter(|_| !limit.is_unlimited())?;
                    Some((limit.requests_per_unit(), unit, limit.name().to_owned()))
                });
                Status {
                    quota: false,
                    over_limit: closed && counted.is_some(),
                    limit_remaining: 0,
                    duration_until_reset: counted.as_ref().map(|c| c.1.until_reset(now_s)),
                    current_limit: counted,
                }
            })
            .collect();
        let over = statuses.iter().any(|s| s.over_limit);
        Ok(self.response(request, plan, &statuses, over, now_s))
    }

    /// The wire response of `statuses`, with dynamic metadata when it is on.
    fn response(
        &self,
        request: &RateLimitRequest,
        plan: &Plan,
        statuses: &[Status],
        over: bool,
        now_s: u64,
    ) -> RateLimitResponse {
        let settings = &self.inner.settings;
        let metadata = settings
            .dynamic_metadata
            .then(|| response::dynamic_metadata(request, plan.limits(), statuses));
        response::response(statuses, over, settings.headers.as_ref(), metadata, now_s)
    }

    /// Up to `EXPIRATION_JITTER_MAX_SECONDS - 1` seconds, spread.
    fn jitter(&self) -> u64 {
        let max = self.inner.settings.expiration_jitter_max_s;
        if max == 0 {
            return 0;
        }
        // A Weyl sequence mixed: spread enough for expiries, no generator to keep.
        let x = self
            .inner
            .jitter
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        let x = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (x ^ (x >> 27)) % max
    }
}

fn unknown(error: RequestError) -> tonic::Status {
    tonic::Status::unknown(error.to_string())
}

#[tonic::async_trait]
impl<St: Store> Rls for RateLimitService<St> {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.decide(request.get_ref(), now_s)
            .await
            .map(tonic::Response::new)
    }
}
