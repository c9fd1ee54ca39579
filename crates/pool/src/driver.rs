//! Drives one admitted connection to its end under the pool's rules.
//!
//! Contract: [`ConnectionGuard::serve`](crate::ConnectionGuard::serve) polls the protocol's
//! connection future together with (1) the pool's control channel — a config change re-arms
//! the timeouts, a drain asks the connection to close politely (once a request head partly in
//! has come in), the drain deadline drops it —
//! and (2) one timer armed at the deadline the connection's own rule
//! ([`ManagedConnection::deadline`]) computes from its activity. Both are polled only
//! when they woke the task (the timer also right after it is re-armed); the deadline is
//! recomputed when the connection's activity changed phase. A busy connection pays a few atomic
//! loads per poll for them, and no per-request notification is needed. There is no sweep over
//! connections anywhere: each connection watches its own state.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::time::Instant;

use tokio::sync::futures::Notified;
use tokio::time::Sleep;

use crate::activity::{idle_deadline, later, Activity};
use crate::config::PoolConfig;
use crate::connection::{ConnectionShared, ConnectionTracker};
use crate::core::{PoolCore, Stage};
use crate::events::PoolEventKind;
use crate::lifetime::{age_limit, Retirement};
use crate::metrics::{CloseReason, TimeoutKind};

/// A protocol connection the pool can drive: a future that serves it to the end, plus the
/// protocol's polite close (`cleanupConnection`: HTTP/1 `Connection: close` after the current
/// response, HTTP/2 GOAWAY, WebSocket close 1001). Closing at once is dropping the future.
pub trait ManagedConnection: Future<Output = Result<(), Self::Error>> {
    /// The error the connection can end with.
    type Error: std::fmt::Display;

    /// Asks the connection to finish what is in flight and then close. The driver calls this
    /// from the connection's own task and polls the connection right after, so a connection
    /// may act on it in that poll without registering a waker of its own.
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

    /// Whether the connection has a goodbye to send when the pool closes it on a timeout (an
    /// HTTP/2 GOAWAY naming the last stream processed), so a peer that opens a stream at that
    /// moment can tell whether it was processed. The driver then closes it politely: streams
    /// the peer opened before the goodbye took effect finish under the protocol's own rule,
    /// and once none is in flight the connection is dropped [`TIMEOUT_GOODBYE_GRACE`] later if
    /// it has not closed by itself. A write stall has no goodbye (the peer is not reading), nor
    /// has a connection that never sent a byte.
    const GOODBYE_ON_TIMEOUT: bool = false;

    /// The next instant the connection must have moved on by, and the timeout it overruns
    /// then, from its activity and the config in force; `None` when no bound applies in the
    /// current phase (a response being produced or streamed). This is the protocol's timeout
    /// rule. The default is protocol-neutral: [`idle_deadline`].
    fn deadline(activity: &Activity, config: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        idle_deadline(activity, config)
    }

    /// When to arm the connection's timer for `deadline`: never later than it. A protocol
    /// whose next deadline may come sooner without its phase visibly changing arms earlier, so
    /// that change costs no re-arm; a timer that fires early only causes a re-check. The
    /// default is the deadline itself.
    #[inline]
    fn timer_at(deadline: Instant, _activity: &Activity, _config: &PoolConfig) -> Instant {
        deadline
    }
}

/// How long a connection closed on a timeout gets to send its goodbye and close
/// ([`ManagedConnection::GOODBYE_ON_TIMEOUT`]) before it is dropped.
pub const TIMEOUT_GOODBYE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the pool's side ended or interrupted the connection.
enum Expiry {
    Timeout(TimeoutKind),
    /// The pool is over its limit and this idle connection took a shedding claim.
    Shed,
    /// The connection reached its age ([`CloseReason::MaxAge`]) or its request limit
    /// ([`CloseReason::MaxRequests`]): it gets its polite close.
    Retire(CloseReason),
    /// The grace after a polite close ran out: the connection is dropped, closed for this
    /// reason.
    GraceOver(CloseReason),
}

/// What a deadline of the connection's timer brings.
#[derive(Clone, Copy)]
enum Due {
    /// A bound of the protocol's rule.
    Timeout(TimeoutKind),
    /// The connection's age limit.
    Age,
    /// The end of a polite close's grace.
    GraceOver(CloseReason),
}

