//! Pool events over a bounded broadcast.
//!
//! Contract: publishing never waits. With no subscriber it costs one atomic load; with
//! subscribers it is one bounded-buffer push. A subscriber that falls more than the buffer behind
//! loses the oldest events and is told how many by [`EventError::Lagged`]; the server never slows
//! down for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::health::HealthStatus;
use crate::metrics::{AcceptErrorKind, CloseReason, TimeoutKind};

/// Events buffered per subscriber before the oldest are dropped.
pub const EVENT_BUFFER: usize = 1024;

/// The shortest time between two `accept_error` events (and log lines) of one pool: an accept
/// loop out of file descriptors fails many times a second.
pub const ACCEPT_ERROR_EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// A unique connection id within its pool.
pub type ConnectionId = u64;

/// Something that happened in a pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolEvent {
    /// The pool's name.
    pub pool: Arc<str>,
    /// The pool's protocol label.
    pub protocol: &'static str,
    /// When it happened, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: PoolEventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PoolEventKind {
    /// A connection was admitted.
    ConnectionAdded {
        /// Its id.
        id: ConnectionId,
        /// The peer's address.
        peer: Option<SocketAddr>,
    },
    /// A connection left the pool.
    ConnectionRemoved {
        /// Its id.
        id: ConnectionId,
        /// Why.
        reason: CloseReason,
        /// How long it was open, milliseconds.
        duration_ms: u64,
        /// Requests it served.
        requests: u64,
    },
    /// A connection overran a timeout (it is then closed).
    ConnectionTimeout {
        /// Its id.
        id: ConnectionId,
        /// Which timeout.
        kind: TimeoutKind,
    },
    /// A connection failed.
    ConnectionError {
        /// Its id.
        id: ConnectionId,
        /// What went wrong.
        error: String,
    },
    /// A connection was refused at admission.
    PoolLimitReached {
        /// The refused peer.
        peer: Option<SocketAddr>,
        /// Why: `max_connections`, `max_connections_per_ip`, `not_accepting` or the policy's word.
        limit: &'static str,
        /// Open connections at the time.
        active: u32,
        /// The limit at the time.
        max: Option<u32>,
    },
    /// The server's accept loop could not take connections off its listening socket (out of
    /// file descriptors, say) and backs off. Announced at most once per
    /// [`ACCEPT_ERROR_EVENT_INTERVAL`] per pool; `failures` counts those since the last one.
    AcceptError {
        /// What ran out.
        kind: AcceptErrorKind,
        /// The operating system's message.
        error: String,
        /// Failed accepts since the previous `accept_error` event of this pool, this one
        /// included.
        failures: u64,
    },
    /// The pool's health status changed.
    HealthStatusChanged {
        /// The old status.
        from: HealthStatus,
        /// The new status.
        to: HealthStatus,
        /// Why, for people.
        message: String,
    },
}

impl PoolEventKind {
    /// The event's name, as in SPEC P6.
    pub fn name(&self) -> &'static str {
        match self {
            PoolEventKind::ConnectionAdded { .. } => "connection_added",
            PoolEventKind::ConnectionRemoved { .. } => "connection_removed",
            PoolEventKind::ConnectionTimeout { .. } => "connection_timeout",
            PoolEventKind::ConnectionError { .. } => "connection_error",
            PoolEventKind::PoolLimitReached { .. } => "pool_limit_reached",
            PoolEventKind::AcceptError { .. } => "accept_error",
            PoolEventKind::HealthStatusChanged { .. } => "health_status_changed",
        }
    }
}

/// Why [`Subscription::recv`] gave no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    /// This subscriber fell behind and this many events were dropped for it.
    Lagged(u64),
    /// Every publisher is gone.
    Closed,
}

/// A bounded broadcast of pool events, shared by the pools of one registry.
#[derive(Debug, Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

