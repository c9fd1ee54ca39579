//! gRPC servers under the pool, with tonic's client: the demo Echo service (unary and
//! streaming, plain and TLS), one pooled connection per channel, message limits answered with
//! RESOURCE_EXHAUSTED, the caller's deadline, health following the pool, reflection, the limit
//! enforced at accept, GOAWAY drain at shutdown, keep-alive pings, and many large messages at
//! once taking turns in a connection's budget for messages not yet whole.

use crate::support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use poolserve_demo::grpc::proto::echo_client::EchoClient;
use poolserve_demo::grpc::proto::{EchoRequest, StreamRequest};
use poolserve_demo::grpc::{EchoService, DEMO_FILE_DESCRIPTOR_SET};
use poolserve_pool::PoolRegistry;
use poolserve_pool::{
    CloseReason, GrpcSettings, Http2Settings, PoolEventKind, PoolSettings, TimeoutKind,
};
use poolserve_server::grpc::GrpcServices;
use poolserve_server::{Protocol, Server, ServerOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codec::CompressionEncoding;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn grpc_settings(grpc: GrpcSettings) -> PoolSettings {
    PoolSettings {
        grpc: Some(grpc),
        ..Default::default()
    }
}

fn echo(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
    }
}

#[tokio::test]
async fn unary_and_streaming_calls_share_one_pooled_connection() {
    let h = start(PoolSettings::default()).await;
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let mut client = EchoClient::new(grpc_channel(h.grpc).await);
    for i in 0..10 {
        let reply = client.unary(echo(&format!("hi {i}"))).await.unwrap();
        assert_eq!(reply.into_inner().message, format!("hi {i}"));
    }
    let mut stream = client
        .stream(StreamRequest {
            message: "tick".into(),
            count: 5,
            interval_ms: 20,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while let Some(reply) = stream.next().await {
        assert_eq!(reply.unwrap().message, "tick");
        got += 1;
    }
    assert_eq!(got, 5);
    // Concurrent calls are streams of the same connection.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { c.unary(echo(&i.to_string())).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let m = pool.metrics();
    assert_eq!(m.accepted, 1, "a channel is one pooled connection");
    assert_eq!(m.requests, 31, "each call is one request");
    assert_eq!(
        metric(h.admin, "poolserve_connections_active", "protocol=\"grpc\"").await,
        1.0
    );
    let health = health(h.admin).await;
    assert_eq!(health["pools"]["rpc"]["protocol"], "grpc");
    assert_eq!(health["pools"]["rpc"]["active_connections"], 1);
}

#[tokio::test]
async fn many_large_messages_sent_at_once_on_one_connection_all_get_through() {
    // 2 MiB of session memory for 16 streams: 1 MiB for messages not yet whole, so the 900 KiB
    // messages of 32 calls sent at once (16 streams at a time) are read one by one.
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
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let client = EchoClient::new(grpc_channel(h.grpc).await);
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let mut c = client.clone();
            let message = format!("{i:>4}").repeat(225 << 10);
            tokio::spawn(async move { (c.unary(echo(&message)).await, message) })
        })
        .collect();
    for call in calls {
        let (reply, sent) = tokio::time::timeout(WAIT, call)
            .await
            .expect("every call completes")
            .unwrap();
        assert!(reply.unwrap().into_inner().message == sent);
    }
    let m = pool.metrics();
    assert_eq!((m.accepted, m.requests, m.errors), (1, 32, 0));
}

#[tokio::test]
async fn grpc_over_tls_negotiates_h2() {
    let h = start(PoolSettings::default()).await;
    let mut client = EchoClient::new(grpc_tls_channel(h.grpc_tls, &h.pem).await);
    let reply = client.unary(echo("secret")).await.unwrap();
    assert_eq!(reply.into_inner().message, "secret");
    let m = h.runtime.server("rpc-tls").unwrap().pool().metrics();
    assert_eq!((m.accepted, m.requests), (1, 1));
}

