//! [`Settling`]: a reservation on its way to being settled, from the decision to the end of
//! the response body.

use std::sync::Arc;

use http::HeaderMap;
use http::response::Parts;

use super::{Reservation, Settle};
use crate::Limiter;
use crate::store::Store;

/// Settles reservations in the background: the layer's limiter, type-erased.
pub(crate) trait Settler: Send + Sync + 'static {
    /// Settles `taken` units of the request named `key` under the policy at `index` against
    /// `actual`, in a task of its own.
    fn settle(&self, key: String, index: usize, taken: u64, actual: u64);
}

impl<St: Store> Settler for Limiter<St> {
    fn settle(&self, key: String, index: usize, taken: u64, actual: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a reservation ended outside a Tokio runtime: not settled");
            return;
        };
        let limiter = self.clone();
        runtime.spawn(async move {
            // Counted, and logged by the outage log when the store fails.
            let _ = limiter.settle_at(index, &key, taken, actual).await;
        });
    }
}

/// A request's reservation until its response is over; settled when [finished](Self::finish)
/// or dropped, unless [disarmed](Self::disarm).
pub(crate) struct Settling {
    settler: Arc<dyn Settler>,
    settle: Arc<Settle>,
    key: String,
    index: usize,
    reservation: Reservation,
    /// What the store took.
    taken: u64,
    /// The actual cost the response stated.
    stated: Option<u64>,
    armed: bool,
}

impl Settling {
    pub(crate) fn new(
        settler: Arc<dyn Settler>,
        settle: Arc<Settle>,
        key: String,
        index: usize,
        reservation: Reservation,
    ) -> Self {
        Self {
            settler,
            settle,
            key,
            index,
            reservation,
            taken: 0,
            stated: None,
            armed: true,
        }
    }

    /// The store took `taken` units for the request.
    pub(crate) fn taken(&mut self, taken: u64) {
        self.taken = taken;
    }

    /// Nothing to settle: the store neither took the units nor failed open.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Reads what the response's head states (and removes the header).
    pub(crate) fn response(&mut self, parts: &mut Parts) {
        self.stated = self.settle.stated(parts, &self.reservation);
    }

    /// Reads what the response's trailers state (and removes the header), unless the head
    /// said it already.
    pub(crate) fn trailers(&mut self, trailers: &mut HeaderMap) {
        let stated = self.settle.stated_in_trailers(trailers);
        self.stated = self.stated.or(stated);
    }

    /// Settles now, with what was stated; once.
    pub(crate) fn finish(&mut self) {
        if !std::mem::replace(&mut self.armed, false) {
            return;
        }
        if let Some(actual) = self.stated.or_else(|| self.reservation.actual()) {
            let key = std::mem::take(&mut self.key);
            self.settler.settle(key, self.index, self.taken, actual);
        }
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        self.finish();
    }
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settling")
            .field("index", &self.index)
            .field("taken", &self.taken)
            .field("stated", &self.stated)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}
