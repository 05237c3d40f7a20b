//! [`LayerBuilder`]: the layer's HTTP settings, and the engine's or a whole [`Limiter`].

use std::sync::Arc;
use std::time::Duration;

use super::options::Options;
use super::{Reserve, Settings, Shared, TollgateLayer};
use crate::client::{Bypass, ClientExtractor, ClientIp};
use crate::engine::LimiterBuilder;
use crate::policy::Policies;
use crate::store::Store;
use crate::{Algorithm, ConfigError, FailMode, Limiter, MemoryStore};

/// Configures a [`TollgateLayer`]: the HTTP settings (client, cost, response fields,
/// rejections), and either the engine's settings, forwarded to a [`LimiterBuilder`], or a
/// whole [`Limiter`](Self::limiter). Every field is checked by [`LayerBuilder::build`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::{FailMode, TollgateLayer};
///
/// // 10 requests at once, then one more each second, per API key and endpoint.
/// let layer = TollgateLayer::builder()
///     .capacity(10)
///     .refill(10)
///     .period(Duration::from_secs(10))
///     .fail_mode(FailMode::Closed)
///     .build()
///     .expect("valid configuration");
/// # let _ = layer;
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct LayerBuilder<St = MemoryStore, C = ClientIp> {
    engine: Engine<St>,
    /// The first engine setting given here.
    touched: Option<&'static str>,
    /// The first engine setting given beside a whole limiter.
    conflict: Option<&'static str>,
    client: C,
    pub(super) options: Options,
}

/// The engine: settings to build it from, or built.
enum Engine<St> {
    Options(Box<LimiterBuilder<St>>),
    Built(Limiter<St>),
}

impl<St: std::fmt::Debug, C> std::fmt::Debug for LayerBuilder<St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("LayerBuilder");
        match &self.engine {
            Engine::Options(builder) => f.field("limiter", &**builder),
            Engine::Built(limiter) => f.field("limiter", limiter),
        };
        f.field("headers_on_allowed", &self.options.headers_on_allowed)
            .finish_non_exhaustive()
    }
}

