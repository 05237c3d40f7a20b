//! Run with: `cargo run --example hyper`
//!
//! A hyper 1 server (hyper-util, HTTP/1) with the layer added through `ServiceBuilder`,
//! limiting each client IP: 10 requests at once, one more per second. Each connection's peer
//! address goes into the request as a `SocketAddr` extension.
//!
//! ```text
//! curl -i http://127.0.0.1:3001/anything
//! ```
//!
//! `TRUSTED_PROXIES`: comma-separated networks of proxies whose `X-Forwarded-For` is believed
//! (default: none, and the header is ignored). `LISTEN_ADDR` (default `127.0.0.1:3001`),
//! `REDIS_URL`, `FAIL_MODE` and `RUST_LOG` as for the `server` example.

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tollgate::ClientIp;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_on_error(run().await)
}

async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("{{\"path\":{:?}}}", request.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = common::listen_addr("127.0.0.1:3001")?;
    let client_ip = match std::env::var("TRUSTED_PROXIES") {
        Ok(list) if !list.trim().is_empty() => ClientIp::behind_proxies(list.split(','))?,
        _ => ClientIp::peer(),
    };
    let limit = common::Env::load()
        .await?
        .builder()
        .client_extractor(client_ip)
        .capacity(10)
        .period(Duration::from_secs(10))
        .build()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let shutdown = common::shutdown();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let service = ServiceBuilder::new()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(peer);
                request
            })
            .layer(limit.clone())
            .service_fn(hello);
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
}
