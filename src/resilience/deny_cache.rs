//! The local deny cache: a denial from the store, remembered until it runs out.
//!
//! When the store says a key needs `T` more time before a request of cost `c` can pass, every
//! later request of cost `c` or more on that key is denied in this process until `T` has
//! passed, or [`deny_cache_max`](crate::LimiterBuilder::deny_cache_max) (1 s by default),
//! whichever is sooner, without asking the store.
//!
//! It never admits what the store would refuse: a cached denial only ever denies. It is not
//! exact the other way: it can deny what the store would allow, for at most `deny_cache_max`,
//! whenever units come back other than by time: a reservation settled lower, a refund or a
//! reset on another instance; a lease given back (on a leased policy, every lease time); an
//! operator deletes the key; Redis restarts empty or fails over to a replica that lost writes;
//! a deploy that raises the limit. A settlement, refund or reset on this instance forgets its
//! cached denial at once.
//!
//! A cached denial reports what the store said, aged: for a token bucket the exact tokens and
//! waits as of now; for the other algorithms the units left as the store counted them and
//! waits counted down from its answer (for a dearer request, its wait is at least that).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::MutexGuard;

use std::time::Duration;

use tokio::time::Instant;

use crate::algorithm::Observation;
use crate::sync::Sharded;
use crate::{Algorithm, Decision, Limit};

const SHARDS: usize = 16;

/// The most keys remembered; past that, a denial is not cached (it is only an optimization).
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct DenyCache {
    shards: Sharded<Shard>,
    /// The longest a denial is remembered.
    max: Duration,
    /// Entries held, so an empty cache costs a single load.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<String, Entry, foldhash::fast::RandomState>,
    /// Size after the last sweep: a full shard is swept again only once it has changed.
    swept_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The smallest cost the denial applies to.
    cost: u64,
    /// When `cost` units fit again.
    until: Instant,
    /// When the entry is forgotten: `until`, or sooner ([`DenyCache::max`] after the store
    /// said so).
    expires: Instant,
    /// When the limit is whole again.
    full_at: Instant,
    /// When one unit is available again.
    available_at: Instant,
    /// The units left, as the store said.
    remaining: u64,
    /// The refusing limit's position among the request's limits.
    index: usize,
    /// Whether that limit is a token bucket, whose state follows from `full_at` alone.
    token_bucket: bool,
}

