//! The arithmetic of each algorithm on scripted request sequences, with exact admission counts
//! worked out by hand. (`tests/it/algorithms.rs` shows the Lua scripts agree with it.)

use std::time::Duration;

use super::*;
use crate::Limit;

const MS: u64 = 1_000;
const SECOND: u64 = 1_000_000;

fn token_bucket(capacity: u64, refill: u64, period_ms: u64) -> Limit {
    Limit::new("t", capacity, refill, Duration::from_millis(period_ms)).unwrap()
}

fn limit(algorithm: Algorithm, capacity: u64, window_ms: u64) -> Limit {
    Limit::with_algorithm(
        algorithm,
        "w",
        capacity,
        None,
        Duration::from_millis(window_ms),
    )
    .unwrap()
}

/// 10 per second, by each algorithm.
fn ten_per_second() -> [Limit; 4] {
    [
        token_bucket(10, 10, 1_000),
        limit(Algorithm::SlidingLog, 10, 1_000),
        limit(Algorithm::SlidingWindow, 10, 1_000),
        limit(Algorithm::FixedWindow, 10, 1_000),
    ]
}

/// Sends `n` requests of cost 1 at each time (µs) of `bursts`; returns how many passed in each.
fn admitted(limit: &Limit, bursts: &[(u64, u64)]) -> Vec<u64> {
    let mut state = BucketState::default();
    bursts
        .iter()
        .map(|&(at, n)| {
            (0..n)
                .filter(|_| limit.decide(&mut state, at, 1).allowed)
                .count() as u64
        })
        .collect()
}

#[test]
fn a_burst_at_a_window_edge() {
    // 10 requests just before the edge of second 1, 10 at it, 10 half a second later, 10 at
    // the next edge.
    let bursts = [
        (990 * MS, 10),
        (SECOND, 10),
        (1_500 * MS, 10),
        (2 * SECOND, 10),
    ];
    let [bucket, log, sliding, fixed] = ten_per_second();
    // A token bucket refills a token each 100 ms: 0 after 10 ms, 5 after 500 ms.
    assert_eq!(admitted(&bucket, &bursts), [10, 0, 5, 5]);
    // Exact: the first ten leave the window at 1.99 s.
    assert_eq!(admitted(&log, &bursts), [10, 0, 0, 10]);
    // The estimate at 1.0 s counts all ten of the previous window, at 1.5 s half of them; at
    // 2.0 s the five of window 1.
    assert_eq!(admitted(&sliding, &bursts), [10, 0, 5, 5]);
    // The fixed window's known error: 20 pass within 10 ms across the edge.
    assert_eq!(admitted(&fixed, &bursts), [10, 10, 0, 10]);
}

#[test]
fn a_steady_rate_at_the_capacity() {
    // One request every 100 ms for 10 s: exactly the rate of every limit.
    let steady: Vec<(u64, u64)> = (0..100).map(|i| (i * 100 * MS, 1)).collect();
    let [bucket, log, sliding, fixed] = ten_per_second();
    let total = |limit: &Limit| admitted(limit, &steady).iter().sum::<u64>();
    assert_eq!(total(&bucket), 100);
    assert_eq!(total(&log), 100);
    assert_eq!(total(&fixed), 100);
    // The counter's estimate assumes the previous window's ten were spread evenly: at the start
    // of each window it counts them all (so the request at the edge is refused), and from the
    // third window on it admits 9 a window: 10 + 9 × 9.
    assert_eq!(total(&sliding), 91);
}

#[test]
fn idle_then_burst() {
    // 5 requests, 10 seconds of nothing, then 20 at once: every bucket is whole again.
    let bursts = [(0, 5), (10 * SECOND, 20)];
    for limit in ten_per_second() {
        assert_eq!(
            admitted(&limit, &bursts),
            [5, 10],
            "{:?}",
            limit.algorithm()
        );
    }
}

#[test]
fn bounds_hold_in_every_span_of_one_window() {
    // 2,000 requests at pseudo-random times over 20 s, bunched at the window edges half the
    // time: in every span of one window, the sliding log passes at most the capacity and the
    // fixed window at most twice that (and at most the capacity per aligned window).
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut times: Vec<u64> = (0..2_000)
        .map(|_| {
            let t = next() % (20 * SECOND);
            if next() % 2 == 0 {
                // Within 20 ms of an edge.
                (t / SECOND) * SECOND + SECOND - next() % (20 * MS)
            } else {
                t
            }
        })
        .collect();
    times.sort_unstable();
    let [_, log, sliding, fixed] = ten_per_second();
    for (limit, bound) in [(&log, 10), (&fixed, 20), (&sliding, 20)] {
        let mut state = BucketState::default();
        let passed: Vec<u64> = times
            .iter()
            .copied()
            .filter(|&t| limit.decide(&mut state, t, 1).allowed)
            .collect();
        let most = passed
            .iter()
            .map(|&t| passed.iter().filter(|&&u| u >= t && u < t + SECOND).count())
            .max()
            .unwrap();
        assert!(most <= bound, "{:?}: {most}", limit.algorithm());
        let per_window = (0..20)
            .map(|w| passed.iter().filter(|&&t| t / SECOND == w).count())
            .max()
            .unwrap();
        assert!(per_window <= 10, "{:?}: {per_window}", limit.algorithm());
        if limit.algorithm() == Algorithm::FixedWindow {
            // The edge bunches make the fixed window's error show.
            assert!(most > 10, "{most}");
        }
    }
}

