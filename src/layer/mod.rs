//! The tower middleware: [`TollgateLayer`] and its [`Builder`], the [`RateLimit`] service
//! and its [`ResponseFuture`]. The layer does only the HTTP part: it finds a request's client,
//! endpoint and cost, asks the [`Limiter`] (the engine, which does everything else), and
//! turns the outcome into the response.

use std::sync::Arc;

use tower_layer::Layer;

use crate::client::ClientIp;
use crate::cost::CostExtractor;
use crate::key::UnmatchedPaths;
use crate::policy::{Policies, TierExtractor};
use crate::reserve::{Settle, Settler};
use crate::response::{RejectionBody, RejectionHook, Style};
use crate::store::{MemoryStore, Store};
use crate::{ConfigError, Limiter};

mod builder;
mod future;
mod options;
mod service;

pub use builder::LayerBuilder;
pub use future::ResponseFuture;
pub use service::Tollgate;

/// Rate-limits the requests of each client on each endpoint, with the algorithms and policies
/// of its [`Limiter`].
///
/// Built with [`TollgateLayer::builder`], or from a limiter with [`TollgateLayer::new`]. The
/// limiter, the client extractor and the settings are created once and shared by every
/// service the layer makes. Cloning is cheap.
pub struct TollgateLayer<St = MemoryStore, C = ClientIp> {
    shared: Arc<Shared<St, C>>,
}

/// What every service of one layer shares.
pub(crate) struct Shared<St, C> {
    pub(crate) limiter: Limiter<St>,
    pub(crate) client: C,
    pub(crate) settings: Arc<Settings>,
}

/// The layer's own settings (the HTTP part): what a response future needs besides the
/// engine's generation.
pub(crate) struct Settings {
    pub(crate) headers_on_allowed: bool,
    pub(crate) legacy_headers: bool,
    pub(crate) body: RejectionBody,
    pub(crate) hook: Option<Arc<RejectionHook>>,
    pub(crate) cost: Box<dyn CostExtractor>,
    pub(crate) unmatched: UnmatchedPaths,
    /// Reservations settled after the response, when on.
    pub(crate) reserve: Option<Reserve>,
    /// Finds a request's tier, for tiered policies.
    pub(crate) tier: Option<Box<dyn TierExtractor>>,
}

/// How the layer settles reservations.
pub(crate) struct Reserve {
    pub(crate) settle: Arc<Settle>,
    pub(crate) settler: Arc<dyn Settler>,
}

impl Settings {
    pub(crate) fn style(&self, grpc: bool) -> Style<'_> {
        Style {
            body: self.body,
            hook: self.hook.as_deref(),
            legacy: self.legacy_headers,
            grpc,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("headers_on_allowed", &self.headers_on_allowed)
            .field("legacy_headers", &self.legacy_headers)
            .field("settle", &self.reserve.as_ref().map(|r| &r.settle))
            .finish_non_exhaustive()
    }
}

impl<St, C> Clone for TollgateLayer<St, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St, C> std::fmt::Debug for TollgateLayer<St, C>
where
    St: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TollgateLayer")
            .field("store", self.shared.limiter.store())
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl<St: Store> TollgateLayer<St> {
    /// A layer over `limiter` with the default HTTP settings: clients named by their address
    /// ([`ClientIp::peer`]),
    /// each request costing 1, the `RateLimit` fields on every response, JSON rejections.
    /// Its requests charge the same buckets as `limiter`'s direct calls.
    ///
    /// # Errors
    ///
    /// When `limiter`'s policies are [tiered](crate::Policies::tiered): a request's tier must
    /// be found, so build the layer with
    /// [`TollgateLayer::builder`]`.limiter(..).tier_extractor(..)` (the error names
    /// `tier_extractor`).
    pub fn new(limiter: Limiter<St>) -> Result<Self, ConfigError> {
        TollgateLayer::builder().limiter(limiter).build()
    }
}

impl<St, C> TollgateLayer<St, C> {
    /// The limiter (the engine) the layer decides with: for direct calls on the same buckets.
    pub fn limiter(&self) -> &Limiter<St> {
        &self.shared.limiter
    }

    /// The store the layer decides with.
    pub fn store(&self) -> &St {
        self.shared.limiter.store()
    }

    /// The policies the layer applies now (see [`Limiter::reload`]).
    pub fn policies(&self) -> Arc<Policies> {
        self.shared.limiter.policies()
    }
}

impl<S, St, C> Layer<S> for TollgateLayer<St, C> {
    type Service = Tollgate<S, St, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Tollgate::new(inner, Arc::clone(&self.shared))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Algorithm, FailMode};

    fn err(b: LayerBuilder) -> String {
        b.build().unwrap_err().to_string()
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let ok = || {
            TollgateLayer::builder()
                .capacity(10)
                .period(Duration::from_secs(1))
        };
        assert!(ok().build().is_ok());
        assert!(err(TollgateLayer::builder().period(Duration::from_secs(1))).contains("capacity"));
        assert!(err(TollgateLayer::builder().capacity(1)).contains("period"));
        assert!(err(ok().capacity(0)).contains("capacity"));
        assert!(err(ok().refill(0)).contains("refill"));
        assert!(err(ok().period(Duration::ZERO)).contains("period"));
        assert!(err(ok().timeout(Duration::ZERO)).contains("timeout"));
        assert!(err(ok().key_prefix("")).contains("key_prefix"));
        assert!(err(ok().limit_name("")).contains("limit_name"));
        assert!(err(ok().limit_name("a\"b")).contains("limit_name"));
        let window = || ok().algorithm(Algorithm::FixedWindow);
        assert!(window().build().is_ok());
        assert!(err(window().refill(3)).contains("refill"));
        assert!(err(window().period(Duration::from_micros(1500))).contains("period"));
        assert!(err(ok().local_share(0.0)).contains("local_share"));
        assert!(err(ok().local_share(1.5)).contains("local_share"));
        assert!(err(ok().local_share(f64::NAN)).contains("local_share"));
        assert!(err(ok().max_in_flight(0)).contains("max_in_flight"));
        // A tiered limiter needs a tier extractor: an error, not a panic.
        let tier = |n: u64| {
            Policies::single(crate::Limit::new("l", n, n, Duration::from_secs(1)).unwrap())
        };
        let tiered = Policies::tiered([("free", tier(1)), ("pro", tier(5))]).unwrap();
        let limiter = Limiter::builder().policies(tiered).build().unwrap();
        let error = TollgateLayer::new(limiter).unwrap_err().to_string();
        assert!(error.contains("tier_extractor"), "{error}");
        assert!(
            TollgateLayer::new(
                Limiter::builder()
                    .capacity(1)
                    .period(Duration::from_secs(1))
                    .build()
                    .unwrap()
            )
            .is_ok()
        );
        assert!(
            "sideways"
                .parse::<FailMode>()
                .unwrap_err()
                .to_string()
                .contains("fail_mode")
        );
    }
}
