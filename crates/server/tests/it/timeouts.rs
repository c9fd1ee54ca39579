//! Every phase of a connection is bounded (S3): silent sockets, slowloris heads, slow bodies,
//! idle keep-alive, stalled TLS handshakes and peers that stop reading — while a long streaming
//! response is never cut.

use crate::support;

use std::time::{Duration, Instant};

use poolserve_pool::{CloseReason, PoolEventKind, PoolSettings, TimeoutKind};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Allowed lateness of a timeout on a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_millis(300);

fn settings(headers: &str, request: &str, keep_alive: &str, idle: &str) -> PoolSettings {
    PoolSettings {
        headers_timeout: Some(headers.into()),
        request_timeout: Some(request.into()),
        keep_alive_timeout: Some(keep_alive.into()),
        connection_timeout: Some(idle.into()),
        ..Default::default()
    }
}

fn assert_within(elapsed: Duration, bound: Duration) {
    assert!(
        elapsed >= bound && elapsed <= bound + SLACK,
        "closed after {elapsed:?}, expected {bound:?} (+{SLACK:?})"
    );
}

async fn wait_for_timeout(h: &Harness, kind: TimeoutKind) {
    let pool = h.runtime.server("web").unwrap().pool().clone();
    let name = kind.as_str();
    let mut events = h.runtime.registry().subscribe();
    if pool
        .metrics()
        .timeouts
        .iter()
        .any(|(k, n)| *k == name && *n > 0)
    {
        return;
    }
    wait_events(&mut events, 1, |k| {
        matches!(k, PoolEventKind::ConnectionRemoved { reason: CloseReason::Timeout(t), .. } if *t == kind)
    })
    .await;
}

