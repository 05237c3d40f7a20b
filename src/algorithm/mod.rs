//! The four algorithms a [`Limit`] can use, and the arithmetic every store shares.
//!
//! | algorithm | a client may send | accuracy | state per bucket |
//! |---|---|---|---|
//! | [`TokenBucket`](Algorithm::TokenBucket) (default) | `capacity` at once, then one more every `period / refill` | exact | one integer |
//! | [`SlidingLog`](Algorithm::SlidingLog) | `capacity` in any `period`-long span | exact | one entry per unit in the window (at most `capacity`) |
//! | [`SlidingWindow`](Algorithm::SlidingWindow) | about `capacity` in any `period`-long span | estimate: assumes the previous window's units were spread evenly over it | two counters |
//! | [`FixedWindow`](Algorithm::FixedWindow) | `capacity` per window (aligned to the Unix epoch) | exact per window, but up to 2 × `capacity` across a window edge | one counter |
//!
//! Each algorithm has one Lua script in `lua/` that [`RedisStore`](crate::RedisStore) runs, and
//! the same arithmetic here, which [`MemoryStore`](crate::MemoryStore) runs: given the same
//! requests at the same times, both give the same [`Decision`]. A request under several limits is
//! decided by one call, all or nothing, whatever their algorithms.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Algorithm, Limit};
//!
//! # fn main() -> Result<(), tollgate::ConfigError> {
//! // At most 100 requests in any minute, counted exactly.
//! let exact = Limit::sliding_log("minute", 100, Duration::from_secs(60))?;
//! // 10,000 a day, the day starting at midnight UTC.
//! let daily = Limit::fixed_window("daily", 10_000, Duration::from_secs(86_400))?;
//! assert_eq!(daily.algorithm(), Algorithm::FixedWindow);
//! # let _ = exact;
//! # Ok(())
//! # }
//! ```
//!
//! # The known errors of the window counters
//!
//! - A fixed window counts each window on its own: a client can spend `capacity` just before
//!   an edge and `capacity` again just after it, so a span of one period around an edge can
//!   hold up to 2 × `capacity`.
//! - The sliding window counter estimates the sliding window as the current window's units
//!   plus the previous window's, weighted by the share of the previous window that the sliding
//!   window still covers. When the previous window's units came at its end (a burst just before
//!   the edge), the estimate is low and a span of one period can hold up to about
//!   2 × `capacity` in the worst case; when they came at its start, the estimate is high and the
//!   client is held back early. Under traffic spread evenly it is exact; Cloudflare measured
//!   0.003% of requests wrongly allowed or limited on real traffic.

use std::collections::VecDeque;
use std::time::Duration;

use crate::{ConfigError, Decision, Limit, MAX_LIMITS, StoreError};

mod sliding_log;
mod token_bucket;
mod window;

/// How a [`Limit`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Units come back one at a time, continuously (`refill` per `period`); a full bucket lets
    /// `capacity` pass at once. The default.
    #[default]
    TokenBucket,
    /// Every unit taken is remembered until it is one period old; at most `capacity` units in
    /// any span of one period. Exact; memory grows with the capacity.
    SlidingLog,
    /// Two fixed windows, the previous weighted by how much of it the sliding window still
    /// covers: nearly exact, with the memory of a counter.
    SlidingWindow,
    /// At most `capacity` units per period, the periods aligned to the Unix epoch: the
    /// cheapest, but up to 2 × `capacity` across a window edge.
    FixedWindow,
}

impl Algorithm {
    /// Every algorithm, in the order of the configuration names.
    pub const ALL: [Algorithm; 4] = [
        Self::TokenBucket,
        Self::SlidingLog,
        Self::SlidingWindow,
        Self::FixedWindow,
    ];

