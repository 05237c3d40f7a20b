//! Directed tests of the findings of issue 22 ("exact put-backs"): each failed on the code
//! before receipts, on the memory store and on a real Redis.
//!
//! 1. A settlement credited the current window or bucket, not the one that counted the units.
//! 3. `FailMode::Local` leaked local concurrency slots when the store was asked and failed.
//! 4. A decision that timed out leaked the Redis slot it took, for the whole slot lease.
//! 5. A concurrency slot's lease had no lower bound.
//! 6. A slot released where no Tokio runtime was current was never freed.
//!
//! (Finding 2, a lease merged into a new grant taking its time, is tested on the lease table
//! itself: `src/lease/table.rs`.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tollgate::store::Store;
use tollgate::{
    Algorithm, ConfigError, DecidedBy, FailMode, Limit, Limiter, MemoryStore, Policies, RedisStore,
    Target, Verdict,
};

use crate::harness::RedisServer;

const W: Duration = Duration::from_millis(400);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Sleeps until `at` microseconds into the next window of `w` (windows aligned to the epoch,
/// as the stores align them).
async fn until_in_next_window(w: Duration, at: Duration) {
    let w = w.as_micros() as u64;
    let now = now_us();
    let target = (now / w + 1) * w + at.as_micros() as u64;
    tokio::time::sleep(Duration::from_micros(target - now)).await;
}

/// Sleeps until `at` microseconds into the current window, or the next one if that is past.
async fn until_in_window(w: Duration, at: Duration) {
    let (w_us, at_us) = (w.as_micros() as u64, at.as_micros() as u64);
    let now = now_us();
    let target = now / w_us * w_us + at_us;
    if target > now {
        tokio::time::sleep(Duration::from_micros(target - now)).await;
    } else {
        until_in_next_window(w, at).await;
    }
}

fn limiter<St: Store>(store: St, prefix: &str, limit: Limit) -> Limiter<St> {
    Limiter::builder()
        .store(store)
        .key_prefix(prefix)
        .policies(Policies::single(limit))
        .timeout(Duration::from_secs(2))
        .deny_cache(false)
        .build()
        .unwrap()
}

async fn take<St: Store>(limiter: &Limiter<St>, cost: u64) -> tollgate::Outcome {
    let subject = limiter
        .subject("client", Target::route(&Method::POST, "/v1"))
        .unwrap();
    limiter.take(&subject, cost).await
}

/// The four scenarios of finding 1 on one store: after each, a settlement of the first take
/// to 0 must not let a third take of the whole capacity through.
async fn settlements_credit_where_units_were_counted<St: Store + Clone>(store: St, run: &str) {
    // Fixed window: 100 late in a window, 100 in the next, the first settled to 0: the
    // second window holds 100 already.
    let fixed = limiter(
        store.clone(),
        &format!("{run}-fw"),
        Limit::fixed_window("c", 100, W).unwrap(),
    );
    until_in_window(W, W * 3 / 4).await;
    let mut first = take(&fixed, 100).await;
    assert!(first.is_allowed(), "{run} fixed: {first:?}");
    until_in_next_window(W, Duration::from_millis(20)).await;
    assert!(take(&fixed, 100).await.is_allowed(), "{run} fixed");
    fixed.settle(first.receipt().unwrap(), 0).await.unwrap();
    let third = take(&fixed, 1).await;
    assert!(
        !third.is_allowed(),
        "{run} fixed window: 201 units in one window of 100"
    );

    // Token bucket: the whole capacity, a full refill period, the whole capacity again; the
    // first settled to 0 is owed nothing (its worth refilled long ago).
    let bucket = limiter(
        store.clone(),
        &format!("{run}-tb"),
        Limit::new("c", 100, 100, W).unwrap(),
    );
    let mut first = take(&bucket, 100).await;
    assert!(first.is_allowed(), "{run} bucket: {first:?}");
    tokio::time::sleep(W + Duration::from_millis(20)).await;
    assert!(take(&bucket, 100).await.is_allowed(), "{run} bucket");
    bucket.settle(first.receipt().unwrap(), 0).await.unwrap();
    let third = take(&bucket, 10).await;
    assert!(
        !third.is_allowed(),
        "{run} token bucket: 110 units within a millisecond from a bucket of 100"
    );

    // Sliding window: 100 late in window k, 50 halfway into window k + 1, the first settled
    // to 0. The 100 were counted in window k, now the previous count: they come out of it,
    // not out of this window's 50, so 50 more fit and 51 do not.
    let sliding = limiter(
        store.clone(),
        &format!("{run}-sw"),
        Limit::sliding_window("c", 100, W).unwrap(),
    );
    until_in_window(W, W * 3 / 4).await;
    let mut first = take(&sliding, 100).await;
    assert!(first.is_allowed(), "{run} sliding: {first:?}");
    until_in_next_window(W, W / 2 + Duration::from_millis(20)).await;
    assert!(take(&sliding, 50).await.is_allowed(), "{run} sliding");
    sliding.settle(first.receipt().unwrap(), 0).await.unwrap();
    let over = take(&sliding, 51).await;
    assert!(
        !over.is_allowed(),
        "{run} sliding window: 101 units counted in one window of 100"
    );
    assert!(take(&sliding, 50).await.is_allowed(), "{run} sliding: room");

    // Sliding log: 100 entries, a whole period, 100 more; the first settled to 0 owns
    // nothing in the log any more (its entries left), and must not drop the second's.
    let log = limiter(
        store.clone(),
        &format!("{run}-sl"),
        Limit::sliding_log("c", 100, W).unwrap(),
    );
    let mut first = take(&log, 100).await;
    assert!(first.is_allowed(), "{run} log: {first:?}");
    tokio::time::sleep(W + Duration::from_millis(20)).await;
    let mut second = take(&log, 100).await;
    assert!(second.is_allowed(), "{run} log");
    log.settle(first.receipt().unwrap(), 0).await.unwrap();
    assert!(
        !take(&log, 1).await.is_allowed(),
        "{run} sliding log: 101 entries within one period of 100"
    );
    // The second's own entries do come out.
    log.settle(second.receipt().unwrap(), 60).await.unwrap();
    assert!(take(&log, 40).await.is_allowed(), "{run} log: 40 back");
    assert!(!take(&log, 1).await.is_allowed(), "{run} log: no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_credits_only_the_window_or_bucket_that_counted_the_units() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    tokio::join!(
        settlements_credit_where_units_were_counted(MemoryStore::new(), "memory"),
        settlements_credit_where_units_were_counted(store, "redis"),
    );
}

/// A receipt gives back at most what its take holds, once: refunds past it are nothing.
#[tokio::test]
async fn a_receipt_gives_back_at_most_what_it_took() {
    let limiter = limiter(
        MemoryStore::new(),
        "once",
        Limit::fixed_window("c", 10, Duration::from_secs(3600)).unwrap(),
    );
    let mut first = take(&limiter, 4).await;
    let mut receipt = first.receipt().unwrap();
    assert!(first.receipt().is_none(), "taken out once");
    assert!(take(&limiter, 6).await.is_allowed());
    limiter.refund(&mut receipt, 3).await.unwrap();
    limiter.refund(&mut receipt, 3).await.unwrap();
    assert_eq!(receipt.units(), 0);
    // 4 came back, not 6.
    assert!(take(&limiter, 4).await.is_allowed());
    assert!(!take(&limiter, 1).await.is_allowed());
}

/// Finding 3: with `FailMode::Local`, a decision the store failed is decided locally, and the
/// local slot it takes is freed when the request ends: a concurrency limit of one admits one
/// request after another through an outage, not one for the whole outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_slots_are_freed_when_the_store_failed() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let limiter = Limiter::builder()
        .store(store)
        .policies(Policies::single(Limit::concurrency("c", 1).unwrap()))
        .timeout(Duration::from_millis(50))
        .fail_mode(FailMode::Local)
        .local_share(1.0)
        .build()
        .unwrap();
    let subject = limiter
        .subject("client", Target::route(&Method::POST, "/v1"))
        .unwrap();
    redis.hang();
    for i in 0..3 {
        let outcome = limiter.take(&subject, 1).await;
        assert!(
            matches!(
                outcome.verdict(),
                Verdict::Decided {
                    by: DecidedBy::Local,
                    decision
                } if decision.allowed
            ),
            "request {i} through the outage: {outcome:?}"
        );
        // While held, a second is refused locally.
        let second = limiter.take(&subject, 1).await;
        assert!(!second.is_allowed(), "request {i}: {second:?}");
        drop(outcome);
    }
    redis.resume();
}

