//! What the layer answers: the response body type, the 429/400/503 responses and the
//! `RateLimit` header fields.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::policy::Entry;
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

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
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

/// Seconds, rounded up (saturating).
fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Milliseconds, rounded up (saturating).
fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// One item of `RateLimit-Policy`: `"name";q=capacity;w=seconds` over which the capacity
/// comes back (a token bucket's time to fill from empty, or the window).
fn push_policy_item(out: &mut String, limit: &Limit) {
    let fill = Duration::from_micros(limit.window_us());
    let _ = write!(
        out,
        "\"{}\";q={};w={}",
        limit.name(),
        limit.capacity(),
        ceil_secs(fill).max(1)
    );
}

/// The `RateLimit-Policy` value of a policy: every limit, in order.
pub(crate) fn policy_list(limits: &[Limit]) -> HeaderValue {
    let mut value = String::new();
    for (i, limit) in limits.iter().enumerate() {
        if i > 0 {
            value.push_str(", ");
        }
        push_policy_item(&mut value, limit);
    }
    HeaderValue::try_from(value).expect("limit names are checked to be header-safe")
}

/// The numbers of a `RateLimit` value: `r`, and, when it is 0, `t` (seconds until a unit is
/// available again).
fn ratelimit_numbers(decision: &Decision) -> (u64, u64) {
    if decision.remaining > 0 {
        return (decision.remaining, 0);
    }
    (0, ceil_secs(decision.available_after).max(1))
}

/// `"name";r=remaining`, with `;t=wait` when none is left.
fn format_ratelimit(limit: &Limit, remaining: u64, wait: u64) -> HeaderValue {
    let mut value = String::with_capacity(limit.name().len() + 24);
    let _ = write!(value, "\"{}\";r={}", limit.name(), remaining);
    if remaining == 0 {
        let _ = write!(value, ";t={wait}");
    }
    HeaderValue::try_from(value).expect("limit names are checked to be header-safe")
}

/// `RateLimit` values of one limit, made once and shared (a clone of a `HeaderValue` is a
/// reference count), so an allowed response allocates nothing for its fields.
#[derive(Debug, Clone)]
pub(crate) struct FieldCache {
    /// `r=i`, for i < the length.
    remaining: Box<[OnceLock<HeaderValue>]>,
    /// `r=0;t=i`, for i < the length.
    wait: Box<[OnceLock<HeaderValue>]>,
}

/// The most values cached per limit and kind.
const CACHED_VALUES: u64 = 1024;

impl FieldCache {
    pub(crate) fn new(limit: &Limit) -> Self {
        let fill_secs = ceil_secs(Duration::from_micros(limit.window_us()));
        let slots = |n: u64| {
            (0..n.min(CACHED_VALUES) + 1)
                .map(|_| OnceLock::new())
                .collect()
        };
        Self {
            remaining: slots(limit.capacity()),
            wait: slots(fill_secs),
        }
    }

    pub(crate) fn value(&self, limit: &Limit, decision: &Decision) -> HeaderValue {
        let (remaining, wait) = ratelimit_numbers(decision);
        let (slots, i) = if remaining > 0 {
            (&self.remaining, remaining)
        } else {
            (&self.wait, wait)
        };
        match usize::try_from(i).ok().and_then(|i| slots.get(i)) {
            Some(slot) => slot
                .get_or_init(|| format_ratelimit(limit, remaining, wait))
                .clone(),
            None => format_ratelimit(limit, remaining, wait),
        }
    }
}

/// Why the layer answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A limit has too few tokens: `429`.
    Limited,
    /// The request costs more than a limit's capacity and can never pass: `413`.
    TooCostly,
    /// The request does not say who sent it: `400`.
    MissingClient,
    /// The request states a cost that is not a positive integer: `400`.
    InvalidCost,
    /// The store failed and the fail mode is closed: `503`.
    Unavailable,
}

impl RejectionKind {
    /// The HTTP status of the default answer.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Limited => StatusCode::TOO_MANY_REQUESTS,
            Self::TooCostly => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MissingClient | Self::InvalidCost => StatusCode::BAD_REQUEST,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A request the layer answers itself, as a [rejection hook](crate::Builder::on_rejection)
/// sees it.
#[derive(Debug)]
pub struct Rejection<'a> {
    kind: RejectionKind,
    message: &'a str,
    rule: Option<&'a str>,
    limit: Option<&'a Limit>,
    decision: Option<&'a Decision>,
    cost: u64,
}

