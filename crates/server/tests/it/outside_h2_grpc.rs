//! HTTP/2 and gRPC interoperability with outside implementations, installed by `scripts/test`:
//! Python grpcio (with grpcio-reflection and grpcio-health-checking), grpcurl 1.8 (reflection
//! v1alpha only), httpx over HTTP/2, frame-level probes written with Python's hyperframe, and
//! Debian's nghttp and h2load. A missing tool fails the test; it never skips.

use crate::support;

use std::process::Stdio;

use poolserve_demo::grpc::proto::echo_client::EchoClient;
use poolserve_demo::grpc::proto::EchoRequest;
use poolserve_demo::grpc::EchoService;
use poolserve_pool::{GrpcSettings, Http2Settings, PoolSettings};
use support::outside::{client_script, run, system_tool, venv_bin};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tonic::codec::CompressionEncoding;

fn ca_file(h: &Harness, dir: &TempDir) -> std::path::PathBuf {
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &h.pem.cert_pem).unwrap();
    ca
}

#[tokio::test]
async fn python_grpcio_calls_the_demo_learned_by_reflection_plain_and_tls() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings::default()).await;
    let dir = TempDir::new();
    let script = client_script("grpc_client.py");
    run(Command::new(venv_bin("python"))
        .arg(&script)
        .arg(h.grpc.to_string()))
    .await;
    run(Command::new(venv_bin("python"))
        .arg(&script)
        .arg(format!("localhost:{}", h.grpc_tls.port()))
        .arg("--cafile")
        .arg(ca_file(&h, &dir)))
    .await;
    for name in ["rpc", "rpc-tls"] {
        let m = h.runtime.server(name).unwrap().pool().metrics();
        assert_eq!(m.requests_in_flight, 0, "{name}");
        assert!(m.requests >= 8, "{name}: {} calls", m.requests);
    }
}