    /// The name in configuration files: `token_bucket`, `sliding_log`, `sliding_window` or
    /// `fixed_window`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenBucket => "token_bucket",
            Self::SlidingLog => "sliding_log",
            Self::SlidingWindow => "sliding_window",
            Self::FixedWindow => "fixed_window",
        }
    }

    /// The code the Lua driver dispatches on (`lua/decide.lua`).
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::TokenBucket => "t",
            Self::SlidingLog => "l",
            Self::SlidingWindow => "s",
            Self::FixedWindow => "f",
        }
    }

    /// What the bucket key ends with, so that buckets of different algorithms (whose Redis
    /// types differ) never share a key. The token bucket's keys have no suffix.
    pub(crate) fn key_suffix(self) -> &'static str {
        match self {
            Self::TokenBucket => "",
            Self::SlidingLog => ":sl",
            Self::SlidingWindow => ":sw",
            Self::FixedWindow => ":fw",
        }
    }
}

/// The longest [`Algorithm::key_suffix`].
pub(crate) const MAX_SUFFIX_LEN: usize = 3;

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ConfigError::Invalid {
                field: "algorithm",
                value: s.to_owned(),
                reason: "must be \"token_bucket\", \"sliding_log\", \"sliding_window\" or \"fixed_window\"",
            })
    }
}

/// What a store saw of one bucket before a request: exactly the numbers the Lua scripts
/// return (`lua/decide.lua`), from which [`Limit::report`] makes the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observation {
    /// Microseconds until the bucket is full, clamped to `[0, fill]`.
    TokenBucket { full_after: u64 },
    /// Units counted in this window; whole milliseconds since it began.
    FixedWindow { current: u64, elapsed_ms: u64 },
    /// Units of this window and of the previous one; whole milliseconds since this began.
    SlidingWindow {
        current: u64,
        previous: u64,
        elapsed_ms: u64,
    },
    /// Entries in the window, and microseconds until entries leave it: the oldest (when the
    /// bucket is or becomes exhausted, else 0), the newest (0 when empty), and, when the
    /// request does not fit, the one whose leaving makes room for it (else 0).
    SlidingLog {
        count: u64,
        oldest: u64,
        newest: u64,
        needed: u64,
    },
}

impl Observation {
    /// Reads the observation of a limit of `algorithm` from the script's numbers, taking as
    /// many as the algorithm observes; `None` when one is missing or not a number.
    pub(crate) fn read(
        algorithm: Algorithm,
        numbers: &mut impl Iterator<Item = Option<u64>>,
    ) -> Option<Self> {
        let mut next = || numbers.next().flatten();
        Some(match algorithm {
            Algorithm::TokenBucket => Self::TokenBucket {
                full_after: next()?,
            },
            Algorithm::FixedWindow => Self::FixedWindow {
                current: next()?,
                elapsed_ms: next()?,
            },
            Algorithm::SlidingWindow => Self::SlidingWindow {
                current: next()?,
                previous: next()?,
                elapsed_ms: next()?,
            },
            Algorithm::SlidingLog => Self::SlidingLog {
                count: next()?,
                oldest: next()?,
                newest: next()?,
                needed: next()?,
            },
        })
    }

    /// Reads the one integer a single token-bucket or fixed-window limit replies with
    /// (`lua/decide.lua`): whether it allowed, and what it observed.
    pub(crate) fn from_packed(limit: &Limit, reply: i64) -> Option<(bool, Self)> {
        let (allowed, packed) = if reply > 0 {
            (true, u64::try_from(reply - 1).ok()?)
        } else {
            (false, u64::try_from(-1 - reply).ok()?)
        };
        let observation = match limit.algorithm() {
            Algorithm::TokenBucket => Self::TokenBucket { full_after: packed },
            Algorithm::FixedWindow => {
                let window = limit.window_ms();
                Self::FixedWindow {
                    current: packed / window,
                    elapsed_ms: packed % window,
                }
            }
            _ => return None,
        };
        Some((allowed, observation))
    }
}

