//! Decisions over several limits at once, all or nothing.

use super::{BucketState, Observation};
use crate::limit::MAX_LIMITS;
use crate::limit::MAX_LOG_CAPACITY;
use crate::store::{Stamp, Taken};
use crate::{Decision, Limit, StoreError};

/// See [`BucketState::check_limits`].
pub(crate) fn check_limits(limits: &[Limit]) -> Result<(), StoreError> {
    if limits.is_empty() || limits.len() > MAX_LIMITS {
        return Err(StoreError::Invalid(format!(
            "{} limits in one call: 1 to {MAX_LIMITS} are allowed",
            limits.len()
        )));
    }
    let entries = log_entries(limits);
    if entries > MAX_LOG_CAPACITY {
        return Err(StoreError::Invalid(format!(
            "sliding logs of {entries} entries in all in one call: at most {MAX_LOG_CAPACITY}"
        )));
    }
    Ok(())
}

/// The entries the sliding logs among `limits` hold at most, together.
pub(crate) fn log_entries(limits: &[Limit]) -> u64 {
    limits
        .iter()
        .filter(|l| l.algorithm() == super::Algorithm::SlidingLog)
        .map(Limit::capacity)
        .sum()
}

/// See [`BucketState::decide_all`].
pub(crate) fn decide_all(
    limits: &[Limit],
    states: &mut [BucketState],
    now: u64,
    cost: u64,
) -> Result<Decision, StoreError> {
    let (observed, allowed) = take_all(limits, states, now, cost)?;
    Ok(decide_observed(
        limits,
        &observed[..limits.len()],
        allowed,
        cost,
    ))
}

/// See [`BucketState::decide_each`].
pub(crate) fn decide_each(
    limits: &[Limit],
    states: &mut [BucketState],
    now: u64,
    cost: u64,
) -> Result<Vec<Decision>, StoreError> {
    let (observed, allowed) = take_all(limits, states, now, cost)?;
    Ok(each_observed(
        limits,
        &observed[..limits.len()],
        allowed,
        cost,
    ))
}

/// See [`BucketState::take_each`].
pub(crate) fn take_each(
    limits: &[Limit],
    states: &mut [BucketState],
    now: u64,
    cost: u64,
) -> Result<Taken, StoreError> {
    let (observed, allowed) = take_all(limits, states, now, cost)?;
    let observed = &observed[..limits.len()];
    let stamp = allowed.then(|| Stamp::observed(limits, observed, now, cost.max(1)));
    Ok(Taken::new(
        each_observed(limits, observed, allowed, cost),
        stamp,
    ))
}

/// Observes every bucket and takes from all of them if every one allows: what was observed
/// (the first `limits.len()`) and whether the units were taken.
fn take_all(
    limits: &[Limit],
    states: &mut [BucketState],
    now: u64,
    cost: u64,
) -> Result<([Observation; MAX_LIMITS], bool), StoreError> {
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
    let mut allowed = true;
    for ((limit, state), seen) in limits
        .iter()
        .zip(states.iter_mut())
        .zip(observed.iter_mut())
    {
        let cost = limit.cost_of(cost);
        limit.settle(state, now);
        *seen = limit.observe(state, now, cost);
        allowed &= limit.allows(seen, cost);
    }
    if allowed {
        for ((limit, state), seen) in limits.iter().zip(states.iter_mut()).zip(observed.iter()) {
            limit.take(state, now, limit.cost_of(cost), seen);
        }
    }
    Ok((observed, allowed))
}

/// Every limit's decision for a request of `cost` whose limits were observed as `observed`,
/// in order, each with its position as [`Decision::index`]:
/// - when the request passed (`allowed`), what each limit has left after taking its units;
/// - when it was refused, what each limit said of it, nothing taken: `allowed` when that limit
///   alone would have let it through (then `retry_after` is zero), else its own wait.
pub(crate) fn each_observed(
    limits: &[Limit],
    observed: &[Observation],
    allowed: bool,
    cost: u64,
) -> Vec<Decision> {
    limits
        .iter()
        .zip(observed)
        .enumerate()
        .map(|(i, (limit, seen))| {
            let cost = limit.cost_of(cost);
            if allowed {
                limit.report(seen, true, cost).with_index(i)
            } else {
                limit.peek_observed(seen, cost).with_index(i)
            }
        })
        .collect()
}

/// Whether a request passed, from every limit's decision of it: all let it through (and so
/// took its units).
pub(crate) fn passed(each: &[Decision]) -> bool {
    each.iter().all(|d| d.allowed)
}

/// The decision that binds among every limit's (as [`each_observed`] reports them): the rule
/// of [`decide_observed`]. `None` when refused by none of them (a store that misreports).
pub(crate) fn binding(each: &[Decision]) -> Option<Decision> {
    let allowed = passed(each);
    each.iter().fold(None, |best, d| {
        binds(d, best, allowed).then_some(*d).or(best)
    })
}

