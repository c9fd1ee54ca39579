//! The admin router and the endpoint that serves it.

use std::collections::BTreeMap;
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
use crate::server::{Prepared, Server, ServerError, ServerOptions};
use crate::transport::listener::{self, Listener};
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
    /// The id of the process answering (after a binary upgrade, the new one's).
    pub pid: u32,
    /// One snapshot per pool.
    pub pools: Vec<poolserve_pool::MetricsSnapshot>,
    /// Connections accepted on each of a server's listening sockets (one per accept loop),
    /// by server.
    pub accepted_by_socket: BTreeMap<String, Vec<u64>>,
}

async fn stats(State(state): State<AdminState>) -> Json<StatsDocument> {
    let accepted_by_socket = state
        .servers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|s| (s.name().to_owned(), s.accepted_by_socket()))
        .collect();
    Json(StatsDocument {
        pid: std::process::id(),
        pools: state.registry.metrics(),
        accepted_by_socket,
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
        let listeners = listener::bind(listen, 1, &pool)
            .await
            .map_err(|e| ServerError::Bind(listen, e))?;
        let spares = Arc::new(SpareFds::new(DEFAULT_SPARE_FDS));
        Ok(AdminServer::prepare(listeners, pool, state, spares)?.start())
    }

    /// Prepares the endpoint on `listeners`, starting nothing (see [`Prepared`]); its accept
    /// loop may spend `spares`, the spare descriptors a runtime's servers keep for it, so probes
    /// and scrapes are answered while the servers are out of them.
    pub(crate) fn prepare(
        listeners: Vec<Listener>,
        pool: PoolConfig,
        state: AdminState,
        spares: Arc<SpareFds>,
    ) -> Result<PreparedAdmin, ServerError> {
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
            listen: listeners.first().map_or_else(
                || SocketAddr::from(([127, 0, 0, 1], 0)),
                Listener::local_addr,
            ),
            tls: None,
            pool,
        };
        let policy = ServerPolicy {
            protocol: Protocol::Http,
        };
        let pool = registry.create(ADMIN_POOL, policy, options.pool.clone());
        let prepared =
            Server::prepare(pool, options, app)?.with_spare_fds(SpareFdUse::Spend(spares));
        Ok(PreparedAdmin {
            prepared,
            listeners,
            registry,
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

    /// Stops accepting at once, leaving the listening socket to the process that took it
    /// over (a binary upgrade); the connections open go on until [`AdminServer::shutdown`].
    pub(crate) async fn stop_accepting(&self) {
        drop(self.server.hand_over().await);
    }

    /// A duplicate of the endpoint's listening socket, for another process to accept on.
    pub(crate) fn duplicate_sockets(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.server.duplicate_sockets()
    }
}

/// The admin endpoint built on its socket but not yet accepting.
pub(crate) struct PreparedAdmin {
    prepared: Prepared,
    listeners: Vec<Listener>,
    registry: std::sync::Arc<poolserve_pool::PoolRegistry>,
    streams_end: watch::Sender<bool>,
}

impl PreparedAdmin {
    /// Starts accepting.
    pub(crate) fn start(self) -> AdminServer {
        let server = self.prepared.start(&self.registry, self.listeners);
        tracing::info!(local_addr = %server.local_addr(), "admin endpoint listening");
        AdminServer {
            server,
            streams_end: self.streams_end,
        }
    }
}
