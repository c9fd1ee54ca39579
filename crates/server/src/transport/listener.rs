//! The listening sockets and their accept loops.
//!
//! Data flows one way: accept → admit (or refuse before any handshake) → TLS handshake → the
//! server's [`ServeConnection`] → the guard's drop. A server listens on one or more sockets
//! bound to the same address with `SO_REUSEPORT`, each with an accept loop of its own, so the
//! kernel spreads new connections over loops that run on different worker threads. A loop
//! stops when the pool starts draining, closing its socket so new connections go to other
//! instances instead of queueing here; when told to hand the socket over, still open, to the
//! server that takes its place on the same address, so that address is never without a
//! listener; or when retired (a server told to run fewer loops), after accepting what is
//! queued in its socket. A failed accept is counted in the pool and paused after
//! ([`accept_error`]); the admin endpoint's loop may spend a spare descriptor instead
//! (`spare_fds.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use poolserve_pool::{CloseReason, ConnectionGuard, Pool, PoolConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::accept_error::{self, Backoff};
use super::policy::ServerPolicy;
use super::refusal::Refuser;
use super::spare_fds::{SpareFdUse, SpareFds};
use crate::protocol::RefusalReply;

/// An I/O a connection can be served on: a TCP stream, or a TLS stream over one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Where the future serving one connection runs.
pub(crate) trait Launch {
    /// What launching gives back.
    type Launched;
    /// Runs `serving`.
    fn launch<F>(self, serving: F) -> Self::Launched
    where
        F: Future<Output = CloseReason> + Send + 'static;
    /// Runs the future `make` makes, made in the task that runs it. Where the future is held
    /// only once it is made, what `make` holds takes no room beside it.
    fn launch_made<M, F>(self, make: M) -> Self::Launched
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = CloseReason> + Send + 'static;
}

/// In a task of its own, of exactly the serving future's type: a plain HTTP connection's task
/// has no room for a TLS session or a WebSocket.
pub(crate) struct Spawn;

impl Launch for Spawn {
    type Launched = ();
    fn launch<F>(self, serving: F)
    where
        F: Future<Output = CloseReason> + Send + 'static,
    {
        tokio::spawn(serving);
    }

    /// Made on the new task's first poll: the task holds `make` until then, in the room the
    /// future takes after.
    fn launch_made<M, F>(self, make: M)
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = CloseReason> + Send + 'static,
    {
        tokio::spawn(Deferred::new(make));
    }
}

/// Boxed, for the task that did the TLS handshake to await: the task holds a pointer, not
/// room for whichever protocol the handshake chose.
pub(crate) struct Boxed;

impl Launch for Boxed {
    type Launched = Pin<Box<dyn Future<Output = CloseReason> + Send>>;
    fn launch<F>(self, serving: F) -> Self::Launched
    where
        F: Future<Output = CloseReason> + Send + 'static,
    {
        Box::pin(serving)
    }

    /// Made now: the task that awaits the box is the one that runs it, so the box holds the
    /// future alone.
    fn launch_made<M, F>(self, make: M) -> Self::Launched
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = CloseReason> + Send + 'static,
    {
        Box::pin(make())
    }
}

pin_project_lite::pin_project! {
    /// A future made on its first poll, in the task that runs it, by `make`: what `make` holds
    /// and the future it makes share their room in the task, where an `async` block awaiting the
    /// future would hold both for as long as the connection lives.
    #[project = DeferredProj]
    enum Deferred<M, F> {
        /// Not polled yet (`None` only while `make` runs).
        Waiting { make: Option<M> },
        Running { #[pin] future: F },
    }
}

impl<M, F> Deferred<M, F> {
    fn new(make: M) -> Self {
        Deferred::Waiting { make: Some(make) }
    }
}

impl<M: FnOnce() -> F, F: Future> Future for Deferred<M, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if let DeferredProj::Waiting { make } = self.as_mut().project() {
            if let Some(make) = make.take() {
                self.set(Deferred::Running { future: make() });
            }
        }
        match self.project() {
            DeferredProj::Running { future } => future.poll(cx),
            // Only after `make` panicked, which ended the task.
            DeferredProj::Waiting { .. } => Poll::Pending,
        }
    }
}

/// What a connection's TLS handshake settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated<'a> {
    /// The ALPN identifier agreed on, if the client offered one we have.
    pub alpn: Option<&'a [u8]>,
}

