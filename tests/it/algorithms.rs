//! The four algorithms' Lua scripts against a real Redis: step for step equal to the shared
//! arithmetic that the memory store runs, the same decisions as the memory store on the same
//! sequences, key TTLs, and exact admission under concurrency through two instances.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate::store::{BucketState, Store};
use tollgate::{Algorithm, Decision, Limit, MemoryStore, RedisStore};

use crate::harness::{RedisServer, Rng};

/// The state a Lua script keeps for a bucket, read back from Redis.
pub async fn read_state(
    conn: &mut redis::aio::MultiplexedConnection,
    limit: &Limit,
    bucket: &str,
) -> BucketState {
    match limit.algorithm() {
        Algorithm::TokenBucket => {
            let full_at: Option<u64> = redis::cmd("GET")
                .arg(bucket)
                .query_async(conn)
                .await
                .unwrap();
            full_at.map_or(BucketState::New, BucketState::FullAt)
        }
        Algorithm::FixedWindow | Algorithm::SlidingWindow => {
            let (index, current, previous): (Option<u64>, Option<u64>, Option<u64>) =
                redis::cmd("HMGET")
                    .arg(bucket)
                    .arg("i")
                    .arg("c")
                    .arg("p")
                    .query_async(conn)
                    .await
                    .unwrap();
            match (index, current) {
                (Some(index), Some(current)) => BucketState::Window {
                    index,
                    current,
                    previous: previous.unwrap_or(0),
                },
                _ => BucketState::New,
            }
        }
        Algorithm::SlidingLog => {
            let entries: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(bucket)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(conn)
                .await
                .unwrap();
            if entries.is_empty() {
                return BucketState::New;
            }
            // Members are unique: a request's score and its unit's number.
            for (member, score) in &entries {
                assert!(member.starts_with(&format!("{score}:")), "{member} {score}");
            }
            let log: VecDeque<u64> = entries.into_iter().map(|(_, score)| score).collect();
            BucketState::Log(Box::new(log))
        }
        _ => unreachable!("every algorithm is covered"),
    }
}

async fn redis_time(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1_000_000 + micros
}

