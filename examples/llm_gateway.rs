//! Run with: `cargo run --example llm_gateway`
//!
//! An LLM gateway in front of an in-process fake upstream, limited per API key and per plan:
//! tokens per minute settled to the tokens really streamed, requests per minute, and streams in
//! flight, decided together in one store call per request.
//!
//! ```text
//! curl -N -H 'X-API-Key: free-alice' -d '{"max_tokens": 5, "ms_per_token": 100}' \
//!   http://127.0.0.1:8090/v1/completions
//! curl -H 'X-API-Key: free-alice' http://127.0.0.1:8090/v1/quota
//! ```
//!
//! Environment: `LISTEN_ADDR` (default `127.0.0.1:8090`), and `REDIS_URL`, `REDIS_MODE`,
//! `FAIL_MODE`, `STORE_TIMEOUT_MS` as for the `server` example (several gateways on one Redis
//! share every limit, the stream slots included).
//!
//! - `X-API-Key`: `free-…` is plan free, `pro-…` plan pro; another key gets `401`, none `400`.
//! - `POST /v1/completions` `{"max_tokens": M, "tokens": T, "ms_per_token": D, "fail": F}`:
//!   `200 text/event-stream` with min(T, M) events `data: {"token": i}`, one every D ms, then
//!   `data: [DONE]`; with `"fail": true`, `502` and no stream. Not such JSON, or M not a
//!   positive integer: `400`; M above the plan's tokens: `413`.
//! - Limits per key (free / pro): `tokens` 1,000 / 10,000 a minute (a token bucket), `requests`
//!   60 / 600 a minute, `streams` 2 / 10 in flight. A request reserves M tokens, a request and
//!   a stream; the tokens are settled to the events sent when the stream ends or the client
//!   goes away, a `502` costs no tokens, and the stream's slot is freed.
//! - `GET /v1/quota`: what is left, taking nothing.

#[path = "common/mod.rs"]
mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tollgate::store::AnyStore;
use tollgate::{
    BodyCostLayer, Limit, Limiter, Policies, Refusal, Reservation, Rule, Target, TollgateLayer,
    tier_fn,
};

/// The most a request body may hold.
const MAX_BODY: usize = 64 * 1024;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_on_error(run().await)
}

/// Each plan's limits: tokens and requests a minute, streams in flight.
fn plan(tokens: u64, requests: u64, streams: u64) -> Result<Policies, tollgate::ConfigError> {
    let minute = Duration::from_secs(60);
    Policies::builder()
        .rule(
            Rule::new("completions", "/v1/completions")
                .methods([Method::POST])
                .limit(Limit::new("tokens", tokens, tokens, minute)?)
                .limit(Limit::new("requests", requests, requests, minute)?.per_request())
                .limit(Limit::concurrency("streams", streams)?),
        )
        .build()
}

/// The plan of an API key: `free-…` or `pro-…`.
fn plan_of(key: &[u8]) -> Option<&'static str> {
    match key {
        k if k.starts_with(b"free-") => Some("free"),
        k if k.starts_with(b"pro-") => Some("pro"),
        _ => None,
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = common::listen_addr("127.0.0.1:8090")?;
    let env = common::Env::load().await?;
    let policies = Policies::tiered([
        ("free", plan(1_000, 60, 2)?),
        ("pro", plan(10_000, 600, 10)?),
    ])?;
    let limiter = env.limiter().policies(policies).build()?;
    let limit = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .limiter(limiter.clone())
        .tier_extractor(tier_fn(|parts| {
            let key = parts
                .headers
                .get("x-api-key")
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "X-API-Key is required"))?;
            plan_of(key.as_bytes())
                .ok_or_else(|| Refusal::new(StatusCode::UNAUTHORIZED, "unknown API key"))
        }))
        // The tokens: what the stream sent (the handler counts them); a 502 costs none.
        .settle_from_response(|parts, _| (parts.status == StatusCode::BAD_GATEWAY).then_some(0))
        .build()?;
    let app = Router::new()
        .route("/v1/completions", post(complete))
        .route("/v1/quota", get(quota))
        .with_state(limiter)
        .layer(limit)
        .layer(BodyCostLayer::new(MAX_BODY, estimate));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("fail mode: {}", env.fail_mode.as_str());
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(common::shutdown())
        .await?;
    Ok(())
}

