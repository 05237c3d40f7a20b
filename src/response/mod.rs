//! What the layer answers: the response body type, the 429/400/503 responses and the
//! `RateLimit` header fields.

mod body;
mod fields;
mod refusal;
mod reject;

pub use body::ResponseBody;
pub(crate) use fields::insert_fields;
pub use refusal::Refusal;
pub(crate) use reject::RejectionBody;
pub(crate) use reject::RejectionHook;
pub(crate) use reject::{Answer, Style, error_json, is_grpc, reject};
pub use reject::{Rejection, RejectionKind};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::reject::*;
    use crate::limit::{ceil_millis, ceil_secs};
    use crate::policy::fields::*;
    use crate::{Decision, Limit};

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
