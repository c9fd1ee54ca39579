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
