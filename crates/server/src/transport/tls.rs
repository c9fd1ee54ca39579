//! TLS set-up with rustls: PEM certificate and key files, or a self-signed certificate made at
//! start-up; TLS 1.2 and 1.3 only; ALPN.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// Where a server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// A certificate and key in PEM form.
#[derive(Clone)]
pub struct PemPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemPair").finish_non_exhaustive()
    }
}

impl PemPair {
    /// A fresh self-signed certificate for `localhost` and `127.0.0.1`.
    pub fn self_signed() -> Result<PemPair, TlsError> {
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError(format!("cannot make a self-signed certificate: {e}")))?;
        Ok(PemPair {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        })
    }

    /// Reads a certificate chain and key from PEM files.
    pub fn from_files(files: &TlsFiles) -> Result<PemPair, TlsError> {
        let read = |p: &Path, what: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| TlsError(format!("cannot read TLS {what} {}: {e}", p.display())))
        };
        Ok(PemPair {
            cert_pem: read(&files.cert, "certificate")?,
            key_pem: read(&files.key, "key")?,
        })
    }

    /// A rustls server config offering `alpn` (most preferred first).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        ServerCert::new(self)?.server_config(alpn)
    }

    /// The certificate chain and key as rustls uses them, checked to belong together.
    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError(format!("bad certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError(
                "no certificate found in the certificate PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError(format!("bad private key PEM: {e}")))?;
        CertifiedKey::from_der(certs, key, &provider())
            .map(Arc::new)
            .map_err(|e| {
                TlsError(format!(
                    "certificate and key do not make a TLS identity: {e}"
                ))
            })
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A server's certificate, replaceable while it runs: new handshakes use the new one, open
/// connections keep theirs.
pub struct ServerCert {
    current: RwLock<(PemPair, Arc<CertifiedKey>)>,
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

impl ServerCert {
    /// A certificate from `pem`.
    pub fn new(pem: &PemPair) -> Result<Arc<ServerCert>, TlsError> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new((pem.clone(), pem.certified_key()?)),
        }))
    }

    /// Replaces the certificate when `pem` differs from the one in use; returns whether it did.
    /// A certificate that does not load changes nothing.
    pub fn replace(&self, pem: &PemPair) -> Result<bool, TlsError> {
        if self.is_current(pem) {
            return Ok(false);
        }
        let key = pem.certified_key()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (pem.clone(), key);
        Ok(true)
    }

    /// Whether `pem` is the certificate in use.
    pub fn is_current(&self, pem: &PemPair) -> bool {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.0.cert_pem == pem.cert_pem && current.0.key_pem == pem.key_pem
    }

    /// Checks that `pem` would load, without using it.
    pub fn check(pem: &PemPair) -> Result<(), TlsError> {
        pem.certified_key().map(|_| ())
    }

    /// A rustls server config that takes its certificate from here, offering `alpn`.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError(format!("TLS versions: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .clone(),
        )
    }
}
