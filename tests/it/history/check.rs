//! History checks: given what a rate limiter admitted during a randomized concurrent run, check
//! each algorithm's admission bound.
//!
//! Times are microseconds since the Unix epoch. The client reads the clock before a call
//! (`before`) and after its answer (`after`); the store admitted the request at some unknown
//! instant in `[before, after]`. A record's `units` are what it finally counts: what it took,
//! less what it put back.
//!
//! # Soundness
//!
//! Every check is *sound*: it reports a violation only when no choice of instants inside the
//! intervals could explain the history. Each check counts only what is certain:
//!
//! - a record counts in a window only when its whole interval lies in that window;
//! - a record counts in a span `[s, e]` only when its whole interval lies in the span;
//! - a record counts as admitted before another only when `after <= other.before` (for a tie
//!   at one instant, see [`sliding_window`]; the store's order is taken to agree with its
//!   instants);
//! - a weight that depends on the admission instant takes its weakest value over the interval.
//!
//! Counting final units is sound too: a request puts back only what it took, so the units
//! finally kept obey every bound that the units taken obey (and where a count is weighed at an
//! admission, the store counted at least the units finally kept). The converse does not hold: a store may overshoot in ways an ambiguous history hides, so
//! these checks catch real violations only where the run pins them down (the tests below show
//! that one unit over a saturated place is caught).
//!
//! A record with `before > after` (a clock that stepped back) makes every check fail: it says
//! nothing sound about the store, and a harness should not produce it.
//!
//! # Cost
//!
//! Fixed window, sliding window and concurrency are O(n log n); the sliding log is O(n·m) (m:
//! the records within one window of a start) and the token bucket O(n²), with only integer
//! multiplications in its inner loop. Measured with the `large_histories` test below (rustc
//! 1.95, one core; a saturated history, each start scanning every later record): token bucket
//! n = 5,000 in 26 ms with `-O`, 127 ms in debug; n = 20,000 in 0.41 s with `-O`, 2.0 s in
//! debug. The other four checks together: 0.8 ms / 5 ms at n = 5,000, 3 ms / 21 ms at 20,000.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One admitted request: when it may have been admitted, and the units it finally counts
/// (what it took, less what was put back; never negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub(crate) before: u64,
    pub(crate) after: u64,
    pub(crate) units: u64,
}

/// One concurrency slot held: definitely held from `from` (after the take answered) until
/// `until` (before the release was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) from: u64,
    pub(crate) until: u64,
}

/// How many offending records a message lists.
const LISTED: usize = 5;

/// Up to [`LISTED`] items as `show` shows them, then how many more there are.
fn list_of<T>(items: impl IntoIterator<Item = T>, show: impl Fn(T) -> String) -> String {
    let (mut shown, mut count) = (Vec::new(), 0);
    for item in items {
        if count < LISTED {
            shown.push(show(item));
        }
        count += 1;
    }
    let mut out = shown.join(", ");
    if count > LISTED {
        let _ = write!(out, ", and {} more", count - LISTED);
    }
    out
}

/// Up to [`LISTED`] records as `[before, after] × units`, then how many more there are.
fn listing<'a>(records: impl IntoIterator<Item = &'a Admitted>) -> String {
    list_of(records, |r| {
        format!("[{}, {}] × {}", r.before, r.after, r.units)
    })
}

/// The units of `records`, wide enough never to overflow.
fn total<'a>(records: impl IntoIterator<Item = &'a Admitted>) -> u128 {
    records.into_iter().map(|r| u128::from(r.units)).sum()
}

/// An error unless every record has `before <= after`.
fn well_formed(name: &str, records: &[Admitted]) -> Result<(), String> {
    match records.iter().find(|r| r.before > r.after) {
        Some(r) => Err(format!(
            "{name}: malformed record (before > after; did the clock step back?): {}",
            listing([r])
        )),
        None => Ok(()),
    }
}

/// An error unless the parameter `what` is positive.
fn positive(name: &str, what: &str, value: u64) -> Result<(), String> {
    if value == 0 {
        return Err(format!("{name}: {what} must be positive"));
    }
    Ok(())
}

/// The records definitely in each window of `w` µs (`before` and `after` in the same window),
/// by window index; each window's records in input order.
fn definitely_in(records: &[Admitted], w: u64) -> BTreeMap<u64, Vec<Admitted>> {
    let mut windows: BTreeMap<u64, Vec<Admitted>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.before / w == r.after / w) {
        windows.entry(r.before / w).or_default().push(*r);
    }
    windows
}

/// Window `k` of `w` µs as `[start, end)`, for messages.
fn window_span(k: u64, w: u64) -> String {
    format!(
        "[{}, {})",
        k.saturating_mul(w),
        k.saturating_add(1).saturating_mul(w)
    )
}

