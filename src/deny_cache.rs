//! The local deny cache: a denial from the store, remembered until it runs out.
//!
//! When the store says a key needs `T` more time before a request of cost `c` can pass, every
//! later request of cost `c` or more on that key is denied in this process until `T` has
//! passed, without asking the store. This is exact while the store keeps its state: other
//! instances can only take tokens from the bucket, never add them, so nothing could pass
//! sooner; the same holds for every algorithm (windows and logs only count up until time
//! takes units off). (If Redis restarts empty meanwhile, a cached denial may outlast the
//! bucket it came from, by at most its `retry_after`.)
//!
//! A cached denial reports what the store said, aged: for a token bucket the exact tokens and
//! waits as of now; for the other algorithms the units left as the store counted them and
//! waits counted down from its answer (for a dearer request, its wait is at least that).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Algorithm, Decision, Limit};

const SHARDS: usize = 16;

/// The most keys remembered; past that, a denial is not cached (it is only an optimization).
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct DenyCache {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Entries held, so an empty cache costs a single load.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<String, Entry>,
    /// Size after the last sweep: a full shard is swept again only once it has changed.
    swept_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The smallest cost the denial applies to.
    cost: u64,
    /// When `cost` units fit again.
    until: Instant,
    /// When the limit is whole again.
    full_at: Instant,
    /// When one unit is available again.
    available_at: Instant,
    /// The refusing limit: its capacity, the units left as the store said, its position, and
    /// for a token bucket its time per token and to fill.
    capacity: u64,
    remaining: u64,
    index: usize,
    bucket: Option<(Duration, Duration)>,
}

impl DenyCache {
    pub(crate) fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let shard = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached denial of a request of `cost` on `key`, if one still holds, with the wait
    /// and tokens of this request.
    pub(crate) fn check(&self, key: &str, cost: u64) -> Option<Decision> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut shard = self.shard(key);
        let entry = *shard.entries.get(key)?;
        if now >= entry.until {
            shard.entries.remove(key);
            self.len.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if cost < entry.cost {
            return None;
        }
        let full_after = entry.full_at.saturating_duration_since(now);
        let waited = entry.until - now;
        let Some((interval, fill)) = entry.bucket else {
            let available_after = entry.available_at.saturating_duration_since(now);
            return Some(
                Decision::new(false, entry.capacity, entry.remaining, waited, full_after)
                    .with_available_after(available_after)
                    .with_index(entry.index),
            );
        };
        // The token bucket as of now, if nothing else took from it: full after `full_after`.
        let per_token = interval.as_nanos().max(1);
        let held = fill.saturating_sub(full_after).as_nanos();
        let remaining = u64::try_from(held / per_token).unwrap_or(u64::MAX);
        // This request needs `cost` tokens: at least as long as the cached wait.
        let needed = interval
            .checked_mul(u32::try_from(cost).unwrap_or(u32::MAX))
            .and_then(|need| full_after.checked_add(need))
            .map_or(Duration::MAX, |t| t.saturating_sub(fill));
        let available_after = (full_after + interval).saturating_sub(fill);
        Some(
            Decision::new(
                false,
                entry.capacity,
                remaining,
                needed.max(waited),
                full_after,
            )
            .with_available_after(if remaining == 0 {
                available_after
            } else {
                Duration::ZERO
            })
            .with_index(entry.index),
        )
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
        if decision.allowed || decision.retry_after.is_zero() {
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
        if until <= now {
            return;
        }
        let entry = Entry {
            cost,
            until,
            full_at,
            available_at,
            capacity: limit.capacity(),
            remaining: decision.remaining,
            index: decision.index,
            bucket: (limit.algorithm() == Algorithm::TokenBucket).then(|| {
                (
                    Duration::from_micros(limit.interval_us()),
                    Duration::from_micros(limit.window_us()),
                )
            }),
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
            shard.entries.retain(|_, e| e.until > now);
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
        let (cache, l) = (DenyCache::new(), limit());
        assert_eq!(cache.check("k", 1), None);
        // An empty bucket, full in 10 s: cost 1 waits 1 s.
        cache.insert("k", 1, &l, &denial(1_000), Instant::now());
        let d = cache.check("k", 1).unwrap();
        assert_eq!(d.retry_after, Duration::from_millis(1_000));
        assert_eq!(d.remaining, 0);
        tokio::time::advance(Duration::from_millis(400)).await;
        // A dearer request waits for its own tokens: 5 tokens, 5 s from the empty bucket.
        let d = cache.check("k", 5).unwrap();
        assert_eq!(d.retry_after, Duration::from_millis(4_600));
        assert_eq!(d.reset_after, Duration::from_millis(9_600));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(cache.check("k", 5), None);
        assert_eq!(cache.len.load(Ordering::Relaxed), 0);
        // A denial for cost 2 does not hold a cheaper request back.
        cache.insert("k", 2, &l, &denial(500), Instant::now());
        assert_eq!(cache.check("k", 1), None, "a cheaper request may pass");
        // The wait counts from when the store was asked, not from when it answered.
        let asked = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        cache.insert("j", 1, &l, &denial(1_000), asked);
        assert_eq!(
            cache.check("j", 1).unwrap().retry_after,
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
        assert_eq!(cache.check("z", 1), None);
    }
}
