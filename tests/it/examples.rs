//! The examples as a user runs them, through real clients: the `server` (two instances on one
//! Redis, the unlimited health check, bad input, Redis failing, bad settings, policies from a
//! file, costs), `axum` (two layers), `hyper` (client IPs and proxies) and `tonic` (gRPC
//! status codes and RetryInfo).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::harness::{HttpClient, RedisServer};

#[path = "../../examples/common/helloworld.rs"]
mod tollgate_examples_helloworld;

/// `cargo test` builds the examples next to the test binaries.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

pub struct Instance {
    child: Child,
    pub addr: SocketAddr,
    /// Where the instance's log (stderr) goes.
    log: PathBuf,
}

impl Instance {
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::example("server", env)
    }

    pub fn example(name: &str, env: &[(&str, &str)]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "tollgate-{name}-{}-{}.log",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut child = Command::new(binary(name))
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env_remove("REDIS_URL")
            .env_remove("FAIL_MODE")
            .env_remove("RATE_LIMIT_CONFIG")
            .env_remove("TRUSTED_PROXIES")
            // Not about timeouts: room for a busy machine. Tests about them set their own.
            .env("STORE_TIMEOUT_MS", "2000")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("listening on ") {
                let addr = addr.parse().unwrap();
                return Self { child, addr, log };
            }
        }
        panic!("the server exited without listening: {:?}", child.wait());
    }
}

impl Instance {
    /// The instance's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the instance has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_instances_share_one_redis() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let a = Instance::start(&[("REDIS_URL", &url)]);
    let b = Instance::start(&[("REDIS_URL", &url), ("FAIL_MODE", "closed")]);
    let client = HttpClient::new();

    // Alternate between the instances until both have limited. Exactly 10 requests are
    // allowed by Redis between them. (A request slower than the server's 50 ms timeout
    // follows the fail mode instead: 200 without RateLimit fields, or 503; it takes nothing
    // it reports, though Redis may still run it later.)
    let (mut allowed, mut limited, mut failed, mut sent) = (0, 0, 0, 0);
    while limited < 2 {
        let addr = if sent % 2 == 0 { a.addr } else { b.addr };
        let reply = client.get(addr, "/hello", Some(b"alice")).await;
        match (reply.status.as_u16(), reply.header("ratelimit")) {
            (200, Some(_)) => allowed += 1,
            (429, Some(_)) => limited += 1,
            (200 | 503, None) => failed += 1,
            _ => panic!("{reply:?}"),
        }
        sent += 1;
        assert!(sent < 100, "{allowed} allowed, {limited} limited");
    }
    assert!(
        allowed <= 10 && allowed + failed >= 10,
        "{allowed} allowed, {failed} failed"
    );
    let reply = client.get(a.addr, "/hello", Some(b"bob")).await;
    assert_eq!(reply.json()["path"], "/hello");
    assert_eq!(client.get(b.addr, "/hello", None).await.status, 400);
    for _ in 0..20 {
        assert_eq!(client.get(a.addr, "/healthz", None).await.status, 200);
    }

    // Redis gone: instance a fails open, instance b fails closed. (Alice is still denied
    // from the deny cache: Redis said when she may come back.)
    redis.kill();
    assert_eq!(
        client.get(a.addr, "/hello", Some(b"carol")).await.status,
        200
    );
    assert_eq!(
        client.get(a.addr, "/hello", Some(b"alice")).await.status,
        429
    );
    assert_eq!(
        client.get(b.addr, "/hello", Some(b"carol")).await.status,
        503
    );
}

#[tokio::test]
async fn without_redis_limits_are_per_instance() {
    let a = Instance::start(&[]);
    let client = HttpClient::new();
    for _ in 0..10 {
        assert_eq!(client.get(a.addr, "/x", Some(b"k")).await.status, 200);
    }
    assert_eq!(client.get(a.addr, "/x", Some(b"k")).await.status, 429);
}