impl Rejection<'_> {
    /// Why.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// A sentence for the client, as the default body says it.
    pub fn message(&self) -> &str {
        self.message
    }

    /// The rule the request fell under; `None` for the default policy or when no policy was
    /// found yet.
    pub fn rule(&self) -> Option<&str> {
        self.rule
    }

    /// The limit that refused the request (longest wait, or too small for the cost).
    pub fn limit(&self) -> Option<&Limit> {
        self.limit
    }

    /// The store's decision, when there was one.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision
    }

    /// The request's cost in tokens (1 when not yet known).
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

/// The body format of the layer's own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RejectionBody {
    /// `{"allowed":false,"remaining":0,"retry_after_ms":1234}` for a 429, `{"error":"…"}`
    /// otherwise (the default).
    #[default]
    Json,
    /// `application/problem+json` (RFC 9457); a 429 uses the quota-exceeded problem type of
    /// draft-ietf-httpapi-ratelimit-headers with its `violated-policies` member.
    Problem,
}

/// A rejection hook: builds the response to a request the layer refuses. The layer then adds
/// the `RateLimit` fields, `Retry-After` (unless the hook set one) and the legacy fields.
pub type RejectionHook = dyn Fn(&Rejection<'_>) -> Response<Bytes> + Send + Sync;

/// What the layer answers, before it is rendered.
#[derive(Debug)]
pub(crate) enum Answer {
    Limited(Decision),
    TooCostly { cost: u64, limit: usize },
    MissingClient(crate::MissingClient),
    InvalidCost(crate::cost::InvalidCost),
    Unavailable,
}

/// How to render answers; from the layer's settings.
pub(crate) struct Style<'a> {
    pub(crate) body: RejectionBody,
    pub(crate) hook: Option<&'a RejectionHook>,
    pub(crate) legacy: bool,
    pub(crate) grpc: bool,
}

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
const UNAVAILABLE: &str = "rate limiter unavailable";

/// Renders an answer to a request under `policy`.
pub(crate) fn reject<B>(
    answer: &Answer,
    policy: &Entry,
    style: &Style<'_>,
) -> Response<ResponseBody<B>> {
    let (kind, limit, decision, cost) = match answer {
        Answer::Limited(d) => (
            RejectionKind::Limited,
            Some(&policy.limits[d.index]),
            Some(d),
            1,
        ),
        Answer::TooCostly { cost, limit } => (
            RejectionKind::TooCostly,
            Some(&policy.limits[*limit]),
            None,
            *cost,
        ),
        Answer::MissingClient(_) => (RejectionKind::MissingClient, None, None, 1),
        Answer::InvalidCost(_) => (RejectionKind::InvalidCost, None, None, 1),
        Answer::Unavailable => (RejectionKind::Unavailable, None, None, 1),
    };
    // The default 429 body says everything with numbers: no sentence to format for it.
    let plain_429 = kind == RejectionKind::Limited
        && !style.grpc
        && style.hook.is_none()
        && style.body == RejectionBody::Json;
    let message: Cow<'_, str> = match answer {
        _ if plain_429 => Cow::Borrowed(""),
        Answer::Limited(d) => Cow::Owned(format!(
            "rate limited by {:?}: retry in {} ms",
            policy.limits[d.index].name(),
            ceil_millis(d.retry_after)
        )),
        Answer::TooCostly { cost, limit } => {
            let limit = &policy.limits[*limit];
            Cow::Owned(format!(
                "this request costs {cost} tokens but limit {:?} holds at most {}: it can never pass",
                limit.name(),
                limit.capacity()
            ))
        }
        Answer::MissingClient(m) => Cow::Borrowed(m.message()),
        Answer::InvalidCost(c) => Cow::Borrowed(c.message()),
        Answer::Unavailable => Cow::Borrowed(UNAVAILABLE),
    };
    let rejection = Rejection {
        kind,
        message: &message,
        rule: policy.rule.as_deref(),
        limit,
        decision,
        cost,
    };
    let mut response = if style.grpc {
        grpc(&rejection)
    } else if let Some(hook) = style.hook {
        hook(&rejection).map(ResponseBody::full)
    } else {
        let (body, content_type) = match style.body {
            RejectionBody::Json => (json_body(&rejection), APPLICATION_JSON),
            RejectionBody::Problem => (problem_body(&rejection), APPLICATION_PROBLEM_JSON),
        };
        let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
        *response.status_mut() = kind.status();
        response.headers_mut().insert(CONTENT_TYPE, content_type);
        response
    };
    let headers = response.headers_mut();
    let retry_after = match (kind, decision) {
        _ if style.grpc || headers.contains_key(RETRY_AFTER) => None,
        (RejectionKind::Limited, Some(d)) => {
            Some(HeaderValue::from(ceil_secs(d.retry_after).max(1)))
        }
        (RejectionKind::Unavailable, _) => Some(ONE_SECOND),
        _ => None,
    };
    if let Some(retry_after) = retry_after {
        headers.insert(RETRY_AFTER, retry_after);
    }
    match decision {
        Some(d) => insert_fields(headers, policy, d, style.legacy),
        None => {
            headers.append(RATELIMIT_POLICY, policy.header.clone());
        }
    }
    response
}

