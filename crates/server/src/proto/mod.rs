//! The protocols, siblings that never import each other: each has its `serve` for an admitted
//! connection's I/O, its polite close and its bounds. What two of them share lives in
//! [`crate::http`] or [`crate::transport`].

pub mod grpc;
pub(crate) mod http1;
pub(crate) mod http2;
pub(crate) mod ws;
