//! Run with: `cargo bench --bench memory`
//!
//! Nanoseconds per decision of the in-memory store beside governor's keyed rate limiter (its
//! default dashmap state), in the same run: 1 and 2 threads, over 1 key and 10,000 keys, keys
//! built beforehand, every decision allowed. With 2 threads, each thread makes the decisions
//! and the time is the wall time per decision of one thread.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use tollgate::{Limit, MemoryStore};

fn keys(n: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..n)
            .map(|i| format!("tollgate:{{client-{i}:GET:/}}"))
            .collect(),
    )
}

/// Runs `decide` on `threads` threads, `iters` times each over `keys`, and returns the wall time.
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
                for i in 0..iters as usize {
                    decide(&keys[(i * 7 + t) % n]);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    start.elapsed()
}

fn compare(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    for threads in [1, 2] {
        for n in [1, 10_000] {
            let keys = keys(n);
            let label = format!("{threads}t_{n}k");
            let limits: Arc<[Limit]> =
                Arc::new([
                    Limit::new("bench", 1 << 40, 1_000_000, Duration::from_secs(1)).unwrap(),
                ]);
            let store = MemoryStore::new();
            group.bench_with_input(BenchmarkId::new("tollgate", &label), &n, |b, _| {
                b.iter_custom(|iters| {
                    let (store, limits) = (store.clone(), limits.clone());
                    run(threads, iters, &keys, move |key| {
                        black_box(store.decide_now(key, &limits, 1).unwrap());
                    })
                })
            });
            let quota = Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX);
            let governor = Arc::new(RateLimiter::<String, _, _>::keyed(quota));
            group.bench_with_input(BenchmarkId::new("governor", &label), &n, |b, _| {
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
