//! Opening a [`RedisStore`]: from a URL (checked or not), a client, a cluster's nodes or
//! sentinels; which Redis a store names; and URLs shown without their passwords.

use super::*;

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
