//! Run with: `MODE=tollgate cargo run --release --example bench_server`
//!
//! The server of the middleware-overhead benchmark (`benches/middleware.sh`): one axum route,
//! `GET /` answering `ok`, served on `LISTEN_ADDR` (default `127.0.0.1:3002`) with `MODE`:
//! - `none`: no rate limiting;
//! - `tollgate`: this crate's layer, in-memory store, per client IP, `RateLimit` fields on;
//! - `tollgate-bare`: the same without the `RateLimit` fields (`headers_on_allowed(false)`);
//! - `governor`: tower_governor's layer, per peer IP;
//! - `governor-headers`: the same with its `x-ratelimit-*` fields (`use_headers()`).
//!
//! Both limiters get a quota that never runs out, so every request does the full work of an
//! allowed one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::{Router, routing::get};
use tollgate::{ClientIp, TollgateLayer};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3002".into())
        .parse()
        .expect("LISTEN_ADDR");
    let mode = std::env::var("MODE").unwrap_or_else(|_| "none".into());
    let app = Router::new().route("/", get(|| async { "ok" }));
    let app = match mode.as_str() {
        "none" => app,
        "tollgate" | "tollgate-bare" => app.layer(
            TollgateLayer::builder()
                .client_extractor(tollgate::ApiKey::default())
                .client_extractor(ClientIp::peer())
                .capacity(1 << 40)
                .refill(1_000_000)
                .period(Duration::from_secs(1))
                .headers_on_allowed(mode == "tollgate")
                .build()
                .expect("valid"),
        ),
        "governor" | "governor-headers" => {
            let mut config = GovernorConfigBuilder::default();
            config.per_nanosecond(1).burst_size(u32::MAX);
            // `use_headers` returns a builder of another type (it does not change this one).
            if mode == "governor-headers" {
                let config = config.use_headers().finish().expect("valid");
                app.layer(GovernorLayer::new(config))
            } else {
                app.layer(GovernorLayer::new(config.finish().expect("valid")))
            }
        }
        other => panic!("MODE must be none, tollgate or governor, not {other:?}"),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("listening on {} ({mode})", listener.local_addr().unwrap());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
