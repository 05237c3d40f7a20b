//! [`ResponseFuture`]: waits for the store's decision, then for the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::key::MissingClient;
use crate::layer::Policy;
use crate::response::{self, ResponseBody};
use crate::{Decision, FailMode, StoreError};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqBody, D>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, D>,
        policy: Arc<Policy>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, D>
    where
        S: Service<Request<ReqBody>>,
    {
        // Waiting for the store, at most the policy's timeout.
        Deciding {
            #[pin]
            decision: D,
            // Started when the decision is first pending, so a store that answers at once
            // (the memory store) never arms a timer.
            #[pin]
            deadline: Option<Sleep>,
            inner: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        // Forwarded; `ratelimit` is the `RateLimit` field to add to the response.
        Calling {
            #[pin]
            future: S::Future,
            ratelimit: Option<HeaderValue>,
        },
        // Answered by the layer.
        Answered {
            rejection: Option<Rejection>,
        },
    }
}

enum Rejection {
    Limited(Decision),
    MissingClient(MissingClient),
    Unavailable,
}

impl<S, ReqBody, D> ResponseFuture<S, ReqBody, D>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn deciding(
        policy: Arc<Policy>,
        decision: D,
        inner: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Deciding {
                decision,
                deadline: None,
                inner: Some(inner),
                request: Some(request),
            },
            policy,
        }
    }

    pub(crate) fn missing_client(policy: Arc<Policy>, missing: MissingClient) -> Self {
        Self {
            state: State::Answered {
                rejection: Some(Rejection::MissingClient(missing)),
            },
            policy,
        }
    }
}

impl<S, ReqBody, ResBody, D> Future for ResponseFuture<S, ReqBody, D>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    D: Future<Output = Result<Decision, StoreError>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let policy: &Policy = this.policy;
        loop {
            let next =
                match this.state.as_mut().project() {
                    StateProj::Deciding {
                        decision,
                        mut deadline,
                        inner,
                        request,
                    } => {
                        let outcome = match decision.poll(cx) {
                            Poll::Ready(outcome) => outcome,
                            Poll::Pending => {
                                if deadline.is_none() {
                                    deadline.set(Some(tokio::time::sleep(policy.timeout)));
                                }
                                let sleep = deadline.as_pin_mut().expect("deadline was just set");
                                ready!(sleep.poll(cx));
                                Err(StoreError::Timeout(policy.timeout))
                            }
                        };
                        let mut forward = |ratelimit| {
                            let mut inner = inner.take().expect("the service is called once");
                            let request = request.take().expect("the request is sent once");
                            State::Calling {
                                future: inner.call(request),
                                ratelimit,
                            }
                        };
                        match outcome {
                            Ok(decision) => {
                                policy.outage.answered();
                                if decision.allowed {
                                    forward(policy.headers_on_allowed.then(|| {
                                        response::ratelimit_value(&policy.limit, &decision)
                                    }))
                                } else {
                                    State::Answered {
                                        rejection: Some(Rejection::Limited(decision)),
                                    }
                                }
                            }
                            Err(error) => {
                                policy.outage.failed(&error, policy.fail_mode);
                                match policy.fail_mode {
                                    FailMode::Open => forward(None),
                                    FailMode::Closed => State::Answered {
                                        rejection: Some(Rejection::Unavailable),
                                    },
                                }
                            }
                        }
                    }
                    StateProj::Calling { future, ratelimit } => {
                        let mut response = ready!(future.poll(cx))?;
                        if let Some(ratelimit) = ratelimit.take() {
                            response::insert_ratelimit(
                                response.headers_mut(),
                                policy.policy_header.clone(),
                                ratelimit,
                            );
                        }
                        return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                    }
                    StateProj::Answered { rejection } => {
                        let response = match rejection.take().expect("polled after completion") {
                            Rejection::Limited(decision) => response::too_many_requests(
                                &policy.limit,
                                &policy.policy_header,
                                &decision,
                            ),
                            Rejection::MissingClient(missing) => {
                                response::bad_request(missing.message())
                            }
                            Rejection::Unavailable => response::unavailable(),
                        };
                        return Poll::Ready(Ok(response));
                    }
                };
            this.state.set(next);
        }
    }
}