/// Serves admitted connections: the server's single dispatch, given each connection's I/O and,
/// over TLS, what the handshake negotiated.
pub(crate) trait ServeConnection: Clone + Send + 'static {
    /// Serves one connection: `tls` is `None` in the clear; `config` is the pool's config in
    /// force at accept.
    fn serve<IO: Io, L: Launch>(
        self,
        guard: ConnectionGuard<ServerPolicy>,
        io: IO,
        tls: Option<Negotiated<'_>>,
        config: Arc<PoolConfig>,
        launch: L,
    ) -> L::Launched;
}

/// A listening socket and the address it is bound to (the real port when bound on port 0).
/// The accept loop serving it holds the only strong reference, so the socket closes when the
/// loop ends; a [`Weak`] reference lets the server duplicate it while the loop runs.
#[derive(Debug)]
pub(crate) struct Listener {
    socket: Arc<TcpListener>,
    local_addr: SocketAddr,
}

impl Listener {
    /// The address the socket is bound to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A reference to the socket that does not keep it open.
    pub(crate) fn socket(&self) -> Weak<TcpListener> {
        Arc::downgrade(&self.socket)
    }

    /// Takes a socket that already listens (handed over by another process), checking that
    /// it does.
    pub(crate) fn from_std(socket: std::net::TcpListener) -> io::Result<Listener> {
        if !socket2::SockRef::from(&socket).is_listener()? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the socket does not listen",
            ));
        }
        socket.set_nonblocking(true)?;
        let socket = TcpListener::from_std(socket)?;
        let local_addr = socket.local_addr()?;
        Ok(Listener {
            socket: Arc::new(socket),
            local_addr,
        })
    }
}

/// A duplicate of `socket`'s file descriptor, to hand to another process: the socket stays
/// open while either holds it.
pub(crate) fn duplicate(socket: &TcpListener) -> io::Result<std::net::TcpListener> {
    Ok(socket2::SockRef::from(socket).try_clone()?.into())
}

/// A socket bound to a server's address that does not listen yet: the kernel sends it no
/// connection until [`Reserved::listen`], so a reload can prepare it, be refused and drop it
/// without resetting a connection.
#[derive(Debug)]
pub(crate) struct Reserved {
    socket: TcpSocket,
    local_addr: SocketAddr,
}

impl Reserved {
    /// Starts listening: from now on the kernel gives it a share of the address's connections.
    pub(crate) fn listen(self) -> io::Result<Listener> {
        let socket = self.socket.listen(BACKLOG)?;
        Ok(Listener {
            socket: Arc::new(socket),
            local_addr: self.local_addr,
        })
    }
}

/// Connections the kernel queues per socket before the accept loop takes them.
const BACKLOG: u32 = 1024;

/// Binds `count` (at least one) listening sockets on `addr`, with `config`'s TCP keepalive
/// already set, so that even a connection the kernel accepts before the accept loop first runs
/// inherits it.
///
/// The first socket is bound before `SO_REUSEPORT` is set on it, so an address something else
/// listens on is refused ("address in use") rather than shared; set before it listens, the
/// option lets the others (and any added later) join it on the same address.
pub(crate) async fn bind(
    addr: SocketAddr,
    count: usize,
    config: &PoolConfig,
) -> io::Result<Vec<Listener>> {
    let socket = new_socket(addr)?;
    socket.bind(addr)?;
    socket.set_reuseport(true)?;
    set_liveness(socket2::SockRef::from(&socket), config)?;
    let local_addr = socket.local_addr()?;
    let first = Reserved { socket, local_addr }.listen()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(reserve(local_addr, config)?.listen()?);
    }
    Ok(listeners)
}

