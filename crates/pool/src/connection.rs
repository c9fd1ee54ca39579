//! One admitted connection's activity: the state its guard, its driver and its protocol code
//! share, the [`ConnectionTracker`] the protocol code reports through, and the per-request
//! [`RequestTracker`].
//!
//! Contract: trackers may outlive the connection's guard (a spawned stream task, say); they only
//! report into the pool's counters.
//!
//! Activity is kept in relaxed atomics owned by the connection. On a connection that is not
//! multiplexed (HTTP/1) every update comes from the connection's own task, so its counters are
//! updated with a plain load and store instead of a locked read-modify-write; HTTP/2 streams run
//! in tasks of their own and update them atomically. Pool-wide counters are touched once per
//! request and once per connection, and bytes once per flush of the socket, never per read or
//! write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

use std::task::{Wake, Waker};

use crate::activity::{Activity, Phase};
use crate::core::PoolCore;
use crate::events::{ConnectionId, PoolEventKind};
use crate::lifetime::Retirement;
use crate::metrics::{CloseReason, TimeoutKind};

/// Activity shared by a connection's guard, its driver and its protocol code.
///
/// Laid out in declaration order, what a request touches first: those fields sit in the first
/// 96 bytes of the allocation (the `Arc`'s 16 bytes of counts included). The driver's waker,
/// touched only when the pool's side wakes it, and the rest, read at open and close, come after
/// them, so a request on one of many connections brings in fewer cache lines.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct ConnectionShared {
    pub core: Arc<PoolCore>,
    /// Nanoseconds since the pool's origin.
    phase_since: AtomicU64,
    requests: AtomicU64,
    /// Nanoseconds since the pool's origin plus one; 0 = no write blocked.
    write_blocked_since: AtomicU64,
    /// Nanoseconds since the pool's origin of the last read that brought bytes, on a
    /// multiplexed connection: when the streams that read decoded arrived.
    last_read: AtomicU64,
    /// Nanoseconds since the pool's origin plus one of an unanswered heartbeat ping; 0 = none.
    ping_outstanding_since: AtomicU64,
    in_flight: AtomicU32,
    phase: AtomicU8,
    /// The connection multiplexes requests as streams (HTTP/2).
    multiplexed: AtomicBool,
    /// The connection switched protocols (an HTTP/1 upgrade to WebSocket).
    upgraded: AtomicBool,
    closing: AtomicBool,
    /// This connection holds one of the pool's shedding claims (see `AdmissionCounter`).
    shed_claimed: AtomicBool,
    /// Set when the pool's side of the driver (control channel, timer) woke the task.
    pool_side_woken: AtomicBool,
    /// Where the connection is in retiring for its age or request count, as `Retirement as u8`.
    retirement: AtomicU8,
    /// The task driving the connection, woken on the pool's behalf. Replaced only when the
    /// driver's waker changes (a tokio task's never does), so a poll takes no lock.
    driver_task: Mutex<Option<Waker>>,
    /// Nanoseconds since the pool's origin of the last message either way (message protocols).
    last_message: AtomicU64,
    /// Nanoseconds since the pool's origin plus one of a close sent on an upgraded connection
    /// that the peer has yet to answer; 0 = none.
    close_sent_since: AtomicU64,
    pub id: ConnectionId,
    /// Nanoseconds since the pool's origin of the admission (8 bytes where an `Instant` takes
    /// 16).
    opened: u64,
    pub peer: Option<SocketAddr>,
}

// The fields a request touches end before the driver's waker (see the layout note above).
const _: () = assert!(std::mem::offset_of!(ConnectionShared, driver_task) <= 96 - 16);
// One of these is allocated per connection, with the `Arc`'s 16 bytes of counts: 168 bytes,
// which glibc serves from a 176-byte chunk (184 bytes and more take a 192-byte one).
const _: () = assert!(std::mem::size_of::<ConnectionShared>() <= 152);

