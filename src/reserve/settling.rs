//! [`Settling`]: a reservation on its way to being settled, from the decision to the end of
//! the response body.

use std::sync::Arc;
use std::task::{Context, Waker};

use http::HeaderMap;
use http::response::Parts;

use super::{Reservation, Settle};
use crate::engine::Chore;
use crate::store::Store;
use crate::{Limiter, Receipt};

/// Settles reservations in the background: the layer's limiter, type-erased.
pub(crate) trait Settler: Send + Sync + 'static {
    /// Settles what `receipt`'s decision took against `actual`, in a task of its own.
    fn settle(&self, receipt: Receipt, actual: u64);
}

impl<St: Store> Settler for Limiter<St> {
    fn settle(&self, receipt: Receipt, actual: u64) {
        let limiter = self.clone();
        // Counted, and logged by the outage log when the store fails.
        let mut settling: crate::engine::Work = Box::pin(async move {
            let _ = limiter.settle(receipt, actual).await;
        });
        match &self.core().worker {
            Some(worker) => {
                worker.run(Chore::Settle, settling);
            }
            // An in-process store settles at once.
            None => {
                let mut cx = Context::from_waker(Waker::noop());
                let _ = settling.as_mut().poll(&mut cx);
            }
        }
    }
}

/// A request's reservation until its response is over; settled when [finished](Self::finish)
/// or dropped, unless [disarmed](Self::disarm).
pub(crate) struct Settling {
    settler: Arc<dyn Settler>,
    settle: Arc<Settle>,
    reservation: Reservation,
    /// What the store took: `None` until it answers, and when there is nothing to settle.
    receipt: Option<Receipt>,
    /// The actual cost the response stated.
    stated: Option<u64>,
    armed: bool,
}

impl Settling {
    pub(crate) fn new(
        settler: Arc<dyn Settler>,
        settle: Arc<Settle>,
        reservation: Reservation,
    ) -> Self {
        Self {
            settler,
            settle,
            reservation,
            receipt: None,
            stated: None,
            armed: true,
        }
    }

    /// What the store took for the request (or, failed open, that it took nothing).
    pub(crate) fn taken(&mut self, receipt: Receipt) {
        self.receipt = Some(receipt);
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
        if let (Some(actual), Some(receipt)) = (
            self.stated.or_else(|| self.reservation.actual()),
            self.receipt.take(),
        ) {
            self.settler.settle(receipt, actual);
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
            .field("receipt", &self.receipt)
            .field("stated", &self.stated)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}
