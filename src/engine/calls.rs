//! The direct calls other than a decision: peek, refund and reset, each one store call
//! bounded as decisions are.

use std::future::Future;

use super::take::report;
use super::{Call, Limiter, Subject};
use crate::store::{Store, StoreCall};
use crate::{Decision, StoreError};

impl<St: Store> Limiter<St> {
    /// The state of every limit of `subject`'s policy, in order, for a request of `cost`
    /// (0 counts as 1), without taking anything: `remaining`, `reset_after`, and `allowed`
    /// and `retry_after` as they would be for `cost` now. Nothing is written (in Redis, one
    /// read-only script call). Empty when no limit applies.
    ///
    /// # Errors
    ///
    /// When the store fails or does not answer within the timeout; the fail mode does not
    /// apply.
    pub async fn peek(&self, subject: &Subject, cost: u64) -> Result<Vec<Decision>, StoreError> {
        let Some(index) = subject.policy() else {
            return Ok(Vec::new());
        };
        let limits = &self.shared.core.policies.entry(index).limits;
        let call = self.shared.store.peek(subject.key(), limits, cost.max(1));
        self.bounded(call).await
    }

    /// Gives `units` back to every limit of `subject`'s policy, as if that many fewer had been
    /// taken: never above capacity, never before now (a token bucket is at most full now; a
    /// window's count never goes below zero; a sliding log drops its newest entries). Atomic,
    /// in one store call, and this process's cached denial of the subject is dropped. Nothing
    /// happens when no limit applies or `units` is 0.
    ///
    /// # Errors
    ///
    /// When the store fails or does not answer within the timeout (a refund that timed out
    /// may still happen).
    pub async fn refund(&self, subject: &Subject, units: u64) -> Result<(), StoreError> {
        let Some(index) = subject.policy() else {
            return Ok(());
        };
        if units == 0 {
            return Ok(());
        }
        let core = &self.shared.core;
        if let Some(cache) = &core.deny_cache {
            // The units given back may let a request through sooner than the cached wait.
            cache.forget(subject.key());
        }
        let limits = &core.policies.entry(index).limits;
        let call = self.shared.store.refund(subject.key(), limits, units);
        self.bounded(call).await
    }

    /// Forgets `subject`'s buckets (whole again) and this process's cached denials of it.
    /// Other instances' cached denials run out on their own, within their
    /// [`deny_cache_max`](crate::LimiterBuilder::deny_cache_max).
    ///
    /// # Errors
    ///
    /// When the store fails or does not answer within the timeout.
    pub async fn reset(&self, subject: &Subject) -> Result<(), StoreError> {
        let core = &self.shared.core;
        if let Some(cache) = &core.deny_cache {
            cache.forget(subject.key());
        }
        let Some(index) = subject.policy() else {
            return Ok(());
        };
        let limits = &core.policies.entry(index).limits;
        let call = self.shared.store.reset(subject.key(), limits);
        self.bounded(call).await
    }

    /// A store call other than a decision, bounded as decisions are: through the breaker and
    /// within the timeout; cancelled by its caller, it is left to finish (a [`Call`]), given up
    /// on at the timeout, dropped and counted as failed.
    async fn bounded<T: Send + 'static>(&self, call: StoreCall<T>) -> Result<T, StoreError> {
        let core = &self.shared.core;
        let ticket = core.breaker.as_ref().map(|b| b.admit()).transpose()?;
        let mut call = Call::new(call, ticket);
        let pending = std::future::poll_fn(|cx| {
            let future = call.future.as_mut().expect("polled until it ends");
            std::pin::Pin::new(future).poll(cx)
        });
        let answer = match tokio::time::timeout(core.timeout, pending).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout(core.timeout)),
        };
        call.future = None;
        if let Some(ticket) = call.ticket.take() {
            report(ticket, &answer);
        }
        answer
    }
}
