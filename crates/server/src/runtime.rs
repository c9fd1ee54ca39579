//! A whole poolserve process: its servers, their pools, the admin endpoint and shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use poolserve_pool::{CloseReport, PoolRegistry};

use crate::admin::{AdminServer, AdminState};
use crate::config::{ReloadError, ReloadReport, RunConfig, ServerSpec, ADMIN_POOL};
use crate::http::{Handler, ResponseBody};
use crate::proto::grpc::GrpcServices;
use crate::protocol::Protocol;
use crate::server::{Server, ServerError, ServerOptions};
use crate::transport::tls::PemPair;

type StartFuture = Pin<Box<dyn Future<Output = Result<Server, ServerError>> + Send>>;

/// Starts one server of the runtime (its HTTP service or gRPC services captured), for servers
/// a reload adds.
type Starter = Arc<dyn Fn(Arc<PoolRegistry>, ServerOptions) -> StartFuture + Send + Sync>;

/// Running servers plus the admin endpoint, sharing one pool registry.
pub struct Runtime {
    registry: Arc<PoolRegistry>,
    servers: RwLock<Vec<Arc<Server>>>,
    starter: Starter,
    admin: AdminServer,
    draining: Arc<AtomicBool>,
    /// The running config, shared with the admin endpoint's `/config`.
    config: Arc<RwLock<RunConfig>>,
}

