//! [`ResponseFuture`]: waits for the limiter's outcome, then for the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Settings;
use crate::engine::{Core, Deciding, Outcome, Verdict};
use crate::reserve::After;
use crate::response::{self, Answer, ResponseBody, is_grpc};
use crate::{Decision, StoreError};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqBody, D>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, D>,
        settings: Arc<Settings>,
        // The engine's generation the request is decided under: its policies name the
        // fields, even if a reload replaces them meanwhile.
        core: Arc<Core>,
        // The request's policy, when it has one.
        policy: usize,
        // What to do when the response is over: settle the reservation (when the layer
        // settles them), free the concurrency slots.
        after: Option<Box<After>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, D>
    where
        S: Service<Request<ReqBody>>,
    {
        // Waiting for the limiter.
        Deciding {
            deciding: Deciding<D>,
            inner: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        // Forwarded; `decision` is reported in the response's fields.
        Calling {
            #[pin]
            future: S::Future,
            decision: Option<Decision>,
        },
        // Answered by the layer (the gRPC way, for a gRPC request).
        Answered {
            answer: Option<Answer>,
            grpc: bool,
        },
    }
}

impl<S, ReqBody, D> ResponseFuture<S, ReqBody, D>
where
    S: Service<Request<ReqBody>>,
{
    /// A request the limiter is deciding. An in-process store answers at once: then the
    /// request is forwarded (or answered) now, not through the future's states. (Polling
    /// without the task's waker is sound: a future registers the waker of every poll, and this
    /// one's first poll by the task comes next.)
    #[inline]
    pub(crate) fn limited(
        settings: Arc<Settings>,
        core: Arc<Core>,
        policy: usize,
        mut deciding: Deciding<D>,
        inner: S,
        request: Request<ReqBody>,
        mut after: Option<Box<After>>,
    ) -> Self
    where
        D: Future<Output = Result<Decision, StoreError>> + Unpin,
    {
        let mut noop = Context::from_waker(Waker::noop());
        let state = match deciding.poll_decide(&mut noop, &core) {
            Poll::Ready(outcome) => next(&settings, &mut after, outcome, inner, request),
            Poll::Pending => State::Deciding {
                deciding,
                inner: Some(inner),
                request: Some(request),
            },
        };
        Self {
            state,
            settings,
            core,
            policy,
            after,
        }
    }

    pub(crate) fn answered(
        settings: Arc<Settings>,
        core: Arc<Core>,
        policy: usize,
        grpc: bool,
        answer: Answer,
    ) -> Self {
        Self {
            state: State::Answered {
                answer: Some(answer),
                grpc,
            },
            settings,
            core,
            policy,
            after: None,
        }
    }

    pub(crate) fn unlimited(settings: Arc<Settings>, core: Arc<Core>, future: S::Future) -> Self {
        Self {
            state: State::Calling {
                future,
                decision: None,
            },
            settings,
            core,
            policy: usize::MAX,
            after: None,
        }
    }
}

/// The state after the limiter's `outcome`: the inner service called, or the layer's answer.
#[inline]
fn next<S, ReqBody, D>(
    settings: &Settings,
    after: &mut Option<Box<After>>,
    mut outcome: Outcome,
    mut inner: S,
    request: Request<ReqBody>,
) -> State<S, ReqBody, D>
where
    S: Service<Request<ReqBody>>,
{
    // Settled only what the store took, or did not answer for (failing open, it took
    // nothing: the whole actual cost is charged): what has a receipt.
    let receipt = outcome.receipt();
    if let Some(in_flight) = outcome.in_flight() {
        after
            .get_or_insert_with(Box::default)
            .decided(receipt, Some(in_flight));
    } else if let Some(after) = after {
        after.decided(receipt, None);
    }
    match respond(settings, outcome) {
        Ok(decision) => State::Calling {
            future: inner.call(request),
            decision,
        },
        // Only a refused request is asked whether it speaks gRPC.
        Err(answer) => State::Answered {
            answer: Some(answer),
            grpc: is_grpc(request.headers()),
        },
    }
}

/// What the layer does with an outcome: forward, with the decision to report in the
/// response's fields when there is one to report, or answer.
#[inline]
fn respond(settings: &Settings, outcome: Outcome) -> Result<Option<Decision>, Answer> {
    let allowed = outcome.is_allowed();
    match outcome.into_verdict() {
        Verdict::Decided { decision, .. } if !allowed => Err(Answer::Limited(decision)),
        // A denial that passes (shadow, bypass) is always reported.
        Verdict::Decided { decision, .. } => {
            Ok((settings.headers_on_allowed || !decision.allowed).then_some(decision))
        }
        Verdict::TooCostly { cost, limit } if !allowed => Err(Answer::TooCostly { cost, limit }),
        Verdict::FailedClosed(_) if !allowed => Err(Answer::Unavailable),
        _ => Ok(None),
    }
}

impl<S, ReqBody, ResBody, D> Future for ResponseFuture<S, ReqBody, D>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    D: Future<Output = Result<Decision, StoreError>> + Unpin,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let settings: &Settings = this.settings;
        let core: &Arc<Core> = this.core;
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Deciding {
                    deciding,
                    inner,
                    request,
                } => {
                    let outcome = ready!(deciding.poll_decide(cx, core));
                    let inner = inner.take().expect("the service is called once");
                    let request = request.take().expect("the request is sent once");
                    next(settings, this.after, outcome, inner, request)
                }
                StateProj::Calling { future, decision } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(after) = this.after.as_mut() {
                        // What the head states of the cost (read from the parts, which only
                        // a whole response lends).
                        let (mut head, body) = response.into_parts();
                        after.response(&mut head);
                        response = Response::from_parts(head, body);
                    }
                    if let Some(decision) = decision.take() {
                        let policy = core.policies.entry(*this.policy);
                        response::insert_fields(
                            response.headers_mut(),
                            policy,
                            &decision,
                            settings.legacy_headers,
                        );
                    }
                    let after = this.after.take();
                    return Poll::Ready(
                        Ok(response.map(|body| ResponseBody::settled(body, after))),
                    );
                }
                StateProj::Answered { answer, grpc } => {
                    if let Some(mut after) = this.after.take() {
                        after.refused();
                    }
                    let answer = answer.take().expect("polled after completion");
                    let policies = &core.policies;
                    let policy =
                        (*this.policy < policies.len()).then(|| policies.entry(*this.policy));
                    let response = response::reject(&answer, policy, &settings.style(*grpc));
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}
