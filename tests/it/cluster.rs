//! The Redis store on a real Redis Cluster on loopback (3 primaries, 3 replicas): limits hold
//! across two instances for every algorithm, keys spread over every primary, and a killed
//! primary is followed: requests follow each fail mode during the failover, and limiting
//! resumes on the promoted replica (which gets the scripts again) without a restart. The
//! direct calls of the engine behave as on one Redis.

use std::time::{Duration, Instant};

use tollgate::{FailMode, Limit, Policies, RedisStore};

use crate::algorithms::away_from_window_edges;
use crate::examples::Instance;
use crate::faults::{assert_fail_mode, decided_by_redis, server_with, until_limiting};
use crate::harness::{HttpClient, TestServer};
use crate::nodes::RedisCluster;
use crate::redis_store::{hammer, instances};

fn store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::open_cluster(cluster.urls()).unwrap()
}

/// Two instances, each with its own cluster connection, 128 callers × 4 requests on one client:
/// exactly the capacity passes, for each algorithm and for limits of different algorithms
/// together; and the buckets of many clients land on every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_admit_exactly_the_capacity() {
    let cluster = RedisCluster::start(3, 1);
    let hour = Duration::from_secs(3600);
    away_from_window_edges(hour, Duration::from_secs(10)).await;
    let cases: Vec<(&'static [u8], Vec<Limit>, u64)> = vec![
        (b"tb", vec![Limit::new("c", 100, 1, hour).unwrap()], 100),
        (
            b"sl",
            vec![Limit::sliding_log("c", 100, hour).unwrap()],
            100,
        ),
        (
            b"sw",
            vec![Limit::sliding_window("c", 100, hour).unwrap()],
            100,
        ),
        (
            b"fw",
            vec![Limit::fixed_window("c", 100, hour).unwrap()],
            100,
        ),
        (
            b"mixed",
            vec![
                Limit::sliding_log("a", 70, hour).unwrap(),
                Limit::fixed_window("b", 90, hour).unwrap(),
                Limit::new("c", 100, 1, hour).unwrap(),
            ],
            70,
        ),
    ];
    for (client, limits, capacity) in cases {
        let mut policies = Policies::builder();
        for limit in limits {
            policies = policies.default_limit(limit);
        }
        let servers = instances(
            [store(&cluster), store(&cluster)],
            policies.build().unwrap(),
        )
        .await;
        let (allowed, limited) = hammer(&servers, client, 128, 4, None).await;
        assert_eq!(
            (allowed, limited),
            (capacity, 512 - capacity),
            "{}",
            String::from_utf8_lossy(client)
        );
    }
    // Many clients: their buckets spread over every primary (one slot per client and endpoint).
    let servers = instances(
        [store(&cluster), store(&cluster)],
        Policies::single(Limit::new("spread", 5, 5, hour).unwrap()),
    )
    .await;
    let http = HttpClient::new();
    for i in 0..300 {
        let key = format!("client-{i}");
        let reply = http
            .get(servers[i % 2].addr, "/hot", Some(key.as_bytes()))
            .await;
        assert_eq!(reply.header("ratelimit"), Some("\"spread\";r=4"));
    }
    let spread = cluster.keys_per_primary();
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.iter().all(|&(_, keys)| keys >= 50), "{spread:?}");

    // The direct calls (take, peek, refund, reset) on the cluster, as on one Redis.
    let keys = || cluster.keys_per_primary().iter().map(|&(_, k)| k).sum();
    crate::direct::suite("cluster", store(&cluster), keys).await;

    // Leases: two instances on the cluster never admit more than the limit.
    crate::lease::never_over_admits("cluster", [store(&cluster), store(&cluster)]).await;

    // The example server, as a user runs it: REDIS_MODE=cluster, REDIS_URL listing the nodes.
    // Two instances share its limit of 10.
    let urls = cluster.urls().join(",");
    let env = [("REDIS_MODE", "cluster"), ("REDIS_URL", urls.as_str())];
    let examples = [Instance::start(&env), Instance::start(&env)];
    let mut statuses = Vec::new();
    for i in 0..12 {
        let reply = http
            .get(examples[i % 2].addr, "/hello", Some(b"alice"))
            .await;
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [[200; 10].as_slice(), &[429, 429]].concat());
}

/// A primary is killed: while its replica is promoted, each instance follows its fail mode
/// (open, closed, local) within its timeout; then each limits again with the promoted node,
/// which was sent the script along with the first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_in_every_fail_mode() {
    let mut cluster = RedisCluster::start(3, 1);
    let modes = [FailMode::Open, FailMode::Closed, FailMode::Local];
    let mut servers = Vec::new();
    for mode in modes {
        servers.push(server_with(store(&cluster), mode).await);
    }
    let http = HttpClient::new();
    for (server, mode) in servers.iter().zip(modes) {
        let reply = until_limiting(&http, server, mode).await;
        assert!(reply.header("ratelimit").is_some(), "{reply:?}");
    }
    // The bucket every server uses: client "k" on GET /.
    let limit = Limit::new("default", 10, 10, Duration::from_secs(100)).unwrap();
    let bucket = limit.bucket_key("tollgate:{k:GET:/}");
    let primary = cluster.primary_for(&bucket);
    cluster.kill(primary);
    let killed = Instant::now();
    // Until the replica is promoted, requests follow the fail modes (each answers within its
    // timeout); afterwards Redis decides again.
    let follow = |i: usize| follow_failover(&http, &servers[i], modes[i], killed);
    let followed = tokio::join!(follow(0), follow(1), follow(2));
    let followed = [followed.0, followed.1, followed.2];
    assert!(followed.iter().all(|&n| n > 0), "{followed:?}");
    // The promoted node now has the script: the call that met NOSCRIPT sent it along.
    cluster.wait_healthy(Duration::from_secs(15));
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    assert!(!primaries.contains(&primary), "{primary} in {primaries:?}");
    let promoted = cluster.primary_for(&bucket);
    assert_ne!(promoted, primary);
    assert!(crate::redis_store::cached_scripts(&mut cluster.conn(promoted)) >= 1);
}

/// Sends requests until Redis decides again after a failover began at `since`; returns how
/// many followed the fail mode meanwhile (each checked).
pub async fn follow_failover(
    http: &HttpClient,
    server: &TestServer,
    mode: FailMode,
    since: Instant,
) -> usize {
    let mut followed = 0;
    loop {
        let reply = http.get(server.addr, "/", Some(b"k")).await;
        if decided_by_redis(&reply, mode) {
            if followed > 0 {
                assert_eq!(reply.status, 200, "{reply:?}");
                return followed;
            }
        } else {
            assert_fail_mode(&reply, mode);
            followed += 1;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{mode:?}: limiting did not resume within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
