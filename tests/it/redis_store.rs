//! The Redis store against a real Redis: the script's arithmetic, TTLs, NOSCRIPT, agreement
//! with the memory store, and no over- or under-admission across two instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use tollgate::store::bucket_key;
use tollgate::{Decision, Limit, MemoryStore, RateLimitLayer, RedisStore, Store, decide_all};

use crate::harness::{HttpClient, RedisServer, TestServer};

fn get_full_at(conn: &mut redis::Connection, key: &str) -> Option<u64> {
    redis::cmd("GET").arg(key).query(conn).unwrap()
}

/// A small deterministic pseudo-random sequence (xorshift), so failures replay.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Every decision of the Lua script equals `decide_all` (which the memory store runs) at the
/// Redis clock's time of the call, to the microsecond, with one limit and with several.
#[tokio::test]
async fn script_matches_the_shared_arithmetic_step_for_step() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let mut conn = redis.conn();
    let ms = Duration::from_millis;
    let policies: Vec<Arc<[Limit]>> = vec![
        // 5 tokens, one back every 20 ms.
        Arc::new([Limit::new("a", 5, 5, ms(100)).unwrap()]),
        // An interval that is not a whole number of milliseconds.
        Arc::new([Limit::new("b", 7, 3, ms(100)).unwrap()]),
        // Three limits, each the tightest at some point.
        Arc::new([
            Limit::new("fast", 4, 4, ms(80)).unwrap(),
            Limit::new("slow", 9, 3, ms(300)).unwrap(),
            Limit::new("tiny", 2, 20, ms(200)).unwrap(),
        ]),
    ];
    for (p, limits) in policies.iter().enumerate() {
        let key = format!("step{p}");
        let buckets: Vec<String> = limits.iter().map(|l| bucket_key(&key, l)).collect();
        let read = |conn: &mut redis::Connection| -> Vec<Option<u64>> {
            buckets.iter().map(|b| get_full_at(conn, b)).collect()
        };
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 + p as u64);
        let (mut allowed, mut denied, mut expired) = (0, 0, 0);
        for _ in 0..120 {
            let cost = 1 + rng.below(2);
            let before = read(&mut conn);
            let decision = store.decide(&key, limits, cost).await.unwrap();
            let after = read(&mut conn);
            if decision.allowed && after.iter().any(Option::is_none) {
                // A bucket expired (it was full again) before we could read it back: a busy
                // machine took longer than its TTL. Nothing to compare this step against.
                expired += 1;
                continue;
            }
            let i = decision.index;
            let reset_us = decision.reset_after.as_micros() as u64;
            // The script's clock, recovered from what it wrote (or, when it denied, from the
            // bucket it left alone).
            let now = if decision.allowed {
                after[i].unwrap() - reset_us
            } else {
                // A denial writes nothing (a bucket may have expired meanwhile: it was full).
                for (b, a) in before.iter().zip(&after) {
                    assert!(a == b || a.is_none(), "{before:?} became {after:?}");
                }
                before[i].unwrap() - reset_us
            };
            let mut full_ats: Vec<u64> = before.iter().map(|b| b.unwrap_or(now)).collect();
            let expected = decide_all(limits, &mut full_ats, now, cost);
            assert_eq!(
                decision, expected,
                "cost {cost} at {now}, buckets {before:?}"
            );
            if decision.allowed {
                assert_eq!(after, full_ats.iter().map(|&f| Some(f)).collect::<Vec<_>>());
                allowed += 1;
                for (bucket, &full_at) in buckets.iter().zip(&full_ats) {
                    let pttl: i64 = redis::cmd("PTTL").arg(bucket).query(&mut conn).unwrap();
                    let bound = (full_at - now).div_ceil(1000);
                    // -2: already expired (full again) by the time we asked; -1 would be a
                    // key without a TTL.
                    assert!(
                        pttl == -2 || (pttl > 0 && pttl as u64 <= bound),
                        "PTTL {pttl} > {bound}"
                    );
                }
            } else {
                denied += 1;
            }
            tokio::time::sleep(Duration::from_millis(rng.below(25))).await;
        }
        assert!(
            allowed > 10 && denied > 10,
            "{allowed} allowed, {denied} denied"
        );
        assert!(
            expired < 12,
            "{expired} of 120 steps could not be read back"
        );
    }
}

