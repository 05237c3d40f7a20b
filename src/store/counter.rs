//! [`Counter`]: a plain counter, as envoyproxy/ratelimit keeps them, for [`Store::count`](super::Store::count).

/// One plain counter to add to: an integer at `key` that expires `expire_s` seconds after
/// its last addition (envoyproxy/ratelimit's `INCRBY` and `EXPIRE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// Its key.
    pub key: String,
    /// What to add: 0 reads it (and creates it at 0, as `INCRBY key 0` does).
    pub hits: u64,
    /// Seconds from this addition until it expires.
    pub expire_s: u64,
}

/// A counter to add to with a lease ([`Store::count_lending`](super::Store::count_lending)):
/// its hits are always added, as [`Counter`]'s are; when they fit within `limit`, up to
/// `extra` more units that fit are added too and lent to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterLease {
    /// The counter and the hits of the request.
    pub counter: Counter,
    /// The most the counter may reach by lending.
    pub limit: u64,
    /// The most units to lend beyond the hits.
    pub extra: u64,
}

/// What [`Store::count_lending`](super::Store::count_lending) did to one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterLent {
    /// The counter after: the hits and the units lent added.
    pub value: u64,
    /// The units lent (0 when the hits did not fit).
    pub lent: u64,
}

/// The memory store's counters: each shard's by key, with when they expire.
#[derive(Debug, Default)]
pub(crate) struct CounterShard {
    counts: hashbrown::HashMap<Box<str>, (u64, u64), foldhash::fast::RandomState>,
    /// Size after the last sweep.
    swept_len: usize,
}

impl CounterShard {
    /// Adds `counter`'s hits at `now_us` and returns the value after; a counter past its
    /// expiry starts again from 0. At most `cap` counters are held: past that the expired
    /// ones are dropped, then the one that expires soonest (it held back the least time).
    pub(crate) fn add(&mut self, counter: &Counter, now_us: u64, cap: usize) -> u64 {
        let expires = now_us.saturating_add(counter.expire_s.saturating_mul(1_000_000));
        if let Some((value, until)) = self.counts.get_mut(counter.key.as_str()) {
            if *until <= now_us {
                *value = 0;
            }
            *value = value.saturating_add(counter.hits);
            *until = expires;
            return *value;
        }
        if self.counts.len() >= self.swept_len.max(16) * 2 || self.counts.len() >= cap {
            self.counts.retain(|_, (_, until)| *until > now_us);
            self.swept_len = self.counts.len();
        }
        if self.counts.len() >= cap {
            let soonest = self
                .counts
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(key, _)| key.clone());
            if let Some(key) = soonest {
                self.counts.remove(&key);
            }
        }
        self.counts
            .insert(counter.key.as_str().into(), (counter.hits, expires));
        counter.hits
    }

    /// [`add`](Self::add) with a lease: `lease`'s hits, and what fits of its extra units.
    pub(crate) fn lend(&mut self, lease: &CounterLease, now_us: u64, cap: usize) -> CounterLent {
        let current = self.get(&lease.counter.key, now_us);
        let hits = lease.counter.hits;
        let lent = match current.saturating_add(hits) <= lease.limit {
            true => lease.extra.min(lease.limit - current - hits),
            false => 0,
        };
        let counter = Counter {
            hits: hits.saturating_add(lent),
            ..lease.counter.clone()
        };
        CounterLent {
            value: self.add(&counter, now_us, cap),
            lent,
        }
    }

    /// Takes `counter`'s hits off it while it lives: units a lease gives back.
    pub(crate) fn take_off(&mut self, counter: &Counter, now_us: u64) {
        if let Some((value, until)) = self.counts.get_mut(counter.key.as_str())
            && *until > now_us
        {
            *value = value.saturating_sub(counter.hits);
        }
    }

    /// The value of `key` at `now_us`: 0 when there is none.
    fn get(&self, key: &str, now_us: u64) -> u64 {
        self.counts
            .get(key)
            .filter(|(_, until)| *until > now_us)
            .map_or(0, |(value, _)| *value)
    }

    /// How many counters are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Counter;
    use crate::store::{MemoryStore, Store};

    fn counter(key: &str, hits: u64, expire_s: u64) -> Counter {
        Counter {
            key: key.to_owned(),
            hits,
            expire_s,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_counters_add_expire_and_stay_bounded() {
        let store = MemoryStore::with_tokio_clock(64);
        let counts = |c: &[Counter]| store.count(c);
        assert_eq!(counts(&[counter("a", 3, 60)]).await.unwrap(), [3]);
        // Each on its own, in order; the same key twice sees both additions; 0 reads.
        let both = [
            counter("a", 2, 60),
            counter("b", 1, 60),
            counter("a", 0, 60),
        ];
        assert_eq!(counts(&both).await.unwrap(), [5, 1, 5]);
        // Expired 60 s after the last addition: from 0 again.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(counts(&[counter("a", 1, 60)]).await.unwrap(), [6]);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(counts(&[counter("a", 1, 60)]).await.unwrap(), [1]);
        // At most about max_keys counters (one per shard here): the soonest to expire go.
        for i in 0..1_000 {
            counts(&[counter(&format!("k{i}"), 1, 10 + i)])
                .await
                .unwrap();
        }
        assert!(store.counters() <= 64, "{}", store.counters());
    }
}
