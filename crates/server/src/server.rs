//! A listening server: one socket, one protocol, one pool; and the single dispatch from a
//! protocol (and the ALPN its TLS handshake negotiated) to the code that speaks it.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use poolserve_pool::{ConnectionGuard, Pool, PoolConfig, PoolRegistry};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::http::{Handler, PlainHttp, RequestRules, ResponseBody};
/// The gRPC services a `grpc` server answers with, for the layers above that hand them over.
pub use crate::proto::grpc::GrpcServices;
use crate::proto::grpc::{self, GrpcCall, GrpcRules};
use crate::proto::{http1, http2, ws};
use crate::protocol::{Protocol, Wire};
use crate::transport::listener::{
    self, Io, Launch, Listener, LoopControl, Negotiated, ServeConnection,
};
use crate::transport::policy::ServerPolicy;
use crate::transport::spare_fds::SpareFdUse;
use crate::transport::tls::{PemPair, ServerCert, TlsError};

/// Everything needed to start one server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Unique name; labels metrics and events.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Certificate and key for TLS protocols.
    pub tls: Option<PemPair>,
    /// Pool settings.
    pub pool: PoolConfig,
}

/// Why a server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// The address could not be bound.
    Bind(SocketAddr, io::Error),
    /// TLS could not be set up.
    Tls(String),
    /// The pool name is taken by another protocol.
    Registry(String),
    /// The services cannot run on this server.
    Services(String),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::Tls(e) => write!(f, "TLS: {e}"),
            ServerError::Registry(e) => f.write_str(e),
            ServerError::Services(e) => write!(f, "services: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// A running server.
#[derive(Debug)]
pub struct Server {
    name: String,
    protocol: Protocol,
    local_addr: SocketAddr,
    pool: Pool<ServerPolicy>,
    /// Taken by the first shutdown or hand-over.
    accept: std::sync::Mutex<Option<Accepting>>,
    /// Notified when the listening sockets are handed over, which ends a `drain_delay`.
    handed_over: Notify,
    cert: Option<Arc<ServerCert>>,
}

/// A server's accept loops, one per listening socket, and how to start more.
struct Accepting {
    loops: Vec<AcceptLoop>,
    start: StartAccepting,
    /// The spare descriptors each loop keeps or spends.
    spares: SpareFdUse,
}

impl std::fmt::Debug for Accepting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepting")
            .field("loops", &self.loops)
            .finish_non_exhaustive()
    }
}

/// One accept loop: it gives its listening socket back, still open, when handed over.
#[derive(Debug)]
struct AcceptLoop {
    task: JoinHandle<Option<Listener>>,
    control: Arc<LoopControl>,
    /// The loop's socket, open while the loop runs.
    socket: Weak<TcpListener>,
}

/// A task that runs beside a server's accept loop for as long as the server serves.
type Companion = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts one of a prepared server's accept loops on a listener.
type StartAccepting =
    Box<dyn Fn(Listener, Arc<LoopControl>, SpareFdUse) -> JoinHandle<Option<Listener>> + Send>;

/// A server built but not yet accepting: its TLS loaded, its pool and dispatch made. Nothing
/// of it runs and the registry does not list its pool until [`Prepared::start`], so dropping it
/// leaves no trace: what a reload can refuse is prepared first.
pub(crate) struct Prepared {
    name: String,
    protocol: Protocol,
    pool: Pool<ServerPolicy>,
    cert: Option<Arc<ServerCert>>,
    accept: StartAccepting,
    companion: Option<Companion>,
    spares: SpareFdUse,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// Gives this server's accept loops a runtime's spare descriptors to keep (a server's) or
    /// to spend while the process is out of them (the admin endpoint's).
    pub(crate) fn with_spare_fds(mut self, spares: SpareFdUse) -> Self {
        self.spares = spares;
        self
    }

