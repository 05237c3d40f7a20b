//! The engine: a [`Limiter`] decides for subjects with every protection tollgate has (users
//! read `docs/direct.md`).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::client::{Bypass, ClientId};
use crate::lease::Serve;
use crate::policy::Policies;
use crate::resilience::breaker::Breaker;
use crate::resilience::deny_cache::DenyCache;
use crate::resilience::outage::OutageLog;
use crate::resilience::{FailMode, LocalFallback};
use crate::store::{MemoryStore, Store};
use crate::telemetry::Telemetry;

mod builder;
mod call;
mod calls;
mod claims;
mod in_flight;
mod leasing;
mod outcome;
mod receipt;
mod reload;
mod subject;
mod take;
mod worker;

#[cfg(test)]
pub(crate) use builder::DEFAULT_TIMEOUT;
pub use builder::LimiterBuilder;
pub(crate) use call::{Answer, Asking, Call};
pub(crate) use in_flight::InFlight;
pub(crate) use in_flight::Releaser;
pub(crate) use outcome::Flags;
pub use outcome::{DecidedBy, Outcome, Verdict};
pub use receipt::Receipt;
pub(crate) use reload::Fixed;
pub(crate) use subject::Stale;
pub use subject::{Subject, SubjectError, Target};
pub(crate) use take::Take;
pub(crate) use take::{Asked, Deciding};
pub(crate) use worker::{Chore, Work, Worker};

/// The engine: decides, peeks, refunds and resets for subjects. Built once with
/// [`Limiter::builder`]; cloning is cheap and shares everything (`Send + Sync`). Its
/// policies can be replaced while it runs ([`Limiter::reload`]).
///
/// See `docs/direct.md` for an example.
pub struct Limiter<St = MemoryStore> {
    pub(crate) shared: Arc<Shared<St>>,
}

pub(crate) struct Shared<St> {
    pub(crate) store: St,
    /// The generation in force: each operation loads it once and holds it to its end.
    pub(crate) core: ArcSwap<Core>,
    /// One reload at a time.
    pub(crate) reloading: parking_lot::Mutex<()>,
}

impl<St> Shared<St> {
    /// The generation in force.
    pub(crate) fn core(&self) -> Arc<Core> {
        self.core.load_full()
    }
}

/// Everything but the store: what a decision under way needs. One per generation of the
/// policies: a reload makes a new one (sharing the breaker, worker and outage log), and what a
/// decision leaves behind (slots, receipts, leases under way) holds the one it was made under.
pub(crate) struct Core {
    pub(crate) policies: Arc<Policies>,
    pub(crate) key_prefix: Box<str>,
    /// The key prefix of each policy's buckets: `key_prefix`, and `.tier` in a tier.
    pub(crate) prefixes: Box<[Box<str>]>,
    pub(crate) timeout: Duration,
    pub(crate) fail_mode: FailMode,
    pub(crate) shadow: bool,
    pub(crate) bypass: Bypass,
    pub(crate) outage: Arc<OutageLog>,
    pub(crate) telemetry: Telemetry,
    pub(crate) deny_cache: Option<DenyCache>,
    /// Bounds the calls to a remote store; `None` for an in-process store.
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Decides while the store fails, with [`FailMode::Local`] and a remote store.
    pub(crate) local: Option<LocalFallback>,
    /// The buckets this limiter uses on its store, held while it lives.
    pub(crate) _claims: Option<claims::Claims>,
    /// The leases of leased policies, with a remote store.
    pub(crate) leases: Option<crate::lease::Leases>,
    /// Runs the background work (put-backs, calls left to finish, leases), with a remote
    /// store; an in-process store's calls end at once.
    pub(crate) worker: Option<Worker>,
    /// Names the limiter to its subjects and receipts (see [`Core::address`]); the same in
    /// every generation.
    pub(crate) id: usize,
    /// Counts the generations: 0 when built, one more each reload.
    pub(crate) generation: u64,
    /// When this generation's policies were loaded.
    pub(crate) loaded_at: SystemTime,
    /// What a reload makes the next generation with.
    pub(crate) fixed: Arc<Fixed>,
}

impl Core {
    /// How a decision under the policy at `index` is treated.
    pub(crate) fn flags(&self, index: usize, bypassed: bool) -> Flags {
        Flags {
            shadow: self.shadow || self.policies.entry(index).shadow,
            bypassed,
            receipt: false,
        }
    }

    /// Whether `client` is on the bypass list.
    pub(crate) fn is_bypassed(&self, client: &ClientId<'_>) -> bool {
        !self.bypass.is_empty() && self.bypass.contains(client)
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("policies", &self.policies)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("fail_mode", &self.fail_mode)
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

impl<St> Clone for Limiter<St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St: std::fmt::Debug> std::fmt::Debug for Limiter<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("store", &self.shared.store)
            .field("core", &self.shared.core.load())
            .finish()
    }
}

