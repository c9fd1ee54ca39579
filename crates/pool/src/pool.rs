//! The pool: the handle through which a server admits connections, and its live
//! configuration, health, metrics, events and close-all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use crate::admission::Refusal;
use crate::clock::Clock;
use crate::config::{ConfigChange, ConfigErrors, PoolConfig, PoolSettings};
use crate::connection::ConnectionShared;
use crate::core::{ControlState, PoolCore, PoolInner, Stage, HEALTH_INTERVAL};
use crate::events::{EventBus, Subscription};
use crate::guard::ConnectionGuard;
use crate::health::Health;
use crate::metrics::{AcceptErrorKind, MetricsSnapshot};
use crate::policy::ProtocolPolicy;

/// What [`Pool::close_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CloseReport {
    /// Connections open when the close began.
    pub open_at_start: u64,
    /// Connections that finished politely before the deadline.
    pub closed_politely: u64,
    /// Connections still open at the deadline, closed at once.
    pub forced: u64,
}

/// A connection pool for one server, generic over its protocol's policy. Cheap to clone.
#[derive(Debug)]
pub struct Pool<P: ProtocolPolicy> {
    pub(crate) inner: Arc<PoolInner<P>>,
}

impl<P: ProtocolPolicy> Clone for Pool<P> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<P: ProtocolPolicy> Pool<P> {
    /// A pool named `name` with its own event bus.
    pub fn new(name: &str, policy: P, config: PoolConfig) -> Self {
        Self::with_events(name, policy, config, EventBus::default())
    }

    /// A pool named `name` whose stamps are read on `clock` ([`Clock::Tokio`] for tests that
    /// pause time).
    pub fn with_clock(name: &str, policy: P, config: PoolConfig, clock: Clock) -> Self {
        Self::build(name, policy, config, EventBus::default(), clock)
    }

    /// A pool that publishes on a shared event bus (a registry's).
    pub fn with_events(name: &str, policy: P, config: PoolConfig, events: EventBus) -> Self {
        Self::build(name, policy, config, events, Clock::System)
    }

    fn build(name: &str, policy: P, config: PoolConfig, events: EventBus, clock: Clock) -> Self {
        let core = PoolCore::new(name, policy.protocol(), config, events, clock);
        Pool {
            inner: Arc::new(PoolInner {
                core: Arc::new(core),
                policy,
            }),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.core.name
    }

    /// The protocol label.
    pub fn protocol(&self) -> &'static str {
        self.inner.core.protocol
    }

    /// The protocol policy.
    pub fn policy(&self) -> &P {
        &self.inner.policy
    }

    /// Whether a connection would be admitted now (`canAcceptConnection`); advisory only, as
    /// [`admit`](Self::admit) decides atomically.
    pub fn can_accept(&self) -> bool {
        let a = &self.inner.core.admission;
        a.is_accepting() && a.max().is_none_or(|m| a.active() < m)
    }

    /// Admits a connection (`addConnection`) before any protocol work, or refuses it: a refusal
    /// is counted, announced as `pool_limit_reached` and leaves nothing behind.
    pub fn admit(&self, peer: Option<SocketAddr>) -> Result<ConnectionGuard<P>, Refusal> {
        let core = &self.inner.core;
        let invalid = self.inner.policy.validate(peer).err();
        let (id, per_ip) = core.admit(peer, invalid)?;
        Ok(ConnectionGuard::new(
            Arc::new(ConnectionShared::new(core.clone(), id, peer)),
            self.inner.clone(),
            per_ip,
        ))
    }

    /// Open connections (`getActiveConnectionCount`).
    pub fn active_connections(&self) -> u32 {
        self.inner.core.admission.active()
    }

    /// The config in force.
    pub fn config(&self) -> Arc<PoolConfig> {
        self.inner.core.config()
    }

    /// A receiver of config and stage changes, for code that drives connections itself.
    pub fn control(&self) -> watch::Receiver<ControlState> {
        self.inner.core.control.subscribe()
    }

