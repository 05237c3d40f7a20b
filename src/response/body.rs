//! [`ResponseBody`]: the inner service's body, or the layer's own.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::reserve::After;

pin_project! {
    /// The response body of [`RateLimit`](crate::RateLimit): the inner service's body, or the
    /// small JSON body of a response the layer made itself.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        // Settles the request's reservation and frees its slots when the body ends or is
        // dropped.
        after: Option<Box<After>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self::settled(body, None)
    }

    /// The inner service's body, with what to do when it is over.
    pub(crate) fn settled(body: B, after: Option<Box<After>>) -> Self {
        Self {
            kind: Kind::Inner { body },
            after,
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full { data: Some(data) },
            after: None,
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
            after: None,
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Full { data } => f.debug_tuple("ResponseBody::Full").field(data).finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Inner { body } => {
                let mut frame = ready!(body.poll_frame(cx));
                if let Some(after) = this.after {
                    match &mut frame {
                        Some(Ok(frame)) => {
                            if let Some(trailers) = frame.trailers_mut() {
                                after.trailers(trailers);
                            }
                        }
                        // Ended (or failed, which ends it): settled and freed now.
                        Some(Err(_)) | None => after.finish(),
                    }
                }
                Poll::Ready(frame)
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
