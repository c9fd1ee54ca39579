//! A listening server: one socket, one protocol, one pool.
//!
//! Data flows one way: accept → admit (or refuse before any handshake) → TLS handshake →
//! HTTP → the guard's drop. The accept loop stops when the pool starts draining, closing the
//! listening socket so new connections go to other instances instead of queueing here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use poolserve_pool::{CloseReason, Pool, PoolConfig, PoolRegistry, Stage};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::grpc::{GrpcCall, GrpcServices};
use crate::http1;
use crate::policy::ServerPolicy;
use crate::reject::Refuser;
use crate::tls::PemPair;

/// The protocols this build serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 over TCP.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// WebSocket over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
    /// HTTP/2: h2c with prior knowledge, or h2 over TLS (ALPN, with HTTP/1.1 as the fallback)
    /// when a certificate is configured.
    Http2,
    /// gRPC on HTTP/2: in the clear (prior knowledge), or over TLS (ALPN `h2`) when a
    /// certificate is configured.
    Grpc,
}

impl Protocol {
    /// The label used in config, metrics and events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }

    /// Whether the protocol always runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Protocol::Https | Protocol::Wss)
    }

    /// Whether the protocol can run over TLS (always, or when a certificate is configured).
    pub fn accepts_tls(&self) -> bool {
        self.is_tls() || self.is_http2()
    }

    /// Whether the protocol speaks HTTP/1 on the wire (before any upgrade), so a refusal can
    /// be an HTTP/1 `503`.
    pub fn speaks_http1(&self) -> bool {
        !self.is_http2()
    }

    /// Whether the protocol runs on HTTP/2 (`http2` and `grpc`).
    pub fn is_http2(&self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether the protocol is WebSocket.
    pub fn is_websocket(&self) -> bool {
        matches!(self, Protocol::Ws | Protocol::Wss)
    }
}

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
    cert: Option<Arc<crate::tls::ServerCert>>,
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
        S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if options.protocol == Protocol::Grpc {
            return Err(ServerError::Services(
                "a grpc server takes GrpcServices (Server::start_grpc)".into(),
            ));
        }
        Server::start_with(registry, options, |_| Ok(service)).await
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
            Ok(GrpcCall::new(routes, pool.clone()))
        })
        .await
    }

    /// Binds, creates the pool, builds the service for it and starts accepting.
    async fn start_with<S, B>(
        registry: &PoolRegistry,
        options: ServerOptions,
        make_service: impl FnOnce(&Pool<ServerPolicy>) -> Result<S, ServerError>,
    ) -> Result<Server, ServerError>
    where
        S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls_error = |e: crate::tls::TlsError| ServerError::Tls(e.to_string());
        let alpn: &[&[u8]] = match options.protocol {
            Protocol::Http2 => &[b"h2", b"http/1.1"],
            // gRPC needs HTTP/2: no HTTP/1.1 fallback to offer.
            Protocol::Grpc => &[b"h2"],
            _ => &[b"http/1.1"],
        };
        let pem = match options.tls {
            Some(pem) if options.protocol.accepts_tls() => Some(pem),
            None if options.protocol.is_tls() => Some(PemPair::self_signed().map_err(tls_error)?),
            _ => None,
        };
        let cert = pem
            .as_ref()
            .map(crate::tls::ServerCert::new)
            .transpose()
            .map_err(tls_error)?;
        let tls = cert
            .as_ref()
            .map(|c| c.server_config(alpn).map(TlsAcceptor::from))
            .transpose()
            .map_err(tls_error)?;
        let listener = bind(options.listen)
            .await
            .map_err(|e| ServerError::Bind(options.listen, e))?;
        let local_addr = listener
            .local_addr()
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
        pool.spawn_health_monitor();
        let service = make_service(&pool)?;
        tracing::info!(server = %options.name, protocol = options.protocol.as_str(), %local_addr, "listening");
        let accept = tokio::spawn(accept_loop(
            listener,
            pool.clone(),
            tls,
            service,
            options.name.clone(),
        ));
        Ok(Server {
            name: options.name,
            protocol: options.protocol,
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
    pub fn certificate(&self) -> Option<&Arc<crate::tls::ServerCert>> {
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

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop<S, B>(
    listener: TcpListener,
    pool: Pool<ServerPolicy>,
    tls: Option<TlsAcceptor>,
    service: S,
    name: String,
) where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let refuser = Refuser::default();
    let mut control = pool.control();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() || control.borrow_and_update().stage != Stage::Serving {
                    break;
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    if is_per_connection_error(&e) {
                        continue;
                    }
                    // Out of file descriptors and the like: back off instead of spinning, the
                    // way hyper's and tokio's accept loops do.
                    tracing::error!(server = %name, error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let guard = match pool.admit(Some(peer)) {
            Ok(guard) => guard,
            Err(_) => {
                // Only a peer speaking HTTP/1 in the clear can read a 503; the others (TLS,
                // HTTP/2) are closed before any handshake or frame.
                if tls.is_none() && pool.policy().protocol.speaks_http1() {
                    refuser.refuse_http(stream);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        spawn_connection(guard, stream, tls.clone(), service.clone(), pool.config());
    }
    tracing::info!(server = %name, "stopped accepting");
}

/// Spawns the task serving one admitted connection. Each protocol gets its own task type, so a
/// connection's task is the size of what it runs: a plain HTTP connection does not carry room
/// for a TLS session or a WebSocket.
fn spawn_connection<S, B>(
    guard: poolserve_pool::ConnectionGuard<ServerPolicy>,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    service: S,
    config: Arc<PoolConfig>,
) where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let protocol = guard_protocol(&guard);
    match tls {
        None if protocol.is_http2() => {
            tokio::spawn(async move { crate::http2::serve(guard, stream, service, &config).await });
        }
        None if protocol.is_websocket() => {
            tokio::spawn(crate::ws::serve(guard, stream, config));
        }
        None => {
            tokio::spawn(async move { http1::serve(guard, stream, service, &config).await });
        }
        Some(acceptor) => {
            tokio::spawn(serve_tls(guard, stream, acceptor, service, config));
        }
    }
}

async fn serve_tls<S, B>(
    mut guard: poolserve_pool::ConnectionGuard<ServerPolicy>,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    service: S,
    config: Arc<PoolConfig>,
) where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let protocol = guard_protocol(&guard);
    // Bytes are counted as the application sees them, after decryption, so the handshake is
    // not wrapped.
    match guard.opening(acceptor.accept(stream)).await {
        // A gRPC server offers only h2, so a client that skipped ALPN still gets HTTP/2.
        Some(Ok(tls_stream))
            if protocol == Protocol::Grpc
                || tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") =>
        {
            Box::pin(crate::http2::serve(guard, tls_stream, service, &config)).await;
        }
        Some(Ok(tls_stream)) if protocol.is_websocket() => {
            Box::pin(crate::ws::serve(guard, tls_stream, config)).await;
        }
        Some(Ok(tls_stream)) => {
            Box::pin(http1::serve(guard, tls_stream, service, &config)).await;
        }
        Some(Err(e)) => {
            guard
                .tracker()
                .peer_fault(&format!("TLS handshake failed: {e}"));
            guard.set_reason(CloseReason::ProtocolError);
        }
        None => {}
    }
}

fn guard_protocol(guard: &poolserve_pool::ConnectionGuard<ServerPolicy>) -> Protocol {
    guard.policy().protocol
}

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