/// Settings (environment variables) and the words the error must say.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn bad_settings_exit_non_zero_naming_them() {
    let cases: &[Case<'_>] = &[
        (
            &[("FAIL_MODE", "sideways")],
            &["FAIL_MODE=sideways: must be \"open\", \"closed\" or \"local\""],
        ),
        (
            &[("FAIL_MODE", "local"), ("LOCAL_SHARE", "2")],
            &["LOCAL_SHARE=2: must be more than 0 and at most 1"],
        ),
        (&[("LOCAL_SHARE", "half")], &["LOCAL_SHARE=half: "]),
        (
            &[("STORE_TIMEOUT_MS", "0")],
            &["STORE_TIMEOUT_MS=0: must be greater than zero"],
        ),
        (&[("MAX_IN_FLIGHT", "-1")], &["MAX_IN_FLIGHT=-1: "]),
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:1/"),
                ("REDIS_MODE", "ring"),
            ],
            &["REDIS_MODE", "ring"],
        ),
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:1/"),
                ("REDIS_MODE", "sentinel"),
            ],
            &["REDIS_SENTINEL_MASTER"],
        ),
    ];
    for (env, words) in cases {
        let output = Command::new(binary("server"))
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env_remove("REDIS_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in *words {
            assert!(stderr.contains(word), "{env:?}: {stderr}");
        }
        // Each variable is named once.
        for (name, _) in env.iter() {
            assert!(stderr.matches(name).count() <= 1, "{env:?}: {stderr}");
        }
    }
}

fn manifest(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn policies_from_the_config_file_in_memory() {
    policies_from_the_config_file(None).await;
}

#[tokio::test]
async fn policies_from_the_config_file_in_redis() {
    let redis = RedisServer::start();
    policies_from_the_config_file(Some(&redis.url())).await;
}

async fn policies_from_the_config_file(redis: Option<&str>) {
    let config = manifest("examples/rate_limits.toml");
    let mut env = vec![("RATE_LIMIT_CONFIG", config.as_str())];
    env.extend(redis.map(|url| ("REDIS_URL", url)));
    let s = Instance::start(&env);
    let client = HttpClient::new();
    let login = || client.request(s.addr, "POST", "/login", &[("x-api-key", "alice")]);
    // The rule limits POST /login (the server answers only GET, after the limit).
    for remaining in (1..5).rev() {
        let reply = login().await;
        assert_eq!(reply.status, 405, "{reply:?}");
        let expected = format!("\"burst\";r={remaining}");
        assert_eq!(reply.header("ratelimit"), Some(expected.as_str()));
    }
    let reply = login().await;
    assert_eq!(reply.status, 405);
    let reply = login().await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"burst\";q=5;w=60, \"daily\";q=100;w=86400")
    );
    assert!(
        reply
            .header("ratelimit")
            .unwrap()
            .starts_with("\"burst\";r=0;t=")
    );
    // GET /login is not under the rule: the default applies.
    let reply = client.get(s.addr, "/login", Some(b"alice")).await;
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=9"));
    // The other algorithms, chosen in the file: a sliding log of 3 a minute over every export,
    // and a sliding window counter of 4 a minute.
    for (path, name, capacity) in [("/exports/a", "exports", 3), ("/reports/b", "reports", 4)] {
        for remaining in (0..capacity).rev() {
            let reply = client.get(s.addr, path, Some(b"alice")).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            let r = reply.header("ratelimit").unwrap();
            assert!(r.contains(&format!(";r={remaining}")), "{r}");
        }
        let reply = client.get(s.addr, path, Some(b"alice")).await;
        assert_eq!(reply.status, 429, "{reply:?}");
        let policy = format!("\"{name}\";q={capacity};w=60");
        assert_eq!(reply.header("ratelimit-policy"), Some(policy.as_str()));
        // The whole capacity was spent just now: nothing comes back for most of a minute (the
        // counter's estimate waits for the next window at least).
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=120).contains(&retry), "{retry}");
    }
    let retry: u64 = client
        .get(s.addr, "/exports/other", Some(b"alice"))
        .await
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&retry), "{retry}");
    // The search rule is in shadow mode: reported, never refused, one budget for all paths.
    let mut last = None;
    for i in 0..25 {
        let reply = client
            .get(s.addr, &format!("/search/{i}"), Some(b"alice"))
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        last = reply.header("ratelimit").map(str::to_owned);
    }
    assert!(last.unwrap().starts_with("\"search\";r=0;t="));
}

