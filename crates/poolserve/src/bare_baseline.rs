//! The benchmarks' same-binary baseline: the demo app served by bare hyper, with no pool.
//!
//! The example baselines (`bare_hyper`, `bare_h2`) are small binaries, and whole-program LTO
//! compiles the same hyper and h2 code differently in them than in this one (measured
//! 2026-12-02: bare hyper HTTP/2 inside this binary takes 7 % more CPU per request than the
//! `bare_h2` example). Served from this binary, the baseline differs from poolserve only by the
//! pool, which is what the benchmarks set out to measure.

use std::time::Duration;

use poolserve_server::baseline::{serve_http1, serve_http2};
use tokio::net::TcpListener;

/// The protocol the baseline serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BareProtocol {
    /// HTTP/1.1 with keep-alive, as the `bare_hyper` example.
    Http,
    /// h2c with poolserve's stream limit and keep-alive pings, as `bare_h2` with
    /// `BARE_H2_KEEP_ALIVE_SECS=30`.
    Http2,
}

/// Serves `protocol` on `addr` until the process is killed.
pub async fn serve(protocol: BareProtocol, addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        match protocol {
            BareProtocol::Http => tokio::spawn(serve_http1(stream)),
            BareProtocol::Http2 => tokio::spawn(serve_http2(stream, Some(Duration::from_secs(30)))),
        };
    }
}
