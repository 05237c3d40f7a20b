//! Concurrency: at most `capacity` requests in flight per key, each holding a slot from its
//! decision until it is released. `lua/concurrency.lua` keeps the slots in Redis (one sorted
//! set member per slot, scored by its lease's end, renewed while the request runs); here they
//! are a count, as the memory store keeps them.

use std::time::Duration;

use super::{BucketState, Observation};
use crate::{Decision, Limit};

/// The wait a refusal reports: a slot frees when some request ends, which no store can tell
/// in advance.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

fn in_use(state: &BucketState) -> u64 {
    match *state {
        BucketState::InFlight(n) => n,
        _ => 0,
    }
}

pub(super) fn observe(state: &BucketState) -> Observation {
    Observation::Concurrency {
        in_use: in_use(state),
    }
}

pub(super) fn take(state: &mut BucketState, in_use: u64) {
    *state = BucketState::InFlight(in_use.saturating_add(1));
}

/// Frees one slot.
pub(super) fn release(state: &mut BucketState) {
    *state = match in_use(state) {
        0 | 1 => BucketState::New,
        n => BucketState::InFlight(n - 1),
    };
}

#[inline(always)]
pub(super) fn report(limit: &Limit, in_use: u64, took: bool) -> Decision {
    let capacity = limit.capacity();
    let held = in_use.saturating_add(u64::from(took));
    let remaining = capacity.saturating_sub(held);
    let wait = if remaining == 0 {
        RETRY_AFTER
    } else {
        Duration::ZERO
    };
    Decision::reported(
        took,
        capacity,
        remaining,
        if took { Duration::ZERO } else { RETRY_AFTER },
        if held > 0 {
            RETRY_AFTER
        } else {
            Duration::ZERO
        },
        wait,
    )
}

pub(super) fn is_idle(state: &BucketState) -> bool {
    in_use(state) == 0
}

pub(super) fn used(state: &BucketState) -> u64 {
    in_use(state)
}
