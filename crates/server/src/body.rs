//! Request and response bodies that tell the pool when a request was received and finished.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use poolserve_pool::{ConnectionTracker, RequestTracker};

/// The request body handlers receive: hyper's body, reporting to the pool when it is fully
/// received so the request timeout stops applying.
#[derive(Debug)]
pub struct Body {
    inner: Incoming,
    tracker: Option<ConnectionTracker>,
}

impl Body {
    pub(crate) fn new(inner: Incoming, tracker: ConnectionTracker) -> Self {
        let tracker = if inner.is_end_stream() {
            tracker.body_received();
            None
        } else {
            Some(tracker)
        };
        Body { inner, tracker }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // A handler that drops the body unread is done receiving; what is left is hyper's to
        // discard, and the request timeout stops applying.
        if let Some(t) = self.tracker.take() {
            t.body_received();
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let done = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => {
                if let Some(t) = this.tracker.take() {
                    t.request_body_failed();
                }
                false
            }
        };
        if done {
            if let Some(t) = this.tracker.take() {
                t.body_received();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes its request's record when it ends, fails or is dropped.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        request: Option<RequestTracker>,
    }
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, request: RequestTracker) -> Self {
        TrackedBody {
            inner,
            request: Some(request),
        }
    }
}

impl<B: HttpBody> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            None => {
                if let Some(r) = this.request.take() {
                    r.finish();
                }
            }
            Some(Err(_)) => {
                if let Some(mut r) = this.request.take() {
                    r.fail();
                }
            }
            Some(Ok(f)) => {
                // Trailers carry a gRPC call's outcome.
                if let (Some(trailers), Some(r)) = (f.trailers_ref(), this.request.as_mut()) {
                    if crate::grpc::is_server_failure(trailers) {
                        r.fail();
                    }
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
