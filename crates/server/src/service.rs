//! Adapts a user's tower `Service` to hyper, recording each request in the pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use poolserve_pool::{ConnectionTracker, RequestTracker};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::body::{Body, TrackedBody};
use crate::upgrade::{PooledConnection, UpgradeLink};

/// A hyper service that wraps each request of one connection in the pool's tracking.
#[derive(Debug, Clone)]
pub(crate) struct TrackedService<S> {
    inner: S,
    tracker: ConnectionTracker,
    link: Arc<UpgradeLink>,
}

impl<S> TrackedService<S> {
    pub fn new(inner: S, tracker: ConnectionTracker, link: Arc<UpgradeLink>) -> Self {
        TrackedService {
            inner,
            tracker,
            link,
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for TrackedService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    B: http_body::Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<Either<S::Future, Oneshot<S, Request<Body>>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let request = self.tracker.request_started();
        // A stream of a multiplexed connection times its own body, except a gRPC call's; a
        // request without a body (most are) needs neither the deadline nor the header lookup.
        let ended = http_body::Body::is_end_stream(req.body());
        let timed = !ended
            && self.tracker.is_multiplexed()
            && !req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut req = req.map(|b| Body::new(b, &self.tracker, ended, timed));
        // Only a request that can take the connection over needs the handle; leaving it off the
        // others spares every plain request an extensions map. hyper marks those requests (an
        // `Upgrade` header, `CONNECT`) with its `OnUpgrade`; looking that up in a request's
        // usually empty extensions costs less than hashing a header name.
        if req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some()
        {
            req.extensions_mut().insert(PooledConnection {
                link: self.link.clone(),
            });
        }
        let mut service = self.inner.clone();
        // An HTTP/1 request's future is polled where it is stored, so a service that is ready
        // (most are: routers, `service_fn`) is called now and its future stored once, instead of
        // being built inside a `Oneshot` on the first poll and moved into it. A stream of a
        // multiplexed connection is polled in a task of its own: there the call waits for that
        // task, so a large future (a gRPC router's) is built in place rather than moved into it
        // (measured 2026-12-02 under callgrind: calling at once costs a gRPC unary call 733
        // instructions more, and saves an h2c request 48).
        let inner = if self.tracker.is_multiplexed() {
            Either::Right(service.oneshot(req))
        } else {
            match service.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
                Poll::Ready(Ok(())) => Either::Left(service.call(req)),
                // Not ready (or failing): the `Oneshot` polls readiness again with the real waker.
                _ => Either::Right(service.oneshot(req)),
            }
        };
        ResponseFuture {
            inner,
            request: Some(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future: marks the response start and hands the request record to the body.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        request: Option<RequestTracker>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        let Some(mut request) = this.request.take() else {
            // Polled after completion: hyper never does this.
            return Poll::Pending;
        };
        Poll::Ready(match out {
            Ok(mut res) => {
                // A trailers-only gRPC response (an empty body) carries its status in the head;
                // gRPC runs over HTTP/2 only.
                let failed = res.status().is_server_error()
                    || (request.is_multiplexed()
                        && res.body().is_end_stream()
                        && crate::grpc::is_server_failure(res.headers()));
                // A sized body follows its head at once: its request is timed to the end.
                if res.body().size_hint().exact().is_some() {
                    request.sized_response_started(failed);
                } else {
                    request.response_started(failed);
                }
                if request.should_close_connection() {
                    res.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok(res.map(|b| TrackedBody::new(b, request)))
            }
            Err(e) => {
                request.fail();
                Err(e)
            }
        })
    }
}
