//! Drives one admitted connection to its end under the pool's rules.
//!
//! Contract: [`ConnectionGuard::serve`] polls the protocol's connection future together with
//! (1) the pool's control channel — a config change re-arms the timeouts, a drain asks the
//! connection to close politely, the drain deadline drops it — and (2) one timer armed at the
//! deadline the protocol policy computes from the connection's activity. The deadline is recomputed
//! after every poll, so it follows activity exactly without a per-request notification, and a
//! moved-out deadline only extends the armed timer. There is no sweep over connections anywhere:
//! each connection watches its own state.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use tokio::time::Sleep;

use crate::config::PoolConfig;
use crate::connection::{ConnectionGuard, ConnectionShared};
use crate::events::PoolEventKind;
use crate::metrics::{CloseReason, TimeoutKind};
use crate::policy::ProtocolPolicy;
use crate::pool::Stage;

/// A protocol connection the pool can drive: a future that serves it to the end, plus the
/// protocol's polite close (`cleanupConnection`: HTTP/1 `Connection: close` after the current
/// response, HTTP/2 GOAWAY, WebSocket close 1001). Closing at once is dropping the future.
pub trait ManagedConnection: Future<Output = Result<(), Self::Error>> {
    /// The error the connection can end with.
    type Error: std::fmt::Display;

    /// Asks the connection to finish what is in flight and then close.
    fn close_politely(self: Pin<&mut Self>);

    /// Whether an error is the peer's doing (a malformed request, a reset): such closes are
    /// announced and counted as `protocol_error` but do not weigh in the pool's error rate.
    fn is_peer_fault(_error: &Self::Error) -> bool {
        false
    }
}

/// What the phase timer reports.
enum Expiry {
    Timeout(TimeoutKind),
    /// The pool is over its limit, this connection is idle and took a shedding claim.
    Shed,
}

/// One timer per connection, always armed at the policy's current deadline.
struct PhaseTimer<'a, P> {
    conn: &'a ConnectionShared,
    policy: &'a P,
    config: Arc<PoolConfig>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// Whether this connection may still be chosen to shed load.
    may_shed: bool,
}

impl<P: ProtocolPolicy> PhaseTimer<'_, P> {
    fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Poll<Expiry> {
        if self.may_shed && self.conn.is_idle() && self.conn.try_claim_shed() {
            self.may_shed = false;
            return Poll::Ready(Expiry::Shed);
        }
        let Some((deadline, kind)) = self.policy.deadline(&self.conn.activity(), &self.config)
        else {
            // No bound in this phase; the next poll of the connection recomputes.
            self.armed = None;
            return Poll::Pending;
        };
        if self.armed != Some(deadline) {
            self.armed = Some(deadline);
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            // The deadline was computed from the latest activity just now, so it is overrun.
            Poll::Ready(()) => Poll::Ready(Expiry::Timeout(kind)),
        }
    }
}

impl<P: ProtocolPolicy> ConnectionGuard<P> {
    /// Serves `conn` to its end under the pool's timeouts, drain and limit changes, then removes
    /// the connection from the pool. Returns why it closed.
    pub async fn serve<C: ManagedConnection>(mut self, conn: C) -> CloseReason {
        let reason = self.drive(conn).await;
        self.reason = reason;
        reason
    }

    async fn drive<C: ManagedConnection>(&mut self, conn: C) -> CloseReason {
        let pool = self.pool.clone();
        let core = &*pool.core;
        let shared = self.shared.clone();
        let mut conn = pin!(conn);
        let mut control = core.control.subscribe();
        let state = control.borrow_and_update().clone();
        let mut timer = PhaseTimer {
            conn: &shared,
            policy: &pool.policy,
            config: state.config.clone(),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
            may_shed: true,
        };
        let mut closing: Option<CloseReason> = None;
        let mut control_open = true;
        match state.stage {
            Stage::Serving => {}
            Stage::Draining => {
                self.close_politely(conn.as_mut(), &mut closing, CloseReason::Shutdown);
                timer.may_shed = false;
            }
            Stage::Forced => return CloseReason::ForcedShutdown,
        }
        loop {
            tokio::select! {
                biased;
                result = conn.as_mut() => {
                    return match result {
                        Ok(()) if shared.shed_claimed() => CloseReason::LimitLowered,
                        Ok(()) => closing.unwrap_or(CloseReason::Completed),
                        Err(e) if C::is_peer_fault(&e) => {
                            self.tracker().peer_fault(&e);
                            closing.unwrap_or(CloseReason::ProtocolError)
                        }
                        Err(e) => {
                            self.tracker().error(&e);
                            closing.unwrap_or(CloseReason::Error)
                        }
                    };
                }
                changed = control.changed(), if control_open => {
                    if changed.is_err() {
                        control_open = false;
                        continue;
                    }
                    let state = control.borrow_and_update().clone();
                    timer.config = state.config;
                    timer.armed = None;
                    match state.stage {
                        Stage::Forced => return CloseReason::ForcedShutdown,
                        Stage::Draining => {
                            timer.may_shed = false;
                            self.close_politely(conn.as_mut(), &mut closing, CloseReason::Shutdown);
                        }
                        Stage::Serving => {}
                    }
                }
                expiry = std::future::poll_fn(|cx| timer.poll_expiry(cx)) => match expiry {
                    Expiry::Timeout(kind) => {
                        let id = shared.id;
                        tracing::debug!(pool = %core.name, id, kind = kind.as_str(), "connection timed out");
                        core.publish(|| PoolEventKind::ConnectionTimeout { id, kind });
                        return CloseReason::Timeout(kind);
                    }
                    Expiry::Shed => {
                        self.close_politely(conn.as_mut(), &mut closing, CloseReason::LimitLowered);
                    }
                }
            }
        }
    }

    fn close_politely<C: ManagedConnection>(
        &self,
        conn: Pin<&mut C>,
        closing: &mut Option<CloseReason>,
        reason: CloseReason,
    ) {
        if closing.is_none() {
            *closing = Some(reason);
            self.shared.mark_closing();
            conn.close_politely();
        }
    }

    /// Runs a connection's opening step (a TLS handshake, say) bounded by `headers_timeout` and
    /// abandoned when the pool drains. `None` means it did not finish; the guard's reason says why.
    pub async fn opening<F: Future>(&mut self, step: F) -> Option<F::Output> {
        let core = self.pool.core.clone();
        let mut control = core.control.subscribe();
        let state = control.borrow_and_update().clone();
        if state.stage != Stage::Serving {
            self.reason = CloseReason::Shutdown;
            return None;
        }
        let deadline = self.shared.opened_at + state.config.headers_timeout;
        let mut step = pin!(step);
        loop {
            tokio::select! {
                biased;
                out = step.as_mut() => return Some(out),
                changed = control.changed() => {
                    if changed.is_err() || control.borrow_and_update().stage != Stage::Serving {
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
}