impl ConnectionShared {
    pub fn new(core: Arc<PoolCore>, id: ConnectionId, peer: Option<SocketAddr>) -> Self {
        let since = core.nanos(Instant::now());
        ConnectionShared {
            core,
            id,
            peer,
            opened: since,
            phase: AtomicU8::new(Phase::Idle as u8),
            phase_since: AtomicU64::new(since),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            last_read: AtomicU64::new(since),
            last_message: AtomicU64::new(since),
            ping_outstanding_since: AtomicU64::new(0),
            close_sent_since: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            multiplexed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            retirement: AtomicU8::new(Retirement::None as u8),
            shed_claimed: AtomicBool::new(false),
            pool_side_woken: AtomicBool::new(true),
            driver_task: Mutex::new(None),
        }
    }

    /// Everything the protocol's deadline depends on besides times that only move later: when
    /// this is unchanged, the deadline did not move earlier (see the driver).
    pub fn deadline_key(&self) -> u32 {
        u32::from(self.phase.load(Ordering::Relaxed))
            | u32::from(self.write_blocked_since.load(Ordering::Relaxed) != 0) << 8
            | u32::from(self.ping_outstanding_since.load(Ordering::Relaxed) != 0) << 9
            | u32::from(self.upgraded.load(Ordering::Relaxed)) << 10
            | u32::from(self.closing.load(Ordering::Relaxed)) << 11
            // A first request's idle spell is bounded by `headers_timeout` from the open, later
            // ones by `keep_alive_timeout`, which can be earlier.
            | u32::from(self.requests.load(Ordering::Relaxed) > 0) << 12
            | u32::from(self.multiplexed.load(Ordering::Relaxed)) << 13
            | u32::from(self.close_sent_since.load(Ordering::Relaxed) != 0) << 14
    }

    /// Registers the task driving the connection; `None` once the driver is done, so a
    /// tracker that outlives the connection does not keep the finished task's memory alive.
    pub fn register_driver(&self, waker: Option<Waker>) {
        *self
            .driver_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = waker;
    }

    /// Whether the pool's side woke the driver since the last call.
    pub fn take_pool_side_wake(&self) -> bool {
        // Read first: a busy connection's polls mostly find it unset, and a load costs less
        // than a swap.
        self.pool_side_woken.load(Ordering::Acquire)
            && self.pool_side_woken.swap(false, Ordering::AcqRel)
    }

    /// Makes the driver check the pool's side on its next poll.
    pub fn request_pool_side_check(&self) {
        self.pool_side_woken.store(true, Ordering::Release);
    }

