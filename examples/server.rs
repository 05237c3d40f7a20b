//! Run with: `cargo run --example server`
//!
//! An axum service where every GET path answers `200` with a small JSON body and is
//! rate-limited: 10 requests at once per (API key, endpoint), refilled one per second, or the
//! policies of `RATE_LIMIT_CONFIG`. `/healthz` is not limited.
//!
//! ```text
//! curl -i -H 'X-API-Key: alice' http://127.0.0.1:8080/hello
//! curl -i 'http://127.0.0.1:8080/hello?key=alice'
//! curl -i -H 'X-API-Key: alice' -H 'X-RateLimit-Cost: 4' http://127.0.0.1:8080/hello
//! ```
//!
//! Environment:
//! - `LISTEN_ADDR`: where to listen (default `127.0.0.1:8080`).
//! - `REDIS_URL`: keep the buckets in this Redis (`redis://127.0.0.1:6379/`), shared by every
//!   instance pointed at it. Unset: in this process only.
//! - `REDIS_MODE`: `single` (default), `cluster` (`REDIS_URL` lists some cluster nodes,
//!   separated by commas) or `sentinel` (`REDIS_URL` lists the sentinels, and
//!   `REDIS_SENTINEL_MASTER` names the master).
//! - `FAIL_MODE`: `open` (default), `closed` or `local`, when Redis fails or takes over 50 ms
//!   (`STORE_TIMEOUT_MS` to change the 50 ms); with `local`, `LOCAL_SHARE` is the share of each
//!   limit this instance admits on its own meanwhile (default 1; 0.5 for two instances).
//! - `MAX_IN_FLIGHT`: the most Redis calls under way at once (default 1024); beyond, the fail
//!   mode answers at once.
//! - `RATE_LIMIT_CONFIG`: a TOML policy file (see `examples/rate_limits.toml`); the server
//!   exits non-zero, naming the rule and field, when it is bad at start. While it runs, the
//!   policies are reloaded when the file changes (also by a rename over it, a swapped symlink
//!   or a Kubernetes ConfigMap update) and on `SIGHUP`, each logged in one line:
//!   `policies reloaded from <file>: N rules`, or the error (the old policies stay). On
//!   shutdown (Ctrl-C, SIGTERM) the units it holds on lease (limits with `lease = true`) go
//!   back to Redis.
//! - `RUST_LOG`: log filter (default `info`).
//!
//! Also, not limited: `GET /metrics` (Prometheus text, with `tollgate_policy_reloads_total`
//! and `tollgate_policies_loaded_timestamp_seconds`) and `GET /dashboard` (a live page that
//! plots the metrics: `http://127.0.0.1:8080/dashboard`).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse};
use axum::{Json, Router, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde_json::json;
use tollgate::{HeaderCost, Policies, PolicyWatcher};

/// The live dashboard: one self-contained page that polls `/metrics`.
const DASHBOARD: &str = include_str!("dashboard.html");

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_on_error(run().await)
}

/// Store latency buckets, in seconds: sub-millisecond to past the 50 ms timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tollgate_store_duration_seconds".to_owned()),
            LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    let addr = common::listen_addr("127.0.0.1:8080")?;
    let env = common::Env::load().await?;
    // Every GET path is an endpoint with its own bucket (the fallback below answers them all),
    // as the seed server did: opted into explicitly, since a client can then multiply its
    // budget by varying the path.
    let builder = env
        .builder()
        .cost_extractor(HeaderCost::default())
        .unmatched_per_path();
    let config = std::env::var("RATE_LIMIT_CONFIG").ok();
    let builder = match &config {
        Some(path) => {
            let policies =
                Policies::from_file(path).map_err(|e| format!("RATE_LIMIT_CONFIG: {e}"))?;
            println!("policies: {path}");
            builder.policies(policies)
        }
        None => builder
            .capacity(10)
            .refill(10)
            .period(Duration::from_secs(10)),
    };
    let limit = builder.build()?;
    let limiter = limit.limiter().clone();
    // Reloaded when the file changes, and on SIGHUP; watched while `_watcher` lives.
    let _watcher = match &config {
        Some(path) => {
            let watcher = std::sync::Arc::new(PolicyWatcher::new(limiter.clone(), path)?);
            reload_on_hangup(std::sync::Arc::clone(&watcher))?;
            Some(watcher)
        }
        None => None,
    };
    let app = Router::new()
        .fallback(any_path)
        .layer(limit)
        // Added after the layer, so not limited.
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/metrics",
            get(move || async move {
                metrics.run_upkeep();
                metrics.render()
            }),
        )
        .route("/dashboard", get(|| async { Html(DASHBOARD) }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("fail mode: {}", env.fail_mode.as_str());
    if env.fail_mode == tollgate::FailMode::Local {
        println!("local share: {}", env.local_share);
    }
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(common::shutdown())
        .await?;
    // Units this instance holds on lease (a leased limit's hot keys) go back to Redis now,
    // for the other instances.
    match limiter.return_leases().await {
        Ok(0) => {}
        Ok(units) => println!("gave back {units} leased units"),
        Err(error) => tracing::warn!(%error, "could not give back leased units"),
    }
    Ok(())
}

/// Reads the policy file again on each `SIGHUP` (the watcher logs what it came to).
#[cfg(unix)]
fn reload_on_hangup(watcher: std::sync::Arc<PolicyWatcher>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let watcher = std::sync::Arc::clone(&watcher);
            // Reading a file blocks: not on the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || watcher.reload()).await;
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_hangup(_: std::sync::Arc<PolicyWatcher>) -> std::io::Result<()> {
    Ok(())
}

async fn any_path(method: Method, uri: Uri) -> impl IntoResponse {
    if method == Method::GET {
        (
            StatusCode::OK,
            Json(json!({"ok": true, "path": uri.path()})),
        )
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            Json(json!({"error": "only GET is served"})),
        )
    }
}
