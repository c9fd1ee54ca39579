//! poolserve's servers: HTTP/1.1, HTTPS, HTTP/2, gRPC and WebSocket (ws, wss) listeners whose
//! every connection runs under a [`poolserve_pool::Pool`], the admin endpoint, the config file
//! and graceful shutdown.
//!
//! Handlers are tower [`Service`](tower::Service)s over `Request<`[`Body`]`>`, so an axum
//! `Router` plugs in unchanged.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod baseline;
mod body;
pub mod demo;
pub mod file_config;
pub mod grpc;
mod http1;
mod http2;
mod io;
mod listener;
mod policy;
mod reject;
mod reload;
mod runtime;
mod service;
pub mod tls;
mod upgrade;
mod ws;

pub use body::{Body, RequestTimeout, TrackedBody};
pub use http1::Http1Connection;
pub use http2::Http2Connection;
pub use io::TrackedIo;
pub use listener::{Protocol, Server, ServerError, ServerOptions};
pub use policy::ServerPolicy;
pub use reject::REFUSAL_503;
pub use reload::{ReloadError, ReloadReport};
pub use runtime::{Runtime, StartError};
pub use upgrade::PooledConnection;
