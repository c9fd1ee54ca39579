//! A whole poolserve process: its servers, their pools, the admin endpoint, reload and
//! shutdown.
//!
//! A reload applies whole or not at all, in two phases: first everything that can fail is
//! prepared without touching what runs (every server to start gets its sockets bound, or is
//! promised the sockets of a server it replaces on the same address, its certificate loaded,
//! its pool and dispatch made; a server to run more accept loops gets its extra sockets bound,
//! not yet listening); if anything fails, what was prepared is dropped and the reload is
//! refused with every failing field. Then it commits: settings and certificates apply, the new
//! servers start (one taking over a stopping server's sockets takes them straight from that
//! server's accept loops, so the address always has a listener), accept loops are added or
//! retired, and the stopped servers drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use poolserve_pool::{CloseReport, FieldError, Pool, PoolRegistry};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::{AdminServer, AdminState};
use crate::config::{ReloadError, ReloadReport, RunConfig, ServerSpec, ADMIN_POOL};
use crate::http::{Handler, ResponseBody};
use crate::proto::grpc::GrpcServices;
use crate::protocol::Protocol;
use crate::server::{Prepared, Server, ServerError, ServerOptions};
use crate::transport::listener::{self, Listener, Reserved};
use crate::transport::policy::ServerPolicy;
use crate::transport::tls::PemPair;

/// Prepares one server of the runtime on a pool (its HTTP service or gRPC services captured).
type Preparer =
    Arc<dyn Fn(Pool<ServerPolicy>, ServerOptions) -> Result<Prepared, ServerError> + Send + Sync>;

