//! [`ResponseFuture`]: waits for the store's decision, then for the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::layer::Settings;
use crate::response::{self, Answer, ResponseBody};
use crate::service::policy_name;
use crate::telemetry::Outcome;
use crate::{Decision, FailMode, StoreError};

/// How a decided request is handled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flags {
    /// Shadow mode: report, never refuse.
    pub(crate) shadow: bool,
    /// Answer the gRPC way.
    pub(crate) grpc: bool,
    /// A client on the bypass list: report, never refuse.
    pub(crate) bypassed: bool,
    /// The store is remote (its calls are timed).
    pub(crate) remote: bool,
}

impl Flags {
    const NONE: Self = Self {
        shadow: false,
        grpc: false,
        bypassed: false,
        remote: false,
    };
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
            // When the store was asked; only a remote store's calls are timed.
            started: Option<Instant>,
            // The request's key (when the deny cache is on) and cost.
            // With the deny cache: the request's key and when the store was asked.
            key: Option<(String, Instant)>,
            cost: u64,
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
        (key, cost): (Option<(String, Instant)>, u64),
        inner: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Deciding {
                decision,
                deadline: None,
                started: flags.remote.then(Instant::now),
                key,
                cost,
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
                grpc,
                ..Flags::NONE
            },
        }
    }

    /// Forwarded with a decision made without the store (a cached denial in shadow mode).
    pub(crate) fn reported(
        settings: Arc<Settings>,
        policy: usize,
        decision: Decision,
        future: S::Future,
    ) -> Self {
        Self {
            state: State::Calling {
                future,
                decision: Some(decision),
            },
            settings,
            policy,
            flags: Flags::NONE,
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
            flags: Flags::NONE,
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
                    started,
                    key,
                    cost,
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
                    let index = *this.policy;
                    let policy = settings.policies.entry(index);
                    let name = policy_name(policy);
                    let elapsed = started.map_or(std::time::Duration::ZERO, |s| s.elapsed());
                    if started.is_some() {
                        settings.telemetry.store_duration(elapsed);
                    }
                    // A custom store could name a limit the policy does not have.
                    let outcome = outcome.and_then(|d| match policy.limits.get(d.index) {
                        Some(_) => Ok(d),
                        None => Err(StoreError::Reply(format!(
                            "limit index {} out of range",
                            d.index
                        ))),
                    });
                    match outcome {
                        Ok(decision) => {
                            settings.outage.answered();
                            if let (false, Some(cache), Some((key, asked))) =
                                (decision.allowed, &settings.deny_cache, key.as_ref())
                            {
                                let limit = &policy.limits[decision.index];
                                cache.insert(key, *cost, limit, &decision, *asked);
                            }
                            let refuse = !decision.allowed && !flags.shadow && !flags.bypassed;
                            let outcome = match () {
                                _ if flags.bypassed => Outcome::Bypassed,
                                _ if decision.allowed => Outcome::Allowed,
                                _ if refuse => Outcome::Limited,
                                _ => Outcome::ShadowLimited,
                            };
                            let limit = &policy.limits[decision.index];
                            let near_limit = decision.allowed
                                && decision.remaining.saturating_mul(5) <= limit.capacity();
                            settings
                                .telemetry
                                .decision(index, name, outcome, near_limit);
                            tracing::debug!(
                                policy = name,
                                outcome = outcome.as_str(),
                                limit = limit.name(),
                                remaining = decision.remaining,
                                store_us = elapsed.as_micros() as u64,
                                "rate-limit decision"
                            );
                            if refuse {
                                State::Answered {
                                    answer: Some(Answer::Limited(decision)),
                                }
                            } else {
                                // A denial that passes (shadow, bypass) is always reported.
                                let report = settings.headers_on_allowed || !decision.allowed;
                                forward(report.then_some(decision))
                            }
                        }
                        Err(error) => {
                            settings.outage.failed(&error, settings.fail_mode);
                            let closed = settings.fail_mode == FailMode::Closed && !flags.shadow;
                            settings.telemetry.store_failed(&error, !closed);
                            if closed {
                                State::Answered {
                                    answer: Some(Answer::Unavailable),
                                }
                            } else {
                                forward(None)
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
