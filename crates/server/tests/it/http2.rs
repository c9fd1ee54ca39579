//! HTTP/2 servers under the pool: h2c and h2 over TLS (ALPN), one pooled connection per HTTP/2
//! connection, the protocol's limits applied, refusal before any frame, GOAWAY on shutdown and on
//! a lowered limit, and keep-alive pings that close a silent peer.

use crate::support;

use std::time::{Duration, Instant};

use poolserve_pool::{CloseReason, Http2Settings, PoolEventKind, PoolSettings, TimeoutKind};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn h2_settings(h2: Http2Settings) -> PoolSettings {
    PoolSettings {
        http2: Some(h2),
        ..Default::default()
    }
}

#[tokio::test]
async fn h2c_serves_concurrent_streams_on_one_pooled_connection() {
    let h = start(PoolSettings::default()).await;
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    let (client, _conn) = H2Client::connect(h.h2c).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut c = client.clone();
        // Long enough for the metrics below to be read while all are in flight.
        streams.push(tokio::spawn(async move { c.get("/sleep?ms=1000").await }));
    }
    wait_until("20 streams in flight", || {
        pool.metrics().requests_in_flight == 20
    })
    .await;
    assert_eq!(pool.metrics().active, 1);
    assert_eq!(pool.metrics().busy, 1);
    // The admin endpoint shows the connection's active streams as requests in flight.
    let labels = "server=\"h2c\",protocol=\"http2\"";
    assert_eq!(
        metric(h.admin, "poolserve_requests_in_flight", labels).await,
        20.0
    );
    for s in streams {
        let res = s.await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(&res.body()[..], b"slept");
    }
    let mut c = client.clone();
    let echo = c
        .try_request("POST", "/echo", "ping over h2")
        .await
        .unwrap();
    assert_eq!(&echo.body()[..], b"ping over h2");
    let m = pool.metrics();
    assert_eq!(m.accepted, 1);
    assert_eq!(m.requests, 21);
    assert_eq!(m.requests_in_flight, 0);
    assert_eq!(
        metric(h.admin, "poolserve_connections_active", "server=\"h2c\"").await,
        1.0
    );
}

#[tokio::test]
async fn tls_negotiates_h2_by_alpn_and_falls_back_to_http1() {
    let h = start(PoolSettings::default()).await;
    let (mut h2, _conn) = H2Client::connect_tls(h.h2, &h.pem).await;
    let res = h2.get("/");
    let res = res.await;
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(&res.body()[..], b"hello");

    let stream = TcpStream::connect(h.h2).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&h.pem).connect(name, stream).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = Client::over(h.h2, tls).await;
    let res = h1.get("/").await;
    assert_eq!(res.version(), http::Version::HTTP_11);
    assert_eq!(&res.body()[..], b"hello");
    assert_eq!(h.runtime.server("h2").unwrap().pool().metrics().active, 2);
}

