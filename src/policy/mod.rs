//! Which limits apply to a request: [`Policies`], a table of [`Rule`]s and a default.
//!
//! What users read about it is `docs/policies.md`.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::limit::MAX_LIMITS;
use crate::limit::check_name;
use crate::{ConfigError, Limit};

pub(crate) mod fields;
#[cfg(feature = "config")]
mod file;
mod pattern;
mod rule;
mod tier;

pub(crate) use fields::{FieldCache, policy_list};

pub(crate) use pattern::RoutePattern;
pub use rule::Rule;
pub use tier::{Tier, TierExtractor, tier_fn};

/// The checked table of rules and the default; built by [`Policies::builder`] or loaded from
/// TOML ([`Policies::from_toml`]).
#[derive(Debug, Clone)]
pub struct Policies {
    /// By group, in order: the group's default when there is one, then its rules in order.
    entries: Vec<Entry>,
    /// One group without a tier, or one per tier ([`Policies::tiered`]).
    groups: Vec<Group>,
}

/// The policies of one tier (or of every request, untiered): `entries[start..end]`, the
/// default first when there is one.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) tier: Option<Box<str>>,
    start: usize,
    end: usize,
    has_default: bool,
}

/// One compiled policy: the limits a request falls under.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The rule's name; `None` for the default.
    pub(crate) rule: Option<Box<str>>,
    pattern: Option<RoutePattern>,
    methods: Option<Vec<Method>>,
    pub(crate) limits: Arc<[Limit]>,
    /// The limits that count the cost (not [requests](Limit::per_request)): what refunds and
    /// charges touch.
    pub(crate) costed: Arc<[Limit]>,
    /// Whether a limit is a concurrency limit: an allowed request then holds slots.
    pub(crate) concurrent: bool,
    /// The lease time, when every limit is [leased](Limit::leased): the shortest of theirs.
    pub(crate) lease: Option<std::time::Duration>,
    /// `RateLimit-Policy`: every limit.
    pub(crate) header: HeaderValue,
    pub(crate) shadow: bool,
    /// The smallest capacity: a cost above it can never pass.
    pub(crate) min_capacity: u64,
    /// `RateLimit` values of each limit, shared.
    pub(crate) fields: Box<[FieldCache]>,
    /// The name in logs and metrics: the rule's or `default`, after `tier.` in a tier.
    label: Box<str>,
    /// The tier the policy belongs to, when the policies are tiered.
    pub(crate) tier: Option<Box<str>>,
}

impl Entry {
    fn new(
        rule: Option<&str>,
        pattern: Option<RoutePattern>,
        methods: Option<Vec<Method>>,
        limits: Vec<Limit>,
        shadow: bool,
    ) -> Result<Self, ConfigError> {
        if limits.is_empty() {
            return Err(ConfigError::Missing { field: "limits" });
        }
        if limits.len() > MAX_LIMITS {
            return Err(ConfigError::Invalid {
                field: "limits",
                value: limits.len().to_string(),
                reason: "a policy has at most 8 limits",
            });
        }
        let entries = crate::algorithm::log_entries(&limits);
        if entries > crate::limit::MAX_LOG_CAPACITY {
            return Err(ConfigError::Invalid {
                field: "limits",
                value: format!("sliding logs of {entries} entries"),
                reason: "the sliding logs of one policy hold at most 250 entries in all, so that \
                         no request costs Redis more than about a millisecond",
            });
        }
        let mut names = HashSet::new();
        for limit in &limits {
            if !names.insert(limit.name()) {
                return Err(ConfigError::Duplicate {
                    what: "limit",
                    name: limit.name().to_owned(),
                });
            }
        }
        let lease = crate::limit::policy_lease(&limits)?;
        let limits: Arc<[Limit]> = limits.into();
        let costed = if limits.iter().any(Limit::counts_requests) {
            limits
                .iter()
                .filter(|l| !l.counts_requests())
                .cloned()
                .collect()
        } else {
            Arc::clone(&limits)
        };
        Ok(Self {
            rule: rule.map(Into::into),
            pattern,
            methods,
            header: policy_list(&limits),
            // A limit that counts requests takes 1 whatever the cost.
            min_capacity: (limits.iter())
                .filter(|l| !l.counts_requests())
                .map(Limit::capacity)
                .min()
                .unwrap_or(u64::MAX),
            fields: limits.iter().map(FieldCache::new).collect(),
            concurrent: limits
                .iter()
                .any(|l| l.algorithm() == crate::Algorithm::Concurrency),
            label: rule.unwrap_or("default").into(),
            tier: None,
            lease,
            limits,
            costed,
            shadow,
        })
    }