/// Why a runtime could not start.
#[derive(Debug)]
pub enum StartError {
    /// A server failed to start.
    Server(String, ServerError),
    /// The admin endpoint failed to start.
    Admin(ServerError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Server(name, e) => write!(f, "server {name:?}: {e}"),
            StartError::Admin(e) => write!(f, "admin endpoint: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl Runtime {
    /// Starts every server of `config` with `service` answering HTTP (`grpc` servers answer
    /// only health and reflection; see [`Runtime::start_with_grpc`]), then the admin endpoint.
    /// All listeners are bound and TLS is loaded before this returns.
    pub async fn start<S, B>(config: &RunConfig, service: S) -> Result<Runtime, StartError>
    where
        S: Handler<B>,
        B: ResponseBody,
    {
        Runtime::start_with_grpc(config, service, GrpcServices::new()).await
    }

    /// Like [`Runtime::start`], with `grpc` answering on `grpc` servers.
    pub async fn start_with_grpc<S, B>(
        config: &RunConfig,
        service: S,
        grpc: GrpcServices,
    ) -> Result<Runtime, StartError>
    where
        S: Handler<B>,
        B: ResponseBody,
    {
        let registry = Arc::new(PoolRegistry::new());
        // A Mutex makes the service shareable without asking it to be `Sync`.
        let service = std::sync::Mutex::new(service);
        let starter: Starter = Arc::new(move |registry, options| {
            let service = service.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let grpc = grpc.clone();
            Box::pin(async move {
                if options.protocol == Protocol::Grpc {
                    Server::start_grpc(&registry, options, grpc).await
                } else {
                    Server::start(&registry, options, service).await
                }
            })
        });
        let mut servers = Vec::new();
        for spec in &config.servers {
            let tls = match &spec.tls {
                Some(files) => Some(PemPair::from_files(files).map_err(|e| {
                    StartError::Server(spec.name.clone(), ServerError::Tls(e.to_string()))
                })?),
                None => None,
            };
            let server = starter(registry.clone(), options(spec, tls))
                .await
                .map_err(|e| StartError::Server(spec.name.clone(), e))?;
            servers.push(Arc::new(server));
        }
        let draining = Arc::new(AtomicBool::new(false));
        let running = Arc::new(RwLock::new(config.clone()));
        for w in config.warnings() {
            tracing::warn!(field = %w.field, value = %w.value, reason = %w.reason, "config warning");
        }
        let admin = AdminServer::start(
            config.admin_listen,
            config.admin_pool.clone(),
            AdminState {
                registry: registry.clone(),
                draining: draining.clone(),
                token: config.admin_token.as_deref().map(Arc::from),
                probes_need_token: config.admin_probes_need_token,
                config: running.clone(),
            },
        )
        .await
        .map_err(StartError::Admin)?;
        Ok(Runtime {
            registry,
            servers: RwLock::new(servers),
            starter,
            admin,
            draining,
            config: running,
        })
    }

    /// Applies a new config live: every server's pool settings and the drain deadline, a new
    /// certificate found in a server's certificate files (all validated first: a refused field
    /// changes nothing), servers added (started) and removed (drained while the others serve).
    /// A server moved or given other certificate files, the admin endpoint and logging are
    /// reported, not applied.
    pub async fn reload(&self, next: &RunConfig) -> Result<ReloadReport, ReloadError> {
        let servers = self.servers();
        let (mut report, changes) =
            crate::config::apply_reload(&self.registry, &servers, &self.config, next)?;
        for (spec, tls) in changes.add {
            match (self.starter)(self.registry.clone(), options(&spec, tls)).await {
                Ok(server) => {
                    tracing::info!(server = %spec.name, protocol = spec.protocol.as_str(), addr = %server.local_addr(), "server added");
                    self.write_servers().push(Arc::new(server));
                    self.write_config().servers.push(spec.clone());
                    report.servers_added.push(spec.name);
                }
                Err(e) => report
                    .not_applied
                    .push(format!("server {:?} could not start: {e}", spec.name)),
            }
        }
        let deadline = self.write_config().drain_timeout;
        for name in changes.remove {
            let removed = {
                let mut servers = self.write_servers();
                let at = servers.iter().position(|s| s.name() == name);
                at.map(|i| servers.remove(i))
            };
            self.write_config().servers.retain(|s| s.name != name);
            if let Some(server) = removed {
                tracing::info!(server = %name, "server removed; draining");
                let registry = self.registry.clone();
                // The others go on serving while this one drains; its pool leaves the registry
                // (and the metrics) once it is empty.
                tokio::spawn(async move {
                    let report = server.drain(deadline).await;
                    registry.remove(server.name());
                    tracing::info!(server = %server.name(), polite = report.closed_politely, forced = report.forced, "removed server drained");
                });
                report.servers_removed.push(name);
            }
        }
        Ok(report)
    }

    fn write_servers(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Server>>> {
        self.servers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn write_config(&self) -> std::sync::RwLockWriteGuard<'_, RunConfig> {
        self.config.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The running config (pool settings as at start or the last reload).
    pub fn config(&self) -> RunConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The pool registry.
    pub fn registry(&self) -> &Arc<PoolRegistry> {
        &self.registry
    }

    /// The running servers.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<Arc<Server>> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| s.name() == name)
            .cloned()
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.local_addr()
    }

    /// Graceful shutdown: readiness turns 503, every server stops accepting and drains within
    /// the configured deadline (the rest are closed at once), then the admin endpoint, which
    /// answered probes meanwhile, drains in what is left of the same deadline. One report per
    /// pool, the admin endpoint's included.
    pub async fn shutdown(self) -> Vec<(String, CloseReport)> {
        let started = tokio::time::Instant::now();
        self.draining.store(true, Ordering::Relaxed);
        let deadline = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .drain_timeout;
        tracing::info!(?deadline, "shutting down");
        let mut draining = tokio::task::JoinSet::new();
        let servers = std::mem::take(&mut *self.write_servers());
        for server in servers {
            let name = server.name().to_owned();
            draining.spawn(async move { (name, server.drain(deadline).await) });
        }
        let mut reports = Vec::new();
        while let Some(done) = draining.join_next().await {
            if let Ok(report) = done {
                reports.push(report);
            }
        }
        let left = deadline.saturating_sub(started.elapsed());
        reports.push((ADMIN_POOL.to_owned(), self.admin.shutdown(left).await));
        reports.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, r) in &reports {
            tracing::info!(server = %name, open = r.open_at_start, polite = r.closed_politely, forced = r.forced, "server drained");
        }
        reports
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("servers", &self.servers)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

fn options(spec: &ServerSpec, tls: Option<PemPair>) -> ServerOptions {
    ServerOptions {
        name: spec.name.clone(),
        protocol: spec.protocol,
        listen: spec.listen,
        tls,
        pool: spec.pool.clone(),
    }
}
