//! Limits per tenant: [`Policies::tiered`] gives each tier (a customer plan, say) its own
//! policies, and a [`TierExtractor`] names a request's tier.

use crate::Refusal;
use std::borrow::Cow;

use http::StatusCode;
use http::request::Parts;

use super::{Group, Policies};
use crate::ConfigError;
use crate::limit::check_name;

/// The longest tier name, in bytes: it scopes the tier's bucket keys (`prefix.tier:…`).
const MAX_TIER_LEN: usize = 32;

impl Policies {
    /// Policies per tier: a request's tier ([`TierExtractor`]) chooses which apply, and each
    /// tier's buckets are its own (their keys start `prefix.tier:`), so a client that changes
    /// tier starts afresh there. In logs and metrics a tier's policies are named `tier.rule`
    /// and `tier.default`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Limit, Policies};
    ///
    /// # fn main() -> Result<(), tollgate::ConfigError> {
    /// let minute = Duration::from_secs(60);
    /// let policies = Policies::tiered([
    ///     ("free", Policies::single(Limit::new("tokens", 1_000, 1_000, minute)?)),
    ///     ("pro", Policies::single(Limit::new("tokens", 10_000, 10_000, minute)?)),
    /// ])?;
    /// assert_eq!(policies.tiers().collect::<Vec<_>>(), ["free", "pro"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// No tier; a tier name that is not 1 to 32 ASCII letters, digits, `-`, `_` or `.`; a tier
    /// named twice; a tier's policies that are themselves tiered.
    pub fn tiered<I, N>(tiers: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (N, Policies)>,
        N: Into<String>,
    {
        let mut entries = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        for (name, policies) in tiers {
            let name = name.into();
            let at = format!("tier {name:?}");
            check_name(&name, "tier").map_err(|e| e.at(&at))?;
            if name.len() > MAX_TIER_LEN {
                let error = ConfigError::Invalid {
                    field: "tier",
                    value: name,
                    reason: "a tier name is at most 32 bytes",
                };
                return Err(error);
            }
            if groups
                .iter()
                .any(|g| g.tier.as_deref() == Some(name.as_str()))
            {
                return Err(ConfigError::Duplicate { what: "tier", name });
            }
            if policies.is_tiered() {
                let error = ConfigError::Invalid {
                    field: "tier",
                    value: name,
                    reason: "a tier's policies cannot have tiers of their own",
                };
                return Err(error);
            }
            let group = &policies.groups[0];
            let start = entries.len();
            for mut entry in policies.entries {
                entry.label = format!("{name}.{}", entry.label).into();
                entry.tier = Some(name.as_str().into());
                entries.push(entry);
            }
            groups.push(Group {
                tier: Some(name.into()),
                start,
                end: entries.len(),
                has_default: group.has_default,
            });
        }
        if groups.is_empty() {
            return Err(ConfigError::Missing { field: "tiers" });
        }
        Ok(Self { entries, groups })
    }
}

/// Finds the tier of a request, for [tiered](Policies::tiered) policies.
pub trait TierExtractor: Send + Sync + 'static {
    /// The request's tier, or how to answer a request that has none.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] to answer the request with. (A tier the policies do not have is
    /// answered `403 Forbidden`.)
    fn tier<'a>(&'a self, parts: &'a Parts) -> Result<&'a str, Refusal>;
}

/// A [`TierExtractor`] from a closure (see [`tier_fn`]).
#[derive(Clone)]
pub struct TierFn<F>(F);

impl<F> std::fmt::Debug for TierFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TierFn")
    }
}

/// A [`TierExtractor`] from a closure over the request's head.
///
/// ```
/// use http::StatusCode;
/// use tollgate::{Refusal, tier_fn};
///
/// // The plan is the API key's prefix: `free-…` or `pro-…`.
/// let tier = tier_fn(|parts| {
///     let key = parts.headers.get("x-api-key").ok_or_else(|| {
///         Refusal::new(StatusCode::BAD_REQUEST, "X-API-Key is required")
///     })?;
///     match key.as_bytes() {
///         k if k.starts_with(b"free-") => Ok("free"),
///         k if k.starts_with(b"pro-") => Ok("pro"),
///         _ => Err(Refusal::new(StatusCode::UNAUTHORIZED, "unknown API key")),
///     }
/// });
/// # let _ = tier;
/// ```
pub fn tier_fn<F>(f: F) -> TierFn<F>
where
    F: for<'a> Fn(&'a Parts) -> Result<&'a str, Refusal> + Send + Sync + 'static,
{
    TierFn(f)
}

impl<F> TierExtractor for TierFn<F>
where
    F: for<'a> Fn(&'a Parts) -> Result<&'a str, Refusal> + Send + Sync + 'static,
{
    fn tier<'a>(&'a self, parts: &'a Parts) -> Result<&'a str, Refusal> {
        (self.0)(parts)
    }
}

/// A request's tier, as a layer before the rate limit (authentication, say) found it: put it
/// in the request's extensions, and read it with [`Tier::from_extensions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier(pub Cow<'static, str>);

impl Tier {
    /// The tier extractor that reads the [`Tier`] in the request's extensions; a request
    /// without one is answered `401 Unauthorized`, "no tier: the request is not
    /// authenticated" (write a [`tier_fn`] for another answer).
    pub fn from_extensions() -> impl TierExtractor + Clone {
        TierExtension::default()
    }
}

/// The [`Tier`] in the request's extensions; a request without one is answered as `missing`
/// says.
#[derive(Debug, Clone)]
struct TierExtension {
    missing: Refusal,
}

impl Default for TierExtension {
    fn default() -> Self {
        Self {
            missing: Refusal::new(
                StatusCode::UNAUTHORIZED,
                "no tier: the request is not authenticated",
            ),
        }
    }
}

impl TierExtractor for TierExtension {
    fn tier<'a>(&'a self, parts: &'a Parts) -> Result<&'a str, Refusal> {
        match parts.extensions.get::<Tier>() {
            Some(tier) => Ok(&tier.0),
            None => Err(self.missing.clone()),
        }
    }
}
