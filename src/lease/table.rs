//! [`Leases`]: the units this instance holds ahead of its requests, per key, and the rate
//! that sizes the next lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::held::Shard;
use crate::Decision;
use crate::sync::Sharded;

/// The fewest units a key must be asked for over a lease time to be leased: below, each
/// request is decided on its own, as without leasing.
pub(crate) const MIN_LEASE: u64 = 4;

/// The most keys a limiter follows for leasing.
pub(crate) const MAX_LEASED_KEYS: usize = 10_000;

pub(super) const SHARDS: usize = 16;

/// The leases of one limiter, by key.
#[derive(Debug)]
pub(crate) struct Leases {
    shards: Sharded<Shard>,
    sweeping: AtomicBool,
    /// The generation of the policies these leases serve was replaced: nothing is lent or
    /// served any more, and what a lease call under way is granted is given back.
    retired: AtomicBool,
}

/// What to do with a request on a leased policy.
#[derive(Debug)]
pub(crate) enum Serve {
    /// Admitted from the lease. `refill`: take the next lease, of up to that many units, in
    /// the background.
    Lease {
        decision: Decision,
        refill: Option<u64>,
        /// When the units spent were lent, by the store's clock (the request's stamp).
        at_us: u64,
    },
    /// Ask the store, taking a lease of up to `want` units with the request.
    Lend { want: u64 },
    /// Ask the store as without leasing. `track`: the key is followed, so what the call takes
    /// is to be [told](Leases::took) with its stamp: the units its lease reports (one under
    /// way, or the next) count it, whenever the store makes it.
    Plain { track: bool },
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

impl Unspent {
    pub(super) fn new(key: &str, policy: usize, units: u64, at_us: u64) -> Self {
        Self {
            key: key.into(),
            policy,
            units,
            at_us,
        }
    }
}

impl Leases {
    pub(crate) fn new() -> Self {
        Self {
            shards: Sharded::new(SHARDS),
            sweeping: AtomicBool::new(false),
            retired: AtomicBool::new(false),
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
        if self.retired.load(Ordering::SeqCst) {
            return Serve::Plain { track: false };
        }
        let Some(held) = shard.entry(key, policy, lease_time, now) else {
            return Serve::Plain { track: false };
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
        // From the older parcel when it holds enough, else from the newer one.
        if let Some(parcel) = held
            .parcels
            .iter_mut()
            .find(|p| p.live(now) && p.units >= cost)
        {
            parcel.units -= cost;
            let at_us = parcel.at_us;
            let left = held.units(now);
            let remaining = held.base.remaining.saturating_add(left);
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
                && left.saturating_mul(2) <= held.granted
                && want >= MIN_LEASE)
                .then(|| {
                    held.pending = true;
                    want
                });
            return Serve::Lease {
                decision,
                refill,
                at_us,
            };
        }
        if held.pending || held.dry || want < MIN_LEASE {
            return Serve::Plain { track: true };
        }
        held.pending = true;
        Serve::Lend { want }
    }

    /// A lease call on `key` ended: with `grant` (what it lent, maybe nothing), or failed
    /// (`None`). Returns units to give back: those of a parcel that ended meanwhile or that
    /// the new one pushes out (two are kept), or the grant itself when the table has no room
    /// for the key.
    pub(crate) fn granted(
        &self,
        key: &str,
        policy: usize,
        lease_time: Duration,
        grant: Option<Grant>,
        now: Instant,
    ) -> Vec<Unspent> {
        let (mut shard, _) = self.shards.lock(key);
        // Read under the shard's lock: a retirement that set it after drains this shard after.
        let retired = self.retired.load(Ordering::SeqCst);
        let held = match retired {
            true => None,
            false => shard.entry(key, policy, lease_time, now),
        };
        let Some(held) = held else {
            return grant
                .filter(|g| g.units > 0)
                .map(|g| Unspent::new(key, policy, g.units, g.at_us))
                .into_iter()
                .collect();
        };
        held.install(key, grant, now)
    }

    /// A store call of this instance took `units` on `key` at `at_us` by the store's clock
    /// (one [`Serve::Plain`] said to track): the lease's base counts them from now on, and a
    /// lease call under way counts them if it was made before them.
    pub(crate) fn took(&self, key: &str, at_us: u64, units: u64) {
        let (mut shard, _) = self.shards.lock(key);
        let Some(held) = shard.held.get_mut(key) else {
            return;
        };
        held.took(at_us, units);
    }

    /// The units of parcels over by `now`, taken out to be given back; keys idle for two
    /// lease times are forgotten.
    pub(crate) fn expired(&self, now: Instant) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        for mut shard in self.shards.each() {
            shard.held.retain(|key, held| {
                held.take_out(key, |p| now >= p.expires, &mut unspent);
                held.parcels.iter().any(|p| p.units > 0)
                    || held.pending
                    || now.saturating_duration_since(held.since) < 2 * held.lease_time
            });
        }
        unspent
    }

    /// Every lease's units, taken out to be given back, and no lease from now on: the
    /// policies these leases were lent under were replaced.
    pub(crate) fn retire(&self) -> Vec<Unspent> {
        self.retired.store(true, Ordering::SeqCst);
        let unspent = self.drain();
        for mut shard in self.shards.each() {
            shard.held.clear();
        }
        unspent
    }

    /// Every lease's units, taken out to be given back.
    pub(crate) fn drain(&self) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        for mut shard in self.shards.each() {
            for (key, held) in shard.held.iter_mut() {
                held.take_out(key, |_| true, &mut unspent);
            }
        }
        unspent
    }

