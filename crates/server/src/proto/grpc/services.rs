//! The services a `grpc` server answers: the user's, plus health and reflection.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use poolserve_pool::{Pool, PoolConfig};
use tonic::body::Body as TonicBody;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower::util::Oneshot;
use tower::ServiceExt;

use super::call::ReceiveLimit;
use super::health;
use crate::transport::policy::ServerPolicy;

/// The interval of a gRPC connection's keep-alive pings: `grpc.keep_alive_time`.
pub(crate) fn keep_alive_interval(config: &PoolConfig) -> Duration {
    config.grpc.keep_alive_time
}

/// The gRPC services a `grpc` server answers: the user's tonic services and axum routes, plus
/// `grpc.health.v1.Health` and server reflection (`grpc.reflection.v1` and `v1alpha`), which
/// every server gets.
#[derive(Debug, Clone, Default)]
pub struct GrpcServices {
    routes: Routes,
    names: Vec<String>,
    descriptors: Vec<&'static [u8]>,
}

impl GrpcServices {
    /// No services yet (health and reflection are added at start).
    pub fn new() -> Self {
        GrpcServices::default()
    }

    /// Mounts a tonic service; its name also gets a health status.
    ///
    /// The pool enforces `grpc.max_receive_message_length` on each message as it arrives, in
    /// front of the service. The service's own decoding limit (`max_decoding_message_size`,
    /// tonic's default 4 MiB) applies after it, and is also tonic's only bound on the size of
    /// a compressed message once decompressed, which the pool cannot see: set it to the pool's
    /// limit, never to `usize::MAX` on a service that accepts compressed messages, or mount
    /// the service with [`add_limited_service`](Self::add_limited_service), which keeps it
    /// equal to the pool's.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<Request<TonicBody>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME.to_string());
        self.routes = self.routes.add_service(service);
        self
    }

    /// Mounts a tonic service built for each call by `make`, given the call's
    /// `grpc.max_receive_message_length`, for the service's `max_decoding_message_size`:
    /// tonic's own limit, and with it its bound on a decompressed message, then follows the
    /// pool's, reloads included. Its name also gets a health status.
    ///
    /// ```text
    /// let echo = Arc::new(MyEcho::default());
    /// services.add_limited_service(move |limit| {
    ///     EchoServer::from_arc(echo.clone()).max_decoding_message_size(limit)
    /// })
    /// ```
    pub fn add_limited_service<F, S>(self, make: F) -> Self
    where
        F: Fn(usize) -> S + Clone + Send + Sync + 'static,
        S: tower::Service<Request<TonicBody>, Error = Infallible> + NamedService + Send + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.add_service(PerCallLimit {
            make,
            service: PhantomData,
        })
    }

    /// Mounts an axum router beside the gRPC services (for plain HTTP/2 routes on the same
    /// server). Paths must not overlap the services' `/package.Service/` prefixes.
    pub fn add_router(mut self, router: axum::Router) -> Self {
        self.routes = Routes::from(self.routes.into_axum_router().merge(router));
        self
    }

    /// Registers an encoded `FileDescriptorSet` so reflection describes the services in it.
    pub fn add_file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptors.push(encoded);
        self
    }

    /// The services' names (without health and reflection).
    pub fn service_names(&self) -> &[String] {
        &self.names
    }

    /// The routes to serve, with health following `pool` and reflection over every
    /// registered descriptor set, and the task that keeps health following the pool, for the
    /// server to run when it starts.
    pub(crate) fn into_routes(
        self,
        pool: &Pool<ServerPolicy>,
    ) -> Result<(Routes, impl Future<Output = ()> + Send + 'static), String> {
        let (health_service, follow) = health::PoolHealth::new(pool.clone(), &self.names);
        // Each reflection version also describes the other, so a client listing services
        // sees both whichever it speaks.
        let mut v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        let mut v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
        for set in std::iter::once(&tonic_health::pb::FILE_DESCRIPTOR_SET).chain(&self.descriptors)
        {
            v1 = v1.register_encoded_file_descriptor_set(set);
            v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
        }
        let v1 = v1.build_v1().map_err(|e| format!("reflection (v1): {e}"))?;
        let v1alpha = v1alpha
            .build_v1alpha()
            .map_err(|e| format!("reflection (v1alpha): {e}"))?;
        let routes = self
            .routes
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha)
            .prepare();
        Ok((routes, follow))
    }
}

/// tonic's own default decoding limit, for a call that came without the pool's (never, under
/// `GrpcCall`).
const TONIC_DEFAULT_DECODING_LIMIT: usize = 4 << 20;

/// A tonic service built for each call with the call's receive limit.
struct PerCallLimit<F, S> {
    make: F,
    service: PhantomData<fn() -> S>,
}

impl<F: Clone, S> Clone for PerCallLimit<F, S> {
    fn clone(&self) -> Self {
        PerCallLimit {
            make: self.make.clone(),
            service: PhantomData,
        }
    }
}

impl<F, S: NamedService> NamedService for PerCallLimit<F, S> {
    const NAME: &'static str = S::NAME;
}

impl<F, S> tower::Service<Request<TonicBody>> for PerCallLimit<F, S>
where
    F: Fn(usize) -> S,
    S: tower::Service<Request<TonicBody>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Oneshot<S, Request<TonicBody>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<TonicBody>) -> Self::Future {
        let limit = req
            .extensions()
            .get::<ReceiveLimit>()
            .map_or(TONIC_DEFAULT_DECODING_LIMIT, |l| l.0);
        (self.make)(limit).oneshot(req)
    }
}
