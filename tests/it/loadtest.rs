//! The `loadtest` example as a user runs it, against the example `server` (in memory: 10 at
//! once per API key and endpoint, 10 more per 10 s): its counts add up and respect the limit,
//! `--check-limit` catches a limit the server does not keep, and bad arguments stop it before
//! it sends anything.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::examples::{Instance, binary};

/// Runs loadtest with `args`, killing it and failing the test if it runs past `limit`.
async fn loadtest(args: &[&str], limit: Duration) -> Output {
    let child = tokio::process::Command::new(binary("loadtest"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("loadtest {args:?} ran past {limit:?}"))
        .unwrap()
}

/// Runs loadtest for `duration` with 8 clients over 5 keys, checking `limit`, against the
/// example server (in memory: 10 at once, 10 back per 10 s, per key and endpoint).
async fn against_the_server(duration: &str, limit: &str) -> Output {
    let server = Instance::start(&[]);
    let url = format!("http://{}/hello", server.addr);
    let args = [
        "--url",
        &url,
        "--clients",
        "8",
        "--duration",
        duration,
        "--keys",
        "5",
        "--check-limit",
        limit,
    ];
    loadtest(&args, Duration::from_secs(30)).await
}

/// Stdout's one line, parsed.
fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]))
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is no count: {report}"))
}

#[tokio::test]
async fn counts_add_up_and_keep_within_the_servers_limit() {
    let output = against_the_server("2s", "10/10").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let r = report(&output);
    let [requests, allowed, limited, unlimited, unavailable, errors] = [
        "requests",
        "allowed",
        "limited",
        "unlimited",
        "unavailable",
        "errors",
    ]
    .map(|field| count(&r, field));
    assert!(requests > 0, "{r}");
    assert_eq!(
        requests,
        allowed + limited + unlimited + unavailable + errors,
        "{r}"
    );
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!((2.0..7.5).contains(&elapsed), "{r}");
    // Five keys, each a full bucket of 10 and one token back per second.
    assert!(allowed >= 50, "{r}");
    assert!(
        allowed as f64 <= 5.0 * (10.0 + 10.0 * elapsed / 10.0),
        "{r}"
    );
    assert!(limited > 0, "{r}");
    assert_eq!((errors, unlimited, unavailable), (0, 0, 0), "{r}");
    assert_eq!(count(&r, "keys_over_limit"), 0, "{r}");
    let rps = r["rps"].as_f64().unwrap();
    // elapsed_s is rounded to the millisecond.
    assert!((rps * elapsed / requests as f64 - 1.0).abs() < 0.01, "{r}");
    let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 <= 5000.0, "{r}");
    // A progress line each second, on stderr.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("t=") && l.contains("s requests=") && l.contains(" rps=")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_limit_stricter_than_the_servers_fails_the_check() {
    let output = against_the_server("1s", "1/1000").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // Every key got its full bucket of 10, over 1 + 1·elapsed/1000.
    let r = report(&output);
    assert_eq!(count(&r, "keys_over_limit"), 5, "{r}");
    assert!(count(&r, "allowed") >= 50, "{r}");
    for key in 0..5 {
        let named = format!("key-{key} was allowed ");
        assert!(stderr.contains(&named), "{stderr}");
    }
}

#[tokio::test]
async fn bad_arguments_exit_2_before_sending_and_say_why() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--url", "http://192.0.2.1/"], &["192.0.2.1", "loopback"]),
        (
            &["--url", "https://127.0.0.1/"],
            &["https://127.0.0.1/", "http://"],
        ),
        (
            &["--url", "http://example.com/"],
            &["example.com", "loopback"],
        ),
        (
            &["--url", "http://127.0.0.1:1/", "--clients", "0"],
            &["--clients", "\"0\""],
        ),
        (
            &["--url", "http://127.0.0.1:1/", "--duration", "11m"],
            &["--duration"],
        ),
        (
            &["--url", "http://127.0.0.1:1/", "--check-limit", "10"],
            &["--check-limit"],
        ),
        (&["--clients", "4"], &["--url is required"]),
        (&["--url", "http://127.0.0.1:1/", "--bogus"], &["--bogus"]),
        // A password in a URL is never shown.
        (
            &["--url", "http://u:s3cret@192.0.2.1/?key=s3cret"],
            &["http://***@192.0.2.1/?***", "loopback"],
        ),
        (&["--url", "http://u:s3cret@[bad"], &["http://***@[bad"]),
    ];
    for (args, says) in cases {
        // Refused before any traffic: exit code 2 well within the bound (a run would take
        // its whole duration and exit 0 or 1).
        let output = loadtest(args, Duration::from_secs(10)).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
        for word in *says {
            assert!(stderr.contains(word), "{args:?}: {word:?} not in {stderr}");
        }
        assert!(!stderr.contains("s3cret"), "{args:?}: {stderr}");
    }
}

/// `--redis-url`: with two example servers on one Redis, `redis_calls` counts every script
/// call. Without leases, one per request; with the limit leased, far fewer, and no key over
/// its limit either way. A `--redis-url` off loopback stops the run, its password hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_calls_counts_script_calls_and_leases_cut_them() {
    let redis = crate::harness::RedisServer::start();
    let dir = std::env::temp_dir().join(format!("tollgate-lease-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = redis.url();
    for leased in [false, true] {
        // Far above what the test offers: nothing is limited.
        let file = dir.join(format!("leased-{leased}.toml"));
        std::fs::write(
            &file,
            format!(
                "[[default.limits]]\nname = \"hot\"\ncapacity = 1000000\nperiod = \"1s\"\nlease = {leased}\n"
            ),
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let env = [("REDIS_URL", url.as_str()), ("RATE_LIMIT_CONFIG", file)];
        let servers = [Instance::start(&env), Instance::start(&env)];
        let urls = servers.each_ref().map(|s| format!("http://{}/hot", s.addr));
        let args = [
            "--url",
            &urls[0],
            "--url",
            &urls[1],
            "--clients",
            "8",
            "--duration",
            "2s",
            "--keys",
            "1",
            "--check-limit",
            "1000000/1",
            "--redis-url",
            &url,
        ];
        let output = loadtest(&args, Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let r = report(&output);
        let (allowed, calls) = (count(&r, "allowed"), count(&r, "redis_calls"));
        assert_eq!(count(&r, "requests"), allowed, "{r}");
        assert!(allowed > 100, "{r}");
        if leased {
            assert!(calls * 4 < allowed, "leased: {r}");
        } else {
            assert_eq!(calls, allowed, "one script call per decision: {r}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // Without --redis-url, no count.
    let server = Instance::start(&[]);
    let target = format!("http://{}/hello", server.addr);
    let output = loadtest(
        &["--url", &target, "--duration", "500ms"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(output.status.code(), Some(0));
    assert!(report(&output).get("redis_calls").is_none());

    for (bad, why) in [
        (
            "redis://user:s3cret@10.1.2.3:6379/",
            "only a loopback address",
        ),
        ("http://127.0.0.1:6379/", "not a Redis URL"),
    ] {
        let args = ["--url", &target, "--duration", "500ms", "--redis-url", bad];
        let output = loadtest(&args, Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(why) && !stderr.contains("s3cret"),
            "{stderr}"
        );
        assert!(output.stdout.is_empty());
    }
}
