//! Limits per tenant: tiered policies from code and from TOML, a request's tier from its API
//! key, a clear answer for a request without one, and buckets of their own per tier.

use std::time::Duration;

use axum::{Router, routing::get};
use http::{Method, StatusCode};
use tollgate::{
    Limit, Limiter, Policies, RedisStore, Refusal, SubjectError, Target, TollgateLayer, tier_fn,
};

use crate::harness::{HttpClient, RedisServer, TestServer};

const MINUTE: Duration = Duration::from_secs(60);

const TOML: &str = r#"
    [[tiers.free.default.limits]]
    name = "requests"
    capacity = 2
    period = "1m"

    [[tiers.free.rules]]
    name = "search"
    path = "/search"
    limits = [{ name = "searches", capacity = 1, period = "1m" }]

    [[tiers.pro.default.limits]]
    name = "requests"
    capacity = 5
    period = "1m"
"#;

fn code() -> Policies {
    let requests = |n| Limit::new("requests", n, n, MINUTE).unwrap();
    Policies::tiered([
        (
            "free",
            Policies::builder()
                .default_limit(requests(2))
                .rule(
                    tollgate::Rule::new("search", "/search")
                        .limit(Limit::new("searches", 1, 1, MINUTE).unwrap()),
                )
                .build()
                .unwrap(),
        ),
        ("pro", Policies::single(requests(5))),
    ])
    .unwrap()
}

#[test]
fn tiers_from_toml_are_the_code_ones_and_bad_ones_are_named() {
    let file = Policies::from_toml(TOML).unwrap();
    let code = code();
    assert_eq!(file.tiers().collect::<Vec<_>>(), ["free", "pro"]);
    assert_eq!(
        file.limits().collect::<Vec<_>>(),
        code.limits().collect::<Vec<_>>()
    );
    for (text, error) in [
        (
            format!("{TOML}\n[[default.limits]]\nname = \"x\"\ncapacity = 1\nperiod = \"1s\"\n"),
            "`default` beside `tiers`",
        ),
        (
            TOML.replace("tiers.pro.", "tiers.\"p r o\"."),
            "tier \"p r o\": `tier` = \"p r o\" is invalid",
        ),
        (
            TOML.replace("capacity = 5", "capacity = 0"),
            "tier \"pro\": default: limit \"requests\": `capacity` must be greater than zero",
        ),
    ] {
        let got = Policies::from_toml(&text).unwrap_err().to_string();
        assert!(got.contains(error), "{got}\n want: {error}");
    }
    let nested = Policies::tiered([("outer", code)]).unwrap_err().to_string();
    assert!(nested.contains("tiers of their own"), "{nested}");
}

#[test]
fn a_layer_over_tiered_policies_needs_a_tier_extractor_and_only_then() {
    let missing = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .policies(code())
        .build()
        .unwrap_err()
        .to_string();
    assert!(missing.contains("tier_extractor"), "{missing}");
    let needless = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .capacity(1)
        .period(MINUTE)
        .tier_extractor(tier_fn(|_| Ok("free")))
        .build()
        .unwrap_err()
        .to_string();
    assert!(needless.contains("tier_extractor"), "{needless}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tier_gets_its_limits_and_a_request_without_one_a_clear_answer() {
    let redis = RedisServer::start();
    let limiter = Limiter::builder()
        .store(RedisStore::open(&redis.url()).unwrap())
        .policies(Policies::from_toml(TOML).unwrap())
        .build()
        .unwrap();
    let layer = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .limiter(limiter.clone())
        .tier_extractor(tier_fn(|parts| {
            let key = parts
                .headers
                .get("x-api-key")
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "X-API-Key is required"))?;
            match key.as_bytes() {
                k if k.starts_with(b"free-") => Ok("free"),
                k if k.starts_with(b"pro-") => Ok("pro"),
                k if k.starts_with(b"gold-") => Ok("gold"),
                _ => Err(Refusal::new(StatusCode::UNAUTHORIZED, "unknown API key")),
            }
        }))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .route("/search", get(|| async { "found" }))
        .layer(layer);
    let server = TestServer::start(app).await;
    let client = HttpClient::new();
    let statuses = |key: &'static str, path: &'static str, n: usize| {
        let client = client.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(
                    client
                        .get(server.addr, path, Some(key.as_bytes()))
                        .await
                        .status
                        .as_u16(),
                );
            }
            out
        }
    };
    assert_eq!(statuses("free-a", "/hello", 3).await, [200, 200, 429]);
    assert_eq!(statuses("free-a", "/search", 2).await, [200, 429]);
    assert_eq!(
        statuses("pro-a", "/hello", 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    // The pro tier has no search rule: its default applies, per endpoint.
    assert_eq!(statuses("pro-a", "/search", 1).await, [200]);
    for (key, status, error) in [
        (None, 400, "X-API-Key is required"),
        (Some("nobody"), 401, "unknown API key"),
        (Some("gold-a"), 403, "unknown tier"),
    ] {
        let reply = client
            .get(server.addr, "/hello", key.map(str::as_bytes))
            .await;
        assert_eq!(reply.status.as_u16(), status, "{key:?}");
        assert_eq!(reply.json()["error"], error, "{key:?}");
        assert_eq!(reply.header("ratelimit"), None);
    }
    // The same client in two tiers has two sets of buckets; directly, a subject names its tier.
    let hello = Target::route(&Method::GET, "/hello");
    assert_eq!(
        limiter.subject("free-a", hello).unwrap_err(),
        SubjectError::TierRequired
    );
    let free = limiter.tiered_subject("free", "free-a", hello).unwrap();
    let pro = limiter.tiered_subject("pro", "free-a", hello).unwrap();
    assert_ne!(free.key(), pro.key());
    assert_eq!(limiter.peek(&free, 1).await.unwrap()[0].remaining, 0);
    assert_eq!(limiter.peek(&pro, 1).await.unwrap()[0].remaining, 5);
    assert_eq!(
        limiter.tiered_subject("gold", "x", hello).unwrap_err(),
        SubjectError::UnknownTier("gold".into())
    );
}
