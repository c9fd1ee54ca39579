//! WebSocket load and idle client for the benchmarks, bounded in connections and time.
//!
//! `ws_load echo URL CONNECTIONS MESSAGE_BYTES SECONDS`: each connection sends a message and
//! waits for its echo, in a loop; prints `messages_per_sec=N p99_us=N`.
//! `ws_load idle URL CONNECTIONS SECONDS`: opens the connections, answers pings, holds them all
//! idle for SECONDS, printing `open=N` once all are up, `held pings=N` (pings received while
//! held) before any closes, and `closed_early=N` at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} ({what}) missing or invalid"))
}

async fn open(url: &str) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let stream = TcpStream::connect(&host).await.expect("connect");
    let _ = stream.set_nodelay(true);
    tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade")
        .0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let url: String = arg(&args, 2, "url");
    match mode {
        "echo" => {
            let conns: usize = arg(&args, 3, "connections");
            let size: usize = arg(&args, 4, "message bytes");
            let secs: u64 = arg(&args, 5, "seconds");
            let deadline = Instant::now() + Duration::from_secs(secs);
            let count = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (url, count) = (url.clone(), count.clone());
                tasks.push(tokio::spawn(async move {
                    let mut ws = open(&url).await;
                    let payload = Message::binary(vec![b'x'; size]);
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if ws.send(payload.clone()).await.is_err() {
                            break;
                        }
                        match ws.next().await {
                            Some(Ok(m)) if m.len() == size => {}
                            _ => break,
                        }
                        latencies.push(t.elapsed().as_micros() as u64);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = ws.close(None).await;
                    latencies
                }));
            }
            let started = Instant::now();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            let elapsed = started.elapsed().as_secs_f64().min(secs as f64).max(0.001);
            all.sort_unstable();
            let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0);
            println!(
                "messages_per_sec={:.0} p99_us={p99}",
                count.load(Ordering::Relaxed) as f64 / elapsed
            );
        }
        "idle" => {
            let conns: usize = arg(&args, 3, "connections");
            let secs: u64 = arg(&args, 4, "seconds");
            let closed = Arc::new(AtomicU64::new(0));
            let pings = Arc::new(AtomicU64::new(0));
            let (up_tx, mut up_rx) = tokio::sync::mpsc::channel(conns);
            // Every connection holds until one common release, so the held window contains
            // no opening or closing handshakes.
            let (release_tx, release_rx) = tokio::sync::watch::channel(false);
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (url, closed, pings, up) =
                    (url.clone(), closed.clone(), pings.clone(), up_tx.clone());
                let mut release = release_rx.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ws = open(&url).await;
                    let _ = up.send(()).await;
                    // Reading answers the server's pings; nothing else arrives while idle.
                    loop {
                        tokio::select! {
                            _ = release.wait_for(|r| *r) => break,
                            m = ws.next() => match m {
                                Some(Ok(Message::Ping(_))) => {
                                    pings.fetch_add(1, Ordering::Relaxed);
                                }
                                Some(Ok(_)) => {}
                                _ => { closed.fetch_add(1, Ordering::Relaxed); return; }
                            },
                        }
                    }
                    let _ = ws.close(None).await;
                }));
            }
            for _ in 0..conns {
                let _ = up_rx.recv().await;
            }
            println!("open={conns}");
            tokio::time::sleep(Duration::from_secs(secs)).await;
            println!("held pings={}", pings.load(Ordering::Relaxed));
            let _ = release_tx.send(true);
            for t in tasks {
                let _ = t.await;
            }
            println!("closed_early={}", closed.load(Ordering::Relaxed));
        }
        _ => {
            eprintln!("usage: ws_load echo URL CONNECTIONS MESSAGE_BYTES SECONDS | ws_load idle URL CONNECTIONS SECONDS");
            std::process::exit(2);
        }
    }
}
