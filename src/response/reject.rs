//! The layer's own answers: 429, 413, 400 and 503, as JSON, problem details or gRPC.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::policy::Entry;
use crate::{Decision, Limit};

use super::body::ResponseBody;
use super::fields::*;
use crate::limit::{ceil_millis, ceil_secs};

pub(super) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
pub(super) const ONE_SECOND: HeaderValue = HeaderValue::from_static("1");

/// Why the layer answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A limit has too few tokens: `429`.
    Limited,
    /// The request costs more than a limit's capacity and can never pass: `413`.
    TooCostly,
    /// The request does not say who sent it: the extractor's [`Refusal`](crate::Refusal)
    /// (`400` from the layer's own).
    MissingClient,
    /// The request states a cost that is not a positive integer: the extractor's
    /// [`Refusal`](crate::Refusal) (`400` from the layer's own).
    InvalidCost,
    /// The store failed and the fail mode is closed: `503`.
    Unavailable,
    /// The policies are tiered and the request has no tier, or one they do not have: the
    /// status of its `Refusal` (`403` for an unknown
    /// tier).
    NoTier,
}

impl RejectionKind {
    /// The HTTP status of the default answer.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Limited => StatusCode::TOO_MANY_REQUESTS,
            Self::TooCostly => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MissingClient | Self::InvalidCost => StatusCode::BAD_REQUEST,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoTier => StatusCode::FORBIDDEN,
        }
    }
}

/// A request the layer answers itself, as a [rejection hook](crate::LayerBuilder::on_rejection)
/// sees it.
#[derive(Debug)]
pub struct Rejection<'a> {
    kind: RejectionKind,
    message: &'a str,
    rule: Option<&'a str>,
    limit: Option<&'a Limit>,
    decision: Option<&'a Decision>,
    cost: u64,
    /// The policy has more than one limit: the body names the one that refused.
    several: bool,
    status: StatusCode,
}

impl Rejection<'_> {
    /// Why.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The HTTP status of the default answer ([`RejectionKind::status`], or a
    /// `Refusal`'s).
    pub fn status(&self) -> StatusCode {
        self.status
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
pub(crate) enum RejectionBody {
    /// `{"allowed":false,"remaining":0,"retry_after_ms":1234}` for a 429 (with
    /// `"limit":"<name>"` after `allowed` when the policy has several limits: the one that
    /// refused), `{"error":"…"}` otherwise (the default).
    #[default]
    Json,
    /// `application/problem+json` (RFC 9457); a 429 uses the quota-exceeded problem type of
    /// draft-ietf-httpapi-ratelimit-headers with its `violated-policies` member.
    Problem,
}

/// A rejection hook: builds the response to a request the layer refuses. The layer then adds
/// the `RateLimit` fields, `Retry-After` (unless the hook set one) and the legacy fields.
pub(crate) type RejectionHook = dyn Fn(&Rejection<'_>) -> Response<Bytes> + Send + Sync;

/// What the layer answers, before it is rendered.
#[derive(Debug)]
pub(crate) enum Answer {
    Limited(Decision),
    TooCostly { cost: u64, limit: usize },
    MissingClient(crate::Refusal),
    InvalidCost(crate::Refusal),
    Unavailable,
    NoTier(crate::Refusal),
}

/// How to render answers; from the layer's settings.
pub(crate) struct Style<'a> {
    pub(crate) body: RejectionBody,
    pub(crate) hook: Option<&'a RejectionHook>,
    pub(crate) legacy: bool,
    pub(crate) grpc: bool,
}

pub(super) const QUOTA_EXCEEDED: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";
pub(super) const UNAVAILABLE: &str = "rate limiter unavailable";

/// Renders an answer to a request under `policy` (`None` until the request's tier is known).
pub(crate) fn reject<B>(
    answer: &Answer,
    policy: Option<&Entry>,
    style: &Style<'_>,
) -> Response<ResponseBody<B>> {
    let limits: &[crate::Limit] = policy.map_or(&[], |p| &p.limits);
    let (kind, limit, decision, cost) = match answer {
        Answer::Limited(d) => (RejectionKind::Limited, limits.get(d.index), Some(d), 1),
        Answer::TooCostly { cost, limit } => {
            (RejectionKind::TooCostly, limits.get(*limit), None, *cost)
        }
        Answer::MissingClient(_) => (RejectionKind::MissingClient, None, None, 1),
        Answer::InvalidCost(_) => (RejectionKind::InvalidCost, None, None, 1),
        Answer::Unavailable => (RejectionKind::Unavailable, None, None, 1),
        Answer::NoTier(_) => (RejectionKind::NoTier, None, None, 1),
    };
    let status = match answer {
        Answer::NoTier(refusal) | Answer::MissingClient(refusal) | Answer::InvalidCost(refusal) => {
            refusal.status()
        }
        _ => kind.status(),
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
            limit.map_or("", |l| l.name()),
            ceil_millis(d.retry_after)
        )),
        Answer::TooCostly { cost, .. } => Cow::Owned(format!(
            "this request costs {cost} tokens but limit {:?} holds at most {}: it can never pass",
            limit.map_or("", |l| l.name()),
            limit.map_or(0, |l| l.capacity())
        )),
        Answer::NoTier(refusal) | Answer::MissingClient(refusal) | Answer::InvalidCost(refusal) => {
            Cow::Borrowed(refusal.message())
        }
        Answer::Unavailable => Cow::Borrowed(UNAVAILABLE),
    };
    let rejection = Rejection {
        kind,
        message: &message,
        rule: policy.and_then(|p| p.rule.as_deref()),
        limit,
        decision,
        cost,
        several: limits.len() > 1,
        status,
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
        *response.status_mut() = status;
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
    match (decision, policy) {
        (Some(d), Some(policy)) => insert_fields(headers, policy, d, style.legacy),
        (_, Some(policy)) => {
            headers.append(RATELIMIT_POLICY, policy.header.clone());
        }
        (_, None) => {}
    }
    response
}

