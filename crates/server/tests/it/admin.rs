//! The admin endpoint: bearer token, probes, the metrics exposition, the running config, live
//! pool changes, the event stream and the OpenAPI document.

use crate::support;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use poolserve_pool::PoolSettings;
use support::*;

#[tokio::test]
async fn bearer_token_guards_every_admin_path_but_the_probes() {
    let h = start_full(
        PoolSettings::default(),
        Duration::from_secs(5),
        Some("s3cret"),
    )
    .await;
    for path in [
        "/metrics",
        "/health",
        "/config",
        "/openapi.json",
        "/",
        "/stats",
    ] {
        assert_eq!(admin_with(h.admin, path, None).await.0, 401, "{path}");
        assert_eq!(
            admin_with(h.admin, path, Some("wrong")).await.0,
            401,
            "{path}"
        );
        assert_eq!(
            admin_with(h.admin, path, Some("s3cret")).await.0,
            200,
            "{path}"
        );
    }
    // Kubernetes probes carry no token: they answer without one.
    for probe in ["/livez", "/readyz"] {
        assert_eq!(admin_with(h.admin, probe, None).await.0, 200, "{probe}");
    }
    // An unknown path tells nothing without the token.
    assert_eq!(admin_with(h.admin, "/nope", None).await.0, 401);
    let patch = r#"{"max_connections": 7}"#;
    let (status, _) = admin_send(h.admin, "PATCH", "/servers/web/pool", patch, None).await;
    assert_eq!(status, 401);
    let (status, _) =
        admin_send(h.admin, "PATCH", "/servers/web/pool", patch, Some("s3cret")).await;
    assert_eq!(status, 200);
    // The servers themselves are not behind the token.
    assert_eq!(get(h.http, "/").await.status(), 200);
}

#[tokio::test]
async fn the_probes_need_the_token_when_configured_so() {
    let h = start_tuned(PoolSettings::default(), Duration::from_secs(5), |c| {
        c.admin_token = Some("s3cret".into());
        c.admin_probes_need_token = true;
    })
    .await;
    for probe in ["/livez", "/readyz"] {
        assert_eq!(admin_with(h.admin, probe, None).await.0, 401, "{probe}");
        assert_eq!(
            admin_with(h.admin, probe, Some("s3cret")).await.0,
            200,
            "{probe}"
        );
    }
    let (_, body) = admin_with(h.admin, "/config", Some("s3cret")).await;
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["admin"]["probes_need_token"], true, "{body}");
}

