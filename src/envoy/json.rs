//! The protobuf JSON form of `RateLimitRequest` and `RateLimitResponse`, for `/json`: read as
//! protojson reads it (lowerCamel or proto field names, 64-bit integers as numbers or
//! strings, enums by name or number), written as protojson writes it (default fields left
//! out).

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use serde_json::{Map, Value, json};

use super::Unit;

/// Reads a request; `None` when it is not one.
pub(crate) fn request(body: &[u8]) -> Option<RateLimitRequest> {
    let Value::Object(root) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    let mut request = RateLimitRequest::default();
    for (name, value) in &root {
        match name.as_str() {
            "domain" => request.domain = value.as_str()?.to_owned(),
            "descriptors" => {
                for d in value.as_array()? {
                    request.descriptors.push(descriptor(d)?);
                }
            }
            "hitsAddend" | "hits_addend" => {
                request.hits_addend = u32::try_from(integer(value)?).ok()?
            }
            _ => return None,
        }
    }
    Some(request)
}

fn descriptor(value: &Value) -> Option<RateLimitDescriptor> {
    let mut descriptor = RateLimitDescriptor::default();
    for (name, value) in value.as_object()? {
        match name.as_str() {
            "entries" => {
                for entry in value.as_array()? {
                    let mut out = Entry::default();
                    for (name, value) in entry.as_object()? {
                        match name.as_str() {
                            "key" => out.key = value.as_str()?.to_owned(),
                            "value" => out.value = value.as_str()?.to_owned(),
                            _ => return None,
                        }
                    }
                    descriptor.entries.push(out);
                }
            }
            "limit" => {
                let mut limit = RateLimitOverride::default();
                for (name, value) in value.as_object()? {
                    match name.as_str() {
                        "requestsPerUnit" | "requests_per_unit" => {
                            limit.requests_per_unit = u32::try_from(integer(value)?).ok()?;
                        }
                        "unit" => {
                            limit.unit = match value {
                                Value::String(name) if name == "UNKNOWN" => 0,
                                Value::String(name) => Unit::from_name(name)? as i32,
                                other => i32::try_from(integer(other)?).ok()?,
                            };
                        }
                        _ => return None,
                    }
                }
                descriptor.limit = Some(limit);
            }
            "hitsAddend" | "hits_addend" => {
                descriptor.hits_addend = Some(UInt64Value {
                    value: integer(value)?,
                });
            }
            "isNegativeHits" | "is_negative_hits" => {
                descriptor.is_negative_hits = value.as_bool()?
            }
            _ => return None,
        }
    }
    Some(descriptor)
}

/// A protojson integer: a number, or a string of one.
fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn code(code: i32) -> &'static str {
    match Code::try_from(code) {
        Ok(Code::Ok) => "OK",
        Ok(Code::OverLimit) => "OVER_LIMIT",
        _ => "UNKNOWN",
    }
}

/// Writes a response.
pub(crate) fn response(response: &RateLimitResponse) -> Vec<u8> {
    let mut root = Map::new();
    root.insert("overallCode".into(), json!(code(response.overall_code)));
    let statuses: Vec<Value> = response
        .statuses
        .iter()
        .map(|status| {
            let mut out = Map::new();
            out.insert("code".into(), json!(code(status.code)));
            if let Some(limit) = &status.current_limit {
                let mut l = Map::new();
                if !limit.name.is_empty() {
                    l.insert("name".into(), json!(limit.name));
                }
                if limit.requests_per_unit != 0 {
                    l.insert("requestsPerUnit".into(), json!(limit.requests_per_unit));
                }
                let unit = Unit::from_wire(limit.unit).map_or("UNKNOWN", Unit::as_str);
                l.insert("unit".into(), json!(unit));
                out.insert("currentLimit".into(), Value::Object(l));
            }
            if status.limit_remaining != 0 {
                out.insert("limitRemaining".into(), json!(status.limit_remaining));
            }
            if let Some(reset) = &status.duration_until_reset {
                out.insert(
                    "durationUntilReset".into(),
                    json!(format!("{}s", reset.seconds)),
                );
            }
            Value::Object(out)
        })
        .collect();
    if !statuses.is_empty() {
        root.insert("statuses".into(), Value::Array(statuses));
    }
    if !response.response_headers_to_add.is_empty() {
        let headers: Vec<Value> = response
            .response_headers_to_add
            .iter()
            .map(|h| json!({"key": h.key, "value": h.value}))
            .collect();
        root.insert("responseHeadersToAdd".into(), Value::Array(headers));
    }
    if let Some(metadata) = &response.dynamic_metadata {
        let value = envoy_types::pb::google::protobuf::Value {
            kind: Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(
                metadata.clone(),
            )),
        };
        root.insert("dynamicMetadata".into(), super::service::to_json(&value));
    }
    serde_json::to_vec(&Value::Object(root)).unwrap_or_default()
}
