//! The layer's own settings on its [`LayerBuilder`]: response fields, refusals, the cost of
//! a request and its settlement, tiers, and how requests without a route are keyed.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderName;

use super::builder::LayerBuilder;
use crate::cost::{CostExtractor, DefaultCost};
use crate::key::UnmatchedPaths;
use crate::policy::TierExtractor;
use crate::reserve::{Reservation, Settle};
use crate::response::{Rejection, RejectionBody, RejectionHook};

/// The layer's own settings.
pub(super) struct Options {
    pub(super) headers_on_allowed: bool,
    pub(super) legacy_headers: bool,
    pub(super) body: RejectionBody,
    pub(super) hook: Option<Arc<RejectionHook>>,
    pub(super) cost: Box<dyn CostExtractor>,
    pub(super) unmatched: UnmatchedPaths,
    pub(super) settle: Option<Settle>,
    pub(super) tier: Option<Box<dyn TierExtractor>>,
}

impl Options {
    /// The defaults: the fields on allowed responses, JSON refusals, one unit per request, no
    /// settlement, no tiers, and one shared bucket for requests that match no route.
    pub(super) fn new() -> Self {
        Self {
            headers_on_allowed: true,
            legacy_headers: false,
            body: RejectionBody::Json,
            hook: None,
            cost: Box::new(DefaultCost),
            unmatched: UnmatchedPaths::Shared,
            settle: None,
            tier: None,
        }
    }
}

impl<St, C> LayerBuilder<St, C> {
    /// Whether allowed responses carry the `RateLimit` and `RateLimit-Policy` fields (default
    /// `true`). Refused responses always do.
    pub fn headers_on_allowed(mut self, enabled: bool) -> Self {
        self.options.headers_on_allowed = enabled;
        self
    }

    /// Also send the legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` fields (default off). `X-RateLimit-Reset` is the seconds from now
    /// until the bucket is full again, not a timestamp.
    pub fn legacy_headers(mut self, enabled: bool) -> Self {
        self.options.legacy_headers = enabled;
        self
    }

    /// Answers refused requests with `application/problem+json` bodies (RFC 9457) instead of
    /// the default JSON: a 429 uses the quota-exceeded problem type of
    /// draft-ietf-httpapi-ratelimit-headers with its `violated-policies` member; the others
    /// say `title`, `status` and `detail`.
    pub fn problem_details(mut self, enabled: bool) -> Self {
        self.options.body = if enabled {
            RejectionBody::Problem
        } else {
            RejectionBody::Json
        };
        self
    }

    /// Builds the layer's own answers with `hook` instead; the layer still adds the
    /// `RateLimit` fields, `Retry-After` (unless the hook set one) and the legacy fields. gRPC
    /// requests still get gRPC answers.
    pub fn on_rejection<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Rejection<'_>) -> http::Response<Bytes> + Send + Sync + 'static,
    {
        self.options.hook = Some(Arc::new(hook));
        self
    }

    /// How many tokens a request takes: a [`HeaderCost`](crate::HeaderCost) or a closure
    /// `Fn(&Parts) -> u64`. By default, the [`RequestCost`](crate::RequestCost) an earlier
    /// layer (such as [`BodyCostLayer`](crate::BodyCostLayer)) put in the request's
    /// extensions, else 1.
    pub fn cost_extractor<T: CostExtractor>(mut self, cost: T) -> Self {
        self.options.cost = Box::new(cost);
        self
    }

    /// Settles each request's reservation once its response is over (default: off): the cost
    /// read up front is what the store takes, and the actual cost is refunded or charged when
    /// the response body ends or is dropped. Each limited request carries a [`Reservation`]
    /// in its extensions, which the handler (or the stream it returns) sets or adds to; see
    /// `docs/reservations.md` for what a settlement gives back.
    pub fn settle(mut self) -> Self {
        self.options.settle.get_or_insert_with(Settle::default);
        self
    }

    /// [`settle`](Self::settle), also reading the actual cost from response header `name` (a
    /// whole number; anything else is ignored), in the head or in the trailers (gRPC). The
    /// header is removed before the response is sent.
    pub fn settle_header(mut self, name: HeaderName) -> Self {
        self.options
            .settle
            .get_or_insert_with(Settle::default)
            .header = Some(name);
        self
    }

    /// [`settle`](Self::settle), also asking `f` when the response's head is ready:
    /// `Some(actual)` settles to it, whatever else says otherwise; `None` leaves it to the
    /// reservation or the header.
    ///
    /// ```
    /// use tollgate::TollgateLayer;
    ///
    /// // A login limit that charges only failed logins.
    /// let layer = TollgateLayer::builder()
    ///     .settle_from_response(|parts, _| parts.status.is_success().then_some(0))
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn settle_from_response<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::response::Parts, &Reservation) -> Option<u64> + Send + Sync + 'static,
    {
        self.options
            .settle
            .get_or_insert_with(Settle::default)
            .from_response = Some(Arc::new(f));
        self
    }

    /// How a request's tier is found, for [tiered](crate::Policies::tiered) policies (required with
    /// them, refused without): a closure ([`tier_fn`](crate::tier_fn)) or the
    /// [`Tier`](crate::Tier) an earlier layer put in the request
    /// ([`Tier::from_extensions`](crate::Tier::from_extensions)). A request without a tier gets the
    /// extractor's answer (`400`, `401`, `403`, as it says), one with a tier the policies do
    /// not have `403`; never a store call, never unlimited.
    pub fn tier_extractor<T: TierExtractor>(mut self, tier: T) -> Self {
        self.options.tier = Some(Box::new(tier));
        self
    }

    /// Keys the requests that match no route template (axum's `404` and `405`, and every
    /// request of a server that does not say which route it matched: hyper, tonic) by their
    /// normalized path under the default policy: one bucket per client, method and path.
    ///
    /// By default they share one bucket per client and method, whatever the path, so that a
    /// client cannot multiply its budget, or the keys in the store, by varying the path: use
    /// this only for a server whose every path is an endpoint, or one that refuses unknown
    /// paths before the limit. axum's matched route template (`MatchedPath`) names the
    /// endpoint whenever there is one; requests under a rule share the rule's bucket anyway.
    pub fn unmatched_per_path(self) -> Self {
        self.unmatched_paths(UnmatchedPaths::PerPath)
    }

    /// Keys the requests that match no route template by the endpoint `f` names for their
    /// normalized path (`Some`), or the shared bucket (`None`): for a server that knows its
    /// own paths, like a gRPC server's `/package.Service/Method`. Each endpoint `f` names is
    /// a bucket per client, so it should name a bounded set.
    pub fn unmatched_paths_named<F>(self, f: F) -> Self
    where
        F: Fn(&str) -> Option<String> + Send + Sync + 'static,
    {
        self.unmatched_paths(UnmatchedPaths::normalize(f))
    }

    /// How requests that match no route template are keyed.
    pub(crate) fn unmatched_paths(mut self, paths: UnmatchedPaths) -> Self {
        self.options.unmatched = paths;
        self
    }
}
