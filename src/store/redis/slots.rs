//! The concurrency slots this instance holds in Redis: named when a decision takes them,
//! renewed while their requests run, and freed when they end.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::RedisStore;
use super::connection::Link;
use super::scripts::{self, Other};
use crate::store::{Stamp, StoreCall, Taken, bucket_key};
use crate::{Algorithm, Limit};

/// The slots held, by bucket.
pub(super) struct Slots {
    /// Names this instance's slots apart from every other's.
    instance: u64,
    next: AtomicU64,
    held: Mutex<HashMap<String, Held>>,
    /// A renewal task runs.
    renewing: AtomicBool,
}

/// A bucket with slots held: its key, the lease in microseconds, the slots' names.
type Due = (String, u64, Vec<Arc<str>>);

struct Held {
    lease_us: u64,
    names: Vec<Arc<str>>,
}

fn concurrency(limits: &[Limit]) -> impl Iterator<Item = &Limit> {
    limits
        .iter()
        .filter(|l| l.algorithm() == Algorithm::Concurrency)
}

impl Slots {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            instance: RandomState::new().hash_one(std::process::id()),
            next: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            renewing: AtomicBool::new(false),
        })
    }

    /// A new slot's name, when `limits` include a concurrency limit.
    fn name(&self, limits: &[Limit]) -> Option<Arc<str>> {
        concurrency(limits).next()?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(format!("{:016x}:{n}", self.instance).into())
    }

    /// A decision took slot `name` in each concurrency limit's bucket of `key`.
    fn hold(&self, key: &str, limits: &[Limit], name: &Arc<str>) {
        let mut held = self.held.lock();
        for limit in concurrency(limits) {
            held.entry(bucket_key(key, limit))
                .or_insert_with(|| Held {
                    lease_us: limit.window_us(),
                    names: Vec::new(),
                })
                .names
                .push(Arc::clone(name));
        }
    }

    /// Forgets the slot `name` of `key` in each concurrency limit's bucket: it is freed.
    fn forget(&self, key: &str, limits: &[Limit], name: &str) {
        let mut held = self.held.lock();
        for limit in concurrency(limits) {
            let bucket = bucket_key(key, limit);
            if let Some(entry) = held.get_mut(&bucket) {
                entry.names.retain(|n| &**n != name);
                if entry.names.is_empty() {
                    held.remove(&bucket);
                }
            }
        }
    }

    /// How often to renew the slots held (a third of the shortest lease); `None` when none is.
    fn every(&self) -> Option<Duration> {
        let shortest = self.held.lock().values().map(|h| h.lease_us).min()?;
        Some(Duration::from_micros(shortest / 3).max(Duration::from_millis(10)))
    }

    /// Every bucket with slots held, with its lease and the slots' names.
    fn due(&self) -> Vec<Due> {
        let held = self.held.lock();
        held.iter()
            .map(|(bucket, h)| (bucket.clone(), h.lease_us, h.names.clone()))
            .collect()
    }
}

/// A deciding script's answer: whether the request passed, and where its slot goes.
pub(super) trait Decided: Send + 'static {
    /// Whether the script is asked for the time, to stamp the take.
    const STAMPED: bool = false;
    /// Whether the request passed (and took its units and slots).
    fn passed(&self) -> bool;
    /// Whether the answer says which slot it holds (a stamped take), so that the slot is held
    /// and renewed until it is put back: `true` after adding `slot` to the answer.
    fn hold(&mut self, slot: &Arc<str>) -> bool {
        let _ = slot;
        false
    }
}

impl Decided for crate::Decision {
    fn passed(&self) -> bool {
        self.allowed
    }
}

impl Decided for Vec<crate::Decision> {
    fn passed(&self) -> bool {
        crate::algorithm::passed(self)
    }
}

impl Decided for Taken {
    const STAMPED: bool = true;

    fn passed(&self) -> bool {
        self.stamp.is_some()
    }

    fn hold(&mut self, slot: &Arc<str>) -> bool {
        match self.stamp.take() {
            Some(stamp) => {
                self.stamp = Some(stamp.with_slot(Arc::clone(slot)));
                true
            }
            None => false,
        }
    }
}

