//! `drain_delay` (A5): a stopping server is announced as not ready at once (`/readyz` 503, gRPC
//! health NOT_SERVING) and goes on accepting and serving every protocol for the delay, so a
//! load balancer notices before its listener closes; then it drains as usual. A server removed
//! by a reload does the same; one whose socket a replacing server takes over (in the same
//! reload or a later one, during its delay) drains at once.

use crate::support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use poolserve_demo::grpc::proto::echo_client::EchoClient;
use poolserve_demo::grpc::proto::EchoRequest;
use poolserve_pool::{HealthStatus, PoolSettings};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Long enough for every check made while a server is leaving to finish on a loaded machine.
const DELAY: Duration = Duration::from_secs(6);

/// A `Watch` of the server's own gRPC health status on `addr`, its first reply read.
async fn watch_health(
    addr: std::net::SocketAddr,
) -> (tonic::Streaming<tonic_health::pb::HealthCheckResponse>, i32) {
    let mut health = HealthClient::new(grpc_channel(addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().status;
    (watch, first)
}

/// The next status a `Watch` streams.
async fn next_status(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("Watch streams the change")
        .unwrap()
        .unwrap()
        .status
}

/// A new connection of each protocol is accepted and served as usual: HTTP/1.1 (no
/// `Connection: close`), HTTPS, h2c, gRPC and WebSocket.
async fn every_protocol_serves(
    http: std::net::SocketAddr,
    https: Option<(std::net::SocketAddr, &poolserve_server::tls::PemPair)>,
    h2c: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    ws: std::net::SocketAddr,
) {
    let res = get(http, "/").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("connection").is_none(), "{res:?}");
    if let Some((addr, pem)) = https {
        let stream = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tls_connector(pem).connect(name, stream).await.unwrap();
        assert_eq!(Client::over(addr, tls).await.get("/").await.status(), 200);
    }
    let (mut h2, _conn) = H2Client::connect(h2c).await;
    assert_eq!(h2.get("/").await.status(), 200);
    let mut echo = EchoClient::new(grpc_channel(grpc).await);
    let reply = echo
        .unary(EchoRequest {
            message: "still here".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "still here");
    let stream = TcpStream::connect(ws).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(format!("ws://{ws}/"), stream)
        .await
        .unwrap();
    socket.send(Message::text("ping?")).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("ping?"));
}

#[tokio::test]
async fn shutdown_serves_on_unready_for_the_drain_delay_then_drains() {
    let _timing = isolation::timing().await;
    let h = start_tuned(PoolSettings::default(), Duration::from_secs(5), |c| {
        c.drain_delay = DELAY;
    })
    .await;
    let (status, config) = admin(h.admin, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["drain_delay"], "6s", "{config}");
    let web = h.runtime.server("web").unwrap().pool().clone();
    let (mut watch, first) = watch_health(h.grpc).await;
    assert_eq!(first, ServingStatus::Serving as i32);
    let mut kept = Client::connect(h.http).await;
    assert_eq!(kept.get("/").await.status(), 200);

    let started = Instant::now();
    let shutdown = tokio::spawn(h.runtime.shutdown());
    // At once: gRPC health NOT_SERVING, the pools unavailable, readiness 503.
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );
    wait_until("web to be unavailable", || {
        web.health().status == HealthStatus::Unavailable
    })
    .await;
    assert!(
        web.health().message.contains("leaving"),
        "{:?}",
        web.health()
    );
    let (status, body) = admin(h.admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(health(h.admin).await["status"], "unavailable");
    // The servers are still listed with the sockets they accept on.
    let (_, config) = admin(h.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let listed = config["servers"].as_array().unwrap();
    let web_entry = listed.iter().find(|s| s["name"] == "web").unwrap();
    assert_eq!(web_entry["listening_sockets"], 1, "{config}");

    // Meanwhile every listener accepts and serves as usual, and a kept-alive connection is
    // not asked to close.
    every_protocol_serves(h.http, Some((h.https, &h.pem)), h.h2c, h.grpc, h.ws).await;
    let res = kept.get("/").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("connection").is_none(), "{res:?}");
    assert!(
        started.elapsed() < DELAY,
        "the checks ran within the delay ({:?}): the machine is too slow for this test",
        started.elapsed()
    );

    // Then the listeners close and the drain runs.
    let reports = shutdown.await.unwrap();
    assert!(started.elapsed() >= DELAY, "{:?}", started.elapsed());
    for (name, report) in &reports {
        assert_eq!(report.forced, 0, "{name}: {report:?}");
    }
    kept.closed().await;
    assert!(TcpStream::connect(h.http).await.is_err(), "listener closed");
}

#[tokio::test]
async fn a_server_removed_by_reload_serves_on_unready_for_the_drain_delay() {
    let _timing = isolation::timing().await;
    // No delay at start: the reload that removes the servers sets it, and it applies to them.
    let h = start(PoolSettings::default()).await;
    let web = h.runtime.server("web").unwrap();
    let rpc = h.runtime.server("rpc").unwrap();
    let (mut watch, first) = watch_health(h.grpc).await;
    assert_eq!(first, ServingStatus::Serving as i32);

    let mut next = h.runtime.config();
    next.servers
        .retain(|s| !["web", "rpc", "h2c", "live"].contains(&s.name.as_str()));
    next.drain_delay = DELAY;
    let started = Instant::now();
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_removed.len(), 4, "{report:?}");
    let (_, config) = admin(h.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["drain_delay"], "6s", "live: {config}");
    // Out of /health and /readyz at once; the gRPC server says NOT_SERVING on its own port.
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );
    let doc = health(h.admin).await;
    assert!(doc["pools"].get("web").is_none(), "{doc}");
    assert_eq!(admin(h.admin, "/readyz").await.0, 200);
    // The removed servers still accept and serve every protocol for the delay.
    every_protocol_serves(h.http, None, h.h2c, h.grpc, h.ws).await;
    assert!(
        started.elapsed() < DELAY,
        "the checks ran within the delay ({:?}): the machine is too slow for this test",
        started.elapsed()
    );
    // Then they drain and close their listeners.
    wait_until("web to stop accepting", || !web.pool().is_accepting()).await;
    assert!(started.elapsed() >= DELAY, "{:?}", started.elapsed());
    wait_until("rpc to stop accepting", || !rpc.pool().is_accepting()).await;
    wait_until("web's listener to close", || !listening(web.local_addr())).await;
    assert!(TcpStream::connect(h.http).await.is_err(), "listener closed");
}

