//! The WebSocket session of a `ws`/`wss` server: the HTTP/1.1 upgrade through hyper under the
//! HTTP/1 bounds, then an echo of every message with a per-connection heartbeat, close codes as
//! RFC 6455 gives them, and close 1001 when the pool asks.
//!
//! Memory: hyper's HTTP/1 connection takes two 8 KiB buffers as it starts, and freed memory
//! that many connections held at once stays in the process, so hyper is started only once the
//! request's first byte is in: a connection waiting for its request costs no buffer. After the
//! upgrade the socket is taken back from hyper unboxed, and the session runs on it directly.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use poolserve_pool::{later, ConnectionTracker, PoolConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::error::WsError;
use super::handshake::handshake;
use crate::http::is_peer_fault;
use crate::transport::io::TrackedIo;

/// Ready once the pool asked for the polite close. It registers no waker: the driver asks from
/// the connection's task and polls the connection right after, which polls this again.
fn close_asked(flag: &AtomicBool) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        if flag.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// The connection's I/O with the request's first byte, read before hyper started, handed to
/// hyper's first read together with whatever else the socket has ready then: hyper sees the
/// connection as if it had read it all, and a head that came in one segment fits its first
/// buffer (a read of the lone byte would have it grow that buffer before the next read).
struct Primed<IO> {
    first: Option<u8>,
    /// An error of the read that followed the first byte, for hyper's next read.
    error: Option<io::Error>,
    io: IO,
}

