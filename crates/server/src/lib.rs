//! poolserve's servers: HTTP/1.1, HTTPS, HTTP/2, gRPC and WebSocket (ws, wss) listeners whose
//! every connection runs under a [`poolserve_pool::Pool`], the admin endpoint, the config file
//! and graceful shutdown.
//!
//! Handlers are tower [`Service`](tower::Service)s over `Request<`[`Body`]`>` (the [`Handler`]
//! bound), so an axum `Router` plugs in unchanged.
//!
//! # Layers
//!
//! Each layer imports only the layers below it:
//!
//! ```text
//! runtime, admin, config   a whole process: servers, the admin endpoint, the file, reload
//! server                   Server::start and the single dispatch (the one match on the wire)
//! proto/{http1,http2,ws,grpc}  each protocol's serve, polite close and bounds; never each other
//! http                     the request cycle every HTTP protocol shares
//! transport                bind, accept, admit or refuse, TLS handshake, the counting socket
//! protocol                 what each protocol is, as a table of facts (imports nothing)
//! ```
//!
//! Only `server` names the protocols' code (the crate root re-exports the public gRPC types);
//! `http` runs no protocol's code above HTTP (it holds the upgraded-connection rule, which reads
//! the `websocket` settings). The `layers` test checks the rule on every file.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
mod http;
mod proto;
pub mod protocol;
mod runtime;
mod server;
mod transport;

pub use config::{ReloadError, ReloadReport};
pub use http::{
    http1_deadline, http1_timer_at, Body, BoxError, Handler, PlainHttp, PooledConnection,
    RequestRules, RequestTimeout, ResponseBody, TrackedBody,
};
pub use proto::grpc;
pub use protocol::Protocol;
pub use runtime::{ListeningSocket, Runtime, StartError};
pub use server::{Server, ServerError, ServerOptions};
pub use transport::io::{IoGate, TrackedIo};
pub use transport::policy::ServerPolicy;
pub use transport::refusal::REFUSAL_503;
pub use transport::tls;
