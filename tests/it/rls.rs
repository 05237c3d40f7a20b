//! The Envoy rate limit service (`tollgate::envoy::RateLimitService`) through a real tonic
//! server and Envoy's own client types, on the memory store and on Redis: statuses as
//! envoyproxy/ratelimit answers them, its errors, the response headers, and store failures.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tokio::net::TcpListener;
use tollgate::RedisStore;
use tollgate::envoy::{Config, HeaderNames, RateLimitService, ServiceSettings, StoreFailure};
use tollgate::store::Store;
use tonic::transport::{Channel, Server, server::TcpIncoming};

use crate::harness::RedisServer;

const CONFIG: &str = "
domain: shop
descriptors:
  - key: tenant
    rate_limit: { unit: minute, requests_per_unit: 3, name: per_tenant }
  - key: path
    value: /checkout
    rate_limit: { unit: hour, requests_per_unit: 100 }
  - key: internal
    rate_limit: { unlimited: true }
  - key: key2
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: key3
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: plan
    metadata: { owner: { team: a, tier: gold }, label: first }
    rate_limit: { unit: hour, requests_per_unit: 1 }
  - key: bulk
    rate_limit: { unit: hour, requests_per_unit: 5000 }
  - key: region
    metadata: { owner: { team: b, site: eu }, label: second, extra: 1 }
    rate_limit: { unit: hour, requests_per_unit: 100 }
";

