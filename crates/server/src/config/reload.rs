//! Applying a new config file to a running process, whole or not at all: pool settings, the
//! drain deadline, a new certificate in a server's certificate files, a server's number of
//! accept loops, servers added, removed and replaced (a server whose protocol, address or
//! certificate files changed is stopped and started anew under its name), the admin endpoint's
//! pool settings. What does not apply live (the admin endpoint's address, token and probe rule;
//! logging; the runtime's worker threads) is reported and waits for the next start.
//!
//! This file checks a new config against what runs ([`plan`]) and applies the settings part of
//! it ([`Plan::apply_settings`]); the runtime prepares the servers to start (binding their
//! sockets) before anything applies, then starts and stops them.

use std::sync::Arc;

use poolserve_pool::{ConfigChange, FieldError, PoolHandle, PoolSettings};

use super::file::{RunConfig, ServerSpec, ADMIN_POOL};
use crate::server::Server;
use crate::transport::tls::{PemPair, ServerCert};

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Pool settings (and `accept_loops`) changed, by server.
    pub changed: Vec<(String, Vec<ConfigChange>)>,
    /// Servers whose certificate files held a new certificate, now in use for new handshakes.
    pub certificates_replaced: Vec<String>,
    /// Servers the file added, now listening.
    pub servers_added: Vec<String>,
    /// Servers the file removed, now draining.
    pub servers_removed: Vec<String>,
    /// Servers whose protocol, address or certificate files changed: a new server with a fresh
    /// pool runs under the name (on the same socket when the address is the same) while the
    /// old one drains.
    pub servers_replaced: Vec<String>,
    /// Differences that need a restart, for people.
    pub not_applied: Vec<String>,
}

/// Why a reload changed nothing: every refused field, named `server[NAME].FIELD` (a pool
/// setting as `server[NAME].pool.FIELD`).
#[derive(Debug)]
pub struct ReloadError(pub Vec<FieldError>);

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReloadError {}

/// A new config checked against what runs: what applying it changes. Nothing of it has been
/// applied.
#[derive(Default)]
pub(crate) struct Plan {
    /// Pool settings for the servers kept, each validated against its pool.
    patches: Vec<(String, Arc<dyn PoolHandle>, PoolSettings)>,
    /// New certificates found in kept servers' certificate files, checked to load.
    certificates: Vec<(String, Arc<ServerCert>, PemPair)>,
    /// Servers to start, with their certificate loaded: new names and replaced servers.
    pub start: Vec<(ServerSpec, Option<PemPair>)>,
    /// Servers to stop: names the file no longer has, and the running side of each replaced
    /// server.
    pub stop: Vec<String>,
    /// Names both stopped and started.
    pub replaced: Vec<String>,
    /// Kept servers whose number of listening sockets changes: the server and how many it
    /// is to have.
    pub resize: Vec<(Arc<Server>, usize)>,
    /// `accept_loops` settings changed on kept servers, for the report.
    accept_loops: Vec<(String, ConfigChange)>,
    notes: Vec<String>,
}

