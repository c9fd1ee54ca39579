//! Reloading a running config: pool settings live, a rotated certificate seen by new TLS
//! handshakes while open connections keep theirs, servers added, removed (draining) and
//! replaced (a new server on the same address takes over the socket), a name re-added while
//! its old pool drains, and a file with anything refused (a field, a certificate, an address
//! that cannot be bound) changing nothing.

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
    assert!(h.runtime.registry().get("web").is_none(), "out of service");
    wait_until("the drained pool to leave the metrics", || {
        h.runtime
            .registry()
            .metrics()
            .iter()
            .all(|m| m.name != "web")
    })
    .await;
    assert!(
        TcpStream::connect(h.http).await.is_err(),
        "no longer listening"
    );
    let (mut h2, _conn) = H2Client::connect(h.h2c).await;
    assert_eq!(h2.get("/").await.status(), 200);
}

/// Starts `POST /echo` on a new connection to `addr` and sends part of its body: the request
/// stays in flight (its echoed response unfinished) until [`finish_request`].
async fn hold_request(addr: std::net::SocketAddr) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab")
        .await
        .unwrap();
    held
}

/// Sends the rest of a held request's body and reads until the server closes the connection.
async fn finish_request(mut held: TcpStream) -> String {
    use tokio::io::AsyncWriteExt;
    held.write_all(b"cde").await.unwrap();
    read_to_close(&mut held).await
}

/// Connects to `addr` over and over until stopped, counting the attempts nothing answered.
fn probe_connects(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let (mut answered, mut refused) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            match TcpStream::connect(addr).await {
                Ok(_) => answered += 1,
                Err(_) => refused += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        (answered, refused)
    })
}

