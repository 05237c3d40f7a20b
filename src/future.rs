//! [`ResponseFuture`]: waits for the store's decision, then for the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::breaker::Ticket;
use crate::layer::Settings;
use crate::response::{self, Answer, ResponseBody};
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
}

impl Flags {
    const NONE: Self = Self {
        shadow: false,
        grpc: false,
        bypassed: false,
    };

    /// Whether a decision is refused: denied, and neither shadow mode nor bypass.
    pub(crate) fn refuses(self, allowed: bool) -> bool {
        !allowed && !self.shadow && !self.bypassed
    }

    /// The `outcome` a decision is counted as.
    pub(crate) fn outcome(self, allowed: bool) -> Outcome {
        match () {
            _ if self.bypassed => Outcome::Bypassed,
            _ if allowed => Outcome::Allowed,
            _ if self.refuses(allowed) => Outcome::Limited,
            _ => Outcome::ShadowLimited,
        }
    }
}

/// What the layer knew when it asked the store.
pub(crate) struct Asked {
    /// When, for a remote store (its calls are timed, and a cached denial counts from here).
    pub(crate) at: Option<Instant>,
    /// The request's key, when the deny cache or the local fail mode needs it.
    pub(crate) key: Option<String>,
    pub(crate) cost: u64,
    /// The place of this call among those in flight (a remote store).
    pub(crate) ticket: Option<Ticket>,
}

pin_project! {
    /// The store's decision, or why the store was not asked (the breaker is open, or too many
    /// calls are under way): then it is ready at once, with that error.
    #[project = AskingProj]
    pub(crate) enum Asking<D> {
        Sent {
            #[pin]
            decision: D,
        },
        NotAsked {
            error: Option<StoreError>,
        },
    }
}

impl<D> Future for Asking<D>
where
    D: Future<Output = Result<Decision, StoreError>>,
{
    type Output = Result<Decision, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AskingProj::Sent { decision } => decision.poll(cx),
            AskingProj::NotAsked { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

/// What follows a decision (the store's, or the local one while the store fails): refused, or
/// forwarded with its fields.
fn decided<S>(
    settings: &Settings,
    flags: Flags,
    index: usize,
    decision: Decision,
    elapsed: Option<std::time::Duration>,
    forward: impl FnOnce(Option<Decision>) -> S,
) -> S
where
    S: From<Answer>,
{
    let policy = settings.policies.entry(index);
    let limit = &policy.limits[decision.index];
    let outcome = flags.outcome(decision.allowed);
    let near_limit = decision.allowed && decision.remaining.saturating_mul(5) <= limit.capacity();
    settings.telemetry.decision(index, outcome, near_limit);
    tracing::debug!(
        policy = policy.name(),
        outcome = outcome.as_str(),
        limit = limit.name(),
        remaining = decision.remaining,
        store_us = elapsed.map_or(0, |e| e.as_micros() as u64),
        "rate-limit decision"
    );
    if flags.refuses(decision.allowed) {
        S::from(Answer::Limited(decision))
    } else {
        // A denial that passes (shadow, bypass) is always reported.
        let report = settings.headers_on_allowed || !decision.allowed;
        forward(report.then_some(decision))
    }
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
            decision: Asking<D>,
            // Started when the decision is first pending, so a store that answers at once
            // (the memory store) never arms a timer.
            #[pin]
            deadline: Option<Sleep>,
            asked: Asked,
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

impl<S, ReqBody, D> From<Answer> for State<S, ReqBody, D>
where
    S: Service<Request<ReqBody>>,
{
    fn from(answer: Answer) -> Self {
        State::Answered {
            answer: Some(answer),
        }
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
        decision: Asking<D>,
        asked: Asked,
        inner: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Deciding {
                decision,
                deadline: None,
                asked,
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
                    asked,
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
                    let elapsed = asked.at.map(|at| at.elapsed());
                    // A custom store could name a limit the policy does not have.
                    let outcome = outcome.and_then(|d| match policy.limits.get(d.index) {
                        Some(limit) => Ok((d, limit)),
                        None => Err(StoreError::Reply(format!(
                            "limit index {} out of range",
                            d.index
                        ))),
                    });
                    if let Some(ticket) = asked.ticket.take() {
                        settings
                            .telemetry
                            .store_duration(elapsed.unwrap_or_default());
                        // Only a store that cannot be reached opens the breaker; one that
                        // answered with an error (a script error, say) is up.
                        match &outcome {
                            Err(error) if error.unavailable() => ticket.failed(),
                            _ => ticket.answered(),
                        }
                        drop(ticket);
                        if let Some(breaker) = &settings.breaker {
                            settings.telemetry.in_flight(breaker.in_flight());
                        }
                    }
                    match outcome {
                        Ok((decision, limit)) => {
                            settings.outage.answered();
                            if let (false, Some(cache), Some(key), Some(at)) =
                                (decision.allowed, &settings.deny_cache, &asked.key, asked.at)
                            {
                                cache.insert(key, asked.cost, limit, &decision, at);
                            }
                            decided(settings, flags, index, decision, elapsed, forward)
                        }
                        Err(error) => {
                            let mode = settings.fail_mode;
                            settings.outage.failed(&error, mode);
                            settings.telemetry.store_failed(&error, mode);
                            match (mode, &settings.local, &asked.key) {
                                (FailMode::Local, Some(local), Some(key)) => {
                                    // Decided here, against this instance's share; a cost
                                    // above the share cannot pass until the store is back.
                                    let decision = local.decide(index, key, asked.cost);
                                    if decision.retry_after == std::time::Duration::MAX
                                        && !flags.shadow
                                        && !flags.bypassed
                                    {
                                        State::Answered {
                                            answer: Some(Answer::Unavailable),
                                        }
                                    } else {
                                        decided(settings, flags, index, decision, None, forward)
                                    }
                                }
                                (FailMode::Closed, _, _) if !flags.shadow => State::Answered {
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
                        response::insert_fields(
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
                    let response = response::reject(&answer, policy, &settings.style(flags.grpc));
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}
