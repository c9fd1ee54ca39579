//! Idle keep-alive client for the memory benchmark, bounded in connections and time.
//!
//! `http_idle ADDR CONNECTIONS SECONDS`: opens the connections, sends one `GET /` on each and
//! reads its response, so every connection is a served keep-alive connection, then holds them
//! idle. Prints `open=N` once all are up and `closed_early=N` at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} ({what}) missing or invalid"))
}

/// Sends one request and reads until the response's `hello` body has arrived.
async fn one_request(addr: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.ends_with(b"hello") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || seen.len() > 4096 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(stream)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: String = arg(&args, 1, "address");
    let conns: usize = arg(&args, 2, "connections");
    let secs: u64 = arg(&args, 3, "seconds");
    let closed = Arc::new(AtomicU64::new(0));
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel(conns);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, closed, up) = (addr.clone(), closed.clone(), up_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = one_request(&addr).await.expect("request");
            let _ = up.send(()).await;
            let mut buf = [0u8; 64];
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                // Nothing arrives on an idle keep-alive connection unless the server closes it.
                _ = stream.read(&mut buf) => { closed.fetch_add(1, Ordering::Relaxed); }
            }
        }));
    }
    for _ in 0..conns {
        let _ = up_rx.recv().await;
    }
    println!("open={conns}");
    for t in tasks {
        let _ = t.await;
    }
    println!("closed_early={}", closed.load(Ordering::Relaxed));
}
