//! Policies replaced while the limiter runs (`Limiter::reload`): the new limits apply to the
//! buckets already there, a bad reload changes nothing, and what decisions under the old
//! policies hold (slots, receipts, leases, subjects) is released, settled or resolved
//! correctly after the swap. On the memory store and a real Redis; through a real HTTP server
//! for the layer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::Method;
use tollgate::store::Store;
use tollgate::{
    ApiKey, ConfigError, Limit, Limiter, MemoryStore, Policies, RedisStore, Rule, SubjectError,
    Target, TollgateLayer, Verdict,
};

use crate::algorithms::away_from_window_edges;
use crate::harness::{HttpClient, RedisServer, TestServer};

const HOUR: Duration = Duration::from_secs(3600);

fn window(name: &str, capacity: u64) -> Limit {
    Limit::fixed_window(name, capacity, HOUR).unwrap()
}

/// Rules `names`, each with a fixed window of its capacity, in order.
fn rules(names: &[(&str, u64)]) -> Policies {
    let mut builder = Policies::builder();
    for &(name, capacity) in names {
        builder = builder.rule(Rule::new(name, format!("/{name}")).limit(window("w", capacity)));
    }
    builder.build().unwrap()
}

fn limiter<St: Store>(store: St, prefix: &str, policies: Policies) -> Limiter<St> {
    Limiter::builder()
        .store(store)
        .key_prefix(prefix)
        .policies(policies)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn taken<St: Store>(limiter: &Limiter<St>, subject: &tollgate::Subject, n: u64) -> u64 {
    let mut passed = 0;
    for _ in 0..n {
        if limiter.take(subject, 1).await.is_allowed() {
            passed += 1;
        }
    }
    passed
}

/// A raised and a lowered limit apply to the window already counted; a new algorithm starts
/// afresh; a subject made before the reload follows its rule to its new place.
async fn new_limits_apply_to_the_buckets_there<St: Store + Clone>(store: St) {
    away_from_window_edges(HOUR, Duration::from_secs(10)).await;
    let limiter = limiter(store, "reload-apply", rules(&[("a", 4)]));
    let a = limiter.subject("c", Target::rule("a")).unwrap();
    assert_eq!(taken(&limiter, &a, 3).await, 3);
    let loaded = limiter.loaded_at();

    // Raised, with a rule before it (its policy moves): 3 of 10 counted.
    limiter.reload(rules(&[("b", 1), ("a", 10)])).unwrap();
    assert!(limiter.loaded_at() >= loaded);
    assert_eq!(limiter.policies().limits().count(), 2);
    let left = limiter.peek(&a, 1).await.unwrap();
    assert_eq!(left[0].remaining, 7, "{left:?}");
    assert_eq!(left[0].limit, 10);
    assert_eq!(taken(&limiter, &a, 10).await, 7);

    // Lowered below what is counted: nothing passes until the window ends.
    limiter.reload(rules(&[("a", 5)])).unwrap();
    assert_eq!(taken(&limiter, &a, 2).await, 0);

    // Another algorithm: a fresh bucket under a new key.
    let log = Policies::builder()
        .rule(Rule::new("a", "/a").limit(Limit::sliding_log("w", 5, HOUR).unwrap()))
        .build()
        .unwrap();
    limiter.reload(log).unwrap();
    assert_eq!(taken(&limiter, &a, 6).await, 5);
}

#[tokio::test]
async fn new_limits_apply_to_the_buckets_there_in_memory() {
    new_limits_apply_to_the_buckets_there(MemoryStore::new()).await;
}

#[tokio::test]
async fn new_limits_apply_to_the_buckets_there_in_redis() {
    let redis = RedisServer::start();
    new_limits_apply_to_the_buckets_there(RedisStore::open(&redis.url()).unwrap()).await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_policies_and_names_the_field() {
    let store = MemoryStore::new();
    let limiter = limiter(store.clone(), "reload-bad", rules(&[("a", 2)]));
    // Another limiter on the same store holds the buckets of "b" under this prefix.
    let _other = self::limiter(store, "reload-bad", rules(&[("b", 2)]));
    let error = limiter.reload(rules(&[("a", 9), ("b", 9)])).unwrap_err();
    assert!(
        matches!(
            &error,
            ConfigError::Invalid {
                field: "key_prefix",
                ..
            }
        ),
        "{error}"
    );
    let tiered = Policies::tiered([("free", rules(&[("a", 9)]))]).unwrap();
    let error = limiter.reload(tiered).unwrap_err();
    assert!(
        matches!(&error, ConfigError::Invalid { field: "tiers", .. }),
        "{error}"
    );
    // Still the old limit of 2, and no rule "b".
    let a = limiter.subject("c", Target::rule("a")).unwrap();
    assert_eq!(taken(&limiter, &a, 3).await, 2);
    assert_eq!(
        limiter.subject("c", Target::rule("b")).unwrap_err(),
        SubjectError::UnknownRule("b".into())
    );
    // The buckets it claimed are still its own: a third limiter cannot take them.
    let third = Limiter::builder()
        .store(limiter.store().clone())
        .key_prefix("reload-bad")
        .policies(rules(&[("a", 2)]))
        .build();
    assert!(third.is_err());
}

#[tokio::test]
async fn a_subject_whose_rule_or_tier_is_gone_is_refused_and_others_are_resolved_again() {
    let tiers = |names: &[&str]| {
        Policies::tiered(names.iter().map(|&n| (n, rules(&[("a", 2), ("b", 2)])))).unwrap()
    };
    let limiter = limiter(MemoryStore::new(), "reload-tiers", tiers(&["free", "pro"]));
    let pro_b = limiter
        .tiered_subject("pro", "p", Target::rule("b"))
        .unwrap();
    let free_a = limiter
        .tiered_subject("free", "f", Target::rule("a"))
        .unwrap();
    assert!(limiter.take(&pro_b, 1).await.is_allowed());
    assert_eq!(
        limiter
            .tiered_subject("team", "t", Target::rule("a"))
            .unwrap_err(),
        SubjectError::UnknownTier("team".into())
    );

    // A tier gained, one lost.
    limiter.reload(tiers(&["team", "free"])).unwrap();
    let team = limiter
        .tiered_subject("team", "t", Target::rule("a"))
        .unwrap();
    assert_eq!(taken(&limiter, &team, 3).await, 2);
    let gone = limiter.take(&pro_b, 1).await;
    assert!(!gone.is_allowed());
    assert!(
        matches!(gone.verdict(), Verdict::SubjectGone(SubjectError::UnknownTier(t)) if t == "pro"),
        "{gone:?}"
    );
    assert!(limiter.peek(&pro_b, 1).await.is_err());
    // The free tier's subject, made before, is resolved again: the same bucket.
    assert_eq!(taken(&limiter, &free_a, 3).await, 2);

    // A rule gone from a tier.
    let fewer =
        Policies::tiered([("team", rules(&[("b", 2)])), ("free", rules(&[("b", 2)]))]).unwrap();
    limiter.reload(fewer).unwrap();
    assert!(matches!(
        limiter.take(&free_a, 1).await.verdict(),
        Verdict::SubjectGone(SubjectError::UnknownRule(r)) if r == "a"
    ));
}

/// Slots taken under a concurrency limit of 3 stay counted when it is lowered to 2, and each
/// is freed once, against the limit that took it.
async fn slots_held_across_a_reload_are_freed<St: Store + Clone>(store: St) {
    let slots = |n| {
        Policies::single(
            Limit::concurrency("slots", n)
                .unwrap()
                .slot_ttl(Duration::from_secs(30))
                .unwrap(),
        )
    };
    let limiter = limiter(store, "reload-slots", slots(3));
    let job = limiter
        .subject("c", Target::route(&Method::GET, "/"))
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let outcome = limiter.take(&job, 1).await;
        assert!(outcome.is_allowed());
        held.push(outcome);
    }
    limiter.reload(slots(2)).unwrap();
    assert!(!limiter.take(&job, 1).await.is_allowed(), "3 held of 2");
    held.pop();
    limiter.flush().await;
    assert!(!limiter.take(&job, 1).await.is_allowed(), "2 held of 2");
    held.pop();
    limiter.flush().await;
    let one = limiter.take(&job, 1).await;
    assert!(one.is_allowed(), "1 held of 2: {one:?}");
    assert!(!limiter.take(&job, 1).await.is_allowed(), "2 held of 2");
    drop((one, held));
    limiter.flush().await;
    let back: Vec<_> = [limiter.take(&job, 1).await, limiter.take(&job, 1).await].into();
    assert!(back.iter().all(|o| o.is_allowed()), "all freed: {back:?}");
}

#[tokio::test]
async fn slots_held_across_a_reload_are_freed_in_memory() {
    slots_held_across_a_reload_are_freed(MemoryStore::new()).await;
}

#[tokio::test]
async fn slots_held_across_a_reload_are_freed_in_redis() {
    let redis = RedisServer::start();
    slots_held_across_a_reload_are_freed(RedisStore::open(&redis.url()).unwrap()).await;
}

/// A reservation taken under rule "a" at index 0 is settled after a reload moved "a" to
/// index 1 behind "b": what it gives back goes to "a"'s window, and "b" is untouched.
async fn receipts_settle_against_the_limits_that_took_them<St: Store + Clone>(store: St) {
    away_from_window_edges(HOUR, Duration::from_secs(10)).await;
    let limiter = limiter(store, "reload-settle", rules(&[("a", 10)]));
    let a = limiter.subject("c", Target::rule("a")).unwrap();
    let mut outcome = limiter.take(&a, 8).await;
    assert!(outcome.is_allowed());
    let receipt = outcome.receipt().unwrap();
    limiter.reload(rules(&[("b", 10), ("a", 20)])).unwrap();
    limiter.settle(receipt, 3).await.unwrap();
    assert_eq!(limiter.peek(&a, 1).await.unwrap()[0].remaining, 17);
    let b = limiter.subject("c", Target::rule("b")).unwrap();
    assert_eq!(limiter.peek(&b, 1).await.unwrap()[0].remaining, 10);
    // Charged above the estimate after a reload: to "a" too.
    let mut outcome = limiter.take(&a, 2).await;
    let receipt = outcome.receipt().unwrap();
    limiter.reload(rules(&[("a", 20), ("b", 10)])).unwrap();
    limiter.settle(receipt, 6).await.unwrap();
    assert_eq!(limiter.peek(&a, 1).await.unwrap()[0].remaining, 11);
    assert_eq!(limiter.peek(&b, 1).await.unwrap()[0].remaining, 10);
}

#[tokio::test]
async fn receipts_settle_against_the_limits_that_took_them_in_memory() {
    receipts_settle_against_the_limits_that_took_them(MemoryStore::new()).await;
}

#[tokio::test]
async fn receipts_settle_against_the_limits_that_took_them_in_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    receipts_settle_against_the_limits_that_took_them(store).await;
}