impl<IO> Primed<IO> {
    fn new(first: u8, io: IO) -> Self {
        Primed {
            first: Some(first),
            error: None,
            io,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Primed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Some(first) = this.first.take() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        buf.put_slice(&[first]);
        // The rest of what has arrived goes with it; nothing more yet is no reason to wait.
        if let Poll::Ready(Err(e)) = Pin::new(&mut this.io).poll_read(cx, buf) {
            this.error = Some(e);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Primed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

pub(super) async fn run<IO>(
    io: TrackedIo<IO>,
    tracker: ConnectionTracker,
    config: Arc<PoolConfig>,
    close: Arc<AtomicBool>,
) -> Result<(), WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A function of its own, so that none of its locals stays in this future beside the
    // session's.
    let Some((io, part, asked_to_close)) = upgrade(io, &tracker, &config, &close).await? else {
        return Ok(());
    };
    tracker.upgraded();

    // 2. The WebSocket session.
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.websocket.max_message_size))
        .max_frame_size(Some(config.websocket.max_frame_size));
    let ws = WebSocketStream::from_partially_read(io, part, Role::Server, Some(ws_config)).await;
    echo(ws, &tracker, &close, asked_to_close).await
}

/// The HTTP/1.1 upgrade, under the HTTP/1 bounds: the socket taken back from hyper, what hyper
/// read past the request (a client may send its first frames right behind it), and whether the
/// pool asked for the polite close meanwhile; `None` when the connection ended without one.
async fn upgrade<IO>(
    mut io: TrackedIo<IO>,
    tracker: &ConnectionTracker,
    config: &PoolConfig,
    close: &AtomicBool,
) -> Result<Option<(TrackedIo<IO>, Vec<u8>, bool)>, WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // 0. The request's first byte, before hyper and its buffers. A polite close meanwhile (the
    // close is looked at first: a request not begun is not waited for), a peer that closes
    // without a byte, or a failed read ends the connection here, as hyper ends a connection
    // whose read fails or ends before a request began: closed, no error.
    let first = {
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            () = close_asked(close) => return Ok(None),
            read = io.read(&mut byte) => match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => byte[0],
            },
        }
    };
    let io = Primed::new(first, io);

    // 1. The HTTP/1.1 request and its answer.
    let (upgrade_tx, upgrade_rx) = oneshot::channel::<OnUpgrade>();
    let upgrade_tx = Arc::new(Mutex::new(Some(upgrade_tx)));
    let request_tracker = tracker.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let request = request_tracker.request_started();
        request.body_received();
        let (res, upgrade) = handshake(&mut req);
        if let Some(upgrade) = upgrade {
            if let Some(tx) = upgrade_tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(upgrade);
            }
        }
        let mut request = request;
        request.response_started(false);
        request.finish();
        async move { Ok::<_, std::convert::Infallible>(res) }
    });
    // Not asked yet: the wait for the first byte returned otherwise.
    let mut asked_to_close = false;
    // The HTTP connection, and with it the service holding the upgrade's sender, is dropped at
    // the end of this block: a connection that closed without a valid upgrade request (a TCP
    // probe, a request answered 426) then ends here instead of waiting for an upgrade that can
    // no longer come, and its slot is released at once.
    {
        let mut builder = http1::Builder::new();
        builder.max_buf_size(config.http1.max_header_size);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        loop {
            tokio::select! {
                biased;
                done = conn.as_mut() => {
                    done.map_err(|e| WsError::new(e.to_string(), is_peer_fault(&e)))?;
                    break;
                }
                () = close_asked(close), if !asked_to_close => {
                    asked_to_close = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    let Ok(on_upgrade) = upgrade_rx.await else {
        // The client never asked to upgrade (or was refused) and the connection closed.
        return Ok(None);
    };
    let upgraded = on_upgrade
        .await
        .map_err(|e| WsError::peer(format!("upgrade failed: {e}")))?;
    // The socket back from hyper, unboxed; hyper's read buffer goes with `parts`.
    let parts = upgraded
        .downcast::<TokioIo<Primed<TrackedIo<IO>>>>()
        .map_err(|_| WsError::new("upgrade: not the connection's own socket", false))?;
    let part = parts.read_buf.to_vec();
    Ok(Some((parts.io.into_inner().io, part, asked_to_close)))
}

async fn echo<S>(
    ws: WebSocketStream<S>,
    tracker: &ConnectionTracker,
    close: &AtomicBool,
    already_closing: bool,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // One stream for both directions: `select!` drops the pending read before a branch body
    // writes, so no split (and no lock per message) is needed.
    let mut ws = ws;
    // The heartbeat follows `websocket.ping_interval` live: a change re-arms it at once.
    let mut control = tracker.control();
    let mut ping_interval = control.borrow_and_update().config.websocket.ping_interval;
    let mut following = true;
    // Waits for a config change across messages: a `changed()` made afresh in every turn of the
    // loop would register with the channel and leave it again for every message.
    let config_change = next_change(control);
    tokio::pin!(config_change);
    let heartbeat = tokio::time::sleep_until(later(Instant::now(), ping_interval));
    tokio::pin!(heartbeat);
    let send_failed = |e: WsProtocolError| match e {
        WsProtocolError::ConnectionClosed | WsProtocolError::AlreadyClosed => {
            WsError::peer("connection closed while sending")
        }
        other => WsError::peer(format!("send failed: {other}")),
    };
    let mut closing = false;
    if already_closing {
        closing = true;
        going_away(&mut ws, tracker).await;
    }
    loop {
        tokio::select! {
            biased;
            () = close_asked(close), if !closing => {
                closing = true;
                going_away(&mut ws, tracker).await;
            }
            (changed, mut control) = &mut config_change, if following => {
                if changed.is_err() {
                    following = false;
                    continue;
                }
                let interval = control.borrow_and_update().config.websocket.ping_interval;
                config_change.set(next_change(control));
                if interval != ping_interval {
                    ping_interval = interval;
                    let last = tracker.activity().last_message;
                    heartbeat.as_mut().reset(later(last, ping_interval));
                }
            }
            next = ws.next() => {
                let message = match next {
                    None => return Ok(()),
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return fail(e, &mut ws, tracker).await,
                };
                tracker.pong_received();
                match message {
                    Message::Text(_) | Message::Binary(_) => {
                        let len = message.len();
                        tracker.message_received(len);
                        if !closing {
                            ws.send(message).await.map_err(send_failed)?;
                            tracker.message_sent(len);
                        }
                    }
                    // tungstenite queues the pong (or the close echo); flushing sends it.
                    Message::Ping(_) => ws.flush().await.map_err(send_failed)?,
                    Message::Pong(_) | Message::Frame(_) => {}
                    Message::Close(frame) => {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        if !closing {
                            tracker.close_code(code);
                        }
                        let _ = ws.flush().await;
                    }
                }
            }
            () = &mut heartbeat => {
                let activity = tracker.activity();
                let due = later(activity.last_message, ping_interval);
                let now = Instant::now();
                if now >= due && activity.ping_outstanding_since.is_none() && !closing {
                    ws.send(Message::Ping(Bytes::from_static(b"poolserve")))
                        .await
                        .map_err(send_failed)?;
                    tracker.ping_sent();
                    heartbeat.as_mut().reset(later(now, ping_interval));
                } else {
                    heartbeat.as_mut().reset(due.max(later(now, ping_interval / 8)));
                }
            }
        }
    }
}

/// The pool's next config change, and the receiver to wait for the one after.
async fn next_change(
    mut control: tokio::sync::watch::Receiver<poolserve_pool::ControlState>,
) -> (
    Result<(), tokio::sync::watch::error::RecvError>,
    tokio::sync::watch::Receiver<poolserve_pool::ControlState>,
) {
    let changed = control.changed().await;
    (changed, control)
}

async fn going_away<S>(tx: &mut WebSocketStream<S>, tracker: &ConnectionTracker)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracker.close_code(1001);
    tracker.close_sent();
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: "server going away".into(),
    };
    let _ = tx.send(Message::Close(Some(frame))).await;
}

/// Fails the connection on a protocol error with the close code RFC 6455 gives it.
async fn fail<S>(
    e: WsProtocolError,
    tx: &mut WebSocketStream<S>,
    tracker: &ConnectionTracker,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (code, reason) = match &e {
        WsProtocolError::ConnectionClosed | WsProtocolError::AlreadyClosed => return Ok(()),
        WsProtocolError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (CloseCode::Size, "message too big")
        }
        WsProtocolError::Capacity(_) => (CloseCode::Size, "too big"),
        WsProtocolError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8"),
        WsProtocolError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        WsProtocolError::Io(_) => return Err(WsError::peer(format!("connection lost: {e}"))),
        _ => (CloseCode::Protocol, "protocol error"),
    };
    tracker.close_code(u16::from(code));
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tx.send(Message::Close(Some(frame))).await;
    Err(WsError::peer(format!("{reason}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_first_read_hands_over_the_first_byte_and_what_has_arrived_since() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"ET / HTTP/1.1").await.unwrap();
        let mut primed = Primed::new(b'G', server);
        let mut buf = [0u8; 32];
        let n = primed.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1");
        // Then reads go to the socket as they come.
        client.write_all(b"\r\n").await.unwrap();
        let n = primed.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\r\n");
    }

    #[tokio::test]
    async fn the_first_byte_alone_is_handed_over_at_once() {
        let (_client, server) = tokio::io::duplex(64);
        let mut primed = Primed::new(b'G', server);
        let mut buf = [0u8; 32];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), primed.read(&mut buf))
            .await
            .expect("nothing more yet is no reason to wait")
            .unwrap();
        assert_eq!(&buf[..n], b"G");
    }
}
