//! `http2.max_session_memory` bounds what one HTTP/2 connection buffers, both ways: request data
//! the handler has not read (the receive window, half the budget) and response data the peer has
//! not taken (each stream's send buffer, the other half divided among the streams); on a `grpc`
//! server also the request messages tonic has begun to read but that are not yet whole.

use crate::support;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use poolserve_pool::{GrpcSettings, Http2Settings, PoolConfig, PoolRegistry, PoolSettings};
use poolserve_server::{Body, Protocol, Server, ServerOptions};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// 256 KiB for a connection: a 128 KiB receive window, and 128 KiB of send buffers shared by
/// four streams, 32 KiB each.
const MEMORY: usize = 256 << 10;
const STREAMS: usize = 4;
const CHUNK: usize = 16 << 10;

type ResBody = UnsyncBoxBody<Bytes, Infallible>;

fn options() -> ServerOptions {
    let settings = PoolSettings {
        http2: Some(Http2Settings {
            max_session_memory: Some(MEMORY as i64),
            max_concurrent_streams: Some(STREAMS as i64),
            ..Default::default()
        }),
        ..Default::default()
    };
    ServerOptions {
        name: "h2".into(),
        protocol: Protocol::Http2,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: PoolConfig::default().apply(&settings, "").unwrap().0,
    }
}

#[tokio::test]
async fn unread_request_data_stops_at_half_the_session_memory() {
    // The handler holds the request body unread until the test lets it go.
    let release = Arc::new(Semaphore::new(0));
    let service = {
        let release = release.clone();
        tower::service_fn(move |req: Request<Body>| {
            let release = release.clone();
            async move {
                let _held = release.acquire().await;
                drop(req);
                Ok::<_, Infallible>(Response::new(
                    Full::new(Bytes::from_static(b"done")).boxed_unsync(),
                ))
            }
        })
    };
    let server = Server::start(&PoolRegistry::new(), options(), service)
        .await
        .unwrap();
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::post("http://localhost/upload").body(()).unwrap();
    let (response, mut upload) = client.send_request(req, false).unwrap();
    upload.reserve_capacity(4 * MEMORY);
    let window = MEMORY / 2;
    let mut sent = 0;
    // The server grants its whole window...
    tokio::time::timeout(WAIT, async {
        while sent < window {
            let granted = std::future::poll_fn(|cx| upload.poll_capacity(cx))
                .await
                .expect("the stream stays open")
                .unwrap();
            upload
                .send_data(Bytes::from(vec![0; granted]), false)
                .unwrap();
            sent += granted;
        }
    })
    .await
    .expect("the server grants its receive window");
    assert_eq!(sent, window);
    // ...and nothing more while the handler reads nothing.
    let more = tokio::time::timeout(
        Duration::from_millis(300),
        std::future::poll_fn(|cx| upload.poll_capacity(cx)),
    )
    .await;
    assert!(more.is_err(), "granted past the window: {more:?}");
    release.add_permits(1);
    let res = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.pool().metrics().errors, 0);
}

/// A socket whose reads stop once `stalled` is set: a client that stops taking what the server
/// sends, while its HTTP/2 windows stay wide open.
struct StallingIo {
    inner: TcpStream,
    stalled: Arc<AtomicBool>,
}

impl AsyncRead for StallingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stalled.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn response_data_the_peer_does_not_take_stops_at_the_streams_send_buffer() {
    // An endless response of 16 KiB chunks, counting what the handler produced.
    let produced = Arc::new(AtomicU64::new(0));
    let service = {
        let produced = produced.clone();
        tower::service_fn(move |_req: Request<Body>| {
            let produced = produced.clone();
            let chunks = futures_util::stream::repeat_with(move || {
                produced.fetch_add(CHUNK as u64, Ordering::Relaxed);
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![0; CHUNK])))
            });
            let body: ResBody = StreamBody::new(chunks).boxed_unsync();
            async move { Ok::<_, Infallible>(Response::new(body)) }
        })
    };
    let server = Server::start(&PoolRegistry::new(), options(), service)
        .await
        .unwrap();
    let pool = server.pool().clone();
    // A small socket buffer, so the kernel holds little of what the server writes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.local_addr()).await.unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let io = StallingIo {
        inner: tcp,
        stalled: stalled.clone(),
    };
    // Windows as wide as HTTP/2 allows: only the server's own buffer can hold its data back.
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(u32::MAX >> 1)
        .initial_connection_window_size(u32::MAX >> 1)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(Request::get("http://localhost/").body(()).unwrap(), true)
        .unwrap();
    let res = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    stalled.store(true, Ordering::Relaxed);
    // The handler runs until the server stops asking it for more; nothing signals when, so the
    // count is watched until it has stood still for a while.
    let mut last = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = produced.load(Ordering::Relaxed);
            if now == last && now > 0 {
                break;
            }
            last = now;
        }
    })
    .await
    .expect("the handler is held back");
    // What the handler produced and the socket has not taken is what the server buffers: the
    // stream's share of the send half, plus the chunk in hand and the frame being written.
    let written = pool.metrics().bytes_out;
    let buffered = last.saturating_sub(written) as usize;
    let share = MEMORY / 2 / STREAMS;
    assert!(
        buffered <= share + 2 * CHUNK,
        "{buffered} bytes buffered ({last} produced, {written} written), share {share}"
    );
    // Without the limit (hyper's default is 400 KiB per stream) far more would pile up.
    assert!(last as usize > share, "only {last} bytes produced");
}

