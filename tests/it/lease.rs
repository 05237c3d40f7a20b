//! Leases against a real Redis: a hot key's units taken ahead and spent in process, never more
//! admitted than the limit with two instances, what a lease did not spend given back when it
//! ends, an outage spending what was leased before the fail mode, and cold keys decided as
//! without leasing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tokio::sync::watch;
use tollgate::store::Store;
use tollgate::store::{Lent, Stamp, StoreCall, Taken};
use tollgate::{
    DecidedBy, Decision, FailMode, Limit, Limiter, Policies, RedisStore, Subject, Target, Verdict,
};

use crate::harness::RedisServer;

const DAY: Duration = Duration::from_secs(86_400);

/// A store that counts its decisions and lease calls, and says when none is under way.
pub struct Tracked<S> {
    inner: S,
    pub plain: Arc<AtomicU64>,
    pub lends: Arc<AtomicU64>,
    pub given_back: Arc<AtomicU64>,
    busy: Arc<watch::Sender<i64>>,
}

impl<S: Store> Tracked<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            plain: Arc::default(),
            lends: Arc::default(),
            given_back: Arc::default(),
            busy: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Waits until no lease call or give-back is under way.
    pub async fn idle(&self) {
        let mut busy = self.busy.subscribe();
        tokio::time::timeout(Duration::from_secs(10), busy.wait_for(|n| *n == 0))
            .await
            .expect("lease calls end within 10 s")
            .unwrap();
    }

    /// Waits until `units` were given back in all.
    async fn given_back(&self, units: u64) {
        let mut busy = self.busy.subscribe();
        let given = Arc::clone(&self.given_back);
        tokio::time::timeout(
            Duration::from_secs(10),
            busy.wait_for(|_| given.load(Ordering::SeqCst) >= units),
        )
        .await
        .expect("the lease is given back within 10 s")
        .unwrap();
    }

    fn track<T: Send + 'static>(
        &self,
        call: StoreCall<T>,
        done: Arc<AtomicU64>,
        n: u64,
    ) -> StoreCall<T> {
        self.busy.send_modify(|b| *b += 1);
        let busy = Arc::clone(&self.busy);
        Box::pin(async move {
            let answer = call.await;
            if answer.is_ok() {
                done.fetch_add(n, Ordering::SeqCst);
            }
            busy.send_modify(|b| *b -= 1);
            answer
        })
    }
}

impl<S: Store> Store for Tracked<S> {
    type Future = S::Future;