#[test]
fn a_bad_config_file_exits_non_zero_naming_the_rule_and_field() {
    let dir = std::env::temp_dir().join(format!("tollgate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[[rules]]\nname = \"login\"\npath = \"/login\"\nlimits = [{ name = \"b\", capacity = 0, period = \"1m\" }]\n",
    )
    .unwrap();
    let output = Command::new(binary("server"))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RATE_LIMIT_CONFIG", &file)
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("RATE_LIMIT_CONFIG")
            && stderr.contains("rule \"login\"")
            && stderr.contains("capacity"),
        "{stderr}"
    );
}

#[tokio::test]
async fn weighted_costs() {
    let s = Instance::start(&[]);
    let client = HttpClient::new();
    let (client, addr) = (&client, s.addr);
    let with_cost = |cost: &'static str| async move {
        let headers = [("x-api-key", "k"), ("x-ratelimit-cost", cost)];
        client.request(addr, "GET", "/x", &headers).await
    };
    assert_eq!(
        with_cost("4").await.header("ratelimit"),
        Some("\"default\";r=6")
    );
    // More than the capacity can never pass: 413, no Retry-After, nothing taken.
    let reply = with_cost("11").await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(reply.header("retry-after"), None);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("never pass")
    );
    let reply = with_cost("zero").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("x-ratelimit-cost")
    );
    // Six left: a cost of 7 waits, and takes nothing.
    let reply = with_cost("7").await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        with_cost("6").await.header("ratelimit").map(|v| &v[..15]),
        Some("\"default\";r=0;t")
    );
}