    /// `at`: nanoseconds since the pool's origin.
    fn set_phase(&self, phase: Phase, at: u64) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.phase_since.store(at, Ordering::Relaxed);
    }

    /// Now, in nanoseconds since the pool's origin: one clock read.
    #[inline]
    fn now(&self) -> u64 {
        self.core.now_nanos()
    }

    pub fn activity(&self) -> Activity {
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        let ping = self.ping_outstanding_since.load(Ordering::Relaxed);
        let close = self.close_sent_since.load(Ordering::Relaxed);
        Activity {
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            phase_since: self.core.instant(self.phase_since.load(Ordering::Relaxed)),
            opened_at: self.opened_at(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            write_blocked_since: (blocked != 0).then(|| self.core.instant(blocked - 1)),
            last_message: self.core.instant(self.last_message.load(Ordering::Relaxed)),
            ping_outstanding_since: (ping != 0).then(|| self.core.instant(ping - 1)),
            close_sent_since: (close != 0).then(|| self.core.instant(close - 1)),
            upgraded: self.upgraded.load(Ordering::Relaxed),
            multiplexed: self.multiplexed.load(Ordering::Relaxed),
            closing: self.closing.load(Ordering::Relaxed),
        }
    }

    pub fn is_multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    /// When the connection was admitted.
    pub fn opened_at(&self) -> Instant {
        self.core.instant(self.opened)
    }

    /// Whether the peer ever sent a byte, on a multiplexed connection (whose reads are
    /// stamped); any other connection counts as having read.
    pub fn has_read(&self) -> bool {
        !self.is_multiplexed() || self.last_read.load(Ordering::Relaxed) != self.opened
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// Whether a request head is partly in on a connection that reads one request at a time
    /// (not multiplexed, not upgraded). Such a connection's protocol takes it for idle and
    /// would drop the head on a polite close, so the close waits for the head (see the driver).
    pub fn head_in_progress(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == Phase::ReadingHead as u8
            && !self.multiplexed.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && Phase::from_u8(self.phase.load(Ordering::Relaxed)) == Phase::Idle
    }

    fn body_received(&self) {
        if self.phase.load(Ordering::Relaxed) == Phase::ReadingBody as u8 {
            // No policy times the response (a stream that keeps sending is never cut), so
            // this phase needs no timestamp: one clock read less per request.
            self.phase.store(Phase::Responding as u8, Ordering::Relaxed);
        }
    }

    /// Takes a shedding claim if the pool is over its limit and this connection has none and
    /// is not closing already. The connection must then close.
    pub fn try_claim_shed(&self) -> bool {
        let admission = &self.core.admission;
        if self.closing.load(Ordering::Relaxed)
            || self.shed_claimed.load(Ordering::Relaxed)
            || !admission.has_excess()
            || !admission.try_claim_shed()
        {
            return false;
        }
        self.shed_claimed.store(true, Ordering::Relaxed);
        true
    }

    pub fn shed_claimed(&self) -> bool {
        self.shed_claimed.load(Ordering::Relaxed)
    }

    pub fn retirement(&self) -> Retirement {
        Retirement::from_u8(self.retirement.load(Ordering::Relaxed))
    }

    pub fn set_retirement(&self, r: Retirement) {
        self.retirement.store(r as u8, Ordering::Relaxed);
    }

    /// Why the connection was retired, once its polite close for its age or request count
    /// went out.
    pub fn retired_reason(&self) -> Option<CloseReason> {
        let r = self.retirement();
        r.is_sent().then(|| r.reason()).flatten()
    }

    /// Whether the response whose head is being produced must carry the polite close for the
    /// connection's age or request count (HTTP/1 only); records it as sent. One load when
    /// neither bound is near: the driver flagged the age, and the request count is one compare
    /// (`max_requests` is `u64::MAX` when unset).
    #[inline]
    fn retire_on_response(&self) -> bool {
        let sent = match self.retirement() {
            Retirement::AgeDue => Retirement::Age,
            Retirement::None
                if self.requests.load(Ordering::Relaxed) + 1
                    >= self.core.max_requests.load(Ordering::Relaxed) =>
            {
                Retirement::Requests
            }
            _ => return false,
        };
        self.set_retirement(sent);
        true
    }

    /// A stream started on a multiplexed connection, `in_flight_before` others being open:
    /// when that makes `max_requests_per_connection`, the driver is asked for a GOAWAY.
    #[inline]
    fn count_stream_against_limit(&self, in_flight_before: u32) {
        let limit = self.core.max_requests.load(Ordering::Relaxed);
        // Finished and open streams, this one included. A stream finishing meanwhile may be
        // counted twice, which can only bring the GOAWAY one stream early.
        if self.requests.load(Ordering::Relaxed) + u64::from(in_flight_before) + 1 >= limit {
            self.stream_limit_reached();
        }
    }

    #[cold]
    fn stream_limit_reached(&self) {
        let due = self.retirement.compare_exchange(
            Retirement::None as u8,
            Retirement::RequestsDue as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if due.is_ok() {
            // The stream runs in a task of its own: wake the driver to send the GOAWAY.
            self.wake_driver();
        }
    }

    /// Wakes the driver on the pool's behalf (see the `Wake` impl).
    fn wake_driver(&self) {
        self.pool_side_woken.store(true, Ordering::Release);
        // Cloned out of the lock: waking runs the scheduler, which need not wait on it.
        let waker = self
            .driver_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the connection was asked to close.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Requests finished on this connection.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn mark_closing(&self) {
        if !self.closing.swap(true, Ordering::Relaxed) {
            self.core.counters.closing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether only the connection's own task updates its counters: true unless it is
    /// multiplexed (HTTP/2 streams run in tasks of their own). Such a counter is updated with a
    /// plain load and store, which costs a fraction of a locked read-modify-write; a request
    /// makes three of these.
    #[inline]
    fn single_writer(&self) -> bool {
        !self.multiplexed.load(Ordering::Relaxed)
    }

    /// Adds one request to those in flight (`up`) or takes one away; returns the count before.
    #[inline]
    fn adjust_in_flight(&self, up: bool) -> u32 {
        let c = &self.in_flight;
        if self.single_writer() {
            let old = c.load(Ordering::Relaxed);
            c.store(
                if up { old + 1 } else { old.wrapping_sub(1) },
                Ordering::Relaxed,
            );
            old
        } else if up {
            c.fetch_add(1, Ordering::Relaxed)
        } else {
            c.fetch_sub(1, Ordering::Relaxed)
        }
    }

    /// One more request served.
    #[inline]
    fn count_request(&self) {
        if self.single_writer() {
            let n = self.requests.load(Ordering::Relaxed);
            self.requests.store(n + 1, Ordering::Relaxed);
        } else {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The waker the driver gives the pool's control channel and the connection's timer: it marks
/// the pool's side as due for a check, so the driver polls them only when they fired.
impl Wake for ConnectionShared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_driver();
    }
}

/// A handle protocol code reports a connection's activity through; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionTracker {
    shared: Arc<ConnectionShared>,
}

impl ConnectionTracker {
    pub(crate) fn new(shared: Arc<ConnectionShared>) -> Self {
        ConnectionTracker { shared }
    }

    /// The connection's id, unique within its pool.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The peer's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.shared.peer
    }

    /// Bytes arrived from the peer. The first byte after an idle spell starts a request head.
    /// This tells the connection's phase only: the bytes are added to the pool's totals by
    /// [`ConnectionTracker::report_bytes`], which the socket's owner calls in batches.
    #[inline]
    pub fn bytes_read(&self, n: usize) {
        let s = &self.shared;
        if n == 0 {
            return;
        }
        // On a multiplexed connection bytes arrive between streams (pings, window updates):
        // only a stream starts a request there, and it starts when the read that carried its
        // HEADERS came. One clock read per read serves every stream the read brought.
        if s.multiplexed.load(Ordering::Relaxed) {
            s.last_read.store(s.now(), Ordering::Relaxed);
            return;
        }
        if s.phase.load(Ordering::Relaxed) == Phase::Idle as u8
            && s.in_flight.load(Ordering::Relaxed) == 0
        {
            // Also the start of the request this head begins (see `request_started`), which
            // `request_timeout` counts from, the first request's as every later one's. A new
            // connection's first head stays bounded from the open too (`Activity::opened_at`).
            s.set_phase(Phase::ReadingHead, s.now());
        }
    }

    /// Bytes were sent to the peer (or a flush completed): any blocked write made progress.
    /// Like [`ConnectionTracker::bytes_read`], this does not count them.
    #[inline]
    pub fn bytes_written(&self) {
        if self.shared.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_unblocked();
        }
    }

    /// A write that waited on the peer went through. Between requests that was the tail of
    /// the last response: the idle spell starts now, once the peer has taken it, not when the
    /// handler handed the response over.
    #[cold]
    fn write_unblocked(&self) {
        let s = &self.shared;
        s.write_blocked_since.store(0, Ordering::Relaxed);
        if s.phase.load(Ordering::Relaxed) == Phase::Idle as u8
            && s.in_flight.load(Ordering::Relaxed) == 0
        {
            s.phase_since.store(s.now(), Ordering::Relaxed);
        }
    }

    /// Adds bytes moved on this connection to the pool's totals. A socket wrapper tallies its
    /// reads and writes itself and reports them when it flushes or waits, so a request costs
    /// the pool-wide counters one update each rather than every read and write an update of
    /// the connection's.
    pub fn report_bytes(&self, read: u64, written: u64) {
        let c = &self.shared.core.counters;
        if read > 0 {
            c.bytes_in.fetch_add(read, Ordering::Relaxed);
        }
        if written > 0 {
            c.bytes_out.fetch_add(written, Ordering::Relaxed);
        }
    }

    /// A write is waiting because the peer is not reading.
    #[inline]
    pub fn write_blocked(&self) {
        let s = &self.shared;
        if s.write_blocked_since.load(Ordering::Relaxed) == 0 {
            let at = s.core.now_nanos();
            s.write_blocked_since.store(at + 1, Ordering::Relaxed);
            // A handler that took the connection over writes from a task of its own: the
            // driver must hear of the stall bound that now applies.
            if s.upgraded.load(Ordering::Relaxed) {
                s.request_pool_side_check();
                Wake::wake_by_ref(s);
            }
        }
    }

    /// Bytes moved either way on an upgraded connection whose messages the pool does not see
    /// (a handler took it over): traffic counts as a message for the idle bound.
    pub fn traffic(&self) {
        self.message_activity();
    }

    /// A request head was received: the request is in flight until the returned tracker is
    /// finished or dropped.
    pub fn request_started(&self) -> RequestTracker {
        let s = &self.shared;
        let phase = Phase::from_u8(s.phase.load(Ordering::Relaxed));
        let multiplexed = s.multiplexed.load(Ordering::Relaxed);
        // A request started when its head's first byte came, and a stream when the read that
        // brought it came, both stamped by `bytes_read`: no clock read here. A pipelined
        // request, whose bytes came while another was in flight, reads the clock.
        let started = if multiplexed {
            s.last_read.load(Ordering::Relaxed)
        } else if phase == Phase::ReadingHead {
            s.phase_since.load(Ordering::Relaxed)
        } else {
            s.now()
        };
        s.core
            .counters
            .requests_started
            .fetch_add(1, Ordering::Relaxed);
        let in_flight_before = s.adjust_in_flight(true);
        // An HTTP/1 request's count is checked as its response head is produced
        // (`RequestTracker::should_close_connection`).
        if multiplexed {
            s.count_stream_against_limit(in_flight_before);
        }
        if in_flight_before == 0 {
            s.core.counters.busy.fetch_add(1, Ordering::Relaxed);
            // The body is timed from the head's start, which `bytes_read` recorded.
            if phase == Phase::ReadingHead {
                s.phase.store(Phase::ReadingBody as u8, Ordering::Relaxed);
            } else {
                s.set_phase(Phase::ReadingBody, started);
            }
        }
        RequestTracker {
            conn: s.clone(),
            started,
            response_after: NO_RESPONSE_HEAD,
            caller_deadline_ms: NO_CALLER_DEADLINE,
            error: false,
            finished: false,
            body: None,
        }
    }

    /// The current request's body has fully arrived; the request timeout no longer applies.
    pub fn body_received(&self) {
        self.shared.body_received();
    }

    /// Reports a connection-level error (counted, announced and weighed in health).
    pub fn error(&self, error: &dyn std::fmt::Display) {
        let s = &self.shared;
        s.core.record_error();
        tracing::debug!(pool = %s.core.name, id = s.id, %error, "connection error");
        s.core.publish(|| PoolEventKind::ConnectionError {
            id: s.id,
            error: error.to_string(),
        });
    }

    /// Reports that the peer broke the protocol: announced, counted by close reason, but not an
    /// error of this server's.
    pub fn peer_fault(&self, error: &dyn std::fmt::Display) {
        let s = &self.shared;
        tracing::debug!(pool = %s.core.name, id = s.id, %error, "peer protocol error");
        s.core.publish(|| PoolEventKind::ConnectionError {
            id: s.id,
            error: error.to_string(),
        });
    }

    /// Whether the connection multiplexes requests as streams (HTTP/2).
    pub fn is_multiplexed(&self) -> bool {
        self.shared.is_multiplexed()
    }

    /// The pool's `request_timeout` in force.
    pub fn request_timeout(&self) -> std::time::Duration {
        self.shared.core.config().request_timeout
    }

    /// The connection multiplexes requests as streams (HTTP/2): bytes between streams do not
    /// start a request, and the polite close may come while streams are in flight (GOAWAY lets
    /// them finish).
    pub fn multiplexed(&self) {
        self.shared.multiplexed.store(true, Ordering::Relaxed);
    }

    /// The connection switched protocols (an accepted WebSocket upgrade): from here on the
    /// policy's message-protocol rules apply.
    pub fn upgraded(&self) {
        let s = &self.shared;
        s.upgraded.store(true, Ordering::Relaxed);
        s.last_message.store(s.core.now_nanos(), Ordering::Relaxed);
    }

    fn message_activity(&self) {
        let s = &self.shared;
        s.last_message.store(s.core.now_nanos(), Ordering::Relaxed);
    }

    /// A whole message arrived from the peer (`bytes` of payload). Any traffic from the peer
    /// also answers an outstanding heartbeat.
    pub fn message_received(&self, bytes: usize) {
        let c = &self.shared.core.counters;
        c.messages_in.fetch_add(1, Ordering::Relaxed);
        c.message_bytes_in
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.message_activity();
        self.shared
            .ping_outstanding_since
            .store(0, Ordering::Relaxed);
    }

    /// A whole message was sent to the peer (`bytes` of payload).
    pub fn message_sent(&self, bytes: usize) {
        let c = &self.shared.core.counters;
        c.messages_out.fetch_add(1, Ordering::Relaxed);
        c.message_bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.message_activity();
    }

    /// A heartbeat ping was sent; the peer must answer within the pong timeout.
    pub fn ping_sent(&self) {
        let s = &self.shared;
        s.core.counters.pings_sent.fetch_add(1, Ordering::Relaxed);
        if s.ping_outstanding_since.load(Ordering::Relaxed) == 0 {
            let at = s.core.now_nanos();
            s.ping_outstanding_since.store(at + 1, Ordering::Relaxed);
        }
    }

    /// A close was sent on an upgraded connection (a WebSocket close frame, or the pool asked
    /// the handler that took it over to close): the peer must answer within the pong timeout.
    pub fn close_sent(&self) {
        let s = &self.shared;
        if s.close_sent_since.load(Ordering::Relaxed) == 0 {
            let at = s.core.now_nanos();
            s.close_sent_since.store(at + 1, Ordering::Relaxed);
            // Possibly from a handler's task: the driver must hear of the new bound.
            s.request_pool_side_check();
            Wake::wake_by_ref(s);
        }
    }

    /// The peer answered a heartbeat (a pong or any other frame).
    pub fn pong_received(&self) {
        self.shared
            .ping_outstanding_since
            .store(0, Ordering::Relaxed);
    }

    /// The message protocol closed with this close code (sent or received), for metrics.
    pub fn close_code(&self, code: u16) {
        self.shared.core.counters.count_close_code(code);
    }

    /// The current activity.
    pub fn activity(&self) -> Activity {
        self.shared.activity()
    }

    /// The pool's config and stage, to follow live changes of a setting the protocol code
    /// applies itself (a WebSocket heartbeat's interval).
    pub fn control(&self) -> tokio::sync::watch::Receiver<crate::core::ControlState> {
        self.shared.core.control.subscribe()
    }
}

/// `RequestTracker::response_after` before a streamed response's head.
const NO_RESPONSE_HEAD: u64 = u64::MAX;

/// `RequestTracker::caller_deadline_ms` of a request whose caller set no deadline.
const NO_CALLER_DEADLINE: u32 = u32::MAX;

/// How long before a caller's deadline (both in nanoseconds) its reset of the request is still
/// taken as its deadline passing: 5 % of it, at most 25 ms, for the time the request took to
/// arrive and the rounding of the deadline on the wire.
fn caller_clock_allowance(deadline: u64) -> u64 {
    (deadline / 20).min(25_000_000)
}

// Moved with every response (in its future, then its body): kept small.
const _: () = assert!(std::mem::size_of::<RequestTracker>() <= 40);

/// One request in flight; finishing or dropping it records its duration and outcome.
#[derive(Debug)]
pub struct RequestTracker {
    conn: Arc<ConnectionShared>,
    /// Nanoseconds since the pool's origin.
    started: u64,
    /// Nanoseconds from the start to the response head, for a streamed response;
    /// `NO_RESPONSE_HEAD` before (a sentinel rather than an `Option`: the tracker is moved with
    /// every response, and this keeps it at 40 bytes).
    response_after: u64,
    /// Whole milliseconds from the start to the caller's deadline, rounded down;
    /// `NO_CALLER_DEADLINE` when it set none (or one further off than this holds).
    caller_deadline_ms: u32,
    error: bool,
    finished: bool,
    /// Shared with the request's [`RequestBodyTracker`], which flags in it a body the peer broke
    /// off; `None` for a request whose body was complete with its head (most are), which needs
    /// no cell. Per request, not per connection: on a multiplexed connection one stream's broken
    /// body says nothing of another's failure, and a long-lived connection outlives it.
    body: Option<Arc<BodyCell>>,
}

/// What a request whose body is still arriving shares with its body's tracker: one allocation
/// per such request, and one pointer in the body (which the handler's future holds, and on
/// HTTP/1 the connection's buffer for it, sized to the largest such future, for as long as the
/// connection lives).
#[derive(Debug)]
struct BodyCell {
    conn: Arc<ConnectionShared>,
    /// The peer broke the body off.
    broken_off: AtomicBool,
}

impl RequestTracker {
    /// The whole request body has arrived; the request timeout no longer applies.
    pub fn body_received(&self) {
        self.conn.body_received();
    }

    /// A tracker for this request's body, for the code that hands the body on to the handler
    /// while the request is still arriving: through it the body reports its end, and a peer
    /// that broke it off, which exempts this request's failure from the error count.
    pub fn body_tracker(&mut self) -> RequestBodyTracker {
        let conn = &self.conn;
        let cell = self
            .body
            .get_or_insert_with(|| {
                Arc::new(BodyCell {
                    conn: conn.clone(),
                    broken_off: AtomicBool::new(false),
                })
            })
            .clone();
        RequestBodyTracker { cell }
    }

    /// The response head is ready; `error` marks a server-side failure (a 5xx). The time to
    /// the head is the request's response time (a streamed body may go on for long).
    pub fn response_started(&mut self, error: bool) {
        if self.response_after == NO_RESPONSE_HEAD {
            self.response_after = self.conn.now().saturating_sub(self.started);
        }
        self.error |= error;
    }

    /// The head of a response whose body length is known is ready; `error` marks a server-side
    /// failure. Such a body follows its head without waiting on the handler, so the response
    /// time is taken when the request finishes: one clock read less than
    /// [`RequestTracker::response_started`].
    pub fn sized_response_started(&mut self, error: bool) {
        self.error |= error;
    }

    /// Whether the request is a stream of a multiplexed connection (HTTP/2).
    pub fn is_multiplexed(&self) -> bool {
        self.conn.is_multiplexed()
    }

    /// The caller gives up on this request `timeout` after it started (a gRPC call's
    /// `grpc-timeout`). A request that fails once that time has passed, or that the caller
    /// abandons from just before it (its clock started first), was ended by its caller's
    /// deadline: it is counted as `deadline_exceeded`, not as an error, and left out of the
    /// health window, since it says nothing about the server.
    pub fn caller_deadline(&mut self, timeout: std::time::Duration) {
        // Rounded down, so a server that enforces the same deadline from a later instant (its
        // own timer starts once the request is decoded) always ends the call past this one.
        self.caller_deadline_ms = u32::try_from(timeout.as_millis())
            .ok()
            .filter(|ms| *ms != NO_CALLER_DEADLINE)
            .unwrap_or(NO_CALLER_DEADLINE);
    }

    /// Whether the connection should close after this response: it was asked to close (a drain
    /// that waited for this request's head to come in), it reached its `max_connection_age` or
    /// `max_requests_per_connection`, or the pool is over a lowered limit. A protocol that can
    /// say so on the response (HTTP/1 `Connection: close`) asks here as the response head is
    /// produced, so the client learns before reusing it.
    pub fn should_close_connection(&self) -> bool {
        // A multiplexed connection is retired and shed by its driver with a GOAWAY instead.
        if self.conn.multiplexed.load(Ordering::Relaxed) {
            return false;
        }
        // A connection closing anyway takes no shedding claim from another.
        if self.conn.is_closing() || self.conn.retire_on_response() {
            self.conn.mark_closing();
            return true;
        }
        if self.conn.try_claim_shed() {
            self.conn.mark_closing();
            true
        } else {
            false
        }
    }

    /// Marks the request as failed (the response body broke off, say), unless the peer broke
    /// off this request's body first (see [`RequestBodyTracker::broken_off`]).
    pub fn fail(&mut self) {
        if !self
            .body
            .as_ref()
            .is_some_and(|b| b.broken_off.load(Ordering::Relaxed))
        {
            self.error = true;
        }
    }

    /// Records the request as done.
    pub fn finish(mut self) {
        self.record(true);
    }

    /// Whether the request, failed or abandoned (`completed` false) `duration` nanoseconds
    /// after its start, was ended by its caller's deadline.
    ///
    /// A failure counts from the deadline on: the server's own timer (gRPC's `grpc-timeout`)
    /// fires past it, and a handler failing before it is the server's failure. A caller's reset
    /// is timed on the caller's clock, which started when the request left it, before it
    /// arrived here: a reset within [`caller_clock_allowance`] before the deadline counts too.
    fn past_caller_deadline(&self, completed: bool, duration: u64) -> bool {
        if self.caller_deadline_ms == NO_CALLER_DEADLINE {
            return false;
        }
        let deadline = u64::from(self.caller_deadline_ms) * 1_000_000;
        if self.error {
            duration >= deadline
        } else {
            !completed && duration >= deadline - caller_clock_allowance(deadline)
        }
    }

    /// `completed`: the response ran to its end (rather than being dropped half-way, as when
    /// the peer resets the stream).
    fn record(&mut self, completed: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let s = &self.conn;
        let now = s.now();
        let duration = now.saturating_sub(self.started);
        let core = &s.core;
        // Also the request total (`MetricsSnapshot::requests` is the histogram's count).
        core.counters.latency.record_nanos(duration);
        if self.past_caller_deadline(completed, duration) {
            core.counters
                .deadline_exceeded
                .fetch_add(1, Ordering::Relaxed);
        } else {
            if self.error {
                core.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            let response = if self.response_after == NO_RESPONSE_HEAD {
                duration
            } else {
                self.response_after
            };
            core.window.record_request_nanos(now, response, self.error);
        }
        s.count_request();
        if s.adjust_in_flight(false) == 1 {
            core.counters.busy.fetch_sub(1, Ordering::Relaxed);
            s.set_phase(Phase::Idle, now);
        }
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.record(false);
    }
}

/// What one request's body reports while it arrives, handed to the code that reads it: its
/// end, and a peer that broke it off. Made by [`RequestTracker::body_tracker`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestBodyTracker {
    cell: Arc<BodyCell>,
}

// Held by every request body still arriving: one pointer.
const _: () = assert!(std::mem::size_of::<Option<RequestBodyTracker>>() == 8);

impl RequestBodyTracker {
    /// The whole body has arrived (or the handler let go of it); the request timeout no longer
    /// applies.
    pub fn received(&self) {
        self.cell.conn.body_received();
    }

    /// The peer broke the body off (a reset stream, a truncated upload): a failure of this
    /// request is then the peer's doing and is not counted as this server's error. Other
    /// requests of the connection, before and after, are counted as ever.
    pub fn broken_off(&self) {
        self.cell.broken_off.store(true, Ordering::Relaxed);
    }

    /// The body of a request on a multiplexed connection did not arrive within
    /// `request_timeout`: counted as a `request` timeout, and, like a body the peer broke off,
    /// the request's failure is not this server's error. The connection and its other streams
    /// go on, so no close is recorded.
    pub fn timed_out(&self) {
        let s = &self.cell.conn;
        s.core.counters.timeouts[TimeoutKind::Request.index()].fetch_add(1, Ordering::Relaxed);
        self.broken_off();
        tracing::debug!(pool = %s.core.name, id = s.id, "request timed out on a multiplexed connection");
    }

    /// The pool's `request_timeout` in force.
    pub fn request_timeout(&self) -> std::time::Duration {
        self.cell.conn.core.config().request_timeout
    }
}
