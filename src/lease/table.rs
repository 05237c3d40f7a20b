//! [`Leases`]: the units this instance holds ahead of its requests, per key, and the rate
//! that sizes the next lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::Decision;
use crate::sync::Sharded;

/// The fewest units a key must be asked for over a lease time to be leased: below, each
/// request is decided on its own, as without leasing.
pub const MIN_LEASE: u64 = 4;

/// The most keys a limiter follows for leasing.
pub const MAX_LEASED_KEYS: usize = 10_000;

const SHARDS: usize = 16;

/// The leases of one limiter, by key.
#[derive(Debug)]
pub(crate) struct Leases {
    shards: Sharded<Shard>,
    sweeping: AtomicBool,
}

#[derive(Debug, Default)]
struct Shard {
    held: HashMap<Box<str>, Held, foldhash::fast::RandomState>,
}

#[derive(Debug)]
struct Held {
    policy: usize,
    lease_time: Duration,
    /// Units left to spend.
    units: u64,
    /// When they may no longer be spent.
    expires: Instant,
    /// The store's clock when they were lent, in microseconds.
    at_us: u64,
    /// The binding limit as the store last said, not counting the lease.
    base: Decision,
    /// The size of the last lease: half of it spent, the next is taken.
    granted: u64,
    /// A lease call is under way.
    pending: bool,
    /// The last lease call lent nothing (a nearly empty bucket): no other until the next
    /// count.
    dry: bool,
    /// Since when `asked` counts.
    since: Instant,
    /// Units asked since `since`.
    asked: u64,
    /// Units asked over the lease time before.
    last: u64,
}

/// What to do with a request on a leased policy.
#[derive(Debug)]
pub(crate) enum Serve {
    /// Admitted from the lease. `refill`: take the next lease, of up to that many units, in
    /// the background.
    Lease {
        decision: Decision,
        refill: Option<u64>,
    },
    /// Ask the store, taking a lease of up to `want` units with the request.
    Lend { want: u64 },
    /// Ask the store as without leasing.
    Plain,
}

/// A lease a store call lent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub(crate) units: u64,
    pub(crate) at_us: u64,
    pub(crate) expires: Instant,
    /// The binding limit's decision, what it has left not counting the lease.
    pub(crate) base: Decision,
}

/// Units a lease did not spend, to give back.
#[derive(Debug)]
pub(crate) struct Unspent {
    pub(crate) key: Box<str>,
    pub(crate) policy: usize,
    pub(crate) units: u64,
    pub(crate) at_us: u64,
}