#[tokio::test]
async fn grpcio_sends_many_large_messages_at_once_and_every_call_is_answered() {
    let _isolated = support::isolation::heavy().await;
    // 1 MiB for messages not yet whole on each connection: grpcio's 32 calls of 900 KiB,
    // started at once on one channel, take turns.
    let h = start(PoolSettings {
        http2: Some(Http2Settings {
            max_session_memory: Some(2 << 20),
            max_concurrent_streams: Some(16),
            ..Default::default()
        }),
        grpc: Some(GrpcSettings {
            max_receive_message_length: Some(1 << 20),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let out = run(Command::new(venv_bin("python"))
        .arg(client_script("grpc_client.py"))
        .arg(h.grpc.to_string())
        .arg("--large-calls")
        .arg("32")
        .arg("--size")
        .arg((900 << 10).to_string()))
    .await;
    assert!(out.contains("large calls ok"), "{out}");
    let m = h.runtime.server("rpc").unwrap().pool().metrics();
    assert_eq!((m.requests_in_flight, m.errors), (0, 0));
    assert!(m.requests >= 32, "{} calls", m.requests);
}

#[tokio::test]
async fn a_gzip_message_from_grpcio_is_never_decompressed_past_the_limit() {
    let _isolated = support::isolation::heavy().await;
    // 3 MiB that gzip makes a few KiB, against a 1 MiB receive limit.
    let gzip_expanding = |addr: std::net::SocketAddr| async move {
        run(Command::new(venv_bin("python"))
            .arg(client_script("grpc_client.py"))
            .arg(addr.to_string())
            .arg("--gzip-expanding")
            .arg((3 << 20).to_string()))
        .await
    };
    // The demo, as the poolserve binary serves it, accepts no compression (nor does the
    // server's own build compile any in): the call is refused before anything is decompressed.
    let h = start(PoolSettings {
        grpc: Some(GrpcSettings {
            max_receive_message_length: Some(1 << 20),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let out = gzip_expanding(h.grpc).await;
    assert!(out.starts_with("UNIMPLEMENTED"), "{out}");
    // A service that accepts gzip, mounted with its decoding limit following the pool's: tonic
    // stops decompressing at the limit.
    let limited = crate::grpc::gzip_echo_server(|s| {
        s.add_limited_service(|limit| {
            EchoService::server(limit).accept_compressed(CompressionEncoding::Gzip)
        })
    })
    .await;
    let out = gzip_expanding(limited.local_addr()).await;
    assert!(out.starts_with("RESOURCE_EXHAUSTED"), "{out}");
    // The pool sees only the compressed bytes on the wire: a service that lifts its own
    // limit decompresses all 3 MiB (and echoes them), which is why none should.
    let lifted = crate::grpc::gzip_echo_server(|s| {
        s.add_service(EchoService::server(usize::MAX).accept_compressed(CompressionEncoding::Gzip))
    })
    .await;
    let out = gzip_expanding(lifted.local_addr()).await;
    assert!(out.starts_with("OK"), "{out}");
}

#[tokio::test]
async fn grpcio_calls_cut_by_their_deadline_are_not_server_errors() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings::default()).await;
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let out = run(Command::new(venv_bin("python"))
        .arg(client_script("grpc_client.py"))
        .arg(h.grpc.to_string())
        .arg("--deadline-calls")
        .arg("20"))
    .await;
    assert!(out.contains("deadlines ok"), "{out}");
    // Twenty calls plus the reflection lookups. Each Stream call ended by its caller's
    // deadline, whichever side acted first: the server's DEADLINE_EXCEEDED, or grpcio's reset
    // once its own timer fired (counted too unless it came well before the deadline as seen
    // here, which a loaded machine can make happen, so not every one is asserted).
    wait_until("every call recorded", || {
        let m = pool.metrics();
        m.requests_in_flight == 0 && m.requests >= 20
    })
    .await;
    assert_eq!(pool.metrics().errors, 0);
    let labels = "server=\"rpc\"";
    let deadlines = metric(
        h.admin,
        "poolserve_requests_deadline_exceeded_total",
        labels,
    )
    .await;
    assert!(deadlines >= 1.0, "{deadlines}");
    assert_eq!(
        metric(h.admin, "poolserve_pool_error_rate", labels).await,
        0.0
    );
    let health = health(h.admin).await;
    assert_eq!(health["pools"]["rpc"]["status"], "healthy", "{health}");
    let (ready, why) = admin(h.admin, "/readyz").await;
    assert_eq!(ready, 200, "{why}");
}

#[tokio::test]
async fn python_health_watch_sees_not_serving_when_the_pool_is_full() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings {
        max_connections: Some(2),
        ..Default::default()
    })
    .await;
    let mut watcher = Command::new(venv_bin("python"))
        .arg(client_script("grpc_client.py"))
        .arg(h.grpc.to_string())
        .arg("--watch-until-not-serving")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("grpcio's Watch reports SERVING")
        .unwrap();
    assert_eq!(first.as_deref(), Some("watching SERVING"));
    // grpcio holds one connection; a second fills the pool and a third is refused.
    let mut second = EchoClient::new(grpc_channel(h.grpc).await);
    second
        .unary(EchoRequest {
            message: "fill".into(),
        })
        .await
        .unwrap();
    let mut third = TcpStream::connect(h.grpc).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, third.read(&mut byte))
        .await
        .expect("the third connection is closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the refused connection got a byte: {read:?}"
    );
    let status = tokio::time::timeout(WAIT, watcher.wait())
        .await
        .expect("grpcio's Watch sees NOT_SERVING")
        .unwrap();
    assert!(status.success());
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("NOT_SERVING")
    );
}

#[tokio::test]
async fn grpcio_streams_in_flight_finish_through_a_goaway_drain() {
    let _isolated = support::isolation::heavy().await;
    let h = start_with(PoolSettings::default(), std::time::Duration::from_secs(10)).await;
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let mut client = Command::new(venv_bin("python"))
        .arg(client_script("grpc_client.py"))
        .arg(h.grpc.to_string())
        .args(["--streams-through-drain", "4"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("grpcio's streams get their first replies")
        .unwrap();
    assert_eq!(first.as_deref(), Some("streaming"));
    assert_eq!(pool.metrics().requests_in_flight, 4);
    let reports = h.runtime.shutdown().await;
    let status = tokio::time::timeout(WAIT, client.wait())
        .await
        .expect("grpcio's streams end")
        .unwrap();
    assert!(status.success(), "a stream was lost in the drain");
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("drained ok")
    );
    let report = &reports.iter().find(|(n, _)| n == "rpc").unwrap().1;
    assert_eq!((report.closed_politely, report.forced), (1, 0));
}

#[tokio::test]
async fn grpcurl_1_8_lists_describes_and_calls_over_reflection_v1alpha() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings::default()).await;
    let dir = TempDir::new();
    let grpcurl = venv_bin("grpcurl");
    let version = run(Command::new(&grpcurl).arg("-version")).await;
    assert!(version.contains("1.8"), "{version}");
    let plain = h.grpc.to_string();
    let list = run(Command::new(&grpcurl).args(["-plaintext", &plain, "list"])).await;
    for service in [
        "poolserve.demo.Echo",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(list.contains(service), "{service} missing from:\n{list}");
    }
    let described =
        run(Command::new(&grpcurl).args(["-plaintext", &plain, "describe", "poolserve.demo.Echo"]))
            .await;
    assert!(
        described.contains("rpc Stream") && described.contains("rpc Unary"),
        "{described}"
    );
    let reply = run(Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        r#"{"message": "via grpcurl"}"#,
        &plain,
        "poolserve.demo.Echo/Unary",
    ]))
    .await;
    assert!(reply.contains("via grpcurl"), "{reply}");
    let streamed = run(Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        r#"{"message": "tick", "count": 3}"#,
        &plain,
        "poolserve.demo.Echo/Stream",
    ]))
    .await;
    assert_eq!(streamed.matches("tick").count(), 3, "{streamed}");
    let health =
        run(Command::new(&grpcurl).args(["-plaintext", &plain, "grpc.health.v1.Health/Check"]))
            .await;
    assert!(health.contains("SERVING"), "{health}");
    // Over TLS, trusting the test certificate.
    let ca = ca_file(&h, &dir);
    let reply = run(Command::new(&grpcurl).arg("-cacert").arg(&ca).args([
        "-servername",
        "localhost",
        "-d",
        r#"{"message": "over tls"}"#,
        &h.grpc_tls.to_string(),
        "poolserve.demo.Echo/Unary",
    ]))
    .await;
    assert!(reply.contains("over tls"), "{reply}");
}

