//! Accept loops across cores: a server listens on `accept_loops` sockets bound to its address
//! with `SO_REUSEPORT`, each with its own accept loop feeding the same pool; `"auto"` runs one
//! per worker thread. The count changes live: a raise adds sockets, a cut retires sockets after
//! serving what is queued in them, and a server replaced on its address takes all of them.

use crate::support;

use std::io::Write;
use std::sync::Arc;

use poolserve_pool::PoolSettings;
use poolserve_server::config::{AcceptLoops, RunConfig};
use support::*;

const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

/// `/config`'s document and its entry for server `name`.
async fn config_of(h: &Harness, name: &str) -> (serde_json::Value, serde_json::Value) {
    let (status, body) = admin(h.admin, "/config").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let server = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name} in {doc}"))
        .clone();
    (doc, server)
}

/// Connections accepted on each of `name`'s listening sockets, from `/stats`.
async fn accepted_by_socket(h: &Harness, name: &str) -> Vec<u64> {
    let (status, body) = admin(h.admin, "/stats").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["accepted_by_socket"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no accepted_by_socket for {name} in {doc}"))
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

/// `count` requests, each on a connection of its own; every one must be answered 200.
async fn requests_on_fresh_connections(addr: std::net::SocketAddr, count: usize) {
    for i in 0..count {
        let reply = raw_exchange(addr, GET_CLOSE).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "request {i}: {reply:?}");
    }
}

fn with_accept_loops(config: &mut RunConfig, name: &str, loops: AcceptLoops) {
    for s in &mut config.servers {
        if s.name == name {
            s.accept_loops = loops;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_runs_one_accept_loop_per_worker_thread_and_connections_spread_over_them() {
    let h = start_tuned(PoolSettings::default(), WAIT, |c| {
        with_accept_loops(c, "web", AcceptLoops::Auto)
    })
    .await;
    let web = h.runtime.server("web").unwrap();
    assert_eq!(web.listening_sockets(), 2, "one per worker thread");
    assert_eq!(h.runtime.server("h2c").unwrap().listening_sockets(), 1);
    let (doc, entry) = config_of(&h, "web").await;
    assert_eq!(entry["accept_loops"], "auto", "{entry}");
    assert_eq!(entry["listening_sockets"], 2, "{entry}");
    assert_eq!(doc["runtime"]["worker_threads"], 2, "{doc}");
    let (_, h2c) = config_of(&h, "h2c").await;
    assert_eq!(h2c["accept_loops"], 1, "{h2c}");

    requests_on_fresh_connections(h.http, 200).await;
    let counts = accepted_by_socket(&h, "web").await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 200, "{counts:?}");
    // The kernel hashes each connection's addresses to a socket: with 200 connections from as
    // many source ports, a socket left without one would mean it never accepted.
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    assert_eq!(web.pool().metrics().accepted, 200);
}

#[tokio::test]
async fn accept_loops_change_live_and_a_retired_socket_serves_what_was_queued_in_it() {
    let h = start(PoolSettings::default()).await;
    let web = h.runtime.server("web").unwrap();
    assert_eq!(web.listening_sockets(), 1);

    let mut next = h.runtime.config();
    with_accept_loops(&mut next, "web", AcceptLoops::Count(3));
    let report = h.runtime.reload(&next).await.unwrap();
    let changes = &report
        .changed
        .iter()
        .find(|(n, _)| n == "web")
        .unwrap_or_else(|| panic!("{report:?}"))
        .1;
    assert!(
        changes
            .iter()
            .any(|c| c.field == "accept_loops" && c.old == "1" && c.new == "3"),
        "{report:?}"
    );
    assert!(report.servers_replaced.is_empty(), "{report:?}");
    assert!(
        Arc::ptr_eq(&web, &h.runtime.server("web").unwrap()),
        "the same server, pool and all"
    );
    assert_eq!(web.listening_sockets(), 3);
    let (_, entry) = config_of(&h, "web").await;
    assert_eq!(entry["accept_loops"], 3, "{entry}");
    assert_eq!(entry["listening_sockets"], 3, "{entry}");
    requests_on_fresh_connections(h.http, 90).await;
    let counts = accepted_by_socket(&h, "web").await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every new socket accepts: {counts:?}"
    );

    // Connections wait in every socket's queue: this test's one thread is busy connecting, so
    // no accept loop runs until the reload below has retired two of them, and those two must
    // serve what waits in them before closing (closing a socket resets what is queued in it).
    let waiting: Vec<tokio::net::TcpStream> = (0..30)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(h.http).unwrap();
            s.write_all(GET_CLOSE).unwrap();
            s.set_nonblocking(true).unwrap();
            tokio::net::TcpStream::from_std(s).unwrap()
        })
        .collect();
    let before: u64 = web.accepted_by_socket().iter().sum();
    assert_eq!(before, 90, "nothing accepted the waiting connections yet");
    with_accept_loops(&mut next, "web", AcceptLoops::Count(1));
    let report = h.runtime.reload(&next).await.unwrap();
    assert!(report.not_applied.is_empty(), "{report:?}");
    assert_eq!(web.listening_sockets(), 1);
    for (i, mut s) in waiting.into_iter().enumerate() {
        let reply = read_to_close(&mut s).await;
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "waiting connection {i}: {reply:?}"
        );
    }
    let kept_before = web.accepted_by_socket()[0];
    requests_on_fresh_connections(h.http, 20).await;
    assert_eq!(web.accepted_by_socket(), [kept_before + 20]);
    let (_, entry) = config_of(&h, "web").await;
    assert_eq!(entry["listening_sockets"], 1, "{entry}");
}

