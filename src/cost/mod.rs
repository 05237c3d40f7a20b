//! How many tokens a request takes: [`CostExtractor`].
//!
//! Every request costs 1 unless the layer is given a cost extractor: a request header
//! ([`HeaderCost`], such as `X-RateLimit-Cost`) or a closure `Fn(&Parts) -> u64` (for example,
//! the LLM tokens a request asks for). The cost is taken from every limit of the request.
//!
//! A request whose cost is larger than a limit's capacity can never pass: it is refused at
//! once, without a store call, with `413 Content Too Large` (gRPC: `RESOURCE_EXHAUSTED` without
//! retry advice) and a body that says so; no `Retry-After` is sent, since waiting cannot help.

use crate::Refusal;
use http::HeaderName;
use http::request::Parts;

mod body;

pub use body::{BodyCost, BodyCostLayer, RequestCost};

/// Finds the cost of a request, in tokens.
pub trait CostExtractor: Send + Sync + 'static {
    /// The tokens the request takes, at least 1.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] when the request states a cost that is not a positive integer; the
    /// layer answers `400 Bad Request` with its message.
    fn cost(&self, parts: &Parts) -> Result<u64, Refusal>;
}

impl<F> CostExtractor for F
where
    F: Fn(&Parts) -> u64 + Send + Sync + 'static,
{
    fn cost(&self, parts: &Parts) -> Result<u64, Refusal> {
        Ok(self(parts).max(1))
    }
}

/// The default: the [`RequestCost`] a layer before the rate limit put in the request's
/// extensions (such as [`BodyCostLayer`]); 1 when there is none.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DefaultCost;

impl CostExtractor for DefaultCost {
    fn cost(&self, parts: &Parts) -> Result<u64, Refusal> {
        Ok(parts
            .extensions
            .get::<RequestCost>()
            .map_or(1, |c| c.0.max(1)))
    }
}

/// The cost is a request header: a positive integer; 1 when the header is absent.
#[derive(Debug, Clone)]
pub struct HeaderCost {
    header: HeaderName,
    max: u64,
}

impl HeaderCost {
    /// Reads the cost from `header`, any positive integer.
    pub fn new(header: HeaderName) -> Self {
        Self {
            header,
            max: u64::MAX,
        }
    }

    /// The most a request may say it costs (default: no bound but `u64`'s); a larger cost is
    /// a bad request (`400`), not a denial. (A cost above a limit's capacity is refused with
    /// `413` without a store call anyway; this says so sooner, and in words of your own
    /// choosing of what a request may cost.)
    #[must_use]
    pub fn max(mut self, max: u64) -> Self {
        self.max = max.max(1);
        self
    }
}

impl Default for HeaderCost {
    /// Reads `X-RateLimit-Cost`.
    fn default() -> Self {
        Self::new(HeaderName::from_static("x-ratelimit-cost"))
    }
}