#[test]
fn decisions_report_exact_waits() {
    let [_, log, sliding, fixed] = ten_per_second();
    // Fixed window: 9 at 0.25 s, then the 10th at 0.5 s empties it until the edge.
    let mut state = BucketState::default();
    for _ in 0..9 {
        fixed.decide(&mut state, 250 * MS, 1);
    }
    let d = fixed.decide(&mut state, 500 * MS, 1);
    assert_eq!((d.allowed, d.remaining), (true, 0));
    assert_eq!(d.available_after, Duration::from_millis(500));
    let d = fixed.decide(&mut state, 600 * MS, 3);
    assert_eq!((d.allowed, d.remaining), (false, 0));
    assert_eq!(d.retry_after, Duration::from_millis(400));
    assert_eq!(d.reset_after, Duration::from_millis(400));

    // Sliding log: entries at 0.1 s (4 of them, one request of cost 4) and 0.3 s (6).
    let mut state = BucketState::default();
    assert!(log.decide(&mut state, 100 * MS, 4).allowed);
    let d = log.decide(&mut state, 300 * MS, 6);
    assert_eq!((d.allowed, d.remaining), (true, 0));
    // Exhausted: a unit comes back when the oldest entries leave, at 1.1 s.
    assert_eq!(d.available_after, Duration::from_millis(800));
    assert_eq!(d.reset_after, Duration::from_secs(1));
    // Cost 5 at 0.5 s needs the 4 of 0.1 s and one of 0.3 s gone: at 1.3 s.
    let d = log.decide(&mut state, 500 * MS, 5);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_millis(800));
    assert_eq!(d.reset_after, Duration::from_millis(800));
    // Cost 4 needs only the 4 of 0.1 s gone: at 1.1 s.
    let d = log.decide(&mut state, 500 * MS, 4);
    assert_eq!(d.retry_after, Duration::from_millis(600));
    // Never more entries than the capacity.
    let BucketState::Log(entries) = state else {
        panic!("a log");
    };
    assert_eq!(entries.len(), 10);

    // Sliding window counter: 10 in window 0, then at 1.2 s the estimate is 8.
    let mut state = BucketState::default();
    assert!(sliding.decide(&mut state, 0, 10).allowed);
    let d = sliding.decide(&mut state, 1_200 * MS, 2);
    assert_eq!((d.allowed, d.remaining), (true, 0));
    // One more fits once 10 × (1 − e) + 2 ≤ 9: at e = 0.3 s.
    assert_eq!(d.available_after, Duration::from_millis(100));
    // Cost 9 cannot fit this window (2 + 9 > 10): in the next, 2 × (1 − e) + 9 ≤ 10 at
    // e = 0.5 s, so 0.8 s + 0.5 s from now.
    let d = sliding.decide(&mut state, 1_200 * MS, 9);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_millis(1_300));
    // The previous window's ten are forgotten at 2 s, this window's two at 3 s.
    assert_eq!(d.reset_after, Duration::from_millis(1_800));
}

#[test]
fn weighted_costs_count_as_that_many_units() {
    for limit in ten_per_second() {
        let mut state = BucketState::default();
        let now = 5 * SECOND;
        assert!(limit.decide(&mut state, now, 7).allowed, "{limit:?}");
        let d = limit.decide(&mut state, now, 4);
        assert!(!d.allowed, "{limit:?}");
        assert_eq!(d.remaining, 3, "{limit:?}");
        let d = limit.decide(&mut state, now, 3);
        assert_eq!((d.allowed, d.remaining), (true, 0), "{limit:?}");
        // A cost above the capacity can never pass, and takes nothing.
        let before = state.clone();
        let d = limit.decide(&mut state, now + 10 * SECOND, 11);
        assert_eq!(d.retry_after, Duration::MAX, "{limit:?}");
        assert_eq!(state, before);
    }
}

