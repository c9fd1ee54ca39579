//! A user's axum router on a pooled `http2` server (h2c with prior knowledge): every stream is
//! a request of its connection's pool entry, bounded by the pool's HTTP/2 settings.
//!
//! Run: `cargo run -p poolserve-server --example http2_axum -- 127.0.0.1:8082`, then
//! `curl --http2-prior-knowledge http://127.0.0.1:8082/hello/you`. Ctrl-C drains with GOAWAY.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use poolserve_pool::{PoolConfig, PoolRegistry};
use poolserve_server::{Protocol, Server, ServerOptions};

/// The user's app.
pub fn app() -> Router {
    Router::new()
        .route(
            "/hello/{name}",
            get(|Path(name): Path<String>| async move { format!("hello, {name}") }),
        )
        .route(
            "/upper",
            post(|body: String| async move { body.to_uppercase() }),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".into())
        .parse()?;
    let options = ServerOptions {
        name: "app-h2".into(),
        protocol: Protocol::Http2,
        listen,
        tls: None,
        pool: PoolConfig::default(),
    };
    let server = Server::start(&PoolRegistry::new(), options, app()).await?;
    println!("listening on {}", server.local_addr());
    tokio::signal::ctrl_c().await?;
    let report = server.shutdown(Duration::from_secs(10)).await;
    println!("drained: {report:?}");
    Ok(())
}
