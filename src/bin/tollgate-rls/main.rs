//! `tollgate-rls`: the Envoy rate limit service, a drop-in for envoyproxy/ratelimit. Set up
//! as that service is, by its environment settings (see the README, "Replacing
//! envoyproxy/ratelimit"): gRPC on `GRPC_HOST:GRPC_PORT` (`ShouldRateLimit`, and the gRPC
//! health service `ratelimit`), HTTP on `HOST:PORT` (`/json`, `/healthcheck`), and the debug
//! port `DEBUG_HOST:DEBUG_PORT` (`/rlconfig`, Prometheus `/metrics`).

mod settings;

use std::process::ExitCode;

use axum::routing::get;
use settings::{Env, Redis, Settings};
use tokio::net::TcpListener;
use tollgate::envoy::{Health, RateLimitService, debug_router, router};
use tollgate::store::AnyStore;
use tollgate::{MemoryStore, RedisStore, StoreError};
use tonic::transport::{Server, server::TcpIncoming};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::read(&Env::new(std::env::vars())) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tollgate-rls: {error}");
            return ExitCode::from(2);
        }
    };
    init_logs(&settings);
    // A REDIS_URL that cannot be opened (it does not parse) is a bad setting too (exit 2),
    // not a failure to run; a server that does not answer is one the store retries.
    let store = match open_store(&settings.redis) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("tollgate-rls: {error}");
            return ExitCode::from(2);
        }
    };
    match run(settings, store).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("tollgate-rls: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::new(&settings.log_level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if settings.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
}

async fn run(settings: Settings, store: AnyStore) -> Result<(), String> {
    if !settings.unsupported.is_empty() {
        tracing::warn!(
            "these settings are not supported and are ignored: {}",
            settings.unsupported.join(", ")
        );
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    let service = RateLimitService::on_store(store, settings.timeout, settings.service.clone())
        .map_err(|e| e.to_string())?;
    match settings.runtime.load() {
        Ok(config) => {
            service.set_config(config);
            tracing::info!("Successfully loaded new configuration");
        }
        // The service stays up, answering `no rate limit configuration loaded`.
        Err(error) => tracing::error!("Error loading new configuration: {error}"),
    }
    let _watcher = match settings.runtime.watch(service.clone()) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the configuration: it will not be reloaded");
            None
        }
    };
    let health = Health::new();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("ratelimit", tonic_health::ServingStatus::Serving)
        .await;

    let grpc = bind(&settings.grpc, "gRPC").await?;
    let http = bind(&settings.http, "HTTP").await?;
    let debug = bind(&settings.debug, "debug").await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    let grpc = Server::builder()
        .add_service(service.clone().into_server())
        .add_service(health_service)
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc), stopped());
    let http = axum::serve(http, router(service.clone(), health.clone()))
        .with_graceful_shutdown(stopped());
    let debug_app = debug_router(service.clone())
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route(
            "/",
            get(|| async {
                "/rlconfig: the configuration in force\n/metrics: Prometheus metrics\n"
            }),
        );
    let debug = axum::serve(debug, debug_app).with_graceful_shutdown(stopped());
    tokio::spawn(async move {
        shutdown_signal().await;
        // Unhealthy first, so load balancers stop sending, then stop.
        health.stopping();
        reporter
            .set_service_status("ratelimit", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stop.send(true);
    });
    let (grpc, http, debug) = tokio::join!(grpc, http, debug);
    // What leases hold goes back to the windows that lent it, for the other instances.
    service.give_back_leases().await;
    grpc.map_err(|e| format!("gRPC server: {e}"))?;
    http.map_err(|e| format!("HTTP server: {e}"))?;
    debug.map_err(|e| format!("debug server: {e}"))?;
    Ok(())
}

/// Listens on `addr`, and says where (the port chosen when it is 0).
async fn bind(addr: &str, what: &str) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("Listening for {what} on '{bound}'");
    tracing::warn!("Listening for {what} on '{bound}'");
    Ok(listener)
}

fn open_store(redis: &Redis) -> Result<AnyStore, String> {
    let store = match redis {
        Redis::None => {
            tracing::warn!(
                "REDIS_URL is not set: counting in this process only (the in-memory store)"
            );
            return Ok(AnyStore::from(MemoryStore::new()));
        }
        Redis::Single(url) => RedisStore::open(url),
        Redis::Cluster(nodes) => RedisStore::open_cluster(nodes.iter().map(String::as_str)),
        Redis::Sentinel(sentinels, master, None) => {
            RedisStore::open_sentinel(sentinels.iter().map(String::as_str), master)
        }
        // REDIS_AUTH is the primary's (the peer's REDIS_SENTINEL_AUTH, the sentinels', is not
        // supported).
        Redis::Sentinel(sentinels, master, Some((user, password))) => {
            use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
            let mut primary = redis::RedisConnectionInfo::default().set_password(password);
            if !user.is_empty() {
                primary = primary.set_username(user);
            }
            let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(primary);
            SentinelClient::build(
                sentinels.iter().map(String::as_str).collect(),
                master.clone(),
                Some(node),
                SentinelServerType::Master,
            )
            .map(|client| RedisStore::from_sentinel(client, RedisStore::default_config()))
            .map_err(StoreError::from)
        }
    };
    store
        .map(AnyStore::from)
        .map_err(|e| format!("REDIS_URL: {e}"))
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
