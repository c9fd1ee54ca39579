//! Connection age and request count (`max_connection_age` with its grace,
//! `max_requests_per_connection`), on every protocol with real clients: HTTP/1.1 responses
//! carry `Connection: close`, HTTP/2 connections get GOAWAY (read frame by frame), grpcio
//! reconnects with every call succeeding, Python `websockets` sees close 1001; live through a
//! `PATCH` and a reload.

use crate::http2::{frames_until_close, last_goaway};
use crate::support;

use std::time::{Duration, Instant};

use poolserve_pool::PoolSettings;
use support::outside::{client_script, run, venv_bin};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::Command;

fn aging(age: &str, grace: &str) -> PoolSettings {
    PoolSettings {
        max_connection_age: Some(age.into()),
        max_connection_age_grace: Some(grace.into()),
        ..Default::default()
    }
}

/// The Prometheus count of `server`'s connections closed for `reason`.
async fn closed(h: &Harness, server: &str, reason: &str) -> f64 {
    let protocol = h.runtime.server(server).unwrap().pool().protocol();
    metric(
        h.admin,
        "poolserve_connections_closed_total",
        &format!("server=\"{server}\",protocol=\"{protocol}\",reason=\"{reason}\""),
    )
    .await
}

/// Waits until `server`'s pool counts `n` connections closed for `reason`.
async fn wait_closed(h: &Harness, server: &str, reason: &'static str, n: u64) {
    let pool = h.runtime.server(server).unwrap().pool().clone();
    wait_until(&format!("{n} {reason} closes on {server}"), || {
        pool.metrics().closed.contains(&(reason, n))
    })
    .await;
}

/// A HEADERS frame opening stream `id` with `GET path` (HPACK: static :method GET and :scheme
/// http, :path as a literal, :authority "x"), ending the stream.
fn get_headers(id: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 0x01, b'x']);
    let mut frame = vec![0, 0, block.len() as u8, 0x1, 0x5];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// Where the first frame of `kind` is among `frames`.
fn first(frames: &[(u8, Vec<u8>)], kind: u8) -> Option<usize> {
    frames.iter().position(|(k, _)| *k == kind)
}

const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;

#[tokio::test]
async fn an_http1_connection_past_its_age_says_connection_close_on_its_next_response() {
    let _isolated = support::isolation::timing().await;
    let h = start(aging("2s", "30s")).await;
    let mut c = Client::connect(h.http).await;
    let opened = Instant::now();
    let res = c.get("/").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("connection").is_none(), "{res:?}");
    // Its own age lies within 1.8 s and 2.2 s; an idle connection past it stays open.
    // (3.5 s: the server admits the connection a little after the client connects.)
    tokio::time::sleep_until((opened + Duration::from_millis(3500)).into()).await;
    let res = c.get("/").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["connection"], "close", "{res:?}");
    c.closed().await;
    wait_closed(&h, "web", "max_age", 1).await;
    assert_eq!(closed(&h, "web", "max_age").await, 1.0);
}

#[tokio::test]
async fn the_nth_http1_response_says_connection_close_once_patched_live() {
    let h = start(PoolSettings::default()).await;
    let mut c = Client::connect(h.http).await;
    assert!(c.get("/").await.headers().get("connection").is_none());
    let (status, body) = admin_send(
        h.admin,
        "PATCH",
        "/servers/web/pool",
        r#"{"max_requests_per_connection": 3, "max_connection_age": "10m"}"#,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("max_requests_per_connection"), "{body}");
    let (_, config) = admin(h.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let web = &config["servers"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["pool"]["max_requests_per_connection"], 3);
    assert_eq!(web["pool"]["max_connection_age"], "10m");
    assert_eq!(web["pool"]["max_connection_age_grace"], "30s");
    assert!(config["servers"][1]["pool"]["max_connection_age"].is_null());

    // The connection open before the change: its second request is not its last, its third is.
    assert!(c.get("/").await.headers().get("connection").is_none());
    let res = c.get("/").await;
    assert_eq!(res.headers()["connection"], "close", "{res:?}");
    c.closed().await;
    // A new one likewise.
    let mut c = Client::connect(h.http).await;
    for n in 1..=3 {
        let res = c.get("/").await;
        let close = res.headers().get("connection").map(|v| v.to_str().unwrap());
        assert_eq!(close, (n == 3).then_some("close"), "request {n}");
    }
    c.closed().await;
    wait_closed(&h, "web", "max_requests", 2).await;
    assert_eq!(closed(&h, "web", "max_requests").await, 2.0);
}

#[tokio::test]
async fn an_h2_connection_past_its_age_gets_goaway_and_its_stream_in_flight_finishes() {
    let _isolated = support::isolation::timing().await;
    let h = start(aging("1s", "10s")).await;
    let mut s = TcpStream::connect(h.h2c).await.unwrap();
    let opened = Instant::now();
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    // A stream that outlasts the age (at most 1.1 s) and ends well within the grace.
    s.write_all(&get_headers(1, "/sleep?ms=2000"))
        .await
        .unwrap();
    let (frames, closed_at) = frames_until_close(&mut s).await;
    let goaway = first(&frames, GOAWAY).expect("a GOAWAY");
    let response = first(&frames, HEADERS).expect("the stream's response");
    assert!(goaway < response, "GOAWAY before the response: {frames:?}");
    assert_eq!(last_goaway(&frames), Some(1), "{frames:?}");
    let took = closed_at - opened;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "closed after {took:?}: once its stream ended, not at the grace's end"
    );
    wait_closed(&h, "h2c", "max_age", 1).await;
}

#[tokio::test]
async fn an_h2_stream_still_running_when_the_grace_ends_is_cut_as_max_age() {
    let _isolated = support::isolation::timing().await;
    let h = start(aging("1s", "1s")).await;
    let mut s = TcpStream::connect(h.h2c).await.unwrap();
    let opened = Instant::now();
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    s.write_all(&get_headers(1, "/sleep?ms=9000"))
        .await
        .unwrap();
    let (frames, closed_at) = frames_until_close(&mut s).await;
    assert!(first(&frames, GOAWAY).is_some(), "{frames:?}");
    assert_eq!(
        first(&frames, HEADERS),
        None,
        "the stream was cut: {frames:?}"
    );
    let took = closed_at - opened;
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(4000),
        "cut after {took:?}: the age (0.9–1.1 s) plus the 1 s grace"
    );
    wait_closed(&h, "h2c", "max_age", 1).await;
    assert_eq!(h.runtime.server("h2c").unwrap().pool().metrics().active, 0);
}

