//! The store's connection to Redis, whatever the deployment (one server, a cluster, a primary
//! behind sentinels), and how it is replaced when it stops answering.

#[cfg(feature = "sentinel")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::RedisResult;

use crate::sync::AtMostEvery;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// After this many calls in a row failed or were abandoned (timed out by the layer), the store
/// opens a new connection (for a primary behind sentinels: asks the sentinels which it is).
const REOPEN_AFTER_FAILURES: u32 = 3;
/// And it opens at most one new connection per this many milliseconds.
const REOPEN_EVERY_MS: u64 = 1_000;

/// One connection, shared by every clone of the store: each is cheap to clone, and
/// concurrent commands on it are pipelined.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server (or the primary a sentinel named): a redis-rs `ConnectionManager`, which
    /// reconnects in the background.
    Single(ConnectionManager),
    /// A Redis Cluster: redis-rs `cluster_async`, which routes each command by its first key's
    /// hash slot, follows `MOVED`, and refreshes the slot map when nodes fail.
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub(super) async fn query(&mut self, cmd: &redis::Cmd) -> RedisResult<redis::Value> {
        match self {
            Self::Single(conn) => cmd.query_async(conn).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(conn) => cmd.query_async(conn).await,
        }
    }

    /// Sends `pipe` (whose commands, on a cluster, share a slot).
    pub(super) async fn query_pipe(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<Vec<redis::Value>> {
        match self {
            Self::Single(conn) => pipe.query_async(conn).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(conn) => pipe.query_async(conn).await,
        }
    }
}

/// How to open a new connection.
// One per store, behind its Arc: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Opener {
    /// A store made from a connection the caller opened: it cannot open another.
    Fixed,
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    #[cfg(feature = "cluster")]
    Cluster {
        client: redis::cluster::ClusterClient,
    },
    /// The primary is whatever the sentinels say it is now: asked at start and again when
    /// calls keep failing (it died, or it was demoted and refuses writes with `READONLY`).
    #[cfg(feature = "sentinel")]
    Sentinel {
        sentinels: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
        config: ConnectionManagerConfig,
    },
}

impl Opener {
    fn kind(&self) -> &'static str {
        match self {
            Self::Fixed | Self::Single { .. } => "single",
            #[cfg(feature = "cluster")]
            Self::Cluster { .. } => "cluster",
            #[cfg(feature = "sentinel")]
            Self::Sentinel { .. } => "sentinel",
        }
    }
}

/// The connection and what it takes to replace it.
pub(super) struct Link {
    /// `None` until a primary is known (behind sentinels, before they first answered).
    conn: RwLock<Option<Conn>>,
    opener: Opener,
    /// Calls failed or abandoned since the last success.
    failures: AtomicU32,
    /// A new connection at most every [`REOPEN_EVERY_MS`].
    reopens: AtMostEvery,
    /// A sentinel lookup is under way.
    #[cfg(feature = "sentinel")]
    resolving: AtomicBool,
}

impl Link {
    pub(super) fn new(conn: Option<Conn>, opener: Opener) -> Arc<Self> {
        let link = Arc::new(Self {
            conn: RwLock::new(conn),
            opener,
            failures: AtomicU32::new(0),
            reopens: AtMostEvery::new(Duration::from_millis(REOPEN_EVERY_MS)),
            #[cfg(feature = "sentinel")]
            resolving: AtomicBool::new(false),
        });
        // The connection just made counts as the first opened.
        link.reopens.postpone();
        if link.connection().is_none() {
            link.reopen(0);
        }
        link
    }

    /// The current connection, if any.
    pub(super) fn connection(&self) -> Option<Conn> {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn kind(&self) -> &'static str {
        self.opener.kind()
    }

    pub(super) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed or was abandoned: after a few in a row, open a new connection.
    pub(super) fn failed(self: &Arc<Self>) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < REOPEN_AFTER_FAILURES || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if !self.reopens.try_claim() {
            return;
        }
        self.reopen(failures);
    }

    fn replace(&self, conn: Conn) {
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        self.failures.store(0, Ordering::Relaxed);
    }

    fn reopen(self: &Arc<Self>, failures: u32) {
        match &self.opener {
            Opener::Fixed => {}
            Opener::Single { client, config } => {
                match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
                    Ok(conn) => {
                        self.replace(Conn::Single(conn));
                        tracing::info!(failures, "opening a new Redis connection");
                    }
                    Err(error) => tracing::warn!(%error, "cannot open a new Redis connection"),
                }
            }
            #[cfg(feature = "cluster")]
            Opener::Cluster { client } => {
                let conn = client.get_pending_async_connection_with_config(cluster_config());
                self.replace(Conn::Cluster(conn));
                tracing::info!(failures, "opening a new Redis Cluster connection");
            }
            #[cfg(feature = "sentinel")]
            Opener::Sentinel { .. } => {
                if self.resolving.swap(true, Ordering::Relaxed) {
                    return;
                }
                if tokio::runtime::Handle::try_current().is_err() {
                    self.resolving.store(false, Ordering::Relaxed);
                    return;
                }
                let link = Arc::clone(self);
                tokio::spawn(async move {
                    // Cleared however the lookup ends, even if its runtime stops it.
                    let _resolving = Resolving(Arc::clone(&link));
                    link.resolve(failures).await;
                });
            }
        }
    }

    /// Asks the sentinels which node is the primary now and connects to it.
    #[cfg(feature = "sentinel")]
    async fn resolve(&self, failures: u32) {
        let Opener::Sentinel { sentinels, config } = &self.opener else {
            return;
        };
        let lookup = async {
            let client = sentinels.lock().await.async_get_client().await?;
            let info = client.get_connection_info().clone();
            let conn = ConnectionManager::new_lazy_with_config(client, config.clone())?;
            Ok::<_, redis::RedisError>((conn, info))
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
            Ok(Ok((conn, info))) => {
                self.replace(Conn::Single(conn));
                tracing::info!(failures, primary = %info.addr(), "connecting to the primary the sentinels name");
            }
            Ok(Err(error)) => tracing::warn!(%error, "the sentinels named no reachable primary"),
            Err(_) => tracing::warn!("the sentinels did not answer within 5 s"),
        }
    }
}

/// Marks a sentinel lookup as over when dropped.
#[cfg(feature = "sentinel")]
struct Resolving(Arc<Link>);

#[cfg(feature = "sentinel")]
impl Drop for Resolving {
    fn drop(&mut self) {
        self.0.resolving.store(false, Ordering::Relaxed);
    }
}

/// Connection and command timeouts of a cluster connection; the layer's own, shorter timeout
/// bounds each request.
#[cfg(feature = "cluster")]
pub(super) fn cluster_config() -> redis::cluster::ClusterConfig {
    redis::cluster::ClusterConfig::new()
        .set_connection_timeout(std::time::Duration::from_secs(1))
        .set_response_timeout(std::time::Duration::from_secs(1))
}