/// Finding 4: a decision that times out is left to finish, and what it took (its slot, its
/// units) is put back once it has: a blip longer than the timeout does not lock a client
/// out for the slot lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_timed_out_keeps_nothing() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let policies = Policies::builder()
        .default_limit(Limit::concurrency("c", 2).unwrap())
        .default_limit(Limit::fixed_window("w", 4, Duration::from_secs(3600)).unwrap())
        .build()
        .unwrap();
    let limiter = Limiter::builder()
        .store(store)
        .policies(policies)
        .timeout(Duration::from_millis(50))
        .fail_mode(FailMode::Closed)
        .deny_cache(false)
        .build()
        .unwrap();
    let subject = limiter
        .subject("client", Target::route(&Method::POST, "/v1"))
        .unwrap();
    // Redis must know the scripts before it hangs, so that the calls it runs late are whole.
    drop(limiter.take(&subject, 1).await);
    limiter.flush().await;
    redis.hang();
    let (a, b) = tokio::join!(limiter.take(&subject, 1), limiter.take(&subject, 1));
    for outcome in [&a, &b] {
        assert!(
            matches!(outcome.verdict(), Verdict::FailedClosed(_)),
            "{outcome:?}"
        );
    }
    redis.resume();
    // The two calls end in the background, and put back their slots and units.
    limiter.flush().await;
    let held = [
        limiter.take(&subject, 1).await,
        limiter.take(&subject, 1).await,
    ];
    for outcome in &held {
        assert!(outcome.is_allowed(), "slots put back: {outcome:?}");
    }
    let third = limiter.take(&subject, 1).await;
    assert!(!third.is_allowed(), "two held: {third:?}");
    drop((held, third));
    limiter.flush().await;
    // The window counted the first take and the two held (the third was refused by the
    // slots): the timed-out ones gave theirs back, so one unit is left of 4.
    let left = limiter.peek(&subject, 1).await.unwrap();
    assert_eq!(left[1].remaining, 1, "{left:?}");
}

