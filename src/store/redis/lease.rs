//! Leases in Redis: the decision that lends (`lua/lease.lua`). What a lease did not spend goes
//! back through the one put-back (`lua/put_back.lua`), stamped with the time it was lent.

use std::sync::Arc;

use super::RedisStore;
use super::reply;
use super::scripts::{self, Other};
use crate::algorithm::{check_limits, each_observed};
use crate::store::{Lent, StoreCall};
use crate::{Algorithm, Limit, StoreError};

impl RedisStore {
    pub(super) fn lend(
        &self,
        key: &str,
        limits: &Arc<[Limit]>,
        cost: u64,
        want: u64,
    ) -> StoreCall<Lent> {
        if let Err(error) = check_leasable(limits) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let cost = cost.max(1);
        let script = scripts::other(Other::Lease);
        // Each limit's numbers for one unit; the cost and the most to lend after them.
        let mut evalsha = scripts::evalsha(script, key, limits, 1, false, "-");
        evalsha.arg(cost).arg(want);
        let limits = Arc::clone(limits);
        self.send(evalsha, Some(script), move |reply| {
            parse_lent(reply, &limits, cost)
        })
    }
}

/// The limits a lease may hold: 1 to 8, token buckets and windows.
fn check_leasable(limits: &[Limit]) -> Result<(), StoreError> {
    check_limits(limits)?;
    match limits.iter().find(|l| {
        !matches!(
            l.algorithm(),
            Algorithm::TokenBucket | Algorithm::FixedWindow | Algorithm::SlidingWindow
        )
    }) {
        Some(limit) => Err(StoreError::Invalid(format!(
            "a {} limit cannot be leased",
            limit.algorithm()
        ))),
        None => Ok(()),
    }
}

/// `{passed, lent, time, observations...}` (see `lua/lease.lua`).
fn parse_lent(reply: &redis::Value, limits: &[Limit], cost: u64) -> Option<Lent> {
    let redis::Value::Array(values) = reply else {
        return None;
    };
    let mut head = reply::numbers(values.get(..3)?);
    let (allowed, units, at_us) = (head.next()??, head.next()??, head.next()??);
    let rest = reply::numbers(&values[3..]);
    let (observed, passed) =
        reply::read_observed(std::iter::once(Some(allowed)).chain(rest), limits)?;
    let decisions = each_observed(limits, &observed[..limits.len()], passed, cost);
    Some(Lent::new(decisions, if passed { units } else { 0 }, at_us))
}
