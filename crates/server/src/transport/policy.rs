//! The pool policy of poolserve's servers. A connection's timeout rule is its protocol's (see
//! each `ManagedConnection` under `proto/`); what the pool decides per server is its label,
//! who may connect and what a healthy connection is, which are the pool's defaults.

use poolserve_pool::ProtocolPolicy;

use crate::protocol::Protocol;

/// The pool policy of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServerPolicy {
    /// The server's protocol.
    pub protocol: Protocol,
}

impl ProtocolPolicy for ServerPolicy {
    fn protocol(&self) -> &'static str {
        self.protocol.as_str()
    }
}
