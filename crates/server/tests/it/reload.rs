//! Reloading a running config: pool settings live, a rotated certificate seen by new TLS
//! handshakes while open connections keep theirs, servers added and removed (draining), and a
//! broken file changing nothing.

use crate::support;

use poolserve_pool::PoolSettings;
use poolserve_server::tls::PemPair;
use support::*;
use tokio::net::TcpStream;

async fn tls_handshake(h: &Harness, trusted: &PemPair) -> Result<Client, std::io::Error> {
    let stream = TcpStream::connect(h.https).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(trusted).connect(name, stream).await?;
    Ok(Client::over(h.https, tls).await)
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_old_connections_continue() {
    let h = start(PoolSettings::default()).await;
    let mut old = tls_handshake(&h, &h.pem)
        .await
        .expect("the first certificate");
    assert_eq!(old.get("/").await.status(), 200);

    let config = h.runtime.config();
    let files = config
        .servers
        .iter()
        .find(|s| s.name == "web-tls")
        .and_then(|s| s.tls.clone())
        .unwrap();
    let rotated = PemPair::self_signed().unwrap();
    std::fs::write(&files.cert, &rotated.cert_pem).unwrap();
    std::fs::write(&files.key, &rotated.key_pem).unwrap();
    let report = h.runtime.reload(&h.runtime.config()).await.unwrap();
    assert!(
        report.certificates_replaced.iter().any(|s| s == "web-tls"),
        "{report:?}"
    );

    let mut new = tls_handshake(&h, &rotated)
        .await
        .expect("the new certificate");
    assert_eq!(new.get("/").await.status(), 200);
    assert!(
        tls_handshake(&h, &h.pem).await.is_err(),
        "new handshakes no longer present the old certificate"
    );
    // The connection made before the rotation goes on.
    assert_eq!(old.get("/").await.status(), 200);

    // A broken certificate file is refused by name and changes nothing, pool settings included.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let mut next = h.runtime.config();
    for s in &mut next.servers {
        s.pool = pool(PoolSettings {
            max_connections: Some(3),
            ..Default::default()
        });
    }
    let err = h.runtime.reload(&next).await.unwrap_err();
    assert!(
        err.0.iter().any(|f| f.field == "server[web-tls].tls"),
        "{err}"
    );
    assert_eq!(
        h.runtime
            .server("web")
            .unwrap()
            .pool()
            .config()
            .max_connections,
        None
    );
    let mut again = tls_handshake(&h, &rotated)
        .await
        .expect("still the rotated certificate");
    assert_eq!(again.get("/").await.status(), 200);

    // With the files whole again, the same change applies.
    std::fs::write(&files.cert, &rotated.cert_pem).unwrap();
    let report = h.runtime.reload(&next).await.unwrap();
    assert!(
        report.changed.iter().any(|(name, _)| name == "web"),
        "{report:?}"
    );
    assert_eq!(
        h.runtime
            .server("web")
            .unwrap()
            .pool()
            .config()
            .max_connections,
        Some(3)
    );
}

#[tokio::test]
async fn servers_added_start_and_servers_removed_drain_while_the_others_serve() {
    let h = start(PoolSettings::default()).await;
    let mut busy = Client::connect(h.http).await;
    let in_flight = tokio::spawn(async move { busy.request("GET", "/sleep?ms=300", "").await });
    let web = h.runtime.server("web").unwrap();
    wait_until("a request in flight", || {
        web.pool().metrics().requests_in_flight > 0
    })
    .await;

    let mut next = h.runtime.config();
    let mut extra = next
        .servers
        .iter()
        .find(|s| s.name == "web")
        .unwrap()
        .clone();
    extra.name = "extra".into();
    next.servers.retain(|s| s.name != "web");
    next.servers.push(extra);
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_added, ["extra"]);
    assert_eq!(report.servers_removed, ["web"]);

    let added = h.runtime.server("extra").expect("the new server runs");
    assert_eq!(get(added.local_addr(), "/").await.status(), 200);
    assert!(h.runtime.server("web").is_none());
    let names: Vec<_> = h
        .runtime
        .config()
        .servers
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(names.contains(&"extra".to_string()) && !names.contains(&"web".to_string()));
    // The removed server's request in flight finishes; its listener is gone; others serve on.
    let res = in_flight.await.unwrap();
    assert_eq!(res.status(), 200);
    wait_until("the drained pool to leave the registry", || {
        h.runtime.registry().get("web").is_none()
    })
    .await;
    assert!(
        TcpStream::connect(h.http).await.is_err(),
        "no longer listening"
    );
    let (mut h2, _conn) = H2Client::connect(h.h2c).await;
    assert_eq!(h2.get("/").await.status(), 200);
}

