//! Reservations through the layer: a request takes an estimate of its cost up front, and the
//! cost it really had is settled once its response is over.
//!
//! Turned on with [`Builder::settle`](crate::layer::Builder::settle). Each limited request
//! then carries a [`Reservation`] in its extensions, and its actual cost can be stated in four
//! ways, the first that says something winning:
//!
//! 1. a closure over the response's head ([`Settle::from_response`]): "charge only failures",
//!    a login limit that charges nothing for a `2xx`;
//! 2. an [`ActualCost`] in the response's extensions;
//! 3. a response header ([`Settle::header`]), removed before the response is sent; in the
//!    trailers too (gRPC);
//! 4. the [`Reservation`] handle, which the handler (or the stream it returns) sets or adds to
//!    while it works.
//!
//! The settlement happens when the response body ends, or when it is dropped (the client went
//! away): with what was stated by then. It is one store call
//! ([`Limiter::settle`](crate::Limiter::settle)) made off the response path, under the same
//! timeout and breaker, counted in `tollgate_settlements_total`; it never delays or fails the
//! response. When nothing was stated, or the process stops first, the reservation stays as it
//! was taken: never an over-admission. A cost settled lower goes back through the
//! [`Receipt`](crate::Receipt) of the decision: to the window or bucket state that counted
//! the units, and only what is still owed there (a window that has ended gets nothing; a
//! token bucket gets their worth less the refill since the decision); see
//! [`Store::put_back`](crate::Store::put_back).
//!
//! Only a reservation the store took is settled, or one the store did not answer for under
//! [`FailMode::Open`](crate::FailMode::Open) (it took nothing, so the whole actual cost is
//! charged). A request decided locally, refused, or passed by shadow mode or the bypass list
//! is not.

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
/// use tollgate::reserve::Reservation;
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

/// The actual cost of a request, put by the handler in its response's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActualCost(pub u64);

/// The closure of [`Settle::from_response`].
type FromResponse = dyn Fn(&Parts, &Reservation) -> Option<u64> + Send + Sync;

/// How the layer learns a request's actual cost (see the [module](self)).
#[derive(Clone, Default)]
pub struct Settle {
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
    /// Settles from the [`Reservation`] handle and [`ActualCost`] alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also reads the actual cost from response header `name` (a whole number; anything else
    /// is ignored), in the head or in the trailers, and removes it before the response is
    /// sent.
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = Some(name);
        self
    }

    /// Also asks `f` when the response's head is ready: `Some(actual)` settles to it,
    /// whatever else says otherwise; `None` leaves it to the other ways.
    ///
    /// ```
    /// use tollgate::reserve::Settle;
    ///
    /// // A login limit that charges only failed logins.
    /// let settle = Settle::new().from_response(|parts, _| {
    ///     parts.status.is_success().then_some(0)
    /// });
    /// # let _ = settle;
    /// ```
    #[must_use]
    pub fn from_response<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts, &Reservation) -> Option<u64> + Send + Sync + 'static,
    {
        self.from_response = Some(Arc::new(f));
        self
    }

    /// What the response's head says of the actual cost: the closure's word, then an
    /// [`ActualCost`], then the header; the header is removed either way.
    pub(crate) fn stated(&self, parts: &mut Parts, reservation: &Reservation) -> Option<u64> {
        let header = self
            .header
            .as_ref()
            .and_then(|name| parts.headers.remove(name))
            .and_then(|value| value.to_str().ok()?.trim().parse().ok());
        let extension = parts.extensions.remove::<ActualCost>().map(|c| c.0);
        self.from_response
            .as_ref()
            .and_then(|f| f(parts, reservation))
            .or(extension)
            .or(header)
    }

    /// What trailers say of the actual cost (the header, removed).
    pub(crate) fn stated_in_trailers(&self, trailers: &mut http::HeaderMap) -> Option<u64> {
        let value = trailers.remove(self.header.as_ref()?)?;
        value.to_str().ok()?.trim().parse().ok()
    }
}