/// A gRPC connection's messages not yet whole: 2 MiB of session memory, so a 1 MiB receive
/// window and 1 MiB of messages in progress, for 16 streams.
const GRPC_MEMORY: usize = 2 << 20;
const GRPC_STREAMS: usize = 16;
/// Each call's message: 768 KiB, so two never fit in the budget together.
const GRPC_MESSAGE: usize = 768 << 10;

/// An `Echo.Unary` request body: one gRPC message of exactly `len` bytes (an `EchoRequest`
/// whose `message` fills it).
fn echo_unary_frame(len: usize) -> Bytes {
    // Field 1, length-delimited, with a three-byte varint length.
    let text = len - 4;
    assert!((1 << 14..1 << 21).contains(&text));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.extend_from_slice(&[
        0x0a,
        (text & 0x7f) as u8 | 0x80,
        ((text >> 7) & 0x7f) as u8 | 0x80,
        (text >> 14) as u8,
    ]);
    frame.resize(5 + len, b'm');
    Bytes::from(frame)
}

#[tokio::test]
async fn grpc_messages_not_yet_whole_stop_at_the_read_ahead_budget_and_every_call_completes() {
    let settings = PoolSettings {
        http2: Some(Http2Settings {
            max_session_memory: Some(GRPC_MEMORY as i64),
            max_concurrent_streams: Some(GRPC_STREAMS as i64),
            ..Default::default()
        }),
        grpc: Some(GrpcSettings {
            max_receive_message_length: Some(1 << 20),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = ServerOptions {
        name: "rpc".into(),
        protocol: Protocol::Grpc,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: PoolConfig::default().apply(&settings, "").unwrap().0,
    };
    let server = Server::start_grpc(
        &PoolRegistry::new(),
        options,
        poolserve_demo::grpc::services(),
    )
    .await
    .unwrap();
    let pool = server.pool().clone();
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // Every call sends all of its message but the last byte at once, as fast as the server's
    // windows let it, then waits for the test to send that byte.
    let frame = echo_unary_frame(GRPC_MESSAGE);
    let sent = Arc::new(AtomicU64::new(0));
    let last_bytes = Arc::new(Semaphore::new(0));
    let mut calls = Vec::new();
    for _ in 0..GRPC_STREAMS {
        let req = Request::post("http://localhost/poolserve.demo.Echo/Unary")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut upload) = client.send_request(req, false).unwrap();
        client = client.ready().await.unwrap();
        let (frame, sent, last_bytes) = (frame.clone(), sent.clone(), last_bytes.clone());
        calls.push(tokio::spawn(async move {
            let last = frame.len() - 1;
            let mut at = 0;
            while at <= last {
                if at == last {
                    let _go = last_bytes.acquire().await.unwrap();
                }
                upload.reserve_capacity(frame.len() - at);
                // Capacity left over from an earlier grant is used first: poll_capacity only
                // reports an increase.
                let mut granted = upload.capacity();
                if granted == 0 {
                    granted = std::future::poll_fn(|cx| upload.poll_capacity(cx))
                        .await
                        .expect("the stream stays open")
                        .unwrap();
                }
                let n = granted.min(if at < last { last - at } else { 1 });
                upload
                    .send_data(frame.slice(at..at + n), at + n == frame.len())
                    .unwrap();
                at += n;
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            let (head, mut body) = response.await.unwrap().into_parts();
            assert_eq!(head.status, 200);
            let mut reply = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                reply += chunk.len();
                body.flow_control().release_capacity(chunk.len()).unwrap();
            }
            let trailers = body.trailers().await.unwrap().unwrap_or_default();
            (trailers.get("grpc-status").cloned(), reply)
        }));
    }
    // The server grants what it will, then nothing more; nothing signals when, so the count
    // is watched until it has stood still for a while.
    let mut last = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = sent.load(Ordering::Relaxed);
            if now == last && now > 0 {
                break;
            }
            last = now;
        }
    })
    .await
    .expect("the calls are held back");
    // What the client could send is what the server holds: the receive window (each stream
    // an equal part of it), the messages in progress (the budget: one 768 KiB message), and
    // the one DATA frame each waiting stream read to see its message's prefix.
    let window = GRPC_MEMORY / 2;
    let bound = window + GRPC_MEMORY / 2 + GRPC_STREAMS * (16 << 10);
    assert!(
        (last as usize) <= bound,
        "{last} bytes of {} sent before any message was whole, bound {bound}",
        GRPC_STREAMS * frame.len()
    );
    // The call holding the budget received all it was sent.
    assert!(last as usize >= GRPC_MESSAGE, "only {last} bytes sent");
    let read = pool.metrics().bytes_in as usize;
    assert!(read <= bound + (64 << 10), "the server read {read} bytes");
    // Each last byte finishes a message; its bytes go back to the budget and the next call
    // in line takes them, until every call is answered.
    last_bytes.add_permits(GRPC_STREAMS);
    for call in calls {
        let (status, reply) = tokio::time::timeout(WAIT, call)
            .await
            .expect("every call completes")
            .unwrap();
        assert_eq!(status.as_ref().map(|s| s.as_bytes()), Some(&b"0"[..]));
        assert_eq!(reply, frame.len());
    }
    assert_eq!(pool.metrics().errors, 0);
}
