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
            idle_timeout: Some("800ms".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let mut events = server.pool().subscribe();
    let mut ws = connect(&server).await;
    // Twice the idle timeout of steady traffic: the connection stays.
    for i in 0..8 {
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
        quiet.elapsed() >= Duration::from_millis(700),
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
