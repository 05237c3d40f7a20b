//! [`Rule`]: the limits of the requests a route pattern matches, or of the work that names it.

use http::Method;

use crate::Limit;

/// A rule: requests matching a route pattern (and, if given, one of the methods) fall under
/// its limits; or, [named](Rule::named) only, the subjects of work without HTTP
/// ([`Target::rule`](crate::Target::rule)).
#[derive(Debug, Clone)]
#[must_use]
pub struct Rule {
    pub(super) name: String,
    /// `None`: no request matches it, only a subject that names it.
    pub(super) path: Option<String>,
    pub(super) methods: Option<Vec<Method>>,
    pub(super) limits: Vec<Limit>,
    pub(super) shadow: bool,
}

impl Rule {
    /// A rule named `name` (1 to 64 ASCII letters, digits, `-`, `_` or `.`) for the route
    /// pattern `path`; checked by [`PoliciesBuilder::build`](super::PoliciesBuilder::build).
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: Some(path.into()),
            methods: None,
            limits: Vec::new(),
            shadow: false,
        }
    }

    /// A rule named `name` that no HTTP request matches: the policy of work without a route (a
    /// queue consumer, a job, a websocket's messages), which names it with
    /// [`Target::rule`](crate::Target::rule), so that a worker does not invent a route. Its
    /// buckets are keyed by client and rule (`tollgate:{tenant-7:@emails}:per_minute`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Limit, Limiter, Policies, Rule, Target};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policies = Policies::builder()
    ///     .rule(Rule::named("emails").limit(Limit::new("per_minute", 100, 100, Duration::from_secs(60))?))
    ///     .build()?;
    /// let limiter = Limiter::builder().policies(policies).build()?;
    /// let sender = limiter.subject("tenant-7", Target::rule("emails"))?;
    /// assert!(limiter.take(&sender, 1).await.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            path: None,
            ..Self::new(name, String::new())
        }
    }

    /// Only requests with one of these methods match (default: any method); an empty list is
    /// refused by [`PoliciesBuilder::build`](super::PoliciesBuilder::build).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Adds a limit; a rule needs at least one and at most 8.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Shadow mode for this rule: decide and report, never refuse.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }
}
