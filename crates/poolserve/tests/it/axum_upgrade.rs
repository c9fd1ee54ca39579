//! An axum route that upgrades to WebSocket on an `http` server: the upgraded connection stays
//! pooled, hears a polite close, and is cut at the drain deadline if it ignores it.

#[path = "../../examples/axum_websocket.rs"]
#[allow(dead_code)]
mod example;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poolserve_pool::{
    CloseReason, PoolConfig, PoolEventKind, PoolRegistry, PoolSettings, TimeoutKind,
    WebSocketSettings,
};
use poolserve_server::{Protocol, Server, ServerOptions};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> Server {
    start_with(PoolSettings::default()).await
}

async fn start_with(settings: PoolSettings) -> Server {
    let options = ServerOptions {
        name: "app".into(),
        protocol: Protocol::Http,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: PoolConfig::default().apply(&settings, "pool.").unwrap().0,
    };
    Server::start(&PoolRegistry::new(), options, example::app())
        .await
        .unwrap()
}

async fn connect(server: &Server) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let addr = server.local_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    upgrade(addr, stream).await
}

async fn upgrade(
    addr: std::net::SocketAddr,
    stream: TcpStream,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn an_upgraded_route_stays_pooled_and_drains_with_1001() {
    let server = start().await;
    let pool = server.pool().clone();
    let mut ws = connect(&server).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    // hyper is done with the connection, but the pool still counts it.
    assert_eq!(pool.active_connections(), 1);
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    let close = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} })
        .await
        .unwrap();
    let report = shutdown.await.unwrap();
    assert_eq!(
        (report.open_at_start, report.closed_politely, report.forced),
        (1, 1, 0)
    );
    assert_eq!(pool.active_connections(), 0);
}

#[tokio::test]
async fn an_upgraded_connection_that_ignores_the_close_is_cut_at_the_deadline() {
    let server = start().await;
    let pool = server.pool().clone();
    let mut ws = connect(&server).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let report = server.shutdown(Duration::from_millis(300)).await;
    // The client never answered the 1001 (it did not read), so the deadline closed the socket.
    assert_eq!((report.open_at_start, report.forced), (1, 1));
    let rest = tokio::time::timeout(WAIT, async {
        let mut frames = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            frames.push(m);
        }
        frames
    })
    .await
    .expect("the socket is closed");
    assert!(matches!(rest.first(), Some(Message::Close(_))), "{rest:?}");
    assert_eq!(pool.active_connections(), 0);
}

#[tokio::test]
async fn plain_routes_still_work_next_to_the_upgrade() {
    let server = start().await;
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("hello"), "{reply}");
}

/// The next connection close the pool announces.
async fn next_close(events: &mut poolserve_pool::Subscription) -> CloseReason {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(e) = events.recv().await {
                if let PoolEventKind::ConnectionRemoved { reason, .. } = e.kind {
                    return reason;
                }
            }
        }
    })
    .await
    .expect("the pool closes the connection")
}

/// An upgrade that is the connection's last request allowed still switches protocols (its 101
/// keeps `Connection: upgrade`), and the upgraded connection, past its age, hears the pool's
/// polite close, which the handler turns into close 1001.
#[tokio::test]
async fn an_upgrade_at_the_request_limit_switches_and_gets_1001_at_its_age() {
    let server = start_with(PoolSettings {
        max_requests_per_connection: Some(1),
        max_connection_age: Some("1s".into()),
        ..Default::default()
    })
    .await;
    let mut events = server.pool().subscribe();
    let mut ws = connect(&server).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let close = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    drop(ws);
    assert_eq!(next_close(&mut events).await, CloseReason::MaxAge);
}

/// A peer that stops reading what the handler writes is cut like on any connection: the
/// blocked write in the handler's task becomes the pool's stall deadline.
#[tokio::test]
async fn an_upgraded_peer_that_stops_reading_is_cut_as_a_write_stall() {
    let server = start_with(PoolSettings {
        connection_timeout: Some("500ms".into()),
        ..Default::default()
    })
    .await;
    let mut events = server.pool().subscribe();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.local_addr()).await.unwrap();
    let ws = upgrade(server.local_addr(), stream).await;
    // 16 MiB to echo, never read back: the handler's echo blocks on the full socket.
    let (mut tx, _rx) = ws.split();
    let writer = tokio::spawn(async move {
        for _ in 0..16 {
            if tx.send(Message::binary(vec![1u8; 1 << 20])).await.is_err() {
                break;
            }
        }
    });
    assert_eq!(
        next_close(&mut events).await,
        CloseReason::Timeout(TimeoutKind::WriteStall)
    );
    assert_eq!(server.pool().active_connections(), 0);
    writer.abort();
}

