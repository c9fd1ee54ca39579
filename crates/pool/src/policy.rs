//! The per-pool hooks a pool is generic over: its protocol label, who may connect, and what
//! makes a connection healthy.

use std::net::SocketAddr;

use crate::activity::Activity;
use crate::config::PoolConfig;

/// The hooks a pool applies to every connection it admits.
///
/// These are the design's `validateConnection` ([`validate`](Self::validate)) and
/// `isConnectionHealthy` ([`is_healthy`](Self::is_healthy)). The timeout rule and the polite
/// and immediate close hooks live on the connection itself, since one server may speak more
/// than one wire (HTTP/2 with an HTTP/1.1 fallback): see
/// [`ManagedConnection`](crate::ManagedConnection).
pub trait ProtocolPolicy: Send + Sync + 'static {
    /// The protocol label used in metrics, events and health (`http`, `https`, ...).
    fn protocol(&self) -> &'static str;

    /// Decides, before any protocol work, whether a peer may connect at all.
    fn validate(&self, _peer: Option<SocketAddr>) -> Result<(), &'static str> {
        Ok(())
    }

    /// Whether a connection is in good shape: by default, not asked to close and not stuck on a
    /// peer that stopped reading.
    fn is_healthy(&self, activity: &Activity, _config: &PoolConfig) -> bool {
        !activity.closing && activity.write_blocked_since.is_none()
    }
}

/// A policy with the default hooks and a fixed protocol label.
#[derive(Debug, Clone, Copy)]
pub struct DefaultPolicy(pub &'static str);

impl ProtocolPolicy for DefaultPolicy {
    fn protocol(&self) -> &'static str {
        self.0
    }
}