/// A completion request, checked.
struct Completion {
    max_tokens: u64,
    tokens: u64,
    ms_per_token: u64,
    fail: bool,
}

impl Completion {
    fn parse(body: &[u8]) -> Result<Self, &'static str> {
        let json: Value = serde_json::from_slice(body).map_err(|_| "the body must be JSON")?;
        let object = json.as_object().ok_or("the body must be a JSON object")?;
        let max_tokens = object
            .get("max_tokens")
            .and_then(Value::as_u64)
            .filter(|&m| m > 0)
            .ok_or("max_tokens must be a positive integer")?;
        let number = |name, default| match object.get(name) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or(name),
        };
        let tokens = number("tokens", max_tokens).map_err(|_| "tokens must be a whole number")?;
        let ms_per_token =
            number("ms_per_token", 0).map_err(|_| "ms_per_token must be a whole number")?;
        let fail = match object.get("fail") {
            None => false,
            Some(v) => v.as_bool().ok_or("fail must be true or false")?,
        };
        Ok(Self {
            max_tokens,
            tokens,
            ms_per_token,
            fail,
        })
    }
}

/// The cost a completion reserves: its `max_tokens`. Requests the limiter answers itself
/// (no key, an unknown key) and other routes reserve 1.
fn estimate(parts: &axum::http::request::Parts, body: &Bytes) -> Result<u64, Refusal> {
    let known = parts
        .headers
        .get("x-api-key")
        .is_some_and(|k| plan_of(k.as_bytes()).is_some());
    if parts.uri.path() != "/v1/completions" || !known {
        return Ok(1);
    }
    Completion::parse(body)
        .map(|c| c.max_tokens)
        .map_err(Refusal::bad_request)
}

/// The fake upstream: a stream of min(T, M) tokens, counted into the reservation as sent.
async fn complete(Extension(reservation): Extension<Reservation>, body: Bytes) -> Response {
    // Checked by the estimate before the limiter took anything.
    let Ok(request) = Completion::parse(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid completion request");
    };
    if request.fail {
        return error(StatusCode::BAD_GATEWAY, "the upstream failed");
    }
    reservation.set(0);
    let events = Events {
        reservation,
        left: request.tokens.min(request.max_tokens),
        next: 0,
        every: Duration::from_millis(request.ms_per_token),
        wait: None,
        done: false,
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::new(events),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// `GET /v1/quota`: the key's limits as they are, nothing taken.
async fn quota(State(limiter): State<Limiter<AnyStore>>, headers: HeaderMap) -> Response {
    // The layer already answered a request without a known key.
    let Some((key, plan)) = headers
        .get("x-api-key")
        .and_then(|k| Some((k.as_bytes(), plan_of(k.as_bytes())?)))
    else {
        return error(StatusCode::UNAUTHORIZED, "unknown API key");
    };
    let target = Target::route(&Method::POST, "/v1/completions");
    let subject = match limiter.tiered_subject(plan, key, target) {
        Ok(subject) => subject,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match limiter.peek(&subject, 1).await {
        Ok(limits) => Json(json!({
            "tier": plan,
            "tokens": {"remaining": limits[0].remaining, "capacity": limits[0].limit},
            "requests": {"remaining": limits[1].remaining, "capacity": limits[1].limit},
            "streams": {"in_use": limits[2].limit - limits[2].remaining, "capacity": limits[2].limit},
        }))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The event stream: one `data: {"token": i}` every `every`, then `data: [DONE]`.
struct Events {
    reservation: Reservation,
    left: u64,
    next: u64,
    every: Duration,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            if self.done {
                return Poll::Ready(None);
            }
            self.done = true;
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"data: [DONE]\n\n",
            )))));
        }
        if !self.every.is_zero() {
            let every = self.every;
            let wait = self
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            std::task::ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        let i = self.next;
        self.next += 1;
        self.left -= 1;
        self.reservation.add(1);
        let event = format!("data: {{\"token\": {i}}}\n\n");
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(event)))))
    }
}
