//! The benchmarks' baselines: one connection served by hyper alone, with the demo handler and no
//! pool. The `bare_hyper`, `bare_h2` and `same_binary bare` programs all serve through these,
//! so every baseline runs the same code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use poolserve_demo::routes as demo;

/// poolserve's default `http2.max_concurrent_streams` (hyper's is 200).
const MAX_CONCURRENT_STREAMS: u32 = 250;

/// Serves one HTTP/1.1 connection with keep-alive, hyper's defaults otherwise.
pub async fn serve_http1<I>(io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service_fn(demo::handle))
        .await;
}

/// Serves one HTTP/2 connection with poolserve's stream limit, hyper's defaults otherwise;
/// `keep_alive` turns on PINGs at that interval with a 10 s timeout (poolserve's defaults are
/// 30 s and 10 s).
pub async fn serve_http2<I>(io: I, keep_alive: Option<Duration>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    if let Some(interval) = keep_alive {
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(interval)
            .keep_alive_timeout(Duration::from_secs(10));
    }
    let _ = builder
        .serve_connection(TokioIo::new(io), service_fn(demo::handle))
        .await;
}
