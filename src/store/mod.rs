//! Where buckets live: the [`Store`] trait and its two implementations.
//!
//! - [`MemoryStore`] keeps buckets in this process: the default, for one instance and for tests.
//! - [`RedisStore`] keeps them in Redis, so every instance pointed at one Redis shares the
//!   limits. One Lua script call (`EVALSHA`) decides each request.
//!
//! Both implement the same four [algorithms](crate::algorithm) and agree decision for
//! decision.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Decision, Limit, StoreError};

mod any;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use any::{AnyDecision, AnyStore};
pub use memory::{DEFAULT_MAX_KEYS, MemoryStore};
#[cfg(feature = "redis")]
pub use redis::RedisStore;

/// The future of a store call other than a decision ([`Store::peek`], [`Store::refund`],
/// [`Store::reset`]): rarer than decisions, so boxed.
pub type StoreCall<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Keeps buckets and decides requests against them.
///
/// Implement it to keep buckets elsewhere; [`decide_all`](crate::decide_all),
/// [`Limit::peek`] and [`Limit::refund`] do the arithmetic on one
/// [`BucketState`](crate::BucketState) per bucket. A decision must be atomic: two concurrent
/// calls never both take the last unit of a bucket, and a request under several limits takes
/// from all of them or from none. The [`Limiter`](crate::Limiter) bounds every call by its
/// timeout and applies its fail mode when the call errs or times out, so an implementation
/// need not. Return [`StoreError::Unavailable`] when the store cannot be reached (the breaker
/// counts it, with timeouts and Redis connection errors), [`StoreError::Other`] when it
/// answered with an error.
pub trait Store: Send + Sync + 'static {
    /// The future of one decision. `Unpin` (a boxed future is), so that a decision whose
    /// request is cancelled can be left to finish on its own.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + Unpin + 'static;

    /// Decides whether a request of `cost` units may pass every limit in `limits` (1 to
    /// [`MAX_LIMITS`](crate::MAX_LIMITS)), and takes the units from each if it may.
    ///
    /// The bucket of each limit is [`bucket_key`]`(key, limit)`. A bucket that was never seen,
    /// or that has refilled, starts full. Other numbers of limits are an error
    /// ([`StoreError::Invalid`]) and write nothing.
    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> Self::Future;

    /// [`Store::decide`], reporting every limit: in the order of `limits`, each one's decision
    /// with its position as [`Decision::index`]. When the request passed, what each limit has
    /// left; when it was refused, what each said of it with nothing taken (`allowed` when that
    /// limit alone would have let it through). [`decide_each`](crate::decide_each) does this
    /// arithmetic on bucket states.
    ///
    /// The default reports the binding limit alone (what [`Store::decide`] returns), so a
    /// store that does not override it still works with
    /// [`Limiter::take`](crate::Limiter::take).
    fn decide_each(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        let decision = self.decide(key, limits, cost);
        Box::pin(async move { decision.await.map(|d| vec![d]) })
    }

    /// Whether a call costs a round trip to another process (the default), so that the
    /// limiter's deny cache, breaker and local fallback pay off. [`MemoryStore`] decides in
    /// process and says `false`.
    fn is_remote(&self) -> bool {
        true
    }

    /// The same number for this store and its clones, different from any other store's
    /// (an address), so that two limiters on one store cannot claim the same buckets without
    /// saying so ([`LimiterBuilder::share_buckets`](crate::LimiterBuilder::share_buckets)).
    /// `None` (the default) skips the check.
    fn identity(&self) -> Option<usize> {
        None
    }

    /// What a request of `cost` would get from each limit, in order, without writing
    /// anything ([`Limit::peek`] of each bucket).
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        let _ = (key, limits, cost);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("peek"))))
    }

    /// Gives `units` back to each limit's bucket, atomically ([`Limit::refund`] of each).
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn refund(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        let _ = (key, limits, units);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("refund"))))
    }

    /// Takes `units` from each limit's bucket whatever it holds, down to empty at most,
    /// atomically ([`Limit::charge`] of each): a cost settled above what was reserved.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        let _ = (key, limits, units);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("charge"))))
    }

    /// Frees one slot of each [concurrency](crate::Algorithm::Concurrency) limit among
    /// `limits` that a decision for `key` took ([`Limit::release`] of each): a request that
    /// held them is over. Other limits are left alone.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn release(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        let _ = (key, limits);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("release"))))
    }

    /// [`Store::decide_each`] for a [leased](Limit::leased) policy's hot key: decides a
    /// request of `cost` against every limit, and when it passes also takes up to `want` more
    /// units from each, all or nothing, for the caller to spend in process. At most half of
    /// what a limit holds once the request is taken is lent (nothing from a nearly empty
    /// bucket). The [`Lent`] says what each limit made of the request (as `decide_each`
    /// does), how many more units were taken, and when by the store's clock.
    ///
    /// The default lends nothing: it is [`Store::decide_each`], so a store that does not
    /// override it decides every request itself.
    fn lease(&self, key: &str, limits: &Arc<[Limit]>, cost: u64, want: u64) -> StoreCall<Lent> {
        let _ = want;
        let each = self.decide_each(key, limits, cost);
        Box::pin(async move {
            each.await.map(|decisions| Lent {
                decisions,
                units: 0,
                at_us: 0,
            })
        })
    }

    /// Gives back `units` that [`Store::lease`] lent at `at_us` (its [`Lent::at_us`]) and no
    /// request spent: a token bucket gets them back as a refund; a window only when it is
    /// the one that counted them (a later window never counted them, so giving them back
    /// there would let more through than the limit).
    ///
    /// The default does nothing (the default [`Store::lease`] lends nothing).
    fn give_back(&self, key: &str, limits: &Arc<[Limit]>, units: u64, at_us: u64) -> StoreCall<()> {
        let _ = (key, limits, units, at_us);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Forgets each limit's bucket: whole again.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        let _ = (key, limits);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("reset"))))
    }
}

/// What [`Store::lease`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lent {
    /// Each limit's decision of the request alone, as [`Store::decide_each`] reports it
    /// (what a limit has left counts the lent units as still there).
    pub decisions: Vec<Decision>,
    /// The units taken beyond the request's cost, for the caller to spend: 0 when the
    /// request was refused or nothing could be lent.
    pub units: u64,
    /// The store's clock when it lent them, in microseconds since the Unix epoch (the window
    /// they were counted in); 0 when nothing was lent.
    pub at_us: u64,
}

impl Lent {
    /// A lease of `units` beyond a request decided as `decisions`, at `at_us`.
    pub fn new(decisions: Vec<Decision>, units: u64, at_us: u64) -> Self {
        Self {
            decisions,
            units,
            at_us,
        }
    }
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
