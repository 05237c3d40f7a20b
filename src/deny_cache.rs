//! The local deny cache: a denial from the store, remembered until it runs out.
//!
//! When the store says a key needs `T` more time before a request of cost `c` can pass, every
//! later request of cost `c` or more on that key is denied in this process until `T` has
//! passed, without asking the store. This is exact while the store keeps its state: other
//! instances can only take tokens from the bucket, never add them, so nothing could pass
//! sooner. (If Redis restarts empty meanwhile, a cached denial may outlast the bucket it came
//! from, by at most its `retry_after`.)

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::Decision;

const SHARDS: usize = 16;

/// The most keys remembered; past that, a denial is not cached (it is only an optimization).
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct DenyCache {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<String, Entry>>]>,
    /// Entries held, so an empty cache costs a single load.
    len: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The smallest cost the denial applies to.
    cost: u64,
    /// When enough tokens exist again.
    until: Instant,
    /// When the bucket is full again.
    full_at: Instant,
    remaining: u64,
    limit: u64,
    index: usize,
}

impl DenyCache {
    pub(crate) fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let shard = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached denial of a request of `cost` on `key`, if one still holds.
    pub(crate) fn check(&self, key: &str, cost: u64) -> Option<Decision> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut shard = self.shard(key);
        let entry = *shard.get(key)?;
        if now >= entry.until {
            shard.remove(key);
            self.len.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        (cost >= entry.cost).then(|| {
            Decision::new(
                false,
                entry.limit,
                entry.remaining,
                entry.until - now,
                entry.full_at.saturating_duration_since(now),
            )
            .with_index(entry.index)
        })
    }

    /// Remembers the store's denial of a request of `cost` on `key`.
    pub(crate) fn insert(&self, key: &str, cost: u64, decision: &Decision) {
        if decision.allowed
            || decision.retry_after.is_zero()
            || decision.retry_after == Duration::MAX
        {
            return;
        }
        let now = Instant::now();
        let entry = Entry {
            cost,
            until: now + decision.retry_after,
            full_at: now + decision.reset_after,
            remaining: decision.remaining,
            limit: decision.limit,
            index: decision.index,
        };
        let mut shard = self.shard(key);
        if let Some(slot) = shard.get_mut(key) {
            *slot = entry;
            return;
        }
        if self.len.load(Ordering::Relaxed) >= MAX_KEYS {
            let before = shard.len();
            shard.retain(|_, e| e.until > now);
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
            if shard.len() >= MAX_KEYS / SHARDS {
                return;
            }
        }
        shard.insert(key.to_owned(), entry);
        self.len.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cache = DenyCache::new();
        assert_eq!(cache.check("k", 1), None);
        cache.insert("k", 2, &denial(1_000));
        assert_eq!(cache.check("k", 1), None, "a cheaper request may pass");
        let d = cache.check("k", 2).unwrap();
        assert_eq!(d.retry_after, Duration::from_millis(1_000));
        tokio::time::advance(Duration::from_millis(400)).await;
        let d = cache.check("k", 5).unwrap();
        assert_eq!(d.retry_after, Duration::from_millis(600));
        assert_eq!(d.reset_after, Duration::from_millis(9_600));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(cache.check("k", 5), None);
        assert_eq!(cache.len.load(Ordering::Relaxed), 0);
        // Never-passing costs and allowed decisions are not cached.
        cache.insert("k", 1, &denial(0));
        let mut never = denial(1);
        never.retry_after = Duration::MAX;
        cache.insert("k", 1, &never);
        assert_eq!(cache.check("k", 1), None);
    }
}
