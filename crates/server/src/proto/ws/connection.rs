//! One WebSocket connection under the pool: its session as a future the pool drives, and close
//! 1001 as its polite close.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use poolserve_pool::{
    Activity, CloseReason, ConnectionGuard, ManagedConnection, PoolConfig, TimeoutKind,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::error::WsError;
use super::session;
use crate::http::{http1_deadline, http1_timer_at};
use crate::transport::io::TrackedIo;
use crate::transport::policy::ServerPolicy;

/// One WebSocket connection from its HTTP request to its close.
struct WsConnection {
    session: Pin<Box<dyn Future<Output = Result<(), WsError>> + Send>>,
    /// Set by the polite close. A flag and not a channel (a `watch` costs some 350 bytes a
    /// connection): the driver asks from the connection's own task and polls the connection
    /// right after, so the session sees it without being woken (see `session::close_asked`).
    close: Arc<AtomicBool>,
}

impl Future for WsConnection {
    type Output = Result<(), WsError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.session.as_mut().poll(cx)
    }
}

impl ManagedConnection for WsConnection {
    type Error = WsError;

    /// Before the upgrade: `Connection: close`; after it: close frame 1001.
    fn close_politely(self: Pin<&mut Self>) {
        self.close.store(true, Ordering::Release);
    }

    fn is_peer_fault(e: &WsError) -> bool {
        e.is_peer_fault()
    }

    /// The HTTP/1.1 request cycle until the upgrade; then the heartbeat's pong deadline and
    /// the optional `websocket.idle_timeout`.
    fn deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        http1_deadline(a, c)
    }

    #[inline]
    fn timer_at(deadline: Instant, a: &Activity, c: &PoolConfig) -> Instant {
        http1_timer_at(deadline, a, c)
    }
}

/// Serves one admitted WebSocket connection to its end.
pub(crate) async fn serve<IO>(
    guard: ConnectionGuard<ServerPolicy>,
    io: IO,
    config: Arc<PoolConfig>,
) -> CloseReason
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracker = guard.tracker();
    let close = Arc::new(AtomicBool::new(false));
    let io = TrackedIo::new(io, tracker.clone());
    let conn = WsConnection {
        session: Box::pin(session::run(io, tracker, config, close.clone())),
        close,
    };
    guard.serve(conn).await
}
