//! Where buckets live: the [`Store`] trait and its two implementations.
//!
//! - [`MemoryStore`] keeps buckets in this process: the default, for one instance and for tests.
//! - [`RedisStore`] keeps them in Redis, so every instance pointed at one Redis shares the
//!   limits. One Lua script call (`EVALSHA`) decides each request.
//!
//! Both implement the same four [algorithms](crate::algorithm) and agree decision for
//! decision.

use std::future::Future;
use std::sync::Arc;

use crate::{Decision, Limit, StoreError};

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::{DEFAULT_MAX_KEYS, MemoryStore};
#[cfg(feature = "redis")]
pub use redis::{MIXED_SCRIPT, RedisDecision, RedisStore, script_for, script_source};

/// Keeps buckets and decides requests against them.
///
/// Implement it to keep buckets elsewhere; [`decide_all`](crate::decide_all) does the
/// arithmetic on one [`BucketState`](crate::BucketState) per bucket. A decision must be atomic:
/// two concurrent calls never both take the last unit
/// of a bucket, and a request under several limits takes from all of them or from none. The
/// layer bounds every call by its timeout and applies its fail mode when the call errs or
/// times out, so an implementation need not.
pub trait Store: Send + Sync + 'static {
    /// The future of one decision.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Whether a decision costs a round trip, so that the layer's local deny cache pays off
    /// (the default). [`MemoryStore`] decides in process and says `false`.
    const REMOTE: bool = true;

    /// Decides whether a request of `cost` tokens may pass every limit in `limits` (at most
    /// [`MAX_LIMITS`](crate::MAX_LIMITS)), and takes the tokens from each if it may.
    ///
    /// The bucket of each limit is [`bucket_key`]`(key, limit)`. A bucket that was never seen,
    /// or that has refilled, starts full.
    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> Self::Future;
}

/// The bucket of `limit` for the requests named `key`: `key:name`, and for the algorithms
/// other than the token bucket a suffix that tells them apart (`:sl`, `:sw`, `:fw`), since
/// their Redis types differ.
pub fn bucket_key(key: &str, limit: &Limit) -> String {
    let mut bucket = String::with_capacity(key.len() + 4 + limit.name().len());
    push_bucket_key(&mut bucket, key, limit);
    bucket
}

pub(crate) fn push_bucket_key(out: &mut String, key: &str, limit: &Limit) {
    out.push_str(key);
    out.push(':');
    out.push_str(limit.name());
    out.push_str(limit.algorithm().key_suffix());
}