    fn decide(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> S::Future {
        self.plain.fetch_add(1, Ordering::SeqCst);
        self.inner.decide(key, limits, cost)
    }

    fn decide_each(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        self.plain.fetch_add(1, Ordering::SeqCst);
        self.inner.decide_each(key, limits, cost)
    }

    fn take(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Taken> {
        self.plain.fetch_add(1, Ordering::SeqCst);
        self.inner.take(key, limits, cost)
    }

    fn peek(&self, key: &str, limits: &Arc<[Limit]>, cost: u64) -> StoreCall<Vec<Decision>> {
        self.inner.peek(key, limits, cost)
    }

    fn lease(&self, key: &str, limits: &Arc<[Limit]>, cost: u64, want: u64) -> StoreCall<Lent> {
        let call = self.inner.lease(key, limits, cost, want);
        self.track(call, Arc::clone(&self.lends), 1)
    }

    fn put_back(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        stamp: &Stamp,
        units: u64,
        free_slot: bool,
    ) -> StoreCall<()> {
        let call = self.inner.put_back(key, limits, stamp, units, free_slot);
        self.track(call, Arc::clone(&self.given_back), units)
    }

    fn reset(&self, key: &str, limits: &Arc<[Limit]>) -> StoreCall<()> {
        self.inner.reset(key, limits)
    }
}

/// A leased limit of 1,000 per day of each algorithm a lease may hold.
fn leased_limits(lease_time: Duration) -> [Limit; 3] {
    [
        Limit::new("bucket", 1_000, 1, DAY).unwrap(),
        Limit::fixed_window("fixed", 1_000, DAY).unwrap(),
        Limit::sliding_window("sliding", 1_000, DAY).unwrap(),
    ]
    .map(|l| l.leased_for(lease_time).unwrap())
}

fn limiter<St: Store>(store: St, limit: Limit, fail_mode: FailMode) -> Limiter<St> {
    Limiter::builder()
        .store(store)
        .policies(Policies::single(limit))
        .timeout(Duration::from_secs(2))
        .fail_mode(fail_mode)
        .share_buckets(true)
        .build()
        .unwrap()
}

/// A limiter of `limit` on `redis`, failing closed, whose store is [`Tracked`].
fn tracked(redis: &RedisServer, limit: Limit) -> Limiter<Tracked<RedisStore>> {
    let store = Tracked::new(RedisStore::open(&redis.url()).unwrap());
    limiter(store, limit, FailMode::Closed)
}

fn subject<St>(limiter: &Limiter<St>, who: &str) -> Subject {
    limiter
        .subject(who, Target::route(&Method::GET, "/hot"))
        .unwrap()
}

fn day() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
}

async fn remaining<St: Store>(limiter: &Limiter<St>, s: &Subject) -> u64 {
    limiter.peek(s, 1).await.unwrap()[0].remaining
}

/// The policies leases are tried on: one leased limit of each algorithm a lease may hold, and
/// two limits of different algorithms leased together.
fn leased_policies(lease_time: Duration) -> Vec<Vec<Limit>> {
    let [bucket, fixed, sliding] = leased_limits(lease_time);
    let smaller = Limit::sliding_window("smaller", 600, DAY)
        .unwrap()
        .leased_for(lease_time)
        .unwrap();
    vec![
        vec![bucket.clone()],
        vec![fixed],
        vec![sliding],
        vec![bucket, smaller],
    ]
}

/// Two instances, 32 callers each, 3,000 requests on one key: never more than the smallest
/// capacity passes; every unit of every limit is accounted for (passed, held on lease, or left
/// in the bucket); much of what passes is served from leases; and once both give their leases
/// back, each bucket has exactly what did not pass.
pub async fn never_over_admits<S: Store + Clone>(run: &str, stores: [S; 2]) {
    for limits in leased_policies(Duration::from_millis(200)) {
        let name: Vec<&str> = limits.iter().map(Limit::name).collect();
        let name = name.join("+");
        let capacities: Vec<u64> = limits.iter().map(Limit::capacity).collect();
        let smallest = *capacities.iter().min().unwrap();
        // Windows are aligned to days: a run that crosses midnight (UTC) is run again.
        for attempt in 0.. {
            let started = day();
            let who = format!("{run}-{name}-{attempt}");
            let instances = stores.clone().map(|s| {
                let policies = limits
                    .iter()
                    .fold(Policies::builder(), |b, l| b.default_limit(l.clone()))
                    .build()
                    .unwrap();
                Arc::new(
                    Limiter::builder()
                        .store(Tracked::new(s))
                        .policies(policies)
                        .timeout(Duration::from_secs(2))
                        .fail_mode(FailMode::Closed)
                        .share_buckets(true)
                        .build()
                        .unwrap(),
                )
            });
            let passed = Arc::new(AtomicU64::new(0));
            let from_leases = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for task in 0..64 {
                let limiter = Arc::clone(&instances[task % 2]);
                let (passed, from_leases) = (Arc::clone(&passed), Arc::clone(&from_leases));
                let s = subject(&limiter, &who);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..47 {
                        let outcome = limiter.take(&s, 1).await;
                        match outcome.verdict() {
                            Verdict::Decided { decision, by } if decision.allowed => {
                                passed.fetch_add(1, Ordering::SeqCst);
                                if *by == DecidedBy::Lease {
                                    from_leases.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Verdict::Decided { .. } => {}
                            other => panic!("{other:?}"),
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            for limiter in &instances {
                limiter.store().idle().await;
            }
            let s = subject(&instances[0], &who);
            let passed = passed.load(Ordering::SeqCst);
            let held: u64 = instances.iter().map(|l| l.leased(&s)).sum();
            let left = left_of_each(&instances[0], &s).await;
            if day() != started {
                continue;
            }
            assert!(passed <= smallest, "{run} {name}: {passed} passed");
            for (left, capacity) in left.iter().zip(&capacities) {
                assert_eq!(
                    passed + held + left,
                    *capacity,
                    "{run} {name}: {passed} + {held} + {left}"
                );
            }
            // Much of what passed came from leases, without a store call each.
            let from_leases = from_leases.load(Ordering::SeqCst);
            let lends: u64 = instances
                .iter()
                .map(|l| l.store().lends.load(Ordering::SeqCst))
                .sum();
            assert!(
                from_leases * 3 > passed && lends * 4 < from_leases,
                "{run} {name}: {from_leases} of {passed} from {lends} leases"
            );
            let returned = instances[0].return_leases().await.unwrap()
                + instances[1].return_leases().await.unwrap();
            let left_after = left_of_each(&instances[0], &s).await;
            if day() != started {
                continue;
            }
            assert_eq!(returned, held, "{run} {name}");
            let expected: Vec<u64> = capacities.iter().map(|c| c - passed).collect();
            assert_eq!(left_after, expected, "{run} {name}: after giving back");
            assert_eq!(instances.iter().map(|l| l.leased(&s)).sum::<u64>(), 0);
            break;
        }
    }
}

/// What each limit of `s`'s policy has left.
async fn left_of_each<St: Store>(limiter: &Limiter<St>, s: &Subject) -> Vec<u64> {
    let peek = limiter.peek(s, 1).await.unwrap();
    peek.iter().map(|d| d.remaining).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_admit_more_than_the_limit() {
    let redis = RedisServer::start();
    let store = || RedisStore::open(&redis.url()).unwrap();
    never_over_admits("redis", [store(), store()]).await;
}

/// A burst of requests on one key, one after another, until this instance holds a lease.
async fn until_leased<St: Store>(limiter: &Limiter<St>, s: &Subject) -> u64 {
    let mut passed = 0;
    for _ in 0..200 {
        let outcome = limiter.take(s, 1).await;
        assert!(outcome.is_allowed());
        passed += 1;
        if limiter.leased(s) > 0 {
            return passed;
        }
    }
    panic!("no lease after 200 requests in a row");
}

#[tokio::test]
async fn what_a_lease_did_not_spend_goes_back_when_it_ends() {
    let redis = RedisServer::start();
    for limit in leased_limits(Duration::from_millis(100)) {
        let name = limit.name().to_owned();
        let limiter = tracked(&redis, limit);
        let s = subject(&limiter, "alice");
        let passed = until_leased(&limiter, &s).await;
        limiter.store().idle().await;
        let held = limiter.leased(&s);
        assert!(held > 0, "{name}");
        // Taken from the bucket: peek counts the lease as spent.
        assert_eq!(
            remaining(&limiter, &s).await,
            1_000 - passed - held,
            "{name}"
        );
        // Nothing more is asked: the lease ends, and the task that watches leases gives its
        // units back.
        limiter.store().given_back(held).await;
        assert_eq!(limiter.leased(&s), 0, "{name}");
        assert_eq!(remaining(&limiter, &s).await, 1_000 - passed, "{name}");
        // What a decision reports is exact again once the ended lease is given back.
        let next = limiter.take(&s, 1).await;
        let next = next.decision().unwrap();
        assert!(next.allowed, "{name}");
        assert_eq!(next.remaining, 1_000 - passed - 1, "{name}");
    }
}

#[tokio::test]
async fn an_outage_spends_what_was_leased_then_the_fail_mode_decides() {
    let mut redis = RedisServer::start();
    let limit = Limit::new("bucket", 1_000, 1, DAY)
        .unwrap()
        .leased_for(Duration::from_secs(10))
        .unwrap();
    let limiter = tracked(&redis, limit);
    let s = subject(&limiter, "alice");
    until_leased(&limiter, &s).await;
    limiter.store().idle().await;
    let held = limiter.leased(&s);
    redis.kill();
    for i in 0..held {
        let outcome = limiter.take(&s, 1).await;
        match outcome.verdict() {
            Verdict::Decided { decision, by } => {
                assert!(decision.allowed, "request {i} of {held}");
                assert_eq!(*by, DecidedBy::Lease, "request {i} of {held}");
            }
            other => panic!("request {i} of {held}: {other:?}"),
        }
    }
    assert_eq!(limiter.leased(&s), 0);
    let after = limiter.take(&s, 1).await;
    assert!(
        matches!(after.verdict(), Verdict::FailedClosed(_)),
        "{:?}",
        after.verdict()
    );
}

#[tokio::test]
async fn cold_keys_are_decided_as_without_leases() {
    let redis = RedisServer::start();
    let plain = Limit::new("bucket", 10, 1, DAY).unwrap();
    let leased = tracked(&redis, plain.clone().leased().unwrap());
    let unleased = Limiter::builder()
        .store(RedisStore::open(&redis.url()).unwrap())
        .policies(Policies::single(plain))
        .key_prefix("other")
        .build()
        .unwrap();
    // A few requests per key within a lease time (fewer than MIN_LEASE units).
    for who in ["a", "b", "c"] {
        for _ in 0..4 /* leases start at 4 units a lease time */ - 1 {
            let a = leased.take(&subject(&leased, who), 1).await;
            let b = unleased.take(&subject(&unleased, who), 1).await;
            let (a, b) = (a.decision().unwrap(), b.decision().unwrap());
            assert_eq!((a.allowed, a.remaining), (b.allowed, b.remaining), "{who}");
        }
        assert_eq!(leased.leased(&subject(&leased, who)), 0);
    }
    assert_eq!(leased.store().lends.load(Ordering::SeqCst), 0);
    assert_eq!(leased.store().plain.load(Ordering::SeqCst), 9);
}

#[test]
fn a_policy_file_leases_limits() {
    let policies = Policies::from_toml(
        r#"
        [[default.limits]]
        name = "per_second"
        capacity = 100
        period = "1s"
        lease = true
        lease_time = "50ms"
        "#,
    )
    .unwrap();
    let lease = policies.limits().next().unwrap().lease_time();
    assert_eq!(lease, Some(Duration::from_millis(50)));
}

/// Through HTTP: two layers on one Redis, 64 clients × 12 requests on a key of 300. Never
/// more than 300 pass, every unit is accounted for, and a decision served from a lease
/// carries the `RateLimit` fields.
///
/// The lease time is long so that no lease ends during the test, however slow the machine:
/// a lease that ended holds units the store has not been given back yet, and until it has,
/// the field reads lower by them (on the safe side), so it would not be exact at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_layer_two_instances_never_admit_more_than_the_limit() {
    use axum::{Router, routing::get};

    use crate::harness::TestServer;
    use crate::redis_store::hammer;

    let redis = RedisServer::start();
    let limit = Limit::new("bucket", 300, 1, DAY)
        .unwrap()
        .leased_for(Duration::from_secs(10))
        .unwrap();
    let instances: [_; 2] = [(); 2].map(|_| tracked(&redis, limit.clone()));
    let mut servers = Vec::new();
    for limiter in &instances {
        let app = Router::new().route("/hot", get(|| async { "ok" })).layer(
            tollgate::TollgateLayer::builder()
                .client_extractor(tollgate::ApiKey::default())
                .limiter(limiter.clone())
                .build()
                .unwrap(),
        );
        servers.push(TestServer::start(app).await);
    }
    let servers: [TestServer; 2] = servers.try_into().ok().unwrap();
    let (allowed, limited) = hammer(&servers, b"hot-key", 64, 12, None).await;
    assert_eq!(allowed + limited, 768);
    for limiter in &instances {
        limiter.store().idle().await;
    }
    let s = subject(&instances[0], "hot-key");
    let held: u64 = instances.iter().map(|l| l.leased(&s)).sum();
    let left = remaining(&instances[0], &s).await;
    assert!(allowed <= 300, "{allowed}");
    assert_eq!(allowed + held + left, 300, "{allowed} + {held} + {left}");
    let served = instances[0].store().lends.load(Ordering::SeqCst)
        + instances[1].store().lends.load(Ordering::SeqCst);
    assert!(served > 0, "no lease was taken");
    let returned =
        instances[0].return_leases().await.unwrap() + instances[1].return_leases().await.unwrap();
    assert_eq!(returned, held);
    assert_eq!(remaining(&instances[0], &s).await, 300 - allowed);
    // One client's requests in a row through one instance, decided by the store or served
    // from a lease: the `RateLimit` field never says more is left than is (one the store
    // decides while the next lease is being taken does not count that lease yet, so it says
    // less), and once no lease call is under way it is exact.
    let client = crate::harness::HttpClient::new();
    let left = |reply: &crate::harness::Reply| -> u64 {
        assert_eq!(reply.status, 200);
        let field = reply.header("ratelimit").expect("a RateLimit field");
        let r = field.strip_prefix("\"bucket\";r=").expect(field);
        r.parse().expect(field)
    };
    for i in 0..40u64 {
        let reply = client.get(servers[0].addr, "/hot", Some(b"in-a-row")).await;
        let r = left(&reply);
        assert!(r <= 299 - i, "request {i}: r={r}");
    }
    instances[0].store().idle().await;
    let reply = client.get(servers[0].addr, "/hot", Some(b"in-a-row")).await;
    assert_eq!(left(&reply), 299 - 40);
    assert!(instances[0].leased(&subject(&instances[0], "in-a-row")) > 0);
}

/// A token bucket keeps filling while a lease is out, up to its capacity: what a lease gives
/// back late is only what is still owed, so the refill its capacity cut off is not handed out
/// a second time. (Capacity 100, 100 per second: a lease of 30 taken from a full bucket, given
/// back after 600 ms, when the bucket without it would have been full again for 300 ms.)
#[tokio::test]
async fn a_token_bucket_lease_given_back_late_gives_only_what_is_owed() {
    let redis = RedisServer::start();
    let limit = Limit::new("bucket", 100, 100, Duration::from_secs(1)).unwrap();
    let leasing = tracked(
        &redis,
        limit.clone().leased_for(Duration::from_secs(10)).unwrap(),
    );
    // No deny cache here: its remembered refusal would hide what the give-back returned.
    let plain = Limiter::builder()
        .store(RedisStore::open(&redis.url()).unwrap())
        .policies(Policies::single(limit))
        .timeout(Duration::from_secs(2))
        .deny_cache(false)
        .share_buckets(true)
        .build()
        .unwrap();
    let (a, b) = (subject(&leasing, "alice"), subject(&plain, "alice"));
    // 40 units at once: hot enough to lease with the request, half of what is left.
    assert!(leasing.take(&a, 40).await.is_allowed());
    leasing.store().idle().await;
    assert_eq!(leasing.leased(&a), 30);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let start = std::time::Instant::now();
    let mut passed = 0;
    while plain.take(&b, 1).await.is_allowed() {
        passed += 1;
    }
    assert_eq!(leasing.return_leases().await.unwrap(), 30);
    while plain.take(&b, 1).await.is_allowed() {
        passed += 1;
    }
    // In any span of time, at most the capacity and what refills in it.
    let bound = 100 + start.elapsed().as_millis() as u64 / 10 + 1;
    assert!(passed <= bound, "{passed} passed in {:?}", start.elapsed());
}

/// A key whose lease call a cached denial answers asks to lease again later.
#[tokio::test]
async fn a_key_refused_from_the_deny_cache_leases_again_in_the_next_window() {
    let redis = RedisServer::start();
    let limit = Limit::fixed_window("fixed", 40, Duration::from_secs(1))
        .unwrap()
        .leased_for(Duration::from_millis(50))
        .unwrap();
    let limiter = tracked(&redis, limit);
    let s = subject(&limiter, "alice");
    // From the start of a window (they are aligned to whole seconds), so that it has time
    // left for several refusals.
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    tokio::time::sleep(
        Duration::from_nanos(1_000_000_000 - u64::from(into)) + Duration::from_millis(5),
    )
    .await;
    // This window spent (with a lease on the way), then refused: by the store once, then by
    // the deny cache. Each request a lease time apart asks to lease again, and the deny cache
    // answers it, until the next window begins.
    let mut refused = 0;
    for _ in 0..2_000 {
        let outcome = limiter.take(&s, 1).await;
        match outcome.is_allowed() {
            true if refused > 0 => break,
            true => {}
            false => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    }
    assert!(refused > 1, "{refused}");
    limiter.store().idle().await;
    until_leased(&limiter, &s).await;
}
