//! The Envoy service's counters in the history checker: what `TOLLGATE_LEASES` lends, spends,
//! gives back at expiry, at a reload and at a shutdown, and what the peer's plain counting
//! admits beside it, never more in a window than the window's limit.
//!
//! Three services share one store: two leasing, one counting as envoyproxy/ratelimit does
//! (the rolling migration's mix). Concurrent clients send a hot descriptor, a cold one, a warm
//! one (a minute's limit it never reaches, so its leases end unspent and are given back), or
//! several, with random costs (the request's, a descriptor's own, 0 to check without
//! counting); configurations are swapped at random (every lease given back). Every status OK
//! with a limit is an admission of its hits in the window its clock second is in. Each
//! (descriptor, window) is held to its limit, and the run to a share of what was permitted.
//! At the end every service gives its leases back, as at a shutdown, and the warm counter
//! must hold exactly the hits admitted in its window: a give-back of too much or too little
//! shows there (an earlier window keeps what ended with it: at least as much).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;
use tollgate::envoy::{Config, RateLimitService, ServiceSettings};
use tollgate::store::{Counter, Store};
use tollgate::{MemoryStore, RedisStore};

use super::{FAR_LESS, pause_at_random, seed};
use crate::harness::{RedisServer, Rng};
use crate::nodes::RedisCluster;

/// The descriptors under test, their limits and windows in seconds.
const LIMITS: [(&str, u64, u64); 3] = [("hot", 40, 1), ("cold", 6, 1), ("warm", 1_000_000, 60)];
/// How long a run lasts: over two window edges.
const RUN: Duration = Duration::from_millis(2_300);
const CLIENTS: u64 = 6;

/// The configuration, with a descriptor that differs by `version` so a swap is a new one.
fn config(version: u64) -> Config {
    let yaml = format!(
        "domain: d\ndescriptors:\n  - key: hot\n    rate_limit: {{ unit: second, requests_per_unit: 40 }}\n  - key: cold\n    rate_limit: {{ unit: second, requests_per_unit: 6 }}\n  - key: warm\n    rate_limit: {{ unit: minute, requests_per_unit: 1000000 }}\n  - key: v{version}\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}\n"
    );
    Config::from_files([("d.yaml", yaml.as_str())], false).unwrap()
}

fn wall_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Admitted hits by (descriptor, window start).
type Admitted = HashMap<(&'static str, u64), u64>;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    admitted: Admitted,
    /// Calls that failed (a paused Redis): their hits may be counted or not.
    failed: u64,
    /// Requests given up on before their answer (not one with the warm descriptor).
    given_up: u64,
}

async fn client<St: Store>(
    services: Arc<Vec<RateLimitService<St>>>,
    mut rng: Rng,
    until: tokio::time::Instant,
    seen: Arc<Mutex<Seen>>,
) {
    let mut version = 0;
    while tokio::time::Instant::now() < until {
        let service = &services[rng.below(services.len() as u64) as usize];
        if rng.below(100) == 0 {
            version += 1;
            service.set_config(config(version));
        }
        let chosen: &[usize] = match rng.below(6) {
            0 => &[1],
            1 => &[0, 1],
            2 => &[2],
            3 => &[2, 0, 1],
            _ => &[0],
        };
        let request_hits = rng.below(3) as u32;
        let mut costs = Vec::new();
        let descriptors = chosen
            .iter()
            .map(|&i| {
                let own = (rng.below(4) == 0).then(|| rng.below(4));
                costs.push(own.unwrap_or(u64::from(request_hits.max(1))));
                RateLimitDescriptor {
                    hits_addend: own.map(|value| UInt64Value { value }),
                    ..crate::rls::descriptor(&[(LIMITS[i].0, "x")])
                }
            })
            .collect();
        let request = RateLimitRequest {
            domain: "d".to_owned(),
            descriptors,
            hits_addend: request_hits,
        };
        let now_s = wall_s();
        // Now and then a request is given up on after its first poll, as Envoy's timeout
        // drops one: a lease call under way must still be held or given back. (Never one
        // with the warm descriptor, whose counter is checked exactly.)
        let reply = if !chosen.contains(&2) && rng.below(8) == 0 {
            let mut deciding = std::pin::pin!(service.decide(&request, now_s));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match deciding.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(reply) => reply,
                std::task::Poll::Pending => {
                    seen.lock().unwrap().given_up += 1;
                    continue;
                }
            }
        } else {
            service.decide(&request, now_s).await
        };
        // A store failure (the paused Redis) answers an error: nothing admitted.
        let mut seen = seen.lock().unwrap();
        let Ok(reply) = reply else {
            seen.failed += 1;
            continue;
        };
        assert_eq!(
            reply.statuses.len(),
            chosen.len(),
            "a status per descriptor"
        );
        for ((&i, status), cost) in chosen.iter().zip(&reply.statuses).zip(costs) {
            if status.code == Code::Ok as i32 && status.current_limit.is_some() {
                let window = now_s / LIMITS[i].2 * LIMITS[i].2;
                *seen.admitted.entry((LIMITS[i].0, window)).or_default() += cost;
            }
        }
    }
}

