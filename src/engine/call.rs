//! [`Call`]: a store call under way, what happens to one its caller leaves behind, and the
//! [`Answer`] of a decision.

use std::future::Future;
use std::time::Duration;

use super::InFlight;
use super::worker::{Chore, Worker};
use crate::algorithm::binding;
use crate::resilience::breaker::Ticket;
use crate::store::{Stamp, Taken};
use crate::{Decision, StoreError};

/// What the engine reads of a store's answer: the binding limit's decision, and every
/// limit's when the call reports them.
pub(crate) trait Answer: Send + 'static {
    /// `None` when the answer names no binding limit (a store that misreports).
    fn into_parts(self) -> Option<(Decision, Vec<Decision>)>;
    /// Whether the request passed (and took its units and slots).
    fn took(&self) -> bool;
    /// The same answer from every limit's decision; `None` when they name no binding limit.
    fn from_each(each: Vec<Decision>) -> Option<Self>
    where
        Self: Sized;
    /// The take's stamp, taken out, when the call was a stamped take that passed.
    fn stamp(&mut self) -> Option<Stamp> {
        None
    }
}

impl Answer for Decision {
    fn into_parts(self) -> Option<(Decision, Vec<Decision>)> {
        Some((self, Vec::new()))
    }

    fn took(&self) -> bool {
        self.allowed
    }

    fn from_each(each: Vec<Decision>) -> Option<Self> {
        binding(&each)
    }
}

impl Answer for Vec<Decision> {
    fn into_parts(self) -> Option<(Decision, Vec<Decision>)> {
        Some((binding(&self)?, self))
    }

    fn took(&self) -> bool {
        crate::algorithm::passed(self)
    }

    fn from_each(each: Vec<Decision>) -> Option<Self> {
        Some(each)
    }
}

/// A store's answer to a decision, with the take's stamp when the call was a stamped take.
pub(crate) struct Stamped<A> {
    pub(crate) answer: A,
    pub(crate) stamp: Option<Stamp>,
}

impl<A: Answer> Answer for Stamped<A> {
    fn into_parts(self) -> Option<(Decision, Vec<Decision>)> {
        self.answer.into_parts()
    }

    fn took(&self) -> bool {
        self.answer.took()
    }

    fn from_each(each: Vec<Decision>) -> Option<Self> {
        A::from_each(each).map(|answer| Stamped {
            answer,
            stamp: None,
        })
    }

    fn stamp(&mut self) -> Option<Stamp> {
        self.stamp.take()
    }
}

/// A decision's store call: the store's own (`D`), or a stamped take (the store's
/// [`take`](crate::store::Store::take), or a call that also takes a lease), which reports every limit.
pub(crate) enum Asking<D> {
    Store(D),
    Take(crate::store::StoreCall<Taken>),
}

impl<D, A> Future for Asking<D>
where
    D: Future<Output = Result<A, StoreError>> + Unpin,
    A: Answer,
{
    type Output = Result<Stamped<A>, StoreError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Asking::Store(call) => std::pin::Pin::new(call).poll(cx).map(|answer| {
                answer.map(|answer| Stamped {
                    answer,
                    stamp: None,
                })
            }),
            Asking::Take(call) => call.as_mut().poll(cx).map(|answer| {
                answer.and_then(|taken| {
                    let answer = A::from_each(taken.decisions).ok_or_else(|| {
                        StoreError::Reply("a refusal that no limit refuses".to_owned())
                    })?;
                    Ok(Stamped {
                        answer,
                        stamp: taken.stamp,
                    })
                })
            }),
        }
    }
}

/// A store call under way, with its place among those in flight (a remote store).
///
/// A decision dropped before the call ends is a cancelled request (its client went away), not
/// a store failure: the call is left to finish in the limiter's background [`Worker`] (it was
/// sent; Redis runs it anyway), holding its place in flight, and what it comes to is told to
/// the breaker as usual. A call left to finish is waited for at most [`LEFT_TO_FINISH`].
pub(crate) struct Call<D, T = Decision> {
    pub(crate) future: Option<D>,
    pub(crate) ticket: Option<Ticket>,
    /// The slots a decision takes when it passes: freed by a call left to finish.
    pub(crate) in_flight: Option<InFlight>,
    /// Where a call left to finish runs: `None` for an in-process store, whose calls end
    /// when first polled (one left pending is dropped).
    pub(crate) worker: Option<Worker>,
    /// Leaves a call to finish on its own (made where the future's type is known to allow it).
    orphan: fn(D, Option<Ticket>, Option<InFlight>, &Worker),
    answer: std::marker::PhantomData<fn() -> T>,
}

