//! The admin router and the endpoint that serves it.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::state::{AdminState, HealthDocument};
use super::{config_api, events, openapi, prometheus};

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
