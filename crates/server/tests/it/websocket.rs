//! WebSocket under the pool with a real client (tokio-tungstenite) and raw sockets: echo, wss,
//! refusal before the upgrade, heartbeat and pong deadline, size limits, polite close on shutdown
//! and on a lowered limit.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use poolserve_pool::{CloseReason, PoolEventKind, PoolSettings, TimeoutKind, WebSocketSettings};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws<S> = WebSocketStream<S>;

async fn connect(addr: SocketAddr) -> Ws<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, res) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws
}

/// Reads until the server's close frame, returning its code; echoes of earlier messages are
/// collected on the way.
async fn read_until_close<S>(ws: &mut Ws<S>, echoes: &mut Vec<Message>) -> Option<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(WAIT, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(other @ (Message::Text(_) | Message::Binary(_))) => echoes.push(other),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the server closes")
}

fn ws_settings(w: WebSocketSettings) -> PoolSettings {
    PoolSettings {
        websocket: Some(w),
        ..Default::default()
    }
}

#[tokio::test]
async fn echoes_text_binary_and_a_large_message_and_counts_them() {
    let h = start(PoolSettings::default()).await;
    let mut ws = connect(h.ws).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let big = Bytes::from(vec![7u8; 1 << 20]);
    ws.send(Message::Binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(big));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    while ws.next().await.is_some() {}
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let m = pool.metrics();
    assert_eq!((m.messages_in, m.messages_out), (3, 3));
    assert_eq!(m.message_bytes_in, 5 + 4 + (1 << 20));
    assert!(
        m.close_codes.contains(&("1000".to_owned(), 1)),
        "{:?}",
        m.close_codes
    );
    assert_eq!(
        metric(
            h.admin,
            "poolserve_messages_total",
            "server=\"live\",protocol=\"ws\",direction=\"in\""
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn plain_http_to_a_websocket_server_gets_426() {
    let h = start(PoolSettings::default()).await;
    let res = get(h.ws, "/").await;
    assert_eq!(res.status(), 426);
    assert_eq!(res.headers()["upgrade"], "websocket");
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate() {
    let h = start(PoolSettings::default()).await;
    let stream = TcpStream::connect(h.wss).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&h.pem).connect(name, stream).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls)
        .await
        .unwrap();
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    assert_eq!(
        h.runtime
            .server("live-tls")
            .unwrap()
            .pool()
            .metrics()
            .messages_in,
        1
    );
}

#[tokio::test]
async fn over_the_limit_the_upgrade_is_refused_before_switching_protocols() {
    let h = start(PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .await;
    let mut first = connect(h.ws).await;
    let stream = TcpStream::connect(h.ws).await.unwrap();
    match tokio_tungstenite::client_async(format!("ws://{}/", h.ws), stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected a 503 refusal, got {other:?}"),
    }
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    let m = h.runtime.server("live").unwrap().pool().metrics();
    assert_eq!((m.accepted, m.rejected), (1, 1));
}

/// Performs the upgrade by hand on a raw socket and returns it, positioned after the 101.
async fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_at_the_pong_deadline() {
    let _isolated = support::isolation::timing().await;
    let h = start(ws_settings(WebSocketSettings {
        ping_interval: Some("200ms".into()),
        pong_timeout: Some("300ms".into()),
        ..Default::default()
    }))
    .await;
    let start = Instant::now();
    let mut s = raw_upgrade(h.ws).await;
    // Read (and ignore) pings until the server drops the connection.
    let mut frames = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut frames))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert!(
        frames.starts_with(&[0x89]),
        "first frame is a ping: {frames:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let mut events = h.runtime.registry().subscribe();
    if !pool.metrics().timeouts.contains(&("pong", 1)) {
        wait_events(&mut events, 1, |k| {
            matches!(
                k,
                PoolEventKind::ConnectionRemoved {
                    reason: CloseReason::Timeout(TimeoutKind::Pong),
                    ..
                }
            )
        })
        .await;
    }
    assert_eq!(pool.metrics().pings_sent, 1);
}

#[tokio::test]
async fn a_chatty_client_is_never_pinged_and_a_quiet_one_is_kept_alive() {
    let _isolated = support::isolation::timing().await;
    let h = start(ws_settings(WebSocketSettings {
        ping_interval: Some("300ms".into()),
        pong_timeout: Some("300ms".into()),
        ..Default::default()
    }))
    .await;
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let mut chatty = connect(h.ws).await;
    for i in 0..20 {
        chatty.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(
            chatty.next().await.unwrap().unwrap(),
            Message::text(format!("{i}"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.metrics().pings_sent, 0, "activity counts as liveness");
    chatty.close(None).await.unwrap();
    while chatty.next().await.is_some() {}
    // A quiet client whose library answers pings stays connected through several intervals.
    let mut quiet = connect(h.ws).await;
    let reader = tokio::spawn(async move {
        // Reading drives tungstenite's automatic pong replies; only pings may arrive.
        let got = tokio::time::timeout(Duration::from_millis(1200), async {
            loop {
                match quiet.next().await {
                    Some(Ok(Message::Ping(_))) => continue,
                    other => return other.map(|r| r.map(|m| m.to_string())),
                }
            }
        })
        .await;
        (got.is_err(), quiet)
    });
    let (still_open, mut quiet) = reader.await.unwrap();
    assert!(still_open, "no frame but pings reached the application");
    quiet.send(Message::text("alive")).await.unwrap();
    assert_eq!(quiet.next().await.unwrap().unwrap(), Message::text("alive"));
    assert!(pool.metrics().pings_sent >= 2);
    let timeouts = pool.metrics().timeouts;
    assert!(timeouts.iter().all(|(_, n)| *n == 0), "{timeouts:?}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_with_1009() {
    let h = start(ws_settings(WebSocketSettings {
        max_message_size: Some(1024),
        max_frame_size: Some(1024),
        ..Default::default()
    }))
    .await;
    let mut ws = connect(h.ws).await;
    ws.send(Message::binary(vec![1u8; 2000])).await.unwrap();
    let code = read_until_close(&mut ws, &mut Vec::new()).await;
    assert_eq!(code, Some(u16::from(CloseCode::Size)));
    let m = h.runtime.server("live").unwrap().pool().metrics();
    assert!(
        m.close_codes.contains(&("1009".to_owned(), 1)),
        "{:?}",
        m.close_codes
    );
}

#[tokio::test]
async fn invalid_utf8_is_refused_with_1007() {
    let h = start(PoolSettings::default()).await;
    let mut s = raw_upgrade(h.ws).await;
    // A masked text frame (FIN, opcode 1) of two bytes that are not UTF-8.
    let mask = [1u8, 2, 3, 4];
    let payload = [0xC3u8, 0x28];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
        .await
        .unwrap();
    // An unmasked close frame carrying 1007 (0x03EF).
    assert_eq!(&reply[..4], &[0x88, reply[1], 0x03, 0xEF], "{reply:?}");
}

#[tokio::test]
async fn shutdown_sends_1001_after_every_earlier_message_is_echoed() {
    let h = start_with(PoolSettings::default(), Duration::from_secs(5)).await;
    let mut ws = connect(h.ws).await;
    for i in 0..50 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    // Wait until the server has taken all fifty, then shut down.
    let pool = h.runtime.server("live").unwrap().pool().clone();
    while pool.metrics().messages_in < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shutdown = tokio::spawn(h.runtime.shutdown());
    let mut echoes = Vec::new();
    let code = read_until_close(&mut ws, &mut echoes).await;
    assert_eq!(code, Some(1001));
    let expected: Vec<Message> = (0..50).map(|i| Message::text(format!("m{i}"))).collect();
    assert_eq!(
        echoes, expected,
        "no message sent before the shutdown is lost"
    );
    // Reading on flushes the client's close reply: the drain then ends without forcing.
    tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} })
        .await
        .unwrap();
    let reports = shutdown.await.unwrap();
    let live = reports.iter().find(|(n, _)| n == "live").unwrap().1;
    assert_eq!(
        (live.open_at_start, live.closed_politely, live.forced),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn lowering_the_limit_closes_idle_websockets_with_1001() {
    let h = start(PoolSettings {
        max_connections: Some(3),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(connect(h.ws).await);
    }
    let mut added = h.runtime.registry().subscribe();
    drop(added.try_recv());
    pool.update_config(&PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .unwrap();
    let mut events = h.runtime.registry().subscribe();
    let (tx, mut closes) = tokio::sync::mpsc::channel(3);
    let mut readers = Vec::new();
    for mut ws in conns {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            if let Some(Ok(Message::Close(frame))) = ws.next().await {
                let _ = ws.close(None).await;
                let _ = tx.send(frame.map(|f| u16::from(f.code))).await;
            }
        }));
    }
    wait_events(&mut events, 2, |k| {
        matches!(
            k,
            PoolEventKind::ConnectionRemoved {
                reason: CloseReason::LimitLowered,
                ..
            }
        )
    })
    .await;
    for _ in 0..2 {
        assert_eq!(closes.recv().await, Some(Some(1001)));
    }
    assert_eq!(pool.active_connections(), 1);
    for r in readers {
        r.abort();
    }
    assert!(pool.metrics().closed.contains(&("limit_lowered", 2)));
}

/// A load balancer's TCP probe (connect, close) and a plain request answered 426 release their
/// slot when the peer closes, not at `headers_timeout`: with `max_connections = 2`, two real
/// upgrades right after three probes are admitted.
#[tokio::test]
async fn a_tcp_probe_or_a_refused_plain_request_releases_its_slot_at_once() {
    let h = start(PoolSettings {
        max_connections: Some(2),
        headers_timeout: Some("60s".into()),
        keep_alive_timeout: Some("60s".into()),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let mut events = h.runtime.registry().subscribe();
    for _ in 0..3 {
        drop(TcpStream::connect(h.ws).await.unwrap());
    }
    let closed = wait_events(&mut events, 3, |e| {
        matches!(e, PoolEventKind::ConnectionRemoved { .. })
    })
    .await;
    for e in closed {
        let PoolEventKind::ConnectionRemoved { reason, .. } = e else {
            unreachable!()
        };
        assert_eq!(reason, CloseReason::Completed);
    }
    assert_eq!(pool.active_connections(), 0);
    let mut a = connect(h.ws).await;
    let mut b = connect(h.ws).await;
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("up")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("up"));
    }
    drop((a, b));
    wait_until("the upgrades' slots are free", || {
        pool.active_connections() == 0
    })
    .await;

    // A plain GET answered 426, then closed by the client: the slot goes with it.
    let mut s = TcpStream::connect(h.ws).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 426");
    drop(s);
    wait_until("the refused request's slot is free", || {
        pool.active_connections() == 0
    })
    .await;
}

/// `websocket.ping_interval` changed live reaches open connections at once: a connection
/// accepted under a 60 s interval is pinged within a second of the change to 300 ms.
#[tokio::test]
async fn a_live_change_of_ping_interval_reaches_open_connections() {
    let h = start(ws_settings(WebSocketSettings {
        ping_interval: Some("60s".into()),
        ..Default::default()
    }))
    .await;
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let mut ws = connect(h.ws).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    pool.update_config(&ws_settings(WebSocketSettings {
        ping_interval: Some("300ms".into()),
        ..Default::default()
    }))
    .unwrap();
    let ping = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await
        .expect("a ping after the change");
    assert!(matches!(ping, Some(Ok(Message::Ping(_)))), "{ping:?}");
    assert_eq!(pool.metrics().pings_sent, 1);
}

/// A masked text frame "hi" as a client sends it (an all-zero mask), and the server's echo.
const HI_FROM_CLIENT: &[u8] = &[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'];
const HI_ECHO: &[u8] = &[0x81, 0x02, b'h', b'i'];

/// Connections that have exchanged messages are shed on a lowered limit like idle ones
/// (close 1001 after the message in hand), and a shed peer that never answers the close is
/// closed at `pong_timeout`.
#[tokio::test]
async fn lowering_the_limit_sheds_websockets_that_talked_and_bounds_their_close() {
    let h = start(PoolSettings {
        max_connections: Some(4),
        websocket: Some(WebSocketSettings {
            pong_timeout: Some("500ms".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("live").unwrap().pool().clone();
    // Two clients that answer the close, two raw ones that never do; all four have talked.
    let mut answering = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(h.ws).await;
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        answering.push(ws);
    }
    let mut silent = Vec::new();
    for _ in 0..2 {
        let mut s = raw_upgrade(h.ws).await;
        s.write_all(HI_FROM_CLIENT).await.unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, HI_ECHO);
        silent.push(s);
    }
    let mut events = h.runtime.registry().subscribe();
    pool.update_config(&PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .unwrap();
    let mut readers = Vec::new();
    for mut ws in answering {
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Close(_)) {
                    let _ = ws.close(None).await;
                }
            }
        }));
    }
    let closes = wait_events(&mut events, 3, |k| {
        matches!(k, PoolEventKind::ConnectionRemoved { .. })
    })
    .await;
    let reasons: Vec<CloseReason> = closes
        .into_iter()
        .map(|e| match e {
            PoolEventKind::ConnectionRemoved { reason, .. } => reason,
            _ => unreachable!(),
        })
        .collect();
    let unanswered = reasons
        .iter()
        .filter(|r| **r == CloseReason::Timeout(TimeoutKind::Pong))
        .count();
    assert!(unanswered >= 1, "{reasons:?}");
    assert_eq!(pool.active_connections(), 1);
    for r in readers {
        r.abort();
    }
    drop(silent);
}

/// The upgrade request, raw.
const UPGRADE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\
connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
sec-websocket-version: 13\r\n\r\n";

/// Reads a response head byte by byte, so nothing after it is consumed.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The server reads a request's first byte before it starts the HTTP/1 connection (which then
/// takes its buffers): the rest of the request, whether it came with that byte or later, and a
/// frame sent in the same write as the request reach the session.
#[tokio::test]
async fn an_upgrade_in_pieces_or_with_its_first_frame_is_served() {
    let h = start(PoolSettings::default()).await;

    // The request and a masked text frame "hi" in one write.
    let mut s = TcpStream::connect(h.ws).await.unwrap();
    let mut bytes = UPGRADE_REQUEST.to_vec();
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x82]);
    bytes.extend_from_slice(&mask);
    bytes.extend_from_slice(&[b'h' ^ mask[0], b'i' ^ mask[1]]);
    s.write_all(&bytes).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut echo = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut echo))
        .await
        .expect("the frame sent with the request is echoed")
        .unwrap();
    assert_eq!(echo, [0x81, 0x02, b'h', b'i']);

    // The first byte alone, then the rest once the server has it.
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let before = pool.metrics().bytes_in;
    let mut s = TcpStream::connect(h.ws).await.unwrap();
    s.write_all(&UPGRADE_REQUEST[..1]).await.unwrap();
    // The byte is counted once the connection's socket reports it: the server has read it.
    wait_until("the first byte is read", || {
        pool.metrics().bytes_in > before
    })
    .await;
    s.write_all(&UPGRADE_REQUEST[1..]).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// A request that stops after its first byte is bounded by `headers_timeout` as any other.
#[tokio::test]
async fn a_request_stalled_after_its_first_byte_is_closed_at_headers_timeout() {
    let h = start(PoolSettings {
        headers_timeout: Some("300ms".into()),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let mut s = TcpStream::connect(h.ws).await.unwrap();
    let started = Instant::now();
    s.write_all(b"G").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the server closes")
        .unwrap_or_default();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    wait_until("the timeout is counted", || {
        pool.metrics()
            .timeouts
            .iter()
            .any(|(k, n)| *k == TimeoutKind::Headers.as_str() && *n == 1)
    })
    .await;
}

/// A drain closes a connection whose request has not begun at once, with no request lost: the
/// polite close reaches the wait for the first byte.
#[tokio::test]
async fn a_drain_closes_a_connection_whose_request_has_not_begun() {
    let h = start_with(PoolSettings::default(), Duration::from_secs(30)).await;
    let pool = h.runtime.server("live").unwrap().pool().clone();
    let mut s = TcpStream::connect(h.ws).await.unwrap();
    wait_until("the connection is admitted", || {
        pool.active_connections() == 1
    })
    .await;
    let started = Instant::now();
    let shutdown = tokio::spawn(h.runtime.shutdown());
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the server closes")
        .unwrap_or_default();
    assert!(rest.is_empty(), "{rest:?}");
    let reports = shutdown.await.unwrap();
    let live = reports.iter().find(|(n, _)| n == "live").unwrap().1;
    assert_eq!((live.closed_politely, live.forced), (1, 0));
    // Well inside the 30 s drain deadline.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
