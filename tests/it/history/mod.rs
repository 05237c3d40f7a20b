//! The history checker: the proof that nothing a limiter takes or gives back lets more through
//! than a limit allows.
//!
//! A run drives two or three limiters sharing one store (the memory store, one Redis, a
//! cluster) with concurrent clients for about a second per scenario: every algorithm, leased
//! and not; takes of random costs, some cancelled; reservations settled lower, equal and
//! higher after random delays that cross window edges and refill periods; refunds; leases
//! returned at random; and, on one Redis, the server paused past the limiters' timeout. Every
//! request the store admitted (decided by it, or from a lease it lent) is recorded with the
//! clock before the call and after its answer and the units it finally counts (less what it
//! gave back); every slot held, from its answer until its release was sent. The limiters'
//! policies are reloaded at random meanwhile (the limit under test unchanged, another rule put
//! before it or taken away, so its policy's place changes): decisions, slots, receipts and
//! leases cross the swaps and must be given back to the limit that took them, and each
//! client's subjects are made once, before the first. `check` then holds
//! each algorithm to its bound, and the run to a share of what was permitted (a limiter that
//! refuses everything is not exact either).
//!
//! Seeded: `TOLLGATE_SEED=<n>` explores other histories (CI runs the default).

mod check;
mod counted;
#[cfg(feature = "rls")]
mod envoy;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tollgate::store::Store;
use tollgate::{
    Algorithm, DecidedBy, FailMode, Limit, Limiter, MemoryStore, Outcome, Policies, RedisStore,
    Target, Verdict,
};

use crate::harness::{RedisServer, Rng};
use crate::nodes::RedisCluster;
use check::{Admitted, Held};
use counted::{PutBack, Take};

/// How far the stores' clocks may be from this process's: every interval is widened by it.
/// Redis reads the same system clock; the memory store reads the system clock once, when it is
/// made, and a monotonic clock since (which drifts from it by parts per million at most).
const SKEW_US: u64 = 50;
/// How long each scenario runs.
const RUN: Duration = Duration::from_millis(1_200);
/// "Far less than permitted": a run that admits less fails. (Settled reservations hold their
/// units until they are settled, leases theirs until they are spent or given back, and the
/// sliding window counter admits about half of its capacity per window under steady demand.)
const FAR_LESS: f64 = 0.3;
/// Clients per scenario.
const CLIENTS: u64 = 6;

/// Hangs `redis` now and then for `run` (the history's length): it answers for a time drawn
/// from `answering` (ms), then hangs for 60 to 120 ms, past the limiters' timeout. The draws
/// come from the run's seed mixed with `salt`.
fn pause_at_random(
    redis: &Arc<RedisServer>,
    salt: u64,
    run: Duration,
    answering: std::ops::Range<u64>,
) -> tokio::task::JoinHandle<()> {
    let redis = Arc::clone(redis);
    let mut rng = Rng::new(seed() ^ salt);
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + run;
        while tokio::time::Instant::now() + Duration::from_millis(300) < until {
            let answering = answering.start + rng.below(answering.end - answering.start);
            tokio::time::sleep(Duration::from_millis(answering)).await;
            redis.hang();
            tokio::time::sleep(Duration::from_millis(60 + rng.below(60))).await;
            redis.resume();
        }
    })
}

