//! The direct calls other than a decision: peek, refund, charge, settle and reset, each one
//! store call bounded as decisions are.

use std::future::Future;

use super::call::report;
use super::{Call, Limiter, Shared, Subject};
use crate::store::{Store, StoreCall};
use crate::telemetry::Settled;
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
        self.shared.bounded(call).await
    }

    /// Gives `units` back to every limit of `subject`'s policy that counts the cost (not
    /// [requests](crate::Limit::per_request)), as if that many fewer had been
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
        match subject.policy() {
            Some(index) => self.refund_at(index, subject.key(), units).await,
            None => Ok(()),
        }
    }

    async fn refund_at(&self, index: usize, key: &str, units: u64) -> Result<(), StoreError> {
        let core = &self.shared.core;
        let limits = &core.policies.entry(index).costed;
        if units == 0 || limits.is_empty() {
            return Ok(());
        }
        if let Some(cache) = &core.deny_cache {
            // The units given back may let a request through sooner than the cached wait.
            cache.forget(key);
        }
        let call = self.shared.store.refund(key, limits, units);
        self.shared.bounded(call).await
    }

    /// Takes `units` from every limit of `subject`'s policy that counts the cost (not
    /// [requests](crate::Limit::per_request)) whatever they hold, down to empty
    /// at most (see [`Limit::charge`](crate::Limit::charge) for each algorithm): work that was
    /// done anyway, or a cost found to be higher than what was taken. Atomic, in one store call.
    /// Nothing happens when no limit applies or `units` is 0.
    ///
    /// # Errors
    ///
    /// When the store fails or does not answer within the timeout (a charge that timed out
    /// may still happen).
    pub async fn charge(&self, subject: &Subject, units: u64) -> Result<(), StoreError> {
        match subject.policy() {
            Some(index) => self.charge_at(index, subject.key(), units).await,
            None => Ok(()),
        }
    }

    async fn charge_at(&self, index: usize, key: &str, units: u64) -> Result<(), StoreError> {
        let limits = &self.shared.core.policies.entry(index).costed;
        if units == 0 || limits.is_empty() {
            return Ok(());
        }
        let call = self.shared.store.charge(key, limits, units);
        self.shared.bounded(call).await
    }

    /// Settles a reservation: `taken` units were taken up front (an estimate, usually
    /// [`Outcome::taken`](crate::Outcome::taken) of the [`take`](Self::take)), and the work
    /// turned out to cost `actual`. The difference is given back ([`refund`](Self::refund))
    /// when `actual` is lower, or taken ([`charge`](Self::charge), down to empty at most) when
    /// higher; one store call, none when they are equal. A take the store did not decide
    /// (failed open, decided locally) took nothing, so its settlement charges the whole
    /// `actual` once the store answers again. What it came to is counted in
    /// `tollgate_settlements_total`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Limiter, Target};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limiter = Limiter::builder()
    ///     .capacity(1_000)
    ///     .period(Duration::from_secs(60))
    ///     .build()?;
    /// let job = limiter.subject("tenant-7", Target::route(&http::Method::POST, "/v1/completions"))?;
    /// // Reserve the most the job may use...
    /// let outcome = limiter.take(&job, 300).await;
    /// assert!(outcome.is_allowed());
    /// // ...and pay for what it used.
    /// limiter.settle(&job, outcome.taken(), 120).await?;
    /// assert_eq!(limiter.peek(&job, 1).await?[0].remaining, 880);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When the store fails or does not answer within the timeout: the reservation stays as it
    /// was taken (a refund lost is units held back until they refill, never an
    /// over-admission; a charge lost is work that was not counted).
    pub async fn settle(
        &self,
        subject: &Subject,
        taken: u64,
        actual: u64,
    ) -> Result<(), StoreError> {
        match subject.policy() {
            Some(index) => self.settle_at(index, subject.key(), taken, actual).await,
            None => Ok(()),
        }
    }

    /// [`settle`](Self::settle) of the request named `key` under the policy at `index`.
    pub(crate) async fn settle_at(
        &self,
        index: usize,
        key: &str,
        taken: u64,
        actual: u64,
    ) -> Result<(), StoreError> {
        let telemetry = &self.shared.core.telemetry;
        let (result, settled) = match actual.cmp(&taken) {
            std::cmp::Ordering::Equal => (Ok(()), Settled::Unchanged),
            std::cmp::Ordering::Less => (
                self.refund_at(index, key, taken - actual).await,
                Settled::Refunded,
            ),
            std::cmp::Ordering::Greater => (
                self.charge_at(index, key, actual - taken).await,
                Settled::Charged,
            ),
        };
        match &result {
            Ok(()) => telemetry.settled(index, settled),
            Err(error) => {
                telemetry.store_error(error);
                telemetry.settled(index, Settled::Failed);
            }
        }
        result
    }

    /// Forgets `subject`'s buckets (whole again), and this process's cached denials of it and
    /// lease on it.
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
        if let Some(leases) = &core.leases {
            // Units leased from the bucket before it was reset are not owed to it.
            leases.forget(subject.key());
        }
        let Some(index) = subject.policy() else {
            return Ok(());
        };
        let limits = &core.policies.entry(index).limits;
        let call = self.shared.store.reset(subject.key(), limits);
        self.shared.bounded(call).await
    }
}

impl<St: Store> Shared<St> {
    /// A store call other than a decision (a direct call, a lease taken in the background, a
    /// lease given back), bounded as decisions are: through the breaker and within the
    /// timeout, its time in `tollgate_store_duration_seconds`; cancelled by its caller, it is
    /// left to finish (a [`Call`]), given up on at the timeout, dropped and counted as failed.
    pub(crate) async fn bounded<T: Send + 'static>(
        &self,
        call: StoreCall<T>,
    ) -> Result<T, StoreError> {
        let core = &self.core;
        let ticket = core.breaker.as_ref().map(|b| b.admit()).transpose()?;
        let started = tokio::time::Instant::now();
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
            core.telemetry.store_duration(started.elapsed());
            report(ticket, &answer);
        }
        answer
    }
}
