//! The HTTP contract (200/429/400 and every header) through a real server and client, for
//! both stores.

use std::time::Duration;

use axum::{Json, Router, routing::get};
use serde_json::json;
use tollgate::store::Store;
use tollgate::{MemoryStore, RedisStore, TollgateLayer};

use crate::harness::{HttpClient, RedisServer, Reply, TestServer};

fn app<St: Store + Clone>(store: St) -> Router {
    // One token back every 10 s, so a slow machine cannot refill the bucket mid-test; and a
    // timeout far beyond any store latency: this test is about the contract, not about
    // failing open (see faults.rs).
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .store(store)
        .capacity(10)
        .refill(10)
        .period(Duration::from_secs(100))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    Router::new()
        .route("/hello", get(|| async { Json(json!({"hello": "world"})) }))
        .route("/users/{id}", get(|| async { Json(json!({"user": true})) }))
        .layer(layer)
}

const POLICY: &str = "\"default\";q=10;w=100";

/// The seconds in `"default";r=0;t=N`, checked to be the next token's wait: at most 10 s.
fn token_wait(reply: &Reply) -> u64 {
    let field = reply.header("ratelimit").unwrap();
    let t = field
        .strip_prefix("\"default\";r=0;t=")
        .unwrap_or_else(|| panic!("{field}"));
    let t: u64 = t.parse().unwrap();
    assert!((1..=10).contains(&t), "{field}");
    t
}

fn assert_allowed(reply: &Reply, remaining: u64) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("ratelimit-policy"), Some(POLICY));
    if remaining == 0 {
        token_wait(reply);
    } else {
        let expected = format!("\"default\";r={remaining}");
        assert_eq!(
            reply.header("ratelimit"),
            Some(expected.as_str()),
            "{reply:?}"
        );
    }
}

fn assert_limited(reply: &Reply) {
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("ratelimit-policy"), Some(POLICY));
    let t = token_wait(reply);
    // Retry-After is the same wait, in whole seconds rounded up.
    assert_eq!(reply.header("retry-after"), Some(t.to_string().as_str()));
    let body = reply.json();
    let object = body.as_object().unwrap();
    assert_eq!(object.len(), 3, "{body}");
    assert_eq!(body["allowed"], false);
    assert_eq!(body["remaining"], 0);
    let wait = body["retry_after_ms"].as_u64().unwrap();
    assert_eq!(wait.div_ceil(1000), t, "{body}");
}

/// The whole contract, against a server using `store`.
async fn contract(store: impl Store + Clone) {
    let server = TestServer::start(app(store)).await;
    let client = HttpClient::new();
    let addr = server.addr;

    for remaining in (0..10).rev() {
        let reply = client.get(addr, "/hello", Some(b"alice")).await;
        assert_allowed(&reply, remaining);
        assert_eq!(reply.json(), json!({"hello": "world"}));
    }
    assert_limited(&client.get(addr, "/hello", Some(b"alice")).await);

    // Another client, another bucket.
    assert_allowed(&client.get(addr, "/hello", Some(b"bob")).await, 9);
    // The route template is the endpoint: /users/1 and /users/2 share a bucket, separate
    // from /hello.
    assert_allowed(&client.get(addr, "/users/1", Some(b"alice")).await, 9);
    assert_allowed(&client.get(addr, "/users/2", Some(b"alice")).await, 8);
    // The query parameter names the same client as the header.
    assert_allowed(&client.get(addr, "/hello?key=carol", None).await, 9);
    assert_allowed(&client.get(addr, "/hello", Some(b"carol")).await, 8);

    // No identity: 400 with a JSON error saying what is missing, and no store call.
    for path in ["/hello", "/hello?key=", "/hello?other=1"] {
        let reply = client.get(addr, path, None).await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains("x-api-key") && error.contains("\"key\""),
            "{error}"
        );
        assert_eq!(reply.header("ratelimit"), None);
    }
    let reply = client.get(addr, "/hello", Some(b"")).await;
    assert_eq!(reply.status, 400);

    // Non-UTF-8 keys are opaque bytes with buckets of their own.
    assert_allowed(&client.get(addr, "/hello", Some(b"\xff\xfe")).await, 9);
    assert_allowed(&client.get(addr, "/hello", Some(b"\xff\xfd")).await, 9);
    assert_allowed(&client.get(addr, "/hello", Some(b"\xff\xfe")).await, 8);

    // Very long keys are hashed, and stay distinct.
    let mut long = vec![b'x'; 10_000];
    assert_allowed(&client.get(addr, "/hello", Some(&long)).await, 9);
    *long.last_mut().unwrap() = b'y';
    assert_allowed(&client.get(addr, "/hello", Some(&long)).await, 9);
    assert_allowed(&client.get(addr, "/hello", Some(&long)).await, 8);

    // A client whose name spells another client and endpoint does not share its bucket:
    // exhaust "a:GET:/hello" on /hello, then client "a" on "/hello:GET:/hello" still passes.
    for _ in 0..10 {
        client.get(addr, "/hello", Some(b"a:GET:/hello")).await;
    }
    assert_limited(&client.get(addr, "/hello", Some(b"a:GET:/hello")).await);
    let reply = client.get(addr, "/hello:GET:/hello", Some(b"a")).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=9"));
}

