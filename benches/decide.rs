//! Run with: `cargo bench --bench decide`
//!
//! The in-process cost of a decision: the memory store alone (one hot key, and 10,000 keys),
//! a direct `Limiter::take` (stamped, with its receipt), and the whole layer around a trivial
//! service.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::{Limit, Limiter, MemoryStore, Target, TollgateLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

fn memory_store(c: &mut Criterion) {
    // Never denies within a run: a huge capacity refilled fast.
    let limit = [Limit::new("bench", 1 << 40, 1_000_000, Duration::from_secs(1)).unwrap()];
    let store = MemoryStore::new();
    c.bench_function("memory_store/1_key", |b| {
        b.iter(|| black_box(store.decide_now("tollgate:{k:GET:/}", &limit, 1).unwrap()))
    });
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("tollgate:{{k{i}:GET:/}}:bench"))
        .collect();
    let mut i = 0;
    c.bench_function("memory_store/10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(store.decide_now(&keys[i], &limit, 1).unwrap())
        })
    });
}

fn limiter(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let limiter = Limiter::builder()
        .capacity(1 << 40)
        .refill(1_000_000)
        .period(Duration::from_secs(1))
        .build()
        .unwrap();
    let subject = limiter
        .subject("alice", Target::route(&http::Method::GET, "/users/1"))
        .unwrap();
    c.bench_function("limiter/take_allowed", |b| {
        b.iter(|| runtime.block_on(async { black_box(limiter.take(&subject, 1).await) }))
    });
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .capacity(1 << 40)
        .refill(1_000_000)
        .period(Duration::from_secs(1))
        .build()
        .unwrap();
    let inner = service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
    });
    let mut svc = layer.layer(inner);
    c.bench_function("layer/memory_store_allowed", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::get("/users/1")
                    .header("x-api-key", "alice")
                    .body(Full::default())
                    .unwrap();
                let svc = svc.ready().await.unwrap();
                black_box(svc.call(request).await.unwrap())
            })
        })
    });
}

criterion_group!(benches, memory_store, limiter, layer);
criterion_main!(benches);
