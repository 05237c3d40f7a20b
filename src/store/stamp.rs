//! [`Stamp`]: where and when a store call took a request's units, and [`Taken`]: a decision
//! with its stamp. Every put-back ([`Store::put_back`](super::Store::put_back)) spends one.

use std::sync::Arc;

use crate::algorithm::Observation;
use crate::{Algorithm, Decision, Limit};

/// Where and when one store call took a request's units, as the store saw it: what a
/// put-back needs to credit them where they were counted and nowhere else.
///
/// - `at_us`: the store's clock at the take (microseconds since the Unix epoch). A window
///   gets units back only while it is the window of `at_us`; a token bucket gets their worth
///   less the refill since `at_us`.
/// - for each [sliding log](Algorithm::SlidingLog) limit, the time its entries were given (a
///   take's entries come after every entry already there, so it may be later than `at_us`).
/// - the concurrency slot the take holds, when the store names slots (Redis does).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stamp {
    at_us: u64,
    /// The request's cost as the take counted it (before [`Limit::per_request`]).
    cost: u64,
    /// The rest, when there is any (boxed: a stamp travels inside every receipt and slot
    /// guard, and most takes have neither a sliding log nor a named slot).
    more: Option<Box<More>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct More {
    /// Per limit of the call, in order, where its units are: for a sliding log the time of its
    /// entries, `at_us` for the others. Empty when no limit is a sliding log.
    marks: Vec<u64>,
    slot: Option<Arc<str>>,
}

impl Stamp {
    /// A take of `cost` units at `at_us` by the store's clock, with nothing else to say (no
    /// sliding log, no named slot).
    pub fn new(at_us: u64, cost: u64) -> Self {
        Self {
            at_us,
            cost,
            more: None,
        }
    }

    /// The stamp of a decision that took `cost` at `now`, its limits observed as `observed`:
    /// each sliding log's entries are at `max(now, newest + 1)`, as `lua/sliding_log.lua`
    /// gives them.
    pub(crate) fn observed(
        limits: &[Limit],
        observed: &[Observation],
        now: u64,
        cost: u64,
    ) -> Self {
        let mut stamp = Self::new(now, cost);
        if limits
            .iter()
            .any(|l| l.algorithm() == Algorithm::SlidingLog)
        {
            let marks = limits
                .iter()
                .zip(observed)
                .map(|(limit, seen)| match *seen {
                    Observation::SlidingLog { count, newest, .. }
                        if count > 0 && newest >= limit.window_us() =>
                    {
                        now.saturating_add(newest - limit.window_us() + 1)
                    }
                    _ => now,
                })
                .collect();
            stamp.more = Some(Box::new(More { marks, slot: None }));
        }
        stamp
    }

    /// The same stamp, holding the concurrency slot named `slot`.
    pub fn with_slot(mut self, slot: Arc<str>) -> Self {
        self.more.get_or_insert_default().slot = Some(slot);
        self
    }

    /// The store's clock at the take, in microseconds since the Unix epoch.
    pub fn at_us(&self) -> u64 {
        self.at_us
    }

    /// The request's cost as the take counted it.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Where the take's units are in the limit at position `index`: the time of a sliding
    /// log's entries, [`at_us`](Self::at_us) for the other algorithms.
    pub fn mark(&self, index: usize) -> u64 {
        self.more
            .as_ref()
            .and_then(|more| more.marks.get(index).copied())
            .unwrap_or(self.at_us)
    }

    /// The concurrency slot the take holds, when the store names them.
    pub fn slot(&self) -> Option<&str> {
        self.more.as_ref()?.slot.as_deref()
    }
}

/// What [`Store::take`](super::Store::take) did: every limit's decision, as
/// [`Store::decide_each`](super::Store::decide_each) reports them, and, when the request
/// passed, where and when its units were taken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Taken {
    /// Each limit's decision, in order.
    pub decisions: Vec<Decision>,
    /// The take's stamp: `None` when the request was refused (nothing taken), or when the
    /// store does not stamp its takes (then nothing can be put back).
    pub stamp: Option<Stamp>,
}

impl Taken {
    /// A take decided as `decisions`, stamped `stamp`.
    pub fn new(decisions: Vec<Decision>, stamp: Option<Stamp>) -> Self {
        Self { decisions, stamp }
    }
}
