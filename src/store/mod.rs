//! Where buckets live: the [`Store`] trait and its two implementations.
//!
//! - [`MemoryStore`] keeps buckets in this process: the default, for one instance and for tests.
//! - [`RedisStore`] keeps them in Redis, so every instance pointed at one Redis shares the
//!   limits. One Lua script call (`EVALSHA`) decides each request.
//!
//! Both implement the same four algorithms and agree decision for
//! decision.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Decision, Limit, StoreError};

mod any;
mod counter;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod stamp;

pub use crate::algorithm::BucketState;
pub use any::{AnyDecision, AnyStore};
pub(crate) use counter::CounterShard;
pub use counter::{Counter, CounterLease, CounterLent};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;
pub use stamp::{Stamp, Taken};

/// The future of a store call other than a decision ([`Store::peek`], [`Store::put_back`],
/// [`Store::reset`]): rarer than decisions, so boxed.
pub type StoreCall<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Keeps buckets and decides requests against them.
///
/// Implement it to keep buckets elsewhere; [`BucketState::decide_all`](crate::store::BucketState::decide_all),
/// [`Limit::peek`] and [`Limit::put_back`] do the arithmetic on one
/// [`BucketState`] per bucket. A decision must be atomic: two concurrent
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
    /// 8), and takes the units from each if it may.
    ///
    /// The bucket of each limit is [`limit.bucket_key(key)`](Limit::bucket_key). A bucket that was never seen,
    /// or that has refilled, starts full. Other numbers of limits are an error
    /// ([`StoreError::Invalid`]) and write nothing.
    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> Self::Future;

    /// [`Store::decide`], reporting every limit: in the order of `limits`, each one's decision
    /// with its position as [`Decision::index`]. When the request passed, what each limit has
    /// left; when it was refused, what each said of it with nothing taken (`allowed` when that
    /// limit alone would have let it through). [`decide_each`](crate::store::BucketState::decide_each) does this
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

    /// Takes `units` from each limit's bucket whatever it holds, down to empty at most,
    /// atomically ([`Limit::charge`] of each): a cost settled above what was reserved.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        let _ = (key, limits, units);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("charge"))))
    }

    /// [`Store::decide_each`], stamped: when the request passes, the [`Stamp`] says where and
    /// when its units (and slots) were taken, for [`Store::put_back`] to give them back there.
    ///
    /// The default is [`Store::decide_each`] with no stamp: nothing the store takes can then be
    /// put back (a reservation settled lower keeps what it took, a slot runs out on its own).
    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken> {
        let each = self.decide_each(key, limits, cost);
        Box::pin(async move { each.await.map(|decisions| Taken::new(decisions, None)) })
    }

    /// Puts back what the take stamped `stamp` counted in each limit's bucket, atomically:
    /// `units` of its cost (to the limits that count the cost, not
    /// [requests](Limit::per_request)), and its slot in each
    /// [concurrency](crate::Algorithm::Concurrency) limit when `free_slot`. Only what is still
    /// owed where it was counted comes back, so a put-back never lets through more than if
    /// the units had not been taken:
    /// - a token bucket: their worth less the refill since the take, the bucket at most full;
    /// - a fixed window: only to the window of the take, while it lasts;
    /// - a sliding window: to the window of the take, in its count or, once the next window
    ///   began, in the previous count; nothing after that;
    /// - a sliding log: the take's own entries (at most as many as it added);
    /// - a concurrency limit: the take's own slot.
    ///
    /// The same put-back serves a settlement, a refund, a lease given back and a slot freed
    /// ([`Limit::put_back`] of each bucket).
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> StoreCall<()> {
        let _ = (key, limits, stamp, units, free_slot);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("put_back"))))
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

    /// Forgets each limit's bucket: whole again.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        let _ = (key, limits);
        Box::pin(std::future::ready(Err(StoreError::Unsupported("reset"))))
    }

    /// Adds each counter's hits to the integer at its key (created at 0) and has it expire
    /// its `expire_s` later, and returns each value after, in order: envoyproxy/ratelimit's
    /// counters (`INCRBY` and `EXPIRE`), which the Envoy service counts with. Each counter on
    /// its own, as there: not all or nothing.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn count(&self, counters: &[Counter]) -> StoreCall<Vec<u64>> {
        let _ = counters;
        Box::pin(std::future::ready(Err(StoreError::Unsupported("count"))))
    }

    /// [`Store::count`] with leases, each counter on its own and atomically: adds each
    /// counter's hits, and when they fit within its limit, also up to its `extra` units that
    /// fit, which the caller may spend without asking ([`CounterLent::lent`]). A counter is
    /// never lent past its limit, so what the callers spend of it never passes it either.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn count_lending(&self, leases: &[CounterLease]) -> StoreCall<Vec<CounterLent>> {
        let _ = leases;
        Box::pin(std::future::ready(Err(StoreError::Unsupported(
            "count_lending",
        ))))
    }

    /// Takes each counter's hits off it, while it exists: lent units given back.
    ///
    /// The default answers [`StoreError::Unsupported`].
    fn uncount(&self, counters: &[Counter]) -> StoreCall<()> {
        let _ = counters;
        Box::pin(std::future::ready(Err(StoreError::Unsupported("uncount"))))
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
    /// The store's clock when it decided, in microseconds since the Unix epoch: the stamp of
    /// the request and of the lent units (they are given back with
    /// [`Store::put_back`] and `Stamp::new(at_us, units)`).
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

/// The bucket of `limit` for the requests named `key` ([`Limit::bucket_key`]).
pub(crate) fn bucket_key(key: &str, limit: &Limit) -> String {
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