/// The state of one bucket, for a [`Store`](crate::Store) that keeps buckets itself and
/// decides with [`decide_all`] (as [`MemoryStore`](crate::MemoryStore) does); the same as
/// what the Lua scripts keep in Redis, so a store can save and load it.
///
/// A new state ([`Default`]) is a bucket never used: whole. A state is only meaningful with
/// the limit it was used with; given to another algorithm it counts as new. Times are
/// microseconds on the clock the decisions use (since the Unix epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BucketState {
    /// Never used: whole.
    #[default]
    New,
    /// A token bucket: full again at this time. (Redis: the key's integer value.)
    FullAt(u64),
    /// A fixed or sliding window: the window's index (its start divided by its length), the
    /// units counted in it and, for the sliding window, in the one before. (Redis: a hash
    /// `{i, c, p}`.)
    Window {
        /// The window's index.
        index: u64,
        /// Units counted in it.
        current: u64,
        /// Units counted in the window before (sliding window only).
        previous: u64,
    },
    /// A sliding log: the time each unit in it was taken, oldest first. (Redis: a sorted set
    /// scored by these times.)
    Log(Box<VecDeque<u64>>),
}

/// What a bucket's state means without the rest of its limit: the algorithm and its time unit
/// (a token bucket's interval, or the window), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) algorithm: Algorithm,
    pub(crate) unit_us: u64,
}

impl Shape {
    fn window_ms(self) -> u64 {
        (self.unit_us / 1000).max(1)
    }
}

impl BucketState {
    /// Whether the bucket is as good as new at `now` (full, its windows over, its entries
    /// gone): a store may forget it.
    pub fn is_idle(&self, limit: &Limit, now: u64) -> bool {
        self.idle(limit.shape(), now)
    }

    /// The units the bucket holds back at `now` (rounded up): what a client would get back if
    /// the store forgot it.
    pub fn used(&self, limit: &Limit, now: u64) -> u64 {
        self.used_by(limit.shape(), now)
    }

    pub(crate) fn idle(&self, shape: Shape, now: u64) -> bool {
        match shape.algorithm {
            Algorithm::TokenBucket => token_bucket::is_idle(self, now),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => window::is_idle(shape, self, now),
            Algorithm::SlidingLog => sliding_log::is_idle(shape, self, now),
        }
    }

    pub(crate) fn used_by(&self, shape: Shape, now: u64) -> u64 {
        match shape.algorithm {
            Algorithm::TokenBucket => token_bucket::used(shape, self, now),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => window::used(shape, self, now),
            Algorithm::SlidingLog => sliding_log::used(shape, self, now),
        }
    }
}

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
            Algorithm::SlidingLog => {}
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
        }
    }

    /// The decision this limit reports for a request of `cost`, observed as `observed`:
    /// `took` when the request passed (and took its units), else refused.
    #[inline]
    pub(crate) fn report(&self, observed: &Observation, took: bool, cost: u64) -> Decision {
        let cost = cost.max(1);
        let decision = match *observed {
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
        };
        if !took && cost > self.capacity() {
            // A cost above the capacity can never pass, whatever the bucket holds.
            return Decision {
                retry_after: Duration::MAX,
                ..decision
            };
        }
        decision
    }

    /// Decides a request of `cost` against one bucket at `now` (µs since the Unix epoch),
    /// taking the units from `state` when it passes; [`decide_all`] with one limit.
    #[inline]
    pub fn decide(&self, state: &mut BucketState, now: u64, cost: u64) -> Decision {
        let cost = cost.max(1);
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
        let cost = cost.max(1);
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

    /// Gives `units` back to the bucket `state` at `now`, as if that many fewer had been
    /// taken: a token bucket is at most full now; a window's count never goes below zero
    /// (a sliding window takes from this window first, then the previous one; a fixed window
    /// gives nothing back to a window that has ended); a sliding log drops its newest entries.
    /// The arithmetic of `lua/refund.lua`.
    pub fn refund(&self, state: &mut BucketState, now: u64, units: u64) {
        self.settle(state, now);
        match self.algorithm() {
            Algorithm::TokenBucket => token_bucket::refund(self, state, now, units),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                window::refund(self, state, now, units);
            }
            Algorithm::SlidingLog => sliding_log::refund(self, state, now, units),
        }
    }
}