/// Both stores give the same decisions for the same sequences.
#[tokio::test]
async fn memory_and_redis_agree_on_sequences() {
    let redis = RedisServer::start();
    let stores = (RedisStore::open(&redis.url()).unwrap(), MemoryStore::new());
    // Refills slow enough that the few milliseconds between the two stores' calls do not
    // change a whole token.
    let hour = Duration::from_secs(3600);
    let one: Arc<[Limit]> = Arc::new([Limit::new("seq", 10, 1, hour).unwrap()]);
    let two: Arc<[Limit]> = Arc::new([
        Limit::new("burst", 6, 1, hour).unwrap(),
        Limit::new("daily", 10, 1, hour * 24).unwrap(),
    ]);
    let sequences: &[&[u64]] = &[&[1; 12], &[3, 3, 3, 3, 1, 1], &[10, 1], &[4, 7, 6, 1, 2]];
    for limits in [&one, &two] {
        for (i, costs) in sequences.iter().enumerate() {
            let key = format!("seq-{i}-{}", limits.len());
            for &cost in *costs {
                let r = stores.0.decide(&key, limits, cost).await.unwrap();
                let m = stores.1.decide(&key, limits, cost).await.unwrap();
                let summary = |d: &Decision| (d.allowed, d.remaining, d.limit, d.index);
                assert_eq!(summary(&r), summary(&m), "{key} cost {cost}");
                let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_millis(500);
                assert!(close(r.retry_after, m.retry_after), "{r:?} {m:?}");
                assert!(close(r.reset_after, m.reset_after), "{r:?} {m:?}");
            }
        }
    }
}

/// 64 concurrent callers on two connections under two limits: exactly the tighter limit's
/// capacity passes, and the other limit gave exactly one token per allowed request (a denied
/// request took nothing from either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_limits_are_atomic_under_concurrency() {
    let redis = RedisServer::start();
    let stores = [
        RedisStore::open(&redis.url()).unwrap(),
        RedisStore::open(&redis.url()).unwrap(),
    ];
    let hour = Duration::from_secs(3600);
    let limits: Arc<[Limit]> = Arc::new([
        Limit::new("burst", 10, 1, hour).unwrap(),
        Limit::new("daily", 25, 1, hour * 24).unwrap(),
    ]);
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (store, limits) = (stores[t % 2].clone(), limits.clone());
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            for _ in 0..4 {
                if store.decide("atomic", &limits, 1).await.unwrap().allowed {
                    allowed += 1;
                }
            }
            allowed
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    assert_eq!(allowed, 10);
    // The daily bucket alone: 25 - 10 taken - this one.
    let daily: Arc<[Limit]> = Arc::new([limits[1].clone()]);
    assert_eq!(
        stores[0]
            .decide("atomic", &daily, 1)
            .await
            .unwrap()
            .remaining,
        14
    );
}

#[tokio::test]
async fn script_is_reloaded_after_script_flush() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let limit: Arc<[Limit]> = Arc::new([Limit::new("f", 3, 3, Duration::from_secs(60)).unwrap()]);
    let mut conn = redis.conn();
    assert_eq!(store.decide("k", &limit, 1).await.unwrap().remaining, 2);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(store.script_sha())
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, [false]);
    assert_eq!(store.decide("k", &limit, 1).await.unwrap().remaining, 1);
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(store.script_sha())
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, [true]);
}

/// Two instances, each with its own connection to one Redis.
async fn two_instances(
    redis: &RedisServer,
    capacity: u64,
    refill: u64,
    period: Duration,
) -> [TestServer; 2] {
    let mut servers = Vec::new();
    for _ in 0..2 {
        let layer = RateLimitLayer::builder()
            .store(RedisStore::open(&redis.url()).unwrap())
            .capacity(capacity)
            .refill(refill)
            .period(period)
            // Generous: this test is about counting, not about failing open.
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let app = Router::new()
            .route("/hot", get(|| async { "ok" }))
            .layer(layer);
        servers.push(TestServer::start(app).await);
    }
    servers.try_into().ok().unwrap()
}

