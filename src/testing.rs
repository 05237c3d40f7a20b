//! What the unit tests share.

use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, RngSeed};

/// The seed every property test uses unless `PROPTEST_RNG_SEED` says otherwise, so that a run
/// of the suite (and CI) is the same run every time.
const SEED: u64 = 0x7011_6a7e;

/// Property tests' settings: a fixed seed (`PROPTEST_RNG_SEED=<n>` picks another, and
/// `scripts/explore.sh` draws fresh ones with many cases), `PROPTEST_CASES` as proptest reads
/// it, and every case ever found failing kept in `proptest-regressions/` beside the sources,
/// checked in and replayed first on every run.
pub(crate) fn proptest_config() -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}

/// A byte a header value may hold: tab, visible ASCII and space, or any byte from 0x80, each
/// about as often as in `any::<u8>()`. Drawn from ranges, not filtered: a filter's rejects add
/// up to proptest's limit of local rejects in long runs.
pub(crate) fn header_value_byte() -> impl proptest::strategy::Strategy<Value = u8> + Clone {
    use proptest::prelude::*;
    prop_oneof![
        1 => Just(b'\t'),
        95 => 0x20u8..0x7f,
        128 => 0x80u8..=0xff,
    ]
}

/// The header fields [`answer`] reads, in order.
pub(crate) const ANSWER_FIELDS: [&str; 6] = [
    "content-type",
    "retry-after",
    "ratelimit-policy",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
];

/// Sends `request` through `layer` around a service that answers `inner`, and returns the
/// status, the [`ANSWER_FIELDS`] (`""` when absent) and the body.
pub(crate) async fn answer<C: crate::ClientExtractor>(
    layer: crate::RateLimitLayer<crate::MemoryStore, C>,
    request: http::Request<()>,
) -> (http::StatusCode, Vec<String>, String) {
    use http_body_util::BodyExt as _;
    use tower::{Layer as _, ServiceExt as _};
    let inner = tower::service_fn(|_: http::Request<()>| async {
        let body = http_body_util::Full::<bytes::Bytes>::from("inner");
        Ok::<_, std::convert::Infallible>(http::Response::new(body))
    });
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    let status = response.status();
    let fields = ANSWER_FIELDS
        .iter()
        .map(|name| {
            response
                .headers()
                .get(*name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        })
        .collect();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, fields, String::from_utf8(body.to_vec()).unwrap())
}

/// The status `layer` answers `request` with.
pub(crate) async fn status<C: crate::ClientExtractor>(
    layer: &crate::RateLimitLayer<crate::MemoryStore, C>,
    request: http::Request<()>,
) -> http::StatusCode {
    answer(layer.clone(), request).await.0
}
