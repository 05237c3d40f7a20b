//! What a store saw of one bucket: the numbers the Lua scripts return.

use super::Algorithm;
use crate::Limit;

/// What a store saw of one bucket before a request: exactly the numbers the Lua scripts
/// return (`lua/decide.lua`), from which [`Limit::report`] makes the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observation {
    /// Microseconds until the bucket is full, clamped to `[0, fill]`.
    TokenBucket { full_after: u64 },
    /// Units counted in this window; whole milliseconds since it began.
    FixedWindow { current: u64, elapsed_ms: u64 },
    /// Units of this window and of the previous one; whole milliseconds since this began.
    SlidingWindow {
        current: u64,
        previous: u64,
        elapsed_ms: u64,
    },
    /// Entries in the window, and microseconds until entries leave it: the oldest (when the
    /// bucket is or becomes exhausted, else 0), the newest (0 when empty), and, when the
    /// request does not fit, the one whose leaving makes room for it (else 0).
    SlidingLog {
        count: u64,
        oldest: u64,
        newest: u64,
        needed: u64,
    },
}

impl Observation {
    /// Reads the observation of a limit of `algorithm` from the script's numbers, taking as
    /// many as the algorithm observes; `None` when one is missing or not a number.
    pub(crate) fn read(
        algorithm: Algorithm,
        numbers: &mut impl Iterator<Item = Option<u64>>,
    ) -> Option<Self> {
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
        })
    }

    /// Reads the one integer a single token-bucket or fixed-window limit replies with
    /// (`lua/decide.lua`): whether it allowed, and what it observed.
    pub(crate) fn from_packed(limit: &Limit, reply: i64) -> Option<(bool, Self)> {
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
