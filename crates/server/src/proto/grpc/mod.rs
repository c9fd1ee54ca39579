//! gRPC servers: tonic services on the pool's HTTP/2 connections, with the standard health
//! service following the pool's health and server reflection.
//!
//! A gRPC connection is one HTTP/2 connection in the pool, never one entry per call; its calls
//! are its streams. On top of the HTTP/2 rules, every call gets the pool's gRPC message limits
//! (`RESOURCE_EXHAUSTED`) and its `grpc-timeout` deadline.

mod call;
mod frames;
mod health;
mod services;
mod status;
mod timeout;

pub(crate) use call::GrpcCall;
pub(crate) use services::keep_alive_interval;
pub use services::GrpcServices;
pub use status::GrpcRules;
