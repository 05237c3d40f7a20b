//! The wire response of a decision: statuses, `LIMIT_RESPONSE_HEADERS_ENABLED` headers, and
//! `RESPONSE_DYNAMIC_METADATA`'s Struct.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as WireLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Duration as WireDuration, ListValue, Struct, Value};

use super::HeaderNames;
use crate::envoy::{Matched, Status, Unit};

/// The response of `statuses`, over or not, with `headers` when they are on and `metadata`.
pub(super) fn response(
    statuses: &[Status],
    over: bool,
    headers: Option<&HeaderNames>,
    metadata: Option<Struct>,
    now_s: u64,
) -> RateLimitResponse {
    let code = |over: bool| if over { Code::OverLimit } else { Code::Ok } as i32;
    let wire: Vec<DescriptorStatus> = statuses
        .iter()
        .map(|s| DescriptorStatus {
            code: code(s.over_limit),
            current_limit: s.current_limit.as_ref().map(|(rpu, unit, name)| WireLimit {
                name: name.clone(),
                requests_per_unit: *rpu,
                unit: *unit as i32,
            }),
            limit_remaining: s.limit_remaining,
            duration_until_reset: s.duration_until_reset.map(|seconds| WireDuration {
                seconds: seconds as i64,
                nanos: 0,
            }),
            quota: None,
        })
        .collect();
    RateLimitResponse {
        overall_code: code(over),
        statuses: wire,
        response_headers_to_add: headers
            .map(|names| limit_headers(names, statuses, now_s))
            .unwrap_or_default(),
        dynamic_metadata: metadata,
        ..RateLimitResponse::default()
    }
}

/// The three headers of the status closest to its limit: the first with the fewest left,
/// unless a descriptor is over (not a quota), whose status wins (the last such one).
fn limit_headers(names: &HeaderNames, statuses: &[Status], now_s: u64) -> Vec<HeaderValue> {
    let mut chosen: Option<&Status> = None;
    for status in statuses.iter().filter(|s| s.current_limit.is_some()) {
        let fewer = chosen.is_none_or(|c| status.limit_remaining < c.limit_remaining);
        if (status.over_limit && !status.quota) || fewer {
            chosen = Some(status);
        }
    }
    let Some(status) = chosen else {
        return Vec::new();
    };
    let Some((rpu, unit, _)) = &status.current_limit else {
        return Vec::new();
    };
    let header = |key: &str, value: u64| HeaderValue {
        key: key.to_owned(),
        value: value.to_string(),
        ..HeaderValue::default()
    };
    vec![
        header(&names.limit, u64::from(*rpu)),
        header(&names.remaining, u64::from(status.limit_remaining)),
        header(&names.reset, unit.until_reset(now_s)),
    ]
}

/// `RESPONSE_DYNAMIC_METADATA`'s Struct, as envoyproxy/ratelimit builds it: `domain`; each
/// descriptor's `entries` (`key=value`), its `limit` override (in protobuf text form) and its
/// `hitsAddend`; the request's `hitsAddend` when not 0; and `metadata`, the configured
/// metadata of every descriptor that passed (not over, not unlimited) merged in descriptor
/// order (the first value of a key wins; maps merge), left out when empty.
pub(super) fn dynamic_metadata(
    request: &RateLimitRequest,
    limits: &[Option<Matched>],
    statuses: &[Status],
) -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert("domain".to_owned(), string(&request.domain));
    let descriptors = request.descriptors.iter().map(|descriptor| {
        let mut fields = std::collections::HashMap::new();
        let entries = descriptor
            .entries
            .iter()
            .map(|e| string(&format!("{}={}", e.key, e.value)));
        fields.insert("entries".to_owned(), list(entries.collect()));
        if let Some(limit) = &descriptor.limit {
            fields.insert("limit".to_owned(), string(&override_text(limit)));
        }
        if let Some(hits) = &descriptor.hits_addend {
            fields.insert("hitsAddend".to_owned(), number(hits.value as f64));
        }
        object(Struct { fields })
    });
    fields.insert("descriptors".to_owned(), list(descriptors.collect()));
    if request.hits_addend != 0 {
        fields.insert(
            "hitsAddend".to_owned(),
            number(f64::from(request.hits_addend)),
        );
    }
    let mut passed = Struct::default();
    for (matched, status) in limits.iter().zip(statuses) {
        let Some(limit) = matched.as_ref().map(Matched::limit) else {
            continue;
        };
        if status.over_limit || limit.is_unlimited() {
            continue;
        }
        if let Some(metadata) = limit.metadata() {
            merge(&mut passed, metadata);
        }
    }
    if !passed.fields.is_empty() {
        fields.insert("metadata".to_owned(), object(passed));
    }
    Struct { fields }
}

/// A request's limit override as protobuf's text form writes it (what the peer's Go
/// `String()` gives, without the random spacing it adds to discourage parsing).
fn override_text(
    limit: &envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride,
) -> String {
    let mut parts = Vec::new();
    if limit.requests_per_unit != 0 {
        parts.push(format!("requests_per_unit:{}", limit.requests_per_unit));
    }
    if limit.unit != 0 {
        let unit = Unit::from_wire(limit.unit)
            .map_or_else(|| limit.unit.to_string(), |u| u.as_str().to_owned());
        parts.push(format!("unit:{unit}"));
    }
    parts.join(" ")
}

/// Adds `source` to `into`: a key `into` has keeps its value, unless both are maps, which
/// merge the same way.
fn merge(into: &mut Struct, source: &serde_json::Map<String, serde_json::Value>) {
    for (key, value) in source {
        match into.fields.get_mut(key) {
            Some(Value {
                kind: Some(Kind::StructValue(existing)),
            }) => {
                if let serde_json::Value::Object(map) = value {
                    merge(existing, map);
                }
            }
            Some(_) => {}
            None => {
                into.fields.insert(key.clone(), from_json(value));
            }
        }
    }
}

/// A JSON value as a protobuf `Value`.
pub(crate) fn from_json(value: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(from_json).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// A protobuf `Value` as JSON (protojson's form; a number that is not finite is null).
pub(crate) fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        // A whole number is written without a fraction, as protojson writes it.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Json::Number((*n as i64).into())
        }
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => Json::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

fn string(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

fn number(value: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(value)),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn object(value: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/json` writes the metadata as protojson does: whole numbers without a fraction,
    /// maps and lists as they are.
    #[test]
    fn metadata_as_json_round_trips() {
        let json = serde_json::json!({"a": 1, "b": [1.5, "x", null, true], "c": {"d": {}}});
        assert_eq!(to_json(&from_json(&json)), json);
        let mut into = Struct::default();
        merge(&mut into, json.as_object().unwrap());
        let other = serde_json::json!({"a": 2, "c": {"d": {"e": 1}, "f": 2}, "g": 3});
        merge(&mut into, other.as_object().unwrap());
        let merged = to_json(&from_json(&serde_json::Value::Object(
            into.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        )));
        assert_eq!(
            merged,
            serde_json::json!({"a": 1, "b": [1.5, "x", null, true], "c": {"d": {"e": 1}, "f": 2}, "g": 3})
        );
    }
}
