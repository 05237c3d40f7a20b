//! Plain counters in Redis (`Store::count`), the way envoyproxy/ratelimit keeps them: an
//! integer per key with an expiry, on one server and on a cluster; and the Envoy service's
//! decisions on them (`tollgate::envoy::Plan` with a real Redis), shared by two stores and
//! continuing counters the peer left.

use tollgate::RedisStore;
use tollgate::envoy::{Config, Descriptor, Plan, Settings};
use tollgate::store::{Counter, Store};

use crate::harness::RedisServer;
use crate::nodes::RedisCluster;

fn counter(key: &str, hits: u64) -> Counter {
    Counter {
        key: key.to_owned(),
        hits,
        expire_s: 60,
    }
}

#[tokio::test]
async fn counters_are_integers_with_an_expiry_on_one_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let both = [counter("d_a_1_60", 3), counter("d_b_2_60", 1)];
    assert_eq!(store.count(&both).await.unwrap(), [3, 1]);
    let again = [counter("d_a_1_60", 2), counter("d_a_1_60", 0)];
    assert_eq!(store.count(&again).await.unwrap(), [5, 5]);
    let mut conn = redis.conn();
    let value: String = redis::cmd("GET").arg("d_a_1_60").query(&mut conn).unwrap();
    assert_eq!(value, "5");
    let ttl: i64 = redis::cmd("TTL").arg("d_a_1_60").query(&mut conn).unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");
    assert_eq!(store.count(&[]).await.unwrap(), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_in_different_slots_are_counted_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let store = RedisStore::open_cluster(cluster.urls()).unwrap();
    // Keys without a hash tag (so in slots of their own, a pipeline each).
    let keys = ["d_a_1_0", "d_b_2_0", "d_c_3_0", "d_e_4_0"];
    let counters: Vec<Counter> = keys.iter().map(|k| counter(k, 1)).collect();
    assert_eq!(store.count(&counters).await.unwrap(), [1, 1, 1, 1]);
    let counters: Vec<Counter> = keys.iter().map(|k| counter(k, 2)).collect();
    assert_eq!(store.count(&counters).await.unwrap(), [3, 3, 3, 3]);
}

const CONFIG: &str = "
domain: shop
descriptors:
  - key: tenant
    rate_limit: { unit: hour, requests_per_unit: 10 }
";

/// What `store` answers for `hits` on tenant `tenant` at `now_s`: (over, remaining).
async fn ask(store: &RedisStore, prefix: &str, tenant: &str, hits: u32, now_s: u64) -> (bool, u32) {
    let config = Config::from_files([("shop.yaml", CONFIG)], false).unwrap();
    let descriptors = [Descriptor {
        entries: vec![("tenant", tenant)],
        ..Descriptor::default()
    }];
    let plan = Plan::new(&config, "shop", &descriptors, hits).unwrap();
    let counts: Vec<Counter> = plan
        .counts(prefix, "shop", &descriptors, now_s)
        .into_iter()
        .map(|c| Counter {
            key: c.key,
            hits: c.hits,
            expire_s: c.window_s,
        })
        .collect();
    let after = store.count(&counts).await.unwrap();
    let (statuses, _, over) = plan.statuses(&Settings::default(), &after, now_s);
    assert_eq!(statuses[0].over_limit, over);
    (over, statuses[0].limit_remaining)
}

#[tokio::test]
async fn two_instances_share_the_peer_s_counters_exactly() {
    let redis = RedisServer::start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hour = now / 3600 * 3600;
    // The peer left 7 hits this hour, under its key format.
    let mut conn = redis.conn();
    let key = format!("rl:shop_tenant_acme_{hour}");
    let _: () = redis::cmd("SET").arg(&key).arg(7).query(&mut conn).unwrap();
    let one = RedisStore::open(&redis.url()).unwrap();
    let two = RedisStore::open(&redis.url()).unwrap();
    assert_eq!(ask(&one, "rl:", "acme", 1, now).await, (false, 2));
    assert_eq!(ask(&two, "rl:", "acme", 2, now).await, (false, 0));
    // Over from here, and each hit is still counted, as the peer counts them.
    assert_eq!(ask(&one, "rl:", "acme", 1, now).await, (true, 0));
    assert_eq!(ask(&two, "rl:", "acme", 1, now).await, (true, 0));
    let value: u64 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    assert_eq!(value, 12);
    // Another tenant, and the same tenant in the next hour, count afresh.
    assert_eq!(ask(&one, "rl:", "globex", 1, now).await, (false, 9));
    assert_eq!(ask(&one, "rl:", "acme", 1, hour + 3600).await, (false, 9));
}

/// Units given back never take a counter below zero, on either store: a counter that lost its
/// value (a restart) must not lend from below zero afterwards.
async fn a_give_back_stops_at_zero<St: Store>(store: St) {
    let counter = |hits| counter("rls_floor", hits);
    assert_eq!(store.count(&[counter(3)]).await.unwrap(), [3]);
    store.uncount(&[counter(10)]).await.unwrap();
    assert_eq!(store.count(&[counter(0)]).await.unwrap(), [0]);
    store.uncount(&[counter(0)]).await.unwrap();
    assert_eq!(store.count(&[counter(2)]).await.unwrap(), [2]);
    store.uncount(&[counter(1)]).await.unwrap();
    assert_eq!(store.count(&[counter(0)]).await.unwrap(), [1]);
}

#[tokio::test]
async fn a_give_back_stops_at_zero_in_memory() {
    a_give_back_stops_at_zero(tollgate::MemoryStore::new()).await;
}

#[tokio::test]
async fn a_give_back_stops_at_zero_on_redis() {
    let redis = RedisServer::start();
    a_give_back_stops_at_zero(RedisStore::open(&redis.url()).unwrap()).await;
}
