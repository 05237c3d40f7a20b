//! The service's HTTP side, as envoyproxy/ratelimit serves it: `/json` and `/healthcheck` on
//! the main port, `/rlconfig` on the debug port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

use super::{RateLimitService, json};
use crate::store::Store;

/// The most bytes a `/json` request body may have: 1 MiB (a request has a few descriptors).
const MAX_BODY: usize = 1 << 20;

/// Whether the service says it is healthy: until it is told it is shutting down.
#[derive(Debug, Clone, Default)]
pub struct Health {
    stopping: Arc<AtomicBool>,
}

impl Health {
    /// Healthy.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on unhealthy (`SIGTERM`: the load balancer stops sending before the process
    /// stops).
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether healthy.
    pub fn is_healthy(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst)
    }
}

/// `/json` (any method: a `RateLimitRequest` in protobuf JSON; `200` with the response,
/// `429` when over the limit, `400` `Bad Request` for a body that is not a request or a
/// request the service refuses) and `/healthcheck` (`200 OK`, or `500` once stopping).
pub fn router<St: Store>(service: RateLimitService<St>, health: Health) -> Router {
    Router::new()
        .route(
            "/json",
            any(move |body: Bytes| {
                let service = service.clone();
                async move { decide(&service, &body).await }
            }),
        )
        .route(
            "/healthcheck",
            get(move || {
                let healthy = health.is_healthy();
                async move {
                    match healthy {
                        true => (StatusCode::OK, "OK").into_response(),
                        false => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// `/rlconfig`: every limit of the configuration in force, a line each.
pub fn debug_router<St: Store>(service: RateLimitService<St>) -> Router {
    Router::new().route(
        "/rlconfig",
        get(move || {
            let dump = service.config().map(|c| c.dump()).unwrap_or_default();
            async move { dump }
        }),
    )
}

async fn decide<St: Store>(service: &RateLimitService<St>, body: &[u8]) -> Response {
    let bad = || {
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Bad Request\n",
        )
            .into_response()
    };
    let Some(request) = json::request(body) else {
        return bad();
    };
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Ok(response) = service.decide(&request, now_s).await else {
        return bad();
    };
    let status = match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => StatusCode::OK,
        Ok(Code::OverLimit) => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json::response(&response),
    )
        .into_response()
}
