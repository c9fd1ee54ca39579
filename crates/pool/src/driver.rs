//! Drives one admitted connection to its end under the pool's rules.
//!
//! Contract: [`ConnectionGuard::serve`] polls the protocol's connection future together with
//! (1) the pool's control channel — a config change re-arms the timeouts, a drain asks the
//! connection to close politely, the drain deadline drops it — and (2) one timer armed at the
//! deadline the protocol policy computes from the connection's activity. Both are polled only
//! when they woke the task (the timer also right after it is re-armed); the deadline is
//! recomputed when the connection's activity changed phase. A busy connection pays a few atomic
//! loads per poll for them, and no per-request notification is needed. There is no sweep over
//! connections anywhere: each connection watches its own state.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::time::Instant;

use tokio::time::Sleep;

use crate::config::PoolConfig;
use crate::connection::{ConnectionGuard, ConnectionShared};
use crate::events::PoolEventKind;
use crate::metrics::{CloseReason, TimeoutKind};
use crate::policy::{Activity, Phase, ProtocolPolicy};
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

    /// The timeout an error reports, when the protocol enforces one of its own (an HTTP/2
    /// keep-alive ping nobody answered): the close is then counted as that timeout.
    fn timeout_kind(_error: &Self::Error) -> Option<TimeoutKind> {
        None
    }
}

/// Why the pool's side ended or interrupted the connection.
enum Expiry {
    Timeout(TimeoutKind),
    /// The pool is over its limit and this idle connection took a shedding claim.
    Shed,
}

/// One connection's timer, armed at the deadline its policy computes.
///
/// The deadline is recomputed only when the pool's side woke the driver (the timer fired, the
/// config changed) or when [`ConnectionShared::deadline_key`] changed. Re-arming a timer earlier
/// costs a trip through the runtime's timer wheel, so the timer only ever moves earlier when a
/// deadline does: a deadline that moved later (a new request on a keep-alive connection, a
/// WebSocket message) or went away (a response being written) leaves the armed timer alone, and
/// is taken up lazily when that timer fires. A request therefore costs the timer a few loads and
/// no wheel operation.
struct PhaseTimer<'a, P> {
    conn: &'a ConnectionShared,
    policy: &'a P,
    config: Arc<PoolConfig>,
    /// Pinned in the driver's own future: no allocation of its own.
    sleep: Pin<&'a mut Sleep>,
    /// When the timer is set to fire; `None` before it is first set, once it fired, and after a
    /// config change, so the next deadline arms it afresh.
    armed: Option<Instant>,
    key: Option<u32>,
    /// Whether the connection may still take a shedding claim.
    may_shed: bool,
}

impl<P: ProtocolPolicy> PhaseTimer<'_, P> {
    /// When to arm the timer for `deadline`. An idle keep-alive connection's next request will
    /// be bounded by `headers_timeout` from its first byte, which can be sooner than the
    /// keep-alive deadline: arming no later than that bound from the idle spell's start means
    /// that request needs no earlier re-arm. A timer that fires early only causes a re-check.
    fn arm_at(&self, deadline: Instant, a: &Activity) -> Instant {
        if a.phase == Phase::Idle && a.requests > 0 && !a.multiplexed && !a.upgraded {
            let next_head = self.config.headers_timeout.min(self.config.request_timeout);
            deadline.min(a.phase_since + next_head)
        } else {
            deadline
        }
    }

    /// Polled after every poll of the connection: what it costs a busy connection is the
    /// check inlined here, a handful of loads.
    #[inline(always)]
    fn poll_expiry(&mut self, woken: bool, cx: &mut Context<'_>) -> Poll<Expiry> {
        let key = self.conn.deadline_key();
        if !woken && self.key == Some(key) {
            return Poll::Pending;
        }
        self.key = Some(key);
        self.recheck(woken, cx)
    }

    /// The deadline may have moved (or the pool's side woke the driver): look again.
    #[inline(never)]
    fn recheck(&mut self, woken: bool, cx: &mut Context<'_>) -> Poll<Expiry> {
        // An HTTP/1 connection is shed between requests; a multiplexed one at once, as its
        // polite close (GOAWAY) lets the streams in flight finish.
        if self.may_shed
            && (self.conn.is_idle() || self.conn.is_multiplexed())
            && self.conn.try_claim_shed()
        {
            self.may_shed = false;
            return Poll::Ready(Expiry::Shed);
        }
        let activity = self.conn.activity();
        let Some((deadline, kind)) = self.policy.deadline(&activity, &self.config) else {
            // No deadline in this phase: an armed timer stays armed and only causes a re-check.
            // One that fired is no longer armed, so the next deadline arms it again.
            if woken && self.armed.is_some() && self.sleep.as_mut().poll(cx).is_ready() {
                self.armed = None;
            }
            return Poll::Pending;
        };
        let mut rearmed = false;
        if self.armed.is_none_or(|armed| deadline < armed) {
            let at = self.arm_at(deadline, &activity);
            self.armed = Some(at);
            self.sleep.as_mut().reset(at);
            rearmed = true;
        }
        // The sleep holds the pool-side waker since it was last polled, and firing wakes the
        // driver with `woken` set: it needs a poll only then, or when it was just re-armed.
        if !woken && !rearmed {
            return Poll::Pending;
        }
        loop {
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // The armed deadline was the current one: it passed.
                Poll::Ready(()) if self.armed == Some(deadline) => {
                    return Poll::Ready(Expiry::Timeout(kind));
                }
                // An earlier arming fired before the deadline (which activity moved out, or
                // which `arm_at` armed ahead of): re-arm at the deadline itself.
                Poll::Ready(()) => {
                    self.armed = Some(deadline);
                    self.sleep.as_mut().reset(deadline);
                }
            }
        }
    }
}

