//! One `ShouldRateLimit` decision as envoyproxy/ratelimit makes it: the limit of each
//! descriptor ([`Plan::new`]), the counters to add to ([`Plan::counts`]), and the statuses
//! once the counters answered ([`Plan::statuses`]).

use std::collections::HashSet;

use super::{Config, Matched, RateLimit, Unit};

/// A descriptor of a request, as the service reads it.
#[derive(Debug, Clone, Default)]
pub struct Descriptor<'a> {
    /// Its entries: key and value pairs.
    pub entries: Vec<(&'a str, &'a str)>,
    /// The request's own limit for it (`RateLimitDescriptor.limit`): requests per unit, and
    /// the unit's wire value.
    pub limit: Option<(u32, i32)>,
    /// Its own cost (`RateLimitDescriptor.hits_addend`); 0 checks without counting.
    pub hits_addend: Option<u64>,
}

/// How the service treats every descriptor (envoyproxy/ratelimit's settings of the same
/// names).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `SHADOW_MODE`: the overall answer is never over.
    pub shadow_mode: bool,
    /// `QUOTA_MODE`: every limit is a quota.
    pub quota_mode: bool,
    /// `NEAR_LIMIT_RATIO`: a hit above this share of a limit counts as near it.
    pub near_limit_ratio: f32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            shadow_mode: false,
            quota_mode: false,
            near_limit_ratio: 0.8,
        }
    }
}

/// What a request cannot be decided for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No domain.
    #[error("rate limit domain must not be empty")]
    EmptyDomain,
    /// No descriptor.
    #[error("rate limit descriptor list must not be empty")]
    NoDescriptors,
    /// A descriptor's own limit has no unit (`UNKNOWN`, or a value past `WEEK`).
    #[error("descriptor {0}: its limit override has no unit")]
    OverrideUnit(usize),
    /// A descriptor's `hits_addend` is above [`MAX_HITS`].
    #[error("descriptor {0}: hits_addend is above 2^53")]
    TooManyHits(usize),
}

/// The most hits one descriptor may add: 2^53, the largest integer Redis's Lua counts exactly
/// (a counter is a signed 64-bit integer; more than this in one request is never a real cost).
pub const MAX_HITS: u64 = 1 << 53;

/// A descriptor's status (`RateLimitResponse.DescriptorStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The code is `OVER_LIMIT`: over its limit, and not in shadow mode (which answers `OK`,
    /// with nothing left all the same).
    pub over_limit: bool,
    /// The limit applied: requests per unit, unit, name. `None` when none applies.
    pub current_limit: Option<(u32, Unit, String)>,
    /// What is left: 0 when over, `u32::MAX` for an unlimited limit.
    pub limit_remaining: u32,
    /// Whole seconds until the window ends, with a current limit.
    pub duration_until_reset: Option<u64>,
    /// A quota (`quota_mode`, or `QUOTA_MODE`): over alone, it does not make the request over.
    pub quota: bool,
}

/// A descriptor's hits as counted against its limit: for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    /// Every hit.
    pub total: u64,
    /// Hits within the limit.
    pub within_limit: u64,
    /// Hits within the limit but above its near-limit share, and hits over the limit that
    /// were below it before.
    pub near_limit: u64,
    /// Hits over the limit.
    pub over_limit: u64,
    /// Hits over a limit in shadow mode.
    pub shadow_mode: u64,
}

/// A request's decision under way: the limit of each descriptor, after `replaces`.
#[derive(Debug)]
pub struct Plan {
    limits: Vec<Option<Matched>>,
    hits: Vec<u64>,
}

/// One counter to add hits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// The descriptor it counts for.
    pub descriptor: usize,
    /// The counter's key, in the peer's format.
    pub key: String,
    /// The hits to add (0: read only).
    pub hits: u64,
    /// The limit it counts against: requests per unit.
    pub limit: u64,
    /// The window's length, in seconds (the key's expiry, before jitter).
    pub window_s: u64,
}

