//! Sockets: binding and the accept loop, admission before any protocol work, refusals, the TLS
//! handshake and the counting socket wrapper. What comes out is an admitted connection's I/O and
//! the ALPN it negotiated, handed to a [`listener::ServeConnection`]. Nothing here parses or
//! speaks HTTP; the one HTTP text it knows is the fixed `503` a refused connection gets.

pub(crate) mod accept_error;
pub(crate) mod io;
pub(crate) mod listener;
pub(crate) mod policy;
pub(crate) mod refusal;
pub(crate) mod spare_fds;
pub mod tls;
