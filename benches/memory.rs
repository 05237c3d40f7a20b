//! Run with: `cargo bench --bench memory`
//!
//! Nanoseconds per decision of the in-memory store beside governor's keyed rate limiter (its
//! default dashmap state), in the same run, on 1 and 2 threads, every decision allowed, keys
//! built beforehand. With 2 threads, each thread makes the decisions and the time is the wall
//! time per decision of one thread. Three workloads (issue 26):
//!
//! - `fast`: 10,000 keys visited in a scattered order, with a quota that refills faster than a
//!   key is revisited, so each bucket is full again when its client returns: most clients of a
//!   real API, well under their limits. Reported first.
//! - `slow`: the same keys and order, with a quota that refills slower than it is spent, so
//!   buckets stay partly used.
//! - `one_key`: one key, the fast quota.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use tollgate::{Limit, MemoryStore};

/// `n` keys, in a scattered order: a fixed pseudo-random permutation.
fn keys(n: usize) -> Arc<Vec<String>> {
    let mut keys: Vec<String> = (0..n)
        .map(|i| format!("tollgate:{{client-{i}:GET:/}}"))
        .collect();
    // Fisher-Yates with a fixed xorshift, so every run visits the keys in the same order.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..keys.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        keys.swap(i, (x % (i as u64 + 1)) as usize);
    }
    Arc::new(keys)
}

/// Runs `decide` on `threads` threads, `iters` times each over `keys` (each thread from its
/// own place in the order), and returns the wall time.
fn run<F>(threads: usize, iters: u64, keys: &Arc<Vec<String>>, decide: F) -> Duration
where
    F: Fn(&String) + Send + Sync + Clone + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (keys, decide) = (keys.clone(), decide.clone());
            std::thread::spawn(move || {
                let n = keys.len();
                let offset = t * n / threads.max(1);
                for i in 0..iters as usize {
                    decide(&keys[(i + offset) % n]);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    start.elapsed()
}

/// A workload: its keys, and the same quota for both limiters.
struct Workload {
    name: &'static str,
    keys: usize,
    limit: Limit,
    quota: Quota,
}

fn workloads() -> Vec<Workload> {
    let burst = |n: u32| NonZeroU32::new(n).unwrap();
    // Fast: 100 units, one back every 10 µs (a bucket is full again 1 ms after it was used;
    // a key is revisited every 10,000 decisions, about 1 ms).
    let fast_limit = Limit::new("bench", 100, 100, Duration::from_millis(1)).unwrap();
    let fast_quota = Quota::with_period(Duration::from_micros(10))
        .unwrap()
        .allow_burst(burst(100));
    // Slow: a billion units, one back per second: never full again, never empty in a run.
    let slow_limit = Limit::new("bench", 1_000_000_000, 1, Duration::from_secs(1)).unwrap();
    let slow_quota = Quota::per_second(burst(1)).allow_burst(burst(1_000_000_000));
    // One key under the fast quota would be refused (a decision every 100 ns): a huge
    // capacity refilled fast, as the project's bench always had it.
    let one_limit = Limit::new("bench", 1 << 40, 1_000_000, Duration::from_secs(1)).unwrap();
    let one_quota = Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX);
    vec![
        Workload {
            name: "fast",
            keys: 10_000,
            limit: fast_limit,
            quota: fast_quota,
        },
        Workload {
            name: "slow",
            keys: 10_000,
            limit: slow_limit,
            quota: slow_quota,
        },
        Workload {
            name: "one_key",
            keys: 1,
            limit: one_limit,
            quota: one_quota,
        },
    ]
}

fn compare(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    for workload in workloads() {
        for threads in [1, 2] {
            let keys = keys(workload.keys);
            let label = format!("{}_{threads}t", workload.name);
            let limits: Arc<[Limit]> = Arc::new([workload.limit.clone()]);
            let store = MemoryStore::new();
            group.bench_with_input(BenchmarkId::new("tollgate", &label), &(), |b, _| {
                b.iter_custom(|iters| {
                    let (store, limits) = (store.clone(), limits.clone());
                    run(threads, iters, &keys, move |key| {
                        let decision = store.decide_now(key, &limits, 1).unwrap();
                        debug_assert!(decision.allowed);
                        black_box(decision);
                    })
                })
            });
            let governor = Arc::new(RateLimiter::<String, _, _>::keyed(workload.quota));
            group.bench_with_input(BenchmarkId::new("governor", &label), &(), |b, _| {
                b.iter_custom(|iters| {
                    let governor = governor.clone();
                    run(threads, iters, &keys, move |key| {
                        let _ = black_box(governor.check_key(key));
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, compare);
criterion_main!(benches);
