//! The error type handlers and bodies fail with, and which hyper errors are the client's doing
//! rather than this server's: such closes are counted as protocol errors and announced, but do
//! not weigh in the pool's error rate.

use std::error::Error as _;
use std::io;

/// The error type handlers and bodies may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a hyper error (HTTP/1 or HTTP/2) is the client's doing rather than this server's:
/// a malformed request, an HTTP/2 protocol violation we detected, a GOAWAY or reset it sent, or
/// a vanished socket.
pub(crate) fn is_peer_fault(e: &hyper::Error) -> bool {
    if e.is_parse() || e.is_parse_too_large() || e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_remote() || h2.is_library() || h2.is_go_away() || h2.is_io();
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}
