//! The protocol-independent state of a pool, shared by its handle and its connections:
//! admission, the live config and stage every connection watches, health, counters and events.
//!
//! Contract: the config and stage change only through [`PoolCore::change_control`], which wakes
//! every connection's driver, except the move to [`Stage::Leaving`] ([`PoolCore::leave`]), which
//! asks nothing of connections and only tells the watchers; admission is exact (one compare-and-swap), and every slot taken by
//! [`PoolCore::admit`] is given back once, by the connection's guard.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use tokio::sync::{watch, Notify};

use crate::admission::{AdmissionCounter, Refusal};
use crate::clock::{Clock, Origin};
use crate::config::{ConfigChange, ConfigErrors, PoolConfig, PoolSettings};
use crate::events::{
    now_ms, ConnectionId, EventBus, PoolEvent, PoolEventKind, ACCEPT_ERROR_EVENT_INTERVAL,
};
use crate::health::{assess, utilization, Health, HealthInputs, HealthStatus, UtilizationEdges};
use crate::metrics::{AcceptErrorKind, Counters};
use crate::per_ip::PerIpLimiter;
use crate::window::DecayingWindow;

/// How often a pool's health monitor re-reads its decaying window.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Where a pool is in its life, as every connection sees it. It only moves forward:
/// `Serving` → `Leaving` (optional) → `Draining` → `Forced` (optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Admitting and serving.
    Serving,
    /// Admitting and serving as usual, but announced as going away (health `unavailable`,
    /// gRPC health NOT_SERVING), so load balancers stop sending new work before it drains.
    Leaving,
    /// Refusing new connections; open ones are asked to finish politely.
    Draining,
    /// The drain deadline passed: open connections close at once.
    Forced,
}

impl Stage {
    /// Whether connections are admitted and served as usual (`Serving` or `Leaving`).
    pub fn serves(&self) -> bool {
        matches!(self, Stage::Serving | Stage::Leaving)
    }
}

/// What every connection of a pool watches: the config in force and the pool's stage.
#[derive(Debug, Clone)]
pub struct ControlState {
    /// The config in force.
    pub config: Arc<PoolConfig>,
    /// The pool's stage.
    pub stage: Stage,
}

/// The protocol-independent state of a pool, shared with its connections.
#[derive(Debug)]
pub(crate) struct PoolCore {
    pub name: Arc<str>,
    pub protocol: &'static str,
    pub admission: AdmissionCounter,
    pub per_ip: PerIpLimiter,
    /// `max_connections_per_ip`, 0 when unset; kept apart so admission never locks the config.
    per_ip_limit: AtomicU32,
    /// `max_connections_per_ip_v6_prefix`, kept apart for the same reason.
    per_ip_v6_prefix: AtomicU8,
    /// `max_requests_per_connection`, `u64::MAX` when unset: read where a request starts or
    /// its response head is produced, so kept apart from the config, which costs a lock.
    pub max_requests: AtomicU64,
    pub counters: Counters,
    pub window: DecayingWindow,
    origin: Origin,
    pub events: EventBus,
    /// What outside watchers (accept loops, health followers) see.
    pub control: watch::Sender<ControlState>,
    /// Wakes connection drivers on a control change. A `Notify` waiter is about half the size
    /// of a watch receiver's `changed()` future, and every open connection holds one.
    pub control_changed: Notify,
    /// Bumped on every control change, so a driver can tell it missed none.
    control_generation: AtomicU64,
    next_id: AtomicU64,
    /// The last health status computed, as `HealthStatus as u8`.
    status: AtomicU8,
    /// The open counts at which utilisation enters and leaves the degraded and overloaded
    /// bands, as `UtilizationEdges::pack` gives them.
    degraded_edge: AtomicU64,
    overloaded_edge: AtomicU64,
    /// The utilisation band last computed, as `HealthStatus as u8`.
    band: AtomicU8,
    all_closed: Notify,
    update_lock: Mutex<()>,
    /// Failed accepts not yet announced, and when the last `accept_error` event went out.
    accept_errors_unannounced: Mutex<(u64, Option<Instant>)>,
    /// The kind of the last failed accept, as `AcceptErrorKind::index() + 1`; 0 for none.
    last_accept_error: AtomicU8,
}

