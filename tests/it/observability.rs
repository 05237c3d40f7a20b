//! Metrics, the live dashboard and the Grafana board, against the example server with a real
//! Redis that is healthy, then stopped.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::response::Html;
use axum::{Router, routing::get};

use crate::examples::Instance;
use crate::harness::{HttpClient, RedisServer, TestServer};

/// A Prometheus text scrape: `name{labels}` (labels as written) → value.
type Scrape = BTreeMap<String, f64>;

fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((normalize(series), value.parse().ok()?))
        })
        .collect()
}

/// Sorts a series' labels, as the dashboard does, so keys compare.
fn normalize(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape(client: &HttpClient, instance: &Instance) -> (String, Scrape) {
    let reply = client.get(instance.addr, "/metrics", None).await;
    assert_eq!(reply.status, 200);
    let scrape = parse(&reply.body);
    (reply.body, scrape)
}

fn value(scrape: &Scrape, series: &str) -> f64 {
    scrape.get(&normalize(series)).copied().unwrap_or(0.0)
}

fn decisions(scrape: &Scrape, outcome: &str) -> f64 {
    value(
        scrape,
        &format!("tollgate_decisions_total{{policy=\"default\",outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test]
async fn every_counter_moves_with_traffic_and_failures() {
    let redis = RedisServer::start();
    let url = redis.url();
    let timeout = ("STORE_TIMEOUT_MS", "50");
    let open = Instance::start(&[("REDIS_URL", &url), timeout]);
    let closed = Instance::start(&[("REDIS_URL", &url), ("FAIL_MODE", "closed"), timeout]);
    let client = HttpClient::new();
    for _ in 0..12 {
        client.get(open.addr, "/hello", Some(b"alice")).await;
    }
    client.get(open.addr, "/hello", None).await;
    let (_, s) = scrape(&client, &open).await;
    assert_eq!(decisions(&s, "allowed"), 10.0);
    assert_eq!(decisions(&s, "limited"), 2.0);
    assert_eq!(decisions(&s, "missing_identity"), 1.0);
    // Allowed with 2, 1 and 0 of 10 tokens left: 20% or less.
    assert_eq!(
        value(&s, "tollgate_near_limit_total{policy=\"default\"}"),
        3.0
    );
    // The second denial came from the deny cache, without a store call.
    assert_eq!(value(&s, "tollgate_store_duration_seconds_count"), 11.0);
    assert_eq!(value(&s, "tollgate_deny_cache_hits_total"), 1.0);
    assert!(value(&s, "tollgate_store_duration_seconds_sum") > 0.0);
    // Calls slower than 25 ms before the hang (none on an idle machine).
    let slow_before = value(&s, "tollgate_store_duration_seconds_bucket{le=\"+Inf\"}")
        - value(&s, "tollgate_store_duration_seconds_bucket{le=\"0.025\"}");

    redis.hang();
    for _ in 0..3 {
        client.get(open.addr, "/hello", Some(b"bob")).await;
        assert_eq!(
            client.get(closed.addr, "/hello", Some(b"bob")).await.status,
            503
        );
    }
    let (_, s) = scrape(&client, &open).await;
    assert_eq!(value(&s, "tollgate_fail_mode_total{mode=\"open\"}"), 3.0);
    assert_eq!(
        value(&s, "tollgate_store_errors_total{kind=\"timeout\"}"),
        3.0
    );
    assert_eq!(value(&s, "tollgate_store_duration_seconds_count"), 14.0);
    // One warning for the three failures within a second.
    let log = open.log();
    assert_eq!(log.matches("rate-limit store failed").count(), 1, "{log}");
    assert!(
        log.contains("kind=\"timeout\"") && log.contains("fail_mode=\"open\""),
        "{log}"
    );
    // Each timed-out call took the 50 ms timeout.
    let slow = value(&s, "tollgate_store_duration_seconds_bucket{le=\"+Inf\"}")
        - value(&s, "tollgate_store_duration_seconds_bucket{le=\"0.025\"}");
    assert_eq!(slow - slow_before, 3.0);
    let (_, s) = scrape(&client, &closed).await;
    assert_eq!(value(&s, "tollgate_fail_mode_total{mode=\"closed\"}"), 3.0);
    assert_eq!(value(&s, "tollgate_fail_mode_total{mode=\"open\"}"), 0.0);
    // Redis back: decisions again, the fail mode no longer counts, and the log says so.
    redis.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let reply = client.get(open.addr, "/back", Some(b"carol")).await;
        if reply.header("ratelimit").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Redis did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, after) = scrape(&client, &open).await;
    assert_eq!(decisions(&after, "allowed"), 11.0);
    let failed_open = value(&after, "tollgate_fail_mode_total{mode=\"open\"}");
    client.get(open.addr, "/back", Some(b"carol")).await;
    let (_, last) = scrape(&client, &open).await;
    assert_eq!(decisions(&last, "allowed"), 12.0);
    assert_eq!(
        value(&last, "tollgate_fail_mode_total{mode=\"open\"}"),
        failed_open
    );
    assert!(
        open.log().contains("rate-limit store answers again"),
        "{}",
        open.log()
    );
    // Label values are bounded: policy names and fixed words, never a key or a path.
    let (text, _) = scrape(&client, &open).await;
    assert!(
        !text.contains("alice") && !text.contains("/hello"),
        "{text}"
    );
}

/// A leased limit's counters: leases taken and their units, decisions served from them (also
/// counted as decisions), and the units given back when the lease runs out.
#[tokio::test]
async fn lease_counters_move_with_a_hot_key() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = std::env::temp_dir().join(format!("tollgate-lease-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("leased.toml");
    std::fs::write(
        &file,
        "[[default.limits]]\nname = \"hot\"\ncapacity = 100000\nperiod = \"1h\"\nlease = true\nlease_time = \"100ms\"\n",
    )
    .unwrap();
    let server = Instance::start(&[
        ("REDIS_URL", &url),
        ("RATE_LIMIT_CONFIG", file.to_str().unwrap()),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    let client = HttpClient::new();
    for _ in 0..50 {
        assert_eq!(
            client.get(server.addr, "/hot", Some(b"alice")).await.status,
            200
        );
    }
    let (_, s) = scrape(&client, &server).await;
    let policy = |name: &str| value(&s, &format!("{name}{{policy=\"default\"}}"));
    assert_eq!(decisions(&s, "allowed"), 50.0);
    let (leases, units) = (
        policy("tollgate_leases_total"),
        policy("tollgate_leased_units_total"),
    );
    let served = policy("tollgate_lease_decisions_total");
    assert!(
        leases >= 1.0 && units >= leases,
        "{leases} leases of {units} units"
    );
    assert!(
        served > 0.0 && served <= units,
        "{served} served of {units}"
    );
    // Store calls: the decisions not served from a lease, and the leases taken in the
    // background (each lease is one call, with a decision or on its own).
    let calls = value(&s, "tollgate_store_duration_seconds_count");
    assert!(
        calls >= 50.0 - served && calls <= 50.0 - served + leases,
        "{calls} store calls, {served} served from {leases} leases"
    );
    // Nothing more is asked: the lease runs out and what is left goes back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, s) = scrape(&client, &server).await;
        let returned = value(
            &s,
            "tollgate_lease_returned_units_total{policy=\"default\"}",
        );
        let units = value(&s, "tollgate_leased_units_total{policy=\"default\"}");
        let served = value(&s, "tollgate_lease_decisions_total{policy=\"default\"}");
        if returned > 0.0 {
            assert_eq!(
                returned,
                units - served,
                "every unit leased is spent or given back"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing given back in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `chromium` on PATH, or fail saying how to install it.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("the dashboard test needs Chromium: `apt-get install chromium` (Debian/Ubuntu)");
}

/// Loads `url` in headless Chromium, lets its scripts run for `budget_ms` of virtual time and
/// returns the DOM; with `screenshot`, also saves a PNG there.
fn headless(url: &str, budget_ms: u32, screenshot: Option<&PathBuf>) -> String {
    let profile = std::env::temp_dir().join(format!("tollgate-chromium-{}", std::process::id()));
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command.arg(format!("--virtual-time-budget={budget_ms}"));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = command.arg(url).output().expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The value of `attribute` on each element that has `data-series`, by series.
fn attribute_by_series(dom: &str, attribute: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // Rendered elements only, not the page's script that writes them.
    let dom = match (dom.find("<script"), dom.rfind("</script>")) {
        (Some(start), Some(end)) => format!("{}{}", &dom[..start], &dom[end..]),
        _ => dom.to_owned(),
    };
    let rendered = |e: &&str| e.starts_with("tr ") || e.starts_with("polyline ");
    for element in dom.split('<').filter(rendered) {
        let get = |name: &str| {
            let start = element.find(&format!("{name}=\""))? + name.len() + 2;
            let len = element[start..].find('"')?;
            Some(
                element[start..start + len]
                    .replace("&quot;", "\"")
                    .replace("&amp;", "&"),
            )
        };
        if let (Some(series), Some(value)) = (get("data-series"), get(attribute)) {
            out.insert(series, value);
        }
    }
    out
}

fn increments(list: &str) -> Vec<f64> {
    list.split(',').map(|v| v.parse().unwrap()).collect()
}

/// The page plots what the metrics say: scrapes of the real server, taken while traffic ran
/// and Redis stopped, are replayed to the page one per poll; each plotted interval must be
/// exactly the difference of two scrapes. Then the page runs against the server itself, its
/// totals match a scrape, and a screenshot is kept in the target directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_plots_what_the_metrics_say() {
    let redis = RedisServer::start();
    let server = Instance::start(&[("REDIS_URL", &redis.url()), ("STORE_TIMEOUT_MS", "50")]);
    let client = HttpClient::new();
    let mut scrapes = vec![scrape(&client, &server).await];
    for _ in 0..6 {
        client.get(server.addr, "/a", Some(b"alice")).await;
    }
    scrapes.push(scrape(&client, &server).await);
    for _ in 0..8 {
        client.get(server.addr, "/a", Some(b"alice")).await;
    }
    scrapes.push(scrape(&client, &server).await);
    redis.hang();
    for _ in 0..2 {
        client.get(server.addr, "/a", Some(b"bob")).await;
    }
    redis.resume();
    scrapes.push(scrape(&client, &server).await);

    let texts: Vec<String> = scrapes.iter().map(|(text, _)| text.clone()).collect();
    let replayed = TestServer::start(replay(texts.clone())).await;
    let url = format!("http://{}/dashboard", replayed.addr);
    let dom = tokio::task::spawn_blocking(move || headless(&url, 6_000, None))
        .await
        .unwrap();
    let plotted = attribute_by_series(&dom, "data-increments");
    let diff =
        |series: &str, i: usize| value(&scrapes[i + 1].1, series) - value(&scrapes[i].1, series);
    let check = |name: &str, series: &str| {
        let points = increments(
            plotted
                .get(name)
                .unwrap_or_else(|| panic!("no {name} in {plotted:?}")),
        );
        assert!(points.len() >= 3, "{name}: {points:?}");
        for i in 0..3 {
            assert_eq!(
                points[i],
                diff(series, i),
                "{name}, interval {i}: {points:?}"
            );
        }
        assert!(points[3..].iter().all(|&p| p == 0.0), "{name}: {points:?}");
    };
    check(
        "default allowed",
        "tollgate_decisions_total{policy=\"default\",outcome=\"allowed\"}",
    );
    check(
        "default limited",
        "tollgate_decisions_total{policy=\"default\",outcome=\"limited\"}",
    );
    check("fail open", "tollgate_fail_mode_total{mode=\"open\"}");
    check(
        "store error: timeout",
        "tollgate_store_errors_total{kind=\"timeout\"}",
    );
    check("average", "tollgate_store_duration_seconds_count");
    // The traffic happened: 6 then 4 allowed, 4 limited, 2 failed open.
    assert_eq!(
        increments(&plotted["default allowed"])[..3],
        [6.0, 4.0, 0.0]
    );
    assert_eq!(increments(&plotted["fail open"])[..3], [0.0, 0.0, 2.0]);

    // Against the server itself: the totals are the metrics'.
    let url = format!("http://{}/dashboard", server.addr);
    let dom = tokio::task::spawn_blocking(move || headless(&url, 3_000, None))
        .await
        .unwrap();
    let (_, now) = scrape(&client, &server).await;
    let totals = attribute_by_series(&dom, "data-total");
    assert!(totals.len() >= 8, "{totals:?}");
    for (series, total) in &totals {
        assert_eq!(
            total.parse::<f64>().unwrap(),
            value(&now, series),
            "{series}"
        );
    }
    // The policies panel says when the policies in force were loaded, and the reloads.
    let attribute = |name: &str| -> f64 {
        let at = format!("{name}=\"");
        let value = dom
            .split(at.as_str())
            .nth(1)
            .and_then(|r| r.split('"').next());
        value
            .unwrap_or_else(|| panic!("no {name} in the policies panel"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        attribute("data-loaded"),
        value(&now, "tollgate_policies_loaded_timestamp_seconds")
    );
    assert_eq!(attribute("data-applied"), 0.0);
    // A screenshot of the replayed run, kept as an artifact in the target directory (wherever
    // CARGO_TARGET_DIR put it: the test binary is in <target>/<profile>/deps/).
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps/<test>");
    let shot = target.join("tollgate-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let replayed = TestServer::start(replay(texts)).await;
    let url = format!("http://{}/dashboard", replayed.addr);
    let path = shot.clone();
    tokio::task::spawn_blocking(move || headless(&url, 6_000, Some(&path)))
        .await
        .unwrap();
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "{}",
        shot.display()
    );
}

/// Serves the dashboard, and `scrapes` as `/metrics`, one per poll, then the last one again.
fn replay(scrapes: Vec<String>) -> Router {
    let queue = Arc::new(Mutex::new(VecDeque::from(scrapes)));
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Html(include_str!("../../examples/dashboard.html")) }),
        )
        .route(
            "/metrics",
            get(move || {
                let queue = queue.clone();
                async move {
                    let mut queue = queue.lock().unwrap();
                    if queue.len() > 1 {
                        queue.pop_front().unwrap()
                    } else {
                        queue[0].clone()
                    }
                }
            }),
        )
}
