//! Run with: `cargo bench --bench redis` (needs `redis-server` and `redis-benchmark` on PATH)
//!
//! Decisions per second through `RedisStore` from one process, at 64 and 256 concurrent
//! callers on one multiplexed connection, beside `redis-benchmark` running the same script with
//! the same number of clients and no pipelining (`-P 1`), in the same run, against a
//! `redis-server` this bench starts on a loopback port. Then denied requests per second on one
//! hot key through the layer, with the local deny cache on and off; and allowed decisions per
//! second on one hot key through a `Limiter` on one `RedisStore`, with its limit leased and not
//! (issue 13's target: at least 5x), with the Redis calls each decision cost.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::store::Store;
use tollgate::{Limit, Limiter, Policies, RedisStore, Target, TollgateLayer};
use tower::{Layer, ServiceExt};

const RUN: Duration = Duration::from_secs(3);

struct Server {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Server {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let server = Self { child, port, dir };
        for _ in 0..100 {
            if server.cli(&["PING"]).trim() == "PONG" {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `callers` tasks deciding on distinct keys for `RUN`; decisions per second.
/// A token bucket that never runs out.
fn bench_limits() -> Arc<[Limit]> {
    Arc::new([Limit::new("bench", 1 << 40, 1_000_000, Duration::from_secs(1)).unwrap()])
}

async fn store_throughput(store: &RedisStore, callers: usize) -> f64 {
    let limits = bench_limits();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (store, limits, done) = (store.clone(), limits.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!(
                        "tollgate:{{c{}:GET:/}}",
                        (c as u64 * 1_000_003 + i) % 100_000
                    );
                    store.decide(&key, &limits, 1).await.unwrap();
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn redis_benchmark(server: &Server, sha: &str, clients: usize) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &server.port.to_string(),
            "-n",
            "200000",
            "-c",
            &clients.to_string(),
        ])
        .args([
            "-P", "1", "-r", "100000", "-q", "--csv", "EVALSHA", sha, "1",
        ])
        .args([
            "tollgate:{k:__rand_int__:GET:/}:bench",
            "t",
            "1",
            "1099511627776000000",
            "1",
        ])
        .output()
        .expect("redis-benchmark on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    line.split(',')
        .nth(1)
        .unwrap_or("0")
        .trim_matches('"')
        .parse()
        .unwrap_or(0.0)
}

/// Denied requests per second on one hot key through the layer, from `callers` tasks.
async fn hot_key(store: RedisStore, cache: bool, callers: usize) -> f64 {
    let svc = TollgateLayer::builder()
        .client_extractor(tollgate::ApiKey::default())
        .store(store)
        .key_prefix(if cache { "hot-cached" } else { "hot-uncached" })
        .capacity(1)
        .refill(1)
        .period(Duration::from_secs(3600))
        .timeout(Duration::from_secs(1))
        .deny_cache(cache)
        .build()
        .unwrap()
        .layer(tower::service_fn(|_: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
    let denied = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (svc, denied) = (svc.clone(), denied.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let request = http::Request::get("/hot")
                        .header("x-api-key", "flood")
                        .body(String::new())
                        .unwrap();
                    if svc.clone().oneshot(request).await.unwrap().status() == 429 {
                        n += 1;
                    }
                }
                denied.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    denied.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Allowed decisions per second on one hot key through a limiter, from `callers` tasks: its
/// one limit (far above the rate) leased or not.
async fn hot_allowed(store: RedisStore, leased: bool, callers: usize) -> (f64, u64) {
    let limit = Limit::new("hot", 1 << 40, 1_000_000, Duration::from_secs(1)).unwrap();
    let limit = if leased {
        limit.leased().unwrap()
    } else {
        limit
    };
    let limiter = Limiter::builder()
        .store(store)
        .policies(Policies::single(limit))
        .key_prefix(format!("allowed-{leased}-{callers}"))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let subject = limiter
        .subject("hot", Target::route(&http::Method::GET, "/hot"))
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (limiter, subject, done) = (limiter.clone(), subject.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    assert!(limiter.take(&subject, 1).await.is_allowed());
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    let decisions = done.load(Ordering::Relaxed);
    limiter.return_leases().await.unwrap();
    (decisions as f64 / start.elapsed().as_secs_f64(), decisions)
}

fn evalsha_calls(server: &Server) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = RedisStore::open(&format!("redis://127.0.0.1:{}/", server.port)).unwrap();
        store.load_script().await.unwrap();
        // The token-bucket script as the store sends it (src/store/redis/scripts.rs); were it
        // to differ, redis-benchmark would meet NOSCRIPT and say so.
        let text = concat!(
            "local read_only = false\n",
            include_str!("../lua/token_bucket.lua"),
            include_str!("../lua/decide.lua")
        );
        let sha = redis::Script::new(text).get_hash().to_owned();
        println!("decisions per second, one process, one connection (and redis-benchmark -P 1):");
        for callers in [64, 256] {
            let ours = store_throughput(&store, callers).await;
            let theirs = redis_benchmark(&server, &sha, callers);
            println!(
                "  {callers:>3} callers: RedisStore {ours:>9.0}/s   redis-benchmark -c {callers} {theirs:>9.0}/s   ratio {:.2}",
                ours / theirs
            );
        }
        println!("denied requests per second on one hot key through the layer, 64 callers:");
        let mut rates = Vec::new();
        for cache in [false, true] {
            let before = evalsha_calls(&server);
            let rate = hot_key(store.clone(), cache, 64).await;
            let calls = evalsha_calls(&server) - before;
            let denied = rate * RUN.as_secs_f64();
            println!(
                "  deny cache {}: {rate:>9.0} denied/s, {:.4} Redis calls per denied request",
                if cache { "on " } else { "off" },
                calls as f64 / denied
            );
            rates.push(rate);
        }
        println!("  ratio on/off: {:.1}", rates[1] / rates[0]);
        println!("allowed decisions per second on one hot key through a Limiter, leased and not:");
        for callers in [1, 64] {
            let mut rates = Vec::new();
            for leased in [false, true] {
                let before = evalsha_calls(&server);
                let (rate, decisions) = hot_allowed(store.clone(), leased, callers).await;
                let calls = evalsha_calls(&server) - before;
                println!(
                    "  {callers:>2} callers, leases {}: {rate:>10.0} allowed/s, {:.4} Redis calls per decision",
                    if leased { "on " } else { "off" },
                    calls as f64 / decisions as f64
                );
                rates.push(rate);
            }
            println!("  {callers:>2} callers, ratio on/off: {:.1}", rates[1] / rates[0]);
        }
    });
}
