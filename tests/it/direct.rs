//! The engine used directly (no HTTP): take, peek, refund and reset behave the same on the
//! memory store and on a real Redis (single here, a cluster in `cluster.rs`), peeking never
//! changes what follows, refunds give back exactly their units, settlements leave exactly what
//! the work cost, reset clears this process's
//! cached denials, a hung Redis is bounded by the timeout and the fail mode, bad calls write
//! nothing, and an HTTP client's bucket is the same as its direct subject's.

use std::sync::Arc;
use std::time::Duration;

use axum::{Router, routing::get};
use http::Method;
use tollgate::store::{AnyStore, Store};
use tollgate::{
    DecidedBy, FailMode, Limit, Limiter, MemoryStore, Policies, RedisStore, Rule, StoreError,
    SubjectError, Target, TollgateLayer, Verdict,
};

use crate::algorithms::away_from_window_edges;
use crate::harness::{HttpClient, RedisServer, TestServer};

const HOUR: Duration = Duration::from_secs(3600);

/// Policies of each algorithm (nothing comes back within a test: hour-long periods), and one
/// of three algorithms together; with the capacity that binds.
fn cases() -> Vec<(&'static str, Vec<Limit>, u64)> {
    vec![
        ("tb", vec![Limit::new("c", 5, 1, HOUR).unwrap()], 5),
        ("fw", vec![Limit::fixed_window("c", 5, HOUR).unwrap()], 5),
        ("sw", vec![Limit::sliding_window("c", 5, HOUR).unwrap()], 5),
        ("sl", vec![Limit::sliding_log("c", 5, HOUR).unwrap()], 5),
        (
            "mixed",
            vec![
                Limit::sliding_log("a", 6, HOUR).unwrap(),
                Limit::fixed_window("b", 5, HOUR).unwrap(),
                Limit::new("c", 7, 1, HOUR).unwrap(),
            ],
            5,
        ),
    ]
}

