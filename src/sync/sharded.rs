//! [`Sharded`]: state split over locks by the hash of a key.

use std::hash::BuildHasher;

use parking_lot::{Mutex, MutexGuard};

/// `T`s, each behind its own lock on cache lines of its own, chosen by a key's hash, so
/// concurrent callers on different keys rarely contend. What a shard holds is the user's: the
/// memory store keeps buckets, the deny cache denials.
pub(crate) struct Sharded<T> {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Padded<Mutex<T>>]>,
}

/// A shard on cache lines of its own, so threads locking different shards do not contend.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

impl<T: Default> Sharded<T> {
    /// `shards` empty shards.
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..shards.max(1)).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> Sharded<T> {
    /// The shard of `key`, locked, and the key's hash (for a table inside the shard).
    pub(crate) fn lock(&self, key: &str) -> (MutexGuard<'_, T>, u64) {
        let hash = self.hasher.hash_one(key);
        // The top 32 bits pick the shard (a multiply, not a division), so the bits a table
        // inside uses do not depend on the shard.
        let index = (((hash >> 32) * self.shards.len() as u64) >> 32) as usize;
        (self.shards[index].0.lock(), hash)
    }

    /// Every shard, one at a time.
    pub(crate) fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.shards.iter().map(|s| s.0.lock())
    }
}

impl<T> std::fmt::Debug for Sharded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}
