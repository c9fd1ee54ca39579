//! The protocol-agnostic core of poolserve: every connection of a server is admitted, tracked,
//! timed out, health-scored, measured, announced and drained through one [`Pool`].
//!
//! The pool knows nothing about sockets or protocols. A protocol plugs in through a
//! [`ProtocolPolicy`] (who may connect, what a healthy connection is) and a
//! [`ManagedConnection`] (its timeout rule over the connection's [`Activity`], and its polite
//! close), and reports activity through the [`ConnectionTracker`] of each admitted connection.
//!
//! Files import one way, with no cycle: `activity`, `config`, `metrics`, `events` and the other
//! leaves ← `core` (a pool's shared state) ← `connection` (one connection's activity) ←
//! `driver` ← `guard` ← `pool` ← `registry`.
//!
//! Each type and method of the design's vocabulary (`addConnection`, `closeAllConnections`,
//! `on(event)`, ...) names its design counterpart in its doc; docs/design.md has the table.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod activity;
mod admission;
mod clock;
mod config;
mod connection;
mod core;
mod driver;
mod events;
mod guard;
mod health;
mod histogram;
mod lifetime;
mod metrics;
mod per_ip;
mod policy;
mod pool;
mod registry;
mod window;

pub use activity::{
    deadline_after, earliest, idle_deadline, later, stall_deadline, Activity, Phase,
};
pub use admission::{AdmissionCounter, Refusal};
pub use clock::Clock;
pub use config::{
    parse_duration_setting, ConfigChange, ConfigErrors, FieldError, GrpcConfig, GrpcSettings,
    HealthSettings, HealthThresholds, Http1Config, Http1Settings, Http2Config, Http2Settings,
    PoolConfig, PoolSettings, WebSocketConfig, WebSocketSettings, MAX_CONNECTIONS_LIMIT,
    MAX_DURATION, MIN_STREAM_SEND_BUFFER,
};
pub use connection::{ConnectionTracker, RequestBodyTracker, RequestTracker};
pub use core::{ControlState, Stage, HEALTH_INTERVAL};
pub use driver::{ManagedConnection, TIMEOUT_GOODBYE_GRACE};
pub use events::{
    ConnectionId, EventBus, EventError, PoolEvent, PoolEventKind, Subscription,
    ACCEPT_ERROR_EVENT_INTERVAL, EVENT_BUFFER,
};
pub use guard::ConnectionGuard;
pub use health::{
    assess, utilization, Health, HealthInputs, HealthStatus, UtilizationEdges,
    MIN_REQUESTS_FOR_RATES, UTILIZATION_HYSTERESIS,
};
pub use histogram::{HistogramSnapshot, LatencyHistogram, BOUNDS_MICROS};
pub use lifetime::{age_limit, AGE_JITTER};
pub use metrics::{AcceptErrorKind, CloseReason, MetricsSnapshot, TimeoutKind, CLOSE_CODES};
pub use per_ip::PerIpLimiter;
pub use policy::{DefaultPolicy, ProtocolPolicy};
pub use pool::{CloseReport, Pool};
pub use registry::{PoolHandle, PoolRegistry, RegistryError};
pub use window::{DecayingWindow, WindowStats, BUCKETS};
