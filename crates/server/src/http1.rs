//! HTTP/1.1 (and HTTP/1.1 over TLS) connections under the pool.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use poolserve_pool::{CloseReason, ConnectionGuard, ManagedConnection, PoolConfig};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::Body;
use crate::io::TrackedIo;
use crate::policy::ServerPolicy;
use crate::service::TrackedService;

pin_project_lite::pin_project! {
    /// A hyper HTTP/1 connection the pool can drive and close politely.
    pub struct Http1Connection<I, S>
    where
        S: hyper::service::HttpService<hyper::body::Incoming>,
    {
        #[pin]
        inner: http1::Connection<I, S>,
    }
}

impl<I, S, B> Future for Http1Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<(), hyper::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<I, S, B> ManagedConnection for Http1Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;

    /// Sends `Connection: close` on the response in flight (or closes an idle connection).
    fn close_politely(self: Pin<&mut Self>) {
        self.project().inner.graceful_shutdown();
    }

    fn is_peer_fault(e: &hyper::Error) -> bool {
        is_peer_fault(e)
    }
}

/// Whether a hyper error is the client's doing rather than this server's.
pub(crate) fn is_peer_fault(e: &hyper::Error) -> bool {
    if e.is_parse() || e.is_parse_too_large() || e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// Serves one admitted HTTP/1.1 connection to its end.
pub(crate) async fn serve<IO, S, B>(
    guard: ConnectionGuard<ServerPolicy>,
    io: IO,
    service: S,
    config: &PoolConfig,
) -> CloseReason
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tracker = guard.tracker();
    let io = TokioIo::new(TrackedIo::new(io, tracker.clone()));
    let service = TrackedService::new(service, tracker);
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(config.http1.max_header_size);
    let conn: Http1Connection<_, TrackedService<S>> = Http1Connection {
        inner: builder.serve_connection(io, service),
    };
    guard.serve(conn).await
}
