//! The protocol hooks a pool is generic over.

use std::net::SocketAddr;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::metrics::TimeoutKind;

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// No request in flight and no byte of the next one seen.
    Idle = 0,
    /// Bytes of a request head are arriving.
    ReadingHead = 1,
    /// The head is in; the body is arriving.
    ReadingBody = 2,
    /// The request is in; the response is being produced or sent.
    Responding = 3,
}

impl Phase {
    pub(crate) fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::ReadingHead,
            2 => Phase::ReadingBody,
            3 => Phase::Responding,
            _ => Phase::Idle,
        }
    }
}

/// A read-only view of one connection's activity, what timeouts and health are decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// The current phase.
    pub phase: Phase,
    /// When the current phase began (for a new connection's first request: when it was opened;
    /// in `Responding`, which nothing times, when the request body began).
    pub phase_since: Instant,
    /// When the connection was admitted.
    pub opened_at: Instant,
    /// Requests (or streams) in flight.
    pub in_flight: u32,
    /// Requests finished on this connection.
    pub requests: u64,
    /// Since when a write has been waiting for the peer to read, if one is.
    pub write_blocked_since: Option<Instant>,
    /// Whether the connection was asked to close.
    pub closing: bool,
    /// When the last message went either way (message protocols; the upgrade counts).
    pub last_message: Instant,
    /// Since when a heartbeat ping is unanswered, if one is.
    pub ping_outstanding_since: Option<Instant>,
    /// Whether the connection switched protocols (an HTTP/1 upgrade).
    pub upgraded: bool,
    /// Whether the connection multiplexes requests as streams (HTTP/2).
    pub multiplexed: bool,
}

/// Protocol-specific rules a pool applies to each of its connections.
///
/// These are the design's `validateConnection` ([`validate`](Self::validate)),
/// `isConnectionHealthy` ([`is_healthy`](Self::is_healthy)) and the per-protocol timeout rules
/// ([`deadline`](Self::deadline)); the polite and immediate close hooks live on the connection
/// itself, see [`ManagedConnection`](crate::ManagedConnection).
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

    /// The next instant this connection must have moved on by, and the timeout it overruns then.
    /// `None` means no bound applies in the current phase (a response being produced or streamed).
    ///
    /// The default is the HTTP/1 request cycle: a new connection must deliver its first request
    /// head within `headers_timeout` of being opened; a head must arrive within `headers_timeout`
    /// of its first byte and a whole request within `request_timeout`; between requests a
    /// connection may idle for `keep_alive_timeout` (never more than `connection_timeout`); and a
    /// write the peer does not read for `connection_timeout` is a stall.
    fn deadline(&self, a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        http1_deadline(a, c)
    }
}

/// The HTTP/1 request-cycle deadline described on [`ProtocolPolicy::deadline`].
pub fn http1_deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    let at = |d, kind| Some((a.phase_since + d, kind));
    let phase = match a.phase {
        Phase::Idle if a.requests == 0 => at(c.headers_timeout, TimeoutKind::Headers),
        Phase::Idle => earliest(
            at(c.keep_alive_timeout, TimeoutKind::KeepAlive),
            at(c.connection_timeout, TimeoutKind::Idle),
        ),
        Phase::ReadingHead => earliest(
            at(c.headers_timeout, TimeoutKind::Headers),
            at(c.request_timeout, TimeoutKind::Request),
        ),
        Phase::ReadingBody => at(c.request_timeout, TimeoutKind::Request),
        Phase::Responding => None,
    };
    let stall = a
        .write_blocked_since
        .map(|since| (since + c.connection_timeout, TimeoutKind::WriteStall));
    earliest(phase, stall)
}

/// The WebSocket deadline: the HTTP/1 rules until the upgrade; then an unanswered ping must be
/// answered within `websocket.pong_timeout`, a connection with no message either way for
/// `websocket.idle_timeout` (only when configured) is idle, and a write the peer does not read for
/// `connection_timeout` is a stall. A connection that exchanges messages is never idle.
pub fn websocket_deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    if !a.upgraded {
        return http1_deadline(a, c);
    }
    let ws = &c.websocket;
    let pong = a
        .ping_outstanding_since
        .map(|since| (since + ws.pong_timeout, TimeoutKind::Pong));
    let idle = ws
        .idle_timeout
        .map(|idle| (a.last_message + idle, TimeoutKind::Idle));
    let stall = a
        .write_blocked_since
        .map(|since| (since + c.connection_timeout, TimeoutKind::WriteStall));
    earliest(earliest(pong, idle), stall)
}

