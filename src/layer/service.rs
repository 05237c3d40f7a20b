//! [`RateLimit`]: the middleware service.

use std::borrow::Cow;
use std::cell::LazyCell;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower_service::Service;

use super::{ResponseFuture, Shared};
use crate::Refusal;
use crate::client::ClientExtractor;
use crate::engine::Flags;
use crate::key::{Endpoint, key_method, request_path, route_template, with_subject_key};
use crate::reserve::{After, Reservation, Settling};
use crate::response::{Answer, ResponseBody, is_grpc};
use crate::store::Store;
use crate::telemetry::Outcome as Counted;

/// Rate-limits the requests to `S`; made by [`TollgateLayer`](crate::TollgateLayer).
///
/// Readiness is the inner service's: the limit never holds a request back in `poll_ready`.
/// `call` finds the client, endpoint and cost, asks the [`Limiter`](crate::Limiter), and then
/// forwards the request to the service that was made ready, or answers itself (`429`, `413`,
/// `400`, or `503` when the store fails closed).
pub struct Tollgate<S, St, C> {
    inner: S,
    shared: Arc<Shared<St, C>>,
}

impl<S, St, C> Tollgate<S, St, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St, C>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St, C> Clone for Tollgate<S, St, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug, St, C> std::fmt::Debug for Tollgate<S, St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tollgate")
            .field("inner", &self.inner)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// A limited gRPC service keeps its name, so
/// `Server::builder().add_service(layer.layer(GreeterServer::new(..)))` works.
#[cfg(feature = "grpc")]
impl<S, St, C> tonic::server::NamedService for Tollgate<S, St, C>
where
    S: tonic::server::NamedService,
{
    const NAME: &'static str = S::NAME;
}