/// Binds one more socket on `addr`, where a server's sockets listen with `SO_REUSEPORT`,
/// without listening yet.
pub(crate) fn reserve(addr: SocketAddr, config: &PoolConfig) -> io::Result<Reserved> {
    let socket = new_socket(addr)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    set_liveness(socket2::SockRef::from(&socket), config)?;
    let local_addr = socket.local_addr()?;
    Ok(Reserved { socket, local_addr })
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

/// How a server tells one of its accept loops to stop while its pool still serves.
#[derive(Debug, Default)]
pub(crate) struct LoopControl {
    wake: Notify,
    retire: AtomicBool,
    /// Connections this loop accepted (admitted or refused).
    accepted: AtomicU64,
}

impl LoopControl {
    /// Stops the loop, which gives its socket back still open.
    pub(crate) fn hand_over(&self) {
        self.wake.notify_one();
    }

    /// Stops the loop once it has accepted what is queued in its socket, then closes it.
    pub(crate) fn retire(&self) {
        self.retire.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Connections the loop accepted so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// What the accept loop does with each connection: admit or refuse it, then handshake and
/// serve it.
struct Admit<H> {
    pool: Pool<ServerPolicy>,
    tls: Option<TlsAcceptor>,
    refusal: RefusalReply,
    refuser: Refuser,
    serve: H,
}

impl<H: ServeConnection> Admit<H> {
    fn take(&self, stream: TcpStream, peer: SocketAddr) {
        let guard = match self.pool.admit(Some(peer)) {
            Ok(guard) => guard,
            Err(_) => {
                if self.refusal == RefusalReply::Http503 {
                    self.refuser.refuse_http(stream);
                }
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let config = self.pool.config();
        match &self.tls {
            None => self.serve.clone().serve(guard, stream, None, config, Spawn),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let serve = self.serve.clone();
                tokio::spawn(async move {
                    let mut guard = guard;
                    // Bytes are counted as the application sees them, after decryption, so the
                    // handshake is not wrapped.
                    match guard.opening(acceptor.accept(stream)).await {
                        Some(Ok(stream)) => {
                            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                            let tls = Negotiated {
                                alpn: alpn.as_deref(),
                            };
                            serve.serve(guard, stream, Some(tls), config, Boxed).await;
                        }
                        Some(Err(e)) => {
                            guard
                                .tracker()
                                .peer_fault(&format!("TLS handshake failed: {e}"));
                            guard.set_reason(CloseReason::ProtocolError);
                        }
                        None => {}
                    }
                });
            }
        }
    }
}

/// Accepts until the pool stops serving, which closes the socket (`None`); until `control`
/// hands it over, which gives the socket back still open; or until `control` retires it,
/// which accepts what is queued and closes it (`None`). Each connection is admitted (or
/// refused as `refusal` says, before any TLS), handshaken when `tls` is set, then served by
/// `serve`. `spares` says whether this loop may spend its runtime's spare descriptors (the
/// admin endpoint's) or keeps them (a server's).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept_loop<H: ServeConnection>(
    listener: Listener,
    control: Arc<LoopControl>,
    pool: Pool<ServerPolicy>,
    tls: Option<TlsAcceptor>,
    refusal: RefusalReply,
    serve: H,
    name: String,
    spares: SpareFdUse,
) -> Option<Listener> {
    let (spare_fds, spend): (Option<&SpareFds>, bool) = match &spares {
        SpareFdUse::None => (None, false),
        SpareFdUse::Keep(s) => (Some(s), false),
        SpareFdUse::Spend(s) => (Some(s), true),
    };
    let mut backoff = Backoff::default();
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let mut paused = false;
    let mut stage = pool.control();
    let admit = Admit {
        pool,
        tls,
        refusal,
        refuser: Refuser::default(),
        serve,
    };
    // A socket handed over from another server carries that server's keepalive times.
    set_keepalive(&listener.socket, &admit.pool.config(), &name);
    loop {
        let accepted = tokio::select! {
            biased;
            () = control.wake.notified() => {
                if !control.retire.load(Ordering::Relaxed) {
                    tracing::info!(server = %name, addr = %listener.local_addr, "stopped accepting; listening socket handed over");
                    return Some(listener);
                }
                // What the kernel queued on this socket is served before it closes; a
                // connection that arrives between the last accept and the close is reset.
                // accept(2) is called until the queue is empty, whatever readiness the
                // reactor has seen so far.
                loop {
                    match accept_now(&listener.socket) {
                        Ok(Some((stream, peer))) => {
                            control.accepted.fetch_add(1, Ordering::Relaxed);
                            admit.take(stream, peer);
                        }
                        Err(e) if is_per_connection_error(&e) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                tracing::info!(server = %name, addr = %listener.local_addr, "accept loop retired; its socket closed");
                return None;
            }
            changed = stage.changed() => {
                let state = stage.borrow_and_update().clone();
                // A leaving pool still accepts: it stops when it drains.
                if changed.is_err() || !state.stage.serves() {
                    break;
                }
                set_keepalive(&listener.socket, &state.config, &name);
                continue;
            }
            () = &mut pause, if paused => {
                paused = false;
                // A spare the admin endpoint spent is taken back before this server takes a
                // slot; failing that, the accept fails again and pauses longer.
                if let Some(spares) = spare_fds.filter(|s| s.missing()) {
                    let _ = spares.refill();
                }
                continue;
            }
            accepted = listener.socket.accept(), if !paused => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // A connection the peer abandoned: not ours to count or wait on.
                let Some(kind) = accept_error::kind(&e) else {
                    continue;
                };
                admit.pool.record_accept_error(kind, &e);
                let spare = spare_fds.filter(|_| spend && kind.is_descriptor_shortage());
                match spare.map(|spares| accept_with_a_spare(&listener, spares)) {
                    Some(SpareAccept::Accepted(conn)) => conn,
                    Some(SpareAccept::NothingWaiting) => continue,
                    // Out of descriptors or memory: pause instead of spinning.
                    Some(SpareAccept::Failed) | None => {
                        pause
                            .as_mut()
                            .reset(tokio::time::Instant::now() + backoff.failed());
                        paused = true;
                        continue;
                    }
                }
            }
        };
        backoff.succeeded();
        // A spare spent while descriptors were short comes back as soon as one is free.
        if let Some(spares) = spare_fds.filter(|s| s.missing()) {
            let _ = spares.refill();
        }
        control.accepted.fetch_add(1, Ordering::Relaxed);
        admit.take(stream, peer);
    }
    tracing::info!(server = %name, "stopped accepting");
    None
}

/// A connection queued on `socket` now, if there is one, without waiting.
fn accept_now(socket: &TcpListener) -> io::Result<Option<(TcpStream, SocketAddr)>> {
    let (stream, peer) = match socket2::SockRef::from(socket).accept() {
        Ok(accepted) => accepted,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP peer"))?;
    let stream = std::net::TcpStream::from(stream);
    stream.set_nonblocking(true)?;
    Ok(Some((TcpStream::from_std(stream)?, peer)))
}

/// What spending a spare descriptor on a failed accept gave.
enum SpareAccept {
    /// A connection, in the spare's slot.
    Accepted((TcpStream, SocketAddr)),
    /// No connection was waiting (`EMFILE` comes before the queue is looked at): the spare is
    /// back, and the loop waits for the next connection.
    NothingWaiting,
    /// The accept failed again (something else took the slot first).
    Failed,
}

/// Closes a spare descriptor and accepts what is already waiting into its slot; reopens the
/// spare when nothing was.
fn accept_with_a_spare(listener: &Listener, spares: &SpareFds) -> SpareAccept {
    if !spares.spend() {
        return SpareAccept::Failed;
    }
    match listener.socket.accept().now_or_never() {
        Some(Ok(conn)) => SpareAccept::Accepted(conn),
        Some(Err(_)) => {
            let _ = spares.refill();
            SpareAccept::Failed
        }
        None => {
            let _ = spares.refill();
            SpareAccept::NothingWaiting
        }
    }
}

/// Longest keepalive idle time Linux accepts (`TCP_KEEPIDLE`, seconds).
const MAX_KEEPALIVE_IDLE: Duration = Duration::from_secs(32_767);

/// TCP keepalive on the listening socket, which every accepted socket inherits (so it costs no
/// system call per connection): a peer that vanished without a FIN or RST is found after
/// `websocket.ping_interval` of silence plus three probes `websocket.pong_timeout / 3` apart.
/// That matters where nobody else pings: a connection a handler took over with an upgrade.
/// Applied again on every config change, to the connections accepted after it.
fn set_keepalive(listener: &TcpListener, config: &PoolConfig, name: &str) {
    if let Err(e) = set_liveness(socket2::SockRef::from(listener), config) {
        tracing::warn!(server = %name, error = %e, "could not set TCP keepalive");
    }
}

/// TCP keepalive, and `TCP_USER_TIMEOUT` for a vanished peer with data still unacknowledged
/// (keepalive does not probe then): `ping_interval + pong_timeout` without an
/// acknowledgement closes the socket.
fn set_liveness(socket: socket2::SockRef<'_>, config: &PoolConfig) -> io::Result<()> {
    let ws = &config.websocket;
    let bounded = |d: Duration| d.clamp(Duration::from_secs(1), MAX_KEEPALIVE_IDLE);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(bounded(ws.ping_interval))
        .with_interval(bounded(ws.pong_timeout / 3))
        .with_retries(3);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(ws.ping_interval.saturating_add(ws.pong_timeout)))
}

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
