//! Token bucket: `lua/token_bucket.lua`, step for step.
//!
//! A bucket is its "full at" time (µs); it refills one token every `interval` microseconds and
//! holds `fill = capacity × interval` microseconds' worth of tokens.

use std::time::Duration;

use super::{BucketState, Observation, Shape, us};
use crate::{Decision, Limit};

#[inline]
pub(super) fn observe(state: &BucketState, now: u64) -> Observation {
    let full_after = match *state {
        // At most one whole bucket ahead: `settle` saw to that.
        BucketState::FullAt(full_at) => full_at.saturating_sub(now),
        _ => 0,
    };
    Observation::TokenBucket { full_after }
}

#[inline]
pub(super) fn settle(limit: &Limit, state: &mut BucketState, now: u64) {
    if let BucketState::FullAt(full_at) = state {
        let latest = now.saturating_add(limit.window_us());
        if *full_at > latest {
            *full_at = latest;
        }
    }
}

pub(super) fn take(limit: &Limit, state: &mut BucketState, now: u64, cost: u64, full_after: u64) {
    let after = full_after.saturating_add(cost.saturating_mul(limit.interval_us()));
    *state = BucketState::FullAt(now.saturating_add(after));
}

/// The decision, from the bucket's wait until full before the request.
#[inline(always)]
pub(super) fn report(limit: &Limit, full_after: u64, took: bool, cost: u64) -> Decision {
    let fill = limit.window_us();
    let interval = limit.interval_us();
    // The bucket after the decision: full again in `after`.
    let after = if took {
        full_after.saturating_add(cost.saturating_mul(interval))
    } else {
        full_after
    };
    let remaining = fill.saturating_sub(after) / interval;
    let retry_after = if took {
        Duration::ZERO
    } else {
        // Until `cost` tokens exist: the bucket holds `fill − full_after` worth.
        us(full_after
            .saturating_add(cost.saturating_mul(interval))
            .saturating_sub(fill))
    };
    let available_after = if remaining == 0 {
        us(after.saturating_add(interval).saturating_sub(fill))
    } else {
        Duration::ZERO
    };
    Decision::reported(
        took,
        limit.capacity(),
        remaining,
        retry_after,
        us(after),
        available_after,
    )
}

/// Puts back `units` taken at `at`: what is still owed of their worth, which is their worth
/// less the time since (the bucket went on filling meanwhile, and what its capacity cut off
/// would have gone to them). The full-at time moves back by that much, at most to now (full).
pub(super) fn put_back(limit: &Limit, state: &mut BucketState, now: u64, at: u64, units: u64) {
    let owed = units
        .saturating_mul(limit.interval_us())
        .saturating_sub(now.saturating_sub(at));
    if let BucketState::FullAt(full_at) = *state
        && owed > 0
    {
        let back = full_at.saturating_sub(owed);
        *state = if back > now {
            BucketState::FullAt(back)
        } else {
            BucketState::New
        };
    }
}

pub(super) fn is_idle(state: &BucketState, now: u64) -> bool {
    match *state {
        BucketState::FullAt(full_at) => full_at <= now,
        _ => true,
    }
}

pub(super) fn used(shape: Shape, state: &BucketState, now: u64) -> u64 {
    match *state {
        BucketState::FullAt(full_at) => full_at.saturating_sub(now).div_ceil(shape.unit_us.max(1)),
        _ => 0,
    }
}