/// `websocket.idle_timeout` counts from the last traffic either way on an upgraded
/// connection, not from the upgrade.
#[tokio::test]
async fn an_upgraded_connections_idle_timeout_counts_from_its_last_traffic() {
    let server = start_with(PoolSettings {
        websocket: Some(WebSocketSettings {
            idle_timeout: Some("1500ms".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let mut events = server.pool().subscribe();
    let mut ws = connect(&server).await;
    // Longer than the idle timeout of steady traffic (a message every 200 ms, a wide margin
    // on a loaded machine): the connection stays.
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    assert_eq!(server.pool().active_connections(), 1);
    // Then silence: closed as idle.
    let quiet = std::time::Instant::now();
    assert_eq!(
        next_close(&mut events).await,
        CloseReason::Timeout(TimeoutKind::Idle)
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        quiet.elapsed()
    );
}

/// The server's end of an upgraded connection has TCP keepalive on, so a peer that vanished
/// without a FIN or RST is found even though nobody pings it (`/proc/net/tcp` shows the
/// socket's keepalive timer).
#[tokio::test]
async fn an_upgraded_connection_has_tcp_keepalive_for_a_vanished_peer() {
    let server = start().await;
    let port = server.local_addr().port();
    let mut ws = connect(&server).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    // Fields: sl, local address, remote address, state, queues, timer:when, ... Timer 02 is
    // keepalive; an unacked write shows 01 (retransmit) until its ack, so look again then.
    let server_timer = || {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let ends: Vec<String> = tcp
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f[1].ends_with(&format!(":{port:04X}")) && f[3] == "01")
            .map(|f| f[5].to_owned())
            .collect();
        assert_eq!(ends.len(), 1, "{tcp}");
        ends[0].clone()
    };
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            let timer = server_timer();
            if timer.starts_with("02:") {
                return timer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "no keepalive timer: {}", server_timer());
}

/// A server whose `/ws` route answers its upgrade only once `gate` is notified, so a test can
/// change the pool while upgrade requests are in flight; upgraded sockets echo and say 1001
/// when the pool asks them to close.
async fn start_gated(settings: PoolSettings, gate: std::sync::Arc<tokio::sync::Notify>) -> Server {
    use axum::extract::ws::{CloseFrame, Message as AxumMessage, WebSocketUpgrade};
    use axum::routing::get;
    use axum::Extension;
    use poolserve_server::PooledConnection;
    let route = move |upgrade: WebSocketUpgrade, Extension(pooled): Extension<PooledConnection>| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            upgrade.on_upgrade(move |mut socket| async move {
                loop {
                    tokio::select! {
                        () = pooled.closing() => {
                            let bye = CloseFrame { code: 1001, reason: "going away".into() };
                            let _ = socket.send(AxumMessage::Close(Some(bye))).await;
                            while let Some(Ok(_)) = socket.recv().await {}
                            return;
                        }
                        m = socket.recv() => match m {
                            Some(Ok(m @ AxumMessage::Text(_))) => {
                                if socket.send(m).await.is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                    }
                }
            })
        }
    };
    let options = ServerOptions {
        name: "gated".into(),
        protocol: Protocol::Http,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: PoolConfig::default().apply(&settings, "pool.").unwrap().0,
    };
    let app = axum::Router::new().route("/ws", get(route));
    Server::start(&PoolRegistry::new(), options, app)
        .await
        .unwrap()
}

/// Reads until the server's close frame; its code.
async fn close_code(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the server closes")
}

/// Upgrades answered while the pool is over a lowered limit complete (their 101 keeps
/// `Connection: upgrade`), and the pool then sheds the excess upgraded connection with 1001.
#[tokio::test]
async fn an_upgrade_answered_over_a_lowered_limit_completes_and_is_then_shed() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let server = start_gated(
        PoolSettings {
            max_connections: Some(2),
            ..Default::default()
        },
        gate.clone(),
    )
    .await;
    let pool = server.pool().clone();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                async move { upgrade(addr, TcpStream::connect(addr).await.unwrap()).await },
            )
        })
        .collect();
    // Both upgrade requests are in flight, then the limit drops to 1.
    tokio::time::timeout(WAIT, async {
        while pool.metrics().requests_in_flight < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    pool.update_config(&PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .unwrap();
    gate.notify_waiters();
    let mut sockets = Vec::new();
    for c in clients {
        sockets.push(c.await.unwrap());
    }
    let (a, b) = sockets.split_at_mut(1);
    let (x, y) = (&mut a[0], &mut b[0]);
    // One of the two is told 1001; the other still echoes.
    let shed = tokio::select! {
        code = close_code(x) => (code, 1),
        code = close_code(y) => (code, 0),
    };
    assert_eq!(shed.0, Some(1001));
    let kept = &mut sockets[shed.1];
    kept.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        kept.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}

/// A drain that starts while an upgrade is being answered reaches the handler once the
/// connection is upgraded: it says 1001 and the connection closes politely, not at the
/// drain deadline.
#[tokio::test]
async fn a_drain_begun_during_an_upgrade_reaches_the_upgraded_handler() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let server = start_gated(PoolSettings::default(), gate.clone()).await;
    let pool = server.pool().clone();
    let addr = server.local_addr();
    let client =
        tokio::spawn(async move { upgrade(addr, TcpStream::connect(addr).await.unwrap()).await });
    tokio::time::timeout(WAIT, async {
        while pool.metrics().requests_in_flight < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let mut control = pool.control();
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(8)));
    control
        .wait_for(|s| s.stage != poolserve_pool::Stage::Serving)
        .await
        .unwrap();
    gate.notify_waiters();
    let mut ws = client.await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1001));
    // Reading on sends tungstenite's close reply and sees the socket close.
    tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} })
        .await
        .unwrap();
    let report = tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert_eq!((report.open_at_start, report.forced), (1, 0));
}
