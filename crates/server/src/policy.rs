//! The pool policy of poolserve's servers: each protocol's own timeout rules.

use poolserve_pool::{
    http1_deadline, websocket_deadline, Activity, PoolConfig, ProtocolPolicy, TimeoutKind,
};
use tokio::time::Instant;

use crate::listener::Protocol;

/// The pool policy of one server: HTTP/1 request-cycle bounds for `http`/`https`, the
/// WebSocket rules (HTTP/1 until the upgrade, then heartbeat and optional idle bounds) for
/// `ws`/`wss`.
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
        match self.protocol {
            Protocol::Http | Protocol::Https => http1_deadline(a, c),
            Protocol::Ws | Protocol::Wss => websocket_deadline(a, c),
        }
    }
}
