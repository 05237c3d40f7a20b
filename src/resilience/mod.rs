//! What keeps a failing or slow store from becoming an outage: the [`FailMode`], the bound
//! on calls in flight and the circuit breaker, the in-process fallback of [`FailMode::Local`],
//! the deny cache that spares the store calls it knows the answer to, and a log that warns
//! about an outage without flooding.

use std::sync::Arc;

use crate::policy::Policies;
use crate::store::MemoryStore;
use crate::{ConfigError, Decision, Limit};

pub(crate) mod breaker;
pub(crate) mod deny_cache;
pub(crate) mod outage;

/// What a request gets when the store fails or does not answer within the timeout.
///
/// | | `Open` (default) | `Closed` | `Local` |
/// |---|---|---|---|
/// | while the store is down or slow | passes, unlimited | refused (`503`, `Retry-After: 1`) | decided in this process against [`local_share`](crate::LimiterBuilder::local_share) of each limit |
/// | nothing passes unlimited | no | yes | yes |
/// | the service stays up | yes | no | yes |
/// | limits hold across instances | no | yes (nothing passes) | approximately: each instance admits its share |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Let the request pass unlimited (the default): an outage of the store does not become an
    /// outage of the service, but nothing is limited while it lasts.
    #[default]
    Open,
    /// Refuse it (the layer answers `503 Service Unavailable` with `Retry-After: 1`): nothing
    /// passes unlimited, but the service is down while the store is.
    Closed,
    /// Decide in this process, with an in-memory store holding a share of each limit
    /// ([`LimiterBuilder::local_share`](crate::LimiterBuilder::local_share), e.g. 1/N for N
    /// instances), until the store answers again: the service stays up and stays limited,
    /// approximately. Decisions are the same algorithms and carry the same fields. The local
    /// buckets know nothing of Redis's (a client starts with whole ones) and carry over from
    /// one outage to the next, refilling meanwhile. A request that costs more than the local
    /// share of a limit is refused as with `Closed` until the store is back. (With an
    /// in-process store, which cannot fail, `Local` is the same as `Open`.)
    Local,
}

impl FailMode {
    /// Every mode, in order.
    pub const ALL: [FailMode; 3] = [Self::Open, Self::Closed, Self::Local];

    /// `open`, `closed` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            "local" => Ok(Self::Local),
            _ => Err(ConfigError::Invalid {
                field: "fail_mode",
                value: s.to_owned(),
                reason: "must be \"open\", \"closed\" or \"local\"",
            }),
        }
    }
}

/// The in-process store of [`FailMode::Local`] and each policy's limits, scaled to this
/// instance's share.
pub(crate) struct LocalFallback {
    store: MemoryStore,
    /// By policy index.
    limits: Box<[Arc<[Limit]>]>,
}

impl LocalFallback {
    /// The fallback of `policies` at `share`, counting in `store` (a reload's new
    /// generation keeps counting in the last one's).
    pub(crate) fn new(store: MemoryStore, policies: &Policies, share: f64) -> Self {
        Self {
            store,
            limits: (0..policies.len())
                .map(|i| {
                    policies
                        .entry(i)
                        .limits
                        .iter()
                        .map(|l| l.scaled(share))
                        .collect()
                })
                .collect(),
        }
    }

    /// Decides a request of `cost` named `key` under the policy at `index`; `None` only if
    /// the policy's limits could not be decided (never: policies are checked when built).
    pub(crate) fn decide(&self, index: usize, key: &str, cost: u64) -> Option<Decision> {
        self.store.decide_now(key, &self.limits[index], cost).ok()
    }

    /// Where it counts.
    pub(crate) fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Frees the slots a local decision for `key` under the policy at `index` took.
    pub(crate) fn release(&self, index: usize, key: &str) {
        // The memory store counts slots: any stamp frees one.
        let stamp = crate::store::Stamp::default();
        let _ = self
            .store
            .put_back_now(key, &self.limits[index], &stamp, 0, true);
    }
}
