//! Sliding window log: `lua/sliding_log.lua`, step for step.
//!
//! A bucket is the time (µs) each unit in it was taken, oldest first; a unit counts until it is
//! one window old. A request's units share one time, `max(now, newest + 1)`, so each request's
//! entries come strictly after the ones before (the script names them uniquely from it).

use std::collections::VecDeque;
use std::time::Duration;

use super::{BucketState, Observation, Shape, us};
use crate::{Decision, Limit};

static EMPTY: VecDeque<u64> = VecDeque::new();

/// The entries of `state`, and the index of the first one still in the window at `now`.
fn window(w: u64, state: &BucketState, now: u64) -> (&VecDeque<u64>, usize) {
    let BucketState::Log(log) = state else {
        return (&EMPTY, 0);
    };
    // An entry taken at or before `now − w` has left the window.
    let first = match now.checked_sub(w) {
        Some(gone) => log.partition_point(|&t| t <= gone),
        None => 0,
    };
    (log, first)
}

pub(super) fn observe(limit: &Limit, state: &BucketState, now: u64, cost: u64) -> Observation {
    let (entries, first) = window(limit.window_us(), state, now);
    let count = (entries.len() - first) as u64;
    let capacity = limit.capacity();
    let w = limit.window_us();
    // Microseconds until the n-th entry of the window leaves it.
    let leaves = |n: u64| {
        usize::try_from(n)
            .ok()
            .and_then(|n| entries.get(first.checked_add(n)?))
            .map_or(0, |&t| t.saturating_add(w).saturating_sub(now))
    };
    let newest = if count > 0 { leaves(count - 1) } else { 0 };
    let (mut oldest, mut needed) = (0, 0);
    if count.saturating_add(cost) > capacity {
        if count >= capacity {
            oldest = leaves(0);
        }
        let k = count.saturating_add(cost) - capacity;
        needed = if k < count { leaves(k - 1) } else { newest };
    } else if count > 0 && count + cost == capacity {
        oldest = leaves(0);
    }
    Observation::SlidingLog {
        count,
        oldest,
        newest,
        needed,
    }
}

pub(super) fn take(
    limit: &Limit,
    state: &mut BucketState,
    now: u64,
    cost: u64,
    count: u64,
    newest: u64,
) {
    let w = limit.window_us();
    let first = window(w, state, now).1;
    if !matches!(state, BucketState::Log(_)) {
        *state = BucketState::Log(Box::default());
    }
    let BucketState::Log(log) = state else {
        unreachable!("just made a log");
    };
    log.drain(..first);
    // The newest entry was taken at now + newest − w; entries that left are older than now.
    let base = if count > 0 && newest >= w {
        now.saturating_add(newest - w + 1)
    } else {
        now
    };
    let cost = usize::try_from(cost).unwrap_or(usize::MAX);
    log.extend(std::iter::repeat_n(base, cost));
    shrink(log);
}

/// Puts back up to `units` of the entries one take gave the time `at` (a take's entries share
/// a time no other take has).
pub(super) fn put_back(state: &mut BucketState, at: u64, units: u64) {
    let BucketState::Log(log) = state else {
        return;
    };
    let end = log.partition_point(|&t| t <= at);
    let start = log.partition_point(|&t| t < at);
    let drop = usize::try_from(units)
        .unwrap_or(usize::MAX)
        .min(end - start);
    log.drain(end - drop..end);
    shrink(log);
}

/// Gives back memory a past peak left behind.
fn shrink(log: &mut VecDeque<u64>) {
    if log.capacity() > 4 * log.len().max(8) {
        log.shrink_to(2 * log.len());
    }
}

#[inline(always)]
pub(super) fn report(
    limit: &Limit,
    count: u64,
    waits: [u64; 3],
    took: bool,
    cost: u64,
) -> Decision {
    let [oldest, newest, needed] = waits;
    let capacity = limit.capacity();
    let w = limit.window_us();
    if took {
        let remaining = capacity.saturating_sub(count + cost);
        // The request's entries, at now + base_after, are the newest now.
        let base_after = if count > 0 && newest >= w {
            newest - w + 1
        } else {
            0
        };
        let reset_after = us(base_after.saturating_add(w));
        let available_after = match remaining {
            0 if count > 0 => us(oldest),
            0 => reset_after,
            _ => Duration::ZERO,
        };
        return Decision::reported(
            true,
            capacity,
            remaining,
            Duration::ZERO,
            reset_after,
            available_after,
        );
    }
    let remaining = capacity.saturating_sub(count);
    let available_after = if remaining == 0 {
        us(oldest)
    } else {
        Duration::ZERO
    };
    Decision::reported(
        false,
        capacity,
        remaining,
        us(needed),
        us(newest),
        available_after,
    )
}

pub(super) fn is_idle(shape: Shape, state: &BucketState, now: u64) -> bool {
    let (entries, first) = window(shape.unit_us, state, now);
    first == entries.len()
}

pub(super) fn used(shape: Shape, state: &BucketState, now: u64) -> u64 {
    let (entries, first) = window(shape.unit_us, state, now);
    (entries.len() - first) as u64
}
