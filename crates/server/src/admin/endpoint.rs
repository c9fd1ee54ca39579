//! The admin router and the endpoint that serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use poolserve_pool::{CloseReport, Pool, PoolConfig};
use serde::Serialize;
use tokio::sync::watch;

use super::state::{AdminState, HealthDocument};
use super::{auth, config_api, events, openapi, prometheus};
use crate::config::{ADMIN_POOL, DEFAULT_SPARE_FDS};
use crate::protocol::Protocol;
use crate::server::{Server, ServerError, ServerOptions};
use crate::transport::policy::ServerPolicy;
use crate::transport::spare_fds::{SpareFdUse, SpareFds};

/// The admin router, for mounting or serving. Every path needs the token when one is set,
/// except the probes (`/livez`, `/readyz`) unless `probes_need_token`.
pub fn router(state: AdminState) -> Router {
    let token = middleware::from_fn_with_state(state.clone(), auth::require_token);
    let probes = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let probes = if state.probes_need_token {
        probes.route_layer(token.clone())
    } else {
        probes
    };
    let guarded = Router::new()
        .route("/", get(dashboard))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/config", get(config_api::get_config))
        .route("/servers/{name}/pool", patch(config_api::patch_pool))
        .route("/events", get(events::events))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        // Also the fallback: an unknown path without the token is a 401, not a 404.
        .layer(token);
    probes.merge(guarded).with_state(state)
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

/// A running admin endpoint: a plain-HTTP server of its own pool ([`ADMIN_POOL`]), so its
/// connections are admitted, timed out and drained like any server's.
#[derive(Debug)]
pub struct AdminServer {
    server: Server,
    streams_end: watch::Sender<bool>,
}

impl AdminServer {
    /// Binds `listen` and serves the admin router under a pool with `pool`'s settings,
    /// registered in `state`'s registry as [`ADMIN_POOL`], with [`DEFAULT_SPARE_FDS`] spare
    /// file descriptors of its own to answer while the process is out of them.
    pub async fn start(
        listen: SocketAddr,
        pool: PoolConfig,
        state: AdminState,
    ) -> Result<AdminServer, ServerError> {
        let spares = Arc::new(SpareFds::new(DEFAULT_SPARE_FDS));
        AdminServer::start_with_spares(listen, pool, state, spares).await
    }

    /// [`AdminServer::start`] spending the spare descriptors a runtime's servers keep for it.
    pub(crate) async fn start_with_spares(
        listen: SocketAddr,
        pool: PoolConfig,
        state: AdminState,
        spares: Arc<SpareFds>,
    ) -> Result<AdminServer, ServerError> {
        if state.registry.get(ADMIN_POOL).is_some() {
            return Err(ServerError::Registry(format!(
                "a pool named {ADMIN_POOL:?} exists: the name is the admin endpoint's"
            )));
        }
        let registry = state.registry.clone();
        let (streams_end, stopped) = watch::channel(false);
        let app = router(state).layer(axum::Extension(events::StreamsEnd(stopped)));
        let options = ServerOptions {
            name: ADMIN_POOL.to_owned(),
            protocol: Protocol::Http,
            listen,
            tls: None,
            pool,
        };
        // Its accept loop may spend the spare descriptors, so probes and scrapes are answered
        // while the servers are out of them.
        let (listener, pool) = Server::bind_and_pool(&registry, &options).await?;
        let server = Server::prepare(pool, options, app)?
            .with_spare_fds(SpareFdUse::Spend(spares))
            .start(&registry, listener);
        tracing::info!(local_addr = %server.local_addr(), "admin endpoint listening");
        Ok(AdminServer {
            server,
            streams_end,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The endpoint's pool.
    pub fn pool(&self) -> &Pool<ServerPolicy> {
        self.server.pool()
    }

    /// Stops accepting, ends the event streams and drains within `deadline`: requests in
    /// flight finish, what is still open at the deadline (a client that stopped reading) is
    /// closed at once.
    pub async fn shutdown(self, deadline: Duration) -> CloseReport {
        let _ = self.streams_end.send(true);
        self.server.shutdown(deadline).await
    }
}