    /// Applies a settings patch live (`updateConfig`): validated whole, swapped atomically and
    /// applied to open connections — timeouts at once, a lowered limit by closing idle
    /// connections first and busy ones only after their current request. Returns what changed,
    /// or every bad field with nothing applied.
    pub fn update_config(&self, patch: &PoolSettings) -> Result<Vec<ConfigChange>, ConfigErrors> {
        self.inner.core.update_config(patch)
    }

    /// Current health (`getHealth`); also announces a status change.
    pub fn health(&self) -> Health {
        self.inner.core.refresh_health()
    }

    /// A metrics snapshot (`getMetrics`).
    pub fn metrics(&self) -> MetricsSnapshot {
        let core = &self.inner.core;
        core.counters.snapshot(
            &core.name,
            core.protocol,
            core.elapsed(Instant::now()),
            core.admission.active(),
            core.admission.max(),
        )
    }

    /// A subscription to this pool's events (`on(event)`).
    pub fn subscribe(&self) -> Subscription {
        let core = &self.inner.core;
        core.events.subscribe(Some(core.name.clone()))
    }

    /// Starts a task that re-reads the decaying window every [`HEALTH_INTERVAL`] so status
    /// changes are announced even when no traffic arrives; it ends when the pool is dropped.
    pub fn spawn_health_monitor(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner.core);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(core) => {
                        core.refresh_health();
                    }
                    None => return,
                }
            }
        })
    }

    /// Announces the pool as going away while it goes on admitting and serving as usual
    /// ([`Stage::Leaving`]): its health turns `unavailable` (readiness and gRPC health follow),
    /// so load balancers stop sending it new work before [`close_all`](Self::close_all) drains
    /// it. Does nothing once the pool has left [`Stage::Serving`].
    pub fn leave(&self) {
        let core = &self.inner.core;
        if core.leave() {
            tracing::info!(pool = %core.name, "leaving: still serving, announced as unavailable");
            core.refresh_health();
        }
    }

    /// Stops admitting and closes every connection (`closeAllConnections(timeout)`): each is asked
    /// to finish politely, in-flight work gets until `deadline`, then the rest close at once.
    pub async fn close_all(&self, deadline: Duration) -> CloseReport {
        let core = &self.inner.core;
        core.admission.set_accepting(false);
        core.refresh_health();
        let open_at_start = u64::from(core.admission.active());
        tracing::info!(pool = %core.name, open = open_at_start, ?deadline, "closing all connections");
        core.change_control(|s| s.stage = Stage::Draining);
        let drained = tokio::time::timeout(deadline, core.wait_until_empty())
            .await
            .is_ok();
        let forced = if drained {
            0
        } else {
            let remaining = u64::from(core.admission.active());
            core.change_control(|s| s.stage = Stage::Forced);
            // Forced connections drop their sockets on their next poll; this bound only guards
            // against a connection task that is itself stuck.
            let _ = tokio::time::timeout(Duration::from_secs(5), core.wait_until_empty()).await;
            remaining
        };
        let report = CloseReport {
            open_at_start,
            closed_politely: open_at_start.saturating_sub(forced),
            forced,
        };
        tracing::info!(pool = %core.name, ?report, "all connections closed");
        report
    }

    /// Counts a failed accept on the server's listening socket (`kind`, with the operating
    /// system's `error`): in the metrics by kind, in health (degraded while the health window
    /// holds one, the message naming the kind), and announced as `accept_error`, at most once
    /// per [`ACCEPT_ERROR_EVENT_INTERVAL`](crate::ACCEPT_ERROR_EVENT_INTERVAL) with the count
    /// of failures since the last one.
    pub fn record_accept_error(&self, kind: AcceptErrorKind, error: &dyn std::fmt::Display) {
        self.inner.core.record_accept_error(kind, error);
    }

    /// Whether the pool is admitting connections.
    pub fn is_accepting(&self) -> bool {
        self.inner.core.admission.is_accepting()
    }
}