/// Counts replies: (allowed, limited); anything else fails the test.
async fn hammer(
    servers: &[TestServer; 2],
    tasks: usize,
    per_task: usize,
    until: Option<Instant>,
) -> (u64, u64) {
    let client = HttpClient::new();
    let allowed = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let addrs = [servers[0].addr, servers[1].addr];
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (client, allowed, limited) = (client.clone(), allowed.clone(), limited.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                if until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                let reply = client
                    .get(addrs[(t + i) % 2], "/hot", Some(b"hot-key"))
                    .await;
                match reply.status.as_u16() {
                    200 => allowed.fetch_add(1, Ordering::Relaxed),
                    429 => limited.fetch_add(1, Ordering::Relaxed),
                    other => panic!("unexpected status {other}: {reply:?}"),
                };
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    (
        allowed.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    )
}

/// 128 concurrent tasks on one key through two instances: exactly the capacity passes when no
/// token comes back during the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_exactly_the_capacity() {
    let redis = RedisServer::start();
    let servers = two_instances(&redis, 100, 1, Duration::from_secs(3600)).await;
    let (allowed, limited) = hammer(&servers, 128, 4, None).await;
    assert_eq!((allowed, limited), (100, 412));
}

/// With tokens coming back during the run, two instances never admit more than
/// capacity + refill × elapsed, and do not leave refilled tokens unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_capacity_plus_refill() {
    let redis = RedisServer::start();
    // 20 at once, then one every 50 ms.
    let servers = two_instances(&redis, 20, 20, Duration::from_secs(1)).await;
    let start = Instant::now();
    let (allowed, limited) = hammer(
        &servers,
        64,
        10_000,
        Some(start + Duration::from_millis(1500)),
    )
    .await;
    let elapsed = start.elapsed();
    let refilled = elapsed.as_micros() as u64 / 50_000;
    assert!(allowed <= 20 + refilled, "{allowed} allowed in {elapsed:?}");
    // The load never stops, so nearly every refilled token is taken; allow for the last
    // replies still in flight and for a slow machine.
    let sending = Duration::from_millis(1500).min(elapsed).as_micros() as u64 / 50_000;
    assert!(
        allowed >= 20 + sending / 2,
        "{allowed} allowed in {elapsed:?}"
    );
    assert!(limited > allowed, "{limited} limited");
}

/// Counts the `EVALSHA` calls a Redis has run.
fn evalsha_calls(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A hot key that is always denied costs Redis almost nothing with the deny cache, and every
/// request without it; the answers are the same.
#[tokio::test]
async fn the_deny_cache_spares_redis_on_a_hot_key() {
    use tower::{Layer, ServiceExt};

    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let store = RedisStore::open(&redis.url()).unwrap();
    store.load_script().await.unwrap();
    let hot = |cache: bool| {
        RateLimitLayer::builder()
            .store(store.clone())
            .key_prefix(if cache { "cached" } else { "uncached" })
            .capacity(1)
            .refill(1)
            .period(Duration::from_secs(3600))
            .deny_cache(cache)
            .build()
            .unwrap()
            .layer(tower::service_fn(|_: http::Request<String>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }))
    };
    let request = || {
        http::Request::get("/hot")
            .header("x-api-key", "flood")
            .body(String::new())
            .unwrap()
    };
    for cache in [true, false] {
        let svc = hot(cache);
        let before = evalsha_calls(&mut conn);
        assert_eq!(svc.clone().oneshot(request()).await.unwrap().status(), 200);
        let mut retry_after = Vec::new();
        for _ in 0..2_000 {
            let response = svc.clone().oneshot(request()).await.unwrap();
            assert_eq!(response.status(), 429);
            retry_after.push(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let calls = evalsha_calls(&mut conn) - before;
        // Both ways, every denial says to come back in about an hour.
        assert!(
            retry_after.iter().all(|r| r == "3600" || r == "3599"),
            "{retry_after:?}"
        );
        if cache {
            // One call allowed, one denied and cached: 0.001 calls per denied request.
            assert_eq!(calls, 2);
        } else {
            assert_eq!(calls, 2_001);
        }
    }
}
