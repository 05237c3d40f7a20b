//! envoyproxy/ratelimit's integration scenarios and configuration cases (`test/integration`,
//! `test/config`), replayed against the real `tollgate-rls` started as an operator starts the
//! peer: environment settings, a runtime directory of YAML files, a Redis of the test's own.
//! What is expected is the peer's behaviour (the compatibility reference), not tollgate's.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

use crate::harness::{HttpClient, RedisServer};
use crate::rls::{descriptor, request};
use crate::rls_binary::{CONFIG, Rls, RuntimeDir, ask, env, post};

const DOMAIN: &str = "scenarios";

/// One domain for the gRPC scenarios; each test uses its own keys or values.
const LIMITS: &str = "
domain: scenarios
descriptors:
  - { key: per_second, rate_limit: { unit: second, requests_per_unit: 50 } }
  - { key: per_minute, rate_limit: { unit: minute, requests_per_unit: 5, name: five_a_minute } }
  - { key: calls, rate_limit: { unit: day, requests_per_unit: 20 } }
  - { key: uploads, rate_limit: { unit: hour, requests_per_unit: 10, name: uploads } }
  # Depth: a limit applies to requests of exactly its depth.
  - key: tenant
    value: acme
    descriptors:
      - { key: user, rate_limit: { unit: hour, requests_per_unit: 5 } }
      - { key: user, value: admin, rate_limit: { unit: hour, requests_per_unit: 10 } }
  - { key: plan, rate_limit: { unit: hour, requests_per_unit: 20 } }
  - { key: plan, value: gold, rate_limit: { unit: hour, requests_per_unit: 30 } }
  - { key: plan, value: internal }
  - key: region
    value: eu
    rate_limit: { unit: hour, requests_per_unit: 15 }
    descriptors:
      - { key: zone, value: eu-1, rate_limit: { unit: hour, requests_per_unit: 25 } }
  # Wildcards: exact value, then the first matching pattern, then the key alone.
  - { key: bucket, value: img*, rate_limit: { unit: hour, requests_per_unit: 11 } }
  - { key: bucket, value: img-raw, rate_limit: { unit: hour, requests_per_unit: 7 } }
  - { key: bucket, value: im*, rate_limit: { unit: hour, requests_per_unit: 9 } }
  - { key: bucket, rate_limit: { unit: hour, requests_per_unit: 3 } }
  - { key: route, value: v*json, rate_limit: { unit: hour, requests_per_unit: 4 } }
  - { key: route, value: a*b*c, rate_limit: { unit: hour, requests_per_unit: 6 } }
  - key: shared
    value: files/*
    share_threshold: true
    rate_limit: { unit: hour, requests_per_unit: 3 }
  - { key: shared, value: files/pinned, rate_limit: { unit: hour, requests_per_unit: 50 } }
  - { key: own, value: files/*, rate_limit: { unit: hour, requests_per_unit: 3 } }
  # Flags.
  - { key: internal, rate_limit: { unlimited: true } }
  - { key: canary, shadow_mode: true, rate_limit: { unit: hour, requests_per_unit: 2 } }
  - { key: tier, value: free, rate_limit: { unit: hour, requests_per_unit: 5, name: free_tier } }
  - key: partner
    rate_limit:
      unit: hour
      requests_per_unit: 50
      name: partner
      replaces:
        - name: free_tier
  - key: vip
    rate_limit:
      unlimited: true
      replaces:
        - name: partner
  - { key: quota, quota_mode: true, rate_limit: { unit: hour, requests_per_unit: 1 } }
  - { key: strict, rate_limit: { unit: hour, requests_per_unit: 1 } }
  - { key: cost, rate_limit: { unit: hour, requests_per_unit: 20 } }
  - { key: account, rate_limit: { unit: hour, requests_per_unit: 10, name: accounts } }
";

/// `tollgate-rls` over `runtime` and the Redis at `redis`, with `settings` added to (or
/// replacing) the common environment.
fn start(runtime: &RuntimeDir, redis: &Path, settings: &[(&str, &str)]) -> Rls {
    let root = runtime.root();
    let mut vars = env(&root, redis);
    vars.extend_from_slice(settings);
    Rls::start(&vars)
}

/// The config directory itself is watched: a write there reloads.
const NO_WATCH_ROOT: [(&str, &str); 1] = [("RUNTIME_WATCH_ROOT", "false")];

/// Writes `name` into the runtime's config directory.
fn add_file(runtime: &RuntimeDir, name: &str, text: &str) {
    std::fs::write(runtime.root().join("ratelimit/config").join(name), text).unwrap();
}

/// A service of the test's own: runtime directory, Redis, `tollgate-rls` and a gRPC client.
struct Service {
    rls: Rls,
    client: RateLimitServiceClient<Channel>,
    redis: RedisServer,
    _runtime: RuntimeDir,
}

impl Service {
    /// Over `files`, the first of which is named `limits.yaml`.
    async fn start(files: &[(&str, &str)], settings: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let runtime = RuntimeDir::new(files[0].1);
        for (name, text) in &files[1..] {
            add_file(&runtime, name, text);
        }
        let rls = start(&runtime, &redis.socket(), settings);
        let client = rls.client().await;
        Self {
            rls,
            client,
            redis,
            _runtime: runtime,
        }
    }

    /// The answer, or the message of the gRPC `UNKNOWN` error.
    async fn try_send(&mut self, request: RateLimitRequest) -> Result<RateLimitResponse, String> {
        let sent = request.descriptors.len();
        match self.client.should_rate_limit(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                assert_eq!(reply.statuses.len(), sent, "{reply:?}");
                Ok(reply)
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
                Err(status.message().to_owned())
            }
        }
    }

    /// The answer to `request` as a [`reply_line`].
    async fn send(&mut self, request: RateLimitRequest) -> String {
        reply_line(&self.try_send(request).await.unwrap())
    }

    /// The answer to `descriptors` of `DOMAIN`.
    async fn ask(&mut self, descriptors: Vec<RateLimitDescriptor>) -> String {
        self.send(request(DOMAIN, descriptors)).await
    }

    /// The status of one descriptor of `DOMAIN`, as a [`line`].
    async fn one(&mut self, pairs: &[(&str, &str)]) -> String {
        let reply = self
            .try_send(request(DOMAIN, vec![descriptor(pairs)]))
            .await;
        line(&reply.unwrap().statuses[0])
    }

    fn redis<T: redis::FromRedisValue>(&self, command: &str, key: &str) -> T {
        let reply = redis::cmd(command).arg(key).query(&mut self.redis.conn());
        reply.unwrap()
    }
}

fn with_hits(pairs: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(UInt64Value { value: hits }),
        ..descriptor(pairs)
    }
}

fn with_limit(pairs: &[(&str, &str)], rpu: u32, unit: RateLimitUnit) -> RateLimitDescriptor {
    let limit = RateLimitOverride {
        requests_per_unit: rpu,
        unit: unit as i32,
    };
    RateLimitDescriptor {
        limit: Some(limit),
        ..descriptor(pairs)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A status in one line, `CODE remaining[ requests_per_unit/UNIT[ name]]`, e.g.
/// `OVER_LIMIT 0 10/HOUR uploads`. On the way, checks that a status with a limit carries the
/// time to its reset in whole seconds, 1 to the unit's length, and one without carries none.
fn line(status: &DescriptorStatus) -> String {
    let code = Code::try_from(status.code).unwrap().as_str_name();
    let mut line = format!("{code} {}", status.limit_remaining);
    match (&status.current_limit, &status.duration_until_reset) {
        (Some(limit), Some(reset)) => {
            let unit = Unit::try_from(limit.unit).unwrap();
            // SECOND to DAY are 1 to 4; the tests use no other.
            let length = [0, 1, 60, 3600, 86_400][limit.unit as usize];
            assert!(
                reset.nanos == 0 && (1..=length).contains(&reset.seconds),
                "{status:?}"
            );
            line += &format!(" {}/{}", limit.requests_per_unit, unit.as_str_name());
            if !limit.name.is_empty() {
                line += &format!(" {}", limit.name);
            }
        }
        (None, None) => {}
        _ => panic!("duration_until_reset goes with current_limit: {status:?}"),
    }
    line
}

/// A response in one line: `OVERALL: status | status ...`.
fn reply_line(reply: &RateLimitResponse) -> String {
    let statuses: Vec<String> = reply.statuses.iter().map(line).collect();
    let overall = Code::try_from(reply.overall_code).unwrap().as_str_name();
    format!("{overall}: {}", statuses.join(" | "))
}

/// Polls the service's log (10 s at most) until `ready` holds.
async fn wait_for_log(rls: &Rls, what: &str, ready: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(&rls.log()) {
        assert!(Instant::now() < deadline, "{what}: {}", rls.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_counts_down_then_answers_over_limit() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    let unknown = request("nowhere", vec![descriptor(&[("hello", "world")])]);
    assert_eq!(rls.send(unknown).await, "OK: OK 0");
    // Per second: the reset is always exactly 1 s away (`line` checks 1..=1).
    assert_eq!(rls.one(&[("per_second", "a")]).await, "OK 49 50/SECOND");
    // 5 a minute: 4 down to 0 remaining, then over with 0. Replayed with another value if the
    // minute turned meanwhile.
    let expected: Vec<String> = (0..7)
        .map(|i| match i {
            0..5 => format!("OK: OK {} 5/MINUTE five_a_minute", 4 - i),
            _ => "OVER_LIMIT: OVER_LIMIT 0 5/MINUTE five_a_minute".into(),
        })
        .collect();
    for attempt in 0..3 {
        let value = format!("client-{attempt}");
        let minute = now() / 60;
        let mut replies = Vec::new();
        for _ in 0..7 {
            replies.push(rls.ask(vec![descriptor(&[("per_minute", &value)])]).await);
        }
        if now() / 60 == minute {
            assert_eq!(replies, expected);
            return;
        }
    }
    panic!("the minute kept turning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_of_one_request_are_answered_and_counted_each_on_its_own() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    for i in 0..15 {
        let reply = rls
            .ask(vec![
                descriptor(&[("calls", "many")]),
                descriptor(&[("unknown", "x")]),
                descriptor(&[("uploads", "many")]),
            ])
            .await;
        // `calls` keeps counting while `uploads` is over.
        let calls = format!("OK {} 20/DAY", 19 - i);
        let expected = match i {
            0..10 => format!("OK: {calls} | OK 0 | OK {} 10/HOUR uploads", 9 - i),
            _ => format!("OVER_LIMIT: {calls} | OK 0 | OVER_LIMIT 0 10/HOUR uploads"),
        };
        assert_eq!(reply, expected);
    }
    // One descriptor twice: two increments, seen in order.
    let twice = descriptor(&[("calls", "twice")]);
    let reply = rls.ask(vec![twice.clone(), twice]).await;
    assert_eq!(reply, "OK: OK 19 20/DAY | OK 18 20/DAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_applies_at_exactly_the_depth_of_its_rule() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    let cases: [(&[(&str, &str)], &str); 15] = [
        // A node without a limit of its own.
        (&[("tenant", "acme")], "OK 0"),
        // The key-only rule one level down; an exact value first; an empty value is key-only.
        (&[("tenant", "acme"), ("user", "bob")], "OK 4 5/HOUR"),
        (&[("tenant", "acme"), ("user", "admin")], "OK 9 10/HOUR"),
        (&[("tenant", "acme"), ("user", "")], "OK 4 5/HOUR"),
        // Deeper than the leaf, another first level, a second-level rule alone: nothing.
        (
            &[("tenant", "acme"), ("user", "bob"), ("device", "x")],
            "OK 0",
        ),
        (&[("tenant", "other"), ("user", "bob")], "OK 0"),
        (&[("user", "bob")], "OK 0"),
        (&[("plan", "free")], "OK 19 20/HOUR"),
        (&[("plan", "gold")], "OK 29 30/HOUR"),
        // A value without a limit or children: allowed.
        (&[("plan", "internal")], "OK 0"),
        (&[("plan", "")], "OK 19 20/HOUR"),
        // A one-level rule never answers a two-entry request.
        (&[("plan", "gold"), ("seat", "1")], "OK 0"),
        // A node with its own limit and a deeper rule.
        (&[("region", "eu")], "OK 14 15/HOUR"),
        (&[("region", "eu"), ("zone", "eu-1")], "OK 24 25/HOUR"),
        (&[("region", "eu"), ("zone", "eu-2")], "OK 0"),
    ];
    for (pairs, expected) in cases {
        assert_eq!(rls.one(pairs).await, expected, "{pairs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_values_and_a_shared_threshold() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    let cases = [
        // `*` matches nothing too; an exact value comes before any pattern, then the first
        // pattern that matches in config order, then the key alone.
        ("bucket", "img", "OK 10 11/HOUR"),
        ("bucket", "img-1", "OK 10 11/HOUR"),
        ("bucket", "img-raw", "OK 6 7/HOUR"),
        ("bucket", "imx", "OK 8 9/HOUR"),
        ("bucket", "other", "OK 2 3/HOUR"),
        // Each value its own counter.
        ("bucket", "img-1", "OK 9 11/HOUR"),
        ("bucket", "img-2", "OK 10 11/HOUR"),
        ("own", "files/a", "OK 2 3/HOUR"),
        ("own", "files/b", "OK 2 3/HOUR"),
        // Prefix and suffix, segments in order.
        ("route", "vjson", "OK 3 4/HOUR"),
        ("route", "v1.json", "OK 3 4/HOUR"),
        ("route", "v1.jsonx", "OK 0"),
        ("route", "xv1json", "OK 0"),
        ("route", "abc", "OK 5 6/HOUR"),
        ("route", "a-b-c", "OK 5 6/HOUR"),
        ("route", "acb", "OK 0"),
        // share_threshold: every value the pattern matches counts on one counter; an exact
        // value keeps its own.
        ("shared", "files/a.pdf", "OK 2 3/HOUR"),
        ("shared", "files/a.pdf", "OK 1 3/HOUR"),
        ("shared", "files/b.csv", "OK 0 3/HOUR"),
        ("shared", "files/c", "OVER_LIMIT 0 3/HOUR"),
        ("shared", "files/pinned", "OK 49 50/HOUR"),
    ];
    for (key, value, expected) in cases {
        assert_eq!(rls.one(&[(key, value)]).await, expected, "{key}={value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_is_not_counted_and_shadow_mode_answers_ok() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    for _ in 0..3 {
        assert_eq!(rls.one(&[("internal", "x")]).await, "OK 4294967295");
    }
    let keys: Vec<String> = rls.redis("KEYS", "*");
    assert!(keys.is_empty(), "nothing counted: {keys:?}");
    // Over, but in shadow mode: OK with 0 remaining, the limit still shown.
    let canary = || vec![descriptor(&[("canary", "c")])];
    assert_eq!(rls.ask(canary()).await, "OK: OK 1 2/HOUR");
    assert_eq!(rls.ask(canary()).await, "OK: OK 0 2/HOUR");
    assert_eq!(rls.ask(canary()).await, "OK: OK 0 2/HOUR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_limit_drops_out_and_is_not_counted() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    let free = descriptor(&[("tier", "free")]);
    let partner = descriptor(&[("partner", "p")]);
    assert_eq!(rls.one(&[("tier", "free")]).await, "OK 4 5/HOUR free_tier");
    let reply = rls.ask(vec![free.clone(), partner.clone()]).await;
    assert_eq!(reply, "OK: OK 0 | OK 49 50/HOUR partner");
    assert_eq!(rls.one(&[("tier", "free")]).await, "OK 3 5/HOUR free_tier");
    // An unlimited rule replacing `partner`: the replaced `partner` still replaces `free_tier`.
    let reply = rls
        .ask(vec![free, partner, descriptor(&[("vip", "v")])])
        .await;
    assert_eq!(reply, "OK: OK 0 | OK 0 | OK 4294967295");
    assert_eq!(rls.one(&[("partner", "p")]).await, "OK 48 50/HOUR partner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_descriptors_are_over_only_all_together() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    let d = |key: &str, value: &str| descriptor(&[(key, value)]);
    let cases = [
        (vec![d("quota", "a")], "OK: OK 0 1/HOUR"),
        (vec![d("quota", "a")], "OVER_LIMIT: OVER_LIMIT 0 1/HOUR"),
        // One quota descriptor of two over: OK.
        (
            vec![d("quota", "a"), d("quota", "b")],
            "OK: OVER_LIMIT 0 1/HOUR | OK 0 1/HOUR",
        ),
        // Every quota descriptor over: over, whatever the others say.
        (
            vec![d("quota", "a"), d("strict", "s")],
            "OVER_LIMIT: OVER_LIMIT 0 1/HOUR | OK 0 1/HOUR",
        ),
        // A non-quota descriptor over: over.
        (
            vec![d("quota", "c"), d("strict", "s")],
            "OVER_LIMIT: OK 0 1/HOUR | OVER_LIMIT 0 1/HOUR",
        ),
    ];
    for (descriptors, expected) in cases {
        assert_eq!(rls.ask(descriptors).await, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_of_the_request_and_of_a_descriptor() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    let cost = &[("cost", "c")];
    let cases = [
        (descriptor(cost), 3, "OK: OK 17 20/HOUR"),
        // 0 on the descriptor: checked, not counted.
        (with_hits(cost, 0), 3, "OK: OK 17 20/HOUR"),
        // The descriptor's own cost wins over the request's.
        (with_hits(cost, 5), 3, "OK: OK 12 20/HOUR"),
        // Too big: over, and counted anyway (8 + 13 = 21), so what follows is over too.
        (descriptor(cost), 13, "OVER_LIMIT: OVER_LIMIT 0 20/HOUR"),
        (with_hits(cost, 0), 0, "OVER_LIMIT: OVER_LIMIT 0 20/HOUR"),
        (descriptor(cost), 0, "OVER_LIMIT: OVER_LIMIT 0 20/HOUR"),
    ];
    for (descriptor, hits, expected) in cases {
        let request = RateLimitRequest {
            hits_addend: hits,
            ..request(DOMAIN, vec![descriptor])
        };
        assert_eq!(rls.send(request).await, expected, "hits_addend {hits}");
    }
    let both = vec![with_hits(&[("cost", "x")], 2), descriptor(&[("cost", "y")])];
    let request = RateLimitRequest {
        hits_addend: 4,
        ..request(DOMAIN, both)
    };
    assert_eq!(rls.send(request).await, "OK: OK 18 20/HOUR | OK 16 20/HOUR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_s_own_limit_overrides_the_config() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    assert_eq!(rls.one(&[("account", "a")]).await, "OK 9 10/HOUR accounts");
    // Same descriptor, same window start: the override counts on the rule's counter, unnamed.
    let three = || vec![with_limit(&[("account", "a")], 3, RateLimitUnit::Hour)];
    assert_eq!(rls.ask(three()).await, "OK: OK 1 3/HOUR");
    assert_eq!(rls.ask(three()).await, "OK: OK 0 3/HOUR");
    assert_eq!(rls.ask(three()).await, "OVER_LIMIT: OVER_LIMIT 0 3/HOUR");
    // Applied without a matching rule in a known domain, not in an unknown one.
    let other = with_limit(&[("nothing", "n")], 2, RateLimitUnit::Day);
    assert_eq!(rls.ask(vec![other.clone()]).await, "OK: OK 1 2/DAY");
    assert_eq!(rls.send(request("nowhere", vec![other])).await, "OK: OK 0");
    // An override turns the rule's shadow mode off.
    let canary = || vec![with_limit(&[("canary", "o")], 1, RateLimitUnit::Hour)];
    assert_eq!(rls.ask(canary()).await, "OK: OK 0 1/HOUR");
    assert_eq!(rls.ask(canary()).await, "OVER_LIMIT: OVER_LIMIT 0 1/HOUR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_over_grpc_and_json() {
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &[]).await;
    let one = || vec![descriptor(&[("calls", "e")])];
    let domain = "rate limit domain must not be empty";
    let cases = [
        (request("", one()), domain),
        (request("", vec![]), domain),
        (
            request(DOMAIN, vec![]),
            "rate limit descriptor list must not be empty",
        ),
    ];
    for (request, message) in cases {
        assert_eq!(rls.try_send(request).await.unwrap_err(), message);
    }
    let http = rls.rls.http;
    let within = post(
        http,
        r#"{"domain":"scenarios","descriptors":[{"entries":[{"key":"per_second","value":"json"}]},{"entries":[{"key":"unknown","value":"x"}]}]}"#,
    )
    .await;
    assert_eq!(within.0, 200, "{}", within.1);
    let expected = r#"{"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"requestsPerUnit":50,"unit":"SECOND"},"limitRemaining":49,"durationUntilReset":"1s"},{"code":"OK"}]}"#;
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert_eq!(json(&within.1), json(expected));
    let strict =
        r#"{"domain":"scenarios","descriptors":[{"entries":[{"key":"strict","value":"j"}]}]}"#;
    assert_eq!(post(http, strict).await.0, 200);
    let over = post(http, strict).await;
    assert_eq!(
        (over.0, &json(&over.1)["overallCode"]),
        (429, &"OVER_LIMIT".into())
    );
    for bad in [
        "",
        "{not json",
        r#"{"domain":"scenarios"}"#,
        r#"{"domain":"","descriptors":[{"entries":[{"key":"calls","value":"j"}]}]}"#,
    ] {
        let reply = post(http, bad).await;
        assert_eq!((reply.0, reply.1.as_str()), (400, "Bad Request\n"), "{bad}");
    }
}

/// Invalid files (each as the peer's `test/config` cases, here in YAML's flow style) and the
/// error the peer names them with.
#[rustfmt::skip]
const INVALID: [(&str, &str, &str); 13] = [
    ("no_domain.yaml", "{descriptors: [{key: k}]}", "config file cannot have empty domain"),
    ("no_key.yaml", "{domain: b, descriptors: [{value: v}]}", "descriptor has empty key"),
    ("twice.yaml", "{domain: b, descriptors: [{key: k, value: v}, {key: k, value: v}]}", "duplicate descriptor composite key 'b.k_v'"),
    ("unit.yaml", "{domain: b, descriptors: [{key: k, descriptors: [{key: s, rate_limit: {unit: fortnight}}]}]}", "invalid rate limit unit 'fortnight'"),
    ("typo.yaml", "{domain: b, descriptors: [{key: k, ratelimit: {unit: day}}]}", "config error, unknown key 'ratelimit'"),
    ("typo2.yaml", "{domain: b, descriptors: [{key: k, rate_limit: {unit: day, requestsperunit: 5}}]}", "config error, unknown key 'requestsperunit'"),
    ("unlimited.yaml", "{domain: b, descriptors: [{key: k, rate_limit: {unlimited: true, unit: day}}]}", "should not specify rate limit unit when unlimited"),
    ("self.yaml", "{domain: b, descriptors: [{key: k, rate_limit: {unit: day, name: me, replaces: [{name: me}]}}]}", "replaces should not contain name of same descriptor"),
    ("empty_replaces.yaml", "{domain: b, descriptors: [{key: k, rate_limit: {unit: day, replaces: [{name: ''}]}}]}", "should not have an empty replaces entry"),
    ("share.yaml", "{domain: b, descriptors: [{key: k, value: v, share_threshold: true}]}", "share_threshold can only be used with wildcard values (containing '*'), but found key 'k_v'"),
    ("list.yaml", "{domain: b, descriptors: [a]}", "config error, yaml file contains list of type other than map: a"),
    ("float.yaml", "{0.25: b}", "config error, key is not of type string: 0.25"),
    // The parser's own message follows; the peer's is go-yaml's.
    ("syntax.yaml", "'''", "error loading config file: "),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_fails_the_first_load_naming_the_file() {
    let redis = RedisServer::start();
    let fine = "domain: fine\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 1 }\n";
    for (name, text, error) in INVALID {
        let runtime = RuntimeDir::new(fine);
        add_file(&runtime, name, text);
        let rls = start(&runtime, &redis.socket(), &NO_WATCH_ROOT);
        let line = format!("Error loading new configuration: {name}: {error}");
        assert!(rls.log().contains(&line), "{line}\n{}", rls.log());
        let mut client = rls.client().await;
        let request = request("fine", vec![descriptor(&[("k", "v")])]);
        let status = client.should_rate_limit(request).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unknown, "no rate limit configuration loaded"),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_after_a_good_load_keeps_the_old_config() {
    let redis = RedisServer::start();
    let runtime = RuntimeDir::new(CONFIG);
    let rls = start(&runtime, &redis.socket(), &NO_WATCH_ROOT);
    let mut client = rls.client().await;
    let mut hit = async || line(&ask(&mut client, "10.9.9.9").await.statuses[0]);
    assert_eq!(hit().await, "OK 4 5/HOUR per_ip");
    let broken = "domain: other\ndescriptors:\n  - key: ''\n";
    add_file(&runtime, "broken.yaml", broken);
    wait_for_log(&rls, "the failed reload", |log| {
        log.contains("Error loading new configuration: broken.yaml: descriptor has empty key")
    })
    .await;
    assert_eq!(hit().await, "OK 3 5/HOUR per_ip");
    let health = HttpClient::new().get(rls.http, "/healthcheck", None).await;
    assert_eq!((health.status.as_u16(), health.body.as_str()), (200, "OK"));
    // Fixed: the new limit applies to the count so far.
    let fixed = CONFIG.replace("requests_per_unit: 5", "requests_per_unit: 50");
    runtime.version("v1", &fixed);
    std::fs::remove_file(runtime.root().join("ratelimit/config/broken.yaml")).unwrap();
    wait_for_log(&rls, "the reload after the fix", |log| {
        log.matches("Successfully loaded new configuration").count() >= 2
    })
    .await;
    assert_eq!(hit().await, "OK 47 50/HOUR per_ip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_one_domain_merge_only_when_asked() {
    let rule = |value: &str, rpu: u32| {
        format!(
            "domain: shop\ndescriptors:\n  - key: item\n    value: {value}\n    rate_limit: {{ unit: hour, requests_per_unit: {rpu} }}\n"
        )
    };
    let (book, pen) = (rule("book", 10), rule("pen", 20));
    let item = |value: &str| request("shop", vec![descriptor(&[("item", value)])]);
    let files = [("limits.yaml", book.as_str()), ("more.yaml", pen.as_str())];
    let mut merged = Service::start(&files, &[("MERGE_DOMAIN_CONFIG", "true")]).await;
    assert_eq!(merged.send(item("book")).await, "OK: OK 9 10/HOUR");
    assert_eq!(merged.send(item("pen")).await, "OK: OK 19 20/HOUR");
    // Without merging: a duplicate domain, named after the file that comes second by name
    // (files load in name order).
    let mut apart = Service::start(&files, &[]).await;
    let log = apart.rls.log();
    let line = "config.more.yaml: duplicate domain 'shop' in config file";
    assert!(
        log.contains(&format!("Error loading new configuration: {line}")),
        "{log}"
    );
    let unloaded = apart.try_send(item("book")).await.unwrap_err();
    assert_eq!(unloaded, "no rate limit configuration loaded");
    // Merging a descriptor the domain already has.
    let twice = [
        ("limits.yaml", book.as_str()),
        ("again.yaml", book.as_str()),
    ];
    let clash = Service::start(&twice, &[("MERGE_DOMAIN_CONFIG", "true")]).await;
    let log = clash.rls.log();
    assert!(
        log.contains("duplicate descriptor composite key 'shop.item_book'"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_the_peer_s_redis_keys_under_the_prefix() {
    let settings = [("CACHE_KEY_PREFIX", "prefix:")];
    let mut rls = Service::start(&[("limits.yaml", LIMITS)], &settings).await;
    let hour = now() / 3600 * 3600;
    for _ in 0..3 {
        rls.one(&[("strict", "k")]).await;
    }
    let nested = vec![descriptor(&[("tenant", "acme"), ("user", "bob")])];
    let nested = RateLimitRequest {
        hits_addend: 4,
        ..request(DOMAIN, nested)
    };
    rls.send(nested).await;
    let others = [
        ("plan", "free"),
        ("shared", "files/x.pdf"),
        ("internal", "x"),
        ("unknown", "x"),
    ];
    for pairs in others {
        rls.one(&[pairs]).await;
    }
    let expected = [
        ("plan_free", 1), // a key-only rule counts per value
        ("shared_files/*", 1),
        ("strict_k", 3), // hits over the limit count too
        ("tenant_acme_user_bob", 4),
    ]
    .map(|(path, count)| (format!("prefix:scenarios_{path}_{hour}"), count));
    let mut keys: Vec<String> = rls.redis("KEYS", "*");
    keys.sort();
    let expected_keys: Vec<&String> = expected.iter().map(|(key, _)| key).collect();
    assert_eq!(keys.iter().collect::<Vec<_>>(), expected_keys);
    for (key, count) in &expected {
        assert_eq!(rls.redis::<u64>("GET", key), *count, "{key}");
        let ttl: i64 = rls.redis("TTL", key);
        assert!(
            (3599..3900).contains(&ttl),
            "{key}: TTL {ttl}, not 1 h + jitter < 300 s"
        );
    }
}