#[derive(Debug)]
struct BusInner {
    sender: broadcast::Sender<PoolEvent>,
    subscribers: AtomicUsize,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(EVENT_BUFFER)
    }
}

impl EventBus {
    /// A bus that buffers `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventBus {
            inner: Arc::new(BusInner {
                sender,
                subscribers: AtomicUsize::new(0),
            }),
        }
    }

    /// Whether anyone listens; publishers skip building events when not.
    pub fn has_subscribers(&self) -> bool {
        self.inner.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Sends an event to every subscriber without waiting.
    pub fn publish(&self, event: PoolEvent) {
        if self.has_subscribers() {
            // An error only means the last subscriber left meanwhile.
            let _ = self.inner.sender.send(event);
        }
    }

    /// A new subscription; `pool` restricts it to one pool's events.
    pub fn subscribe(&self, pool: Option<Arc<str>>) -> Subscription {
        self.inner.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            receiver: self.inner.sender.subscribe(),
            bus: self.inner.clone(),
            pool,
        }
    }
}

/// A stream of pool events (the design's `on(event)`).
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<PoolEvent>,
    bus: Arc<BusInner>,
    pool: Option<Arc<str>>,
}

impl Subscription {
    /// The next event, or why there is none.
    pub async fn recv(&mut self) -> Result<PoolEvent, EventError> {
        loop {
            match self.receiver.recv().await {
                Ok(e) if self.wants(&e) => return Ok(e),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(EventError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(EventError::Closed),
            }
        }
    }

    /// The next event if one is buffered already.
    pub fn try_recv(&mut self) -> Option<Result<PoolEvent, EventError>> {
        loop {
            match self.receiver.try_recv() {
                Ok(e) if self.wants(&e) => return Some(Ok(e)),
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Empty) => return None,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    return Some(Err(EventError::Lagged(n)))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    return Some(Err(EventError::Closed))
                }
            }
        }
    }

    fn wants(&self, e: &PoolEvent) -> bool {
        self.pool.as_ref().is_none_or(|p| *p == e.pool)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since the Unix epoch, for event stamps.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pool: &str, id: u64) -> PoolEvent {
        PoolEvent {
            pool: pool.into(),
            protocol: "http",
            at_ms: 0,
            kind: PoolEventKind::ConnectionAdded { id, peer: None },
        }
    }

    #[tokio::test]
    async fn slow_subscriber_lags_and_publisher_never_waits() {
        let bus = EventBus::new(4);
        let mut sub = bus.subscribe(None);
        for id in 0..10 {
            bus.publish(event("a", id));
        }
        assert_eq!(sub.recv().await, Err(EventError::Lagged(6)));
        let next = sub.recv().await.unwrap();
        assert_eq!(
            next.kind,
            PoolEventKind::ConnectionAdded { id: 6, peer: None }
        );
    }

    #[tokio::test]
    async fn pool_filter_and_subscriber_count() {
        let bus = EventBus::default();
        assert!(!bus.has_subscribers());
        let mut only_b = bus.subscribe(Some("b".into()));
        assert!(bus.has_subscribers());
        bus.publish(event("a", 1));
        bus.publish(event("b", 2));
        assert_eq!(&*only_b.recv().await.unwrap().pool, "b");
        assert!(only_b.try_recv().is_none());
        drop(only_b);
        assert!(!bus.has_subscribers());
    }

    #[test]
    fn events_serialise_with_their_spec_names() {
        let json = serde_json::to_string(&event("web", 7)).unwrap();
        assert!(json.contains("\"event\":\"connection_added\""), "{json}");
        assert!(json.contains("\"pool\":\"web\""), "{json}");
        let removed = PoolEventKind::ConnectionRemoved {
            id: 1,
            reason: CloseReason::Timeout(TimeoutKind::Headers),
            duration_ms: 5,
            requests: 0,
        };
        let json = serde_json::to_string(&removed).unwrap();
        assert!(json.contains("{\"timeout\":\"headers\"}"), "{json}");
    }
}