    /// The policy's name in logs and metrics: the rule's, or `default`; in a tier, after the
    /// tier's name and a dot (`pro.default`).
    pub(crate) fn name(&self) -> &str {
        &self.label
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        // HEAD is answered by the GET handler: a rule of GET requests limits it too.
        self.methods.as_ref().is_none_or(|m| {
            m.contains(method) || (*method == Method::HEAD && m.contains(&Method::GET))
        }) && self.pattern.as_ref().is_some_and(|p| p.matches(path))
    }
}

impl Policies {
    /// Starts an empty table.
    pub fn builder() -> PoliciesBuilder {
        PoliciesBuilder::default()
    }

    /// One default limit and no rules.
    pub fn single(limit: Limit) -> Self {
        Self::builder()
            .default_limit(limit)
            .build()
            .expect("one limit is a valid policy")
    }

    /// The group of a request in `tier`: the only one of untiered policies (`tier` is then
    /// `None`), or the tier's; `None` for a tier the policies do not have, or a missing one.
    pub(crate) fn group(&self, tier: Option<&str>) -> Option<&Group> {
        match (self.is_tiered(), tier) {
            (false, None) => self.groups.first(),
            (true, Some(tier)) => self.groups.iter().find(|g| g.tier.as_deref() == Some(tier)),
            _ => None,
        }
    }

    /// The policy of a request in `group`: its index, or `None` when no rule matches and
    /// there is no default. The request's (normalized) path is asked for only when the group
    /// has rules to match it against.
    pub(crate) fn find_in<'p>(
        &self,
        group: &Group,
        method: &Method,
        path: impl FnOnce() -> &'p str,
    ) -> Option<usize> {
        let first_rule = group.start + usize::from(group.has_default);
        let rules = &self.entries[first_rule..group.end];
        let matched = match rules.is_empty() {
            true => None,
            false => {
                let path = path();
                rules.iter().position(|entry| entry.matches(method, path))
            }
        };
        matched
            .map(|i| i + first_rule)
            .or(group.has_default.then_some(group.start))
    }

    /// The policy of a request, for untiered policies.
    #[cfg(test)]
    pub(crate) fn find(&self, method: &Method, path: &str) -> Option<usize> {
        self.find_in(self.group(None)?, method, || path)
    }

    /// The index of the rule named `name` in `group`.
    pub(crate) fn find_rule_in(&self, group: &Group, name: &str) -> Option<usize> {
        (group.start..group.end).find(|&i| self.entries[i].rule.as_deref() == Some(name))
    }

    /// Whether each request's tier chooses its policies ([`Policies::tiered`]).
    pub fn is_tiered(&self) -> bool {
        self.groups.iter().any(|g| g.tier.is_some())
    }

    /// How many rules there are, in every tier.
    pub fn rule_count(&self) -> usize {
        (0..self.len())
            .filter(|&i| self.entry(i).rule.is_some())
            .count()
    }

    /// The tiers, in order; none for untiered policies.
    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().filter_map(|g| g.tier.as_deref())
    }

    pub(crate) fn entry(&self, index: usize) -> &Entry {
        &self.entries[index]
    }

    /// How many policies: the default, if any, and the rules.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every limit of every policy.
    pub fn limits(&self) -> impl Iterator<Item = &Limit> {
        self.entries.iter().flat_map(|e| e.limits.iter())
    }
}

/// Builds [`Policies`]; every field is checked by [`PoliciesBuilder::build`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PoliciesBuilder {
    default: Vec<Limit>,
    default_shadow: bool,
    rules: Vec<Rule>,
}

impl PoliciesBuilder {
    /// Adds a limit to the default policy, which applies where no rule matches.
    pub fn default_limit(mut self, limit: Limit) -> Self {
        self.default.push(limit);
        self
    }