#[test]
fn several_limits_of_different_algorithms_are_all_or_nothing() {
    // 2 at once, one back a second; and 3 per (aligned) day.
    let limits = [
        token_bucket(2, 2, 2_000),
        limit(Algorithm::FixedWindow, 3, 86_400_000),
    ];
    let now = 1_000 * SECOND;
    let mut states: [BucketState; 2] = Default::default();
    let d = decide_all(&limits, &mut states, now, 1).unwrap();
    // Both took one: 1 left of the burst, 2 of the day; the burst is reported.
    assert_eq!((d.allowed, d.index, d.remaining), (true, 0, 1));
    let d = decide_all(&limits, &mut states, now, 1).unwrap();
    assert_eq!((d.allowed, d.index, d.remaining), (true, 0, 0));
    // The burst is empty: refused, and the day keeps its last unit.
    let before = states.clone();
    let d = decide_all(&limits, &mut states, now, 1).unwrap();
    assert_eq!((d.allowed, d.index), (false, 0));
    assert_eq!(d.retry_after, Duration::from_secs(1));
    assert_eq!(states, before);
    // A second later: both give their last unit; the first is reported on the tie.
    let d = decide_all(&limits, &mut states, now + SECOND, 1).unwrap();
    assert_eq!((d.allowed, d.index, d.remaining), (true, 0, 0));
    // At 2 s the burst would allow, the day refuses until midnight UTC.
    let d = decide_all(&limits, &mut states, now + 2 * SECOND, 1).unwrap();
    assert_eq!((d.allowed, d.index), (false, 1));
    assert_eq!(
        d.retry_after,
        Duration::from_micros(86_400 * SECOND - (now + 2 * SECOND))
    );
}

#[test]
fn a_new_token_bucket_starts_full() {
    let l = token_bucket(10, 10, 10_000);
    let mut state = BucketState::default();
    let d = l.decide(&mut state, 5 * SECOND, 1);
    assert!(d.allowed);
    assert_eq!(d.remaining, 9);
    assert_eq!(d.reset_after, Duration::from_secs(1));
    assert_eq!(d.retry_after, Duration::ZERO);
    assert_eq!(state, (BucketState::FullAt(6 * SECOND)));
}

#[test]
fn extreme_costs_and_clocks_never_overflow() {
    let now = 1_000 * SECOND;
    for l in ten_per_second() {
        for cost in [11, 1 << 40, u64::MAX] {
            let mut state = BucketState::default();
            let d = l.decide(&mut state, now, cost);
            assert!(!d.allowed);
            assert_eq!(d.remaining, 10);
            assert_eq!(d.retry_after, Duration::MAX);
        }
        // Cost 0 is cost 1.
        assert_eq!(l.decide(&mut BucketState::default(), now, 0).remaining, 9);
        let mut state = BucketState::default();
        l.decide(&mut state, u64::MAX - 5, u64::MAX);
        l.decide(&mut state, u64::MAX - 5, 1);
        l.decide(&mut state, 0, 1);
    }
    // The clock stepped back by an hour: the token bucket counts as empty, not as stopped for an
    // hour, and a unit comes back a second later as the refusal said.
    let l = token_bucket(10, 10, 10_000);
    let mut state = BucketState::FullAt(now + 3_600 * SECOND);
    let d = l.decide(&mut state, now, 1);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.retry_after, Duration::from_secs(1));
    assert_eq!(d.reset_after, Duration::from_secs(10));
    assert!(l.decide(&mut state, now + SECOND, 1).allowed);
    // A window written by a clock ahead counts in now's window, and ends when it does.
    let fixed = limit(Algorithm::FixedWindow, 3, 1_000);
    let mut state = BucketState::Window {
        index: now / SECOND + 60,
        current: 3,
        previous: 0,
    };
    let d = fixed.decide(&mut state, now + 400 * MS, 1);
    assert_eq!(
        (d.allowed, d.retry_after),
        (false, Duration::from_millis(600))
    );
    assert!(fixed.decide(&mut state, now + SECOND, 1).allowed);
}

#[test]
fn idle_buckets_are_recognised() {
    let [bucket, log, sliding, fixed] = ten_per_second();
    for limit in [&bucket, &log, &sliding, &fixed] {
        let mut state = BucketState::default();
        assert!(state.is_idle(limit, 0));
        limit.decide(&mut state, 500 * MS, 3);
        assert!(!state.is_idle(limit, 600 * MS), "{limit:?}");
        assert_eq!(state.used(limit, 500 * MS), 3, "{limit:?}");
        // Two windows later nothing of it counts.
        assert!(state.is_idle(limit, 2_600 * MS), "{limit:?}");
    }
    // The sliding window still counts the previous window.
    let mut state = BucketState::default();
    sliding.decide(&mut state, 500 * MS, 3);
    assert!(!state.is_idle(&sliding, 1_500 * MS));
    assert!(state.is_idle(&fixed, 1_500 * MS));
}

