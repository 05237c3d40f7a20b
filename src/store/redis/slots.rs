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
use crate::store::{StoreCall, bucket_key};
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

    /// Forgets one slot of `key` in each concurrency limit's bucket: the buckets and names to
    /// remove from Redis.
    fn forget_one(&self, key: &str, limits: &[Limit]) -> (Vec<String>, Vec<Arc<str>>) {
        let mut held = self.held.lock();
        let mut out = (Vec::new(), Vec::new());
        for limit in concurrency(limits) {
            let bucket = bucket_key(key, limit);
            let Some(entry) = held.get_mut(&bucket) else {
                continue;
            };
            if let Some(name) = entry.names.pop() {
                out.1.push(name);
                if entry.names.is_empty() {
                    held.remove(&bucket);
                }
                out.0.push(bucket);
            }
        }
        out
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

impl RedisStore {
    /// A decision (parsed by `parse`) that, when `allowed`, holds a named slot of each
    /// concurrency limit until [`Store::release`], renewed meanwhile.
    pub(super) fn decide_with<T: Send + 'static>(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        cost: u64,
        parse: fn(&redis::Value, &[Limit], u64) -> Option<T>,
        allowed: fn(&T) -> bool,
    ) -> StoreCall<T> {
        if let Err(error) = crate::algorithm::check_limits(limits) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let cost = cost.max(1);
        let script = scripts::script_for(limits);
        let slot = self.slots.name(limits);
        let evalsha = scripts::evalsha(
            script,
            key,
            limits,
            cost,
            true,
            slot.as_deref().unwrap_or("-"),
        );
        let limits = Arc::clone(limits);
        // Kept only when a slot may be taken.
        let holder = slot.map(|slot| (slot, key.to_owned(), self.clone()));
        self.send(evalsha, Some(script), move |reply| {
            let answer = parse(reply, &limits, cost)?;
            if let Some((slot, key, store)) = holder
                && allowed(&answer)
            {
                store.slots.hold(&key, &limits, &slot);
                store.renew_while_held();
            }
            Some(answer)
        })
    }

    /// Frees one slot of `key` this instance holds in each concurrency limit's bucket.
    pub(super) fn release_slots(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        let (buckets, names) = self.slots.forget_one(key, limits);
        if buckets.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        let script = scripts::other(Other::Release);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(buckets.len());
        for bucket in &buckets {
            cmd.arg(bucket.as_str());
        }
        for name in &names {
            cmd.arg(&**name);
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