/// Fixed window of `capacity` units per window of `window_us` µs, windows aligned to the
/// epoch: the units of the records definitely in a window are at most `capacity`.
pub(crate) fn fixed_window(
    records: &[Admitted],
    capacity: u64,
    window_us: u64,
) -> Result<(), String> {
    const NAME: &str = "fixed window";
    well_formed(NAME, records)?;
    positive(NAME, "window_us", window_us)?;
    let windows = definitely_in(records, window_us);
    every_window_within(NAME, &windows, capacity, window_us)
}

/// An error naming the first window whose definitely-in units exceed `capacity`.
fn every_window_within(
    name: &str,
    windows: &BTreeMap<u64, Vec<Admitted>>,
    capacity: u64,
    w: u64,
) -> Result<(), String> {
    for (&k, members) in windows {
        let units = total(members);
        if units > u128::from(capacity) {
            return Err(format!(
                "{name}: window {k} {} µs counts {units} units definitely in it, bound \
                 {capacity} (capacity); records: {}",
                window_span(k, w),
                listing(members)
            ));
        }
    }
    Ok(())
}

/// Token bucket of `capacity` units refilling `refill` units every `period_us` µs,
/// continuously: over any span `[s, e]`, the units admitted in it are at most
/// `capacity + floor(refill × (e − s) / period_us)`.
///
/// `slack_us` widens every record to `[before − slack_us, after]` (leased units may be spent
/// up to that much later than they were taken). Checked for every `s` among the widened
/// befores and `e` among the afters: the units of the records lying in `[s, e]`.
pub(crate) fn token_bucket(
    records: &[Admitted],
    capacity: u64,
    refill: u64,
    period_us: u64,
    slack_us: u64,
) -> Result<(), String> {
    const NAME: &str = "token bucket";
    well_formed(NAME, records)?;
    positive(NAME, "period_us", period_us)?;
    // (widened before, record), by `after`.
    let mut by_after: Vec<(u64, Admitted)> = records
        .iter()
        .map(|r| (r.before.saturating_sub(slack_us), *r))
        .collect();
    by_after.sort_unstable_by_key(|&(start, r)| (r.after, start));
    let mut starts: Vec<u64> = by_after.iter().map(|&(start, _)| start).collect();
    starts.sort_unstable();
    starts.dedup();
    let (cap, period, refill) = (
        u128::from(capacity),
        u128::from(period_us),
        u128::from(refill),
    );
    for &s in &starts {
        // A record ending before `s` starts before it too.
        let first = by_after.partition_point(|&(_, r)| r.after < s);
        let mut units = 0u128;
        for &(start, r) in &by_after[first..] {
            if start < s {
                continue;
            }
            units += u128::from(r.units);
            // units > cap + floor(refill·len / period)  ⇔  (units − cap)·period > refill·len
            if units > cap
                && (units - cap).saturating_mul(period) > refill * u128::from(r.after - s)
            {
                let e = r.after;
                let members: Vec<Admitted> = by_after[first..]
                    .iter()
                    .filter(|&&(start, m)| start >= s && m.after <= e)
                    .map(|&(_, m)| m)
                    .collect();
                let len = e - s;
                return Err(format!(
                    "{NAME}: span [{s}, {e}] µs ({len} µs, records widened by a slack of \
                     {slack_us} µs) counts {} units, bound {} = capacity {capacity} + \
                     floor({refill} × {len} / {period_us}); records: {}",
                    total(&members),
                    cap + refill * u128::from(len) / period,
                    listing(&members)
                ));
            }
        }
    }
    Ok(())
}

/// Sliding log of `capacity` units per window of `window_us` µs, exact: an entry taken at `t`
/// counts while `now − t < window_us`, so any span shorter than the window admits at most
/// `capacity` units. Checked for every `s` among the befores: the units of the records lying
/// in `[s, s + window_us − 1]`.
pub(crate) fn sliding_log(
    records: &[Admitted],
    capacity: u64,
    window_us: u64,
) -> Result<(), String> {
    const NAME: &str = "sliding log";
    well_formed(NAME, records)?;
    positive(NAME, "window_us", window_us)?;
    let mut sorted = records.to_vec();
    sorted.sort_unstable_by_key(|r| (r.before, r.after));
    for (i, first) in sorted.iter().enumerate() {
        if i > 0 && sorted[i - 1].before == first.before {
            continue; // The same span as the one before.
        }
        let s = first.before;
        let end = s.saturating_add(window_us - 1);
        let within = || {
            sorted[i..]
                .iter()
                .take_while(move |r| r.before <= end)
                .filter(move |r| r.after <= end)
        };
        let units = total(within());
        if units > u128::from(capacity) {
            let e = within().map(|r| r.after).max().unwrap_or(s);
            return Err(format!(
                "{NAME}: span [{s}, {e}] µs ({} µs, shorter than the window of {window_us} µs) \
                 counts {units} units, bound {capacity} (capacity); records: {}",
                e - s,
                listing(within())
            ));
        }
    }
    Ok(())
}

