//! How many tokens a request takes: [`CostExtractor`].
//!
//! Every request costs 1 unless the layer is given a cost extractor: a request header
//! ([`HeaderCost`], such as `X-RateLimit-Cost`) or a closure `Fn(&Parts) -> u64` (for example,
//! the LLM tokens a request asks for). The cost is taken from every limit of the request.
//!
//! A request whose cost is larger than a limit's capacity can never pass: it is refused at
//! once, without a store call, with `413 Content Too Large` (gRPC: `RESOURCE_EXHAUSTED` without
//! retry advice) and a body that says so; no `Retry-After` is sent, since waiting cannot help.

use http::HeaderName;
use http::request::Parts;

/// Finds the cost of a request, in tokens.
pub trait CostExtractor: Send + Sync + 'static {
    /// The tokens the request takes, at least 1.
    ///
    /// # Errors
    ///
    /// An [`InvalidCost`] when the request states a cost that is not a positive integer; the
    /// layer answers `400 Bad Request` with its message.
    fn cost(&self, parts: &Parts) -> Result<u64, InvalidCost>;
}

impl<F> CostExtractor for F
where
    F: Fn(&Parts) -> u64 + Send + Sync + 'static,
{
    fn cost(&self, parts: &Parts) -> Result<u64, InvalidCost> {
        Ok(self(parts).max(1))
    }
}

/// Every request costs 1 (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCost;

impl CostExtractor for UnitCost {
    fn cost(&self, _: &Parts) -> Result<u64, InvalidCost> {
        Ok(1)
    }
}

/// The cost is a request header: a positive integer; 1 when the header is absent.
#[derive(Debug, Clone)]
pub struct HeaderCost {
    header: HeaderName,
}

impl HeaderCost {
    /// Reads the cost from `header`.
    pub fn new(header: HeaderName) -> Self {
        Self { header }
    }
}

impl Default for HeaderCost {
    /// Reads `X-RateLimit-Cost`.
    fn default() -> Self {
        Self::new(HeaderName::from_static("x-ratelimit-cost"))
    }
}

impl CostExtractor for HeaderCost {
    fn cost(&self, parts: &Parts) -> Result<u64, InvalidCost> {
        let Some(value) = parts.headers.get(&self.header) else {
            return Ok(1);
        };
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&cost| cost > 0)
            .ok_or_else(|| InvalidCost {
                message: format!("invalid {} header: must be a positive integer", self.header),
            })
    }
}

/// A request that states a cost that is not a positive integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidCost {
    message: String,
}

impl InvalidCost {
    /// A rejection with `message`, sent to the client in the `400` body.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(value: Option<&[u8]>) -> Result<u64, InvalidCost> {
        let mut req = http::Request::get("/");
        if let Some(v) = value {
            req = req.header(
                "x-ratelimit-cost",
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        HeaderCost::default().cost(&req.body(()).unwrap().into_parts().0)
    }

    #[test]
    fn header_cost() {
        assert_eq!(cost(None), Ok(1));
        assert_eq!(cost(Some(b"25")), Ok(25));
        assert_eq!(cost(Some(b" 7 ")), Ok(7));
        for bad in [
            &b"0"[..],
            b"-1",
            b"1.5",
            b"",
            b"99999999999999999999999",
            b"\xff",
        ] {
            let err = cost(Some(bad)).unwrap_err();
            assert!(err.message().contains("x-ratelimit-cost"), "{err}");
        }
    }
}
