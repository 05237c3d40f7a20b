//! The state of one bucket, as a store keeps it.

use std::collections::VecDeque;

use super::{Algorithm, concurrency, sliding_log, token_bucket, window};
use crate::Limit;

/// The state of one bucket, for a [`Store`](crate::store::Store) that keeps buckets itself and
/// decides with [`BucketState::decide_all`](crate::store::BucketState::decide_all) (as [`MemoryStore`](crate::MemoryStore) does); the same as
/// what the Lua scripts keep in Redis, so a store can save and load it.
///
/// A new state ([`Default`]) is a bucket never used: whole. A state is only meaningful with
/// the limit it was used with; given to another algorithm it counts as new. Times are
/// microseconds on the clock the decisions use (since the Unix epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BucketState {
    /// Never used: whole.
    #[default]
    New,
    /// A token bucket: full again at this time. (Redis: the key's integer value.)
    FullAt(u64),
    /// A fixed or sliding window: the window's index (its start divided by its length), the
    /// units counted in it and, for the sliding window, in the one before. (Redis: a hash
    /// `{i, c, p}`.)
    Window {
        /// The window's index.
        index: u64,
        /// Units counted in it.
        current: u64,
        /// Units counted in the window before (sliding window only).
        previous: u64,
    },
    /// A sliding log: the time each unit in it was taken, oldest first. (Redis: a sorted set
    /// scored by these times.)
    Log(Box<VecDeque<u64>>),
    /// A concurrency limit: the slots held. (Redis: a sorted set of slots scored by the end of
    /// their lease.)
    InFlight(u64),
}

/// What a bucket's state means without the rest of its limit: the algorithm and its time unit
/// (a token bucket's interval, or the window), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) algorithm: Algorithm,
    pub(crate) unit_us: u64,
}

impl Shape {
    pub(super) fn window_ms(self) -> u64 {
        (self.unit_us / 1000).max(1)
    }
}

impl BucketState {
    /// Whether the bucket is as good as new at `now` (full, its windows over, its entries
    /// gone): a store may forget it.
    pub fn is_idle(&self, limit: &Limit, now: u64) -> bool {
        self.idle(limit.shape(), now)
    }

    /// The units the bucket holds back at `now` (rounded up): what a client would get back if
    /// the store forgot it.
    pub fn used(&self, limit: &Limit, now: u64) -> u64 {
        self.used_by(limit.shape(), now)
    }

    pub(crate) fn idle(&self, shape: Shape, now: u64) -> bool {
        match shape.algorithm {
            Algorithm::TokenBucket => token_bucket::is_idle(self, now),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => window::is_idle(shape, self, now),
            Algorithm::SlidingLog => sliding_log::is_idle(shape, self, now),
            Algorithm::Concurrency => concurrency::is_idle(self),
        }
    }

    pub(crate) fn used_by(&self, shape: Shape, now: u64) -> u64 {
        match shape.algorithm {
            Algorithm::TokenBucket => token_bucket::used(shape, self, now),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => window::used(shape, self, now),
            Algorithm::SlidingLog => sliding_log::used(shape, self, now),
            Algorithm::Concurrency => concurrency::used(self),
        }
    }
}
