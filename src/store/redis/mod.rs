//! [`RedisStore`]: buckets in Redis (one server, a Redis Cluster, or a primary behind
//! sentinels), one Lua script call per decision.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::algorithm::check_limits;
use crate::{Decision, Limit, StoreError};

use super::{Stamp, Store, StoreCall, Taken};

mod connection;
mod count;
mod lease;
mod open;
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
/// algorithm (token buckets alone have two of their own, for one limit and
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
/// use tollgate::{FailMode, TollgateLayer, RedisStore};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let one = RedisStore::open("redis://127.0.0.1:6379/")?;
/// let cluster = RedisStore::open_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?;
/// let sentinel = RedisStore::open_sentinel(["redis://10.0.0.5:26379"], "mymaster")?;
/// let layer = TollgateLayer::builder()
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
/// docs/failures.md, "A decision that times out keeps nothing").
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

    fn count(&self, counters: &[super::Counter]) -> StoreCall<Vec<u64>> {
        self.count_with(counters)
    }

    fn count_lending(&self, leases: &[super::CounterLease]) -> StoreCall<Vec<super::CounterLent>> {
        self.lend_counts(leases)
    }

    fn uncount(&self, counters: &[super::Counter]) -> StoreCall<()> {
        self.uncount_with(counters)
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
