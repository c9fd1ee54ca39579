//! Graceful shutdown (S4, P9): in-flight requests finish, new connections are refused, the
//! deadline forces the rest, and readiness turns 503 first.

use crate::support;

use std::time::Duration;

use poolserve_pool::{PoolEventKind, PoolSettings};
use support::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn shutdown_loses_no_request_in_flight() {
    let h = start_with(PoolSettings::default(), Duration::from_secs(5)).await;
    let mut events = h.runtime.registry().subscribe();
    let mut idle = Client::connect(h.http).await;
    assert_eq!(idle.get("/").await.status(), 200);
    let mut in_flight = Vec::new();
    for i in 0..20 {
        let addr = if i % 2 == 0 { h.http } else { h.https };
        let tls = (i % 2 == 1).then(|| h.pem.clone());
        in_flight.push(tokio::spawn(async move {
            let mut c = match tls {
                None => Client::connect(addr).await,
                Some(pem) => {
                    let stream = TcpStream::connect(addr).await.unwrap();
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let tls = tls_connector(&pem).connect(name, stream).await.unwrap();
                    Client::over(addr, tls).await
                }
            };
            c.get("/sleep?ms=500").await
        }));
    }
    wait_events(&mut events, 20, |k| {
        matches!(k, PoolEventKind::ConnectionAdded { .. })
    })
    .await;
    let web = h.runtime.server("web").unwrap().pool().clone();
    let tls = h.runtime.server("web-tls").unwrap().pool().clone();
    while web.metrics().busy + tls.metrics().busy < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let http_addr = h.http;
    let reports = h.runtime.shutdown().await;
    for r in in_flight {
        let res = r.await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(&res.body()[..], b"slept");
        assert_eq!(res.headers()["connection"], "close");
    }
    idle.closed().await;
    for (name, report) in &reports {
        assert_eq!(report.forced, 0, "{name}: {report:?}");
    }
    let total: u64 = reports.iter().map(|(_, r)| r.closed_politely).sum();
    assert_eq!(total, 21);
    // The listener is closed: new connections are refused by the kernel.
    assert!(TcpStream::connect(http_addr).await.is_err());
    assert_eq!(
        web.metrics()
            .closed
            .iter()
            .find(|(r, _)| *r == "shutdown")
            .unwrap()
            .1,
        11
    );
}

#[tokio::test]
async fn the_deadline_forces_what_is_left() {
    let h = start_with(PoolSettings::default(), Duration::from_millis(300)).await;
    let mut events = h.runtime.registry().subscribe();
    let addr = h.http;
    let stuck = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.try_request("GET", "/sleep?ms=60000", "").await
    });
    wait_events(&mut events, 1, |k| {
        matches!(k, PoolEventKind::ConnectionAdded { .. })
    })
    .await;
    let web = h.runtime.server("web").unwrap().pool().clone();
    while web.metrics().busy < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    let reports = h.runtime.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let web_report = reports.iter().find(|(n, _)| n == "web").unwrap().1;
    assert_eq!((web_report.open_at_start, web_report.forced), (1, 1));
    assert!(stuck.await.unwrap().is_err(), "the forced request fails");
    assert_eq!(web.active_connections(), 0);
}

#[tokio::test]
async fn readiness_turns_503_while_draining() {
    let h = start_with(PoolSettings::default(), Duration::from_secs(5)).await;
    let (ok, _) = admin(h.admin, "/readyz").await;
    assert_eq!(ok, 200);
    assert_eq!(admin(h.admin, "/livez").await.0, 200);
    let mut events = h.runtime.registry().subscribe();
    let addr = h.http;
    let slow = tokio::spawn(async move { Client::connect(addr).await.get("/sleep?ms=800").await });
    wait_events(&mut events, 1, |k| {
        matches!(k, PoolEventKind::ConnectionAdded { .. })
    })
    .await;
    let admin_addr = h.admin;
    let shutdown = tokio::spawn(h.runtime.shutdown());
    wait_events(&mut events, 1, |k| {
        matches!(
            k,
            PoolEventKind::HealthStatusChanged {
                to: poolserve_pool::HealthStatus::Unavailable,
                ..
            }
        )
    })
    .await;
    let (status, body) = admin(admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let doc = health(admin_addr).await;
    assert_eq!(doc["status"], "unavailable");
    assert_eq!(slow.await.unwrap().status(), 200);
    shutdown.await.unwrap();
}

/// Reads one HTTP/1.1 response of known length off `s`.
async fn read_response(s: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a sized response")
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-response: {text}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response")
}

/// A kept-alive client that had sent half of its next request head when the drain started
/// completes it and is answered, with `Connection: close`; one that never completes its head
/// is closed at `headers_timeout` from its first byte, not held to the drain deadline.
#[tokio::test]
async fn a_head_half_sent_when_the_drain_starts_is_answered_with_connection_close() {
    use tokio::io::AsyncWriteExt;
    let _isolated = support::isolation::timing().await;
    let h = start_with(
        PoolSettings {
            headers_timeout: Some("1s".into()),
            ..Default::default()
        },
        Duration::from_secs(10),
    )
    .await;
    let web = h.runtime.server("web").unwrap().pool().clone();
    let first = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    // Answered at once by the handler: the answer carries the close as the head comes in.
    let half = b"GET /?again HTTP/1.1\r\nhost: x\r\n";
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.http).await.unwrap();
        s.write_all(first).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200 "));
        s.write_all(half).await.unwrap();
        clients.push(s);
    }
    let half_sent = std::time::Instant::now();
    let sent = 2 * (first.len() + half.len()) as u64;
    wait_until("the half heads read", || web.metrics().bytes_in == sent).await;

    let shutdown = tokio::spawn(h.runtime.shutdown());
    // The drain reached both connections: they are closing (or, without the wait for their
    // heads, closed).
    wait_until("the drain at both connections", || {
        let m = web.metrics();
        m.closing == 2 || m.active < 2
    })
    .await;
    let (mut finishing, mut stuck) = (clients.remove(0), clients.remove(0));
    finishing.write_all(b"\r\n").await.unwrap();
    let reply = read_to_close(&mut finishing).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply:?}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    assert!(reply.ends_with("hello"), "{reply}");

    let got = read_to_close(&mut stuck).await;
    assert!(got.is_empty(), "{got}");
    let took = half_sent.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "the unfinished head was closed after {took:?}"
    );
    let reports = tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    let web_report = reports.iter().find(|(n, _)| n == "web").unwrap().1;
    assert_eq!((web_report.open_at_start, web_report.forced), (2, 0));
    let m = web.metrics();
    assert!(m.timeouts.contains(&("headers", 1)), "{:?}", m.timeouts);
    assert_eq!(m.requests, 3);
}
