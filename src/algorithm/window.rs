//! Fixed window and sliding window counter: `lua/fixed_window.lua` and
//! `lua/sliding_window.lua`, step for step.
//!
//! Both count in windows of `w` milliseconds aligned to the epoch of the clock (window `i`
//! covers `[i·w, (i + 1)·w)`), kept as `{index, current, previous}`. Time is taken in whole
//! milliseconds, as the scripts do.

use std::time::Duration;

use super::{BucketState, Shape, us};
use crate::{Decision, Limit};

/// The window's length in milliseconds, wide.
pub(super) fn wide(limit: &Limit) -> u128 {
    u128::from(limit.window_ms())
}

/// `now` (µs) as (window index, whole milliseconds elapsed in a window of `w` ms).
fn position(w: u64, now: u64) -> (u64, u64) {
    let now_ms = now / 1000;
    (now_ms / w, now_ms % w)
}

/// The counters of `state` as of the window of `now`: (current, previous). (A window index
/// later than now's, written by a clock ahead, was settled into now's.)
fn counters(state: &BucketState, index: u64) -> (u64, u64) {
    match *state {
        BucketState::Window {
            index: i,
            current,
            previous,
        } if i >= index => (current, previous),
        BucketState::Window {
            index: i, current, ..
        } if i + 1 == index => (0, current),
        _ => (0, 0),
    }
}

pub(super) fn settle(limit: &Limit, state: &mut BucketState, now: u64) {
    let (index, _) = position(limit.window_ms(), now);
    if let BucketState::Window { index: i, .. } = state
        && *i > index
    {
        *i = index;
    }
}

pub(super) fn observe_fixed(limit: &Limit, state: &BucketState, now: u64) -> super::Observation {
    let (index, elapsed_ms) = position(limit.window_ms(), now);
    super::Observation::FixedWindow {
        current: counters(state, index).0,
        elapsed_ms,
    }
}

pub(super) fn observe_sliding(limit: &Limit, state: &BucketState, now: u64) -> super::Observation {
    let (index, elapsed_ms) = position(limit.window_ms(), now);
    let (current, previous) = counters(state, index);
    super::Observation::SlidingWindow {
        current,
        previous,
        elapsed_ms,
    }
}

/// Counts `cost` into the window of `now`. A window that has counted anything counts at least
/// 1, so `current > 0` means the state holds this window (as the scripts reason).
pub(super) fn take(
    limit: &Limit,
    state: &mut BucketState,
    now: u64,
    cost: u64,
    current: u64,
    previous: u64,
) {
    if current > 0
        && let BucketState::Window { current: c, .. } = state
    {
        *c = c.saturating_add(cost);
        return;
    }
    *state = BucketState::Window {
        index: position(limit.window_ms(), now).0,
        current: cost,
        previous,
    };
}

/// The sliding window's count, times `w`: `previous·(w − e) + current·w`; `None` when the
/// elapsed time is past the window (only a misreporting store says so).
/// Puts back `units` taken at `at` into the window that counted them: its count while the
/// state is that window, or (a sliding window) its previous count once the state is the
/// window after; never below zero. A window that has ended is owed nothing: a later window
/// never counted the units.
pub(super) fn put_back(limit: &Limit, state: &mut BucketState, at: u64, units: u64) {
    let (taken, _) = position(limit.window_ms(), at);
    let sliding = limit.algorithm() == super::Algorithm::SlidingWindow;
    if let BucketState::Window {
        index,
        current,
        previous,
    } = state
    {
        if *index == taken {
            *current -= units.min(*current);
        } else if sliding && *index == taken + 1 {
            *previous -= units.min(*previous);
        }
    }
}

/// The sliding window's count, times `w`: `previous·(w − e) + current·w`; `None` when the
/// elapsed time is past the window (only a misreporting store says so).
pub(super) fn estimate(
    limit: &Limit,
    previous: u64,
    current: u64,
    elapsed_ms: u64,
) -> Option<u128> {
    let w = wide(limit);
    let left = w.checked_sub(u128::from(elapsed_ms))?;
    Some(u128::from(previous) * left + u128::from(current) * w)
}

