use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, ServerErrorKind};

use crate::algorithm::{MAX_SUFFIX_LEN, Observation, decide_observed};
use crate::limit::MAX_NAME_LEN;
use crate::{Algorithm, Decision, Limit, MAX_LIMITS, StoreError};

use super::{Store, push_bucket_key};

/// The script of limits that all use one algorithm, as sent to Redis: the algorithm's
/// `lua/<algorithm>.lua` followed by `lua/decide.lua`.
pub fn script_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::TokenBucket => TOKEN_BUCKET_SCRIPT,
        Algorithm::FixedWindow => FIXED_WINDOW_SCRIPT,
        Algorithm::SlidingWindow => SLIDING_WINDOW_SCRIPT,
        Algorithm::SlidingLog => SLIDING_LOG_SCRIPT,
    }
}

const DECIDE: &str = include_str!("../../lua/decide.lua");
const TOKEN_BUCKET_SCRIPT: &str = concat!(
    include_str!("../../lua/token_bucket.lua"),
    include_str!("../../lua/decide.lua")
);
const FIXED_WINDOW_SCRIPT: &str = concat!(
    include_str!("../../lua/fixed_window.lua"),
    include_str!("../../lua/decide.lua")
);
const SLIDING_WINDOW_SCRIPT: &str = concat!(
    include_str!("../../lua/sliding_window.lua"),
    include_str!("../../lua/decide.lua")
);
const SLIDING_LOG_SCRIPT: &str = concat!(
    include_str!("../../lua/sliding_log.lua"),
    include_str!("../../lua/decide.lua")
);
/// The script of limits of different algorithms: all four, `lua/mixed.lua` and
/// `lua/decide.lua`.
pub const MIXED_SCRIPT: &str = concat!(
    include_str!("../../lua/token_bucket.lua"),
    include_str!("../../lua/fixed_window.lua"),
    include_str!("../../lua/sliding_window.lua"),
    include_str!("../../lua/sliding_log.lua"),
    include_str!("../../lua/mixed.lua"),
    include_str!("../../lua/decide.lua")
);

/// The five scripts, each with its SHA1 computed once per process: one per algorithm, in
/// the order of [`Algorithm::ALL`], then the mixed one.
static SCRIPTS: LazyLock<[redis::Script; 5]> = LazyLock::new(|| {
    let _ = DECIDE;
    [
        redis::Script::new(script_source(Algorithm::ALL[0])),
        redis::Script::new(script_source(Algorithm::ALL[1])),
        redis::Script::new(script_source(Algorithm::ALL[2])),
        redis::Script::new(script_source(Algorithm::ALL[3])),
        redis::Script::new(MIXED_SCRIPT),
    ]
});

/// The script that decides a request under `limits`: its algorithm's if they share one,
/// else the mixed one.
pub fn script_for(limits: &[Limit]) -> &'static redis::Script {
    let first = limits
        .first()
        .map_or(Algorithm::TokenBucket, Limit::algorithm);
    if limits.iter().all(|l| l.algorithm() == first) {
        let i = Algorithm::ALL
            .iter()
            .position(|&a| a == first)
            .expect("every algorithm is in ALL");
        &SCRIPTS[i]
    } else {
        &SCRIPTS[4]
    }
}

/// After this many calls in a row failed or were abandoned (timed out by the layer), the store
/// opens a new connection.
const REOPEN_AFTER_FAILURES: u32 = 3;
/// And it opens at most one new connection per this many milliseconds.
const REOPEN_EVERY_MS: u64 = 2_000;

