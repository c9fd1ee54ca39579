//! The demo app every built-in poolserve server answers with (SPEC D), and which the tests and
//! benchmarks use: HTTP routes ([`routes`]) and the `poolserve.demo.Echo` gRPC service
//! ([`grpc`]). It lives beside the binary, not in the library: a user's own handlers and
//! services take its place.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod grpc;
pub mod routes;
