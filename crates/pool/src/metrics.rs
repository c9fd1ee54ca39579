//! Pool counters and the one snapshot type every protocol reports through.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::admission::Refusal;
use crate::histogram::{HistogramSnapshot, LatencyHistogram};

/// Why a connection left the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CloseReason {
    /// The protocol finished normally: the peer closed or asked to close.
    Completed,
    /// A timeout of the given kind closed it.
    Timeout(TimeoutKind),
    /// A server-side failure closed it (an I/O error, a failing handler).
    Error,
    /// The peer broke the protocol or vanished mid-request (a malformed request, a reset).
    ProtocolError,
    /// Closed politely because the pool is shutting down.
    Shutdown,
    /// Still open at the shutdown deadline and closed at once.
    ForcedShutdown,
    /// Closed to bring the pool under a lowered `max_connections`.
    LimitLowered,
    /// Closed politely for reaching its `max_connection_age`, or cut when its grace ran out.
    MaxAge,
    /// Closed politely for reaching `max_requests_per_connection`, or cut when its grace ran
    /// out.
    MaxRequests,
}

/// The slot of `Counters::closed` that counts every timeout: the one after the other reasons.
const TIMEOUT_SLOT: usize = CloseReason::ALL.len();

impl CloseReason {
    /// Every reason, for metrics that list them all.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Completed,
        CloseReason::Error,
        CloseReason::ProtocolError,
        CloseReason::Shutdown,
        CloseReason::ForcedShutdown,
        CloseReason::LimitLowered,
        CloseReason::MaxAge,
        CloseReason::MaxRequests,
    ];

    /// The label used in metrics and events (`timeout` for every timeout kind).
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::Timeout(_) => "timeout",
            CloseReason::Error => "error",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ForcedShutdown => "forced_shutdown",
            CloseReason::LimitLowered => "limit_lowered",
            CloseReason::MaxAge => "max_age",
            CloseReason::MaxRequests => "max_requests",
        }
    }

    fn index(&self) -> usize {
        match self {
            CloseReason::Completed => 0,
            CloseReason::Error => 1,
            CloseReason::Shutdown => 2,
            CloseReason::ForcedShutdown => 3,
            CloseReason::LimitLowered => 4,
            CloseReason::ProtocolError => 5,
            CloseReason::MaxAge => 6,
            CloseReason::MaxRequests => 7,
            CloseReason::Timeout(_) => TIMEOUT_SLOT,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Timeout(kind) => write!(f, "timeout ({})", kind.as_str()),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Which bound a connection overran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The TLS handshake did not finish in time.
    Handshake,
    /// A request head (or a new connection's first head) did not arrive in time.
    Headers,
    /// A whole request was not received in time.
    Request,
    /// A kept-alive connection stayed idle between requests too long.
    KeepAlive,
    /// A connection stayed idle with no request in flight too long.
    Idle,
    /// The peer stopped reading what the server was writing.
    WriteStall,
    /// The peer did not answer a heartbeat ping in time.
    Pong,
}

impl TimeoutKind {
    /// Every kind, for metrics that list them all.
    pub const ALL: [TimeoutKind; 7] = [
        TimeoutKind::Handshake,
        TimeoutKind::Headers,
        TimeoutKind::Request,
        TimeoutKind::KeepAlive,
        TimeoutKind::Idle,
        TimeoutKind::WriteStall,
        TimeoutKind::Pong,
    ];

    /// The label used in metrics and events.
    pub fn as_str(&self) -> &'static str {
        match self {
            TimeoutKind::Handshake => "handshake",
            TimeoutKind::Headers => "headers",
            TimeoutKind::Request => "request",
            TimeoutKind::KeepAlive => "keep_alive",
            TimeoutKind::Idle => "idle",
            TimeoutKind::WriteStall => "write_stall",
            TimeoutKind::Pong => "pong",
        }
    }

    pub(crate) fn index(&self) -> usize {
        match self {
            TimeoutKind::Handshake => 0,
            TimeoutKind::Headers => 1,
            TimeoutKind::Request => 2,
            TimeoutKind::KeepAlive => 3,
            TimeoutKind::Idle => 4,
            TimeoutKind::WriteStall => 5,
            TimeoutKind::Pong => 6,
        }
    }
}

/// Why a server's accept loop could not take a connection off its listening socket: the
/// process or the system out of a resource. A connection the peer abandoned before it was
/// accepted (reset, aborted) is the peer's business and not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AcceptErrorKind {
    /// `EMFILE`: the process has as many file descriptors open as `RLIMIT_NOFILE` allows.
    Emfile,
    /// `ENFILE`: the system-wide file table is full.
    Enfile,
    /// `ENOBUFS`: the kernel is out of socket buffer memory.
    Enobufs,
    /// `ENOMEM`: the kernel is out of memory.
    Enomem,
    /// Any other failure.
    Other,
}

