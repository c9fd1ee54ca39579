//! One place that owns every pool of a process by name.
//!
//! Contract: [`PoolRegistry::get_or_create`] returns the pool in service under a name, creating it
//! on first use; all pools of a registry share one event bus, so one subscription sees them all.
//! A pool taken out of service ([`PoolRegistry::retire`], or displaced by
//! [`PoolRegistry::insert`]) frees its name at once, so a new pool can take it while the old one
//! drains; it stays listed by [`PoolRegistry::pools`] (metrics) until
//! [`PoolRegistry::release`]d, unless a pool in service has its name. Retiring and releasing
//! are keyed on the pool itself, never on its name, so neither can touch a newer pool of that
//! name. A registry is a plain value with no hidden global; [`PoolRegistry::global`] is a
//! convenience.

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
    pools: RwLock<Pools>,
    events: EventBus,
}

/// The pools of a registry: those in service by name, and those taken out of service that are
/// still draining.
#[derive(Default)]
struct Pools {
    in_service: BTreeMap<String, Arc<dyn PoolHandle>>,
    /// Oldest first; a name may appear more than once.
    retiring: Vec<Arc<dyn PoolHandle>>,
}

/// Whether `handle` is `pool` itself (not merely a pool of the same name).
fn is<P: ProtocolPolicy>(handle: &Arc<dyn PoolHandle>, pool: &Pool<P>) -> bool {
    handle
        .as_any()
        .downcast_ref::<Pool<P>>()
        .is_some_and(|p| Arc::ptr_eq(&p.inner, &pool.inner))
}

