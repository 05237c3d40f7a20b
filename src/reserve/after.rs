//! [`After`]: what the layer does once a response is over: settle its reservation and free
//! its concurrency slots.

use http::HeaderMap;
use http::response::Parts;

use super::Settling;
use crate::engine::{InFlight, Receipt};

/// What is left to do for a request once its response is over (the body ended, or was
/// dropped with the response, the request's future or the connection): its reservation
/// settled, its slots freed.
#[derive(Debug, Default)]
pub(crate) struct After {
    pub(crate) settling: Option<Settling>,
    pub(crate) in_flight: Option<InFlight>,
}

impl After {
    /// What the decision came to: the store took `taken` units; `settle` unless the
    /// reservation is not the store's to settle.
    pub(crate) fn decided(&mut self, receipt: Option<Receipt>, in_flight: Option<InFlight>) {
        if let Some(settling) = &mut self.settling {
            match receipt {
                Some(receipt) => settling.taken(receipt),
                None => settling.disarm(),
            }
        }
        self.in_flight = in_flight;
    }

    /// Refused by the layer: nothing taken, nothing to settle.
    pub(crate) fn refused(&mut self) {
        if let Some(settling) = &mut self.settling {
            settling.disarm();
        }
    }

    /// Reads what the response's head states.
    pub(crate) fn response(&mut self, parts: &mut Parts) {
        if let Some(settling) = &mut self.settling {
            settling.response(parts);
        }
    }

    /// Reads what the response's trailers state.
    pub(crate) fn trailers(&mut self, trailers: &mut HeaderMap) {
        if let Some(settling) = &mut self.settling {
            settling.trailers(trailers);
        }
    }

    /// The response is over: settle and free the slots, now.
    pub(crate) fn finish(&mut self) {
        if let Some(settling) = &mut self.settling {
            settling.finish();
        }
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.release();
        }
    }
}
