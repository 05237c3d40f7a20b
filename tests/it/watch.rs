//! Policies reloaded from a watched file: `PolicyWatcher` on real files changed every way
//! they change in production (in place, renamed over, a symlinked directory swapped, a
//! Kubernetes ConfigMap's `..data` swapped), and the example `server` reloading its
//! `RATE_LIMIT_CONFIG` while a client sends, on a real Redis, and on `SIGHUP`.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use http::request::Parts;
use tollgate::{
    ApiKey, Limiter, Policies, PolicyWatcher, RedisStore, Refusal, Target, TollgateLayer, tier_fn,
};

use crate::examples::Instance;
use crate::harness::{HttpClient, RedisServer, TempDir, TestServer, swap_link};

/// How long a change may take to apply (the issue's promise: within a second).
const WITHIN: Duration = Duration::from_secs(1);

/// A policy file: one rule for `/a` with a fixed window of `capacity` a minute.
fn rules(capacity: u64) -> String {
    format!(
        "[[rules]]\nname = \"a\"\npath = \"/a\"\n\
         limits = [{{ name = \"w\", capacity = {capacity}, period = \"1m\", algorithm = \"fixed_window\" }}]\n"
    )
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, as editors and
/// deploy tools do.
fn replace(path: &Path, text: &str) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let temp = path.with_file_name(format!(".{name}.tmp~"));
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// The capacity of rule `a`'s limit in force.
fn capacity(limiter: &Limiter) -> u64 {
    limiter.policies().limits().next().unwrap().capacity()
}

/// Waits (at most `within`) until `limiter` applies a limit of `expected`.
async fn applied(limiter: &Limiter, expected: u64, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    while capacity(limiter) != expected {
        assert!(
            start.elapsed() < within,
            "{what}: still {} after {within:?}, expected {expected}",
            capacity(limiter)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn limiter_from(path: &Path) -> Limiter {
    Limiter::builder()
        .policies(Policies::from_file(path).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_file_written_in_place_or_renamed_over_is_applied() {
    let dir = TempDir::new("watch-file");
    let path = dir.join("limits.toml");
    std::fs::write(&path, rules(5)).unwrap();
    let limiter = limiter_from(&path);
    let watcher = PolicyWatcher::new(limiter.clone(), &path).unwrap();
    assert_eq!(watcher.path(), path);

    std::fs::write(&path, rules(6)).unwrap();
    applied(&limiter, 6, WITHIN, "written in place").await;
    replace(&path, &rules(7));
    applied(&limiter, 7, WITHIN, "renamed over").await;
    // A subject made before follows the new limit.
    let a = limiter.subject("c", Target::rule("a")).unwrap();
    assert_eq!(limiter.peek(&a, 1).await.unwrap()[0].limit, 7);

    // A bad file keeps the limit in force; the next good one is applied.
    replace(
        &path,
        "[[rules]]\nname = \"a\"\npath = \"/a\"\nlimits = [{ name = \"w\", capacity = 0, period = \"1m\" }]\n",
    );
    let error = watcher.reload().unwrap_err().to_string();
    assert!(
        error.contains("limits.toml") && error.contains("\"a\"") && error.contains("capacity"),
        "{error}"
    );
    assert_eq!(capacity(&limiter), 7);
    replace(&path, &rules(8));
    applied(&limiter, 8, WITHIN, "good again").await;

    // Dropped: no longer watched. (Reloaded by hand, the file still applies.)
    drop(watcher);
    replace(&path, &rules(9));
    let watcher = PolicyWatcher::new(limiter.clone(), &path).unwrap();
    assert_eq!(watcher.reload().unwrap(), 1);
    assert_eq!(capacity(&limiter), 9);
}

#[tokio::test]
async fn a_swapped_directory_link_and_a_configmap_update_are_applied() {
    // /dir/current -> v1, the file is /dir/current/limits.toml.
    let dir = TempDir::new("watch-link");
    for (version, capacity) in [("v1", 5), ("v2", 6)] {
        std::fs::create_dir(dir.join(version)).unwrap();
        std::fs::write(dir.join(version).join("limits.toml"), rules(capacity)).unwrap();
    }
    let current = dir.join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let path = current.join("limits.toml");
    let limiter = limiter_from(&path);
    let _watcher = PolicyWatcher::new(limiter.clone(), &path).unwrap();
    swap_link("v2", &current);
    applied(&limiter, 6, WITHIN, "directory link swapped").await;
    // And back, through the directory now watched.
    swap_link("v1", &current);
    applied(&limiter, 5, WITHIN, "swapped back").await;

    // A ConfigMap volume: limits.toml -> ..data/limits.toml, ..data -> ..<timestamp>.
    let volume = TempDir::new("watch-configmap");
    std::fs::create_dir(volume.join("..2026_12_05_a")).unwrap();
    std::fs::write(volume.join("..2026_12_05_a/limits.toml"), rules(10)).unwrap();
    std::os::unix::fs::symlink("..2026_12_05_a", volume.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/limits.toml", volume.join("limits.toml")).unwrap();
    let path = volume.join("limits.toml");
    let limiter = limiter_from(&path);
    let _watcher = PolicyWatcher::new(limiter.clone(), &path).unwrap();
    for (round, capacity) in [("b", 11), ("c", 12)] {
        let version = format!("..2026_12_05_{round}");
        std::fs::create_dir(volume.join(&version)).unwrap();
        std::fs::write(volume.join(&version).join("limits.toml"), rules(capacity)).unwrap();
        swap_link(&version, &volume.join("..data"));
        applied(&limiter, capacity, WITHIN, "ConfigMap updated").await;
    }
}

/// A tier of a policy file: rule `a` with a fixed window of `capacity` a minute.
fn tier(name: &str, capacity: u64) -> String {
    format!(
        "[[tiers.{name}.rules]]\nname = \"a\"\npath = \"/a\"\n\
         limits = [{{ name = \"w\", capacity = {capacity}, period = \"1m\", algorithm = \"fixed_window\" }}]\n"
    )
}

#[tokio::test]
async fn tiers_come_and_go_with_the_file() {
    let dir = TempDir::new("watch-tiers");
    let path = dir.join("tiers.toml");
    std::fs::write(&path, tier("free", 1) + &tier("pro", 2)).unwrap();
    let limiter = limiter_from(&path);
    let watcher = PolicyWatcher::new(limiter.clone(), &path).unwrap();
    let pro = limiter
        .tiered_subject("pro", "p", Target::rule("a"))
        .unwrap();
    replace(&path, &(tier("free", 1) + &tier("team", 3)));
    let start = Instant::now();
    while limiter.policies().tiers().collect::<Vec<_>>() != ["free", "team"] {
        assert!(start.elapsed() < WITHIN, "{:?}", limiter.policies());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let team = limiter
        .tiered_subject("team", "t", Target::rule("a"))
        .unwrap();
    assert_eq!(limiter.peek(&team, 1).await.unwrap()[0].limit, 3);
    assert!(
        !limiter.take(&pro, 1).await.is_allowed(),
        "the pro tier is gone"
    );
    // An untiered file for tiered policies is refused, naming `tiers`.
    replace(&path, &rules(4));
    let error = watcher.reload().unwrap_err().to_string();
    assert!(error.contains("tiers"), "{error}");
    assert_eq!(limiter.policies().tiers().count(), 2);
}

/// The value of `series` in a Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `q` of rule `a`'s limit as the server reports it in `RateLimit-Policy`.
async fn reported(client: &HttpClient, server: &Instance, key: &[u8]) -> Option<u64> {
    let reply = client.get(server.addr, "/a", Some(key)).await;
    let policy = reply.header("ratelimit-policy")?;
    policy.split(";q=").nth(1)?.split(';').next()?.parse().ok()
}

/// Waits until the server's log has `needle` `count` times (at most `within`).
fn logged(server: &Instance, needle: &str, count: usize, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let log = server.log();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            start.elapsed() < within,
            "no {needle:?} x{count} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reloads_its_file_while_a_client_sends() {
    let redis = RedisServer::start();
    // The file is reached through a symlinked directory: current -> v1.
    let dir = TempDir::new("watch-server");
    std::fs::create_dir(dir.join("v1")).unwrap();
    std::os::unix::fs::symlink("v1", dir.join("current")).unwrap();
    let path = dir.join("current").join("limits.toml");
    std::fs::write(&path, rules(50)).unwrap();
    let file = path.to_str().unwrap();
    let server = Instance::start(&[("REDIS_URL", &redis.url()), ("RATE_LIMIT_CONFIG", file)]);
    let client = HttpClient::new();
    assert_eq!(reported(&client, &server, b"k").await, Some(50));
    let metrics = || async { client.get(server.addr, "/metrics", None).await.body };
    let applied = r#"tollgate_policy_reloads_total{outcome="applied"}"#;
    let rejected = r#"tollgate_policy_reloads_total{outcome="rejected"}"#;
    let loaded_before = metric(
        &metrics().await,
        "tollgate_policies_loaded_timestamp_seconds",
    );
    assert!(loaded_before > 1.7e9, "{loaded_before}");

    // A new capacity, seen by a client sending all along within a second of the change.
    replace(&path, &rules(60));
    let changed = Instant::now();
    while reported(&client, &server, b"k").await != Some(60) {
        assert!(changed.elapsed() < WITHIN, "not applied within {WITHIN:?}");
    }
    let log = logged(&server, "policies reloaded from", 1, WITHIN);
    assert!(
        log.contains(&format!("policies reloaded from {file}: 1 rules")),
        "{log}"
    );
    let text = metrics().await;
    assert_eq!(metric(&text, applied), 1.0, "{text}");
    assert!(metric(&text, "tollgate_policies_loaded_timestamp_seconds") >= loaded_before);

    // A bad file: the old limit stays, the error (file, rule, field) is logged once, counted.
    let bad = rules(60).replace("period = \"1m\"", "period = \"soon\"");
    replace(&path, &bad);
    let log = logged(&server, "policies not reloaded", 1, WITHIN);
    let line = log
        .lines()
        .find(|l| l.contains("policies not reloaded"))
        .unwrap();
    assert!(
        line.contains(file) && line.contains("\"a\"") && line.contains("period"),
        "{line}"
    );
    assert_eq!(reported(&client, &server, b"k").await, Some(60));
    assert_eq!(metric(&metrics().await, rejected), 1.0);

    // Several writes in quick succession apply once: the last.
    for capacity in 70..75 {
        replace(&path, &rules(capacity));
    }
    let changed = Instant::now();
    while reported(&client, &server, b"k").await != Some(74) {
        assert!(changed.elapsed() < 2 * WITHIN, "the last write not applied");
    }
    assert_eq!(metric(&metrics().await, applied), 2.0);
    assert_eq!(server.log().matches("policies not reloaded").count(), 1);

    // SIGHUP reads the file again, unchanged or not.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    logged(&server, "policies reloaded from", 3, WITHIN);
    assert_eq!(metric(&metrics().await, applied), 3.0);
    assert_eq!(reported(&client, &server, b"k").await, Some(74));

    // The directory link swapped to a new version.
    std::fs::create_dir(dir.join("v2")).unwrap();
    std::fs::write(dir.join("v2").join("limits.toml"), rules(80)).unwrap();
    swap_link("v2", &dir.join("current"));
    let changed = Instant::now();
    while reported(&client, &server, b"k").await != Some(80) {
        assert!(
            changed.elapsed() < WITHIN,
            "the swap not applied within {WITHIN:?}"
        );
    }
    assert_eq!(metric(&metrics().await, applied), 4.0);
}

/// The request's tier: its `X-Tier` header.
fn tier_header(parts: &Parts) -> Result<&str, Refusal> {
    parts
        .headers
        .get("x-tier")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "X-Tier is required"))
}

/// A layer with tiers from a watched file, on a real Redis, through a real server: a tier
/// gained answers with its limit, a tier lost is refused as unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_gains_and_loses_tiers_from_its_file() {
    let redis = RedisServer::start();
    let dir = TempDir::new("watch-layer-tiers");
    let path = dir.join("tiers.toml");
    std::fs::write(&path, tier("free", 1) + &tier("pro", 2)).unwrap();
    let limiter = Limiter::builder()
        .store(RedisStore::open(&redis.url()).unwrap())
        .policies(Policies::from_file(&path).unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let _watcher = PolicyWatcher::new(limiter.clone(), &path).unwrap();
    let layer = TollgateLayer::builder()
        .client_extractor(ApiKey::default())
        .limiter(limiter)
        .tier_extractor(tier_fn(tier_header))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a", get(|| async { "ok" }))
        .layer(layer);
    let server = TestServer::start(app).await;
    let client = HttpClient::new();
    let ask = |tier: &'static str| {
        let client = client.clone();
        let addr = server.addr;
        async move {
            let headers = [("x-api-key", "k"), ("x-tier", tier)];
            client.request(addr, "GET", "/a", &headers).await
        }
    };
    let pro = ask("pro").await;
    assert_eq!(pro.status, 200);
    assert!(
        pro.header("ratelimit-policy").unwrap().contains("q=2"),
        "{pro:?}"
    );
    assert_eq!(ask("team").await.status, StatusCode::FORBIDDEN);

    replace(&path, &(tier("free", 1) + &tier("team", 3)));
    let changed = Instant::now();
    let team = loop {
        let reply = ask("team").await;
        if reply.status == 200 {
            break reply;
        }
        assert!(
            changed.elapsed() < WITHIN,
            "the team tier not applied: {reply:?}"
        );
    };
    assert!(
        team.header("ratelimit-policy").unwrap().contains("q=3"),
        "{team:?}"
    );
    let pro = ask("pro").await;
    assert_eq!(pro.status, StatusCode::FORBIDDEN, "{pro:?}");
    assert!(pro.body.contains("unknown tier"), "{}", pro.body);
}
