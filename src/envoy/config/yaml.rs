//! One config file: its YAML checked key by key as envoyproxy/ratelimit checks it, then read
//! into [`File`].

use yaml_rust2::{Yaml, YamlLoader};

/// Every key a config file may use, at any depth (one flat set, as the peer checks it).
const KEYS: [&str; 16] = [
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];

/// A file's contents, read.
#[derive(Debug, Default)]
pub(super) struct File {
    pub(super) domain: String,
    pub(super) descriptors: Vec<Descriptor>,
}

/// One descriptor of a file, as written.
#[derive(Debug, Default)]
pub(super) struct Descriptor {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) rate_limit: Option<RateLimit>,
    pub(super) descriptors: Vec<Descriptor>,
    pub(super) shadow_mode: bool,
    pub(super) quota_mode: bool,
    pub(super) detailed_metric: bool,
    pub(super) share_threshold: bool,
    pub(super) metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A `rate_limit`, as written.
#[derive(Debug, Default)]
pub(super) struct RateLimit {
    pub(super) unit: String,
    pub(super) requests_per_unit: u32,
    pub(super) unlimited: bool,
    pub(super) name: String,
    pub(super) replaces: Vec<String>,
}

/// Reads a file's text: the message of the peer's error (without the file's name) when it
/// cannot be.
pub(super) fn read(text: &str) -> Result<File, String> {
    let documents =
        YamlLoader::load_from_str(text).map_err(|e| format!("error loading config file: {e}"))?;
    let root = match documents.into_iter().next() {
        // An empty file is an empty map: no domain.
        None | Some(Yaml::Null) => return Ok(File::default()),
        Some(Yaml::Hash(root)) => root,
        Some(other) => {
            return Err(format!(
                "error loading config file: the file is a {} where a map is expected",
                kind(&other)
            ));
        }
    };
    check_keys(&root)?;
    let mut file = File::default();
    for (key, value) in &root {
        match key.as_str() {
            Some("domain") => file.domain = string(value, "domain")?,
            Some("descriptors") => file.descriptors = descriptors(value)?,
            // Valid elsewhere, ignored here (as the peer's decoder ignores them).
            _ => {}
        }
    }
    Ok(file)
}

/// Checks every key of `map` and below: a string, and one the format knows; lists hold maps;
/// leaves are strings, integers, booleans or null. `metadata` is the user's, unchecked.
fn check_keys(map: &yaml_rust2::yaml::Hash) -> Result<(), String> {
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            return Err(format!(
                "config error, key is not of type string: {}",
                shown(key)
            ));
        };
        if !KEYS.contains(&name) {
            return Err(format!("config error, unknown key '{name}'"));
        }
        if name == "metadata" {
            continue;
        }
        match value {
            Yaml::Array(items) => {
                for item in items {
                    let Yaml::Hash(item) = item else {
                        return Err(format!(
                            "config error, yaml file contains list of type other than map: {}",
                            shown(item)
                        ));
                    };
                    check_keys(item)?;
                }
            }
            Yaml::Hash(inner) => check_keys(inner)?,
            Yaml::String(_) | Yaml::Integer(_) | Yaml::Boolean(_) | Yaml::Null => {}
            _ => return Err("error checking config".to_owned()),
        }
    }
    Ok(())
}

fn descriptors(value: &Yaml) -> Result<Vec<Descriptor>, String> {
    let items = match value {
        Yaml::Null => return Ok(Vec::new()),
        Yaml::Array(items) => items,
        other => return Err(decode_error("descriptors", "a list", other)),
    };
    items.iter().map(descriptor).collect()
}

fn descriptor(value: &Yaml) -> Result<Descriptor, String> {
    let Yaml::Hash(map) = value else {
        return Err(decode_error("descriptors", "a map", value));
    };
    let mut descriptor = Descriptor::default();
    for (key, value) in map {
        match key.as_str().unwrap_or_default() {
            "key" => descriptor.key = string(value, "key")?,
            "value" => descriptor.value = string(value, "value")?,
            "rate_limit" => descriptor.rate_limit = rate_limit(value)?,
            "descriptors" => descriptor.descriptors = descriptors(value)?,
            "shadow_mode" => descriptor.shadow_mode = boolean(value, "shadow_mode")?,
            "quota_mode" => descriptor.quota_mode = boolean(value, "quota_mode")?,
            "detailed_metric" => {
                descriptor.detailed_metric = boolean(value, "detailed_metric")?;
            }
            "share_threshold" => {
                descriptor.share_threshold = boolean(value, "share_threshold")?;
            }
            "metadata" => descriptor.metadata = metadata(value)?,
            _ => {}
        }
    }
    Ok(descriptor)
}

