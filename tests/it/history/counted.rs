//! What the store counted at every moment: the checks that catch a put-back credited to the
//! wrong window or bucket state.
//!
//! `check` holds each algorithm to its bound on the units admitted, counted by what each
//! request finally kept. That misses a put-back credited in the wrong place when the window it
//! lands in also holds requests that were settled lower. These checks follow the store's own
//! invariant instead: at every moment, what a bucket counts is within its bound (a window's
//! count is at most its capacity; a token bucket's debt at most one whole bucket; a sliding
//! log's entries at most its capacity; a sliding window's estimate at most its capacity).
//! What it counts is bounded below by the takes surely counted by then (answered) less every
//! put-back of those takes that may have happened by then (sent), each crediting at most what
//! it may credit where its take was counted. A correct store keeps that lower bound within the
//! bound; a store that credits a later window, a token bucket that gets back the full worth of
//! units that refilled long ago, or a log that drops another request's entries, does not.
//!
//! Sound for a correct store: a take never answered counts nothing here (the store may have
//! counted it); a take straddling a window edge counts in neither window (and its put-backs,
//! which a correct store credits only against its own units, count nowhere either); a
//! put-back that was sent is taken to have happened at once; a charge (a settlement above the
//! reservation) only adds to what the store counts and is left out.

/// One take the store answered: admitted at some instant in `[before, after]` (for a unit
/// spent from a lease, taken up to the lease time before), `units` counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Take {
    pub(crate) before: u64,
    pub(crate) after: u64,
    pub(crate) units: u64,
}

/// A put-back of `units` of take `take` (its index), sent at `sent`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PutBack {
    pub(crate) take: usize,
    pub(crate) sent: u64,
    pub(crate) units: u64,
}

/// The units of `put_backs` that may have been credited by `at` to the takes `counts` says
/// count (each take's at most its units).
fn credited(
    takes: &[Take],
    put_backs: &[PutBack],
    at: u64,
    counts: impl Fn(usize) -> bool,
) -> u128 {
    let mut by_take = vec![0u128; takes.len()];
    for pb in put_backs
        .iter()
        .filter(|pb| pb.sent <= at && counts(pb.take))
    {
        by_take[pb.take] += u128::from(pb.units);
    }
    by_take
        .iter()
        .zip(takes)
        .map(|(&back, take)| back.min(u128::from(take.units)))
        .sum()
}

/// Fixed window: a window's count is at most `capacity` at every moment. Checked at every
/// answer of a take surely in the window.
pub(crate) fn fixed_window(
    takes: &[Take],
    put_backs: &[PutBack],
    capacity: u64,
    w: u64,
) -> Result<(), String> {
    let window = |t: &Take| (t.before / w == t.after / w).then_some(t.before / w);
    for at in takes.iter().filter(|t| window(t).is_some()) {
        let k = at.after / w;
        let in_k = |j: usize| window(&takes[j]) == Some(k);
        let taken: u128 = (0..takes.len())
            .filter(|&j| in_k(j) && takes[j].after <= at.after)
            .map(|j| u128::from(takes[j].units))
            .sum();
        let back = credited(takes, put_backs, at.after, in_k);
        if taken.saturating_sub(back) > u128::from(capacity) {
            return Err(format!(
                "fixed window (as counted): window {k} counts at least {taken} taken - {back} \
                 put back by {} µs, above its capacity {capacity}",
                at.after
            ));
        }
    }
    Ok(())
}