fn seed() -> u64 {
    std::env::var("TOLLGATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7011_6a7e)
}

/// The store's clock, as this process reads it.
#[derive(Clone, Copy)]
enum Clock {
    /// The system clock, which Redis reads too.
    Unix,
    /// A memory store made with tokio's clock within `slack_us` after this instant: its time
    /// is the time since it was made, so up to `slack_us` behind the time since this instant
    /// (a thread preempted between the two reads makes that milliseconds under load). (The
    /// memory store's default clock reads the system clock once and a calibrated counter
    /// since, which can drift from the system clock by a millisecond over seconds.)
    Since {
        epoch: tokio::time::Instant,
        slack_us: u64,
    },
}

impl Clock {
    fn now_us(self) -> u64 {
        match self {
            Clock::Unix => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64,
            Clock::Since { epoch, .. } => epoch.elapsed().as_micros() as u64,
        }
    }

    /// No later than the store's time now: the start of an interval that holds it.
    fn early_us(self) -> u64 {
        let slack_us = match self {
            Clock::Unix => 0,
            Clock::Since { slack_us, .. } => slack_us,
        };
        self.now_us().saturating_sub(SKEW_US + slack_us)
    }

    /// No earlier than the store's time now: the end of an interval that holds it.
    fn late_us(self) -> u64 {
        self.now_us() + SKEW_US
    }
}

/// One limit under test.
#[derive(Clone)]
struct Scenario {
    name: &'static str,
    limit: Limit,
}

fn scenarios(remote: bool, slots: bool) -> Vec<Scenario> {
    let w = Duration::from_millis(300);
    let lease = Duration::from_millis(100);
    let mut all = vec![
        Scenario {
            name: "token_bucket",
            limit: Limit::new("tb", 30, 30, w).unwrap(),
        },
        Scenario {
            name: "fixed_window",
            limit: Limit::fixed_window("fw", 30, w).unwrap(),
        },
        Scenario {
            name: "sliding_window",
            limit: Limit::sliding_window("sw", 30, w).unwrap(),
        },
        Scenario {
            name: "sliding_log",
            limit: Limit::sliding_log("sl", 30, w).unwrap(),
        },
    ];
    if slots {
        all.push(Scenario {
            name: "concurrency",
            limit: Limit::concurrency("c", 3)
                .unwrap()
                .slot_ttl(Duration::from_secs(1))
                .unwrap(),
        });
    }
    if remote {
        // A memory store never leases: leased scenarios only where they lease.
        for (name, limit) in [
            ("token_bucket leased", Limit::new("tbl", 30, 30, w).unwrap()),
            (
                "fixed_window leased",
                Limit::fixed_window("fwl", 30, w).unwrap(),
            ),
            (
                "sliding_window leased",
                Limit::sliding_window("swl", 30, w).unwrap(),
            ),
        ] {
            all.push(Scenario {
                name,
                limit: limit.leased_for(lease).unwrap(),
            });
        }
    }
    all
}

/// What a run recorded.
#[derive(Default)]
struct Recorded {
    admitted: Vec<Admitted>,
    /// The same admissions with the units they took, and every put-back sent of them.
    takes: Vec<Take>,
    put_backs: Vec<PutBack>,
    held: Vec<Held>,
    started: u64,
    ended: u64,
}

/// Whether the store (or a lease it lent) admitted the request: the only admissions a limit
/// answers for (failing open and local decisions are the fail mode's).
fn admitted_by_store(outcome: &Outcome) -> bool {
    matches!(
        outcome.verdict(),
        Verdict::Decided {
            decision,
            by: DecidedBy::Store | DecidedBy::Lease,
        } if decision.allowed
    )
}

/// One client: takes until the run ends, and does with each admission what its dice say.
async fn client<St: Store + Clone>(
    clock: Clock,
    limiters: Arc<Vec<Limiter<St>>>,
    mut rng: Rng,
    concurrency: bool,
    period: Duration,
    until: tokio::time::Instant,
    recorded: Arc<Mutex<Recorded>>,
) {
    let period_us = period.as_micros() as u64;
    // Settlements and refunds under way: awaited before the client is done.
    let mut settling = Vec::new();
    // Made once: after a reload each call resolves them again.
    let subjects: Vec<_> = limiters
        .iter()
        .map(|l| {
            l.subject("client", Target::route(&Method::POST, "/v1"))
                .unwrap()
        })
        .collect();
    while tokio::time::Instant::now() < until {
        let i = rng.below(limiters.len() as u64) as usize;
        let (limiter, subject) = (&limiters[i], &subjects[i]);
        let cost = if concurrency { 1 } else { 1 + rng.below(4) };
        let before = clock.early_us();
        let take = limiter.take(subject, cost);
        let mut outcome = if rng.below(20) == 0 {
            // Cancelled at a random point: whatever it took, no request ran.
            match tokio::time::timeout(Duration::from_micros(rng.below(400)), take).await {
                Ok(outcome) => outcome,
                Err(_) => continue,
            }
        } else {
            take.await
        };
        let after = clock.late_us();
        if !admitted_by_store(&outcome) {
            if !outcome.is_allowed() {
                // Refused: come back a little later, as a client does.
                tokio::time::sleep(Duration::from_micros(200 + rng.below(800))).await;
            }
            continue;
        }
        if concurrency {
            let hold = Duration::from_micros(rng.below(20_000));
            tokio::time::sleep(hold).await;
            let release = clock.early_us();
            drop(outcome);
            recorded.lock().unwrap().held.push(Held {
                from: after,
                until: release,
            });
            continue;
        }
        let receipt = outcome.receipt().expect("an admission has a receipt");
        assert_eq!(receipt.units(), cost);
        // What the request finally counts: a put-back is taken to have happened (if it did
        // not, the store kept more, which no bound minds).
        let delay = Duration::from_micros(rng.below(2 * period_us));
        let (units, plan): (u64, Plan) = match rng.below(6) {
            0 | 1 => (cost, Plan::Keep),
            2 => {
                let actual = rng.below(cost);
                (actual, Plan::Settle(actual))
            }
            3 => (cost, Plan::Settle(cost)),
            4 => (cost, Plan::Settle(cost + 1 + rng.below(3))),
            _ => {
                let back = 1 + rng.below(cost);
                (cost - back, Plan::Refund(back))
            }
        };
        let take = {
            let mut recorded = recorded.lock().unwrap();
            recorded.admitted.push(Admitted {
                before,
                after,
                units,
            });
            recorded.takes.push(Take {
                before,
                after,
                units: cost,
            });
            recorded.takes.len() - 1
        };
        if let Plan::Keep = plan {
            drop(receipt);
            continue;
        }
        let limiter = limiter.clone();
        let recorded = Arc::clone(&recorded);
        settling.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let back = match plan {
                Plan::Settle(actual) => cost.saturating_sub(actual),
                Plan::Refund(back) => back,
                Plan::Keep => 0,
            };
            if back > 0 {
                recorded.lock().unwrap().put_backs.push(PutBack {
                    take,
                    sent: clock.early_us(),
                    units: back,
                });
            }
            let mut receipt = receipt;
            // A put-back may fail or time out while the store is paused.
            let _ = match plan {
                Plan::Settle(actual) => limiter.settle(receipt, actual).await,
                Plan::Refund(back) => limiter.refund(&mut receipt, back).await,
                Plan::Keep => Ok(()),
            };
        }));
    }
    for task in settling {
        task.await.unwrap();
    }
}