/// The longest a call left to finish is waited for, after which it is dropped and counted as
/// failed: longer than any answer the Redis connection waits for (1 s by default), and
/// shorter than the shortest slot lease is long enough to matter.
pub(crate) const LEFT_TO_FINISH: Duration = Duration::from_secs(5);

impl<D, T> Call<D, T>
where
    D: Future<Output = Result<T, StoreError>> + Send + 'static,
    T: 'static,
{
    pub(crate) fn new(future: D, ticket: Option<Ticket>, worker: Option<Worker>) -> Self {
        Self {
            future: Some(future),
            ticket,
            in_flight: None,
            worker,
            orphan: orphan::<D, T>,
            answer: std::marker::PhantomData,
        }
    }
}

impl<D, T> Call<D, T>
where
    D: Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Answer,
{
    /// A decision, which takes `in_flight`'s slots when it passes.
    pub(crate) fn deciding(
        future: D,
        ticket: Option<Ticket>,
        in_flight: Option<InFlight>,
        worker: Option<Worker>,
    ) -> Self {
        Self {
            future: Some(future),
            ticket,
            in_flight,
            worker,
            orphan: orphan_deciding::<D, T>,
            answer: std::marker::PhantomData,
        }
    }
}

impl<D, T> Call<D, T> {
    /// Gives up waiting for the call (the timeout): it is left to finish, and `untake`, if
    /// any, puts back everything it took (its units and slots) once it has, so that the store
    /// keeps nothing of a decision the fail mode made.
    pub(crate) fn give_up(&mut self, untake: Option<InFlight>) {
        match (untake, &self.worker) {
            (Some(untake), Some(worker)) => {
                if let Some(future) = self.future.take() {
                    (self.orphan)(future, None, Some(untake), worker);
                } else {
                    untake.disarm();
                }
            }
            (untake, _) => {
                self.future = None;
                if let Some(untake) = untake {
                    untake.disarm();
                }
            }
        }
    }
}

/// Runs `future` to its end (at most [`LEFT_TO_FINISH`]) in `worker`, tells the breaker what
/// it came to, then hands the answer to `then`.
fn finish<D, T>(
    future: D,
    ticket: Option<Ticket>,
    worker: &Worker,
    then: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) where
    D: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    worker.run(
        Chore::Finish,
        Box::pin(async move {
            let answer = match tokio::time::timeout(LEFT_TO_FINISH, future).await {
                Ok(answer) => answer,
                Err(_) => Err(StoreError::Timeout(LEFT_TO_FINISH)),
            };
            if let Some(ticket) = ticket {
                report(ticket, &answer);
            }
            then(answer);
        }),
    );
}

/// [`finish`] for a call other than a decision.
fn orphan<D, T>(future: D, ticket: Option<Ticket>, _: Option<InFlight>, worker: &Worker)
where
    D: Future<Output = Result<T, StoreError>> + Send + 'static,
    T: 'static,
{
    finish(future, ticket, worker, drop);
}

/// [`finish`] for a decision: the slots it took, if it passed, are freed at once (its own, by
/// its stamp), since no request holds them. A cancelled request's units are kept, as a
/// request that passed and was then cancelled keeps them; a call given up on puts them back.
fn orphan_deciding<D, T>(
    future: D,
    ticket: Option<Ticket>,
    in_flight: Option<InFlight>,
    worker: &Worker,
) where
    D: Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Answer,
{
    finish(future, ticket, worker, move |answer| {
        if let Some(in_flight) = in_flight {
            match answer {
                Ok(mut answer) if answer.took() => in_flight.stamped(answer.stamp()).release(),
                _ => in_flight.disarm(),
            }
        }
    });
}

/// Tells the breaker what a call came to.
pub(crate) fn report<T>(ticket: Ticket, answer: &Result<T, StoreError>) {
    // Only a store that cannot be reached opens the breaker; one that answered with an error
    // (a script error, say) is up.
    match answer {
        Err(error) if error.unavailable() => ticket.failed(),
        _ => ticket.answered(),
    }
}

impl<D, T> Drop for Call<D, T> {
    fn drop(&mut self) {
        match (self.future.take(), &self.worker) {
            (Some(future), Some(worker)) => {
                (self.orphan)(future, self.ticket.take(), self.in_flight.take(), worker);
            }
            // Ended: the slots were handed on, or were never taken (or an in-process store's
            // call was left pending: nothing runs it).
            _ => {
                if let Some(in_flight) = self.in_flight.take() {
                    in_flight.disarm();
                }
            }
        }
    }
}