#[tokio::test]
async fn a_server_replaced_on_its_address_takes_over_the_socket_and_the_port_never_goes_dark() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let h = start(PoolSettings::default()).await;
    let addr = h.http;
    assert_eq!(get(addr, "/").await.status(), 200);
    let old = h.runtime.server("web").unwrap();
    let held = hold_request(addr).await;
    wait_until("a request in flight", || {
        old.pool().metrics().requests_in_flight > 0
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let probe = probe_connects(addr, stop.clone());

    // `web` leaves the file and `b` comes in on the very address it listens on.
    let mut next = h.runtime.config();
    let at = next.servers.iter().position(|s| s.name == "web").unwrap();
    let mut b = next.servers.remove(at);
    b.name = "b".into();
    b.listen = addr;
    next.servers.push(b);
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_added, ["b"], "{report:?}");
    assert_eq!(report.servers_removed, ["web"], "{report:?}");
    assert!(report.not_applied.is_empty(), "{report:?}");
    let b = h.runtime.server("b").expect("b runs");
    assert_eq!(b.local_addr(), addr);

    // A new connection is `b`'s; the request in flight on `web` finishes.
    assert_eq!(get(addr, "/").await.status(), 200);
    wait_until("b to serve a request", || b.pool().metrics().requests >= 1).await;
    assert_eq!(old.pool().metrics().requests_in_flight, 1, "web drains");
    let reply = finish_request(held).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_until("web's drain to end", || Arc::strong_count(&old) == 1).await;
    assert_eq!(
        get(addr, "/").await.status(),
        200,
        "b serves on after web drained"
    );
    stop.store(true, Ordering::Relaxed);
    let (answered, refused) = probe.await.unwrap();
    assert_eq!(
        refused, 0,
        "connections refused on {addr} ({answered} answered)"
    );
    assert!(answered > 0);

    let doc = health(h.admin).await;
    assert!(doc["pools"]["b"].is_object(), "{doc}");
    assert!(doc["pools"].get("web").is_none(), "{doc}");
    assert_eq!(admin(h.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn a_reload_with_an_address_that_cannot_be_bound_is_refused_whole() {
    let h = start(PoolSettings::default()).await;
    // Something outside the runtime holds the port.
    let outsider = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = outsider.local_addr().unwrap();

    let mut next = h.runtime.config();
    for s in &mut next.servers {
        s.pool = pool(PoolSettings {
            max_connections: Some(7),
            ..Default::default()
        });
    }
    next.servers.retain(|s| s.name != "h2c");
    let mut extra = next.servers[0].clone();
    extra.name = "extra".into();
    extra.listen = taken;
    next.servers.push(extra);
    let before = h.runtime.config();
    let err = h.runtime.reload(&next).await.unwrap_err();
    assert!(
        err.0
            .iter()
            .any(|f| f.field == "server[extra].listen" && f.value == taken.to_string()),
        "{err}"
    );

    // Nothing of it applied: no new server, the removed one still serves, no setting changed.
    assert!(h.runtime.server("extra").is_none());
    assert!(h.runtime.registry().get("extra").is_none());
    let (mut h2, _conn) = H2Client::connect(h.h2c).await;
    assert_eq!(h2.get("/").await.status(), 200);
    for s in h.runtime.servers() {
        assert_eq!(s.pool().config().max_connections, None, "{}", s.name());
    }
    let after = h.runtime.config();
    assert_eq!(
        after.servers.iter().map(|s| &s.name).collect::<Vec<_>>(),
        before.servers.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(get(h.http, "/").await.status(), 200);
    drop(outsider);

    // With the port free, the same file applies.
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_added, ["extra"], "{report:?}");
    assert_eq!(report.servers_removed, ["h2c"], "{report:?}");
    assert_eq!(get(taken, "/").await.status(), 200);
}

#[tokio::test]
async fn a_name_re_added_while_its_old_pool_drains_gets_a_fresh_pool_that_stays() {
    use std::sync::Arc;
    let h = start(PoolSettings::default()).await;
    let old = h.runtime.server("web").unwrap();
    let held = hold_request(h.http).await;
    wait_until("a request in flight", || {
        old.pool().metrics().requests_in_flight > 0
    })
    .await;

    let with_web = h.runtime.config();
    let mut without = with_web.clone();
    without.servers.retain(|s| s.name != "web");
    let report = h.runtime.reload(&without).await.unwrap();
    assert_eq!(report.servers_removed, ["web"]);
    // Back under the same name, on another port (port 0), while the old pool drains.
    let report = h.runtime.reload(&with_web).await.unwrap();
    assert_eq!(report.servers_added, ["web"]);
    let new = h.runtime.server("web").unwrap();
    assert_ne!(new.local_addr(), h.http);
    assert_eq!(get(new.local_addr(), "/").await.status(), 200);
    assert_eq!(
        old.pool().metrics().requests_in_flight,
        1,
        "the old pool still drains"
    );

    let reply = finish_request(held).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_until("the old drain to end", || Arc::strong_count(&old) == 1).await;
    assert_eq!(get(new.local_addr(), "/").await.status(), 200);
    wait_until("the new pool to count both requests", || {
        new.pool().metrics().requests == 2
    })
    .await;
    let doc = health(h.admin).await;
    assert_eq!(doc["pools"]["web"]["status"], "healthy", "{doc}");
    assert_eq!(admin(h.admin, "/readyz").await.0, 200);
    assert_eq!(
        metric(h.admin, "poolserve_requests_total", "server=\"web\"").await,
        2.0,
        "the new pool's own count"
    );
}

#[tokio::test]
async fn a_server_given_another_protocol_address_or_certificate_files_is_replaced_under_its_name() {
    let h = start(PoolSettings::default()).await;
    let mut next = h.runtime.config();
    // `web` speaks HTTP/2 (h2c) on the same socket; `h2c` moves to another address.
    let web = next.servers.iter_mut().find(|s| s.name == "web").unwrap();
    web.protocol = poolserve_server::Protocol::Http2;
    web.listen = h.http;
    let moved = next.servers.iter_mut().find(|s| s.name == "h2c").unwrap();
    moved.listen = "127.0.0.2:0".parse().unwrap();
    // `web-tls` gets other certificate files, on the same socket.
    let dir = TempDir::new();
    let other = PemPair::self_signed().unwrap();
    let files = poolserve_server::tls::TlsFiles {
        cert: dir.0.join("other-cert.pem"),
        key: dir.0.join("other-key.pem"),
    };
    std::fs::write(&files.cert, &other.cert_pem).unwrap();
    std::fs::write(&files.key, &other.key_pem).unwrap();
    let web_tls = next
        .servers
        .iter_mut()
        .find(|s| s.name == "web-tls")
        .unwrap();
    web_tls.tls = Some(files);
    web_tls.listen = h.https;
    next.admin_listen = "127.0.0.1:1".parse().unwrap();
    let report = h.runtime.reload(&next).await.unwrap();
    let mut replaced = report.servers_replaced.clone();
    replaced.sort();
    assert_eq!(replaced, ["h2c", "web", "web-tls"], "{report:?}");
    assert!(report.servers_added.is_empty() && report.servers_removed.is_empty());
    assert!(
        report.not_applied.iter().any(|n| n.contains("admin")),
        "{report:?}"
    );

    let web = h.runtime.server("web").unwrap();
    assert_eq!(web.local_addr(), h.http);
    assert_eq!(web.protocol(), poolserve_server::Protocol::Http2);
    let (mut h2, _conn) = H2Client::connect(h.http).await;
    assert_eq!(h2.get("/").await.status(), 200);
    assert_eq!(h.runtime.server("web-tls").unwrap().local_addr(), h.https);
    let mut tls = tls_handshake(&h, &other)
        .await
        .expect("the new files' certificate");
    assert_eq!(tls.get("/").await.status(), 200);
    let h2c = h.runtime.server("h2c").unwrap();
    assert_eq!(h2c.local_addr().ip().to_string(), "127.0.0.2");
    let (mut h2, _conn) = H2Client::connect(h2c.local_addr()).await;
    assert_eq!(h2.get("/").await.status(), 200);
    // /config shows what runs; the admin endpoint stays where it was.
    let running = h.runtime.config();
    assert_ne!(running.admin_listen, next.admin_listen);
    assert_eq!(
        running
            .servers
            .iter()
            .find(|s| s.name == "h2c")
            .unwrap()
            .listen,
        "127.0.0.2:0".parse().unwrap()
    );
    wait_until("the old h2c to stop listening", || {
        std::net::TcpStream::connect(h.h2c).is_err()
    })
    .await;
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
        // Far enough off that the kept connections of the load live on.
        PoolSettings {
            max_connection_age: d("1h"),
            max_connection_age_grace: d("20s"),
            max_requests_per_connection: Some(1_000_000),
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