/// The policies of a run: `limit` under the rule the clients' route matches, first, or second
/// behind another rule when `behind`.
fn shape(limit: &Limit, behind: bool) -> Policies {
    let mut policies = Policies::builder();
    if behind {
        let other = Limit::fixed_window("other", 1, Duration::from_secs(1)).unwrap();
        policies = policies.rule(tollgate::Rule::new("other", "/other").limit(other));
    }
    policies
        .rule(tollgate::Rule::new("v1", "/v1").limit(limit.clone()))
        .build()
        .unwrap()
}

enum Plan {
    Keep,
    Settle(u64),
    Refund(u64),
}

/// Runs one scenario on `store` with `instances` limiters and checks its history.
async fn run<St: Store + Clone>(
    clock: Clock,
    store: St,
    label: &'static str,
    instances: usize,
    scenario: Scenario,
    seed: u64,
    min_share: f64,
) -> Result<(), String> {
    let limit = scenario.limit.clone();
    let limiters: Arc<Vec<Limiter<St>>> = Arc::new(
        (0..instances)
            .map(|_| {
                Limiter::builder()
                    .store(store.clone())
                    .key_prefix(format!("h-{label}-{seed}"))
                    .policies(shape(&limit, false))
                    .share_buckets(true)
                    .timeout(Duration::from_millis(50))
                    .fail_mode(FailMode::Open)
                    .build()
                    .unwrap()
            })
            .collect(),
    );
    let concurrency = limit.algorithm() == Algorithm::Concurrency;
    let recorded = Arc::new(Mutex::new(Recorded {
        started: clock.now_us(),
        ..Recorded::default()
    }));
    let until = tokio::time::Instant::now() + RUN;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(client(
            clock,
            Arc::clone(&limiters),
            Rng::new(seed ^ (c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            concurrency,
            limit.period(),
            until,
            Arc::clone(&recorded),
        )));
    }
    // Policies reloaded at random: a new generation each time, the limit under test in the
    // first or second place.
    {
        let limiters = Arc::clone(&limiters);
        let limit = limit.clone();
        let mut rng = Rng::new(seed ^ 0x5e10ad);
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(30 + rng.below(120))).await;
                let limiter = &limiters[rng.below(limiters.len() as u64) as usize];
                limiter
                    .reload(shape(&limit, rng.below(2) == 0))
                    .expect("the policies reload");
            }
        }));
    }
    // Leases returned at random, as a process that shuts down does.
    if limit.lease_time().is_some() {
        let limiters = Arc::clone(&limiters);
        let mut rng = Rng::new(seed ^ 0x1ea5e);
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
                let limiter = &limiters[rng.below(limiters.len() as u64) as usize];
                let _ = limiter.return_leases().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut recorded = Arc::try_unwrap(recorded)
        .ok()
        .expect("every client is done")
        .into_inner()
        .unwrap();
    recorded.ended = clock.now_us();
    let what = format!("{label} {}, seed {seed}", scenario.name);
    check_history(&what, &limit, &recorded, min_share)
}

