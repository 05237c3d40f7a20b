//! [`AnyStore`]: a store chosen at run time.

use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{Lent, MemoryStore, Stamp, Store, StoreCall, Taken};
use crate::{Decision, Limit, StoreError};

/// A store chosen at run time: in memory, in Redis (one server, a cluster or behind
/// Sentinel), or any other [`Store`], behind one type.
///
/// ```no_run
/// use tollgate::{MemoryStore, TollgateLayer, store::AnyStore};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[cfg(feature = "redis")]
/// let store = match std::env::var("REDIS_URL") {
///     Ok(url) => AnyStore::from(tollgate::RedisStore::open(&url)?),
///     Err(_) => AnyStore::from(MemoryStore::new()),
/// };
/// # #[cfg(not(feature = "redis"))]
/// # let store = AnyStore::from(MemoryStore::new());
/// let layer = TollgateLayer::builder()
///     .store(store)
///     .capacity(10)
///     .period(std::time::Duration::from_secs(10))
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// Whether it is [remote](Store::is_remote) is the chosen store's answer: a memory store
/// behind it gets no deny cache, breaker or local fallback, as it would alone. A decision of
/// the memory store is not boxed; the others' are.
#[derive(Clone)]
pub struct AnyStore {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Memory(MemoryStore),
    Other(Arc<dyn DynStore>),
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Memory(store) => f.debug_tuple("AnyStore").field(store).finish(),
            Inner::Other(store) => f
                .debug_tuple("AnyStore")
                .field(&format_args!("{}", store.name()))
                .finish(),
        }
    }
}

impl AnyStore {
    /// Any store, behind one type. (A [`MemoryStore`] is better given with `From`, which
    /// keeps its decisions unboxed.)
    pub fn new<S: Store>(store: S) -> Self {
        Self {
            inner: Inner::Other(Arc::new(store)),
        }
    }
}

impl From<MemoryStore> for AnyStore {
    fn from(store: MemoryStore) -> Self {
        Self {
            inner: Inner::Memory(store),
        }
    }
}

#[cfg(feature = "redis")]
impl From<super::RedisStore> for AnyStore {
    fn from(store: super::RedisStore) -> Self {
        Self::new(store)
    }
}

/// [`Store`] with its decision boxed: what [`AnyStore`] keeps of a store.
trait DynStore: Send + Sync + 'static {
    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Decision>;
    fn decide_each(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>>;
    fn is_remote(&self) -> bool;
    fn identity(&self) -> Option<usize>;
    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>>;
    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken>;
    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free: bool,
    ) -> StoreCall<()>;
    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()>;
    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()>;
    fn lease(&self, key: &str, limits: &Arc<[Limit]>, cost: u64, want: u64) -> StoreCall<Lent>;
    fn count(&self, counters: &[super::Counter]) -> StoreCall<Vec<u64>>;
    fn count_lending(&self, leases: &[super::CounterLease]) -> StoreCall<Vec<super::CounterLent>>;
    fn uncount(&self, counters: &[super::Counter]) -> StoreCall<()>;
    fn name(&self) -> &'static str;
}

impl<S: Store> DynStore for S {
    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Decision> {
        Box::pin(Store::decide(self, key, limits, cost))
    }
    fn decide_each(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        Store::decide_each(self, key, limits, cost)
    }
    fn is_remote(&self) -> bool {
        Store::is_remote(self)
    }
    fn identity(&self) -> Option<usize> {
        Store::identity(self)
    }
    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        Store::peek(self, key, limits, cost)
    }
    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken> {
        Store::take(self, key, limits, cost)
    }
    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free: bool,
    ) -> StoreCall<()> {
        Store::put_back(self, key, limits, stamp, units, free)
    }
    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        Store::charge(self, key, limits, units)
    }
    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        Store::reset(self, key, limits)
    }
    fn lease(&self, key: &str, limits: &Arc<[Limit]>, cost: u64, want: u64) -> StoreCall<Lent> {
        Store::lease(self, key, limits, cost, want)
    }
    fn count(&self, counters: &[super::Counter]) -> StoreCall<Vec<u64>> {
        Store::count(self, counters)
    }
    fn count_lending(&self, leases: &[super::CounterLease]) -> StoreCall<Vec<super::CounterLent>> {
        Store::count_lending(self, leases)
    }
    fn uncount(&self, counters: &[super::Counter]) -> StoreCall<()> {
        Store::uncount(self, counters)
    }
    fn name(&self) -> &'static str {
        std::any::type_name::<S>()
    }
}

