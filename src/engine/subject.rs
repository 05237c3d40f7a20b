//! What a [`Limiter`](crate::Limiter) decides for: a client on a target.

use http::Method;

/// What a subject is limited on, beside its client.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Target<'a> {
    /// An endpoint: a method and a path, matched against the rules as a request's are. Give
    /// the route template the HTTP layer sees (axum's `MatchedPath`, like `/users/{id}`) to
    /// share the HTTP requests' buckets; a path is normalized as a request's is.
    Route {
        /// The method.
        method: &'a Method,
        /// The path or route template.
        path: &'a str,
    },
    /// The rule of this name, whatever it matches.
    Rule(&'a str),
}

impl<'a> Target<'a> {
    /// An endpoint: `method` and `path`.
    pub fn route(method: &'a Method, path: &'a str) -> Self {
        Self::Route { method, path }
    }

    /// The rule named `name`.
    pub fn rule(name: &'a str) -> Self {
        Self::Rule(name)
    }
}

/// A client on a target, resolved by [`Limiter::subject`](crate::Limiter::subject): its
/// policy and its bucket key, built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    key: String,
    policy: Option<usize>,
    bypassed: bool,
}

impl Subject {
    pub(crate) fn new(key: String, policy: Option<usize>, bypassed: bool) -> Self {
        Self {
            key,
            policy,
            bypassed,
        }
    }

    /// The key that names the subject's buckets (each limit's bucket is this key, `:` and the
    /// limit's name; see [`bucket_key`](crate::store::bucket_key)).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether any limit applies (a rule, or the default policy).
    pub fn is_limited(&self) -> bool {
        self.policy.is_some()
    }

    /// Whether the client is on the bypass list: decided and reported, never refused.
    pub fn is_bypassed(&self) -> bool {
        self.bypassed
    }

    pub(crate) fn policy(&self) -> Option<usize> {
        self.policy
    }
}

/// A subject that cannot be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// The client identity is empty.
    #[error("the client identity is empty")]
    EmptyClient,
    /// No rule has this name.
    #[error("no rule is named {0:?}")]
    UnknownRule(String),
}