fn check_history(what: &str, limit: &Limit, r: &Recorded, min_share: f64) -> Result<(), String> {
    let capacity = limit.capacity();
    let w = limit.period().as_micros() as u64;
    let context = |e: String| format!("{what}: {e}");
    let (started, ended) = (r.started, r.ended);
    let permitted = match limit.algorithm() {
        Algorithm::TokenBucket => {
            // Leased units may be spent up to a lease time after they were taken.
            let slack = limit.lease_time().map_or(0, |l| l.as_micros() as u64);
            check::token_bucket(&r.admitted, capacity, limit.refill(), w, slack)
                .map_err(context)?;
            counted::token_bucket(&r.takes, &r.put_backs, capacity, limit.refill(), w, slack)
                .map_err(context)?;
            check::token_bucket_permitted(started, ended, capacity, limit.refill(), w)
        }
        Algorithm::FixedWindow => {
            check::fixed_window(&r.admitted, capacity, w).map_err(context)?;
            counted::fixed_window(&r.takes, &r.put_backs, capacity, w).map_err(context)?;
            check::fixed_window_permitted(started, ended, capacity, w)
        }
        Algorithm::SlidingWindow => {
            check::sliding_window(&r.admitted, capacity, w).map_err(context)?;
            counted::sliding_window(&r.takes, &r.put_backs, capacity, w).map_err(context)?;
            check::fixed_window_permitted(started, ended, capacity, w)
        }
        Algorithm::SlidingLog => {
            check::sliding_log(&r.admitted, capacity, w).map_err(context)?;
            counted::sliding_log(&r.takes, &r.put_backs, capacity, w).map_err(context)?;
            check::fixed_window_permitted(started, ended, capacity, w)
        }
        Algorithm::Concurrency => {
            check::concurrency(&r.held, capacity).map_err(context)?;
            // Saturated: the slots were held most of the run.
            let busy: u64 = r.held.iter().map(|h| h.until.saturating_sub(h.from)).sum();
            let possible = capacity * (ended - started);
            eprintln!(
                "{what}: slots held {:.0}% of the run",
                100.0 * busy as f64 / possible as f64
            );
            if (busy as f64) < min_share * possible as f64 {
                return Err(context(format!(
                    "slots held {busy} µs of {possible} possible: a limiter that refuses \
                     is not exact either"
                )));
            }
            return Ok(());
        }
        _ => unreachable!("every algorithm is covered"),
    };
    let admitted: u64 = r.admitted.iter().map(|a| a.units).sum();
    eprintln!(
        "{what}: {admitted} of {permitted} permitted ({:.0}%)",
        100.0 * admitted as f64 / permitted.max(1) as f64
    );
    check::saturation(&r.admitted, permitted, min_share, what)
}

/// One scenario's run, checked.
type Run = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs every scenario at once on `store`, and fails with every violation found.
async fn run_all<St: Store + Clone>(
    clock: Clock,
    store: St,
    label: &'static str,
    remote: bool,
    slots: bool,
    instances: usize,
    min_share: f64,
) {
    let seed = seed();
    let runs: Vec<Run> = scenarios(remote, slots)
        .into_iter()
        .enumerate()
        .map(|(i, scenario)| {
            Box::pin(run(
                clock,
                store.clone(),
                label,
                instances,
                scenario,
                seed.wrapping_add(i as u64),
                min_share,
            )) as _
        })
        .collect();
    let failures: Vec<String> = futures_join_all(runs)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(
        failures.is_empty(),
        "{} (replay with TOLLGATE_SEED={seed}):\n{}",
        label,
        failures.join("\n")
    );
}

/// Runs the futures concurrently, each in a task of its own.
async fn futures_join_all(futures: Vec<Run>) -> Vec<Result<(), String>> {
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_on_the_memory_store_keep_every_bound() {
    let epoch = tokio::time::Instant::now();
    let store = MemoryStore::with_tokio_clock(1_000_000);
    let slack_us = epoch.elapsed().as_micros() as u64;
    run_all(
        Clock::Since { epoch, slack_us },
        store,
        "memory",
        false,
        true,
        2,
        FAR_LESS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_on_one_redis_keep_every_bound_through_pauses() {
    let redis = Arc::new(RedisServer::start());
    let store = RedisStore::open(&redis.url()).unwrap();
    store.load_script().await.unwrap();
    // The server hangs past the limiters' timeout now and then: decisions fail open, calls
    // left behind finish late, put-backs are lost or late.
    let pauses = pause_at_random(&redis, 0x9a05e, RUN, 150..400);
    // A third of the time paused: far less is less again. A decision that times out is
    // left to finish and puts back its slot and units, so slots are in the run too.
    run_all(Clock::Unix, store, "redis", true, true, 3, FAR_LESS / 2.0).await;
    pauses.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_on_a_cluster_keep_every_bound() {
    let cluster = RedisCluster::start(3, 0);
    let store = RedisStore::open_cluster(cluster.urls()).unwrap();
    store.load_script().await.unwrap();
    run_all(Clock::Unix, store, "cluster", true, true, 3, FAR_LESS).await;
}