    /// Puts the pool in service in `registry` (retiring another pool of the same name) and
    /// starts an accept loop on each of `listeners` (at least one, all on the same address).
    pub(crate) fn start(self, registry: &PoolRegistry, listeners: Vec<Listener>) -> Server {
        // Every caller passes at least one listener; without one the server would not listen,
        // and its address is not known.
        let local_addr = listeners
            .first()
            .map(Listener::local_addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        registry.insert(&self.pool);
        self.pool.spawn_health_monitor();
        if let Some(companion) = self.companion {
            tokio::spawn(companion);
        }
        let sockets = listeners.len();
        tracing::info!(server = %self.name, protocol = self.protocol.as_str(), %local_addr, sockets, "listening");
        let loops = listeners
            .into_iter()
            .map(|l| start_loop(&self.accept, l, &self.spares))
            .collect();
        Server {
            name: self.name,
            protocol: self.protocol,
            local_addr,
            pool: self.pool,
            accept: std::sync::Mutex::new(Some(Accepting {
                loops,
                start: self.accept,
                spares: self.spares,
            })),
            handed_over: Notify::new(),
            cert: self.cert,
        }
    }
}

fn start_loop(start: &StartAccepting, listener: Listener, spares: &SpareFdUse) -> AcceptLoop {
    let control = Arc::new(LoopControl::default());
    let socket = listener.socket();
    let task = start(listener, control.clone(), spares.clone());
    AcceptLoop {
        task,
        control,
        socket,
    }
}

impl Server {
    /// Binds the listener and starts accepting, with `service` answering every request.
    ///
    /// The socket is bound and TLS is ready before this returns, so a server is warm as soon
    /// as it exists. `grpc` servers start with [`Server::start_grpc`].
    pub async fn start<S, B>(
        registry: &PoolRegistry,
        options: ServerOptions,
        service: S,
    ) -> Result<Server, ServerError>
    where
        S: Handler<B>,
        B: ResponseBody,
    {
        let (listeners, pool) = Server::bind_and_pool(registry, &options).await?;
        let prepared = Server::prepare(pool, options, service)?;
        Ok(prepared.start(registry, listeners))
    }

    /// Binds a `grpc` listener and starts accepting, with `services` (plus health and
    /// reflection) answering every call under the pool's gRPC rules.
    pub async fn start_grpc(
        registry: &PoolRegistry,
        options: ServerOptions,
        services: GrpcServices,
    ) -> Result<Server, ServerError> {
        let (listeners, pool) = Server::bind_and_pool(registry, &options).await?;
        let prepared = Server::prepare_grpc(pool, options, services)?;
        Ok(prepared.start(registry, listeners))
    }

    /// Binds `options.listen` and takes the pool in service under the server's name (made if
    /// there is none).
    async fn bind_and_pool(
        registry: &PoolRegistry,
        options: &ServerOptions,
    ) -> Result<(Vec<Listener>, Pool<ServerPolicy>), ServerError> {
        let listeners = listener::bind(options.listen, 1, &options.pool)
            .await
            .map_err(|e| ServerError::Bind(options.listen, e))?;
        let pool = registry
            .get_or_create(
                &options.name,
                ServerPolicy {
                    protocol: options.protocol,
                },
                options.pool.clone(),
            )
            .map_err(|e| ServerError::Registry(e.to_string()))?;
        Ok((listeners, pool))
    }

    /// Prepares a server of `pool` for whatever protocol `options` names: `grpc` with
    /// `services`, every other with `service`; see [`Prepared`].
    pub(crate) fn prepare_for_protocol<S, B>(
        pool: Pool<ServerPolicy>,
        options: ServerOptions,
        service: S,
        services: GrpcServices,
    ) -> Result<Prepared, ServerError>
    where
        S: Handler<B>,
        B: ResponseBody,
    {
        match options.protocol {
            Protocol::Grpc => Server::prepare_grpc(pool, options, services),
            _ => Server::prepare(pool, options, service),
        }
    }

    /// Prepares a server of `pool` with `service` answering every request; see [`Prepared`].
    pub(crate) fn prepare<S, B>(
        pool: Pool<ServerPolicy>,
        options: ServerOptions,
        service: S,
    ) -> Result<Prepared, ServerError>
    where
        S: Handler<B>,
        B: ResponseBody,
    {
        if options.protocol == Protocol::Grpc {
            return Err(ServerError::Services(
                "a grpc server takes GrpcServices (Server::start_grpc)".into(),
            ));
        }
        let protocol = options.protocol;
        Server::prepare_with(pool, options, |_| {
            let dispatch =
                Dispatch::<_, _, PlainHttp>::new(protocol, service, http2::keep_alive_interval);
            Ok((dispatch, None))
        })
    }

    /// Prepares a `grpc` server of `pool` with `services` (plus health and reflection)
    /// answering every call under the pool's gRPC rules; see [`Prepared`].
    pub(crate) fn prepare_grpc(
        pool: Pool<ServerPolicy>,
        options: ServerOptions,
        services: GrpcServices,
    ) -> Result<Prepared, ServerError> {
        if options.protocol != Protocol::Grpc {
            return Err(ServerError::Services(format!(
                "gRPC services need a grpc server, not {}",
                options.protocol.as_str()
            )));
        }
        Server::prepare_with(pool, options, |pool| {
            let (routes, follow) = services.into_routes(pool).map_err(ServerError::Services)?;
            let dispatch = Dispatch::<_, _, GrpcRules>::new(
                Protocol::Grpc,
                GrpcCall::new(routes, pool.clone()),
                grpc::keep_alive_interval,
            );
            Ok((dispatch, Some(Box::pin(follow) as Companion)))
        })
    }

