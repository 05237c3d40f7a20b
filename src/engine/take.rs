//! One decision under way: the store's answer within the timeout, or what the fail mode
//! makes of its failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::call::{Answer, Asking, Call, Stamped, report};
use super::outcome::{DecidedBy, Flags, Outcome, Verdict};
use super::{Core, InFlight, Receipt, Releaser};
use crate::resilience::FailMode;
use crate::resilience::breaker::Ticket;
use crate::{Decision, StoreError};

/// What puts back a stamped take given up on: the limiter's store, the generation it was
/// taken under, and the subject's key.
pub(crate) type Untake = (Arc<dyn Releaser>, Arc<Core>, String);

/// What the engine knew when it asked the store.
pub(crate) struct Asked {
    /// When, for a remote store (its calls are timed, and a cached denial counts from here).
    pub(crate) at: Option<Instant>,
    /// The subject's key, when the deny cache or the local fail mode needs it.
    pub(crate) key: Option<String>,
    pub(crate) cost: u64,
}

/// A decision under way, polled with the engine's [`Core`] it was started under (which its
/// owner holds). `Unpin`
/// (the store's future is, and the timer is boxed), so its owner may poll it once where it
/// is made and move it afterwards.
pub(crate) enum Deciding<D, A = Decision> {
    // Waiting for the store, at most the timeout.
    Asking {
        call: Call<Asking<D>, Stamped<A>>,
        // Started when the decision is first pending, so a store that answers at once (the
        // memory store) never arms a timer.
        deadline: Option<Pin<Box<Sleep>>>,
        // Puts back what a stamped take took, if it is given up on (a remote store).
        untake: Option<Box<Untake>>,
        asked: Asked,
        policy: usize,
        flags: Flags,
    },
    // The store was not asked (breaker open, too many calls in flight): the fail mode decides.
    NotAsked {
        error: Option<StoreError>,
        asked: Asked,
        // The slots the decision would hold, under a concurrency limit.
        in_flight: Option<InFlight>,
        policy: usize,
        flags: Flags,
    },
    // Decided without the store.
    Ready {
        outcome: Option<Outcome>,
    },
}

impl<D, A> Deciding<D, A>
where
    D: Future<Output = Result<A, StoreError>> + Unpin,
    A: Answer,
{
    #[inline]
    pub(crate) fn poll_decide(&mut self, cx: &mut Context<'_>, core: &Arc<Core>) -> Poll<Outcome> {
        match self {
            Deciding::Ready { outcome } => {
                Poll::Ready(outcome.take().expect("polled after completion"))
            }
            Deciding::NotAsked {
                error,
                asked,
                in_flight,
                policy,
                flags,
            } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(core.failed(*policy, *flags, error, asked, in_flight.take()))
            }
            Deciding::Asking {
                call,
                deadline,
                untake,
                asked,
                policy,
                flags,
            } => {
                let future = call.future.as_mut().expect("polled after completion");
                let answer = match Pin::new(future).poll(cx) {
                    Poll::Ready(answer) => answer,
                    Poll::Pending => {
                        let sleep = deadline
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(core.timeout)));
                        ready!(sleep.as_mut().poll(cx));
                        // Given up on: a stamped take is left to finish and everything it
                        // took put back, since the fail mode decides the request; another is
                        // dropped (its units stay taken, as a finished decision's would).
                        let untake = untake.take().map(|untake| {
                            let (releaser, core, key) = *untake;
                            InFlight::untaking(releaser, core, key, *policy)
                        });
                        call.give_up(untake);
                        Err(StoreError::Timeout(core.timeout))
                    }
                };
                call.future = None;
                let ticket = call.ticket.take();
                let in_flight = call.in_flight.take();
                Poll::Ready(core.answered(*policy, *flags, answer, asked, ticket, in_flight))
            }
        }
    }
}

impl Core {
    /// What names this engine's limiter to the subjects and receipts it makes: a number no
    /// other limiter of the process has had.
    pub(crate) fn address(&self) -> usize {
        self.id
    }

