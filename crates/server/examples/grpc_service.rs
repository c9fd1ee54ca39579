//! A user's own tonic service, and an axum route beside it, on a pooled `grpc` server: calls
//! get the pool's message limits and deadlines, the server gets `grpc.health.v1.Health`
//! (following the pool's health) and reflection without further code.
//!
//! Run: `cargo run -p poolserve-server --example grpc_service -- 127.0.0.1:50052`, then e.g.
//! `grpcurl -plaintext -d '{"message":"hi"}' 127.0.0.1:50052 poolserve.demo.Echo/Unary`
//! (answers `HI`) or `curl --http2-prior-knowledge http://127.0.0.1:50052/status`.
//! Ctrl-C drains: calls in flight finish after a GOAWAY.

use std::pin::Pin;
use std::time::Duration;

use axum::routing::get;
use futures_util::Stream;
use poolserve_demo::grpc::proto::echo_server::{Echo, EchoServer};
use poolserve_demo::grpc::proto::{EchoReply, EchoRequest, StreamRequest};
use poolserve_demo::grpc::DEMO_FILE_DESCRIPTOR_SET;
use poolserve_pool::{PoolConfig, PoolRegistry};
use poolserve_server::grpc::GrpcServices;
use poolserve_server::{Protocol, Server, ServerOptions};
use tonic::{Request, Response, Status};

/// The user's service: implements the `poolserve.demo.Echo` contract by shouting back.
#[derive(Debug, Default)]
pub struct Shouter;

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Shouter {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: request.into_inner().message.to_uppercase(),
        }))
    }

    type StreamStream = Replies;

    async fn stream(&self, request: Request<StreamRequest>) -> Result<Response<Replies>, Status> {
        let StreamRequest { message, count, .. } = request.into_inner();
        let count = count.min(100) as usize;
        let replies = std::iter::repeat_n(message.to_uppercase(), count)
            .map(|message| Ok(EchoReply { message }));
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }
}

/// The services to mount: the tonic service (reflection learns it from its descriptor set)
/// and a plain axum route.
pub fn services() -> GrpcServices {
    GrpcServices::new()
        // Built per call with the pool's receive limit as tonic's own decoding limit, so a
        // compressed message is bounded once decompressed too.
        .add_limited_service(|limit| EchoServer::new(Shouter).max_decoding_message_size(limit))
        .add_file_descriptor_set(DEMO_FILE_DESCRIPTOR_SET)
        .add_router(axum::Router::new().route("/status", get(|| async { "up" })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50052".into())
        .parse()?;
    let options = ServerOptions {
        name: "shout".into(),
        protocol: Protocol::Grpc,
        listen,
        tls: None,
        pool: PoolConfig::default(),
    };
    let server = Server::start_grpc(&PoolRegistry::new(), options, services()).await?;
    println!("listening on {}", server.local_addr());
    tokio::signal::ctrl_c().await?;
    let report = server.shutdown(Duration::from_secs(10)).await;
    println!("drained: {report:?}");
    Ok(())
}
