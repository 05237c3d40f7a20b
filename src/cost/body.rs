//! A cost estimated from the request body: [`BodyCostLayer`], which reads at most a set number
//! of bytes, asks a closure for the cost, and passes the same bytes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::Refusal;
use crate::response::{ResponseBody, error_json};

/// The cost of a request as a layer before the rate limit found it, in the request's
/// extensions: what [`BodyCostLayer`] puts there, and what the rate limit reads when it has no
/// [cost extractor](crate::LayerBuilder::cost_extractor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCost(pub u64);

/// The estimate of [`BodyCostLayer`].
type Estimate = dyn Fn(&Parts, &Bytes) -> Result<u64, Refusal> + Send + Sync;

/// Estimates each request's cost from its body, for the rate limit after it: say, the
/// `max_tokens` of a JSON completion request.
///
/// It reads the body, at most `max_bytes` of it, asks `estimate` for the cost, puts it in the
/// request's extensions as a [`RequestCost`], and passes the same bytes on as the body. A body
/// longer than `max_bytes` is answered `413 Content Too Large`, one that cannot be read (the
/// client went away) or that `estimate` refuses `400 Bad Request`, each with a JSON
/// `{"error": "..."}`; the service behind is not called. Memory: at most `max_bytes` per
/// request in flight; time: the server's own read timeouts bound a slow client.
///
/// Put it before (outside) the rate limit, which reads the cost unless it was given another
/// [cost extractor](crate::LayerBuilder::cost_extractor):
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::post};
/// use tollgate::TollgateLayer;
/// use tollgate::{BodyCostLayer, Refusal};
///
/// # fn main() -> Result<(), tollgate::ConfigError> {
/// let limit = TollgateLayer::builder()
///     .capacity(10_000)
///     .period(Duration::from_secs(60))
///     .build()?;
/// // The body's digits, as a stand-in for a JSON parser's `max_tokens`.
/// let estimate = BodyCostLayer::new(64 * 1024, |_, body| {
///     std::str::from_utf8(body)
///         .ok()
///         .and_then(|text| text.trim().parse().ok())
///         .ok_or_else(|| Refusal::bad_request("the body must be a number of tokens"))
/// });
/// let app: Router = Router::new()
///     .route("/v1/completions", post(|body: String| async move { body }))
///     .layer(limit)
///     .layer(estimate);
/// # Ok(())
/// # }
/// ```
pub struct BodyCostLayer {
    max_bytes: usize,
    estimate: Arc<Estimate>,
}

impl BodyCostLayer {
    /// Reads at most `max_bytes` of each body and asks `estimate` for the cost (0 counts as 1).
    pub fn new<F>(max_bytes: usize, estimate: F) -> Self
    where
        F: Fn(&Parts, &Bytes) -> Result<u64, Refusal> + Send + Sync + 'static,
    {
        Self {
            max_bytes,
            estimate: Arc::new(estimate),
        }
    }
}

impl Clone for BodyCostLayer {
    fn clone(&self) -> Self {
        Self {
            max_bytes: self.max_bytes,
            estimate: Arc::clone(&self.estimate),
        }
    }
}

impl std::fmt::Debug for BodyCostLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCostLayer")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for BodyCostLayer {
    type Service = BodyCost<S>;

    fn layer(&self, inner: S) -> BodyCost<S> {
        BodyCost {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`BodyCostLayer`].
#[derive(Clone)]
pub struct BodyCost<S> {
    inner: S,
    layer: BodyCostLayer,
}

impl<S: std::fmt::Debug> std::fmt::Debug for BodyCost<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCost")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// The future of [`BodyCost`]: the body is read first, so it is boxed.
type BodyCostFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for BodyCost<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BodyCostFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Call the service that was made ready, leave a clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let max = layer.max_bytes;
            let bytes = match Limited::new(body, max).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) if error.is::<LengthLimitError>() => {
                    let message = format!("the request body is larger than {max} bytes");
                    return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, &message));
                }
                Err(_) => {
                    let message = "the request body could not be read";
                    return Ok(answer(StatusCode::BAD_REQUEST, message));
                }
            };
            match (layer.estimate)(&parts, &bytes) {
                Ok(cost) => {
                    parts.extensions.insert(RequestCost(cost.max(1)));
                }
                Err(invalid) => return Ok(answer(StatusCode::BAD_REQUEST, invalid.message())),
            }
            let response = inner
                .call(Request::from_parts(parts, B::from(bytes)))
                .await?;
            Ok(response.map(ResponseBody::inner))
        })
    }
}

/// `status` with `{"error": message}`.
fn answer<B>(status: StatusCode, message: &str) -> Response<ResponseBody<B>> {
    let body = error_json("{", message);
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