#[tokio::test]
async fn a_reload_gives_back_what_the_old_policies_hold_on_lease() {
    away_from_window_edges(HOUR, Duration::from_secs(10)).await;
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let leased = |capacity| {
        Policies::single(
            window("w", capacity)
                .leased_for(Duration::from_secs(5))
                .unwrap(),
        )
    };
    let limiter = limiter(store, "reload-lease", leased(1_000));
    let hot = limiter
        .subject("hot", Target::route(&Method::GET, "/"))
        .unwrap();
    for _ in 0..200 {
        assert!(limiter.take(&hot, 1).await.is_allowed());
    }
    limiter.flush().await;
    let lent = limiter.leased(&hot);
    assert!(lent > 0, "a hot key holds a lease");
    let before = limiter.peek(&hot, 1).await.unwrap()[0].remaining;
    assert_eq!(before, 1_000 - 200 - lent);

    limiter.reload(leased(1_000)).unwrap();
    assert_eq!(
        limiter.leased(&hot),
        0,
        "a new generation starts without leases"
    );
    limiter.flush().await;
    let after = limiter.peek(&hot, 1).await.unwrap()[0].remaining;
    assert_eq!(after, 1_000 - 200, "what the lease held was given back");
}

/// The layer decides each request under one generation: the limit that decided it (told by
/// what it has left: the old limits hold a million units, the new three million, in buckets of
/// their own), the limit its `RateLimit` field names and the `RateLimit-Policy` it reports are
/// of the same generation, while the policies are swapped back and forth as fast as a task
/// can, with requests in flight from several clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_sees_a_mix_of_old_and_new_limits() {
    const OLD: u64 = 1_000_000;
    let two = |a: &str, b: &str, capacity| {
        Policies::builder()
            .default_limit(Limit::fixed_window(a, capacity, HOUR).unwrap())
            .default_limit(Limit::fixed_window(b, capacity, HOUR).unwrap())
            .build()
            .unwrap()
    };
    let old = two("old1", "old2", OLD);
    let new = two("new1", "new2", 3 * OLD);
    let layer = TollgateLayer::builder()
        .policies(old.clone())
        .client_extractor(ApiKey::default())
        .build()
        .unwrap();
    let limiter = layer.limiter().clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let server = TestServer::start(app).await;
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let next = if swaps.is_multiple_of(2) { &new } else { &old };
                limiter.reload(next.clone()).unwrap();
                swaps += 1;
                tokio::task::yield_now().await;
            }
            swaps
        })
    };
    let client = HttpClient::new();
    let mut tasks = Vec::new();
    for c in 0..4u8 {
        let client = client.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            for _ in 0..150 {
                let reply = client.get(addr, "/", Some(&[b'k', b'0' + c])).await;
                assert_eq!(reply.status, 200);
                let field = reply.header("ratelimit").unwrap();
                let policy = reply.header("ratelimit-policy").unwrap();
                let named_old = field.starts_with("\"old");
                let remaining: u64 = field
                    .split(";r=")
                    .nth(1)
                    .and_then(|r| r.split(';').next())
                    .and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| panic!("{field}"));
                let decided_old = remaining < OLD;
                let listed_old = policy.contains("\"old1\"") && policy.contains("\"old2\"");
                let listed_new = policy.contains("\"new1\"") && policy.contains("\"new2\"");
                assert!(
                    named_old == decided_old
                        && listed_old == decided_old
                        && listed_new != listed_old,
                    "a mix: RateLimit {field}, RateLimit-Policy {policy}"
                );
                seen.insert(decided_old);
            }
            seen
        }));
    }
    let mut seen = BTreeSet::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.await.unwrap();
    assert!(swaps > 10, "the policies were swapped {swaps} times");
    assert_eq!(seen.len(), 2, "both generations decided requests");
}