#[tokio::test]
async fn httpx_speaks_h2c_and_h2_over_tls() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings::default()).await;
    let dir = TempDir::new();
    run(Command::new(venv_bin("python"))
        .arg(client_script("httpx_client.py"))
        .arg(h.h2c.to_string())
        .arg(h.h2.port().to_string())
        .arg(ca_file(&h, &dir)))
    .await;
    for name in ["h2c", "h2"] {
        let m = h.runtime.server(name).unwrap().pool().metrics();
        assert_eq!(
            (m.accepted, m.requests),
            (1, 3),
            "{name}: one connection, 3 requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_level_probes_get_the_protocols_answers() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings {
        http2: Some(Http2Settings {
            max_concurrent_streams: Some(4),
            max_header_list_size: Some(4096),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let out = run(Command::new(venv_bin("python"))
        .arg(client_script("h2_probes.py"))
        .arg(h.h2c.to_string())
        .args(["--max-streams", "4", "--max-header-list", "4096"]))
    .await;
    println!("{out}");
    let pool = h.runtime.server("h2c").unwrap().pool().clone();
    // Every stream the probes opened, reset or were refused has left the pool's books.
    wait_until("no stream or connection left behind", || {
        pool.metrics().requests_in_flight == 0 && pool.active_connections() == 0
    })
    .await;
    let m = pool.metrics();
    let protocol_errors = m
        .closed
        .iter()
        .find(|(r, _)| *r == "protocol_error")
        .map_or(0, |(_, n)| *n);
    assert!(
        protocol_errors >= 2,
        "DATA on stream 0 and the rapid reset close as protocol errors: {:?}",
        m.closed
    );
}

#[tokio::test]
async fn nghttp_and_h2load_from_debian() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings::default()).await;
    let out = run(Command::new(system_tool("nghttp"))
        .arg("-nv")
        .arg(format!("http://{}/", h.h2c)))
    .await;
    assert!(out.contains(":status: 200"), "{out}");
    let out = run(Command::new(system_tool("h2load"))
        .args(["-n", "2000", "-c", "4", "-m", "10"])
        .arg(format!("http://{}/", h.h2c)))
    .await;
    assert!(
        out.contains("2000 total, 2000 started, 2000 done, 2000 succeeded"),
        "{out}"
    );
    let m = h.runtime.server("h2c").unwrap().pool().metrics();
    assert_eq!(m.requests, 2001);
    // The same tools over TLS, negotiating h2 by ALPN (they do not check the certificate; the
    // address, not `localhost`, which may resolve to ::1 first).
    let out = run(Command::new(system_tool("nghttp"))
        .arg("-nv")
        .arg(format!("https://{}/", h.h2)))
    .await;
    assert!(out.contains(":status: 200"), "{out}");
    assert!(out.contains("The negotiated protocol: h2"), "{out}");
    let out = run(Command::new(system_tool("h2load"))
        .args(["-n", "1000", "-c", "2", "-m", "10"])
        .arg(format!("https://{}/", h.h2)))
    .await;
    assert!(
        out.contains("1000 total, 1000 started, 1000 done, 1000 succeeded"),
        "{out}"
    );
    assert!(out.contains("Application protocol: h2"), "{out}");
    let m = h.runtime.server("h2").unwrap().pool().metrics();
    assert_eq!((m.requests, m.errors), (1001, 0));
}
