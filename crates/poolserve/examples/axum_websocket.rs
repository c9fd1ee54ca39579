//! An axum router whose `/ws` route upgrades into a WebSocket that stays in the poolserve pool:
//! counted, bounded and drained with the server's other connections.
//!
//! Run: `cargo run -p poolserve --example axum_websocket -- 127.0.0.1:8080`, then connect
//! a WebSocket client to `ws://127.0.0.1:8080/ws`. Ctrl-C drains: open sockets get close 1001.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use poolserve_pool::{PoolConfig, PoolRegistry};
use poolserve_server::{PooledConnection, Protocol, Server, ServerOptions};

/// The route: accept the upgrade, keeping the handle to the pooled connection.
async fn ws_route(
    upgrade: WebSocketUpgrade,
    Extension(pooled): Extension<PooledConnection>,
) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, pooled))
}

/// Echoes messages until the peer leaves, or says goodbye (1001) when the pool asks.
async fn echo(mut socket: WebSocket, pooled: PooledConnection) {
    loop {
        tokio::select! {
            () = pooled.closing() => {
                let goodbye = CloseFrame { code: 1001, reason: "server going away".into() };
                let _ = socket.send(Message::Close(Some(goodbye))).await;
                // Wait for the peer's close; the pool's drain deadline bounds this.
                while let Some(Ok(_)) = socket.recv().await {}
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// The app: a plain route and the WebSocket route.
pub fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/ws", get(ws_route))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let registry = PoolRegistry::new();
    let options = ServerOptions {
        name: "app".into(),
        protocol: Protocol::Http,
        listen,
        tls: None,
        pool: PoolConfig::default(),
    };
    let server = Server::start(&registry, options, app()).await?;
    println!("listening on {}", server.local_addr());
    tokio::signal::ctrl_c().await?;
    let report = server.shutdown(Duration::from_secs(10)).await;
    println!("drained: {report:?}");
    Ok(())
}