/// Checks `next` against the `running` config, `servers` and the admin endpoint's pool: the
/// plan to apply it, and every field it refuses (a certificate that does not load, a pool
/// setting the pool refuses, a server named like the admin endpoint's pool).
pub(crate) fn plan(
    servers: &[Arc<Server>],
    admin_pool: Arc<dyn PoolHandle>,
    running: &RunConfig,
    next: &RunConfig,
) -> (Plan, Vec<FieldError>) {
    let mut plan = Plan::default();
    let mut errors = Vec::new();
    for spec in &next.servers {
        if spec.name == ADMIN_POOL {
            errors.push(FieldError {
                field: format!("server[{}].name", spec.name),
                value: format!("{:?}", spec.name),
                reason: "reserved for the admin endpoint's pool".into(),
            });
            continue;
        }
        let server = servers.iter().find(|s| s.name() == spec.name);
        let old = running.servers.iter().find(|s| s.name == spec.name);
        let (Some(old), Some(server)) = (old, server) else {
            // A new server: its certificate must load before anything is applied.
            if let Some(pem) = load_certificate(spec, &mut errors) {
                plan.start.push((spec.clone(), pem));
            }
            continue;
        };
        // An address written as the port a server got from port 0 is where it already is.
        let moved = old.listen != spec.listen && server.local_addr() != spec.listen;
        if old.protocol != spec.protocol || moved || old.tls != spec.tls {
            if let Some(pem) = load_certificate(spec, &mut errors) {
                plan.start.push((spec.clone(), pem));
                plan.stop.push(spec.name.clone());
                plan.replaced.push(spec.name.clone());
            }
            continue;
        }
        // The same certificate files may hold a new certificate (a rotation).
        if let (Some(files), Some(cert)) = (&spec.tls, server.certificate()) {
            match PemPair::from_files(files).and_then(|pem| ServerCert::check(&pem).map(|()| pem)) {
                Ok(pem) if !cert.is_current(&pem) => {
                    plan.certificates
                        .push((spec.name.clone(), cert.clone(), pem))
                }
                Ok(_) => {}
                Err(e) => errors.push(FieldError {
                    field: format!("server[{}].tls", spec.name),
                    value: files.cert.display().to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        let wanted = spec.accept_loops.resolve();
        if wanted != server.listening_sockets() {
            plan.resize.push((server.clone(), wanted));
        }
        if old.accept_loops != spec.accept_loops {
            plan.accept_loops.push((
                spec.name.clone(),
                ConfigChange {
                    field: "accept_loops".into(),
                    old: old.accept_loops.to_string(),
                    new: spec.accept_loops.to_string(),
                },
            ));
        }
        let pool: Arc<dyn PoolHandle> = Arc::new(server.pool().clone());
        let patch = spec.pool.to_settings();
        // Validate every pool's patch before applying any.
        match pool.config().apply(&patch, "") {
            Ok(_) => plan.patches.push((spec.name.clone(), pool, patch)),
            Err(e) => errors.extend(e.0.into_iter().map(|f| FieldError {
                field: format!("server[{}].pool.{}", spec.name, f.field),
                ..f
            })),
        }
    }
    // The admin endpoint's pool takes its settings live like any other.
    let patch = next.admin_pool.to_settings();
    match admin_pool.config().apply(&patch, "") {
        Ok(_) => plan
            .patches
            .push((ADMIN_POOL.to_owned(), admin_pool, patch)),
        Err(e) => errors.extend(e.0.into_iter().map(|f| FieldError {
            field: format!("admin.pool.{}", f.field),
            ..f
        })),
    }
    for old in &running.servers {
        if !next.servers.iter().any(|s| s.name == old.name) {
            plan.stop.push(old.name.clone());
        }
    }
    if next.admin_listen != running.admin_listen
        || next.admin_token != running.admin_token
        || next.admin_probes_need_token != running.admin_probes_need_token
    {
        plan.notes
            .push("admin listen, token or probes_need_token changed: that takes a restart".into());
    }
    if next.log != running.log {
        plan.notes
            .push("log settings changed: that takes a restart".into());
    }
    if next.worker_threads != running.worker_threads {
        plan.notes.push(
            "runtime.worker_threads changed: that takes a restart or an upgrade (SIGUSR2)".into(),
        );
    }
    (plan, errors)
}

/// The certificate of a server to start, read and checked; `Some(None)` for a server without
/// certificate files, `None` (with the error recorded) when they do not load.
fn load_certificate(spec: &ServerSpec, errors: &mut Vec<FieldError>) -> Option<Option<PemPair>> {
    let Some(files) = &spec.tls else {
        return Some(None);
    };
    match PemPair::from_files(files).and_then(|pem| ServerCert::check(&pem).map(|()| pem)) {
        Ok(pem) => Some(Some(pem)),
        Err(e) => {
            errors.push(FieldError {
                field: format!("server[{}].tls", spec.name),
                value: files.cert.display().to_string(),
                reason: e.to_string(),
            });
            None
        }
    }
}

impl Plan {
    /// Applies the planned pool settings and certificates to the servers kept, and starts the
    /// report with them and with what does not apply live.
    pub(crate) fn apply_settings(&mut self) -> ReloadReport {
        let mut report = ReloadReport {
            not_applied: std::mem::take(&mut self.notes),
            ..ReloadReport::default()
        };
        for (name, cert, pem) in self.certificates.drain(..) {
            match cert.replace(&pem) {
                Ok(true) => {
                    tracing::info!(server = %name, "certificate replaced; new handshakes use it");
                    report.certificates_replaced.push(name);
                }
                Ok(false) => {}
                // Checked when planned; only the files' owner replacing them since could
                // make it fail now.
                Err(e) => tracing::warn!(server = %name, error = %e, "certificate not replaced"),
            }
        }
        for (name, pool, patch) in self.patches.drain(..) {
            match pool.update_config(&patch) {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => report.changed.push((name, changes)),
                // Validated when planned; only a concurrent change could make it fail now.
                Err(e) => tracing::warn!(server = %name, error = %e, "pool settings not applied"),
            }
        }
        for (name, change) in self.accept_loops.drain(..) {
            match report.changed.iter_mut().find(|(n, _)| *n == name) {
                Some((_, changes)) => changes.push(change),
                None => report.changed.push((name, vec![change])),
            }
        }
        report
    }
}

/// The config recorded as running once `next` applied: all of it but what does not apply
/// live (the admin endpoint's address, token and probe rule; logging; worker threads), which
/// stays as it runs so `/config` shows the truth.
pub(crate) fn recorded(running: &RunConfig, next: &RunConfig) -> RunConfig {
    RunConfig {
        admin_listen: running.admin_listen,
        admin_token: running.admin_token.clone(),
        admin_probes_need_token: running.admin_probes_need_token,
        log: running.log.clone(),
        worker_threads: running.worker_threads,
        ..next.clone()
    }
}
