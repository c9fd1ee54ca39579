//! What a protocol on top of HTTP adds to the request cycle: whether a request's body times
//! itself, and which responses are this server's failures. Plain HTTP judges by the status
//! code; a protocol that reports its outcome elsewhere (a status of its own in the trailers)
//! brings its own.

use std::time::Duration;

use http::{HeaderMap, Request, Response};

/// Per-request rules of the protocol a server runs over HTTP. Its functions are called for
/// every request, so they take no `self`: a server's rules are a type, chosen when it starts.
pub trait RequestRules: Send + Sync + 'static {
    /// Whether the protocol reads request bodies ahead of its handlers into buffers of its own
    /// (a decoder that reads each message whole before decoding it). Its HTTP/2 connections then hand
    /// every body a budget for those bytes (`ReadBudget`), and give each stream an equal part
    /// of the receive window, so streams waiting for the budget never fill the window that the
    /// stream holding it needs.
    const READS_AHEAD: bool = false;

    /// Whether a stream of a multiplexed connection bounds its own body by `request_timeout`
    /// (the connection's timer leaves streams alone). A protocol whose calls carry their own
    /// deadline says no.
    fn times_body<B>(_request: &Request<B>) -> bool {
        true
    }

    /// How long the caller gives this request, if the protocol carries a deadline in it: a
    /// request that fails or is abandoned past it ended by the caller's deadline, which is
    /// counted apart and is not a server failure.
    #[inline(always)]
    fn caller_deadline<B>(_request: &Request<B>) -> Option<Duration> {
        None
    }

    /// Whether a response head makes its request a server failure.
    fn response_failed<B: http_body::Body>(response: &Response<B>) -> bool {
        response.status().is_server_error()
    }

    /// Whether a response's trailers make its request a server failure.
    #[inline(always)]
    fn trailers_failed(_trailers: &HeaderMap) -> bool {
        false
    }
}

/// The rules of plain HTTP: a 5xx status is a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainHttp;

impl RequestRules for PlainHttp {}