/// Sliding window counter of `capacity` units per window of `window_us` µs, windows aligned
/// to the epoch. At an admission at `t`, `e = t − k·w` into window `k`, the store allowed only
/// if `count_k + prev · (w − e) / w <= capacity`, `count_k` including the request's own units.
///
/// Checked: (a) every window's definitely-in units are at most `capacity`; (b) for each
/// record `r` definitely in window `k`: the units of the others definitely in window `k` with
/// `after <= r.before`, plus its own, plus window `k − 1`'s definitely-in units weighted by the
/// weakest weight over its interval, `(w − (r.after − k·w)) / w`, are at most `capacity`
/// (compared exactly, times `w`). The store takes `e` in whole milliseconds, which only makes
/// its weight larger.
///
/// (b) is sound even for an `after` equal to `r.before`, which may be admitted at that same
/// instant after `r`: then the last admitted of those and `r` was admitted at `r.before`, its
/// count held all of them, and its weight was at least `r`'s weakest, so the same sum bounds it.
pub(crate) fn sliding_window(
    records: &[Admitted],
    capacity: u64,
    window_us: u64,
) -> Result<(), String> {
    const NAME: &str = "sliding window";
    well_formed(NAME, records)?;
    positive(NAME, "window_us", window_us)?;
    let w = window_us;
    let windows = definitely_in(records, w);
    every_window_within(NAME, &windows, capacity, w)?;
    let wide = u128::from(w);
    for (&k, members) in &windows {
        let prev = k
            .checked_sub(1)
            .and_then(|p| windows.get(&p))
            .map_or(0, total);
        // Indices into `members`, by `after`; sums[i]: the units of the first i of them.
        let mut by_after: Vec<usize> = (0..members.len()).collect();
        by_after.sort_unstable_by_key(|&i| members[i].after);
        let sums: Vec<u128> = std::iter::once(0)
            .chain(by_after.iter().scan(0u128, |sum, &i| {
                *sum += u128::from(members[i].units);
                Some(*sum)
            }))
            .collect();
        for (at, r) in members.iter().enumerate() {
            // Admitted no later than `r` could be: `after <= r.before`, `r` itself aside.
            let n = by_after.partition_point(|&i| members[i].after <= r.before);
            let earlier = sums[n] - u128::from(r.units) * u128::from(r.after <= r.before);
            let count = earlier + u128::from(r.units);
            // Below `w`: `r.after` lies in window `k`.
            let e_max = r.after - k * w;
            let weight = u128::from(w - e_max);
            let estimate = count
                .saturating_mul(wide)
                .saturating_add(prev.saturating_mul(weight));
            if estimate > u128::from(capacity) * wide {
                let before_it = by_after[..n]
                    .iter()
                    .filter(|&&i| i != at)
                    .map(|&i| &members[i]);
                return Err(format!(
                    "{NAME}: request [{}, {}] µs × {} in window {k} {} µs: {earlier} units \
                     admitted no later in the window + its own {} + {prev} units of window \
                     {} weighted at least {weight}/{w} exceed the bound {capacity} (capacity) \
                     ({estimate} > {} in µs-units); records (it, then those before it): {}",
                    r.before,
                    r.after,
                    r.units,
                    window_span(k, w),
                    r.units,
                    k.wrapping_sub(1),
                    u128::from(capacity) * wide,
                    listing(std::iter::once(r).chain(before_it))
                ));
            }
        }
    }
    Ok(())
}

/// Concurrency of `capacity` slots: at no instant are more than `capacity` slots definitely
/// held. Each hold is the half-open `[from, until)`; holds with `from >= until` are ignored.
pub(crate) fn concurrency(held: &[Held], capacity: u64) -> Result<(), String> {
    let live = || held.iter().filter(|h| h.from < h.until);
    // (instant, is a take): at one instant releases (false) sort before takes (true).
    let mut events: Vec<(u64, bool)> = live()
        .flat_map(|h| [(h.from, true), (h.until, false)])
        .collect();
    events.sort_unstable();
    let mut holding = 0u64;
    for (t, take) in events {
        if !take {
            holding -= 1;
            continue;
        }
        holding += 1;
        if holding > capacity {
            let holders = live().filter(|h| h.from <= t && t < h.until);
            let list = list_of(holders, |h| format!("[{}, {})", h.from, h.until));
            return Err(format!(
                "concurrency: at {t} µs {holding} slots are definitely held, bound {capacity} \
                 (capacity); holds: {list}"
            ));
        }
    }
    Ok(())
}

/// The other side of exactness: fails when the units admitted are fewer than `min_share` of
/// `permitted` (a limiter refusing everything keeps every bound). `what` names the run.
pub(crate) fn saturation(
    records: &[Admitted],
    permitted: u64,
    min_share: f64,
    what: &str,
) -> Result<(), String> {
    let admitted = total(records);
    let needed = min_share * permitted as f64;
    if (admitted as f64) < needed {
        return Err(format!(
            "{what}: admitted {admitted} units in {} records, fewer than {min_share} of the \
             {permitted} permitted ({needed:.1}): the limiter refused more than it should",
            records.len()
        ));
    }
    Ok(())
}

