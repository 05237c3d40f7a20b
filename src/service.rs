//! [`RateLimit`]: the middleware service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::ResponseFuture;
use crate::key::{ClientExtractor, bucket_key, endpoint_path};
use crate::layer::Shared;
use crate::response::ResponseBody;
use crate::store::Store;

/// Rate-limits the requests to `S`; made by [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Readiness is the inner service's: the limit never holds a request back in `poll_ready`.
/// `call` finds the client and endpoint, asks the store, and then forwards the request to the
/// service that was made ready, or answers itself (`429`, `400`, or `503` when the store fails
/// closed).
pub struct RateLimit<S, St, C> {
    inner: S,
    shared: Arc<Shared<St, C>>,
}

impl<S, St, C> RateLimit<S, St, C> {
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

impl<S: Clone, St, C> Clone for RateLimit<S, St, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug, St, C> std::fmt::Debug for RateLimit<S, St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<S, St, C, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St, C>
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
        let inner = std::mem::replace(&mut self.inner, clone);
        let policy = &self.shared.policy;
        let (parts, body) = request.into_parts();
        let key = match self.shared.client.extract(&parts) {
            Ok(client) => bucket_key(
                &policy.key_prefix,
                &client,
                parts.method.as_str(),
                endpoint_path(&parts),
                policy.limit.name(),
            ),
            Err(missing) => return ResponseFuture::missing_client(Arc::clone(policy), missing),
        };
        let decision = self.shared.store.decide(key, &policy.limit, 1);
        ResponseFuture::deciding(
            Arc::clone(policy),
            decision,
            inner,
            Request::from_parts(parts, body),
        )
    }
}
