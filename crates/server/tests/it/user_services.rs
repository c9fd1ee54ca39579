//! The examples' user services on pooled servers: a user's tonic service with an axum route on
//! a `grpc` server (health and reflection added), and a user's axum router on an `http2` server.

#[path = "../../examples/grpc_service.rs"]
#[allow(dead_code)]
mod grpc_example;
#[path = "../../examples/http2_axum.rs"]
#[allow(dead_code)]
mod http2_example;

use crate::support;

use poolserve_demo::grpc::proto::echo_client::EchoClient;
use poolserve_demo::grpc::proto::EchoRequest;
use poolserve_pool::{PoolConfig, PoolRegistry};
use poolserve_server::grpc::GrpcServices;
use poolserve_server::{Protocol, Server, ServerOptions};
use support::*;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn options(protocol: Protocol) -> ServerOptions {
    ServerOptions {
        name: "app".into(),
        protocol,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        pool: PoolConfig::default(),
    }
}

#[tokio::test]
async fn a_users_tonic_service_and_axum_route_share_a_grpc_server() {
    let registry = PoolRegistry::new();
    let server = Server::start_grpc(&registry, options(Protocol::Grpc), grpc_example::services())
        .await
        .unwrap();
    let channel = grpc_channel(server.local_addr()).await;
    let reply = EchoClient::new(channel.clone())
        .unary(EchoRequest {
            message: "quiet".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "QUIET");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "poolserve.demo.Echo".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        health.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let (mut h2, _conn) = H2Client::connect(server.local_addr()).await;
    let status = h2.get("/status").await;
    assert_eq!(&status.body()[..], b"up");
    let m = server.pool().metrics();
    assert_eq!((m.accepted, m.requests), (2, 3));
}

#[tokio::test]
async fn a_route_beside_the_grpc_services_reads_its_body_as_it_came() {
    // A plain body is no gRPC message: the pool's message rules leave it alone (its first five
    // bytes, read as a message prefix, would declare 1.7 GB).
    let services = GrpcServices::new().add_router(axum::Router::new().route(
        "/upper",
        axum::routing::post(|body: String| async move { body.to_uppercase() }),
    ));
    let server = Server::start_grpc(&PoolRegistry::new(), options(Protocol::Grpc), services)
        .await
        .unwrap();
    let (mut h2, _conn) = H2Client::connect(server.local_addr()).await;
    let res = h2
        .try_request("POST", "/upper", "hello, plain route")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(&res.body()[..], b"HELLO, PLAIN ROUTE");
}

#[tokio::test]
async fn a_users_axum_router_serves_on_an_http2_server() {
    let server = Server::start(
        &PoolRegistry::new(),
        options(Protocol::Http2),
        http2_example::app(),
    )
    .await
    .unwrap();
    let (mut h2, _conn) = H2Client::connect(server.local_addr()).await;
    let res = h2.get("/hello/pool").await;
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(&res.body()[..], b"hello, pool");
    let res = h2.try_request("POST", "/upper", "abc").await.unwrap();
    assert_eq!(&res.body()[..], b"ABC");
    assert_eq!(server.pool().metrics().requests, 2);
}

#[tokio::test]
async fn a_grpc_server_takes_grpc_services_and_only_those() {
    let registry = PoolRegistry::new();
    let err = Server::start(&registry, options(Protocol::Grpc), http2_example::app())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("start_grpc"), "{err}");
    let err = Server::start_grpc(
        &registry,
        options(Protocol::Http2),
        grpc_example::services(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("grpc server"), "{err}");
}

/// A tower service that is not ready on the first `poll_ready` of each clone (it asks to be
/// polled again) and counts how often it was called.
#[derive(Clone, Default)]
struct SlowToReady {
    ready: bool,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<B> tower::Service<http::Request<B>> for SlowToReady {
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        if self.ready {
            return std::task::Poll::Ready(Ok(()));
        }
        self.ready = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }

    fn call(&mut self, _req: http::Request<B>) -> Self::Future {
        assert!(self.ready, "called before it was ready");
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"ready now"),
        ))))
    }
}

#[tokio::test]
async fn a_service_not_ready_at_once_is_polled_until_it_is() {
    let registry = PoolRegistry::new();
    let service = SlowToReady::default();
    let calls = service.calls.clone();
    let server = Server::start(&registry, options(Protocol::Http), service)
        .await
        .unwrap();
    let mut c = Client::connect(server.local_addr()).await;
    for _ in 0..3 {
        let res = c.get("/").await;
        assert_eq!(&res.body()[..], b"ready now");
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(server.pool().metrics().requests, 3);
}
