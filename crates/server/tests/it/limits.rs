//! Admission limits against real sockets: exact enforcement, refusal before any protocol work,
//! live raising and lowering.

use crate::support;

use std::time::Duration;

use poolserve_pool::{CloseReason, PoolEventKind, PoolSettings};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn http_limit_is_exact_and_refusals_get_a_503_without_parsing() {
    let h = start(PoolSettings {
        max_connections: Some(3),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(h.http).await;
        assert_eq!(c.get("/").await.status(), 200);
        held.push(c);
    }
    let mut events = h.runtime.registry().subscribe();
    // Two more: refused with a fixed 503, before a byte of the request is read.
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.http).await.unwrap();
        let reply = read_to_close(&mut s).await;
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        let lower = reply.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{reply}");
        assert!(lower.contains("retry-after: 1"), "{reply}");
    }
    let refused = wait_events(&mut events, 2, |k| {
        matches!(k, PoolEventKind::PoolLimitReached { .. })
    })
    .await;
    for event in &refused {
        assert!(
            matches!(
                event,
                PoolEventKind::PoolLimitReached {
                    limit: "max_connections",
                    active: 3,
                    max: Some(3),
                    ..
                }
            ),
            "{event:?}"
        );
    }
    // The held connections are still served.
    for c in &mut held {
        assert_eq!(c.get("/").await.status(), 200);
    }
    let labels = "server=\"web\"";
    assert_eq!(
        metric(h.admin, "poolserve_connections_active", labels).await,
        3.0
    );
    assert_eq!(
        metric(h.admin, "poolserve_connections_accepted_total", labels).await,
        3.0
    );
    assert_eq!(
        metric(
            h.admin,
            "poolserve_connections_rejected_total",
            "server=\"web\",protocol=\"http\",reason=\"max_connections\""
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(h.admin, "poolserve_pool_max_connections", labels).await,
        3.0
    );
    assert_eq!(
        metric(h.admin, "poolserve_requests_total", labels).await,
        6.0
    );
    let health = health(h.admin).await;
    let web = &health["pools"]["web"];
    assert_eq!(web["status"], "overloaded", "{health}");
    // The human message says why, naming both causes.
    let message = web["message"].as_str().unwrap_or_default();
    assert!(message.contains("utilisation 100% ≥ 95%"), "{message}");
    assert!(message.contains("2 connection(s) refused"), "{message}");
    assert_eq!(web["active_connections"], 3);
    assert_eq!(web["max_connections"], 3);
    assert_eq!(web["rejected_connections"], 2);
    assert_eq!(web["utilization_ratio"], 1.0);
    assert_eq!(health["status"], "overloaded");
    let (ready, why) = admin(h.admin, "/readyz").await;
    assert_eq!(ready, 503, "{why}");
    assert!(why.contains("web"), "{why}");

    // A freed slot is usable again.
    let c = held.pop().unwrap();
    drop(c);
    let mut events = h.runtime.registry().subscribe();
    let mut again = None;
    for _ in 0..50 {
        if h.runtime.server("web").unwrap().pool().active_connections() < 3 {
            let mut c = Client::connect(h.http).await;
            assert_eq!(c.get("/").await.status(), 200);
            again = Some(c);
            break;
        }
        wait_events(&mut events, 1, |k| {
            matches!(k, PoolEventKind::ConnectionRemoved { .. })
        })
        .await;
    }
    assert!(again.is_some());
}