/// The most a key's TTL may be right after a decision, in milliseconds.
fn ttl_bound(limit: &Limit) -> u64 {
    let window_ms = limit.window_us().div_ceil(1000);
    match limit.algorithm() {
        Algorithm::SlidingWindow => 2 * window_ms,
        _ => window_ms + 1,
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Policies with windows short enough that a sequence crosses many window edges.
fn policies() -> Vec<(&'static str, Arc<[Limit]>)> {
    vec![
        (
            "token_bucket",
            Arc::new([Limit::new("a", 5, 5, ms(100)).unwrap()]),
        ),
        (
            "token_bucket, an interval of no whole milliseconds",
            Arc::new([Limit::new("b", 7, 3, ms(100)).unwrap()]),
        ),
        (
            "three token buckets",
            Arc::new([
                Limit::new("fast", 4, 4, ms(80)).unwrap(),
                Limit::new("slow", 9, 3, ms(300)).unwrap(),
                Limit::new("tiny", 2, 20, ms(200)).unwrap(),
            ]),
        ),
        (
            "fixed_window",
            Arc::new([Limit::fixed_window("f", 5, ms(100)).unwrap()]),
        ),
        (
            "sliding_window",
            Arc::new([Limit::sliding_window("s", 7, ms(200)).unwrap()]),
        ),
        (
            "sliding_log",
            Arc::new([Limit::sliding_log("l", 6, ms(150)).unwrap()]),
        ),
        (
            "two fixed windows",
            Arc::new([
                Limit::fixed_window("short", 3, ms(50)).unwrap(),
                Limit::fixed_window("long", 9, ms(250)).unwrap(),
            ]),
        ),
        (
            "two sliding windows, one counting requests",
            Arc::new([
                Limit::sliding_window("many", 8, ms(120)).unwrap(),
                Limit::sliding_window("few", 3, ms(60))
                    .unwrap()
                    .per_request(),
            ]),
        ),
        (
            "all four",
            Arc::new([
                Limit::new("tb", 4, 4, ms(80)).unwrap(),
                Limit::sliding_log("sl", 5, ms(120)).unwrap(),
                Limit::fixed_window("fw", 6, ms(100)).unwrap(),
                Limit::sliding_window("sw", 4, ms(90)).unwrap(),
            ]),
        ),
        (
            "a cost and requests",
            Arc::new([
                Limit::new("units", 8, 8, ms(100)).unwrap(),
                Limit::sliding_window("requests", 4, ms(100))
                    .unwrap()
                    .per_request(),
            ]),
        ),
    ]
}

/// Each decision of a script equals `decide_all` (which the memory store runs) at some
/// microsecond between the Redis clock's readings just before and just after the call, decision
/// and written state alike, for each algorithm alone, several of one, and all four at once.
/// Written keys carry a TTL within the algorithm's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_match_the_shared_arithmetic_step_for_step() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let mut tasks = Vec::new();
    for (p, (name, limits)) in policies().into_iter().enumerate() {
        let store = store.clone();
        let url = redis.url();
        tasks.push(tokio::spawn(async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let key = format!("step{p}");
            let buckets: Vec<String> = limits.iter().map(|l| l.bucket_key(&key)).collect();
            let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 + p as u64);
            let (mut allowed, mut denied, mut expired) = (0, 0, 0);
            for _ in 0..120 {
                let cost = 1 + rng.below(3);
                let before = read_states(&mut conn, &limits, &buckets).await;
                let t0 = redis_time(&mut conn).await;
                let decision = store.decide(&key, &limits, cost).await.unwrap();
                let t1 = redis_time(&mut conn).await;
                let after = read_states(&mut conn, &limits, &buckets).await;
                if decision.allowed && after.contains(&BucketState::New) {
                    // A key expired (nothing in it counted any more) before it was read back: a
                    // busy machine took longer than its TTL. Nothing to compare this step with.
                    expired += 1;
                    continue;
                }
                let matches = (t0..=t1).any(|now| {
                    let mut states = before.clone();
                    let expected =
                        BucketState::decide_all(&limits, &mut states, now, cost).unwrap();
                    expected == decision && (states == after || !decision.allowed)
                });
                assert!(
                    matches,
                    "{name}: cost {cost} between {t0} and {t1}: {decision:?}\n\
                     before {before:?}\nafter {after:?}"
                );
                if decision.allowed {
                    allowed += 1;
                    for (limit, bucket) in limits.iter().zip(&buckets) {
                        let pttl: i64 = redis::cmd("PTTL")
                            .arg(bucket)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        // -2: expired (nothing counts any more) by the time we asked, 0: about
                        // to; -1 would be a key without a TTL.
                        assert!(
                            pttl == -2 || (pttl >= 0 && pttl as u64 <= ttl_bound(limit)),
                            "{name}: {bucket} PTTL {pttl}"
                        );
                    }
                } else {
                    // A denial writes nothing (a key may have expired meanwhile).
                    for (b, a) in before.iter().zip(&after) {
                        assert!(a == b || *a == BucketState::New, "{name}: {b:?} → {a:?}");
                    }
                    denied += 1;
                }
                tokio::time::sleep(ms(rng.below(25))).await;
            }
            assert!(
                allowed > 10 && denied > 10,
                "{name}: {allowed} allowed, {denied} denied"
            );
            assert!(
                expired < 12,
                "{name}: {expired} of 120 steps could not be read back"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The charge and put-back scripts leave every bucket as `Limit::charge` and `Limit::put_back`
/// (which the memory store runs) do at some microsecond between the Redis clock's readings
/// around the call, between decisions that empty and refill the buckets; every key written
/// keeps a TTL within the algorithm's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_and_refund_scripts_match_the_shared_arithmetic() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let mut tasks = Vec::new();
    for (p, (name, limits)) in policies().into_iter().enumerate() {
        let store = store.clone();
        let url = redis.url();
        tasks.push(tokio::spawn(async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let key = format!("settle{p}");
            let buckets: Vec<String> = limits.iter().map(|l| l.bucket_key(&key)).collect();
            let mut rng = Rng::new(0x51ED_2701 + p as u64);
            let (mut charged, mut refunded, mut skipped) = (0, 0, 0);
            // The stamp of the last take that passed: what a put-back gives back to.
            let mut last: Option<tollgate::store::Stamp> = None;
            for _ in 0..90 {
                let units = 1 + rng.below(6);
                let op = rng.below(3);
                let before = read_states(&mut conn, &limits, &buckets).await;
                let t0 = redis_time(&mut conn).await;
                let stamp = last
                    .clone()
                    .unwrap_or_else(|| tollgate::store::Stamp::new(t0, 1));
                match op {
                    0 => store.charge(&key, &limits, units).await.unwrap(),
                    1 => (store.put_back(&key, &limits, &stamp, units, false))
                        .await
                        .unwrap(),
                    _ => {
                        let taken = store.take(&key, &limits, 1 + rng.below(3)).await.unwrap();
                        last = taken.stamp.or(last);
                    }
                }
                let t1 = redis_time(&mut conn).await;
                if op == 2 {
                    continue;
                }
                let after = read_states(&mut conn, &limits, &buckets).await;
                let t2 = redis_time(&mut conn).await;
                let matches = (t0..=t1).any(|now| {
                    limits.iter().zip(&before).zip(&after).enumerate().all(
                        |(i, ((limit, b), a))| {
                            let mut state = b.clone();
                            let back = if limit.counts_requests() { 0 } else { units };
                            match op {
                                0 => limit.charge(&mut state, now, units),
                                _ => limit.put_back(&mut state, now, stamp.mark(i), back, false),
                            }
                            // A key that expired before it was read back held nothing that
                            // counts any more.
                            state == *a || (*a == BucketState::New && state.is_idle(limit, t2))
                        },
                    )
                });
                if after.contains(&BucketState::New) {
                    skipped += 1;
                }
                assert!(
                    matches,
                    "{name}: {} {units} between {t0} and {t1}\nbefore {before:?}\nafter {after:?}",
                    if op == 0 { "charge" } else { "put-back" }
                );
                if op == 0 {
                    charged += 1;
                    for (limit, bucket) in limits.iter().zip(&buckets) {
                        let pttl: i64 = redis::cmd("PTTL")
                            .arg(bucket)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        assert!(
                            pttl == -2 || (pttl >= 0 && pttl as u64 <= ttl_bound(limit)),
                            "{name}: {bucket} PTTL {pttl}"
                        );
                    }
                } else {
                    refunded += 1;
                }
                tokio::time::sleep(ms(rng.below(25))).await;
            }
            assert!(
                charged > 10 && refunded > 10 && skipped < 60,
                "{name}: {charged} charges, {refunded} refunds, {skipped} with a key gone"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The state of each of `limits`' `buckets`, as Redis holds it.
async fn read_states(
    conn: &mut redis::aio::MultiplexedConnection,
    limits: &[Limit],
    buckets: &[String],
) -> Vec<BucketState> {
    let mut states = Vec::with_capacity(limits.len());
    for (limit, bucket) in limits.iter().zip(buckets) {
        states.push(read_state(conn, limit, bucket).await);
    }
    states
}

/// Waits, if needed, until the current `window` (aligned to the Unix epoch) has at least
/// `margin` left, so that a short test does not cross its edge.
pub async fn away_from_window_edges(window: Duration, margin: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos((now.as_nanos() % window.as_nanos()) as u64);
    if window - into < margin {
        tokio::time::sleep(window - into + ms(100)).await;
    }
}

/// Both stores give the same decisions for the same sequences, for every algorithm and for
/// limits of different algorithms together.
#[tokio::test]
async fn memory_and_redis_agree_on_sequences() {
    let redis = RedisServer::start();
    let stores = (RedisStore::open(&redis.url()).unwrap(), MemoryStore::new());
    // Refills and windows slow enough that the few milliseconds between the two stores' calls
    // do not change a whole unit; the windows are aligned to the Unix epoch in both.
    let hour = Duration::from_secs(3600);
    away_from_window_edges(hour, Duration::from_secs(10)).await;
    let policies: Vec<Arc<[Limit]>> = vec![
        Arc::new([Limit::new("seq", 10, 1, hour).unwrap()]),
        Arc::new([Limit::sliding_log("seq", 10, hour).unwrap()]),
        Arc::new([Limit::sliding_window("seq", 10, hour).unwrap()]),
        Arc::new([Limit::fixed_window("seq", 10, hour).unwrap()]),
        Arc::new([
            Limit::new("burst", 6, 1, hour).unwrap(),
            Limit::fixed_window("daily", 10, hour).unwrap(),
        ]),
        Arc::new([
            Limit::sliding_log("a", 8, hour).unwrap(),
            Limit::sliding_window("b", 6, hour).unwrap(),
            Limit::new("c", 10, 1, hour).unwrap(),
        ]),
    ];
    let sequences: &[&[u64]] = &[&[1; 12], &[3, 3, 3, 3, 1, 1], &[10, 1], &[4, 7, 6, 1, 2]];
    for (p, limits) in policies.iter().enumerate() {
        for (i, costs) in sequences.iter().enumerate() {
            let key = format!("seq-{p}-{i}");
            for &cost in *costs {
                let r = stores.0.decide(&key, limits, cost).await.unwrap();
                let m = stores.1.decide(&key, limits, cost).await.unwrap();
                let summary = |d: &Decision| (d.allowed, d.remaining, d.limit, d.index);
                assert_eq!(summary(&r), summary(&m), "{key} cost {cost}");
                let close = |a: Duration, b: Duration| a.abs_diff(b) < ms(500);
                assert!(close(r.retry_after, m.retry_after), "{r:?} {m:?}");
                assert!(close(r.reset_after, m.reset_after), "{r:?} {m:?}");
                assert!(close(r.available_after, m.available_after), "{r:?} {m:?}");
            }
        }
    }
}

/// 64 callers, alternating between `stores`, each send `per_caller` requests of cost 1 on
/// `key`; how many passed.
pub async fn concurrently(
    stores: &[RedisStore; 2],
    key: &'static str,
    limits: &Arc<[Limit]>,
    per_caller: usize,
) -> u64 {
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (store, limits) = (stores[t % 2].clone(), limits.clone());
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            for _ in 0..per_caller {
                if store.decide(key, &limits, 1).await.unwrap().allowed {
                    allowed += 1;
                }
            }
            allowed
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    allowed
}

/// 64 callers on two connections, 8 requests each, on one key: every algorithm admits exactly
/// its capacity when nothing comes back during the test, and a request under limits of
/// different algorithms passes all or none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_on_two_connections_get_exactly_the_capacity() {
    let redis = RedisServer::start();
    let stores = [
        RedisStore::open(&redis.url()).unwrap(),
        RedisStore::open(&redis.url()).unwrap(),
    ];
    let hour = Duration::from_secs(3600);
    away_from_window_edges(hour, Duration::from_secs(10)).await;
    let cases: Vec<(Arc<[Limit]>, u64)> = vec![
        (Arc::new([Limit::new("c", 100, 1, hour).unwrap()]), 100),
        (Arc::new([Limit::sliding_log("c", 100, hour).unwrap()]), 100),
        (
            Arc::new([Limit::sliding_window("c", 100, hour).unwrap()]),
            100,
        ),
        (
            Arc::new([Limit::fixed_window("c", 100, hour).unwrap()]),
            100,
        ),
        (
            Arc::new([
                Limit::sliding_log("a", 70, hour).unwrap(),
                Limit::fixed_window("b", 90, hour).unwrap(),
                Limit::new("c", 100, 1, hour).unwrap(),
            ]),
            70,
        ),
    ];
    for (limits, capacity) in cases {
        let allowed = concurrently(&stores, "hot", &limits, 8).await;
        assert_eq!(allowed, capacity, "{limits:?}");
        // Every limit gave exactly one unit per request that passed, none for the others.
        for limit in limits.iter() {
            let alone: Arc<[Limit]> = Arc::new([limit.clone()]);
            let d = stores[0].decide("hot", &alone, 1).await.unwrap();
            assert_eq!(
                d.remaining + u64::from(d.allowed),
                limit.capacity() - capacity,
                "{limit:?}"
            );
        }
        // The sliding log's entries are all there: unique members, even for simultaneous
        // requests.
        if let [limit] = &*limits
            && limit.algorithm() == Algorithm::SlidingLog
        {
            let mut conn = redis.conn();
            let count: u64 = redis::cmd("ZCARD")
                .arg(limit.bucket_key("hot"))
                .query(&mut conn)
                .unwrap();
            assert_eq!(count, 100);
        }
        let mut conn = redis.conn();
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    }
}

/// A sliding log's entries stay unique and in order when the newest is not older than now
/// (two calls in one microsecond, or a clock that stepped back): a request's entries go
/// strictly after it.
#[tokio::test]
async fn sliding_log_entries_stay_unique_when_the_clock_steps_back() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let limit = Limit::sliding_log("l", 10, Duration::from_secs(60)).unwrap();
    let limits: Arc<[Limit]> = Arc::new([limit.clone()]);
    let bucket = limit.bucket_key("k");
    // An entry one second in the future, as if written by a Redis whose clock was ahead.
    let ahead = redis_time(&mut conn).await + 1_000_000;
    let _: () = redis::cmd("ZADD")
        .arg(&bucket)
        .arg(ahead)
        .arg(format!("{ahead}:1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for cost in [2, 3] {
        assert!(store.decide("k", &limits, cost).await.unwrap().allowed);
    }
    let BucketState::Log(entries) = read_state(&mut conn, &limit, &bucket).await else {
        panic!("a log");
    };
    // 1 + 2 + 3 entries, each request after the one before, its units sharing a time.
    let entries: Vec<u64> = entries.into_iter().collect();
    assert_eq!(
        entries,
        [ahead, ahead + 1, ahead + 1, ahead + 2, ahead + 2, ahead + 2]
    );
}

/// A request may cost up to the capacity, even the largest a sliding log allows, and a request
/// under a token bucket and a sliding log takes from both or neither.
#[tokio::test]
async fn the_largest_costs_pass_whole_or_not_at_all() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let hour = Duration::from_secs(3600);
    let max = 250 /* the documented cap on a sliding log */;
    let log: Arc<[Limit]> = Arc::new([Limit::sliding_log("l", max, hour).unwrap()]);
    let d = store.decide("big", &log, max).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 0));
    let count: u64 = redis::cmd("ZCARD")
        .arg(log[0].bucket_key("big"))
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(count, max);
    // Both limits allow half: both take it.
    let both: Arc<[Limit]> = Arc::new([
        Limit::new("tb", max, 1, hour).unwrap(),
        Limit::sliding_log("sl", max, hour).unwrap(),
    ]);
    let half = max / 2;
    let d = store.decide("pair", &both, max - half).await.unwrap();
    assert!(d.allowed);
    // One more than what is left fits neither: nothing is taken from either.
    let d = store.decide("pair", &both, half + 1).await.unwrap();
    assert!(!d.allowed);
    let d = store.decide("pair", &both, half).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 0));
}
