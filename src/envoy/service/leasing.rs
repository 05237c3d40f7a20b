//! `TOLLGATE_LEASES`: a hot descriptor's hits served from units this instance took ahead
//! from its Redis counter, so that most decisions make no store call, while no window ever
//! admits more than its limit across instances.
//!
//! A lease is units added to the counter within its limit (`lua/counter_lend.lua`, atomic on
//! the key) and then spent here: whatever instances spend of a window's counter, leased or
//! not, was counted in it within the limit first. The counter's key names its window, so
//! units lent in one window can never be spent in the next. Units a lease did not spend are
//! taken off the counter again (`lua/counter_return.lua`) when it ends before its window
//! does, at a reload and at a shutdown. A counter the store said was over is known over here
//! for a lease time (or until its window ends, if sooner), and its hits are answered without
//! a call (as the peer's local cache does, which keeps them to the window's end); they are not
//! added to Redis. A descriptor that is not leased is counted as the peer counts it.
//!
//! Which keys are leased, how much, and for how long is the engine's lease table
//! (`crate::lease`): a key is leased once it is asked for at least a few units a lease time
//! (one second), a lease is what it was asked for over the last lease time, and the next is
//! taken when half is spent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::tasks::Tasks;
use crate::lease::{Grant, Leases, Serve, Unspent};
use crate::store::{Counter, CounterLease, Store};
use crate::sync::Sharded;
use crate::{Decision, Limiter, StoreError};

/// How long a lease may be spent, and the time over which a key's rate is counted.
pub(super) const LEASE_TIME: Duration = Duration::from_secs(1);

/// The most counters known over at once (beyond, the over ones are asked again).
const MAX_OVER: usize = 10_000;
const SHARDS: usize = 16;

/// One configuration's leases, and the counters it knows are over.
pub(super) struct Leasing {
    leases: Leases,
    over: Sharded<HashMap<Box<str>, Instant, foldhash::fast::RandomState>>,
    tasks: Arc<Tasks>,
}

/// One counted descriptor of a request.
pub(super) struct Wanted {
    pub(super) counter: Counter,
    pub(super) limit: u64,
    /// When its window ends, in Unix seconds.
    pub(super) window_end_s: u64,
}

/// What became of one counted descriptor.
enum Step {
    /// Decided here: the counter's value as this instance knows it, after the hits.
    Here(u64),
    /// Asked of the store, lending up to this many more units (the lease table waits for it).
    Lend(u64),
    /// Counted in the store as without leases.
    Plain,
}

impl Leasing {
    pub(super) fn new(tasks: Arc<Tasks>) -> Self {
        Self {
            leases: Leases::new(),
            over: Sharded::new(SHARDS),
            tasks,
        }
    }

    /// Each counter's value after its hits, as this instance knows it: from its lease or its
    /// being over when it can, else from one store call for all the others (which takes a
    /// lease for the hot ones). A counter the store is asked for expires `jitter()` seconds
    /// after its window (an answer from here asks for none: no shared write per request).
    pub(super) async fn count<St: Store>(
        self: &Arc<Self>,
        limiter: &Limiter<St>,
        mut wanted: Vec<Wanted>,
        jitter: impl Fn() -> u64,
    ) -> Result<Vec<u64>, StoreError> {
        let now = Instant::now();
        let steps: Vec<Step> = (wanted.iter())
            .map(|w| self.step(limiter, w, &jitter, now))
            .collect();
        for (want, step) in wanted.iter_mut().zip(&steps) {
            if !matches!(step, Step::Here(_)) {
                want.counter.expire_s += jitter();
            }
        }
        if !steps.iter().any(|step| matches!(step, Step::Lend(_))) {
            return self.ask(limiter, wanted, steps, now).await;
        }
        // A lease call holds its key until it is granted (no other is asked meanwhile), and
        // what it lends is in the store once sent: it is seen through in the background even
        // when the request is given up on (Envoy's timeout drops it), so the key leases again
        // and the units lent are held or given back, never lost.
        let (this, limiter) = (Arc::clone(self), limiter.clone());
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.tasks.spawn(async move {
            let _ = answer.send(this.ask(&limiter, wanted, steps, now).await);
        });
        answered
            .await
            .unwrap_or_else(|_| Err(StoreError::Other("a lease call was dropped".into())))
    }

