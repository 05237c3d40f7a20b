//! Concurrency limits: slots decided with the rate limits in one call (all or nothing), freed
//! when the holder is done, never more than N in flight across instances, and the slots of an
//! instance cut off from Redis freed after their lease while a live one keeps its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use tokio::sync::mpsc;
use tollgate::store::{AnyStore, Store};
use tollgate::{Limit, Limiter, MemoryStore, Policies, RedisStore, Subject, Target, Verdict};

use crate::harness::{Proxy, RedisServer};
use crate::reserve::{Signalling, next};

const HOUR: Duration = Duration::from_secs(3600);

fn policies(streams: Limit) -> Policies {
    Policies::builder()
        .default_limit(Limit::new("tokens", 100, 1, HOUR).unwrap())
        .default_limit(streams)
        .build()
        .unwrap()
}

fn limiter<St: Store>(store: St, streams: Limit) -> Limiter<St> {
    Limiter::builder()
        .store(store)
        .policies(policies(streams))
        .timeout(Duration::from_secs(2))
        // Instances of one service: the same buckets, on purpose.
        .share_buckets(true)
        .build()
        .unwrap()
}

fn alice<St>(limiter: &Limiter<St>) -> Subject {
    limiter
        .subject("alice", Target::route(&Method::POST, "/v1/completions"))
        .unwrap()
}

/// Tokens left and slots in use.
async fn state<St: Store>(limiter: &Limiter<St>, subject: &Subject) -> (u64, u64) {
    let peek = limiter.peek(subject, 1).await.unwrap();
    (peek[0].remaining, peek[1].limit - peek[1].remaining)
}

#[tokio::test]
async fn slots_are_held_until_released_all_or_nothing_with_the_rates() {
    let redis = RedisServer::start();
    let (done, mut released) = mpsc::unbounded_channel();
    let redis_store = AnyStore::new(Signalling {
        inner: RedisStore::open(&redis.url()).unwrap(),
        done,
    });
    let streams = Limit::concurrency("streams", 2).unwrap();
    for (run, store) in [
        ("memory", AnyStore::from(MemoryStore::new())),
        ("redis", redis_store),
    ] {
        let remote = store.is_remote();
        let limiter = limiter(store, streams.clone());
        let s = alice(&limiter);
        let first = limiter.take(&s, 5).await;
        let second = limiter.take(&s, 5).await;
        assert!(first.is_allowed() && second.is_allowed(), "{run}");
        assert_eq!(state(&limiter, &s).await, (90, 2), "{run}");
        // No slot left: refused by the streams limit, and no token taken.
        let third = limiter.take(&s, 5).await;
        assert!(!third.is_allowed(), "{run}");
        let binding = third.decision().unwrap();
        assert_eq!(
            (binding.index, binding.retry_after),
            (1, Duration::from_secs(1)),
            "{run}"
        );
        assert_eq!(state(&limiter, &s).await, (90, 2), "{run}");
        // One holder done: its slot is free again.
        drop(first);
        if remote {
            assert_eq!(next(&mut released).await, ("release", 0), "{run}");
        }
        assert_eq!(state(&limiter, &s).await, (90, 1), "{run}");
        // Refused by the tokens with a slot free: no slot taken.
        let costly = limiter.take(&s, 95).await;
        assert_eq!(costly.decision().map(|d| d.index), Some(0), "{run}");
        assert_eq!(state(&limiter, &s).await, (90, 1), "{run}");
        let fourth = limiter.take(&s, 1).await;
        assert!(fourth.is_allowed(), "{run}: {:?}", fourth.verdict());
        drop((second, fourth));
        if remote {
            next(&mut released).await;
            next(&mut released).await;
        }
        assert_eq!(state(&limiter, &s).await, (89, 0), "{run}");
    }
}