/// Sliding window counter: `count_k + prev · (w − e) / w` is at most `capacity` at every
/// moment (the weight at the exact instant: the store's, in whole milliseconds, is no smaller).
pub(crate) fn sliding_window(
    takes: &[Take],
    put_backs: &[PutBack],
    capacity: u64,
    w: u64,
) -> Result<(), String> {
    let window = |t: &Take| (t.before / w == t.after / w).then_some(t.before / w);
    for at in takes.iter().filter(|t| window(t).is_some()) {
        let (k, now) = (at.after / w, at.after);
        let count = |window_index: u64| {
            let in_it = |j: usize| window(&takes[j]) == Some(window_index);
            let taken: u128 = (0..takes.len())
                .filter(|&j| in_it(j) && takes[j].after <= now)
                .map(|j| u128::from(takes[j].units))
                .sum();
            taken.saturating_sub(credited(takes, put_backs, now, in_it))
        };
        let current = count(k);
        let previous = k.checked_sub(1).map_or(0, count);
        let e = now - k * w;
        let (wide, cap) = (u128::from(w), u128::from(capacity));
        if current * wide + previous * u128::from(w - e) > cap * wide {
            return Err(format!(
                "sliding window (as counted): at {now} µs window {k} counts at least {current} \
                 and window {} at least {previous}, weighted {}/{w}: above the capacity \
                 {capacity}",
                k.wrapping_sub(1),
                w - e
            ));
        }
    }
    Ok(())
}

/// Sliding log: the entries younger than `w` are at most `capacity` at every moment. A take's
/// entries are no older than its `before`.
pub(crate) fn sliding_log(
    takes: &[Take],
    put_backs: &[PutBack],
    capacity: u64,
    w: u64,
) -> Result<(), String> {
    for at in takes {
        let now = at.after;
        let live = |j: usize| takes[j].before + w > now && takes[j].after <= now;
        let taken: u128 = (0..takes.len())
            .filter(|&j| live(j))
            .map(|j| u128::from(takes[j].units))
            .sum();
        let back = credited(takes, put_backs, now, live);
        if taken.saturating_sub(back) > u128::from(capacity) {
            return Err(format!(
                "sliding log (as counted): at {now} µs at least {taken} entries taken - {back} \
                 put back are younger than the window, above its capacity {capacity}"
            ));
        }
    }
    Ok(())
}

/// Token bucket: its debt (the time until full) is at most one whole bucket at every moment.
/// Over `[s, t]` the debt grows by the worth of the takes in it, less the refill, less what
/// put-backs credited, each at most its units' worth less the refill since its take (its
/// take's `after` bounds the take's time). Units worth `period / refill` µs each; compared
/// in µs × `refill`. `slack` widens each take's `before` (leases).
pub(crate) fn token_bucket(
    takes: &[Take],
    put_backs: &[PutBack],
    capacity: u64,
    refill: u64,
    period: u64,
    slack: u64,
) -> Result<(), String> {
    let (refill, period) = (u128::from(refill), u128::from(period));
    // The most a put-back may credit, in µs × refill.
    let most = |pb: &PutBack| {
        let take = &takes[pb.take];
        let since = u128::from(pb.sent.saturating_sub(take.after));
        (u128::from(pb.units) * period).saturating_sub(since * refill)
    };
    let mut by_after: Vec<&Take> = takes.iter().collect();
    by_after.sort_unstable_by_key(|t| t.after);
    let mut sent: Vec<(u64, u128)> = put_backs.iter().map(|pb| (pb.sent, most(pb))).collect();
    sent.sort_unstable_by_key(|&(at, _)| at);
    let cap = u128::from(capacity) * period;
    for s in takes.iter().map(|t| t.before.saturating_sub(slack)) {
        // Ends in order: the takes inside [s, end] and the put-backs sent by `end` grow.
        let (mut taken, mut back, mut next_pb) = (0u128, 0u128, 0usize);
        for take in by_after.iter().filter(|t| t.after >= s) {
            let end = take.after;
            if take.before.saturating_sub(slack) >= s {
                taken += u128::from(take.units) * period;
            }
            while next_pb < sent.len() && sent[next_pb].0 <= end {
                back += sent[next_pb].1;
                next_pb += 1;
            }
            let refilled = u128::from(end - s) * refill;
            if taken.saturating_sub(back + refilled) > cap {
                return Err(format!(
                    "token bucket (as counted): over [{s}, {end}] µs takes worth {taken} less \
                     put-backs worth at most {back} and the refill {refilled} (µs × refill) \
                     exceed one whole bucket, {cap}"
                ));
            }
        }
    }
    Ok(())
}