/// One connection's timer, armed at the deadline its rule computes.
///
/// The deadline is recomputed only when the pool's side woke the driver (the timer fired, the
/// config changed) or when [`ConnectionShared::deadline_key`] changed. Re-arming a timer earlier
/// costs a trip through the runtime's timer wheel, so the timer only ever moves earlier when a
/// deadline does: a deadline that moved later (a new request on a keep-alive connection, a
/// WebSocket message) or went away (a response being written) leaves the armed timer alone, and
/// is taken up lazily when that timer fires. A request therefore costs the timer a few loads and
/// no wheel operation.
struct PhaseTimer<'a, C> {
    conn: &'a ConnectionShared,
    /// The connection type whose rule is applied.
    rule: PhantomData<fn() -> C>,
    config: Arc<PoolConfig>,
    /// Pinned in the driver's own future: no allocation of its own. Its deadline is the
    /// instant the timer is set to fire, while `armed`.
    sleep: Pin<&'a mut Sleep>,
    /// Set once a timeout's goodbye was sent (when, in nanoseconds since the pool's origin, and
    /// for which timeout): from then on the deadline is the end of its grace once no request is
    /// in flight.
    goodbye: Option<(u64, TimeoutKind)>,
    /// Set once the connection started retiring for its age or request count, with when (in
    /// nanoseconds since the pool's origin): it is dropped `max_connection_age_grace` later,
    /// while the protocol's own bounds still apply.
    retiring: Option<(u64, CloseReason)>,
    /// The [`ConnectionShared::deadline_key`] the deadline was last computed for; [`NO_KEY`]
    /// before the first.
    key: u32,
    /// Whether the timer is set to fire (at the sleep's deadline): not before it is first set,
    /// once it fired, and after a config change, so the next deadline arms it afresh.
    armed: bool,
    /// Whether the connection may still take a shedding claim.
    may_shed: bool,
}

/// `PhaseTimer::key` before the deadline was first computed: no deadline key has every bit set.
const NO_KEY: u32 = u32::MAX;

