//! The request rules of gRPC: a call fails in its `grpc-status` (trailers, or headers of a
//! trailers-only response), and is bounded by its own `grpc-timeout` rather than by
//! `request_timeout`.

use std::time::Duration;

use http::{HeaderMap, Request, Response};

use super::timeout::parse_grpc_timeout;
use crate::http::RequestRules;

/// gRPC's rules for the pool's request cycle: which calls are the server's failures, and that a
/// call times itself (a client stream may rightly last long).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRules;

impl RequestRules for GrpcRules {
    /// tonic reads each request message whole before decoding it.
    const READS_AHEAD: bool = true;

    /// A gRPC call bounds itself by its `grpc-timeout`; anything else on the server (an axum
    /// route beside the services) by `request_timeout`.
    fn times_body<B>(request: &Request<B>) -> bool {
        !is_grpc(request.headers())
    }

    /// The call's `grpc-timeout`: its DEADLINE_EXCEEDED (from the pool's own timer, see
    /// `call.rs`) or the caller's reset once it passed is the caller's limit, not a failure.
    fn caller_deadline<B>(request: &Request<B>) -> Option<Duration> {
        parse_grpc_timeout(request.headers().get("grpc-timeout")?.as_bytes())
    }

    /// A 5xx, or a trailers-only response (an empty body) whose head carries a failing status.
    fn response_failed<B: http_body::Body>(response: &Response<B>) -> bool {
        response.status().is_server_error()
            || (response.body().is_end_stream() && is_server_failure(response.headers()))
    }

    fn trailers_failed(trailers: &HeaderMap) -> bool {
        is_server_failure(trailers)
    }
}

/// Whether a request's `headers` make it a gRPC call (`application/grpc`, `+proto` and the
/// like), rather than a request for an axum route beside the services.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether `headers` (trailers, or a trailers-only response's headers) end a call with a status
/// that counts against the server: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE or
/// DATA_LOSS (the codes Envoy maps to 5xx, less UNIMPLEMENTED, which is the caller's mistake).
/// A DEADLINE_EXCEEDED past the caller's own `grpc-timeout` is then counted apart by the pool
/// (`RequestTracker::caller_deadline`); one a handler returns before it is the server's.
pub(crate) fn is_server_failure(headers: &HeaderMap) -> bool {
    matches!(
        headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(b"2" | b"4" | b"13" | b"14" | b"15")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_status(code: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static(code));
        h
    }

    #[test]
    fn server_side_codes_count_and_caller_side_codes_do_not() {
        for code in ["2", "4", "13", "14", "15"] {
            assert!(is_server_failure(&with_status(code)), "{code}");
        }
        // OK, CANCELLED, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNIMPLEMENTED...
        for code in ["0", "1", "3", "5", "8", "12", "16"] {
            assert!(!is_server_failure(&with_status(code)), "{code}");
        }
        assert!(!is_server_failure(&HeaderMap::new()));
    }
}
