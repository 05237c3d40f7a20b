use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, ServerErrorKind};

use crate::limit::{allowed_decision, denied_decision};
use crate::{Decision, Limit, StoreError};

use super::{Store, push_bucket_key};
use crate::limit::MAX_NAME_LEN;

/// The token-bucket script, as sent to Redis (`lua/token_bucket.lua`).
pub const TOKEN_BUCKET_LUA: &str = include_str!("../../lua/token_bucket.lua");

/// After this many calls in a row failed or were abandoned (timed out by the layer), the store
/// opens a new connection.
const REOPEN_AFTER_FAILURES: u32 = 3;
/// And it opens at most one new connection per this many milliseconds.
const REOPEN_EVERY_MS: u64 = 2_000;

/// Buckets in Redis, shared by every instance that points at the same server.
///
/// Each decision is one `EVALSHA` of [`TOKEN_BUCKET_LUA`] over the buckets of the request's
/// limits (one key per limit, all in one Redis Cluster slot): it reads them, decides with the
/// Redis clock (`TIME`, so instances with skewed clocks agree), and writes only when every
/// limit allows, each key with a TTL that ends when its bucket is full again, so idle buckets
/// vanish. The script's SHA1 is computed once per store; when Redis answers `NOSCRIPT`
/// (restarted, `SCRIPT FLUSH`, failed over) the script is loaded and the call retried.
///
/// # Connections
///
/// The connection is a redis-rs [`ConnectionManager`]: one multiplexed connection that all
/// clones of the store share (concurrent decisions are pipelined on it), re-established in the
/// background when it breaks. A connection can also go silent without breaking (a network
/// black hole, a proxy that stopped forwarding, a failover that moved the address): after three
/// calls in a row fail or are abandoned by the layer's timeout, the store opens a new
/// connection, at most once every two seconds. [`RedisStore::open`] does not wait for Redis: a
/// service starts even while Redis is down and follows its fail mode until Redis answers;
/// [`RedisStore::load_script`] connects and loads the script ahead of the first request.
///
/// # Abandoned calls
///
/// The layer gives up on a decision after its timeout, but the command may already be on its
/// way: Redis may still run it and take a token for a request that was failed open or closed.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RwLock<ConnectionManager>,
    /// How to open a new connection; `None` for a store made from a connection.
    reopen: Option<(redis::Client, ConnectionManagerConfig)>,
    script: redis::Script,
    start: Instant,
    /// Calls failed or abandoned since the last success.
    failures: AtomicU32,
    /// Milliseconds since `start` when a connection was last opened.
    opened_ms: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("script_sha", &self.inner.script.get_hash())
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

    /// A store over `client` with connection managers configured by `config`.
    ///
    /// # Errors
    ///
    /// When redis-rs refuses the configuration. Must be called inside a Tokio runtime.
    pub fn with_config(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, StoreError> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self::new(conn, Some((client, config))))
    }

    /// A store over an existing connection manager. It cannot open a new connection when this
    /// one goes silent; prefer [`RedisStore::with_config`].
    pub fn from_connection(conn: ConnectionManager) -> Self {
        Self::new(conn, None)
    }

    fn new(
        conn: ConnectionManager,
        reopen: Option<(redis::Client, ConnectionManagerConfig)>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn: RwLock::new(conn),
                reopen,
                script: redis::Script::new(TOKEN_BUCKET_LUA),
                start: Instant::now(),
                failures: AtomicU32::new(0),
                opened_ms: AtomicU64::new(0),
            }),
        }
    }

    /// The connection manager settings [`RedisStore::open`] uses.
    ///
    /// Reconnection starts 10 ms after a failure and backs off to at most 500 ms, five tries
    /// per failure; a connection attempt gives up after 1 s and a command after 1 s. The
    /// layer's own, shorter timeout bounds each request.
    pub fn default_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(5)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
    }

    /// The SHA1 of the script, as `EVALSHA` names it.
    pub fn script_sha(&self) -> &str {
        self.inner.script.get_hash()
    }

    /// Connects and loads the script now, so the first request does not wait for either.
    ///
    /// Optional: a store loads the script on first use anyway, and again whenever Redis
    /// forgot it.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or refuses the script.
    pub async fn load_script(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.connection();
        self.inner.script.load_async(&mut conn).await?;
        Ok(())
    }
}