fn limiter<St: Store + Clone>(store: &St, prefix: &str, limits: &[Limit]) -> Limiter<St> {
    let mut policies = Policies::builder();
    for limit in limits {
        policies = policies.default_limit(limit.clone());
    }
    Limiter::builder()
        .store(store.clone())
        .policies(policies.build().unwrap())
        .key_prefix(prefix)
        // Generous: these tests are not about timeouts.
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// The units left of the binding limit after a take (the fewest of every limit).
async fn take<St: Store>(
    limiter: &Limiter<St>,
    subject: &tollgate::Subject,
    cost: u64,
) -> (bool, u64) {
    let outcome = limiter.take(subject, cost).await;
    let decision = *outcome.decision().expect("the limits decided");
    (outcome.is_allowed(), decision.remaining)
}

async fn remaining<St: Store>(limiter: &Limiter<St>, subject: &tollgate::Subject) -> u64 {
    let peek = limiter.peek(subject, 1).await.unwrap();
    peek.iter().map(|d| d.remaining).min().unwrap()
}

/// The shared behavioural suite of the direct calls, for any store; `writes` counts what the
/// store holds (buckets or keys), to show that peeking writes nothing.
/// `run` keeps the keys of one run apart from another's on the same store.
pub async fn suite<St: Store + Clone>(run: &str, store: St, writes: impl Fn() -> u64) {
    away_from_window_edges(HOUR, Duration::from_secs(10)).await;
    for (name, limits, capacity) in cases() {
        let limiter = limiter(&store, &format!("{run}-{name}"), &limits);
        let alice = limiter
            .subject("alice", Target::route(&Method::GET, "/x"))
            .unwrap();
        // Peeking a bucket never used: every limit whole, nothing written.
        let before = writes();
        let peek = limiter.peek(&alice, 1).await.unwrap();
        assert_eq!(peek.len(), limits.len(), "{name}");
        for (i, (d, limit)) in peek.iter().zip(&limits).enumerate() {
            assert_eq!(
                (d.allowed, d.remaining, d.retry_after, d.index),
                (true, limit.capacity(), Duration::ZERO, i),
                "{name}"
            );
        }
        assert_eq!(writes(), before, "{name}: peek wrote");
        // Takes, with peeks between them that change nothing. Each limit reports what it
        // has left.
        let mut first = limiter.take(&alice, 2).await;
        assert!(first.is_allowed(), "{name}: {first:?}");
        let mut receipt = first.receipt().expect("the store took 2");
        assert_eq!(receipt.units(), 2, "{name}");
        assert_eq!(first.decision().unwrap().remaining, capacity - 2, "{name}");
        let each: Vec<_> = first
            .decisions()
            .iter()
            .map(|d| (d.allowed, d.index, d.limit, d.remaining))
            .collect();
        let expected: Vec<_> = (limits.iter().enumerate())
            .map(|(i, l)| (true, i, l.capacity(), l.capacity() - 2))
            .collect();
        assert_eq!(each, expected, "{name}");
        assert_eq!(remaining(&limiter, &alice).await, capacity - 2, "{name}");
        assert_eq!(remaining(&limiter, &alice).await, capacity - 2, "{name}");
        assert_eq!(
            take(&limiter, &alice, capacity - 2).await,
            (true, 0),
            "{name}"
        );
        let denied = limiter.take(&alice, 1).await;
        assert!(!denied.is_allowed(), "{name}: {denied:?}");
        assert!(
            matches!(
                denied.verdict(),
                Verdict::Decided {
                    by: DecidedBy::Store,
                    ..
                }
            ),
            "{name}: {denied:?}"
        );
        assert!(denied.retry_after().unwrap() > Duration::ZERO, "{name}");
        // Refused: each limit says whether it alone would have let the request through, and
        // the binding decision is a refusing limit's.
        let each: Vec<_> = denied
            .decisions()
            .iter()
            .map(|d| (d.allowed, d.index, d.remaining, d.retry_after.is_zero()))
            .collect();
        let expected: Vec<_> = (limits.iter().enumerate())
            .map(|(i, l)| {
                let left = l.capacity() - capacity;
                (left > 0, i, left, left > 0)
            })
            .collect();
        assert_eq!(each, expected, "{name}");
        let binding = denied.decision().unwrap();
        assert_eq!(
            (binding.allowed, denied.decisions()[binding.index].allowed),
            (false, false),
            "{name}: {denied:?}"
        );
        // A peek for one unit says it would not pass, and how long to wait.
        let peek = limiter.peek(&alice, 1).await.unwrap();
        assert!(
            peek.iter()
                .any(|d| !d.allowed && d.retry_after > Duration::ZERO),
            "{name}: {peek:?}"
        );
        // A refund of the first take's 2 admits exactly 2 more (also past a denial this
        // process cached), and the receipt holds nothing more.
        limiter.refund(&mut receipt, 2).await.unwrap();
        assert_eq!(receipt.units(), 0, "{name}");
        assert_eq!(remaining(&limiter, &alice).await, 2, "{name}");
        assert_eq!(take(&limiter, &alice, 1).await, (true, 1), "{name}");
        assert_eq!(take(&limiter, &alice, 1).await, (true, 0), "{name}");
        assert!(!limiter.take(&alice, 1).await.is_allowed(), "{name}");
        // Never more than the take held: its receipt, spent, gives nothing back.
        limiter.refund(&mut receipt, 1_000).await.unwrap();
        assert_eq!(remaining(&limiter, &alice).await, 0, "{name}");
        // Reset: whole again, and another subject was never touched.
        limiter.reset(&alice).await.unwrap();
        assert_eq!(remaining(&limiter, &alice).await, capacity, "{name}");
        assert_eq!(take(&limiter, &alice, capacity).await, (true, 0), "{name}");
        let bob = limiter
            .subject("bob", Target::route(&Method::GET, "/x"))
            .unwrap();
        assert_eq!(remaining(&limiter, &bob).await, capacity, "{name}");
        // A cost of 0 counts as 1; a cost above a capacity can never pass, and asks nothing.
        assert_eq!(
            take(&limiter, &bob, 0).await,
            (true, capacity - 1),
            "{name}"
        );
        let costly = limiter.take(&bob, 100).await;
        assert!(
            !costly.is_allowed()
                && matches!(costly.verdict(), Verdict::TooCostly { cost: 100, .. }),
            "{name}: {costly:?}"
        );
        assert_eq!(costly.retry_after(), Some(Duration::MAX));
        assert_eq!(remaining(&limiter, &bob).await, capacity - 1, "{name}");
        settlements(&limiter, name, &limits).await;
    }
}

/// Reservations settled lower, higher and to zero leave exactly the units the work cost; a
/// charge takes every limit down to empty and no further.
async fn settlements<St: Store>(limiter: &Limiter<St>, name: &str, limits: &[Limit]) {
    let carol = limiter
        .subject("carol", Target::route(&Method::GET, "/x"))
        .unwrap();
    let left = |used: u64| -> Vec<u64> { limits.iter().map(|l| l.capacity() - used).collect() };
    let each =
        |peek: Vec<tollgate::Decision>| -> Vec<u64> { peek.iter().map(|d| d.remaining).collect() };
    let receipt = |mut outcome: tollgate::Outcome| outcome.receipt().expect("the store took");
    // Reserve 3, use 1.
    let reserved = limiter.take(&carol, 3).await;
    assert_eq!(reserved.taken(), 3, "{name}");
    limiter.settle(receipt(reserved), 1).await.unwrap();
    assert_eq!(
        each(limiter.peek(&carol, 1).await.unwrap()),
        left(1),
        "{name}"
    );
    // Reserve 1, use 3.
    let reserved = limiter.take(&carol, 1).await;
    limiter.settle(receipt(reserved), 3).await.unwrap();
    assert_eq!(
        each(limiter.peek(&carol, 1).await.unwrap()),
        left(4),
        "{name}"
    );
    // Reserve 1, use nothing; then exactly what was reserved.
    let reserved = limiter.take(&carol, 1).await;
    limiter.settle(receipt(reserved), 0).await.unwrap();
    let before_take = std::time::Instant::now();
    let reserved = limiter.take(&carol, 1).await;
    let mut held = receipt(reserved);
    assert_eq!(held.units(), 1, "{name}");
    assert_eq!(
        each(limiter.peek(&carol, 1).await.unwrap()),
        left(5),
        "{name}"
    );
    // Far more than is left: every limit empty, not below (one unit of the last take, given
    // back, makes one available).
    limiter.charge(&carol, 1_000).await.unwrap();
    assert_eq!(
        each(limiter.peek(&carol, 1).await.unwrap()),
        vec![0; limits.len()],
        "{name}"
    );
    assert!(!limiter.take(&carol, 1).await.is_allowed(), "{name}");
    limiter.refund(&mut held, 1).await.unwrap();
    // A window or a log gets the unit back whole; a token bucket its worth less the refill
    // since it was taken (milliseconds here), and it refills from the charge on: the next
    // unit is at most as far away as the take is in the past (a millisecond for rounding),
    // or here already when the peek came later after the refund than the charge after the
    // take.
    let peek = limiter.peek(&carol, 1).await.unwrap();
    let since_take = before_take.elapsed() + Duration::from_millis(1);
    for (d, limit) in peek.iter().zip(limits) {
        match limit.algorithm() {
            tollgate::Algorithm::TokenBucket => assert!(
                d.remaining <= 1 && (d.remaining == 1 || d.retry_after <= since_take),
                "{name}: {d:?} ({since_take:?} since the take)"
            ),
            _ => assert_eq!(d.remaining, 1, "{name}: {d:?}"),
        }
    }
}

fn dbsize(redis: &RedisServer) -> u64 {
    redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap()
}

#[tokio::test]
async fn the_direct_calls_behave_alike_in_memory_and_in_redis() {
    let memory = MemoryStore::new();
    let held = memory.clone();
    suite("memory", memory, move || held.len() as u64).await;
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    suite("redis", store.clone(), || dbsize(&redis)).await;
    // The same through AnyStore, chosen at run time.
    suite("any-redis", AnyStore::from(store), || dbsize(&redis)).await;
    let memory = MemoryStore::new();
    let held = memory.clone();
    suite("any-memory", AnyStore::from(memory), move || {
        held.len() as u64
    })
    .await;
}

/// A denial cached in this process answers without Redis until reset forgets it.
#[tokio::test]
async fn reset_clears_this_process_cached_denials() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let limiter = limiter(&store, "reset", &[Limit::new("c", 2, 1, HOUR).unwrap()]);
    let alice = limiter
        .subject("alice", Target::rule("missing"))
        .unwrap_err();
    assert_eq!(alice, SubjectError::UnknownRule("missing".into()));
    let alice = limiter
        .subject("alice", Target::route(&Method::POST, "/send"))
        .unwrap();
    assert!(limiter.take(&alice, 2).await.is_allowed());
    let by = |o: &tollgate::Outcome| match o.verdict() {
        Verdict::Decided { by, .. } => *by,
        other => panic!("{other:?}"),
    };
    assert_eq!(by(&limiter.take(&alice, 1).await), DecidedBy::Store);
    assert_eq!(by(&limiter.take(&alice, 1).await), DecidedBy::DenyCache);
    limiter.reset(&alice).await.unwrap();
    assert_eq!(dbsize(&redis), 0);
    let outcome = limiter.take(&alice, 1).await;
    assert!(outcome.is_allowed());
    assert_eq!(by(&outcome), DecidedBy::Store);
}

