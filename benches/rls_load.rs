//! The load of `benches/rls.sh`: concurrent gRPC clients sending `ShouldRateLimit` to
//! `tollgate-rls` instances (client i to instance i mod n, one HTTP/2 connection each), for a
//! bounded time, loopback only. Prints one JSON line: decisions, decisions per second,
//! admitted, Redis commands per decision (from `INFO commandstats`, reset before the run), and
//! the most admitted in any window of the descriptor's MINUTE limit across the instances.
//!
//! A status is placed in its window exactly: the server decided within the client's
//! [sent, answered] interval, and `duration_until_reset` (60 - now % 60) names the second.
//!
//!   rls_load --grpc ADDR [--grpc ADDR…] --redis URL --clients N --seconds S
//!            --descriptor hot|cold

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

struct Args {
    grpc: Vec<String>,
    redis: String,
    clients: usize,
    seconds: u64,
    hot: bool,
}

fn args() -> Args {
    let mut args = Args {
        grpc: Vec::new(),
        redis: String::new(),
        clients: 64,
        seconds: 10,
        hot: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--grpc" => args.grpc.push(value()),
            "--redis" => args.redis = value(),
            "--clients" => args.clients = value().parse().expect("--clients: a number"),
            "--seconds" => args.seconds = value().parse().expect("--seconds: a number"),
            "--descriptor" => args.hot = value() == "hot",
            // cargo bench passes --bench.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !args.grpc.is_empty() && !args.redis.is_empty(),
        "--grpc and --redis are needed"
    );
    for addr in &args.grpc {
        assert!(
            addr.starts_with("127.") || addr.starts_with("[::1]") || addr.starts_with("localhost"),
            "only loopback targets: {addr}"
        );
    }
    args
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Every command Redis ran since the last reset, but the bench's own.
fn commands(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls: u64 = rest.split(',').next()?.parse().ok()?;
            (!matches!(
                name,
                "info"
                    | "config|resetstat"
                    | "config"
                    | "flushall"
                    | "ping"
                    | "hello"
                    | "client|setinfo"
                    | "client"
            ))
            .then_some(calls)
        })
        .sum()
}

#[derive(Default)]
struct Tally {
    decisions: u64,
    admitted: u64,
    errors: u64,
    /// Admitted by minute window start.
    windows: HashMap<u64, u64>,
}

async fn client(addr: String, hot: bool, seed: u64, until: Instant) -> Tally {
    let mut grpc = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut tally = Tally::default();
    let mut x = seed | 1;
    while Instant::now() < until {
        // Cold: a user among a million, each asked about once in the run.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (key, value) = match hot {
            true => ("hot", "x".to_owned()),
            false => ("user", (x % 1_000_000).to_string()),
        };
        let request = RateLimitRequest {
            domain: "bench".to_owned(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: key.to_owned(),
                    value,
                }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 1,
        };
        let sent = wall_us() / 1_000_000;
        let reply = grpc.should_rate_limit(request).await;
        let answered = wall_us() / 1_000_000;
        tally.decisions += 1;
        let Ok(reply) = reply else {
            tally.errors += 1;
            continue;
        };
        let reply = reply.into_inner();
        if reply.overall_code != Code::Ok as i32 {
            continue;
        }
        tally.admitted += 1;
        let reset = reply.statuses[0]
            .duration_until_reset
            .map_or(0, |d| d.seconds as u64);
        // The second s in [sent, answered] with 60 - s % 60 == reset.
        let second = (sent..=answered)
            .find(|s| 60 - s % 60 == reset)
            .expect("the server's second is within the call");
        *tally.windows.entry(second / 60 * 60).or_default() += 1;
    }
    tally
}

fn main() {
    let args = args();
    let mut redis = redis::Client::open(args.redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut redis).unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tallies: Vec<Tally> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|i| {
                let addr = args.grpc[i % args.grpc.len()].clone();
                tokio::spawn(client(
                    addr,
                    args.hot,
                    0x9e37_79b9 ^ ((i as u64 + 1) * 7919),
                    until,
                ))
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let commands = commands(&mut redis);
    let mut windows: HashMap<u64, u64> = HashMap::new();
    let (mut decisions, mut admitted, mut errors) = (0, 0, 0);
    for tally in tallies {
        decisions += tally.decisions;
        admitted += tally.admitted;
        errors += tally.errors;
        for (window, n) in tally.windows {
            *windows.entry(window).or_default() += n;
        }
    }
    let most = windows.values().copied().max().unwrap_or(0);
    println!(
        "{{\"decisions\":{decisions},\"elapsed_s\":{elapsed:.2},\"decisions_per_s\":{:.0},\"admitted\":{admitted},\"errors\":{errors},\"redis_commands\":{commands},\"commands_per_decision\":{:.4},\"most_admitted_in_a_window\":{most},\"windows\":{}}}",
        decisions as f64 / elapsed,
        commands as f64 / decisions.max(1) as f64,
        windows.len()
    );
}
