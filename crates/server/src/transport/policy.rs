//! The pool policy of poolserve's servers: each protocol's own timeout rules.

use poolserve_pool::{
    http2_deadline, websocket_deadline, Activity, PoolConfig, ProtocolPolicy, TimeoutKind,
};
use tokio::time::Instant;

use crate::protocol::Protocol;

/// The pool policy of one server: the HTTP/2 rules on HTTP/2 connections; otherwise HTTP/1
/// request-cycle bounds until a connection upgrades, then
/// the message-protocol rules (pong deadline, optional idle bound, write stalls) — for `ws`/`wss`
/// servers and for connections a handler upgrades on `http`/`https` servers alike.
#[derive(Debug, Clone, Copy)]
pub struct ServerPolicy {
    /// The server's protocol.
    pub protocol: Protocol,
}

impl ProtocolPolicy for ServerPolicy {
    fn protocol(&self) -> &'static str {
        self.protocol.as_str()
    }

    fn deadline(&self, a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        if a.multiplexed {
            return http2_deadline(a, c);
        }
        // `websocket_deadline` applies the HTTP/1 rules until the upgrade.
        websocket_deadline(a, c)
    }
}
