use std::collections::HashMap;
use std::future::{Ready, ready};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::limit::MAX_NAME_LEN;
use crate::{Decision, Limit, MAX_LIMITS, StoreError, decide_all};

use super::{Store, push_bucket_key};

/// Shards of the key space, each behind its own lock, so concurrent decisions on different
/// keys rarely contend.
const SHARDS: usize = 64;

/// A shard is swept of full buckets when it has grown by this many keys since the last sweep
/// (or has doubled, whichever is larger), so sweeping costs O(1) per insertion on average.
const MIN_SWEEP_GROWTH: usize = 64;

/// The default most buckets a store holds.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Buckets in this process's memory.
///
/// The same token bucket as [`RedisStore`](crate::RedisStore), decision for decision, timed
/// by [`tokio::time::Instant`] (so tests can pause time). Limits are per process: two
/// instances each admit the full limit.
///
/// Memory stays bounded: a bucket that has refilled is the same as no bucket, so each shard
/// drops its full buckets once it has grown enough since it last did; and the store never holds
/// more than [`max_keys`](MemoryStore::with_max_keys) buckets (a million by default). Past that,
/// the buckets nearest to full are forgotten first, which gives those clients back at most the
/// few tokens they were missing. Cloning is cheap and shares the buckets.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    hasher: RandomState,
    /// The most buckets one shard holds.
    shard_cap: usize,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Key → the time its bucket is full again, in µs since `epoch`.
    buckets: HashMap<String, u64>,
    /// Size after the last sweep.
    swept_len: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store holding at most [`DEFAULT_MAX_KEYS`] buckets.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// An empty store holding at most about `max_keys` buckets (rounded up to a multiple of
    /// the shard count, 64).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                hasher: RandomState::new(),
                shard_cap: max_keys.div_ceil(SHARDS).max(1),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            }),
        }
    }

    /// How many buckets are held (full buckets not yet swept included).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).buckets.len())
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides without the future; the same as [`Store::decide`].
    ///
    /// # Panics
    ///
    /// When `limits` is empty or longer than [`MAX_LIMITS`].
    pub fn decide_now(&self, key: &str, limits: &[Limit], cost: u64) -> Decision {
        assert!(!limits.is_empty() && limits.len() <= MAX_LIMITS);
        let now = u64::try_from(self.inner.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        // All the buckets of one key live in one shard, so one lock makes the decision atomic.
        let shard = self.inner.hasher.hash_one(key) as usize % SHARDS;
        let mut shard = lock(&self.inner.shards[shard]);
        let mut full_ats = [now; MAX_LIMITS];
        let full_ats = &mut full_ats[..limits.len()];
        let mut bucket = String::with_capacity(key.len() + 1 + MAX_NAME_LEN);
        for (limit, full_at) in limits.iter().zip(full_ats.iter_mut()) {
            bucket.clear();
            push_bucket_key(&mut bucket, key, limit);
            if let Some(&stored) = shard.buckets.get(bucket.as_str()) {
                *full_at = stored;
            }
        }
        let decision = decide_all(limits, full_ats, now, cost);
        if decision.allowed {
            for (limit, &full_at) in limits.iter().zip(full_ats.iter()) {
                bucket.clear();
                push_bucket_key(&mut bucket, key, limit);
                match shard.buckets.get_mut(bucket.as_str()) {
                    Some(slot) => *slot = full_at,
                    None => {
                        shard.make_room(now, self.inner.shard_cap);
                        shard.buckets.insert(bucket.clone(), full_at);
                        shard.sweep_if_grown(now);
                    }
                }
            }
        }
        decision
    }
}

impl Shard {
    fn sweep_if_grown(&mut self, now: u64) {
        let len = self.buckets.len();
        if len >= self.swept_len + self.swept_len.max(MIN_SWEEP_GROWTH) {
            self.sweep(now);
        }
    }

    /// Drops the full buckets and gives back memory a past peak left behind.
    fn sweep(&mut self, now: u64) {
        self.buckets.retain(|_, full_at| *full_at > now);
        self.swept_len = self.buckets.len();
        if self.buckets.capacity() > 4 * self.buckets.len().max(MIN_SWEEP_GROWTH) {
            self.buckets.shrink_to(2 * self.buckets.len());
        }
    }

    /// Before an insertion into a shard at its cap: drop the full buckets, then, if that was not
    /// enough, the eighth of the buckets nearest to full.
    fn make_room(&mut self, now: u64, cap: usize) {
        if self.buckets.len() < cap {
            return;
        }
        self.sweep(now);
        if self.buckets.len() < cap {
            return;
        }
        let mut full_ats: Vec<u64> = self.buckets.values().copied().collect();
        let nth = full_ats.len() / 8;
        let (_, &mut threshold, _) = full_ats.select_nth_unstable(nth);
        self.buckets.retain(|_, full_at| *full_at > threshold);
        self.swept_len = self.buckets.len();
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a bucket half-written (each update is one
    // store of a u64), so a poisoned shard is still consistent.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for MemoryStore {
    type Future = Ready<Result<Decision, StoreError>>;

    const REMOTE: bool = false;

    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> Self::Future {
        ready(Ok(self.decide_now(key, limits, cost)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit() -> [Limit; 1] {
        [Limit::new("default", 10, 10, Duration::from_secs(10)).unwrap()]
    }

    #[tokio::test(start_paused = true)]
    async fn drains_then_refills_one_token_per_interval() {
        let store = MemoryStore::new();
        let l = limit();
        for expected in (0..10).rev() {
            let d = store.decide_now("k", &l, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected);
        }
        let d = store.decide_now("k", &l, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset_after, Duration::from_secs(10));

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!store.decide_now("k", &l, 1).allowed);
        tokio::time::advance(Duration::from_millis(1)).await;
        let d = store.decide_now("k", &l, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(store.decide_now("k", &l, 1).remaining, 9);
        // Other keys have their own buckets.
        assert_eq!(store.decide_now("other", &l, 1).remaining, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_evicted() {
        let store = MemoryStore::new();
        let l = limit();
        for i in 0..10_000 {
            store.decide_now(&format!("k{i}"), &l, 1);
        }
        assert_eq!(store.len(), 10_000);
        // After every bucket has refilled, new keys push the old ones out.
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..10_000 {
            store.decide_now(&format!("n{i}"), &l, 1);
        }
        assert!(store.len() < 13_000, "{} buckets held", store.len());
    }

    #[tokio::test(start_paused = true)]
    async fn never_holds_more_than_max_keys_and_forgets_the_fullest_first() {
        let store = MemoryStore::with_max_keys(6_400);
        let l = limit();
        // One key drained: it must survive the flood of keys that took one token each.
        for _ in 0..10 {
            store.decide_now("drained", &l, 1);
        }
        for i in 0..50_000 {
            tokio::time::advance(Duration::from_micros(10)).await;
            store.decide_now(&format!("k{i}"), &l, 1);
            assert!(store.len() <= 6_400);
        }
        assert!(!store.decide_now("drained", &l, 1).allowed);
    }
}