fn status_from_u8(v: u8) -> HealthStatus {
    HealthStatus::ALL
        .get(usize::from(v))
        .copied()
        .unwrap_or(HealthStatus::Unavailable)
}

fn status_index(s: HealthStatus) -> u8 {
    HealthStatus::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

impl PoolCore {
    /// A pool's core named `name`, for `protocol`, running on `config`.
    pub fn new(
        name: &str,
        protocol: &'static str,
        config: PoolConfig,
        events: EventBus,
        clock: Clock,
    ) -> PoolCore {
        let (control, _) = watch::channel(ControlState {
            config: Arc::new(config.clone()),
            stage: Stage::Serving,
        });
        let core = PoolCore {
            name: name.into(),
            protocol,
            admission: AdmissionCounter::new(config.max_connections),
            per_ip: PerIpLimiter::default(),
            per_ip_limit: AtomicU32::new(0),
            per_ip_v6_prefix: AtomicU8::new(config.max_connections_per_ip_v6_prefix),
            max_requests: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
            window: DecayingWindow::new(config.health.window),
            origin: Origin::now(clock),
            events,
            control,
            control_changed: Notify::new(),
            control_generation: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            status: AtomicU8::new(status_index(HealthStatus::Healthy)),
            degraded_edge: AtomicU64::new(u64::MAX),
            overloaded_edge: AtomicU64::new(u64::MAX),
            band: AtomicU8::new(status_index(HealthStatus::Healthy)),
            all_closed: Notify::new(),
            update_lock: Mutex::new(()),
            accept_errors_unannounced: Mutex::new((0, None)),
            last_accept_error: AtomicU8::new(0),
        };
        core.set_thresholds(&config);
        core
    }

    pub fn nanos(&self, at: Instant) -> u64 {
        self.origin.nanos(at)
    }

    /// Now, in nanoseconds since the pool's origin: one clock read.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        self.origin.now_nanos()
    }

    pub fn instant(&self, nanos: u64) -> Instant {
        self.origin.instant(nanos)
    }

    pub fn elapsed(&self, now: Instant) -> Duration {
        self.origin.elapsed(now)
    }

    pub fn config(&self) -> Arc<PoolConfig> {
        self.control.borrow().config.clone()
    }

    /// Changes the control state and wakes every connection's driver.
    pub fn change_control(&self, modify: impl FnOnce(&mut ControlState)) {
        self.control.send_modify(modify);
        self.control_generation.fetch_add(1, Ordering::SeqCst);
        self.control_changed.notify_waiters();
    }

    /// Moves a serving pool to [`Stage::Leaving`]; returns whether it was serving. Only the
    /// watchers (accept loops, health followers) hear of it: a connection serves a leaving pool
    /// as it serves a serving one, so no driver is woken.
    pub fn leave(&self) -> bool {
        self.control.send_if_modified(|s| {
            let serving = s.stage == Stage::Serving;
            if serving {
                s.stage = Stage::Leaving;
            }
            serving
        })
    }

    /// The control generation and state in force. A driver enables its `control_changed` waiter
    /// before calling this, so no later change goes unnoticed.
    pub fn control_snapshot(&self) -> (u64, ControlState) {
        let generation = self.control_generation.load(Ordering::SeqCst);
        (generation, self.control.borrow().clone())
    }

    /// Whether the control state changed since `generation`.
    pub fn control_changed_since(&self, generation: u64) -> bool {
        self.control_generation.load(Ordering::SeqCst) != generation
    }

    /// Publishes an event built only when somebody listens.
    pub fn publish(&self, kind: impl FnOnce() -> PoolEventKind) {
        if self.events.has_subscribers() {
            self.events.publish(PoolEvent {
                pool: self.name.clone(),
                protocol: self.protocol,
                at_ms: now_ms(),
                kind: kind(),
            });
        }
    }

    pub fn record_error(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        self.window.record_error(self.elapsed(Instant::now()));
    }

    fn refuse(&self, peer: Option<SocketAddr>, why: Refusal) -> Refusal {
        self.counters.rejected[why.index()].fetch_add(1, Ordering::Relaxed);
        let pressure = why.is_pool_pressure();
        if pressure {
            self.window.record_rejection(self.elapsed(Instant::now()));
        }
        let limit = match why {
            Refusal::AtLimit => "max_connections",
            Refusal::PerIpLimit => "max_connections_per_ip",
            Refusal::NotAccepting => "not_accepting",
            Refusal::Invalid(word) => word,
        };
        let active = self.admission.active();
        let max = self.admission.max();
        tracing::debug!(pool = %self.name, ?peer, limit, active, "connection refused");
        self.publish(|| PoolEventKind::PoolLimitReached {
            peer,
            limit,
            active,
            max,
        });
        if pressure
            && status_from_u8(self.status.load(Ordering::Relaxed)) < HealthStatus::Overloaded
        {
            self.refresh_health();
        }
        why
    }

    fn edges(&self) -> UtilizationEdges {
        UtilizationEdges::unpack(
            self.degraded_edge.load(Ordering::Relaxed),
            self.overloaded_edge.load(Ordering::Relaxed),
        )
    }

    /// The utilisation band of `active` open connections, from the band last computed.
    fn band(&self, active: u32) -> (HealthStatus, HealthStatus) {
        let previous = status_from_u8(self.band.load(Ordering::Relaxed));
        (previous, self.edges().band(active, previous))
    }

    /// Recomputes health when the open count moved the pool into another utilisation band.
    /// Only reads on the way: the band rarely changes, and a write on every admit and release
    /// would bounce this cache line between cores.
    fn check_band(&self, active: u32) {
        let (previous, band) = self.band(active);
        if band != previous {
            self.refresh_health();
        }
    }

    pub fn after_release(&self, open: u32) {
        // Only `close_all` stops admission, and it is the only waiter.
        if open == 0 && !self.admission.is_accepting() {
            self.all_closed.notify_waiters();
        }
        self.check_band(open);
    }

    fn set_thresholds(&self, config: &PoolConfig) {
        let (degraded, overloaded) =
            UtilizationEdges::new(config.max_connections, &config.health).pack();
        self.degraded_edge.store(degraded, Ordering::Relaxed);
        self.overloaded_edge.store(overloaded, Ordering::Relaxed);
        self.per_ip_limit.store(
            config.max_connections_per_ip.unwrap_or(0),
            Ordering::Relaxed,
        );
        self.per_ip_v6_prefix
            .store(config.max_connections_per_ip_v6_prefix, Ordering::Relaxed);
        self.max_requests.store(
            config
                .max_requests_per_connection
                .map_or(u64::MAX, u64::from),
            Ordering::Relaxed,
        );
    }

    /// Computes health, announcing a status change.
    pub fn refresh_health(&self) -> Health {
        let config = self.config();
        let now = Instant::now();
        let active = self.admission.active();
        let max = self.admission.max();
        let window = self.window.stats(self.elapsed(now));
        // A concurrent admit or release may store a band from a count a moment old; the next
        // admit, release or the monitor's pass each second corrects it.
        let (_, band) = self.band(active);
        self.band.store(status_index(band), Ordering::Relaxed);
        let inputs = HealthInputs {
            accepting: self.admission.is_accepting(),
            leaving: self.control.borrow().stage == Stage::Leaving,
            active,
            max,
            utilization_band: band,
            window,
            last_accept_error: self.last_accept_error(),
        };
        let (status, message) = assess(&inputs, &config.health);
        let previous = status_from_u8(self.status.swap(status_index(status), Ordering::Relaxed));
        if previous != status {
            if status > previous {
                tracing::warn!(pool = %self.name, from = %previous, to = %status, %message, "health status changed");
            } else {
                tracing::info!(pool = %self.name, from = %previous, to = %status, %message, "health status changed");
            }
            let message = message.clone();
            self.publish(move || PoolEventKind::HealthStatusChanged {
                from: previous,
                to: status,
                message,
            });
        }
        Health {
            protocol: self.protocol,
            status,
            utilization_ratio: utilization(active, max),
            active_connections: active,
            max_connections: max,
            rejected_connections: self.counters.rejected_total(),
            average_response_time_ms: window.average_response_ms,
            error_rate: window.error_rate(),
            message,
        }
    }

    fn last_accept_error(&self) -> Option<AcceptErrorKind> {
        let stored = usize::from(self.last_accept_error.load(Ordering::Relaxed));
        stored
            .checked_sub(1)
            .and_then(|i| AcceptErrorKind::ALL.get(i).copied())
    }

    /// Counts a failed accept on the server's listening socket, weighs it in health (degraded
    /// while the window holds one) and announces it as `accept_error` (with an error log
    /// line) at most once per [`ACCEPT_ERROR_EVENT_INTERVAL`], counting the ones in between.
    pub fn record_accept_error(&self, kind: AcceptErrorKind, error: &dyn std::fmt::Display) {
        self.counters.accept_errors[kind.index()].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.window.record_accept_error(self.elapsed(now));
        self.last_accept_error
            .store(kind.index() as u8 + 1, Ordering::Relaxed);
        let failures = {
            let mut pending = self
                .accept_errors_unannounced
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pending.0 += 1;
            let due = pending
                .1
                .is_none_or(|last| now.duration_since(last) >= ACCEPT_ERROR_EVENT_INTERVAL);
            if due {
                let failures = pending.0;
                *pending = (0, Some(now));
                Some(failures)
            } else {
                None
            }
        };
        if let Some(failures) = failures {
            tracing::error!(pool = %self.name, kind = kind.as_str(), %error, failures, "accept failed");
            self.publish(|| PoolEventKind::AcceptError {
                kind,
                error: error.to_string(),
                failures,
            });
        }
        if status_from_u8(self.status.load(Ordering::Relaxed)) < HealthStatus::Degraded {
            self.refresh_health();
        }
    }

    /// Takes a slot for a connection from `peer` (validated by the caller's policy), or
    /// refuses it: a refusal is counted, announced as `pool_limit_reached` and leaves nothing
    /// behind. Returns the connection's id and the per-IP key it is counted under, if any.
    ///
    /// The client's own limit is checked before a pool slot is taken: a client at its per-IP
    /// limit never holds one of the pool's slots, not even for a moment, so it cannot crowd
    /// out another client's admission, and its refusal is always its own (`per_ip`), never
    /// pressure on the pool.
    pub fn admit(
        &self,
        peer: Option<SocketAddr>,
        invalid: Option<&'static str>,
    ) -> Result<(ConnectionId, Option<IpAddr>), Refusal> {
        if let Some(word) = invalid {
            return Err(self.refuse(peer, Refusal::Invalid(word)));
        }
        // A draining pool says so, whatever the client's own count.
        if !self.admission.is_accepting() {
            return Err(self.refuse(peer, Refusal::NotAccepting));
        }
        let limit = self.per_ip_limit.load(Ordering::Relaxed);
        let per_ip = match (limit > 0, peer) {
            (true, Some(addr)) => {
                let prefix = self.per_ip_v6_prefix.load(Ordering::Relaxed);
                let key = PerIpLimiter::key(addr.ip(), prefix);
                if !self.per_ip.try_acquire(key, limit) {
                    return Err(self.refuse(peer, Refusal::PerIpLimit));
                }
                Some(key)
            }
            _ => None,
        };
        let open = match self.admission.try_admit() {
            Ok(open) => open,
            Err(why) => {
                if let Some(key) = per_ip {
                    self.per_ip.release(key);
                }
                return Err(self.refuse(peer, why));
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pool = %self.name, id, ?peer, "connection added");
        self.publish(|| PoolEventKind::ConnectionAdded { id, peer });
        self.check_band(open);
        Ok((id, per_ip))
    }

    /// Applies a settings patch live; see [`Pool::update_config`](crate::Pool::update_config).
    pub fn update_config(&self, patch: &PoolSettings) -> Result<Vec<ConfigChange>, ConfigErrors> {
        let _serial = self.update_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.config();
        let (next, changes) = current.apply(patch, "")?;
        if changes.is_empty() {
            return Ok(changes);
        }
        if next.health.window != current.health.window {
            self.window.set_window(next.health.window);
        }
        self.set_thresholds(&next);
        self.admission.set_max(next.max_connections);
        for c in &changes {
            tracing::info!(pool = %self.name, field = %c.field, old = %c.old, new = %c.new, "pool config changed");
        }
        // Every connection wakes, re-reads its timeouts and, if the pool is over its new limit
        // and the connection is idle, takes a shedding claim.
        self.change_control(|s| s.config = Arc::new(next));
        // New limits or thresholds may move the pool into another band.
        self.refresh_health();
        Ok(changes)
    }

    pub async fn wait_until_empty(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.admission.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The shared state behind a [`Pool`].
#[derive(Debug)]
pub(crate) struct PoolInner<P> {
    pub core: Arc<PoolCore>,
    pub policy: P,
}
