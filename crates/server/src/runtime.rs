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
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use poolserve_pool::{CloseReport, ConfigChange, FieldError, Pool, PoolRegistry};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::{AdminServer, AdminState};
use crate::config::{ReloadError, ReloadReport, RunConfig, ServerSpec, ADMIN_POOL};
use crate::http::{Handler, ResponseBody};
use crate::server::{GrpcServices, Prepared, Server, ServerError, ServerOptions};
use crate::transport::listener::{self, Listener, Reserved};
use crate::transport::policy::ServerPolicy;
use crate::transport::spare_fds::{SpareFdUse, SpareFds};
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
    /// The servers a reload stopped and their drains; shutdown waits for them too. Dropping a
    /// handle leaves its drain running. One still serving out its `drain_delay` can hand its
    /// sockets to a server a later reload starts on its address.
    stopped: std::sync::Mutex<Vec<(Weak<Server>, JoinHandle<()>)>>,
    /// File descriptors the servers keep for the admin endpoint (`admin.spare_fds`).
    spares: Arc<SpareFds>,
}

/// Where the sockets of a server a reload starts come from.
enum Socket {
    /// Bound while preparing.
    Bound(Vec<Listener>),
    /// Handed over at commit by the stopping server on the same address, with the sockets
    /// bound while preparing for the accept loops it has fewer of.
    HandedOver(Arc<Server>, Vec<Reserved>),
}

/// A listening socket handed from one process to another (a binary upgrade), with the name
/// of the server it belongs to ([`ADMIN_POOL`] for the admin endpoint).
#[derive(Debug)]
pub struct ListeningSocket {
    /// The server's name.
    pub name: String,
    /// The socket, listening.
    pub socket: std::net::TcpListener,
}

/// Sockets a process was handed, taken one server at a time.
struct Inherited {
    sockets: Vec<(String, Listener)>,
}

impl Inherited {
    /// Takes `sockets`, dropping (and logging) any that does not listen.
    fn new(sockets: Vec<ListeningSocket>) -> Inherited {
        let sockets = sockets
            .into_iter()
            .filter_map(|s| match Listener::from_std(s.socket) {
                Ok(listener) => Some((s.name, listener)),
                Err(e) => {
                    tracing::warn!(server = %s.name, error = %e, "a handed-over socket is not usable: closed");
                    None
                }
            })
            .collect();
        Inherited { sockets }
    }

    /// `wanted` listening sockets for server `name` on `listen`: the handed-over sockets of
    /// its name on its address (any port when `listen`'s is 0) or else on exactly its address,
    /// plus new ones bound to reach `wanted`, not yet listening (they would join the handed-over
    /// sockets' group and take connections before this process is ready). More than `wanted`
    /// are returned when more were handed over: the server retires the extra ones once it runs.
    async fn take(
        &mut self,
        name: &str,
        listen: SocketAddr,
        wanted: usize,
        config: &poolserve_pool::PoolConfig,
    ) -> Result<(Vec<Listener>, Vec<Reserved>), ServerError> {
        let same_place =
            |addr: SocketAddr| addr == listen || (listen.port() == 0 && addr.ip() == listen.ip());
        let mut taken = Vec::new();
        let mut by_name = true;
        for pass in [true, false] {
            let mut i = 0;
            while i < self.sockets.len() {
                let (n, l) = &self.sockets[i];
                let fits = if pass {
                    n == name && same_place(l.local_addr())
                } else {
                    listen.port() != 0 && l.local_addr() == listen
                };
                if fits {
                    taken.push(self.sockets.remove(i).1);
                } else {
                    i += 1;
                }
            }
            if !taken.is_empty() {
                by_name = pass;
                break;
            }
        }
        let Some(first) = taken.first() else {
            // A fresh address: nobody else listens there, so listening now takes nothing away.
            return listener::bind(listen, wanted, config)
                .await
                .map(|bound| (bound, Vec::new()))
                .map_err(|e| ServerError::Bind(listen, e));
        };
        let addr = first.local_addr();
        tracing::info!(server = %name, %addr, sockets = taken.len(), by_name, "listening sockets handed over");
        let mut more = Vec::new();
        while taken.len() + more.len() < wanted {
            more.push(listener::reserve(addr, config).map_err(|e| ServerError::Bind(addr, e))?);
        }
        Ok((taken, more))
    }

