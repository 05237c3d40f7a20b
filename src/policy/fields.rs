//! The header values each policy makes once: its `RateLimit-Policy` list, and a cache of the
//! `RateLimit` values of each of its limits.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use crate::limit::ceil_secs;
use crate::{Decision, Limit};

/// One item of `RateLimit-Policy`: `"name";q=capacity;w=seconds` over which the capacity
/// comes back (a token bucket's time to fill from empty, or the window).
pub(crate) fn push_policy_item(out: &mut String, limit: &Limit) {
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
pub(crate) fn ratelimit_numbers(decision: &Decision) -> (u64, u64) {
    if decision.remaining > 0 {
        return (decision.remaining, 0);
    }
    (0, ceil_secs(decision.available_after).max(1))
}

/// `"name";r=remaining`, with `;t=wait` when none is left. Written into a vector of exactly
/// its length, which the header value then owns: one allocation (this runs for every response
/// whose numbers are past the cache).
pub(crate) fn format_ratelimit(limit: &Limit, remaining: u64, wait: u64) -> HeaderValue {
    let mut r = itoa::Buffer::new();
    let r = r.format(remaining).as_bytes();
    let mut t = itoa::Buffer::new();
    let t = (remaining == 0).then(|| t.format(wait).as_bytes());
    let name = limit.name().as_bytes();
    let len = name.len() + 5 + r.len() + t.map_or(0, |t| 3 + t.len());
    let mut value = Vec::with_capacity(len);
    value.push(b'"');
    value.extend_from_slice(name);
    value.extend_from_slice(b"\";r=");
    value.extend_from_slice(r);
    if let Some(t) = t {
        value.extend_from_slice(b";t=");
        value.extend_from_slice(t);
    }
    debug_assert_eq!(value.len(), value.capacity());
    // A vector whose length is its capacity becomes `Bytes` without another allocation.
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .expect("limit names are checked to be header-safe")
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
pub(crate) const CACHED_VALUES: u64 = 1024;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Limit;

    #[test]
    fn values_past_the_cache_are_written_as_their_display() {
        let limit = Limit::new("per-ip", 10, 10, Duration::from_secs(10)).unwrap();
        for n in [1, 9, 10, 99, 1023, 1024, 65_535, 1 << 40, u64::MAX] {
            let value = super::format_ratelimit(&limit, n, 0);
            assert_eq!(value.to_str().unwrap(), format!("\"per-ip\";r={n}"));
            let value = super::format_ratelimit(&limit, 0, n);
            assert_eq!(value.to_str().unwrap(), format!("\"per-ip\";r=0;t={n}"));
        }
    }
}
