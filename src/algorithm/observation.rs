//! What a store saw of one bucket: the numbers the Lua scripts return.

/// What a store saw of one bucket before a request: exactly the numbers the Lua scripts
/// return (`lua/decide.lua`), from which [`Limit::report`](crate::Limit) makes the decision.
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
    /// Slots held now.
    Concurrency { in_use: u64 },
}
