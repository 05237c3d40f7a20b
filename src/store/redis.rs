use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Decision, Limit, StoreError};

use super::Store;

/// The token-bucket script, as sent to Redis (`lua/token_bucket.lua`).
pub const TOKEN_BUCKET_LUA: &str = include_str!("../../lua/token_bucket.lua");

/// Buckets in Redis, shared by every instance that points at the same server.
///
/// Each decision is one `EVALSHA` of [`TOKEN_BUCKET_LUA`] on one key: it reads the bucket,
/// decides with the Redis clock (`TIME`, so instances with skewed clocks agree), and writes
/// only when it allows, with a TTL that ends when the bucket is full again, so idle buckets
/// vanish. The script's SHA1 is computed once per store; when Redis answers `NOSCRIPT`
/// (restarted, `SCRIPT FLUSH`, failed over) the script is loaded and the call retried.
///
/// The connection is a redis-rs [`ConnectionManager`]: one multiplexed connection that all
/// clones of the store share (concurrent decisions are pipelined on it), re-established in the
/// background after Redis restarts. [`RedisStore::open`] does not wait for Redis: a service
/// starts even while Redis is down and follows its fail mode until Redis answers.
///
/// # Abandoned calls
///
/// The layer gives up on a decision after its timeout, but the command may already be on its
/// way: Redis may still run it and take a token for a request that was failed open or closed.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    script: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("script_sha", &self.script.get_hash())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for the Redis at `url` (`redis://host:port/db`, `rediss://…`,
    /// `redis+unix:///path`), with [`RedisStore::default_config`].
    ///
    /// Returns at once; the connection is made on first use and remade after failures.
    ///
    /// # Errors
    ///
    /// When the URL cannot be parsed. Must be called inside a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::with_config(redis::Client::open(url)?, Self::default_config())
    }

    /// A store over `client` with a connection manager configured by `config`.
    ///
    /// # Errors
    ///
    /// When redis-rs refuses the configuration. Must be called inside a Tokio runtime.
    pub fn with_config(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, StoreError> {
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self::from_connection(conn))
    }

    /// A store over an existing connection manager.
    pub fn from_connection(conn: ConnectionManager) -> Self {
        Self {
            conn,
            script: Arc::new(redis::Script::new(TOKEN_BUCKET_LUA)),
        }
    }

    /// The connection manager settings [`RedisStore::open`] uses.
    ///
    /// Reconnection starts 10 ms after a failure and backs off to at most 1 s between
    /// attempts, retrying without end, so the store follows Redis back after any outage. A
    /// connection attempt gives up after 1 s and a command after 1 s; the layer's own, shorter
    /// timeout bounds each request.
    pub fn default_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(usize::MAX)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
    }

    /// The SHA1 of the script, as `EVALSHA` names it.
    pub fn script_sha(&self) -> &str {
        self.script.get_hash()
    }
}

/// The future of one Redis decision.
pub type RedisDecision = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

impl Store for RedisStore {
    type Future = RedisDecision;

    fn decide(&self, key: String, limit: &Limit, cost: u64) -> Self::Future {
        let mut conn = self.conn.clone();
        let script = Arc::clone(&self.script);
        let limit_args = (limit.interval_us(), limit.capacity());
        let limit = limit.clone();
        Box::pin(async move {
            let (allowed, remaining, full_after): (i64, i64, i64) = script
                .key(key)
                .arg(limit_args.0)
                .arg(limit_args.1)
                .arg(cost)
                .invoke_async(&mut conn)
                .await?;
            let (Ok(remaining), Ok(full_after)) =
                (u64::try_from(remaining), u64::try_from(full_after))
            else {
                return Err(StoreError::Reply(format!(
                    "{{{allowed}, {remaining}, {full_after}}}"
                )));
            };
            Ok(limit.decision(allowed == 1, remaining, full_after, cost))
        })
    }
}
