#![doc = include_str!("../README.md")]
#![deny(missing_docs, unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod algorithm;
mod client;
mod cost;
mod engine;
#[cfg(feature = "rls")]
pub mod envoy;
mod error;
mod key;
mod layer;
mod lease;
mod limit;
mod policy;
mod reserve;
mod resilience;
mod response;
pub mod store;
mod sync;
mod telemetry;
#[cfg(test)]
mod testing;
#[cfg(feature = "watch")]
mod watch;

pub use client::{ApiKey, Bypass, ClientExtractor, ClientId, ClientIp, client_fn};
pub use cost::{BodyCost, BodyCostLayer, CostExtractor, HeaderCost, RequestCost};
pub use engine::{
    DecidedBy, Limiter, LimiterBuilder, Outcome, Receipt, Subject, SubjectError, Target, Verdict,
};
pub use error::{ConfigError, StoreError};
pub use layer::{LayerBuilder, ResponseFuture, Tollgate, TollgateLayer};
pub use limit::{Algorithm, Decision, Limit};
pub use policy::{Policies, PoliciesBuilder, Rule, Tier, TierExtractor, tier_fn};
pub use reserve::Reservation;
pub use resilience::FailMode;
pub use response::{Refusal, Rejection, RejectionKind, ResponseBody};
pub use store::MemoryStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
#[cfg(feature = "watch")]
pub use watch::PolicyWatcher;