impl DenyCache {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            shards: Sharded::new(SHARDS),
            max,
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        self.shards.lock(key).0
    }

    /// The cached denial of a request of `cost` on `key`, under `limits` (the request's), if
    /// one still holds, with the wait and units of this request.
    pub(crate) fn check(&self, key: &str, cost: u64, limits: &[Limit]) -> Option<Decision> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut shard = self.shard(key);
        let entry = *shard.entries.get(key)?;
        if now >= entry.expires {
            shard.entries.remove(key);
            self.len.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        drop(shard);
        if cost < entry.cost {
            return None;
        }
        let limit = limits.get(entry.index)?;
        let full_after = entry.full_at.saturating_duration_since(now);
        let waited = entry.until - now;
        let decision = if entry.token_bucket {
            // The bucket as of now, if nothing else took from it: this request's own wait (at
            // least the cached one, since it costs at least as much).
            let full_after = u64::try_from(full_after.as_micros()).unwrap_or(u64::MAX);
            let observed = Observation::TokenBucket { full_after };
            let d = limit.report(&observed, false, limit.cost_of(cost));
            Decision {
                retry_after: d.retry_after.max(waited),
                ..d
            }
        } else {
            let available_after = entry.available_at.saturating_duration_since(now);
            Decision::reported(
                false,
                limit.capacity(),
                entry.remaining,
                waited,
                full_after,
                available_after,
            )
        };
        Some(decision.with_index(entry.index))
    }

    /// Forgets the denial cached for `key`, if any.
    pub(crate) fn forget(&self, key: &str) {
        if self.shard(key).entries.remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Remembers the store's denial, by `limit`, of a request of `cost` on `key` that was sent
    /// at `asked`: the store counted its wait from a moment after that, so the denial never
    /// outlasts what the store said.
    pub(crate) fn insert(
        &self,
        key: &str,
        cost: u64,
        limit: &Limit,
        decision: &Decision,
        asked: Instant,
    ) {
        // A slot may free at any moment: a concurrency limit's refusal is not remembered.
        if decision.allowed
            || decision.retry_after.is_zero()
            || limit.algorithm() == Algorithm::Concurrency
        {
            return;
        }
        let (Some(until), Some(full_at), Some(available_at)) = (
            asked.checked_add(decision.retry_after),
            asked.checked_add(decision.reset_after),
            asked.checked_add(decision.available_after),
        ) else {
            return;
        };
        let now = Instant::now();
        let expires = until.min(asked + self.max);
        if expires <= now {
            return;
        }
        let entry = Entry {
            cost,
            until,
            expires,
            full_at,
            available_at,
            remaining: decision.remaining,
            index: decision.index,
            token_bucket: limit.algorithm() == Algorithm::TokenBucket,
        };
        let mut shard = self.shard(key);
        if let Some(slot) = shard.entries.get_mut(key) {
            *slot = entry;
            return;
        }
        if shard.entries.len() >= MAX_KEYS / SHARDS {
            if shard.entries.len() == shard.swept_len {
                return;
            }
            let before = shard.entries.len();
            shard.entries.retain(|_, e| e.expires > now);
            shard.swept_len = shard.entries.len();
            self.len
                .fetch_sub(before - shard.entries.len(), Ordering::Relaxed);
            if shard.entries.len() >= MAX_KEYS / SHARDS {
                return;
            }
        }
        shard.entries.insert(key.to_owned(), entry);
        self.len.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit() -> Limit {
        // 10 tokens, one every second.
        Limit::new("t", 10, 10, Duration::from_secs(10)).unwrap()
    }

    fn denial(retry_ms: u64) -> Decision {
        Decision::new(
            false,
            10,
            0,
            Duration::from_millis(retry_ms),
            Duration::from_secs(10),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn holds_until_the_wait_is_over_for_costs_at_least_as_high() {
        let (cache, l) = (DenyCache::new(Duration::from_secs(3600)), limit());
        assert_eq!(cache.check("k", 1, std::slice::from_ref(&l)), None);
        // An empty bucket, full in 10 s: cost 1 waits 1 s.
        cache.insert("k", 1, &l, &denial(1_000), Instant::now());
        let d = cache.check("k", 1, std::slice::from_ref(&l)).unwrap();
        assert_eq!(d.retry_after, Duration::from_millis(1_000));
        assert_eq!(d.remaining, 0);
        tokio::time::advance(Duration::from_millis(400)).await;
        // A dearer request waits for its own tokens: 5 tokens, 5 s from the empty bucket.
        let d = cache.check("k", 5, std::slice::from_ref(&l)).unwrap();
        assert_eq!(d.retry_after, Duration::from_millis(4_600));
        assert_eq!(d.reset_after, Duration::from_millis(9_600));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(cache.check("k", 5, std::slice::from_ref(&l)), None);
        assert_eq!(cache.len.load(Ordering::Relaxed), 0);
        // A denial for cost 2 does not hold a cheaper request back.
        cache.insert("k", 2, &l, &denial(500), Instant::now());
        assert_eq!(
            cache.check("k", 1, std::slice::from_ref(&l)),
            None,
            "a cheaper request may pass"
        );
        // The wait counts from when the store was asked, not from when it answered.
        let asked = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        cache.insert("j", 1, &l, &denial(1_000), asked);
        assert_eq!(
            cache
                .check("j", 1, std::slice::from_ref(&l))
                .unwrap()
                .retry_after,
            Duration::from_millis(700)
        );
        // Never-passing costs, allowed decisions and waits already over are not cached; huge
        // durations do not overflow.
        cache.insert("z", 1, &l, &denial(0), Instant::now());
        cache.insert("z", 1, &l, &denial(200), asked);
        let mut never = denial(1);
        never.retry_after = Duration::MAX;
        never.reset_after = Duration::MAX;
        cache.insert("z", 1, &l, &never, Instant::now());
        assert_eq!(cache.check("z", 1, std::slice::from_ref(&l)), None);
    }
}
