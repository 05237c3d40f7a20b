//! The memory store's calls other than decisions: peek, put-back, charge and reset,
//! each under its shard's lock.

use super::MemoryStore;
use super::bucket::{matches, spread};
use crate::algorithm::{BucketState, check_limits};
#[cfg(doc)]
use crate::limit::MAX_LIMITS;
use crate::store::Stamp;
use crate::{Decision, Limit, StoreError};

impl MemoryStore {
    /// [`Store::peek`] without the future.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] when `limits` is empty or longer than 8.
    pub(crate) fn peek_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u64,
    ) -> Result<Vec<Decision>, StoreError> {
        check_limits(limits)?;
        let (shard, hash, now) = self.shard(key);
        let new = BucketState::default();
        Ok(limits
            .iter()
            .enumerate()
            .map(|(i, limit)| {
                let hash = hash(limit);
                let state = shard
                    .buckets
                    .find(spread(hash.hash), matches(limit, hash))
                    .map_or(&new, |b| &b.state);
                limit.peek(state, now, cost).with_index(i)
            })
            .collect())
    }

    /// [`Store::put_back`] without the future.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`], with nothing changed, when `limits` is empty or longer than
    /// 8.
    pub(crate) fn put_back_now(
        &self,
        key: &str,
        limits: &[Limit],
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> Result<(), StoreError> {
        check_limits(limits)?;
        let (mut shard, hash, now) = self.shard(key);
        for (i, limit) in limits.iter().enumerate() {
            let hash = hash(limit);
            let found = shard
                .buckets
                .find_entry(spread(hash.hash), matches(limit, hash));
            if let Ok(mut bucket) = found {
                let units = if limit.counts_requests() { 0 } else { units };
                let state = &mut bucket.get_mut().state;
                limit.put_back(state, now, stamp.mark(i), units, free_slot);
                if *state == BucketState::New {
                    bucket.remove();
                }
            }
        }
        Ok(())
    }

    /// [`Store::charge`] without the future.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`], with nothing changed, when `limits` is empty or longer than
    /// 8.
    pub(crate) fn charge_now(
        &self,
        key: &str,
        limits: &[Limit],
        units: u64,
    ) -> Result<(), StoreError> {
        check_limits(limits)?;
        if units == 0 {
            return Ok(());
        }
        let (mut shard, hash, now) = self.shard(key);
        for limit in limits {
            let hash = hash(limit);
            if let Some(bucket) = shard
                .buckets
                .find_mut(spread(hash.hash), matches(limit, hash))
            {
                limit.charge(&mut bucket.state, now, units);
            } else {
                let mut state = BucketState::default();
                limit.charge(&mut state, now, units);
                shard.insert(hash, limit, state, now, self.inner.shard_cap);
            }
        }
        Ok(())
    }

    /// [`Store::reset`] without the future.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`], with nothing changed, when `limits` is empty or longer than
    /// 8.
    pub(crate) fn reset_now(&self, key: &str, limits: &[Limit]) -> Result<(), StoreError> {
        check_limits(limits)?;
        let (mut shard, hash, _) = self.shard(key);
        for limit in limits {
            let hash = hash(limit);
            if let Ok(bucket) = shard
                .buckets
                .find_entry(spread(hash.hash), matches(limit, hash))
            {
                bucket.remove();
            }
        }
        Ok(())
    }

    /// [`Store::count`](crate::store::Store::count), without the future. Counters expire by
    /// the store's clock; the store holds at most about `max_keys` of them besides its
    /// buckets.
    pub(crate) fn count_now(&self, counters: &[crate::store::Counter]) -> Vec<u64> {
        let now_us = self.inner.clock.now_us();
        counters
            .iter()
            .map(|counter| {
                let (mut shard, _) = self.inner.counters.lock(&counter.key);
                shard.add(counter, now_us, self.inner.shard_cap)
            })
            .collect()
    }

    /// [`Store::count_lending`](crate::store::Store::count_lending), without the future.
    pub(crate) fn lend_now(
        &self,
        leases: &[crate::store::CounterLease],
    ) -> Vec<crate::store::CounterLent> {
        let now_us = self.inner.clock.now_us();
        leases
            .iter()
            .map(|lease| {
                let (mut shard, _) = self.inner.counters.lock(&lease.counter.key);
                shard.lend(lease, now_us, self.inner.shard_cap)
            })
            .collect()
    }

    /// [`Store::uncount`](crate::store::Store::uncount), without the future.
    pub(crate) fn uncount_now(&self, counters: &[crate::store::Counter]) {
        let now_us = self.inner.clock.now_us();
        for counter in counters {
            let (mut shard, _) = self.inner.counters.lock(&counter.key);
            shard.take_off(counter, now_us);
        }
    }

    /// How many plain counters are held.
    #[cfg(test)]
    pub(crate) fn counters(&self) -> usize {
        self.inner.counters.each().map(|s| s.len()).sum()
    }
}
