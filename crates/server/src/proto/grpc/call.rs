//! The pool's rules for each gRPC call, applied in front of any tonic service: message size
//! limits (`RESOURCE_EXHAUSTED`, where tonic alone answers `OUT_OF_RANGE`), the connection's
//! budget for request messages not yet whole, and the caller's `grpc-timeout` as a deadline on
//! the whole call, streamed responses included.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use poolserve_pool::Pool;
use tokio::time::{Instant, Sleep};
use tonic::Status;

use super::frames::{Cut, MessageCutter, MessageScanner};
use super::status::is_grpc;
use super::timeout::parse_grpc_timeout;
use crate::http::{Body, ReadBudget, Reservation, Reserved};
use crate::transport::policy::ServerPolicy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a gRPC router so every call follows the pool's gRPC settings in force when it starts.
#[derive(Debug, Clone)]
pub(crate) struct GrpcCall<S> {
    inner: S,
    pool: Pool<ServerPolicy>,
}

impl<S> GrpcCall<S> {
    pub fn new(inner: S, pool: Pool<ServerPolicy>) -> Self {
        GrpcCall { inner, pool }
    }
}

impl<S, B> tower::Service<Request<Body>> for GrpcCall<S>
where
    S: tower::Service<Request<GrpcRequestBody<Body>>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<GrpcResponseBody<B>>;
    type Error = Infallible;
    type Future = GrpcCallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let config = self.pool.config();
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            .and_then(|timeout| Instant::now().checked_add(timeout))
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        let receive_limit = config.grpc.max_receive_message_length;
        // A request for an axum route beside the services carries no gRPC messages either way.
        let framed = is_grpc(req.headers());
        let mut req = if framed {
            req.map(|body| {
                let budget = body.read_budget().cloned();
                GrpcRequestBody::new(body, receive_limit, budget)
            })
        } else {
            req.map(GrpcRequestBody::unframed)
        };
        req.extensions_mut().insert(ReceiveLimit(receive_limit));
        GrpcCallFuture {
            inner: self.inner.call(req),
            deadline,
            send_limit: config.grpc.max_send_message_length,
            framed,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's response future, cut short by its deadline.
    pub(crate) struct GrpcCallFuture<F> {
        #[pin]
        inner: F,
        deadline: Option<Pin<Box<Sleep>>>,
        send_limit: usize,
        framed: bool,
    }
}

impl<F, B> Future for GrpcCallFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<GrpcResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(Ok(res)) = this.inner.poll(cx) {
            let body = GrpcResponseBody {
                inner: None,
                framed: *this.framed,
                scanner: MessageScanner::default(),
                send_limit: *this.send_limit,
                deadline: this.deadline.take(),
                pending: None,
            };
            return Poll::Ready(Ok(res.map(|b| GrpcResponseBody {
                inner: Some(b),
                ..body
            })));
        }
        if let Some(deadline) = this.deadline {
            ready!(deadline.as_mut().poll(cx));
            let (parts, ()) = deadline_exceeded().into_http::<()>().into_parts();
            return Poll::Ready(Ok(Response::from_parts(parts, GrpcResponseBody::ended())));
        }
        Poll::Pending
    }
}

/// The call's `grpc.max_receive_message_length`, in its request's extensions, for services
/// built per call (`GrpcServices::add_limited_service`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceiveLimit(pub usize);

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's grpc-timeout passed")
}

