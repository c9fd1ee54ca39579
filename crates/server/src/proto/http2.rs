//! HTTP/2 connections (h2c with prior knowledge, h2 over TLS) under the pool.
//!
//! One pooled connection is one HTTP/2 connection; its streams are its requests. The
//! protocol's own limits come from the pool config: `http2.max_concurrent_streams` and
//! `http2.max_header_list_size` as SETTINGS, `http2.max_session_memory` as the flow-control
//! windows and send buffers (and, for a protocol that reads ahead of its handlers, the budget
//! of bytes read ahead), and keep-alive pings whose unanswered timeout closes the connection
//! as a `pong` timeout. A polite close is a GOAWAY: streams in flight finish, new ones are
//! refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use poolserve_pool::{
    deadline_after, earliest, stall_deadline, Activity, CloseReason, ConnectionGuard,
    ManagedConnection, PoolConfig, TimeoutKind,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::http::upgrade::UpgradeLink;
use crate::http::{is_peer_fault, Handler, ReadBudget, RequestRules, ResponseBody, TrackedService};
use crate::transport::io::TrackedIo;
use crate::transport::policy::ServerPolicy;

/// Largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: usize = (1 << 31) - 1;

/// How `http2.max_session_memory` is split: the bytes a peer may send before we read them
/// (flow-control windows) and the bytes we buffer towards it (send buffers); on a connection
/// whose protocol reads ahead of its handlers (gRPC), also the bytes read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionBudget {
    /// Connection-level receive window: all streams' unread request data together.
    pub connection_window: u32,
    /// Per-stream receive window. Normally the whole connection window, since that already
    /// bounds what all streams together may send unread; one busy stream (an upload) may use
    /// all of it. When the protocol reads ahead, an equal part of it per stream instead, so
    /// streams nobody reads (waiting for the read-ahead budget, or for their handler) can never
    /// fill it and starve the stream whose reading would free the budget.
    pub stream_window: u32,
    /// Per-stream send buffer.
    pub send_buffer: usize,
    /// The bytes all streams together may hold read ahead of their handlers (messages not yet
    /// whole, for gRPC): as much as the receive window; `None` when the protocol does not read
    /// ahead.
    pub read_ahead: Option<u32>,
}

impl SessionBudget {
    /// Half the session memory for received data (the connection's window, which any stream
    /// may fill unless the protocol reads ahead), half for data being sent, shared by
    /// `max_concurrent_streams` streams (each stream's send buffer is its own, so that half is
    /// divided). A validated config leaves each stream at least
    /// [`poolserve_pool::MIN_STREAM_SEND_BUFFER`] of each half; the shares are never raised to
    /// meet it, so they stay within the budget whatever the config.
    pub fn new(max_session_memory: usize, max_concurrent_streams: u32, reads_ahead: bool) -> Self {
        // HTTP/2 never lets a receive window go below 65,535 bytes: validation keeps the
        // budget's half at least that.
        let half = (max_session_memory / 2).clamp(65_535, MAX_WINDOW);
        let streams = (max_concurrent_streams as usize).max(1);
        let share = (half / streams).max(1);
        SessionBudget {
            connection_window: half as u32,
            stream_window: if reads_ahead {
                share as u32
            } else {
                half as u32
            },
            send_buffer: share,
            read_ahead: reads_ahead.then_some(half as u32),
        }
    }
}

type Hyper<I, S> = http2::Connection<I, S, TokioExecutor>;

/// A hyper HTTP/2 connection the pool can drive and close with a GOAWAY.
pub struct Http2Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
{
    /// Boxed for the reason given on `Http1Connection`.
    inner: Pin<Box<Hyper<I, S>>>,
}

impl<I, S, B> Future for Http2Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<I, S, B> ManagedConnection for Http2Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;

    /// A connection the pool closes on a timeout gets a GOAWAY first.
    const GOODBYE_ON_TIMEOUT: bool = true;

    /// Sends GOAWAY: streams in flight finish, new ones are refused, then the connection closes.
    fn close_politely(mut self: Pin<&mut Self>) {
        self.inner.as_mut().graceful_shutdown();
    }

    fn is_peer_fault(e: &hyper::Error) -> bool {
        is_peer_fault(e)
    }

    fn timeout_kind(e: &hyper::Error) -> Option<TimeoutKind> {
        // hyper's only timeout on a server HTTP/2 connection is the keep-alive ping's.
        e.is_timeout().then_some(TimeoutKind::Pong)
    }

    fn deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        http2_deadline(a, c)
    }
}

/// The HTTP/2 deadline: a new connection's first request (preface, settings and a HEADERS
/// frame) must arrive within `headers_timeout`; a connection with no stream open may idle for
/// `connection_timeout` once its last frames went out; a write the peer does not read for `connection_timeout` is a stall.
/// Streams in flight are never cut by the connection's timer, and unanswered keep-alive pings
/// are the protocol's own business (`http2.keep_alive_timeout`).
fn http2_deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    let idle = match (a.in_flight, a.requests) {
        (0, 0) => deadline_after(a.opened_at, c.headers_timeout, TimeoutKind::Headers),
        // Frames of the last streams still wait on the peer: the stall bound governs.
        (0, _) if a.write_blocked_since.is_some() => None,
        (0, _) => deadline_after(a.phase_since, c.connection_timeout, TimeoutKind::Idle),
        _ => None,
    };
    earliest(idle, stall_deadline(a, c))
}