#[tokio::test]
async fn contract_with_memory_store() {
    contract(MemoryStore::new()).await;
}

/// A client cannot multiply its budget, nor the keys in Redis, with the method: `HEAD` spends
/// the `GET` budget (axum answers it with the `GET` handler), and every invented method shares
/// one bucket per client and endpoint.
#[tokio::test]
async fn methods_cannot_multiply_a_budget_or_the_keys() {
    let redis = RedisServer::start();
    let server = TestServer::start(app(RedisStore::open(&redis.url()).unwrap())).await;
    let (client, addr) = (HttpClient::new(), server.addr);
    let key = [("x-api-key", "m")];
    for i in 0..10 {
        let reply = client.request(addr, "GET", "/hello", &key).await;
        assert_eq!(reply.status, 200, "GET {i}: {reply:?}");
    }
    let head = client.request(addr, "HEAD", "/hello", &key).await;
    assert_eq!(head.status, 429, "HEAD after 10 GETs: {head:?}");

    // 30 invented methods, on a route and on no route: 10 of each pass the limiter (and get
    // axum's 405 or 404), the rest are limited, and they make two keys in all.
    for path in ["/hello", "/nowhere"] {
        let mut passed = 0;
        for i in 0..30 {
            let method = format!("INVENTED{i}");
            let reply = client
                .request(addr, &method, path, &[("x-api-key", "n")])
                .await;
            match reply.status.as_u16() {
                429 => {}
                404 | 405 => passed += 1,
                other => panic!("{method} {path}: {other} {reply:?}"),
            }
        }
        assert_eq!(passed, 10, "{path}");
    }
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:{n:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:{m:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys, ["tollgate:{m:GET:/hello}:default"]);
}

#[tokio::test]
async fn contract_with_redis_store() {
    let redis = RedisServer::start();
    contract(RedisStore::open(&redis.url()).unwrap()).await;

    // Every bucket key is prefixed, bounded, and expires.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.len() >= 10, "{keys:?}");
    for key in &keys {
        assert!(key.starts_with("tollgate:{"), "{key}");
        assert!(
            key.len() <= 512, /* the documented bound on a key */
            "{} bytes: {key}",
            key.len()
        );
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        assert!((1..=100_000).contains(&ttl), "{key} has PTTL {ttl}");
    }
    assert!(keys.contains(&"tollgate:{alice:GET:/users/%7Bid%7D}:default".to_owned()));
}

#[tokio::test]
async fn headers_on_allowed_responses_can_be_turned_off() {
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .capacity(1)
        .period(Duration::from_secs(60))
        .headers_on_allowed(false)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let server = TestServer::start(app).await;
    let client = HttpClient::new();
    let reply = client.get(server.addr, "/", Some(b"k")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("ratelimit"), None);
    assert_eq!(reply.header("ratelimit-policy"), None);
    let reply = client.get(server.addr, "/", Some(b"k")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=1;w=60")
    );
    assert_eq!(reply.header("retry-after"), Some("60"));
}

async fn serve(layer: TollgateLayer<tollgate::MemoryStore, tollgate::ApiKey>) -> TestServer {
    TestServer::start(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await
}

fn one_a_minute() -> tollgate::LayerBuilder<tollgate::MemoryStore, tollgate::ApiKey> {
    TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .capacity(1)
        .period(Duration::from_secs(60))
}

#[tokio::test]
async fn problem_json_and_legacy_fields() {
    let layer = one_a_minute()
        .problem_details(true)
        .legacy_headers(true)
        .build()
        .unwrap();
    let server = serve(layer).await;
    let client = HttpClient::new();
    let reply = client.get(server.addr, "/", Some(b"k")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(reply.header("x-ratelimit-reset"), Some("60"));
    let reply = client.get(server.addr, "/", Some(b"k")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    let body = reply.json();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], json!(["default"]));
    let retry_ms = body["retry_after_ms"].as_u64().unwrap();
    assert_eq!(
        reply.header("retry-after"),
        Some(retry_ms.div_ceil(1000).to_string().as_str())
    );
    let reply = client.get(server.addr, "/", None).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["title"], "Bad Request");
}

#[tokio::test]
async fn a_rejection_hook_still_gets_the_fields() {
    let layer = one_a_minute()
        .on_rejection(|rejection| {
            let body = format!("slow down: {}", rejection.message());
            http::Response::builder()
                .status(rejection.kind().status())
                .header("x-hook", "yes")
                .body(bytes::Bytes::from(body))
                .unwrap()
        })
        .build()
        .unwrap();
    let server = serve(layer).await;
    let client = HttpClient::new();
    client.get(server.addr, "/", Some(b"k")).await;
    let reply = client.get(server.addr, "/", Some(b"k")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("x-hook"), Some("yes"));
    assert!(
        reply.body.starts_with("slow down: rate limited"),
        "{}",
        reply.body
    );
    assert!(reply.header("retry-after").is_some());
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=1;w=60")
    );
    assert!(
        reply
            .header("ratelimit")
            .unwrap()
            .starts_with("\"default\";r=0;t=")
    );
}

/// Five requests of `key`, each passing and reporting its empty bucket.
async fn pass_and_report_empty(client: &HttpClient, server: &TestServer, key: &[u8]) {
    for _ in 0..5 {
        let reply = client.get(server.addr, "/", Some(key)).await;
        assert_eq!(reply.status, 200);
        let field = reply.header("ratelimit").unwrap();
        assert!(field.starts_with("\"default\";r=0"), "{field}");
    }
}

#[tokio::test]
async fn bypass_and_shadow_mode_decide_and_report_but_never_refuse() {
    let bypass = tollgate::Bypass::new().key("vip");
    let server = serve(one_a_minute().bypass(bypass).build().unwrap()).await;
    let client = HttpClient::new();
    pass_and_report_empty(&client, &server, b"vip").await;
    client.get(server.addr, "/", Some(b"other")).await;
    assert_eq!(
        client.get(server.addr, "/", Some(b"other")).await.status,
        429
    );

    let server = serve(one_a_minute().shadow(true).build().unwrap()).await;
    pass_and_report_empty(&client, &server, b"k").await;
    // Shadow mode refuses nothing, not even a request without an identity.
    assert_eq!(client.get(server.addr, "/", None).await.status, 200);
}
