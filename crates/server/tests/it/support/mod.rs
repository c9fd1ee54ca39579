//! Test harness: a poolserve runtime on 127.0.0.1 port 0 with the demo app, and real clients.
#![allow(dead_code)]

pub mod isolation;
pub mod outside;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use poolserve_demo::routes as demo;
use poolserve_pool::{PoolConfig, PoolEventKind, PoolSettings, Subscription};
use poolserve_server::config::{
    default_admin_pool, AcceptLoops, LogConfig, RunConfig, ServerSpec, DEFAULT_SPARE_FDS,
};
use poolserve_server::tls::{PemPair, TlsFiles};
use poolserve_server::{Protocol, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// The HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113 §3.4).
pub const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Polls `cond` until it holds, failing the test after [`WAIT`]: for state the pool exposes
/// only as numbers (metrics), with no signal to await.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

pub struct Harness {
    pub runtime: Runtime,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    /// http2 without TLS: h2c with prior knowledge.
    pub h2c: SocketAddr,
    /// http2 with TLS: h2 or HTTP/1.1 by ALPN.
    pub h2: SocketAddr,
    /// grpc without TLS (the demo Echo service, health, reflection).
    pub grpc: SocketAddr,
    /// grpc over TLS.
    pub grpc_tls: SocketAddr,
    pub admin: SocketAddr,
    pub pem: PemPair,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "poolserve-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ N.fetch_add(1, Ordering::Relaxed)
}

pub fn pool(settings: PoolSettings) -> PoolConfig {
    PoolConfig::default().apply(&settings, "pool.").unwrap().0
}

/// Starts `web` (http) and `web-tls` (https, with a fresh certificate from files) on port 0.
pub async fn start(settings: PoolSettings) -> Harness {
    start_with(settings, Duration::from_secs(5)).await
}

pub async fn start_with(settings: PoolSettings, drain_timeout: Duration) -> Harness {
    start_full(settings, drain_timeout, None).await
}

pub async fn start_full(
    settings: PoolSettings,
    drain_timeout: Duration,
    admin_token: Option<&str>,
) -> Harness {
    start_tuned(settings, drain_timeout, |config| {
        config.admin_token = admin_token.map(str::to_owned);
    })
    .await
}

/// Like [`start_with`], with `tune` changing the config before it starts (the admin section,
/// say).
pub async fn start_tuned(
    settings: PoolSettings,
    drain_timeout: Duration,
    tune: impl FnOnce(&mut RunConfig),
) -> Harness {
    let dir = TempDir::new();
    let pem = PemPair::self_signed().unwrap();
    let files = TlsFiles {
        cert: dir.0.join("cert.pem"),
        key: dir.0.join("key.pem"),
    };
    std::fs::write(&files.cert, &pem.cert_pem).unwrap();
    std::fs::write(&files.key, &pem.key_pem).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = RunConfig {
        admin_listen: any,
        admin_token: None,
        admin_probes_need_token: false,
        admin_pool: default_admin_pool(),
        admin_spare_fds: DEFAULT_SPARE_FDS,
        drain_timeout,
        drain_delay: Duration::ZERO,
        log: LogConfig {
            level: "info".into(),
            json: false,
        },
        worker_threads: None,
        servers: vec![
            ServerSpec {
                name: "web".into(),
                protocol: Protocol::Http,
                listen: any,
                tls: None,
                accept_loops: AcceptLoops::default(),
                pool: pool(settings.clone()),
            },
            ServerSpec {
                name: "web-tls".into(),
                protocol: Protocol::Https,
                listen: any,
                tls: Some(files.clone()),
                accept_loops: AcceptLoops::default(),
                pool: pool(settings.clone()),
            },
            ServerSpec {
                name: "live".into(),
                protocol: Protocol::Ws,
                listen: any,
                tls: None,
                accept_loops: AcceptLoops::default(),
                pool: pool(settings.clone()),
            },
            ServerSpec {
                name: "live-tls".into(),
                protocol: Protocol::Wss,
                listen: any,
                tls: Some(files.clone()),
                accept_loops: AcceptLoops::default(),
                pool: pool(settings.clone()),
            },
            ServerSpec {
                name: "h2c".into(),
                protocol: Protocol::Http2,
                listen: any,
                tls: None,
                accept_loops: AcceptLoops::default(),
                pool: pool(settings.clone()),
            },
            ServerSpec {
                name: "h2".into(),
                protocol: Protocol::Http2,
                listen: any,
                tls: Some(files.clone()),
                accept_loops: AcceptLoops::default(),
                pool: pool(settings.clone()),
            },
            ServerSpec {
                name: "rpc".into(),
                protocol: Protocol::Grpc,
                listen: any,
                tls: None,
                accept_loops: AcceptLoops::default(),
                pool: pool(settings.clone()),
            },
            ServerSpec {
                name: "rpc-tls".into(),
                protocol: Protocol::Grpc,
                listen: any,
                tls: Some(files),
                accept_loops: AcceptLoops::default(),
                pool: pool(settings),
            },
        ],
    };
    tune(&mut config);
    let runtime =
        Runtime::start_with_grpc(&config, demo::service(), poolserve_demo::grpc::services())
            .await
            .unwrap();
    Harness {
        http: runtime.server("web").unwrap().local_addr(),
        https: runtime.server("web-tls").unwrap().local_addr(),
        ws: runtime.server("live").unwrap().local_addr(),
        wss: runtime.server("live-tls").unwrap().local_addr(),
        h2c: runtime.server("h2c").unwrap().local_addr(),
        h2: runtime.server("h2").unwrap().local_addr(),
        grpc: runtime.server("rpc").unwrap().local_addr(),
        grpc_tls: runtime.server("rpc-tls").unwrap().local_addr(),
        admin: runtime.admin_addr(),
        runtime,
        pem,
        _dir: dir,
    }
}

/// One HTTP/1.1 client connection (hyper's client), kept alive across requests.
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    pub addr: SocketAddr,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::over(addr, stream).await
    }

    pub async fn over<S>(addr: SocketAddr, stream: S) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        Client {
            sender,
            addr,
            conn: tokio::spawn(conn),
        }
    }

    pub async fn request(&mut self, method: &str, path: &str, body: &str) -> Response<Bytes> {
        self.try_request(method, path, body).await.unwrap()
    }

    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Response<Bytes>, hyper::Error> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let res = self.sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }

    pub async fn get(&mut self, path: &str) -> Response<Bytes> {
        self.request("GET", path, "").await
    }

    /// GETs `path`, pausing `pause` after each `every` bytes of the body, so the server's
    /// writes wait on this reader; returns the status and the body's length.
    pub async fn get_slowly(&mut self, path: &str, every: usize, pause: Duration) -> (u16, usize) {
        self.sender.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut body = self.sender.send_request(req).await.unwrap();
        let status = body.status().as_u16();
        let (mut len, mut next_pause) = (0, every);
        while let Some(frame) = body.body_mut().frame().await {
            len += frame.unwrap().data_ref().map_or(0, |d| d.len());
            if len >= next_pause {
                next_pause += every;
                tokio::time::sleep(pause).await;
            }
        }
        (status, len)
    }

    /// Waits for the server to close this connection.
    pub async fn closed(self) {
        tokio::time::timeout(WAIT, self.conn)
            .await
            .expect("server closes the connection")
            .unwrap()
            .ok();
    }
}