impl AcceptErrorKind {
    /// Every kind, for metrics that list them all.
    pub const ALL: [AcceptErrorKind; 5] = [
        AcceptErrorKind::Emfile,
        AcceptErrorKind::Enfile,
        AcceptErrorKind::Enobufs,
        AcceptErrorKind::Enomem,
        AcceptErrorKind::Other,
    ];

    /// The label used in metrics, events and health messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            AcceptErrorKind::Emfile => "emfile",
            AcceptErrorKind::Enfile => "enfile",
            AcceptErrorKind::Enobufs => "enobufs",
            AcceptErrorKind::Enomem => "enomem",
            AcceptErrorKind::Other => "other",
        }
    }

    pub(crate) fn index(&self) -> usize {
        match self {
            AcceptErrorKind::Emfile => 0,
            AcceptErrorKind::Enfile => 1,
            AcceptErrorKind::Enobufs => 2,
            AcceptErrorKind::Enomem => 3,
            AcceptErrorKind::Other => 4,
        }
    }

    /// Whether it means a shortage of file descriptors (`EMFILE`, `ENFILE`).
    pub fn is_descriptor_shortage(&self) -> bool {
        matches!(self, AcceptErrorKind::Emfile | AcceptErrorKind::Enfile)
    }
}

impl fmt::Display for AcceptErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pool's live counters.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct Counters {
    // What every request updates comes first, with the latency histogram's sum and its lowest
    // buckets right after, so a request touches one or two of these cache lines. The request
    // total is the histogram's count: one atomic less per request, and the two always agree.
    pub errors: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Connections with at least one request in flight.
    pub busy: AtomicU64,
    /// Requests started (HTTP/2 streams included). Those in flight are the ones started but
    /// not yet in the latency histogram, so a finishing request updates one counter less.
    pub requests_started: AtomicU64,
    pub latency: LatencyHistogram,
    pub accepted: AtomicU64,
    /// Indexed by `Refusal::index`.
    pub rejected: [AtomicU64; Refusal::REASONS.len()],
    /// Requests ended by their caller's deadline (in the latency histogram, not in `errors`).
    pub deadline_exceeded: AtomicU64,
    /// Indexed by `CloseReason::index`; the last slot counts all timeouts.
    pub closed: [AtomicU64; TIMEOUT_SLOT + 1],
    pub timeouts: [AtomicU64; TimeoutKind::ALL.len()],
    /// Indexed by `AcceptErrorKind::index`.
    pub accept_errors: [AtomicU64; AcceptErrorKind::ALL.len()],
    /// Connections asked to close politely that are still open.
    pub closing: AtomicU64,
    /// Sum of requests served by closed connections.
    pub closed_connection_requests: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub message_bytes_in: AtomicU64,
    pub message_bytes_out: AtomicU64,
    pub pings_sent: AtomicU64,
    /// Indexed like `CLOSE_CODES`, the last slot for any other code.
    pub close_codes: [AtomicU64; CLOSE_CODES.len() + 1],
}

/// WebSocket close codes counted one by one; others are counted together as `other`.
pub const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011];

impl Counters {
    /// Connections refused since start, for every reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn count_close_code(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.close_codes[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_close(&self, reason: CloseReason, requests: u64) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
        if let CloseReason::Timeout(kind) = reason {
            self.timeouts[kind.index()].fetch_add(1, Ordering::Relaxed);
        }
        self.closed_connection_requests
            .fetch_add(requests, Ordering::Relaxed);
    }
}

