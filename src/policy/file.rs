//! The TOML form of [`Policies`].

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use super::{Policies, Rule};
use crate::limit::check_name;
use crate::{Algorithm, ConfigError, Limit};

// Every field names itself in a type error (`capacity`: invalid value: integer `-1`, …), and
// each limit is read on its own, so an error names the rule, the limit and the field.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [default] table with limits")]
struct DefaultFile {
    #[serde(deserialize_with = "field::limits")]
    limits: Vec<toml::Value>,
    #[serde(default, deserialize_with = "field::shadow")]
    shadow: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[rules]] table with name, limits and (for HTTP requests) path"
)]
struct RuleFile {
    #[serde(deserialize_with = "field::name")]
    name: String,
    /// `None`: a rule for work without HTTP ([`Rule::named`]).
    #[serde(default, deserialize_with = "field::path")]
    path: Option<String>,
    #[serde(default, deserialize_with = "field::methods")]
    methods: Option<Vec<String>>,
    #[serde(deserialize_with = "field::limits")]
    limits: Vec<toml::Value>,
    #[serde(default, deserialize_with = "field::shadow")]
    shadow: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a limit table like { name = \"burst\", capacity = 5, period = \"1m\" }"
)]
struct LimitFile {
    #[serde(deserialize_with = "field::name")]
    name: String,
    #[serde(deserialize_with = "field::capacity")]
    capacity: u64,
    #[serde(default, deserialize_with = "field::refill")]
    refill: Option<u64>,
    #[serde(deserialize_with = "field::period")]
    period: String,
    #[serde(default, deserialize_with = "field::algorithm")]
    algorithm: Option<String>,
    #[serde(default, deserialize_with = "field::per_request")]
    per_request: bool,
    #[serde(default, deserialize_with = "field::lease")]
    lease: bool,
    #[serde(default, deserialize_with = "field::lease_time")]
    lease_time: Option<String>,
}

/// Deserializers of each field that put the field's name in front of a type error.
mod field {
    use serde::{Deserialize, Deserializer, de::Error as _};

    fn named<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        name: &str,
        deserializer: D,
    ) -> Result<T, D::Error> {
        T::deserialize(deserializer)
            .map_err(|e| D::Error::custom(format_args!("`{name}`: {}", e.to_string().trim_end())))
    }

    macro_rules! fields {
        ($($name:ident: $ty:ty),* $(,)?) => {$(
            pub(super) fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                named(stringify!($name), d)
            }
        )*};
    }

    fields! {
        name: String,
        path: Option<String>,
        methods: Option<Vec<String>>,
        limits: Vec<toml::Value>,
        shadow: bool,
        capacity: u64,
        refill: Option<u64>,
        period: String,
        algorithm: Option<String>,
        per_request: bool,
        lease: bool,
        lease_time: Option<String>,
    }
}

/// The limits of a policy; an error names the limit (or its position) and the field.
fn limits(values: Vec<toml::Value>) -> Result<Vec<Limit>, ConfigError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let at = match value.get("name").and_then(toml::Value::as_str) {
                Some(name) => format!("limit {name:?}"),
                None => format!("limits[{i}]"),
            };
            LimitFile::deserialize(value)
                .map_err(|e| serde_error(e).at(&at))?
                .into_limit()
        })
        .collect()
}

impl LimitFile {
    fn into_limit(self) -> Result<Limit, ConfigError> {
        let at = format!("limit {:?}", self.name);
        // Named as in the file (`name`), not as the builder's `limit_name`.
        check_name(&self.name, "name").map_err(|e| e.at(&at))?;
        let period = parse_period(&self.period).map_err(|e| e.at(&at))?;
        let algorithm = match &self.algorithm {
            Some(name) => name.parse().map_err(|e: ConfigError| e.at(&at))?,
            None => Algorithm::TokenBucket,
        };
        let limit =
            Limit::with_algorithm(algorithm, &*self.name, self.capacity, self.refill, period)
                .map_err(|e| e.at(&at))?;
        let limit = if self.per_request {
            limit.per_request()
        } else {
            limit
        };
        match (self.lease, &self.lease_time) {
            (false, None) => Ok(limit),
            (false, Some(time)) => Err(ConfigError::Invalid {
                field: "lease_time",
                value: time.clone(),
                reason: "set `lease = true` as well to lease the limit",
            }
            .at(&at)),
            (true, None) => limit.leased().map_err(|e| e.at(&at)),
            (true, Some(time)) => {
                let time = parse_duration(time, "lease_time").map_err(|e| e.at(&at))?;
                limit.leased_for(time).map_err(|e| e.at(&at))
            }
        }
    }
}

/// `500ms`, `10s`, `1m`, `2h`, `1d`: a whole number and a unit.
pub(crate) fn parse_period(text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text, "period")
}

/// A duration written as [`parse_period`] reads it, for `field`.
fn parse_duration(text: &str, field: &'static str) -> Result<Duration, ConfigError> {
    let invalid = || ConfigError::Invalid {
        field,
        value: text.to_owned(),
        reason: "must be a whole number with a unit: ms, s, m, h or d (like \"10s\")",
    };
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text.trim()[digits.len()..];
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
    let period = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => None,
    };
    period.ok_or_else(invalid)
}

