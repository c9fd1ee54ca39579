//! Request and response bodies that tell the pool when a request was received and finished.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use poolserve_pool::{ConnectionTracker, RequestTracker};
use tokio::time::{Instant, Sleep};

/// The request body handlers receive: hyper's body, reporting to the pool when it is fully
/// received so the request timeout stops applying. On a multiplexed connection (HTTP/2), where
/// the connection's timer leaves streams alone, the body itself enforces `request_timeout`: a
/// body not received in time fails with [`RequestTimeout`]. gRPC calls are bounded by their
/// `grpc-timeout` instead, since a client stream may rightly last long.
#[derive(Debug)]
pub struct Body {
    inner: Incoming,
    tracker: Option<ConnectionTracker>,
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The error of a request body that did not arrive within `request_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeout;

impl std::fmt::Display for RequestTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within request_timeout")
    }
}

impl std::error::Error for RequestTimeout {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body {
    /// `ended`: whether `inner` is already at its end (its `is_end_stream`, which for HTTP/2
    /// takes the connection's stream lock, so the caller's answer is reused). `timed`: whether
    /// this body enforces `request_timeout` itself (a stream of a multiplexed connection that is
    /// not a gRPC call, whose deadline is its `grpc-timeout`).
    pub(crate) fn new(
        inner: Incoming,
        tracker: &ConnectionTracker,
        ended: bool,
        timed: bool,
    ) -> Self {
        if ended {
            tracker.body_received();
            return Body {
                inner,
                tracker: None,
                deadline: None,
            };
        }
        let deadline = timed.then(|| {
            let at = Instant::now() + tracker.request_timeout();
            Box::pin(tokio::time::sleep_until(at))
        });
        Body {
            inner,
            tracker: Some(tracker.clone()),
            deadline,
        }
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let (Some(deadline), Some(_)) = (this.deadline.as_mut(), &this.tracker) {
                    ready!(deadline.as_mut().poll(cx));
                    this.deadline = None;
                    if let Some(t) = this.tracker.take() {
                        t.request_timed_out();
                    }
                    return Poll::Ready(Some(Err(Box::new(RequestTimeout))));
                }
                return Poll::Pending;
            }
        };
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
            this.deadline = None;
            if let Some(t) = this.tracker.take() {
                t.body_received();
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
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