    /// Loads TLS and builds the dispatch for `pool`, starting nothing.
    fn prepare_with<H: ServeConnection>(
        pool: Pool<ServerPolicy>,
        options: ServerOptions,
        make_dispatch: impl FnOnce(&Pool<ServerPolicy>) -> Result<(H, Option<Companion>), ServerError>,
    ) -> Result<Prepared, ServerError> {
        let protocol = options.protocol;
        let tls_error = |e: TlsError| ServerError::Tls(e.to_string());
        let pem = match options.tls {
            Some(pem) if protocol.accepts_tls() => Some(pem),
            None if protocol.is_tls() => Some(PemPair::self_signed().map_err(tls_error)?),
            _ => None,
        };
        let cert = pem
            .as_ref()
            .map(ServerCert::new)
            .transpose()
            .map_err(tls_error)?;
        let tls = cert
            .as_ref()
            .map(|c| c.server_config(&protocol.alpn_ids()).map(TlsAcceptor::from))
            .transpose()
            .map_err(tls_error)?;
        let (dispatch, companion) = make_dispatch(&pool)?;
        let refusal = protocol.refusal(tls.is_some());
        let name = options.name;
        let accept: StartAccepting = {
            let (pool, name) = (pool.clone(), name.clone());
            Box::new(move |listener, control, spares| {
                tokio::spawn(listener::accept_loop(
                    listener,
                    control,
                    pool.clone(),
                    tls.clone(),
                    refusal,
                    dispatch.clone(),
                    name.clone(),
                    spares,
                ))
            })
        };
        Ok(Prepared {
            name,
            protocol,
            pool,
            cert,
            accept,
            companion,
            spares: SpareFdUse::None,
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's certificate, on a TLS server: replaceable while it runs.
    pub fn certificate(&self) -> Option<&Arc<ServerCert>> {
        self.cert.as_ref()
    }

    /// The server's pool.
    pub fn pool(&self) -> &Pool<ServerPolicy> {
        &self.pool
    }

    /// Whether an accept loop still runs, and so holds a listening socket.
    pub(crate) fn is_accepting(&self) -> bool {
        self.accept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|a| a.loops.iter().any(|l| !l.task.is_finished()))
    }

    /// How many listening sockets the server accepts on, each with its own accept loop.
    pub fn listening_sockets(&self) -> usize {
        self.accept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |a| a.loops.len())
    }

    /// Connections each accept loop has accepted (admitted or refused), in the order of its
    /// listening sockets: how evenly the kernel spreads connections over them.
    pub fn accepted_by_socket(&self) -> Vec<u64> {
        self.accept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or_else(Vec::new, |a| {
                a.loops.iter().map(|l| l.control.accepted()).collect()
            })
    }

    /// A duplicate of each listening socket the server accepts on, for another process to
    /// accept on too (a binary upgrade).
    pub(crate) fn duplicate_sockets(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        let accept = self.accept.lock().unwrap_or_else(|p| p.into_inner());
        let Some(accepting) = accept.as_ref() else {
            return Ok(Vec::new());
        };
        accepting
            .loops
            .iter()
            .filter_map(|l| l.socket.upgrade())
            .map(|socket| listener::duplicate(&socket))
            .collect()
    }

    /// Starts an accept loop on each of `more` (sockets on this server's address). Returns
    /// them when the server no longer accepts.
    pub(crate) fn add_sockets(&self, more: Vec<Listener>) -> Result<(), Vec<Listener>> {
        let mut accept = self.accept.lock().unwrap_or_else(|p| p.into_inner());
        let Some(accepting) = accept.as_mut() else {
            return Err(more);
        };
        for listener in more {
            let started = start_loop(&accepting.start, listener, &accepting.spares);
            accepting.loops.push(started);
        }
        Ok(())
    }

    /// Retires all but `keep` (at least one) of the accept loops, the last started first: each
    /// accepts what is queued in its socket, then closes it.
    pub(crate) fn retire_sockets(&self, keep: usize) {
        let mut accept = self.accept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(accepting) = accept.as_mut() {
            while accepting.loops.len() > keep.max(1) {
                if let Some(retired) = accepting.loops.pop() {
                    retired.control.retire();
                }
            }
        }
    }

    /// Stops accepting and gives back the listening sockets, still open, for the server taking
    /// this one's place on its address: connections waiting in their backlogs go to the new
    /// server, those already accepted go on under this one's pool. Empty when this server no
    /// longer accepts.
    pub(crate) async fn hand_over(&self) -> Vec<Listener> {
        let Some(accepting) = self.accept.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Vec::new();
        };
        for l in &accepting.loops {
            l.control.hand_over();
        }
        let mut handed = Vec::new();
        for l in accepting.loops {
            if let Ok(Some(listener)) = l.task.await {
                handed.push(listener);
            }
        }
        // Only now may a `drain_delay` waiting on this end and the drain begin: were the pool
        // to stop admitting first, a loop still taking a connection would refuse it, or close
        // its socket, though the server taking over serves this address.
        self.handed_over.notify_waiters();
        handed
    }