fn rate_limit(value: &Yaml) -> Result<Option<RateLimit>, String> {
    let map = match value {
        Yaml::Null => return Ok(None),
        Yaml::Hash(map) => map,
        other => return Err(decode_error("rate_limit", "a map", other)),
    };
    let mut limit = RateLimit::default();
    for (key, value) in map {
        match key.as_str().unwrap_or_default() {
            "unit" => limit.unit = string(value, "unit")?,
            "requests_per_unit" => {
                limit.requests_per_unit = match value {
                    Yaml::Null => 0,
                    Yaml::Integer(n) => u32::try_from(*n)
                        .map_err(|_| decode_error("requests_per_unit", "a uint32", value))?,
                    other => return Err(decode_error("requests_per_unit", "a uint32", other)),
                };
            }
            "unlimited" => limit.unlimited = boolean(value, "unlimited")?,
            "name" => limit.name = string(value, "name")?,
            "replaces" => {
                let items = match value {
                    Yaml::Null => continue,
                    Yaml::Array(items) => items,
                    other => return Err(decode_error("replaces", "a list", other)),
                };
                for item in items {
                    let name = match item {
                        Yaml::Hash(map) => map
                            .iter()
                            .find(|(k, _)| k.as_str() == Some("name"))
                            .map(|(_, v)| string(v, "name"))
                            .transpose()?
                            .unwrap_or_default(),
                        other => return Err(decode_error("replaces", "a map", other)),
                    };
                    limit.replaces.push(name);
                }
            }
            _ => {}
        }
    }
    Ok(Some(limit))
}

/// A scalar read as a string, as the peer's decoder does (a number or a boolean as written).
fn string(value: &Yaml, field: &str) -> Result<String, String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Ok(s.clone()),
        Yaml::Integer(n) => Ok(n.to_string()),
        Yaml::Boolean(b) => Ok(b.to_string()),
        Yaml::Null => Ok(String::new()),
        other => Err(decode_error(field, "a string", other)),
    }
}

fn boolean(value: &Yaml, field: &str) -> Result<bool, String> {
    match value {
        Yaml::Boolean(b) => Ok(*b),
        Yaml::Null => Ok(false),
        other => Err(decode_error(field, "a boolean", other)),
    }
}

fn metadata(value: &Yaml) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    match value {
        Yaml::Null => Ok(None),
        Yaml::Hash(map) if map.is_empty() => Ok(None),
        Yaml::Hash(_) => match json(value) {
            Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
            Ok(_) => unreachable!("a map converts to an object"),
            Err(e) => Err(format!("error parsing metadata: {e}")),
        },
        other => Err(decode_error("metadata", "a map", other)),
    }
}

/// A metadata value as JSON (what a `google.protobuf.Struct` holds).
fn json(value: &Yaml) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match value {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(n) => Value::from(*n),
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("invalid number {s}"))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(json).collect::<Result<_, _>>()?),
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let key = match key {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(n) => n.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("invalid key {}", shown(other))),
                };
                object.insert(key, json(value)?);
            }
            Value::Object(object)
        }
        other => return Err(format!("unsupported value {}", shown(other))),
    })
}

/// The error of a value of the wrong type for its field.
fn decode_error(field: &str, wanted: &str, found: &Yaml) -> String {
    format!(
        "error loading config file: cannot read {} `{}` into {field}: {wanted} is expected",
        kind(found),
        shown(found)
    )
}

fn kind(value: &Yaml) -> &'static str {
    match value {
        Yaml::Real(_) => "a float",
        Yaml::Integer(_) => "an integer",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a list",
        Yaml::Hash(_) => "a map",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "null",
        Yaml::BadValue => "a bad value",
    }
}

/// A value as the peer's messages print it (Go's `%v`).
fn shown(value: &Yaml) -> String {
    match value {
        Yaml::Real(s) | Yaml::String(s) => s.clone(),
        Yaml::Integer(n) => n.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => "<nil>".to_owned(),
        Yaml::Array(items) => {
            let items: Vec<String> = items.iter().map(shown).collect();
            format!("[{}]", items.join(" "))
        }
        Yaml::Hash(map) => {
            let pairs: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}:{}", shown(k), shown(v)))
                .collect();
            format!("map[{}]", pairs.join(" "))
        }
        Yaml::Alias(_) | Yaml::BadValue => "?".to_owned(),
    }
}