#[tokio::test]
async fn over_the_limit_a_connection_is_closed_before_any_frame() {
    let h = start(PoolSettings {
        max_connections: Some(2),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    let (mut a, _ca) = H2Client::connect(h.h2c).await;
    let (mut b, _cb) = H2Client::connect(h.h2c).await;
    assert_eq!(a.get("/").await.status(), 200);
    assert_eq!(b.get("/").await.status(), 200);
    let mut extra = TcpStream::connect(h.h2c).await.unwrap();
    extra.write_all(PREFACE_AND_SETTINGS).await.ok();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, extra.read_to_end(&mut got))
        .await
        .expect("refused connection is closed")
        .ok();
    assert!(got.is_empty(), "a refused peer gets no frame, got {got:?}");
    let m = pool.metrics();
    assert_eq!((m.active, m.accepted, m.rejected), (2, 2, 1));
    // The admitted connections are untouched.
    assert_eq!(a.get("/").await.status(), 200);
}

#[tokio::test]
async fn max_concurrent_streams_is_enforced() {
    let h = start(h2_settings(Http2Settings {
        max_concurrent_streams: Some(3),
        ..Default::default()
    }))
    .await;
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    let (client, _conn) = H2Client::connect(h.h2c).await;
    // One exchange first, so the client has the server's SETTINGS before it opens streams;
    // streams opened before that are refused with REFUSED_STREAM instead.
    assert_eq!(client.clone().get("/").await.status(), 200);
    let mut streams = Vec::new();
    for _ in 0..9 {
        let mut c = client.clone();
        streams.push(tokio::spawn(async move { c.get("/sleep?ms=200").await }));
    }
    let mut most = 0;
    let watch = async {
        loop {
            most = most.max(pool.metrics().requests_in_flight);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let all = async {
        for s in streams {
            assert_eq!(s.await.unwrap().status(), 200);
        }
    };
    tokio::select! {
        () = all => {}
        () = watch => unreachable!(),
    }
    assert_eq!(most, 3, "the server's SETTINGS cap the streams in flight");
    assert_eq!(pool.metrics().requests, 10);
}

fn get_with_header(value_len: usize) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get("http://localhost/")
        .header("x-big", "a".repeat(value_len))
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_oversized_header_list_gets_431_and_an_abusive_one_a_goaway() {
    let h = start(h2_settings(Http2Settings {
        max_header_list_size: Some(1024),
        ..Default::default()
    }))
    .await;
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    let stream = TcpStream::connect(h.h2c).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // Over the limit: that stream is answered 431, the connection lives on.
    let res = sender.send_request(get_with_header(2048)).await.unwrap();
    assert_eq!(res.status(), 431);
    sender.ready().await.unwrap();
    let ok = sender.send_request(get_with_header(10)).await.unwrap();
    assert_eq!(ok.status(), 200);
    // Far over it (h2 draws the line at 4x): the peer is abusive, the connection goes.
    let err = sender
        .send_request(get_with_header(8192))
        .await
        .expect_err("an abusive header block ends the connection");
    let reason = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("connection ends")
        .ok();
    wait_until("the close to be counted", || {
        pool.metrics()
            .closed
            .iter()
            .any(|(r, n)| *r == "protocol_error" && *n == 1)
    })
    .await;
}

#[tokio::test]
async fn shutdown_sends_goaway_and_streams_in_flight_finish() {
    let h = start_with(PoolSettings::default(), Duration::from_secs(5)).await;
    let pool = h.runtime.server("h2").unwrap().pool().clone();
    let (client, conn) = H2Client::connect_tls(h.h2, &h.pem).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut c = client.clone();
        streams.push(tokio::spawn(async move {
            c.try_request("GET", "/sleep?ms=400", "").await
        }));
    }
    wait_until("5 streams in flight", || {
        pool.metrics().requests_in_flight == 5
    })
    .await;
    let reports = h.runtime.shutdown().await;
    for s in streams {
        let res = s
            .await
            .unwrap()
            .expect("a stream in flight at shutdown finishes");
        assert_eq!(res.status(), 200);
        assert_eq!(&res.body()[..], b"slept");
    }
    // After the GOAWAY the client's connection ends cleanly.
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("connection ends")
        .unwrap()
        .unwrap();
    let report = &reports.iter().find(|(n, _)| n == "h2").unwrap().1;
    assert_eq!((report.closed_politely, report.forced), (1, 0));
}

#[tokio::test]
async fn lowering_the_limit_sends_goaway_to_the_excess() {
    let h = start(PoolSettings::default()).await;
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    let mut events = h.runtime.registry().subscribe();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut c, conn) = H2Client::connect(h.h2c).await;
        assert_eq!(c.get("/").await.status(), 200);
        clients.push((c, conn));
    }
    // One connection has a stream in flight: GOAWAY lets it finish.
    let mut busy = clients[0].0.clone();
    let in_flight = tokio::spawn(async move { busy.try_request("GET", "/sleep?ms=300", "").await });
    wait_until("a stream in flight", || {
        pool.metrics().requests_in_flight == 1
    })
    .await;
    pool.update_config(&PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .unwrap();
    wait_events(&mut events, 2, |k| {
        matches!(
            k,
            PoolEventKind::ConnectionRemoved {
                reason: CloseReason::LimitLowered,
                ..
            }
        )
    })
    .await;
    assert_eq!(pool.active_connections(), 1);
    let res = in_flight.await.unwrap();
    assert!(
        res.is_ok_and(|r| r.status() == 200),
        "a stream in flight is never cut by a lowered limit"
    );
}

#[tokio::test]
async fn a_peer_that_ignores_pings_is_closed_as_a_pong_timeout() {
    let _isolated = support::isolation::timing().await;
    let h = start(h2_settings(Http2Settings {
        keep_alive_interval: Some("200ms".into()),
        keep_alive_timeout: Some("300ms".into()),
        ..Default::default()
    }))
    .await;
    let mut events = h.runtime.registry().subscribe();
    let mut silent = TcpStream::connect(h.h2c).await.unwrap();
    silent.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let opened = Instant::now();
    // Reads what the server sends (its SETTINGS, then PINGs) and never answers.
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut sink))
        .await
        .expect("the server closes a peer that does not answer pings")
        .ok();
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450),
        "closed after {elapsed:?}, before a ping could go unanswered"
    );
    wait_events(&mut events, 1, |k| {
        matches!(
            k,
            PoolEventKind::ConnectionRemoved {
                reason: CloseReason::Timeout(TimeoutKind::Pong),
                ..
            }
        )
    })
    .await;
    // A client that answers pings stays open past the same time.
    let (mut live, _conn) = H2Client::connect(h.h2c).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(live.get("/").await.status(), 200);
}