/// Running servers plus the admin endpoint, sharing one pool registry.
pub struct Runtime {
    registry: Arc<PoolRegistry>,
    /// Shared with the admin endpoint, which reads each server's listening sockets.
    servers: Arc<RwLock<Vec<Arc<Server>>>>,
    preparer: Preparer,
    admin: AdminServer,
    draining: Arc<AtomicBool>,
    /// The running config, shared with the admin endpoint's `/config`.
    config: Arc<RwLock<RunConfig>>,
    /// Held by a reload from its plan to its last change, so reloads never interleave.
    reloading: tokio::sync::Mutex<()>,
    /// The drains of servers a reload stopped; shutdown waits for them too. Dropping a handle
    /// leaves its drain running.
    stopped: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Where the sockets of a server a reload starts come from.
enum Socket {
    /// Bound while preparing.
    Bound(Vec<Listener>),
    /// Handed over at commit by the stopping server on the same address, with the sockets
    /// bound while preparing for the accept loops it has fewer of.
    HandedOver(Arc<Server>, Vec<Reserved>),
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
        let preparer: Preparer = Arc::new(move |pool, options| {
            if options.protocol == Protocol::Grpc {
                Server::prepare_grpc(pool, options, grpc.clone())
            } else {
                let service = service.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Server::prepare(pool, options, service)
            }
        });
        let mut servers = Vec::new();
        for spec in &config.servers {
            let fail = |e| StartError::Server(spec.name.clone(), e);
            let tls = match &spec.tls {
                Some(files) => Some(
                    PemPair::from_files(files)
                        .map_err(|e| fail(ServerError::Tls(e.to_string())))?,
                ),
                None => None,
            };
            let listeners = listener::bind(spec.listen, spec.accept_loops.resolve(), &spec.pool)
                .await
                .map_err(|e| fail(ServerError::Bind(spec.listen, e)))?;
            let prepared = preparer(new_pool(&registry, spec), options(spec, tls)).map_err(fail)?;
            servers.push(Arc::new(prepared.start(&registry, listeners)));
        }
        let servers = Arc::new(RwLock::new(servers));
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
                servers: servers.clone(),
                worker_threads: tokio::runtime::Handle::current().metrics().num_workers(),
            },
        )
        .await
        .map_err(StartError::Admin)?;
        Ok(Runtime {
            registry,
            servers,
            preparer,
            admin,
            draining,
            config: running,
            reloading: tokio::sync::Mutex::new(()),
            stopped: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Applies a new config live, whole or not at all: every server's pool settings, its
    /// number of accept loops and the drain deadline, a new certificate found in a server's
    /// certificate files, servers added (started), removed (drained while the others serve)
    /// and replaced (a server whose protocol, address or certificate files changed: a new
    /// server with a fresh pool starts under its name, and the old one drains). A server
    /// started on the address of a server the same reload stops takes over that server's
    /// listening sockets. Anything refused (a setting, a certificate, an address that cannot be
    /// bound) changes nothing and is named in the error. The admin endpoint's address and
    /// token, logging and worker threads are reported, not applied.
    pub async fn reload(&self, next: &RunConfig) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let servers = self.servers();
        let running = self.config();
        let admin_pool: Arc<dyn poolserve_pool::PoolHandle> = Arc::new(self.admin.pool().clone());
        let (mut plan, mut errors) =
            crate::config::plan_reload(&servers, admin_pool, &running, next);

        // Phase one: prepare every server to start; nothing that runs is touched.
        let stopping: Vec<Arc<Server>> = servers
            .iter()
            .filter(|s| plan.stop.iter().any(|n| n == s.name()))
            .cloned()
            .collect();
        let mut promised: Vec<&Arc<Server>> = Vec::new();
        let mut ready = Vec::new();
        for (spec, tls) in std::mem::take(&mut plan.start) {
            let giver = stopping.iter().find(|s| {
                s.local_addr() == spec.listen
                    && s.is_accepting()
                    && !promised.iter().any(|p| Arc::ptr_eq(p, s))
            });
            let wanted = spec.accept_loops.resolve();
            let socket = match giver {
                Some(giver) => {
                    promised.push(giver);
                    let missing = wanted.saturating_sub(giver.listening_sockets());
                    match reserve(giver.local_addr(), missing, &spec) {
                        Ok(more) => Socket::HandedOver(giver.clone(), more),
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
                None => match listener::bind(spec.listen, wanted, &spec.pool).await {
                    Ok(bound) => Socket::Bound(bound),
                    Err(e) => {
                        errors.push(bind_error(&spec, &e, &servers, &stopping));
                        continue;
                    }
                },
            };
            match (self.preparer)(new_pool(&self.registry, &spec), options(&spec, tls)) {
                Ok(prepared) => ready.push((spec, prepared, socket)),
                Err(e) => errors.push(server_error(&spec, &e)),
            }
        }
        // Kept servers to run more accept loops get their extra sockets now, not listening.
        let mut resize = Vec::new();
        for (server, wanted) in std::mem::take(&mut plan.resize) {
            let missing = wanted.saturating_sub(server.listening_sockets());
            let Some(spec) = next.servers.iter().find(|s| s.name == server.name()) else {
                continue;
            };
            match reserve(server.local_addr(), missing, spec) {
                Ok(more) => resize.push((server, wanted, more)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            // Dropping what was prepared closes the sockets it bound; nothing of it ran, and
            // the sockets bound on running servers' addresses never listened.
            return Err(ReloadError(errors));
        }

        // Phase two: commit.
        let mut report = plan.apply_settings();
        let mut recorded = crate::config::recorded_after_reload(&running, next);
        let mut started = Vec::new();
        for (spec, prepared, socket) in ready {
            let wanted = spec.accept_loops.resolve();
            let listeners = match socket {
                Socket::Bound(bound) => bound,
                Socket::HandedOver(giver, more) => {
                    let mut handed = giver.hand_over().await;
                    if !handed.is_empty() {
                        handed.extend(listen_all(more, &spec.name, &mut report));
                        handed
                    } else {
                        // The giver stopped accepting since it was planned (its pool was
                        // closed from outside the runtime), which also freed the address.
                        drop(more);
                        match listener::bind(spec.listen, wanted, &spec.pool).await {
                            Ok(bound) => bound,
                            Err(e) => {
                                tracing::error!(server = %spec.name, addr = %spec.listen, error = %e, "server not started");
                                report.not_applied.push(format!(
                                    "server {:?} could not start: cannot listen on {}: {e}",
                                    spec.name, spec.listen
                                ));
                                recorded.servers.retain(|s| s.name != spec.name);
                                continue;
                            }
                        }
                    }
                }
            };
            let server = prepared.start(&self.registry, listeners);
            // A server handed more sockets than it is to run accepts what is queued in the
            // extra ones, then closes them.
            server.retire_sockets(wanted);
            let replaced = plan.replaced.contains(&spec.name);
            tracing::info!(server = %spec.name, protocol = spec.protocol.as_str(), addr = %server.local_addr(), replaced, "server started");
            if replaced {
                report.servers_replaced.push(spec.name.clone());
            } else {
                report.servers_added.push(spec.name.clone());
            }
            started.push(Arc::new(server));
        }
        for (server, wanted, more) in resize {
            let before = server.listening_sockets();
            let more = listen_all(more, server.name(), &mut report);
            if server.add_sockets(more).is_err() {
                continue;
            }
            server.retire_sockets(wanted);
            tracing::info!(server = %server.name(), before, after = server.listening_sockets(), "accept loops changed");
        }
        {
            let mut servers = self.write_servers();
            servers.retain(|s| !stopping.iter().any(|x| Arc::ptr_eq(x, s)));
            servers.extend(started);
        }
        let deadline = recorded.drain_timeout;
        *self.write_config() = recorded;
        let mut drains = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        drains.retain(|d| !d.is_finished());
        for server in stopping {
            // A replaced server's pool is already out of service: its successor's took the name.
            self.registry.retire(server.pool());
            if !plan.replaced.iter().any(|n| n == server.name()) {
                report.servers_removed.push(server.name().to_owned());
            }
            tracing::info!(server = %server.name(), "server stopped; draining");
            let registry = self.registry.clone();
            // The others go on serving while this one drains; its pool stays listed in the
            // metrics until it is empty, unless a new pool has its name.
            drains.push(tokio::spawn(async move {
                let report = server.drain(deadline).await;
                registry.release(server.pool());
                tracing::info!(server = %server.name(), polite = report.closed_politely, forced = report.forced, "stopped server drained");
            }));
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
        let mut draining = JoinSet::new();
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
        // Servers a reload stopped finish their own drain, begun earlier under its deadline.
        let stopped = std::mem::take(&mut *self.stopped.lock().unwrap_or_else(|p| p.into_inner()));
        for drain in stopped {
            let _ = drain.await;
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

/// `count` more sockets on `addr`, where a running server listens, bound but not listening;
/// a failure names `server[NAME].accept_loops`.
fn reserve(addr: SocketAddr, count: usize, spec: &ServerSpec) -> Result<Vec<Reserved>, FieldError> {
    (0..count)
        .map(|_| listener::reserve(addr, &spec.pool))
        .collect::<Result<_, _>>()
        .map_err(|e| FieldError {
            field: format!("server[{}].accept_loops", spec.name),
            value: spec.accept_loops.to_string(),
            reason: format!("cannot bind another socket on {addr}: {e}"),
        })
}

/// Starts listening on each of `reserved`; one that cannot is dropped and noted in `report`
/// (the server runs with one accept loop less).
fn listen_all(reserved: Vec<Reserved>, name: &str, report: &mut ReloadReport) -> Vec<Listener> {
    reserved
        .into_iter()
        .filter_map(|r| match r.listen() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(server = %name, error = %e, "an added listening socket could not listen");
                report.not_applied.push(format!(
                    "server {name:?}: an added listening socket could not listen: {e}"
                ));
                None
            }
        })
        .collect()
}

/// A fresh pool for `spec`'s server, not yet in service.
fn new_pool(registry: &PoolRegistry, spec: &ServerSpec) -> Pool<ServerPolicy> {
    let policy = ServerPolicy {
        protocol: spec.protocol,
    };
    registry.create(&spec.name, policy, spec.pool.clone())
}

/// Why `spec`'s address could not be bound, naming `server[NAME].listen`, and which running
/// server holds that port, if one does: only a server this reload stops hands its socket
/// over, and only to a server on exactly its address.
fn bind_error(
    spec: &ServerSpec,
    e: &std::io::Error,
    servers: &[Arc<Server>],
    stopping: &[Arc<Server>],
) -> FieldError {
    let mut reason = format!("cannot listen: {e}");
    let holder = servers
        .iter()
        .find(|s| s.local_addr().port() == spec.listen.port());
    if let Some(holder) = holder {
        let stops = stopping.iter().any(|s| Arc::ptr_eq(s, holder));
        reason.push_str(&match (stops, holder.local_addr() == spec.listen) {
            (true, false) => format!(
                "; server {:?}, which this reload stops, listens on {}: only that exact address is handed over",
                holder.name(),
                holder.local_addr()
            ),
            (true, true) => format!(
                "; the socket of server {:?} goes to another server of this reload",
                holder.name()
            ),
            (false, _) => format!(
                "; server {:?}, which this reload keeps, listens on {}",
                holder.name(),
                holder.local_addr()
            ),
        });
    }
    FieldError {
        field: format!("server[{}].listen", spec.name),
        value: spec.listen.to_string(),
        reason,
    }
}

/// Why `spec`'s server could not be prepared, as the field at fault.
fn server_error(spec: &ServerSpec, e: &ServerError) -> FieldError {
    let (field, value) = match e {
        ServerError::Bind(addr, _) => ("listen", addr.to_string()),
        ServerError::Tls(_) => (
            "tls",
            spec.tls.as_ref().map_or_else(
                || "(self-signed)".to_owned(),
                |files| files.cert.display().to_string(),
            ),
        ),
        ServerError::Registry(_) => ("name", spec.name.clone()),
        ServerError::Services(_) => ("protocol", spec.protocol.as_str().to_owned()),
    };
    FieldError {
        field: format!("server[{}].{field}", spec.name),
        value,
        reason: e.to_string(),
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
