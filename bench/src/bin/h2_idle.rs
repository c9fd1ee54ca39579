//! Idle HTTP/2 client for the memory benchmark, bounded in connections and time.
//!
//! `h2_idle ADDR CONNECTIONS SECONDS [get|grpc]`: opens the connections (h2c, prior knowledge),
//! makes one call on each and reads its whole response, so every connection is a served HTTP/2
//! connection with no stream open, then holds them idle. `get` (the default) is `GET /` (expects
//! 200 and `hello`); `grpc` is one `poolserve.demo.Echo/Unary` call (expects grpc-status 0).
//! Prints `open=N failed=F` once all are up and `closed_early=N` at the end. The client sends
//! no PINGs of its own but answers the server's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Connections being opened at once (the rest wait), so the listen backlog never overflows.
const OPENING_AT_ONCE: usize = 256;

/// A gRPC message: uncompressed, 7 bytes, `EchoRequest { message: "hello" }`.
const GRPC_HELLO: &[u8] = b"\x00\x00\x00\x00\x07\x0a\x05hello";

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} ({what}) missing or invalid"))
}

fn request(addr: &str, grpc: bool) -> Request<Full<Bytes>> {
    let builder = Request::builder();
    if grpc {
        builder
            .method(Method::POST)
            .uri(format!("http://{addr}/poolserve.demo.Echo/Unary"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(Bytes::from_static(GRPC_HELLO)))
    } else {
        builder
            .uri(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
    }
    .expect("request")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: String = arg(&args, 1, "address");
    let conns: usize = arg(&args, 2, "connections");
    let secs: u64 = arg(&args, 3, "seconds");
    let grpc = match args.get(4).map(String::as_str) {
        None | Some("get") => false,
        Some("grpc") => true,
        Some(other) => panic!("mode {other}: get or grpc"),
    };
    let closed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING_AT_ONCE));
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel(conns);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, closed, failed) = (addr.clone(), closed.clone(), failed.clone());
        let (up, opening) = (up_tx.clone(), opening.clone());
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore");
            let stream = TcpStream::connect(&addr).await.expect("connect");
            let _ = stream.set_nodelay(true);
            let (mut send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("handshake");
            let mut conn = tokio::spawn(conn);
            let res = send
                .send_request(request(&addr, grpc))
                .await
                .expect("response");
            let ok_status = res.status() == http::StatusCode::OK;
            let collected = res.into_body().collect().await.expect("body");
            let ok = ok_status
                && if grpc {
                    collected
                        .trailers()
                        .and_then(|t| t.get("grpc-status"))
                        .is_some_and(|s| s == "0")
                } else {
                    collected.to_bytes() == "hello"
                };
            if !ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
            let _ = up.send(()).await;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                // The connection's task ends only if the server closes the connection.
                _ = &mut conn => { closed.fetch_add(1, Ordering::Relaxed); }
            }
            drop(send);
            conn.abort();
        }));
    }
    for _ in 0..conns {
        let _ = up_rx.recv().await;
    }
    println!("open={conns} failed={}", failed.load(Ordering::Relaxed));
    for t in tasks {
        let _ = t.await;
    }
    println!("closed_early={}", closed.load(Ordering::Relaxed));
}
