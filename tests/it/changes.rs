//! A limit that changes between two limiters on one store (a deploy with new limits, the case
//! a run-time reload builds on): a limit keeps its bucket when its name and algorithm stay, and
//! its new capacity or rate applies to the state already there by the rule of its algorithm
//! (`docs/policies.md`, "Changing a limit"); a limit whose algorithm changed starts fresh.
//! The same on the memory store and on a real Redis.

use std::time::Duration;

use http::Method;
use tollgate::store::Store;
use tollgate::{Limit, Limiter, MemoryStore, Policies, RedisStore, Target};

use crate::algorithms::away_from_window_edges;
use crate::harness::RedisServer;

const HOUR: Duration = Duration::from_secs(3600);
/// Windows long enough that a test never crosses an edge (checked anyway).
const WINDOW: Duration = Duration::from_secs(3600);

fn limiter<St: Store + Clone>(store: &St, limit: &Limit) -> Limiter<St> {
    Limiter::builder()
        .store(store.clone())
        .policies(Policies::single(limit.clone()))
        // Two limiters of one deploy after another: the old one may still be alive.
        .share_buckets(true)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Takes `taken` units under `before`, then returns what a limiter with `after` sees left
/// for the same client (its first limit's `remaining`), and the slots' outcomes still held.
async fn left_after_change<St: Store + Clone>(
    store: &St,
    client: &str,
    before: &Limit,
    taken: u64,
    after: &Limit,
) -> (u64, Vec<tollgate::Outcome>) {
    let old = limiter(store, before);
    let target = Target::route(&Method::GET, "/x");
    let subject = old.subject(client, target).unwrap();
    let mut held = Vec::new();
    for _ in 0..taken {
        let outcome = old.take(&subject, 1).await;
        assert!(outcome.is_allowed(), "{client}: {outcome:?}");
        held.push(outcome);
    }
    let new = limiter(store, after);
    let subject = new.subject(client, target).unwrap();
    let left = new.peek(&subject, 1).await.unwrap()[0].remaining;
    (left, held)
}

/// Every rule of `docs/policies.md`, "Changing a limit", on one store.
async fn the_rules<St: Store + Clone>(name: &str, store: St) {
    away_from_window_edges(WINDOW, Duration::from_secs(10)).await;
    let tb = |capacity, refill, period| Limit::new("c", capacity, refill, period).unwrap();
    let cases: Vec<(&str, Limit, u64, Limit, u64)> = vec![
        // A token bucket keeps the moment it is full again. At the same rate (one token
        // every 6 minutes here) that is its level of units used, capped by the new capacity.
        ("tb-larger", tb(10, 10, HOUR), 4, tb(20, 20, 2 * HOUR), 16),
        ("tb-smaller", tb(10, 10, HOUR), 4, tb(5, 5, HOUR / 2), 1),
        (
            "tb-below-used",
            tb(10, 10, HOUR),
            4,
            tb(3, 3, HOUR * 3 / 10),
            0,
        ),
        // A faster refill counts the same wait as more units: 24 minutes to full is 8
        // tokens at one every 3 minutes.
        ("tb-faster", tb(10, 10, HOUR), 4, tb(10, 20, HOUR), 2),
        // The windows keep their counts, against the new capacity.
        (
            "fw",
            Limit::fixed_window("c", 10, WINDOW).unwrap(),
            4,
            Limit::fixed_window("c", 6, WINDOW).unwrap(),
            2,
        ),
        (
            "fw-below-used",
            Limit::fixed_window("c", 10, WINDOW).unwrap(),
            4,
            Limit::fixed_window("c", 3, WINDOW).unwrap(),
            0,
        ),
        // A window of another length: a longer one counts what the shorter one did in the
        // window now current; a shorter one starts afresh (the count was of another window).
        (
            "fw-longer",
            Limit::fixed_window("c", 10, Duration::from_secs(60)).unwrap(),
            4,
            Limit::fixed_window("c", 10, WINDOW).unwrap(),
            6,
        ),
        (
            "fw-shorter",
            Limit::fixed_window("c", 10, WINDOW).unwrap(),
            4,
            Limit::fixed_window("c", 10, Duration::from_secs(60)).unwrap(),
            10,
        ),
        (
            "sw",
            Limit::sliding_window("c", 10, WINDOW).unwrap(),
            4,
            Limit::sliding_window("c", 20, WINDOW).unwrap(),
            16,
        ),
        // A log keeps its entries, against the new capacity.
        (
            "sl",
            Limit::sliding_log("c", 10, HOUR).unwrap(),
            4,
            Limit::sliding_log("c", 5, HOUR).unwrap(),
            1,
        ),
        // Slots held stay held, against the new capacity.
        (
            "slots",
            Limit::concurrency("c", 2).unwrap(),
            2,
            Limit::concurrency("c", 3).unwrap(),
            1,
        ),
        (
            "slots-below-held",
            Limit::concurrency("c", 3).unwrap(),
            2,
            Limit::concurrency("c", 1).unwrap(),
            0,
        ),
        // Another algorithm is another bucket: whole again.
        (
            "tb-to-fw",
            tb(10, 10, HOUR),
            4,
            Limit::fixed_window("c", 10, WINDOW).unwrap(),
            10,
        ),
        (
            "fw-to-sl",
            Limit::fixed_window("c", 10, WINDOW).unwrap(),
            4,
            Limit::sliding_log("c", 10, HOUR).unwrap(),
            10,
        ),
    ];
    for (case, before, taken, after, left) in cases {
        let client = format!("{name}-{case}");
        let (seen, held) = left_after_change(&store, &client, &before, taken, &after).await;
        assert_eq!(seen, left, "{name}: {case}: units left under the new limit");
        drop(held);
    }
}

#[tokio::test]
async fn a_changed_limit_keeps_its_bucket_by_its_algorithms_rule() {
    the_rules("memory", MemoryStore::new()).await;
    let redis = RedisServer::start();
    the_rules("redis", RedisStore::open(&redis.url()).unwrap()).await;
}
