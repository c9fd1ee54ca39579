//! Embedding the poolserve pool in your own hyper server, without poolserve's listeners.
//!
//! Run it with `cargo run -p poolserve-server --example embed_pool -- 127.0.0.1:8080`, then
//! `curl localhost:8080/`. The pool limits the server to 100 connections (the 101st is closed
//! at accept, before any HTTP), applies the default timeouts with poolserve's HTTP/1.1 rule, and
//! its health and metrics are printed every five seconds.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use poolserve_pool::{
    Activity, DefaultPolicy, ManagedConnection, Pool, PoolConfig, PoolSettings, TimeoutKind,
};
use poolserve_server::{http1_deadline, http1_timer_at, TrackedIo};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Your protocol connection, made drivable by the pool: a future, a polite close and the
/// timeout rule it is bounded by.
struct MyConnection<F>(Pin<Box<F>>, fn(Pin<&mut F>));

impl<F: Future<Output = Result<(), hyper::Error>>> Future for MyConnection<F> {
    type Output = Result<(), hyper::Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl<F: Future<Output = Result<(), hyper::Error>>> ManagedConnection for MyConnection<F> {
    type Error = hyper::Error;
    fn close_politely(mut self: Pin<&mut Self>) {
        let close = self.1;
        close(self.0.as_mut());
    }

    // The HTTP/1.1 request cycle: without these, the pool's protocol-neutral rule applies
    // (idle for `connection_timeout`, write stalls).
    fn deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        http1_deadline(a, c)
    }

    fn timer_at(deadline: Instant, a: &Activity, c: &PoolConfig) -> Instant {
        http1_timer_at(deadline, a, c)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let (config, _) = PoolConfig::default().apply(
        &PoolSettings {
            max_connections: Some(100),
            ..Default::default()
        },
        "",
    )?;
    let pool = Pool::new("my-server", DefaultPolicy("http"), config);
    pool.spawn_health_monitor();

    let reporter = pool.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (h, m) = (reporter.health(), reporter.metrics());
            println!(
                "{}: {} active, {} requests, p99 {:?}s ({})",
                h.status, m.active, m.requests, m.latency_p99, h.message
            );
        }
    });

    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        // Admission first: a refused connection is dropped before any protocol work.
        let Ok(guard) = pool.admit(Some(peer)) else {
            continue;
        };
        let tracker = guard.tracker();
        tokio::spawn(async move {
            let request_tracker = tracker.clone();
            let service = service_fn(move |_req: Request<Incoming>| {
                // Each request is recorded (latency, errors) when its tracker is dropped.
                let request = request_tracker.request_started();
                request.body_received();
                async move {
                    let _request = request;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
                }
            });
            let io = TokioIo::new(TrackedIo::new(stream, tracker));
            let conn = http1::Builder::new().serve_connection(io, service);
            let conn = MyConnection(Box::pin(conn), |c| c.graceful_shutdown());
            // The pool drives the connection: timeouts, drain, live limit changes; dropping the
            // guard at the end removes it from the count.
            let reason = guard.serve(conn).await;
            println!("connection from {peer} closed: {reason}");
        });
    }
}