/// A status as response trailers.
fn trailers(status: Status) -> HeaderMap {
    let mut headers = status.into_http::<()>().into_parts().0.headers;
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

pin_project_lite::pin_project! {
    /// A request body whose messages may not exceed `grpc.max_receive_message_length` (a
    /// longer one is never read in, and the service sees `RESOURCE_EXHAUSTED` instead) and
    /// whose messages not yet whole are paid for out of the connection's read budget: a
    /// message's declared length is reserved before its prefix is passed on, and given back
    /// once its last byte is (tonic decodes it then, within the same poll). A stream that
    /// cannot reserve reads nothing more, so what its peer sends waits in the stream's
    /// flow-control window.
    pub(crate) struct GrpcRequestBody<B> {
        #[pin]
        inner: B,
        framed: bool,
        cutter: MessageCutter,
        limit: usize,
        budget: Option<ReadBudget>,
        reserving: Option<Reservation>,
        reserved: Option<Reserved>,
        // Boxed: used only when a call ends mid-message, and the body is moved with its request.
        pending: Option<Box<Frame<Bytes>>>,
        oversized: Option<u64>,
    }
}

impl<B> GrpcRequestBody<B> {
    fn new(inner: B, limit: usize, budget: Option<ReadBudget>) -> Self {
        GrpcRequestBody {
            inner,
            framed: true,
            cutter: MessageCutter::default(),
            limit,
            budget,
            reserving: None,
            reserved: None,
            pending: None,
            oversized: None,
        }
    }

    /// A body passed on as it comes: not gRPC messages.
    fn unframed(inner: B) -> Self {
        GrpcRequestBody {
            framed: false,
            ..GrpcRequestBody::new(inner, usize::MAX, None)
        }
    }
}

impl<B> http_body::Body for GrpcRequestBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if !*this.framed {
            return this.inner.poll_frame(cx).map_err(Into::into);
        }
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(*frame)));
        }
        if let Some(declared) = *this.oversized {
            return oversized_request(declared, *this.limit);
        }
        loop {
            let cut = match this.cutter.next(*this.limit) {
                Cut::Starts(declared) => {
                    if let Some(budget) = this.budget.as_ref() {
                        let reserving = this
                            .reserving
                            .get_or_insert_with(|| Reservation::new(budget, declared));
                        let reserved = ready!(reserving.poll_reserve(cx));
                        *this.reserving = None;
                        *this.reserved = Some(reserved);
                    }
                    this.cutter.start()
                }
                cut => cut,
            };
            match cut {
                Cut::Pass { bytes, ends } => {
                    if ends {
                        *this.reserved = None;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Cut::Oversized(declared) => {
                    *this.oversized = Some(declared);
                    return oversized_request(declared, *this.limit);
                }
                Cut::Starts(_) | Cut::NeedMore => {}
            }
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    *this.reserved = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    *this.reserved = None;
                    return Poll::Ready(this.cutter.take_unfinished().map(data));
                }
            };
            match frame.into_data() {
                Ok(chunk) => this.cutter.push(chunk),
                Err(trailers) => {
                    *this.reserved = None;
                    let unfinished = this.cutter.take_unfinished();
                    return Poll::Ready(Some(Ok(before(unfinished, this.pending, trailers))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.framed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.framed {
            http_body::SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

fn oversized_request(declared: u64, limit: usize) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Err(Box::new(Status::resource_exhausted(format!(
        "message of {declared} bytes is over the server's limit of {limit} bytes"
    ))))))
}

/// The frame to pass on when trailers arrive: bytes of a prefix the peer never finished go
/// first (the receiver judges them), the trailers wait in `pending`.
fn before(
    unfinished: Option<Bytes>,
    pending: &mut Option<Box<Frame<Bytes>>>,
    trailers: Frame<Bytes>,
) -> Frame<Bytes> {
    match unfinished {
        Some(rest) => {
            *pending = Some(Box::new(trailers));
            Frame::data(rest)
        }
        None => trailers,
    }
}

fn data(bytes: Bytes) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(bytes))
}

pin_project_lite::pin_project! {
    /// A response body whose messages may not exceed `grpc.max_send_message_length` (a longer
    /// one ends the call with `RESOURCE_EXHAUSTED` trailers) and that ends with
    /// `DEADLINE_EXCEEDED` trailers when the call's deadline passes mid-stream. A response of
    /// an axum route beside the services is not gRPC messages and passes as it comes.
    pub(crate) struct GrpcResponseBody<B> {
        #[pin]
        inner: Option<B>,
        framed: bool,
        scanner: MessageScanner,
        send_limit: usize,
        deadline: Option<Pin<Box<Sleep>>>,
        // Boxed: used only when a call ends early, and the body is moved with its response.
        pending: Option<Box<Frame<Bytes>>>,
    }
}

impl<B> GrpcResponseBody<B> {
    /// A body with nothing in it: the status travelled in the response headers.
    fn ended() -> Self {
        GrpcResponseBody {
            inner: None,
            framed: true,
            scanner: MessageScanner::default(),
            send_limit: 0,
            deadline: None,
            pending: None,
        }
    }
}

impl<B> http_body::Body for GrpcResponseBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(*frame)));
        }
        let Some(mut inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let frame = match inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    let rest = this.scanner.take_unfinished();
                    this.inner.set(None);
                    return Poll::Ready(rest.map(data));
                }
                Poll::Pending => {
                    if let Some(deadline) = this.deadline {
                        ready!(deadline.as_mut().poll(cx));
                        *this.deadline = None;
                        this.inner.set(None);
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers(
                            deadline_exceeded(),
                        )))));
                    }
                    return Poll::Pending;
                }
            };
            if !*this.framed {
                return Poll::Ready(Some(Ok(frame)));
            }
            let chunk = match frame.into_data() {
                Ok(chunk) => chunk,
                Err(trailers) => {
                    let unfinished = this.scanner.take_unfinished();
                    return Poll::Ready(Some(Ok(before(unfinished, this.pending, trailers))));
                }
            };
            let scanned = this.scanner.scan(chunk, *this.send_limit);
            if let Some(declared) = scanned.oversized {
                this.inner.set(None);
                let end = Frame::trailers(trailers(Status::resource_exhausted(format!(
                    "response message of {declared} bytes is over the server's limit of {} bytes",
                    this.send_limit
                ))));
                if scanned.pass.is_empty() {
                    return Poll::Ready(Some(Ok(end)));
                }
                *this.pending = Some(Box::new(end));
                return Poll::Ready(Some(Ok(Frame::data(scanned.pass))));
            }
            if !scanned.pass.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(scanned.pass))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}