impl<S, St, C, ReqBody, ResBody> Service<Request<ReqBody>> for Tollgate<S, St, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: Store,
    C: ClientExtractor,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, St::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Call the service that was made ready, leave a clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = &self.shared.settings;
        let limiter = &self.shared.limiter;
        // The generation in force, held by the response future to its end.
        let core = limiter.core();
        let (mut parts, body) = request.into_parts();
        // Normalized only when a rule or the key needs it.
        let path = LazyCell::new(|| request_path(&parts));
        // The request's group of policies: the only one, or its tier's.
        let group = match &settings.tier {
            None => core.policies.group(None),
            Some(extractor) => {
                let group = extractor.tier(&parts).and_then(|tier| {
                    core.policies
                        .group(Some(tier))
                        .map(Some)
                        .ok_or_else(|| Refusal::new(StatusCode::FORBIDDEN, "unknown tier"))
                });
                match group {
                    Ok(group) => group,
                    Err(rejection) => {
                        let answer = Answer::NoTier(rejection);
                        return ResponseFuture::answered(
                            Arc::clone(settings),
                            core,
                            usize::MAX,
                            is_grpc(&parts.headers),
                            answer,
                        );
                    }
                }
            }
        };
        let normalized = &path;
        let found = group.and_then(|g| core.policies.find_in(g, &parts.method, move || normalized));
        let Some(index) = found else {
            // No rule matches and there is no default: not limited.
            let future = inner.call(Request::from_parts(parts, body));
            return ResponseFuture::unlimited(Arc::clone(settings), core, future);
        };
        let policy = core.policies.entry(index);
        let answer = |answer| {
            let grpc = is_grpc(&parts.headers);
            ResponseFuture::answered(Arc::clone(settings), Arc::clone(&core), index, grpc, answer)
        };
        let (client, cost) = match (
            self.shared.client.extract(&parts),
            settings.cost.cost(&parts),
        ) {
            (Ok(client), Ok(cost)) => (client, cost),
            (client, cost) => {
                // A bypassed client is never refused, not even for a cost we cannot read.
                let bypassed = client.as_ref().is_ok_and(|id| core.is_bypassed(id));
                let flags = core.flags(index, false);
                if flags.shadow || bypassed {
                    // In shadow mode nothing is refused, not even a request we cannot decide.
                    tracing::debug!(
                        policy = policy.name(),
                        "shadow mode or a bypassed client: undecidable request passes"
                    );
                    let future = inner.call(Request::from_parts(parts, body));
                    return ResponseFuture::unlimited(
                        Arc::clone(settings),
                        Arc::clone(&core),
                        future,
                    );
                }
                return match (client, cost) {
                    (Err(missing), _) => {
                        core.telemetry
                            .decision(index, Counted::MissingIdentity, false);
                        answer(Answer::MissingClient(missing))
                    }
                    (_, Err(invalid)) => answer(Answer::InvalidCost(invalid)),
                    (Ok(_), Ok(_)) => unreachable!("both were found above"),
                };
            }
        };
        let bypassed = core.is_bypassed(&client);
        // A request whose reservation is settled gets a receipt.
        let flags = Flags {
            receipt: settings.reserve.is_some(),
            ..core.flags(index, bypassed)
        };
        let unmatched;
        let endpoint = match (&policy.rule, route_template(&parts)) {
            (Some(rule), _) => Endpoint::Rule(rule),
            (None, Some(template)) => Endpoint::Route {
                method: key_method(&parts.method),
                path: template,
            },
            (None, None) => {
                unmatched = settings.unmatched.endpoint(&path);
                Endpoint::Route {
                    method: key_method(&parts.method),
                    path: &unmatched,
                }
            }
        };
        // The key is copied out of the thread's buffer only where it is kept.
        let client = client.as_bytes();
        let deciding = with_subject_key(&core.prefixes[index], client, endpoint, |key| {
            limiter.start(&core, index, Cow::Borrowed(key), cost, flags, Store::decide)
        });
        let after = settings.reserve.as_ref().map(|reserve| {
            let reservation = Reservation::new(cost);
            parts.extensions.insert(reservation.clone());
            Box::new(After {
                settling: Some(Settling::new(
                    Arc::clone(&reserve.settler),
                    Arc::clone(&reserve.settle),
                    reservation,
                )),
                in_flight: None,
            })
        });
        ResponseFuture::limited(
            Arc::clone(settings),
            core,
            index,
            deciding,
            inner,
            Request::from_parts(parts, body),
            after,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Pending, Ready, pending, ready};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, Service, ServiceExt};

    use crate::store::Store;
    use crate::{Decision, FailMode, Limit, StoreError, TollgateLayer};

    type Body = Full<Bytes>;

    fn request(path: &str) -> Request<Body> {
        Request::get(path)
            .header("x-api-key", "k")
            .body(Body::default())
            .unwrap()
    }

    /// An inner service that must be made ready before each call, as tower requires. A clone
    /// is not ready: calling it instead of the service made ready panics.
    #[derive(Default)]
    struct MustBeReady {
        ready: bool,
    }

    impl Clone for MustBeReady {
        fn clone(&self) -> Self {
            Self { ready: false }
        }
    }

    impl Service<Request<Body>> for MustBeReady {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            self.ready = true;
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            assert!(self.ready, "called without poll_ready");
            self.ready = false;
            ready(Ok(Response::new(Body::from("inner"))))
        }
    }

    fn layer() -> crate::LayerBuilder<crate::MemoryStore, crate::ApiKey> {
        TollgateLayer::builder()
            .client_extractor(crate::ApiKey::default())
            .capacity(2)
            .period(Duration::from_secs(60))
    }

    async fn body(response: Response<crate::ResponseBody<Body>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn calls_the_service_that_was_made_ready_and_never_holds_readiness() {
        let mut svc = layer().build().unwrap().layer(MustBeReady::default());
        for expected in [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            // Readiness is the inner service's even when the bucket is empty.
            let ready = svc.ready().await.unwrap();
            let response = ready.call(request("/")).await.unwrap();
            assert_eq!(response.status(), expected);
        }
    }

    #[tokio::test]
    async fn without_a_route_template_paths_share_a_bucket_unless_asked_otherwise() {
        // Capacity 2 per client and endpoint.
        let statuses = |paths: crate::key::UnmatchedPaths, sent: &'static [&'static str]| {
            let svc = layer()
                .unmatched_paths(paths)
                .build()
                .unwrap()
                .layer(MustBeReady::default());
            async move {
                let mut statuses = Vec::new();
                for path in sent {
                    let response = svc.clone().oneshot(request(path)).await.unwrap();
                    statuses.push(response.status().as_u16());
                }
                statuses
            }
        };
        let sent = &["/users/1", "/users/1", "/users/2", "/users/3"];
        // The default: made-up paths do not multiply the budget.
        assert_eq!(
            statuses(Default::default(), sent).await,
            [200, 200, 429, 429]
        );
        // Per path, when asked for.
        let per_path = statuses(crate::key::UnmatchedPaths::PerPath, sent).await;
        assert_eq!(per_path, [200, 200, 200, 200]);
        let more = &["/users/1", "/users/1", "/users/1"];
        assert_eq!(
            statuses(crate::key::UnmatchedPaths::PerPath, more).await,
            [200, 200, 429]
        );
        // Named by a function: /users/* is one endpoint, anything else shares another.
        let users = crate::key::UnmatchedPaths::normalize(|p| {
            p.starts_with("/users/").then(|| "/users/*".to_owned())
        });
        let mixed = &["/users/1", "/users/2", "/users/3", "/x", "/y", "/z"];
        assert_eq!(statuses(users, mixed).await, [200, 200, 429, 200, 200, 429]);
    }

    /// A store that fails at once.
    struct Failing;
    impl Store for Failing {
        type Future = Ready<Result<Decision, StoreError>>;
        fn decide(&self, _: &str, _: &Arc<[Limit]>, _: u64) -> Self::Future {
            ready(Err(StoreError::Other("store is down".into())))
        }
    }

    /// A store that never answers, like a hung Redis.
    #[derive(Default)]
    struct Hanging {
        /// Told of each call as it is made, for a test to await.
        asked: Option<tokio::sync::mpsc::UnboundedSender<()>>,
    }

    impl Hanging {
        /// A store that hangs, and the calls made to it, one message each.
        fn told() -> (Self, tokio::sync::mpsc::UnboundedReceiver<()>) {
            let (asked, calls) = tokio::sync::mpsc::unbounded_channel();
            (Self { asked: Some(asked) }, calls)
        }
    }

    impl Store for Hanging {
        type Future = Pending<Result<Decision, StoreError>>;
        fn decide(&self, _: &str, _: &Arc<[Limit]>, _: u64) -> Self::Future {
            if let Some(asked) = &self.asked {
                let _ = asked.send(());
            }
            pending()
        }
    }

    async fn answer<St: Store>(
        store: St,
        fail_mode: FailMode,
    ) -> Response<crate::ResponseBody<Body>> {
        layer()
            .store(store)
            .fail_mode(fail_mode)
            .build()
            .unwrap()
            .layer(MustBeReady::default())
            .oneshot(request("/"))
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn fail_modes_apply_to_errors_and_to_timeouts() {
        let response = answer(Failing, FailMode::Open).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit").is_none());
        assert_eq!(body(response).await, "inner");

        let response = answer(Failing, FailMode::Closed).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(
            body(response).await,
            r#"{"error":"rate limiter unavailable"}"#
        );

        let start = tokio::time::Instant::now();
        let response = answer(Hanging::default(), FailMode::Open).await;
        assert_eq!(start.elapsed(), crate::engine::DEFAULT_TIMEOUT);
        assert_eq!(body(response).await, "inner");

        let response = answer(Hanging::default(), FailMode::Closed).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test(start_paused = true)]
    async fn local_fail_mode_decides_with_a_share_of_each_limit() {
        // Capacity 4, two instances: each admits 2 on its own while the store fails.
        let local = || {
            TollgateLayer::builder()
                .client_extractor(crate::ApiKey::default())
                .capacity(4)
                .period(Duration::from_secs(60))
                .store(Failing)
                .fail_mode(FailMode::Local)
                .local_share(0.5)
        };
        let svc = local().build().unwrap().layer(MustBeReady::default());
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let response = svc.clone().oneshot(request("/")).await.unwrap();
            statuses.push((
                response.status(),
                response.headers().get("ratelimit").cloned(),
            ));
        }
        assert_eq!(
            statuses,
            [
                (StatusCode::OK, Some("\"default\";r=1".parse().unwrap())),
                (
                    StatusCode::OK,
                    Some("\"default\";r=0;t=30".parse().unwrap())
                ),
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Some("\"default\";r=0;t=30".parse().unwrap())
                ),
            ]
        );
        // The policy field still names the configured limit.
        let response = svc.clone().oneshot(request("/")).await.unwrap();
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"default\";q=4;w=60"
        );
        // A cost above the local share (3 of 2) cannot pass until the store is back: 503, not
        // a 429 with a wait that means nothing.
        let svc = local()
            .cost_extractor(crate::cost::HeaderCost::default())
            .build()
            .unwrap()
            .layer(MustBeReady::default());
        let mut costly = request("/");
        costly
            .headers_mut()
            .insert("x-ratelimit-cost", http::HeaderValue::from_static("3"));
        let response = svc.oneshot(costly).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
    }

    /// A store that answers with an error of its own, counting its calls.
    #[derive(Clone, Default)]
    struct Refusing(Arc<std::sync::atomic::AtomicUsize>);
    impl Store for Refusing {
        type Future = Ready<Result<Decision, StoreError>>;
        fn decide(&self, _: &str, _: &Arc<[Limit]>, _: u64) -> Self::Future {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ready(Err(StoreError::Reply("WRONGTYPE".into())))
        }
    }

    #[tokio::test]
    async fn a_store_that_answers_with_errors_does_not_open_the_breaker() {
        let store = Refusing::default();
        let svc = layer()
            .store(store.clone())
            .build()
            .unwrap()
            .layer(MustBeReady::default());
        for _ in 0..20 {
            svc.clone().oneshot(request("/")).await.unwrap();
        }
        // Every request asked the store: it is up, only its answers are wrong.
        assert_eq!(store.0.load(std::sync::atomic::Ordering::Relaxed), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_keeps_failing_is_not_waited_for() {
        let (store, mut asked) = Hanging::told();
        let svc = layer()
            .store(store)
            .fail_mode(FailMode::Closed)
            .build()
            .unwrap()
            .layer(MustBeReady::default());
        let timed = |svc: crate::Tollgate<MustBeReady, Hanging, crate::ApiKey>| async move {
            let start = tokio::time::Instant::now();
            let response = svc.oneshot(request("/")).await.unwrap();
            (response.status(), start.elapsed())
        };
        // Each of the first calls waits for the timeout...
        for _ in 0..crate::resilience::breaker::OPEN_AFTER {
            let (status, took) = timed(svc.clone()).await;
            assert_eq!(
                (status, took),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    crate::engine::DEFAULT_TIMEOUT
                )
            );
        }
        // ...then the breaker is open: the fail mode answers at once.
        let (status, took) = timed(svc.clone()).await;
        assert_eq!(
            (status, took),
            (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO)
        );
        // After the probe interval one request probes the store (and waits), the others don't.
        tokio::time::advance(Duration::from_millis(
            crate::resilience::breaker::PROBE_EVERY_MS,
        ))
        .await;
        let probe = tokio::spawn(timed(svc.clone()));
        // Drain the earlier calls' messages, then wait for the probe's.
        while asked.try_recv().is_ok() {}
        asked.recv().await.unwrap();
        let (_, took) = timed(svc.clone()).await;
        assert_eq!(took, Duration::ZERO);
        assert_eq!(probe.await.unwrap().1, crate::engine::DEFAULT_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_are_bounded() {
        let (store, mut asked) = Hanging::told();
        let svc = layer()
            .store(store)
            .max_in_flight(2)
            .build()
            .unwrap()
            .layer(MustBeReady::default());
        let waiting: Vec<_> = (0..2)
            .map(|_| tokio::spawn(svc.clone().oneshot(request("/"))))
            .collect();
        // Both are waiting for the store.
        asked.recv().await.unwrap();
        asked.recv().await.unwrap();
        // Two calls wait for the store; a third is not sent and fails open at once.
        let start = tokio::time::Instant::now();
        let response = svc.clone().oneshot(request("/")).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(body(response).await, "inner");
        for call in waiting {
            assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        assert_eq!(start.elapsed(), crate::engine::DEFAULT_TIMEOUT);
    }

    #[tokio::test]
    async fn bypassed_clients_are_never_refused_not_even_for_their_cost() {
        let svc = layer()
            .cost_extractor(crate::cost::HeaderCost::default())
            .bypass(crate::client::Bypass::new().key("batch"))
            .build()
            .unwrap()
            .layer(MustBeReady::default());
        let costing = |key: &str, cost: &str| {
            Request::get("/")
                .header("x-api-key", key)
                .header("x-ratelimit-cost", cost)
                .body(Body::default())
                .unwrap()
        };
        // Capacity 2: a cost of 3 can never pass, but a bypassed client is not refused.
        let response = svc.clone().oneshot(costing("batch", "3")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = svc.clone().oneshot(costing("k", "3")).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Nor for a cost it cannot read, which others get a 400 for.
        let response = svc.clone().oneshot(costing("batch", "lots")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = svc.clone().oneshot(costing("k", "lots")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    /// A custom store that cannot be reached (or that answers with an error).
    struct Down(fn() -> StoreError);
    impl Store for Down {
        type Future = Ready<Result<Decision, StoreError>>;
        fn decide(&self, _: &str, _: &Arc<[Limit]>, _: u64) -> Self::Future {
            ready(Err((self.0)()))
        }
    }

    #[tokio::test]
    async fn a_custom_store_can_say_it_is_unreachable_and_open_the_breaker() {
        let kinds = |error: fn() -> StoreError| async move {
            let limiter = crate::Limiter::builder()
                .store(Down(error))
                .capacity(5)
                .period(Duration::from_secs(60))
                .build()
                .unwrap();
            let subject = limiter
                .subject("k", crate::Target::route(&http::Method::GET, "/"))
                .unwrap();
            let mut kinds = Vec::new();
            for _ in 0..crate::resilience::breaker::OPEN_AFTER + 1 {
                match limiter.take(&subject, 1).await.into_verdict() {
                    crate::Verdict::FailedOpen(error) => kinds.push(error.kind()),
                    other => panic!("{other:?}"),
                }
            }
            kinds
        };
        let unreachable = || StoreError::Unavailable("no route to the store".into());
        let mut expected = vec!["connection"; crate::resilience::breaker::OPEN_AFTER as usize];
        expected.push("circuit_open");
        assert_eq!(kinds(unreachable).await, expected);
        // An error the store answered with says it is up: never opens the breaker.
        let answered = || StoreError::Other("bad data".into());
        let kinds = kinds(answered).await;
        assert!(kinds.iter().all(|&k| k == "other"), "{kinds:?}");
    }

    /// The clock is paused: it moves only when the test advances it.
    #[tokio::test(start_paused = true)]
    async fn a_lasting_outage_warns_once_a_second_not_once_a_request() {
        let log = crate::testing::ThreadLog::start();
        let svc = layer()
            .store(Failing)
            .build()
            .unwrap()
            .layer(MustBeReady::default());
        let warnings = || {
            let text = log.text();
            text.lines()
                .filter(|l| l.contains("WARN"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        for _ in 0..1000 {
            svc.clone().oneshot(request("/")).await.unwrap();
        }
        // 1000 failures within one instant: the first is logged, the rest counted.
        let first = warnings();
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(
            first[0].contains("store is down")
                && first[0].contains("fail_mode=\"open\"")
                && first[0].contains("suppressed=0"),
            "{first:?}"
        );
        // Just under a second later: still quiet.
        tokio::time::advance(Duration::from_millis(999)).await;
        svc.clone().oneshot(request("/")).await.unwrap();
        assert_eq!(warnings().len(), 1);
        // A second after the first warning: one more, counting the 1000 it did not log.
        tokio::time::advance(Duration::from_millis(1)).await;
        svc.clone().oneshot(request("/")).await.unwrap();
        let all = warnings();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all[1].contains("suppressed=1000"), "{all:?}");
    }
}
