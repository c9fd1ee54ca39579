//! Benchmark baseline: a bare `tonic::transport::Server` with no pool, serving the same demo
//! gRPC service as poolserve's `grpc` servers (`poolserve.demo.Echo`).
//!
//! Usage: `bare_tonic 127.0.0.1:PORT`. h2c; tonic's defaults otherwise, except
//! `max_concurrent_streams`, set to poolserve's default of 250 (hyper's is 200). No health or
//! reflection services (poolserve mounts both; a call to Echo does not touch them).

use std::net::SocketAddr;

use poolserve_server::grpc::EchoService;

/// poolserve's default `http2.max_concurrent_streams`.
const MAX_CONCURRENT_STREAMS: u32 = 250;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()?;
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .add_service(EchoService::server())
        .serve(addr)
        .await?;
    Ok(())
}
