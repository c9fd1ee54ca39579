//! HTTP/1.1 (and HTTP/1.1 over TLS) connections under the pool.
//!
//! Bounds, phase by phase (the rule is `http/deadline.rs`'s, shared with WebSocket): the first
//! request head within `headers_timeout` of accept, a head within `headers_timeout` of its first
//! byte and a whole request within `request_timeout` of its first byte, `keep_alive_timeout`
//! between requests (never past `connection_timeout`), a write the peer leaves unread for
//! `connection_timeout`; a response being produced or streamed is never cut. A head over
//! `http1.max_header_size` gets 431. A polite close is `Connection: close` on the response in
//! flight; hyper would take a connection whose head is partly in for idle and close it, so the
//! pool's driver asks only once that head is in, and its response carries the close. A handler
//! may take the connection over with an upgrade: it stays pooled, under the upgraded rule, until
//! the upgraded I/O is dropped (`http/upgrade.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use poolserve_pool::{
    Activity, CloseReason, ConnectionGuard, ConnectionTracker, ManagedConnection, PoolConfig,
    TimeoutKind,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::http::upgrade::UpgradeLink;
use crate::http::{
    http1_deadline, http1_timer_at, is_peer_fault, Handler, RequestRules, ResponseBody,
    TrackedService,
};
use crate::transport::io::TrackedIo;
use crate::transport::policy::ServerPolicy;

type Hyper<I, S> = http1::UpgradeableConnection<I, S>;

/// A hyper HTTP/1 connection the pool can drive and close politely. When a handler takes the
/// connection over with an upgrade, it stays pooled until the upgraded I/O is dropped.
pub struct Http1Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
{
    /// `None` once hyper has finished and handed the I/O to an upgrade. Boxed: the pool's
    /// driver future stores the connection it drives more than once (async fn arguments are
    /// not overlapped with the locals they move into), so a small handle costs less memory
    /// per connection than hyper's connection inline.
    serving: Option<Pin<Box<Hyper<I, S>>>>,
    link: Arc<UpgradeLink>,
    tracker: ConnectionTracker,
    /// The pool asked for a polite close: one asked while an upgrade was being answered is
    /// passed on to the handler once the connection is upgraded.
    close_asked: bool,
    /// The polite close waits for the upgrade request in flight to be answered: hyper would
    /// add `close` to a 101's `Connection: upgrade`, which WebSocket clients refuse.
    close_deferred: bool,
}

impl<I, S> Drop for Http1Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
{
    fn drop(&mut self) {
        // Closed at once (a deadline or a forced shutdown) while a handler still holds the
        // upgraded I/O: make that I/O fail so the handler lets go.
        if self.serving.is_none() && !self.link.is_io_dropped() {
            self.link.kill();
        }
    }
}

impl<I, S, B> Future for Http1Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.close_deferred && this.tracker.activity().in_flight == 0 {
            // The upgrade request was answered without an upgrade: close as asked.
            this.close_deferred = false;
            if let Some(conn) = this.serving.as_mut() {
                conn.as_mut().graceful_shutdown();
            }
        }
        if let Some(conn) = this.serving.as_mut() {
            ready!(conn.as_mut().poll(cx))?;
            this.serving = None;
            if this.link.is_io_dropped() {
                return Poll::Ready(Ok(()));
            }
            // hyper kept the I/O alive for an upgrade: the connection lives on in the handler.
            this.link.mark_upgraded();
            this.tracker.upgraded();
            if this.close_asked {
                ask_handler_to_close(&this.tracker, &this.link);
            }
        }
        if this.link.register_drop(cx.waker()) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl<I, S, B> ManagedConnection for Http1Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;

    /// Sends `Connection: close` on the response in flight (or closes an idle connection); an
    /// upgraded connection's handler is told through [`PooledConnection::closing`].
    ///
    /// [`PooledConnection::closing`]: crate::http::PooledConnection::closing
    fn close_politely(mut self: Pin<&mut Self>) {
        let this = &mut *self;
        this.close_asked = true;
        match this.serving.as_mut() {
            // An upgrade being answered completes first; `poll` then passes the request on to
            // the handler (upgraded) or closes (answered without an upgrade).
            Some(_) if this.link.upgrade_asked() && this.tracker.activity().in_flight > 0 => {
                this.close_deferred = true;
            }
            Some(conn) => conn.as_mut().graceful_shutdown(),
            None => ask_handler_to_close(&this.tracker, &this.link),
        }
    }

    fn is_peer_fault(e: &hyper::Error) -> bool {
        is_peer_fault(e)
    }

    /// The HTTP/1.1 request cycle; once a handler took the connection over, the upgraded rule.
    fn deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        http1_deadline(a, c)
    }

    #[inline]
    fn timer_at(deadline: Instant, a: &Activity, c: &PoolConfig) -> Instant {
        http1_timer_at(deadline, a, c)
    }
}

/// Asks the handler that took the connection over to close; its goodbye and the peer's answer
/// are bounded like a ping's.
fn ask_handler_to_close(tracker: &ConnectionTracker, link: &UpgradeLink) {
    tracker.close_sent();
    link.ask_to_close();
}

/// Serves one admitted HTTP/1.1 connection to its end: sets it up now and returns the future
/// that serves it, which holds nothing else (an `async fn` would keep its arguments beside it
/// for as long as the connection lives).
pub(crate) fn serve<IO, S, B, R>(
    guard: ConnectionGuard<ServerPolicy>,
    io: IO,
    service: S,
    config: &PoolConfig,
) -> impl Future<Output = CloseReason> + Send + 'static
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Handler<B>,
    B: ResponseBody,
    R: RequestRules,
{
    let tracker = guard.tracker();
    let link = Arc::new(UpgradeLink::default());
    let io = TokioIo::new(TrackedIo::gated(io, tracker.clone(), link.clone()));
    let service = TrackedService::<_, R>::new(service, tracker.clone(), link.clone());
    // The builder is dropped here, so it takes no room in the connection's task.
    let serving = http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(config.http1.max_header_size)
        .serve_connection(io, service)
        .with_upgrades();
    let conn = Http1Connection {
        serving: Some(Box::pin(serving)),
        link,
        tracker,
        close_asked: false,
        close_deferred: false,
    };
    guard.serve(conn)
}
