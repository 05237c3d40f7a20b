//! The Redis store on a real Sentinel setup on loopback (a primary, a replica, three
//! sentinels): it finds the primary through the sentinels, and follows a failover, whether the
//! primary is killed or demoted on request, without a restart, in each fail mode.

use std::time::{Duration, Instant};

use tollgate::{FailMode, RedisStore};

use crate::cluster::follow_failover;
use crate::examples::Instance;
use crate::faults::{server_with, until_limiting};
use crate::harness::{HttpClient, TestServer};
use crate::nodes::{Role, Sentinels, role};

const MODES: [FailMode; 3] = [FailMode::Open, FailMode::Closed, FailMode::Local];

/// Three instances (open, closed, local) on the primary the sentinels name, limiting.
async fn servers(sentinels: &Sentinels) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for mode in MODES {
        let store =
            RedisStore::open_sentinel(sentinels.sentinel_urls(), sentinels.master_name()).unwrap();
        servers.push(server_with(store, mode).await);
    }
    let http = HttpClient::new();
    for (server, mode) in servers.iter().zip(MODES) {
        let reply = until_limiting(&http, server, mode).await;
        assert!(reply.header("ratelimit").is_some(), "{reply:?}");
    }
    servers
}

async fn follow_all(servers: &[TestServer], since: Instant) -> [usize; 3] {
    let http = HttpClient::new();
    let follow = |i: usize| follow_failover(&http, &servers[i], MODES[i], since);
    let (open, closed, local) = tokio::join!(follow(0), follow(1), follow(2));
    [open, closed, local]
}

/// The primary is killed: requests follow each fail mode until the sentinels promote the
/// replica, then the store asks them again and limits with the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_in_every_fail_mode() {
    let mut sentinels = Sentinels::start("tollgate");
    let servers = servers(&sentinels).await;
    // The example server, as a user runs it, finds the primary through the sentinels.
    let urls = sentinels.sentinel_urls().join(",");
    let example = Instance::start(&[
        ("REDIS_MODE", "sentinel"),
        ("REDIS_URL", urls.as_str()),
        ("REDIS_SENTINEL_MASTER", sentinels.master_name()),
    ]);
    let http = HttpClient::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = http.get(example.addr, "/hello", Some(b"alice")).await;
        if reply.header("ratelimit") == Some("\"default\";r=9") {
            break;
        }
        assert!(Instant::now() < deadline, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = sentinels.master_port();
    assert_eq!(old, sentinels.initial_primary());
    assert_eq!(role(&mut sentinels.conn(old)), Ok(Role::Master));
    sentinels.kill(old);
    let killed = Instant::now();
    let followed = follow_all(&servers, killed).await;
    assert!(followed.iter().all(|&n| n > 0), "{followed:?}");
    let new = sentinels.wait_new_master(old, Duration::from_secs(20));
    assert_eq!(new, sentinels.initial_replica());
    assert_eq!(role(&mut sentinels.conn(new)), Ok(Role::Master));
    // The new primary holds the bucket now.
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut sentinels.conn(new))
        .unwrap();
    assert!(keys > 0);
}

/// The sentinels fail over on request: the old primary is demoted to a replica (it refuses
/// writes, then drops its clients) and the store moves to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_failover_is_followed() {
    let sentinels = Sentinels::start("tollgate");
    let servers = servers(&sentinels).await;
    let old = sentinels.master_port();
    assert_eq!(old, sentinels.initial_primary());
    sentinels.failover();
    let new = sentinels.wait_new_master(old, Duration::from_secs(20));
    assert_eq!(new, sentinels.initial_replica());
    // Each instance limits with the new primary: a request's bucket is written there. (Until
    // the old primary is demoted, it still takes writes; each attempt is a new client.)
    let http = HttpClient::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, (server, mode)) in servers.iter().zip(MODES).enumerate() {
        for attempt in 0.. {
            let client = format!("after-{i}-{attempt}");
            let reply = http.get(server.addr, "/", Some(client.as_bytes())).await;
            let on_new: u64 = redis::cmd("EXISTS")
                .arg(format!("tollgate:{{{client}:GET:/}}:default"))
                .query(&mut sentinels.conn(new))
                .unwrap();
            if reply.header("ratelimit") == Some("\"default\";r=9") && on_new == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode:?}: not limiting with the new primary within 20 s: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The sentinels turned the old primary into a replica of the new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match role(&mut sentinels.conn(old)) {
            Ok(Role::Replica { master_port, .. }) if master_port == new => break,
            other => assert!(
                Instant::now() < deadline,
                "the old primary's ROLE: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
