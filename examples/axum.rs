//! Run with: `cargo run --example axum`
//!
//! Two layers in one axum app: a router-wide limit per client IP and endpoint (10 at once,
//! one more per second), and a per-route limit on `POST /generate` per API key, weighted by
//! the `X-RateLimit-Cost` header (say, LLM tokens): 100 tokens a minute and 1,000 an hour.
//!
//! ```text
//! curl -i http://127.0.0.1:3000/hello
//! curl -i -X POST -H 'X-API-Key: alice' -H 'X-RateLimit-Cost: 40' http://127.0.0.1:3000/generate
//! ```
//!
//! `LISTEN_ADDR` (default `127.0.0.1:3000`), `REDIS_URL`, `FAIL_MODE` and `RUST_LOG` as for
//! the `server` example.

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::{Json, Router, routing::get, routing::post};
use serde_json::json;
use tollgate::{ApiKey, ClientIp, HeaderCost, Limit, Policies};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_on_error(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = common::listen_addr("127.0.0.1:3000")?;
    let env = common::Env::load().await?;

    // Router-wide: every route, per client IP and endpoint.
    let per_ip = env
        .builder()
        .client_extractor(ClientIp::peer())
        .key_prefix("per-ip")
        .capacity(10)
        .period(Duration::from_secs(10))
        .build()?;

    // One route: tokens per API key, two limits, all or nothing.
    let minute = Duration::from_secs(60);
    let tokens = env
        .builder()
        .client_extractor(ApiKey::header(http::HeaderName::from_static("x-api-key")))
        .key_prefix("tokens")
        .policies(
            Policies::builder()
                .default_limit(Limit::new("minute", 100, 100, minute)?)
                .default_limit(Limit::new("hour", 1_000, 1_000, minute * 60)?)
                .build()?,
        )
        .cost_extractor(HeaderCost::default())
        .build()?;

    let app = Router::new()
        .route("/hello", get(|| async { Json(json!({"hello": "world"})) }))
        .route(
            "/generate",
            post(|| async { Json(json!({"generated": true})) }).layer(tokens),
        )
        .layer(per_ip);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(common::shutdown())
    .await?;
    Ok(())
}
