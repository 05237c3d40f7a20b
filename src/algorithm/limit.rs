//! The one `impl Limit` of the arithmetic every store shares: settle, observe, allow, take and
//! report a request; decide, peek and refund one bucket. Each algorithm's own steps are in its
//! module.

use std::time::Duration;

use super::{
    Algorithm, BucketState, Observation, Shape, concurrency, sliding_log, token_bucket, window,
};
use crate::{Decision, Limit};

impl Limit {
    pub(crate) fn shape(&self) -> Shape {
        Shape {
            algorithm: self.algorithm(),
            unit_us: self.interval_us(),
        }
    }

    /// Brings `state` back within what it can mean at `now` when the clock stepped back since
    /// it was written, as the scripts do: a token bucket full further ahead than one whole
    /// bucket becomes empty now (so it is never held for longer than it takes to fill); a window
    /// later than now's becomes now's, counts and all (so it ends when now's window does).
    pub(crate) fn settle(&self, state: &mut BucketState, now: u64) {
        match self.algorithm() {
            Algorithm::TokenBucket => token_bucket::settle(self, state, now),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => window::settle(self, state, now),
            Algorithm::SlidingLog | Algorithm::Concurrency => {}
        }
    }

    /// What a store sees of `state`, once [settled](Self::settle), before a request of `cost`
    /// at `now` (µs since the Unix epoch): the `observe` half of the limit's Lua script.
    #[inline]
    pub(crate) fn observe(&self, state: &BucketState, now: u64, cost: u64) -> Observation {
        match self.algorithm() {
            Algorithm::TokenBucket => token_bucket::observe(state, now),
            Algorithm::FixedWindow => window::observe_fixed(self, state, now),
            Algorithm::SlidingWindow => window::observe_sliding(self, state, now),
            Algorithm::SlidingLog => sliding_log::observe(self, state, now, cost),
            Algorithm::Concurrency => concurrency::observe(state),
        }
    }

    /// Whether a request of `cost` fits the bucket observed.
    #[inline]
    pub(crate) fn allows(&self, observed: &Observation, cost: u64) -> bool {
        match *observed {
            Observation::TokenBucket { full_after } => {
                full_after.saturating_add(cost.saturating_mul(self.interval_us()))
                    <= self.window_us()
            }
            Observation::FixedWindow { current, .. } => {
                current.saturating_add(cost) <= self.capacity()
            }
            Observation::SlidingWindow {
                current,
                previous,
                elapsed_ms,
            } => window::estimate(self, previous, current.saturating_add(cost), elapsed_ms)
                .is_some_and(|used| used <= u128::from(self.capacity()) * window::wide(self)),
            Observation::SlidingLog { count, .. } => count.saturating_add(cost) <= self.capacity(),
            // One slot, whatever the cost.
            Observation::Concurrency { in_use } => in_use < self.capacity(),
        }
    }

    /// Takes a request of `cost` from `state`, observed as `observed` at `now`: the `take` half
    /// of the limit's Lua script. Only called when every limit of the request allows it.
    #[inline]
    pub(crate) fn take(
        &self,
        state: &mut BucketState,
        now: u64,
        cost: u64,
        observed: &Observation,
    ) {
        match *observed {
            Observation::TokenBucket { full_after } => {
                token_bucket::take(self, state, now, cost, full_after);
            }
            Observation::FixedWindow { current, .. } => {
                window::take(self, state, now, cost, current, 0);
            }
            Observation::SlidingWindow {
                current, previous, ..
            } => window::take(self, state, now, cost, current, previous),
            Observation::SlidingLog { count, newest, .. } => {
                sliding_log::take(self, state, now, cost, count, newest);
            }
            Observation::Concurrency { in_use } => concurrency::take(state, in_use),
        }
    }

    /// The decision this limit reports for a request of `cost`, observed as `observed`:
    /// `took` when the request passed (and took its units), else refused.
    #[inline(always)]
    pub(crate) fn report(&self, observed: &Observation, took: bool, cost: u64) -> Decision {
        let cost = cost.max(1);
        let mut decision = match *observed {
            Observation::TokenBucket { full_after } => {
                token_bucket::report(self, full_after, took, cost)
            }
            Observation::FixedWindow {
                current,
                elapsed_ms,
            } => window::report_fixed(self, current, elapsed_ms, took, cost),
            Observation::SlidingWindow {
                current,
                previous,
                elapsed_ms,
            } => window::report_sliding(self, current, previous, elapsed_ms, took, cost),
            Observation::SlidingLog {
                count,
                oldest,
                newest,
                needed,
            } => sliding_log::report(self, count, [oldest, newest, needed], took, cost),
            Observation::Concurrency { in_use } => return concurrency::report(self, in_use, took),
        };
        if !took && cost > self.capacity() {
            // A cost above the capacity can never pass, whatever the bucket holds.
            decision.retry_after = Duration::MAX;
        }
        decision
    }

