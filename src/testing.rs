//! What the unit tests share.

use proptest::test_runner::Config as ProptestConfig;

/// Property tests' settings: the default number of cases, and no regression files written next
/// to the sources.
pub(crate) fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
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
