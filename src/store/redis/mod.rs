//! [`RedisStore`]: buckets in Redis (one server, a Redis Cluster, or a primary behind
//! sentinels), one Lua script call per decision.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::algorithm::check_limits;
use crate::{Decision, Limit, StoreError};

use super::{Stamp, Store, StoreCall, Taken};

mod connection;
mod lease;
mod reply;
mod scripts;
mod send;
mod slots;

use connection::{Conn, Link, Opener};
use send::no_primary;
use slots::Slots;

/// Buckets in Redis, shared by every instance that points at the same server, cluster or
/// sentinel-managed primary.
///
/// Each decision is one `EVALSHA` of a Lua script over the buckets of the request's limits
/// (one key per limit, all in one Redis Cluster slot): the script of their
/// [algorithm](crate::algorithm) (token buckets alone have two of their own, for one limit and
/// for several, the cheapest), or, when they use different ones, a script with every
/// algorithm. It reads the buckets, decides with the Redis clock (`TIME`, so instances
/// with skewed clocks agree), and writes only when every limit allows, each key with a TTL
/// that ends when nothing in it counts any more, so idle buckets vanish. The scripts' SHA1s
/// are computed once per process; when Redis answers `NOSCRIPT` (restarted, `SCRIPT FLUSH`,
/// failed over to a replica that never saw the script) the same call is sent again as `EVAL`
/// with the script's text, which runs it and leaves it cached on that server.
///
/// # Deployments
///
/// ```no_run
/// use tollgate::{FailMode, RateLimitLayer, RedisStore};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let one = RedisStore::open("redis://127.0.0.1:6379/")?;
/// let cluster = RedisStore::open_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?;
/// let sentinel = RedisStore::open_sentinel(["redis://10.0.0.5:26379"], "mymaster")?;
/// let layer = RateLimitLayer::builder()
///     .store(cluster)
///     .capacity(10)
///     .period(std::time::Duration::from_secs(10))
///     .fail_mode(FailMode::Local)
///     .local_share(1.0 / 3.0)
///     .build()?;
/// # let _ = (one, sentinel, layer);
/// # Ok(())
/// # }
/// ```
///
/// - One server: [`RedisStore::open`] (`redis://`, `rediss://`, `redis+unix://`).
/// - Redis Cluster: [`RedisStore::open_cluster`] with some of its nodes. Each decision goes to
///   the primary of its keys' slot (they share one: the key's hash tag); `MOVED` redirections
///   and failovers are followed by redis-rs, which refreshes its slot map.
/// - A primary managed by Redis Sentinel: [`RedisStore::open_sentinel`] with the sentinels and
///   the master's name. The store asks the sentinels for the primary at start, and again when
///   calls keep failing (the primary died, or was demoted and refuses writes): it follows a
///   failover without a restart.
///
/// # Connections
///
/// The connection is shared by all clones of the store, and concurrent decisions are
/// pipelined on it. It is re-established in the background when it breaks. A connection can
/// also go silent without breaking (a network black hole, a proxy that stopped forwarding, a
/// failover that moved the address): after three calls in a row fail or are abandoned by the
/// layer's timeout, the store opens a new connection (or asks the sentinels again), at most
/// once a second. The constructors do not wait for Redis: a service starts even while Redis is
/// down and follows its fail mode until Redis answers; [`RedisStore::load_script`] connects and
/// loads the scripts ahead of the first request.
///
/// # Abandoned calls
///
/// The limiter gives up on a decision after its timeout, but the command may already be on
/// its way: the call is left to finish, and what a stamped take took is put back (see the
/// README, "A decision that times out keeps nothing").
///
/// # One Redis, one set of buckets per prefix
///
/// Stores opened from a URL ([`open`](Self::open), [`connect`](Self::connect),
/// [`with_config`](Self::with_config), [`open_cluster`](Self::open_cluster),
/// [`open_sentinel`](Self::open_sentinel)) know which Redis they name (its address and
/// database, the seed nodes, the sentinels and master): two limiters of one process on the
/// same Redis with the same key prefix and limit names are refused when built, however their
/// stores were opened. (A store made `from_connection`, `from_cluster` or `from_sentinel` is
/// known only by itself: its clones.)
#[derive(Clone)]
pub struct RedisStore {
    link: Arc<Link>,
    slots: Arc<Slots>,
    /// Which Redis the store names, when it was opened from addresses.
    target: Option<usize>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("deployment", &self.link.kind())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for the Redis server at `url` (`redis://host:port/db`, `rediss://…`,
    /// `redis+unix:///path`), with [`RedisStore::default_config`].
    ///
    /// Returns at once; the connection is made on first use and remade after failures.
    ///
    /// # Errors
    ///
    /// When the URL cannot be parsed (the error names it without its password, kind
    /// `config`), or when called outside a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        in_runtime("RedisStore::open")?;
        if !url.contains("://") {
            let shown = redact(url);
            return Err(StoreError::Config(format!(
                "`{shown}` is not a Redis URL: it starts with redis://, rediss:// or \
                 redis+unix:// (for example redis://{shown})"
            )));
        }
        let client = redis::Client::open(url).map_err(|error| {
            StoreError::Config(format!(
                "the Redis URL {} did not parse: {error}",
                redact(url)
            ))
        })?;
        Self::with_config(client, Self::default_config())
    }