/// Checks the limits of one call: 1 to [`MAX_LIMITS`] of them.
///
/// # Errors
///
/// [`StoreError::Invalid`] when there are none or too many.
pub fn check_limits(limits: &[Limit]) -> Result<(), StoreError> {
    if limits.is_empty() || limits.len() > MAX_LIMITS {
        return Err(StoreError::Invalid(format!(
            "{} limits in one call: 1 to {MAX_LIMITS} are allowed",
            limits.len()
        )));
    }
    Ok(())
}

/// Decides a request of `cost` units against several buckets at once, all or nothing: it
/// passes only if every limit allows it, and then takes the units from every bucket (updating
/// `states`); otherwise nothing is taken (a state written by a clock ahead of `now` is only
/// brought back within what it can mean now). `now` is microseconds since the Unix epoch (the
/// windows are aligned to it); a cost of 0 counts as 1.
///
/// This is the arithmetic of the Lua scripts (`lua/`), step for step: a custom
/// [`Store`](crate::Store) that keeps one [`BucketState`] per bucket and calls this under its
/// own lock decides as [`RedisStore`](crate::RedisStore) does.
///
/// The decision reports one limit, [`Decision::index`]: when refused, the refusing limit with
/// the longest wait (so `retry_after` is the longest wait among them); when allowed, the one
/// with the fewest units left; the first on a tie. A cost above a limit's capacity can never
/// pass: it is refused with a `retry_after` of [`Duration::MAX`].
///
/// # Errors
///
/// [`StoreError::Invalid`], with nothing changed, when `limits` is empty, longer than
/// [`MAX_LIMITS`], or not as long as `states`.
pub fn decide_all(
    limits: &[Limit],
    states: &mut [BucketState],
    now: u64,
    cost: u64,
) -> Result<Decision, StoreError> {
    check_limits(limits)?;
    if limits.len() != states.len() {
        return Err(StoreError::Invalid(format!(
            "{} limits and {} bucket states",
            limits.len(),
            states.len()
        )));
    }
    let cost = cost.max(1);
    let mut observed = [Observation::TokenBucket { full_after: 0 }; MAX_LIMITS];
    let observed = &mut observed[..limits.len()];
    let mut allowed = true;
    for ((limit, state), seen) in limits
        .iter()
        .zip(states.iter_mut())
        .zip(observed.iter_mut())
    {
        limit.settle(state, now);
        *seen = limit.observe(state, now, cost);
        allowed &= limit.allows(seen, cost);
    }
    if allowed {
        for ((limit, state), seen) in limits.iter().zip(states.iter_mut()).zip(observed.iter()) {
            limit.take(state, now, cost, seen);
        }
    }
    Ok(decide_observed(limits, observed, allowed, cost))
}

/// The decision for a request of `cost` whose limits were observed as `observed`; `allowed`
/// when every one allowed (and took) it.
pub(crate) fn decide_observed(
    limits: &[Limit],
    observed: &[Observation],
    allowed: bool,
    cost: u64,
) -> Decision {
    let cost = cost.max(1);
    let mut best: Option<Decision> = None;
    for (i, (limit, seen)) in limits.iter().zip(observed).enumerate() {
        if allowed {
            let d = limit.report(seen, true, cost).with_index(i);
            if best.is_none_or(|b| d.remaining < b.remaining) {
                best = Some(d);
            }
        } else if cost > limit.capacity() {
            // Can never pass: say so, whatever the other limits say.
            return limit.report(seen, false, cost).with_index(i);
        } else if !limit.allows(seen, cost) {
            let d = limit.report(seen, false, cost).with_index(i);
            if best.is_none_or(|b| d.retry_after > b.retry_after) {
                best = Some(d);
            }
        }
    }
    best.unwrap_or_else(|| {
        // Refused, yet no limit refuses: only a store that misreports gets here. Report the
        // first limit as refusing rather than letting the request through.
        limits[0].report(&observed[0], false, cost).with_index(0)
    })
}

/// Microseconds as a duration.
#[inline]
fn us(us: u64) -> Duration {
    Duration::from_micros(us)
}

#[cfg(test)]
mod tests;