// The timer lives as long as its connection, in the connection's task: kept small (times as
// nanoseconds since the pool's origin rather than `Option<Instant>`s, which take 16 bytes and
// more).
const _: () = assert!(std::mem::size_of::<PhaseTimer<'static, ()>>() <= 64);

impl<C: ManagedConnection> PhaseTimer<'_, C> {
    /// Polled after every poll of the connection: what it costs a busy connection is the
    /// check inlined here, a handful of loads.
    #[inline(always)]
    fn poll_expiry(&mut self, woken: bool, cx: &mut Context<'_>) -> Poll<Expiry> {
        let key = self.conn.deadline_key();
        if !woken && self.key == key {
            return Poll::Pending;
        }
        self.key = key;
        self.recheck(woken, cx)
    }

    /// The deadline may have moved (or the pool's side woke the driver): look again.
    #[inline(never)]
    fn recheck(&mut self, woken: bool, cx: &mut Context<'_>) -> Poll<Expiry> {
        // An HTTP/1 connection is shed between requests; a multiplexed one at once, as its
        // polite close (GOAWAY) lets the streams in flight finish, and an upgraded one at once,
        // as its polite close (WebSocket 1001) comes after the message in hand.
        if self.may_shed
            && (self.conn.is_idle() || self.conn.is_multiplexed() || self.conn.is_upgraded())
            && self.conn.try_claim_shed()
        {
            self.may_shed = false;
            return Poll::Ready(Expiry::Shed);
        }
        let retirement = self.conn.retirement();
        // A retirement waiting for its polite close, which the driver sends on a multiplexed
        // connection (the request path asked for it) or on one upgraded since its age passed.
        if retirement.is_due()
            && (self.conn.is_multiplexed() || self.conn.is_upgraded())
            && !self.conn.is_closing()
        {
            if let Some(reason) = retirement.reason() {
                return Poll::Ready(Expiry::Retire(reason));
            }
        }
        // An HTTP/1 response carried the polite close: the grace starts now.
        if self.retiring.is_none() && retirement.is_sent() {
            self.retiring = retirement.reason().map(|r| (self.stamp(Instant::now()), r));
        }
        let activity = self.conn.activity();
        let rule = match self.goodbye {
            // A stream accepted before the goodbye took effect is answered: the grace runs
            // from when the last one finished.
            Some((sent, kind)) if activity.in_flight == 0 => Some((
                later(
                    self.instant(sent).max(activity.phase_since),
                    TIMEOUT_GOODBYE_GRACE,
                ),
                Due::GraceOver(CloseReason::Timeout(kind)),
            )),
            // Streams still in flight: the protocol's bounds apply, and the connection's age
            // (or the retirement already under way) with its grace still ends them.
            Some(_) => {
                let own = C::deadline(&activity, &self.config).map(|(at, k)| (at, Due::Timeout(k)));
                let grace = self.config.max_connection_age_grace;
                let aged = match self.retiring {
                    Some((since, reason)) => {
                        Some((later(self.instant(since), grace), Due::GraceOver(reason)))
                    }
                    None => self.config.max_connection_age.map(|age| {
                        let limit = later(activity.opened_at, age_limit(age, self.conn.id));
                        (later(limit, grace), Due::GraceOver(CloseReason::MaxAge))
                    }),
                };
                match (own, aged) {
                    (Some(o), Some(l)) => Some(if l.0 < o.0 { l } else { o }),
                    (o, l) => o.or(l),
                }
            }
            None => {
                let own = C::deadline(&activity, &self.config).map(|(at, k)| (at, Due::Timeout(k)));
                match (own, self.lifetime(&activity)) {
                    (Some(o), Some(l)) => Some(if l.0 < o.0 { l } else { o }),
                    (o, l) => o.or(l),
                }
            }
        };
        let Some((deadline, due)) = rule else {
            // No deadline in this phase: an armed timer stays armed and only causes a re-check.
            // One that fired is no longer armed, so the next deadline arms it again.
            if woken && self.armed && self.sleep.as_mut().poll(cx).is_ready() {
                self.armed = false;
            }
            return Poll::Pending;
        };
        let mut rearmed = false;
        if !self.armed || deadline < self.sleep.deadline() {
            let at = match due {
                Due::Timeout(_) => C::timer_at(deadline, &activity, &self.config).min(deadline),
                Due::Age | Due::GraceOver(_) => deadline,
            };
            self.armed = true;
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
                Poll::Ready(()) if self.sleep.deadline() == deadline => {
                    return Poll::Ready(match due {
                        Due::Timeout(kind) => Expiry::Timeout(kind),
                        Due::Age => Expiry::Retire(CloseReason::MaxAge),
                        Due::GraceOver(reason) => Expiry::GraceOver(reason),
                    });
                }
                // An earlier arming fired before the deadline (which activity moved out, or
                // which `timer_at` armed ahead of): re-arm at the deadline itself.
                Poll::Ready(()) => self.sleep.as_mut().reset(deadline),
            }
        }
    }
}

impl<C> PhaseTimer<'_, C> {
    /// `at` in nanoseconds since the pool's origin (exact for any instant since it).
    fn stamp(&self, at: Instant) -> u64 {
        self.conn.core.nanos(at)
    }

    /// The instant `stamp` nanoseconds after the pool's origin.
    fn instant(&self, stamp: u64) -> Instant {
        self.conn.core.instant(stamp)
    }

    /// The connection's lifetime deadline: the end of its retirement's grace once it is
    /// retiring, else its age limit, unless it is closing for another reason.
    fn lifetime(&self, a: &Activity) -> Option<(Instant, Due)> {
        if let Some((since, reason)) = self.retiring {
            let end = later(self.instant(since), self.config.max_connection_age_grace);
            return Some((end, Due::GraceOver(reason)));
        }
        let age = self.config.max_connection_age?;
        if a.closing || self.conn.retirement() != Retirement::None {
            return None;
        }
        Some((later(a.opened_at, age_limit(age, self.conn.id)), Due::Age))
    }
}

/// What woke the driver.
enum Event<E> {
    Finished(Result<(), E>),
    Control,
    Expired(Expiry),
    /// The request head a deferred polite close waited for is in (or gave way to idleness).
    HeadIn,
}

