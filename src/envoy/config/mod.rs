//! [`Config`]: envoyproxy/ratelimit's YAML configuration, read and checked as that service
//! reads it, with its error texts, and the limit a request's descriptor finds in it.

use std::collections::HashMap;
use std::sync::Arc;

mod tree;
mod yaml;

/// A unit of time of a limit: its window, aligned on the Unix epoch (a week starts on a
/// Thursday, 00:00 UTC; a month is 30 days and a year 365, from the epoch, as the peer counts
/// them). The discriminants are the wire values of `RateLimitResponse.RateLimit.Unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unit {
    /// One second.
    Second = 1,
    /// 60 seconds.
    Minute = 2,
    /// 3,600 seconds.
    Hour = 3,
    /// 86,400 seconds.
    Day = 4,
    /// 30 days.
    Month = 5,
    /// 365 days.
    Year = 6,
    /// 7 days, from a Thursday.
    Week = 7,
}

impl Unit {
    const ALL: [Unit; 7] = [
        Self::Second,
        Self::Minute,
        Self::Hour,
        Self::Day,
        Self::Month,
        Self::Year,
        Self::Week,
    ];

    /// The window's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
            Self::Week => 7 * 86_400,
        }
    }

    /// Its name on the wire: `SECOND` to `WEEK`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Second => "SECOND",
            Self::Minute => "MINUTE",
            Self::Hour => "HOUR",
            Self::Day => "DAY",
            Self::Month => "MONTH",
            Self::Year => "YEAR",
            Self::Week => "WEEK",
        }
    }

    /// The unit named `name`, in any case (`minute`, `MINUTE`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(name))
    }

    /// The unit of wire value `value` (`UNKNOWN`, 0, and values past `WEEK` have none).
    pub fn from_wire(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|&u| u as i32 == value)
    }

    /// The start of the window that holds `now_s` (Unix seconds).
    pub fn window_start(self, now_s: u64) -> u64 {
        now_s / self.seconds() * self.seconds()
    }

    /// The whole seconds from `now_s` until the next window starts: 1 to the window's length.
    pub fn until_reset(self, now_s: u64) -> u64 {
        self.seconds() - now_s % self.seconds()
    }
}

/// A limit of the configuration (or of a request's override).
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub(crate) requests_per_unit: u32,
    /// `None` for an `unlimited` limit written without a unit.
    pub(crate) unit: Option<Unit>,
    pub(crate) unlimited: bool,
    pub(crate) name: String,
    pub(crate) replaces: Vec<String>,
    pub(crate) shadow_mode: bool,
    pub(crate) quota_mode: bool,
    pub(crate) detailed_metric: bool,
    pub(crate) metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Its place in the configuration: `domain.key_value.key`.
    pub(crate) stats_key: String,
    /// A request's own limit, not the configuration's.
    pub(crate) from_request: bool,
}

impl RateLimit {
    /// The limit a request sets itself (`RateLimitDescriptor.limit`): no name, no shadow mode.
    pub fn overriding(requests_per_unit: u32, unit: Unit, stats_key: String) -> Self {
        Self {
            requests_per_unit,
            unit: Some(unit),
            unlimited: false,
            name: String::new(),
            replaces: Vec::new(),
            shadow_mode: false,
            quota_mode: false,
            detailed_metric: false,
            metadata: None,
            stats_key,
            from_request: true,
        }
    }

    /// The most hits per window.
    pub fn requests_per_unit(&self) -> u32 {
        self.requests_per_unit
    }

    /// The window; `None` for an unlimited limit written without one.
    pub fn unit(&self) -> Option<Unit> {
        self.unit
    }

    /// Whether it never limits.
    pub fn is_unlimited(&self) -> bool {
        self.unlimited
    }

    /// Its `name` (empty when unnamed): in `current_limit.name`, and what `replaces` names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of the limits it replaces in a request.
    pub fn replaces(&self) -> &[String] {
        &self.replaces
    }

    /// Whether it is a request's own limit (`RateLimitDescriptor.limit`), not the
    /// configuration's.
    pub fn is_override(&self) -> bool {
        self.from_request
    }

    /// Shadow mode: counted and reported, never over.
    pub fn is_shadow(&self) -> bool {
        self.shadow_mode
    }

    /// Quota mode (see the README's "Replacing envoyproxy/ratelimit").
    pub fn is_quota(&self) -> bool {
        self.quota_mode
    }