impl RedisStore {
    /// A decision by `script` (parsed by `parse`). A concurrency limit's slot is named for
    /// it; when the answer is a stamped take that passed, the slot is held (renewed) until
    /// [`Store::put_back`](crate::store::Store::put_back) frees it. An unstamped decision's slot is
    /// left to its lease: no one can name it to free it.
    pub(super) fn decide_with<T: Decided>(
        &self,
        script: &'static redis::Script,
        key: &str,
        limits: &Arc<[Limit]>,
        cost: u64,
        parse: fn(&redis::Value, &[Limit], u64) -> Option<T>,
    ) -> StoreCall<T> {
        if let Err(error) = crate::algorithm::check_limits(limits) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let cost = cost.max(1);
        let slot = self.slots.name(limits);
        let mut evalsha = scripts::evalsha(
            script,
            key,
            limits,
            cost,
            true,
            slot.as_deref().unwrap_or("-"),
        );
        if T::STAMPED {
            evalsha.arg(1);
        }
        let limits = Arc::clone(limits);
        // Kept only when a slot may be taken.
        let holder = slot.map(|slot| (slot, key.to_owned(), self.clone()));
        self.send(evalsha, Some(script), move |reply| {
            let mut answer = parse(reply, &limits, cost)?;
            if let Some((slot, key, store)) = holder
                && answer.passed()
                && answer.hold(&slot)
            {
                store.slots.hold(&key, &limits, &slot);
                store.renew_while_held();
            }
            Some(answer)
        })
    }

    /// [`Store::put_back`](crate::store::Store::put_back): one `lua/put_back.lua` call.
    pub(super) fn put_back_with(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> StoreCall<()> {
        if let Err(error) = crate::algorithm::check_limits(limits) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let slot = stamp.slot().filter(|_| free_slot);
        if let Some(slot) = slot {
            self.slots.forget(key, limits, slot);
        }
        let script = scripts::other(Other::PutBack);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(limits.len());
        for limit in limits.iter() {
            cmd.arg(bucket_key(key, limit));
        }
        for (i, limit) in limits.iter().enumerate() {
            let units = if limit.counts_requests() { 0 } else { units };
            cmd.arg(limit.algorithm().code());
            match limit.algorithm() {
                Algorithm::TokenBucket => {
                    cmd.arg(units.saturating_mul(limit.interval_us()))
                        .arg(limit.window_us())
                        .arg(stamp.mark(i));
                }
                Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                    cmd.arg(limit.window_ms()).arg(units).arg(stamp.mark(i));
                }
                Algorithm::SlidingLog => {
                    cmd.arg(limit.cost_of(stamp.cost()))
                        .arg(units)
                        .arg(stamp.mark(i));
                }
                Algorithm::Concurrency => {
                    cmd.arg(slot.unwrap_or("-")).arg(0).arg(0);
                }
            }
        }
        self.send(cmd, Some(script), |reply| {
            matches!(reply, redis::Value::Int(1)).then_some(())
        })
    }

    /// Starts the renewal task unless it runs: every third of the shortest lease, each bucket
    /// with slots held gets its leases renewed (one script call per bucket). The task ends
    /// when no slot is held, or the store is gone.
    fn renew_while_held(&self) {
        if self.slots.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.slots.renewing.store(false, Ordering::Release);
            return;
        };
        let link: Weak<Link> = Arc::downgrade(&self.link);
        let slots = Arc::clone(&self.slots);
        runtime.spawn(async move {
            loop {
                let Some(every) = slots.every() else {
                    slots.renewing.store(false, Ordering::Release);
                    // A slot held meanwhile may have seen the task still running.
                    if slots.held.lock().is_empty() || slots.renewing.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                };
                tokio::time::sleep(every).await;
                let Some(link) = link.upgrade() else {
                    return;
                };
                let store = RedisStore {
                    link,
                    slots: Arc::clone(&slots),
                    target: None,
                };
                for (bucket, lease_us, names) in slots.due() {
                    let script = scripts::other(Other::Renew);
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(script.get_hash()).arg(1).arg(&bucket).arg(lease_us);
                    for name in &names {
                        cmd.arg(&**name);
                    }
                    // A failure is the breaker's and the connection's business; the next
                    // round tries again, well within the lease.
                    let _ = store.send(cmd, Some(script), |_| Some(())).await;
                }
            }
        });
    }
}