/// A point-in-time copy of one pool's metrics, the same shape for every protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Pool name.
    pub name: String,
    /// Protocol label.
    pub protocol: &'static str,
    /// Time since the pool was created.
    pub uptime: Duration,
    /// Open connections.
    pub active: u64,
    /// Open connections with no request in flight.
    pub idle: u64,
    /// Open connections with a request in flight.
    pub busy: u64,
    /// Requests in flight; on HTTP/2, the open streams.
    pub requests_in_flight: u64,
    /// Open connections asked to close politely.
    pub closing: u64,
    /// The connection limit, if any.
    pub max_connections: Option<u32>,
    /// Connections admitted since start.
    pub accepted: u64,
    /// Connections refused since start, for every reason.
    pub rejected: u64,
    /// Connections refused since start, by reason (`max_connections`, `per_ip`,
    /// `not_accepting`, `invalid`).
    pub rejected_by_reason: Vec<(&'static str, u64)>,
    /// Closed connections per reason (timeouts summed under `timeout`).
    pub closed: Vec<(&'static str, u64)>,
    /// Timeouts per kind.
    pub timeouts: Vec<(&'static str, u64)>,
    /// Failed accepts on the server's listening socket, by kind (`emfile`, `enfile`,
    /// `enobufs`, `enomem`, `other`).
    pub accept_errors: Vec<(&'static str, u64)>,
    /// Connection and request errors since start.
    pub errors: u64,
    /// Requests finished since start.
    pub requests: u64,
    /// Requests ended by their caller's deadline since start (a gRPC call's `grpc-timeout`):
    /// among `requests`, not among `errors`.
    pub deadline_exceeded: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Mean requests served per closed connection.
    pub requests_per_connection: f64,
    /// Request duration histogram.
    #[serde(skip)]
    pub latency: HistogramSnapshot,
    /// Estimated median request duration, seconds.
    pub latency_p50: Option<f64>,
    /// Estimated 95th percentile request duration, seconds.
    pub latency_p95: Option<f64>,
    /// Estimated 99th percentile request duration, seconds.
    pub latency_p99: Option<f64>,
    /// Messages received (message protocols: WebSocket messages, gRPC messages).
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Payload bytes of messages received.
    pub message_bytes_in: u64,
    /// Payload bytes of messages sent.
    pub message_bytes_out: u64,
    /// Heartbeat pings sent.
    pub pings_sent: u64,
    /// Close codes seen (sent or received), by code (`other` for the rest).
    pub close_codes: Vec<(String, u64)>,
}

impl Counters {
    pub fn snapshot(
        &self,
        name: &str,
        protocol: &'static str,
        uptime: Duration,
        active: u32,
        max_connections: Option<u32>,
    ) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let active = u64::from(active);
        let busy = load(&self.busy).min(active);
        let mut closed: Vec<(&'static str, u64)> = CloseReason::ALL
            .iter()
            .map(|r| (r.as_str(), load(&self.closed[r.index()])))
            .collect();
        closed.push(("timeout", load(&self.closed[TIMEOUT_SLOT])));
        let closed_total: u64 = closed.iter().map(|(_, n)| n).sum();
        let latency = self.latency.snapshot();
        MetricsSnapshot {
            name: name.to_owned(),
            protocol,
            uptime,
            active,
            idle: active - busy,
            busy,
            // Loaded after the histogram: whatever it counted as done had started by then.
            requests_in_flight: load(&self.requests_started).saturating_sub(latency.count),
            closing: load(&self.closing).min(active),
            max_connections,
            accepted: load(&self.accepted),
            rejected: self.rejected_total(),
            rejected_by_reason: Refusal::REASONS
                .iter()
                .zip(&self.rejected)
                .map(|(reason, n)| (*reason, load(n)))
                .collect(),
            timeouts: TimeoutKind::ALL
                .iter()
                .map(|k| (k.as_str(), load(&self.timeouts[k.index()])))
                .collect(),
            closed,
            accept_errors: AcceptErrorKind::ALL
                .iter()
                .map(|k| (k.as_str(), load(&self.accept_errors[k.index()])))
                .collect(),
            errors: load(&self.errors),
            requests: latency.count,
            deadline_exceeded: load(&self.deadline_exceeded),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            requests_per_connection: if closed_total > 0 {
                load(&self.closed_connection_requests) as f64 / closed_total as f64
            } else {
                0.0
            },
            latency_p50: latency.quantile(0.5),
            latency_p95: latency.quantile(0.95),
            latency_p99: latency.quantile(0.99),
            latency,
            messages_in: load(&self.messages_in),
            messages_out: load(&self.messages_out),
            message_bytes_in: load(&self.message_bytes_in),
            message_bytes_out: load(&self.message_bytes_out),
            pings_sent: load(&self.pings_sent),
            close_codes: CLOSE_CODES
                .iter()
                .map(u16::to_string)
                .chain(std::iter::once("other".to_owned()))
                .zip(self.close_codes.iter().map(load))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_has_its_own_slot_and_label() {
        let timeout = CloseReason::Timeout(TimeoutKind::Idle);
        let mut slots: Vec<usize> = CloseReason::ALL.iter().map(CloseReason::index).collect();
        slots.push(timeout.index());
        slots.sort_unstable();
        assert_eq!(slots, (0..=TIMEOUT_SLOT).collect::<Vec<_>>());
        let counters = Counters::default();
        counters.count_close(CloseReason::MaxAge, 3);
        counters.count_close(CloseReason::MaxRequests, 100);
        counters.count_close(timeout, 0);
        let m = counters.snapshot("p", "http", Duration::ZERO, 0, None);
        for (label, n) in [
            ("max_age", 1),
            ("max_requests", 1),
            ("timeout", 1),
            ("completed", 0),
        ] {
            assert!(m.closed.contains(&(label, n)), "{label}: {:?}", m.closed);
        }
        assert_eq!(m.closed.len(), CloseReason::ALL.len() + 1);
    }
}
