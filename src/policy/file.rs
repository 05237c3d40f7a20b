//! The TOML form of [`Policies`].

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use super::{Policies, Rule};
use crate::{Algorithm, ConfigError, Limit};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultFile {
    limits: Vec<LimitFile>,
    #[serde(default)]
    shadow: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    path: String,
    methods: Option<Vec<String>>,
    limits: Vec<LimitFile>,
    #[serde(default)]
    shadow: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitFile {
    name: String,
    capacity: u64,
    refill: Option<u64>,
    period: String,
    algorithm: Option<String>,
}

impl LimitFile {
    fn into_limit(self) -> Result<Limit, ConfigError> {
        let at = format!("limit {:?}", self.name);
        let period = parse_period(&self.period).map_err(|e| e.at(&at))?;
        let algorithm = match &self.algorithm {
            Some(name) => name.parse().map_err(|e: ConfigError| e.at(&at))?,
            None => Algorithm::TokenBucket,
        };
        Limit::with_algorithm(algorithm, &*self.name, self.capacity, self.refill, period)
            .map_err(|e| e.at(&at))
    }
}

/// `500ms`, `10s`, `1m`, `2h`, `1d`: a whole number and a unit.
pub(crate) fn parse_period(text: &str) -> Result<Duration, ConfigError> {
    let invalid = || ConfigError::Invalid {
        field: "period",
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
    /// (the window algorithms take no `refill`); `shadow = true` in a rule or in `[default]`
    /// turns on shadow mode for it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the rule (or `default`) and the field: invalid TOML, an unknown
    /// or missing field, a zero capacity, an unparsable period, a duplicate rule name.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                message: e.to_string().trim().to_owned(),
            })?;
        let mut builder = Policies::builder();
        for (key, value) in table {
            match key.as_str() {
                "default" => {
                    let default = DefaultFile::deserialize(value)
                        .map_err(|e| serde_error(e).at("default"))?;
                    for limit in default.limits {
                        builder =
                            builder.default_limit(limit.into_limit().map_err(|e| e.at("default"))?);
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
                        let rule =
                            RuleFile::deserialize(value).map_err(|e| serde_error(e).at(&at))?;
                        builder = builder.rule(rule.into_rule().map_err(|e| e.at(&at))?);
                    }
                }
                other => {
                    return Err(ConfigError::Parse {
                        message: format!(
                            "unknown top-level key `{other}`, expected `default` or `rules`"
                        ),
                    });
                }
            }
        }
        builder.build()
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
            ConfigError::Parse {
                message: format!("cannot read: {e}"),
            }
            .at(&at)
        })?;
        Self::from_toml(&text).map_err(|e| e.at(&at))
    }
}

impl RuleFile {
    fn into_rule(self) -> Result<Rule, ConfigError> {
        let mut rule = Rule::new(self.name, self.path).shadow(self.shadow);
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
        for limit in self.limits {
            rule = rule.limit(limit.into_limit()?);
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
}