#[tokio::test]
async fn slowloris_is_closed_at_headers_timeout_while_others_are_served() {
    let _isolated = support::isolation::timing().await;
    let h = start(settings("600ms", "30s", "30s", "30s")).await;
    let start = Instant::now();
    let slow = TcpStream::connect(h.http).await.unwrap();
    let (mut from_server, mut to_server) = slow.into_split();
    tokio::spawn(async move {
        // One header byte every 100 ms: never a complete head.
        for b in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if to_server.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The close is seen as it happens, by a read, not by the next byte's failed write.
    let drip = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = from_server.read_to_end(&mut rest).await;
        start.elapsed()
    });
    // Meanwhile other clients are served normally.
    for _ in 0..5 {
        assert_eq!(get(h.http, "/").await.status(), 200);
    }
    let closed_after = tokio::time::timeout(WAIT, drip).await.unwrap().unwrap();
    assert_within(closed_after, Duration::from_millis(600));
    wait_for_timeout(&h, TimeoutKind::Headers).await;
    assert_eq!(
        metric(
            h.admin,
            "poolserve_timeouts_total",
            "server=\"web\",protocol=\"http\",kind=\"headers\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_socket_that_never_sends_a_byte_is_closed() {
    let _isolated = support::isolation::timing().await;
    let h = start(settings("500ms", "30s", "30s", "30s")).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(h.http).await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.is_empty(), "{got}");
    assert_within(start.elapsed(), Duration::from_millis(500));
    wait_for_timeout(&h, TimeoutKind::Headers).await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed() {
    let _isolated = support::isolation::timing().await;
    let h = start(settings("500ms", "30s", "30s", "30s")).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(h.https).await.unwrap();
    // Half a ClientHello record header, then silence.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.is_empty());
    assert_within(start.elapsed(), Duration::from_millis(500));
    let pool = h.runtime.server("web-tls").unwrap().pool().clone();
    let mut events = h.runtime.registry().subscribe();
    if !pool.metrics().timeouts.contains(&("handshake", 1)) {
        wait_events(&mut events, 1, |k| {
            matches!(k, PoolEventKind::ConnectionRemoved { .. })
        })
        .await;
    }
    assert!(
        pool.metrics().timeouts.contains(&("handshake", 1)),
        "{:?}",
        pool.metrics().timeouts
    );
}

#[tokio::test]
async fn a_slow_request_body_is_cut_at_request_timeout() {
    let _isolated = support::isolation::timing().await;
    let h = start(settings("5s", "700ms", "30s", "30s")).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(h.http).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let drip = tokio::spawn(async move {
        for _ in 0..100 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    tokio::time::timeout(WAIT, drip).await.unwrap().unwrap();
    // The request started at its first byte, written as soon as the connection was open.
    assert_within(start.elapsed(), Duration::from_millis(700));
    wait_for_timeout(&h, TimeoutKind::Request).await;
}

/// A first request is timed from its first byte like any later one: its head may come late
/// (within `headers_timeout` of the open) and its body still has the whole `request_timeout`.
/// The head itself stays due `headers_timeout` after the open, however late its first byte.
#[tokio::test]
async fn a_first_request_has_request_timeout_from_its_first_byte() {
    use http_body_util::{BodyExt, StreamBody};
    let _isolated = support::isolation::timing().await;
    let h = start(settings("2s", "1s", "30s", "30s")).await;

    // The head 700 ms after the connect, the body over the next 500 ms: 1.2 s from the
    // connect, 0.5 s from the first byte.
    let stream = TcpStream::connect(h.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, _>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )));
    let req = http::Request::post("/echo")
        .header("host", "x")
        .body(body)
        .unwrap();
    let drip = tokio::spawn(async move {
        for part in ["one ", "two ", "three ", "four ", "five"] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(Ok(http_body::Frame::data(bytes::Bytes::from(part))))
                .await
                .unwrap();
        }
    });
    let res = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .expect("the response head");
    assert_eq!(res.status(), 200);
    let echoed = tokio::time::timeout(WAIT, res.into_body().collect())
        .await
        .unwrap()
        .expect("the whole echo: the request was not cut")
        .to_bytes();
    assert_eq!(&echoed[..], b"one two three four five");
    drip.await.unwrap();
    let m = h.runtime.server("web").unwrap().pool().metrics();
    assert!(m.timeouts.iter().all(|(_, n)| *n == 0), "{:?}", m.timeouts);

    // A head begun 1.5 s after the connect and never finished: cut 2 s after the connect.
    let start = Instant::now();
    let mut late = TcpStream::connect(h.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    late.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut late).await;
    assert!(got.is_empty(), "{got}");
    assert_within(start.elapsed(), Duration::from_secs(2));
    wait_for_timeout(&h, TimeoutKind::Headers).await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_keep_alive_timeout() {
    let _isolated = support::isolation::timing().await;
    let h = start(settings("5s", "5s", "400ms", "30s")).await;
    let mut c = Client::connect(h.http).await;
    assert_eq!(c.get("/").await.status(), 200);
    let idle_since = Instant::now();
    // Activity resets the idle clock.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.get("/").await.status(), 200);
    let idle_since_second = Instant::now();
    c.closed().await;
    assert!(idle_since.elapsed() >= Duration::from_millis(600));
    assert_within(idle_since_second.elapsed(), Duration::from_millis(400));
    wait_for_timeout(&h, TimeoutKind::KeepAlive).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_connection_timeout_when_it_comes_first() {
    let _isolated = support::isolation::timing().await;
    // The connection (idle) timeout caps keep-alive: here it is the shorter of the two.
    let h = start(settings("5s", "5s", "30s", "400ms")).await;
    let mut c = Client::connect(h.http).await;
    assert_eq!(c.get("/").await.status(), 200);
    let idle_since = Instant::now();
    c.closed().await;
    assert_within(idle_since.elapsed(), Duration::from_millis(400));
    wait_for_timeout(&h, TimeoutKind::Idle).await;
    assert_eq!(
        metric(
            h.admin,
            "poolserve_timeouts_total",
            "server=\"web\",protocol=\"http\",kind=\"idle\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_long_stream_outlives_every_timeout() {
    let _isolated = support::isolation::timing().await;
    // Every bound is 300 ms; the stream takes ~1.5 s.
    let h = start(settings("300ms", "300ms", "300ms", "300ms")).await;
    let mut c = Client::connect(h.http).await;
    let res = c.get("/stream?chunks=15&interval_ms=100").await;
    assert_eq!(res.status(), 200);
    let body = String::from_utf8(res.body().to_vec()).unwrap();
    assert_eq!(body.lines().count(), 15, "{body}");
    assert!(body.ends_with("chunk 15\n"));
    // And a slow handler is not cut either.
    assert_eq!(c.get("/sleep?ms=800").await.status(), 200);
    let m = h.runtime.server("web").unwrap().pool().metrics();
    assert!(m.timeouts.iter().all(|(_, n)| *n == 0), "{:?}", m.timeouts);
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_as_a_write_stall() {
    let _isolated = support::isolation::timing().await;
    let h = start(settings("5s", "5s", "5s", "500ms")).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(h.http).await.unwrap();
    // A 640 MiB stream, never read: the socket buffers fill and the server's write blocks.
    s.write_all(b"GET /stream?chunks=10000&interval_ms=0&size=65536 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_for_timeout(&h, TimeoutKind::WriteStall).await;
    let m = h.runtime.server("web").unwrap().pool().metrics();
    assert!(m.timeouts.contains(&("write_stall", 1)), "{:?}", m.timeouts);
    assert_eq!(m.active, 0);
}

/// A large HTTPS download whose writes waited on a slow reader, then a long-poll on the same
/// kept-alive connection that takes longer than `connection_timeout`: neither the waits during
/// the download nor the idle spell before it end the long-poll.
#[tokio::test]
async fn a_long_poll_after_a_download_that_waited_on_the_reader_is_served() {
    let _isolated = support::isolation::timing().await;
    let h = start(settings("5s", "5s", "5s", "1500ms")).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(h.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&h.pem).connect(name, stream).await.unwrap();
    let mut c = Client::over(h.https, tls).await;
    // 12.8 MB read at about a tenth of the server's pace (a 5 ms pause every 64 KiB): the
    // server's TLS writes and its last flush wait on us, none longer than `connection_timeout`.
    let (status, len) = c
        .get_slowly(
            "/stream?chunks=200&interval_ms=0&size=65536",
            64 << 10,
            Duration::from_millis(5),
        )
        .await;
    assert_eq!((status, len), (200, 200 * 65536));
    // A long-poll on the same connection, longer than `connection_timeout`.
    let res = c.try_request("GET", "/sleep?ms=2500", "").await;
    let m = h.runtime.server("web-tls").unwrap().pool().metrics();
    assert_eq!(
        res.map(|r| r.status()).ok(),
        Some(http::StatusCode::OK),
        "{:?}",
        m.timeouts
    );
    assert!(m.timeouts.iter().all(|(_, n)| *n == 0), "{:?}", m.timeouts);
}

/// Over TLS the last bytes of a response leave in a flush: a flush that had to wait on the
/// peer and then went through leaves no write blocked, so a later request is not cut as a
/// stall. Real TLS over a real socket whose peer first does not read, then reads everything.
#[tokio::test]
async fn a_flush_that_waited_on_the_peer_then_went_through_leaves_no_write_blocked() {
    use poolserve_pool::{DefaultPolicy, Pool, PoolConfig};
    use poolserve_server::tls::PemPair;
    use poolserve_server::TrackedIo;
    use std::future::poll_fn;
    use std::pin::Pin;
    use tokio::io::AsyncWrite;

    let pool = Pool::new("io", DefaultPolicy("test"), PoolConfig::default());
    let guard = pool.admit(None).unwrap();
    let tracker = guard.tracker();
    let pem = PemPair::self_signed().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pem.server_config(&[]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tls_connector(&pem).connect(name, stream).await.unwrap()
    });
    let (stream, _) = listener.accept().await.unwrap();
    let tls = acceptor.accept(stream).await.unwrap();
    let mut client = client.await.unwrap();
    let mut io = TrackedIo::new(tls, tracker.clone());

    // Write until the socket and the TLS buffer are full: the peer is not reading.
    let chunk = vec![7u8; 64 << 10];
    let mut sent = 0usize;
    loop {
        let wrote = poll_fn(|cx| match Pin::new(&mut io).poll_write(cx, &chunk) {
            std::task::Poll::Pending => std::task::Poll::Ready(None),
            std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r.unwrap())),
        })
        .await;
        match wrote {
            Some(n) => sent += n,
            None => break,
        }
        assert!(sent < 256 << 20, "the peer's buffers never filled");
    }
    let flushed =
        poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut io).poll_flush(cx).is_ready())).await;
    assert!(!flushed, "the flush waits on the peer");
    assert!(tracker.activity().write_blocked_since.is_some());

    // The peer reads everything; the flush goes through and no write is left blocked.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        while got < sent {
            got += client.read(&mut buf).await.unwrap();
        }
        client
    });
    tokio::time::timeout(WAIT, poll_fn(|cx| Pin::new(&mut io).poll_flush(cx)))
        .await
        .expect("the flush completes once the peer reads")
        .unwrap();
    assert_eq!(tracker.activity().write_blocked_since, None);
    drop(reader.await.unwrap());
}