#[tokio::test]
async fn a_stream_whose_body_stalls_is_cut_at_request_timeout_and_the_connection_goes_on() {
    let _isolated = support::isolation::timing().await;
    use http_body_util::{BodyExt, StreamBody};
    let h = start(PoolSettings {
        request_timeout: Some("300ms".into()),
        ..Default::default()
    })
    .await;
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    let stream = TcpStream::connect(h.h2c).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // One chunk, then nothing: the sender is kept alive so the body never ends.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(1);
    tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
        b"first",
    ))))
    .await
    .unwrap();
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )))
    .boxed();
    let req = http::Request::post("http://localhost/echo")
        .body(body)
        .unwrap();
    let started = Instant::now();
    let res = sender.send_request(req).await.unwrap();
    let outcome = tokio::time::timeout(WAIT, res.into_body().collect())
        .await
        .expect("the server ends the stalled stream");
    assert!(outcome.is_err(), "the echo of a stalled body breaks off");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "cut after {elapsed:?}"
    );
    wait_until("the request timeout counted", || {
        pool.metrics().timeouts.contains(&("request", 1))
    })
    .await;
    // The connection and its other streams go on; the client's stall is not the server's error.
    let fine = http::Request::get("http://localhost/")
        .body(
            http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    assert_eq!(sender.send_request(fine).await.unwrap().status(), 200);
    let m = pool.metrics();
    assert_eq!((m.accepted, m.errors), (1, 0));
    drop(tx);
}

#[tokio::test]
async fn a_stream_is_timed_from_its_arrival_not_from_the_connection_s_last_activity() {
    let _isolated = support::isolation::timing().await;
    let h = start(PoolSettings::default()).await;
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    let (client, _conn) = H2Client::connect(h.h2c).await;
    let mut c = client.clone();
    assert_eq!(c.get("/").await.status(), 200);
    // The connection idles, then a 20 ms request comes: its time is its own, not the idle spell.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = pool.metrics().latency.sum_seconds;
    assert_eq!(c.get("/sleep?ms=20").await.status(), 200);
    let took = pool.metrics().latency.sum_seconds - before;
    assert!((0.019..0.3).contains(&took), "{took} s");
}

/// Reads HTTP/2 frames until the server closes, acking its PINGs as a client does; returns
/// each frame's type and payload, and when the close came.
pub(crate) async fn frames_until_close(s: &mut TcpStream) -> (Vec<(u8, Vec<u8>)>, Instant) {
    let mut frames = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return (frames, Instant::now());
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return (frames, Instant::now());
            }
            let (kind, flags) = (head[3], head[4]);
            if kind == 0x6 && flags & 0x1 == 0 {
                let mut ack = vec![0, 0, 8, 0x6, 0x1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                let _ = s.write_all(&ack).await;
            }
            frames.push((kind, payload));
        }
    })
    .await
    .expect("the server closes the connection")
}

/// The last-stream id of the last GOAWAY among `frames`, if any came.
pub(crate) fn last_goaway(frames: &[(u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .rev()
        .find(|(kind, _)| *kind == 0x7)
        .map(|(_, p)| u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]]))
}