impl Policies {
    /// Loads policies from TOML text:
    ///
    /// ```toml
    /// [[default.limits]]
    /// name = "default"
    /// capacity = 10
    /// refill = 10
    /// period = "10s"
    ///
    /// [[rules]]
    /// name = "login"
    /// path = "/login"
    /// methods = ["POST"]
    /// limits = [
    ///   { name = "burst", capacity = 5, refill = 5, period = "1m" },
    ///   { name = "daily", capacity = 100, period = "1d", algorithm = "fixed_window" },
    /// ]
    /// ```
    ///
    /// `refill` defaults to `capacity`; periods take `ms`, `s`, `m`, `h` or `d`; `algorithm` is
    /// `"token_bucket"` (the default), `"sliding_log"`, `"sliding_window"` or `"fixed_window"`
    /// (the window algorithms take no `refill`); `per_request = true` makes a limit count
    /// requests rather than their cost ([`Limit::per_request`]); `lease = true`, with an
    /// optional `lease_time` (default `"200ms"`), leases it ([`Limit::leased_for`]);
    /// `shadow = true` in a rule or in `[default]` turns on shadow mode for it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the rule (or `default`) and the field: invalid TOML, an unknown
    /// or missing field, a zero capacity, an unparsable period, a duplicate rule name, or a file
    /// with neither a default nor a rule (it would limit nothing).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    message: e.to_string().trim().to_owned(),
                })?;
        let Some(tiers) = table.remove("tiers") else {
            return from_table(table);
        };
        if let Some(other) = table.keys().next() {
            return Err(ConfigError::Parse {
                message: format!(
                    "`{other}` beside `tiers`: with tiers, each tier has its own [tiers.<name>.default] and [[tiers.<name>.rules]]"
                ),
            });
        }
        let toml::Value::Table(tiers) = tiers else {
            return Err(ConfigError::Parse {
                message: "`tiers` must be a table of tiers: [tiers.<name>]".into(),
            });
        };
        let mut each = Vec::with_capacity(tiers.len());
        for (name, value) in tiers {
            let at = format!("tier {name:?}");
            let toml::Value::Table(table) = value else {
                return Err(ConfigError::Parse {
                    message: "a tier must be a table: [tiers.<name>]".into(),
                }
                .at(&at));
            };
            each.push((name, from_table(table).map_err(|e| e.at(&at))?));
        }
        Policies::tiered(each)
    }

    /// Loads policies from a TOML file (see [`Policies::from_toml`]).
    ///
    /// # Errors
    ///
    /// When the file cannot be read, or as [`Policies::from_toml`]; the message names the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let at = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Unreadable {
                message: e.to_string(),
            }
            .at(&at)
        })?;
        Self::from_toml(&text).map_err(|e| e.at(&at))
    }
}

/// The policies of a whole file, or of one tier: `[default]` and `[[rules]]`.
fn from_table(table: toml::Table) -> Result<Policies, ConfigError> {
    let mut builder = Policies::builder();
    for (key, value) in table {
        match key.as_str() {
            "default" => {
                let default =
                    DefaultFile::deserialize(value).map_err(|e| serde_error(e).at("default"))?;
                if default.limits.is_empty() {
                    // `limits = []` would silently leave every unmatched request unlimited.
                    return Err(ConfigError::Missing { field: "limits" }.at("default"));
                }
                for limit in limits(default.limits).map_err(|e| e.at("default"))? {
                    builder = builder.default_limit(limit);
                }
                builder = builder.default_shadow(default.shadow);
            }
            "rules" => {
                let toml::Value::Array(rules) = value else {
                    return Err(ConfigError::Parse {
                        message: "`rules` must be an array of tables: [[rules]]".into(),
                    });
                };
                for (i, value) in rules.into_iter().enumerate() {
                    let at = match value.get("name").and_then(toml::Value::as_str) {
                        Some(name) => format!("rule {name:?}"),
                        None => format!("rules[{i}]"),
                    };
                    let rule = RuleFile::deserialize(value).map_err(|e| serde_error(e).at(&at))?;
                    builder = builder.rule(rule.into_rule().map_err(|e| e.at(&at))?);
                }
            }
            other => {
                return Err(ConfigError::Parse {
                    message: format!(
                        "unknown top-level key `{other}`, expected `default`, `rules` or `tiers`"
                    ),
                });
            }
        }
    }
    let policies = builder.build()?;
    if policies.len() == 0 {
        // Nothing would be limited: surely not what the file meant.
        return Err(ConfigError::Missing {
            field: "[[default.limits]] or [[rules]]",
        });
    }
    Ok(policies)
}

