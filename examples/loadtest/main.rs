//! Run with: `cargo run --release --example loadtest -- --url http://127.0.0.1:8080/hello --clients 32 --duration 10s --keys 100 --check-limit 10/10`
//!
//! A traffic simulator for a rate-limited service on this machine, such as the `server` example
//! (`cargo run --example server`). `--clients` tasks each send `GET` requests back to back, one
//! at a time, until `--duration` is over, going round the `--url` targets and over `--keys` API
//! keys (`X-API-Key: key-0`, `key-1`, …). Each response is read to its end and counted as:
//! - `allowed`: a 2xx with a `RateLimit` field, decided by the limiter;
//! - `unlimited`: a 2xx without one, which is what a service that failed open sends;
//! - `limited`: a 429;
//! - `unavailable`: a 503, what a service that failed closed sends;
//! - `errors`: any other status, a connection or I/O error, or no full answer within 5 s.
//!
//! With `--redis-url URL` (a loopback Redis; repeat it for each node of a cluster) it reads
//! `INFO commandstats` before and after the run and adds `"redis_calls"`: the `EVALSHA` and
//! `EVAL` calls the servers ran meanwhile (the decisions, lease calls and give-backs of every
//! instance on them), so calls per decision are `redis_calls / (allowed + limited)`. A Redis
//! that cannot be read before the run exits with status 2; after it, with status 1 after the
//! JSON line (without `redis_calls`).
//!
//! Each second it prints a progress line to stderr, and at the end one JSON line to stdout:
//!
//! ```text
//! t=3s requests=12345 rps=4100 allowed=300 limited=12045 unlimited=0 unavailable=0 errors=0
//! {"requests":..,"allowed":..,"limited":..,"errors":..,"rps":..,"p50_ms":..,"p99_ms":..,"unlimited":..,"unavailable":..,"elapsed_s":..,"keys_over_limit":..}
//! ```
//!
//! `rps` is over the whole run; the latencies are those of the responses (the first ten million)
//! and are `null` when there were none. With `--check-limit C/S` (C requests at once, C more
//! every S seconds, like the server's `10/10`) it exits with status 1, after the JSON line,
//! when any key was allowed more than `C + C·elapsed/S` in the run, and names those keys on
//! stderr. Only `allowed` responses count: fail-open answers are `unlimited` and escape the
//! check. Every target is taken to share each key's bucket (one endpoint on instances sharing a
//! store); targets limited apart from each other allow more.
//!
//! It sends only to loopback (`http://` to 127.0.0.0/8, `[::1]` or `localhost`) and stops by
//! itself: requests started before the end of `--duration` may finish, within their 5 s. Bad
//! arguments exit with status 2 before anything is sent.

mod args;
#[path = "../common/mod.rs"]
mod common;
mod redis_calls;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::Instant;

use args::{Args, USAGE, check_loopback, parse_args};

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Latency samples kept, 4 bytes each; requests past them are still counted.
const MAX_SAMPLES: usize = 10_000_000;
/// Keys over the limit named on stderr; the rest are counted.
const MAX_NAMED: usize = 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("loadtest: {error} (see --help)");
            return ExitCode::from(2);
        }
    };
    for url in &args.urls {
        if let Err(error) = check_loopback(url).await {
            // Without its user, password or query.
            let shown = common::redact(&url.to_string());
            eprintln!("loadtest: --url {shown}: {error}; loadtest sends only to loopback");
            return ExitCode::from(2);
        }
    }
    let redis = match redis_calls::RedisCalls::new(&args.redis_urls) {
        Ok(redis) => redis,
        Err(error) => {
            eprintln!("loadtest: {error}");
            return ExitCode::from(2);
        }
    };
    // Read before anything is sent, so a Redis that cannot be read stops the run at once.
    let before = match args.redis_urls.is_empty() {
        true => None,
        false => match redis.count().await {
            Ok(calls) => Some(calls),
            Err(error) => {
                eprintln!("loadtest: {error}");
                return ExitCode::from(2);
            }
        },
    };
    run(args, before.map(|calls| (redis, calls))).await
}

/// The final JSON line; its fields in this order (`null` latencies when nothing answered).
#[derive(serde::Serialize)]
struct Report {
    requests: u64,
    allowed: u64,
    limited: u64,
    errors: u64,
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    unlimited: u64,
    unavailable: u64,
    elapsed_s: f64,
    keys_over_limit: usize,
    /// Script calls (`EVALSHA` + `EVAL`) on the `--redis-url` servers during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_calls: Option<u64>,
}

/// What one response (or its absence) counts as.
#[derive(Clone, Copy)]
enum Outcome {
    Allowed,
    Unlimited,
    Limited,
    Unavailable,
    Error,
}

fn classify(status: StatusCode, headers: &HeaderMap) -> Outcome {
    match status {
        s if s.is_success() && headers.contains_key(RATELIMIT) => Outcome::Allowed,
        s if s.is_success() => Outcome::Unlimited,
        StatusCode::TOO_MANY_REQUESTS => Outcome::Limited,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        _ => Outcome::Error,
    }
}

/// Counts shared by the clients, in [`Outcome`] order, and each key's allowed count.
struct Tally {
    outcomes: [AtomicU64; 5],
    allowed_per_key: Vec<AtomicU64>,
    /// Latency samples taken so far, by all clients.
    samples: AtomicUsize,
}

impl Tally {
    fn snapshot(&self) -> [u64; 5] {
        self.outcomes.each_ref().map(|n| n.load(Relaxed))
    }
}