/// Adds the fields of a decision to a response. `RateLimit` and `RateLimit-Policy` are lists: a
/// field already there (from a layer further in) keeps its items and gets this layer's
/// appended. The legacy fields are set only if absent, so the innermost layer's stay.
pub(crate) fn insert_fields(
    headers: &mut HeaderMap,
    policy: &Entry,
    decision: &Decision,
    legacy: bool,
) {
    let limit = &policy.limits[decision.index];
    headers.append(RATELIMIT_POLICY, policy.header.clone());
    headers.append(
        RATELIMIT,
        policy.fields[decision.index].value(limit, decision),
    );
    if legacy && !headers.contains_key(X_RATELIMIT_LIMIT) {
        insert_legacy(headers, limit, decision);
    }
}

/// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, and `X-RateLimit-Reset` in seconds from now
/// until the bucket is full.
fn insert_legacy(headers: &mut HeaderMap, limit: &Limit, decision: &Decision) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit.capacity()));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(ceil_secs(decision.reset_after)),
    );
}

fn json_body(rejection: &Rejection<'_>) -> String {
    match (rejection.kind, rejection.decision) {
        (RejectionKind::Limited, Some(d)) => format!(
            "{{\"allowed\":false,\"remaining\":{},\"retry_after_ms\":{}}}",
            d.remaining,
            ceil_millis(d.retry_after)
        ),
        (RejectionKind::TooCostly, _) => {
            let mut body = String::from("{\"allowed\":false,\"error\":");
            push_json_str(&mut body, rejection.message);
            body.push('}');
            body
        }
        _ => {
            let mut body = String::from("{\"error\":");
            push_json_str(&mut body, rejection.message);
            body.push('}');
            body
        }
    }
}

fn problem_body(rejection: &Rejection<'_>) -> String {
    let status = rejection.kind.status();
    let mut body = String::from("{\"type\":");
    match rejection.kind {
        RejectionKind::Limited | RejectionKind::TooCostly => {
            push_json_str(&mut body, QUOTA_EXCEEDED);
            body.push_str(
                ",\"title\":\"Request cannot be satisfied as assigned quota has been exceeded\"",
            );
        }
        _ => {
            body.push_str("\"about:blank\",\"title\":");
            push_json_str(&mut body, status.canonical_reason().unwrap_or("Error"));
        }
    }
    let _ = write!(body, ",\"status\":{}", status.as_u16());
    body.push_str(",\"detail\":");
    push_json_str(&mut body, rejection.message);
    if let Some(limit) = rejection.limit {
        body.push_str(",\"violated-policies\":[");
        push_json_str(&mut body, limit.name());
        body.push(']');
    }
    if let Some(d) = rejection.decision {
        let _ = write!(body, ",\"retry_after_ms\":{}", ceil_millis(d.retry_after));
    }
    body.push('}');
    body
}

