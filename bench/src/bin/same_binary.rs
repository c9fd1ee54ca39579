//! Both sides of a same-binary duel in one program: `same_binary pool --config FILE` runs
//! poolserve's servers from a config file with the demo app (until SIGTERM or SIGINT drains
//! them), and `same_binary bare http|http2 ADDR` serves the demo app with bare hyper and no
//! pool. Whole-program LTO compiles the same hyper code differently in a small baseline binary
//! than in a large one, so served from one binary the two differ only by the pool.

use std::time::Duration;

use poolserve_bench::{serve_http1, serve_http2};
use poolserve_server::config::RunConfig;
use poolserve_server::Runtime;
use tokio::net::TcpListener;

const USAGE: &str = "usage: same_binary pool --config FILE | same_binary bare http|http2 ADDR";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["pool", "--config", file] => pool(file).await,
        ["bare", protocol @ ("http" | "http2"), addr] => bare(protocol, addr).await,
        _ => Err(USAGE.into()),
    }
}

/// poolserve with the demo app on every server of `file`.
async fn pool(file: &str) -> Result<(), Box<dyn std::error::Error>> {
    let config = RunConfig::from_file(std::path::Path::new(file))?;
    let runtime = Runtime::start_with_grpc(
        &config,
        poolserve_demo::routes::service(),
        poolserve_demo::grpc::services(),
    )
    .await?;
    // The handler is installed before the address is printed: a caller that signals as soon as
    // it reads the address must not find the default action (exit without a drain).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    for s in runtime.servers() {
        println!("listening on {}", s.local_addr());
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    runtime.shutdown().await;
    Ok(())
}

/// The demo app on bare hyper: HTTP/1.1 with keep-alive, or h2c with poolserve's stream limit
/// and keep-alive pings, until the process is killed.
async fn bare(protocol: &str, addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        if protocol == "http" {
            tokio::spawn(serve_http1(stream));
        } else {
            tokio::spawn(serve_http2(stream, Some(Duration::from_secs(30))));
        }
    }
}