/// The units a fixed window permits over `[start_us, end_us]`: `capacity` times the number
/// of windows the span touches (0 for an empty span). Panics if `window_us` is 0.
pub(crate) fn fixed_window_permitted(
    start_us: u64,
    end_us: u64,
    capacity: u64,
    window_us: u64,
) -> u64 {
    assert!(window_us > 0, "window_us must be positive");
    if end_us < start_us {
        return 0;
    }
    capacity.saturating_mul(end_us / window_us - start_us / window_us + 1)
}

/// The units a token bucket permits over `[start_us, end_us]`:
/// `capacity + floor(refill × (end − start) / period_us)`. Panics if `period_us` is 0.
pub(crate) fn token_bucket_permitted(
    start_us: u64,
    end_us: u64,
    capacity: u64,
    refill: u64,
    period_us: u64,
) -> u64 {
    assert!(period_us > 0, "period_us must be positive");
    let refilled =
        u128::from(refill) * u128::from(end_us.saturating_sub(start_us)) / u128::from(period_us);
    u64::try_from(u128::from(capacity) + refilled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A record `[before, after] × units`.
    fn rec(before: u64, after: u64, units: u64) -> Admitted {
        Admitted {
            before,
            after,
            units,
        }
    }

    /// A record at one instant.
    fn at(t: u64, units: u64) -> Admitted {
        rec(t, t, units)
    }

    /// Asserts `result` is an error mentioning every one of `parts`.
    fn fails(result: Result<(), String>, parts: &[&str]) {
        let message = result.expect_err("the check should fail");
        for part in parts {
            assert!(
                message.contains(part),
                "{message:?} should mention {part:?}"
            );
        }
    }

    // ---- Fixed window ----

    const MS: u64 = 1000;

    #[test]
    fn fixed_window_bounds_definite_records() {
        let w = 10 * MS;
        // Window 5 is [50 000, 60 000): 3 + 2 units, the window edges included and excluded.
        let ok = [
            at(50_000, 3),
            rec(55_000, 59_999, 2),
            at(60_000, 5),
            at(49_999, 5),
        ];
        assert_eq!(fixed_window(&ok, 5, w), Ok(()));
        let over = [at(50_000, 3), rec(55_000, 59_999, 2), at(51_000, 1)];
        fails(
            fixed_window(&over, 5, w),
            &[
                "fixed window",
                "window 5",
                "[50000, 60000)",
                "6 units",
                "bound 5",
            ],
        );
    }

    #[test]
    fn fixed_window_ignores_records_straddling_an_edge() {
        let w = 10 * MS;
        // The third may have been admitted in window 6.
        let history = [
            at(50_000, 3),
            at(59_000, 2),
            rec(59_000, 60_000, 1),
            at(60_000, 4),
        ];
        assert_eq!(fixed_window(&history, 5, w), Ok(()));
    }

    #[test]
    fn fixed_window_lists_at_most_five_records_in_any_order() {
        let history: Vec<Admitted> = (0..8).rev().map(|i| at(i * 10, 1)).collect();
        let message = fixed_window(&history, 7, MS).unwrap_err();
        assert!(message.contains("and 3 more"), "{message}");
        assert_eq!(message.matches(" × 1").count(), 5, "{message}");
    }

    #[test]
    fn malformed_records_and_parameters_are_errors() {
        fails(
            fixed_window(&[rec(5, 4, 1)], 1, MS),
            &["fixed window", "malformed"],
        );
        fails(fixed_window(&[], 1, 0), &["window_us"]);
        fails(
            token_bucket(&[rec(5, 4, 1)], 1, 1, 1, 0),
            &["token bucket", "malformed"],
        );
        fails(token_bucket(&[], 1, 1, 0, 0), &["period_us"]);
        fails(
            sliding_log(&[rec(5, 4, 1)], 1, MS),
            &["sliding log", "malformed"],
        );
        fails(sliding_log(&[], 1, 0), &["window_us"]);
        fails(
            sliding_window(&[rec(5, 4, 1)], 1, MS),
            &["sliding window", "malformed"],
        );
        fails(sliding_window(&[], 1, 0), &["window_us"]);
    }

    // ---- Token bucket ----

    #[test]
    fn token_bucket_bounds_spans() {
        // 2 units, one more every 1000 µs.
        let ok = [at(0, 1), at(0, 1), at(1000, 1), at(2000, 1), at(3500, 1)];
        assert_eq!(token_bucket(&ok, 2, 1, 1000, 0), Ok(()));
        let over = [at(0, 1), at(0, 1), at(999, 1)];
        fails(
            token_bucket(&over, 2, 1, 1000, 0),
            &[
                "token bucket",
                "span [0, 999]",
                "3 units",
                "bound 2",
                "floor(1 × 999 / 1000)",
            ],
        );
        // Refill 3 every 2000 µs: over [0, 1000] at most 2 + 1 (1.5 floored).
        let ok = [at(0, 2), at(1000, 1), at(1334, 1)];
        assert_eq!(token_bucket(&ok, 2, 3, 2000, 0), Ok(()));
        let over = [at(0, 2), at(1000, 2)];
        fails(
            token_bucket(&over, 2, 3, 2000, 0),
            &["token bucket", "4 units", "bound 3"],
        );
    }

    #[test]
    fn token_bucket_places_ambiguous_records_favourably() {
        // The third may have been admitted at 1000, when a unit came back.
        let history = [at(0, 1), at(0, 1), rec(0, 1000, 1)];
        assert_eq!(token_bucket(&history, 2, 1, 1000, 0), Ok(()));
        // An empty bucket (capacity 0) admits nothing but what refills.
        assert_eq!(token_bucket(&[rec(0, 1000, 1)], 0, 1, 1000, 0), Ok(()));
        fails(
            token_bucket(&[rec(0, 999, 1)], 0, 1, 1000, 0),
            &["token bucket"],
        );
    }

    #[test]
    fn token_bucket_slack_widens_records_backwards() {
        let history = [at(1000, 1), at(1000, 1), at(1500, 1)];
        fails(
            token_bucket(&history, 2, 1, 1000, 0),
            &["token bucket", "3 units"],
        );
        fails(
            token_bucket(&history, 2, 1, 1000, 499),
            &["slack of 499 µs"],
        );
        // Widened to [500, 1000] twice and [1000, 1500]: 3 units over [500, 1500].
        assert_eq!(token_bucket(&history, 2, 1, 1000, 500), Ok(()));
        // Slack past the epoch saturates.
        assert_eq!(token_bucket(&history, 2, 1, 1000, 5000), Ok(()));
    }

    // ---- Sliding log ----

    #[test]
    fn sliding_log_bounds_spans_shorter_than_the_window() {
        let w = MS;
        // [0, 1000] is a whole window long: an entry at 0 is gone at 1000.
        let ok = [at(0, 1), at(500, 1), at(1000, 1), at(1500, 1)];
        assert_eq!(sliding_log(&ok, 2, w), Ok(()));
        let over = [at(0, 1), at(500, 1), at(999, 1)];
        fails(
            sliding_log(&over, 2, w),
            &["sliding log", "span [0, 999]", "3 units", "bound 2"],
        );
        fails(
            sliding_log(&[at(7, 3)], 2, w),
            &["sliding log", "span [7, 7]"],
        );
    }

    #[test]
    fn sliding_log_places_ambiguous_records_favourably() {
        // The third may have been admitted at 1000.
        let history = [at(0, 1), at(500, 1), rec(0, 1000, 1)];
        assert_eq!(sliding_log(&history, 2, MS), Ok(()));
        let history = [at(0, 1), at(500, 1), rec(100, 999, 1)];
        fails(sliding_log(&history, 2, MS), &["sliding log"]);
    }

    // ---- Sliding window ----

    #[test]
    fn sliding_window_bounds_each_window() {
        let w = 10 * MS;
        // At 35 000 the ten of window 2 weigh 5.
        let ok = [at(20_000, 4), at(29_999, 6), at(35_000, 5)];
        assert_eq!(sliding_window(&ok, 10, w), Ok(()));
        let over = [at(20_000, 4), at(29_999, 7)];
        fails(
            sliding_window(&over, 10, w),
            &["sliding window", "window 2", "11 units", "bound 10"],
        );
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let w = 10 * MS;
        // Six in window 1; at 25 000 (half-way into window 2) they weigh 3.
        let prev = at(15_000, 6);
        let ok = [prev, at(21_000, 4), at(25_000, 3)];
        assert_eq!(sliding_window(&ok, 10, w), Ok(()));
        let over = [prev, at(21_000, 4), at(25_000, 4)];
        fails(
            sliding_window(&over, 10, w),
            &[
                "sliding window",
                "request [25000, 25000]",
                "4 units admitted no later",
                "weighted at least 5000/10000",
            ],
        );
        // The last may have come at 28 000, where they weigh 1.2; not at 26 000 (2.4).
        let ok = [prev, at(21_000, 4), rec(24_000, 28_000, 4)];
        assert_eq!(sliding_window(&ok, 10, w), Ok(()));
        let over = [prev, at(21_000, 4), rec(24_000, 26_000, 4)];
        fails(
            sliding_window(&over, 10, w),
            &["sliding window", "weighted at least 4000/10000"],
        );
    }

    #[test]
    fn sliding_window_counts_only_what_is_certain() {
        let w = 10 * MS;
        let prev = at(15_000, 6);
        // The third may have come at 29 000, after the last (and been allowed there).
        let history = [prev, at(21_000, 2), rec(22_000, 29_000, 2), at(25_000, 4)];
        assert_eq!(sliding_window(&history, 10, w), Ok(()));
        // Ending when the last began, it came no later: in either order at 25 000, the later of
        // the two saw 2 + 2 + 4 units here and 3 of the previous window.
        let history = [prev, at(21_000, 2), rec(22_000, 25_000, 2), at(25_000, 4)];
        fails(
            sliding_window(&history, 10, w),
            &["sliding window", "4 units admitted no later"],
        );
        // Two at one instant: each counts the other, not itself.
        assert_eq!(
            sliding_window(&[prev, at(25_000, 3), at(25_000, 3)], 10, w),
            Ok(())
        );
        fails(
            sliding_window(&[prev, at(25_000, 4), at(25_000, 4)], 10, w),
            &["sliding window"],
        );
        // The second may have come in window 1 (at 18 000, weighing 0.6), not in window 0.
        assert_eq!(
            sliding_window(&[at(5_000, 8), rec(9_000, 18_000, 3)], 10, w),
            Ok(())
        );
        fails(
            sliding_window(&[at(5_000, 8), rec(9_000, 9_999, 3)], 10, w),
            &["window 0", "11 units"],
        );
    }

    // ---- Concurrency and saturation ----

    #[test]
    fn concurrency_bounds_slots_definitely_held() {
        let h = |from, until| Held { from, until };
        // Touching holds do not overlap; an empty or inverted hold holds nothing.
        let ok = [h(0, 10), h(10, 20), h(5, 15), h(12, 12), h(30, 3)];
        assert_eq!(concurrency(&ok, 2), Ok(()));
        let over = [h(0, 10), h(9, 20), h(5, 15)];
        fails(
            concurrency(&over, 2),
            &["concurrency", "at 9 µs 3 slots", "bound 2", "[5, 15)"],
        );
        assert_eq!(concurrency(&[], 0), Ok(()));
    }

    #[test]
    fn saturation_wants_a_share_of_what_is_permitted() {
        let history = [at(0, 5), at(1, 4)];
        assert_eq!(saturation(&history, 10, 0.9, "fixed window"), Ok(()));
        fails(
            saturation(&history, 10, 0.95, "fixed window"),
            &["fixed window", "admitted 9 units", "10 permitted"],
        );
        assert_eq!(fixed_window_permitted(9_999, 20_000, 3, 10 * MS), 9);
        assert_eq!(fixed_window_permitted(10_000, 19_999, 3, 10 * MS), 3);
        assert_eq!(fixed_window_permitted(2, 1, 3, 10 * MS), 0);
        assert_eq!(token_bucket_permitted(0, 2_500, 3, 2, 1000), 8);
        assert_eq!(
            token_bucket_permitted(0, u64::MAX, u64::MAX, u64::MAX, 1),
            u64::MAX
        );
    }

    // ---- Randomized histories from exact simulations ----

    /// Xorshift64: a small deterministic pseudo-random generator.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        /// Uniform-ish in `0..n` (n ≥ 1).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn one_in(&mut self, n: u64) -> bool {
            self.below(n) == 0
        }
        fn pick(&mut self, choices: &[u64]) -> u64 {
            choices[self.below(choices.len() as u64) as usize]
        }
    }

    /// A run's requests: 10 to `most` + 9 sorted true instants over 1 to `windows` windows of
    /// `w` µs from a random start near today, sometimes bunched on a coarse grid so that many
    /// share an instant.
    fn instants(rng: &mut Rng, most: u64, w: u64, windows: u64) -> Vec<u64> {
        let (n, span) = (10 + rng.below(most), w * (1 + rng.below(windows)));
        let start = 1_700_000_000_000_000 + rng.below(1 << 40);
        let grid = rng.pick(&[1, 1, 1000, span / 4 + 1]);
        let mut times: Vec<u64> = (0..n)
            .map(|_| start + rng.below(span) / grid * grid)
            .collect();
        times.sort_unstable();
        times
    }

    /// A request's cost and the units it keeps (sometimes putting some back at once).
    fn demand(rng: &mut Rng) -> (u64, u64) {
        let cost = 1 + rng.below(3);
        let back = if rng.one_in(6) {
            rng.below(cost + 1)
        } else {
            0
        };
        (cost, cost - back)
    }

    /// A record of an admission at `t`, its interval up to `jitter` either side.
    fn around(rng: &mut Rng, t: u64, jitter: u64, units: u64) -> Admitted {
        rec(t - rng.below(jitter + 1), t + rng.below(jitter + 1), units)
    }

    /// A history of (capacity, window) from a fixed window admitting at random instants.
    fn fixed_window_history(rng: &mut Rng, jitters: &[u64]) -> (Vec<Admitted>, u64, u64) {
        let (capacity, w) = (1 + rng.below(6), MS * (1 + rng.below(20)));
        let jitter = rng.pick(jitters) * w / 100;
        let times = instants(rng, 150, w, 6);
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut history = Vec::new();
        for t in times {
            let (cost, kept) = demand(rng);
            let count = counts.entry(t / w).or_default();
            if *count + cost <= capacity {
                *count += kept;
                history.push(around(rng, t, jitter, kept));
            }
        }
        history.reverse(); // Any order will do.
        (history, capacity, w)
    }

    /// Jitters, in hundredths of the window.
    const ANY_JITTER: &[u64] = &[0, 0, 1, 20, 100, 300];

    #[test]
    fn fixed_window_accepts_simulated_histories() {
        let mut rng = Rng::new(1);
        for run in 0..400 {
            let (history, capacity, w) = fixed_window_history(&mut rng, ANY_JITTER);
            let result = fixed_window(&history, capacity, w);
            assert_eq!(result, Ok(()), "run {run}");
        }
    }

    #[test]
    fn fixed_window_catches_one_unit_over_a_saturated_window() {
        let mut rng = Rng::new(2);
        let mut caught = 0;
        for _ in 0..300 {
            let (mut history, capacity, w) = fixed_window_history(&mut rng, &[0, 1]);
            let mut sums: HashMap<u64, u64> = HashMap::new();
            for r in history.iter().filter(|r| r.before / w == r.after / w) {
                *sums.entry(r.before / w).or_default() += r.units;
            }
            let Some((&k, _)) = sums.iter().find(|&(_, &units)| units == capacity) else {
                continue;
            };
            history.push(at(k * w + rng.below(w), 1));
            fails(
                fixed_window(&history, capacity, w),
                &["fixed window", &format!("window {k} ")],
            );
            caught += 1;
        }
        assert!(caught >= 100, "only {caught} saturated windows");
    }

    #[test]
    fn token_bucket_accepts_simulated_histories() {
        let mut rng = Rng::new(3);
        for run in 0..400 {
            let (capacity, refill, period) =
                (1 + rng.below(6), 1 + rng.below(4), 1000 + rng.below(20_000));
            let slack = if rng.one_in(3) {
                rng.below(2 * period)
            } else {
                0
            };
            let jitter = rng.pick(ANY_JITTER) * period / 100;
            let times = instants(&mut rng, 200, period, 10);
            // Exact continuous refill (GCRA), time scaled by `refill`: the bucket is full at
            // `full_at`, a unit is worth `period` scaled µs, the bucket `capacity × period`.
            let mut full_at = 0u64;
            let mut history = Vec::new();
            for t in times {
                let (cost, kept) = demand(&mut rng);
                let now = t * refill;
                let full_after = full_at.saturating_sub(now);
                if full_after + cost * period <= capacity * period {
                    full_at = now + full_after + kept * period;
                    // Spent up to `slack` after it was taken.
                    let spent = t + rng.below(slack + 1);
                    history.push(around(&mut rng, spent, jitter, kept));
                }
            }
            let result = token_bucket(&history, capacity, refill, period, slack);
            assert_eq!(result, Ok(()), "run {run}");
        }
    }

    /// A history of (capacity, window) from an exact sliding log at random instants.
    fn sliding_log_history(rng: &mut Rng, jitters: &[u64]) -> (Vec<Admitted>, u64, u64) {
        let (capacity, w) = (1 + rng.below(6), 1 + rng.below(20_000));
        let jitter = rng.pick(jitters) * w / 100;
        let times = instants(rng, 150, w, 6);
        let mut log: Vec<(u64, u64)> = Vec::new();
        let mut history = Vec::new();
        for t in times {
            let (cost, kept) = demand(rng);
            let count: u64 = log
                .iter()
                .filter(|&&(at, _)| t - at < w)
                .map(|&(_, u)| u)
                .sum();
            if count + cost <= capacity {
                log.push((t, kept));
                history.push(around(rng, t, jitter, kept));
            }
        }
        (history, capacity, w)
    }

    #[test]
    fn sliding_log_accepts_simulated_histories() {
        let mut rng = Rng::new(4);
        for run in 0..400 {
            let (history, capacity, w) = sliding_log_history(&mut rng, ANY_JITTER);
            assert_eq!(sliding_log(&history, capacity, w), Ok(()), "run {run}");
        }
    }

    #[test]
    fn sliding_log_catches_one_unit_over_a_saturated_span() {
        let mut rng = Rng::new(5);
        let mut caught = 0;
        for _ in 0..300 {
            let (mut history, capacity, w) = sliding_log_history(&mut rng, &[0, 1]);
            // By brute force, a start whose records within a window's length add up to the
            // capacity.
            let saturated = history.iter().map(|r| r.before).find(|&s| {
                let members = history.iter().filter(|r| r.before >= s && r.after < s + w);
                members.map(|r| r.units).sum::<u64>() == capacity
            });
            let Some(s) = saturated else { continue };
            history.push(at(s, 1));
            fails(
                sliding_log(&history, capacity, w),
                &["sliding log", &format!("span [{s}, ")],
            );
            caught += 1;
        }
        assert!(caught >= 100, "only {caught} saturated spans");
    }

    #[test]
    fn sliding_window_accepts_simulated_histories() {
        let mut rng = Rng::new(6);
        for run in 0..400 {
            let (capacity, w_ms) = (1 + rng.below(10), 1 + rng.below(20));
            let w = w_ms * MS;
            let jitter = rng.pick(ANY_JITTER) * w / 100;
            let times = instants(&mut rng, 200, w, 6);
            // As the store: whole milliseconds, exact integer comparison.
            let mut counts: HashMap<u64, u64> = HashMap::new();
            let mut history = Vec::new();
            for t in times {
                let (cost, kept) = demand(&mut rng);
                let (k, e) = (t / MS / w_ms, t / MS % w_ms);
                let prev = counts.get(&(k - 1)).copied().unwrap_or(0);
                let count = counts.get(&k).copied().unwrap_or(0);
                if prev * (w_ms - e) + (count + cost) * w_ms <= capacity * w_ms {
                    *counts.entry(k).or_default() += kept;
                    history.push(around(&mut rng, t, jitter, kept));
                }
            }
            assert_eq!(sliding_window(&history, capacity, w), Ok(()), "run {run}");
        }
    }

    // ---- Against brute force, on arbitrary histories ----

    /// 1 to 20 arbitrary records: intervals anywhere in a random span up to 5000 µs, 0 to 3
    /// units each.
    fn arbitrary(rng: &mut Rng) -> Vec<Admitted> {
        let span = 1 + rng.below(5000);
        (0..1 + rng.below(20))
            .map(|_| {
                let before = rng.below(span);
                rec(before, before + rng.below(span / 4 + 1), rng.below(4))
            })
            .collect()
    }

    #[test]
    fn token_bucket_agrees_with_brute_force() {
        let mut rng = Rng::new(7);
        let mut failures = 0;
        for run in 0..2000 {
            let history = arbitrary(&mut rng);
            let (capacity, refill, period, slack) = (
                rng.below(6),
                rng.below(4),
                1 + rng.below(3000),
                rng.pick(&[0, 0, 10, 700]),
            );
            let violated = history.iter().any(|first| {
                let s = first.before.saturating_sub(slack);
                history.iter().filter(|last| last.after >= s).any(|last| {
                    let units: u64 = history
                        .iter()
                        .filter(|r| r.before.saturating_sub(slack) >= s && r.after <= last.after)
                        .map(|r| r.units)
                        .sum();
                    units > capacity + refill * (last.after - s) / period
                })
            });
            let result = token_bucket(&history, capacity, refill, period, slack);
            assert_eq!(
                result.is_err(),
                violated,
                "run {run}: {result:?} for {history:?}"
            );
            failures += usize::from(violated);
        }
        assert!(failures > 200, "only {failures} violations");
    }

    #[test]
    fn sliding_log_agrees_with_brute_force() {
        let mut rng = Rng::new(8);
        let mut failures = 0;
        for run in 0..2000 {
            let history = arbitrary(&mut rng);
            let (capacity, w) = (rng.below(6), 1 + rng.below(3000));
            let violated = history.iter().any(|first| {
                let s = first.before;
                history
                    .iter()
                    .filter(|last| last.after >= s && last.after - s < w)
                    .any(|last| {
                        let members = history
                            .iter()
                            .filter(|r| r.before >= s && r.after <= last.after);
                        members.map(|r| r.units).sum::<u64>() > capacity
                    })
            });
            let result = sliding_log(&history, capacity, w);
            assert_eq!(
                result.is_err(),
                violated,
                "run {run}: {result:?} for {history:?}"
            );
            failures += usize::from(violated);
        }
        assert!(failures > 200, "only {failures} violations");
    }

    /// A large saturated history (every start scans every later record): run with
    /// `--nocapture` to see the time quoted at the top of this file (measured also with 20,000).
    #[test]
    fn large_histories() {
        let n = 5_000u64;
        // Capacity 10, a unit back every 1000 µs, one unit admitted every 1000 µs.
        let history: Vec<Admitted> = (0..n).map(|i| rec(i * 1000, i * 1000 + 300, 1)).collect();
        let started = std::time::Instant::now();
        assert_eq!(token_bucket(&history, 10, 1, 1000, 0), Ok(()));
        let bucket = started.elapsed();
        let started = std::time::Instant::now();
        assert_eq!(sliding_log(&history, 10, 10_000), Ok(()));
        assert_eq!(fixed_window(&history, 10, 10_000), Ok(()));
        assert_eq!(sliding_window(&history, 20, 10_000), Ok(()));
        eprintln!(
            "n = {n}: token bucket {bucket:?}, the others {:?}",
            started.elapsed()
        );
    }
}
