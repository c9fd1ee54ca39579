//! The admin endpoint: Prometheus `/metrics`, `/health`, `/livez`, `/readyz`, the running
//! `/config` and live `PATCH /servers/NAME/pool`, `/events` (server-sent events) and the API's
//! own description at `/openapi.json`.
//!
//! Loopback by default; when a token is configured every request needs
//! `Authorization: Bearer <token>`.

mod config_api;
mod events;
pub mod openapi;
mod prometheus;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use poolserve_pool::{Health, HealthStatus, PoolRegistry};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config_api::{AdminDocument, ConfigDocument, LogDocument, ServerDocument, TlsDocument};
pub use prometheus::{render as render_metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};

use crate::file_config::RunConfig;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Every pool.
    pub registry: Arc<PoolRegistry>,
    /// Set when the process starts shutting down.
    pub draining: Arc<AtomicBool>,
    /// Bearer token required on every request, if any.
    pub token: Option<Arc<str>>,
    /// The running config (pool settings in it are as at start; `/config` reads live ones).
    pub config: Arc<RwLock<RunConfig>>,
}

/// The `/health` document (SPEC M).
#[derive(Debug, Serialize)]
pub struct HealthDocument {
    /// The worst status of any pool (`unavailable` while the process drains).
    pub status: HealthStatus,
    /// Each pool's health, by name.
    pub pools: BTreeMap<String, Health>,
}

impl AdminState {
    /// The `/health` document as of now.
    pub fn health(&self) -> HealthDocument {
        let pools: BTreeMap<String, Health> = self.registry.health().into_iter().collect();
        let mut status = pools
            .values()
            .map(|h| h.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        if self.draining.load(Ordering::Relaxed) {
            status = HealthStatus::Unavailable;
        }
        HealthDocument { status, pools }
    }

    /// Whether a load balancer should send this process traffic, and if not, why.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let not_ready: Vec<String> = self
            .registry
            .health()
            .into_iter()
            .filter(|(_, h)| !h.status.is_ready())
            .map(|(name, h)| format!("{name}: {} ({})", h.status, h.message))
            .collect();
        if not_ready.is_empty() {
            Ok(())
        } else {
            Err(not_ready.join("\n"))
        }
    }
}

/// The admin router, for mounting or serving.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/config", get(config_api::get_config))
        .route("/servers/{name}/pool", patch(config_api::patch_pool))
        .route("/events", get(events::events))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(&**token) {
            let mut res =
                (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"poolserve-admin\""),
            );
            return res;
        }
    }
    next.run(req).await
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match prometheus::render(state.registry.clone()) {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        )
            .into_response(),
    }
}

/// The live dashboard: one page, embedded in the binary, fed by `/health`, `/stats` and `/events`.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        DASHBOARD,
    )
        .into_response()
}

/// Every pool's metrics snapshot as JSON (the dashboard's counters and latency percentiles).
#[derive(Debug, Serialize)]
pub struct StatsDocument {
    /// One snapshot per pool.
    pub pools: Vec<poolserve_pool::MetricsSnapshot>,
}

async fn stats(State(state): State<AdminState>) -> Json<StatsDocument> {
    Json(StatsDocument {
        pools: state.registry.metrics(),
    })
}

async fn health(State(state): State<AdminState>) -> Json<HealthDocument> {
    Json(state.health())
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `listen` and serves the admin router.
    pub async fn start(listen: SocketAddr, state: AdminState) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let app = router(state).layer(axum::Extension(events::StreamsEnd(stopped.clone())));
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "admin endpoint failed");
            }
        });
        tracing::info!(%local_addr, "admin endpoint listening");
        Ok(AdminServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the endpoint, letting requests in flight finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