#[tokio::test]
async fn what_cannot_change_live_is_reported_and_left_as_it_runs() {
    let h = start(PoolSettings::default()).await;
    let mut next = h.runtime.config();
    next.servers[0].listen = "127.0.0.1:1".parse().unwrap();
    let moved = next.servers[0].name.clone();
    let report = h.runtime.reload(&next).await.unwrap();
    assert!(
        report
            .not_applied
            .iter()
            .any(|n| n.contains(&format!("{moved:?}"))),
        "{report:?}"
    );
    // /config still shows what runs, and the server still serves where it was.
    let running = h.runtime.config();
    let kept = running.servers.iter().find(|s| s.name == moved).unwrap();
    assert_ne!(kept.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(get(h.http, "/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_setting_reloads_under_load_without_a_failed_request() {
    use poolserve_pool::{
        GrpcSettings, HealthSettings, Http1Settings, Http2Settings, WebSocketSettings,
    };
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let h = start(PoolSettings::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, http, h2c) =
            (stop.clone(), ok.clone(), failed.clone(), h.http, h.h2c);
        tokio::spawn(async move {
            let mut kept = Client::connect(http).await;
            let (mut h2, _conn) = H2Client::connect(h2c).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let good = match n % 3 {
                    0 => get(http, "/").await.status() == 200,
                    1 => kept
                        .try_request("GET", "/", "")
                        .await
                        .is_ok_and(|r| r.status() == 200),
                    _ => h2
                        .try_request("GET", "/", "")
                        .await
                        .is_ok_and(|r| r.status() == 200),
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        })
    };
    let d = |s: &str| Some(s.to_string());
    let patches = [
        PoolSettings {
            max_connections: Some(500),
            ..Default::default()
        },
        PoolSettings {
            max_connections_per_ip: Some(100),
            ..Default::default()
        },
        PoolSettings {
            connection_timeout: d("20s"),
            ..Default::default()
        },
        PoolSettings {
            keep_alive_timeout: d("4s"),
            ..Default::default()
        },
        PoolSettings {
            request_timeout: d("20s"),
            ..Default::default()
        },
        PoolSettings {
            headers_timeout: d("8s"),
            ..Default::default()
        },
        PoolSettings {
            http1: Some(Http1Settings {
                max_header_size: Some(32768),
            }),
            ..Default::default()
        },
        PoolSettings {
            http2: Some(Http2Settings {
                max_session_memory: Some(8 << 20),
                max_header_list_size: Some(32768),
                max_concurrent_streams: Some(100),
                keep_alive_interval: d("20s"),
                keep_alive_timeout: d("5s"),
            }),
            ..Default::default()
        },
        PoolSettings {
            grpc: Some(GrpcSettings {
                max_receive_message_length: Some(2 << 20),
                max_send_message_length: Some(2 << 20),
                keep_alive_time: d("20s"),
            }),
            ..Default::default()
        },
        PoolSettings {
            websocket: Some(WebSocketSettings {
                ping_interval: d("20s"),
                pong_timeout: d("5s"),
                max_message_size: Some(1 << 20),
                max_frame_size: Some(1 << 20),
                idle_timeout: d("5m"),
            }),
            ..Default::default()
        },
        PoolSettings {
            health: Some(HealthSettings {
                degraded_utilization: Some(0.7),
                overloaded_utilization: Some(0.9),
                degraded_error_rate: Some(0.1),
                overloaded_error_rate: Some(0.6),
                degraded_response_time: d("1s"),
                window: d("20s"),
            }),
            ..Default::default()
        },
    ];
    for patch in &patches {
        let before = ok.load(Ordering::Relaxed);
        let mut next = h.runtime.config();
        for s in &mut next.servers {
            s.pool = s.pool.apply(patch, "").unwrap().0;
        }
        let report = h.runtime.reload(&next).await.unwrap();
        assert_eq!(
            report.changed.len(),
            next.servers.len(),
            "{patch:?}: {report:?}"
        );
        for s in &next.servers {
            // In force in the pool and shown as running.
            assert_eq!(
                *h.runtime.server(&s.name).unwrap().pool().config(),
                s.pool,
                "{}",
                s.name
            );
            let running = h.runtime.config();
            assert_eq!(
                running
                    .servers
                    .iter()
                    .find(|r| r.name == s.name)
                    .unwrap()
                    .pool,
                s.pool
            );
        }
        // Requests keep flowing between reloads.
        wait_until("requests to flow after the reload", || {
            ok.load(Ordering::Relaxed) >= before + 20
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a request failed during the reloads"
    );

    // And a reloaded timeout takes effect: a silent connection is now cut at 300 ms.
    let mut next = h.runtime.config();
    for s in &mut next.servers {
        s.pool = s
            .pool
            .apply(
                &PoolSettings {
                    headers_timeout: d("300ms"),
                    ..Default::default()
                },
                "",
            )
            .unwrap()
            .0;
    }
    h.runtime.reload(&next).await.unwrap();
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(h.http).await.unwrap();
    let reply = read_to_close(&mut silent).await;
    let elapsed = started.elapsed();
    assert!(reply.is_empty(), "{reply}");
    assert!(
        elapsed >= std::time::Duration::from_millis(250)
            && elapsed < std::time::Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
}