impl Limiter {
    /// Starts a builder: an in-memory store, fail-open with a 50 ms timeout. Set either
    /// `capacity` and `period` (one limit for every subject) or
    /// [`policies`](LimiterBuilder::policies).
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder::new()
    }
}

impl<St> Limiter<St> {
    /// The store the limiter decides with.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The policies the limiter applies now (a [reload](Self::reload) replaces them).
    pub fn policies(&self) -> Arc<Policies> {
        Arc::clone(&self.shared.core.load().policies)
    }

    /// The generation in force.
    pub(crate) fn core(&self) -> Arc<Core> {
        self.shared.core()
    }
}

impl<St: Store> Limiter<St> {
    /// Takes `cost` units (0 counts as 1) for `subject` from every limit of its policy, all
    /// or nothing, exactly as the HTTP layer does for a request: within the timeout, through
    /// the breaker and the deny cache, and by the fail mode when the store fails. (The other
    /// calls, [`peek`](Self::peek), [`refund`](Self::refund), [`charge`](Self::charge),
    /// [`settle`](Self::settle) and [`reset`](Self::reset), decide nothing: in an outage they
    /// return the store's error, whatever the fail mode.) A subject made by another limiter
    /// is refused ([`Verdict::ForeignSubject`]).
    ///
    /// The [`Outcome`] says whether to go ahead, and what each limit made of it
    /// ([`Outcome::decisions`]):
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Limit, Limiter, Policies, Rule, Target};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policies = Policies::builder()
    ///     .rule(
    ///         Rule::new("upload", "/upload")
    ///             .limit(Limit::fixed_window("per_minute", 3, Duration::from_secs(60))?)
    ///             .limit(Limit::fixed_window("per_day", 100, Duration::from_secs(86_400))?),
    ///     )
    ///     .build()?;
    /// let limiter = Limiter::builder().policies(policies).build()?;
    /// let job = limiter.subject("tenant-7", Target::rule("upload"))?;
    ///
    /// let outcome = limiter.take(&job, 3).await;
    /// assert!(outcome.is_allowed());
    /// let left: Vec<u64> = outcome.decisions().iter().map(|d| d.remaining).collect();
    /// assert_eq!(left, [0, 97]);
    ///
    /// let refused = limiter.take(&job, 1).await;
    /// assert!(!refused.is_allowed());
    /// let per_minute = &refused.decisions()[0];
    /// assert!(!per_minute.allowed && per_minute.retry_after > Duration::ZERO);
    /// assert!(refused.decisions()[1].allowed); // the daily limit alone would have let it pass
    /// # Ok(())
    /// # }
    /// ```
    pub fn take(&self, subject: &Subject, cost: u64) -> Take {
        let core = self.shared.core();
        let verdict = |verdict| Deciding::Ready {
            outcome: Some(Outcome::new(verdict, Flags::default())),
        };
        let deciding = match self.resolve(&core, subject) {
            Err(Stale::Foreign) => verdict(Verdict::ForeignSubject),
            Err(Stale::Gone(error)) => verdict(Verdict::SubjectGone(error)),
            Ok(subject) => match subject.policy() {
                Some(index) => {
                    let flags = Flags {
                        receipt: true,
                        ..core.flags(index, subject.is_bypassed())
                    };
                    let key = Cow::Borrowed(subject.key());
                    self.start(&core, index, key, cost, flags, Store::decide_each)
                }
                None => verdict(Verdict::Unlimited),
            },
        };
        Take::new(deciding, core)
    }

    /// Starts a decision of `cost` on `key` under the policy at `index`: too costly, denied
    /// by the deny cache, not asked (breaker), or asked with `ask` (the store's `decide`, or
    /// `decide_each`).
    #[inline]
    pub(crate) fn start<D, A>(
        &self,
        core: &Arc<Core>,
        index: usize,
        key: Cow<'_, str>,
        cost: u64,
        flags: Flags,
        ask: impl FnOnce(&St, &str, &Arc<[crate::Limit]>, u64) -> D,
    ) -> Deciding<D, A>
    where
        D: Future<Output = Result<A, crate::StoreError>> + Send + Unpin + 'static,
        A: Answer,
    {
        let policy = core.policies.entry(index);
        let cost = cost.max(1);
        if cost > policy.min_capacity {
            let limit = policy
                .limits
                .iter()
                .position(|l| l.cost_of(cost) > l.capacity())
                .unwrap_or(0);
            return Deciding::Ready {
                outcome: Some(Outcome::new(Verdict::TooCostly { cost, limit }, flags)),
            };
        }
        // A leased policy's hot key: from this instance's lease, or asked with one.
        let mut lend = None;
        let mut track = false;
        if let (Some(leases), Some(lease_time)) = (&core.leases, policy.lease) {
            leasing::sweep(&self.shared, core, leases);
            match leases.serve(index, &key, cost, lease_time, tokio::time::Instant::now()) {
                Serve::Lease {
                    decision,
                    refill,
                    at_us,
                } => {
                    if let Some(want) = refill {
                        leasing::refill(&self.shared, core, &key, index, want);
                    }
                    core.telemetry.lease_decision(index);
                    let outcome = core.decided(index, flags, decision, DecidedBy::Lease, None);
                    // Its units were lent at `at_us`: a put-back credits them there.
                    let receipt = flags.receipt.then(|| {
                        let stamp = crate::store::Stamp::new(at_us, cost);
                        let key = key.as_ref().into();
                        Receipt::new(key, core, index, Some(stamp), cost)
                    });
                    return Deciding::Ready {
                        outcome: Some(outcome.with_taken(cost).with_receipt(receipt)),
                    };
                }
                // From here the key's lease call is under way, until `Lending` is granted or
                // dropped (a cached denial, the breaker, a failed or abandoned call).
                Serve::Lend { want } => {
                    lend = Some((want, leasing::Lending::new(&self.shared, core, &key, index)));
                }
                Serve::Plain { track: live } => track = live,
            }
        }
        if let Some(cache) = &core.deny_cache
            && let Some(decision) = cache.check(&key, cost, &policy.limits)
        {
            // Denied in process: the store said so and the wait is not over.
            core.telemetry.deny_cache_hit();
            core.telemetry.decision(index, flags.counted(false), false);
            return Deciding::Ready {
                outcome: Some(Outcome::new(
                    Verdict::Decided {
                        decision,
                        by: DecidedBy::DenyCache,
                    },
                    flags,
                )),
            };
        }
        // A remote store's call is timed from here; a cached denial counts from here too, so it
        // never outlasts the store's word. A remote store is asked only when the breaker lets
        // the call through.
        let keep_key = core.deny_cache.is_some() || core.local.is_some() || flags.receipt;
        let at = core.breaker.is_some().then(tokio::time::Instant::now);
        // The slots a passing decision holds, under a concurrency limit.
        let in_flight = policy.concurrent.then(|| {
            let releaser: Arc<dyn Releaser> = Arc::clone(&self.shared) as _;
            InFlight::new(releaser, Arc::clone(core), key.clone().into_owned(), index)
        });
        // The key is kept (moved, or copied once from a subject's) only when needed.
        let asked = move |key: Cow<'_, str>| Asked {
            at,
            key: keep_key.then(|| key.into_owned()),
            cost,
        };
        let ticket = match core.breaker.as_ref().map(|b| b.admit()).transpose() {
            Ok(ticket) => ticket,
            Err(error) => {
                return Deciding::NotAsked {
                    error: Some(error),
                    asked: asked(key),
                    in_flight,
                    policy: index,
                    flags,
                };
            }
        };
        if let Some(ticket) = &ticket {
            core.telemetry.in_flight(ticket.in_flight());
        }
        // A take whose units or slots may be put back is stamped; given up on (the timeout),
        // what it took is put back.
        let stamped = lend.is_some() || track || flags.receipt || policy.concurrent;
        let untake = (stamped && core.worker.is_some()).then(|| {
            let releaser: Arc<dyn Releaser> = Arc::clone(&self.shared) as _;
            Box::new((releaser, Arc::clone(core), key.clone().into_owned()))
        });
        let decision = match lend {
            Some((want, lending)) => {
                Asking::Take(leasing::lend(&self.shared, core, lending, &key, cost, want))
            }
            None if stamped => {
                let take = self.shared.store.take(&key, &policy.limits, cost);
                Asking::Take(match track {
                    true => leasing::tracked(core, &key, take),
                    false => take,
                })
            }
            None => {
                let mut call = ask(&self.shared.store, &key, &policy.limits, cost);
                // An in-process store (`is_remote` false, so no breaker counts its calls)
                // answers when first polled: decided here, without a call to time or leave
                // behind. One that does not answer at once is polled again with the caller's
                // waker, as any future is. A remote store's call is never polled here.
                if ticket.is_none()
                    && let Poll::Ready(answer) =
                        Pin::new(&mut call).poll(&mut Context::from_waker(Waker::noop()))
                {
                    let outcome =
                        core.answered(index, flags, answer, &mut asked(key), None, in_flight);
                    return Deciding::Ready {
                        outcome: Some(outcome),
                    };
                }
                Asking::Store(call)
            }
        };
        Deciding::Asking {
            call: Call::deciding(decision, ticket, in_flight, core.worker.clone()),
            deadline: None,
            untake,
            asked: asked(key),
            policy: index,
            flags,
        }
    }
}