/// 64 callers on two instances (two stores, as two processes would have), 4 slots: never more
/// than 4 hold one at once, and every slot taken is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_n_in_flight_across_two_instances() {
    let redis = RedisServer::start();
    let (done, mut released) = mpsc::unbounded_channel();
    let streams = Limit::concurrency("streams", 4).unwrap();
    let instances: Vec<_> = (0..2)
        .map(|_| {
            limiter(
                Signalling {
                    inner: RedisStore::open(&redis.url()).unwrap(),
                    done: done.clone(),
                },
                streams.clone(),
            )
        })
        .collect();
    let current = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let allowed = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for i in 0..64 {
        let limiter = instances[i % 2].clone();
        let (current, most, allowed) = (current.clone(), most.clone(), allowed.clone());
        callers.push(tokio::spawn(async move {
            let s = alice(&limiter);
            for _ in 0..5 {
                let outcome = limiter.take(&s, 1).await;
                if !outcome.is_allowed() {
                    assert!(matches!(outcome.verdict(), Verdict::Decided { .. }));
                    continue;
                }
                allowed.fetch_add(1, Ordering::SeqCst);
                // Counted within the time the slot is held in Redis.
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                current.fetch_sub(1, Ordering::SeqCst);
                drop(outcome);
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let allowed = allowed.load(Ordering::SeqCst);
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 4, "{most} in flight at once");
    assert!(
        allowed > 4 && most >= 2,
        "{allowed} allowed, at most {most} at once"
    );
    for _ in 0..allowed {
        assert_eq!(next(&mut released).await.0, "release");
    }
    let limiter = &instances[0];
    assert_eq!(state(limiter, &alice(limiter)).await.1, 0);
}

/// A live instance keeps its slots past their lease (renewed); an instance cut off from
/// Redis loses them once the lease runs out, and another instance takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_a_lost_instance_run_out_with_their_lease() {
    let redis = RedisServer::start();
    // Renewed every 200 ms: a live instance keeps its slots unless stalled for 400 ms.
    let lease = Duration::from_millis(600);
    let streams = Limit::concurrency("streams", 2)
        .unwrap()
        .slot_ttl(lease)
        .unwrap();
    let proxy = Proxy::start(redis.socket()).await;
    let lost = limiter(
        RedisStore::open(&format!("redis://{}/", proxy.addr)).unwrap(),
        streams.clone(),
    );
    let other = limiter(RedisStore::open(&redis.url()).unwrap(), streams);
    let held = [
        lost.take(&alice(&lost), 1).await,
        lost.take(&alice(&lost), 1).await,
    ];
    assert!(held.iter().all(|o| o.is_allowed()));
    // Four leases later the requests still hold their slots.
    tokio::time::sleep(4 * lease).await;
    assert!(!other.take(&alice(&other), 1).await.is_allowed());
    // Cut off: its renewals no longer reach Redis, and the slots run out.
    proxy.stall_existing();
    let started = tokio::time::Instant::now();
    loop {
        if other.take(&alice(&other), 1).await.is_allowed() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slots never ran out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

/// A response body fed by the test: it ends when the sender is dropped.
struct Fed(mpsc::UnboundedReceiver<bytes::Bytes>);

impl http_body::Body for Fed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// Through the layer: a response holds its slot until its body ends; a request over the
/// limit gets 429 naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_holds_its_slot_until_its_body_ends() {
    use axum::{Router, routing::post};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let redis = RedisServer::start();
    let (done, mut released) = mpsc::unbounded_channel();
    let limiter = limiter(
        Signalling {
            inner: RedisStore::open(&redis.url()).unwrap(),
            done,
        },
        Limit::concurrency("streams", 1).unwrap(),
    );
    let layer = tollgate::TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .limiter(limiter.clone())
        .build()
        .unwrap();
    // Each request's body is fed through the channel the test gets back.
    let (bodies, mut fed) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/v1/completions",
            post(move || {
                let bodies = bodies.clone();
                async move {
                    let (send, receive) = mpsc::unbounded_channel();
                    bodies.send(send).unwrap();
                    axum::response::Response::new(axum::body::Body::new(Fed(receive)))
                }
            }),
        )
        .layer(layer);
    let server = crate::harness::TestServer::start(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let post = || {
        let request = http::Request::post(format!("http://{}/v1/completions", server.addr))
            .header("x-api-key", "alice")
            .body(Empty::new())
            .unwrap();
        client.request(request)
    };
    let first = post().await.unwrap();
    let feed = fed.recv().await.unwrap();
    feed.send(bytes::Bytes::from("data: 1\n\n")).unwrap();
    let mut first_body = first.into_body();
    first_body.frame().await.unwrap().unwrap();
    // The stream runs: no slot for a second one.
    let refused = post().await.unwrap();
    assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["limit"], "streams", "{json}");
    // The stream ends: its slot is freed, and the next request gets it.
    drop(feed);
    assert!(first_body.frame().await.is_none());
    assert_eq!(next(&mut released).await.0, "release");
    let second = post().await.unwrap();
    assert_eq!(second.status(), http::StatusCode::OK);
    drop(fed.recv().await.unwrap());
    second.into_body().collect().await.unwrap();
    assert_eq!(next(&mut released).await.0, "release");
    assert_eq!(state(&limiter, &alice(&limiter)).await.1, 0);
}

/// The TOML form: `algorithm = "concurrency"`, the period being the lease.
#[test]
fn a_concurrency_limit_from_toml_is_the_code_one() {
    let text = r#"
        [[default.limits]]
        name = "streams"
        capacity = 2
        period = "300ms"
        algorithm = "concurrency"
    "#;
    let from_file = Policies::from_toml(text).unwrap();
    let code = Limit::concurrency("streams", 2)
        .unwrap()
        .slot_ttl(Duration::from_millis(300))
        .unwrap();
    assert_eq!(from_file.limits().collect::<Vec<_>>(), vec![&code]);
    assert!(code.counts_requests());
    let too_many = text.replace("capacity = 2", "capacity = 1001");
    let error = Policies::from_toml(&too_many).unwrap_err().to_string();
    assert!(
        error.contains("capacity") && error.contains("1000"),
        "{error}"
    );
}