/// Finding 6: a concurrency slot released on a thread with no Tokio runtime (a guard dropped
/// by a synchronous callback, say) is freed by the limiter's worker, and only that slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_released_outside_a_runtime_is_freed() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let limiter = limiter(store, "f6", Limit::concurrency("c", 2).unwrap());
    let first = take(&limiter, 1).await;
    let second = take(&limiter, 1).await;
    assert!(first.is_allowed() && second.is_allowed());
    assert!(!take(&limiter, 1).await.is_allowed(), "two held");
    std::thread::spawn(move || drop(first)).join().unwrap();
    limiter.flush().await;
    let third = take(&limiter, 1).await;
    assert!(third.is_allowed(), "the first slot is free: {third:?}");
    // The second still holds its own slot.
    assert!(!take(&limiter, 1).await.is_allowed(), "two held again");
    drop((second, third));
}

/// Finding 5: a slot time to live shorter than three renewal intervals could run out before its
/// first renewal; it is refused when the limit is built, naming the field.
#[test]
fn a_slot_ttl_too_short_to_renew_is_refused() {
    let error = Limit::concurrency("c", 2)
        .unwrap()
        .slot_ttl(Duration::from_millis(5))
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Invalid {
                field: "slot_ttl",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("slot_ttl"), "{error}");
    let ok = Limit::concurrency("c", 2)
        .unwrap()
        .slot_ttl(Duration::from_millis(300))
        .unwrap();
    assert_eq!(ok.algorithm(), Algorithm::Concurrency);
}