/// The driver's own state, beside the connection and the control waiter it polls: its poll
/// closure borrows this once rather than each part (every borrow it holds is 8 bytes of the
/// connection's task for as long as the connection lives).
struct Driver<'a, C> {
    timer: PhaseTimer<'a, C>,
    closing: Closing,
    /// The control generation last read.
    generation: u64,
    /// The waker the control waiter and the timer wake, which flags the pool's side as due:
    /// polling them only then keeps the per-poll cost of the pool to a few atomic loads.
    pool_side: Waker,
    /// The waker last registered. A pool-side wake does not take it out, so a poll whose
    /// waker is the same (a tokio task's always is) has nothing to register and no lock to
    /// take; one that changed is registered before the pool's side is looked at, so a wake
    /// either reaches the new waker or is seen by this poll.
    registered: Option<Waker>,
}

impl<C: ManagedConnection> Driver<'_, C> {
    /// Polls the connection, then the pool's side if it woke the driver.
    #[inline(always)]
    fn poll_event(
        &mut self,
        mut conn: Pin<&mut C>,
        mut changed: Pin<&mut Notified<'_>>,
        cx: &mut Context<'_>,
    ) -> Poll<Event<C::Error>> {
        let shared = self.timer.conn;
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.registered = Some(cx.waker().clone());
            shared.register_driver(self.registered.clone());
        }
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Event::Finished(result));
        }
        // Looked at after every poll of the connection, as the head completes in one.
        if self.closing.deferred && !shared.head_in_progress() {
            return Poll::Ready(Event::HeadIn);
        }
        let woken = shared.take_pool_side_wake();
        let mut pool_cx = Context::from_waker(&self.pool_side);
        // Polling the waiter also registers the pool-side waker with it.
        if woken
            && (changed.as_mut().poll(&mut pool_cx).is_ready()
                || shared.core.control_changed_since(self.generation))
        {
            return Poll::Ready(Event::Control);
        }
        self.timer
            .poll_expiry(woken, &mut pool_cx)
            .map(Event::Expired)
    }
}