    /// [`RedisStore::open`], then a check that the store can be used: it connects,
    /// authenticates, selects the database and loads the scripts
    /// ([`load_script`](Self::load_script)), so that a wrong port, password or database fails
    /// here, loudly, rather than every request later under the fail mode.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tollgate::StoreError> {
    /// let store = tollgate::RedisStore::connect("redis://127.0.0.1:6379/").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); and [`StoreError::Unusable`], naming the URL without its
    /// password, with the cause's kind: `connection`, `auth` (a password or user Redis
    /// refuses), `config` (a database Redis does not have), `script`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Self::open(url)?;
        match store.load_script().await {
            Ok(()) => Ok(store),
            Err(error) => Err(StoreError::Unusable {
                url: redact(url),
                source: Box::new(error),
            }),
        }
    }

    /// A store over `client` with connection managers configured by `config`.
    ///
    /// # Errors
    ///
    /// When redis-rs refuses the configuration, or when called outside a Tokio runtime.
    pub fn with_config(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, StoreError> {
        in_runtime("RedisStore::with_config")?;
        let target = target("single", "", [client.get_connection_info()]);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let mut store = Self::new(Some(Conn::Single(conn)), Opener::Single { client, config });
        store.target = Some(target);
        Ok(store)
    }

    /// A store over an existing connection manager. It cannot open a new connection when this
    /// one goes silent; prefer [`RedisStore::with_config`].
    pub fn from_connection(conn: ConnectionManager) -> Self {
        Self::new(Some(Conn::Single(conn)), Opener::Fixed)
    }

    /// A store over the Redis Cluster that `nodes` belong to (`redis://host:port` of some of
    /// its nodes; the others are discovered).
    ///
    /// Returns at once; connections are made on first use. Connection and command timeouts
    /// are 1 s (the layer's own, shorter timeout bounds each request).
    ///
    /// # Errors
    ///
    /// When a node address cannot be parsed or the list is empty, or when called outside a
    /// Tokio runtime.
    #[cfg(feature = "cluster")]
    pub fn open_cluster<I, T>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = T>,
        T: redis::IntoConnectionInfo,
    {
        in_runtime("RedisStore::open_cluster")?;
        let nodes = nodes
            .into_iter()
            .map(redis::IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()?;
        let target = target("cluster", "", &nodes);
        let client = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .retries(3)
            .build()?;
        let mut store = Self::from_cluster(client);
        store.target = Some(target);
        Ok(store)
    }

    /// A store over a cluster client you configured (TLS, passwords, read routing, retries).
    /// Its connections are made on first use, with connection and command timeouts of 1 s
    /// (these replace the client's own).
    #[cfg(feature = "cluster")]
    pub fn from_cluster(client: redis::cluster::ClusterClient) -> Self {
        let conn = client.get_pending_async_connection_with_config(connection::cluster_config());
        Self::new(Some(Conn::Cluster(conn)), Opener::Cluster { client })
    }

    /// A store over the primary that the sentinels at `sentinels` (`redis://host:port` of
    /// each) name for `master_name`, with [`RedisStore::default_config`].
    ///
    /// Returns at once and asks the sentinels in the background; until they name a reachable
    /// primary, decisions fail (and the fail mode applies).
    ///
    /// # Errors
    ///
    /// When a sentinel address cannot be parsed or the list is empty, or when called outside a
    /// Tokio runtime.
    #[cfg(feature = "sentinel")]
    pub fn open_sentinel<I, T>(sentinels: I, master_name: &str) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = T>,
        T: redis::IntoConnectionInfo,
    {
        in_runtime("RedisStore::open_sentinel")?;
        let sentinels = sentinels
            .into_iter()
            .map(redis::IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()?;
        let target = target("sentinel", master_name, &sentinels);
        let client = redis::sentinel::SentinelClient::build(
            sentinels,
            master_name.to_owned(),
            None,
            redis::sentinel::SentinelServerType::Master,
        )?;
        let mut store = Self::from_sentinel(client, Self::default_config());
        store.target = Some(target);
        Ok(store)
    }

    /// A store over a sentinel client you configured (the primary's database, password or
    /// TLS), with connection managers configured by `config`. The client must look for the
    /// master ([`SentinelServerType::Master`](redis::sentinel::SentinelServerType::Master)).
    #[cfg(feature = "sentinel")]
    pub fn from_sentinel(
        client: redis::sentinel::SentinelClient,
        config: ConnectionManagerConfig,
    ) -> Self {
        Self::new(
            None,
            Opener::Sentinel {
                sentinels: tokio::sync::Mutex::new(client),
                config,
            },
        )
    }

    fn new(conn: Option<Conn>, opener: Opener) -> Self {
        Self {
            link: Link::new(conn, opener),
            slots: Slots::new(),
            target: None,
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

    /// Connects and loads the scripts now (on every primary of a cluster), so the first
    /// requests do not wait for either.
    ///
    /// Optional: a call whose script Redis does not have sends it along anyway (`EVAL`).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or refuses a script.
    pub async fn load_script(&self) -> Result<(), StoreError> {
        let Some(mut conn) = self.link.connection() else {
            return Err(no_primary().into());
        };
        for script in scripts::all() {
            conn.query(redis::cmd("SCRIPT").arg("LOAD").arg(script))
                .await?;
        }
        Ok(())
    }
}

/// Which Redis a deployment of `kind` at `addresses` (and `name`, a sentinel master's) is:
/// a hash of the addresses in order and their databases, never a connection's pointer.
fn target<'a>(
    kind: &str,
    name: &str,
    addresses: impl IntoIterator<Item = &'a redis::ConnectionInfo>,
) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (kind, name).hash(&mut hasher);
    for info in addresses {
        info.addr().to_string().hash(&mut hasher);
        info.redis_settings().db().hash(&mut hasher);
    }
    // Odd, so never the address of a connection (which is aligned).
    (hasher.finish() as usize) | 1
}

/// `url` with its password replaced by `***` (in the user information, or a `pass` or
/// `password` query parameter): what errors and logs may show.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut shown = match rest[..authority].rfind('@') {
        Some(at) => {
            let user = match rest[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}{user}{}", &rest[at..])
        }
        None => url.to_owned(),
    };
    if let Some(query) = shown.find('?') {
        let masked: Vec<String> = shown[query + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name == "pass" || name == "password" => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown = format!("{}?{}", &shown[..query], masked.join("&"));
    }
    shown
}

/// An error, rather than a panic inside redis-rs, when a constructor is called outside a Tokio
/// runtime.
fn in_runtime(what: &'static str) -> Result<(), StoreError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(StoreError::Invalid(format!(
            "{what} must be called inside a Tokio runtime"
        ))),
    }
}

