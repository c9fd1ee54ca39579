//! A whole poolserve process: its servers, their pools, the admin endpoint, reload and
//! shutdown.
//!
//! A reload applies whole or not at all, in two phases: first everything that can fail is
//! prepared without touching what runs (every server to start gets its socket bound, or is
//! promised the socket of a server it replaces on the same address, its certificate loaded, its
//! pool and dispatch made); if anything fails, what was prepared is dropped and the reload is
//! refused with every failing field. Then it commits: settings and certificates apply, the new
//! servers start (one taking over a stopping server's socket takes it straight from that
//! server's accept loop, so the address always has a listener), and the stopped servers drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};

use poolserve_pool::{CloseReport, ConfigChange, FieldError, Pool, PoolRegistry};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::{AdminServer, AdminState};
use crate::config::{ReloadError, ReloadReport, RunConfig, ServerSpec, ADMIN_POOL};
use crate::http::{Handler, ResponseBody};
use crate::proto::grpc::GrpcServices;
use crate::protocol::Protocol;
use crate::server::{Prepared, Server, ServerError, ServerOptions};
use crate::transport::listener::{self, Listener};
use crate::transport::policy::ServerPolicy;
use crate::transport::spare_fds::{SpareFdUse, SpareFds};
use crate::transport::tls::PemPair;

/// Prepares one server of the runtime on a pool (its HTTP service or gRPC services captured).
type Preparer =
    Arc<dyn Fn(Pool<ServerPolicy>, ServerOptions) -> Result<Prepared, ServerError> + Send + Sync>;

/// Running servers plus the admin endpoint, sharing one pool registry.
pub struct Runtime {
    registry: Arc<PoolRegistry>,
    servers: RwLock<Vec<Arc<Server>>>,
    preparer: Preparer,
    admin: AdminServer,
    draining: Arc<AtomicBool>,
    /// The running config, shared with the admin endpoint's `/config`.
    config: Arc<RwLock<RunConfig>>,
    /// Held by a reload from its plan to its last change, so reloads never interleave.
    reloading: tokio::sync::Mutex<()>,
    /// The servers a reload stopped and their drains; shutdown waits for them too. Dropping a
    /// handle leaves its drain running. One still serving out its `drain_delay` can hand its
    /// socket to a server a later reload starts on its address.
    stopped: std::sync::Mutex<Vec<(Weak<Server>, JoinHandle<()>)>>,
    /// File descriptors the servers keep for the admin endpoint (`admin.spare_fds`).
    spares: Arc<SpareFds>,
}

