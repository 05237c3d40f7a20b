use std::future::{Ready, ready};
use std::sync::Arc;

use parking_lot::MutexGuard;

use hashbrown::HashTable;
use tokio::time::Instant;

use crate::algorithm::BucketState;
use crate::algorithm::check_limits;
use crate::algorithm::take_each;
use crate::algorithm::{decide_all, decide_each};
use crate::limit::MAX_LIMITS;
use crate::sync::Sharded;
use crate::{Decision, Limit, StoreError};

use super::{Stamp, Store, StoreCall, Taken};

mod bucket;
mod calls;
mod clock;

use bucket::{Bucket, Id, matches, spread};
use clock::Clock;

/// Shards of the key space, each behind its own lock, so concurrent decisions on different
/// keys rarely contend.
const SHARDS: usize = 64;

/// A shard is swept of idle buckets when it has grown by this many keys since the last sweep
/// (or has doubled, whichever is larger), so sweeping costs O(1) per insertion on average.
const MIN_SWEEP_GROWTH: usize = 64;

/// The default most buckets a store holds.
pub(crate) const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Buckets in this process's memory.
///
/// The same algorithms as [`RedisStore`](crate::RedisStore), decision for decision (both run
/// [`BucketState::decide_all`](crate::store::BucketState::decide_all)). Time is the Unix time at which the store was made plus a monotonic clock
/// since, so the windows of [`FixedWindow`](crate::Algorithm::FixedWindow) and
/// [`SlidingWindow`](crate::Algorithm::SlidingWindow) limits start where Redis's do. Limits are
/// per process: two instances each admit the full limit.
///
/// A bucket is one 64-byte slot of its shard's table, found by a 128-bit fingerprint of its key
/// and limit name (seeded at random per store); the key itself is not kept. Two keys would
/// share a bucket only if their fingerprints collided (about once in 2^128 pairs), and a shared
/// bucket can only refuse early, never admit more than its limit.
///
/// Memory stays bounded: an idle bucket (refilled, its windows over, its entries gone) is the
/// same as no bucket, so each shard drops its idle buckets once it has grown enough since it
/// last did; and the store never holds more than [`max_keys`](MemoryStore::with_max_keys)
/// buckets (a million by default). Past that, the buckets holding back the fewest units are
/// forgotten first, which gives those clients back the few units they had used. A
/// [sliding log](crate::Algorithm::SlidingLog) bucket holds up to its capacity in entries of 8
/// bytes. Cloning is cheap and shares the buckets.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Clock,
    /// The most buckets one shard holds (and the most counters).
    shard_cap: usize,
    shards: Sharded<Shard>,
    /// The second hash of a key's fingerprint (the first is its shard's), seeded apart.
    fingerprints: foldhash::quality::RandomState,
    /// Plain counters ([`Store::count`]).
    counters: Sharded<super::CounterShard>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shard_cap", &self.shard_cap)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shard {
    buckets: HashTable<Bucket>,
    /// Size after the last sweep.
    swept_len: usize,
    /// The latest time a call on this shard decided at.
    latest: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store holding at most 1,000,000 buckets.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// An empty store holding at most about `max_keys` buckets (rounded up to a multiple of
    /// the shard count, 64).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Clock::fast())
    }

    /// Like [`MemoryStore::with_max_keys`], timed by [`tokio::time::Instant`], so tests can
    /// pause and advance time. (The default clock is a cheaper one that tokio cannot pause.)
    pub fn with_tokio_clock(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Clock::Tokio(Instant::now()))
    }

    fn with_clock(max_keys: usize, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                shard_cap: max_keys.div_ceil(SHARDS).max(1),
                shards: Sharded::new(SHARDS),
                fingerprints: foldhash::quality::RandomState::default(),
                counters: Sharded::new(SHARDS),
            }),
        }
    }

    /// How many buckets are held (full buckets not yet swept included).
    pub fn len(&self) -> usize {
        self.inner.shards.each().map(|s| s.buckets.len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides without the future; the same as [`Store::decide`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`], with nothing written, when `limits` is empty or longer than
    /// 8.
    pub fn decide_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u64,
    ) -> Result<Decision, StoreError> {
        check_limits(limits)?;
        let [limit] = limits else {
            // Several limits: all or nothing, under the shard's lock.
            return self.decide_many(key, limits, cost, decide_all, |d| d.allowed);
        };
        // One limit: find the bucket once and update it in place.
        let (mut shard, hash, now) = self.shard(key);
        let hash = hash(limit);
        if let Some(bucket) = shard
            .buckets
            .find_mut(spread(hash.hash), matches(limit, hash))
        {
            bucket.touched = true;
            return Ok(limit.decide(&mut bucket.state, now, cost));
        }
        let mut state = BucketState::default();
        let decision = limit.decide(&mut state, now, cost);
        if decision.allowed {
            shard.insert(hash, limit, state, now, self.inner.shard_cap);
        }
        Ok(decision)
    }

    /// [`Store::decide_each`] without the future: [`MemoryStore::decide_now`], reporting every
    /// limit.
    ///
    /// # Errors
    ///
    /// As [`MemoryStore::decide_now`].
    pub(crate) fn decide_each_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u64,
    ) -> Result<Vec<Decision>, StoreError> {
        check_limits(limits)?;
        self.decide_many(key, limits, cost, decide_each, |each| {
            crate::algorithm::passed(each)
        })
    }

    /// [`Store::take`] without the future: [`MemoryStore::decide_each_now`], stamped.
    ///
    /// # Errors
    ///
    /// As [`MemoryStore::decide_now`].
    pub(crate) fn take_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u64,
    ) -> Result<Taken, StoreError> {
        check_limits(limits)?;
        self.decide_many(key, limits, cost, take_each, |taken| taken.stamp.is_some())
    }

    /// Decides with `decide` over the buckets of `limits` for `key`, copied out of their shard
    /// and written back under its lock; a bucket not held yet is inserted only when the units
    /// were taken (`took`).
    fn decide_many<R>(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u64,
        decide: DecideFn<R>,
        took: fn(&R) -> bool,
    ) -> Result<R, StoreError> {
        let (mut shard, hash, now) = self.shard(key);
        let mut hashes = [Id::default(); MAX_LIMITS];
        let mut states: [BucketState; MAX_LIMITS] = Default::default();
        let states = &mut states[..limits.len()];
        for ((limit, hash_slot), state) in limits.iter().zip(&mut hashes).zip(states.iter_mut()) {
            *hash_slot = hash(limit);
            let found = shard
                .buckets
                .find_mut(spread(hash_slot.hash), matches(limit, *hash_slot));
            if let Some(bucket) = found {
                *state = std::mem::take(&mut bucket.state);
            }
        }
        let decided = decide(limits, states, now, cost)?;
        let took = took(&decided);
        for ((limit, &hash), state) in limits.iter().zip(&hashes).zip(states.iter_mut()) {
            match shard
                .buckets
                .find_mut(spread(hash.hash), matches(limit, hash))
            {
                Some(bucket) => {
                    bucket.touched = true;
                    bucket.state = std::mem::take(state);
                }
                None if took => {
                    let state = std::mem::take(state);
                    shard.insert(hash, limit, state, now, self.inner.shard_cap);
                }
                None => {}
            }
        }
        Ok(decided)
    }

    /// The shard of `key`'s buckets, locked, and the hash of each of its limits' buckets.
    ///
    /// With the time of the call, never before the last time the shard decided at: a call
    /// that read the clock and then waited for the lock would otherwise apply an earlier
    /// time after a later one, which a window takes for a clock stepping back (it moves its
    /// count back to the earlier window, and the next call at the later time starts that
    /// window afresh, forgetting what it counted). The clock is read before the lock: read
    /// under it, it cost a single key's decision 10 ns (`benches/memory.rs`).
    fn shard(&self, key: &str) -> (MutexGuard<'_, Shard>, impl Fn(&Limit) -> Id + use<>, u64) {
        let now = self.inner.clock.now_us();
        let second = std::hash::BuildHasher::hash_one(&self.inner.fingerprints, key);
        // All the buckets of one key live in one shard.
        let (mut shard, first) = self.inner.shards.lock(key);
        let now = now.max(shard.latest);
        shard.latest = now;
        // One bucket per limit: the key's hashes mixed with a fixed hash of the limit's name.
        let id = move |limit: &Limit| Id::new(first, second, limit);
        (shard, id, now)
    }
}

/// [`decide_all`] or [`decide_each`].
type DecideFn<R> = fn(&[Limit], &mut [BucketState], u64, u64) -> Result<R, StoreError>;

impl Shard {
    fn insert(&mut self, id: Id, limit: &Limit, state: BucketState, now: u64, cap: usize) {
        self.make_room(now, cap);
        let shape = limit.shape();
        let bucket = Bucket {
            fingerprint: id.fingerprint,
            name_len: u8::try_from(limit.name().len()).expect("limit names are at most 64 bytes"),
            algorithm: shape.algorithm,
            touched: true,
            hash: id.hash,
            unit_us: shape.unit_us,
            state,
        };
        self.buckets
            .insert_unique(spread(id.hash), bucket, Bucket::table_hash);
        let len = self.buckets.len();
        if len >= self.swept_len + self.swept_len.max(MIN_SWEEP_GROWTH) {
            self.sweep(now, false);
        }
    }

    /// Drops the idle buckets and gives back memory a past peak left behind. Unless `all`
    /// (the shard is full), an idle bucket decided on since the last sweep gets one more round.
    fn sweep(&mut self, now: u64, all: bool) {
        self.buckets.retain(|b| {
            let keep = (b.touched && !all) || !b.idle(now);
            b.touched = false;
            keep
        });
        self.swept_len = self.buckets.len();
        if self.buckets.capacity() > 4 * self.buckets.len().max(MIN_SWEEP_GROWTH) {
            self.buckets
                .shrink_to(2 * self.buckets.len(), Bucket::table_hash);
        }
    }

    /// Before an insertion into a shard at its cap: drop the idle buckets, then, if that was not
    /// enough, the eighth of the buckets holding back the fewest units (on ties, any of them).
    fn make_room(&mut self, now: u64, cap: usize) {
        if self.buckets.len() < cap {
            return;
        }
        self.sweep(now, true);
        if self.buckets.len() < cap {
            return;
        }
        let mut used: Vec<u64> = self.buckets.iter().map(|b| b.used(now)).collect();
        let eighth = (used.len() / 8).max(1);
        let (below, &mut threshold, _) = used.select_nth_unstable(eighth - 1);
        // Every bucket below the eighth's threshold, then as many at it as make up the eighth.
        let mut ties = eighth - below.iter().filter(|&&u| u < threshold).count();
        self.buckets.retain(|b| match b.used(now).cmp(&threshold) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal if ties > 0 => {
                ties -= 1;
                false
            }
            _ => true,
        });
        self.swept_len = self.buckets.len();
    }
}

impl Store for MemoryStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> Self::Future {
        ready(self.decide_now(key, limits, cost))
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn identity(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.inner) as usize)
    }

    fn decide_each(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        Box::pin(ready(self.decide_each_now(key, limits, cost)))
    }

    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        Box::pin(ready(self.peek_now(key, limits, cost)))
    }

    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        Box::pin(ready(self.charge_now(key, limits, units)))
    }

    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken> {
        Box::pin(ready(self.take_now(key, limits, cost)))
    }

    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> StoreCall<()> {
        Box::pin(ready(
            self.put_back_now(key, limits, stamp, units, free_slot),
        ))
    }

    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        Box::pin(ready(self.reset_now(key, limits)))
    }

    fn count(&self, counters: &[super::Counter]) -> StoreCall<Vec<u64>> {
        Box::pin(ready(Ok(self.count_now(counters))))
    }

    fn count_lending(&self, leases: &[super::CounterLease]) -> StoreCall<Vec<super::CounterLent>> {
        Box::pin(ready(Ok(self.lend_now(leases))))
    }

    fn uncount(&self, counters: &[super::Counter]) -> StoreCall<()> {
        self.uncount_now(counters);
        Box::pin(ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit() -> [Limit; 1] {
        [Limit::new("default", 10, 10, Duration::from_secs(10)).unwrap()]
    }

    /// Buckets are told apart by key and limit name, however their texts run together, and
    /// by algorithm.
    #[test]
    fn every_key_and_limit_has_its_own_bucket() {
        let store = MemoryStore::new();
        let one = |name: &str| [Limit::fixed_window(name, 1, Duration::from_secs(60)).unwrap()];
        assert!(store.decide_now("ab", &one("c"), 1).unwrap().allowed);
        assert!(!store.decide_now("ab", &one("c"), 1).unwrap().allowed);
        // "a" + "bc" is the same text as "ab" + "c": another bucket all the same.
        assert!(store.decide_now("a", &one("bc"), 1).unwrap().allowed);
        assert!(store.decide_now("ab", &one("d"), 1).unwrap().allowed);
        assert!(store.decide_now("abc", &one("c"), 1).unwrap().allowed);
        let sliding = [Limit::sliding_window("c", 1, Duration::from_secs(60)).unwrap()];
        assert!(store.decide_now("ab", &sliding, 1).unwrap().allowed);
        // Many keys, each its own.
        for i in 0..10_000 {
            assert!(
                store
                    .decide_now(&format!("k{i}"), &one("c"), 1)
                    .unwrap()
                    .allowed,
                "k{i}"
            );
        }
        for i in 0..10_000 {
            assert!(
                !store
                    .decide_now(&format!("k{i}"), &one("c"), 1)
                    .unwrap()
                    .allowed,
                "k{i}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drains_then_refills_one_token_per_interval() {
        let store = MemoryStore::with_tokio_clock(DEFAULT_MAX_KEYS);
        let l = limit();
        for expected in (0..10).rev() {
            let d = store.decide_now("k", &l, 1).unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, expected);
        }
        let d = store.decide_now("k", &l, 1).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset_after, Duration::from_secs(10));

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!store.decide_now("k", &l, 1).unwrap().allowed);
        tokio::time::advance(Duration::from_millis(1)).await;
        let d = store.decide_now("k", &l, 1).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(store.decide_now("k", &l, 1).unwrap().remaining, 9);
        // Other keys have their own buckets.
        assert_eq!(store.decide_now("other", &l, 1).unwrap().remaining, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_evicted() {
        let store = MemoryStore::with_tokio_clock(DEFAULT_MAX_KEYS);
        let l = limit();
        for i in 0..10_000 {
            store.decide_now(&format!("k{i}"), &l, 1).unwrap();
        }
        assert_eq!(store.len(), 10_000);
        // After every bucket has refilled, new keys push the old ones out.
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..10_000 {
            store.decide_now(&format!("n{i}"), &l, 1).unwrap();
        }
        assert!(store.len() < 13_000, "{} buckets held", store.len());
    }

    #[tokio::test(start_paused = true)]
    async fn never_holds_more_than_max_keys_and_forgets_the_fullest_first() {
        let store = MemoryStore::with_tokio_clock(6_400);
        let l = limit();
        // One key drained: it must survive the flood of keys that took one token each.
        for _ in 0..10 {
            store.decide_now("drained", &l, 1).unwrap();
        }
        for i in 0..50_000 {
            tokio::time::advance(Duration::from_micros(10)).await;
            store.decide_now(&format!("k{i}"), &l, 1).unwrap();
            assert!(store.len() <= 6_400);
        }
        assert!(!store.decide_now("drained", &l, 1).unwrap().allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_forgets_an_eighth_not_every_tie() {
        // 64 shards of 16, and every bucket holds back one unit: all ties. When a shard is
        // full, one more forgets two of its sixteen (an eighth), not all of them, so the store
        // stays nearly full.
        let store = MemoryStore::with_tokio_clock(64 * 16);
        let l = limit();
        for i in 0..10_000 {
            store.decide_now(&format!("k{i}"), &l, 1).unwrap();
        }
        assert!(store.len() <= 64 * 16);
        assert!(store.len() >= 64 * 14, "{} buckets held", store.len());
    }
}