pub(super) fn json_body(rejection: &Rejection<'_>) -> String {
    match (rejection.kind, rejection.decision) {
        (RejectionKind::Limited, Some(d)) => {
            let mut body = String::from("{\"allowed\":false,");
            if let (true, Some(limit)) = (rejection.several, rejection.limit) {
                // Which of the policy's limits refused.
                body.push_str("\"limit\":");
                push_json_str(&mut body, limit.name());
                body.push(',');
            }
            let _ = write!(
                body,
                "\"remaining\":{},\"retry_after_ms\":{}}}",
                d.remaining,
                ceil_millis(d.retry_after)
            );
            body
        }
        (RejectionKind::TooCostly, _) => error_json("{\"allowed\":false,", rejection.message),
        _ => error_json("{", rejection.message),
    }
}

/// `{"error":message}` after `start` (`{`, or `{` and fields before the error).
pub(crate) fn error_json(start: &str, message: &str) -> String {
    let mut body = String::with_capacity(start.len() + 12 + message.len());
    body.push_str(start);
    body.push_str("\"error\":");
    push_json_str(&mut body, message);
    body.push('}');
    body
}

pub(super) fn problem_body(rejection: &Rejection<'_>) -> String {
    let status = rejection.status;
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
pub(super) fn grpc<B>(rejection: &Rejection<'_>) -> Response<ResponseBody<B>> {
    let code: i32 = match rejection.kind {
        RejectionKind::Limited | RejectionKind::TooCostly => 8, // RESOURCE_EXHAUSTED
        RejectionKind::MissingClient | RejectionKind::InvalidCost => 3, // INVALID_ARGUMENT
        RejectionKind::Unavailable => 14,                       // UNAVAILABLE
        RejectionKind::NoTier => match rejection.status {
            StatusCode::BAD_REQUEST => 3,   // INVALID_ARGUMENT
            StatusCode::UNAUTHORIZED => 16, // UNAUTHENTICATED
            _ => 7,                         // PERMISSION_DENIED
        },
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

pub(super) const APPLICATION_PROBLEM_JSON: HeaderValue =
    HeaderValue::from_static("application/problem+json");
pub(super) const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
pub(super) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(super) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC percent-encodes a message outside printable ASCII, and `%`.
pub(super) const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'%');

/// Appends `text` as a JSON string.
pub(crate) fn push_json_str(body: &mut String, text: &str) {
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