#[tokio::test]
async fn an_h2_connection_gets_goaway_once_its_nth_stream_starts() {
    let h = start(PoolSettings {
        max_requests_per_connection: Some(2),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(h.h2c).await.unwrap();
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    s.write_all(&get_headers(1, "/")).await.unwrap();
    s.write_all(&get_headers(3, "/sleep?ms=200")).await.unwrap();
    let (frames, _) = frames_until_close(&mut s).await;
    let responses = frames.iter().filter(|(k, _)| *k == HEADERS).count();
    assert_eq!(responses, 2, "both streams answered: {frames:?}");
    assert_eq!(last_goaway(&frames), Some(3), "{frames:?}");
    wait_closed(&h, "h2c", "max_requests", 1).await;
}

#[tokio::test]
async fn grpcio_reconnects_across_the_age_and_every_call_succeeds() {
    let _isolated = support::isolation::heavy().await;
    let h = start(aging("1s", "10s")).await;
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let out = run(Command::new(venv_bin("python"))
        .arg(client_script("grpc_client.py"))
        .arg(h.grpc.to_string())
        .args(["--calls-for", "4"]))
    .await;
    assert!(out.contains("calls ok"), "{out}");
    let m = pool.metrics();
    // One channel: every connection past the first is grpcio reconnecting after a GOAWAY.
    assert!(
        m.accepted >= 3,
        "{} connections for one channel",
        m.accepted
    );
    let aged = m.closed.iter().find(|(r, _)| *r == "max_age").unwrap().1;
    assert!(aged >= 2, "{:?}", m.closed);
    assert_eq!(m.errors, 0);
}

#[tokio::test]
async fn python_websockets_sees_1001_at_the_connection_s_age() {
    let _isolated = support::isolation::heavy().await;
    let h = start(aging("1s", "10s")).await;
    let started = Instant::now();
    let out = run(Command::new(venv_bin("python"))
        .arg(client_script("ws_client.py"))
        .arg(format!("ws://{}/", h.ws))
        .arg("--until-closed"))
    .await;
    assert!(out.contains("closed 1001 after"), "{out}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    wait_closed(&h, "live", "max_age", 1).await;
    let m = h.runtime.server("live").unwrap().pool().metrics();
    assert!(
        m.close_codes.contains(&("1001".to_owned(), 1)),
        "{:?}",
        m.close_codes
    );
}

#[tokio::test]
async fn a_reloaded_age_reaches_open_connections() {
    let h = start(PoolSettings::default()).await;
    let (mut c, conn) = H2Client::connect(h.h2c).await;
    assert_eq!(c.get("/").await.status(), 200);
    let mut next = h.runtime.config();
    for s in &mut next.servers {
        s.pool = pool(aging("1s", "5s"));
    }
    let report = h.runtime.reload(&next).await.unwrap();
    assert!(
        report.changed.iter().any(|(name, changes)| name == "h2c"
            && changes.iter().any(|c| c.field == "max_connection_age")),
        "{report:?}"
    );
    // The open connection gets its GOAWAY at its age and ends cleanly.
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("the connection ends")
        .unwrap()
        .unwrap();
    wait_closed(&h, "h2c", "max_age", 1).await;
    let (_, config) = admin(h.admin, "/config").await;
    assert!(config.contains(r#""max_connection_age":"1s""#), "{config}");
}