    /// The `metadata` of its descriptor, for the response's dynamic metadata.
    pub fn metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.metadata.as_deref()
    }

    /// Its place in the configuration (`domain.key_value.key`), or the request's own keys
    /// with `detailed_metric`: the `key` of its metrics.
    pub fn stats_key(&self) -> &str {
        &self.stats_key
    }
}

/// The limit a descriptor found, and how its counter is named.
#[derive(Debug, Clone)]
pub struct Matched {
    pub(crate) limit: Arc<RateLimit>,
    /// By entry: the wildcard pattern that names the counter in place of the request's value
    /// (`share_threshold`); empty when no entry shares.
    pub(crate) shared: Vec<Option<String>>,
    pub(crate) stats_key: String,
}

impl Matched {
    /// A request's own limit (an override): its counter is the descriptor's.
    pub fn overriding(limit: RateLimit) -> Self {
        let stats_key = limit.stats_key.clone();
        Self {
            limit: Arc::new(limit),
            shared: Vec::new(),
            stats_key,
        }
    }

    /// The limit.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// The key of its metrics.
    pub fn stats_key(&self) -> &str {
        &self.stats_key
    }

    /// The counter's key in the window starting at `window_start` (Unix seconds), in
    /// envoyproxy/ratelimit's format: `prefix`, the domain, `_`, each entry's `key_value_` (a
    /// shared wildcard's pattern in place of the value), and the window's start.
    pub fn counter_key(
        &self,
        prefix: &str,
        domain: &str,
        entries: &[(&str, &str)],
        window_start: u64,
    ) -> String {
        let mut key = String::with_capacity(prefix.len() + domain.len() + 32);
        key.push_str(prefix);
        key.push_str(domain);
        key.push('_');
        for (i, (k, v)) in entries.iter().enumerate() {
            let value = self.shared.get(i).and_then(Option::as_deref).unwrap_or(v);
            key.push_str(k);
            key.push('_');
            key.push_str(value);
            key.push('_');
        }
        key.push_str(itoa::Buffer::new().format(window_start));
        key
    }
}

/// A configuration that does not load: the file's name and what is wrong, in
/// envoyproxy/ratelimit's words (`<name>: <error>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    file: String,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(file: &str, message: String) -> Self {
        Self {
            file: file.to_owned(),
            message,
        }
    }

    /// The name of the file at fault.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The limits of every domain, from envoyproxy/ratelimit's YAML files.
#[derive(Debug, Default)]
pub struct Config {
    domains: HashMap<String, tree::Level>,
}

impl Config {
    /// Reads `files` (each a name, for errors, and its YAML text), in order. A domain in two
    /// files is an error, unless `merge`: then the second file's descriptors join the first's.
    ///
    /// # Errors
    ///
    /// The first file that does not load, with the peer's message.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
        merge: bool,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for (name, text) in files {
            config.add(text, merge).map_err(|message| ConfigError {
                file: name.to_owned(),
                message,
            })?;
        }
        Ok(config)
    }

    fn add(&mut self, text: &str, merge: bool) -> Result<(), String> {
        let file = yaml::read(text)?;
        if file.domain.is_empty() {
            return Err("config file cannot have empty domain".to_owned());
        }
        let path = format!("{}.", file.domain);
        match self.domains.get_mut(&file.domain) {
            Some(_) if !merge => Err(format!("duplicate domain '{}' in config file", file.domain)),
            Some(level) => level.add(&path, file.descriptors),
            None => {
                let mut level = tree::Level::default();
                level.add(&path, file.descriptors)?;
                self.domains.insert(file.domain, level);
                Ok(())
            }
        }
    }

    /// Whether `domain` has limits.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The domains, in no order.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// The limit of a descriptor (its `entries`, key and value pairs) in `domain`: the one
    /// at exactly the descriptor's depth, found by each entry's exact key and value, else the
    /// first wildcard that matches, else its key alone. `None`: no limit applies (an unknown
    /// domain, no match, a rule at another depth, or a node without a limit).
    pub fn find(&self, domain: &str, entries: &[(&str, &str)]) -> Option<Matched> {
        self.domains.get(domain)?.find(domain, entries)
    }

    /// One line per limit, as the peer's `/rlconfig` prints them (sorted):
    /// `<key>: unit=<UNIT> requests_per_unit=<n>, shadow_mode: <bool>, quota_mode: <bool>`.
    pub fn dump(&self) -> String {
        let mut lines = Vec::new();
        for level in self.domains.values() {
            level.dump(&mut lines);
        }
        lines.sort();
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

#[cfg(test)]
mod tests;
