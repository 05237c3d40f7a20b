//! The checks a limit's fields pass when it is built, and the arithmetic they bound.

use std::time::Duration;

use super::{Algorithm, MAX_CONCURRENCY, MAX_LOG_CAPACITY, MAX_NAME_LEN, MIN_SLOT_TTL};
use crate::error::ConfigError;

/// The longest time a limit may take to come back whole (a token bucket's fill time, a
/// window).
///
/// Bucket state is kept as microseconds of the Redis clock in Lua numbers (doubles), which
/// are exact integers up to 2^53 µs (about 285 years since 1970); a century of headroom keeps
/// every sum exact.
const MAX_FILL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The window counters multiply counts by the window in milliseconds in Lua numbers:
/// `(capacity + 1) × window` must stay below 2^53 to be exact.
const MAX_WINDOW_PRODUCT: u128 = 1 << 53;

/// A token bucket's microseconds per token.
pub(super) fn token_bucket_interval(
    capacity: u64,
    refill: u64,
    period: Duration,
) -> Result<u64, ConfigError> {
    let period_us = period.as_micros();
    if period_us < u128::from(refill) {
        return Err(ConfigError::RefillTooFast { refill, period });
    }
    // Round to the nearest microsecond; refuse a rate that rounding would change by more
    // than 0.1%.
    let interval_us = (period_us + u128::from(refill) / 2) / u128::from(refill);
    let drift = (interval_us * u128::from(refill)).abs_diff(period_us);
    if drift * 1000 > period_us {
        return Err(ConfigError::Imprecise { refill, period });
    }
    let fill = interval_us.checked_mul(u128::from(capacity));
    if fill.is_none_or(|fill| fill > MAX_FILL.as_micros()) {
        return Err(ConfigError::FillTooSlow {
            capacity,
            refill,
            period,
        });
    }
    Ok(u64::try_from(interval_us).expect("checked against MAX_FILL"))
}

/// A window algorithm's window, in microseconds.
pub(super) fn window_us(
    algorithm: Algorithm,
    capacity: u64,
    refill: Option<u64>,
    period: Duration,
) -> Result<u64, ConfigError> {
    if refill.is_some_and(|r| r != capacity) {
        return Err(ConfigError::Invalid {
            field: "refill",
            value: refill.unwrap_or_default().to_string(),
            reason: "only a token_bucket refills gradually: a window's whole capacity comes back \
                     each period, so leave refill out or equal to capacity",
        });
    }
    let invalid_period = |reason| ConfigError::Invalid {
        field: "period",
        value: format!("{period:?}"),
        reason,
    };
    if !period.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(invalid_period("a window is a whole number of milliseconds"));
    }
    if period > MAX_FILL {
        return Err(invalid_period("a window is at most a century"));
    }
    let window_ms = period.as_millis();
    if algorithm != Algorithm::SlidingLog
        && (u128::from(capacity) + 1) * window_ms >= MAX_WINDOW_PRODUCT
    {
        return Err(ConfigError::Invalid {
            field: "capacity",
            value: capacity.to_string(),
            reason: "(capacity + 1) × the window in milliseconds must stay below 2^53; \
                     use a shorter window or a token_bucket",
        });
    }
    if algorithm == Algorithm::Concurrency && period < MIN_SLOT_TTL {
        return Err(ConfigError::Invalid {
            field: "slot_ttl",
            value: format!("{period:?}"),
            reason: "a concurrency slot's time to live must be at least 300ms: a running \
                     request renews its slot every third of it, and a renewal may take up to \
                     the store's timeout",
        });
    }
    if algorithm == Algorithm::Concurrency && capacity > MAX_CONCURRENCY {
        return Err(ConfigError::Invalid {
            field: "capacity",
            value: capacity.to_string(),
            reason: "a concurrency limit keeps one entry per slot: at most 1000",
        });
    }
    if algorithm == Algorithm::SlidingLog && capacity > MAX_LOG_CAPACITY {
        return Err(ConfigError::Invalid {
            field: "capacity",
            value: capacity.to_string(),
            reason: "a sliding_log keeps one entry per unit: at most 250, so that no request \
                     costs Redis more than about a millisecond; use a sliding_window for larger \
                     limits",
        });
    }
    Ok(u64::try_from(period.as_micros()).expect("at most a century"))
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Checks a name that goes into headers and keys: 1 to 64 ASCII letters, digits, `-`, `_` or
/// `.`; `field` names it in the error.
pub(crate) fn check_name(name: &str, field: &'static str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            value: name.to_owned(),
            reason: "must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
        })
    }
}