impl CostExtractor for HeaderCost {
    fn cost(&self, parts: &Parts) -> Result<u64, Refusal> {
        let Some(value) = parts.headers.get(&self.header) else {
            return Ok(1);
        };
        let cost = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&cost| cost > 0)
            .ok_or_else(|| {
                Refusal::bad_request(format!(
                    "invalid {} header: must be a positive integer",
                    self.header
                ))
            })?;
        if cost > self.max {
            return Err(Refusal::bad_request(format!(
                "invalid {} header: at most {}",
                self.header, self.max
            )));
        }
        Ok(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(value: Option<&[u8]>) -> Result<u64, Refusal> {
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

    #[test]
    fn header_cost_has_a_maximum() {
        let parts = |v: &'static str| {
            let req = http::Request::get("/").header("x-ratelimit-cost", v);
            req.body(()).unwrap().into_parts().0
        };
        let capped = HeaderCost::default().max(100);
        assert_eq!(capped.cost(&parts("100")), Ok(100));
        let err = capped.cost(&parts("101")).unwrap_err();
        assert_eq!(
            err.message(),
            "invalid x-ratelimit-cost header: at most 100"
        );
    }

    /// Sends `request` through a layer of capacity 3 per minute that reads the cost header,
    /// and returns the status, the named headers (`""` when absent) and the body.
    async fn answer(request: http::Request<()>) -> (http::StatusCode, Vec<String>, String) {
        let layer = crate::TollgateLayer::builder()
            .client_extractor(crate::ApiKey::default())
            .capacity(3)
            .period(std::time::Duration::from_secs(60))
            .cost_extractor(HeaderCost::default())
            .build()
            .unwrap();
        crate::testing::answer(layer, request).await
    }

    fn costing(cost: &str, grpc: bool) -> http::Request<()> {
        let mut req = http::Request::post("/x")
            .header("x-api-key", "k")
            .header("x-ratelimit-cost", cost);
        if grpc {
            req = req.header("content-type", "application/grpc+proto");
        }
        req.body(()).unwrap()
    }

    #[tokio::test]
    async fn a_bad_cost_gets_a_400_and_a_cost_above_the_capacity_a_413() {
        let (status, headers, body) = answer(costing("0", false)).await;
        assert_eq!(status, http::StatusCode::BAD_REQUEST);
        assert_eq!(headers[0], "application/json");
        assert_eq!(headers[1], "", "no Retry-After");
        assert_eq!(headers[2], r#""default";q=3;w=60"#);
        assert_eq!(
            body,
            r#"{"error":"invalid x-ratelimit-cost header: must be a positive integer"}"#
        );
        let (status, headers, body) = answer(costing("5", false)).await;
        assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(headers[0], "application/json");
        assert_eq!(headers[1], "", "no Retry-After: waiting cannot help");
        assert_eq!(
            body,
            r#"{"allowed":false,"error":"this request costs 5 tokens but limit \"default\" holds at most 3: it can never pass"}"#
        );
        // Exactly the capacity passes.
        let (status, _, body) = answer(costing(" 3 ", false)).await;
        assert_eq!((status, body.as_str()), (http::StatusCode::OK, "inner"));
    }

    #[tokio::test]
    async fn grpc_requests_get_invalid_argument_and_resource_exhausted_without_retry_info() {
        let (status, headers, body) = answer(costing("-1", true)).await;
        assert_eq!((status, body.as_str()), (http::StatusCode::OK, ""));
        assert_eq!(headers[0], "application/grpc");
        assert_eq!(headers[3], "3", "INVALID_ARGUMENT");
        assert_eq!(headers[2], r#""default";q=3;w=60"#);
        assert_eq!(
            headers[4],
            "invalid%20x-ratelimit-cost%20header:%20must%20be%20a%20positive%20integer"
        );
        let (status, headers, _) = answer(costing("5", true)).await;
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(headers[3], "8", "RESOURCE_EXHAUSTED");
        assert!(
            headers[4].starts_with("this%20request%20costs%205%20tokens"),
            "{}",
            headers[4]
        );
        assert_eq!(headers[5], "", "no RetryInfo: waiting cannot help");
        assert_eq!(headers[1], "", "no Retry-After for gRPC");
    }
}

/// Property tests: any cost header gives a positive cost or a clear `Refusal`, never 0.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const INVALID: &str = "invalid x-ratelimit-cost header: must be a positive integer";

    fn parts(values: &[Vec<u8>]) -> Option<Parts> {
        let mut req = http::Request::get("/");
        for value in values {
            req = req.header(
                "x-ratelimit-cost",
                http::HeaderValue::from_bytes(value).ok()?,
            );
        }
        Some(req.body(()).ok()?.into_parts().0)
    }

    /// A header value: any bytes a header may hold, numbers and near-numbers, or huge.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        let byte = crate::testing::header_value_byte();
        prop_oneof![
            3 => prop::collection::vec(byte, 0..24),
            3 => "[ \t]{0,2}[-+]?[0-9]{0,25}(\\.[0-9])?[ \t]{0,2}[a-z]{0,1}".prop_map(String::into_bytes),
            1 => (0u8..10, 100..50_000usize).prop_map(|(d, n)| vec![b'0' + d; n]),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_cost_header_gives_a_positive_cost_or_a_clear_400(
            values in prop::collection::vec(value(), 0..3),
        ) {
            let p = parts(&values).unwrap();
            match (HeaderCost::default().cost(&p), values.first()) {
                (Ok(cost), None) => prop_assert_eq!(cost, 1),
                (Ok(cost), Some(first)) => {
                    prop_assert!(cost >= 1);
                    // The number the first header line states, as written.
                    let text = std::str::from_utf8(first).unwrap();
                    let digits = text.trim().trim_start_matches('+').trim_start_matches('0');
                    prop_assert_eq!(digits, cost.to_string());
                }
                (Err(e), first) => {
                    prop_assert!(first.is_some());
                    prop_assert_eq!(e.message(), INVALID);
                }
            }
        }

        #[test]
        fn every_positive_integer_is_read_exactly(
            cost in 1..=u64::MAX,
            zeros in 0usize..3,
            pad in "[ \t]{0,3}",
        ) {
            let value = format!("{pad}{}{cost}{pad}", "0".repeat(zeros)).into_bytes();
            prop_assert_eq!(HeaderCost::default().cost(&parts(&[value]).unwrap()), Ok(cost));
        }

        #[test]
        fn a_closure_cost_is_at_least_one(cost in prop_oneof![Just(0u64), any::<u64>()]) {
            let p = parts(&[]).unwrap();
            let extractor = move |_: &Parts| cost;
            prop_assert_eq!(extractor.cost(&p), Ok(cost.max(1)));
        }
    }
}
