//! [`ResponseFuture`]: waits for the store's decision, then for the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::layer::Settings;
use crate::response::{self, Answer, ResponseBody};
use crate::service::policy_name;
use crate::{Decision, FailMode, StoreError};

/// How a decided request is handled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flags {
    /// Report, never refuse.
    pub(crate) shadow: bool,
    /// Answer the gRPC way.
    pub(crate) grpc: bool,
}

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqBody, D>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, D>,
        settings: Arc<Settings>,
        // The request's policy, when it has one.
        policy: usize,
        flags: Flags,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, D>
    where
        S: Service<Request<ReqBody>>,
    {
        // Waiting for the store, at most the timeout.
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
        // Forwarded; `decision` is reported in the response's fields.
        Calling {
            #[pin]
            future: S::Future,
            decision: Option<Decision>,
        },
        // Answered by the layer.
        Answered {
            answer: Option<Answer>,
        },
    }
}

impl<S, ReqBody, D> ResponseFuture<S, ReqBody, D>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn deciding(
        settings: Arc<Settings>,
        policy: usize,
        flags: Flags,
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
            settings,
            policy,
            flags,
        }
    }

    pub(crate) fn answered(
        settings: Arc<Settings>,
        policy: usize,
        grpc: bool,
        answer: Answer,
    ) -> Self {
        Self {
            state: State::Answered {
                answer: Some(answer),
            },
            settings,
            policy,
            flags: Flags {
                shadow: false,
                grpc,
            },
        }
    }

    pub(crate) fn unlimited(settings: Arc<Settings>, future: S::Future) -> Self {
        Self {
            state: State::Calling {
                future,
                decision: None,
            },
            settings,
            policy: usize::MAX,
            flags: Flags {
                shadow: false,
                grpc: false,
            },
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
        let settings: &Settings = this.settings;
        let flags = *this.flags;
        loop {
            let next = match this.state.as_mut().project() {
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
                                deadline.set(Some(tokio::time::sleep(settings.timeout)));
                            }
                            let sleep = deadline.as_pin_mut().expect("deadline was just set");
                            ready!(sleep.poll(cx));
                            Err(StoreError::Timeout(settings.timeout))
                        }
                    };
                    let mut forward = |decision| {
                        let mut inner = inner.take().expect("the service is called once");
                        let request = request.take().expect("the request is sent once");
                        State::Calling {
                            future: inner.call(request),
                            decision,
                        }
                    };
                    let policy = settings.policies.entry(*this.policy);
                    match outcome {
                        Ok(decision) => {
                            settings.outage.answered();
                            let outcome = match (decision.allowed, flags.shadow) {
                                (true, _) => "allowed",
                                (false, true) => "shadow_limited",
                                (false, false) => "limited",
                            };
                            tracing::debug!(
                                policy = policy_name(policy),
                                outcome,
                                limit = policy.limits[decision.index].name(),
                                remaining = decision.remaining,
                                "rate-limit decision"
                            );
                            if decision.allowed || flags.shadow {
                                // A shadow denial is always reported.
                                let report = settings.headers_on_allowed || !decision.allowed;
                                forward(report.then_some(decision))
                            } else {
                                State::Answered {
                                    answer: Some(Answer::Limited(decision)),
                                }
                            }
                        }
                        Err(error) => {
                            settings.outage.failed(&error, settings.fail_mode);
                            match settings.fail_mode {
                                FailMode::Closed if !flags.shadow => State::Answered {
                                    answer: Some(Answer::Unavailable),
                                },
                                _ => forward(None),
                            }
                        }
                    }
                }
                StateProj::Calling { future, decision } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(decision) = decision.take() {
                        let policy = settings.policies.entry(*this.policy);
                        response::insert_allowed(
                            response.headers_mut(),
                            policy,
                            &decision,
                            settings.legacy_headers,
                        );
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Answered { answer } => {
                    let answer = answer.take().expect("polled after completion");
                    let policy = settings.policies.entry(*this.policy);
                    let response =
                        response::reject(&answer, Some(policy), &settings.style(flags.grpc));
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}