/// The future of an [`AnyStore`] decision: ready at once (memory), or boxed.
#[must_use = "futures do nothing unless polled"]
pub struct AnyDecision(DecisionInner);

enum DecisionInner {
    Ready(Ready<Result<Decision, StoreError>>),
    Boxed(StoreCall<Decision>),
}

impl std::fmt::Debug for AnyDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyDecision").finish_non_exhaustive()
    }
}

impl Future for AnyDecision {
    type Output = Result<Decision, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            DecisionInner::Ready(ready) => Pin::new(ready).poll(cx),
            DecisionInner::Boxed(boxed) => boxed.as_mut().poll(cx),
        }
    }
}

impl Store for AnyStore {
    type Future = AnyDecision;

    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> AnyDecision {
        AnyDecision(match &self.inner {
            Inner::Memory(store) => DecisionInner::Ready(Store::decide(store, key, limits, cost)),
            Inner::Other(store) => DecisionInner::Boxed(store.decide(key, limits, cost)),
        })
    }

    fn decide_each(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        match &self.inner {
            Inner::Memory(store) => Store::decide_each(store, key, limits, cost),
            Inner::Other(store) => store.decide_each(key, limits, cost),
        }
    }

    fn is_remote(&self) -> bool {
        match &self.inner {
            Inner::Memory(store) => Store::is_remote(store),
            Inner::Other(store) => store.is_remote(),
        }
    }

    fn identity(&self) -> Option<usize> {
        match &self.inner {
            Inner::Memory(store) => Store::identity(store),
            Inner::Other(store) => store.identity(),
        }
    }

    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        match &self.inner {
            Inner::Memory(store) => Store::peek(store, key, limits, cost),
            Inner::Other(store) => store.peek(key, limits, cost),
        }
    }

    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken> {
        match &self.inner {
            Inner::Memory(store) => Store::take(store, key, limits, cost),
            Inner::Other(store) => store.take(key, limits, cost),
        }
    }

    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> StoreCall<()> {
        match &self.inner {
            Inner::Memory(store) => Store::put_back(store, key, limits, stamp, units, free_slot),
            Inner::Other(store) => store.put_back(key, limits, stamp, units, free_slot),
        }
    }

    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        match &self.inner {
            Inner::Memory(store) => Store::charge(store, key, limits, units),
            Inner::Other(store) => store.charge(key, limits, units),
        }
    }

    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        match &self.inner {
            Inner::Memory(store) => Store::reset(store, key, limits),
            Inner::Other(store) => store.reset(key, limits),
        }
    }

    fn count(&self, counters: &[super::Counter]) -> StoreCall<Vec<u64>> {
        match &self.inner {
            Inner::Memory(store) => Store::count(store, counters),
            Inner::Other(store) => store.count(counters),
        }
    }

    fn count_lending(&self, leases: &[super::CounterLease]) -> StoreCall<Vec<super::CounterLent>> {
        match &self.inner {
            Inner::Memory(store) => Store::count_lending(store, leases),
            Inner::Other(store) => store.count_lending(leases),
        }
    }

    fn uncount(&self, counters: &[super::Counter]) -> StoreCall<()> {
        match &self.inner {
            Inner::Memory(store) => Store::uncount(store, counters),
            Inner::Other(store) => store.uncount(counters),
        }
    }

    fn lease(&self, key: &str, limits: &Arc<[Limit]>, cost: u64, want: u64) -> StoreCall<Lent> {
        match &self.inner {
            Inner::Memory(store) => Store::lease(store, key, limits, cost, want),
            Inner::Other(store) => store.lease(key, limits, cost, want),
        }
    }
}
