//! An admitted connection's slot in its pool: the RAII [`ConnectionGuard`].
//!
//! Contract: the guard is the connection's slot. Dropping it — normally, on panic or on
//! cancellation — releases the slot exactly once, so the open count can never leak.

use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::activity::later;
use crate::connection::{ConnectionShared, ConnectionTracker};
use crate::core::PoolInner;
use crate::driver::{drive, ManagedConnection};
use crate::events::{ConnectionId, PoolEventKind};
use crate::metrics::{CloseReason, TimeoutKind};
use crate::policy::ProtocolPolicy;

/// An admitted connection's slot in its pool (the design's `addConnection` result); dropping it
/// removes the connection (`removeConnection`) with the reason set by then.
#[derive(Debug)]
pub struct ConnectionGuard<P: ProtocolPolicy> {
    shared: Arc<ConnectionShared>,
    pool: Arc<PoolInner<P>>,
    reason: CloseReason,
    /// The per-IP key the connection is counted under, if any: kept, as the prefix that made
    /// it may change while the connection is open.
    per_ip: Option<IpAddr>,
}

impl<P: ProtocolPolicy> ConnectionGuard<P> {
    /// The guard of an admitted connection; `per_ip`: the per-IP key it holds a slot under.
    pub(crate) fn new(
        shared: Arc<ConnectionShared>,
        pool: Arc<PoolInner<P>>,
        per_ip: Option<IpAddr>,
    ) -> Self {
        ConnectionGuard {
            shared,
            pool,
            reason: CloseReason::Completed,
            per_ip,
        }
    }

    /// The connection's id, unique within its pool.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// A tracker for the protocol code to report activity through.
    pub fn tracker(&self) -> ConnectionTracker {
        ConnectionTracker::new(self.shared.clone())
    }

    /// The pool's protocol policy.
    pub fn policy(&self) -> &P {
        &self.pool.policy
    }

    /// Sets the reason the connection will be removed with.
    pub fn set_reason(&mut self, reason: CloseReason) {
        self.reason = reason;
    }

    /// Drives `conn` to its end under the pool's rules (timeouts, drain, live limit changes)
    /// and returns why it closed. The guard, dropped afterwards (after `conn`), removes it from
    /// the pool.
    ///
    /// The future is most of a connection's task, for as long as the connection lives, so it is
    /// an `async` block rather than an `async fn`, which would hold the guard twice (where it
    /// arrived and in the local it moves into); and the driver borrows the pinned `conn` rather
    /// than holding a copy of its own.
    // An `async fn` would hold its arguments twice (above).
    #[allow(clippy::manual_async_fn)]
    pub fn serve<C: ManagedConnection>(mut self, conn: C) -> impl Future<Output = CloseReason> {
        async move {
            let conn = pin!(conn);
            let reason = drive(&self.shared, &self.pool.core, conn).await;
            self.set_reason(reason);
            reason
        }
    }

    /// Runs a connection's opening step (a TLS handshake, say) bounded by `headers_timeout` and
    /// abandoned when the pool drains. `None` means it did not finish; the guard's reason says why.
    pub async fn opening<F: Future>(&mut self, step: F) -> Option<F::Output> {
        let core = self.pool.core.clone();
        let mut control = core.control.subscribe();
        let state = control.borrow_and_update().clone();
        if !state.stage.serves() {
            self.reason = CloseReason::Shutdown;
            return None;
        }
        let deadline = later(self.shared.opened_at(), state.config.headers_timeout);
        let mut step = pin!(step);
        loop {
            tokio::select! {
                biased;
                out = step.as_mut() => return Some(out),
                changed = control.changed() => {
                    if changed.is_err() || !control.borrow_and_update().stage.serves() {
                        self.reason = CloseReason::Shutdown;
                        return None;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let id = self.shared.id;
                    let kind = TimeoutKind::Handshake;
                    tracing::debug!(pool = %core.name, id, kind = kind.as_str(), "connection timed out");
                    core.publish(|| PoolEventKind::ConnectionTimeout { id, kind });
                    self.reason = CloseReason::Timeout(kind);
                    return None;
                }
            }
        }
    }

    /// Whether the connection is in good shape, per the protocol policy (`isConnectionHealthy`).
    pub fn is_healthy(&self) -> bool {
        self.pool
            .policy
            .is_healthy(&self.shared.activity(), &self.pool.core.config())
    }
}

impl<P: ProtocolPolicy> Drop for ConnectionGuard<P> {
    fn drop(&mut self) {
        let s = &self.shared;
        let core = &self.pool.core;
        s.register_driver(None);
        if s.is_closing() {
            core.counters.closing.fetch_sub(1, Ordering::Relaxed);
        }
        let requests = s.requests();
        core.counters.count_close(self.reason, requests);
        if let Some(key) = self.per_ip {
            core.per_ip.release(key);
        }
        let open = core.admission.release(s.shed_claimed());
        // Reading the clock costs as much as the rest of the release: only when it is reported.
        if tracing::enabled!(tracing::Level::DEBUG) || core.events.has_subscribers() {
            let duration_ms = s.opened_at().elapsed().as_millis() as u64;
            tracing::debug!(
                pool = %core.name, id = s.id, reason = %self.reason, requests, duration_ms,
                "connection removed"
            );
            core.publish(|| PoolEventKind::ConnectionRemoved {
                id: s.id,
                reason: self.reason,
                duration_ms,
                requests,
            });
        }
        core.after_release(open);
    }
}