impl Store for RedisStore {
    type Future = StoreCall<Decision>;

    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> Self::Future {
        let script = scripts::script_for(limits);
        self.decide_with(script, key, limits, cost, reply::parse_reply)
    }

    fn decide_each(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        let script = scripts::script_for(limits);
        self.decide_with(script, key, limits, cost, reply::parse_each)
    }

    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken> {
        let script = scripts::stamped_script_for(limits);
        self.decide_with(script, key, limits, cost, reply::parse_taken)
    }

    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> StoreCall<()> {
        self.put_back_with(key, limits, stamp, units, free_slot)
    }

    fn identity(&self) -> Option<usize> {
        Some(self.target.unwrap_or(Arc::as_ptr(&self.link) as usize))
    }

    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        if let Err(error) = check_limits(limits) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let cost = cost.max(1);
        let script = scripts::other(scripts::Other::Peek);
        let evalsha = scripts::evalsha(script, key, limits, cost, true, "-");
        let limits = Arc::clone(limits);
        self.send(evalsha, Some(script), move |reply| {
            reply::parse_peek(reply, &limits, cost)
        })
    }

    fn charge(&self, key: &str, limits: &Arc<[Limit]>, units: u64) -> StoreCall<()> {
        self.write_units(scripts::Other::Charge, key, limits, units)
    }

    fn lease(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        cost: u64,
        want: u64,
    ) -> StoreCall<super::Lent> {
        self.lend(key, limits, cost, want)
    }

    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        if let Err(error) = check_limits(limits) {
            return Box::pin(std::future::ready(Err(error)));
        }
        // One DEL: the buckets share a hash slot.
        let mut del = redis::cmd("DEL");
        for limit in limits.iter() {
            del.arg(super::bucket_key(key, limit));
        }
        self.send(del, None, |reply| {
            matches!(reply, redis::Value::Int(_)).then_some(())
        })
    }
}
