//! The demo gRPC service `poolserve.demo.Echo` (SPEC D): `Unary` echoes a message,
//! `Stream` sends it back `count` times, one every `interval_ms`.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use poolserve_server::grpc::GrpcServices;
use tonic::{Request, Response, Status};

use proto::echo_server::{Echo, EchoServer};
use proto::{EchoReply, EchoRequest, StreamRequest};

/// The demo service's generated messages, server and client (`poolserve.demo`).
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("poolserve.demo");
}

/// The encoded protobuf descriptors of `poolserve.demo`, for reflection.
pub const DEMO_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/poolserve_demo_descriptor.bin"));

/// Most replies one `Stream` call may ask for.
pub const MAX_STREAM_COUNT: u32 = 1_000_000;
/// Longest pause between two replies of a `Stream` call, in milliseconds.
pub const MAX_STREAM_INTERVAL_MS: u32 = 60_000;

/// The demo's gRPC services for a `grpc` server: `poolserve.demo.Echo`, described to reflection.
pub fn services() -> GrpcServices {
    GrpcServices::new()
        .add_limited_service(EchoService::server)
        .add_file_descriptor_set(DEMO_FILE_DESCRIPTOR_SET)
}

/// Echoes messages back: once (`Unary`) or as a timed stream (`Stream`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoService;

impl EchoService {
    /// The service ready to mount, decoding messages of up to `max_message` bytes: the pool's
    /// `grpc.max_receive_message_length` when mounted with
    /// [`GrpcServices::add_limited_service`], so tonic's own limit (also its bound on a
    /// compressed message once decompressed) is the pool's. Replies are left to the pool's
    /// send limit, which answers `RESOURCE_EXHAUSTED`.
    pub fn server(max_message: usize) -> EchoServer<EchoService> {
        EchoServer::new(EchoService)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(usize::MAX)
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let message = request.into_inner().message;
        Ok(Response::new(EchoReply { message }))
    }

    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let StreamRequest {
            message,
            count,
            interval_ms,
        } = request.into_inner();
        if count > MAX_STREAM_COUNT {
            return Err(Status::invalid_argument(format!(
                "count {count} is over {MAX_STREAM_COUNT}"
            )));
        }
        if interval_ms > MAX_STREAM_INTERVAL_MS {
            return Err(Status::invalid_argument(format!(
                "interval_ms {interval_ms} is over {MAX_STREAM_INTERVAL_MS}"
            )));
        }
        let interval = Duration::from_millis(u64::from(interval_ms));
        // The first reply goes at once, then one per interval.
        let replies = futures_util::stream::unfold(0u32, move |sent| {
            let message = message.clone();
            async move {
                if sent >= count {
                    return None;
                }
                if sent > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Some((Ok(EchoReply { message }), sent + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}