/// A hung Redis (SIGSTOP): every direct call returns (bounded by the timeout) and a take
/// follows the fail mode, as an HTTP request would.
#[tokio::test]
async fn direct_calls_while_redis_hangs_follow_the_fail_mode() {
    let redis = RedisServer::start();
    let limits = [Limit::new("c", 5, 1, HOUR).unwrap()];
    let store = RedisStore::open(&redis.url()).unwrap();
    store.load_script().await.unwrap();
    let limiters: Vec<(FailMode, Limiter<RedisStore>)> = FailMode::ALL
        .iter()
        .map(|&mode| {
            let limiter = Limiter::builder()
                .store(store.clone())
                .key_prefix(mode.as_str())
                .policies(Policies::single(limits[0].clone()))
                .timeout(Duration::from_millis(100))
                .fail_mode(mode)
                .build()
                .unwrap();
            (mode, limiter)
        })
        .collect();
    redis.hang();
    // A liveness bound, far above the timeout: a call that waited for Redis would hit it.
    let bounded = Duration::from_secs(10);
    let mut reservations = Vec::new();
    for (mode, limiter) in &limiters {
        let alice = limiter
            .subject("alice", Target::route(&Method::GET, "/"))
            .unwrap();
        let outcome = tokio::time::timeout(bounded, limiter.take(&alice, 1))
            .await
            .unwrap();
        match (mode, outcome.verdict()) {
            (FailMode::Open, Verdict::FailedOpen(StoreError::Timeout(_))) => {
                assert!(outcome.is_allowed());
            }
            (FailMode::Closed, Verdict::FailedClosed(StoreError::Timeout(_))) => {
                assert!(!outcome.is_allowed());
                assert_eq!(outcome.retry_after(), Some(Duration::from_secs(1)));
            }
            (
                FailMode::Local,
                Verdict::Decided {
                    by: DecidedBy::Local,
                    decision,
                },
            ) => {
                assert!(
                    outcome.is_allowed() && decision.remaining == 4,
                    "{decision:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let peek = tokio::time::timeout(bounded, limiter.peek(&alice, 1))
            .await
            .unwrap();
        let charge = tokio::time::timeout(bounded, limiter.charge(&alice, 1))
            .await
            .unwrap();
        let reset = tokio::time::timeout(bounded, limiter.reset(&alice))
            .await
            .unwrap();
        for error in [peek.unwrap_err(), charge.unwrap_err(), reset.unwrap_err()] {
            assert!(
                matches!(error.kind(), "timeout" | "circuit_open"),
                "{mode:?}: {error}"
            );
        }
        // A reservation made while the store hangs took nothing from it.
        let carol = limiter
            .subject("carol", Target::route(&Method::GET, "/"))
            .unwrap();
        let reserved = tokio::time::timeout(bounded, limiter.take(&carol, 3))
            .await
            .unwrap();
        assert_eq!(reserved.taken(), 0, "{mode:?}: {reserved:?}");
        reservations.push((limiter, carol, reserved, *mode));
    }
    redis.resume();
    // Once the store answers again, settling such a reservation charges all the work did:
    // failed open, its receipt holds nothing. Refused, or decided locally, it has none.
    for (limiter, carol, mut reserved, mode) in reservations {
        let mut tries = 0;
        while limiter.peek(&carol, 1).await.is_err() {
            tries += 1;
            assert!(tries < 500, "Redis never answered again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let charged = match reserved.receipt() {
            Some(receipt) => {
                assert_eq!((mode, receipt.units()), (FailMode::Open, 0));
                limiter.settle(receipt, 2).await.unwrap();
                2
            }
            None => {
                assert_ne!(mode, FailMode::Open);
                0
            }
        };
        // The take abandoned at the timeout may still have run once Redis resumed (see
        // "Abandoned calls" on RedisStore): 3 more units then.
        let left = remaining(limiter, &carol).await;
        assert!(
            left == 5 - charged || left == 2 - charged,
            "{mode:?}: {left}"
        );
    }
}

/// A limit of requests takes one per request whatever its cost, in memory and in Redis; a cost
/// above it is no reason to refuse; settlements and refunds leave it alone.
#[tokio::test]
async fn a_limit_of_requests_takes_one_whatever_the_cost() {
    let redis = RedisServer::start();
    let limits = [
        Limit::new("tokens", 10, 1, HOUR).unwrap(),
        Limit::fixed_window("requests", 3, HOUR)
            .unwrap()
            .per_request(),
    ];
    let text = r#"
        [[default.limits]]
        name = "tokens"
        capacity = 10
        refill = 1
        period = "1h"

        [[default.limits]]
        name = "requests"
        capacity = 3
        period = "1h"
        algorithm = "fixed_window"
        per_request = true
    "#;
    let from_file = Policies::from_toml(text).unwrap();
    assert_eq!(
        from_file.limits().cloned().collect::<Vec<_>>(),
        limits.to_vec(),
        "the file's limits are the code's"
    );
    away_from_window_edges(HOUR, Duration::from_secs(10)).await;
    let memory = MemoryStore::new();
    let redis_store = RedisStore::open(&redis.url()).unwrap();
    for (run, store) in [
        ("memory", AnyStore::from(memory)),
        ("redis", AnyStore::from(redis_store)),
    ] {
        let limiter = Limiter::builder()
            .store(store)
            .policies(from_file.clone())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let s = limiter
            .subject("alice", Target::route(&Method::POST, "/v1"))
            .unwrap();
        let left = |o: &tollgate::Outcome| -> Vec<u64> {
            o.decisions().iter().map(|d| d.remaining).collect()
        };
        let mut first = limiter.take(&s, 4).await;
        assert_eq!((first.taken(), left(&first)), (4, vec![6, 2]), "{run}");
        // Settled lower: the tokens come back, the request still counts.
        limiter.settle(first.receipt().unwrap(), 1).await.unwrap();
        let peek: Vec<u64> = (limiter.peek(&s, 1).await.unwrap())
            .iter()
            .map(|d| d.remaining)
            .collect();
        assert_eq!(peek, vec![9, 2], "{run}");
        // A cost above the requests' capacity (3) but within the tokens' passes.
        let second = limiter.take(&s, 5).await;
        assert_eq!(left(&second), vec![4, 1], "{run}: {second:?}");
        // Above the tokens' capacity: can never pass, and the limit named is the tokens'.
        let costly = limiter.take(&s, 11).await;
        assert!(
            matches!(costly.verdict(), Verdict::TooCostly { cost: 11, limit: 0 }),
            "{run}: {costly:?}"
        );
        assert_eq!(left(&limiter.take(&s, 1).await), vec![3, 0], "{run}");
        // Out of requests, with tokens left: refused by the requests' limit.
        let mut refused = limiter.take(&s, 1).await;
        assert!(!refused.is_allowed(), "{run}");
        assert_eq!(refused.decision().unwrap().index, 1, "{run}: {refused:?}");
        assert!(refused.receipt().is_none(), "{run}: a refusal took nothing");
    }
}

/// No call with no limits, or more than MAX_LIMITS, writes anything or panics.
#[tokio::test]
async fn calls_with_too_few_or_too_many_limits_are_refused_before_writing() {
    let redis = RedisServer::start();
    let redis_store = RedisStore::open(&redis.url()).unwrap();
    let memory = MemoryStore::new();
    let nine: Arc<[Limit]> = (0..9)
        .map(|i| Limit::new(format!("l{i}"), 5, 5, HOUR).unwrap())
        .collect();
    let none: Arc<[Limit]> = Arc::new([]);
    // Two sliding logs of 200: 400 entries in one call, above MAX_LOG_CAPACITY in all.
    let logs: Arc<[Limit]> = Arc::new([
        Limit::sliding_log("a", 200, HOUR).unwrap(),
        Limit::sliding_log("b", 200, HOUR).unwrap(),
    ]);
    let policy = Policies::builder()
        .default_limit(logs[0].clone())
        .default_limit(logs[1].clone())
        .build()
        .unwrap_err()
        .to_string();
    assert!(policy.contains("at most 250 entries in all"), "{policy}");
    fn invalid<T>(result: Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::Invalid(_)))
    }
    for limits in [&nine, &none, &logs] {
        assert!(invalid(redis_store.decide("k", limits, 1).await));
        assert!(invalid(redis_store.peek("k", limits, 1).await));
        let stamp = tollgate::store::Stamp::new(1, 1);
        assert!(invalid(
            redis_store.put_back("k", limits, &stamp, 1, true).await
        ));
        assert!(invalid(redis_store.reset("k", limits).await));
        assert!(invalid(memory.decide("k", limits, 1).await));
        assert!(invalid(memory.peek("k", limits, 1).await));
        let mut states = vec![tollgate::store::BucketState::default(); limits.len()];
        assert!(invalid(tollgate::store::BucketState::decide_all(
            limits,
            &mut states,
            0,
            1
        )));
    }
    let one = [Limit::new("one", 5, 5, HOUR).unwrap()];
    assert!(matches!(
        tollgate::store::BucketState::decide_all(&one, &mut [], 0, 1),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(dbsize(&redis), 0);
    assert!(memory.is_empty());
}

/// A layer built from a limiter charges the buckets its direct calls see.
#[tokio::test]
async fn http_requests_and_direct_calls_share_buckets() {
    let limiter = Limiter::builder()
        .capacity(5)
        .refill(1)
        .period(HOUR)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/{id}", get(|| async { "hi" }))
        .layer(
            TollgateLayer::builder()
                .client_extractor(tollgate::ApiKey::default())
                .limiter(limiter.clone())
                .build()
                .unwrap(),
        );
    let server = TestServer::start(app).await;
    let http = HttpClient::new();
    for _ in 0..3 {
        let reply = http.get(server.addr, "/users/1", Some(b"alice")).await;
        assert_eq!(reply.status, 200);
    }
    // The route template is the endpoint: /users/2 shares /users/1's bucket.
    let alice = limiter
        .subject("alice", Target::route(&Method::GET, "/users/{id}"))
        .unwrap();
    assert_eq!(remaining(&limiter, &alice).await, 2);
    let mut last = limiter.take(&alice, 2).await;
    assert_eq!(last.decision().unwrap().remaining, 0);
    let reply = http.get(server.addr, "/users/2", Some(b"alice")).await;
    assert_eq!(reply.status, 429);
    limiter
        .refund(&mut last.receipt().unwrap(), 1)
        .await
        .unwrap();
    let reply = http.get(server.addr, "/users/2", Some(b"alice")).await;
    assert_eq!(reply.status, 200);
}

/// `total_connections_received` of a server: grows when a client opens a new connection.
fn connections_received(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_connections_received in {info}"))
}

/// Callers that go away while their call is in flight (a client hanging up mid-decision) are
/// not store failures: the calls finish on their own, take their units, and the store keeps
/// its connection (three failures in a row would open a new one) and its breaker closed.
#[tokio::test]
async fn cancelled_calls_are_not_store_failures() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    store.load_script().await.unwrap();
    let limiter = limiter(&store, "cancel", &[Limit::new("c", 100, 1, HOUR).unwrap()]);
    let alice = limiter
        .subject("alice", Target::route(&Method::GET, "/"))
        .unwrap();
    assert!(limiter.take(&alice, 1).await.is_allowed());
    // The store opens a new connection at most once a second, the first a second after it was
    // made: wait that out, or the test could not tell a reconnection from none.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // One connection of the test's own, opened before counting.
    let mut conn = redis.conn();
    let before = connections_received(&mut conn);
    redis.hang();
    // Each caller gives up while Redis cannot answer: its future is dropped mid-call.
    for _ in 0..6 {
        let gave_up = tokio::time::timeout(Duration::from_millis(20), limiter.take(&alice, 1));
        assert!(gave_up.await.is_err());
    }
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(Duration::from_millis(20), limiter.peek(&alice, 1));
        assert!(gave_up.await.is_err());
    }
    redis.resume();
    // Decided by Redis on the same connection, after the cancelled calls (sent before it).
    let outcome = limiter.take(&alice, 1).await;
    assert!(
        matches!(
            outcome.verdict(),
            Verdict::Decided {
                by: DecidedBy::Store,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(outcome.decision().unwrap().remaining, 100 - 1 - 6 - 1);
    assert_eq!(
        connections_received(&mut conn),
        before,
        "a new connection was opened"
    );
}

/// A denial is remembered at most `deny_cache_max`: after an operator deletes the key (which
/// the cache cannot know), this instance denies for at most that long, then Redis decides.
#[tokio::test]
async fn the_deny_cache_forgets_within_its_bound() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let max = Duration::from_millis(300);
    let limiter = Limiter::builder()
        .store(store)
        .policies(Policies::single(Limit::new("c", 1, 1, HOUR).unwrap()))
        .timeout(Duration::from_secs(2))
        .deny_cache_max(max)
        .build()
        .unwrap();
    let alice = limiter
        .subject("alice", Target::route(&Method::GET, "/"))
        .unwrap();
    let by = |o: &tollgate::Outcome| match o.verdict() {
        Verdict::Decided { by, decision } => (*by, decision.allowed),
        other => panic!("{other:?}"),
    };
    assert_eq!(by(&limiter.take(&alice, 1).await), (DecidedBy::Store, true));
    let denied = limiter.take(&alice, 1).await;
    // The cached denial was asked for before this: it expires before `denied_at + max`.
    let denied_at = std::time::Instant::now();
    assert_eq!(by(&denied), (DecidedBy::Store, false));
    // The wait reported is the bucket's (an hour), not the cache's bound.
    assert!(denied.retry_after().unwrap() > Duration::from_secs(3000));
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.conn()).unwrap();
    let cached = limiter.take(&alice, 1).await;
    assert_eq!(by(&cached), (DecidedBy::DenyCache, false));
    assert!(cached.retry_after().unwrap() > Duration::from_secs(3000));
    // Past the bound, Redis decides again: whole after the flush.
    tokio::time::sleep(max.saturating_sub(denied_at.elapsed())).await;
    assert_eq!(by(&limiter.take(&alice, 1).await), (DecidedBy::Store, true));
}

/// Two limiters (or layers) on one store with the same prefix and limit names would charge the
/// same buckets: refused at build unless both say they share; a claim ends with its limiter.
#[test]
fn two_limiters_cannot_charge_the_same_buckets_unknowingly() {
    let store = MemoryStore::new();
    let build = |prefix: &str, share: bool| {
        TollgateLayer::builder()
            .client_extractor(tollgate::ApiKey::default())
            .store(store.clone())
            .key_prefix(prefix)
            .capacity(5)
            .period(HOUR)
            .share_buckets(share)
            .build()
    };
    let first = build("app", false).unwrap();
    let error = build("app", false).unwrap_err().to_string();
    assert!(
        error.contains("key_prefix") && error.contains("app (limit default)"),
        "{error}"
    );
    // Another prefix, or another store, is fine.
    let other = build("other", false).unwrap();
    let elsewhere = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .store(MemoryStore::new())
        .key_prefix("app")
        .capacity(5)
        .period(HOUR)
        .build();
    assert!(elsewhere.is_ok());
    // Once the first is gone, its buckets are free.
    drop(first);
    let again = build("app", false).unwrap();
    // Sharing, when both ask for it.
    let (a, b) = (build("shared", true), build("shared", true));
    assert!(a.is_ok() && b.is_ok());
    drop((other, again));
}

/// A subject or a receipt names a policy of the limiter that made it: used on another
/// limiter, it is refused (with a verdict or an error that says so), never a panic or another
/// policy's limits.
#[tokio::test]
async fn a_subject_or_receipt_from_another_limiter_is_refused() {
    let minute = Duration::from_secs(60);
    let two_rules = Policies::builder()
        .rule(Rule::new("a", "/a").limit(Limit::new("l", 5, 5, minute).unwrap()))
        .rule(Rule::new("b", "/b").limit(Limit::new("l", 5, 5, minute).unwrap()))
        .build()
        .unwrap();
    let first = Limiter::builder().policies(two_rules).build().unwrap();
    let second = Limiter::builder()
        .capacity(1)
        .period(minute)
        .build()
        .unwrap();
    // The second rule's subject: its policy index is past the second limiter's policies.
    let subject = first.subject("alice", Target::rule("b")).unwrap();
    let outcome = second.take(&subject, 1).await;
    assert!(
        matches!(outcome.verdict(), Verdict::ForeignSubject),
        "{outcome:?}"
    );
    assert!(!outcome.is_allowed());
    for error in [
        second.peek(&subject, 1).await.unwrap_err(),
        second.charge(&subject, 1).await.unwrap_err(),
        second.reset(&subject).await.unwrap_err(),
    ] {
        assert!(error.to_string().contains("another limiter"), "{error}");
    }
    let mut taken = first.take(&subject, 2).await;
    assert!(taken.is_allowed());
    let mut receipt = taken.receipt().unwrap();
    let error = second.refund(&mut receipt, 1).await.unwrap_err();
    assert!(error.to_string().contains("another limiter"), "{error}");
    assert_eq!(receipt.units(), 2, "nothing spent");
    first.settle(receipt, 0).await.unwrap();
    assert_eq!(first.peek(&subject, 1).await.unwrap()[0].remaining, 5);
}
