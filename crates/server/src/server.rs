//! A listening server: one socket, one protocol, one pool; and the single dispatch from a
//! protocol (and the ALPN its TLS handshake negotiated) to the code that speaks it.

use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poolserve_pool::{ConnectionGuard, Pool, PoolConfig, PoolRegistry};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::http::{Handler, PlainHttp, RequestRules, ResponseBody};
use crate::proto::grpc::{self, GrpcCall, GrpcRules, GrpcServices};
use crate::proto::{http1, http2, ws};
use crate::protocol::{Protocol, Wire};
use crate::transport::listener::{self, Io, Launch, Negotiated, ServeConnection};
use crate::transport::policy::ServerPolicy;
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
    /// Taken by the first shutdown.
    accept: std::sync::Mutex<Option<JoinHandle<()>>>,
    cert: Option<Arc<ServerCert>>,
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
        if options.protocol == Protocol::Grpc {
            return Err(ServerError::Services(
                "a grpc server takes GrpcServices (Server::start_grpc)".into(),
            ));
        }
        let protocol = options.protocol;
        Server::start_with(registry, options, |_| {
            Ok(Dispatch::<_, _, PlainHttp>::new(
                protocol,
                service,
                http2::keep_alive_interval,
            ))
        })
        .await
    }

    /// Binds a `grpc` listener and starts accepting, with `services` (plus health and
    /// reflection) answering every call under the pool's gRPC rules.
    pub async fn start_grpc(
        registry: &PoolRegistry,
        options: ServerOptions,
        services: GrpcServices,
    ) -> Result<Server, ServerError> {
        if options.protocol != Protocol::Grpc {
            return Err(ServerError::Services(format!(
                "gRPC services need a grpc server, not {}",
                options.protocol.as_str()
            )));
        }
        Server::start_with(registry, options, |pool| {
            let routes = services.into_routes(pool).map_err(ServerError::Services)?;
            Ok(Dispatch::<_, _, GrpcRules>::new(
                Protocol::Grpc,
                GrpcCall::new(routes, pool.clone()),
                grpc::keep_alive_interval,
            ))
        })
        .await
    }

    /// Binds, creates the pool, builds the dispatch for it and starts accepting.
    async fn start_with<H: ServeConnection>(
        registry: &PoolRegistry,
        options: ServerOptions,
        make_dispatch: impl FnOnce(&Pool<ServerPolicy>) -> Result<H, ServerError>,
    ) -> Result<Server, ServerError> {
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
        let listener = listener::bind(options.listen, &options.pool)
            .await
            .map_err(|e| ServerError::Bind(options.listen, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ServerError::Bind(options.listen, e))?;
        let pool = registry
            .get_or_create(
                &options.name,
                ServerPolicy { protocol },
                options.pool.clone(),
            )
            .map_err(|e| ServerError::Registry(e.to_string()))?;
        pool.spawn_health_monitor();
        let dispatch = make_dispatch(&pool)?;
        tracing::info!(server = %options.name, protocol = protocol.as_str(), %local_addr, "listening");
        let refusal = protocol.refusal(tls.is_some());
        let accept = tokio::spawn(listener::accept_loop(
            listener,
            pool.clone(),
            tls,
            refusal,
            dispatch,
            options.name.clone(),
        ));
        Ok(Server {
            name: options.name,
            protocol,
            local_addr,
            pool,
            accept: std::sync::Mutex::new(Some(accept)),
            cert,
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

    /// Stops accepting and drains the pool within `deadline`; see [`Pool::close_all`].
    pub async fn shutdown(self, deadline: Duration) -> poolserve_pool::CloseReport {
        self.drain(deadline).await
    }

    /// [`Server::shutdown`] for a server that is shared: stops accepting and drains the pool
    /// within `deadline`. A second call only waits for the pool.
    pub async fn drain(&self, deadline: Duration) -> poolserve_pool::CloseReport {
        let report = self.pool.close_all(deadline).await;
        let accept = self.accept.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(accept) = accept {
            let _ = accept.await;
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
            Wire::Http1 => launch.launch(async move {
                http1::serve::<_, _, _, R>(guard, io, service, &config).await
            }),
            Wire::Http2 => launch.launch(async move {
                http2::serve::<_, _, _, R>(guard, io, service, &config, h2_keep_alive).await
            }),
            Wire::WebSocket => launch.launch(ws::serve(guard, io, config)),
        }
    }
}