#[test]
fn algorithm_names_round_trip() {
    for algorithm in Algorithm::ALL {
        assert_eq!(algorithm.as_str().parse::<Algorithm>().unwrap(), algorithm);
    }
    let err = "leaky".parse::<Algorithm>().unwrap_err().to_string();
    assert!(err.contains("algorithm") && err.contains("leaky"), "{err}");
}

/// Properties of every algorithm over arbitrary request sequences: a cost above the capacity
/// never passes; an exact algorithm never lets more pass than it promises in any span; a
/// sliding log never keeps more entries than its capacity; decisions never report more units
/// left than the capacity.
mod props {
    use proptest::prelude::*;

    use super::*;

    /// (gap before the request in ms, cost) pairs.
    fn requests() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0u64..400, 1u64..8), 1..200)
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn every_algorithm_keeps_its_promise(
            requests in requests(),
            capacity in 1u64..12,
            window_ms in 50u64..2_000,
            start in 0u64..10_000_000_000,
        ) {
            let w = window_ms * MS;
            for algorithm in Algorithm::RATES {
                let limit = Limit::with_algorithm(
                    algorithm, "p", capacity, None, Duration::from_millis(window_ms),
                ).unwrap();
                let mut state = BucketState::default();
                let mut now = start;
                let mut passed: Vec<(u64, u64)> = Vec::new();
                for &(gap, cost) in &requests {
                    now += gap * MS;
                    let d = limit.decide(&mut state, now, cost);
                    prop_assert!(d.remaining <= capacity);
                    if cost > capacity {
                        prop_assert!(!d.allowed);
                        prop_assert_eq!(d.retry_after, Duration::MAX);
                    }
                    if d.allowed {
                        passed.push((now, cost));
                    } else if d.retry_after != Duration::MAX {
                        prop_assert!(d.retry_after > Duration::ZERO, "{algorithm:?} {d:?}");
                    }
                    if let BucketState::Log(entries) = &state {
                        prop_assert!(entries.len() as u64 <= capacity);
                    }
                }
                // Units passed in every span of one window starting at a request.
                let most = passed
                    .iter()
                    .map(|&(t, _)| {
                        passed.iter().filter(|&&(u, _)| u >= t && u < t + w).map(|p| p.1).sum::<u64>()
                    })
                    .max()
                    .unwrap_or(0);
                let bound = match algorithm {
                    // A full bucket plus what refills within the span (one per w / capacity).
                    Algorithm::TokenBucket => 2 * capacity,
                    Algorithm::SlidingLog => capacity,
                    // Two windows' worth at most across an edge.
                    _ => 2 * capacity,
                };
                prop_assert!(most <= bound, "{algorithm:?}: {most} > {bound}");
                if algorithm == Algorithm::FixedWindow {
                    // And exactly the capacity per aligned window.
                    for &(t, _) in &passed {
                        let window = t / w;
                        let in_window: u64 =
                            passed.iter().filter(|&&(u, _)| u / w == window).map(|p| p.1).sum();
                        prop_assert!(in_window <= capacity);
                    }
                }
            }
        }

        /// Every limit's decisions and the binding one agree: the same buckets afterwards,
        /// the binding decision is the one `binding` picks among them, a passed request is
        /// passed by each, and a refused one is refused by at least one.
        #[test]
        fn each_limit_agrees_with_the_binding_decision(
            requests in prop::collection::vec((0u64..400, 0u64..14), 1..100),
            capacities in prop::collection::vec(1u64..12, 4),
            windows_ms in prop::collection::vec(50u64..2_000, 4),
            start in 0u64..10_000_000_000,
        ) {
            let limits: Vec<Limit> = Algorithm::RATES
                .iter()
                .enumerate()
                .map(|(i, &a)| {
                    let window = Duration::from_millis(windows_ms[i]);
                    Limit::with_algorithm(a, format!("l{i}"), capacities[i], None, window)
                        .unwrap()
                })
                .collect();
            let mut states: Vec<BucketState> = vec![BucketState::default(); limits.len()];
            let mut each_states = states.clone();
            let mut now = start;
            for &(gap, cost) in &requests {
                now += gap * MS;
                let d = decide_all(&limits, &mut states, now, cost).unwrap();
                let each = decide_each(&limits, &mut each_states, now, cost).unwrap();
                prop_assert_eq!(&states, &each_states);
                prop_assert_eq!(Some(d), binding(&each));
                prop_assert_eq!(each.len(), limits.len());
                for (i, e) in each.iter().enumerate() {
                    prop_assert_eq!(e.index, i);
                    // Zero wait exactly for the limits that let it through.
                    prop_assert_eq!(e.allowed, e.retry_after.is_zero(), "{:?}", e);
                }
                prop_assert_eq!(d.allowed, each.iter().all(|e| e.allowed));
            }
        }
    }
}