impl Inner {
    fn connection(&self) -> ConnectionManager {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed or was abandoned: after a few in a row, open a new connection.
    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some((client, config)) = &self.reopen else {
            return;
        };
        if failures < REOPEN_AFTER_FAILURES || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let opened = self.opened_ms.load(Ordering::Relaxed);
        if now < opened + REOPEN_EVERY_MS
            || self
                .opened_ms
                .compare_exchange(opened, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(conn) => {
                *self.conn.write().unwrap_or_else(PoisonError::into_inner) = conn;
                self.failures.store(0, Ordering::Relaxed);
                tracing::info!(failures, "opening a new Redis connection");
            }
            Err(error) => tracing::warn!(%error, "cannot open a new Redis connection"),
        }
    }
}

/// Reports a call that is dropped before it finished (the layer's timeout) as a failure.
struct Call {
    inner: Arc<Inner>,
    finished: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.failed();
        }
    }
}

/// The future of one Redis decision.
pub type RedisDecision = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

impl Store for RedisStore {
    type Future = RedisDecision;

    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> Self::Future {
        let mut conn = self.inner.connection();
        let mut call = Call {
            inner: Arc::clone(&self.inner),
            finished: false,
        };
        let cost = cost.max(1);
        // The command is written once, here: each key straight from one reused buffer.
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(self.inner.script.get_hash()).arg(limits.len());
        let mut bucket = String::with_capacity(key.len() + 1 + MAX_NAME_LEN);
        for limit in limits.iter() {
            bucket.clear();
            push_bucket_key(&mut bucket, key, limit);
            evalsha.arg(bucket.as_str());
        }
        for limit in limits.iter() {
            evalsha
                .arg(cost.saturating_mul(limit.interval_us()))
                .arg(limit.fill_us());
        }
        let limits = Arc::clone(limits);
        Box::pin(async move {
            let reply: Result<redis::Value, redis::RedisError> =
                match evalsha.query_async(&mut conn).await {
                    // Redis forgot the script (restart, SCRIPT FLUSH, failover): load it, retry.
                    Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        match call.inner.script.load_async(&mut conn).await {
                            Ok(_) => evalsha.query_async(&mut conn).await,
                            Err(error) => Err(error),
                        }
                    }
                    reply => reply,
                };
            call.finished = true;
            let reply = match reply {
                Ok(reply) => {
                    call.inner.succeeded();
                    reply
                }
                Err(error) => {
                    call.inner.failed();
                    return Err(error.into());
                }
            };
            parse_reply(&reply, &limits, cost)
                .ok_or_else(|| StoreError::Reply(format!("{reply:?}")))
        })
    }
}

/// Turns the script's reply into a decision (see `lua/token_bucket.lua`).
fn parse_reply(reply: &redis::Value, limits: &[Limit], cost: u64) -> Option<Decision> {
    use redis::Value::{Array, Int};
    match reply {
        Int(after) if *after > 0 && limits.len() == 1 => Some(allowed_decision(
            limits,
            &[u64::try_from(*after).ok()?],
            cost,
        )),
        Int(denied) if *denied < 0 && limits.len() == 1 => {
            let full_after = u64::try_from(-1 - *denied).ok()?;
            Some(denied_decision(limits, 0, full_after, cost))
        }
        Array(values) => {
            let ints: Vec<i64> = values
                .iter()
                .map(|v| match v {
                    Int(i) => Some(*i),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            match ints.as_slice() {
                [worst, full_after] if *worst < 0 => {
                    let index = usize::try_from(-1 - *worst)
                        .ok()
                        .filter(|&i| i < limits.len())?;
                    Some(denied_decision(
                        limits,
                        index,
                        u64::try_from(*full_after).ok()?,
                        cost,
                    ))
                }
                afters if afters.len() == limits.len() => {
                    let afters: Vec<u64> = afters
                        .iter()
                        .map(|&a| u64::try_from(a).ok().filter(|&a| a > 0))
                        .collect::<Option<_>>()?;
                    Some(allowed_decision(limits, &afters, cost))
                }
                _ => None,
            }
        }
        _ => None,
    }
}