/// The interval of an `http2` server's keep-alive pings: `http2.keep_alive_interval`.
pub(crate) fn keep_alive_interval(config: &PoolConfig) -> Duration {
    config.http2.keep_alive_interval
}

/// Serves one admitted HTTP/2 connection to its end, pinging the peer at the interval
/// `keep_alive_interval` reads from the config (the protocol on top chooses which setting).
pub(crate) async fn serve<IO, S, B, R>(
    guard: ConnectionGuard<ServerPolicy>,
    io: IO,
    service: S,
    config: &PoolConfig,
    keep_alive_interval: fn(&PoolConfig) -> Duration,
) -> CloseReason
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Handler<B>,
    B: ResponseBody,
    R: RequestRules,
{
    let tracker = guard.tracker();
    tracker.multiplexed();
    // HTTP/2 has no upgrades; the link only satisfies the shared request wrapper.
    let link = Arc::new(UpgradeLink::default());
    let io = TokioIo::new(TrackedIo::new(io, tracker.clone()));
    let h2 = &config.http2;
    let budget = SessionBudget::new(
        h2.max_session_memory,
        h2.max_concurrent_streams,
        R::READS_AHEAD,
    );
    let service = TrackedService::<_, R>::new(service, tracker, link)
        .with_read_budget(budget.read_ahead.map(ReadBudget::new));
    // The builder lives in this block only, so it takes no room in the connection's task.
    let conn = {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(h2.max_header_list_size)
            .initial_connection_window_size(budget.connection_window)
            .initial_stream_window_size(budget.stream_window)
            .max_send_buf_size(budget.send_buffer)
            .keep_alive_interval(keep_alive_interval(config))
            .keep_alive_timeout(h2.keep_alive_timeout);
        Http2Connection {
            inner: Box::pin(builder.serve_connection(io, service)),
        }
    };
    guard.serve(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolserve_pool::{Phase, MIN_STREAM_SEND_BUFFER};

    #[test]
    fn connections_are_bounded_only_when_no_stream_is_open() {
        let c = PoolConfig::default();
        let mut a = Activity::opened_at(Instant::now());
        a.multiplexed = true;
        assert_eq!(
            http2_deadline(&a, &c),
            Some((a.opened_at + c.headers_timeout, TimeoutKind::Headers))
        );
        a.requests = 3;
        assert_eq!(
            http2_deadline(&a, &c),
            Some((a.phase_since + c.connection_timeout, TimeoutKind::Idle))
        );
        a.write_blocked_since = Some(a.phase_since);
        assert_eq!(
            http2_deadline(&a, &c),
            Some((
                a.phase_since + c.connection_timeout,
                TimeoutKind::WriteStall
            ))
        );
        a.write_blocked_since = None;
        a.in_flight = 2;
        a.phase = Phase::ReadingBody;
        assert_eq!(http2_deadline(&a, &c), None);
        a.write_blocked_since = Some(a.phase_since);
        assert_eq!(
            http2_deadline(&a, &c),
            Some((
                a.phase_since + c.connection_timeout,
                TimeoutKind::WriteStall
            ))
        );
    }

    #[test]
    fn session_memory_is_split_between_receiving_and_sending() {
        let b = SessionBudget::new(10 << 20, 250, false);
        assert_eq!(b.connection_window, 5 << 20);
        assert_eq!(b.send_buffer, (5 << 20) / 250);
        // One stream may fill the connection's window; together they never exceed it.
        assert_eq!(b.stream_window, 5 << 20);
        let roomy = SessionBudget::new(64 << 20, 4, false);
        assert_eq!(roomy.send_buffer, 8 << 20);
    }

    #[test]
    fn reading_ahead_divides_the_receive_window_among_the_streams() {
        let b = SessionBudget::new(10 << 20, 250, true);
        assert_eq!(b.connection_window, 5 << 20);
        assert_eq!(b.read_ahead, Some(5 << 20));
        assert_eq!(b.stream_window, (5 << 20) / 250);
        // Every stream's window full together still fits the connection's, so no stream left
        // unread can take the room another needs.
        for (memory, streams) in [(10 << 20, 250), (10 << 20, 320), (1 << 20, 7), (131_072, 4)] {
            let b = SessionBudget::new(memory, streams, true);
            assert!(
                b.stream_window as u64 * u64::from(streams) <= u64::from(b.connection_window),
                "{memory} bytes, {streams} streams: {b:?}"
            );
        }
        assert_eq!(SessionBudget::new(10 << 20, 250, false).read_ahead, None);
    }

    #[test]
    fn the_smallest_valid_budget_keeps_the_protocols_window_and_the_streams_share() {
        let smallest = 131_072;
        let streams = (smallest / 2 / MIN_STREAM_SEND_BUFFER) as u32;
        let b = SessionBudget::new(smallest, streams, false);
        assert_eq!(b.connection_window, 65_536);
        assert_eq!(b.stream_window, 65_536);
        assert_eq!(b.send_buffer, MIN_STREAM_SEND_BUFFER);
        assert!(b.send_buffer * streams as usize <= smallest / 2);
    }

    #[test]
    fn send_buffers_together_never_exceed_their_half() {
        for (memory, streams) in [(10 << 20, 250), (10 << 20, 320), (1 << 20, 7), (131_072, 1)] {
            let b = SessionBudget::new(memory, streams, false);
            assert!(
                b.send_buffer * streams as usize <= memory / 2,
                "{memory} bytes, {streams} streams: {b:?}"
            );
        }
    }
}