/// Whether `d` binds rather than `best`: when the request was refused, a limit that refuses
/// it with a longer wait; when it passed, one with fewer units left. The first on a tie.
fn binds(d: &Decision, best: Option<Decision>, allowed: bool) -> bool {
    if allowed {
        best.is_none_or(|b| d.remaining < b.remaining)
    } else {
        !d.allowed && best.is_none_or(|b| d.retry_after > b.retry_after)
    }
}

/// The decision for a request of `cost` whose limits were observed as `observed`; `allowed`
/// when every one allowed (and took) it.
///
/// It reports one limit, [`Decision::index`]: when refused, the refusing limit with the
/// longest wait (a cost above a capacity waits forever, so that limit is the one); when
/// allowed, the one with the fewest units left; the first on a tie.
pub(crate) fn decide_observed(
    limits: &[Limit],
    observed: &[Observation],
    allowed: bool,
    cost: u64,
) -> Decision {
    let cost = cost.max(1);
    let mut best: Option<Decision> = None;
    for (i, (limit, seen)) in limits.iter().zip(observed).enumerate() {
        let cost = limit.cost_of(cost);
        let d = if allowed {
            limit.report(seen, true, cost)
        } else {
            limit.peek_observed(seen, cost)
        };
        if binds(&d, best, allowed) {
            best = Some(d.with_index(i));
        }
    }
    match best {
        // A refusal reports the request as refused, whatever the binding limit alone says.
        Some(d) => Decision { allowed, ..d },
        None => {
            // Refused, yet no limit refuses: only a store that misreports gets here. Report
            // the first limit as refusing rather than letting the request through.
            let first = &limits[0];
            first
                .report(&observed[0], false, first.cost_of(cost))
                .with_index(0)
        }
    }
}

/// The arithmetic of the Lua scripts, for a custom [`Store`](crate::store::Store).
impl BucketState {
    /// Checks the limits of one call: 1 to 8 of them, and sliding logs of at most
    /// 250 entries in all, so that no call costs the store more than one full
    /// sliding log.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] when there are none, too many, or too many log entries.
    pub fn check_limits(limits: &[Limit]) -> Result<(), StoreError> {
        check_limits(limits)
    }

    /// Decides a request of `cost` units against several buckets at once, all or nothing: it
    /// passes only if every limit allows it, and then takes the units from every bucket (updating
    /// `states`); otherwise nothing is taken (a state written by a clock ahead of `now` is only
    /// brought back within what it can mean now). `now` is microseconds since the Unix epoch (the
    /// windows are aligned to it); a cost of 0 counts as 1.
    ///
    /// This is the arithmetic of the Lua scripts (`lua/`), step for step: a custom
    /// [`Store`](crate::store::Store) that keeps one [`BucketState`] per bucket and calls this under its
    /// own lock decides as [`RedisStore`](crate::RedisStore) does.
    ///
    /// The decision reports one limit, [`Decision::index`]: when refused, the refusing limit with
    /// the longest wait (so `retry_after` is the longest wait among them); when allowed, the one
    /// with the fewest units left; the first on a tie. A cost above a limit's capacity can never
    /// pass: it is refused with a `retry_after` of [`Duration::MAX`](std::time::Duration::MAX).
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`], with nothing changed, when `limits` is empty, longer than
    /// 8, or not as long as `states`.
    pub fn decide_all(
        limits: &[Limit],
        states: &mut [BucketState],
        now: u64,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        decide_all(limits, states, now, cost)
    }

    /// [`BucketState::decide_all`], reporting every limit: in the order of `limits`, each one's decision, with
    /// its position as [`Decision::index`]. When the request passed, what each limit has left;
    /// when it was refused, what each said of it with nothing taken (`allowed` when that limit
    /// alone would have let it through, with a `retry_after` of zero).
    ///
    /// # Errors
    ///
    /// As [`BucketState::decide_all`].
    pub fn decide_each(
        limits: &[Limit],
        states: &mut [BucketState],
        now: u64,
        cost: u64,
    ) -> Result<Vec<Decision>, StoreError> {
        decide_each(limits, states, now, cost)
    }

    /// [`BucketState::decide_each`], stamped: every limit's decision and, when the request passed, where and
    /// when its units were taken (what [`Store::take`](crate::store::Store::take) answers).
    ///
    /// # Errors
    ///
    /// As [`BucketState::decide_all`].
    pub fn take_each(
        limits: &[Limit],
        states: &mut [BucketState],
        now: u64,
        cost: u64,
    ) -> Result<Taken, StoreError> {
        take_each(limits, states, now, cost)
    }
}
