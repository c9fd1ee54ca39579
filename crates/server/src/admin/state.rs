//! What the admin endpoint reads, and the `/health` and `/readyz` answers computed from it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use poolserve_pool::{Health, HealthStatus, PoolRegistry};
use serde::Serialize;

use crate::config::{RunConfig, ADMIN_POOL};
use crate::server::Server;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Every pool.
    pub registry: Arc<PoolRegistry>,
    /// Set when the process starts shutting down.
    pub draining: Arc<AtomicBool>,
    /// Bearer token required on every request, if any.
    pub token: Option<Arc<str>>,
    /// Whether the probes (`/livez`, `/readyz`) need the token too.
    pub probes_need_token: bool,
    /// The running config (pool settings in it are as at start; `/config` reads live ones).
    pub config: Arc<RwLock<RunConfig>>,
    /// The running servers (their listening sockets, for `/config` and `/stats`).
    pub servers: Arc<RwLock<Vec<Arc<Server>>>>,
    /// Worker threads of the async runtime the servers run on.
    pub worker_threads: usize,
}

/// The `/health` document (SPEC M).
#[derive(Debug, Serialize)]
pub struct HealthDocument {
    /// The worst status of the servers' pools (`unavailable` while the process drains). The
    /// admin endpoint's pool is listed but does not count: a busy admin port (or its own 503s
    /// from `/readyz`) never takes traffic away from the servers.
    pub status: HealthStatus,
    /// Each pool's health, by name.
    pub pools: BTreeMap<String, Health>,
}

impl AdminState {
    /// The `/health` document as of now.
    pub fn health(&self) -> HealthDocument {
        let pools: BTreeMap<String, Health> = self.registry.health().into_iter().collect();
        let mut status = pools
            .iter()
            .filter(|(name, _)| *name != ADMIN_POOL)
            .map(|(_, h)| h.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        if self.draining.load(Ordering::Relaxed) {
            status = HealthStatus::Unavailable;
        }
        HealthDocument { status, pools }
    }

    /// Whether a load balancer should send this process traffic, and if not, why: the
    /// servers' pools decide, not the admin endpoint's.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let not_ready: Vec<String> = self
            .registry
            .health()
            .into_iter()
            .filter(|(name, h)| name != ADMIN_POOL && !h.status.is_ready())
            .map(|(name, h)| format!("{name}: {} ({})", h.status, h.message))
            .collect();
        if not_ready.is_empty() {
            Ok(())
        } else {
            Err(not_ready.join("\n"))
        }
    }
}