/// RFC 7235: the auth scheme is case-insensitive, and one or more spaces follow it.
#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let h = start_full(
        PoolSettings::default(),
        Duration::from_secs(5),
        Some("s3cret"),
    )
    .await;
    for scheme in ["Bearer ", "bearer ", "BEARER ", "bEaReR   "] {
        let request = format!(
            "GET /metrics HTTP/1.1\r\nhost: admin\r\nauthorization: {scheme}s3cret\r\nconnection: close\r\n\r\n"
        );
        let reply = raw_exchange(h.admin, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{scheme:?}: {reply}");
    }
    for wrong in [
        "Basic s3cret",
        "bearer s3cre",
        "bearer s3cret2",
        "Bearers3cret",
    ] {
        let request = format!(
            "GET /metrics HTTP/1.1\r\nhost: admin\r\nauthorization: {wrong}\r\nconnection: close\r\n\r\n"
        );
        let reply = raw_exchange(h.admin, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 401"), "{wrong:?}: {reply}");
    }
}

/// A slowloris on the admin port: a connection that sends half a request head and holds it is
/// closed by the admin pool's `headers_timeout`, counted like any server's.
#[tokio::test]
async fn a_half_sent_head_on_the_admin_port_is_cut_by_its_headers_timeout() {
    let _timing = support::isolation::timing().await;
    let h = start_tuned(PoolSettings::default(), Duration::from_secs(5), |c| {
        c.admin_pool = c
            .admin_pool
            .apply(
                &PoolSettings {
                    headers_timeout: Some("500ms".into()),
                    ..Default::default()
                },
                "",
            )
            .unwrap()
            .0;
    })
    .await;
    let mut slow = TcpStream::connect(h.admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\n")
        .await
        .unwrap();
    let sent = std::time::Instant::now();
    read_to_close(&mut slow).await;
    let held = sent.elapsed();
    assert!(
        held >= Duration::from_millis(400) && held < Duration::from_secs(5),
        "closed after {held:?}"
    );
    assert_eq!(
        metric(
            h.admin,
            "poolserve_timeouts_total",
            "server=\"admin\",protocol=\"http\",kind=\"headers\""
        )
        .await,
        1.0
    );
}

/// The admin port has a connection cap: past it a connection gets the 503 at once instead of a
/// file descriptor. Its pool is listed in `/health` but takes no part in readiness.
#[tokio::test]
async fn the_admin_port_refuses_past_its_cap_without_taking_readiness() {
    let h = start_tuned(PoolSettings::default(), Duration::from_secs(5), |c| {
        c.admin_pool.max_connections = Some(2);
    })
    .await;
    let admin_pool = h.runtime.registry().get("admin").expect("the admin pool");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(h.admin).await;
        assert_eq!(c.get("/livez").await.status(), 200);
        held.push(c);
    }
    let refused = raw_exchange(h.admin, b"GET /livez HTTP/1.1\r\nhost: admin\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert_eq!(admin_pool.metrics().rejected, 1);
    drop(held.pop());
    wait_until("a free admin slot", || admin_pool.metrics().active < 2).await;
    let health = health(h.admin).await;
    let listed = &health["pools"]["admin"];
    assert_eq!(listed["protocol"], "http", "{health}");
    assert_eq!(listed["max_connections"], 2, "{health}");
    assert_eq!(listed["rejected_connections"], 1, "{health}");
    // A refusal in the window makes the admin pool overloaded; the servers are what readiness
    // and the overall status follow.
    assert_eq!(listed["status"], "overloaded", "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    // The connection that read /health is gone once the slot is free again.
    wait_until("a free admin slot", || admin_pool.metrics().active < 2).await;
    assert_eq!(admin(h.admin, "/readyz").await.0, 200);
}

/// A client that stops reading `/metrics` does not keep a drained process alive: the admin
/// endpoint drains within what is left of the drain deadline, then closes what is still open.
#[tokio::test]
async fn shutdown_is_not_held_by_an_admin_client_that_stops_reading() {
    let _timing = support::isolation::timing().await;
    let drain = Duration::from_secs(1);
    let h = start_with(PoolSettings::default(), drain).await;
    let admin_pool = h.runtime.registry().get("admin").expect("the admin pool");
    // Pipelined requests whose answers (tens of megabytes) outgrow every socket buffer.
    let mut stuck = TcpStream::connect(h.admin).await.unwrap();
    let requests = b"GET /metrics HTTP/1.1\r\nhost: admin\r\n\r\n".repeat(3000);
    let writer = tokio::spawn(async move {
        let _ = stuck.write_all(&requests).await;
        // Held open, never read.
        std::future::pending::<()>().await;
        drop(stuck);
    });
    // A few megabytes fill the loopback socket buffers; the rest waits on the reader.
    wait_until("the stuck reader's answers to pile up", || {
        admin_pool.metrics().bytes_out > 1 << 20
    })
    .await;
    // An idle kept-alive admin connection closes politely.
    let mut idle = Client::connect(h.admin).await;
    assert_eq!(idle.get("/livez").await.status(), 200);
    let started = std::time::Instant::now();
    let reports = tokio::time::timeout(WAIT, h.runtime.shutdown())
        .await
        .expect("shutdown finishes although an admin client stopped reading");
    let took = started.elapsed();
    assert!(took < drain + Duration::from_secs(4), "took {took:?}");
    let (_, admin) = reports
        .iter()
        .find(|(name, _)| name == "admin")
        .expect("a report for the admin pool");
    assert_eq!(admin.forced, 1, "{reports:?}");
    assert_eq!(admin.closed_politely, 1, "{reports:?}");
    idle.closed().await;
    writer.abort();
}

#[tokio::test]
async fn metrics_expose_every_spec_family_for_every_pool() {
    let h = start(PoolSettings {
        max_connections: Some(10),
        ..Default::default()
    })
    .await;
    assert_eq!(get(h.http, "/").await.status(), 200);
    let (status, body) = admin(h.admin, "/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "poolserve_connections_active{",
        "poolserve_connections_accepted_total{",
        "poolserve_connections_rejected_total{",
        "poolserve_connections_closed_total{",
        "poolserve_timeouts_total{",
        "poolserve_requests_total{",
        "poolserve_request_duration_seconds_bucket{",
        "poolserve_request_duration_seconds_count{",
        "poolserve_pool_max_connections{",
        "poolserve_pool_health{",
    ] {
        for server in [
            "server=\"web\",protocol=\"http\"",
            "server=\"web-tls\",protocol=\"https\"",
        ] {
            assert!(
                body.lines()
                    .any(|l| l.starts_with(family) && l.contains(server)),
                "{family} {server} missing in\n{body}"
            );
        }
    }
    assert_eq!(
        metric(
            h.admin,
            "poolserve_pool_health",
            "server=\"web\",protocol=\"http\",status=\"healthy\""
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(h.admin, "poolserve_requests_total", "server=\"web\"").await,
        1.0
    );
    assert_eq!(
        metric(h.admin, "poolserve_pool_max_connections", "server=\"web\"").await,
        10.0
    );
}

#[tokio::test]
async fn config_shows_the_running_settings_and_patch_changes_them_live() {
    let h = start(PoolSettings {
        max_connections: Some(50),
        ..Default::default()
    })
    .await;
    let (status, body) = admin(h.admin, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let web = config["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web["protocol"], "http");
    assert_eq!(web["pool"]["max_connections"], 50);
    assert_eq!(web["pool"]["headers_timeout"], "10s");
    assert_eq!(config["admin"]["token_required"], false);
    assert_eq!(config["admin"]["probes_need_token"], false);
    assert_eq!(config["admin"]["pool"]["max_connections"], 64);

    let (status, body) = admin_send(
        h.admin,
        "PATCH",
        "/servers/web/pool",
        r#"{"max_connections": 1, "headers_timeout": "2s"}"#,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let patched: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fields: Vec<_> = patched["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["max_connections", "headers_timeout"], "{body}");
    let (_, body) = admin(h.admin, "/config").await;
    assert!(body.contains(r#""max_connections":1"#), "{body}");
    // It takes effect: one connection is served, the next gets the 503.
    let mut first = Client::connect(h.http).await;
    assert_eq!(first.get("/").await.status(), 200);
    let refused = raw_exchange(h.http, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
}

#[tokio::test]
async fn a_reload_changes_the_admin_pool_live_and_keeps_its_name_reserved() {
    let h = start(PoolSettings::default()).await;
    let mut next = h.runtime.config();
    next.admin_pool.max_connections = Some(3);
    let report = h.runtime.reload(&next).await.unwrap();
    let changed = report
        .changed
        .iter()
        .find(|(name, _)| name == "admin")
        .map(|(_, c)| c.iter().map(|c| c.field.as_str()).collect::<Vec<_>>());
    assert_eq!(changed, Some(vec!["max_connections"]), "{report:?}");
    let (_, body) = admin(h.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["admin"]["pool"]["max_connections"], 3, "{body}");

    let mut taken = h.runtime.config();
    let mut spec = taken.servers[0].clone();
    spec.name = "admin".into();
    spec.listen.set_port(0);
    taken.servers.push(spec);
    let err = h.runtime.reload(&taken).await.unwrap_err();
    assert_eq!(err.0[0].field, "server[admin].name", "{err}");
}

#[tokio::test]
async fn a_bad_patch_is_refused_naming_each_field_and_nothing_is_applied() {
    let h = start(PoolSettings {
        max_connections: Some(50),
        ..Default::default()
    })
    .await;
    let (status, body) = admin_send(
        h.admin,
        "PATCH",
        "/servers/web/pool",
        r#"{"max_connections": 0, "headers_timeout": "soon", "keep_alive_timeout": "1s"}"#,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fields: Vec<_> = refused["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["max_connections", "headers_timeout"], "{body}");
    let pool = h.runtime.server("web").unwrap().pool().clone();
    assert_eq!(pool.config().max_connections, Some(50));
    assert_eq!(
        pool.config().keep_alive_timeout,
        Duration::from_secs(5),
        "nothing applied"
    );

    let (status, body) = admin_send(
        h.admin,
        "PATCH",
        "/servers/web/pool",
        r#"{"max_conns": 3}"#,
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("max_conns"), "{body}");
    let (status, _) = admin_send(
        h.admin,
        "PATCH",
        "/servers/nope/pool",
        r#"{"max_connections": 3}"#,
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_patch_with_a_duration_past_its_bound_is_refused_naming_the_field() {
    let h = start(PoolSettings::default()).await;
    let (status, body) = admin_send(
        h.admin,
        "PATCH",
        "/servers/web/pool",
        r#"{"keep_alive_timeout": "300000000000y", "websocket": {"ping_interval": "25h"}}"#,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
    let errors = refused["errors"].as_array().unwrap();
    let fields: Vec<_> = errors
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["keep_alive_timeout", "websocket.ping_interval"],
        "{body}"
    );
    for e in errors {
        let reason = e["reason"].as_str().unwrap();
        assert!(reason.contains("at most 24h"), "{body}");
    }
    let pool = h.runtime.server("web").unwrap().pool().clone();
    assert_eq!(pool.config().keep_alive_timeout, Duration::from_secs(5));
    // The bound itself is taken, and a kept-alive connection is served under it.
    let (status, body) = admin_send(
        h.admin,
        "PATCH",
        "/servers/web/pool",
        r#"{"keep_alive_timeout": "24h", "connection_timeout": "24h"}"#,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut client = Client::connect(h.http).await;
    for _ in 0..2 {
        assert_eq!(client.get("/").await.status(), 200);
        wait_until("the connection idle", || pool.metrics().idle == 1).await;
    }
    assert_eq!(pool.active_connections(), 1);
}

#[tokio::test]
async fn events_stream_pool_events_in_order() {
    use http_body_util::BodyExt;
    let h = start(PoolSettings::default()).await;
    let stream = TcpStream::connect(h.admin).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/events")
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    for _ in 0..3 {
        assert_eq!(get(h.http, "/").await.status(), 200);
    }
    // Six events of pool "web": each connection added, then removed.
    let mut text = String::new();
    let events = tokio::time::timeout(WAIT, async {
        loop {
            let events: Vec<(String, serde_json::Value)> = text
                .split("\n\n")
                .filter_map(|block| {
                    let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                    let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                    Some((
                        name.to_owned(),
                        serde_json::from_str::<serde_json::Value>(data).ok()?,
                    ))
                })
                .filter(|(_, data)| data["pool"] == "web")
                .collect();
            if events.len() >= 6 {
                return events;
            }
            let frame = body.frame().await.expect("stream open").unwrap();
            if let Ok(chunk) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    })
    .await
    .expect("events arrive");
    let mut added = Vec::new();
    for (name, data) in &events {
        assert_eq!(name, data["event"].as_str().unwrap(), "named by kind");
        let id = data["id"].as_u64().unwrap();
        match name.as_str() {
            "connection_added" => added.push(id),
            "connection_removed" => assert!(added.contains(&id), "removed before added: {text}"),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!(added.len(), 3);
    assert!(added.windows(2).all(|w| w[0] < w[1]), "in order: {added:?}");
    // Shutdown ends the stream, so the admin endpoint stops cleanly.
    tokio::time::timeout(WAIT, h.runtime.shutdown())
        .await
        .expect("shutdown is not held up by an open event stream");
    let end = tokio::time::timeout(WAIT, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(end.is_ok(), "the event stream ends at shutdown");
}

#[tokio::test]
async fn openapi_document_lists_every_admin_path() {
    let h = start(PoolSettings::default()).await;
    let (status, body) = admin(h.admin, "/openapi.json").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/metrics",
        "/health",
        "/livez",
        "/readyz",
        "/config",
        "/servers/{name}/pool",
        "/events",
        "/openapi.json",
        "/",
        "/stats",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
}

/// Every metric the Grafana dashboard in deploy/ queries is one poolserve exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let h = start(PoolSettings::default()).await;
    assert_eq!(get(h.http, "/").await.status(), 200);
    let (_, metrics) = admin(h.admin, "/metrics").await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/poolserve.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut queried = std::collections::BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("poolserve_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    for name in &queried {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}