    /// Decides a request of `cost` against one bucket at `now` (µs since the Unix epoch),
    /// taking the units from `state` when it passes; [`BucketState::decide_all`](crate::store::BucketState::decide_all) with one limit.
    #[inline(always)]
    pub fn decide(&self, state: &mut BucketState, now: u64, cost: u64) -> Decision {
        let cost = self.cost_of(cost.max(1));
        self.settle(state, now);
        let seen = self.observe(state, now, cost);
        let allowed = self.allows(&seen, cost);
        if allowed {
            self.take(state, now, cost, &seen);
        }
        self.report(&seen, allowed, cost)
    }
}

impl Limit {
    /// What a request of `cost` (0 counts as 1) would get from the bucket `state` at `now`,
    /// without taking anything: `allowed` and `retry_after` as they would be, `remaining` and
    /// `reset_after` as the bucket is. The arithmetic of `lua/peek.lua`.
    pub fn peek(&self, state: &BucketState, now: u64, cost: u64) -> Decision {
        let cost = self.cost_of(cost.max(1));
        let seen = match self.observe(state, now, cost) {
            // As `settle` would see it, without writing: at most one whole bucket ahead.
            Observation::TokenBucket { full_after } => Observation::TokenBucket {
                full_after: full_after.min(self.window_us()),
            },
            seen => seen,
        };
        self.peek_observed(&seen, cost)
    }

    /// What a request of `cost` would get from the bucket observed as `seen`.
    pub(crate) fn peek_observed(&self, seen: &Observation, cost: u64) -> Decision {
        let cost = cost.max(1);
        let allowed = self.allows(seen, cost);
        let decision = self.report(seen, false, cost);
        Decision {
            allowed,
            retry_after: if allowed {
                Duration::ZERO
            } else {
                decision.retry_after
            },
            ..decision
        }
    }

    /// Puts back, at `now`, what one take counted in the bucket `state`: `units` of it, and
    /// its slot when `free_slot`. `mark` is where the take's units are
    /// ([`Stamp::mark`](crate::store::Stamp::mark): the take's time, or a sliding log's entry
    /// time) and `taken` how many this limit counted. Only what is still owed where it was
    /// counted comes back (see [`Store::put_back`](crate::store::Store::put_back)): a token bucket
    /// gets their worth less the refill since `mark`, at most full now; a window only while it
    /// is the window of `mark` (a sliding window: or the one after, in its previous count); a
    /// sliding log the entries at `mark`; a concurrency limit one slot. The arithmetic of
    /// `lua/put_back.lua`.
    pub fn put_back(
        &self,
        state: &mut BucketState,
        now: u64,
        mark: u64,
        units: u64,
        free_slot: bool,
    ) {
        self.settle(state, now);
        match self.algorithm() {
            Algorithm::TokenBucket => token_bucket::put_back(self, state, now, mark, units),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                window::put_back(self, state, mark, units);
            }
            Algorithm::SlidingLog => sliding_log::put_back(state, mark, units),
            Algorithm::Concurrency if free_slot => concurrency::release(state),
            Algorithm::Concurrency => {}
        }
    }

    /// Takes `units` from the bucket `state` at `now` whatever it holds, down to empty at
    /// most: a request's cost settled above what it reserved. A token bucket's full-at time
    /// moves ahead by their worth, at most one whole bucket from now; a window counts them,
    /// up to its capacity; a sliding log adds an entry for each, up to its capacity. What
    /// would go below empty is not kept, so a bucket's state stays within what a decision
    /// can leave (a clock that steps back never holds it longer, and the scripts' arithmetic
    /// stays exact). The arithmetic of `lua/charge.lua`.
    pub fn charge(&self, state: &mut BucketState, now: u64, units: u64) {
        if units == 0 {
            return;
        }
        self.settle(state, now);
        let seen = self.observe(state, now, units);
        let room = match seen {
            Observation::TokenBucket { full_after } => {
                let after = full_after
                    .saturating_add(units.saturating_mul(self.interval_us()))
                    .min(self.window_us());
                if after > full_after {
                    *state = BucketState::FullAt(now.saturating_add(after));
                }
                return;
            }
            Observation::FixedWindow { current, .. }
            | Observation::SlidingWindow { current, .. } => current,
            Observation::SlidingLog { count, .. } => count,
            // Slots are taken by decisions only.
            Observation::Concurrency { .. } => return,
        };
        let units = units.min(self.capacity().saturating_sub(room));
        if units > 0 {
            self.take(state, now, units, &seen);
        }
    }
}