/// Buckets in Redis, shared by every instance that points at the same server.
///
/// Each decision is one `EVALSHA` of a Lua script over the buckets of the request's limits
/// (one key per limit, all in one Redis Cluster slot): the script of their
/// [algorithm](crate::algorithm), or, when they use different ones, a script with all four
/// ([`script_for`]). It reads the buckets, decides with the Redis clock (`TIME`, so instances
/// with skewed clocks agree), and writes only when every limit allows, each key with a TTL
/// that ends when nothing in it counts any more, so idle buckets vanish. The scripts' SHA1s
/// are computed once per process; when Redis answers `NOSCRIPT` (restarted, `SCRIPT FLUSH`,
/// failed over) the same call is sent again as `EVAL` with the script's text, which runs it
/// and leaves it cached on that server.
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
    start: Instant,
    /// Calls failed or abandoned since the last success.
    failures: AtomicU32,
    /// Milliseconds since `start` when a connection was last opened.
    opened_ms: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
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

    /// Connects and loads the scripts now, so the first requests do not wait for either.
    ///
    /// Optional: a call whose script Redis does not have sends it along anyway (`EVAL`).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or refuses a script.
    pub async fn load_script(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.connection();
        for script in SCRIPTS.iter() {
            script.load_async(&mut conn).await?;
        }
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
        let script = script_for(limits);
        let evalsha = command("EVALSHA", script.get_hash(), key, limits, cost);
        let limits = Arc::clone(limits);
        let key = key.to_owned();
        Box::pin(async move {
            let reply: Result<redis::Value, redis::RedisError> =
                match evalsha.query_async(&mut conn).await {
                    // Redis forgot the script (restart, SCRIPT FLUSH, failover): send it.
                    Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        let eval = command("EVAL", script_text(script), &key, &limits, cost);
                        eval.query_async(&mut conn).await
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

/// The source of one of the five scripts.
fn script_text(script: &redis::Script) -> &'static str {
    let i = SCRIPTS
        .iter()
        .position(|s| std::ptr::eq(s, script))
        .expect("one of the five scripts");
    match i {
        4 => MIXED_SCRIPT,
        i => script_source(Algorithm::ALL[i]),
    }
}

/// `EVALSHA sha` or `EVAL text`, then the keys and arguments of `lua/decide.lua`, written once:
/// each key straight from one reused buffer.
fn command(verb: &str, script: &str, key: &str, limits: &[Limit], cost: u64) -> redis::Cmd {
    let mut cmd = redis::cmd(verb);
    cmd.arg(script).arg(limits.len());
    let mut bucket = String::with_capacity(key.len() + 1 + MAX_NAME_LEN + MAX_SUFFIX_LEN);
    for limit in limits {
        bucket.clear();
        push_bucket_key(&mut bucket, key, limit);
        cmd.arg(bucket.as_str());
    }
    for limit in limits {
        cmd.arg(limit.algorithm().code());
        match limit.algorithm() {
            // The increment and the burst, in microseconds; the cost for the record.
            Algorithm::TokenBucket => cmd
                .arg(cost.saturating_mul(limit.interval_us()))
                .arg(limit.window_us())
                .arg(cost),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                cmd.arg(limit.window_ms()).arg(limit.capacity()).arg(cost)
            }
            Algorithm::SlidingLog => cmd.arg(limit.window_us()).arg(limit.capacity()).arg(cost),
        };
    }
    cmd
}

/// Turns the script's reply into a decision (see `lua/decide.lua`).
fn parse_reply(reply: &redis::Value, limits: &[Limit], cost: u64) -> Option<Decision> {
    use redis::Value::{Array, Int};
    let mut observed = [Observation::TokenBucket { full_after: 0 }; MAX_LIMITS];
    let observed = observed.get_mut(..limits.len())?;
    let allowed = match (reply, limits) {
        (Int(packed), [limit]) => {
            let (allowed, seen) = Observation::from_packed(limit, *packed)?;
            observed[0] = seen;
            allowed
        }
        (Array(values), _) => {
            let mut values = values.iter().map(|v| match v {
                Int(i) => u64::try_from(*i).ok(),
                _ => None,
            });
            let allowed = match values.next()?? {
                0 => false,
                1 => true,
                _ => return None,
            };
            let mut numbers = [0; 4];
            for (limit, seen) in limits.iter().zip(observed.iter_mut()) {
                let numbers = &mut numbers[..limit.algorithm().width()];
                for n in numbers.iter_mut() {
                    *n = values.next()??;
                }
                *seen = Observation::from_values(limit.algorithm(), numbers)?;
            }
            if values.next().is_some() {
                return None;
            }
            allowed
        }
        _ => return None,
    };
    Some(decide_observed(limits, observed, allowed, cost))
}
