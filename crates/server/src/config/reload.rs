//! Applying a new config file to a running process: what can change live does, at once (pool
//! settings, the admin endpoint's among them, the drain deadline, a new certificate in a
//! server's certificate files, servers added and removed); what cannot (a server moved to
//! another address or protocol, or given other certificate files; the admin endpoint's address,
//! token and probe rule; logging) is reported and waits for the next start. All or nothing: a file with a pool setting or a certificate that would be refused
//! changes nothing.

use std::sync::{Arc, RwLock};

use poolserve_pool::{ConfigChange, FieldError, PoolRegistry};

use super::file::{RunConfig, ServerSpec, ADMIN_POOL};
use crate::server::Server;
use crate::transport::tls::{PemPair, ServerCert};

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Pool settings changed, by server.
    pub changed: Vec<(String, Vec<ConfigChange>)>,
    /// Servers whose certificate files held a new certificate, now in use for new handshakes.
    pub certificates_replaced: Vec<String>,
    /// Servers the file added, now listening.
    pub servers_added: Vec<String>,
    /// Servers the file removed, now draining.
    pub servers_removed: Vec<String>,
    /// Differences that need a restart, for people.
    pub not_applied: Vec<String>,
}

/// Why a reload changed nothing: every refused field, named `server[NAME].pool.FIELD`.
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

/// What is left for the caller after [`apply`]: servers to start and to drain.
#[derive(Debug, Default)]
pub(crate) struct ServerChanges {
    pub add: Vec<(ServerSpec, Option<PemPair>)>,
    pub remove: Vec<String>,
}

/// Applies `next` to the pools of `registry` and records it as the running config, except the
/// servers to add and remove, which it returns (their files checked) for the caller to start
/// and drain.
pub(crate) fn apply(
    registry: &PoolRegistry,
    servers: &[Arc<Server>],
    running: &Arc<RwLock<RunConfig>>,
    next: &RunConfig,
) -> Result<(ReloadReport, ServerChanges), ReloadError> {
    let current = running.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut report = ReloadReport::default();
    let mut plan = Vec::new();
    let mut certificates = Vec::new();
    let mut errors = Vec::new();
    let mut changes = ServerChanges::default();
    for spec in &next.servers {
        if spec.name == ADMIN_POOL {
            errors.push(FieldError {
                field: format!("server[{}].name", spec.name),
                value: format!("{:?}", spec.name),
                reason: "reserved for the admin endpoint's pool".into(),
            });
            continue;
        }
        let Some(old) = current.servers.iter().find(|s| s.name == spec.name) else {
            // A new server: its certificate must load before anything is applied.
            let pem = match &spec.tls {
                Some(files) => match PemPair::from_files(files)
                    .and_then(|pem| ServerCert::check(&pem).map(|()| pem))
                {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        errors.push(FieldError {
                            field: format!("server[{}].tls", spec.name),
                            value: files.cert.display().to_string(),
                            reason: e.to_string(),
                        });
                        continue;
                    }
                },
                None => None,
            };
            changes.add.push((spec.clone(), pem));
            continue;
        };
        if old.protocol != spec.protocol || old.listen != spec.listen || old.tls != spec.tls {
            report.not_applied.push(format!(
                "server {:?}: protocol, listen or tls changed: that takes a restart",
                spec.name
            ));
            continue;
        }
        // The same certificate files may hold a new certificate (a rotation).
        if let (Some(files), Some(cert)) = (
            &spec.tls,
            servers
                .iter()
                .find(|s| s.name() == spec.name)
                .and_then(|s| s.certificate()),
        ) {
            match PemPair::from_files(files).and_then(|pem| ServerCert::check(&pem).map(|()| pem)) {
                Ok(pem) if !cert.is_current(&pem) => {
                    certificates.push((spec.name.clone(), cert.clone(), pem))
                }
                Ok(_) => {}
                Err(e) => errors.push(FieldError {
                    field: format!("server[{}].tls", spec.name),
                    value: files.cert.display().to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        let Some(pool) = registry.get(&spec.name) else {
            continue;
        };
        let patch = spec.pool.to_settings();
        // Validate every pool's patch before applying any.
        match pool.config().apply(&patch, "") {
            Ok(_) => plan.push((spec.name.clone(), pool, patch)),
            Err(e) => errors.extend(e.0.into_iter().map(|f| FieldError {
                field: format!("server[{}].pool.{}", spec.name, f.field),
                ..f
            })),
        }
    }
    // The admin endpoint's pool takes its settings live like any other.
    if let Some(pool) = registry.get(ADMIN_POOL) {
        let patch = next.admin_pool.to_settings();
        match pool.config().apply(&patch, "") {
            Ok(_) => plan.push((ADMIN_POOL.to_owned(), pool, patch)),
            Err(e) => errors.extend(e.0.into_iter().map(|f| FieldError {
                field: format!("admin.pool.{}", f.field),
                ..f
            })),
        }
    }
    if !errors.is_empty() {
        return Err(ReloadError(errors));
    }
    for old in &current.servers {
        if !next.servers.iter().any(|s| s.name == old.name) {
            changes.remove.push(old.name.clone());
        }
    }
    if next.admin_listen != current.admin_listen
        || next.admin_token != current.admin_token
        || next.admin_probes_need_token != current.admin_probes_need_token
    {
        report
            .not_applied
            .push("admin listen, token or probes_need_token changed: that takes a restart".into());
    }
    if next.log != current.log {
        report
            .not_applied
            .push("log settings changed: that takes a restart".into());
    }
    for (name, cert, pem) in certificates {
        match cert.replace(&pem) {
            Ok(true) => {
                tracing::info!(server = %name, "certificate replaced; new handshakes use it");
                report.certificates_replaced.push(name);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(server = %name, error = %e, "certificate not replaced"),
        }
    }
    for (name, pool, patch) in plan {
        match pool.update_config(&patch) {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) => report.changed.push((name, changes)),
            // Validated above; only a concurrent change could make it fail now.
            Err(e) => tracing::warn!(server = %name, error = %e, "pool settings not applied"),
        }
    }
    let mut recorded = next.clone();
    // What does not apply live stays as it runs, so `/config` shows the truth; servers added
    // and removed are recorded by the caller once started or stopped.
    recorded.servers.retain(|s| {
        current.servers.iter().any(|o| {
            o.name == s.name && o.protocol == s.protocol && o.listen == s.listen && o.tls == s.tls
        })
    });
    for old in &current.servers {
        if !recorded.servers.iter().any(|s| s.name == old.name) {
            recorded.servers.push(old.clone());
        }
    }
    recorded.admin_listen = current.admin_listen;
    recorded.admin_token = current.admin_token.clone();
    recorded.admin_probes_need_token = current.admin_probes_need_token;
    recorded.log = current.log.clone();
    *running.write().unwrap_or_else(|p| p.into_inner()) = recorded;
    Ok((report, changes))
}
