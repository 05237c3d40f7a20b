//! Run with: `cargo run --example tonic`
//!
//! gRPC's helloworld `Greeter` with the layer in front: 10 calls per 10 s per API key (the
//! `x-api-key` metadata) and method. Limited calls get `RESOURCE_EXHAUSTED` with a
//! `google.rpc.RetryInfo` detail; calls without a key `INVALID_ARGUMENT`; when Redis fails
//! and `FAIL_MODE=closed`, `UNAVAILABLE`.
//!
//! ```text
//! grpcurl -plaintext -import-path examples -proto helloworld.proto \
//!   -H 'x-api-key: alice' -d '{"name":"tollgate"}' 127.0.0.1:50051 helloworld.Greeter/SayHello
//! ```
//!
//! (`examples/helloworld.proto` describes the service: the server has no reflection.)
//! `LISTEN_ADDR` (default `127.0.0.1:50051`), `REDIS_URL`,
//! `FAIL_MODE` and `RUST_LOG` as for the `server` example.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::helloworld::GreeterServer;
use tollgate::ApiKey;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_on_error(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = common::listen_addr("127.0.0.1:50051")?;
    let limit = common::Env::load()
        .await?
        .builder()
        .client_extractor(ApiKey::header(http::HeaderName::from_static("x-api-key")))
        // A bucket per Greeter method; any other path (which the server refuses anyway)
        // shares one, so that made-up method names do not multiply a client's budget.
        .unmatched_paths_named(|path| {
            path.starts_with("/helloworld.Greeter/")
                .then(|| path.to_owned())
        })
        .capacity(10)
        .period(Duration::from_secs(10))
        .build()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    // One limited service among others: the layer keeps its gRPC name (NamedService), so it
    // goes straight into add_service. (`Server::builder().layer(limit)` limits them all.)
    Server::builder()
        .add_service(tower_layer::Layer::layer(&limit, GreeterServer))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), common::shutdown())
        .await?;
    Ok(())
}
