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

#[path = "../common/mod.rs"]
mod common;
mod redis_calls;

use std::net::IpAddr;
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

const USAGE: &str = "\
usage: loadtest --url URL [--url URL …] [--clients N] [--duration D] [--keys K] [--check-limit C/S]
                [--redis-url URL …]

  --url URL          a loopback http:// target; repeat for several, used round-robin
  --clients N        concurrent clients, 1 to 4096 (default 16)
  --duration D       how long to send: 500ms, 10s, 2m; at most 10m (default 10s)
  --keys K           API keys key-0 … key-(K-1), 1 to 1000000 (default 100)
  --check-limit C/S  exit 1 if a key was allowed more than C + C·elapsed/S
  --redis-url URL    a loopback Redis (each node of a cluster: repeat) whose script calls
                     (EVALSHA + EVAL, from INFO commandstats) are counted into redis_calls
  --help             this text
";

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_CLIENTS: usize = 4096;
const MAX_KEYS: usize = 1_000_000;
/// Latency samples kept, 4 bytes each; requests past them are still counted.
const MAX_SAMPLES: usize = 10_000_000;
/// Keys over the limit named on stderr; the rest are counted.
const MAX_NAMED: usize = 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Args {
    urls: Vec<Uri>,
    clients: usize,
    duration: Duration,
    keys: usize,
    /// `--check-limit C/S`: C at once, C more per S seconds.
    check: Option<(u64, u64)>,
    /// `--redis-url`: the servers whose script calls are counted.
    redis_urls: Vec<String>,
}

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

/// `Ok(None)` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        urls: Vec::new(),
        clients: 16,
        duration: Duration::from_secs(10),
        keys: 100,
        check: None,
        redis_urls: Vec::new(),
    };
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(None);
        }
        // `--flag value` or `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if !matches!(
            flag.as_str(),
            "--url" | "--clients" | "--duration" | "--keys" | "--check-limit" | "--redis-url"
        ) {
            return Err(format!("unknown argument {flag:?}"));
        }
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        // A URL is shown without its user, password or query.
        let shown = match flag.as_str() {
            "--url" | "--redis-url" => common::redact(&value),
            _ => value.clone(),
        };
        let bad = |why: &str| format!("{flag} {shown:?}: {why}");
        // A whole number from 1 to `max`.
        let count = |max: usize| {
            value
                .parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(&format!("must be a whole number from 1 to {max}")))
        };
        match flag.as_str() {
            "--url" => parsed
                .urls
                .push(value.parse().map_err(|e| bad(&format!("{e}")))?),
            "--redis-url" => parsed.redis_urls.push(value),
            "--clients" => parsed.clients = count(MAX_CLIENTS)?,
            "--keys" => parsed.keys = count(MAX_KEYS)?,
            "--duration" => {
                parsed.duration = parse_duration(&value)
                    .filter(|d| !d.is_zero() && *d <= MAX_DURATION)
                    .ok_or_else(|| bad("must be like 500ms, 10s or 2m, above zero, at most 10m"))?;
            }
            _ => {
                let positive = |s: &str| s.parse::<u64>().ok().filter(|n| *n > 0);
                parsed.check = value
                    .split_once('/')
                    .and_then(|(c, s)| Some((positive(c)?, positive(s)?)))
                    .map(Some)
                    .ok_or_else(|| {
                        bad("must be CAPACITY/SECONDS, two positive whole numbers, like 10/10")
                    })?;
            }
        }
    }
    if parsed.urls.is_empty() {
        return Err("--url is required".to_owned());
    }
    Ok(Some(parsed))
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit): (&str, fn(u64) -> Duration) = if let Some(n) = text.strip_suffix("ms") {
        (n, Duration::from_millis)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, Duration::from_secs)
    } else {
        (text.strip_suffix('m')?, |m| {
            Duration::from_secs(m.saturating_mul(60))
        })
    };
    number.parse().ok().map(unit)
}

/// `Err(why)` unless `url` is `http://` to a loopback address. `localhost` must resolve to
/// loopback addresses only.
async fn check_loopback(url: &Uri) -> Result<(), String> {
    if url.scheme_str() != Some("http") {
        return Err("the scheme must be http://".to_owned());
    }
    let host = url.host().ok_or("there is no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return if ip.is_loopback() {
            Ok(())
        } else {
            Err(format!("{host} is not a loopback address"))
        };
    }
    if !host.eq_ignore_ascii_case("localhost") {
        return Err(format!("{host} is not 127.0.0.0/8, [::1] or localhost"));
    }
    let port = url.port_u16().unwrap_or(80);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    for addr in addrs {
        if !addr.ip().is_loopback() {
            return Err(format!("{host} resolves to {}, not loopback", addr.ip()));
        }
    }
    Ok(())
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
