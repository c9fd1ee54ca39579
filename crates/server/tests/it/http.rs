//! HTTP/1.1 and HTTPS behaviour: demo routes, keep-alive reuse, bad requests, ALPN.

use crate::support;

use poolserve_pool::PoolSettings;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn demo_routes_over_one_kept_alive_connection() {
    let h = start(PoolSettings::default()).await;
    let mut c = Client::connect(h.http).await;
    let res = c.get("/").await;
    assert_eq!(res.status(), 200);
    assert_eq!(&res.body()[..], b"hello");
    let res = c.request("POST", "/echo", "ping pong").await;
    assert_eq!(&res.body()[..], b"ping pong");
    let res = c.get("/sleep?ms=20").await;
    assert_eq!(res.status(), 200);
    let res = c.get("/stream?chunks=3&interval_ms=5").await;
    assert_eq!(&res.body()[..], b"chunk 1\nchunk 2\nchunk 3\n");
    assert_eq!(c.get("/nope").await.status(), 404);
    assert_eq!(c.request("DELETE", "/", "").await.status(), 405);
    let m = h.runtime.server("web").unwrap().pool().metrics();
    assert_eq!(m.accepted, 1, "one connection, reused");
    assert_eq!(m.requests, 6);
    assert!(m.bytes_in > 0 && m.bytes_out > 0);
    assert_eq!(
        metric(
            h.admin,
            "poolserve_request_duration_seconds_count",
            "server=\"web\""
        )
        .await,
        6.0
    );
}

#[tokio::test]
async fn bytes_are_counted_exactly_and_reported_while_the_connection_is_open() {
    let h = start(PoolSettings::default()).await;
    let server = h.runtime.server("web").unwrap();
    let counted = || {
        let m = server.pool().metrics();
        (m.bytes_in, m.bytes_out)
    };
    let mut s = TcpStream::connect(h.http).await.unwrap();
    let first = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    s.write_all(first).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while !reply.ends_with(b"hello") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    // The socket wrapper reports its tally when the response is flushed: the connection is
    // still open and kept alive.
    let want = (first.len() as u64, reply.len() as u64);
    wait_until("the first exchange counted", || counted() == want).await;

    let second =
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\nping";
    s.write_all(second).await.unwrap();
    let rest = read_to_close(&mut s).await;
    assert!(rest.ends_with("ping"), "{rest}");
    let want = (
        (first.len() + second.len()) as u64,
        (reply.len() + rest.len()) as u64,
    );
    wait_until("both exchanges counted", || counted() == want).await;
    let m = server.pool().metrics();
    assert_eq!(m.requests, 2);
    assert_eq!(m.requests_in_flight, 0);
}

#[tokio::test]
async fn https_serves_with_alpn_http11() {
    let h = start(PoolSettings::default()).await;
    let stream = TcpStream::connect(h.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&h.pem).connect(name, stream).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (_, session) = tls.get_ref();
    assert!(matches!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2)
    ));
    let mut c = Client::over(h.https, tls).await;
    let res = c.request("POST", "/echo", "secret").await;
    assert_eq!(&res.body()[..], b"secret");
    assert_eq!(
        h.runtime
            .server("web-tls")
            .unwrap()
            .pool()
            .metrics()
            .requests,
        1
    );
}

#[tokio::test]
async fn malformed_request_gets_400_and_is_closed() {
    let h = start(PoolSettings::default()).await;
    let reply = raw_exchange(h.http, b"GARBAGE\x01 / HTTP/9\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    // The server keeps serving others and counts it as the peer's fault.
    assert_eq!(get(h.http, "/").await.status(), 200);
    let m = h.runtime.server("web").unwrap().pool().metrics();
    assert!(m.closed.contains(&("protocol_error", 1)), "{:?}", m.closed);
    assert_eq!(m.errors, 0, "a client's garbage is not a server error");
}

#[tokio::test]
async fn oversized_header_block_gets_431_and_is_closed() {
    let h = start(PoolSettings {
        http1: Some(poolserve_pool::Http1Settings {
            max_header_size: Some(8192),
        }),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(h.http).await.unwrap();
    let big = "a".repeat(20_000);
    s.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let reply = read_to_close(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    assert_eq!(get(h.http, "/").await.status(), 200);
}

#[tokio::test]
async fn peer_vanishing_mid_request_is_not_a_server_error() {
    let h = start(PoolSettings::default()).await;
    let mut s = TcpStream::connect(h.http).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    drop(s);
    assert_eq!(get(h.http, "/").await.status(), 200);
    let health = health(h.admin).await;
    assert_eq!(health["pools"]["web"]["error_rate"], 0.0, "{health}");
}

#[tokio::test]
async fn a_sized_response_is_timed_to_its_end_a_streamed_one_to_its_head() {
    // Streamed: each response's head comes at once, its last chunk 60 ms later.
    let h = start(PoolSettings::default()).await;
    let mut c = Client::connect(h.http).await;
    for _ in 0..10 {
        let res = c.get("/stream?chunks=2&interval_ms=60").await;
        assert_eq!(&res.body()[..], b"chunk 1\nchunk 2\n");
    }
    let sum = metric(
        h.admin,
        "poolserve_request_duration_seconds_sum",
        "server=\"web\"",
    )
    .await;
    assert!(
        sum >= 10.0 * 0.06,
        "each stream is in the histogram for its whole life: {sum}"
    );
    let streamed = health(h.admin).await["pools"]["web"]["average_response_time_ms"]
        .as_f64()
        .unwrap();
    assert!(
        streamed < 30.0,
        "a stream's response time is its head's: {streamed} ms"
    );

    // Sized: `/sleep` answers with a body of known length after 40 ms.
    let h = start(PoolSettings::default()).await;
    let mut c = Client::connect(h.http).await;
    for _ in 0..10 {
        assert_eq!(c.get("/sleep?ms=40").await.status(), 200);
    }
    let sized = health(h.admin).await["pools"]["web"]["average_response_time_ms"]
        .as_f64()
        .unwrap();
    assert!(
        sized >= 40.0,
        "a sized response is timed to its end: {sized} ms"
    );
}