/// `redis`: the servers whose script calls are counted, and their count before the run.
async fn run(args: Args, redis: Option<(redis_calls::RedisCalls, u64)>) -> ExitCode {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let targets: Arc<[Uri]> = args.urls.into();
    let keys: Arc<[HeaderValue]> = (0..args.keys)
        .map(|i| {
            HeaderValue::from_str(&format!("key-{i}")).expect("key-<digits> is a header value")
        })
        .collect();
    let tally = Arc::new(Tally {
        outcomes: Default::default(),
        allowed_per_key: (0..args.keys).map(|_| AtomicU64::new(0)).collect(),
        samples: AtomicUsize::new(0),
    });

    let start = Instant::now();
    let deadline = start + args.duration;
    let mut clients = JoinSet::new();
    for id in 0..args.clients {
        let (http, targets, keys, tally) =
            (http.clone(), targets.clone(), keys.clone(), tally.clone());
        clients.spawn(client(id, http, targets, keys, tally, deadline));
    }
    let mut latencies = Vec::new();
    let mut ticks =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut last_total, mut last_tick) = (0, start);
    loop {
        tokio::select! {
            joined = clients.join_next() => match joined {
                Some(Ok(mut samples)) => latencies.append(&mut samples),
                Some(Err(error)) => eprintln!("loadtest: a client failed: {error}"),
                None => break,
            },
            _ = ticks.tick() => {
                let now = Instant::now();
                let [allowed, unlimited, limited, unavailable, errors] = tally.snapshot();
                let total = allowed + unlimited + limited + unavailable + errors;
                let rps = (total - last_total) as f64 / (now - last_tick).as_secs_f64();
                (last_total, last_tick) = (total, now);
                eprintln!(
                    "t={}s requests={total} rps={rps:.0} allowed={allowed} limited={limited} \
                     unlimited={unlimited} unavailable={unavailable} errors={errors}",
                    (now - start).as_secs_f64().round()
                );
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut failed = false;
    let redis_calls = match &redis {
        None => None,
        Some((redis, before)) => match redis.count().await {
            Ok(after) => Some(after.saturating_sub(*before)),
            Err(error) => {
                eprintln!("loadtest: {error}");
                failed = true;
                None
            }
        },
    };

    let [allowed, unlimited, limited, unavailable, errors] = tally.snapshot();
    let requests = allowed + unlimited + limited + unavailable + errors;
    latencies.sort_unstable();
    let over: Vec<(usize, u64, f64)> = match args.check {
        None => Vec::new(),
        Some((capacity, seconds)) => {
            let bound = capacity as f64 + capacity as f64 * elapsed / seconds as f64;
            let counts = tally.allowed_per_key.iter().map(|n| n.load(Relaxed));
            counts
                .enumerate()
                .filter(|&(_, n)| n as f64 > bound)
                .map(|(key, n)| (key, n, bound))
                .collect()
        }
    };
    let millis = |p| percentile(&latencies, p).map(round3);
    let report = Report {
        requests,
        allowed,
        limited,
        errors,
        rps: round3(requests as f64 / elapsed),
        p50_ms: millis(0.50),
        p99_ms: millis(0.99),
        unlimited,
        unavailable,
        elapsed_s: round3(elapsed),
        keys_over_limit: over.len(),
        redis_calls,
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("numbers serialize")
    );
    if over.is_empty() {
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    for (key, n, bound) in over.iter().take(MAX_NAMED) {
        eprintln!("loadtest: key-{key} was allowed {n} requests, over the limit of {bound:.2}");
    }
    if over.len() > MAX_NAMED {
        eprintln!("loadtest: and {} more keys", over.len() - MAX_NAMED);
    }
    ExitCode::FAILURE
}

/// One client: requests back to back until `deadline`; returns its latency samples in µs.
async fn client(
    id: usize,
    http: HttpClient,
    targets: Arc<[Uri]>,
    keys: Arc<[HeaderValue]>,
    tally: Arc<Tally>,
    deadline: Instant,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    // Every target in turn, then the next key; each client starts on its own key and target.
    let mut n = 0usize;
    while Instant::now() < deadline {
        let target = &targets[(id + n) % targets.len()];
        let key = (id + n / targets.len()) % keys.len();
        n = n.wrapping_add(1);
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = target.clone();
        request.headers_mut().insert(API_KEY, keys[key].clone());
        let sent = Instant::now();
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, send(&http, request)).await {
            Ok(Some(outcome)) => {
                let taken = tally.samples.load(Relaxed) < MAX_SAMPLES
                    && tally.samples.fetch_add(1, Relaxed) < MAX_SAMPLES;
                if taken {
                    let micros = sent.elapsed().as_micros();
                    latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
                outcome
            }
            Ok(None) | Err(_) => Outcome::Error,
        };
        if let Outcome::Allowed = outcome {
            tally.allowed_per_key[key].fetch_add(1, Relaxed);
        }
        tally.outcomes[outcome as usize].fetch_add(1, Relaxed);
    }
    latencies
}

/// Sends `request` and reads the body to its end, keeping none of it; `None` on a connection
/// or I/O error.
async fn send(http: &HttpClient, request: Request<Empty<Bytes>>) -> Option<Outcome> {
    let response = http.request(request).await.ok()?;
    let outcome = classify(response.status(), response.headers());
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.ok()?;
    }
    Some(outcome)
}

/// The nearest-rank percentile `p` of `sorted` microseconds, in milliseconds.
fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
