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
