//! The reply of a deciding script (`lua/decide.lua` and the algorithms' own scripts) or of
//! the peek script, turned into decisions.

use crate::algorithm::{Observation, decide_observed, each_observed};
use crate::limit::MAX_LIMITS;
use crate::store::{Stamp, Taken};
use crate::{Algorithm, Decision, Limit};

/// Turns the peek script's reply into each limit's decision (see `lua/peek.lua`).
pub(super) fn parse_peek(
    reply: &redis::Value,
    limits: &[Limit],
    cost: u64,
) -> Option<Vec<Decision>> {
    let redis::Value::Array(values) = reply else {
        return None;
    };
    let mut values = values.iter().map(|v| match v {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    });
    let decisions = limits
        .iter()
        .enumerate()
        .map(|(i, limit)| {
            let seen = Observation::read(limit.algorithm(), &mut values)?;
            Some(
                limit
                    .peek_observed(&seen, limit.cost_of(cost))
                    .with_index(i),
            )
        })
        .collect();
    if values.next().is_some() {
        return None;
    }
    decisions
}

/// Turns the script's reply into a decision (see `lua/decide.lua`).
pub(super) fn parse_reply(reply: &redis::Value, limits: &[Limit], cost: u64) -> Option<Decision> {
    let (observed, allowed) = parse_observed(reply, limits)?;
    Some(decide_observed(
        limits,
        &observed[..limits.len()],
        allowed,
        cost,
    ))
}

/// Turns the script's reply into every limit's decision.
pub(super) fn parse_each(
    reply: &redis::Value,
    limits: &[Limit],
    cost: u64,
) -> Option<Vec<Decision>> {
    let (observed, allowed) = parse_observed(reply, limits)?;
    Some(each_observed(
        limits,
        &observed[..limits.len()],
        allowed,
        cost,
    ))
}

/// Turns a stamped take's reply (`{the reply, the time}`, see `lua/decide.lua`) into every
/// limit's decision and, when the request passed, its stamp.
pub(super) fn parse_taken(reply: &redis::Value, limits: &[Limit], cost: u64) -> Option<Taken> {
    let redis::Value::Array(values) = reply else {
        return None;
    };
    let [inner, redis::Value::Int(now)] = values.as_slice() else {
        return None;
    };
    let now = u64::try_from(*now).ok()?;
    let (observed, allowed) = parse_observed(inner, limits)?;
    let observed = &observed[..limits.len()];
    let stamp = allowed.then(|| Stamp::observed(limits, observed, now, cost.max(1)));
    Some(Taken::new(
        each_observed(limits, observed, allowed, cost),
        stamp,
    ))
}

/// What the script observed of each limit (the first `limits.len()`), and whether the request
/// passed.
fn parse_observed(
    reply: &redis::Value,
    limits: &[Limit],
) -> Option<([Observation; MAX_LIMITS], bool)> {
    use redis::Value::{Array, Int};
    let mut observed = [Observation::TokenBucket { full_after: 0 }; MAX_LIMITS];
    let allowed = match (reply, limits) {
        (Int(packed), [limit]) => {
            let (allowed, seen) = Observation::from_packed(limit, *packed)?;
            observed[0] = seen;
            allowed
        }
        (Array(values), _) => return read_observed(numbers(values), limits),
        _ => return None,
    };
    Some((observed, allowed))
}

/// A reply's numbers, `None` for what is not a non-negative integer.
pub(super) fn numbers(values: &[redis::Value]) -> impl Iterator<Item = Option<u64>> + '_ {
    values.iter().map(|v| match v {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    })
}

/// Whether the request passed (1 or 0), then what was observed of each limit: the whole of
/// `values`, or `None`.
pub(super) fn read_observed(
    mut values: impl Iterator<Item = Option<u64>>,
    limits: &[Limit],
) -> Option<([Observation; MAX_LIMITS], bool)> {
    let mut observed = [Observation::TokenBucket { full_after: 0 }; MAX_LIMITS];
    if limits.len() > MAX_LIMITS {
        return None;
    }
    let allowed = match values.next()?? {
        0 => false,
        1 => true,
        _ => return None,
    };
    for (limit, seen) in limits.iter().zip(observed.iter_mut()) {
        *seen = Observation::read(limit.algorithm(), &mut values)?;
    }
    if values.next().is_some() {
        return None;
    }
    Some((observed, allowed))
}

/// Reading observations from a script's reply.
trait ReadObservation: Sized {
    fn read(algorithm: Algorithm, numbers: &mut impl Iterator<Item = Option<u64>>) -> Option<Self>;
    fn from_packed(limit: &Limit, reply: i64) -> Option<(bool, Self)>;
}

impl ReadObservation for Observation {
    /// Reads the observation of a limit of `algorithm` from the script's numbers, taking as
    /// many as the algorithm observes; `None` when one is missing or not a number.
    fn read(algorithm: Algorithm, numbers: &mut impl Iterator<Item = Option<u64>>) -> Option<Self> {
        let mut next = || numbers.next().flatten();
        Some(match algorithm {
            Algorithm::TokenBucket => Self::TokenBucket {
                full_after: next()?,
            },
            Algorithm::FixedWindow => Self::FixedWindow {
                current: next()?,
                elapsed_ms: next()?,
            },
            Algorithm::SlidingWindow => Self::SlidingWindow {
                current: next()?,
                previous: next()?,
                elapsed_ms: next()?,
            },
            Algorithm::SlidingLog => Self::SlidingLog {
                count: next()?,
                oldest: next()?,
                newest: next()?,
                needed: next()?,
            },
            Algorithm::Concurrency => Self::Concurrency { in_use: next()? },
        })
    }

    /// Reads the one integer a single token-bucket or fixed-window limit replies with
    /// (`lua/decide.lua`): whether it allowed, and what it observed.
    fn from_packed(limit: &Limit, reply: i64) -> Option<(bool, Self)> {
        let (allowed, packed) = if reply > 0 {
            (true, u64::try_from(reply - 1).ok()?)
        } else {
            (false, u64::try_from(-1 - reply).ok()?)
        };
        let observation = match limit.algorithm() {
            Algorithm::TokenBucket => Self::TokenBucket { full_after: packed },
            Algorithm::FixedWindow => {
                let window = limit.window_ms();
                Self::FixedWindow {
                    current: packed / window,
                    elapsed_ms: packed % window,
                }
            }
            _ => return None,
        };
        Some((allowed, observation))
    }
}