/// A connection the pool closes for its first-request or idle timeout gets a GOAWAY naming
/// the last stream processed before the socket closes, so a client that opened a stream at
/// that moment knows it was not processed.
#[tokio::test]
async fn a_timeout_close_sends_goaway_with_the_last_stream_first() {
    let _isolated = support::isolation::timing().await;
    let h = start(PoolSettings {
        headers_timeout: Some("600ms".into()),
        connection_timeout: Some("600ms".into()),
        ..Default::default()
    })
    .await;
    let bound = Duration::from_millis(600);

    // No request ever: the first-request bound.
    let opened = Instant::now();
    let mut s = TcpStream::connect(h.h2c).await.unwrap();
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let (frames, closed) = frames_until_close(&mut s).await;
    assert_eq!(last_goaway(&frames), Some(0), "{frames:?}");
    let took = closed - opened;
    assert!(
        took >= bound && took < bound + Duration::from_millis(800),
        "{took:?}"
    );

    // One request (GET / on stream 1: HPACK static :method GET, :path /, :scheme http and
    // :authority "x"), then idle.
    let mut s = TcpStream::connect(h.h2c).await.unwrap();
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let block = [0x82, 0x84, 0x86, 0x41, 0x01, b'x'];
    let mut headers = vec![0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    s.write_all(&headers).await.unwrap();
    let (frames, _) = frames_until_close(&mut s).await;
    assert!(
        frames.iter().any(|(kind, _)| *kind == 0x1),
        "a response: {frames:?}"
    );
    assert_eq!(last_goaway(&frames), Some(1), "{frames:?}");
    let m = h.runtime.server("h2c").unwrap().pool().metrics();
    assert!(m.timeouts.contains(&("headers", 1)), "{:?}", m.timeouts);
    assert!(m.timeouts.contains(&("idle", 1)), "{:?}", m.timeouts);
}

/// A stream the client opens between the idle timeout's first GOAWAY and the final one is
/// accepted, so it is answered, however long it takes: the goodbye's grace runs only once no
/// stream is in flight.
#[tokio::test]
async fn a_stream_opened_during_the_timeout_goodbye_is_answered() {
    let h = start(PoolSettings {
        connection_timeout: Some("500ms".into()),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(h.h2c).await.unwrap();
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    // GET / on stream 1: :method GET, :path /, :scheme http, :authority "x".
    let block = [0x82, 0x84, 0x86, 0x41, 0x01, b'x'];
    let mut headers = vec![0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    s.write_all(&headers).await.unwrap();
    // GET /sleep?ms=1500 on stream 3 (:path as a literal with the static name index 4),
    // longer than the goodbye's grace.
    let path = b"/sleep?ms=1500";
    let mut block = vec![0x82, 0x86, 0x41, 0x01, b'x', 0x04, path.len() as u8];
    block.extend_from_slice(path);
    let mut slow = vec![0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 3];
    slow.extend_from_slice(&block);
    let mut sent_slow = false;
    let mut answered = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return;
            }
            match head[3] {
                // The first GOAWAY: open the slow stream before answering any PING.
                0x7 if !sent_slow => {
                    sent_slow = true;
                    s.write_all(&slow).await.unwrap();
                }
                0x6 if head[4] & 0x1 == 0 => {
                    let mut ack = vec![0, 0, 8, 0x6, 0x1, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    let _ = s.write_all(&ack).await;
                }
                0x1 => answered.push(stream),
                _ => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
    assert!(sent_slow, "a GOAWAY came");
    assert_eq!(answered, vec![1, 3], "both streams answered");
}

/// A stream whose request body the client resets part-way is the client's doing, not a server
/// error; that excuse belongs to that request alone: a handler failing later on the same
/// long-lived connection is counted. A user's service on an `http2` server, an h2 client.
#[tokio::test]
async fn a_body_reset_by_the_client_excuses_only_its_own_request() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use poolserve_pool::{PoolConfig, PoolRegistry};
    use poolserve_server::{BoxError, Protocol, Server, ServerOptions};

    // `/upload` reads its whole body, failing when it cannot; `/fail` always fails.
    let service = tower::service_fn(|req: http::Request<poolserve_server::Body>| async move {
        match req.uri().path() {
            "/upload" => {
                let body = req.into_body().collect().await?.to_bytes();
                Ok(http::Response::new(Full::new(body)))
            }
            _ => Err::<http::Response<Full<Bytes>>, BoxError>("the handler failed".into()),
        }
    });
    let registry = PoolRegistry::new();
    let options = ServerOptions {
        name: "app".into(),
        protocol: Protocol::Http2,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: PoolConfig::default(),
    };
    let server = Server::start(&registry, options, service).await.unwrap();
    let pool = server.pool().clone();

    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    // An upload the client gives up on half-way: RST_STREAM(CANCEL) while the handler reads.
    let upload = http::Request::post("http://localhost/upload")
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(upload, false).unwrap();
    body.send_data(Bytes::from_static(b"the first half"), false)
        .unwrap();
    wait_until("the upload in flight", || {
        pool.metrics().requests_in_flight == 1
    })
    .await;
    body.send_reset(h2::Reason::CANCEL);
    wait_until("the upload recorded", || pool.metrics().requests == 1).await;
    assert_eq!(
        pool.metrics().errors,
        0,
        "a client's reset is not a server error"
    );

    // Later, on the same connection, the handler fails: that is the server's error.
    let mut client = client.ready().await.unwrap();
    let failing = http::Request::get("http://localhost/fail")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(failing, true).unwrap();
    let reset = tokio::time::timeout(WAIT, response)
        .await
        .expect("the server answers the stream");
    assert!(
        reset.is_err(),
        "a failed handler resets its stream: {reset:?}"
    );
    wait_until("the failure recorded", || pool.metrics().requests == 2).await;
    let m = pool.metrics();
    assert_eq!((m.accepted, m.active), (1, 1), "one long-lived connection");
    assert_eq!(m.errors, 1, "the handler's failure is counted");
}
