//! What a decision comes to: the [`Verdict`], and the [`Outcome`] a caller reads, with shadow
//! mode and the bypass list applied.

use std::time::Duration;

use super::{InFlight, Receipt};
use crate::telemetry::Outcome as Counted;
use crate::{Decision, StoreError};

/// How a decided subject is treated.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Flags {
    /// Shadow mode: report, never refuse.
    pub(crate) shadow: bool,
    /// A client on the bypass list: report, never refuse.
    pub(crate) bypassed: bool,
    /// The caller settles or refunds: the store is asked for a stamped take, and an
    /// allowed (or failed-open) outcome carries a [`Receipt`].
    pub(crate) receipt: bool,
}

impl Flags {
    /// Whether a decision is refused: denied, and neither shadow mode nor bypass.
    #[inline]
    pub(crate) fn refuses(self, allowed: bool) -> bool {
        !allowed && !self.shadow && !self.bypassed
    }

    /// The `outcome` a decision is counted as.
    #[inline]
    pub(crate) fn counted(self, allowed: bool) -> Counted {
        match () {
            _ if self.bypassed => Counted::Bypassed,
            _ if allowed => Counted::Allowed,
            _ if self.refuses(allowed) => Counted::Limited,
            _ => Counted::ShadowLimited,
        }
    }
}

/// How a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecidedBy {
    /// The store.
    Store,
    /// A denial the store gave earlier, remembered in this process until its wait is over
    /// (the deny cache): the store was not asked.
    DenyCache,
    /// This process, against its share of each limit, while the store fails
    /// ([`FailMode::Local`](crate::FailMode::Local)).
    Local,
    /// This process, from units it leased from the store ahead of the request (see
    /// `lease`).
    Lease,
}

/// What a decision came to, before shadow mode and the bypass list are applied (see
/// [`Outcome::is_allowed`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Verdict {
    /// No limit applies: the subject matches no rule and there is no default policy.
    Unlimited,
    /// The limits decided. The decision is the one of the limit that binds: when refused, the
    /// refusing limit with the longest wait; when allowed, the one with the fewest units left
    /// ([`Decision::index`] says which).
    Decided {
        /// The binding limit's decision; `allowed` says whether the units were taken.
        decision: Decision,
        /// Who decided.
        by: DecidedBy,
    },
    /// The cost is more than the capacity of the limit at `limit`: it can never pass, and the
    /// store was not asked.
    TooCostly {
        /// The cost asked for.
        cost: u64,
        /// The position of the limit among the policy's.
        limit: usize,
    },
    /// The store failed, did not answer within the timeout, or was not asked (breaker open,
    /// too many calls in flight), and [`FailMode::Open`](crate::FailMode::Open) lets the subject pass unlimited.
    FailedOpen(StoreError),
    /// The store failed as above, and [`FailMode::Closed`](crate::FailMode::Closed) refuses (or [`FailMode::Local`](crate::FailMode::Local)
    /// cannot decide a cost above this instance's share).
    FailedClosed(StoreError),
    /// Refused, and nothing asked: the subject was made by another limiter, whose policies
    /// it names (make it with this limiter's [`subject`](crate::Limiter::subject)).
    ForeignSubject,
    /// Refused, and nothing asked: the subject was made under policies since
    /// [reloaded](crate::Limiter::reload), and the ones in force no longer have its rule or
    /// tier (a subject whose rule and tier are still there is resolved again, and decided).
    SubjectGone(super::SubjectError),
}

/// The outcome of [`Limiter::take`](crate::Limiter::take): whether to go ahead, and why.
///
/// Hold it while the work runs: under a [concurrency](crate::Algorithm::Concurrency) limit,
/// dropping it frees the slots (move it into the task that does the work), and its
/// [`receipt`](Outcome::receipt) is what a settlement spends.
#[derive(Debug)]
#[must_use = "check is_allowed(), and hold the outcome while the work runs: dropping it frees \
              a concurrency limit's slots"]
pub struct Outcome {
    verdict: Verdict,
    flags: Flags,
    /// The units the store took.
    taken: u64,
    /// What most outcomes lack, boxed: an outcome is moved a few times on its way to the
    /// caller, and at 112 bytes each move is a few register copies instead of a call to
    /// `memcpy` (232 bytes with these inline).
    rare: Option<Box<Rare>>,
}

/// The parts of an [`Outcome`] only some decisions have.
#[derive(Debug, Default)]
struct Rare {
    /// Every limit's decision, when the store reported them.
    each: Vec<Decision>,
    /// The concurrency slots held, when allowed under a concurrency limit.
    in_flight: Option<InFlight>,
    /// What the store took, to settle or refund.
    receipt: Option<Receipt>,
}

impl Outcome {
    #[inline]
    pub(crate) fn new(verdict: Verdict, flags: Flags) -> Self {
        Self {
            verdict,
            flags,
            taken: 0,
            rare: None,
        }
    }