#[tokio::test]
async fn tls_refusal_closes_before_the_handshake() {
    let h = start(PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .await;
    let mut first = tls_client(&h).await.unwrap();
    assert_eq!(first.get("/").await.status(), 200);
    let mut events = h.runtime.registry().subscribe();
    // The refused peer gets no ServerHello: the socket is closed with nothing written.
    let mut s = TcpStream::connect(h.https).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .ok();
    assert!(buf.is_empty(), "nothing may be written before admission");
    let refused = wait_events(&mut events, 1, |k| {
        matches!(k, PoolEventKind::PoolLimitReached { .. })
    })
    .await;
    assert!(matches!(
        refused[0],
        PoolEventKind::PoolLimitReached {
            limit: "max_connections",
            active: 1,
            max: Some(1),
            ..
        }
    ));
    // A real TLS client's handshake fails: the server closed without a ServerHello.
    assert!(tls_client(&h).await.is_err());
    assert_eq!(first.get("/").await.status(), 200);
    let m = h.runtime.server("web-tls").unwrap().pool().metrics();
    assert_eq!(m.accepted, 1);
    assert!(m.rejected >= 1);
}

#[tokio::test]
async fn http2_and_grpc_over_tls_refuse_before_the_handshake() {
    let h = start(PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .await;
    for (server, addr) in [("h2", h.h2), ("rpc-tls", h.grpc_tls)] {
        let pool = h.runtime.server(server).unwrap().pool().clone();
        let (mut first, _conn) = H2Client::connect_tls(addr, &h.pem).await;
        assert_eq!(first.get("/").await.version(), http::Version::HTTP_2);
        // The refused peer gets neither a ServerHello nor any HTTP/2 frame.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .unwrap()
            .ok();
        assert!(
            buf.is_empty(),
            "{server}: {} bytes before admission",
            buf.len()
        );
        let stream = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let handshake = tls_connector_alpn(&h.pem, &[b"h2"])
            .connect(name, stream)
            .await;
        assert!(
            handshake.is_err(),
            "{server}: a refused handshake succeeded"
        );
        // The admitted connection goes on.
        assert_eq!(first.get("/").await.version(), http::Version::HTTP_2);
        let m = pool.metrics();
        assert_eq!((m.accepted, m.active), (1, 1), "{server}");
        assert!(m.rejected >= 2, "{server}: {} rejected", m.rejected);
    }
}

#[tokio::test]
async fn per_ip_limit_applies_to_the_peer_address() {
    let h = start(PoolSettings {
        max_connections_per_ip: Some(2),
        ..Default::default()
    })
    .await;
    let mut a = Client::connect(h.http).await;
    let mut b = Client::connect(h.http).await;
    assert_eq!(a.get("/").await.status(), 200);
    assert_eq!(b.get("/").await.status(), 200);
    let reply = raw_exchange(h.http, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
    let events = h.runtime.server("web").unwrap().pool().metrics();
    assert_eq!(events.rejected, 1);
}

/// A plain HTTP server of its own on `listen`, with a per-IP limit of 1.
async fn one_per_ip_server(listen: &str) -> poolserve_server::Server {
    let options = poolserve_server::ServerOptions {
        name: "one-each".into(),
        protocol: poolserve_server::Protocol::Http,
        listen: listen.parse().unwrap(),
        tls: None,
        pool: pool(PoolSettings {
            max_connections_per_ip: Some(1),
            ..Default::default()
        }),
    };
    let registry = poolserve_pool::PoolRegistry::new();
    poolserve_server::Server::start(&registry, options, poolserve_demo::routes::service())
        .await
        .unwrap()
}

/// A connection from `from` to `to` and the status of one `GET /` on it (a refusal is a 503);
/// the connection is kept open.
async fn client_from(from: &str, to: std::net::SocketAddr) -> (TcpStream, u16) {
    use tokio::io::AsyncWriteExt;
    let from: std::net::SocketAddr = from.parse().unwrap();
    let socket = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    socket.bind(from).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("an answer")
        .unwrap();
    let status = std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap();
    (stream, status)
}

/// Real IPv6 peers: the per-IP limit applies to a client on ::1 (keyed by its /64, the only
/// IPv6 loopback address there is: two distinct addresses of one /64 are shown by the pool's
/// own test, `ipv6_clients_of_one_prefix_share_the_per_ip_limit`). IPv4 clients of a
/// dual-stack socket arrive as IPv4-mapped IPv6 addresses, which all share one /64: each is
/// still its own client.
#[tokio::test]
async fn the_per_ip_limit_keys_ipv6_peers_and_keeps_ipv4_mapped_ones_apart() {
    let v6 = one_per_ip_server("[::1]:0").await;
    let (_held, status) = client_from("[::1]:0", v6.local_addr()).await;
    assert_eq!(status, 200);
    let (_, status) = client_from("[::1]:0", v6.local_addr()).await;
    assert_eq!(status, 503, "a second connection from ::1");
    assert!(
        v6.pool()
            .metrics()
            .rejected_by_reason
            .contains(&("per_ip", 1)),
        "{:?}",
        v6.pool().metrics().rejected_by_reason
    );

    // An IPv6 socket bound to the IPv4-mapped loopback address takes IPv4 connections.
    let mapped = one_per_ip_server("[::ffff:127.0.0.1]:0").await;
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], mapped.local_addr().port()));
    let (_first, status) = client_from("127.0.0.1:0", to).await;
    assert_eq!(status, 200);
    let (_second, status) = client_from("127.0.0.2:0", to).await;
    assert_eq!(status, 200, "127.0.0.2 is another client than 127.0.0.1");
    let (_, status) = client_from("127.0.0.1:0", to).await;
    assert_eq!(status, 503, "a second connection from 127.0.0.1");
    let m = mapped.pool().metrics();
    assert_eq!((m.active, m.rejected), (2, 1));
}