    /// The store's part of [`count`](Self::count): `steps` are `wanted`'s.
    async fn ask<St: Store>(
        &self,
        limiter: &Limiter<St>,
        wanted: Vec<Wanted>,
        steps: Vec<Step>,
        now: Instant,
    ) -> Result<Vec<u64>, StoreError> {
        // The hot ones lend (a script); the others are counted as the peer counts them.
        let mut lends = Vec::new();
        let mut plain = Vec::new();
        for (want, step) in wanted.iter().zip(&steps) {
            match step {
                Step::Lend(extra) => lends.push(CounterLease {
                    counter: want.counter.clone(),
                    limit: want.limit,
                    extra: *extra,
                }),
                Step::Plain => plain.push(want.counter.clone()),
                Step::Here(_) => {}
            }
        }
        // Most requests on a leased descriptor end here: no call, no store to load.
        let (lent, counted) = match lends.is_empty() && plain.is_empty() {
            true => (Ok(Vec::new()), Ok(Vec::new())),
            false => {
                let core = limiter.core();
                let lending = async {
                    match lends.is_empty() {
                        true => Ok(Vec::new()),
                        false => core.bounded(limiter.store().count_lending(&lends)).await,
                    }
                };
                let counting = async {
                    match plain.is_empty() {
                        true => Ok(Vec::new()),
                        false => core.bounded(limiter.store().count(&plain)).await,
                    }
                };
                tokio::join!(lending, counting)
            }
        };
        let (lent, counted) = match (lent, counted) {
            (Ok(lent), Ok(counted)) => (lent, counted),
            (lent, counted) => {
                // What a lease call lent is held all the same (or given back); a failed one
                // lets the key ask again.
                let mut got = lent.as_ref().ok().map(|l| l.iter());
                for (want, step) in wanted.iter().zip(&steps) {
                    if !matches!(step, Step::Lend(_)) {
                        continue;
                    }
                    match got.as_mut().and_then(Iterator::next) {
                        Some(got) => self.granted(limiter, want, got.value, got.lent, now),
                        // Nothing lent: the key may ask again (nothing to give back).
                        None => {
                            let key = &want.counter.key;
                            self.leases.granted(key, 0, LEASE_TIME, None, now);
                        }
                    }
                }
                let error = match (lent, counted) {
                    (Err(error), _) | (_, Err(error)) => error,
                    (Ok(_), Ok(_)) => unreachable!("one of them failed"),
                };
                return Err(error);
            }
        };
        let (mut lent, mut counted) = (lent.into_iter(), counted.into_iter());
        let mut after = Vec::with_capacity(wanted.len());
        for (want, step) in wanted.iter().zip(steps) {
            let value = match step {
                Step::Here(value) => {
                    after.push(value);
                    continue;
                }
                Step::Plain => counted.next().unwrap_or_default(),
                Step::Lend(_) => {
                    let got = lent.next().unwrap_or_default();
                    self.granted(limiter, want, got.value, got.lent, now);
                    got.value.saturating_sub(got.lent)
                }
            };
            // Known over from what the store said (an answer from here does not renew it).
            if value > want.limit {
                self.is_over(&want.counter.key, want.window_end_s);
            }
            after.push(value);
        }
        Ok(after)
    }

    /// What to do with one counted descriptor.
    fn step<St: Store>(
        self: &Arc<Self>,
        limiter: &Limiter<St>,
        want: &Wanted,
        jitter: &impl Fn() -> u64,
        now: Instant,
    ) -> Step {
        let key = want.counter.key.as_str();
        if self.known_over(key, now) {
            return Step::Here(want.limit.saturating_add(want.counter.hits.max(1)));
        }
        match self
            .leases
            .serve(0, key, want.counter.hits, LEASE_TIME, now)
        {
            Serve::Lease {
                decision, refill, ..
            } => {
                if let Some(extra) = refill {
                    self.refill(limiter, want, extra, jitter(), now);
                }
                Step::Here(want.limit.saturating_sub(decision.remaining))
            }
            Serve::Lend { want } => Step::Lend(want),
            Serve::Plain { .. } => Step::Plain,
        }
    }