/// A `PoolConfig` built in code skips the config's bounds: a timeout no `Instant` can hold
/// means no deadline, never a panic in the connection's task.
#[tokio::test]
async fn a_timeout_past_what_an_instant_holds_leaves_a_kept_alive_connection_served() {
    let endless = poolserve_pool::PoolConfig {
        keep_alive_timeout: Duration::MAX,
        connection_timeout: Duration::MAX,
        headers_timeout: Duration::MAX,
        request_timeout: Duration::MAX,
        ..poolserve_pool::PoolConfig::default()
    };
    let registry = poolserve_pool::PoolRegistry::new();
    let options = poolserve_server::ServerOptions {
        name: "endless".into(),
        protocol: poolserve_server::Protocol::Http,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: endless,
    };
    let server =
        poolserve_server::Server::start(&registry, options, poolserve_demo::routes::service())
            .await
            .unwrap();
    let pool = server.pool().clone();
    let mut events = registry.subscribe();
    let mut client = Client::connect(server.local_addr()).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status(), 200);
        // Idle between requests: the connection's rule computes its keep-alive deadline.
        wait_until("the connection idle", || pool.metrics().idle == 1).await;
    }
    assert_eq!(pool.metrics().requests, 3);
    assert_eq!(pool.active_connections(), 1);
    // It closes when its peer does, as completed.
    drop(client);
    let removed = wait_events(&mut events, 1, |k| {
        matches!(k, PoolEventKind::ConnectionRemoved { .. })
    })
    .await;
    assert!(
        matches!(
            removed[0],
            PoolEventKind::ConnectionRemoved {
                reason: CloseReason::Completed,
                ..
            }
        ),
        "{removed:?}"
    );
}
