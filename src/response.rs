//! What the layer answers: the response body type, the 429/400/503 responses and the
//! `RateLimit` header fields.

use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{Decision, Limit};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the quota policies that apply.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers): the state of the quota now.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const ONE_SECOND: HeaderValue = HeaderValue::from_static("1");

pin_project! {
    /// The response body of [`RateLimit`](crate::RateLimit): the inner service's body, or the
    /// small JSON body of a response the layer made itself.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full { data: Some(data) },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Full { data } => f.debug_tuple("ResponseBody::Full").field(data).finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// Milliseconds, rounded up.
fn ceil_millis(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000) as u64
}

/// The `RateLimit-Policy` value of a limit: `"name";q=capacity;w=seconds to fill from empty`.
pub(crate) fn policy_value(limit: &Limit) -> HeaderValue {
    let fill = Duration::from_micros(limit.fill_us());
    let value = format!(
        "\"{}\";q={};w={}",
        limit.name(),
        limit.capacity(),
        ceil_secs(fill).max(1)
    );
    HeaderValue::try_from(value).expect("limit names are checked to be header-safe")
}

/// The `RateLimit` value of a decision: `"name";r=remaining`, with `;t=seconds until a token
/// is available` when none is left.
pub(crate) fn ratelimit_value(limit: &Limit, decision: &Decision) -> HeaderValue {
    let mut value = String::with_capacity(limit.name().len() + 24);
    let _ = write!(value, "\"{}\";r={}", limit.name(), decision.remaining);
    if decision.remaining == 0 {
        let full_after = u64::try_from(decision.reset_after.as_micros()).unwrap_or(u64::MAX);
        let wait = Duration::from_micros(limit.one_token_after_us(full_after));
        let _ = write!(value, ";t={}", ceil_secs(wait).max(1));
    }
    HeaderValue::try_from(value).expect("limit names are checked to be header-safe")
}

/// The `429 Too Many Requests` answer to a denied decision.
pub(crate) fn too_many_requests<B>(
    limit: &Limit,
    policy: &HeaderValue,
    decision: &Decision,
) -> Response<ResponseBody<B>> {
    let body = format!(
        "{{\"allowed\":false,\"remaining\":{},\"retry_after_ms\":{}}}",
        decision.remaining,
        ceil_millis(decision.retry_after)
    );
    let mut response = json(StatusCode::TOO_MANY_REQUESTS, body);
    let headers = response.headers_mut();
    headers.insert(
        RETRY_AFTER,
        HeaderValue::from(ceil_secs(decision.retry_after).max(1)),
    );
    insert_ratelimit(headers, policy.clone(), ratelimit_value(limit, decision));
    response
}

/// The `400 Bad Request` answer to a request without a client identity.
pub(crate) fn bad_request<B>(message: &str) -> Response<ResponseBody<B>> {
    json(StatusCode::BAD_REQUEST, error_body(message))
}

/// The `503 Service Unavailable` answer of the closed fail mode.
pub(crate) fn unavailable<B>() -> Response<ResponseBody<B>> {
    let mut response = json(
        StatusCode::SERVICE_UNAVAILABLE,
        error_body("rate limiter unavailable"),
    );
    response.headers_mut().insert(RETRY_AFTER, ONE_SECOND);
    response
}

pub(crate) fn insert_ratelimit(headers: &mut HeaderMap, policy: HeaderValue, state: HeaderValue) {
    headers.insert(RATELIMIT_POLICY, policy);
    headers.insert(RATELIMIT, state);
}

fn json<B>(status: StatusCode, body: String) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON);
    response
}

/// `{"error":"…"}` with the message escaped as a JSON string.
fn error_body(message: &str) -> String {
    let mut body = String::with_capacity(message.len() + 12);
    body.push_str("{\"error\":\"");
    for c in message.chars() {
        match c {
            '"' => body.push_str("\\\""),
            '\\' => body.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(body, "\\u{:04x}", u32::from(c));
            }
            c => body.push(c),
        }
    }
    body.push_str("\"}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_escapes_json() {
        assert_eq!(
            error_body("a \"b\" \\ \n"),
            r#"{"error":"a \"b\" \\ \u000a"}"#
        );
    }

    #[test]
    fn header_values() {
        let limit = Limit::new("default", 10, 10, Duration::from_secs(10)).unwrap();
        assert_eq!(policy_value(&limit), "\"default\";q=10;w=10");
        let d = limit.decision(true, 9, 1_000_000, 1);
        assert_eq!(ratelimit_value(&limit, &d), "\"default\";r=9");
        // Empty bucket, full in 9.5 s: the next token is 0.5 s away, rounded up to 1.
        let d = limit.decision(true, 0, 9_500_000, 1);
        assert_eq!(ratelimit_value(&limit, &d), "\"default\";r=0;t=1");
        let d = limit.decision(false, 0, 10_000_000, 1);
        assert_eq!(ratelimit_value(&limit, &d), "\"default\";r=0;t=1");
        let slow = Limit::new("daily", 100, 100, Duration::from_secs(86_400)).unwrap();
        assert_eq!(policy_value(&slow), "\"daily\";q=100;w=86400");
        let d = slow.decision(false, 0, 86_400_000_000, 1);
        assert_eq!(ratelimit_value(&slow, &d), "\"daily\";r=0;t=864");
    }
}
