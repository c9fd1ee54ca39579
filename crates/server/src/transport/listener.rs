//! The listening socket and its accept loop.
//!
//! Data flows one way: accept → admit (or refuse before any handshake) → TLS handshake → the
//! server's [`ServeConnection`] → the guard's drop. The loop stops when the pool starts draining,
//! closing the listening socket so new connections go to other instances instead of queueing
//! here; or when told to hand the socket over, still open, to the server that takes its place
//! on the same address, so that address is never without a listener. A failed accept is
//! counted in the pool and paused after ([`accept_error`]); the admin endpoint's loop may
//! spend a spare descriptor instead (`spare_fds.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use poolserve_pool::{CloseReason, ConnectionGuard, Pool, PoolConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
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
#[derive(Debug)]
pub(crate) struct Listener {
    socket: TcpListener,
    local_addr: SocketAddr,
}

impl Listener {
    /// The address the socket is bound to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Binds `addr` for listening, with `config`'s TCP keepalive already set, so that even a
/// connection the kernel accepts before the accept loop first runs inherits it.
pub(crate) async fn bind(addr: SocketAddr, config: &PoolConfig) -> io::Result<Listener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive(config))?;
    let socket = socket.listen(1024)?;
    let local_addr = socket.local_addr()?;
    Ok(Listener { socket, local_addr })
}

/// Accepts until the pool stops serving, which closes the socket (`None`), or until
/// `hand_over` is notified, which gives the socket back still open. Each connection is
/// admitted (or refused as `refusal` says, before any TLS), handshaken when `tls` is set, then
/// served by `serve`. `spares` says whether this loop may spend its runtime's spare
/// descriptors (the admin endpoint's) or keeps them (a server's).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept_loop<H: ServeConnection>(
    listener: Listener,
    hand_over: Arc<Notify>,
    pool: Pool<ServerPolicy>,
    tls: Option<TlsAcceptor>,
    refusal: RefusalReply,
    serve: H,
    name: String,
    spares: SpareFdUse,
) -> Option<Listener> {
    let refuser = Refuser::default();
    let (spare_fds, spend): (Option<&SpareFds>, bool) = match &spares {
        SpareFdUse::None => (None, false),
        SpareFdUse::Keep(s) => (Some(s), false),
        SpareFdUse::Spend(s) => (Some(s), true),
    };
    let mut backoff = Backoff::default();
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let mut paused = false;
    let mut control = pool.control();
    // A socket handed over from another server carries that server's keepalive times.
    set_keepalive(&listener.socket, &pool.config(), &name);
    loop {
        let accepted = tokio::select! {
            biased;
            () = hand_over.notified() => {
                tracing::info!(server = %name, addr = %listener.local_addr, "stopped accepting; listening socket handed over");
                return Some(listener);
            }
            changed = control.changed() => {
                let state = control.borrow_and_update().clone();
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
                pool.record_accept_error(kind, &e);
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
        let guard = match pool.admit(Some(peer)) {
            Ok(guard) => guard,
            Err(_) => {
                if refusal == RefusalReply::Http503 {
                    refuser.refuse_http(stream);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let config = pool.config();
        match &tls {
            None => serve.clone().serve(guard, stream, None, config, Spawn),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let serve = serve.clone();
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
    tracing::info!(server = %name, "stopped accepting");
    None
}

/// Longest keepalive idle time Linux accepts (`TCP_KEEPIDLE`, seconds).
const MAX_KEEPALIVE_IDLE: Duration = Duration::from_secs(32_767);

/// TCP keepalive on the listening socket, which every accepted socket inherits (so it costs no
/// system call per connection): a peer that vanished without a FIN or RST is found after
/// `websocket.ping_interval` of silence plus three probes `websocket.pong_timeout / 3` apart.
/// That matters where nobody else pings: a connection a handler took over with an upgrade.
/// Applied again on every config change, to the connections accepted after it.
fn set_keepalive(listener: &TcpListener, config: &PoolConfig, name: &str) {
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_keepalive(&keepalive(config)) {
        tracing::warn!(server = %name, error = %e, "could not set TCP keepalive");
    }
}

fn keepalive(config: &PoolConfig) -> socket2::TcpKeepalive {
    let ws = &config.websocket;
    let bounded = |d: Duration| d.clamp(Duration::from_secs(1), MAX_KEEPALIVE_IDLE);
    socket2::TcpKeepalive::new()
        .with_time(bounded(ws.ping_interval))
        .with_interval(bounded(ws.pong_timeout / 3))
        .with_retries(3)
}

/// What came of accepting into the slot of a spare descriptor.
enum SpareAccept {
    /// A connection, in the spare's slot.
    Accepted((TcpStream, SocketAddr)),
    /// No connection was waiting (`EMFILE` comes before the queue is looked at): the spare is
    /// back, and the loop waits for the next connection.
    NothingWaiting,
    /// The accept failed again (something else took the slot first).
    Failed,
}

/// Closes a spare and accepts into its slot at once. Only what is already waiting is taken,
/// so the spare is reopened straight away when nothing is.
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
