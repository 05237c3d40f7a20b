//! [`Receipt`]: what a decision took, for a settlement or a refund to give back where it was
//! counted.

use std::sync::Arc;

use super::Core;
use crate::Limit;
use crate::store::Stamp;

/// What one allowed decision took from the store: the subject, its policy's limits, how many
/// units are still held, and where and when the store counted them. Taken out of an
/// [`Outcome`](crate::Outcome) with [`Outcome::receipt`](crate::Outcome::receipt), and spent
/// by [`Limiter::settle`](crate::Limiter::settle) and
/// [`Limiter::refund`](crate::Limiter::refund): whatever is given back goes to the window or
/// bucket state that counted the units, and only what is still owed there (see
/// [`Store::put_back`](crate::store::Store::put_back)), so no settlement or refund ever lets more
/// through than if the units had not been taken. Not `Clone`: units can be given back once.
///
/// A receipt of a decision the store did not answer for under
/// [`FailMode::Open`](crate::FailMode::Open) holds nothing; settling it charges the whole
/// actual cost.
#[must_use = "a receipt does nothing unless settled or refunded; dropping it keeps what was taken"]
pub struct Receipt {
    pub(crate) key: Box<str>,
    pub(crate) policy: usize,
    /// The generation of the policies the units were taken under (its limits are the ones
    /// they are given back to, even after a reload).
    pub(crate) core: Arc<Core>,
    /// `None`: the store took nothing (failed open), or does not stamp its takes.
    pub(crate) stamp: Option<Stamp>,
    /// Units taken and not given back yet.
    pub(crate) units: u64,
}

impl Receipt {
    /// What the decision of `units` on `key` under the policy at `policy` of `core` took.
    pub(crate) fn new(
        key: Box<str>,
        core: &Arc<Core>,
        policy: usize,
        stamp: Option<Stamp>,
        units: u64,
    ) -> Self {
        Self {
            key,
            policy,
            core: Arc::clone(core),
            stamp,
            units,
        }
    }

    /// The limits the units were taken from.
    pub(crate) fn limits(&self) -> &Arc<[Limit]> {
        &self.core.policies.entry(self.policy).limits
    }

    /// Those of them that count the cost.
    pub(crate) fn costed(&self) -> &Arc<[Limit]> {
        &self.core.policies.entry(self.policy).costed
    }

    /// The units the store took and still holds for this decision: what a settlement or
    /// refund may give back at most.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// Where and when the store took them; `None` when it took nothing.
    pub fn stamp(&self) -> Option<&Stamp> {
        self.stamp.as_ref()
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("policy", &self.policy)
            .field("units", &self.units)
            .field("stamp", &self.stamp)
            .finish_non_exhaustive()
    }
}
