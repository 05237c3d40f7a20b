//! Where buckets live: the [`Store`] trait and its two implementations.
//!
//! - [`MemoryStore`] keeps buckets in this process: the default, for one instance and for tests.
//! - [`RedisStore`] keeps them in Redis, so every instance pointed at one Redis shares the
//!   limits. One Lua script call (`EVALSHA`) decides each request.
//!
//! Both implement the same token bucket (see [`Limit`]) and agree decision for decision.

use std::future::Future;

use crate::{Decision, Limit, StoreError};

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::{DEFAULT_MAX_KEYS, MemoryStore};
#[cfg(feature = "redis")]
pub use redis::{RedisDecision, RedisStore, TOKEN_BUCKET_LUA};

/// Keeps token buckets and decides requests against them.
///
/// Implement it to keep buckets elsewhere. A decision must be atomic: two concurrent calls on
/// one key never both take the last token. The layer bounds every call by its timeout and
/// applies its fail mode when the call errs or times out, so an implementation need not.
pub trait Store: Send + Sync + 'static {
    /// The future of one decision.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Decides whether a request of `cost` tokens may pass the bucket `key` under `limit`, and
    /// takes the tokens if it may.
    ///
    /// A key that was never seen, or whose bucket has refilled, starts full.
    fn decide(&self, key: String, limit: &Limit, cost: u64) -> Self::Future;
}