    /// Stops accepting and drains the pool within `deadline`; see [`Pool::close_all`].
    pub async fn shutdown(self, deadline: Duration) -> poolserve_pool::CloseReport {
        self.drain(deadline).await
    }

    /// [`Server::drain`] after a delay: the pool is announced as leaving ([`Pool::leave`]:
    /// health `unavailable`, gRPC health NOT_SERVING) while the server goes on accepting and
    /// serving as usual for `delay`, so load balancers notice before its listeners close; then
    /// it drains within `deadline`. A server whose sockets are handed over to a server taking
    /// its place, before or during the delay, drains at once: its address is served on.
    pub async fn drain_after(
        &self,
        delay: Duration,
        deadline: Duration,
    ) -> poolserve_pool::CloseReport {
        if !delay.is_zero() {
            // Enabled before the check, so a hand-over after it ends the delay.
            let handed_over = self.handed_over.notified();
            tokio::pin!(handed_over);
            handed_over.as_mut().enable();
            if self.is_accepting() {
                self.pool.leave();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = handed_over => {}
                }
            }
        }
        self.drain(deadline).await
    }

    /// [`Server::shutdown`] for a server that is shared: stops accepting and drains the pool
    /// within `deadline`. A second call only waits for the pool.
    pub async fn drain(&self, deadline: Duration) -> poolserve_pool::CloseReport {
        let report = self.pool.close_all(deadline).await;
        let accept = self.accept.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(accept) = accept {
            for l in accept.loops {
                let _ = l.task.await;
            }
        }
        report
    }
}

/// The single dispatch of one server: its protocol, its handler, the request rules it runs
/// under (`R`: plain HTTP, or gRPC's) and how its HTTP/2 connections choose their keep-alive
/// interval. `B` is the handler's response body.
struct Dispatch<S, B, R> {
    protocol: Protocol,
    service: S,
    h2_keep_alive: fn(&PoolConfig) -> Duration,
    types: PhantomData<fn() -> (B, R)>,
}

impl<S: Clone, B, R> Clone for Dispatch<S, B, R> {
    fn clone(&self) -> Self {
        Dispatch {
            protocol: self.protocol,
            service: self.service.clone(),
            h2_keep_alive: self.h2_keep_alive,
            types: PhantomData,
        }
    }
}

impl<S, B, R> Dispatch<S, B, R> {
    fn new(protocol: Protocol, service: S, h2_keep_alive: fn(&PoolConfig) -> Duration) -> Self {
        Dispatch {
            protocol,
            service,
            h2_keep_alive,
            types: PhantomData,
        }
    }
}

/// The protocol and what the TLS handshake negotiated pick the wire, and the wire picks the
/// code that speaks it. Each arm launches its own future type, so a connection's task is the
/// size of what it runs.
impl<S, B, R> ServeConnection for Dispatch<S, B, R>
where
    S: Handler<B>,
    B: ResponseBody,
    R: RequestRules,
{
    fn serve<IO: Io, L: Launch>(
        self,
        guard: ConnectionGuard<ServerPolicy>,
        io: IO,
        tls: Option<Negotiated<'_>>,
        config: Arc<PoolConfig>,
        launch: L,
    ) -> L::Launched {
        let Dispatch {
            protocol,
            service,
            h2_keep_alive,
            ..
        } = self;
        match protocol.wire(tls.is_some(), tls.and_then(|t| t.alpn)) {
            // Set up in the task that runs it, as before, and held alone there.
            Wire::Http1 => {
                launch.launch_made(move || http1::serve::<_, _, _, R>(guard, io, service, &config))
            }
            Wire::Http2 => launch.launch(async move {
                http2::serve::<_, _, _, R>(guard, io, service, &config, h2_keep_alive).await
            }),
            Wire::WebSocket => launch.launch(ws::serve(guard, io, config)),
        }
    }
}
