//! The `llm_gateway` example as a client sees it, over real HTTP with an event-stream reader:
//! plans from the API key, tokens settled to what was streamed, a 502 that costs no tokens,
//! stream slots shared by two gateways on one Redis and freed when a client goes away, the
//! quota read without taking anything, and every contract answer.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::examples::Instance;
use crate::harness::RedisServer;

struct Gateway {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> http::Response<Incoming> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.client.request(request).await.expect("HTTP request")
    }

    /// A completion, read whole: status, headers, and the body as JSON or as events.
    async fn complete(
        &self,
        addr: SocketAddr,
        key: Option<&str>,
        body: Value,
    ) -> (StatusCode, http::HeaderMap, String) {
        let response = self
            .send(addr, "POST", "/v1/completions", key, &body.to_string())
            .await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    async fn quota(&self, addr: SocketAddr, key: &str) -> Value {
        let response = self.send(addr, "GET", "/v1/quota", Some(key), "").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }
}

/// The `data:` payloads of an event stream.
fn events(stream: &str) -> Vec<String> {
    stream
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Reads events from a live stream until `n` have come.
async fn read_events(body: &mut Incoming, n: usize) {
    let mut seen = 0;
    while seen < n {
        let frame = body.frame().await.expect("the stream goes on").unwrap();
        if let Some(data) = frame.data_ref() {
            seen += String::from_utf8_lossy(data).matches("data: ").count();
        }
    }
}

/// Polls the quota (another process settles: no signal crosses) until `done` holds.
async fn quota_until(
    gateway: &Gateway,
    addr: SocketAddr,
    key: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = tokio::time::Instant::now();
    loop {
        let quota = gateway.quota(addr, key).await;
        if done(&quota) {
            return quota;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "quota never settled: {quota}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tokens(quota: &Value) -> u64 {
    quota["tokens"]["remaining"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_keep_the_contract() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Instance::example("llm_gateway", &[("REDIS_URL", &url)]);
    let b = Instance::example("llm_gateway", &[("REDIS_URL", &url)]);
    let gateway = Gateway::new();

    // Who may call, and what a bad request gets.
    for (key, body, status, error) in [
        (None, json!({"max_tokens": 3}), 400, "X-API-Key is required"),
        (
            Some("bob"),
            json!({"max_tokens": 3}),
            401,
            "unknown API key",
        ),
        (
            Some("free-x"),
            json!("text"),
            400,
            "the body must be a JSON object",
        ),
        (
            Some("free-x"),
            json!({"max_tokens": 0}),
            400,
            "max_tokens must be a positive integer",
        ),
        (
            Some("free-x"),
            json!({"max_tokens": 2.5}),
            400,
            "max_tokens must be a positive integer",
        ),
        (
            Some("free-x"),
            json!({"max_tokens": 3, "fail": "yes"}),
            400,
            "fail must be true or false",
        ),
        (
            Some("free-x"),
            json!({"max_tokens": 1001}),
            413,
            "limit \"tokens\" holds at most 1000",
        ),
    ] {
        let (got, _, reply) = gateway.complete(a.addr, key, body.clone()).await;
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(got.as_u16(), status, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(error),
            "{body}: {reply}"
        );
    }
    // A pro key may ask for more.
    let (status, _, _) = gateway
        .complete(
            a.addr,
            Some("pro-x"),
            json!({"max_tokens": 1001, "tokens": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A stream: min(T, M) events then [DONE]; its tokens settled to what it sent.
    let (status, headers, stream) = gateway
        .complete(
            a.addr,
            Some("free-alice"),
            json!({"max_tokens": 500, "tokens": 3, "ms_per_token": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.contains_key("ratelimit"));
    assert_eq!(
        events(&stream),
        [
            r#"{"token": 0}"#,
            r#"{"token": 1}"#,
            r#"{"token": 2}"#,
            "[DONE]"
        ]
    );
    // Both gateways see the same buckets: 3 tokens spent (a few refilled since), 1 request.
    let quota = quota_until(&gateway, b.addr, "free-alice", |q| tokens(q) >= 997).await;
    assert!(tokens(&quota) <= 1000, "{quota}");
    assert_eq!(quota["tier"], "free");
    assert_eq!(quota["tokens"]["capacity"], 1000);
    assert_eq!(quota["requests"]["capacity"], 60);
    assert_eq!(quota["streams"], json!({"in_use": 0, "capacity": 2}));
    let requests = quota["requests"]["remaining"].as_u64().unwrap();
    assert!((59..=60).contains(&requests), "{quota}");
    // Reading the quota takes nothing.
    let again = gateway.quota(a.addr, "free-alice").await;
    assert!(tokens(&again) >= tokens(&quota), "{again}");

    // A 502 costs no tokens (the request still counts).
    let asked = tokio::time::Instant::now();
    let (status, _, reply) = gateway
        .complete(
            a.addr,
            Some("free-bob"),
            json!({"max_tokens": 400, "fail": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{reply}");
    assert!(serde_json::from_str::<Value>(&reply).unwrap()["error"].is_string());
    let quota = quota_until(&gateway, b.addr, "free-bob", |q| tokens(q) == 1000).await;
    // One request back each second: within the second, exactly one is missing.
    if asked.elapsed() < Duration::from_millis(900) {
        assert_eq!(quota["requests"]["remaining"], 59, "{quota}");
    }

    // Two streams in flight, one on each gateway: no slot for a third, on either.
    let long = json!({"max_tokens": 200, "ms_per_token": 20}).to_string();
    let mut first = gateway
        .send(a.addr, "POST", "/v1/completions", Some("free-carol"), &long)
        .await
        .into_body();
    let mut second = gateway
        .send(b.addr, "POST", "/v1/completions", Some("free-carol"), &long)
        .await
        .into_body();
    read_events(&mut first, 3).await;
    read_events(&mut second, 1).await;
    let (status, headers, reply) = gateway
        .complete(a.addr, Some("free-carol"), json!({"max_tokens": 1}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reply}");
    assert_eq!(headers["retry-after"], "1");
    assert!(headers.contains_key("ratelimit"));
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["limit"],
        "streams"
    );
    assert_eq!(
        gateway.quota(a.addr, "free-carol").await["streams"]["in_use"],
        2
    );
    // The first client goes away: its slot is freed and its tokens settled to what it got
    // (200 reserved, a few sent); the second stream still holds its slot and its reservation.
    drop(first);
    let quota = quota_until(&gateway, b.addr, "free-carol", |q| {
        q["streams"]["in_use"] == 1 && tokens(q) > 600
    })
    .await;
    assert!(
        tokens(&quota) < 800,
        "the second stream's reservation is held: {quota}"
    );
    let (status, _, _) = gateway
        .complete(
            b.addr,
            Some("free-carol"),
            json!({"max_tokens": 1, "tokens": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    drop(second);
    quota_until(&gateway, a.addr, "free-carol", |q| {
        q["streams"]["in_use"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_in_memory_limits_requests_per_minute() {
    let gateway_process = Instance::example("llm_gateway", &[]);
    let addr = gateway_process.addr;
    let gateway = Gateway::new();
    // 60 requests a minute (one back each second): the 61st or so, sent at once, is refused by
    // the requests limit, with tokens to spare.
    let mut refused = None;
    for i in 0..70 {
        let (status, _, reply) = gateway
            .complete(
                addr,
                Some("free-dave"),
                json!({"max_tokens": 1, "tokens": 0}),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((i, reply));
            break;
        }
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let (i, reply) = refused.expect("the requests limit refuses");
    assert!(i >= 60, "refused after {i}");
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["limit"],
        "requests"
    );
    let quota = gateway.quota(addr, "free-dave").await;
    assert!(tokens(&quota) >= 999, "{quota}");
}