async fn run<St: Store + Clone>(store: St, label: &str, min_share: f64) {
    let seed = seed();
    let services: Vec<RateLimitService<St>> = (0..3)
        .map(|i| {
            let settings = ServiceSettings {
                leases: i < 2,
                ..ServiceSettings::default()
            };
            let service =
                RateLimitService::on_store(store.clone(), Duration::from_millis(100), settings)
                    .unwrap();
            service.set_config(config(0));
            service
        })
        .collect();
    let services = Arc::new(services);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = wall_s();
    let until = tokio::time::Instant::now() + RUN;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                Arc::clone(&services),
                Rng::new(seed.wrapping_add(i)),
                until,
                Arc::clone(&seen),
            ))
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let ended = wall_s();
    for service in services.iter() {
        service.give_back_leases().await;
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    let admitted = &seen.admitted;
    let mut failures = Vec::new();
    for (&(name, window), &units) in admitted.iter() {
        let limit = LIMITS.iter().find(|l| l.0 == name).unwrap().1;
        if units > limit {
            failures.push(format!(
                "{name}: {units} admitted in window {window}, limit {limit}"
            ));
        }
    }
    // Windows whole within the run: the hot descriptor is asked far more than its limit.
    let whole: Vec<u64> = (started + 1..ended).collect();
    let hot: u64 = whole
        .iter()
        .map(|w| admitted.get(&("hot", *w)).copied().unwrap_or(0))
        .sum();
    let permitted = LIMITS[0].1 * whole.len() as u64;
    eprintln!("envoy {label}: hot {hot} of {permitted} permitted in whole windows");
    if (hot as f64) < min_share * permitted as f64 {
        failures.push(format!(
            "hot: {hot} of {permitted} permitted: a service that refuses is not exact either"
        ));
    }
    // The warm counters, leases given back: what was admitted, exactly (at least, for a window
    // that ended before its leases were given back, or when calls failed and may have counted).
    let last_warm = ended / 60 * 60;
    for (&(name, window), &units) in admitted.iter().filter(|(k, _)| k.0 == "warm") {
        let read = Counter {
            key: format!("d_{name}_x_{window}"),
            hits: 0,
            expire_s: 60,
        };
        let counted = store.count(&[read]).await.unwrap()[0];
        let exact = window == last_warm && seen.failed == 0;
        if counted < units || (exact && counted != units) {
            failures.push(format!(
                "warm: counter {counted} after the give-backs, {units} admitted in window {window}"
            ));
        }
    }
    eprintln!(
        "envoy {label}: {} calls failed, {} given up on",
        seen.failed, seen.given_up
    );
    assert!(
        failures.is_empty(),
        "envoy {label} (replay with TOLLGATE_SEED={seed}):\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_counters_on_the_memory_store_keep_every_limit() {
    run(MemoryStore::new(), "memory", FAR_LESS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_counters_on_one_redis_keep_every_limit_through_pauses() {
    let redis = Arc::new(RedisServer::start());
    let store = RedisStore::open(&redis.url()).unwrap();
    let pauses = pause_at_random(&redis, 0xe4f0, RUN, 200..500);
    run(store, "redis", FAR_LESS / 2.0).await;
    pauses.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_counters_on_a_cluster_keep_every_limit() {
    let cluster = RedisCluster::start(3, 0);
    let store = RedisStore::open_cluster(cluster.urls()).unwrap();
    run(store, "cluster", FAR_LESS).await;
}