#[tokio::test]
async fn axum_router_wide_and_per_route_layers() {
    let s = Instance::example("axum", &[]);
    let client = HttpClient::new();
    // Router-wide, per IP: no key needed.
    for _ in 0..10 {
        assert_eq!(client.get(s.addr, "/hello", None).await.status, 200);
    }
    assert_eq!(client.get(s.addr, "/hello", None).await.status, 429);
    // Per route, per key and weighted, under two limits; the router-wide limit applies too.
    let (client, addr) = (&client, s.addr);
    let generate = |key: &'static str, cost: &'static str| async move {
        let headers = [("x-api-key", key), ("x-ratelimit-cost", cost)];
        client.request(addr, "POST", "/generate", &headers).await
    };
    let reply = generate("alice", "40").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Both layers report, the inner first: the fields are lists.
    assert_eq!(
        reply.header_all("ratelimit"),
        ["\"minute\";r=60", "\"default\";r=9"]
    );
    assert_eq!(
        reply.header_all("ratelimit-policy"),
        [
            "\"minute\";q=100;w=60, \"hour\";q=1000;w=3600",
            "\"default\";q=10;w=10"
        ]
    );
    assert_eq!(generate("alice", "70").await.status, 429);
    assert_eq!(generate("alice", "101").await.status, 413);
    let reply = client.request(s.addr, "POST", "/generate", &[]).await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn hyper_ignores_forwarding_headers_from_untrusted_peers() {
    let s = Instance::example("hyper", &[("TRUSTED_PROXIES", "10.0.0.0/8")]);
    let client = HttpClient::new();
    // The test client (127.0.0.1) is no trusted proxy: spoofed headers change nothing.
    for i in 0..10 {
        let spoof = format!("198.51.100.{i}");
        let reply = client
            .request(s.addr, "GET", "/", &[("x-forwarded-for", &spoof)])
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let reply = client
        .request(s.addr, "GET", "/", &[("x-forwarded-for", "198.51.100.99")])
        .await;
    assert_eq!(reply.status, 429);
}

#[tokio::test]
async fn hyper_behind_a_trusted_proxy_limits_each_forwarded_client() {
    let s = Instance::example("hyper", &[("TRUSTED_PROXIES", "127.0.0.1")]);
    let client = HttpClient::new();
    let (client, addr) = (&client, s.addr);
    let from = |xff: &'static str| async move {
        client
            .request(addr, "GET", "/", &[("x-forwarded-for", xff)])
            .await
    };
    for _ in 0..10 {
        assert_eq!(from("1.1.1.1, 203.0.113.1").await.status, 200);
    }
    // The left entry is the client's own claim; the proxy's entry decides.
    assert_eq!(from("9.9.9.9, 203.0.113.1").await.status, 429);
    assert_eq!(from("203.0.113.2").await.status, 200);
    // IPv6 clients share their /64.
    for _ in 0..10 {
        assert_eq!(from("2001:db8:1:2::1").await.status, 200);
    }
    assert_eq!(from("2001:db8:1:2:ffff::9").await.status, 429);
    assert_eq!(from("2001:db8:1:3::1").await.status, 200);
}

#[tokio::test]
async fn tonic_answers_the_grpc_way() {
    // The .proto shipped for grpcurl describes the method the server serves.
    let proto = std::fs::read_to_string(manifest("examples/helloworld.proto")).unwrap();
    let (package, rest) = tollgate_examples_helloworld::SAY_HELLO[1..]
        .split_once('.')
        .unwrap();
    let (service, method) = rest.split_once('/').unwrap();
    for line in [
        format!("package {package};"),
        format!("service {service} {{"),
        format!("rpc {method} (HelloRequest) returns (HelloReply);"),
    ] {
        assert!(
            proto.contains(&line),
            "{line:?} not in examples/helloworld.proto"
        );
    }
    use tollgate_examples_helloworld::say_hello;
    use tonic_types::StatusExt;

    let mut redis = RedisServer::start();
    let url = redis.url();
    let s = Instance::example("tonic", &[("REDIS_URL", &url), ("FAIL_MODE", "closed")]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for _ in 0..10 {
        let reply = say_hello(channel.clone(), "tollgate", Some("alice"))
            .await
            .unwrap();
        assert_eq!(reply.get_ref().message, "Hello tollgate!");
    }
    let status = say_hello(channel.clone(), "tollgate", Some("alice"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("rate limited"), "{status:?}");
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(
        delay > std::time::Duration::ZERO && delay <= std::time::Duration::from_secs(1),
        "{delay:?}"
    );

    let status = say_hello(channel.clone(), "tollgate", None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("x-api-key"), "{status:?}");

    redis.kill();
    let status = say_hello(channel.clone(), "tollgate", Some("bob"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// The direct example, as a user runs it: in memory, then on Redis with a password in its URL
/// (which it never prints). The same steps either way.
#[test]
fn the_direct_example_runs_in_memory_and_on_redis() {
    let redis = crate::harness::RedisServer::start();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut redis.conn())
        .unwrap();
    let url = format!("redis+unix://{}?pass=s3cret", redis.socket().display());
    let expected = [
        "message 5: delivered",
        "message 6: refused, retry in",
        "alice may send 0 more now",
        "after a reset alice may send 5",
        "job 1: reserved 400, used 120, 880 tokens left this hour",
        "job 3: 700 tokens refused",
        "job 4: reserved 400, used 0, 480 tokens left this hour",
    ];
    for redis_url in [None, Some(url.as_str())] {
        let mut command = Command::new(binary("direct"));
        command
            .env_remove("REDIS_URL")
            .env("STORE_TIMEOUT_MS", "2000");
        if let Some(url) = redis_url {
            command.env("REDIS_URL", url);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        for line in expected {
            assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
        }
        let store = if redis_url.is_some() {
            "store: Redis"
        } else {
            "store: in memory"
        };
        assert!(stdout.contains(store), "{stdout}");
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "{stdout}\n{stderr}"
        );
    }
}

/// One client sending made-up paths to the axum example is limited as on one endpoint: the
/// 404s share one bucket per client and method (10 at once, per IP).
#[tokio::test]
async fn made_up_paths_do_not_multiply_a_budget() {
    let s = Instance::example("axum", &[]);
    let client = HttpClient::new();
    let mut statuses = Vec::new();
    for i in 0..30 {
        statuses.push(
            client
                .get(s.addr, &format!("/nope-{i}"), None)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses[..10], [404; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 20], "{statuses:?}");
    // A real route is an endpoint of its own.
    assert_eq!(client.get(s.addr, "/hello", None).await.status, 200);
}