impl Plan {
    /// Finds the limit of each of `descriptors` in `domain` (a request's own limit, when the
    /// domain is known, before the configuration), then drops every limit another limit of
    /// the request `replaces`. `hits_addend` is the request's cost (0 counts as 1).
    ///
    /// # Errors
    ///
    /// An empty domain or no descriptor, as the peer answers; a limit override without a
    /// unit (which the peer cannot handle: it panics); a `hits_addend` above [`MAX_HITS`]
    /// (which Redis refuses to add).
    pub fn new(
        config: &Config,
        domain: &str,
        descriptors: &[Descriptor<'_>],
        hits_addend: u32,
    ) -> Result<Self, RequestError> {
        if domain.is_empty() {
            return Err(RequestError::EmptyDomain);
        }
        if descriptors.is_empty() {
            return Err(RequestError::NoDescriptors);
        }
        if let Some(i) = descriptors
            .iter()
            .position(|d| d.hits_addend.is_some_and(|h| h > MAX_HITS))
        {
            return Err(RequestError::TooManyHits(i));
        }
        let known = config.has_domain(domain);
        let mut limits = Vec::with_capacity(descriptors.len());
        for (i, descriptor) in descriptors.iter().enumerate() {
            limits.push(match descriptor.limit {
                Some((requests, unit)) if known => {
                    let unit = Unit::from_wire(unit).ok_or(RequestError::OverrideUnit(i))?;
                    let key = descriptor_key(domain, &descriptor.entries);
                    let limit = RateLimit::overriding(requests, unit, key);
                    Some(Matched::overriding(limit))
                }
                _ => config.find(domain, &descriptor.entries),
            });
        }
        // Every name any matched limit replaces (a replaced or unlimited one's too), then
        // every limit so named is dropped.
        let replaced: HashSet<&str> = limits
            .iter()
            .flatten()
            .flat_map(|m| m.limit().replaces().iter().map(String::as_str))
            .collect();
        let dropped: Vec<bool> = limits
            .iter()
            .map(|m| {
                m.as_ref().is_some_and(|m| {
                    !m.limit().name().is_empty() && replaced.contains(m.limit().name())
                })
            })
            .collect();
        for (limit, dropped) in limits.iter_mut().zip(dropped) {
            if dropped {
                *limit = None;
            }
        }
        let request_hits = u64::from(hits_addend.max(1));
        let hits = descriptors
            .iter()
            .map(|d| d.hits_addend.unwrap_or(request_hits))
            .collect();
        Ok(Self { limits, hits })
    }

    /// The limit of each descriptor, in order.
    pub fn limits(&self) -> &[Option<Matched>] {
        &self.limits
    }

    /// The counters to add to at `now_s` (Unix seconds): one per descriptor with a counted
    /// limit (not unlimited), in descriptor order, under `prefix`.
    pub fn counts(
        &self,
        prefix: &str,
        domain: &str,
        descriptors: &[Descriptor<'_>],
        now_s: u64,
    ) -> Vec<Count> {
        let mut counts = Vec::new();
        for (i, matched) in self.limits.iter().enumerate() {
            let Some(matched) = matched else { continue };
            let (false, Some(unit)) = (matched.limit().is_unlimited(), matched.limit().unit())
            else {
                continue;
            };
            let start = unit.window_start(now_s);
            counts.push(Count {
                descriptor: i,
                key: matched.counter_key(prefix, domain, &descriptors[i].entries, start),
                hits: self.hits[i],
                limit: matched.limit().requests_per_unit().into(),
                window_s: unit.seconds(),
            });
        }
        counts
    }

    /// Each descriptor's status, its hits for metrics, and whether the request is over
    /// (`overall_code`), given `after`: each of [`counts`](Self::counts)' counters after its
    /// hits were added, in the same order. A request is over when a descriptor that is not
    /// a quota is over, or when it has quotas and all of them are (under `QUOTA_MODE` every
    /// descriptor but an unlimited one is a quota, one without a limit too); then
    /// `SHADOW_MODE` answers OK all the same.
    pub fn statuses(
        &self,
        settings: &Settings,
        after: &[u64],
        now_s: u64,
    ) -> (Vec<Status>, Vec<Hits>, bool) {
        let mut after = after.iter().copied();
        let mut statuses = Vec::with_capacity(self.limits.len());
        let mut hits = Vec::with_capacity(self.limits.len());
        let (mut over, mut quotas, mut quotas_over) = (false, 0, 0);
        for (i, matched) in self.limits.iter().enumerate() {
            let none = Status {
                over_limit: false,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: None,
                quota: false,
            };
            let Some(matched) = matched else {
                // Under QUOTA_MODE a descriptor without a limit is a quota that passed.
                quotas += usize::from(settings.quota_mode);
                statuses.push(none);
                hits.push(Hits::default());
                continue;
            };
            let limit = matched.limit();
            let Some(unit) = limit.unit().filter(|_| !limit.is_unlimited()) else {
                statuses.push(Status {
                    limit_remaining: u32::MAX,
                    ..none
                });
                hits.push(Hits::default());
                continue;
            };
            let added = self.hits[i];
            let now = after.next().unwrap_or(added);
            let quota = settings.quota_mode || limit.is_quota();
            let (mut status, counted) = counted(limit, unit, added, now, settings, now_s);
            status.quota = quota;
            let over_here = status.over_limit;
            if quota {
                quotas += 1;
                quotas_over += usize::from(over_here);
            } else {
                over |= over_here;
            }
            statuses.push(status);
            hits.push(counted);
        }
        let over = over || (quotas > 0 && quotas == quotas_over);
        (statuses, hits, over && !settings.shadow_mode)
    }
}

/// The status of a counted limit whose counter is `now` after `added` hits.
fn counted(
    limit: &RateLimit,
    unit: Unit,
    added: u64,
    now: u64,
    settings: &Settings,
    now_s: u64,
) -> (Status, Hits) {
    let cap = u64::from(limit.requests_per_unit());
    let before = now.saturating_sub(added);
    let near = (cap as f32 * settings.near_limit_ratio).floor() as u64;
    let mut hits = Hits {
        total: added,
        ..Hits::default()
    };
    let over_limit = now > cap;
    if over_limit {
        if before >= cap {
            hits.over_limit = added;
        } else {
            hits.over_limit = now - cap;
            hits.near_limit = cap - near.max(before);
        }
        if limit.is_shadow() {
            hits.shadow_mode = hits.over_limit;
        }
    } else {
        hits.within_limit = added;
        if now > near {
            hits.near_limit = if before >= near { added } else { now - near };
        }
    }
    let status = Status {
        // Shadow mode answers OK: it never makes the request over.
        over_limit: over_limit && !limit.is_shadow(),
        current_limit: Some((limit.requests_per_unit(), unit, limit.name().to_owned())),
        limit_remaining: if over_limit { 0 } else { (cap - now) as u32 },
        duration_until_reset: Some(unit.until_reset(now_s)),
        quota: false,
    };
    (status, hits)
}

/// A descriptor's key for the metrics of a request's own limit: `domain.k1_v1.k2` (a value
/// only when there is one).
fn descriptor_key(domain: &str, entries: &[(&str, &str)]) -> String {
    let mut key = format!("{domain}.");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        key.push_str(k);
        if !v.is_empty() {
            key.push('_');
            key.push_str(v);
        }
    }
    key
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
