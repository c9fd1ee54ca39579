//! The WebSocket session of a `ws`/`wss` server: the HTTP/1.1 upgrade through hyper under the
//! HTTP/1 bounds, then an echo of every message with a per-connection heartbeat, close codes as
//! RFC 6455 gives them, and close 1001 when the pool asks.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use poolserve_pool::{later, ConnectionTracker, PoolConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
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

pub(super) async fn run<IO>(
    io: TrackedIo<IO>,
    tracker: ConnectionTracker,
    config: Arc<PoolConfig>,
    mut close: watch::Receiver<bool>,
) -> Result<(), WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // 1. The HTTP/1.1 upgrade, under the HTTP/1 bounds.
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
    let mut asked_to_close = *close.borrow_and_update();
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
        if asked_to_close {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                biased;
                done = conn.as_mut() => {
                    done.map_err(|e| WsError::new(e.to_string(), is_peer_fault(&e)))?;
                    break;
                }
                changed = close.changed(), if !asked_to_close => {
                    asked_to_close = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
    let Ok(on_upgrade) = upgrade_rx.await else {
        // The client never asked to upgrade (or was refused) and the connection closed.
        return Ok(());
    };
    let upgraded = on_upgrade
        .await
        .map_err(|e| WsError::peer(format!("upgrade failed: {e}")))?;
    tracker.upgraded();

    // 2. The WebSocket session.
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.websocket.max_message_size))
        .max_frame_size(Some(config.websocket.max_frame_size));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
            .await;
    echo(ws, &tracker, close, asked_to_close).await
}

async fn echo<S>(
    ws: WebSocketStream<S>,
    tracker: &ConnectionTracker,
    mut close: watch::Receiver<bool>,
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
            changed = close.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    going_away(&mut ws, tracker).await;
                }
            }
            changed = control.changed(), if following => {
                if changed.is_err() {
                    following = false;
                    continue;
                }
                let interval = control.borrow_and_update().config.websocket.ping_interval;
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
