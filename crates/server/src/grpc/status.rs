//! Which gRPC statuses are the server's failures, for the pool's error rate: a gRPC call
//! fails in its `grpc-status` (trailers, or headers of a trailers-only response), never in its
//! HTTP status.

use http::HeaderMap;

/// Whether `headers` (trailers, or a trailers-only response's headers) end a call with a status
/// that counts against the server: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE or
/// DATA_LOSS (the codes Envoy maps to 5xx, less UNIMPLEMENTED, which is the caller's mistake).
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
