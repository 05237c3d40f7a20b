//! Run with: `MODE=tollgate cargo run --release --example bench_server`
//!
//! The server of the middleware-overhead benchmark (`benches/middleware.sh`): one axum route,
//! `GET /` answering `ok`, served on `LISTEN_ADDR` (default `127.0.0.1:3002`) with `MODE`:
//! - `none`: no rate limiting;
//! - `tollgate`: this crate's layer, in-memory store, per client IP, `RateLimit` fields on;
//! - `tollgate-bare`: the same without the `RateLimit` fields (`headers_on_allowed(false)`);
//! - `governor`: tower_governor's layer, per peer IP;
//! - `governor-headers`: the same with its `x-ratelimit-*` fields (`use_headers()`).
//! - `governor-endpoint`: the same, keyed as this crate's layer keys by default: per client
//!   IP and endpoint (the method and the route axum matched), by a key extractor a
//!   tower_governor user would write.
//!
//! Both limiters get a quota that never runs out, so every request does the full work of an
//! allowed one, and the same burst (4,294,967,295, tower_governor's largest), so the numbers
//! in their fields are as long.

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
                // tower_governor's largest burst (u32::MAX), so both report numbers of the same
                // length in their fields.
                .capacity(u64::from(u32::MAX))
                .refill(1_000_000)
                .period(Duration::from_secs(1))
                .headers_on_allowed(mode == "tollgate")
                .build()
                .expect("valid"),
        ),
        "governor-endpoint" => {
            let mut config = GovernorConfigBuilder::default();
            config.per_nanosecond(1).burst_size(u32::MAX);
            let config = config
                .key_extractor(Endpoint)
                .use_headers()
                .finish()
                .expect("valid");
            app.layer(GovernorLayer::new(config))
        }
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
        other => panic!(
            "MODE must be none, tollgate, tollgate-bare, governor, governor-headers or \
             governor-endpoint, not {other:?}"
        ),
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

/// tower_governor's key per client IP and endpoint: the peer's address, the method and the
/// route template axum matched. The template is shared, not copied (the cheapest key a
/// tower_governor user could write: `MatchedPath` is not `Hash`, so it is wrapped).
#[derive(Clone)]
struct Endpoint;

#[derive(Clone, Debug)]
struct Route(axum::extract::MatchedPath);

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl tower_governor::key_extractor::KeyExtractor for Endpoint {
    type Key = (std::net::IpAddr, http::Method, Option<Route>);

    fn extract<T>(
        &self,
        req: &http::Request<T>,
    ) -> Result<Self::Key, tower_governor::GovernorError> {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)?
            .0
            .ip();
        let route = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .cloned()
            .map(Route);
        Ok((peer, req.method().clone(), route))
    }
}
