//! The Redis store against a real Redis: NOSCRIPT, atomic decisions, no over- or
//! under-admission across two instances, and the deny cache. (The algorithms' arithmetic:
//! `algorithms.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use tollgate::store::Store;
use tollgate::{Limit, Policies, RedisStore, TollgateLayer};

use crate::algorithms::concurrently;
use crate::harness::{HttpClient, RedisServer, TestServer};

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
    let allowed = concurrently(&stores, "atomic", &limits, 4).await;
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
    assert_eq!(cached_scripts(&mut conn), 1);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    assert_eq!(cached_scripts(&mut conn), 0);
    assert_eq!(store.decide("k", &limit, 1).await.unwrap().remaining, 1);
    // Sent along with the call (EVAL), the script is cached again.
    assert_eq!(cached_scripts(&mut conn), 1);
}

/// How many scripts the server holds (`INFO memory`'s `number_of_cached_scripts`).
pub fn cached_scripts(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number_of_cached_scripts in {info}"))
}

/// Two instances, each with its own connection to one Redis.
async fn two_instances(
    redis: &RedisServer,
    capacity: u64,
    refill: u64,
    period: Duration,
) -> [TestServer; 2] {
    let limit = Limit::new("default", capacity, refill, period).unwrap();
    let stores = [(); 2].map(|_| RedisStore::open(&redis.url()).unwrap());
    instances(stores, Policies::single(limit)).await
}

/// Two instances serving `GET /hot` under `policies`, each with its own store.
pub async fn instances(stores: [RedisStore; 2], policies: Policies) -> [TestServer; 2] {
    let mut servers = Vec::new();
    for store in stores {
        let layer = TollgateLayer::builder()
            .client_extractor(tollgate::ApiKey::default())
            .store(store)
            .policies(policies.clone())
            // Two instances of one service: the same buckets, on purpose.
            .share_buckets(true)
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

/// `tasks` tasks each send up to `per_task` requests for client `key`, alternating between the
/// instances, until `until`; counts replies: (allowed, limited); anything else fails the test.
pub async fn hammer(
    servers: &[TestServer; 2],
    key: &'static [u8],
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
                let reply = client.get(addrs[(t + i) % 2], "/hot", Some(key)).await;
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
    let (allowed, limited) = hammer(&servers, b"hot-key", 128, 4, None).await;
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
        b"hot-key",
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
        TollgateLayer::builder()
            .client_extractor(tollgate::ApiKey::default())
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

/// Opening a store outside a Tokio runtime is an error that says so, not a panic in redis-rs.
#[test]
fn opening_outside_a_runtime_is_an_error() {
    let errors = [
        RedisStore::open("redis://127.0.0.1:1/").unwrap_err(),
        RedisStore::open_cluster(["redis://127.0.0.1:1/"]).unwrap_err(),
        RedisStore::open_sentinel(["redis://127.0.0.1:1/"], "mymaster").unwrap_err(),
    ];
    for error in errors {
        assert!(
            error.to_string().contains("inside a Tokio runtime"),
            "{error}"
        );
    }
}

/// A password in a Redis URL reaches no error message and no `Debug` output of a store.
#[tokio::test]
async fn passwords_stay_out_of_errors_and_debug_output() {
    for url in [
        "redis://:s3cret@127.0.0.1:notaport/",
        "redis://user:s3cret@[::1/",
        "rediss://:s3cret@",
        "redis+unix:///no/such.sock?pass=s3cret&db=x",
        "nonsense://:s3cret@127.0.0.1/",
    ] {
        match RedisStore::open(url) {
            Err(error) => {
                let shown = format!("{error} {error:?}");
                assert!(!shown.contains("s3cret"), "{url}: {shown}");
            }
            Ok(store) => {
                let shown = format!("{store:?}");
                assert!(!shown.contains("s3cret"), "{url}: {shown}");
                // A call that fails says why without the URL's secret either.
                let limits: Arc<[Limit]> =
                    Arc::new([Limit::new("p", 1, 1, Duration::from_secs(60)).unwrap()]);
                if let Err(error) = store.decide("k", &limits, 1).await {
                    let shown = format!("{error} {error:?}");
                    assert!(!shown.contains("s3cret"), "{url}: {shown}");
                }
            }
        }
    }
    let cluster = RedisStore::open_cluster(["redis://:s3cret@127.0.0.1:1/"]).unwrap();
    assert!(!format!("{cluster:?}").contains("s3cret"));
}

/// A misconfigured Redis fails loudly where the store is opened, with an error that says what
/// is wrong (its kind too) and names the URL without its password.
#[tokio::test]
async fn a_misconfigured_redis_fails_loudly_without_its_password() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-pw")
        .query(&mut conn)
        .unwrap();
    let url = redis.url();
    let cases = [
        (url.clone(), "auth"),
        (format!("{url}?pass=wrong-pw"), "auth"),
        (format!("{url}?pass=s3cret-pw&db=99"), "config"),
        (
            format!("redis+unix://{}-gone", redis.socket().display()),
            "connection",
        ),
    ];
    for (url, kind) in cases {
        let error = RedisStore::connect(&url).await.unwrap_err();
        let text = error.to_string();
        assert_eq!(error.kind(), kind, "{url}: {text}");
        assert!(text.contains("cannot use Redis at redis+unix://"), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("wrong-pw"),
            "{text}"
        );
        assert!(!format!("{error:?}").contains("s3cret"), "{error:?}");
    }
    let store = RedisStore::connect(&format!("{url}?pass=s3cret-pw"))
        .await
        .unwrap();
    let limits: Arc<[Limit]> = Arc::new([Limit::new("l", 2, 2, Duration::from_secs(60)).unwrap()]);
    assert!(store.decide("k", &limits, 1).await.unwrap().allowed);

    // No scheme: a hint. A URL that does not parse: named, without its password.
    let error = RedisStore::open("localhost:6379").unwrap_err();
    assert_eq!(error.kind(), "config");
    assert!(
        error.to_string().contains("redis://localhost:6379"),
        "{error}"
    );
    let error = RedisStore::open("redis://:s3cret-pw@host:notaport").unwrap_err();
    assert_eq!(error.kind(), "config");
    let text = error.to_string();
    assert!(
        text.contains("redis://:***@host:notaport") && !text.contains("s3cret"),
        "{text}"
    );
}

/// Two limiters of one process on one Redis, with the same prefix and limit names, are
/// refused however their stores were opened (two `open`s of one URL); another database is
/// another Redis.
#[tokio::test]
async fn two_stores_opened_on_one_redis_cannot_share_buckets_silently() {
    let redis = RedisServer::start();
    let build = |store: RedisStore| {
        tollgate::Limiter::builder()
            .store(store)
            .capacity(5)
            .period(Duration::from_secs(1))
            .build()
    };
    let first = build(RedisStore::open(&redis.url()).unwrap()).unwrap();
    let error = build(RedisStore::open(&redis.url()).unwrap()).unwrap_err();
    assert!(error.to_string().contains("key_prefix"), "{error}");
    let other_db = build(RedisStore::open(&format!("{}?db=1", redis.url())).unwrap());
    assert!(other_db.is_ok(), "{other_db:?}");
    drop(first);
    assert!(build(RedisStore::open(&redis.url()).unwrap()).is_ok());
}
