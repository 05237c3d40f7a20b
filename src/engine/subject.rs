//! What a [`Limiter`](crate::Limiter) decides for: a client on a target.

use std::borrow::Cow;

use http::Method;

use super::{Core, Limiter};
use crate::client::ClientId;
use crate::key::{Endpoint, normalize_path, subject_key};

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
/// policy and its bucket key, built once. After a [reload](crate::Limiter::reload) it is
/// resolved again, under the policies in force, by each call that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    key: String,
    policy: Option<usize>,
    bypassed: bool,
    /// The limiter that made it (its engine's address).
    owner: usize,
    /// The generation of the policies `policy` indexes.
    generation: u64,
    /// What it was made of, to be resolved again after a reload.
    made_of: Box<MadeOf>,
}

/// What a subject was made of: the tier, the client and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MadeOf {
    tier: Option<Box<str>>,
    client: Box<[u8]>,
    target: OwnedTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedTarget {
    Route { method: Method, path: Box<str> },
    Rule(Box<str>),
}

impl OwnedTarget {
    fn borrow(&self) -> Target<'_> {
        match self {
            Self::Route { method, path } => Target::Route { method, path },
            Self::Rule(name) => Target::Rule(name),
        }
    }
}

/// Why a subject cannot be used under the generation in force.
#[derive(Debug)]
pub(crate) enum Stale {
    /// Another limiter made it.
    Foreign,
    /// Made before a reload, and its rule or tier is gone.
    Gone(SubjectError),
}

impl Subject {
    /// The key that names the subject's buckets (each limit's bucket is this key, `:` and the
    /// limit's name; see [`Limit::bucket_key`](crate::Limit::bucket_key)).
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
    /// The policies are tiered: name the subject's tier ([`Limiter::tiered_subject`](crate::Limiter::tiered_subject)).
    #[error("the policies are tiered: the subject needs a tier")]
    TierRequired,
    /// No tier has this name.
    #[error("no tier is named {0:?}")]
    UnknownTier(String),
    /// A tier was given, but the policies have none.
    #[error("the policies have no tiers")]
    NotTiered,
}

impl<St> Limiter<St> {
    /// The subject `client` on `target`: its policy and its bucket key, built once and
    /// reusable for every call about it. The key is the one the HTTP layer uses for the same
    /// client and endpoint (see `key`), so both charge the same buckets.
    ///
    /// # Errors
    ///
    /// When `client` is empty, `target` names a rule the policies do not have, or the
    /// policies are [tiered](crate::Policies::tiered) (see [`Limiter::tiered_subject`]).
    pub fn subject<'c>(
        &self,
        client: impl Into<ClientId<'c>>,
        target: Target<'_>,
    ) -> Result<Subject, SubjectError> {
        self.subject_in(None, client.into(), target)
    }

    /// [`Limiter::subject`] under [tiered](crate::Policies::tiered) policies: `client` of `tier`.
    ///
    /// # Errors
    ///
    /// As [`Limiter::subject`]; a tier the policies do not have, or untiered policies.
    pub fn tiered_subject<'c>(
        &self,
        tier: &str,
        client: impl Into<ClientId<'c>>,
        target: Target<'_>,
    ) -> Result<Subject, SubjectError> {
        self.subject_in(Some(tier), client.into(), target)
    }

    fn subject_in(
        &self,
        tier: Option<&str>,
        client: ClientId<'_>,
        target: Target<'_>,
    ) -> Result<Subject, SubjectError> {
        let core = self.shared.core.load();
        let bypassed = core.is_bypassed(&client);
        resolve(&core, tier, client.as_bytes(), target, bypassed)
    }

    /// `subject` under the generation `core`: itself when made under it, or resolved again
    /// when made before a reload.
    pub(crate) fn resolve<'s>(
        &self,
        core: &Core,
        subject: &'s Subject,
    ) -> Result<Cow<'s, Subject>, Stale> {
        if subject.owner != core.address() {
            return Err(Stale::Foreign);
        }
        if subject.generation == core.generation {
            return Ok(Cow::Borrowed(subject));
        }
        let made_of = &subject.made_of;
        resolve(
            core,
            made_of.tier.as_deref(),
            &made_of.client,
            made_of.target.borrow(),
            subject.bypassed,
        )
        .map(Cow::Owned)
        .map_err(Stale::Gone)
    }
}

/// The subject `client` of `tier` on `target` under the generation `core` (`bypassed`: the
/// client is on the bypass list).
fn resolve(
    core: &Core,
    tier: Option<&str>,
    client: &[u8],
    target: Target<'_>,
    bypassed: bool,
) -> Result<Subject, SubjectError> {
    {
        if client.is_empty() {
            return Err(SubjectError::EmptyClient);
        }
        let policies = &core.policies;
        let Some(group) = policies.group(tier) else {
            return Err(match tier {
                Some(tier) if policies.is_tiered() => SubjectError::UnknownTier(tier.to_owned()),
                Some(_) => SubjectError::NotTiered,
                None => SubjectError::TierRequired,
            });
        };
        let (policy, path) = match target {
            Target::Route { method, path } => {
                let path = normalize_path(path);
                (
                    policies.find_in(group, method, || &path),
                    Some((method, path)),
                )
            }
            Target::Rule(name) => match policies.find_rule_in(group, name) {
                Some(index) => (Some(index), None),
                None => return Err(SubjectError::UnknownRule(name.to_owned())),
            },
        };
        let endpoint = match (
            policy.and_then(|i| core.policies.entry(i).rule.as_deref()),
            &path,
        ) {
            (Some(rule), _) => Endpoint::Rule(rule),
            (None, Some((method, path))) => Endpoint::Route {
                method: crate::key::key_method(method),
                path,
            },
            (None, None) => unreachable!("a rule target found its rule"),
        };
        let target = match (target, &path) {
            (Target::Rule(name), _) => OwnedTarget::Rule(name.into()),
            (Target::Route { method, .. }, Some((_, path))) => OwnedTarget::Route {
                method: method.clone(),
                path: path.as_ref().into(),
            },
            (Target::Route { method, path }, None) => OwnedTarget::Route {
                method: method.clone(),
                path: (*path).into(),
            },
        };
        Ok(Subject {
            key: subject_key(
                policy.map_or(&core.key_prefix, |i| &core.prefixes[i]),
                client,
                endpoint,
            ),
            policy,
            bypassed,
            owner: core.address(),
            generation: core.generation,
            made_of: Box::new(MadeOf {
                tier: tier.map(Into::into),
                client: client.into(),
                target,
            }),
        })
    }
}
