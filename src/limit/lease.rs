//! Leasing a limit ([`Limit::leased`]): its settings and their checks.

use std::time::Duration;

use super::{Algorithm, Limit};
use crate::error::ConfigError;

/// The lease time of a [leased](Limit::leased) limit unless set: how long an instance may
/// spend units it took ahead of its requests before it gives back what is left.
pub(crate) const DEFAULT_LEASE_TIME: Duration = Duration::from_millis(200);

/// The longest lease time ([`Limit::leased_for`]): past it, units held by an instance that
/// sees no more requests would be missing from the bucket for too long.
pub(crate) const MAX_LEASE_TIME: Duration = Duration::from_secs(10);

impl Limit {
    /// The same limit, leased for 200 ms; see [`Limit::leased_for`].
    ///
    /// # Errors
    ///
    /// As [`Limit::leased_for`].
    pub fn leased(self) -> Result<Self, ConfigError> {
        self.leased_for(DEFAULT_LEASE_TIME)
    }

    /// The same limit, leased: with a remote store ([`RedisStore`](crate::RedisStore)), an
    /// instance that sees a key hot takes a lease of several units in the call that decides
    /// one request, and admits the next requests on that key from it in process, for at most
    /// `lease_time`, without asking the store. The units are taken from the bucket at once,
    /// so every other instance sees them as spent: a lease never lets more through than the
    /// limit. What a lease has left when it ends goes back to the bucket. The size follows
    /// the key's rate on this instance, at most half of what the bucket holds; a cold key or
    /// a nearly empty bucket is decided one request at a time, as without a lease. See
    /// `lease` for what leasing guarantees per algorithm.
    ///
    /// Every limit of a policy is leased, or none (a lease takes from all of them at once);
    /// the policy's lease time is the shortest of its limits'.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::Limit;
    ///
    /// let hot = Limit::new("per_second", 1_000, 1_000, Duration::from_secs(1))?
    ///     .leased_for(Duration::from_millis(100))?;
    /// assert_eq!(hot.lease_time(), Some(Duration::from_millis(100)));
    /// assert!(Limit::sliding_log("exact", 10, Duration::from_secs(1))?.leased().is_err());
    /// # Ok::<(), tollgate::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `lease` for a sliding log (it keeps each unit's time, which a
    /// lease taken ahead would get wrong) or a concurrency limit (slots are held, not spent),
    /// and naming `lease_time` when it is zero or above 10 s.
    pub fn leased_for(mut self, lease_time: Duration) -> Result<Self, ConfigError> {
        let reason = match self.algorithm {
            Algorithm::SlidingLog => Some(
                "a sliding_log cannot be leased: it records when each unit was taken, and a \
                 lease takes them before the requests that spend them; use a sliding_window",
            ),
            Algorithm::Concurrency => Some(
                "a concurrency limit cannot be leased: its slots are held while a request \
                 runs, not spent",
            ),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(ConfigError::Invalid {
                field: "lease",
                value: self.algorithm.to_string(),
                reason,
            });
        }
        if lease_time.is_zero() {
            return Err(ConfigError::Zero {
                field: "lease_time",
            });
        }
        if lease_time > MAX_LEASE_TIME {
            return Err(ConfigError::Invalid {
                field: "lease_time",
                value: format!("{lease_time:?}"),
                reason: "a lease lasts at most 10s",
            });
        }
        self.lease = Some(lease_time);
        Ok(self)
    }

    /// The lease time, when the limit is [leased](Limit::leased).
    #[inline]
    pub fn lease_time(&self) -> Option<Duration> {
        self.lease
    }
}

/// The lease time of a policy whose limits are all leased; an error when only some are, or
/// when a leased limit counts requests.
pub(crate) fn policy_lease(limits: &[Limit]) -> Result<Option<Duration>, ConfigError> {
    let leased = limits.iter().filter(|l| l.lease_time().is_some()).count();
    if leased == 0 {
        return Ok(None);
    }
    if leased < limits.len() {
        return Err(ConfigError::Invalid {
            field: "lease",
            value: format!("{leased} of {} limits", limits.len()),
            reason: "every limit of a policy is leased, or none: a lease takes units from all \
                     of them at once",
        });
    }
    if let Some(limit) = limits.iter().find(|l| l.counts_requests()) {
        return Err(ConfigError::Invalid {
            field: "lease",
            value: limit.name().to_owned(),
            reason: "a limit that counts requests (per_request) cannot be leased: a lease \
                     holds units of cost",
        });
    }
    Ok(limits.iter().filter_map(Limit::lease_time).min())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leasing_is_checked_by_field() {
        let second = Duration::from_secs(1);
        let err = |r: Result<Limit, ConfigError>| r.unwrap_err().to_string();
        let bucket = Limit::new("b", 10, 10, second).unwrap();
        assert_eq!(
            bucket.clone().leased().unwrap().lease_time(),
            Some(DEFAULT_LEASE_TIME)
        );
        assert!(err(bucket.clone().leased_for(Duration::ZERO)).contains("`lease_time`"));
        assert!(err(bucket.leased_for(Duration::from_secs(11))).contains("`lease_time`"));
        let log = Limit::sliding_log("l", 10, second).unwrap();
        assert!(err(log.leased()).contains("`lease`"));
        let slots = Limit::concurrency("c", 10).unwrap();
        assert!(err(slots.leased()).contains("`lease`"));
        for window in [
            Limit::fixed_window("f", 10, second).unwrap(),
            Limit::sliding_window("s", 10, second).unwrap(),
        ] {
            assert!(window.leased().unwrap().lease_time().is_some());
        }
    }
}
