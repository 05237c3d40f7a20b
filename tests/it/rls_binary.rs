//! `tollgate-rls` started as an operator starts envoyproxy/ratelimit: environment settings
//! only, a runtime directory, a real Redis; asked through Envoy's gRPC client types, `/json`,
//! the health services and the debug port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

use crate::harness::{HttpClient, RedisServer, TempDir, swap_link};

/// A running `tollgate-rls`, stopped on drop.
pub(crate) struct Rls {
    child: Child,
    grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    debug: SocketAddr,
    log: PathBuf,
}

impl Rls {
    pub(crate) fn start(env: &[(&str, &str)]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "tollgate-rls-{}-{}.log",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-rls"))
            .env_clear()
            .envs([
                ("HOST", "127.0.0.1"),
                ("PORT", "0"),
                ("GRPC_HOST", "127.0.0.1"),
                ("GRPC_PORT", "0"),
                ("DEBUG_HOST", "127.0.0.1"),
                ("DEBUG_PORT", "0"),
                ("LOG_LEVEL", "info"),
            ])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Read on a thread (which drains stdout to its end), so that a binary that neither
        // listens nor exits fails the test within a deadline instead of hanging it.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("Listening for ") {
                    let addr = rest.split('\'').nth(1).unwrap().parse().unwrap();
                    let _ = tx.send(addr);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut addrs = Vec::new();
        while addrs.len() < 3 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(addr) => addrs.push(addr),
                Err(_) => break,
            }
        }
        if addrs.len() < 3 {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(
            addrs.len(),
            3,
            "tollgate-rls exited or did not listen within 30 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self {
            child,
            grpc: addrs[0],
            http: addrs[1],
            debug: addrs[2],
            log,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A runtime root of this test's own: `<dir>/current -> v1`, the files in
/// `v1/ratelimit/config/`. Removed on drop.
pub(crate) struct RuntimeDir(TempDir);

impl RuntimeDir {
    pub(crate) fn new(config: &str) -> Self {
        let runtime = Self(TempDir::new("rls-runtime"));
        runtime.version("v1", config);
        std::os::unix::fs::symlink("v1", runtime.root()).unwrap();
        runtime
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.0.join("current")
    }

    pub(crate) fn version(&self, name: &str, config: &str) {
        let dir = self.0.join(name).join("ratelimit/config");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("limits.yaml"), config).unwrap();
    }

    /// Swaps `current` to `name`.
    fn swap(&self, name: &str) {
        swap_link(name, &self.root());
    }
}

pub(crate) const CONFIG: &str = "
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: hour, requests_per_unit: 5, name: per_ip }
";

fn request(value: &str) -> RateLimitRequest {
    let descriptor = crate::rls::descriptor(&[("remote_address", value)]);
    crate::rls::request("edge", vec![descriptor])
}

pub(crate) async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    value: &str,
) -> RateLimitResponse {
    client
        .should_rate_limit(request(value))
        .await
        .unwrap()
        .into_inner()
}

