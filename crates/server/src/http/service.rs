//! Adapts a user's tower `Service` to hyper, recording each request in the pool.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use poolserve_pool::{ConnectionTracker, RequestTracker};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use super::read_budget::ReadBudget;
use super::request_body::Body;
use super::response_body::TrackedBody;
use super::rules::RequestRules;
use super::upgrade::{PooledConnection, UpgradeLink};

/// A hyper service that wraps each request of one connection in the pool's tracking, under the
/// server's [`RequestRules`] `R`; `A` holds the budget it hands request bodies, if any.
#[derive(Debug)]
pub(crate) struct TrackedService<S, R, A = ()> {
    inner: S,
    tracker: ConnectionTracker,
    link: Arc<UpgradeLink>,
    read_budget: A,
    rules: PhantomData<fn() -> R>,
}

/// Where a [`TrackedService`] keeps the budget for bytes read ahead of the handler it hands
/// every request body: nowhere on HTTP/1, which never reads ahead (hyper holds the service as
/// long as the connection, so a field it never uses would be 8 bytes of every connection), the
/// connection's budget, if any, on HTTP/2.
pub(crate) trait ReadAhead {
    fn budget(&self) -> Option<ReadBudget>;
}

impl ReadAhead for () {
    #[inline]
    fn budget(&self) -> Option<ReadBudget> {
        None
    }
}

impl ReadAhead for Option<ReadBudget> {
    #[inline]
    fn budget(&self) -> Option<ReadBudget> {
        self.clone()
    }
}

impl<S, R> TrackedService<S, R> {
    pub fn new(inner: S, tracker: ConnectionTracker, link: Arc<UpgradeLink>) -> Self {
        TrackedService {
            inner,
            tracker,
            link,
            read_budget: (),
            rules: PhantomData,
        }
    }

    /// Hands every request body the connection's budget for bytes read ahead of the handler,
    /// when it has one.
    pub fn with_read_budget(
        self,
        budget: Option<ReadBudget>,
    ) -> TrackedService<S, R, Option<ReadBudget>> {
        TrackedService {
            inner: self.inner,
            tracker: self.tracker,
            link: self.link,
            read_budget: budget,
            rules: PhantomData,
        }
    }
}

impl<S, B, R, A> hyper::service::Service<Request<Incoming>> for TrackedService<S, R, A>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    B: http_body::Body,
    R: RequestRules,
    A: ReadAhead,
{
    type Response = Response<TrackedBody<B, R>>;
    type Error = S::Error;
    type Future = ResponseFuture<Either<S::Future, Oneshot<S, Request<Body>>>, R>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut request = self.tracker.request_started();
        if let Some(timeout) = R::caller_deadline(&req) {
            request.caller_deadline(timeout);
        }
        // A body still arriving reports to its own request (a peer that breaks it off excuses
        // that request's failure, no other's), and on a multiplexed connection times itself
        // unless its protocol bounds it otherwise; a request without a body (most are) needs
        // neither the report, the deadline, the read budget nor the rules' look.
        let mut req = if http_body::Body::is_end_stream(req.body()) {
            request.body_received();
            req.map(Body::ended)
        } else {
            let timed = self.tracker.is_multiplexed() && R::times_body(&req);
            let body = request.body_tracker();
            let budget = self.read_budget.budget();
            req.map(|b| Body::arriving(b, body, timed, budget))
        };
        // Only a request that can take the connection over needs the handle; leaving it off the
        // others spares every plain request an extensions map. hyper marks those requests (an
        // `Upgrade` header, `CONNECT`) with its `OnUpgrade`; looking that up in a request's
        // usually empty extensions costs less than hashing a header name.
        let asks_upgrade = req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some();
        self.link.note_request(asks_upgrade);
        if asks_upgrade {
            req.extensions_mut().insert(PooledConnection {
                link: self.link.clone(),
            });
        }
        let mut service = self.inner.clone();
        // An HTTP/1 request's future is polled where it is stored, so a service that is ready
        // (most are: routers, `service_fn`) is called now and its future stored once, instead of
        // being built inside a `Oneshot` on the first poll and moved into it. A stream of a
        // multiplexed connection is polled in a task of its own: there the call waits for that
        // task, so a large future (a router's) is built in place rather than moved into it
        // (docs/design.md, "Choices measured").
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
            rules: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future: marks the response start and hands the request record to the body.
    pub(crate) struct ResponseFuture<F, R> {
        #[pin]
        inner: F,
        request: Option<RequestTracker>,
        rules: PhantomData<fn() -> R>,
    }
}

impl<F, B, E, R> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    R: RequestRules,
{
    type Output = Result<Response<TrackedBody<B, R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        let Some(mut request) = this.request.take() else {
            // Polled after completion: hyper never does this.
            return Poll::Pending;
        };
        Poll::Ready(match out {
            Ok(mut res) => {
                let failed = R::response_failed(&res);
                // A sized body follows its head at once: its request is timed to the end.
                if res.body().size_hint().exact().is_some() {
                    request.sized_response_started(failed);
                } else {
                    request.response_started(failed);
                }
                // A 101 hands the connection over: its `Connection: upgrade` stays, and an
                // over-limit pool sheds the upgraded connection afterwards (close 1001).
                if res.status() != http::StatusCode::SWITCHING_PROTOCOLS
                    && request.should_close_connection()
                {
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