/// Where the socket of a server a reload starts comes from.
enum Socket {
    /// Bound while preparing.
    Bound(Listener),
    /// Handed over at commit by the stopping server on the same address.
    HandedOver(Arc<Server>),
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
        let spares = Arc::new(SpareFds::new(config.admin_spare_fds));
        let keep = SpareFdUse::Keep(spares.clone());
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
            let listener = listener::bind(spec.listen, &spec.pool)
                .await
                .map_err(|e| fail(ServerError::Bind(spec.listen, e)))?;
            let prepared = preparer(new_pool(&registry, spec), options(spec, tls)).map_err(fail)?;
            let prepared = prepared.with_spare_fds(keep.clone());
            servers.push(Arc::new(prepared.start(&registry, listener)));
        }
        let draining = Arc::new(AtomicBool::new(false));
        let running = Arc::new(RwLock::new(config.clone()));
        for w in config.warnings() {
            tracing::warn!(field = %w.field, value = %w.value, reason = %w.reason, "config warning");
        }
        let admin = AdminServer::start_with_spares(
            config.admin_listen,
            config.admin_pool.clone(),
            AdminState {
                registry: registry.clone(),
                draining: draining.clone(),
                token: config.admin_token.as_deref().map(Arc::from),
                probes_need_token: config.admin_probes_need_token,
                config: running.clone(),
            },
            spares.clone(),
        )
        .await
        .map_err(StartError::Admin)?;
        Ok(Runtime {
            registry,
            servers: RwLock::new(servers),
            preparer,
            admin,
            draining,
            config: running,
            reloading: tokio::sync::Mutex::new(()),
            stopped: std::sync::Mutex::new(Vec::new()),
            spares,
        })
    }

    /// Applies a new config live, whole or not at all: every server's pool settings and the
    /// drain deadline, a new certificate found in a server's certificate files, servers added
    /// (started), removed (drained while the others serve) and replaced (a server whose
    /// protocol, address or certificate files changed: a new server with a fresh pool starts
    /// under its name, and the old one drains). A server started on the address of a server the
    /// same reload stops takes over that server's listening socket. Anything refused (a
    /// setting, a certificate, an address that cannot be bound) changes nothing and is named
    /// in the error. The admin endpoint and logging are reported, not applied.
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
        // Servers an earlier reload stopped that still accept, serving out their drain_delay.
        let leaving: Vec<Arc<Server>> = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, drain)| !drain.is_finished())
            .filter_map(|(server, _)| server.upgrade())
            .filter(|server| server.is_accepting())
            .collect();
        let mut promised: Vec<&Arc<Server>> = Vec::new();
        let mut ready = Vec::new();
        for (spec, tls) in std::mem::take(&mut plan.start) {
            let giver = stopping.iter().chain(&leaving).find(|s| {
                s.local_addr() == spec.listen
                    && s.is_accepting()
                    && !promised.iter().any(|p| Arc::ptr_eq(p, s))
            });
            let socket = match giver {
                Some(giver) => {
                    promised.push(giver);
                    Socket::HandedOver(giver.clone())
                }
                None => match listener::bind(spec.listen, &spec.pool).await {
                    Ok(bound) => Socket::Bound(bound),
                    Err(e) => {
                        errors.push(bind_error(&spec, &e, &servers, &stopping));
                        continue;
                    }
                },
            };
            match (self.preparer)(new_pool(&self.registry, &spec), options(&spec, tls)) {
                Ok(prepared) => {
                    let prepared = prepared.with_spare_fds(SpareFdUse::Keep(self.spares.clone()));
                    ready.push((spec, prepared, socket));
                }
                Err(e) => errors.push(server_error(&spec, &e)),
            }
        }
        if !errors.is_empty() {
            // Dropping what was prepared closes the sockets it bound; nothing of it ran.
            return Err(ReloadError(errors));
        }

        // Phase two: commit.
        let mut report = plan.apply_settings();
        if next.admin_spare_fds != running.admin_spare_fds {
            self.spares.set_target(next.admin_spare_fds);
            let change = ConfigChange {
                field: "spare_fds".into(),
                old: running.admin_spare_fds.to_string(),
                new: next.admin_spare_fds.to_string(),
            };
            tracing::info!(field = "admin.spare_fds", old = %change.old, new = %change.new, "admin config changed");
            match report
                .changed
                .iter_mut()
                .find(|(name, _)| name == ADMIN_POOL)
            {
                Some((_, changes)) => changes.push(change),
                None => report.changed.push((ADMIN_POOL.to_owned(), vec![change])),
            }
        }
        let mut recorded = crate::config::recorded_after_reload(&running, next);
        let mut started = Vec::new();
        for (spec, prepared, socket) in ready {
            let listener = match socket {
                Socket::Bound(bound) => bound,
                Socket::HandedOver(giver) => match giver.hand_over().await {
                    Some(handed) => handed,
                    // The giver stopped accepting since it was planned (its pool was closed
                    // from outside the runtime), which also freed the address.
                    None => match listener::bind(spec.listen, &spec.pool).await {
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
                    },
                },
            };
            let server = prepared.start(&self.registry, listener);
            let replaced = plan.replaced.contains(&spec.name);
            tracing::info!(server = %spec.name, protocol = spec.protocol.as_str(), addr = %server.local_addr(), replaced, "server started");
            if replaced {
                report.servers_replaced.push(spec.name.clone());
            } else {
                report.servers_added.push(spec.name.clone());
            }
            started.push(Arc::new(server));
        }
        {
            let mut servers = self.write_servers();
            servers.retain(|s| !stopping.iter().any(|x| Arc::ptr_eq(x, s)));
            servers.extend(started);
        }
        let (deadline, delay) = (recorded.drain_timeout, recorded.drain_delay);
        *self.write_config() = recorded;
        let mut drains = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        drains.retain(|(_, d)| !d.is_finished());
        for server in stopping {
            // A replaced server's pool is already out of service: its successor's took the name.
            self.registry.retire(server.pool());
            if !plan.replaced.iter().any(|n| n == server.name()) {
                report.servers_removed.push(server.name().to_owned());
            }
            // One that handed its socket over has stopped accepting already, and drains at once.
            if server.is_accepting() && !delay.is_zero() {
                tracing::info!(server = %server.name(), ?delay, "server stopped; serving on, announced as leaving, before its drain");
            } else {
                tracing::info!(server = %server.name(), "server stopped; draining");
            }
            let registry = self.registry.clone();
            let draining = server.clone();
            // The others go on serving while this one drains; its pool stays listed in the
            // metrics until it is empty, unless a new pool has its name.
            let drain = tokio::spawn(async move {
                let report = draining.drain_after(delay, deadline).await;
                registry.release(draining.pool());
                tracing::info!(server = %draining.name(), polite = report.closed_politely, forced = report.forced, "stopped server drained");
            });
            drains.push((Arc::downgrade(&server), drain));
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

    /// Graceful shutdown: readiness turns 503 and gRPC health NOT_SERVING; every server goes
    /// on accepting and serving for the configured `drain_delay` (so load balancers notice),
    /// then stops accepting and drains within the configured deadline (the rest are closed at
    /// once); then the admin endpoint, which answered probes meanwhile, drains in what is left
    /// of the same deadline. One report per pool, the admin endpoint's included.
    pub async fn shutdown(self) -> Vec<(String, CloseReport)> {
        self.draining.store(true, Ordering::Relaxed);
        let (deadline, delay) = {
            let config = self.config.read().unwrap_or_else(|p| p.into_inner());
            (config.drain_timeout, config.drain_delay)
        };
        tracing::info!(?deadline, ?delay, "shutting down");
        // The deadline runs from the end of the delay, when the listeners close.
        let started = tokio::time::Instant::now() + delay;
        let mut draining = JoinSet::new();
        let servers = std::mem::take(&mut *self.write_servers());
        for server in servers {
            let name = server.name().to_owned();
            draining.spawn(async move { (name, server.drain_after(delay, deadline).await) });
        }
        let mut reports = Vec::new();
        while let Some(done) = draining.join_next().await {
            if let Ok(report) = done {
                reports.push(report);
            }
        }
        // Servers a reload stopped finish their own drain, begun earlier under its deadline.
        let stopped = std::mem::take(&mut *self.stopped.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, drain) in stopped {
            let _ = drain.await;
        }
        let left =
            deadline.saturating_sub(tokio::time::Instant::now().saturating_duration_since(started));
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