pub(crate) fn env<'a>(runtime: &'a Path, redis: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("RUNTIME_ROOT", runtime.to_str().unwrap()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("REDIS_SOCKET_TYPE", "unix"),
        ("REDIS_URL", redis.to_str().unwrap()),
        ("CACHE_KEY_PREFIX", "rl_"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_limits_and_the_peer_s_counters() {
    let redis = RedisServer::start();
    let runtime = RuntimeDir::new(CONFIG);
    let root = runtime.root();
    let socket = redis.socket();
    let one = Rls::start(&env(&root, &socket));
    let two = Rls::start(&env(&root, &socket));
    // The peer left 2 hits this hour for 10.0.0.1, under its key format.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = format!("rl_edge_remote_address_10.0.0.1_{}", now / 3600 * 3600);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(2)
        .query(&mut redis.conn())
        .unwrap();
    let (mut a, mut b) = (one.client().await, two.client().await);
    let mut ok = 0;
    for i in 0..8 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        let reply = ask(client, "10.0.0.1").await;
        let status = &reply.statuses[0];
        if reply.overall_code == Code::Ok as i32 {
            ok += 1;
            assert_eq!(status.limit_remaining, 5 - 2 - ok);
        } else {
            assert_eq!(status.limit_remaining, 0);
        }
        assert_eq!(status.current_limit.as_ref().unwrap().name, "per_ip");
    }
    assert_eq!(ok, 3, "5 an hour, 2 taken by the peer");
    let count: u64 = redis::cmd("GET")
        .arg(&key)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(count, 10, "every hit counted, over or not");
    assert!(
        one.log().contains("Successfully loaded new configuration"),
        "{}",
        one.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_health_debug_and_a_root_swap() {
    let runtime = RuntimeDir::new(CONFIG);
    let root = runtime.root();
    let rls = Rls::start(&[
        ("RUNTIME_ROOT", root.to_str().unwrap()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("USE_STATSD", "true"),
    ]);
    let log = rls.log();
    assert!(log.contains("REDIS_URL is not set"), "{log}");
    assert!(
        log.contains("not supported and are ignored: USE_STATSD"),
        "{log}"
    );
    let http = HttpClient::new();
    let health = http.get(rls.http, "/healthcheck", None).await;
    assert_eq!((health.status.as_u16(), health.body.as_str()), (200, "OK"));
    let config = http.get(rls.debug, "/rlconfig", None).await.body;
    assert_eq!(
        config,
        "edge.remote_address: unit=HOUR requests_per_unit=5, shadow_mode: false, quota_mode: false\n"
    );
    // /json: 200 while within, 429 when over, 400 for what is not a request.
    let body = r#"{"domain":"edge","descriptors":[{"entries":[{"key":"remote_address","value":"a"}]}],"hitsAddend":4}"#;
    let post = |body: &'static str| post(rls.http, body);
    let within = post(body).await;
    assert_eq!(within.0, 200, "{}", within.1);
    let json: serde_json::Value = serde_json::from_str(&within.1).unwrap();
    assert_eq!(json["overallCode"], "OK");
    assert_eq!(json["statuses"][0]["limitRemaining"], 1);
    assert_eq!(json["statuses"][0]["currentLimit"]["unit"], "HOUR");
    assert_eq!(post(body).await.0, 429);
    let bad = post("{not json").await;
    assert_eq!((bad.0, bad.1.as_str()), (400, "Bad Request\n"));
    let metrics = http.get(rls.debug, "/metrics", None).await.body;
    assert!(
        metrics.contains(r#"tollgate_rls_hits_total{domain="edge",limit="edge.remote_address",outcome="over_limit"} 3"#),
        "{metrics}"
    );
    // A new root: applied within a second.
    runtime.version(
        "v2",
        &CONFIG.replace("requests_per_unit: 5", "requests_per_unit: 50"),
    );
    runtime.swap("v2");
    let start = Instant::now();
    while !http
        .get(rls.debug, "/rlconfig", None)
        .await
        .body
        .contains("requests_per_unit=50")
    {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the swap not applied"
        );
    }
    let mut client = rls.client().await;
    assert_eq!(ask(&mut client, "b").await.statuses[0].limit_remaining, 49);
    // The gRPC health service answers for `ratelimit`.
    let channel = Channel::from_shared(format!("http://{}", rls.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ratelimit".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_load_that_fails_leaves_the_service_up_without_a_configuration() {
    let runtime = RuntimeDir::new(
        "domain: edge\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight }\n",
    );
    let root = runtime.root();
    let rls = Rls::start(&[
        ("RUNTIME_ROOT", root.to_str().unwrap()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
    ]);
    let log = rls.log();
    assert!(
        log.contains("Error loading new configuration: config.limits.yaml: invalid rate limit unit 'fortnight'"),
        "{log}"
    );
    let mut client = rls.client().await;
    let error = client.should_rate_limit(request("a")).await.unwrap_err();
    assert_eq!(error.message(), "no rate limit configuration loaded");
    let health = HttpClient::new().get(rls.http, "/healthcheck", None).await;
    assert_eq!(health.status, 200);
    // A bad setting is an error at start, naming the variable.
    for (name, value) in [
        ("RUNTIME_WATCH_ROOT", "sometimes"),
        ("LOG_LEVEL", "loud"),
        ("REDIS_URL", "not a url at all"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tollgate-rls"))
            .env_clear()
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(name), "{stderr}");
    }
}

/// `POST http://addr/json` with `body`: the status and the body.
pub(crate) async fn post(addr: SocketAddr, body: &'static str) -> (u16, String) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::post(format!("http://{addr}/json"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}