    /// What the store's answer (or failure) comes to.
    #[inline]
    pub(super) fn answered<A: Answer>(
        self: &Arc<Self>,
        index: usize,
        flags: Flags,
        mut answer: Result<A, StoreError>,
        asked: &mut Asked,
        ticket: Option<Ticket>,
        in_flight: Option<InFlight>,
    ) -> Outcome {
        let policy = self.policies.entry(index);
        let elapsed = asked.at.map(|at| at.elapsed());
        let stamp = answer.as_mut().ok().and_then(Answer::stamp);
        // A custom store could name a limit the policy does not have, or none.
        let answer = answer.and_then(|answer| {
            let (decision, each) = answer
                .into_parts()
                .ok_or_else(|| StoreError::Reply("a refusal that no limit refuses".to_owned()))?;
            match std::iter::once(&decision)
                .chain(&each)
                .find(|d| d.index >= policy.limits.len())
            {
                None => Ok((decision, each)),
                Some(d) => Err(StoreError::Reply(format!(
                    "limit index {} out of range",
                    d.index
                ))),
            }
        });
        if let Some(ticket) = ticket {
            self.telemetry.store_duration(elapsed.unwrap_or_default());
            report(ticket, &answer);
            if let Some(breaker) = &self.breaker {
                self.telemetry.in_flight(breaker.in_flight());
            }
        }
        match answer {
            Ok((decision, each)) => {
                self.outage.answered();
                if let (false, Some(cache), Some(key), Some(at)) =
                    (decision.allowed, &self.deny_cache, &asked.key, asked.at)
                {
                    let limit = &policy.limits[decision.index];
                    cache.insert(key, asked.cost, limit, &decision, at);
                }
                let taken = if decision.allowed { asked.cost } else { 0 };
                let in_flight = in_flight.and_then(|held| match decision.allowed {
                    true => Some(held.stamped(stamp.clone())),
                    false => {
                        held.disarm();
                        None
                    }
                });
                // The key was kept for the receipt: moved into it.
                let receipt = match (flags.receipt && decision.allowed, asked.key.take()) {
                    (true, Some(key)) => Some(Receipt::new(
                        key.into_boxed_str(),
                        self,
                        index,
                        stamp,
                        taken,
                    )),
                    (_, key) => {
                        asked.key = key;
                        None
                    }
                };
                self.decided(index, flags, decision, DecidedBy::Store, elapsed)
                    .with_each(each)
                    .with_taken(taken)
                    .with_in_flight(in_flight)
                    .with_receipt(receipt)
            }
            Err(error) => {
                // The guard serves a local decision instead (disarmed unless one passes); the
                // call left to finish frees what it took in the store.
                self.failed(index, flags, error, asked, in_flight)
            }
        }
    }

    /// What the fail mode makes of a store failure.
    fn failed(
        self: &Arc<Self>,
        index: usize,
        flags: Flags,
        error: StoreError,
        asked: &mut Asked,
        // Slots are held only by a local decision that passes.
        in_flight: Option<InFlight>,
    ) -> Outcome {
        let mode = self.fail_mode;
        self.outage.failed(&error, mode);
        self.telemetry.store_failed(&error, mode);
        let verdict = match (mode, &self.local, &asked.key) {
            (FailMode::Local, Some(local), Some(key)) => {
                // Decided here, against this instance's share; a cost above the share cannot
                // pass until the store is back.
                match local.decide(index, key, asked.cost) {
                    Some(decision)
                        if decision.retry_after != Duration::MAX || !flags.refuses(false) =>
                    {
                        let in_flight = in_flight.and_then(|held| match decision.allowed {
                            true => Some(held.local()),
                            false => {
                                held.disarm();
                                None
                            }
                        });
                        return self
                            .decided(index, flags, decision, DecidedBy::Local, None)
                            .with_in_flight(in_flight);
                    }
                    _ => Verdict::FailedClosed(error),
                }
            }
            (FailMode::Closed, _, _) => Verdict::FailedClosed(error),
            _ => Verdict::FailedOpen(error),
        };
        if let Some(held) = in_flight {
            held.disarm();
        }
        // Failed open, the store took nothing: a settlement charges the whole actual cost.
        let receipt = match (&verdict, flags.receipt, &asked.key) {
            (Verdict::FailedOpen(_), true, Some(key)) => {
                Some(Receipt::new(key.as_str().into(), self, index, None, 0))
            }
            _ => None,
        };
        Outcome::new(verdict, flags).with_receipt(receipt)
    }

    /// Counts and logs a decision.
    #[inline]
    pub(crate) fn decided(
        &self,
        index: usize,
        flags: Flags,
        decision: Decision,
        by: DecidedBy,
        elapsed: Option<Duration>,
    ) -> Outcome {
        let policy = self.policies.entry(index);
        let limit = &policy.limits[decision.index];
        let counted = flags.counted(decision.allowed);
        let near_limit =
            decision.allowed && decision.remaining.saturating_mul(5) <= limit.capacity();
        self.telemetry.decision(index, counted, near_limit);
        tracing::debug!(
            policy = policy.name(),
            outcome = counted.as_str(),
            limit = limit.name(),
            remaining = decision.remaining,
            store_us = elapsed.map_or(0, |e| e.as_micros() as u64),
            "rate-limit decision"
        );
        Outcome::new(Verdict::Decided { decision, by }, flags)
    }
}

/// The store call of a direct take: every limit reported.
type TakeCall = crate::store::StoreCall<Vec<Decision>>;

/// The future of [`Limiter::take`](crate::Limiter::take).
#[must_use = "futures do nothing unless polled"]
pub struct Take {
    deciding: Deciding<TakeCall, Vec<Decision>>,
    core: Arc<Core>,
}

impl Take {
    pub(crate) fn new(deciding: Deciding<TakeCall, Vec<Decision>>, core: Arc<Core>) -> Self {
        Self { deciding, core }
    }
}

impl std::fmt::Debug for Take {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Take").finish_non_exhaustive()
    }
}

impl Future for Take {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        this.deciding.poll_decide(cx, &this.core)
    }
}
