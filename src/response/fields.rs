//! The `RateLimit` and `RateLimit-Policy` header fields, and the legacy ones.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::limit::ceil_secs;
use crate::policy::Entry;
use crate::{Decision, Limit};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the quota policies that apply.
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers): the state of the quota now.
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

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
pub(super) fn insert_legacy(headers: &mut HeaderMap, limit: &Limit, decision: &Decision) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit.capacity()));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(ceil_secs(decision.reset_after)),
    );
}

/// Legacy `X-RateLimit-Limit`.
pub(crate) const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub(crate) const X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`: seconds from now until the bucket is full (not a timestamp).
pub(crate) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