impl RuleFile {
    fn into_rule(self) -> Result<Rule, ConfigError> {
        let mut rule = match self.path {
            Some(path) => Rule::new(self.name, path),
            None => Rule::named(self.name),
        }
        .shadow(self.shadow);
        if let Some(methods) = self.methods {
            let methods = methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        ConfigError::Invalid {
                            field: "methods",
                            value: m.clone(),
                            reason: "must be an HTTP method like \"POST\"",
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            rule = rule.methods(methods);
        }
        for limit in limits(self.limits)? {
            rule = rule.limit(limit);
        }
        Ok(rule)
    }
}

fn serde_error(error: toml::de::Error) -> ConfigError {
    ConfigError::Parse {
        message: error.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[default.limits]]
        name = "default"
        capacity = 10
        refill = 10
        period = "10s"

        [[rules]]
        name = "login"
        path = "/login"
        methods = ["POST"]
        limits = [
          { name = "burst", capacity = 5, refill = 5, period = "1m" },
          { name = "daily", capacity = 100, period = "1d", algorithm = "fixed_window" },
        ]

        [[rules]]
        name = "search"
        path = "/search/*"
        limits = [
          { name = "exact", capacity = 20, period = "1m", algorithm = "sliding_log" },
          { name = "smooth", capacity = 300, period = "1h", algorithm = "sliding_window" },
          { name = "bucket", capacity = 50, period = "1m", algorithm = "token_bucket" },
        ]
    "#;

    #[test]
    fn loads_the_documented_format() {
        let policies = Policies::from_toml(GOOD).unwrap();
        let login = policies.find(&Method::POST, "/login").unwrap();
        let entry = policies.entry(login);
        assert_eq!(entry.header, "\"burst\";q=5;w=60, \"daily\";q=100;w=86400");
        let algorithms: Vec<Algorithm> = entry.limits.iter().map(Limit::algorithm).collect();
        assert_eq!(algorithms, [Algorithm::TokenBucket, Algorithm::FixedWindow]);
        let search = policies.entry(policies.find(&Method::GET, "/search/q").unwrap());
        let algorithms: Vec<Algorithm> = search.limits.iter().map(Limit::algorithm).collect();
        assert_eq!(
            algorithms,
            [
                Algorithm::SlidingLog,
                Algorithm::SlidingWindow,
                Algorithm::TokenBucket
            ]
        );
        assert_eq!(
            policies
                .entry(policies.find(&Method::GET, "/x").unwrap())
                .rule,
            None
        );
        // The shipped example file loads.
        let shipped = include_str!("../../examples/rate_limits.toml");
        Policies::from_toml(shipped).unwrap();
    }

    #[test]
    fn periods() {
        assert_eq!(parse_period("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_period("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_period("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_period("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_period("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["10", "s", "1.5s", "10x", "-1s", "1 m", ""] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    fn error(toml: &str) -> String {
        Policies::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_name_the_rule_and_the_field() {
        let rule = |body: &str| format!("[[rules]]\nname = \"login\"\npath = \"/login\"\n{body}");
        let e = error(&rule(
            r#"limits = [{ name = "b", capasity = 5, period = "1m" }]"#,
        ));
        assert!(
            e.contains("rule \"login\"") && e.contains("capasity"),
            "{e}"
        );
        let e = error(&rule(
            r#"limits = [{ name = "b", capacity = 0, period = "1m" }]"#,
        ));
        assert!(
            e.contains("rule \"login\"") && e.contains("capacity"),
            "{e}"
        );
        let e = error(&rule(
            r#"limits = [{ name = "b", capacity = 5, period = "1 fortnight" }]"#,
        ));
        assert!(
            e.contains("rule \"login\"") && e.contains("period") && e.contains("fortnight"),
            "{e}"
        );
        let e = error(&rule(
            r#"limits = [{ name = "b", capacity = 5, period = "1m" }]
                             methods = ["P OST"]"#,
        ));
        assert!(e.contains("rule \"login\"") && e.contains("methods"), "{e}");
        let e = error(&rule("limits = []\nflavour = 1"));
        assert!(e.contains("rule \"login\"") && e.contains("flavour"), "{e}");
        let twice = format!(
            "{}\n{}",
            rule(r#"limits = [{ name = "b", capacity = 5, period = "1m" }]"#),
            rule(r#"limits = [{ name = "b", capacity = 5, period = "1m" }]"#)
        );
        let e = error(&twice);
        assert!(e.contains("duplicate rule") && e.contains("login"), "{e}");
        let e = error("[[default.limits]]\nname = \"d\"\ncapacity = 1\nperiod = \"1s\"\nextra = 1");
        assert!(e.contains("default") && e.contains("extra"), "{e}");
        let e = error("[[rules]]\npath = \"/x\"\nlimits = []");
        assert!(e.contains("rules[0]") && e.contains("name"), "{e}");
        let e = error(&rule(
            r#"limits = [{ name = "b", capacity = 5, period = "1m", algorithm = "leaky" }]"#,
        ));
        assert!(
            e.contains("rule \"login\"") && e.contains("algorithm") && e.contains("leaky"),
            "{e}"
        );
        let e = error(&rule(
            r#"limits = [{ name = "b", capacity = 5, refill = 1, period = "1m", algorithm = "fixed_window" }]"#,
        ));
        assert!(e.contains("limit \"b\"") && e.contains("refill"), "{e}");
        let e = error("this is not toml");
        assert!(e.contains("TOML"), "{e}");
        let e = Policies::from_file("/nonexistent/limits.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/limits.toml"), "{e}");
    }

    /// Every kind of bad file and exactly what it gets (docs/responses.md, "In a policy file").
    #[test]
    fn each_kind_of_bad_file_gets_its_message() {
        let limit = |fields: &str| {
            format!("[[rules]]\nname = \"login\"\npath = \"/login\"\nlimits = [{{ {fields} }}]")
        };
        let cases: Vec<(String, &str)> = vec![
            ("this is not toml".into(), "invalid TOML: TOML parse error at line 1, column 6"),
            ("x = 1".into(), "invalid TOML: unknown top-level key `x`, expected `default`, `rules` or `tiers`"),
            ("rules = 1".into(), "invalid TOML: `rules` must be an array of tables: [[rules]]"),
            (
                limit(r#"name = "b", capacity = 5, capacity = 6, period = "1m""#),
                "invalid TOML: TOML parse error at line 4, column 39",
            ),
            (
                limit(r#"name = "b", capasity = 5, period = "1m""#),
                "rule \"login\": limit \"b\": invalid TOML: unknown field `capasity`, expected one of `name`, `capacity`, `refill`, `period`, `algorithm`, `per_request`, `lease`, `lease_time`",
            ),
            (
                limit(r#"name = "b", capacity = 5"#),
                "rule \"login\": limit \"b\": invalid TOML: missing field `period`",
            ),
            (
                limit(r#"capacity = 5, period = "1m""#),
                "rule \"login\": limits[0]: invalid TOML: missing field `name`",
            ),
            (
                limit(r#"name = "b", capacity = -1, period = "1m""#),
                "rule \"login\": limit \"b\": invalid TOML: `capacity`: invalid value: integer `-1`, expected u64",
            ),
            (
                limit(r#"name = "b", capacity = "10", period = "1m""#),
                "rule \"login\": limit \"b\": invalid TOML: `capacity`: invalid type: string \"10\", expected u64",
            ),
            (
                limit(r#"name = "b", capacity = 99999999999999999999, period = "1m""#),
                "invalid TOML: TOML parse error at line 4, column 36",
            ),
            (
                limit(r#"name = "b", capacity = 0, period = "1m""#),
                "rule \"login\": limit \"b\": `capacity` must be greater than zero",
            ),
            (
                limit(r#"name = "b", capacity = 5, refill = 0, period = "1m""#),
                "rule \"login\": limit \"b\": `refill` must be greater than zero",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = "0s""#),
                "rule \"login\": limit \"b\": `period` must be greater than zero",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = "1 fortnight""#),
                "rule \"login\": limit \"b\": `period` = \"1 fortnight\" is invalid: must be a whole number with a unit: ms, s, m, h or d (like \"10s\")",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = 10"#),
                "rule \"login\": limit \"b\": invalid TOML: `period`: invalid type: integer `10`, expected a string",
            ),
            (
                limit(r#"name = "b", capacity = 5, refill = 2000000, period = "1s""#),
                "rule \"login\": limit \"b\": `refill` = 2000000 tokens per `period` = 1s is faster than one token per microsecond",
            ),
            (
                limit(r#"name = "b", capacity = 9223372036854775807, refill = 1, period = "1s""#),
                "rule \"login\": limit \"b\": `capacity` = 9223372036854775807 at `refill` = 1 per 1s takes more than 100 years to fill",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = "1m", algorithm = "leaky""#),
                "rule \"login\": limit \"b\": `algorithm` = \"leaky\" is invalid: must be \"token_bucket\", \"sliding_log\", \"sliding_window\", \"fixed_window\" or \"concurrency\"",
            ),
            (
                limit(r#"name = "b", capacity = 5, refill = 1, period = "1m", algorithm = "fixed_window""#),
                "rule \"login\": limit \"b\": `refill` = \"1\" is invalid: only a token_bucket refills gradually: a window's whole capacity comes back each period, so leave refill out or equal to capacity",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = "1m", algorithm = "sliding_log", lease = true"#),
                "rule \"login\": limit \"b\": `lease` = \"sliding_log\" is invalid: a sliding_log cannot be leased: it records when each unit was taken, and a lease takes them before the requests that spend them; use a sliding_window",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = "1m", lease_time = "100ms""#),
                "rule \"login\": limit \"b\": `lease_time` = \"100ms\" is invalid: set `lease = true` as well to lease the limit",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = "1m", lease = true, lease_time = "soon""#),
                "rule \"login\": limit \"b\": `lease_time` = \"soon\" is invalid: must be a whole number with a unit: ms, s, m, h or d (like \"10s\")",
            ),
            (
                limit(r#"name = "b", capacity = 5, period = "1m", lease = true }, { name = "c", capacity = 9, period = "1h""#),
                "rule \"login\": `lease` = \"1 of 2 limits\" is invalid: every limit of a policy is leased, or none: a lease takes units from all of them at once",
            ),
            (
                limit(r#"name = "b", capacity = 251, period = "1m", algorithm = "sliding_log""#),
                "rule \"login\": limit \"b\": `capacity` = \"251\" is invalid: a sliding_log keeps one entry per unit: at most 250, so that no request costs Redis more than about a millisecond; use a sliding_window for larger limits",
            ),
            (
                limit(r#"name = "a:b", capacity = 5, period = "1m""#),
                "rule \"login\": limit \"a:b\": `name` = \"a:b\" is invalid: must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
            ),
            (
                "[[rules]]\nname = \"login\"\npath = \"/login\"\nlimits = []".into(),
                "rule \"login\": `limits` is required",
            ),
            (
                "[[rules]]\nname = \"a b\"\npath = \"/x\"\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "rule \"a b\": `name` = \"a b\" is invalid: must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
            ),
            (
                "[[rules]]\npath = \"/x\"\nlimits = []".into(),
                "rules[0]: invalid TOML: missing field `name`",
            ),
            (
                "[[rules]]\nname = \"r\"\npath = \"x\"\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "rule \"r\": `path` = \"x\" is invalid: must start with '/'",
            ),
            (
                "[[rules]]\nname = \"r\"\npath = \"/{id}/*\"\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "rule \"r\": `path` = \"/{id}/*\" is invalid: a prefix pattern ends with /* and has no other wildcard",
            ),
            (
                "[[rules]]\nname = \"r\"\npath = \"/x\"\nmethods = [\"P OST\"]\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "rule \"r\": `methods` = \"P OST\" is invalid: must be an HTTP method like \"POST\"",
            ),
            (
                "[[rules]]\nname = \"r\"\npath = \"/x\"\nmethods = []\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "rule \"r\": `methods` = \"[]\" is invalid: a rule with no methods never matches: list at least one, or leave methods out to match any",
            ),
            (
                "[[rules]]\nname = \"r\"\npath = \"/x\"\nshadow = \"yes\"\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "rule \"r\": invalid TOML: `shadow`: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "[[rules]]\nname = \"r\"\npath = \"/x\"\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }, { name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "rule \"r\": duplicate limit name \"b\"",
            ),
            (
                format!(
                    "[[rules]]\nname = \"r\"\npath = \"/x\"\nlimits = [{}]",
                    (0..9)
                        .map(|i| format!("{{ name = \"l{i}\", capacity = 5, period = \"1m\" }}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "rule \"r\": `limits` = \"9\" is invalid: a policy has at most 8 limits",
            ),
            (
                "[[rules]]\nname = \"r\"\npath = \"/x\"\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]\n[[rules]]\nname = \"r\"\npath = \"/y\"\nlimits = [{ name = \"b\", capacity = 5, period = \"1m\" }]".into(),
                "duplicate rule name \"r\"",
            ),
            ("[default]\nshadow = true".into(), "default: invalid TOML: missing field `limits`"),
            // Found by the property test: an empty list is no default policy, and said where.
            ("[default]\nlimits = []".into(), "default: `limits` is required"),
            ("[default]\nlimits = []\nshadow = true".into(), "default: `limits` is required"),
            (
                "[default]\nlimits = [1]".into(),
                "default: limits[0]: invalid TOML: invalid type: integer `1`, expected a limit table like { name = \"burst\", capacity = 5, period = \"1m\" }",
            ),
        ];
        for (text, expected) in cases {
            let e = error(&text);
            assert!(
                e.starts_with(expected),
                "{text}\n  got: {e}\n want: {expected}"
            );
        }
        // A file with nothing in it would limit nothing: refused.
        for empty in ["", "# only a comment\n", "rules = []"] {
            assert_eq!(
                error(empty),
                "`[[default.limits]] or [[rules]]` is required",
                "{empty:?}"
            );
        }
    }
}

/// Property tests: any text, and any mutation of a valid file, loads valid limits or fails with
/// an error that says the TOML is invalid or names the rule, the limit and the field.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::limit::MAX_LIMITS;

    /// A TOML value as the generator writes it; integers beyond i64 make invalid TOML.
    #[derive(Debug, Clone, PartialEq)]
    enum V {
        Str(String),
        Int(i128),
        Float,
        Bool(bool),
        Arr(Vec<V>),
    }

    impl V {
        fn toml(&self) -> String {
            match self {
                V::Str(s) => {
                    let mut out = String::from("\"");
                    for c in s.chars() {
                        match c {
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                            c => out.push(c),
                        }
                    }
                    out.push('"');
                    out
                }
                V::Int(i) => i.to_string(),
                V::Float => "1.5".to_owned(),
                V::Bool(b) => b.to_string(),
                V::Arr(items) => {
                    let items: Vec<String> = items.iter().map(V::toml).collect();
                    format!("[{}]", items.join(", "))
                }
            }
        }
    }

    fn s(text: &str) -> V {
        V::Str(text.to_owned())
    }

    /// A table: its fields in order (a field may be written twice) and, for a policy, its
    /// limits, written as an array of inline tables.
    #[derive(Debug, Clone, Default)]
    struct Table {
        fields: Vec<(String, V)>,
        limits: Option<Vec<Table>>,
    }

    impl Table {
        fn inline(&self) -> String {
            let fields: Vec<String> = self
                .fields
                .iter()
                .map(|(k, v)| format!("{k} = {}", v.toml()))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }

        fn body(&self) -> String {
            let mut out = String::new();
            for (k, v) in &self.fields {
                out.push_str(&format!("{k} = {}\n", v.toml()));
            }
            if let Some(limits) = &self.limits {
                let limits: Vec<String> = limits
                    .iter()
                    .map(|l| format!("  {},\n", l.inline()))
                    .collect();
                out.push_str(&format!("limits = [\n{}]\n", limits.concat()));
            }
            out
        }

        fn get(&self, key: &str) -> Option<&V> {
            self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }
    }

    #[derive(Debug, Clone, Default)]
    struct Doc {
        default: Option<Table>,
        rules: Vec<Table>,
        top: Vec<(String, V)>,
        garbage: String,
    }

    impl Doc {
        fn toml(&self) -> String {
            let mut out = String::new();
            for (k, v) in &self.top {
                out.push_str(&format!("{k} = {}\n", v.toml()));
            }
            if let Some(default) = &self.default {
                out.push_str(&format!("[default]\n{}\n", default.body()));
            }
            for rule in &self.rules {
                out.push_str(&format!("[[rules]]\n{}\n", rule.body()));
            }
            out.push_str(&self.garbage);
            out
        }
    }

    /// A valid limit named `l{i}`: token bucket or window, every value in the safe range.
    fn limit(i: usize) -> impl Strategy<Value = Table> {
        (
            prop::option::of(prop::sample::select(Algorithm::ALL.to_vec())),
            1u64..=1000,
            prop::option::of(1u64..=1000),
            1u64..=60,
            prop::sample::select(vec!["s", "m", "h"]),
        )
            .prop_map(move |(algorithm, capacity, refill, n, unit)| {
                // The sliding logs of a policy hold at most MAX_LOG_CAPACITY in all.
                let capacity = match algorithm {
                    Some(Algorithm::SlidingLog) => {
                        capacity.min(crate::limit::MAX_LOG_CAPACITY / MAX_LIMITS as u64)
                    }
                    _ => capacity,
                };
                let mut fields = vec![
                    ("name".to_owned(), V::Str(format!("l{i}"))),
                    ("capacity".to_owned(), V::Int(capacity.into())),
                    ("period".to_owned(), V::Str(format!("{n}{unit}"))),
                ];
                match algorithm {
                    None | Some(Algorithm::TokenBucket) => {
                        if let Some(refill) = refill {
                            fields.push(("refill".into(), V::Int(refill.into())));
                        }
                    }
                    // A window's refill may only repeat its capacity.
                    Some(_) if refill.is_some() => {
                        fields.push(("refill".into(), V::Int(capacity.into())));
                    }
                    Some(_) => {}
                }
                if let Some(algorithm) = algorithm {
                    fields.push(("algorithm".into(), V::Str(algorithm.as_str().into())));
                }
                Table {
                    fields,
                    limits: None,
                }
            })
    }

    fn limits() -> impl Strategy<Value = Vec<Table>> {
        (1usize..=3).prop_flat_map(|n| (0..n).map(limit).collect::<Vec<_>>())
    }

    fn doc() -> impl Strategy<Value = Doc> {
        let default = prop::option::of((limits(), prop::option::of(any::<bool>())).prop_map(
            |(limits, shadow)| {
                Table {
                    fields: shadow
                        .map(|b| ("shadow".to_owned(), V::Bool(b)))
                        .into_iter()
                        .collect(),
                    limits: Some(limits),
                }
            },
        ));
        let rule = (
            prop::sample::select(vec![
                "/login",
                "/users/{id}",
                "/api/*",
                "/files/{*rest}",
                "/",
            ]),
            prop::option::of(prop::sample::select(vec![
                vec![s("POST")],
                vec![s("get"), s("PUT")],
            ])),
            limits(),
            prop::option::of(any::<bool>()),
        );
        let rules = prop::collection::vec(rule, 0..3).prop_map(|rules| {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, (path, methods, limits, shadow))| {
                    let mut fields = vec![
                        ("name".to_owned(), V::Str(format!("r{i}"))),
                        ("path".to_owned(), s(path)),
                    ];
                    fields.extend(methods.map(|m| ("methods".to_owned(), V::Arr(m))));
                    fields.extend(shadow.map(|b| ("shadow".to_owned(), V::Bool(b))));
                    Table {
                        fields,
                        limits: Some(limits),
                    }
                })
                .collect()
        });
        (default, rules).prop_map(|(default, rules)| Doc {
            default,
            rules,
            ..Doc::default()
        })
    }

    /// Values that are wrong for some field: wrong types, zero, negative, huge, beyond TOML's
    /// integers, unknown words, malformed periods, patterns, names and methods.
    fn bad_value() -> impl Strategy<Value = V> {
        prop_oneof![
            prop::sample::select(vec![
                V::Int(0),
                V::Int(-1),
                V::Int(i64::MAX.into()),
                V::Int(1 << 64),
                V::Int(100_001),
                V::Int(10_000_000),
                V::Float,
                V::Bool(true),
                V::Arr(vec![]),
                V::Arr(vec![V::Int(1)]),
                s(""),
                s("10"),
                s("x"),
                s("0s"),
                s("1.5s"),
                s("-1s"),
                s("1 fortnight"),
                s("99999999999999999999d"),
                s("1ms"),
                s("1500us"),
                s("leaky"),
                s("TOKEN_BUCKET"),
                s("fixed_window"),
                s("sliding_log"),
                s("a b"),
                s("a:b"),
                s(&"n".repeat(65)),
                s("l1"),
                s("login"),
                s("/a{b}"),
                s("/{}"),
                s("/{id}/*"),
                s("/a*b"),
                s("POST"),
                V::Arr(vec![s("P OST")]),
                V::Arr(vec![s("")]),
                V::Arr(vec![s("get")]),
            ]),
            ".{0,12}".prop_map(V::Str),
            any::<i64>().prop_map(|i| V::Int(i.into())),
        ]
    }

    /// Where a mutation applies: the default (`None`) or a rule, and maybe one of its limits.
    #[derive(Debug, Clone, Copy)]
    struct At {
        rule: Option<usize>,
        limit: Option<usize>,
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Drop(&'static str),
        Duplicate(&'static str),
        Set(&'static str, V),
        Unknown,
        DuplicateRule,
        DuplicateLimit,
        NineLimits,
        TopLevel(V),
        Garbage(String),
    }

    const LIMIT_FIELDS: [&str; 5] = ["name", "capacity", "refill", "period", "algorithm"];
    const RULE_FIELDS: [&str; 5] = ["name", "path", "methods", "shadow", "limits"];

    fn mutation() -> impl Strategy<Value = Mutation> {
        let field = prop::sample::select(
            LIMIT_FIELDS
                .iter()
                .chain(&RULE_FIELDS)
                .copied()
                .collect::<Vec<_>>(),
        );
        prop_oneof![
            2 => field.clone().prop_map(Mutation::Drop),
            1 => field.clone().prop_map(Mutation::Duplicate),
            6 => (field, bad_value()).prop_map(|(f, v)| Mutation::Set(f, v)),
            1 => Just(Mutation::Unknown),
            1 => Just(Mutation::DuplicateRule),
            1 => Just(Mutation::DuplicateLimit),
            1 => Just(Mutation::NineLimits),
            1 => bad_value().prop_map(Mutation::TopLevel),
            1 => prop::sample::select(vec!["= =\n", "[[rules\n", "\"\n", "[default]\n", "rules = 1\n"])
                .prop_map(|g| Mutation::Garbage(g.to_owned())),
        ]
    }

    /// Applies `mutation` at `at` (clamped to what the document has); `None` when it does not
    /// apply (a field of a limit on a rule, say).
    fn apply(doc: &mut Doc, at: At, mutation: &Mutation) -> Option<At> {
        let at = At {
            rule: at
                .rule
                .filter(|_| !doc.rules.is_empty())
                .map(|r| r % doc.rules.len()),
            ..at
        };
        let policy = match at.rule {
            Some(r) => &mut doc.rules[r],
            None => doc.default.as_mut()?,
        };
        let n = policy.limits.as_ref().map_or(0, Vec::len);
        let at = At {
            limit: at.limit.filter(|_| n > 0).map(|l| l % n),
            ..at
        };
        let on_limit = |f: &str| LIMIT_FIELDS.contains(&f) && (f != "name" || at.limit.is_some());
        let table = match (at.limit, mutation) {
            (Some(l), Mutation::Drop(f) | Mutation::Duplicate(f) | Mutation::Set(f, _))
                if on_limit(f) =>
            {
                &mut policy.limits.as_mut()?[l]
            }
            (_, Mutation::Drop(f) | Mutation::Duplicate(f) | Mutation::Set(f, _))
                if !RULE_FIELDS.contains(f)
                    || (at.rule.is_none() && !["limits", "shadow"].contains(f)) =>
            {
                return None;
            }
            _ => policy,
        };
        let at = if table.limits.is_none() {
            at
        } else {
            At { limit: None, ..at }
        };
        match mutation {
            Mutation::Drop("limits") if table.limits.is_some() => table.limits = None,
            Mutation::Drop(f) => table.fields.retain(|(k, _)| k != f),
            Mutation::Duplicate("limits") => return None,
            Mutation::Duplicate(f) => {
                let v = table.get(f)?.clone();
                table.fields.push(((*f).to_owned(), v));
            }
            Mutation::Set("limits", v) if table.limits.is_some() => {
                table.limits = None;
                table.fields.push(("limits".to_owned(), v.clone()));
            }
            Mutation::Set(f, v) => {
                table.fields.retain(|(k, _)| k != f);
                table.fields.push(((*f).to_owned(), v.clone()));
            }
            Mutation::Unknown => table.fields.push(("flavour".to_owned(), V::Int(1))),
            Mutation::DuplicateRule => {
                let rule = doc.rules.get(at.rule?)?.clone();
                doc.rules.push(rule);
            }
            Mutation::DuplicateLimit => {
                let limits = table.limits.as_mut()?;
                limits.push(limits[0].clone());
            }
            Mutation::NineLimits => {
                let limits = table.limits.as_mut()?;
                while limits.len() < MAX_LIMITS + 1 {
                    let mut extra = limits[0].clone();
                    extra.fields[0].1 = V::Str(format!("extra{}", limits.len()));
                    limits.push(extra);
                }
            }
            Mutation::TopLevel(v) => doc.top.push(("x".to_owned(), v.clone())),
            Mutation::Garbage(g) => doc.garbage = g.clone(),
        }
        Some(at)
    }

    /// Every limit loaded is one the constructors accept as it is, and every policy has 1 to
    /// 8 limits of distinct names.
    fn assert_valid(policies: &Policies) -> Result<(), TestCaseError> {
        for i in 0..policies.len() {
            let limits = &policies.entry(i).limits;
            prop_assert!((1..=MAX_LIMITS).contains(&limits.len()));
            let names: std::collections::HashSet<&str> = limits.iter().map(Limit::name).collect();
            prop_assert_eq!(names.len(), limits.len());
            for l in limits.iter() {
                let again = Limit::with_algorithm(
                    l.algorithm(),
                    l.name(),
                    l.capacity(),
                    Some(l.refill()),
                    l.period(),
                );
                prop_assert_eq!(again.as_ref(), Ok(l));
            }
        }
        Ok(())
    }

    /// How every error message starts: invalid TOML, or where.
    fn located(message: &str) -> bool {
        [
            "invalid TOML: ",
            "default: ",
            "rule \"",
            "rules[",
            "duplicate rule name ",
            "`[[default.limits]] or [[rules]]` is required",
        ]
        .iter()
        .any(|start| message.starts_with(start))
    }

    /// The fields an error about `field` may name: a rate's fields are checked together.
    fn names(field: &str) -> &'static [&'static str] {
        match field {
            "capacity" | "refill" | "period" | "algorithm" => {
                &["capacity", "refill", "period", "algorithm"]
            }
            "name" => &["name", "duplicate"],
            "path" => &["path"],
            "methods" => &["methods"],
            "shadow" => &["shadow"],
            _ => &["limits"],
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_valid_file_loads_exactly_its_limits(doc in doc()) {
            let text = doc.toml();
            if doc.default.is_none() && doc.rules.is_empty() {
                // It would limit nothing.
                prop_assert!(Policies::from_toml(&text).is_err());
                return Ok(());
            }
            let policies = Policies::from_toml(&text).map_err(|e| {
                TestCaseError::fail(format!("{e}\n{text}"))
            })?;
            assert_valid(&policies)?;
            // Every limit as written: its capacity, refill (or the capacity), period and
            // algorithm.
            let written = doc.default.iter().chain(&doc.rules).flat_map(|p| p.limits.iter().flatten());
            let loaded: Vec<&Limit> = policies.limits().collect();
            let written: Vec<&Table> = written.collect();
            prop_assert_eq!(loaded.len(), written.len());
            for (l, w) in loaded.iter().zip(written) {
                let int = |k| match w.get(k) { Some(V::Int(i)) => Some(*i as u64), _ => None };
                prop_assert_eq!(Some(l.capacity()), int("capacity"));
                prop_assert_eq!(l.refill(), int("refill").unwrap_or(l.capacity()));
                let Some(V::Str(period)) = w.get("period") else { unreachable!() };
                prop_assert_eq!(l.period(), parse_period(period).unwrap());
                let algorithm = match w.get("algorithm") {
                    Some(V::Str(a)) => a.parse().unwrap(),
                    _ => Algorithm::TokenBucket,
                };
                prop_assert_eq!(l.algorithm(), algorithm);
            }
        }

        #[test]
        fn any_mutated_file_loads_valid_limits_or_names_what_is_wrong(
            mut doc in doc(),
            rule in prop::option::of(0usize..3),
            limit in prop::option::of(0usize..3),
            mutation in mutation(),
        ) {
            let Some(at) = apply(&mut doc, At { rule, limit }, &mutation) else {
                return Ok(());
            };
            let text = doc.toml();
            let message = match Policies::from_toml(&text) {
                Ok(policies) => {
                    assert_valid(&policies)?;
                    // A required field cannot be dropped, nor a key written twice. (A rule
                    // without a path is a named rule, for work without HTTP.)
                    prop_assert!(
                        !matches!(mutation, Mutation::Drop("name" | "capacity" | "period" | "limits")
                            | Mutation::Duplicate(_) | Mutation::Unknown | Mutation::DuplicateRule
                            | Mutation::DuplicateLimit | Mutation::NineLimits | Mutation::TopLevel(_)),
                        "loaded:\n{text}"
                    );
                    return Ok(());
                }
                Err(e) => e.to_string(),
            };
            prop_assert!(!message.trim().is_empty());
            prop_assert!(located(&message), "{message}\n{text}");
            let syntax = message.starts_with("invalid TOML: TOML parse error");
            match &mutation {
                Mutation::Drop(f) | Mutation::Set(f, _) if !syntax => {
                    prop_assert!(
                        names(f).iter().any(|n| message.contains(n)),
                        "{f}: {message}\n{text}"
                    );
                    // Where: the rule (by name, or position when its name is the trouble),
                    // then the limit.
                    let whole = |rule: usize| {
                        message.starts_with(&format!("rule \"r{rule}\": "))
                            || message.starts_with(&format!("rules[{rule}]: "))
                            || message.starts_with("rule \"")
                            || message.starts_with("duplicate rule name ")
                    };
                    match at.rule {
                        Some(r) => prop_assert!(whole(r), "{message}\n{text}"),
                        None => prop_assert!(message.starts_with("default: "), "{message}"),
                    }
                    if let (Some(l), true) = (at.limit, LIMIT_FIELDS.contains(f)) {
                        prop_assert!(
                            message.contains(&format!("limit \"l{l}\": "))
                                || message.contains(&format!("limits[{l}]: "))
                                || message.contains("limit \"")
                                || message.contains("duplicate limit name"),
                            "{message}\n{text}"
                        );
                    }
                }
                Mutation::Duplicate(f) => {
                    prop_assert!(syntax && message.contains("duplicate key") && message.contains(f), "{message}");
                }
                Mutation::Unknown => prop_assert!(message.contains("unknown field `flavour`"), "{message}"),
                Mutation::DuplicateRule => prop_assert!(message.starts_with("duplicate rule name \"r"), "{message}"),
                Mutation::DuplicateLimit => prop_assert!(message.contains("duplicate limit name \"l0\""), "{message}"),
                Mutation::NineLimits => prop_assert!(message.contains("at most 8 limits"), "{message}"),
                Mutation::TopLevel(_) => prop_assert!(
                    message.contains("unknown top-level key `x`") || syntax,
                    "{message}"
                ),
                _ => {}
            }
        }

        #[test]
        fn any_text_loads_valid_limits_or_fails_clearly(
            text in prop_oneof![
                any::<String>(),
                prop::collection::vec(
                    prop::sample::select(vec![
                        "[default]\n", "[[rules]]\n", "[[default.limits]]\n", "name = \"r\"\n",
                        "path = \"/x\"\n", "capacity = 5\n", "period = \"1m\"\n", "refill = 0\n",
                        "algorithm = \"leaky\"\n", "methods = [\"GET\"]\n", "shadow = true\n",
                        "limits = [{ name = \"l\", capacity = 1, period = \"1s\" }]\n",
                        "limits = []\n", "x = 1\n", "\"\n", "=\n", "# comment\n",
                    ]),
                    0..10,
                )
                .prop_map(|lines| lines.concat()),
            ],
        ) {
            match Policies::from_toml(&text) {
                Ok(policies) => assert_valid(&policies)?,
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(located(&message), "{message}\n{text}");
                }
            }
        }

        #[test]
        fn any_period_is_read_exactly_or_named(
            text in prop_oneof![
                ".{0,8}",
                "[ +-]?[0-9]{0,22}(ms|s|m|h|d|us|x|S)?[ ]?",
            ],
        ) {
            match parse_period(&text) {
                Ok(period) => {
                    let trimmed = text.trim();
                    let unit_at = trimmed.find(|c: char| c.is_ascii_alphabetic()).unwrap();
                    let n: u64 = trimmed[..unit_at].parse().unwrap();
                    let expected = match &trimmed[unit_at..] {
                        "ms" => Duration::from_millis(n),
                        "s" => Duration::from_secs(n),
                        "m" => Duration::from_secs(n * 60),
                        "h" => Duration::from_secs(n * 3600),
                        "d" => Duration::from_secs(n * 86_400),
                        unit => return Err(TestCaseError::fail(format!("unit {unit:?}"))),
                    };
                    prop_assert_eq!(period, expected);
                }
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(message.starts_with(&format!("`period` = {text:?} is invalid")), "{message}");
                }
            }
        }

        #[test]
        fn any_method_name_is_a_method_or_named(method in prop_oneof![".{0,10}", "[a-zA-Z!#$%&'*+.^_`|~-]{1,10}"]) {
            let text = format!(
                "[[rules]]\nname = \"r\"\npath = \"/x\"\nmethods = [{}]\nlimits = [{{ name = \"l\", capacity = 1, period = \"1s\" }}]",
                s(&method).toml()
            );
            match Policies::from_toml(&text) {
                Ok(policies) => {
                    let upper = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
                    prop_assert_eq!(policies.find(&upper, "/x"), Some(0));
                }
                Err(e) => {
                    let message = e.to_string();
                    prop_assert_eq!(
                        message,
                        format!("rule \"r\": `methods` = {method:?} is invalid: must be an HTTP method like \"POST\"")
                    );
                }
            }
        }
    }
}
