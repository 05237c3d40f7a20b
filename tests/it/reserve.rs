//! Reservations through the layer, over real HTTP and a real Redis: the actual cost stated by
//! the handler's reservation (set or added to), a response header (removed) or a closure
//! over the response is settled once the body is over; a stream dropped by its client settles
//! what it sent; and a body-based estimate reads a bounded body and passes it on unchanged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Query;
use axum::response::Response;
use axum::{Extension, Router, routing::get, routing::post};
use bytes::Bytes;
use http::{HeaderName, Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tollgate::store::Store;
use tollgate::store::{Stamp, StoreCall, Taken};
use tollgate::{
    BodyCostLayer, Decision, HeaderCost, Limit, Limiter, Policies, RedisStore, Refusal,
    Reservation, Subject, Target, TollgateLayer,
};

use crate::harness::{HttpClient, RedisServer, TestServer};

const HOUR: Duration = Duration::from_secs(3600);

/// A store that tells the test each refund and charge it made, once Redis answered: the
/// signal a test awaits, since settlements run off the response path.
#[derive(Clone)]
pub struct Signalling<S> {
    pub inner: S,
    pub done: mpsc::UnboundedSender<(&'static str, u64)>,
}

impl<S: Store> Store for Signalling<S> {
    type Future = S::Future;

    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> S::Future {
        self.inner.decide(key, limits, cost)
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    fn identity(&self) -> Option<usize> {
        self.inner.identity()
    }

    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        self.inner.peek(key, limits, cost)
    }

    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken> {
        self.inner.take(key, limits, cost)
    }

    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> StoreCall<()> {
        let call = self.inner.put_back(key, limits, stamp, units, free_slot);
        match (units, free_slot) {
            (0, true) => self.signal("release", 0, call),
            _ => self.signal("refund", units, call),
        }
    }

    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        self.signal("charge", units, self.inner.charge(key, limits, units))
    }
}

impl<S> Signalling<S> {
    fn signal(&self, what: &'static str, units: u64, call: StoreCall<()>) -> StoreCall<()> {
        let done = self.done.clone();
        Box::pin(async move {
            let answer = call.await;
            answer.as_ref().expect("Redis answers");
            let _ = done.send((what, units));
            answer
        })
    }
}

/// A Redis-backed limiter of one token bucket whose store signals its settlements.
fn limiter(
    redis: &RedisServer,
    capacity: u64,
) -> (
    Limiter<Signalling<RedisStore>>,
    mpsc::UnboundedReceiver<(&'static str, u64)>,
) {
    let (done, settled) = mpsc::unbounded_channel();
    let store = Signalling {
        inner: RedisStore::open(&redis.url()).unwrap(),
        done,
    };
    let limiter = Limiter::builder()
        .store(store)
        .policies(Policies::single(
            Limit::new("units", capacity, 1, HOUR).unwrap(),
        ))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    (limiter, settled)
}

/// The next settlement, within a liveness bound far above a Redis call.
pub async fn next(
    settled: &mut mpsc::UnboundedReceiver<(&'static str, u64)>,
) -> (&'static str, u64) {
    tokio::time::timeout(Duration::from_secs(10), settled.recv())
        .await
        .expect("a settlement within 10 s")
        .expect("the store is alive")
}

async fn remaining<St: Store>(limiter: &Limiter<St>, subject: &Subject) -> u64 {
    limiter.peek(subject, 1).await.unwrap()[0].remaining
}

/// A layer over `limiter` that reserves `X-RateLimit-Cost` and settles what the handler, an
/// extension or the `x-actual-cost` header (or trailer) says.
fn settling_by_header(
    limiter: &Limiter<Signalling<RedisStore>>,
) -> TollgateLayer<Signalling<RedisStore>, tollgate::ApiKey> {
    TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .limiter(limiter.clone())
        .cost_extractor(HeaderCost::default())
        .settle_header(HeaderName::from_static("x-actual-cost"))
        .build()
        .unwrap()
}

/// The `used` query parameter.
type Used = std::collections::HashMap<String, u64>;

fn used(q: &Used) -> u64 {
    q["used"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_of_stating_the_cost_is_settled_after_the_response() {
    let redis = RedisServer::start();
    let (limiter, mut settled) = limiter(&redis, 100);
    let layer = settling_by_header(&limiter);
    let app = Router::new()
        .route(
            "/handle",
            get(
                |Extension(r): Extension<Reservation>, Query(q): Query<Used>| async move {
                    r.set(used(&q));
                    format!("reserved {}", r.reserved())
                },
            ),
        )
        .route(
            "/add",
            get(
                |Extension(r): Extension<Reservation>, Query(q): Query<Used>| async move {
                    // A stream adds what each chunk used.
                    let used = used(&q);
                    r.add(used / 2);
                    r.add(used - used / 2);
                    "ok"
                },
            ),
        )
        .route(
            "/header",
            get(|Query(q): Query<Used>| async move {
                ([("x-actual-cost", used(&q).to_string())], "ok")
            }),
        )
        .route("/silent", get(|| async { "ok" }))
        .layer(layer);
    let server = TestServer::start(app).await;
    let client = HttpClient::new();
    let call = |path: &'static str, cost: &'static str| {
        let client = client.clone();
        async move {
            client
                .request(
                    server.addr,
                    "GET",
                    path,
                    &[("x-api-key", "alice"), ("x-ratelimit-cost", cost)],
                )
                .await
        }
    };
    let subject = |path: &str| {
        limiter
            .subject("alice", Target::route(&Method::GET, path))
            .unwrap()
    };

    // The handler's reservation: 10 reserved, 4 used.
    let reply = call("/handle?used=4", "10").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "reserved 10")
    );
    assert_eq!(next(&mut settled).await, ("refund", 6));
    assert_eq!(remaining(&limiter, &subject("/handle")).await, 96);

    // The handler adds to its reservation as it goes: 5 reserved, 7 used.
    let reply = call("/add?used=7", "5").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(next(&mut settled).await, ("charge", 2));
    assert_eq!(remaining(&limiter, &subject("/add")).await, 93);

    // A response header, which the client never sees: 3 reserved, none used.
    let reply = call("/header?used=0", "3").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-actual-cost"), None);
    assert_eq!(next(&mut settled).await, ("refund", 3));
    assert_eq!(remaining(&limiter, &subject("/header")).await, 100);

    // Nothing stated: the reservation stays as taken (the next settlement is the next call's).
    assert_eq!(call("/silent", "2").await.status, StatusCode::OK);
    assert_eq!(call("/handle?used=1", "3").await.status, StatusCode::OK);
    assert_eq!(next(&mut settled).await, ("refund", 2));
    assert_eq!(remaining(&limiter, &subject("/silent")).await, 98);
    assert_eq!(remaining(&limiter, &subject("/handle")).await, 95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_over_the_response_charges_only_failed_logins() {
    let redis = RedisServer::start();
    let (limiter, mut settled) = limiter(&redis, 3);
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .limiter(limiter.clone())
        .settle_from_response(|parts, _| parts.status.is_success().then_some(0))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/login",
            post(|Query(q): Query<Used>| async move {
                if used(&q) == 1 {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .layer(layer);
    let server = TestServer::start(app).await;
    let client = HttpClient::new();
    let login = |ok: bool| {
        let client = client.clone();
        let path = if ok { "/login?used=1" } else { "/login?used=0" };
        async move {
            client
                .request(server.addr, "POST", path, &[("x-api-key", "alice")])
                .await
                .status
        }
    };
    // Ten good logins against a limit of 3: each is given back.
    for _ in 0..10 {
        assert_eq!(login(true).await, StatusCode::OK);
        assert_eq!(next(&mut settled).await, ("refund", 1));
    }
    // Three failures are kept; the fourth attempt is refused.
    for _ in 0..3 {
        assert_eq!(login(false).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login(true).await, StatusCode::TOO_MANY_REQUESTS);
    assert!(settled.try_recv().is_err(), "a failed login was settled");
}

/// Sends `data: {i}` every 5 ms, adding 1 to the reservation for each, up to 1,000.
struct Ticks {
    reservation: Reservation,
    interval: tokio::time::Interval,
    sent: u64,
}

impl http_body::Body for Ticks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent == 1_000 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.interval.poll_tick(cx));
        self.sent += 1;
        self.reservation.add(1);
        let line = format!("data: {}\n\n", self.sent);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_its_client_drops_settles_what_it_sent() {
    let redis = RedisServer::start();
    let (limiter, mut settled) = limiter(&redis, 2_000);
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .limiter(limiter.clone())
        .cost_extractor(HeaderCost::default())
        .settle()
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/stream",
            get(
                |Extension(reservation): Extension<Reservation>| async move {
                    let body = Ticks {
                        reservation,
                        interval: tokio::time::interval(Duration::from_millis(5)),
                        sent: 0,
                    };
                    Response::new(axum::body::Body::new(body))
                },
            ),
        )
        .layer(layer);
    let server = TestServer::start(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::get(format!("http://{}/stream", server.addr))
        .header("x-api-key", "alice")
        .header("x-ratelimit-cost", "1000")
        .body(Empty::new())
        .unwrap();
    let mut body = client.request(request).await.unwrap().into_body();
    let mut read = 0;
    while read < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        read += frame
            .data_ref()
            .map_or(0, |d| String::from_utf8_lossy(d).matches("data:").count());
    }
    // The client goes away mid-stream.
    drop(body);
    drop(client);
    let (what, units) = next(&mut settled).await;
    let sent = 1_000 - units;
    assert_eq!(what, "refund");
    assert!((3..1_000).contains(&sent), "settled to {sent} events");
    let alice = limiter
        .subject("alice", Target::route(&Method::GET, "/stream"))
        .unwrap();
    assert_eq!(remaining(&limiter, &alice).await, 2_000 - sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_estimate_reads_a_bounded_body_and_passes_it_on() {
    let redis = RedisServer::start();
    let (limiter, _settled) = limiter(&redis, 1_000);
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .limiter(limiter.clone())
        .build()
        .unwrap();
    let estimate = BodyCostLayer::new(64, |_, body| {
        let json: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| Refusal::bad_request("the body must be JSON"))?;
        json["max_tokens"]
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| Refusal::bad_request("max_tokens must be a positive integer"))
    });
    let app = Router::new()
        .route("/v1/completions", post(|body: Bytes| async move { body }))
        .layer(layer)
        .layer(estimate);
    let server = TestServer::start(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = |body: &'static str| {
        let request = Request::post(format!("http://{}/v1/completions", server.addr))
            .header("x-api-key", "alice")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = client.request(request);
        async move {
            let (parts, body) = response.await.unwrap().into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts.status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let sent = r#"{"max_tokens": 250, "prompt": "hi"}"#;
    assert_eq!(post(sent).await, (StatusCode::OK, sent.to_owned()));
    let alice = limiter
        .subject("alice", Target::route(&Method::POST, "/v1/completions"))
        .unwrap();
    assert_eq!(remaining(&limiter, &alice).await, 750);
    for (body, status, error) in [
        ("not json", StatusCode::BAD_REQUEST, "the body must be JSON"),
        (
            r#"{"max_tokens": -3}"#,
            StatusCode::BAD_REQUEST,
            "max_tokens must be a positive integer",
        ),
        (
            r#"{"max_tokens": 1, "prompt": "far too long for sixty-four bytes, far too long"}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than 64 bytes",
        ),
    ] {
        let (got, reply) = post(body).await;
        let json: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(
            (got, json["error"].as_str()),
            (status, Some(error)),
            "{body}"
        );
    }
    assert_eq!(remaining(&limiter, &alice).await, 750);
}

/// One data frame, then trailers that state the actual cost (as a gRPC service would).
struct WithTrailers {
    frames: Vec<Frame<Bytes>>,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.frames.pop().map(Ok))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_in_the_trailers_is_settled_and_removed() {
    let redis = RedisServer::start();
    let (limiter, mut settled) = limiter(&redis, 100);
    let layer = settling_by_header(&limiter);
    let app = Router::new()
        .route(
            "/rpc",
            post(|| async {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-actual-cost", "9".parse().unwrap());
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames = vec![Frame::trailers(trailers), Frame::data(Bytes::from("reply"))];
                // HTTP/1.1 sends the trailers it was told of.
                let mut response = Response::new(axum::body::Body::new(WithTrailers { frames }));
                let declared = "grpc-status, x-actual-cost".parse().unwrap();
                response.headers_mut().insert("trailer", declared);
                response
            }),
        )
        .layer(layer);
    let server = TestServer::start(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::post(format!("http://{}/rpc", server.addr))
        .header("x-api-key", "alice")
        .header("x-ratelimit-cost", "20")
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap();
    let collected = client
        .request(request)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers sent");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert!(!trailers.contains_key("x-actual-cost"), "{trailers:?}");
    assert_eq!(collected.to_bytes(), "reply");
    assert_eq!(next(&mut settled).await, ("refund", 11));
    let alice = limiter
        .subject("alice", Target::route(&Method::POST, "/rpc"))
        .unwrap();
    assert_eq!(remaining(&limiter, &alice).await, 91);
}