    /// The sockets no server took, by name and address.
    fn unused(self) -> Vec<(String, SocketAddr)> {
        self.sockets
            .into_iter()
            .map(|(name, l)| (name, l.local_addr()))
            .collect()
    }
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
        Runtime::start_with_sockets(config, service, grpc, Vec::new()).await
    }

    /// Like [`Runtime::start_with_grpc`], on listening sockets another process handed over
    /// (a binary upgrade; see [`Runtime::listening_sockets`]): a server (or the admin
    /// endpoint, [`ADMIN_POOL`]) takes the sockets of its name on its address (any port, when
    /// it listens on port 0), or else those on exactly its address; it binds what it lacks
    /// and retires what it has too many of. Sockets nothing takes are closed here.
    ///
    /// Everything that can fail (a certificate, an address to bind) is done before any server
    /// accepts, so a start that fails has accepted no connection.
    pub async fn start_with_sockets<S, B>(
        config: &RunConfig,
        service: S,
        grpc: GrpcServices,
        sockets: Vec<ListeningSocket>,
    ) -> Result<Runtime, StartError>
    where
        S: Handler<B>,
        B: ResponseBody,
    {
        let registry = Arc::new(PoolRegistry::new());
        // A Mutex makes the service shareable without asking it to be `Sync`.
        let service = std::sync::Mutex::new(service);
        let preparer: Preparer = Arc::new(move |pool, options| {
            let service = service.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Server::prepare_for_protocol(pool, options, service, grpc.clone())
        });
        let spares = Arc::new(SpareFds::new(config.admin_spare_fds));
        let keep = SpareFdUse::Keep(spares.clone());
        let mut inherited = Inherited::new(sockets);
        let mut prepared = Vec::new();
        for spec in &config.servers {
            let fail = |e| StartError::Server(spec.name.clone(), e);
            let tls = match &spec.tls {
                Some(files) => Some(
                    PemPair::from_files(files)
                        .map_err(|e| fail(ServerError::Tls(e.to_string())))?,
                ),
                None => None,
            };
            let wanted = spec.accept_loops.resolve();
            let (listeners, more) = inherited
                .take(&spec.name, spec.listen, wanted, &spec.pool)
                .await
                .map_err(fail)?;
            let server = preparer(new_pool(&registry, spec), options(spec, tls))
                .map_err(fail)?
                .with_spare_fds(keep.clone());
            prepared.push((server, listeners, more, wanted));
        }
        let servers = Arc::new(RwLock::new(Vec::new()));
        let draining = Arc::new(AtomicBool::new(false));
        let running = Arc::new(RwLock::new(config.clone()));
        for w in config.warnings() {
            tracing::warn!(field = %w.field, value = %w.value, reason = %w.reason, "config warning");
        }
        // One socket is wanted, so none is reserved beside it.
        let (admin_sockets, _) = inherited
            .take(ADMIN_POOL, config.admin_listen, 1, &config.admin_pool)
            .await
            .map_err(StartError::Admin)?;
        let admin = AdminServer::prepare(
            admin_sockets,
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
            spares.clone(),
        )
        .map_err(StartError::Admin)?;
        for unused in inherited.unused() {
            tracing::info!(server = %unused.0, addr = %unused.1, "a handed-over socket no server of the config takes: closed here");
        }

        // Nothing has accepted yet; from here on nothing fails.
        for ((server, mut listeners, more, wanted), spec) in
            prepared.into_iter().zip(&config.servers)
        {
            for reserved in more {
                match reserved.listen() {
                    Ok(l) => listeners.push(l),
                    Err(e) => {
                        tracing::error!(server = %spec.name, error = %e, "an added listening socket could not listen");
                    }
                }
            }
            let server = server.start(&registry, listeners);
            server.retire_sockets(wanted);
            servers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::new(server));
        }
        let admin = admin.start();
        Ok(Runtime {
            registry,
            servers,
            preparer,
            admin,
            draining,
            config: running,
            reloading: tokio::sync::Mutex::new(()),
            stopped: std::sync::Mutex::new(Vec::new()),
            spares,
        })
    }

    /// A duplicate of every listening socket of the servers and the admin endpoint, named by
    /// server ([`ADMIN_POOL`] for the admin endpoint), for another process to start on with
    /// [`Runtime::start_with_sockets`] (a binary upgrade). The sockets stay open, and this
    /// process goes on accepting, until [`Runtime::drain_handed_over`] or a shutdown.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<ListeningSocket>> {
        let mut sockets = Vec::new();
        for server in self.servers() {
            for socket in server.duplicate_sockets()? {
                sockets.push(ListeningSocket {
                    name: server.name().to_owned(),
                    socket,
                });
            }
        }
        for socket in self.admin.duplicate_sockets()? {
            sockets.push(ListeningSocket {
                name: ADMIN_POOL.to_owned(),
                socket,
            });
        }
        Ok(sockets)
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
                Ok(prepared) => {
                    let prepared = prepared.with_spare_fds(SpareFdUse::Keep(self.spares.clone()));
                    ready.push((spec, prepared, socket));
                }
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
            // One that handed its sockets over has stopped accepting already, and drains at once.
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
        self.drain(false).await
    }

    /// The shutdown of a process whose listening sockets another process took over (a binary
    /// upgrade, [`Runtime::listening_sockets`]): every server and the admin endpoint stop
    /// accepting at once, leaving every new connection, probes included, to the other
    /// process, while the connections open here drain within the configured deadline.
    pub async fn drain_handed_over(self) -> Vec<(String, CloseReport)> {
        self.admin.stop_accepting().await;
        for server in self.servers() {
            drop(server.hand_over().await);
        }
        self.drain(true).await
    }

    /// Drains every server, then the admin endpoint in what is left of the deadline, or both
    /// at once when `admin_too`.
    async fn drain(self, admin_too: bool) -> Vec<(String, CloseReport)> {
        self.draining.store(true, Ordering::Relaxed);
        let (deadline, delay) = {
            let config = self.config.read().unwrap_or_else(|p| p.into_inner());
            (config.drain_timeout, config.drain_delay)
        };
        // A process whose sockets another took over has nothing to keep serving for.
        let delay = if admin_too { Duration::ZERO } else { delay };
        tracing::info!(?deadline, ?delay, "shutting down");
        // The deadline runs from the end of the delay, when the listeners close.
        let started = tokio::time::Instant::now() + delay;
        let mut draining = JoinSet::new();
        // Listed (in `/config`, `/stats`) until they have drained: they serve on meanwhile.
        let listed = self.servers.clone();
        for server in self.servers() {
            let name = server.name().to_owned();
            draining.spawn(async move { (name, server.drain_after(delay, deadline).await) });
        }
        let stopped = std::mem::take(&mut *self.stopped.lock().unwrap_or_else(|p| p.into_inner()));
        let servers_drained = async move {
            let mut reports = Vec::new();
            while let Some(done) = draining.join_next().await {
                if let Ok(report) = done {
                    reports.push(report);
                }
            }
            // Servers a reload stopped finish their own drain, begun earlier under its deadline.
            for (_, drain) in stopped {
                let _ = drain.await;
            }
            reports
        };
        let (mut reports, admin) = if admin_too {
            tokio::join!(servers_drained, self.admin.shutdown(deadline))
        } else {
            let reports = servers_drained.await;
            let left = deadline
                .saturating_sub(tokio::time::Instant::now().saturating_duration_since(started));
            (reports, self.admin.shutdown(left).await)
        };
        listed.write().unwrap_or_else(|p| p.into_inner()).clear();
        reports.push((ADMIN_POOL.to_owned(), admin));
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
