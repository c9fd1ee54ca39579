//! The built-in defaults (`poolserve` with no arguments) serve every protocol they list: the
//! same servers, pool settings and demo app as `cargo run --release`, on port 0 here so the
//! test never collides with anything on the machine.

use crate::support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use poolserve_demo::grpc::proto::echo_client::EchoClient;
use poolserve_demo::grpc::proto::EchoRequest;
use poolserve_demo::routes as demo;
use poolserve_server::config::RunConfig;
use poolserve_server::{Protocol, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Accepts any certificate: the default `https` server makes a fresh self-signed one at start,
/// which the test has no copy of.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn the_built_in_defaults_serve_every_protocol() {
    let mut config = RunConfig::builtin();
    let protocols: Vec<_> = config.servers.iter().map(|s| s.protocol).collect();
    assert_eq!(
        protocols,
        [
            Protocol::Http,
            Protocol::Https,
            Protocol::Http2,
            Protocol::Grpc,
            Protocol::Ws
        ]
    );
    for server in &mut config.servers {
        server.listen.set_port(0);
    }
    config.admin_listen.set_port(0);
    let runtime =
        Runtime::start_with_grpc(&config, demo::service(), poolserve_demo::grpc::services())
            .await
            .unwrap();
    let addr = |name: &str| runtime.server(name).unwrap().local_addr();

    let res = get(addr("web"), "/").await;
    assert_eq!(
        (res.status().as_u16(), &res.body()[..]),
        (200, &b"hello"[..])
    );

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = TcpStream::connect(addr("web-tls")).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap();
    let mut https = Client::over(addr("web-tls"), stream).await;
    let res = https.get("/").await;
    assert_eq!(
        (res.status().as_u16(), &res.body()[..]),
        (200, &b"hello"[..])
    );

    let (mut h2, _conn) = H2Client::connect(addr("h2")).await;
    let res = h2.get("/").await;
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(&res.body()[..], b"hello");

    let reply = EchoClient::new(grpc_channel(addr("rpc")).await)
        .unary(EchoRequest {
            message: "defaults".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "defaults");

    let stream = TcpStream::connect(addr("live")).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/", addr("live")), stream)
        .await
        .unwrap();
    ws.send(Message::text("echo me")).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed.unwrap(), Message::text("echo me"));

    let health = health(runtime.admin_addr()).await;
    for name in ["web", "web-tls", "h2", "rpc", "live"] {
        assert_eq!(
            health["pools"][name]["status"], "healthy",
            "{name}: {health}"
        );
    }
    drop((https, h2, ws));
    let reports = runtime.shutdown().await;
    // One report per server, and the admin endpoint's.
    let names: Vec<&str> = reports.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["admin", "h2", "live", "rpc", "web", "web-tls"]);
    assert!(reports.iter().all(|(_, r)| r.forced == 0), "{reports:?}");
}