/// A gRPC answer: HTTP 200, trailers-only (`grpc-status` in the headers), with a
/// `google.rpc.RetryInfo` detail when the client may retry (feature `grpc`).
fn grpc<B>(rejection: &Rejection<'_>) -> Response<ResponseBody<B>> {
    let code: i32 = match rejection.kind {
        RejectionKind::Limited | RejectionKind::TooCostly => 8, // RESOURCE_EXHAUSTED
        RejectionKind::MissingClient | RejectionKind::InvalidCost => 3, // INVALID_ARGUMENT
        RejectionKind::Unavailable => 14,                       // UNAVAILABLE
    };
    let mut response = Response::new(ResponseBody::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_GRPC);
    let retry = rejection
        .decision
        .filter(|_| rejection.kind == RejectionKind::Limited)
        .map(|d| d.retry_after);
    #[cfg(feature = "grpc")]
    {
        use tonic_types::{ErrorDetails, StatusExt};
        let code = tonic::Code::from_i32(code);
        let status = match retry {
            Some(delay) => tonic::Status::with_error_details(
                code,
                rejection.message,
                ErrorDetails::with_retry_info(Some(delay)),
            ),
            None => tonic::Status::new(code, rejection.message),
        };
        if status.add_header(headers).is_ok() {
            return response;
        }
    }
    let _ = retry;
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    let message = percent_encoding::utf8_percent_encode(rejection.message, GRPC_MESSAGE_ESCAPED);
    if let Ok(value) = HeaderValue::try_from(message.to_string()) {
        headers.insert(GRPC_MESSAGE, value);
    }
    response
}

/// Whether a request speaks gRPC: `content-type: application/grpc…`.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

const APPLICATION_PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC percent-encodes a message outside printable ASCII, and `%`.
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Legacy `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`: seconds from now until the bucket is full (not a timestamp).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Appends `text` as a JSON string.
fn push_json_str(body: &mut String, text: &str) {
    body.push('"');
    for c in text.chars() {
        match c {
            '"' => body.push_str("\\\""),
            '\\' => body.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(body, "\\u{:04x}", u32::from(c));
            }
            c => body.push(c),
        }
    }
    body.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_up_saturates() {
        assert_eq!(ceil_secs(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(1_001)), 2);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
        assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut body = String::new();
        push_json_str(&mut body, "a \"b\" \\ \n");
        assert_eq!(body, r#""a \"b\" \\ \u000a""#);
    }

    /// A token bucket's decision that leaves it full again after `after` µs.
    fn bucket(limit: &Limit, took: bool, after: u64) -> Decision {
        let full_after = if took {
            after - limit.interval_us()
        } else {
            after
        };
        let observed = crate::algorithm::Observation::TokenBucket { full_after };
        limit.report(&observed, took, 1)
    }

    fn ratelimit_value(limit: &Limit, decision: &Decision) -> HeaderValue {
        let (remaining, wait) = ratelimit_numbers(decision);
        format_ratelimit(limit, remaining, wait)
    }

    #[test]
    fn header_values() {
        let limit = Limit::new("default", 10, 10, Duration::from_secs(10)).unwrap();
        assert_eq!(
            policy_list(std::slice::from_ref(&limit)),
            "\"default\";q=10;w=10"
        );
        let d = bucket(&limit, true, 1_000_000);
        assert_eq!(ratelimit_value(&limit, &d), "\"default\";r=9");
        // Empty bucket, full in 9.5 s: the next token is 0.5 s away, rounded up to 1.
        let d = bucket(&limit, true, 9_500_000);
        assert_eq!(ratelimit_value(&limit, &d), "\"default\";r=0;t=1");
        let d = bucket(&limit, false, 10_000_000);
        assert_eq!(ratelimit_value(&limit, &d), "\"default\";r=0;t=1");
        let burst = Limit::new("burst", 5, 5, Duration::from_secs(60)).unwrap();
        let daily = Limit::new("daily", 100, 100, Duration::from_secs(86_400)).unwrap();
        assert_eq!(
            policy_list(&[burst, daily.clone()]),
            "\"burst\";q=5;w=60, \"daily\";q=100;w=86400"
        );
        let d = bucket(&daily, false, 86_400_000_000);
        assert_eq!(ratelimit_value(&daily, &d), "\"daily\";r=0;t=864");
        // The cache gives the same values, within and beyond what it keeps.
        let cache = FieldCache::new(&daily);
        for remaining in [1, 50, 99] {
            let d = bucket(&daily, true, 86_400_000_000 - remaining * 864_000_000);
            assert_eq!(d.remaining, remaining);
            assert_eq!(cache.value(&daily, &d), ratelimit_value(&daily, &d));
            assert_eq!(cache.value(&daily, &d), ratelimit_value(&daily, &d));
        }
        assert_eq!(cache.value(&daily, &d), "\"daily\";r=0;t=864");
        let d = bucket(&daily, false, 90_000_000_000);
        assert_eq!(cache.value(&daily, &d), ratelimit_value(&daily, &d));
    }
}