    /// The rare parts, made when the first is set.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The same outcome, with what the store took.
    #[inline]
    pub(crate) fn with_receipt(mut self, receipt: Option<Receipt>) -> Self {
        if receipt.is_some() {
            self.rare().receipt = receipt;
        }
        self
    }

    /// What the store took for this outcome, taken out to be
    /// [settled](crate::Limiter::settle) or [refunded](crate::Limiter::refund): `Some` when
    /// the store allowed the request (it took the units), or did not answer for it under
    /// [`FailMode::Open`](crate::FailMode::Open) (it took nothing: a settlement charges the
    /// whole actual cost); `None` when it was refused, decided by the deny cache or locally,
    /// or has no limit, and after the first call.
    #[inline]
    pub fn receipt(&mut self) -> Option<Receipt> {
        self.rare.as_mut()?.receipt.take()
    }

    /// The same outcome, holding `in_flight`.
    #[inline]
    pub(crate) fn with_in_flight(mut self, in_flight: Option<InFlight>) -> Self {
        if in_flight.is_some() {
            self.rare().in_flight = in_flight;
        }
        self
    }

    /// The concurrency slots this outcome holds (an allowed subject whose policy has a
    /// [concurrency](crate::Algorithm::Concurrency) limit), taken out to be held as long as
    /// the work runs. Otherwise they are freed when the outcome is dropped.
    #[inline]
    pub(crate) fn in_flight(&mut self) -> Option<InFlight> {
        self.rare.as_mut()?.in_flight.take()
    }

    /// The same outcome, for a decision with which the store took `cost` units.
    #[inline]
    pub(crate) fn with_taken(mut self, cost: u64) -> Self {
        self.taken = cost;
        self
    }

    /// The units the store took for this outcome: the cost (0 counted as 1) when the store
    /// allowed it, else 0 (refused, decided by the deny cache or locally, failed open or
    /// closed, no limit).
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// The same outcome, with every limit's decision as the store reported them.
    #[inline]
    pub(crate) fn with_each(mut self, each: Vec<Decision>) -> Self {
        // One limit's decision is the binding one, which `decisions` reads from the verdict:
        // only a policy of several limits makes the rare parts for it.
        if each.len() > 1 {
            self.rare().each = each;
        }
        self
    }

    /// Whether the caller may go ahead: the limits allowed it (and took its units), or it
    /// passes anyway: shadow mode, a bypassed client, no limit, or a store failure under
    /// [`FailMode::Open`](crate::FailMode::Open).
    #[inline]
    pub fn is_allowed(&self) -> bool {
        match &self.verdict {
            Verdict::Unlimited | Verdict::FailedOpen(_) => true,
            Verdict::Decided { decision, .. } => !self.flags.refuses(decision.allowed),
            Verdict::TooCostly { .. } => !self.flags.refuses(false),
            Verdict::FailedClosed(_) => self.flags.shadow,
            Verdict::ForeignSubject | Verdict::SubjectGone(_) => false,
        }
    }

    /// What was decided, before shadow mode and the bypass list.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// The binding limit's decision, when the limits decided.
    pub fn decision(&self) -> Option<&Decision> {
        match &self.verdict {
            Verdict::Decided { decision, .. } => Some(decision),
            _ => None,
        }
    }

    /// The decision of each limit of the policy, in the policy's order, when the limits
    /// decided ([`Verdict::Decided`]); empty otherwise. Each names its limit by
    /// [`Decision::index`].
    ///
    /// When the request passed, each says what its limit has left. When it was refused,
    /// nothing was taken from any, and each says what its limit made of the request:
    /// `allowed` when that limit alone would have let it through (with a `retry_after` of
    /// zero), else its own wait. A refusal remembered by the deny cache, a decision of the
    /// local fallback or served from a lease, or a custom [`Store`](crate::store::Store) that does not implement
    /// [`Store::decide_each`](crate::store::Store::decide_each) reports the binding limit alone.
    pub fn decisions(&self) -> &[Decision] {
        match &self.verdict {
            Verdict::Decided { decision, .. } => match self.rare.as_deref() {
                Some(rare) if !rare.each.is_empty() => &rare.each,
                _ => std::slice::from_ref(decision),
            },
            _ => &[],
        }
    }

    /// How long to wait before asking again, when refused: the binding limit's wait
    /// ([`Duration::MAX`] when the cost can never pass), or one second after a store failure.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.is_allowed() {
            return None;
        }
        Some(match &self.verdict {
            Verdict::Decided { decision, .. } => decision.retry_after,
            Verdict::TooCostly { .. } | Verdict::ForeignSubject | Verdict::SubjectGone(_) => {
                Duration::MAX
            }
            _ => Duration::from_secs(1),
        })
    }

    /// The verdict, by value.
    #[inline]
    pub fn into_verdict(self) -> Verdict {
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    /// An outcome is moved a few times on its way to the caller: past 128 bytes each move is
    /// a call to `memcpy` (what `Rare` is boxed for).
    #[test]
    fn an_outcome_is_small_enough_to_move_in_registers() {
        assert!(std::mem::size_of::<super::Outcome>() <= 128);
    }
}