/// What woke the driver.
enum Event<E> {
    Finished(Result<(), E>),
    Control,
    Expired(Expiry),
}

impl<P: ProtocolPolicy> ConnectionGuard<P> {
    /// Drives `conn` to its end under the pool's rules (timeouts, drain, live limit changes)
    /// and returns why it closed. The guard, dropped afterwards, removes it from the pool.
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
        // Enabled before the state is read, so a change made after the read wakes this driver.
        let mut changed = pin!(core.control_changed.notified());
        changed.as_mut().enable();
        let (mut generation, state) = core.control_snapshot();
        let stage = state.stage;
        let sleep = pin!(tokio::time::sleep_until(Instant::now()));
        let mut timer = PhaseTimer {
            conn: &shared,
            policy: &pool.policy,
            config: state.config,
            sleep,
            armed: None,
            key: None,
            may_shed: true,
        };
        let mut closing: Option<CloseReason> = None;
        match stage {
            Stage::Serving => {}
            Stage::Draining => {
                self.close_politely(conn.as_mut(), &mut closing, CloseReason::Shutdown);
                timer.may_shed = false;
            }
            Stage::Forced => return CloseReason::ForcedShutdown,
        }
        // The control waiter and the timer wake this waker, which flags the pool's side as due:
        // polling them only then keeps the per-poll cost of the pool to a few atomic loads.
        let pool_side = Waker::from(shared.clone());
        shared.request_pool_side_check();
        // The waker last registered. A pool-side wake does not take it out, so a poll whose
        // waker is the same (a tokio task's always is) has nothing to register and no lock to
        // take; one that changed is registered before the pool's side is looked at, so a wake
        // either reaches the new waker or is seen by this poll.
        let mut registered: Option<Waker> = None;
        loop {
            let event = std::future::poll_fn(|cx| {
                if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    registered = Some(cx.waker().clone());
                    shared.register_driver(registered.clone());
                }
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Finished(result));
                }
                let woken = shared.take_pool_side_wake();
                let mut pool_cx = Context::from_waker(&pool_side);
                // Polling the waiter also registers the pool-side waker with it.
                if woken
                    && (changed.as_mut().poll(&mut pool_cx).is_ready()
                        || core.control_changed_since(generation))
                {
                    return Poll::Ready(Event::Control);
                }
                timer.poll_expiry(woken, &mut pool_cx).map(Event::Expired)
            })
            .await;
            // Whatever happened, look at the pool's side again on the next poll.
            shared.request_pool_side_check();
            match event {
                Event::Finished(result) => {
                    return match result {
                        Ok(()) if shared.shed_claimed() => CloseReason::LimitLowered,
                        Ok(()) => closing.unwrap_or(CloseReason::Completed),
                        Err(e) if C::timeout_kind(&e).is_some() => {
                            let kind = C::timeout_kind(&e).unwrap_or(TimeoutKind::Idle);
                            let id = shared.id;
                            tracing::debug!(pool = %core.name, id, kind = kind.as_str(), error = %e, "connection timed out");
                            core.publish(|| PoolEventKind::ConnectionTimeout { id, kind });
                            CloseReason::Timeout(kind)
                        }
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
                Event::Control => {
                    changed.set(core.control_changed.notified());
                    changed.as_mut().enable();
                    let state;
                    (generation, state) = core.control_snapshot();
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
                Event::Expired(Expiry::Timeout(kind)) => {
                    let id = shared.id;
                    tracing::debug!(pool = %core.name, id, kind = kind.as_str(), "connection timed out");
                    core.publish(|| PoolEventKind::ConnectionTimeout { id, kind });
                    return CloseReason::Timeout(kind);
                }
                Event::Expired(Expiry::Shed) => {
                    self.close_politely(conn.as_mut(), &mut closing, CloseReason::LimitLowered);
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
