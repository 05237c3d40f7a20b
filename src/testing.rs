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

/// What `tracing` wrote on this thread since [`ThreadLog::start`]: a process-wide subscriber
/// that writes each thread's lines to that thread's buffer. (A subscriber set per test with
/// `set_default` races: tracing caches per call site whether anyone listens, and a test on
/// another thread, with no subscriber, may decide that for everyone.)
pub(crate) struct ThreadLog(());

thread_local! {
    static LINES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LINES.with(|lines| lines.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ThreadLog {
    /// Installs the subscriber (once per process) and empties this thread's buffer.
    pub(crate) fn start() -> Self {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        });
        LINES.with(|lines| lines.borrow_mut().clear());
        Self(())
    }

    /// What was written on this thread since the start.
    pub(crate) fn text(&self) -> String {
        LINES.with(|lines| String::from_utf8_lossy(&lines.borrow()).into_owned())
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
    layer: crate::TollgateLayer<crate::MemoryStore, C>,
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
    layer: &crate::TollgateLayer<crate::MemoryStore, C>,
    request: http::Request<()>,
) -> http::StatusCode {
    answer(layer.clone(), request).await.0
}