impl Leases {
    pub(crate) fn new() -> Self {
        Self {
            shards: Sharded::new(SHARDS),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Whether the task that gives back what ended leases left runs.
    pub(crate) fn sweeping(&self) -> bool {
        self.sweeping.load(Ordering::Relaxed)
    }

    /// Whether the caller is the first to ask (and so starts that task).
    pub(crate) fn start_sweeping(&self) -> bool {
        !self.sweeping.swap(true, Ordering::Relaxed)
    }

    /// What to do with a request of `cost` on `key` (under the policy at `policy`, leased
    /// for `lease_time`), counting it toward the key's rate.
    pub(crate) fn serve(
        &self,
        policy: usize,
        key: &str,
        cost: u64,
        lease_time: Duration,
        now: Instant,
    ) -> Serve {
        let (mut shard, _) = self.shards.lock(key);
        let Some(held) = shard.entry(key, policy, lease_time, now) else {
            return Serve::Plain;
        };
        let counted = now.saturating_duration_since(held.since);
        if counted >= lease_time {
            held.last = if counted >= 2 * lease_time {
                0
            } else {
                held.asked
            };
            held.asked = 0;
            held.since = now;
            held.dry = false;
        }
        held.asked = held.asked.saturating_add(cost);
        let want = held.last.max(held.asked);
        if held.units >= cost && now < held.expires {
            held.units -= cost;
            let remaining = held.base.remaining.saturating_add(held.units);
            let decision = Decision {
                allowed: true,
                remaining,
                retry_after: Duration::ZERO,
                available_after: if remaining == 0 {
                    held.base.reset_after
                } else {
                    Duration::ZERO
                },
                ..held.base
            };
            let refill = (!held.pending
                && !held.dry
                && held.units.saturating_mul(2) <= held.granted
                && want >= MIN_LEASE)
                .then(|| {
                    held.pending = true;
                    want
                });
            return Serve::Lease { decision, refill };
        }
        if held.pending || held.dry || want < MIN_LEASE {
            return Serve::Plain;
        }
        held.pending = true;
        Serve::Lend { want }
    }

    /// A lease call on `key` ended: with `grant` (what it lent, maybe nothing), or failed
    /// (`None`). Returns units to give back: those of a lease that ended meanwhile, or the
    /// grant itself when the table has no room for the key.
    pub(crate) fn granted(
        &self,
        key: &str,
        policy: usize,
        lease_time: Duration,
        grant: Option<Grant>,
        now: Instant,
    ) -> Option<Unspent> {
        let (mut shard, _) = self.shards.lock(key);
        let Some(held) = shard.entry(key, policy, lease_time, now) else {
            return grant.filter(|g| g.units > 0).map(|g| Unspent {
                key: key.into(),
                policy,
                units: g.units,
                at_us: g.at_us,
            });
        };
        held.pending = false;
        let grant = grant?;
        if grant.units == 0 {
            held.dry = true;
            return None;
        }
        let ended = (held.units > 0 && now >= held.expires).then(|| Unspent {
            key: key.into(),
            policy: held.policy,
            units: std::mem::take(&mut held.units),
            at_us: held.at_us,
        });
        // Units still running are of the same window as the new ones (they would have ended
        // with theirs), so they join the new lease.
        held.units += grant.units;
        held.expires = grant.expires;
        held.at_us = grant.at_us;
        held.base = grant.base;
        held.granted = grant.units;
        held.dry = false;
        ended
    }

    /// The units of leases over by `now`, taken out to be given back; keys idle for two
    /// lease times are forgotten.
    pub(crate) fn expired(&self, now: Instant) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        for mut shard in self.shards.each() {
            shard.held.retain(|key, held| {
                if held.units > 0 && now >= held.expires {
                    unspent.push(held.unspent(key));
                }
                held.units > 0
                    || held.pending
                    || now.saturating_duration_since(held.since) < 2 * held.lease_time
            });
        }
        unspent
    }

    /// Every lease's units, taken out to be given back.
    pub(crate) fn drain(&self) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        for mut shard in self.shards.each() {
            for (key, held) in shard.held.iter_mut() {
                if held.units > 0 {
                    unspent.push(held.unspent(key));
                }
            }
        }
        unspent
    }

    /// The units this instance may still spend on `key`.
    pub(crate) fn held(&self, key: &str, now: Instant) -> u64 {
        let (shard, _) = self.shards.lock(key);
        shard
            .held
            .get(key)
            .filter(|held| now < held.expires)
            .map_or(0, |held| held.units)
    }

    /// Drops `key`'s lease, not given back (its bucket was reset).
    pub(crate) fn forget(&self, key: &str) {
        let (mut shard, _) = self.shards.lock(key);
        shard.held.remove(key);
    }
}

impl Shard {
    /// `key`'s entry, made if the shard has room.
    fn entry(
        &mut self,
        key: &str,
        policy: usize,
        lease_time: Duration,
        now: Instant,
    ) -> Option<&mut Held> {
        if !self.held.contains_key(key) {
            if self.held.len() >= MAX_LEASED_KEYS / SHARDS {
                return None;
            }
            self.held
                .insert(key.into(), Held::new(policy, lease_time, now));
        }
        self.held.get_mut(key)
    }
}

impl Held {
    fn new(policy: usize, lease_time: Duration, now: Instant) -> Self {
        Self {
            policy,
            lease_time,
            units: 0,
            expires: now,
            at_us: 0,
            base: Decision::new(true, 0, 0, Duration::ZERO, Duration::ZERO),
            granted: 0,
            pending: false,
            dry: false,
            since: now,
            asked: 0,
            last: 0,
        }
    }

    fn unspent(&mut self, key: &str) -> Unspent {
        Unspent {
            key: key.into(),
            policy: self.policy,
            units: std::mem::take(&mut self.units),
            at_us: self.at_us,
        }
    }
}
