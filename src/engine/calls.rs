//! The direct calls other than a decision: peek, refund, charge, settle and reset, each one
//! store call bounded as decisions are.

use std::future::Future;

use std::time::Duration;

use super::call::{LEFT_TO_FINISH, report};
use crate::resilience::breaker::{PROBE_EVERY_MS, Ticket};
use std::sync::Arc;

use super::{Call, Core, Limiter, Receipt, Stale, Subject};
use crate::store::{Store, StoreCall};
use crate::telemetry::Settled;
use crate::{Decision, Limit, StoreError};

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
        let core = self.shared.core();
        let subject = self.resolved(&core, subject)?;
        let Some(index) = subject.policy() else {
            return Ok(Vec::new());
        };
        let limits = &core.policies.entry(index).limits;
        let call = self.shared.store.peek(subject.key(), limits, cost.max(1));
        core.bounded(call).await
    }

    /// Gives back up to `units` of what `receipt`'s decision took (never more than it still
    /// holds, [`Receipt::units`]), to the window or bucket state that counted them and only
    /// what is still owed there: a token bucket their worth less the refill since they were
    /// taken; a window only while it is the one that counted them; a sliding log the take's
    /// own entries (see [`Store::put_back`]). So a refund never lets
    /// through more than if the units had not been taken. Limits that count
    /// [requests](crate::Limit::per_request) keep theirs. Atomic, in one store call, and this
    /// process's cached denial of the subject is dropped. Nothing happens when the receipt
    /// holds nothing or `units` is 0.
    ///
    /// # Errors
    ///
    /// When the store fails or does not answer within the timeout. The receipt counts the
    /// units as given back either way (a refund that timed out may still happen, and must
    /// never be made twice): a refund lost is units held back until they refill, never an
    /// over-admission.
    pub async fn refund(&self, receipt: &mut Receipt, units: u64) -> Result<(), StoreError> {
        self.own(receipt)?;
        let units = units.min(receipt.units);
        let Some(stamp) = receipt.stamp.as_ref().filter(|_| units > 0) else {
            return Ok(());
        };
        receipt.units -= units;
        let core = self.shared.core();
        if let Some(cache) = &core.deny_cache {
            // The units given back may let a request through sooner than the cached wait.
            cache.forget(&receipt.key);
        }
        // Given back to the limits that counted them, even if a reload replaced them since.
        let call = self
            .shared
            .store
            .put_back(&receipt.key, receipt.limits(), stamp, units, false);
        receipt.core.bounded(call).await
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
        let core = self.shared.core();
        let subject = self.resolved(&core, subject)?;
        match subject.policy() {
            Some(index) => {
                let costed = &core.policies.entry(index).costed;
                self.charge_costed(&core, subject.key(), costed, units)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Takes `units` from those of `limits` that count the cost (all of them: `costed`).
    async fn charge_costed(
        &self,
        core: &Core,
        key: &str,
        costed: &Arc<[Limit]>,
        units: u64,
    ) -> Result<(), StoreError> {
        if units == 0 || costed.is_empty() {
            return Ok(());
        }
        let call = self.shared.store.charge(key, costed, units);
        core.bounded(call).await
    }

    /// Settles a reservation: `receipt`'s decision took an estimate up front
    /// ([`Receipt::units`]), and the work turned out to cost `actual`. The difference is given
    /// back ([`refund`](Self::refund): where the units were counted, only what is still owed
    /// there) when `actual` is lower, or taken now ([`charge`](Self::charge), down to empty at
    /// most) when higher; one store call, none when they are equal. A take the store did not
    /// decide (failed open) took nothing, so its settlement charges the whole `actual` once
    /// the store answers again. What it came to is counted in `tollgate_settlements_total`.
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
    /// let mut outcome = limiter.take(&job, 300).await;
    /// assert!(outcome.is_allowed());
    /// // ...and pay for what it used.
    /// let receipt = outcome.receipt().expect("the store took the units");
    /// limiter.settle(receipt, 120).await?;
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
    pub async fn settle(&self, mut receipt: Receipt, actual: u64) -> Result<(), StoreError> {
        self.own(&receipt)?;
        // Counted, and charged, under the generation that took the units.
        let core = Arc::clone(&receipt.core);
        let telemetry = &core.telemetry;
        let (index, taken) = (receipt.policy, receipt.units);
        let (result, settled) = match actual.cmp(&taken) {
            std::cmp::Ordering::Equal => (Ok(()), Settled::Unchanged),
            std::cmp::Ordering::Less => (
                self.refund(&mut receipt, taken - actual).await,
                Settled::Refunded,
            ),
            std::cmp::Ordering::Greater => (
                {
                    // The receipt is this limiter's (checked above): its policy's limits that
                    // count the cost.
                    let costed = receipt.costed();
                    self.charge_costed(&core, &receipt.key, costed, actual - taken)
                        .await
                },
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

    /// Waits until the background work queued so far has ended, and what it queued in turn:
    /// slot releases, settlements, put-backs of calls given up on (the timeout), leases
    /// taken and given back. Each is a store call bounded by the timeout, so this ends within
    /// a few timeouts while the store answers, and within a few seconds when it does not (a
    /// call left to finish is waited for at most 5 s). At once with an in-process store,
    /// whose calls end when made. Call it when shutting down (after
    /// [`return_leases`](Self::return_leases)), so that what this process holds is given
    /// back before it exits.
    pub async fn flush(&self) {
        let worker = self.shared.core.load().worker.clone();
        if let Some(worker) = worker {
            worker.idle().await;
        }
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
        let core = self.shared.core();
        let subject = self.resolved(&core, subject)?;
        let policy = subject.policy();
        if let Some(cache) = &core.deny_cache {
            cache.forget(subject.key());
        }
        if let Some(leases) = &core.leases {
            // Units leased from the bucket before it was reset are not owed to it.
            leases.forget(subject.key());
        }
        let Some(index) = policy else {
            return Ok(());
        };
        let limits = &core.policies.entry(index).limits;
        let call = self.shared.store.reset(subject.key(), limits);
        core.bounded(call).await
    }
}

impl<St> Limiter<St> {
    /// `subject` under the generation `core`, when this limiter made it.
    fn resolved<'s>(
        &self,
        core: &Core,
        subject: &'s Subject,
    ) -> Result<std::borrow::Cow<'s, Subject>, StoreError> {
        self.resolve(core, subject).map_err(|stale| match stale {
            Stale::Foreign => foreign("subject"),
            Stale::Gone(error) => StoreError::Invalid(format!(
                "the policies were reloaded since this subject was made: {error}"
            )),
        })
    }

    /// Whether this limiter's decision made `receipt`.
    fn own(&self, receipt: &Receipt) -> Result<(), StoreError> {
        match receipt.core.address() == self.shared.core.load().address() {
            true => Ok(()),
            false => Err(foreign("receipt")),
        }
    }
}

/// The error of a subject or receipt made by another limiter (another engine, other policies).
fn foreign(what: &str) -> StoreError {
    StoreError::Invalid(format!(
        "this {what} was made by another limiter: its policy is another limiter's; make it \
         with this limiter"
    ))
}

impl Core {
    /// A store call other than a decision (a direct call, a put-back, a lease taken in the
    /// background, a lease given back), bounded as decisions are: through the breaker and
    /// within the timeout, its time in `tollgate_store_duration_seconds`; cancelled by its
    /// caller, it is left to finish (a [`Call`]), given up on at the timeout, dropped and
    /// counted as failed.
    pub(crate) async fn bounded<T: Send + 'static>(
        &self,
        call: StoreCall<T>,
    ) -> Result<T, StoreError> {
        // An in-process store (no breaker) answers when first polled.
        let Some(breaker) = &self.breaker else {
            return call.await;
        };
        let ticket = breaker.admit()?;
        self.admitted(ticket, call).await
    }

    /// [`bounded`](Self::bounded), for background work that must not be lost to a blip (a
    /// put-back): while the breaker is open or the calls in flight are at their bound, it
    /// waits for its turn (a probe's interval at a time), for at most [`LEFT_TO_FINISH`].
    pub(crate) async fn patient<T: Send + 'static>(
        &self,
        call: StoreCall<T>,
    ) -> Result<T, StoreError> {
        let Some(breaker) = &self.breaker else {
            return call.await;
        };
        let started = tokio::time::Instant::now();
        let ticket = loop {
            match breaker.admit() {
                Ok(ticket) => break ticket,
                Err(error) if started.elapsed() >= LEFT_TO_FINISH => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(PROBE_EVERY_MS)).await,
            }
        };
        self.admitted(ticket, call).await
    }

    async fn admitted<T: Send + 'static>(
        &self,
        ticket: Ticket,
        call: StoreCall<T>,
    ) -> Result<T, StoreError> {
        let started = tokio::time::Instant::now();
        let mut call = Call::new(call, Some(ticket), self.worker.clone());
        let pending = std::future::poll_fn(|cx| {
            let future = call.future.as_mut().expect("polled until it ends");
            std::pin::Pin::new(future).poll(cx)
        });
        let answer = match tokio::time::timeout(self.timeout, pending).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        call.future = None;
        if let Some(ticket) = call.ticket.take() {
            self.telemetry.store_duration(started.elapsed());
            report(ticket, &answer);
        }
        answer
    }
}
