//! [`Refusal`]: how an extractor says a request cannot be limited as it is.

use std::borrow::Cow;

use http::StatusCode;

/// Why a request cannot be limited as it is, from a client, cost or tier extractor: the layer
/// answers it with this status and `{"error": message}` (gRPC: the matching status), without
/// a store call.
///
/// The layer's own extractors answer `400` (no client identity, a cost that is not a positive
/// integer) and `403` (a tier the policies do not have); yours may say `401` for an unknown
/// credential, or `403` for a forbidden plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    status: StatusCode,
    message: Cow<'static, str>,
}

impl Refusal {
    /// An answer of `status` with `message`.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A `400 Bad Request` with `message`.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}
