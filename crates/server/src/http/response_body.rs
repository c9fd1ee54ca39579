//! The response body the pool sees: it finishes its request's record when it ends, fails or is
//! dropped, and asks the server's [`RequestRules`] whether its trailers report a failure.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use poolserve_pool::RequestTracker;

use super::rules::{PlainHttp, RequestRules};

pin_project_lite::pin_project! {
    /// A response body that finishes its request's record when it ends, fails or is dropped.
    #[derive(Debug)]
    pub struct TrackedBody<B, R = PlainHttp> {
        #[pin]
        inner: B,
        request: Option<RequestTracker>,
        rules: PhantomData<fn() -> R>,
    }
}

impl<B, R> TrackedBody<B, R> {
    pub(crate) fn new(inner: B, request: RequestTracker) -> Self {
        TrackedBody {
            inner,
            request: Some(request),
            rules: PhantomData,
        }
    }
}

impl<B: HttpBody, R: RequestRules> HttpBody for TrackedBody<B, R> {
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
                // Trailers may carry the outcome, where the server's rules look for it. They
                // are a body's last frame: the response is complete (hyper need not poll on).
                if let Some(trailers) = f.trailers_ref() {
                    if let Some(mut r) = this.request.take() {
                        if R::trailers_failed(trailers) {
                            r.fail();
                        }
                        r.finish();
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
