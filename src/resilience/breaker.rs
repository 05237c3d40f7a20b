//! Keeps a failing or slow remote store from piling up requests: a bound on the decisions in
//! flight, and a circuit breaker that stops asking a store that keeps failing.
//!
//! - At most `max_in_flight` calls to the store are under way at once; a request beyond that
//!   is not sent and follows the fail mode at once (`overloaded`).
//! - After [`OPEN_AFTER`] calls in a row failed or timed out, the breaker opens: requests
//!   follow the fail mode at once instead of each waiting for the timeout (`circuit_open`),
//!   except one probe at a time, at most every [`PROBE_EVERY_MS`] milliseconds. The first
//!   probe that gets an answer closes it: the store decides again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crate::StoreError;
use crate::sync::AtMostEvery;

/// Failed or timed-out calls in a row that open the breaker.
pub(crate) const OPEN_AFTER: u32 = 5;
/// While open, a probe goes to the store at most this often.
pub(crate) const PROBE_EVERY_MS: u64 = 100;

#[derive(Debug)]
pub(crate) struct Breaker {
    max_in_flight: usize,
    in_flight: AtomicUsize,
    /// Failed calls since the last answer.
    failures: AtomicU32,
    /// While open, a probe at most every [`PROBE_EVERY_MS`].
    probes: AtMostEvery,
    /// A probe is under way.
    probing: AtomicBool,
}

/// Permission to call the store; released when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl Breaker {
    pub(crate) fn new(max_in_flight: usize) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            probes: AtMostEvery::new(Duration::from_millis(PROBE_EVERY_MS)),
            probing: AtomicBool::new(false),
        })
    }

    /// Whether a request may call the store now; if not, the error its fail mode answers.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Ticket, StoreError> {
        let mut probe = false;
        if self.failures.load(Ordering::Relaxed) >= OPEN_AFTER {
            let won = !self.probing.load(Ordering::Relaxed)
                && self.probes.try_claim()
                && !self.probing.swap(true, Ordering::Relaxed);
            if !won {
                return Err(StoreError::CircuitOpen);
            }
            probe = true;
        }
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            breaker: Arc::clone(self),
            probe,
        };
        if in_flight >= self.max_in_flight {
            // Dropping the ticket gives the place back.
            return Err(StoreError::Overloaded(self.max_in_flight));
        }
        Ok(ticket)
    }

    /// Calls under way now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Ticket {
    /// Calls under way now, this one included.
    pub(crate) fn in_flight(&self) -> usize {
        self.breaker.in_flight()
    }

    /// The store answered.
    pub(crate) fn answered(&self) {
        let breaker = &self.breaker;
        if breaker.failures.load(Ordering::Relaxed) != 0 {
            breaker.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The store failed or did not answer in time.
    pub(crate) fn failed(&self) {
        let breaker = &self.breaker;
        let failures = breaker.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == OPEN_AFTER {
            breaker.probes.postpone();
            tracing::warn!(
                failures,
                probe_every_ms = PROBE_EVERY_MS,
                "rate-limit store keeps failing: not asking it (but for probes) until it answers"
            );
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.breaker.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            self.breaker.probing.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_calls_in_flight() {
        let breaker = Breaker::new(2);
        let a = breaker.admit().unwrap();
        let _b = breaker.admit().unwrap();
        assert!(matches!(breaker.admit(), Err(StoreError::Overloaded(2))));
        assert_eq!(breaker.in_flight(), 2);
        drop(a);
        assert!(breaker.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_lets_one_probe_through() {
        let breaker = Breaker::new(100);
        for _ in 0..OPEN_AFTER - 1 {
            breaker.admit().unwrap().failed();
        }
        // One answer resets the count.
        breaker.admit().unwrap().answered();
        for _ in 0..OPEN_AFTER {
            breaker.admit().unwrap().failed();
        }
        assert!(matches!(breaker.admit(), Err(StoreError::CircuitOpen)));
        // After the probe interval, one probe at a time: not another while it is under way,
        // even once the next interval has passed.
        tokio::time::advance(std::time::Duration::from_millis(PROBE_EVERY_MS)).await;
        let probe = breaker.admit().unwrap();
        assert!(matches!(breaker.admit(), Err(StoreError::CircuitOpen)));
        tokio::time::advance(std::time::Duration::from_millis(PROBE_EVERY_MS)).await;
        assert!(matches!(breaker.admit(), Err(StoreError::CircuitOpen)));
        // The probe is answered: closed.
        probe.answered();
        drop(probe);
        assert!(breaker.admit().is_ok());
        assert!(breaker.admit().is_ok());
    }
}
