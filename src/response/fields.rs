//! The `RateLimit` and `RateLimit-Policy` header fields, and the legacy ones.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::policy::Entry;
use crate::{Decision, Limit};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the quota policies that apply.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers): the state of the quota now.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Seconds, rounded up (saturating).
pub(super) fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Milliseconds, rounded up (saturating).
pub(super) fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// One item of `RateLimit-Policy`: `"name";q=capacity;w=seconds` over which the capacity
/// comes back (a token bucket's time to fill from empty, or the window).
pub(super) fn push_policy_item(out: &mut String, limit: &Limit) {
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
pub(super) fn ratelimit_numbers(decision: &Decision) -> (u64, u64) {
    if decision.remaining > 0 {
        return (decision.remaining, 0);
    }
    (0, ceil_secs(decision.available_after).max(1))
}

/// `"name";r=remaining`, with `;t=wait` when none is left.
pub(super) fn format_ratelimit(limit: &Limit, remaining: u64, wait: u64) -> HeaderValue {
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
pub(super) const CACHED_VALUES: u64 = 1024;

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
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`: seconds from now until the bucket is full (not a timestamp).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
