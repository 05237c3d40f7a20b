//! The example server (`examples/server.rs`) as a user runs it: two instances on one Redis,
//! the unlimited health check, bad input, Redis failing, and a bad setting.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::harness::{HttpClient, RedisServer};

/// `cargo test` builds the examples next to the test binaries.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/server");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env_remove("REDIS_URL")
            .env_remove("FAIL_MODE")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("listening on ") {
                let addr = addr.parse().unwrap();
                return Self { child, addr };
            }
        }
        panic!("the server exited without listening: {:?}", child.wait());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
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

    let mut statuses = Vec::new();
    for i in 0..12 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        statuses.push(
            client
                .get(addr, "/hello", Some(b"alice"))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [[200; 10].as_slice(), &[429, 429]].concat());
    let reply = client.get(a.addr, "/hello", Some(b"bob")).await;
    assert_eq!(reply.json()["path"], "/hello");
    assert_eq!(client.get(b.addr, "/hello", None).await.status, 400);
    for _ in 0..20 {
        assert_eq!(client.get(a.addr, "/healthz", None).await.status, 200);
    }

    // Redis gone: instance a fails open, instance b fails closed.
    redis.kill();
    assert_eq!(
        client.get(a.addr, "/hello", Some(b"alice")).await.status,
        200
    );
    assert_eq!(
        client.get(b.addr, "/hello", Some(b"alice")).await.status,
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

#[test]
fn a_bad_fail_mode_exits_non_zero_naming_it() {
    let output = Command::new(binary())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("FAIL_MODE", "sideways")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FAIL_MODE") && stderr.contains("sideways"),
        "{stderr}"
    );
}
