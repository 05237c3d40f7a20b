//! What the examples share: the store and fail mode from the environment, and startup output.
#![allow(dead_code)]

pub mod helloworld;

use std::time::Duration;

use tollgate::store::AnyStore;
use tollgate::{
    FailMode, LayerBuilder, Limiter, LimiterBuilder, MemoryStore, RedisStore, TollgateLayer,
};

/// What every example reads from the environment: the store (`REDIS_URL`, `REDIS_MODE`,
/// `REDIS_SENTINEL_MASTER`), the store timeout (`STORE_TIMEOUT_MS`), the fail mode
/// (`FAIL_MODE`, `LOCAL_SHARE`) and the bound on calls in flight (`MAX_IN_FLIGHT`).
pub struct Env {
    pub store: AnyStore,
    pub timeout: Duration,
    pub fail_mode: FailMode,
    pub local_share: f64,
    pub max_in_flight: usize,
}

impl Env {
    /// `STORE_TIMEOUT_MS` (default 50; the tests raise it where they are not about timeouts,
    /// so a busy CI machine does not fail requests open), `FAIL_MODE` (`open`, `closed` or
    /// `local`), `LOCAL_SHARE` (default 1; 0.5 for two instances), `MAX_IN_FLIGHT` (default
    /// 1,024) and the store.
    pub async fn load() -> Result<Self, String> {
        let timeout_ms: u64 = env_or("STORE_TIMEOUT_MS", 50)?;
        let local_share: f64 = env_or("LOCAL_SHARE", 1.0)?;
        let max_in_flight: usize = env_or("MAX_IN_FLIGHT", 1024)?;
        // Checked here too (the builder would refuse them), so the error names the variable.
        if timeout_ms == 0 {
            return Err("STORE_TIMEOUT_MS=0: must be greater than zero".into());
        }
        if !(local_share > 0.0 && local_share <= 1.0) {
            return Err(format!(
                "LOCAL_SHARE={local_share}: must be more than 0 and at most 1 (1/N for N instances)"
            ));
        }
        if max_in_flight == 0 {
            return Err("MAX_IN_FLIGHT=0: must be greater than zero".into());
        }
        Ok(Self {
            timeout: Duration::from_millis(timeout_ms),
            fail_mode: env_or("FAIL_MODE", FailMode::Open)?,
            local_share,
            max_in_flight,
            store: store_from_env().await?,
        })
    }

    /// A limiter builder (the engine, for direct calls) with this store, timeout and fail
    /// mode.
    pub fn limiter(&self) -> LimiterBuilder<AnyStore> {
        Limiter::builder()
            .store(self.store.clone())
            .timeout(self.timeout)
            .fail_mode(self.fail_mode)
            .local_share(self.local_share)
            .max_in_flight(self.max_in_flight)
    }

    /// A layer builder with this store, timeout and fail mode.
    pub fn builder(&self) -> LayerBuilder<AnyStore, tollgate::ApiKey> {
        TollgateLayer::builder()
            .client_extractor(tollgate::ApiKey::default())
            .store(self.store.clone())
            .timeout(self.timeout)
            .fail_mode(self.fail_mode)
            .local_share(self.local_share)
            .max_in_flight(self.max_in_flight)
    }
}

/// `REDIS_URL` set: Redis (connected and the scripts loaded now if it answers within 2 s, else
/// later); unset: memory. `REDIS_MODE` says how to read `REDIS_URL`: `single` (the default, one
/// URL), `cluster` (some of the cluster's nodes, separated by commas) or `sentinel` (the
/// sentinels, separated by commas, with the master's name in `REDIS_SENTINEL_MASTER`). Says
/// which on stdout.
pub async fn store_from_env() -> Result<AnyStore, String> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("store: in memory (REDIS_URL is unset); limits are per instance");
        return Ok(AnyStore::from(MemoryStore::new()));
    };
    let urls = || url.split(',').map(str::trim).filter(|u| !u.is_empty());
    let mode = std::env::var("REDIS_MODE").unwrap_or_else(|_| "single".to_owned());
    let store = match mode.as_str() {
        "single" => RedisStore::open(&url).map_err(|e| format!("REDIS_URL: {e}"))?,
        "cluster" => RedisStore::open_cluster(urls()).map_err(|e| format!("REDIS_URL: {e}"))?,
        "sentinel" => {
            let master = std::env::var("REDIS_SENTINEL_MASTER").map_err(|_| {
                "REDIS_SENTINEL_MASTER: required with REDIS_MODE=sentinel (the master's name)"
                    .to_owned()
            })?;
            RedisStore::open_sentinel(urls(), &master).map_err(|e| format!("REDIS_URL: {e}"))?
        }
        other => {
            return Err(format!(
                "REDIS_MODE: {other:?} is invalid: must be \"single\", \"cluster\" or \"sentinel\""
            ));
        }
    };
    let at = urls().map(redact).collect::<Vec<_>>().join(",");
    println!("store: Redis ({mode}) at {at}; limits are shared by every instance using it");
    match tokio::time::timeout(Duration::from_secs(2), store.load_script()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "Redis is not ready; starting anyway"),
        Err(_) => tracing::warn!("Redis did not answer in 2 s; starting anyway"),
    }
    Ok(AnyStore::from(store))
}

/// `url` without its user, password and query (`redis://:secret@host/` → `redis://***@host/`,
/// `redis+unix:///run/redis.sock?pass=secret` → `redis+unix:///run/redis.sock?***`).
pub fn redact(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, _)) => (url, "?***"),
        None => (url, ""),
    };
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}{query}", &url[..scheme + 3], &url[at..])
        }
        _ => format!("{url}{query}"),
    }
}

/// The variable `name` parsed, or `default` when it is unset; a value that does not parse is
/// an error naming the variable and the value.
pub fn env_or<T>(name: &str, default: T) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => value.parse().map_err(|e: T::Err| {
            // `NAME=value: what is wrong`, the name and the value once (a configuration
            // error's own message repeats the value: keep only what follows it).
            let message = e.to_string();
            let reason = message
                .split_once(" is invalid: ")
                .map_or(message.as_str(), |(_, reason)| reason);
            format!("{name}={value}: {reason}")
        }),
        Err(_) => Ok(default),
    }
}

/// `LISTEN_ADDR`, or `default`.
pub fn listen_addr(default: &str) -> Result<std::net::SocketAddr, String> {
    std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| default.to_owned())
        .parse()
        .map_err(|e| format!("LISTEN_ADDR: {e}"))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs `main`, printing its error and exiting non-zero when it fails.
pub fn exit_on_error(result: Result<(), Box<dyn std::error::Error>>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown() {
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