#[tokio::test]
async fn one_client_at_its_per_ip_limit_leaves_the_instance_in_rotation() {
    // 2 % utilisation, one client at its own limit.
    let h = start(PoolSettings {
        max_connections: Some(100),
        max_connections_per_ip: Some(2),
        ..Default::default()
    })
    .await;
    let mut a = Client::connect(h.http).await;
    let mut b = Client::connect(h.http).await;
    assert_eq!(a.get("/").await.status(), 200);
    assert_eq!(b.get("/").await.status(), 200);
    let reply = raw_exchange(h.http, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
    // The same on a gRPC server: two channels held, a third connection closed unanswered.
    let mut grpc_health = HealthClient::new(grpc_channel(h.grpc).await);
    let _second = grpc_channel(h.grpc).await;
    let mut third = TcpStream::connect(h.grpc).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, third.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "refused: {read:?}");
    wait_until("the gRPC refusal counted", || {
        h.runtime.server("rpc").unwrap().pool().metrics().rejected == 1
    })
    .await;

    let (ready, why) = admin(h.admin, "/readyz").await;
    assert_eq!(ready, 200, "{why}");
    let health = health(h.admin).await;
    for pool in ["web", "rpc"] {
        assert_eq!(health["pools"][pool]["status"], "healthy", "{health}");
        assert_eq!(health["pools"][pool]["rejected_connections"], 1, "{health}");
    }
    let status = grpc_health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    for server in ["web", "rpc"] {
        let labels = |reason: &str| {
            format!(
                "server=\"{server}\",protocol=\"{}\",reason=\"{reason}\"",
                if server == "web" { "http" } else { "grpc" }
            )
        };
        let rejected = |reason: &str| {
            let labels = labels(reason);
            async move { metric(h.admin, "poolserve_connections_rejected_total", &labels).await }
        };
        assert_eq!(rejected("per_ip").await, 1.0, "{server}");
        assert_eq!(rejected("max_connections").await, 0.0, "{server}");
    }
}

#[tokio::test]
async fn raising_the_limit_live_admits_more() {
    let h = start(PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("web").unwrap().pool().clone();
    let mut a = Client::connect(h.http).await;
    assert_eq!(a.get("/").await.status(), 200);
    let reply = raw_exchange(h.http, b"").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    let changes = pool
        .update_config(&PoolSettings {
            max_connections: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (changes[0].old.as_str(), changes[0].new.as_str()),
        ("1", "2")
    );
    let mut b = Client::connect(h.http).await;
    assert_eq!(b.get("/").await.status(), 200);
    assert_eq!(pool.active_connections(), 2);
}

#[tokio::test]
async fn lowering_the_limit_live_closes_idle_first_and_never_cuts_a_request() {
    let h = start(PoolSettings {
        max_connections: Some(4),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("web").unwrap().pool().clone();
    let mut events = h.runtime.registry().subscribe();
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(h.http).await;
        assert_eq!(c.get("/").await.status(), 200);
        idle.push(c);
    }
    // Two connections with a slow request in flight.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(h.http).await;
        busy.push(tokio::spawn(async move {
            let res = c.get("/sleep?ms=700").await;
            (res, c)
        }));
    }
    wait_events(&mut events, 2, |k| {
        matches!(k, PoolEventKind::ConnectionAdded { .. })
    })
    .await;
    while pool.metrics().busy < 2 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Lower to 1: both idle connections go at once; one busy one after its response.
    pool.update_config(&PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .unwrap();
    let removed = wait_events(&mut events, 2, |k| {
        matches!(k, PoolEventKind::ConnectionRemoved { .. })
    })
    .await;
    for r in &removed {
        assert!(
            matches!(
                r,
                PoolEventKind::ConnectionRemoved {
                    reason: CloseReason::LimitLowered,
                    requests: 1,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    for c in idle {
        c.closed().await;
    }
    // Both slow requests complete normally; exactly one connection is told to close.
    let mut closes = 0;
    let mut survivors = Vec::new();
    for b in busy {
        let (res, c) = b.await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(&res.body()[..], b"slept");
        let closing = res
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if closing {
            closes += 1;
            c.closed().await;
        } else {
            survivors.push(c);
        }
    }
    assert_eq!(closes, 1);
    assert_eq!(survivors.len(), 1);
    assert_eq!(survivors[0].get("/").await.status(), 200);
    let m = pool.metrics();
    assert!(m.closed.contains(&("limit_lowered", 3)), "{:?}", m.closed);
    assert_eq!(m.active, 1);
}
