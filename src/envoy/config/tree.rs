//! A domain's descriptors as a tree, and the search of a request's descriptor in it.

use std::collections::HashMap;
use std::sync::Arc;

use super::yaml;
use super::{RateLimit, Unit};

/// One level of a domain's tree: its nodes by composite key (`key`, or `key_value`), and the
/// keys with a `*` in config order (tried in that order when no exact key matches).
#[derive(Debug, Default)]
pub(super) struct Level {
    nodes: HashMap<String, Node>,
    wildcards: Vec<Wildcard>,
}

#[derive(Debug)]
struct Wildcard {
    key: String,
    /// The key split at each `*`: a value matches when it holds these parts in order, the
    /// first at its start and the last at its end.
    parts: Vec<String>,
}

#[derive(Debug)]
struct Node {
    limit: Option<Arc<RateLimit>>,
    below: Level,
    /// Every value this wildcard matches shares one counter.
    share_threshold: bool,
}

impl Level {
    /// Adds `descriptors` (of a file's domain, under `path`, like `domain.key_value.`),
    /// checked as the peer checks them: the message of the first error.
    pub(super) fn add(
        &mut self,
        path: &str,
        descriptors: Vec<yaml::Descriptor>,
    ) -> Result<(), String> {
        for descriptor in descriptors {
            if descriptor.key.is_empty() {
                return Err("descriptor has empty key".to_owned());
            }
            let key = match descriptor.value.as_str() {
                "" => descriptor.key.clone(),
                value => format!("{}_{value}", descriptor.key),
            };
            let full = format!("{path}{key}");
            if self.nodes.contains_key(&key) {
                return Err(format!("duplicate descriptor composite key '{full}'"));
            }
            let flags = descriptor_flags(&descriptor);
            let limit = descriptor
                .rate_limit
                .map(|written| limit(written, &flags, &full))
                .transpose()?;
            let wildcard = key.contains('*');
            if descriptor.share_threshold && !wildcard {
                return Err(format!(
                    "share_threshold can only be used with wildcard values (containing '*'), \
                     but found key '{key}'"
                ));
            }
            let mut below = Level::default();
            below.add(&format!("{full}."), descriptor.descriptors)?;
            if wildcard {
                self.wildcards.push(Wildcard {
                    parts: key.split('*').map(str::to_owned).collect(),
                    key: key.clone(),
                });
            }
            let limit = limit.map(|mut limit| {
                limit.metadata = descriptor.metadata.map(Arc::new);
                Arc::new(limit)
            });
            self.nodes.insert(
                key,
                Node {
                    limit,
                    below,
                    share_threshold: descriptor.share_threshold,
                },
            );
        }
        Ok(())
    }

    /// The limit of `entries` (key, value pairs) under this level, the root of `domain`: the
    /// limit of the node reached by the last entry, if the walk gets that far.
    pub(super) fn find(&self, domain: &str, entries: &[(&str, &str)]) -> Option<super::Matched> {
        let mut level = self;
        let mut shared: Vec<Option<String>> = Vec::new();
        let mut found = None;
        for (i, &(key, value)) in entries.iter().enumerate() {
            let composite = format!("{key}_{value}");
            // 1. The exact key and value; 2. the first wildcard that matches; 3. the key alone.
            let (node, wildcard) = match level.nodes.get(&composite) {
                Some(node) => (Some(node), None),
                None => match level
                    .wildcards
                    .iter()
                    .find(|w| matches(&w.parts, &composite))
                {
                    Some(w) => (level.nodes.get(&w.key), Some(&w.key)),
                    None => (level.nodes.get(key), None),
                },
            };
            let Some(node) = node else {
                break;
            };
            if let (true, Some(pattern)) = (node.share_threshold, wildcard) {
                // The counter is the pattern's: `files*` for `files/a.pdf` and `files/b.csv`.
                shared.resize(entries.len(), None);
                let value = pattern.strip_prefix(&format!("{key}_")).unwrap_or(pattern);
                shared[i] = Some(value.to_owned());
            }
            if i + 1 == entries.len() {
                found = node.limit.clone();
            }
            if node.below.nodes.is_empty() {
                break;
            }
            level = &node.below;
        }
        let limit = found?;
        let stats_key = match limit.detailed_metric {
            true => detailed_key(domain, entries, &shared),
            false => limit.stats_key.clone(),
        };
        Some(super::Matched {
            limit,
            shared,
            stats_key,
        })
    }