/// A client of a service on `store`, served on a loopback port.
async fn serve<St: Store>(
    store: St,
    settings: ServiceSettings,
    config: bool,
) -> RateLimitServiceClient<Channel> {
    let service = RateLimitService::on_store(store, Duration::from_millis(200), settings).unwrap();
    if config {
        service.set_config(Config::from_files([("shop.yaml", CONFIG)], false).unwrap());
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A descriptor of `entries`, nothing else set.
pub(crate) fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

/// A request of `descriptors` in `domain`, at the request's default cost.
pub(crate) fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .unwrap()
        .into_inner()
}

/// The statuses a client sees, on `store`.
async fn statuses_as_the_peer_answers<St: Store>(store: St) {
    let mut client = serve(store, ServiceSettings::default(), true).await;
    let acme = || descriptor(&[("tenant", "acme")]);
    // One status per descriptor, in order: a counted limit, no limit, unlimited.
    let reply = ask(
        &mut client,
        request(
            "shop",
            vec![
                acme(),
                descriptor(&[("colour", "red")]),
                descriptor(&[("internal", "x")]),
            ],
        ),
    )
    .await;
    assert_eq!(reply.overall_code, Code::Ok as i32);
    assert_eq!(reply.statuses.len(), 3);
    let first = &reply.statuses[0];
    assert_eq!(first.code, Code::Ok as i32);
    assert_eq!(first.limit_remaining, 2);
    let limit = first.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, limit.name.as_str()),
        (3, 2, "per_tenant")
    );
    let reset = first.duration_until_reset.unwrap();
    assert!(
        (1..=60).contains(&reset.seconds) && reset.nanos == 0,
        "{reset:?}"
    );
    assert_eq!(reply.statuses[1].current_limit, None);
    assert_eq!(reply.statuses[1].duration_until_reset, None);
    assert_eq!(reply.statuses[2].limit_remaining, u32::MAX);
    // The third hit is the last within; the fourth is over, remaining 0.
    let hits = |n| RateLimitRequest {
        hits_addend: n,
        ..request("shop", vec![acme()])
    };
    assert_eq!(
        ask(&mut client, hits(2)).await.statuses[0].limit_remaining,
        0
    );
    let over = ask(&mut client, hits(1)).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(
        (over.statuses[0].code, over.statuses[0].limit_remaining),
        (Code::OverLimit as i32, 0)
    );
    // A descriptor's own hits_addend 0 checks without counting: still over.
    let mut check = descriptor(&[("tenant", "acme")]);
    check.hits_addend = Some(UInt64Value { value: 0 });
    let checked = ask(&mut client, request("shop", vec![check])).await;
    assert_eq!(checked.overall_code, Code::OverLimit as i32);
    // A request's own limit, in a known domain.
    let mut own = descriptor(&[("anything", "1")]);
    own.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 3,
    });
    let first = ask(&mut client, request("shop", vec![own.clone()])).await;
    assert_eq!(first.statuses[0].limit_remaining, 0);
    let second = ask(&mut client, request("shop", vec![own])).await;
    assert_eq!(second.overall_code, Code::OverLimit as i32);
    // An unknown domain is not an error: no limit.
    let unknown = ask(&mut client, request("elsewhere", vec![acme()])).await;
    assert_eq!(unknown.overall_code, Code::Ok as i32);
    assert_eq!(unknown.statuses[0].current_limit, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_as_the_peer_answers_in_memory() {
    statuses_as_the_peer_answers(tollgate::MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_as_the_peer_answers_on_redis() {
    let redis = RedisServer::start();
    statuses_as_the_peer_answers(RedisStore::open(&redis.url()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_s_errors_and_headers() {
    let settings = ServiceSettings {
        headers: Some(HeaderNames::default()),
        ..ServiceSettings::default()
    };
    let mut client = serve(tollgate::MemoryStore::new(), settings.clone(), true).await;
    let error = |result: Result<tonic::Response<RateLimitResponse>, tonic::Status>| {
        let status = result.unwrap_err();
        (status.code(), status.message().to_owned())
    };
    let acme = descriptor(&[("tenant", "acme")]);
    assert_eq!(
        error(
            client
                .should_rate_limit(request("", vec![acme.clone()]))
                .await
        ),
        (
            tonic::Code::Unknown,
            "rate limit domain must not be empty".to_owned()
        )
    );
    assert_eq!(
        error(client.should_rate_limit(request("shop", vec![])).await),
        (
            tonic::Code::Unknown,
            "rate limit descriptor list must not be empty".to_owned()
        )
    );
    let mut no_unit = acme.clone();
    no_unit.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 0,
    });
    assert_eq!(
        error(
            client
                .should_rate_limit(request("shop", vec![no_unit]))
                .await
        )
        .0,
        tonic::Code::InvalidArgument
    );
    // A cost Redis cannot add: refused, and said why.
    let mut huge = acme.clone();
    huge.hits_addend = Some(UInt64Value { value: u64::MAX });
    let refused = error(client.should_rate_limit(request("shop", vec![huge])).await);
    assert_eq!(
        refused,
        (
            tonic::Code::InvalidArgument,
            "descriptor 0: hits_addend is above 2^53".to_owned()
        )
    );
    // The headers of the status with the fewest left.
    let reply = ask(
        &mut client,
        request("shop", vec![descriptor(&[("path", "/checkout")]), acme]),
    )
    .await;
    let headers: Vec<(&str, &str)> = reply
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        headers[..2],
        [("RateLimit-Limit", "3"), ("RateLimit-Remaining", "2")]
    );
    assert_eq!(headers[2].0, "RateLimit-Reset");
    // No configuration yet.
    let mut empty = serve(tollgate::MemoryStore::new(), settings, false).await;
    let acme = descriptor(&[("tenant", "acme")]);
    assert_eq!(
        error(empty.should_rate_limit(request("shop", vec![acme])).await),
        (
            tonic::Code::Unknown,
            "no rate limit configuration loaded".to_owned()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_answers_by_the_store_failure_setting() {
    let redis = RedisServer::start();
    let acme = || request("shop", vec![descriptor(&[("tenant", "acme")])]);
    let mut clients = Vec::new();
    for failure in [
        StoreFailure::Error,
        StoreFailure::Open,
        StoreFailure::Closed,
    ] {
        let settings = ServiceSettings {
            store_failure: failure,
            ..ServiceSettings::default()
        };
        let store = RedisStore::open(&redis.url()).unwrap();
        let mut client = serve(store, settings, true).await;
        assert_eq!(ask(&mut client, acme()).await.overall_code, Code::Ok as i32);
        clients.push(client);
    }
    redis.hang();
    let [error, open, closed] = &mut clients[..] else {
        unreachable!()
    };
    let failed = error.should_rate_limit(acme()).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unknown);
    assert!(
        failed.message().contains("did not answer within 200ms"),
        "{}",
        failed.message()
    );
    assert_eq!(ask(open, acme()).await.overall_code, Code::Ok as i32);
    let refused = ask(closed, acme()).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    assert!(refused.statuses[0].current_limit.is_some());
    redis.resume();
}

/// STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT: once key3 (10 an hour) would go over, key2 (20 a
/// minute), sent with it, is no longer added to; without the setting both count every hit.
async fn stop_increment_when_over<St: Store>(store: impl Fn() -> St) {
    let both = || {
        request(
            "shop",
            vec![descriptor(&[("key2", "a")]), descriptor(&[("key3", "b")])],
        )
    };
    for stop in [true, false] {
        let settings = ServiceSettings {
            stop_increment_when_over: stop,
            key_prefix: format!("{stop}_"),
            ..ServiceSettings::default()
        };
        let mut client = serve(store(), settings, true).await;
        let mut seen = Vec::new();
        for _ in 0..15 {
            let reply = ask(&mut client, both()).await;
            seen.push((
                reply.statuses[0].limit_remaining,
                reply.statuses[1].code == Code::OverLimit as i32,
            ));
        }
        let key2: Vec<u32> = seen.iter().map(|s| s.0).collect();
        let expected: Vec<u32> = match stop {
            // The 11th request would put key3 over: key2 stays at 10 used.
            true => (1..=15).map(|n: u32| 20 - n.min(10)).collect(),
            false => (1..=15).map(|n: u32| 20 - n).collect(),
        };
        assert_eq!(key2, expected, "stop = {stop}");
        let over: Vec<bool> = seen.iter().map(|s| s.1).collect();
        assert_eq!(over, (1..=15).map(|n| n > 10).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_increment_when_over_in_memory() {
    let store = tollgate::MemoryStore::new();
    stop_increment_when_over(|| store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_increment_when_over_on_redis() {
    let redis = RedisServer::start();
    stop_increment_when_over(|| RedisStore::open(&redis.url()).unwrap()).await;
}

/// RESPONSE_DYNAMIC_METADATA: the request as the peer echoes it, and the metadata of the
/// limits that passed, merged in descriptor order (the first value wins, maps merge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_metadata_as_the_peer_sets_it() {
    use envoy_types::pb::google::protobuf::value::Kind;
    let settings = ServiceSettings {
        dynamic_metadata: true,
        ..ServiceSettings::default()
    };
    let mut client = serve(tollgate::MemoryStore::new(), settings, true).await;
    let mut own = descriptor(&[("anything", "1"), ("more", "2")]);
    own.limit = Some(RateLimitOverride {
        requests_per_unit: 42,
        unit: 3,
    });
    own.hits_addend = Some(UInt64Value { value: 0 });
    let both = |hits| RateLimitRequest {
        hits_addend: hits,
        ..request(
            "shop",
            vec![
                descriptor(&[("region", "eu")]),
                descriptor(&[("plan", "x")]),
                own.clone(),
            ],
        )
    };
    let json = |reply: &RateLimitResponse| {
        let metadata = reply.dynamic_metadata.clone().expect("dynamic metadata");
        let value = envoy_types::pb::google::protobuf::Value {
            kind: Some(Kind::StructValue(metadata)),
        };
        value_json(&value)
    };
    let first = ask(&mut client, both(0)).await;
    assert_eq!(
        json(&first),
        serde_json::json!({
            "domain": "shop",
            "descriptors": [
                {"entries": ["region=eu"]},
                {"entries": ["plan=x"]},
                {"entries": ["anything=1", "more=2"], "limit": "requests_per_unit:42 unit:HOUR", "hitsAddend": 0.0},
            ],
            "metadata": {"owner": {"team": "b", "site": "eu", "tier": "gold"}, "label": "second", "extra": 1.0},
        })
    );
    // `plan` is over now (1 an hour): only `region`'s metadata; the request's own cost shows.
    let second = ask(&mut client, both(1)).await;
    assert_eq!(second.statuses[1].code, Code::OverLimit as i32);
    let second = json(&second);
    assert_eq!(second["hitsAddend"], serde_json::json!(1.0));
    assert_eq!(
        second["metadata"],
        serde_json::json!({"owner": {"team": "b", "site": "eu"}, "label": "second", "extra": 1.0})
    );
    // Off, none.
    let mut plain = serve(
        tollgate::MemoryStore::new(),
        ServiceSettings::default(),
        true,
    )
    .await;
    assert_eq!(ask(&mut plain, both(0)).await.dynamic_metadata, None);
}

/// A protobuf Value as JSON, numbers as floats: what the wire holds.
fn value_json(value: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_json).collect(),
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    }
}

/// How many times Redis ran the commands `names` (lower case), from `INFO commandstats`.
fn commands(conn: &mut redis::Connection, names: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    (info.lines())
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.strip_prefix("calls=")?.split(',').next()?;
            names.contains(&name).then(|| calls.parse::<u64>().ok())?
        })
        .sum()
}

/// TOLLGATE_LEASES: two services on one Redis serve a hot descriptor mostly from leases, and
/// together never admit more than its limit; a shutdown gives back what they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_spare_redis_and_keep_the_limit_across_instances() {
    let redis = RedisServer::start();
    let settings = ServiceSettings {
        leases: true,
        ..ServiceSettings::default()
    };
    let services: Vec<RateLimitService<RedisStore>> = (0..2)
        .map(|_| {
            let store = RedisStore::open(&redis.url()).unwrap();
            let service =
                RateLimitService::on_store(store, Duration::from_millis(500), settings.clone())
                    .unwrap();
            service.set_config(Config::from_files([("shop.yaml", CONFIG)], false).unwrap());
            service
        })
        .collect();
    let mut conn = redis.conn();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Decided within one window (the one of `now_s`), whatever the wall clock does: a hot
    // descriptor well within its limit (bulk, 5000 an hour), then one that goes over (key2, 20
    // a minute).
    let decisions = 2_000;
    for (value, limit, window) in [("bulk", 5_000, 3_600), ("key2", 20, 60)] {
        let before = commands(&mut conn, &["evalsha"]);
        let ask = || request("shop", vec![descriptor(&[(value, "hot")])]);
        let mut admitted = 0;
        for i in 0..decisions {
            let reply = services[i % 2].decide(&ask(), now_s).await.unwrap();
            if reply.overall_code == Code::Ok as i32 {
                admitted += 1;
            }
        }
        let calls = commands(&mut conn, &["evalsha"]) - before;
        assert!(
            calls > 0 && calls * 10 < decisions as u64,
            "{value}: {calls} Redis calls for {decisions} decisions"
        );
        for service in &services {
            service.give_back_leases().await;
            // Leasing again.
            service.set_config(Config::from_files([("shop.yaml", CONFIG)], false).unwrap());
        }
        let key = format!("shop_{value}_hot_{}", now_s / window * window);
        let counted: u64 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        if value == "bulk" {
            // Every request within the limit, and the counter holds exactly their hits: what
            // the leases did not spend went back.
            assert_eq!((admitted, counted), (decisions as u64, decisions as u64));
        } else {
            // Never more than the limit across both; the over hits that reached Redis count.
            assert!(
                (10..=limit).contains(&admitted),
                "{admitted} admitted of {limit}"
            );
            assert!(
                counted >= admitted,
                "{counted} counted, {admitted} admitted"
            );
        }
    }
}

/// A request given up on while its descriptor's lease call is under way (Envoy's timeout
/// drops the handler): the call is seen through, so the key leases again, and what it lent
/// is held and given back: the counter ends at exactly the requests' hits, the dropped
/// one's too.
#[tokio::test]
async fn a_request_dropped_during_its_lease_call_leaves_the_lease_whole() {
    let redis = RedisServer::start();
    let settings = ServiceSettings {
        leases: true,
        ..ServiceSettings::default()
    };
    let store = RedisStore::open(&redis.url()).unwrap();
    let service = RateLimitService::on_store(store, Duration::from_secs(2), settings).unwrap();
    service.set_config(Config::from_files([("shop.yaml", CONFIG)], false).unwrap());
    let mut conn = redis.conn();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ask = || request("shop", vec![descriptor(&[("bulk", "dropped")])]);
    let ok = |reply: RateLimitResponse| assert_eq!(reply.overall_code, Code::Ok as i32);
    // Cold: counted one by one until it is asked for enough to lease (4 hits a lease time).
    for _ in 0..3 {
        ok(service.decide(&ask(), now_s).await.unwrap());
    }
    // The fourth takes a lease, and is dropped after its first poll (on this test's one
    // thread, the lease call cannot have answered by then).
    let fourth = ask();
    let mut dropped = Box::pin(service.decide(&fourth, now_s));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = dropped.as_mut().poll(&mut cx);
    assert!(polled.is_pending(), "the lease call answered at once");
    drop(dropped);
    let before = commands(&mut conn, &["evalsha", "incrby"]);
    let decisions = 1_000;
    for _ in 0..decisions {
        ok(service.decide(&ask(), now_s).await.unwrap());
    }
    let calls = commands(&mut conn, &["evalsha", "incrby"]) - before;
    assert!(
        calls > 0 && calls * 10 < decisions,
        "{calls} Redis calls for {decisions} decisions: the key did not lease again"
    );
    service.give_back_leases().await;
    let key = format!("shop_bulk_dropped_{}", now_s / 3_600 * 3_600);
    let counted: u64 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    assert_eq!(counted, 3 + 1 + decisions);
}