#[tokio::test]
async fn oversized_messages_get_resource_exhausted_both_ways() {
    let h = start(grpc_settings(GrpcSettings {
        max_receive_message_length: Some(4096),
        max_send_message_length: Some(2048),
        ..Default::default()
    }))
    .await;
    let mut client = EchoClient::new(grpc_channel(h.grpc).await);
    // Over the receive limit: the server never reads it in.
    let err = client.unary(echo(&"x".repeat(5000))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("4096"), "{err:?}");
    // Under the receive limit, but the reply is over the send limit.
    let err = client.unary(echo(&"y".repeat(3000))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("2048"), "{err:?}");
    // A stream whose replies are over the limit ends with the same status.
    let mut stream = client
        .stream(StreamRequest {
            message: "z".repeat(3000),
            count: 3,
            interval_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // The connection itself is fine.
    let reply = client.unary(echo("small")).await.unwrap();
    assert_eq!(reply.into_inner().message, "small");
    let m = h.runtime.server("rpc").unwrap().pool().metrics();
    assert_eq!(m.accepted, 1);
}

#[tokio::test]
async fn the_callers_grpc_timeout_ends_a_stream_with_deadline_exceeded() {
    let h = start(PoolSettings::default()).await;
    let mut client = EchoClient::new(grpc_channel(h.grpc).await);
    let mut request = tonic::Request::new(StreamRequest {
        message: "slow".into(),
        count: 100,
        interval_ms: 50,
    });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let mut stream = client.stream(request).await.unwrap().into_inner();
    let mut replies = 0;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => replies += 1,
            Some(Err(status)) => break status,
            None => panic!("the stream ran to its end past its deadline"),
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The server's status, not the client's own timer (tonic's client sets none here).
    assert!(status.message().contains("grpc-timeout"), "{status:?}");
    assert!(
        (3..=8).contains(&replies),
        "{replies} replies before the deadline"
    );
    assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
    // Without a deadline the same call runs to its end.
    let mut stream = client
        .stream(StreamRequest {
            message: "ok".into(),
            count: 3,
            interval_ms: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(r) = stream.next().await {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 3);
    // The deadline is the caller's: counted apart, not as the server's error.
    let m = h.runtime.server("rpc").unwrap().pool().metrics();
    assert_eq!((m.requests, m.errors, m.deadline_exceeded), (2, 0, 1));
}

#[tokio::test]
async fn calls_ended_by_the_callers_deadline_leave_the_server_ready() {
    let h = start(PoolSettings::default()).await;
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let client = EchoClient::new(grpc_channel(h.grpc).await);
    // Twenty streams that would run for 5 s, each cut by its caller's 100 ms deadline.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(StreamRequest {
                    message: format!("s{i}"),
                    count: 100,
                    interval_ms: 50,
                });
                request.set_timeout(Duration::from_millis(100));
                let mut stream = c.stream(request).await?.into_inner();
                loop {
                    match stream.next().await {
                        Some(Ok(_)) => {}
                        Some(Err(status)) => return Err(status),
                        None => return Ok(()),
                    }
                }
            })
        })
        .collect();
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    wait_until("the calls recorded", || pool.metrics().requests == 20).await;
    let m = pool.metrics();
    assert_eq!((m.errors, m.deadline_exceeded), (0, 20));
    let labels = "server=\"rpc\"";
    assert_eq!(
        metric(
            h.admin,
            "poolserve_requests_deadline_exceeded_total",
            labels
        )
        .await,
        20.0
    );
    assert_eq!(metric(h.admin, "poolserve_errors_total", labels).await, 0.0);
    assert_eq!(
        metric(h.admin, "poolserve_pool_error_rate", labels).await,
        0.0
    );
    let health = health(h.admin).await;
    assert_eq!(health["pools"]["rpc"]["status"], "healthy", "{health}");
    let (ready, why) = admin(h.admin, "/readyz").await;
    assert_eq!(ready, 200, "{why}");
    let mut checker = HealthClient::new(grpc_channel(h.grpc).await);
    let serving = checker
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(serving, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn health_follows_the_pool_and_watch_streams_the_change() {
    let h = start(PoolSettings {
        max_connections: Some(2),
        ..Default::default()
    })
    .await;
    let mut health = HealthClient::new(grpc_channel(h.grpc).await);
    for service in ["", "poolserve.demo.Echo"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // A second connection fills the pool (100 % utilisation: overloaded); a third is refused.
    let mut second = EchoClient::new(grpc_channel(h.grpc).await);
    second.unary(echo("fill")).await.unwrap();
    let mut third = TcpStream::connect(h.grpc).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the refused connection is closed"
    );
    let next = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("Watch streams the change")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let m = h.runtime.server("rpc").unwrap().pool().metrics();
    assert_eq!((m.accepted, m.rejected), (2, 1));
}

#[tokio::test]
async fn the_connection_limit_is_enforced_exactly() {
    let h = start(PoolSettings {
        max_connections: Some(3),
        ..Default::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = EchoClient::new(grpc_channel(h.grpc).await);
        c.unary(echo("in")).await.unwrap();
        clients.push(c);
    }
    // Raw sockets, so each refusal is exactly one connection (a channel would reconnect).
    for _ in 0..2 {
        let mut over = TcpStream::connect(h.grpc).await.unwrap();
        let _ = over.write_all(PREFACE_AND_SETTINGS).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, over.read_to_end(&mut got))
            .await
            .expect("the refused connection is closed");
        assert!(got.is_empty(), "refused before any HTTP/2 frame: {got:?}");
    }
    let m = h.runtime.server("rpc").unwrap().pool().metrics();
    assert_eq!((m.accepted, m.rejected, m.active), (3, 2, 3));
    // The admitted connections keep working.
    for c in &mut clients {
        c.unary(echo("still")).await.unwrap();
    }
}

#[tokio::test]
async fn shutdown_sends_goaway_and_no_stream_is_lost() {
    let h = start_with(PoolSettings::default(), Duration::from_secs(5)).await;
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let client = EchoClient::new(grpc_channel(h.grpc).await);
    let mut calls = Vec::new();
    for i in 0..4 {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move {
            let mut stream = c
                .stream(StreamRequest {
                    message: format!("s{i}"),
                    count: 8,
                    interval_ms: 50,
                })
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(r) = stream.next().await {
                r?;
                n += 1;
            }
            Ok::<_, tonic::Status>(n)
        }));
    }
    wait_until("4 streams in flight", || {
        pool.metrics().requests_in_flight == 4
    })
    .await;
    let reports = h.runtime.shutdown().await;
    for call in calls {
        assert_eq!(call.await.unwrap().expect("a stream in flight finishes"), 8);
    }
    let report = &reports.iter().find(|(n, _)| n == "rpc").unwrap().1;
    assert_eq!((report.closed_politely, report.forced), (1, 0));
    assert!(
        TcpStream::connect(h.grpc).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn keep_alive_time_pings_and_a_silent_peer_is_closed() {
    let h = start(PoolSettings {
        grpc: Some(GrpcSettings {
            keep_alive_time: Some("200ms".into()),
            ..Default::default()
        }),
        http2: Some(poolserve_pool::Http2Settings {
            keep_alive_timeout: Some("300ms".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let mut events = h.runtime.registry().subscribe();
    let mut silent = TcpStream::connect(h.grpc).await.unwrap();
    silent.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let opened = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut sink))
        .await
        .expect("the server closes a peer that does not answer pings")
        .ok();
    assert!(opened.elapsed() >= Duration::from_millis(450));
    // PING frames (type 6) were sent.
    assert!(contains_frame_type(&sink, 6), "no PING seen");
    wait_events(&mut events, 1, |k| {
        matches!(
            k,
            PoolEventKind::ConnectionRemoved {
                reason: CloseReason::Timeout(TimeoutKind::Pong),
                ..
            }
        )
    })
    .await;
    // A tonic client answers pings and stays connected.
    let mut client = EchoClient::new(grpc_channel(h.grpc).await);
    client.unary(echo("a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.unary(echo("b")).await.unwrap();
    let m = h.runtime.server("rpc").unwrap().pool().metrics();
    assert_eq!(m.accepted, 2);
}

/// Whether the server's bytes (after its SETTINGS) hold a frame of `kind`.
fn contains_frame_type(mut bytes: &[u8], kind: u8) -> bool {
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes[3] == kind {
            return true;
        }
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    false
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service() {
    use tonic_reflection::pb::{v1, v1alpha};
    let h = start(PoolSettings::default()).await;
    let channel = grpc_channel(h.grpc).await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = grpc
        .streaming(
            tonic::Request::new(futures_util::stream::iter([request])),
            http::uri::PathAndQuery::from_static(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ),
            tonic_prost::ProstCodec::<_, v1::ServerReflectionResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "poolserve.demo.Echo",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "poolserve.demo.Echo".into(),
            ),
        ),
    };
    let mut replies = grpc
        .streaming(
            tonic::Request::new(futures_util::stream::iter([request])),
            http::uri::PathAndQuery::from_static(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ),
            tonic_prost::ProstCodec::<_, v1alpha::ServerReflectionResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
                if !f.file_descriptor_proto.is_empty()
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_lowered_message_limit_applies_from_the_next_call() {
    let h = start(PoolSettings::default()).await;
    let pool = h.runtime.server("rpc").unwrap().pool().clone();
    let mut client = EchoClient::new(grpc_channel(h.grpc).await);
    let message = "m".repeat(2000);
    client.unary(echo(&message)).await.unwrap();
    pool.update_config(&grpc_settings(GrpcSettings {
        max_receive_message_length: Some(1000),
        ..Default::default()
    }))
    .unwrap();
    let err = client.unary(echo(&message)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        pool.metrics().accepted,
        1,
        "the same connection, no reconnect"
    );
}

#[tokio::test]
async fn a_drain_tells_health_watchers_not_serving_and_ends_their_streams() {
    let drain = Duration::from_secs(5);
    let h = start_with(PoolSettings::default(), drain).await;
    let mut health = HealthClient::new(grpc_channel(h.grpc).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "poolserve.demo.Echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // A service the server does not have is SERVICE_UNKNOWN, and that call stays open too.
    let mut unknown = health
        .watch(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = unknown.next().await.unwrap().unwrap().status;
    assert_eq!(status, ServingStatus::ServiceUnknown as i32);
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(async move { h.runtime.shutdown().await });
    let next = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the watcher hears of the drain")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The watch then ends, so it does not hold the drain to its deadline.
    let end = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the watch ends");
    assert!(end.is_none(), "{end:?}");
    let end = tokio::time::timeout(WAIT, unknown.next())
        .await
        .expect("the unknown service's watch ends");
    assert!(end.is_none(), "{end:?}");
    let reports = tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    let report = &reports.iter().find(|(n, _)| n == "rpc").unwrap().1;
    assert_eq!((report.closed_politely, report.forced), (1, 0));
    assert!(
        started.elapsed() < drain,
        "drained in {:?}",
        started.elapsed()
    );
}

/// The demo's Echo accepting gzip-compressed requests (tonic's `gzip` feature is on in the
/// tests only; the server's own build compiles no compression in), on a `grpc` server whose
/// receive limit is 1 MiB, mounted the way `mount` says.
pub async fn gzip_echo_server(mount: fn(GrpcServices) -> GrpcServices) -> Server {
    let options = ServerOptions {
        name: "gzip".into(),
        protocol: Protocol::Grpc,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: pool(grpc_settings(GrpcSettings {
            max_receive_message_length: Some(1 << 20),
            ..Default::default()
        })),
    };
    let services = mount(GrpcServices::new()).add_file_descriptor_set(DEMO_FILE_DESCRIPTOR_SET);
    Server::start_grpc(&PoolRegistry::new(), options, services)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_limited_service_decompresses_no_message_past_the_pools_limit_whatever_it_becomes() {
    let server = gzip_echo_server(|s| {
        s.add_limited_service(|limit| {
            EchoService::server(limit).accept_compressed(CompressionEncoding::Gzip)
        })
    })
    .await;
    let mut client = EchoClient::new(grpc_channel(server.local_addr()).await)
        .send_compressed(CompressionEncoding::Gzip);
    // 2 MiB that gzip makes a few KiB: small on the wire, past the limit once decompressed.
    let expanding = "z".repeat(2 << 20);
    let err = client.unary(echo(&expanding)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("decompressing"), "{err:?}");
    // Under the limit it is decompressed and served.
    let reply = client.unary(echo(&"z".repeat(1000))).await.unwrap();
    assert_eq!(reply.into_inner().message.len(), 1000);
    // The service's own limit follows the pool's from the next call.
    server
        .pool()
        .update_config(&grpc_settings(GrpcSettings {
            max_receive_message_length: Some(4 << 20),
            ..Default::default()
        }))
        .unwrap();
    let reply = client.unary(echo(&expanding)).await.unwrap();
    assert_eq!(reply.into_inner().message.len(), 2 << 20);
    assert_eq!(server.pool().metrics().accepted, 1);
}