    /// Appends each limit's line of `/rlconfig`.
    pub(super) fn dump(&self, out: &mut Vec<String>) {
        for node in self.nodes.values() {
            if let Some(limit) = &node.limit {
                out.push(format!(
                    "{}: unit={} requests_per_unit={}, shadow_mode: {}, quota_mode: {}",
                    limit.stats_key,
                    limit.unit.map_or("UNKNOWN", Unit::as_str),
                    limit.requests_per_unit,
                    limit.shadow_mode,
                    limit.quota_mode
                ));
            }
            node.below.dump(out);
        }
    }
}

/// The descriptor's own flags that its limit carries.
struct Flags {
    shadow_mode: bool,
    quota_mode: bool,
    detailed_metric: bool,
}

fn descriptor_flags(descriptor: &yaml::Descriptor) -> Flags {
    Flags {
        shadow_mode: descriptor.shadow_mode,
        quota_mode: descriptor.quota_mode,
        detailed_metric: descriptor.detailed_metric,
    }
}

/// A `rate_limit` as written, checked: the unit, `unlimited`, `replaces`.
fn limit(written: yaml::RateLimit, flags: &Flags, full: &str) -> Result<RateLimit, String> {
    let unit = Unit::from_name(&written.unit);
    match (written.unlimited, unit) {
        (true, Some(_)) => {
            return Err("should not specify rate limit unit when unlimited".to_owned());
        }
        (false, None) => return Err(format!("invalid rate limit unit '{}'", written.unit)),
        _ => {}
    }
    for replaced in &written.replaces {
        if replaced.is_empty() {
            return Err("should not have an empty replaces entry".to_owned());
        }
        if *replaced == written.name {
            return Err("replaces should not contain name of same descriptor".to_owned());
        }
    }
    Ok(RateLimit {
        requests_per_unit: written.requests_per_unit,
        unit,
        unlimited: written.unlimited,
        name: written.name,
        replaces: written.replaces,
        shadow_mode: flags.shadow_mode,
        quota_mode: flags.quota_mode,
        detailed_metric: flags.detailed_metric,
        metadata: None,
        stats_key: full.to_owned(),
        from_request: false,
    })
}

/// Whether `value` holds `parts` in order, the first at its start and the last at its end
/// (each `*` between them stands for any run of characters, the empty one included).
fn matches(parts: &[String], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return first == value;
    }
    let fixed: usize = parts.iter().map(String::len).sum();
    if value.len() < fixed || !value.starts_with(first.as_str()) || !value.ends_with(last.as_str())
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part.as_str()) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The stats key of a `detailed_metric` limit: the request's own keys and values (a shared
/// wildcard's pattern in place of its value).
fn detailed_key(domain: &str, entries: &[(&str, &str)], shared: &[Option<String>]) -> String {
    let mut key = domain.to_owned();
    for (i, (k, v)) in entries.iter().enumerate() {
        key.push('.');
        key.push_str(k);
        let value = shared.get(i).and_then(Option::as_deref).unwrap_or(v);
        if !value.is_empty() {
            key.push('_');
            key.push_str(value);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::matches;

    fn parts(pattern: &str) -> Vec<String> {
        pattern.split('*').map(str::to_owned).collect()
    }

    #[test]
    fn wildcards_match_their_parts_in_order() {
        for (pattern, value, expected) in [
            ("foo*", "foo", true),
            ("foo*", "foobar", true),
            ("foo*", "xfoo", false),
            ("bar*b", "barb", true),
            ("bar*b", "bar-b", true),
            ("bar*b", "bara", false),
            ("bar*b", "xbarb", false),
            ("foo*bar*baz", "foobarbaz", true),
            ("foo*bar*baz", "foo1bar2baz", true),
            ("foo*bar*baz", "foo123baz", false),
            ("foo*bar*baz", "bar456baz", false),
            ("a*a", "a", false),
            ("*", "", true),
            ("k_*", "k_", true),
        ] {
            assert_eq!(
                matches(&parts(pattern), value),
                expected,
                "{pattern} {value}"
            );
        }
    }
}
