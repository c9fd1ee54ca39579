//! WebSocket (RFC 6455) connections under the pool: the HTTP/1.1 upgrade through hyper, then an
//! echo session on tungstenite with a per-connection heartbeat.
//!
//! Pool rules: admission happens at accept, so an over-limit client gets a 503 before any
//! upgrade. Until the upgrade the HTTP/1 bounds apply; after it, the pool closes a peer that
//! leaves a ping unanswered for `pong_timeout` (and, only when configured, one that exchanges no
//! message for `websocket.idle_timeout`). The heartbeat is this connection's own timer, armed at
//! its last message plus `ping_interval`, so a chatty client is never pinged. A polite close sends
//! close 1001 and then waits for the peer's close until the pool's deadline.

mod connection;
mod error;
mod handshake;
mod session;

pub(crate) use connection::serve;
