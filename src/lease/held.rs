//! One key's lease in [`Leases`](super::Leases): the parcels of units it holds, what the
//! store last said of its bucket, and the rate that sizes its next lease.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::table::{Grant, MAX_LEASED_KEYS, SHARDS, Unspent};
use crate::Decision;

/// The most store calls remembered per key while its lease call is under way: past that,
/// the latest ones are remembered as one, at the latest time (on the safe side: a lease's
/// decisions may then report fewer units than it has, never more).
const MAX_RACING: usize = 16;

#[derive(Debug, Default)]
pub(super) struct Shard {
    pub(super) held: HashMap<Box<str>, Held, foldhash::fast::RandomState>,
}

#[derive(Debug)]
pub(super) struct Held {
    pub(super) policy: usize,
    pub(super) lease_time: Duration,
    /// The units left to spend, by the grant that lent them: the older one first, spent
    /// first. Each keeps its own stamp, so what it gives back is credited where it was lent.
    pub(super) parcels: [Parcel; 2],
    /// The binding limit as the store last said, not counting the lease, less what this
    /// instance's own store calls took since.
    pub(super) base: Decision,
    /// When the store said `base`, by its clock, in microseconds.
    pub(super) base_at_us: u64,
    /// What this instance's store calls on the key took while a lease call was under way:
    /// when, by the store's clock, and how many units. The lease call's base counts those
    /// the store made before it, and not the others.
    pub(super) racing: Vec<(u64, u64)>,
    /// The size of the last lease: half of it spent, the next is taken.
    pub(super) granted: u64,
    /// A lease call is under way.
    pub(super) pending: bool,
    /// The last lease call lent nothing (a nearly empty bucket): no other until the next
    /// count.
    pub(super) dry: bool,
    /// Since when `asked` counts.
    pub(super) since: Instant,
    /// Units asked since `since`.
    pub(super) asked: u64,
    /// Units asked over the lease time before.
    pub(super) last: u64,
}

/// The units one lease call lent and no request spent yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parcel {
    pub(super) units: u64,
    /// When they may no longer be spent.
    pub(super) expires: Instant,
    /// The store's clock when they were lent, in microseconds.
    pub(super) at_us: u64,
}

impl Parcel {
    pub(super) fn live(&self, now: Instant) -> bool {
        self.units > 0 && now < self.expires
    }
}

impl Shard {
    /// `key`'s entry, made if the shard has room.
    pub(super) fn entry(
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
    pub(super) fn new(policy: usize, lease_time: Duration, now: Instant) -> Self {
        Self {
            policy,
            lease_time,
            parcels: [Parcel {
                units: 0,
                expires: now,
                at_us: 0,
            }; 2],
            base: Decision::new(true, 0, 0, Duration::ZERO, Duration::ZERO),
            base_at_us: 0,
            racing: Vec::new(),
            granted: 0,
            pending: false,
            dry: false,
            since: now,
            asked: 0,
            last: 0,
        }
    }

    /// The units of the parcels still running at `now`.
    pub(super) fn units(&self, now: Instant) -> u64 {
        self.parcels
            .iter()
            .filter(|p| p.live(now))
            .map(|p| p.units)
            .sum()
    }

    /// A store call of this instance took `units` at `at_us` by the store's clock: the base
    /// counts them unless the store said it after (at the same microsecond the order is
    /// unknown: counted, on the safe side), and a lease call under way remembers them.
    pub(super) fn took(&mut self, at_us: u64, units: u64) {
        if at_us >= self.base_at_us {
            self.base.remaining = self.base.remaining.saturating_sub(units);
        }
        if self.pending {
            let full = self.racing.len() >= MAX_RACING;
            match self.racing.last_mut() {
                Some(last) if full => *last = (last.0.max(at_us), last.1.saturating_add(units)),
                _ => self.racing.push((at_us, units)),
            }
        }
    }

    /// The key's lease call ended with `grant` (maybe nothing): installs it. Returns what to
    /// give back: the parcel it pushes out (two are kept) and one that ended meanwhile.
    pub(super) fn install(
        &mut self,
        key: &str,
        grant: Option<Grant>,
        now: Instant,
    ) -> Vec<Unspent> {
        self.pending = false;
        let Some(grant) = grant.filter(|g| g.units > 0) else {
            self.dry |= grant.is_some();
            self.racing.clear();
            return Vec::new();
        };
        let mut back = Vec::new();
        // The older parcel makes room; the newer one becomes the older, unless it is over.
        let newer = Parcel {
            units: grant.units,
            expires: grant.expires,
            at_us: grant.at_us,
        };
        let [pushed, mut older] = self.parcels;
        if pushed.units > 0 {
            back.push(self.unspent(key, pushed));
        }
        if older.units > 0 && now >= older.expires {
            back.push(self.unspent(key, older));
            older.units = 0;
        }
        self.parcels = [older, newer];
        self.base = grant.base;
        self.base_at_us = grant.at_us;
        // What this instance took after the store lent is not in the grant's base.
        for &(at_us, units) in &self.racing {
            if at_us >= self.base_at_us {
                self.base.remaining = self.base.remaining.saturating_sub(units);
            }
        }
        self.racing.clear();
        self.granted = grant.units;
        self.dry = false;
        back
    }

    /// Takes the units of the parcels `which` picks out into `unspent`, to be given back.
    pub(super) fn take_out(
        &mut self,
        key: &str,
        which: impl Fn(&Parcel) -> bool,
        unspent: &mut Vec<Unspent>,
    ) {
        for i in 0..self.parcels.len() {
            let parcel = self.parcels[i];
            if parcel.units > 0 && which(&parcel) {
                unspent.push(self.unspent(key, parcel));
                self.parcels[i].units = 0;
            }
        }
    }

    fn unspent(&self, key: &str, parcel: Parcel) -> Unspent {
        Unspent::new(key, self.policy, parcel.units, parcel.at_us)
    }
}