/// Drives `conn` to its end under the pool's rules (timeouts, drain, live limit changes) and
/// returns why it closed. `conn` is pinned by the caller, whose future holds it once (an
/// argument taken by value would be held twice, where it arrived and where it is pinned).
pub(crate) async fn drive<C: ManagedConnection>(
    shared: &Arc<ConnectionShared>,
    core: &PoolCore,
    mut conn: Pin<&mut C>,
) -> CloseReason {
    // Enabled before the state is read, so a change made after the read wakes this driver.
    let mut changed = pin!(core.control_changed.notified());
    changed.as_mut().enable();
    let (generation, state) = core.control_snapshot();
    let stage = state.stage;
    let sleep = pin!(tokio::time::sleep_until(Instant::now()));
    let mut d = Driver {
        timer: PhaseTimer::<C> {
            conn: shared,
            rule: PhantomData,
            config: state.config,
            sleep,
            goodbye: None,
            retiring: None,
            key: NO_KEY,
            armed: false,
            may_shed: true,
        },
        closing: Closing::default(),
        generation,
        pool_side: Waker::from(shared.clone()),
        registered: None,
    };
    match stage {
        Stage::Serving | Stage::Leaving => {}
        Stage::Draining => {
            d.closing.ask(shared, conn.as_mut(), CloseReason::Shutdown);
            d.timer.may_shed = false;
        }
        Stage::Forced => return CloseReason::ForcedShutdown,
    }
    shared.request_pool_side_check();
    loop {
        let event =
            std::future::poll_fn(|cx| d.poll_event(conn.as_mut(), changed.as_mut(), cx)).await;
        // Whatever happened, look at the pool's side again on the next poll.
        shared.request_pool_side_check();
        match event {
            Event::Finished(result) => {
                if let Some((_, kind)) = d.timer.goodbye {
                    // Closed after its timeout's goodbye, however the peer took it.
                    return CloseReason::Timeout(kind);
                }
                return match result {
                    Ok(()) if shared.shed_claimed() => CloseReason::LimitLowered,
                    Ok(()) => d
                        .closing
                        .reason
                        .or_else(|| shared.retired_reason())
                        .unwrap_or(CloseReason::Completed),
                    Err(e) if C::timeout_kind(&e).is_some() => {
                        let kind = C::timeout_kind(&e).unwrap_or(TimeoutKind::Idle);
                        let id = shared.id;
                        tracing::debug!(pool = %core.name, id, kind = kind.as_str(), error = %e, "connection timed out");
                        core.publish(|| PoolEventKind::ConnectionTimeout { id, kind });
                        CloseReason::Timeout(kind)
                    }
                    Err(e) if C::is_peer_fault(&e) => {
                        ConnectionTracker::new(shared.clone()).peer_fault(&e);
                        d.closing.reason.unwrap_or(CloseReason::ProtocolError)
                    }
                    Err(e) => {
                        ConnectionTracker::new(shared.clone()).error(&e);
                        d.closing.reason.unwrap_or(CloseReason::Error)
                    }
                };
            }
            Event::Control => {
                changed.set(core.control_changed.notified());
                changed.as_mut().enable();
                let state;
                (d.generation, state) = core.control_snapshot();
                d.timer.config = state.config;
                d.timer.armed = false;
                match state.stage {
                    Stage::Forced => return CloseReason::ForcedShutdown,
                    Stage::Draining => {
                        d.timer.may_shed = false;
                        d.closing.ask(shared, conn.as_mut(), CloseReason::Shutdown);
                    }
                    Stage::Serving | Stage::Leaving => {}
                }
            }
            Event::Expired(Expiry::GraceOver(reason)) => {
                let id = shared.id;
                tracing::debug!(pool = %core.name, id, reason = %reason, "polite close's grace ran out");
                return reason;
            }
            Event::Expired(Expiry::Retire(reason)) => {
                let id = shared.id;
                tracing::debug!(pool = %core.name, id, reason = %reason, "connection retiring");
                // HTTP/1 says it on its next response (`RequestTracker::should_close_connection`);
                // a multiplexed or upgraded connection gets its GOAWAY or close frame now.
                if shared.is_multiplexed() || shared.is_upgraded() {
                    shared.set_retirement(Retirement::sent(reason));
                    d.closing.ask(shared, conn.as_mut(), reason);
                } else if shared.retirement() == Retirement::None {
                    shared.set_retirement(Retirement::AgeDue);
                }
                if d.timer.retiring.is_none() {
                    d.timer.retiring = Some((d.timer.stamp(Instant::now()), reason));
                }
                d.timer.armed = false;
            }
            Event::Expired(Expiry::Timeout(kind)) => {
                let id = shared.id;
                tracing::debug!(pool = %core.name, id, kind = kind.as_str(), "connection timed out");
                core.publish(|| PoolEventKind::ConnectionTimeout { id, kind });
                // No goodbye to send, or nobody to send it to, or one was sent already (a
                // drain's, a shed's).
                if !C::GOODBYE_ON_TIMEOUT
                    || kind == TimeoutKind::WriteStall
                    || !shared.has_read()
                    || d.closing.reason.is_some()
                {
                    return CloseReason::Timeout(kind);
                }
                d.timer.may_shed = false;
                d.timer.goodbye = Some((d.timer.stamp(Instant::now()), kind));
                d.timer.armed = false;
                d.closing
                    .ask(shared, conn.as_mut(), CloseReason::Timeout(kind));
            }
            Event::Expired(Expiry::Shed) => {
                d.closing
                    .ask(shared, conn.as_mut(), CloseReason::LimitLowered);
            }
            Event::HeadIn => {
                d.closing.deferred = false;
                conn.as_mut().close_politely();
            }
        }
    }
}

/// The connection's polite close: asked for once, and why.
#[derive(Default)]
struct Closing {
    reason: Option<CloseReason>,
    /// Asked for while a request head was partly in: the protocol is told once the head is in
    /// (its request then answers with the close, see `RequestTracker::should_close_connection`)
    /// or the connection went idle. Meanwhile the head's own bound (`headers_timeout` from its
    /// first byte) and the drain deadline still apply, so the wait is bounded.
    deferred: bool,
}

impl Closing {
    /// Asks `conn` to close politely, once, recording why. A connection whose request head is
    /// partly in is marked closing at once, but its protocol is told only once the head is in:
    /// HTTP/1 takes such a connection for idle and would close it, losing the request.
    fn ask<C: ManagedConnection>(
        &mut self,
        shared: &ConnectionShared,
        conn: Pin<&mut C>,
        reason: CloseReason,
    ) {
        if self.reason.is_some() {
            return;
        }
        self.reason = Some(reason);
        shared.mark_closing();
        if shared.head_in_progress() {
            self.deferred = true;
        } else {
            conn.close_politely();
        }
    }
}
