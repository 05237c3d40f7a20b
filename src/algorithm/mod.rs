//! The algorithms a [`Limit`](crate::Limit) can use, and the arithmetic every store shares
//! (users read `docs/algorithms.md`).

use std::time::Duration;

mod concurrency;
mod decide;
mod limit;
mod observation;
mod sliding_log;
mod state;
mod token_bucket;
mod window;

pub(crate) use crate::limit::Algorithm;
pub(crate) use crate::limit::MAX_SUFFIX_LEN;
pub(crate) use decide::{binding, log_entries, passed};
pub(crate) use decide::{check_limits, decide_all, decide_each, take_each};
#[cfg(feature = "redis")]
pub(crate) use decide::{decide_observed, each_observed};
pub(crate) use observation::Observation;
pub use state::BucketState;
pub(crate) use state::Shape;

/// Microseconds as a duration.
#[inline]
fn us(us: u64) -> Duration {
    Duration::from_micros(us)
}

#[cfg(test)]
mod tests;