    /// Shadow mode for the default policy.
    pub fn default_shadow(mut self, shadow: bool) -> Self {
        self.default_shadow = shadow;
        self
    }

    /// Adds a rule; rules are tried in the order they are added.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Checks the table.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the rule and the field: an invalid name or pattern, an empty
    /// list of methods, a rule without limits, more than 8 limits, two limits of one name in a
    /// policy, two rules of one name.
    pub fn build(self) -> Result<Policies, ConfigError> {
        let mut entries = Vec::with_capacity(self.rules.len() + 1);
        let has_default = !self.default.is_empty();
        if has_default {
            let entry = Entry::new(None, None, None, self.default, self.default_shadow)
                .map_err(|e| e.at("default"))?;
            entries.push(entry);
        }
        let mut names = HashSet::new();
        for rule in self.rules {
            let at = format!("rule {:?}", rule.name);
            check_name(&rule.name, "name").map_err(|e| e.at(&at))?;
            if !names.insert(rule.name.clone()) {
                return Err(ConfigError::Duplicate {
                    what: "rule",
                    name: rule.name,
                });
            }
            let pattern = (rule.path.as_deref())
                .map(RoutePattern::parse)
                .transpose()
                .map_err(|e| e.at(&at))?;
            if rule.methods.as_ref().is_some_and(Vec::is_empty) {
                let error = ConfigError::Invalid {
                    field: "methods",
                    value: "[]".into(),
                    reason: "a rule with no methods never matches: list at least one, or leave \
                             methods out to match any",
                };
                return Err(error.at(&at));
            }
            let entry = Entry::new(
                Some(&rule.name),
                pattern,
                rule.methods,
                rule.limits,
                rule.shadow,
            )
            .map_err(|e| e.at(&at))?;
            entries.push(entry);
        }
        let end = entries.len();
        Ok(Policies {
            entries,
            groups: vec![Group {
                tier: None,
                start: 0,
                end,
                has_default,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(name: &str) -> Limit {
        Limit::new(name, 5, 5, Duration::from_secs(60)).unwrap()
    }

    /// A named rule (no path) matches no request, in code or in a file; a subject names it.
    #[test]
    fn a_named_rule_matches_no_request() {
        let from_code = Policies::builder()
            .rule(Rule::named("jobs").limit(limit("j")))
            .default_limit(limit("d"))
            .build()
            .unwrap();
        let from_file = Policies::from_toml(
            r#"
            [[rules]]
            name = "jobs"
            limits = [{ name = "j", capacity = 5, period = "1m" }]
            [default]
            limits = [{ name = "d", capacity = 5, period = "1m" }]
            "#,
        )
        .unwrap();
        for policies in [from_code, from_file] {
            let default = policies.find(&Method::GET, "/nothing");
            for path in ["/", "/jobs", "/anything/else"] {
                assert_eq!(policies.find(&Method::POST, path), default, "{path}");
            }
            let jobs = policies.find_rule_in(policies.group(None).unwrap(), "jobs");
            assert!(jobs.is_some() && jobs != default);
        }
    }

    /// A `GET` rule limits `HEAD` too (the GET handler answers it); a `HEAD` rule is its own.
    #[test]
    fn a_get_rule_matches_head() {
        let policies = Policies::builder()
            .rule(
                Rule::new("reads", "/files")
                    .methods([Method::GET])
                    .limit(limit("a")),
            )
            .rule(
                Rule::new("heads", "/only-head")
                    .methods([Method::HEAD])
                    .limit(limit("b")),
            )
            .default_limit(limit("d"))
            .build()
            .unwrap();
        let reads = policies.find(&Method::GET, "/files");
        assert!(reads.is_some());
        assert_eq!(policies.find(&Method::HEAD, "/files"), reads);
        assert_ne!(policies.find(&Method::POST, "/files"), reads);
        let heads = policies.find(&Method::HEAD, "/only-head");
        assert!(heads.is_some() && heads != reads);
        assert_ne!(policies.find(&Method::GET, "/only-head"), heads);
    }

    #[test]
    fn patterns_match() {
        let cases = [
            ("/login", "/login", true),
            ("/login", "/login/x", false),
            ("/login/", "/login", true),
            ("/users/{id}", "/users/42", true),
            ("/users/{id}", "/users", false),
            ("/users/{id}", "/users/42/posts", false),
            ("/users/{id}/posts", "/users/42/posts", true),
            ("/files/{*rest}", "/files/a/b/c", true),
            ("/users/{id}/", "/users/42", true),
            ("/users//{id}", "/users/42", true),
            ("/api/*", "/api", true),
            ("/api/*", "/api/v1/x", true),
            ("/api/*", "/apix", false),
            ("/*", "/anything", true),
        ];
        for (pattern, path, expected) in cases {
            let p = RoutePattern::parse(pattern).unwrap();
            assert_eq!(p.matches(path), expected, "{pattern} ~ {path}");
        }
        for bad in ["login", "/a{b}", "/{}", "/{*rest}/x", "/a*b", "/{x}/*"] {
            let err = RoutePattern::parse(bad).unwrap_err().to_string();
            assert!(err.contains("path") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn first_matching_rule_then_default() {
        let policies = Policies::builder()
            .default_limit(limit("default"))
            .rule(
                Rule::new("login", "/login")
                    .methods([Method::POST])
                    .limit(limit("burst")),
            )
            .rule(Rule::new("api", "/api/*").limit(limit("api")))
            .rule(Rule::new("all-api", "/api/v1/*").limit(limit("never")))
            .build()
            .unwrap();
        let find = |m: Method, p: &str| {
            let entry = policies.entry(policies.find(&m, p).unwrap());
            entry.rule.as_deref().map(str::to_owned)
        };
        assert_eq!(find(Method::POST, "/login"), Some("login".into()));
        assert_eq!(find(Method::GET, "/login"), None);
        assert_eq!(find(Method::GET, "/api/v1/x"), Some("api".into()));
        assert_eq!(find(Method::GET, "/other"), None);
        let no_default = Policies::builder()
            .rule(Rule::new("login", "/login").limit(limit("burst")))
            .build()
            .unwrap();
        assert_eq!(no_default.find(&Method::GET, "/other"), None);
    }

    #[test]
    fn bad_tables_name_the_rule_and_field() {
        let err = |b: PoliciesBuilder| b.build().unwrap_err().to_string();
        let e = err(Policies::builder().rule(Rule::new("login", "/login")));
        assert!(e.contains("rule \"login\"") && e.contains("limits"), "{e}");
        let e = err(Policies::builder()
            .rule(Rule::new("a", "/a").limit(limit("x")))
            .rule(Rule::new("a", "/b").limit(limit("x"))));
        assert!(e.contains("duplicate rule") && e.contains("\"a\""), "{e}");
        let e =
            err(Policies::builder().rule(Rule::new("a", "/a").limit(limit("x")).limit(limit("x"))));
        assert!(
            e.contains("rule \"a\"") && e.contains("duplicate limit"),
            "{e}"
        );
        let e = err(Policies::builder().rule(Rule::new("a b", "/a").limit(limit("x"))));
        assert!(e.contains("name"), "{e}");
        let e = err(Policies::builder().rule(Rule::new("a", "a").limit(limit("x"))));
        assert!(e.contains("rule \"a\"") && e.contains("path"), "{e}");
        // A rule that could never match is refused, not loaded silently.
        let e = err(Policies::builder().rule(Rule::new("a", "/a").methods([]).limit(limit("x"))));
        assert!(
            e.contains("rule \"a\"") && e.contains("`methods` = \"[]\""),
            "{e}"
        );
    }
}

/// Property tests: any route pattern parses or names the `path`; a pattern matches the paths
/// it names, however they are spelled; finding a policy never panics.
#[cfg(test)]
mod props {
    use std::time::Duration;

    use crate::key::normalize_path;

    use proptest::prelude::*;

    use super::*;

    /// One segment of a generated pattern.
    #[derive(Debug, Clone)]
    enum Part {
        Literal(String),
        Param,
    }

    /// How a generated pattern ends.
    #[derive(Debug, Clone, Copy)]
    enum End {
        Exact,
        TrailingSlash,
        Rest,
        Prefix,
    }

    fn pattern() -> impl Strategy<Value = (Vec<Part>, End)> {
        let part = prop_oneof![
            3 => "[a-z0-9_~-]{1,5}".prop_map(Part::Literal),
            1 => Just(Part::Param),
        ];
        let end =
            prop::sample::select(vec![End::Exact, End::TrailingSlash, End::Rest, End::Prefix]);
        // A prefix has no other wildcard: its parameters are literals.
        (prop::collection::vec(part, 0..4), end).prop_map(|(parts, end)| match end {
            End::Prefix => (
                parts
                    .into_iter()
                    .map(|p| match p {
                        Part::Param => Part::Literal("p".into()),
                        literal => literal,
                    })
                    .collect(),
                end,
            ),
            _ => (parts, end),
        })
    }

    fn pattern_text(parts: &[Part], end: End) -> String {
        let mut text: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => format!("/{l}"),
                Part::Param => "/{id}".to_owned(),
            })
            .collect();
        match end {
            End::Exact if text.is_empty() => text.push('/'),
            End::Exact => {}
            End::TrailingSlash => text.push('/'),
            End::Rest => text.push_str("/{*rest}"),
            End::Prefix => text.push_str("/*"),
        }
        text
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_route_pattern_parses_or_names_the_path(
            text in prop_oneof![any::<String>(), "[/{}*a-z. %]{0,16}"],
            paths in prop::collection::vec(any::<String>(), 0..4),
        ) {
            match RoutePattern::parse(&text) {
                Ok(pattern) => {
                    prop_assert!(text.starts_with('/'));
                    prop_assert_eq!(pattern.as_str(), text.as_str());
                    for path in &paths {
                        let _ = pattern.matches(&normalize_path(path));
                    }
                }
                Err(err) => {
                    let err = err.to_string();
                    prop_assert!(err.starts_with("`path` = "), "{err}");
                    prop_assert!(err.contains(&format!("{text:?}")), "{err}");
                }
            }
        }

        #[test]
        fn a_pattern_matches_the_paths_it_names(
            (parts, end) in pattern(),
            values in prop::collection::vec("[A-Za-z0-9._~-]{1,5}", 4),
            rest in prop::collection::vec("[a-z0-9]{1,3}", 0..3),
            slashes in prop::collection::vec(1usize..3, 8),
        ) {
            let text = pattern_text(&parts, end);
            let pattern = RoutePattern::parse(&text).unwrap();
            // A path the pattern names, with doubled slashes here and there; a parameter is
            // any segment that normalizes to a segment of its own.
            let mut path = String::new();
            let mut values = values.into_iter().filter(|v| v != "." && v != "..").cycle();
            let mut slashes = slashes.into_iter().cycle();
            for part in &parts {
                path.push_str(&"/".repeat(slashes.next().unwrap()));
                match part {
                    Part::Literal(l) => path.push_str(l),
                    Part::Param => path.push_str(&values.next().unwrap_or_else(|| "v".into())),
                }
            }
            if matches!(end, End::Rest | End::Prefix) {
                for segment in &rest {
                    path.push('/');
                    path.push_str(segment);
                }
            }
            if matches!(end, End::TrailingSlash) {
                path.push('/');
            }
            let normal = normalize_path(&path);
            let matched = pattern.matches(&normal);
            prop_assert!(matched, "{text} should match {path} ({normal})");
            // One more literal segment is another route, except below a prefix or a rest.
            let longer = format!("{}/zz", normal.trim_end_matches('/'));
            prop_assert_eq!(pattern.matches(&longer), matches!(end, End::Rest | End::Prefix), "{} ~ {}", text, longer);
        }

        #[test]
        fn finding_a_policy_never_panics(
            method in "[A-Z]{1,8}",
            path in any::<String>(),
            (parts, end) in pattern(),
        ) {
            let limit = Limit::new("l", 5, 5, Duration::from_secs(1)).unwrap();
            let policies = Policies::builder()
                .default_limit(limit.clone())
                .rule(Rule::new("r", pattern_text(&parts, end)).limit(limit))
                .build()
                .unwrap();
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let found = policies.find(&method, &normalize_path(&path));
            prop_assert!(found.is_some_and(|i| i < policies.len()));
        }
    }
}