/// LayerBuilder methods that set an engine setting on the [`LimiterBuilder`].
macro_rules! engine_settings {
    ($($(#[$doc:meta])* $name:ident($arg:ident: $ty:ty);)*) => {$(
        $(#[$doc])*
        #[doc = concat!("\n\nThe engine's setting: [`LimiterBuilder::", stringify!($name), "`].")]
        pub fn $name(self, $arg: $ty) -> Self {
            self.engine_setting(stringify!($name), |b| b.$name($arg))
        }
    )*};
}

impl<St, C> LayerBuilder<St, C> {
    /// Decides with `limiter` (and charges its buckets): its store, policies, timeout, fail
    /// mode and the rest of the engine's settings, which are then not set here.
    pub fn limiter<T: Store>(self, limiter: Limiter<T>) -> LayerBuilder<T, C> {
        let conflict = match self.engine {
            Engine::Options(_) => self.conflict.or(self.touched),
            Engine::Built(_) => self.conflict.or(Some("limiter")),
        };
        LayerBuilder {
            engine: Engine::Built(limiter),
            touched: self.touched,
            conflict,
            client: self.client,
            options: self.options,
        }
    }

    /// Where buckets are kept: a [`MemoryStore`] unless set, or a
    /// [`RedisStore`](crate::RedisStore) to share limits between instances, or an
    /// [`AnyStore`](crate::store::AnyStore) chosen at run time.
    pub fn store<T: Store>(self, store: T) -> LayerBuilder<T, C> {
        let (engine, conflict) = match self.engine {
            Engine::Options(builder) => (
                Engine::Options(Box::new(builder.store(store))),
                self.conflict,
            ),
            Engine::Built(_) => (
                Engine::Options(Box::new(Limiter::builder().store(store))),
                self.conflict.or(Some("store")),
            ),
        };
        LayerBuilder {
            engine,
            touched: self.touched.or(Some("store")),
            conflict,
            client: self.client,
            options: self.options,
        }
    }

    engine_settings! {
        /// How the single default limit counts (default [`Algorithm::TokenBucket`]).
        algorithm(algorithm: Algorithm);
        /// The most requests that can pass per period, for the single default limit.
        capacity(capacity: u64);
        /// Tokens added back per period (a token bucket); defaults to the capacity.
        refill(refill: u64);
        /// The period over which the refill comes back, or the window.
        period(period: Duration);
        /// Per-route rules and several limits per request.
        policies(policies: Policies);
        /// The longest a store may take to decide (default 50 ms); then the fail mode applies.
        timeout(timeout: Duration);
        /// What a request gets when the store fails (default [`FailMode::Open`]).
        fail_mode(fail_mode: FailMode);
        /// The share of each limit this instance admits on its own with [`FailMode::Local`].
        local_share(share: f64);
        /// The most calls to a remote store under way at once (default 1,024).
        max_in_flight(calls: usize);
        /// Shadow mode for every policy (default off): decide and report, never refuse.
        shadow(enabled: bool);
        /// Clients that are never refused (still decided and reported).
        bypass(bypass: Bypass);
        /// The local deny cache (default on).
        deny_cache(enabled: bool);
        /// The longest the deny cache remembers a denial (default 1 s).
        deny_cache_max(max: Duration);
        /// Whether this layer may share its buckets with another on the same store (default
        /// `false`: refused at build).
        share_buckets(share: bool);
    }

    /// The single limit's name in the `RateLimit` header fields and the bucket keys (default
    /// `default`).
    ///
    /// The engine's setting: [`LimiterBuilder::limit_name`].
    pub fn limit_name(self, name: impl Into<String>) -> Self {
        self.engine_setting("limit_name", |b| b.limit_name(name))
    }

    /// The prefix of every bucket key (default `tollgate`).
    ///
    /// The engine's setting: [`LimiterBuilder::key_prefix`].
    pub fn key_prefix(self, prefix: impl Into<String>) -> Self {
        self.engine_setting("key_prefix", |b| b.key_prefix(prefix))
    }

    fn engine_setting(
        mut self,
        name: &'static str,
        set: impl FnOnce(LimiterBuilder<St>) -> LimiterBuilder<St>,
    ) -> Self {
        self.engine = match self.engine {
            Engine::Options(builder) => {
                self.touched.get_or_insert(name);
                Engine::Options(Box::new(set(*builder)))
            }
            built => {
                self.conflict.get_or_insert(name);
                built
            }
        };
        self
    }

    /// How the client of a request is found: the peer's address
    /// ([`ClientIp::peer`](crate::client::ClientIp::peer)) unless set, or any
    /// [`ClientExtractor`]: [`ClientIp::behind_proxies`](crate::client::ClientIp::behind_proxies),
    /// an API key ([`ApiKey`](crate::client::ApiKey), a value the client chooses: put the
    /// layer after the authentication that checks it), or a closure
    /// ([`client_fn`](crate::client_fn)).
    pub fn client_extractor<T: ClientExtractor>(self, client: T) -> LayerBuilder<St, T> {
        LayerBuilder {
            engine: self.engine,
            touched: self.touched,
            conflict: self.conflict,
            client,
            options: self.options,
        }
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is missing, zero or invalid, or an
    /// engine setting given beside a whole [`limiter`](Self::limiter).
    pub fn build(self) -> Result<TollgateLayer<St, C>, ConfigError>
    where
        St: Store,
    {
        if let Some(field) = self.conflict {
            return Err(ConfigError::Invalid {
                field,
                value: "set beside a limiter".into(),
                reason: "a layer built from a Limiter takes the limiter's settings; set them on Limiter::builder()",
            });
        }
        let limiter = match self.engine {
            Engine::Options(builder) => builder.build()?,
            Engine::Built(limiter) => limiter,
        };
        let options = self.options;
        match (limiter.policies().is_tiered(), options.tier.is_some()) {
            (true, false) => {
                return Err(ConfigError::Missing {
                    field: "tier_extractor",
                });
            }
            (false, true) => {
                return Err(ConfigError::Invalid {
                    field: "tier_extractor",
                    value: "set".into(),
                    reason: "the policies have no tiers: build them with Policies::tiered or \
                             [tiers.<name>] in the file",
                });
            }
            _ => {}
        }
        let reserve = options.settle.map(|settle| Reserve {
            settle: Arc::new(settle),
            settler: Arc::new(limiter.clone()),
        });
        let settings = Settings {
            headers_on_allowed: options.headers_on_allowed,
            legacy_headers: options.legacy_headers,
            body: options.body,
            hook: options.hook,
            cost: options.cost,
            unmatched: options.unmatched,
            reserve,
            tier: options.tier,
        };
        Ok(TollgateLayer {
            shared: Arc::new(Shared {
                limiter,
                client: self.client,
                settings: Arc::new(settings),
            }),
        })
    }
}

impl TollgateLayer {
    /// Starts a builder: an in-memory store, clients named by their address
    /// ([`ClientIp::peer`]: serve axum with `into_make_service_with_connect_info`), fail-open with a
    /// 50 ms timeout. Set either `capacity` and `period` (one limit for every endpoint) or
    /// [`policies`](LayerBuilder::policies), or give a whole [`Limiter`](LayerBuilder::limiter).
    pub fn builder() -> LayerBuilder {
        LayerBuilder {
            engine: Engine::Options(Box::new(Limiter::builder())),
            touched: None,
            conflict: None,
            client: ClientIp::peer(),
            options: Options::new(),
        }
    }
}