#[tokio::test]
async fn a_refused_reload_adds_no_socket_and_a_replaced_server_takes_every_socket() {
    let h = start_tuned(PoolSettings::default(), WAIT, |c| {
        with_accept_loops(c, "web", AcceptLoops::Count(2))
    })
    .await;
    let web = h.runtime.server("web").unwrap();
    assert_eq!(web.listening_sockets(), 2);

    // More loops, but a certificate that does not load: nothing applies.
    let mut next = h.runtime.config();
    with_accept_loops(&mut next, "web", AcceptLoops::Count(4));
    let dir = TempDir::new();
    let bad = dir.0.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    for s in &mut next.servers {
        if s.name == "web-tls" {
            s.tls.as_mut().unwrap().cert = bad.clone();
        }
    }
    let err = h.runtime.reload(&next).await.unwrap_err();
    assert!(
        err.0.iter().any(|f| f.field == "server[web-tls].tls"),
        "{err}"
    );
    assert_eq!(web.listening_sockets(), 2);
    requests_on_fresh_connections(h.http, 40).await;
    let counts = web.accepted_by_socket();
    assert_eq!(counts.iter().sum::<u64>(), 40, "{counts:?}");

    // `web` becomes h2c on the same address with three loops: the new server takes both
    // sockets and binds a third.
    let mut next = h.runtime.config();
    for s in &mut next.servers {
        if s.name == "web" {
            s.protocol = poolserve_server::Protocol::Http2;
            s.listen = h.http;
            s.accept_loops = AcceptLoops::Count(3);
        }
    }
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_replaced, ["web"], "{report:?}");
    let replaced = h.runtime.server("web").unwrap();
    assert!(!Arc::ptr_eq(&web, &replaced));
    assert_eq!(replaced.local_addr(), h.http);
    assert_eq!(replaced.listening_sockets(), 3);
    for _ in 0..30 {
        let (mut h2, _conn) = H2Client::connect(h.http).await;
        assert_eq!(h2.get("/").await.status(), 200);
    }
    let counts = replaced.accepted_by_socket();
    assert_eq!(counts.iter().sum::<u64>(), 30, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");

    // And back to plain HTTP with one loop: it takes the three and retires two.
    for s in &mut next.servers {
        if s.name == "web" {
            s.protocol = poolserve_server::Protocol::Http;
            s.accept_loops = AcceptLoops::Count(1);
        }
    }
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_replaced, ["web"], "{report:?}");
    let again = h.runtime.server("web").unwrap();
    assert_eq!(again.listening_sockets(), 1);
    requests_on_fresh_connections(h.http, 20).await;
    // A connection that reached a retired socket before its loop ran was served by it.
    assert_eq!(again.pool().metrics().accepted, 20);
    assert_eq!(again.accepted_by_socket().len(), 1);
}
