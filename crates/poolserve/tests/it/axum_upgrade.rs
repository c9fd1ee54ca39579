//! An axum route that upgrades to WebSocket on an `http` server: the upgraded connection stays
//! pooled, hears a polite close, and is cut at the drain deadline if it ignores it.

#[path = "../../examples/axum_websocket.rs"]
#[allow(dead_code)]
mod example;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poolserve_pool::{PoolConfig, PoolRegistry};
use poolserve_server::{Protocol, Server, ServerOptions};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> Server {
    let options = ServerOptions {
        name: "app".into(),
        protocol: Protocol::Http,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: PoolConfig::default(),
    };
    Server::start(&PoolRegistry::new(), options, example::app())
        .await
        .unwrap()
}

async fn connect(server: &Server) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let addr = server.local_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
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
