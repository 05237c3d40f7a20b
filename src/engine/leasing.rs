//! Leases in the engine (see `lease`): a hot key's decisions served in
//! process, the lease calls that lend the units, and giving back what leases left.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::worker::Chore;
use super::{Core, Limiter, Shared, Subject};
use crate::algorithm::binding;
use crate::lease::{Grant, Leases, Unspent};
use crate::store::{Lent, Stamp, Store, StoreCall, Taken};
use crate::{Algorithm, Decision, Limit, StoreError};

/// A lease call under way on one key: when dropped before it is [granted](Self::grant), the
/// key may ask for a lease again.
pub(crate) struct Lending<St: Store> {
    shared: Arc<Shared<St>>,
    /// The generation the lease is taken under: granted into its leases.
    core: Arc<Core>,
    key: Box<str>,
    policy: usize,
    /// When the call was sent: a lease is timed from here, so it never outlasts the window
    /// that lent it by the store's clock.
    sent: Instant,
    done: bool,
}

impl<St: Store> Lending<St> {
    pub(crate) fn new(
        shared: &Arc<Shared<St>>,
        core: &Arc<Core>,
        key: &str,
        policy: usize,
    ) -> Self {
        Self {
            shared: Arc::clone(shared),
            core: Arc::clone(core),
            key: key.into(),
            policy,
            sent: Instant::now(),
            done: false,
        }
    }

    fn leases(&self) -> &Leases {
        self.core.leases.as_ref().expect("a lease call has leases")
    }

    /// Installs what `lent` lent (and `extra`, units the call took for no request), gives
    /// back a lease that ended meanwhile, and starts the task that gives back ended leases.
    pub(crate) fn grant(mut self, lent: &Lent, extra: u64) {
        self.done = true;
        let core = &self.core;
        let policy = core.policies.entry(self.policy);
        let lease_time = policy.lease.unwrap_or_default();
        let passed = crate::algorithm::passed(&lent.decisions);
        let grant = binding(&lent.decisions).map(|decision| Grant {
            units: if passed { lent.units + extra } else { 0 },
            at_us: lent.at_us,
            expires: self.sent + lease_ends(&policy.limits, lent.at_us, lease_time),
            base: Decision {
                remaining: decision.remaining.saturating_sub(lent.units),
                ..decision
            },
        });
        if let Some(grant) = grant.filter(|g| g.units > 0) {
            core.telemetry.leased(self.policy, grant.units);
        }
        let now = Instant::now();
        let ended = self
            .leases()
            .granted(&self.key, self.policy, lease_time, grant, now);
        for unspent in ended {
            spawn_give_back(&self.shared, &self.core, unspent);
        }
    }
}

impl<St: Store> Drop for Lending<St> {
    fn drop(&mut self) {
        if !self.done {
            let lease_time = self.core.policies.entry(self.policy).lease;
            let now = Instant::now();
            // A retired generation's leases give back what they are granted: nothing here.
            let _ = self.leases().granted(
                &self.key,
                self.policy,
                lease_time.unwrap_or_default(),
                None,
                now,
            );
        }
    }
}

/// How long a lease lent at `at_us` by the store's clock may be spent: the lease time, and
/// never past the end of the window that counted it.
pub(crate) fn lease_ends(limits: &[Limit], at_us: u64, lease_time: Duration) -> Duration {
    limits
        .iter()
        .filter(|l| l.algorithm() != Algorithm::TokenBucket)
        .map(|l| {
            let window_us = l.window_ms() * 1000;
            let end_us = (at_us / 1000 / l.window_ms() + 1) * window_us;
            Duration::from_micros(end_us.saturating_sub(at_us))
        })
        .fold(lease_time, Duration::min)
}

/// The decision's store call that also lends up to `want` units: a stamped take (the
/// request's units and the lent ones were taken at the time the store says).
pub(crate) fn lend<St: Store>(
    shared: &Shared<St>,
    core: &Core,
    lending: Lending<St>,
    key: &str,
    cost: u64,
    want: u64,
) -> StoreCall<Taken> {
    let limits = &core.policies.entry(lending.policy).limits;
    let call = shared.store.lease(key, limits, cost, want);
    let cost = cost.max(1);
    Box::pin(async move {
        let lent = call.await?;
        lending.grant(&lent, 0);
        let stamp = crate::algorithm::passed(&lent.decisions).then(|| Stamp::new(lent.at_us, cost));
        Ok(Taken::new(lent.decisions, stamp))
    })
}

/// `take`, the store call of a request on a followed key not served from its lease, told to
/// the leases with its stamp when it took, so that the units the key's lease reports count it.
pub(crate) fn tracked(core: &Arc<Core>, key: &str, take: StoreCall<Taken>) -> StoreCall<Taken> {
    let core = Arc::clone(core);
    let key: Box<str> = key.into();
    Box::pin(async move {
        let taken = take.await?;
        if let (Some(stamp), Some(leases)) = (&taken.stamp, &core.leases) {
            leases.took(&key, stamp.at_us(), stamp.cost());
        }
        Ok(taken)
    })
}