/// Whether something listens on `addr`.
fn listening(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

#[tokio::test]
async fn a_server_that_hands_its_socket_over_drains_without_the_delay() {
    let h = start_tuned(PoolSettings::default(), Duration::from_secs(5), |c| {
        // Far longer than any wait here: a delay would show as a timeout.
        c.drain_delay = Duration::from_secs(600);
    })
    .await;
    let old = h.runtime.server("h2c").unwrap();
    let (mut idle, conn) = H2Client::connect(h.h2c).await;
    assert_eq!(idle.get("/").await.status(), 200);

    // `h2c` leaves the file and `b` takes its address (and so its socket).
    let mut next = h.runtime.config();
    let at = next.servers.iter().position(|s| s.name == "h2c").unwrap();
    let mut b = next.servers.remove(at);
    b.name = "b".into();
    b.listen = h.h2c;
    next.servers.push(b);
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_removed, ["h2c"], "{report:?}");

    // The old pool drains at once: its idle HTTP/2 connection gets GOAWAY and ends.
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("the old server's connection closes without waiting for drain_delay")
        .unwrap()
        .ok();
    assert!(!old.pool().is_accepting());
    let (mut fresh, _conn) = H2Client::connect(h.h2c).await;
    assert_eq!(fresh.get("/").await.status(), 200, "b serves the address");

    // A server removed earlier and still serving out its delay hands its socket over too, to
    // a server a later reload starts on its address, and then drains at once.
    let web = h.runtime.server("web").unwrap();
    let mut kept = Client::connect(h.http).await;
    assert_eq!(kept.get("/").await.status(), 200);
    let mut next = h.runtime.config();
    let at = next.servers.iter().position(|s| s.name == "web").unwrap();
    let mut c = next.servers.remove(at);
    h.runtime.reload(&next).await.unwrap();
    assert_eq!(
        get(h.http, "/").await.status(),
        200,
        "web serves on, leaving"
    );
    assert!(web.pool().is_accepting());
    c.name = "c".into();
    c.listen = h.http;
    next.servers.push(c);
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_added, ["c"], "{report:?}");
    // (Its kept-alive connection would close at keep_alive_timeout anyway: the drain is the
    // signal.)
    wait_until("web to drain", || !web.pool().is_accepting()).await;
    kept.closed().await;
    let c = h.runtime.server("c").unwrap();
    assert_eq!(get(h.http, "/").await.status(), 200);
    assert_eq!(c.pool().metrics().requests, 1, "c serves the address");
}
