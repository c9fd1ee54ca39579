//! Benchmark baseline: a bare `tonic::transport::Server` with no pool, serving the same demo
//! gRPC service as poolserve's `grpc` servers (`poolserve.demo.Echo`).
//!
//! Usage: `bare_tonic 127.0.0.1:PORT`. h2c; tonic's defaults otherwise, except
//! `max_concurrent_streams`, set to poolserve's default of 250 (hyper's is 200). No health or
//! reflection services (poolserve mounts both; a call to Echo does not touch them).
//!
//! `BARE_TONIC_KEEP_ALIVE_SECS=N` turns on HTTP/2 keep-alive PINGs every N seconds with a 10 s
//! timeout, as poolserve's `grpc.keep_alive_time` (30 s by default) does; tonic's default is none.

use std::net::SocketAddr;
use std::time::Duration;

use poolserve_demo::grpc::EchoService;

/// poolserve's default `http2.max_concurrent_streams`.
const MAX_CONCURRENT_STREAMS: u32 = 250;
/// poolserve's default `grpc.max_receive_message_length` (tonic's default too).
const MAX_RECEIVE_MESSAGE_LENGTH: usize = 4 << 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()?;
    let keep_alive = match std::env::var("BARE_TONIC_KEEP_ALIVE_SECS") {
        Ok(secs) => Some(Duration::from_secs(secs.parse()?)),
        Err(_) => None,
    };
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(keep_alive)
        .http2_keepalive_timeout(keep_alive.map(|_| Duration::from_secs(10)))
        .add_service(EchoService::server(MAX_RECEIVE_MESSAGE_LENGTH))
        .serve(addr)
        .await?;
    Ok(())
}