/// Takes the next lease of up to `want` units on `key` in the background (one unit for no
/// request, and up to `want - 1` more), bounded as every store call is. A call the breaker
/// does not let through is not counted as a store error: no request waited for it.
pub(crate) fn refill<St: Store>(
    shared: &Arc<Shared<St>>,
    core: &Arc<Core>,
    key: &str,
    policy: usize,
    want: u64,
) {
    let Some(worker) = &core.worker else {
        return;
    };
    let lending = Lending::new(shared, core, key, policy);
    let limits = &core.policies.entry(policy).limits;
    let call = shared.store.lease(key, limits, 1, want.saturating_sub(1));
    let core = Arc::clone(core);
    let work: crate::engine::Work = Box::pin(async move {
        match core.bounded(call).await {
            Ok(lent) => lending.grant(&lent, 1),
            Err(StoreError::CircuitOpen | StoreError::Overloaded(_)) => {}
            Err(error) => core.telemetry.store_error(&error),
        }
    });
    // A lease is taken ahead of the requests that will spend it: started at once on the
    // current runtime (through the worker's queue, the hop let the key's next requests find
    // the lease spent and ask the store meanwhile); from a thread without one, by the worker.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(work)),
        Err(_) => {
            worker.run(Chore::Lease, work);
        }
    }
}

impl<St: Store> Shared<St> {
    /// Gives back what a lease of the generation `core` did not spend, to the limits it was
    /// lent from, stamped with the time it was lent, bounded as every store call is.
    async fn give_back(&self, core: &Core, unspent: Unspent) -> Result<u64, StoreError> {
        let limits = &core.policies.entry(unspent.policy).limits;
        let stamp = Stamp::new(unspent.at_us, unspent.units);
        let call = self
            .store
            .put_back(&unspent.key, limits, &stamp, unspent.units, false);
        match core.patient(call).await {
            Ok(()) => {
                core.telemetry.lease_returned(unspent.policy, unspent.units);
                Ok(unspent.units)
            }
            Err(error) => {
                core.telemetry.store_error(&error);
                Err(error)
            }
        }
    }
}

/// Gives back `unspent`, of a lease of the generation `core`, in the background.
pub(crate) fn spawn_give_back<St: Store>(
    shared: &Arc<Shared<St>>,
    core: &Arc<Core>,
    unspent: Unspent,
) {
    if let Some(worker) = &core.worker {
        let (shared, core) = (Arc::clone(shared), Arc::clone(core));
        worker.run(
            Chore::Lease,
            Box::pin(async move {
                let _ = shared.give_back(&core, unspent).await;
            }),
        );
    }
}

/// Starts, once per generation, the task that every shortest lease time gives back what
/// ended leases left and forgets idle keys, while the limiter and the generation live (in its
/// background worker).
pub(crate) fn sweep<St: Store>(shared: &Arc<Shared<St>>, core: &Arc<Core>, leases: &Leases) {
    if leases.sweeping() || !leases.start_sweeping() {
        return;
    }
    let Some(worker) = &core.worker else {
        return;
    };
    let policies = &core.policies;
    let every = (0..policies.len())
        .filter_map(|i| policies.entry(i).lease)
        .min()
        .unwrap_or(crate::limit::DEFAULT_LEASE_TIME);
    let weak: Weak<Shared<St>> = Arc::downgrade(shared);
    let generation: Weak<Core> = Arc::downgrade(core);
    worker.keep_running(
        Chore::Lease,
        Box::pin(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let (Some(shared), Some(core)) = (weak.upgrade(), generation.upgrade()) else {
                    return;
                };
                let Some(leases) = &core.leases else {
                    return;
                };
                for unspent in leases.expired(Instant::now()) {
                    let _ = shared.give_back(&core, unspent).await;
                }
            }
        }),
    );
}

impl<St: Store> Limiter<St> {
    /// Gives back to the store every unit this limiter holds on lease (see
    /// `lease`), and returns how many: call it when the process shuts down, so
    /// that other instances can use them at once. Later requests may take new leases.
    ///
    /// # Errors
    ///
    /// The first store failure; the other leases are given back still.
    pub async fn return_leases(&self) -> Result<u64, StoreError> {
        let core = self.shared.core();
        let Some(leases) = &core.leases else {
            return Ok(0);
        };
        let mut returned = 0;
        let mut failed = None;
        for unspent in leases.drain() {
            match self.shared.give_back(&core, unspent).await {
                Ok(units) => returned += units,
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        failed.map_or(Ok(returned), Err)
    }

    /// The units of `subject` this instance holds on lease and may still spend: 0 unless its
    /// policy is [leased](crate::Limit::leased) and the key is hot. They are already taken in
    /// the store ([`Limiter::peek`] counts them as spent).
    pub fn leased(&self, subject: &Subject) -> u64 {
        match &self.shared.core.load().leases {
            Some(leases) => leases.held(subject.key(), Instant::now()),
            None => 0,
        }
    }
}
