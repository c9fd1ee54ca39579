//! One place that owns every pool of a process by name.
//!
//! Contract: [`PoolRegistry::get_or_create`] returns the pool registered under a name, creating it
//! on first use; all pools of a registry share one event bus, so one subscription sees them all.
//! A registry is a plain value with no hidden global; [`PoolRegistry::global`] is a convenience.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::config::{ConfigChange, ConfigErrors, PoolConfig, PoolSettings};
use crate::events::{EventBus, Subscription};
use crate::health::Health;
use crate::metrics::MetricsSnapshot;
use crate::policy::ProtocolPolicy;
use crate::pool::{CloseReport, Pool};

/// A pool seen without its protocol type: what admin endpoints and shutdown need.
pub trait PoolHandle: Send + Sync {
    /// The pool's name.
    fn name(&self) -> &str;
    /// The protocol label.
    fn protocol(&self) -> &'static str;
    /// Current health.
    fn health(&self) -> Health;
    /// A metrics snapshot.
    fn metrics(&self) -> MetricsSnapshot;
    /// The config in force.
    fn config(&self) -> Arc<PoolConfig>;
    /// Applies a settings patch live.
    fn update_config(&self, patch: &PoolSettings) -> Result<Vec<ConfigChange>, ConfigErrors>;
    /// Closes every connection politely, forcing the rest at the deadline.
    fn close_all(&self, deadline: Duration) -> Pin<Box<dyn Future<Output = CloseReport> + Send>>;
    /// The typed pool, for [`PoolRegistry::get_or_create`].
    fn as_any(&self) -> &dyn Any;
}

impl<P: ProtocolPolicy> PoolHandle for Pool<P> {
    fn name(&self) -> &str {
        Pool::name(self)
    }
    fn protocol(&self) -> &'static str {
        Pool::protocol(self)
    }
    fn health(&self) -> Health {
        Pool::health(self)
    }
    fn metrics(&self) -> MetricsSnapshot {
        Pool::metrics(self)
    }
    fn config(&self) -> Arc<PoolConfig> {
        Pool::config(self)
    }
    fn update_config(&self, patch: &PoolSettings) -> Result<Vec<ConfigChange>, ConfigErrors> {
        Pool::update_config(self, patch)
    }
    fn close_all(&self, deadline: Duration) -> Pin<Box<dyn Future<Output = CloseReport> + Send>> {
        let pool = self.clone();
        Box::pin(async move { pool.close_all(deadline).await })
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Why a pool could not be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// A pool of another protocol type already has this name.
    TypeMismatch {
        /// The contested name.
        name: String,
        /// The protocol of the pool registered under it.
        existing: &'static str,
    },
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::TypeMismatch { name, existing } => {
                write!(f, "pool {name:?} already exists with protocol {existing}")
            }
        }
    }
}

impl std::error::Error for RegistryError {}

/// Every pool of a process, by name.
#[derive(Default)]
pub struct PoolRegistry {
    pools: RwLock<BTreeMap<String, Arc<dyn PoolHandle>>>,
    events: EventBus,
}

impl std::fmt::Debug for PoolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRegistry")
            .field("pools", &self.names())
            .finish()
    }
}

impl PoolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A process-wide registry, for programs that want exactly one.
    pub fn global() -> &'static PoolRegistry {
        static GLOBAL: OnceLock<PoolRegistry> = OnceLock::new();
        GLOBAL.get_or_init(PoolRegistry::new)
    }

    /// The pool named `name`, created from `policy` and `config` if there is none yet.
    pub fn get_or_create<P: ProtocolPolicy>(
        &self,
        name: &str,
        policy: P,
        config: PoolConfig,
    ) -> Result<Pool<P>, RegistryError> {
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = pools.get(name) {
            return existing
                .as_any()
                .downcast_ref::<Pool<P>>()
                .cloned()
                .ok_or_else(|| RegistryError::TypeMismatch {
                    name: name.to_owned(),
                    existing: existing.protocol(),
                });
        }
        let pool = Pool::with_events(name, policy, config, self.events.clone());
        pools.insert(name.to_owned(), Arc::new(pool.clone()));
        Ok(pool)
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn PoolHandle>> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Removes the pool named `name` from the registry (its connections are not touched).
    pub fn remove(&self, name: &str) -> Option<Arc<dyn PoolHandle>> {
        self.pools
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Vec<Arc<dyn PoolHandle>> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every pool's name.
    pub fn names(&self) -> Vec<String> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Every pool's metrics at once.
    pub fn metrics(&self) -> Vec<MetricsSnapshot> {
        self.pools().iter().map(|p| p.metrics()).collect()
    }

    /// Every pool's health at once, by name.
    pub fn health(&self) -> Vec<(String, Health)> {
        self.pools()
            .iter()
            .map(|p| (p.name().to_owned(), p.health()))
            .collect()
    }

    /// A subscription to the events of every pool in this registry.
    pub fn subscribe(&self) -> Subscription {
        self.events.subscribe(None)
    }

    /// Closes every pool's connections concurrently under one deadline.
    pub async fn close_all(&self, deadline: Duration) -> Vec<(String, CloseReport)> {
        let mut closing = tokio::task::JoinSet::new();
        for pool in self.pools() {
            let name = pool.name().to_owned();
            let fut = pool.close_all(deadline);
            closing.spawn(async move { (name, fut.await) });
        }
        let mut reports = Vec::new();
        while let Some(done) = closing.join_next().await {
            if let Ok(report) = done {
                reports.push(report);
            }
        }
        reports.sort_by(|a, b| a.0.cmp(&b.0));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DefaultPolicy;

    #[test]
    fn get_or_create_returns_the_same_pool_and_refuses_another_type() {
        #[derive(Debug)]
        struct Other;
        impl ProtocolPolicy for Other {
            fn protocol(&self) -> &'static str {
                "other"
            }
        }
        let r = PoolRegistry::new();
        let a = r
            .get_or_create("web", DefaultPolicy("http"), PoolConfig::default())
            .unwrap();
        let _g = a.admit(None).unwrap();
        let b = r
            .get_or_create("web", DefaultPolicy("http"), PoolConfig::default())
            .unwrap();
        assert_eq!(b.active_connections(), 1);
        let err = r
            .get_or_create("web", Other, PoolConfig::default())
            .unwrap_err();
        assert_eq!(
            err,
            RegistryError::TypeMismatch {
                name: "web".into(),
                existing: "http"
            }
        );
        assert_eq!(r.names(), ["web"]);
        assert_eq!(r.metrics()[0].active, 1);
    }
}