impl std::fmt::Debug for PoolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pools = self.read();
        let retiring: Vec<&str> = pools.retiring.iter().map(|p| p.name()).collect();
        f.debug_struct("PoolRegistry")
            .field("pools", &pools.in_service.keys().collect::<Vec<_>>())
            .field("retiring", &retiring)
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pools> {
        self.pools.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pools> {
        self.pools.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool in service named `name`, created from `policy` and `config` if there is none
    /// yet.
    pub fn get_or_create<P: ProtocolPolicy>(
        &self,
        name: &str,
        policy: P,
        config: PoolConfig,
    ) -> Result<Pool<P>, RegistryError> {
        let mut pools = self.write();
        if let Some(existing) = pools.in_service.get(name) {
            return existing
                .as_any()
                .downcast_ref::<Pool<P>>()
                .cloned()
                .ok_or_else(|| RegistryError::TypeMismatch {
                    name: name.to_owned(),
                    existing: existing.protocol(),
                });
        }
        let pool = self.create(name, policy, config);
        pools
            .in_service
            .insert(name.to_owned(), Arc::new(pool.clone()));
        Ok(pool)
    }

    /// A new pool named `name` on this registry's event bus, not yet in service: nothing lists
    /// it until [`insert`](Self::insert).
    pub fn create<P: ProtocolPolicy>(&self, name: &str, policy: P, config: PoolConfig) -> Pool<P> {
        Pool::with_events(name, policy, config, self.events.clone())
    }

    /// Puts `pool` in service under its name. Another pool in service under that name is
    /// retired (see [`retire`](Self::retire)); `pool` itself in service already is left as is.
    pub fn insert<P: ProtocolPolicy>(&self, pool: &Pool<P>) {
        let mut pools = self.write();
        let pools = &mut *pools;
        pools.retiring.retain(|p| !is(p, pool));
        let previous = pools
            .in_service
            .insert(pool.name().to_owned(), Arc::new(pool.clone()));
        if let Some(previous) = previous.filter(|p| !is(p, pool)) {
            pools.retiring.push(previous);
        }
    }

    /// Takes `pool` out of service: its name is free for a new pool at once, and it stays
    /// listed by [`pools`](Self::pools) (while no pool in service has its name) until
    /// [`release`](Self::release). Returns whether `pool` was in service.
    pub fn retire<P: ProtocolPolicy>(&self, pool: &Pool<P>) -> bool {
        let mut pools = self.write();
        let pools = &mut *pools;
        match pools.in_service.get(pool.name()) {
            Some(current) if is(current, pool) => {
                if let Some(current) = pools.in_service.remove(pool.name()) {
                    pools.retiring.push(current);
                }
                true
            }
            _ => false,
        }
    }

    /// Forgets `pool`, in service or retiring; a newer pool of the same name stays. Returns
    /// whether the registry held it.
    pub fn release<P: ProtocolPolicy>(&self, pool: &Pool<P>) -> bool {
        let mut pools = self.write();
        let pools = &mut *pools;
        let retiring = pools.retiring.len();
        pools.retiring.retain(|p| !is(p, pool));
        if pools.retiring.len() != retiring {
            return true;
        }
        match pools.in_service.get(pool.name()) {
            Some(current) if is(current, pool) => {
                pools.in_service.remove(pool.name());
                true
            }
            _ => false,
        }
    }

    /// The pool in service named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn PoolHandle>> {
        self.read().in_service.get(name).cloned()
    }

    /// Takes the pool in service named `name` out of the registry (its connections are not
    /// touched).
    pub fn remove(&self, name: &str) -> Option<Arc<dyn PoolHandle>> {
        self.write().in_service.remove(name)
    }

    /// Every pool listed: those in service by name, then each retiring pool whose name no
    /// pool in service has (the newest of a name first), so no name appears twice.
    pub fn pools(&self) -> Vec<Arc<dyn PoolHandle>> {
        let pools = self.read();
        let mut listed: Vec<Arc<dyn PoolHandle>> = pools.in_service.values().cloned().collect();
        for retiring in pools.retiring.iter().rev() {
            if !listed.iter().any(|p| p.name() == retiring.name()) {
                listed.push(retiring.clone());
            }
        }
        listed
    }

    /// The name of every pool in service.
    pub fn names(&self) -> Vec<String> {
        self.read().in_service.keys().cloned().collect()
    }

    /// Every listed pool's metrics at once (see [`pools`](Self::pools)).
    pub fn metrics(&self) -> Vec<MetricsSnapshot> {
        self.pools().iter().map(|p| p.metrics()).collect()
    }

    /// The health of every pool in service, by name; a retiring pool is no longer part of
    /// what the process serves.
    pub fn health(&self) -> Vec<(String, Health)> {
        let pools: Vec<_> = self.read().in_service.values().cloned().collect();
        pools
            .iter()
            .map(|p| (p.name().to_owned(), p.health()))
            .collect()
    }

    /// A subscription to the events of every pool in this registry.
    pub fn subscribe(&self) -> Subscription {
        self.events.subscribe(None)
    }

    /// Closes every pool's connections concurrently under one deadline, retiring ones included.
    pub async fn close_all(&self, deadline: Duration) -> Vec<(String, CloseReport)> {
        let every: Vec<Arc<dyn PoolHandle>> = {
            let pools = self.read();
            let in_service = pools.in_service.values();
            in_service.chain(&pools.retiring).cloned().collect()
        };
        let mut closing = tokio::task::JoinSet::new();
        for pool in every {
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

    #[test]
    fn a_name_retired_while_its_pool_drains_gets_a_fresh_pool_that_its_release_leaves_alone() {
        let r = PoolRegistry::new();
        let old = r
            .get_or_create("w", DefaultPolicy("http"), PoolConfig::default())
            .unwrap();
        let _open = old.admit(None).unwrap();
        assert!(r.retire(&old));
        assert!(r.get("w").is_none(), "the name is free at once");
        assert!(r.health().is_empty(), "a retiring pool is out of service");
        assert_eq!(r.metrics()[0].active, 1, "still listed while it drains");

        let new = r
            .get_or_create("w", DefaultPolicy("http"), PoolConfig::default())
            .unwrap();
        assert_eq!(
            new.active_connections(),
            0,
            "a fresh pool, not the draining one"
        );
        let metrics = r.metrics();
        assert_eq!(metrics.len(), 1, "one sample per name: {metrics:?}");
        assert_eq!(metrics[0].active, 0);

        assert!(r.release(&old));
        assert!(!r.retire(&old), "no longer in service");
        assert_eq!(
            r.names(),
            ["w"],
            "the old pool's release leaves the new one"
        );
        assert_eq!(r.health().len(), 1);
        assert!(!r.release(&old));
    }

    #[test]
    fn insert_puts_a_pool_in_service_and_retires_the_one_it_displaces() {
        let r = PoolRegistry::new();
        let old = r.create("w", DefaultPolicy("http"), PoolConfig::default());
        assert!(r.pools().is_empty(), "a created pool is not listed");
        r.insert(&old);
        r.insert(&old);
        assert_eq!(r.pools().len(), 1);
        let _open = old.admit(None).unwrap();
        let new = r.create("w", DefaultPolicy("https"), PoolConfig::default());
        r.insert(&new);
        assert_eq!(r.get("w").unwrap().protocol(), "https");
        assert_eq!(
            r.pools().len(),
            1,
            "the displaced pool is hidden by the new one"
        );
        assert!(!r.retire(&old), "already retired");
        assert!(r.release(&old));
        assert_eq!(r.get("w").unwrap().protocol(), "https");
        assert!(r.release(&new));
        assert!(r.pools().is_empty());
    }
}