/// The HTTP/2 deadline: a new connection's first request (preface, settings and a HEADERS
/// frame) must arrive within `headers_timeout`; a connection with no stream open may idle for
/// `connection_timeout`; a write the peer does not read for `connection_timeout` is a stall.
/// Streams in flight are never cut by the connection's timer, and unanswered keep-alive pings
/// are the protocol's own business (`http2.keep_alive_timeout`).
pub fn http2_deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    let idle = match (a.in_flight, a.requests) {
        (0, 0) => Some((a.opened_at + c.headers_timeout, TimeoutKind::Headers)),
        (0, _) => Some((a.phase_since + c.connection_timeout, TimeoutKind::Idle)),
        _ => None,
    };
    let stall = a
        .write_blocked_since
        .map(|since| (since + c.connection_timeout, TimeoutKind::WriteStall));
    earliest(idle, stall)
}

/// The earlier of two optional deadlines.
pub fn earliest(
    a: Option<(Instant, TimeoutKind)>,
    b: Option<(Instant, TimeoutKind)>,
) -> Option<(Instant, TimeoutKind)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn http2_connections_are_bounded_only_when_no_stream_is_open() {
        let c = PoolConfig::default();
        let mut a = activity(Phase::Idle, 0);
        a.multiplexed = true;
        assert_eq!(
            http2_deadline(&a, &c),
            Some((a.opened_at + c.headers_timeout, TimeoutKind::Headers))
        );
        a.requests = 3;
        assert_eq!(
            http2_deadline(&a, &c),
            Some((a.phase_since + c.connection_timeout, TimeoutKind::Idle))
        );
        a.in_flight = 2;
        a.phase = Phase::ReadingBody;
        assert_eq!(http2_deadline(&a, &c), None);
    }

    fn activity(phase: Phase, requests: u64) -> Activity {
        let t = Instant::now();
        Activity {
            phase,
            phase_since: t,
            opened_at: t,
            in_flight: 0,
            requests,
            write_blocked_since: None,
            closing: false,
            last_message: t,
            ping_outstanding_since: None,
            upgraded: false,
            multiplexed: false,
        }
    }

    #[test]
    fn http1_rules() {
        let c = PoolConfig::default();
        let a = activity(Phase::Idle, 0);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.phase_since + c.headers_timeout, TimeoutKind::Headers))
        );
        let a = activity(Phase::Idle, 3);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.phase_since + c.keep_alive_timeout, TimeoutKind::KeepAlive))
        );
        let short_idle = PoolConfig {
            connection_timeout: Duration::from_secs(1),
            ..c.clone()
        };
        assert_eq!(
            http1_deadline(&a, &short_idle).unwrap().1,
            TimeoutKind::Idle
        );
        let a = activity(Phase::ReadingBody, 0);
        assert_eq!(http1_deadline(&a, &c).unwrap().1, TimeoutKind::Request);
        let mut a = activity(Phase::Responding, 0);
        assert_eq!(http1_deadline(&a, &c), None);
        a.write_blocked_since = Some(a.phase_since);
        assert_eq!(http1_deadline(&a, &c).unwrap().1, TimeoutKind::WriteStall);
    }

    #[test]
    fn websocket_rules() {
        let mut c = PoolConfig::default();
        let mut a = activity(Phase::Idle, 0);
        // Before the upgrade: HTTP/1.
        assert_eq!(websocket_deadline(&a, &c).unwrap().1, TimeoutKind::Headers);
        a.upgraded = true;
        // Upgraded, no ping outstanding, no idle timeout configured: unbounded.
        assert_eq!(websocket_deadline(&a, &c), None);
        a.ping_outstanding_since = Some(a.last_message);
        assert_eq!(
            websocket_deadline(&a, &c),
            Some((a.last_message + c.websocket.pong_timeout, TimeoutKind::Pong))
        );
        a.ping_outstanding_since = None;
        c.websocket.idle_timeout = Some(Duration::from_secs(3));
        assert_eq!(
            websocket_deadline(&a, &c),
            Some((a.last_message + Duration::from_secs(3), TimeoutKind::Idle))
        );
    }
}
