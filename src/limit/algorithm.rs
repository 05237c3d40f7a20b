//! [`Algorithm`]: how a limit counts (the arithmetic is in [`crate::algorithm`]).

use crate::ConfigError;

/// How a [`Limit`](crate::Limit) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Units come back one at a time, continuously (`refill` per `period`); a full bucket lets
    /// `capacity` pass at once. The default.
    #[default]
    TokenBucket,
    /// Every unit taken is remembered until it is one period old; at most `capacity` units in
    /// any span of one period. Exact; memory grows with the capacity.
    SlidingLog,
    /// Two fixed windows, the previous weighted by how much of it the sliding window still
    /// covers: nearly exact, with the memory of a counter.
    SlidingWindow,
    /// At most `capacity` units per period, the periods aligned to the Unix epoch: the
    /// cheapest, but up to 2 × `capacity` across a window edge.
    FixedWindow,
    /// At most `capacity` requests in flight at once, each holding a slot until its response
    /// ends; `period` is the slots' lease in Redis (renewed while a request runs, so only the
    /// slots of an instance that died run out). Counts requests, not their cost.
    Concurrency,
}

impl Algorithm {
    /// Every algorithm, in the order of the configuration names.
    pub const ALL: [Algorithm; 5] = [
        Self::TokenBucket,
        Self::SlidingLog,
        Self::SlidingWindow,
        Self::FixedWindow,
        Self::Concurrency,
    ];

    /// The algorithms that limit a rate (all but [`Concurrency`](Self::Concurrency)).
    pub const RATES: [Algorithm; 4] = [
        Self::TokenBucket,
        Self::SlidingLog,
        Self::SlidingWindow,
        Self::FixedWindow,
    ];

    /// The name in configuration files: `token_bucket`, `sliding_log`, `sliding_window`,
    /// `fixed_window` or `concurrency`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenBucket => "token_bucket",
            Self::SlidingLog => "sliding_log",
            Self::SlidingWindow => "sliding_window",
            Self::FixedWindow => "fixed_window",
            Self::Concurrency => "concurrency",
        }
    }

    /// The code the Lua driver dispatches on (`lua/decide.lua`).
    #[cfg(feature = "redis")]
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::TokenBucket => "t",
            Self::SlidingLog => "l",
            Self::SlidingWindow => "s",
            Self::FixedWindow => "f",
            Self::Concurrency => "c",
        }
    }

    /// What the bucket key ends with, so that buckets of different algorithms (whose Redis
    /// types differ) never share a key. The token bucket's keys have no suffix.
    pub(crate) fn key_suffix(self) -> &'static str {
        match self {
            Self::TokenBucket => "",
            Self::SlidingLog => ":sl",
            Self::SlidingWindow => ":sw",
            Self::FixedWindow => ":fw",
            Self::Concurrency => ":cc",
        }
    }
}

/// The longest [`Algorithm::key_suffix`].
pub(crate) const MAX_SUFFIX_LEN: usize = 3;

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ConfigError::Invalid {
                field: "algorithm",
                value: s.to_owned(),
                reason: "must be \"token_bucket\", \"sliding_log\", \"sliding_window\", \"fixed_window\" or \"concurrency\"",
            })
    }
}
