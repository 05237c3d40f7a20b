//! The algorithms a [`Limit`](crate::Limit) can use, and the arithmetic every store shares: four
//! that limit a rate, and one that limits how many requests are in flight.
//!
//! | algorithm | a client may send | accuracy | state per bucket |
//! |---|---|---|---|
//! | [`TokenBucket`](Algorithm::TokenBucket) (default) | `capacity` at once, then one more every `period / refill` | exact | one integer |
//! | [`SlidingLog`](Algorithm::SlidingLog) | `capacity` in any `period`-long span | exact | one entry per unit in the window (at most `capacity`) |
//! | [`SlidingWindow`](Algorithm::SlidingWindow) | about `capacity` in any `period`-long span | estimate: assumes the previous window's units were spread evenly over it | two counters |
//! | [`FixedWindow`](Algorithm::FixedWindow) | `capacity` per window (aligned to the Unix epoch) | exact per window, but up to 2 × `capacity` across a window edge | one counter |
//! | [`Concurrency`](Algorithm::Concurrency) | `capacity` requests in flight at once, each holding a slot until it is over | exact | one entry per slot held (Redis: a sorted set scored by each slot's lease) |
//!
//! Each algorithm has one Lua script in `lua/` that [`RedisStore`](crate::RedisStore) runs, and
//! the same arithmetic here, which [`MemoryStore`](crate::MemoryStore) runs: given the same
//! requests at the same times, both give the same [`Decision`](crate::Decision). A request under several limits is
//! decided by one call, all or nothing, whatever their algorithms.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Algorithm, Limit};
//!
//! # fn main() -> Result<(), tollgate::ConfigError> {
//! // At most 100 requests in any minute, counted exactly.
//! let exact = Limit::sliding_log("minute", 100, Duration::from_secs(60))?;
//! // 10,000 a day, the day starting at midnight UTC.
//! let daily = Limit::fixed_window("daily", 10_000, Duration::from_secs(86_400))?;
//! assert_eq!(daily.algorithm(), Algorithm::FixedWindow);
//! # let _ = exact;
//! # Ok(())
//! # }
//! ```
//!
//! # The known errors of the window counters
//!
//! - A fixed window counts each window on its own: a client can spend `capacity` just before
//!   an edge and `capacity` again just after it, so a span of one period around an edge can
//!   hold up to 2 × `capacity`.
//! - The sliding window counter estimates the sliding window as the current window's units
//!   plus the previous window's, weighted by the share of the previous window that the sliding
//!   window still covers. When the previous window's units came at its end (a burst just before
//!   the edge), the estimate is low and a span of one period can hold up to about
//!   2 × `capacity` in the worst case; when they came at its start, the estimate is high and the
//!   client is held back early. Under traffic spread evenly it is exact; Cloudflare measured
//!   0.003% of requests wrongly allowed or limited on real traffic.

use std::time::Duration;

mod concurrency;
mod decide;
mod limit;
mod observation;
mod sliding_log;
mod state;
mod token_bucket;
mod window;

pub use crate::limit::Algorithm;
pub(crate) use crate::limit::MAX_SUFFIX_LEN;
pub(crate) use decide::{binding, log_entries, passed};
pub use decide::{check_limits, decide_all, decide_each, take_each};
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