#[inline(always)]
pub(super) fn report_fixed(
    limit: &Limit,
    current: u64,
    elapsed_ms: u64,
    took: bool,
    cost: u64,
) -> Decision {
    let capacity = limit.capacity();
    let to_end = us(limit.window_ms().saturating_sub(elapsed_ms) * 1000);
    let (remaining, counted) = if took {
        (capacity.saturating_sub(current + cost), current + cost)
    } else {
        (capacity.saturating_sub(current), current)
    };
    let retry_after = if took { Duration::ZERO } else { to_end };
    let reset_after = if counted > 0 { to_end } else { Duration::ZERO };
    Decision::reported(
        took,
        capacity,
        remaining,
        retry_after,
        reset_after,
        if remaining == 0 {
            to_end
        } else {
            Duration::ZERO
        },
    )
}

/// Milliseconds from the start of the current millisecond until a request of `cost` fits a
/// sliding window holding `previous` and `current`, `elapsed_ms` into the current window, if
/// nothing else is counted meanwhile. `cost` is at most the capacity.
fn wait_ms(limit: &Limit, previous: u64, current: u64, elapsed_ms: u64, cost: u64) -> u64 {
    let w = wide(limit);
    let e = u128::from(elapsed_ms).min(w);
    let capacity = u128::from(limit.capacity());
    let (previous, current, cost) = (u128::from(previous), u128::from(current), u128::from(cost));
    if previous * (w - e) + (current + cost) * w <= capacity * w {
        return 0;
    }
    let wait = if current + cost <= capacity {
        // Later in this window, once enough of the previous window has slid out:
        // previous·(w − e') ≤ room·w.
        let room = capacity - current - cost;
        let at = w - (room * w / previous.max(1));
        at.saturating_sub(e)
    } else {
        // In the next window, where this window is the previous one and nothing is counted yet:
        // current·(w − e'') ≤ (capacity − cost)·w.
        let at = w - ((capacity - cost.min(capacity)) * w / current.max(1));
        (w - e) + at
    };
    u64::try_from(wait).unwrap_or(u64::MAX)
}

#[inline(always)]
pub(super) fn report_sliding(
    limit: &Limit,
    current: u64,
    previous: u64,
    elapsed_ms: u64,
    took: bool,
    cost: u64,
) -> Decision {
    let capacity = limit.capacity();
    let counted = if took { current + cost } else { current };
    let w = wide(limit);
    let used = estimate(limit, previous, counted, elapsed_ms).unwrap_or(u128::MAX);
    let remaining = (u128::from(capacity) * w).saturating_sub(used) / w;
    let remaining = u64::try_from(remaining).unwrap_or(u64::MAX);
    let ms = |ms: u64| us(ms.saturating_mul(1000));
    let left = limit.window_ms().saturating_sub(elapsed_ms);
    // Nothing counts any more once the last window with units is the previous one and over.
    let reset_after = if counted > 0 {
        ms(left + limit.window_ms())
    } else if previous > 0 {
        ms(left)
    } else {
        Duration::ZERO
    };
    let retry_after = if took {
        Duration::ZERO
    } else {
        ms(wait_ms(
            limit,
            previous,
            current,
            elapsed_ms,
            cost.min(capacity),
        ))
    };
    let available_after = if remaining == 0 {
        ms(wait_ms(limit, previous, counted, elapsed_ms, 1))
    } else {
        Duration::ZERO
    };
    Decision::reported(
        took,
        capacity,
        remaining,
        retry_after,
        reset_after,
        available_after,
    )
}

pub(super) fn is_idle(shape: Shape, state: &BucketState, now: u64) -> bool {
    let (index, _) = position(shape.window_ms(), now);
    match *state {
        BucketState::Window { index: i, .. } => match shape.algorithm {
            super::Algorithm::SlidingWindow => i + 1 < index,
            _ => i < index,
        },
        _ => true,
    }
}

pub(super) fn used(shape: Shape, state: &BucketState, now: u64) -> u64 {
    let (index, _) = position(shape.window_ms(), now);
    let (current, previous) = counters(state, index);
    match shape.algorithm {
        super::Algorithm::SlidingWindow => current.saturating_add(previous),
        _ => current,
    }
}
