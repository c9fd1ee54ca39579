//! The admin endpoint: Prometheus `/metrics`, `/health`, `/livez`, `/readyz`, the running
//! `/config` and live `PATCH /servers/NAME/pool`, `/events` (server-sent events) and the API's
//! own description at `/openapi.json`.
//!
//! Loopback by default; when a token is configured every request needs
//! `Authorization: Bearer <token>`, except the probes unless `probes_need_token`. The endpoint
//! is a server of its own pool, bounded and drained like the others.

mod auth;
mod config_api;
mod endpoint;
mod events;
pub mod openapi;
mod prometheus;
mod state;

pub use config_api::{
    config_document, AdminDocument, ConfigDocument, LogDocument, RuntimeDocument, ServerDocument,
    TlsDocument,
};
pub use endpoint::{router, AdminServer, StatsDocument};
pub use prometheus::{render as render_metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};
pub use state::{AdminState, HealthDocument};
