//! The services a `grpc` server answers: the user's, plus health and reflection.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::Request;
use poolserve_pool::{Pool, PoolConfig};
use tonic::body::Body as TonicBody;
use tonic::server::NamedService;
use tonic::service::Routes;

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
    /// The pool enforces `grpc.max_receive_message_length` in front of the service; raise the
    /// service's own decoding limit (tonic's default is 4 MiB) if the pool's is higher.
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