    /// Takes the next lease of `want`'s counter, of up to `extra` units, in the background
    /// (its expiry `jitter` seconds later).
    fn refill<St: Store>(
        self: &Arc<Self>,
        limiter: &Limiter<St>,
        want: &Wanted,
        extra: u64,
        jitter: u64,
        now: Instant,
    ) {
        let this = Arc::clone(self);
        let limiter = limiter.clone();
        let want = Wanted {
            counter: Counter {
                hits: 0,
                key: want.counter.key.clone(),
                expire_s: want.counter.expire_s + jitter,
            },
            limit: want.limit,
            window_end_s: want.window_end_s,
        };
        self.tasks.spawn(async move {
            let asked = [CounterLease {
                counter: want.counter.clone(),
                limit: want.limit,
                extra,
            }];
            let call = limiter.store().count_lending(&asked);
            match limiter.core().bounded(call).await {
                Ok(lent) => {
                    let got = lent.first().copied().unwrap_or_default();
                    this.granted(&limiter, &want, got.value, got.lent, now);
                }
                // Nothing lent: the key may ask again (nothing to give back).
                Err(_) => {
                    this.leases
                        .granted(&want.counter.key, 0, LEASE_TIME, None, now);
                }
            }
        });
    }

    /// Installs a lease of `lent` units of `want`'s counter, now at `value`, asked at `sent`.
    fn granted<St: Store>(
        &self,
        limiter: &Limiter<St>,
        want: &Wanted,
        value: u64,
        lent: u64,
        sent: Instant,
    ) {
        let until_end = Duration::from_secs(want.window_end_s).saturating_sub(wall());
        let grant = Grant {
            units: lent,
            // Where its units go back to: the window's end, past which they are not given back.
            at_us: want.window_end_s.saturating_mul(1_000_000),
            expires: sent + LEASE_TIME.min(until_end),
            base: Decision::new(
                true,
                want.limit,
                want.limit.saturating_sub(value),
                Duration::ZERO,
                Duration::ZERO,
            ),
        };
        let now = Instant::now();
        let ended = self
            .leases
            .granted(&want.counter.key, 0, LEASE_TIME, Some(grant), now);
        give_back(&self.tasks, limiter, ended);
    }

    /// The leases that ended by `now`, given back; run every so often.
    pub(super) fn sweep<St: Store>(&self, limiter: &Limiter<St>) {
        give_back(&self.tasks, limiter, self.leases.expired(Instant::now()));
    }

    /// Every lease given back, and no more lent: the configuration was replaced.
    pub(super) fn retire<St: Store>(&self, limiter: &Limiter<St>) {
        give_back(&self.tasks, limiter, self.leases.retire());
    }

    /// For a shutdown: no more leases, every one given back, and every lease call and
    /// give-back under way (of this configuration or an earlier one) ended.
    pub(super) async fn give_back_all<St: Store>(&self, limiter: &Limiter<St>) {
        // A lease call that ends after is given back as it ends.
        give_back(&self.tasks, limiter, self.leases.retire());
        self.tasks.idle().await;
    }

    fn known_over(&self, key: &str, now: Instant) -> bool {
        let (shard, _) = self.over.lock(key);
        shard.get(key).is_some_and(|until| now < *until)
    }

    /// Knows `key` over for a lease time, or until its window ends if sooner: a lease given
    /// back meanwhile (by any instance) may make room again, which the next ask sees.
    fn is_over(&self, key: &str, window_end_s: u64) {
        let until_end = Duration::from_secs(window_end_s)
            .saturating_sub(wall())
            .min(LEASE_TIME);
        let now = Instant::now();
        let (mut shard, _) = self.over.lock(key);
        if shard.len() >= MAX_OVER / SHARDS {
            shard.retain(|_, until| *until > now);
        }
        if shard.len() < MAX_OVER / SHARDS {
            shard.insert(key.into(), now + until_end);
        }
    }
}

/// Gives back what `ended` leases left, in the background: each counter's units taken off it,
/// unless its window is over.
fn give_back<St: Store>(tasks: &Arc<Tasks>, limiter: &Limiter<St>, ended: Vec<Unspent>) {
    let counters = unspent_counters(ended);
    if counters.is_empty() {
        return;
    }
    let limiter = limiter.clone();
    tasks.spawn(async move {
        let call = limiter.store().uncount(&counters);
        // Lost only when the store stays down: the units are then not spent in this window.
        let _ = limiter.core().patient(call).await;
    });
}

/// The counters to take `ended` leases' units off: those whose window is not over.
fn unspent_counters(ended: Vec<Unspent>) -> Vec<Counter> {
    let now_us = u64::try_from(wall().as_micros()).unwrap_or(u64::MAX);
    ended
        .into_iter()
        .filter(|unspent| unspent.units > 0 && unspent.at_us > now_us)
        .map(|unspent| Counter {
            key: unspent.key.into(),
            hits: unspent.units,
            expire_s: 0,
        })
        .collect()
}

/// The time since the Unix epoch.
fn wall() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
