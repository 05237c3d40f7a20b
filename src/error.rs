//! Errors: a bad configuration, caught when the layer is built, and a store that failed.

use std::time::Duration;

/// A configuration the builder refused. Each message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field that must be set was not.
    #[error("`{field}` is required")]
    Missing {
        /// The builder method that sets it.
        field: &'static str,
    },
    /// A count or duration that must be positive was zero.
    #[error("`{field}` must be greater than zero")]
    Zero {
        /// The field that was zero.
        field: &'static str,
    },
    /// A value of the wrong form.
    #[error("`{field}` = {value:?} is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The bucket would refill faster than one token per microsecond.
    #[error(
        "`refill` = {refill} tokens per `period` = {period:?} is faster than one token per microsecond"
    )]
    RefillTooFast {
        /// Tokens per period.
        refill: u64,
        /// The period.
        period: Duration,
    },
    /// The time per token is not close enough to whole microseconds (off by more than 0.1%).
    #[error(
        "`refill` = {refill} tokens per `period` = {period:?} needs a fraction of a microsecond per token; \
         choose values whose period / refill is at least 1 ms, or a multiple of 1 µs within 0.1%"
    )]
    Imprecise {
        /// Tokens per period.
        refill: u64,
        /// The period.
        period: Duration,
    },
    /// An error inside a rule, a limit, the default policy or a file.
    #[error("{location}: {error}")]
    At {
        /// Where: `rule "login"`, `limit "burst"`, `default`, a file name.
        location: String,
        /// What.
        error: Box<ConfigError>,
    },
    /// Two rules, or two limits of one policy, share a name.
    #[error("duplicate {what} name {name:?}")]
    Duplicate {
        /// `rule` or `limit`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A policy file that is not valid TOML or has fields of the wrong form.
    #[error("invalid TOML: {message}")]
    Parse {
        /// What the parser said.
        message: String,
    },
    /// A policy file that cannot be read.
    #[error("cannot read the file: {message}")]
    Unreadable {
        /// What the system said.
        message: String,
    },
    /// The bucket would take more than a century to fill from empty.
    #[error(
        "`capacity` = {capacity} at `refill` = {refill} per {period:?} takes more than 100 years to fill"
    )]
    FillTooSlow {
        /// The capacity.
        capacity: u64,
        /// Tokens per period.
        refill: u64,
        /// The period.
        period: Duration,
    },
}

impl ConfigError {
    /// The same error, located: `rule "login": …`.
    pub(crate) fn at(self, location: &str) -> Self {
        Self::At {
            location: location.to_owned(),
            error: Box::new(self),
        }
    }
}

/// Whether a Redis error says the store cannot be reached now (rather than that it refused
/// the script): I/O, timeouts, and a cluster or primary in the middle of a failover.
#[cfg(feature = "redis")]
fn unreachable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    S::ReadOnly
                        | S::ClusterDown
                        | S::MasterDown
                        | S::TryAgain
                        | S::BusyLoading
                        | S::Moved
                        | S::Ask
                )
        )
}

/// Whether Redis refused the password or the user.
#[cfg(feature = "redis")]
fn refused_auth(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed
            | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Whether the configuration is wrong rather than Redis: a URL that does not parse, a
/// database index Redis does not have.
#[cfg(feature = "redis")]
fn misconfigured(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::InvalidClientConfig
        || e.detail()
            .is_some_and(|detail| detail.contains("DB index is out of range"))
}

/// A store could not decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within the layer's timeout.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or the connection failed.
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered with a reply the script never sends.
    #[error("unexpected reply from the store: {0}")]
    Reply(String),
    /// A custom store's own failure; the store answered, so the breaker does not count it.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
    /// A custom store could not be reached: counted by the breaker and logged as an outage,
    /// like a Redis connection error (`kind` `connection`).
    #[error("the store cannot be reached: {0}")]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// The call was refused before anything was sent: its arguments cannot be decided (no
    /// limits, or more than 8), or a Redis store was opened
    /// outside a Tokio runtime.
    #[error("invalid call: {0}")]
    Invalid(String),
    /// A store's configuration is wrong: a URL that is not one, or does not parse (named
    /// without its password). Kind `config`.
    #[error("{0}")]
    Config(String),
    /// A store that was opened but cannot be used: [`RedisStore::connect`](crate::RedisStore::connect)
    /// could not connect, authenticate, select the database or load the scripts. `url` is the
    /// store's URL with its password replaced by `***`; the kind is `source`'s.
    #[error("cannot use Redis at {url}: {source}")]
    Unusable {
        /// The URL, without its password.
        url: String,
        /// Why.
        source: Box<StoreError>,
    },
    /// The store does not implement this operation (a custom store that only decides).
    #[error("the store does not support {0}")]
    Unsupported(&'static str),
    /// Not asked: this many calls to the store were already under way
    /// ([`LayerBuilder::max_in_flight`](crate::LayerBuilder::max_in_flight)).
    #[error("not asked: {0} calls to the store are already under way")]
    Overloaded(usize),
    /// Not asked: the store kept failing, and until a probe gets an answer, requests follow
    /// the fail mode at once.
    #[error("not asked: the store keeps failing (circuit open)")]
    CircuitOpen,
}

impl StoreError {
    /// Every word [`StoreError::kind`] can say, in order.
    pub(crate) const KINDS: [&'static str; 8] = [
        "timeout",
        "connection",
        "script",
        "other",
        "overloaded",
        "circuit_open",
        "auth",
        "config",
    ];

    /// A short, fixed word for the kind of failure, for logs and metrics labels:
    /// `timeout`, `connection` (unreachable, or failing over), `auth` (Redis refused the
    /// password or the user: `NOAUTH`, `WRONGPASS`, `NOPERM`), `config` (a URL that does not
    /// parse, a database index Redis does not have, a call that cannot be decided), `script`
    /// (Redis refused the call), `other`, or, for requests that did not ask the store,
    /// `overloaded` and `circuit_open`.
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    /// Whether the store could not be reached, did not answer in time, or refuses every call
    /// (the password, the database), rather than answered one call with an error or was not
    /// asked: what the circuit breaker counts.
    pub(crate) fn unavailable(&self) -> bool {
        match self.kind_index() {
            0 | 1 | 6 => true,
            // A database Redis does not have; not a call refused before it was sent.
            #[cfg(feature = "redis")]
            7 => matches!(self, Self::Redis(_)),
            _ => false,
        }
    }

    /// The position of [`StoreError::kind`] in [`StoreError::KINDS`].
    pub(crate) fn kind_index(&self) -> usize {
        match self {
            Self::Unusable { source, .. } => source.kind_index(),
            Self::Timeout(_) => 0,
            #[cfg(feature = "redis")]
            Self::Redis(e) if unreachable(e) => 1,
            Self::Unavailable(_) => 1,
            #[cfg(feature = "redis")]
            Self::Redis(e) if refused_auth(e) => 6,
            #[cfg(feature = "redis")]
            Self::Redis(e) if misconfigured(e) => 7,
            #[cfg(feature = "redis")]
            Self::Redis(_) => 2,
            Self::Reply(_) => 2,
            Self::Invalid(_) | Self::Config(_) => 7,
            Self::Other(_) | Self::Unsupported(_) => 3,
            Self::Overloaded(_) => 4,
            Self::CircuitOpen => 5,
        }
    }
}
