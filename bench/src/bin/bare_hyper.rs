//! Benchmark baseline: a bare hyper HTTP/1.1 server with no pool, answering with the same demo
//! handler as poolserve's `http` servers. Usage: `bare_hyper 127.0.0.1:PORT`.

use poolserve_bench::serve_http1;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_http1(stream));
    }
}