/// A one-shot GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Response<Bytes> {
    Client::connect(addr).await.get(path).await
}

/// GETs an admin path and returns status and body.
pub async fn admin(addr: SocketAddr, path: &str) -> (u16, String) {
    admin_with(addr, path, None).await
}

/// GETs an admin path, optionally with a bearer token.
pub async fn admin_with(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends an admin request with a body (PATCH, say) and returns status and body.
pub async fn admin_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn health(addr: SocketAddr) -> serde_json::Value {
    let (status, body) = admin(addr, "/health").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// The value of one Prometheus sample, by name and label substring.
pub async fn metric(addr: SocketAddr, name: &str, labels: &str) -> f64 {
    let (_, body) = admin(addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{body}"))
}

/// Writes raw bytes and reads until the server closes, returning what came back.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s).await
}

pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until `n` events matching `pred` arrive.
pub async fn wait_events(
    events: &mut Subscription,
    n: usize,
    pred: impl Fn(&PoolEventKind) -> bool,
) -> Vec<PoolEventKind> {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while seen.len() < n {
            match events.recv().await {
                Ok(e) if pred(&e.kind) => seen.push(e.kind),
                Ok(_) => {}
                Err(e) => panic!("event stream: {e:?}"),
            }
        }
    })
    .await
    .expect("events arrive");
    seen
}

/// A TLS connector that trusts exactly `pem`'s certificate and offers HTTP/1.1 by ALPN.
pub fn tls_connector(pem: &PemPair) -> tokio_rustls::TlsConnector {
    tls_connector_alpn(pem, &[b"http/1.1"])
}

/// A TLS connector that trusts exactly `pem`'s certificate and offers `alpn`.
pub fn tls_connector_alpn(pem: &PemPair, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub async fn tls_client(h: &Harness) -> Result<Client, std::io::Error> {
    let stream = TcpStream::connect(h.https).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&h.pem).connect(name, stream).await?;
    Ok(Client::over(h.https, tls).await)
}

/// One HTTP/2 client connection (hyper's client); requests on it are concurrent streams.
#[derive(Clone)]
pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Client {
    /// h2c with prior knowledge.
    pub async fn connect(
        addr: SocketAddr,
    ) -> (H2Client, tokio::task::JoinHandle<Result<(), hyper::Error>>) {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::over(stream).await
    }

    /// h2 over TLS, offering only `h2` by ALPN.
    pub async fn connect_tls(
        addr: SocketAddr,
        pem: &PemPair,
    ) -> (H2Client, tokio::task::JoinHandle<Result<(), hyper::Error>>) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tls_connector_alpn(pem, &[b"h2"])
            .connect(name, stream)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        Self::over(tls).await
    }

    pub async fn over<S>(stream: S) -> (H2Client, tokio::task::JoinHandle<Result<(), hyper::Error>>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        (H2Client { sender }, tokio::spawn(conn))
    }

    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Response<Bytes>, hyper::Error> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let res = self.sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }

    pub async fn get(&mut self, path: &str) -> Response<Bytes> {
        self.try_request("GET", path, "").await.unwrap()
    }
}

/// A tonic channel to a plain-text gRPC server (one HTTP/2 connection).
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(WAIT)
        .connect()
        .await
        .unwrap()
}

/// A tonic channel over TLS that trusts exactly `pem`'s certificate.
pub async fn grpc_tls_channel(addr: SocketAddr, pem: &PemPair) -> tonic::transport::Channel {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem.cert_pem))
        .domain_name("localhost");
    tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(WAIT)
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            TcpStream::connect(addr).await.map(TokioIo::new)
        }))
        .await
        .unwrap()
}
