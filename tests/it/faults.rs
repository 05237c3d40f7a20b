//! Redis killed, hung, restarted empty, flushed, and absent at start, in the three fail modes:
//! each request answers within the timeout as the fail mode says, and limiting resumes.

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use tollgate::{FailMode, RedisStore, TollgateLayer};

use crate::harness::{HttpClient, Proxy, RedisServer, Reply, TestServer};

/// Long enough that a busy CI machine answers in time when Redis is healthy (a `SCRIPT FLUSH`
/// costs three round trips), far below `BOUND`.
const TIMEOUT: Duration = Duration::from_millis(250);
/// The most a request may take while Redis fails: the timeout plus room for a busy machine.
/// The store's own response timeout is 30 s, so only the layer's timeout can meet this.
const BOUND: Duration = Duration::from_secs(1);

async fn server(url: &str, fail_mode: FailMode) -> TestServer {
    let client = redis::Client::open(url).unwrap();
    let config = RedisStore::default_config().set_response_timeout(Some(Duration::from_secs(30)));
    let store = RedisStore::with_config(client, config).unwrap();
    // Best effort: connect and load the script before the first request.
    let _ = tokio::time::timeout(Duration::from_secs(2), store.load_script()).await;
    server_with(store, fail_mode).await
}

/// `GET /` answering `ok`, limited to 10 per client (one back every 10 s) in `store`, with a
/// short timeout and `fail_mode`.
pub async fn server_with(store: RedisStore, fail_mode: FailMode) -> TestServer {
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .store(store)
        .capacity(10)
        // One token back every 10 s: nothing refills during a step of the test.
        .period(Duration::from_secs(100))
        .timeout(TIMEOUT)
        .fail_mode(fail_mode)
        // With FailMode::Local: one unit of the ten, so a local decision (r=0, or 429) is told
        // apart from Redis's (r ≥ 1 for a bucket with units left).
        .local_share(0.1)
        // The servers of one test are instances on one Redis: the same buckets, on purpose.
        .share_buckets(true)
        .build()
        .unwrap();
    TestServer::start(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await
}

/// Whether Redis decided a request: it carries `RateLimit` (and, with the local fail mode,
/// units left that the local share of one unit never shows).
pub fn decided_by_redis(reply: &Reply, fail_mode: FailMode) -> bool {
    match (reply.header("ratelimit"), fail_mode) {
        (Some(field), FailMode::Local) => !field.contains(";r=0"),
        (field, _) => field.is_some(),
    }
}

pub fn assert_fail_mode(reply: &Reply, fail_mode: FailMode) {
    assert!(reply.latency < BOUND, "took {:?}", reply.latency);
    if fail_mode == FailMode::Local {
        // Decided in process against one unit of the ten: the first passes, then 429s.
        match reply.status.as_u16() {
            200 => assert_eq!(reply.body, "ok"),
            429 => assert!(reply.header("retry-after").is_some(), "{reply:?}"),
            _ => panic!("{reply:?}"),
        }
        let field = reply.header("ratelimit").unwrap_or_default();
        assert!(field.starts_with("\"default\";r=0;t="), "{reply:?}");
        return;
    }
    assert_eq!(reply.header("ratelimit"), None, "{reply:?}");
    match fail_mode {
        FailMode::Open => {
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(reply.body, "ok");
        }
        FailMode::Closed => {
            assert_eq!(reply.status, 503, "{reply:?}");
            assert_eq!(reply.header("retry-after"), Some("1"));
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(
                reply.json(),
                serde_json::json!({"error": "rate limiter unavailable"})
            );
        }
        _ => unreachable!(),
    }
}

/// Sends requests until one is decided by Redis again (it carries `RateLimit`); returns it.
pub async fn until_limiting(
    client: &HttpClient,
    server: &TestServer,
    fail_mode: FailMode,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = client.get(server.addr, "/", Some(b"k")).await;
        if decided_by_redis(&reply, fail_mode) {
            assert_eq!(reply.status, 200, "{reply:?}");
            return reply;
        }
        assert_fail_mode(&reply, fail_mode);
        assert!(
            Instant::now() < deadline,
            "limiting did not resume within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn survives_faults(fail_mode: FailMode) {
    let mut redis = RedisServer::start();
    let server = server(&redis.url(), fail_mode).await;
    let client = HttpClient::new();
    let get = || client.get(server.addr, "/", Some(b"k"));

    assert_eq!(get().await.header("ratelimit"), Some("\"default\";r=9"));

    // SCRIPT FLUSH: the script is loaded again within the same decision.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(get().await.header("ratelimit"), Some("\"default\";r=8"));

    // Hung (SIGSTOP): the connection stays open and nothing answers.
    redis.hang();
    for _ in 0..5 {
        assert_fail_mode(&get().await, fail_mode);
    }
    redis.resume();
    until_limiting(&client, &server, fail_mode).await;

    // Killed: the connection breaks.
    redis.kill();
    for _ in 0..5 {
        assert_fail_mode(&get().await, fail_mode);
    }
    // Restarted empty: the store reconnects by itself and the bucket starts full.
    redis.restart();
    let reply = until_limiting(&client, &server, fail_mode).await;
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=9"));
    // And it limits again.
    for _ in 0..9 {
        get().await;
    }
    assert_eq!(get().await.status, 429);
}

#[tokio::test]
async fn fail_open_survives_faults() {
    survives_faults(FailMode::Open).await;
}

#[tokio::test]
async fn fail_closed_survives_faults() {
    survives_faults(FailMode::Closed).await;
}

#[tokio::test]
async fn fail_local_survives_faults() {
    survives_faults(FailMode::Local).await;
}

/// A service starts while Redis is down, follows its fail mode, and limits once Redis is up.
#[tokio::test]
async fn starts_without_redis() {
    let mut redis = RedisServer::start();
    redis.kill();
    let server = server(&redis.url(), FailMode::Closed).await;
    let client = HttpClient::new();
    for _ in 0..3 {
        assert_fail_mode(
            &client.get(server.addr, "/", Some(b"k")).await,
            FailMode::Closed,
        );
    }
    redis.restart();
    let reply = until_limiting(&client, &server, FailMode::Closed).await;
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=9"));
}

/// The connection goes silent without breaking (a proxy that stops forwarding, like a network
/// black hole): requests follow the fail mode, and the store opens a new connection by itself.
#[tokio::test]
async fn a_silent_connection_is_replaced() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.socket()).await;
    let server = server(&format!("redis://{}/", proxy.addr), FailMode::Closed).await;
    let client = HttpClient::new();
    let reply = client.get(server.addr, "/", Some(b"k")).await;
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=9"));
    assert_eq!(proxy.connections(), 1);

    proxy.stall_existing();
    assert_fail_mode(
        &client.get(server.addr, "/", Some(b"k")).await,
        FailMode::Closed,
    );
    until_limiting(&client, &server, FailMode::Closed).await;
    assert!(proxy.connections() >= 2);
}
