//! Reservations through the layer: an estimate taken up front, the actual cost settled once
//! the response is over (users read `docs/reservations.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderName;
use http::response::Parts;

mod after;
mod settling;

pub(crate) use after::After;
pub(crate) use settling::{Settler, Settling};

/// A request's reservation, in its extensions while it is handled: what was taken up front,
/// and the actual cost as the handler states it. Cheap to clone: clones share the state, so
/// a stream can keep one and add to it as it sends.
///
/// ```
/// use axum::{Extension, routing::post, Router};
/// use tollgate::Reservation;
///
/// async fn complete(Extension(reservation): Extension<Reservation>) -> &'static str {
///     // ... the work used 120 of the units reserved ...
///     reservation.set(120);
///     "done"
/// }
/// let app: Router = Router::new().route("/v1/completions", post(complete));
/// ```
#[derive(Debug, Clone)]
pub struct Reservation {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    reserved: u64,
    /// [`UNSET`] until the cost is stated.
    actual: AtomicU64,
}

const UNSET: u64 = u64::MAX;

impl Reservation {
    pub(crate) fn new(reserved: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                reserved,
                actual: AtomicU64::new(UNSET),
            }),
        }
    }

    /// The units reserved for the request: its cost as the layer read it.
    pub fn reserved(&self) -> u64 {
        self.inner.reserved
    }

    /// States the request's actual cost, all told (replacing what was stated before).
    pub fn set(&self, actual: u64) {
        self.inner
            .actual
            .store(actual.min(UNSET - 1), Ordering::Relaxed);
    }

    /// Adds `units` to the actual cost stated so far (starting from 0): for work counted as it
    /// goes, such as the tokens of a stream.
    pub fn add(&self, units: u64) {
        let _ = self
            .inner
            .actual
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                let base = if now == UNSET { 0 } else { now };
                Some(base.saturating_add(units).min(UNSET - 1))
            });
    }

    /// The actual cost stated so far, if any.
    pub fn actual(&self) -> Option<u64> {
        match self.inner.actual.load(Ordering::Relaxed) {
            UNSET => None,
            actual => Some(actual),
        }
    }
}

/// The closure of `LayerBuilder::settle_from_response`.
type FromResponse = dyn Fn(&Parts, &Reservation) -> Option<u64> + Send + Sync;

/// How the layer learns a request's actual cost.
#[derive(Clone, Default)]
pub(crate) struct Settle {
    pub(crate) header: Option<HeaderName>,
    pub(crate) from_response: Option<Arc<FromResponse>>,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle")
            .field("header", &self.header)
            .field("from_response", &self.from_response.is_some())
            .finish()
    }
}

impl Settle {
    /// What the response's head says of the actual cost: the closure's word, then the
    /// header; the header is removed either way.
    pub(crate) fn stated(&self, parts: &mut Parts, reservation: &Reservation) -> Option<u64> {
        let header = self
            .header
            .as_ref()
            .and_then(|name| parts.headers.remove(name))
            .and_then(|value| value.to_str().ok()?.trim().parse().ok());
        self.from_response
            .as_ref()
            .and_then(|f| f(parts, reservation))
            .or(header)
    }

    /// What trailers say of the actual cost (the header, removed).
    pub(crate) fn stated_in_trailers(&self, trailers: &mut http::HeaderMap) -> Option<u64> {
        let value = trailers.remove(self.header.as_ref()?)?;
        value.to_str().ok()?.trim().parse().ok()
    }
}
