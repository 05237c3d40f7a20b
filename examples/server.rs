//! Run with: `cargo run --example server`
//!
//! An axum service where every GET path answers `200` with a small JSON body and is
//! rate-limited: 10 requests at once per (API key, endpoint), refilled one per second.
//! `/healthz` is not limited.
//!
//! ```text
//! curl -i -H 'X-API-Key: alice' http://127.0.0.1:8080/hello
//! curl -i 'http://127.0.0.1:8080/hello?key=alice'
//! ```
//!
//! Environment:
//! - `LISTEN_ADDR`: where to listen (default `127.0.0.1:8080`).
//! - `REDIS_URL`: keep the buckets in this Redis (`redis://127.0.0.1:6379/`), shared by every
//!   instance pointed at it. Unset: in this process only.
//! - `FAIL_MODE`: `open` (default) or `closed`, when Redis fails or takes over 50 ms.
//! - `RUST_LOG`: log filter (default `info`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router, routing::get};
use serde_json::json;
use tollgate::{FailMode, MemoryStore, RateLimitLayer, RedisStore, Store};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".to_owned())
        .parse()
        .map_err(|e| format!("LISTEN_ADDR: {e}"))?;
    let fail_mode: FailMode = match std::env::var("FAIL_MODE") {
        Ok(mode) => mode.parse().map_err(|e| format!("FAIL_MODE: {e}"))?,
        Err(_) => FailMode::Open,
    };
    let app = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let store = RedisStore::open(&url).map_err(|e| format!("REDIS_URL: {e}"))?;
            println!("store: Redis at {url}; limits are shared by every instance using it");
            // Connect and load the script now; if Redis is down, start anyway and follow the
            // fail mode until it answers.
            match tokio::time::timeout(Duration::from_secs(2), store.load_script()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "Redis is not ready; starting anyway"),
                Err(_) => tracing::warn!("Redis did not answer in 2 s; starting anyway"),
            }
            app(store, fail_mode)?
        }
        Err(_) => {
            println!("store: in memory (REDIS_URL is unset); limits are per instance");
            app(MemoryStore::new(), fail_mode)?
        }
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("fail mode: {}", fail_mode.as_str());
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

fn app<St: Store + Clone>(store: St, fail_mode: FailMode) -> Result<Router, tollgate::ConfigError> {
    let limit = RateLimitLayer::builder()
        .store(store)
        .capacity(10)
        .refill(10)
        .period(Duration::from_secs(10))
        .timeout(Duration::from_millis(50))
        .fail_mode(fail_mode)
        .build()?;
    Ok(Router::new()
        .fallback(any_path)
        .layer(limit)
        // Added after the layer, so not limited.
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) })))
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

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