    /// The units this instance may still spend on `key`.
    pub(crate) fn held(&self, key: &str, now: Instant) -> u64 {
        let (shard, _) = self.shards.lock(key);
        shard.held.get(key).map_or(0, |held| held.units(now))
    }

    /// Drops `key`'s lease, not given back (its bucket was reset).
    pub(crate) fn forget(&self, key: &str) {
        let (mut shard, _) = self.shards.lock(key);
        shard.held.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(units: u64, at_us: u64, expires: Instant) -> Option<Grant> {
        Some(Grant {
            units,
            at_us,
            expires,
            base: Decision::new(true, 100, 50, Duration::ZERO, Duration::ZERO),
        })
    }

    /// Finding 2 of issue 22: units left of one grant, joined by the next, kept the new
    /// grant's time, so a token bucket got them back near full worth. Each grant keeps its own.
    #[test]
    fn each_grant_gives_back_its_own_units_with_its_own_time() {
        let leases = Leases::new();
        let lease = Duration::from_secs(10);
        let now = Instant::now();
        let later = now + lease;
        assert!(matches!(
            leases.serve(0, "k", 1, lease, now),
            Serve::Plain { .. } | Serve::Lend { .. }
        ));
        assert!(
            leases
                .granted("k", 0, lease, grant(10, 1_000, later), now)
                .is_empty()
        );
        // Spend 6 of the first grant: the older parcel is spent first.
        for _ in 0..6 {
            match leases.serve(0, "k", 1, lease, now) {
                Serve::Lease { at_us, .. } => assert_eq!(at_us, 1_000),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            leases
                .granted("k", 0, lease, grant(8, 2_000, later), now)
                .is_empty()
        );
        assert_eq!(leases.held("k", now), 12);
        // The next request still spends the older grant's units.
        match leases.serve(0, "k", 1, lease, now) {
            Serve::Lease { at_us, .. } => assert_eq!(at_us, 1_000),
            other => panic!("{other:?}"),
        }
        let mut back: Vec<(u64, u64)> = leases
            .drain()
            .into_iter()
            .map(|u| (u.units, u.at_us))
            .collect();
        back.sort();
        assert_eq!(back, [(3, 1_000), (8, 2_000)]);
        assert_eq!(leases.held("k", now), 0);
    }

    /// A request the store decides while a lease call is under way (the lease was spent
    /// before the call came back): what it took counts in the lease's decisions when the store
    /// took it after it lent, and not twice when before. Before, a lease's decisions reported
    /// one unit more than the bucket had after such a race.
    #[test]
    fn a_store_call_racing_a_lease_call_counts_once() {
        let lease = Duration::from_secs(10);
        let now = Instant::now();
        let later = now + lease;
        for (took_at, remaining) in [(300, 50 - 1 + 5), (150, 50 + 5)] {
            let leases = Leases::new();
            for _ in 0..3 {
                let _ = leases.serve(0, "k", 1, lease, now);
            }
            assert!(matches!(
                leases.serve(0, "k", 1, lease, now),
                Serve::Lend { .. }
            ));
            assert!(
                leases
                    .granted("k", 0, lease, grant(4, 100, later), now)
                    .is_empty()
            );
            // Half spent: the next lease is asked for; the rest is spent meanwhile.
            let mut refilled = false;
            for _ in 0..4 {
                match leases.serve(0, "k", 1, lease, now) {
                    Serve::Lease { refill, .. } => refilled |= refill.is_some(),
                    other => panic!("{other:?}"),
                }
            }
            assert!(refilled);
            assert!(matches!(
                leases.serve(0, "k", 1, lease, now),
                Serve::Plain { track: true }
            ));
            leases.took("k", took_at, 1);
            assert!(
                leases
                    .granted("k", 0, lease, grant(6, 200, later), now)
                    .is_empty()
            );
            match leases.serve(0, "k", 1, lease, now) {
                Serve::Lease { decision, .. } => {
                    assert_eq!(decision.remaining, remaining, "took at {took_at}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A followed key's store calls are tracked, even a cold one's (a call made before a
    /// lease call may reach the store after it); once the table is retired, none is.
    #[test]
    fn followed_keys_are_tracked_until_the_table_retires() {
        let leases = Leases::new();
        let lease = Duration::from_secs(10);
        let now = Instant::now();
        assert!(matches!(
            leases.serve(0, "k", 1, lease, now),
            Serve::Plain { track: true }
        ));
        assert!(leases.retire().is_empty());
        assert!(matches!(
            leases.serve(0, "k", 1, lease, now),
            Serve::Plain { track: false }
        ));
    }

    /// A third grant pushes the oldest parcel out: what it has left goes back with its time.
    #[test]
    fn a_third_grant_gives_back_the_oldest() {
        let leases = Leases::new();
        let lease = Duration::from_secs(10);
        let now = Instant::now();
        let later = now + lease;
        let _ = leases.serve(0, "k", 1, lease, now);
        assert!(
            leases
                .granted("k", 0, lease, grant(4, 1, later), now)
                .is_empty()
        );
        assert!(
            leases
                .granted("k", 0, lease, grant(5, 2, later), now)
                .is_empty()
        );
        let pushed = leases.granted("k", 0, lease, grant(6, 3, later), now);
        let pushed: Vec<(u64, u64)> = pushed.iter().map(|u| (u.units, u.at_us)).collect();
        assert_eq!(pushed, [(4, 1)]);
        assert_eq!(leases.held("k", now), 11);
    }
}
