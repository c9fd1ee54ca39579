//! Benchmark baseline: a bare hyper HTTP/2 server with no pool, answering with the same demo
//! handler as poolserve's `http2` servers.
//!
//! Usage: `bare_h2 127.0.0.1:PORT` serves h2c (HTTP/2 with prior knowledge);
//! `bare_h2 127.0.0.1:PORT CERT.pem KEY.pem` serves h2 over TLS (rustls, ALPN `h2`), with the
//! same TLS set-up as poolserve (`poolserve_server::tls::PemPair`). hyper's defaults otherwise,
//! except `max_concurrent_streams`, set to poolserve's default of 250 (hyper's is 200).
//!
//! `BARE_H2_KEEP_ALIVE_SECS=N` turns on hyper's keep-alive PINGs every N seconds (poolserve's
//! default is 30, with a 10 s timeout; hyper's default is none), to tell their cost apart from
//! the pool's.

use std::path::PathBuf;
use std::time::Duration;

use poolserve_bench::serve_http2;
use poolserve_server::tls::{PemPair, TlsFiles};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            };
            let config = PemPair::from_files(&files)?.server_config(&[b"h2"])?;
            Some(TlsAcceptor::from(config))
        }
        (None, _) => None,
        (Some(_), None) => return Err("usage: bare_h2 ADDR [CERT.pem KEY.pem]".into()),
    };
    let keep_alive = match std::env::var("BARE_H2_KEEP_ALIVE_SECS") {
        Ok(secs) => Some(Duration::from_secs(secs.parse()?)),
        Err(_) => None,
    };
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        match tls.clone() {
            None => {
                tokio::spawn(serve_http2(stream, keep_alive));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_http2(stream, keep_alive).await;
                    }
                });
            }
        }
    }
}
