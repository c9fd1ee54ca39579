//! `GET /config` (the running config, pool settings as in force now) and
//! `PATCH /servers/NAME/pool` (a live pool settings change, all or nothing).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use poolserve_pool::{ConfigChange, FieldError, PoolSettings};
use serde::Serialize;

use super::state::AdminState;
use crate::config::{AcceptLoopsSetting, ADMIN_POOL};

/// The `/config` document: the config file's shape, in JSON, with each pool's settings as in
/// force now (after any live change).
#[derive(Debug, Serialize)]
pub struct ConfigDocument {
    /// Shutdown drain deadline.
    pub drain_timeout: String,
    /// How long a stopping server serves on, announced as not ready, before it drains (`0s`:
    /// no delay).
    pub drain_delay: String,
    /// The admin endpoint (the token itself is never shown).
    pub admin: AdminDocument,
    /// Logging.
    pub log: LogDocument,
    /// The async runtime.
    pub runtime: RuntimeDocument,
    /// Every server.
    pub servers: Vec<ServerDocument>,
}

/// The runtime section of `/config`.
#[derive(Debug, Serialize)]
pub struct RuntimeDocument {
    /// Worker threads the async runtime runs.
    pub worker_threads: usize,
}

/// The admin section of `/config`.
#[derive(Debug, Serialize)]
pub struct AdminDocument {
    /// Address the admin endpoint was configured on.
    pub listen: String,
    /// Whether a bearer token is required.
    pub token_required: bool,
    /// Whether the probes (`/livez`, `/readyz`) need the token too.
    pub probes_need_token: bool,
    /// File descriptors held in reserve so the endpoint answers while the process is out of
    /// them.
    pub spare_fds: usize,
    /// The admin endpoint's pool settings in force, every field filled in.
    pub pool: PoolSettings,
}

/// The log section of `/config`.
#[derive(Debug, Serialize)]
pub struct LogDocument {
    /// The tracing filter.
    pub level: String,
    /// `text` or `json`.
    pub format: &'static str,
}

/// One server in `/config`.
#[derive(Debug, Serialize)]
pub struct ServerDocument {
    /// Its name.
    pub name: String,
    /// Its protocol.
    pub protocol: &'static str,
    /// The configured listen address.
    pub listen: String,
    /// Certificate and key files, when configured.
    pub tls: Option<TlsDocument>,
    /// Accept loops as configured: a number or `"auto"`.
    pub accept_loops: AcceptLoopsSetting,
    /// Listening sockets the server accepts on now, each with its own accept loop.
    pub listening_sockets: usize,
    /// Pool settings in force, every field filled in.
    pub pool: PoolSettings,
}

/// Certificate files in `/config`.
#[derive(Debug, Serialize)]
pub struct TlsDocument {
    /// Certificate chain file.
    pub cert: String,
    /// Private key file.
    pub key: String,
}

/// The `/config` document of `state` as of now.
pub fn config_document(state: &AdminState) -> ConfigDocument {
    let run = state.config.read().unwrap_or_else(|p| p.into_inner());
    let running = state.servers.read().unwrap_or_else(|p| p.into_inner());
    let servers = run
        .servers
        .iter()
        .map(|s| ServerDocument {
            name: s.name.clone(),
            protocol: s.protocol.as_str(),
            listen: s.listen.to_string(),
            tls: s.tls.as_ref().map(|t| TlsDocument {
                cert: t.cert.display().to_string(),
                key: t.key.display().to_string(),
            }),
            accept_loops: s.accept_loops.to_setting(),
            listening_sockets: running
                .iter()
                .find(|r| r.name() == s.name)
                .map_or(0, |r| r.listening_sockets()),
            pool: state
                .registry
                .get(&s.name)
                .map(|p| p.config().to_settings())
                .unwrap_or_else(|| s.pool.to_settings()),
        })
        .collect();
    ConfigDocument {
        drain_timeout: humantime::format_duration(run.drain_timeout).to_string(),
        drain_delay: humantime::format_duration(run.drain_delay).to_string(),
        admin: AdminDocument {
            listen: run.admin_listen.to_string(),
            token_required: state.token.is_some(),
            probes_need_token: state.probes_need_token,
            spare_fds: run.admin_spare_fds,
            pool: state
                .registry
                .get(ADMIN_POOL)
                .map(|p| p.config().to_settings())
                .unwrap_or_else(|| run.admin_pool.to_settings()),
        },
        log: LogDocument {
            level: run.log.level.clone(),
            format: if run.log.json { "json" } else { "text" },
        },
        runtime: RuntimeDocument {
            worker_threads: state.worker_threads,
        },
        servers,
    }
}

pub(super) async fn get_config(State(state): State<AdminState>) -> Json<ConfigDocument> {
    Json(config_document(&state))
}

/// A successful `PATCH`: what changed.
#[derive(Debug, Serialize)]
struct Patched {
    server: String,
    changes: Vec<ConfigChange>,
}

/// A refused `PATCH`: every bad field; nothing was applied.
#[derive(Debug, Serialize)]
struct Refused {
    errors: Vec<FieldError>,
}

fn refused(status: StatusCode, errors: Vec<FieldError>) -> Response {
    (status, Json(Refused { errors })).into_response()
}

pub(super) async fn patch_pool(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(pool) = state.registry.get(&name) else {
        return refused(
            StatusCode::NOT_FOUND,
            vec![FieldError {
                field: "server".into(),
                value: format!("{name:?}"),
                reason: "no server has this name".into(),
            }],
        );
    };
    let patch: PoolSettings = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => {
            // serde names the field: "unknown field `max_conns`", "invalid type: ... at line 1".
            return refused(
                StatusCode::BAD_REQUEST,
                vec![FieldError {
                    field: "(body)".into(),
                    value: String::from_utf8_lossy(&body).chars().take(200).collect(),
                    reason: e.to_string(),
                }],
            );
        }
    };
    match pool.update_config(&patch) {
        Ok(changes) => (
            StatusCode::OK,
            Json(Patched {
                server: name,
                changes,
            }),
        )
            .into_response(),
        Err(errors) => refused(StatusCode::BAD_REQUEST, errors.0),
    }
}
