//! Pool lifecycle tests: admission, timeouts, live limit changes, close-all and events, driven
//! through `ConnectionGuard::serve` with an in-memory connection (the pool has no sockets) whose
//! timeout rule is the test's own, shaped like an HTTP/1.1 request cycle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use poolserve_pool::{
    earliest, stall_deadline, AcceptErrorKind, Activity, Clock, CloseReason, ConnectionTracker,
    DefaultPolicy, EventError, HealthStatus, ManagedConnection, Phase, Pool, PoolConfig,
    PoolEventKind, PoolSettings, Refusal, RequestTracker, Stage, TimeoutKind,
};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The test's hand on one in-memory connection.
#[derive(Default)]
struct Remote {
    request: Mutex<Option<RequestTracker>>,
    peer_closed: AtomicBool,
    politely_asked: AtomicBool,
    wake: Arc<Notify>,
}

impl Remote {
    fn begin(&self, tracker: &ConnectionTracker) {
        // A request whose head and body are in: its response is being produced or streamed.
        tracker.bytes_read(10);
        let request = tracker.request_started();
        request.body_received();
        *self.request.lock().unwrap() = Some(request);
        self.wake.notify_one();
    }
    fn end(&self) {
        self.request.lock().unwrap().take();
        self.wake.notify_one();
    }
    fn close(&self) {
        self.peer_closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// A connection that serves until its peer closes, or, once asked politely, until no request is
/// in flight — the shape of an HTTP/1 connection under `Connection: close`.
struct MemoryConnection {
    remote: Arc<Remote>,
    polite: bool,
    notified: Pin<Box<OwnedNotified>>,
}

impl MemoryConnection {
    fn new(remote: Arc<Remote>) -> Self {
        let notified = Box::pin(remote.wake.clone().notified_owned());
        MemoryConnection {
            remote,
            polite: false,
            notified,
        }
    }
}

impl Future for MemoryConnection {
    type Output = Result<(), &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            if self.remote.peer_closed.load(Ordering::SeqCst)
                || (self.polite && self.remote.request.lock().unwrap().is_none())
            {
                return Poll::Ready(Ok(()));
            }
            match self.notified.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    self.notified = Box::pin(self.remote.wake.clone().notified_owned());
                }
            }
        }
    }
}

impl ManagedConnection for MemoryConnection {
    type Error = &'static str;
    fn close_politely(mut self: Pin<&mut Self>) {
        self.polite = true;
        self.remote.politely_asked.store(true, Ordering::SeqCst);
    }

    /// The test protocol's rule: the first request within `headers_timeout` of the open; a head
    /// within `headers_timeout` of its first byte and a body within `request_timeout`;
    /// `keep_alive_timeout` between requests, never past `connection_timeout`; a response is
    /// never cut.
    fn deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
        let after = |d, kind| Some((a.phase_since + d, kind));
        let bound = match (a.phase, a.requests) {
            (Phase::Idle, 0) => after(c.headers_timeout, TimeoutKind::Headers),
            (Phase::Idle, _) => earliest(
                after(c.keep_alive_timeout, TimeoutKind::KeepAlive),
                after(c.connection_timeout, TimeoutKind::Idle),
            ),
            (Phase::ReadingHead, 0) => earliest(
                Some((a.opened_at + c.headers_timeout, TimeoutKind::Headers)),
                after(c.request_timeout, TimeoutKind::Request),
            ),
            (Phase::ReadingHead, _) => earliest(
                after(c.headers_timeout, TimeoutKind::Headers),
                after(c.request_timeout, TimeoutKind::Request),
            ),
            (Phase::ReadingBody, _) => after(c.request_timeout, TimeoutKind::Request),
            (Phase::Responding, _) => None,
        };
        earliest(bound, stall_deadline(a, c))
    }

    /// While idle between requests, the timer arms by the next head's bound, so a head that
    /// starts soon needs no earlier re-arm.
    fn timer_at(deadline: Instant, a: &Activity, c: &PoolConfig) -> Instant {
        if a.phase == Phase::Idle && a.requests > 0 {
            deadline.min(a.phase_since + c.headers_timeout)
        } else {
            deadline
        }
    }
}

type Served = tokio::task::JoinHandle<CloseReason>;

fn pool(settings: PoolSettings) -> Pool<DefaultPolicy> {
    let (config, _) = PoolConfig::default().apply(&settings, "").unwrap();
    // Paused-time tests advance tokio's clock, so the pool's stamps are read from it.
    Pool::with_clock("test", DefaultPolicy("http"), config, Clock::Tokio)
}

fn open(pool: &Pool<DefaultPolicy>) -> (Arc<Remote>, ConnectionTracker, Served) {
    let guard = pool.admit(None).expect("admitted");
    let tracker = guard.tracker();
    let remote = Arc::new(Remote::default());
    let conn = MemoryConnection::new(remote.clone());
    (remote, tracker, tokio::spawn(guard.serve(conn)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admit_and_release_from_many_tasks_ends_at_exactly_zero() {
    let pool = pool(PoolSettings {
        max_connections: Some(50),
        ..Default::default()
    });
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..200 {
                    if let Ok(guard) = pool.admit(None) {
                        admitted += 1;
                        assert!(pool.active_connections() <= 50);
                        tokio::task::yield_now().await;
                        drop(guard);
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0u64;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    let m = pool.metrics();
    assert_eq!(pool.active_connections(), 0);
    assert_eq!(m.accepted, admitted);
    assert_eq!(m.accepted + m.rejected, 200 * 200);
    assert_eq!(m.closed.iter().map(|(_, n)| n).sum::<u64>(), admitted);
}

#[tokio::test]
async fn limit_is_exact_and_refusals_are_counted_announced_and_overload_health() {
    let pool = pool(PoolSettings {
        max_connections: Some(2),
        ..Default::default()
    });
    let mut events = pool.subscribe();
    let a = pool.admit(None).unwrap();
    let _b = pool.admit(None).unwrap();
    assert!(!pool.can_accept());
    assert_eq!(pool.admit(None).unwrap_err(), Refusal::AtLimit);
    let m = pool.metrics();
    assert_eq!((m.active, m.accepted, m.rejected), (2, 2, 1));
    let health = pool.health();
    assert_eq!(health.status, HealthStatus::Overloaded);
    assert_eq!(health.rejected_connections, 1);
    assert_eq!(health.utilization_ratio, 1.0);

    let mut names = Vec::new();
    while let Some(Ok(e)) = events.try_recv() {
        names.push(e.kind.name());
    }
    let lifecycle: Vec<_> = names
        .iter()
        .filter(|n| **n != "health_status_changed")
        .collect();
    assert_eq!(
        lifecycle,
        [
            &"connection_added",
            &"connection_added",
            &"pool_limit_reached"
        ]
    );
    assert!(names.contains(&"health_status_changed"), "{names:?}");
    drop(a);
    assert!(pool.can_accept());
}

#[tokio::test]
async fn per_ip_limit_refuses_only_that_address() {
    let pool = pool(PoolSettings {
        max_connections_per_ip: Some(1),
        ..Default::default()
    });
    let a = "10.0.0.1:1000".parse().ok();
    let b = "10.0.0.2:1000".parse().ok();
    let first = pool.admit(a).unwrap();
    assert_eq!(pool.admit(a).unwrap_err(), Refusal::PerIpLimit);
    let _other = pool.admit(b).unwrap();
    drop(first);
    pool.admit(a).unwrap();
    assert_eq!(pool.metrics().rejected, 1);
}

#[tokio::test]
async fn a_per_ip_refusal_is_the_clients_limit_not_pool_pressure() {
    let pool = pool(PoolSettings {
        max_connections: Some(100),
        max_connections_per_ip: Some(2),
        ..Default::default()
    });
    let mut events = pool.subscribe();
    let a = "10.0.0.1:1000".parse().ok();
    let _held = [pool.admit(a).unwrap(), pool.admit(a).unwrap()];
    assert_eq!(pool.admit(a).unwrap_err(), Refusal::PerIpLimit);
    let health = pool.health();
    assert_eq!(health.status, HealthStatus::Healthy, "{}", health.message);
    assert_eq!(health.rejected_connections, 1);
    let m = pool.metrics();
    assert_eq!(m.rejected, 1);
    assert!(
        m.rejected_by_reason.contains(&("per_ip", 1))
            && m.rejected_by_reason.contains(&("max_connections", 0)),
        "{:?}",
        m.rejected_by_reason
    );
    // Announced as a refusal, but no health change.
    let mut names = Vec::new();
    while let Some(Ok(e)) = events.try_recv() {
        names.push(e.kind.name());
    }
    assert!(names.contains(&"pool_limit_reached"), "{names:?}");
    assert!(!names.contains(&"health_status_changed"), "{names:?}");
}

/// A client at its per-IP limit is refused as that, never as the pool's limit, even when the
/// pool is full at that moment.
#[tokio::test]
async fn a_client_at_its_own_limit_is_refused_per_ip_even_when_the_pool_is_full() {
    let pool = pool(PoolSettings {
        max_connections: Some(2),
        max_connections_per_ip: Some(1),
        ..Default::default()
    });
    let noisy = "10.0.0.1:1000".parse().ok();
    let _held = [pool.admit(noisy).unwrap(), pool.admit(None).unwrap()];
    assert_eq!(pool.admit(noisy).unwrap_err(), Refusal::PerIpLimit);
    assert_eq!(pool.admit(None).unwrap_err(), Refusal::AtLimit);
    let m = pool.metrics();
    assert!(
        m.rejected_by_reason.contains(&("per_ip", 1))
            && m.rejected_by_reason.contains(&("max_connections", 1)),
        "{:?}",
        m.rejected_by_reason
    );
}

/// The pool one slot short of its limit, a client at its per-IP limit retrying as fast as it
/// can and another client taking and giving back the last slot meanwhile, on threads of their
/// own: the noisy client never holds a pool slot, even for a moment, so the other is never
/// refused, and every refusal of the noisy one is its own limit.
#[test]
fn a_client_at_its_own_limit_never_takes_a_pool_slot_even_briefly() {
    const ROUNDS: usize = 50_000;
    let (config, _) = PoolConfig::default()
        .apply(
            &PoolSettings {
                max_connections: Some(4),
                max_connections_per_ip: Some(1),
                ..Default::default()
            },
            "",
        )
        .unwrap();
    let pool = Pool::new("test", DefaultPolicy("http"), config);
    let noisy = "10.0.0.1:1000".parse().ok();
    let legit = "10.0.0.2:1000".parse().ok();
    let _held = [
        pool.admit(noisy).unwrap(),
        pool.admit(None).unwrap(),
        pool.admit(None).unwrap(),
    ];
    let stop = AtomicBool::new(false);
    let (noisy_wrong, legit_refused) = std::thread::scope(|s| {
        let noisy_thread = s.spawn(|| {
            let mut wrong = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match pool.admit(noisy) {
                    Err(Refusal::PerIpLimit) => {}
                    _ => wrong += 1,
                }
            }
            wrong
        });
        let legit_thread = s.spawn(|| {
            let refused = (0..ROUNDS)
                .filter(|_| pool.admit(legit).map(drop).is_err())
                .count();
            stop.store(true, Ordering::Relaxed);
            refused
        });
        (noisy_thread.join().unwrap(), legit_thread.join().unwrap())
    });
    assert_eq!(legit_refused, 0, "the other client was refused");
    assert_eq!(
        noisy_wrong, 0,
        "the noisy client was refused for the pool's limit"
    );
    let m = pool.metrics();
    assert_eq!(m.accepted, 3 + ROUNDS as u64);
    assert!(
        m.rejected_by_reason.contains(&("max_connections", 0)),
        "{:?}",
        m.rejected_by_reason
    );
    assert_eq!(pool.active_connections(), 3);
}

/// IPv6 clients are keyed by their /64 by default, and by another prefix length once it is
/// changed live; connections already open stay counted under the key they came in with.
#[tokio::test]
async fn ipv6_clients_of_one_prefix_share_the_per_ip_limit() {
    let pool = pool(PoolSettings {
        max_connections_per_ip: Some(1),
        ..Default::default()
    });
    let addr = |s: &str| s.parse().ok();
    let first = pool.admit(addr("[2001:db8:1:2::10]:1000")).unwrap();
    assert_eq!(
        pool.admit(addr("[2001:db8:1:2:ffff::20]:1000"))
            .unwrap_err(),
        Refusal::PerIpLimit,
        "the same /64"
    );
    let other = pool.admit(addr("[2001:db8:1:3::10]:1000")).unwrap();
    // IPv4 through a dual-stack socket is keyed by its whole address, not by a /64.
    let v4 = pool.admit(addr("[::ffff:192.0.2.7]:1000")).unwrap();
    let _v4_other = pool.admit(addr("[::ffff:192.0.2.8]:1000")).unwrap();
    assert_eq!(
        pool.admit(addr("192.0.2.7:2000")).unwrap_err(),
        Refusal::PerIpLimit
    );
    drop(v4);

    pool.update_config(&PoolSettings {
        max_connections_per_ip_v6_prefix: Some(128),
        ..Default::default()
    })
    .unwrap();
    let _neighbour = pool.admit(addr("[2001:db8:1:2:ffff::20]:1000")).unwrap();
    assert_eq!(
        pool.admit(addr("[2001:db8:1:2:ffff::20]:2000"))
            .unwrap_err(),
        Refusal::PerIpLimit,
        "the same address"
    );
    // Closing a connection admitted under the old key gives back that key's slot.
    drop(first);
    drop(other);
    pool.update_config(&PoolSettings {
        max_connections_per_ip_v6_prefix: Some(64),
        ..Default::default()
    })
    .unwrap();
    let _back = pool.admit(addr("[2001:db8:1:3::99]:1000")).unwrap();
    assert_eq!(pool.metrics().rejected_by_reason[1], ("per_ip", 3));
}

#[tokio::test]
async fn a_pool_churning_at_a_threshold_changes_status_once_each_way() {
    let pool = pool(PoolSettings {
        max_connections: Some(100),
        ..Default::default()
    });
    let mut events = pool.subscribe();
    let mut held: Vec<_> = (0..79).map(|_| pool.admit(None).unwrap()).collect();
    assert_eq!(pool.health().status, HealthStatus::Healthy);
    // Admit and release across the 80 % line, as a busy pool does: degraded from the first
    // crossing on, and no further change.
    for _ in 0..50 {
        held.push(pool.admit(None).unwrap());
        assert_eq!(pool.health().status, HealthStatus::Degraded);
        held.pop();
        assert_eq!(pool.health().status, HealthStatus::Degraded);
    }
    // Down to 75 it stays degraded; below it, it is healthy again, and churning at 74–75 (or
    // back at 79) leaves it healthy.
    held.truncate(75);
    assert_eq!(pool.health().status, HealthStatus::Degraded);
    held.pop();
    assert_eq!(pool.health().status, HealthStatus::Healthy);
    for _ in 0..50 {
        held.push(pool.admit(None).unwrap());
        held.pop();
    }
    while held.len() < 79 {
        held.push(pool.admit(None).unwrap());
    }
    assert_eq!(pool.health().status, HealthStatus::Healthy);
    let mut changes = Vec::new();
    while let Some(Ok(e)) = events.try_recv() {
        if let PoolEventKind::HealthStatusChanged { from, to, .. } = e.kind {
            changes.push((from, to));
        }
    }
    assert_eq!(
        changes,
        [
            (HealthStatus::Healthy, HealthStatus::Degraded),
            (HealthStatus::Degraded, HealthStatus::Healthy)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn silent_connection_closes_at_headers_timeout_exactly() {
    let pool = pool(PoolSettings {
        headers_timeout: Some("2s".into()),
        ..Default::default()
    });
    let mut events = pool.subscribe();
    let start = Instant::now();
    let (_remote, _tracker, served) = open(&pool);
    let reason = served.await.unwrap();
    assert_eq!(reason, CloseReason::Timeout(TimeoutKind::Headers));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let m = pool.metrics();
    assert!(m.timeouts.contains(&("headers", 1)), "{:?}", m.timeouts);
    assert_eq!(m.active, 0);
    let mut kinds = Vec::new();
    while let Some(Ok(e)) = events.try_recv() {
        kinds.push(e.kind);
    }
    assert!(kinds.iter().any(|k| matches!(
        k,
        PoolEventKind::ConnectionTimeout {
            kind: TimeoutKind::Headers,
            ..
        }
    )));
}

/// A connection that brings no timeout rule of its own.
struct RulelessConnection(MemoryConnection);

impl Future for RulelessConnection {
    type Output = Result<(), &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl ManagedConnection for RulelessConnection {
    type Error = &'static str;
    fn close_politely(mut self: Pin<&mut Self>) {
        Pin::new(&mut self.0).close_politely();
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_rule_of_its_own_a_connection_is_bounded_only_when_idle_or_stalled() {
    let pool = pool(PoolSettings {
        headers_timeout: Some("1s".into()),
        connection_timeout: Some("7s".into()),
        ..Default::default()
    });
    // Silent from the start: no head bound, only the idle one.
    let start = Instant::now();
    let guard = pool.admit(None).unwrap();
    let remote = Arc::new(Remote::default());
    let tracker = guard.tracker();
    let served =
        tokio::spawn(guard.serve(RulelessConnection(MemoryConnection::new(remote.clone()))));
    // A request in flight is never cut, however long it takes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    remote.begin(&tracker);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!served.is_finished());
    remote.end();
    let ended = Instant::now();
    let reason = served.await.unwrap();
    assert_eq!(reason, CloseReason::Timeout(TimeoutKind::Idle));
    assert_eq!(ended.elapsed(), Duration::from_secs(7));
    assert!(start.elapsed() > Duration::from_secs(63));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_counts_from_the_end_of_the_last_response() {
    let pool = pool(PoolSettings {
        keep_alive_timeout: Some("5s".into()),
        ..Default::default()
    });
    let (remote, tracker, served) = open(&pool);
    remote.begin(&tracker);
    tokio::time::sleep(Duration::from_secs(60)).await; // a long response is never cut
    assert!(!served.is_finished());
    remote.end();
    let ended = Instant::now();
    let reason = served.await.unwrap();
    assert_eq!(reason, CloseReason::Timeout(TimeoutKind::KeepAlive));
    assert_eq!(ended.elapsed(), Duration::from_secs(5));
    assert_eq!(pool.metrics().requests, 1);
}

/// A pool whose keep-alive outlasts the bound on a request head, as behind a load balancer.
fn long_keep_alive_pool() -> Pool<DefaultPolicy> {
    pool(PoolSettings {
        keep_alive_timeout: Some("120s".into()),
        connection_timeout: Some("300s".into()),
        headers_timeout: Some("10s".into()),
        ..Default::default()
    })
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_longer_than_the_headers_timeout_still_closes_at_its_own_time() {
    let pool = long_keep_alive_pool();
    let (remote, tracker, served) = open(&pool);
    for _ in 0..3 {
        remote.begin(&tracker);
        tokio::time::sleep(Duration::from_secs(1)).await;
        remote.end();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ended = Instant::now() - Duration::from_secs(1);
    let reason = served.await.unwrap();
    assert_eq!(reason, CloseReason::Timeout(TimeoutKind::KeepAlive));
    assert_eq!(ended.elapsed(), Duration::from_secs(120));
}

/// Serves one request, idles `idle`, then starts a head that never completes: it must be cut
/// `headers_timeout` after its first byte, however the idle spell's timer was armed.
async fn a_head_after(idle: Duration) {
    let pool = long_keep_alive_pool();
    let (remote, tracker, served) = open(&pool);
    remote.begin(&tracker);
    remote.end();
    tokio::time::sleep(idle).await;
    assert!(!served.is_finished());
    let head = Instant::now();
    tracker.bytes_read(5);
    remote.wake.notify_one();
    let reason = served.await.unwrap();
    assert_eq!(reason, CloseReason::Timeout(TimeoutKind::Headers));
    assert_eq!(head.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_head_soon_after_a_request_is_bounded_by_headers_timeout() {
    // Before the idle timer's early arming (at headers_timeout) fires.
    a_head_after(Duration::from_secs(3)).await;
}

#[tokio::test(start_paused = true)]
async fn a_head_after_a_long_idle_spell_is_bounded_by_headers_timeout() {
    // After it fired and the timer was re-armed at the keep-alive deadline.
    a_head_after(Duration::from_secs(60)).await;
}

#[tokio::test(start_paused = true)]
async fn lowered_timeouts_apply_to_open_connections() {
    let pool = pool(PoolSettings::default());
    let (remote, tracker, served) = open(&pool);
    remote.begin(&tracker);
    remote.end();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changes = pool
        .update_config(&PoolSettings {
            keep_alive_timeout: Some("2s".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(changes[0].field, "keep_alive_timeout");
    let at = Instant::now();
    assert_eq!(
        served.await.unwrap(),
        CloseReason::Timeout(TimeoutKind::KeepAlive)
    );
    // Idle since 1 s before the change; the new 2 s bound leaves 1 s.
    assert_eq!(at.elapsed(), Duration::from_secs(1));
}

#[tokio::test]
async fn lowering_the_limit_closes_idle_connections_first_and_never_a_request_in_flight() {
    let pool = pool(PoolSettings {
        max_connections: Some(4),
        ..Default::default()
    });
    let conns: Vec<_> = (0..4).map(|_| open(&pool)).collect();
    // Two busy, two idle (each idle one has served a request already).
    for (remote, tracker, _) in &conns {
        remote.begin(tracker);
    }
    conns[2].0.end();
    conns[3].0.end();
    // Lower to 1: three must go; the two idle ones at once, one busy one after its request.
    pool.update_config(&PoolSettings {
        max_connections: Some(1),
        ..Default::default()
    })
    .unwrap();
    let mut conns = conns.into_iter();
    let (busy_a, _, served_a) = conns.next().unwrap();
    let (busy_b, _, served_b) = conns.next().unwrap();
    for (_, _, served) in conns {
        assert_eq!(served.await.unwrap(), CloseReason::LimitLowered);
    }
    assert_eq!(pool.active_connections(), 2);
    assert!(busy_a.request.lock().unwrap().is_some());
    assert!(busy_b.request.lock().unwrap().is_some());
    assert!(!served_a.is_finished() && !served_b.is_finished());
    // The first busy connection to finish its request is the one shed.
    busy_a.end();
    assert_eq!(served_a.await.unwrap(), CloseReason::LimitLowered);
    busy_b.end();
    tokio::task::yield_now().await;
    assert!(!served_b.is_finished(), "the pool is at its limit now");
    assert_eq!(pool.active_connections(), 1);
    let m = pool.metrics();
    assert!(m.closed.contains(&("limit_lowered", 3)), "{:?}", m.closed);
    assert_eq!(pool.admit(None).unwrap_err(), Refusal::AtLimit);
    busy_b.close();
    assert_eq!(served_b.await.unwrap(), CloseReason::Completed);
}

#[tokio::test(start_paused = true)]
async fn close_all_lets_requests_finish_and_forces_the_rest_at_the_deadline() {
    let pool = pool(PoolSettings::default());
    let (idle, _, served_idle) = open(&pool);
    let (quick, quick_tracker, served_quick) = open(&pool);
    let (stuck, stuck_tracker, served_stuck) = open(&pool);
    quick.begin(&quick_tracker);
    stuck.begin(&stuck_tracker);
    let closing = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.close_all(Duration::from_secs(3)).await })
    };
    assert_eq!(served_idle.await.unwrap(), CloseReason::Shutdown);
    assert!(idle.politely_asked.load(Ordering::SeqCst));
    assert_eq!(pool.admit(None).unwrap_err(), Refusal::NotAccepting);
    assert_eq!(pool.health().status, HealthStatus::Unavailable);
    tokio::time::sleep(Duration::from_secs(1)).await;
    quick.end();
    assert_eq!(served_quick.await.unwrap(), CloseReason::Shutdown);
    let report = closing.await.unwrap();
    assert_eq!(served_stuck.await.unwrap(), CloseReason::ForcedShutdown);
    assert_eq!(
        (report.open_at_start, report.closed_politely, report.forced),
        (3, 2, 1)
    );
    assert_eq!(pool.active_connections(), 0);
    drop(stuck);
}

/// A drain that finds a request head partly in marks the connection closing at once but asks
/// it to close only once the head is in, and that request is told to close the connection; a
/// head that never completes is still cut at `headers_timeout` from its first byte.
#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_a_head_partly_in_within_its_bound() {
    let pool = pool(PoolSettings {
        headers_timeout: Some("2s".into()),
        ..Default::default()
    });
    let (finishing, finishing_tracker, served_finishing) = open(&pool);
    let (stuck, stuck_tracker, served_stuck) = open(&pool);
    for (remote, tracker) in [(&finishing, &finishing_tracker), (&stuck, &stuck_tracker)] {
        remote.begin(tracker);
        remote.end();
        tracker.bytes_read(5); // the next head's first bytes
    }
    let head_started = Instant::now();
    let closing = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.close_all(Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.metrics().closing, 2);
    assert!(!finishing.politely_asked.load(Ordering::SeqCst));
    // The head comes in: its request is told to close the connection, which is asked to.
    finishing.begin(&finishing_tracker);
    assert!(finishing
        .request
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .should_close_connection());
    finishing.end();
    assert_eq!(served_finishing.await.unwrap(), CloseReason::Shutdown);
    assert!(finishing.politely_asked.load(Ordering::SeqCst));
    assert_eq!(
        served_stuck.await.unwrap(),
        CloseReason::Timeout(TimeoutKind::Headers)
    );
    assert_eq!(head_started.elapsed(), Duration::from_secs(2));
    assert!(!stuck.politely_asked.load(Ordering::SeqCst));
    let report = closing.await.unwrap();
    assert_eq!((report.open_at_start, report.forced), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_leaving_pool_is_unavailable_but_admits_and_serves_until_it_drains() {
    let pool = pool(PoolSettings::default());
    let (kept, kept_tracker, served_kept) = open(&pool);
    let mut events = pool.subscribe();
    pool.leave();
    assert_eq!(pool.control().borrow().stage, Stage::Leaving);
    let h = pool.health();
    assert_eq!(h.status, HealthStatus::Unavailable);
    assert!(h.message.contains("leaving"), "{}", h.message);
    match events.try_recv() {
        Some(Ok(e)) => assert!(
            matches!(
                e.kind,
                PoolEventKind::HealthStatusChanged {
                    to: HealthStatus::Unavailable,
                    ..
                }
            ),
            "{e:?}"
        ),
        other => panic!("no health event: {other:?}"),
    }
    // Still admitting, and an open connection is not asked to close.
    let (fresh, _, served_fresh) = open(&pool);
    kept.begin(&kept_tracker);
    kept.end();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!kept.politely_asked.load(Ordering::SeqCst));
    assert!(!served_kept.is_finished());
    // Leaving again changes nothing; the drain takes over from there.
    pool.leave();
    let report = pool.close_all(Duration::from_secs(3)).await;
    assert_eq!((report.open_at_start, report.forced), (2, 0));
    assert!(kept.politely_asked.load(Ordering::SeqCst));
    assert_eq!(served_kept.await.unwrap(), CloseReason::Shutdown);
    assert_eq!(served_fresh.await.unwrap(), CloseReason::Shutdown);
    assert_eq!(pool.admit(None).unwrap_err(), Refusal::NotAccepting);
    pool.leave();
    assert_eq!(pool.control().borrow().stage, Stage::Draining);
    drop(fresh);
}

#[tokio::test(start_paused = true)]
async fn failed_accepts_are_counted_announced_at_most_once_a_second_and_degrade_for_a_window() {
    let pool = pool(PoolSettings {
        health: Some(poolserve_pool::HealthSettings {
            window: Some("2s".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut events = pool.subscribe();
    let emfile = std::io::Error::from_raw_os_error(24);
    for _ in 0..3 {
        pool.record_accept_error(AcceptErrorKind::Emfile, &emfile);
    }
    let accept_errors = |events: &mut poolserve_pool::Subscription| {
        let mut seen = Vec::new();
        while let Some(Ok(e)) = events.try_recv() {
            if let PoolEventKind::AcceptError { kind, failures, .. } = e.kind {
                seen.push((kind, failures));
            }
        }
        seen
    };
    assert_eq!(
        accept_errors(&mut events),
        [(AcceptErrorKind::Emfile, 1)],
        "one event, the next two held back"
    );
    let m = pool.metrics();
    assert!(m.accept_errors.contains(&("emfile", 3)), "{m:?}");
    assert!(m.accept_errors.contains(&("enobufs", 0)), "{m:?}");
    let h = pool.health();
    assert_eq!(h.status, HealthStatus::Degraded);
    assert!(
        h.message.contains("accept failing (emfile)"),
        "{}",
        h.message
    );

    tokio::time::sleep(poolserve_pool::ACCEPT_ERROR_EVENT_INTERVAL).await;
    pool.record_accept_error(AcceptErrorKind::Enobufs, &"no buffer space");
    assert_eq!(
        accept_errors(&mut events),
        [(AcceptErrorKind::Enobufs, 3)],
        "the failures held back are counted in the next event"
    );
    assert!(pool.health().message.contains("(enobufs)"));
    // A whole window without a failed accept: healthy again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.health().status, HealthStatus::Healthy);
}

#[tokio::test]
async fn connection_errors_are_counted_and_weigh_in_health() {
    let pool = pool(PoolSettings::default());
    for _ in 0..20 {
        let guard = pool.admit(None).unwrap();
        let t = guard.tracker();
        let mut r = t.request_started();
        r.response_started(true);
        r.finish();
    }
    let h = pool.health();
    assert_eq!(h.status, HealthStatus::Overloaded, "{}", h.message);
    assert!(h.error_rate > 0.99);
    assert_eq!(pool.metrics().errors, 20);
}

/// Ends one request of a fresh connection of `pool` whose caller gives it 100 ms: it runs
/// `after`, then `end` finishes it.
async fn a_call_with_a_deadline(
    pool: &Pool<DefaultPolicy>,
    after: Duration,
    end: impl FnOnce(RequestTracker),
) {
    let guard = pool.admit(None).unwrap();
    let t = guard.tracker();
    t.multiplexed();
    t.bytes_read(10);
    let mut r = t.request_started();
    r.caller_deadline(ms(100));
    tokio::time::advance(after).await;
    end(r);
}

#[tokio::test(start_paused = true)]
async fn a_call_ended_by_its_callers_deadline_is_counted_apart_from_errors() {
    let pool = pool(PoolSettings::default());
    let failed = |mut r: RequestTracker| {
        r.response_started(true);
        r.finish();
    };
    // Twenty calls that failed (DEADLINE_EXCEEDED) or were reset by the caller past its
    // deadline: the caller's limit.
    for i in 0..20 {
        if i % 2 == 0 {
            a_call_with_a_deadline(&pool, ms(100), failed).await;
        } else {
            a_call_with_a_deadline(&pool, ms(150), drop).await;
        }
    }
    let m = pool.metrics();
    assert_eq!((m.requests, m.errors, m.deadline_exceeded), (20, 0, 20));
    let h = pool.health();
    assert_eq!(h.status, HealthStatus::Healthy, "{}", h.message);
    assert_eq!(h.error_rate, 0.0);
    // Past the deadline, a call that completed is served; before it, a failure is the server's.
    a_call_with_a_deadline(&pool, ms(120), RequestTracker::finish).await;
    a_call_with_a_deadline(&pool, ms(99), failed).await;
    let m = pool.metrics();
    assert_eq!((m.requests, m.errors, m.deadline_exceeded), (22, 1, 20));
    // The caller's clock started before the request arrived: its reset just before the
    // deadline as seen here (within 5 %) is its deadline passing; one well before is its own
    // choice, neither an error nor a deadline.
    a_call_with_a_deadline(&pool, ms(96), drop).await;
    a_call_with_a_deadline(&pool, ms(94), drop).await;
    let m = pool.metrics();
    assert_eq!((m.requests, m.errors, m.deadline_exceeded), (24, 1, 21));
    // Slow calls that complete (their deadline was long enough) still show in the response
    // time.
    let guard = pool.admit(None).unwrap();
    let t = guard.tracker();
    t.multiplexed();
    t.bytes_read(10);
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let mut r = t.request_started();
            r.caller_deadline(Duration::from_secs(10));
            r
        })
        .collect();
    tokio::time::advance(Duration::from_secs(3)).await;
    for mut r in slow {
        r.response_started(false);
        r.finish();
    }
    let h = pool.health();
    assert_eq!(h.status, HealthStatus::Degraded, "{}", h.message);
    assert!(h.message.contains("response time"), "{}", h.message);
}

#[tokio::test]
async fn slow_subscriber_is_told_it_lagged() {
    let pool = pool(PoolSettings::default());
    let mut events = pool.subscribe();
    for _ in 0..(poolserve_pool::EVENT_BUFFER + 10) {
        drop(pool.admit(None).unwrap());
    }
    match events.recv().await {
        Err(EventError::Lagged(n)) => assert!(n >= 10, "{n}"),
        other => panic!("expected a lag, got {other:?}"),
    }
    assert!(events.recv().await.is_ok());
}

/// Latency sum (seconds) and window average response time (ms) after one request of a kept-alive
/// connection: its head is complete `head_at` after the head's first byte (which comes 7 ms
/// after the previous request ended), and the response ends `respond` after that.
async fn time_one_request(sized: bool, head_at: Duration, respond: Duration) -> (f64, f64) {
    let pool = pool(PoolSettings::default());
    let guard = pool.admit(None).unwrap();
    let t = guard.tracker();
    // A first request, so the next one is a kept-alive connection's.
    t.bytes_read(10);
    t.request_started().finish();
    let before = pool.metrics().latency.sum_seconds;
    tokio::time::advance(Duration::from_millis(7)).await; // idle between requests
    t.bytes_read(10);
    tokio::time::advance(head_at).await;
    let mut r = t.request_started();
    r.body_received();
    if sized {
        r.sized_response_started(false);
    } else {
        r.response_started(false);
    }
    tokio::time::advance(respond).await;
    r.finish();
    let after = pool.metrics().latency.sum_seconds;
    (after - before, pool.health().average_response_time_ms)
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_request_is_timed_from_its_first_byte_to_its_end() {
    let (latency, _) = time_one_request(true, ms(20), ms(30)).await;
    // 20 ms receiving the head plus 30 ms responding; the 7 ms idle before it do not count.
    assert!((latency - 0.050).abs() < 0.0015, "{latency}");
}

#[tokio::test(start_paused = true)]
async fn a_sized_response_is_timed_to_its_end_a_streamed_one_to_its_head() {
    // The window averages both requests, the first of which took no time: half of each.
    let (_, sized) = time_one_request(true, ms(20), ms(300)).await;
    assert!((sized - 320.0 / 2.0).abs() < 1.5, "sized: {sized} ms");
    let (latency, streamed) = time_one_request(false, ms(20), ms(300)).await;
    // A stream is in the histogram for its whole life, but its response time is its head's.
    assert!((latency - 0.320).abs() < 0.0015, "{latency}");
    assert!(
        (streamed - 20.0 / 2.0).abs() < 1.5,
        "streamed: {streamed} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_timed_from_the_read_that_brought_it() {
    let pool = pool(PoolSettings::default());
    let guard = pool.admit(None).unwrap();
    let t = guard.tracker();
    t.multiplexed();
    t.bytes_read(100); // preface and settings
    tokio::time::advance(ms(40)).await;
    t.bytes_read(60); // two HEADERS frames in one read
    tokio::time::advance(ms(5)).await; // the connection gets round to the streams
    let first = t.request_started();
    let second = t.request_started();
    assert_eq!(pool.metrics().requests_in_flight, 2);
    tokio::time::advance(ms(10)).await;
    first.finish();
    assert_eq!(pool.metrics().requests_in_flight, 1);
    tokio::time::advance(ms(20)).await;
    second.finish();
    let latency = pool.metrics().latency.sum_seconds;
    // 15 ms and 35 ms from the second read; the 40 ms before it are not theirs.
    assert!((latency - 0.050).abs() < 0.0015, "{latency}");
    assert_eq!(pool.metrics().requests, 2);
    assert_eq!(pool.metrics().requests_in_flight, 0);
}

/// A body the peer broke off excuses that request's failure and no other: not a stream in
/// flight beside it, not a request after it on the same connection.
#[tokio::test]
async fn a_body_the_peer_broke_off_excuses_only_its_own_request() {
    let pool = pool(PoolSettings::default());
    let guard = pool.admit(None).unwrap();
    let t = guard.tracker();
    t.multiplexed();
    let mut reset = t.request_started();
    let mut beside = t.request_started();
    let reset_body = reset.body_tracker();
    let _beside_body = beside.body_tracker();
    reset_body.broken_off();
    reset.fail();
    beside.fail();
    drop(reset);
    drop(beside);
    assert_eq!(pool.metrics().errors, 1, "the stream beside it failed");
    let mut later = t.request_started();
    later.fail();
    later.finish();
    // One whose body timed out is excused the same way, and counted as a request timeout.
    let mut slow = t.request_started();
    slow.body_tracker().timed_out();
    slow.fail();
    slow.finish();
    let m = pool.metrics();
    assert_eq!((m.requests, m.errors), (4, 2));
    assert!(m.timeouts.contains(&("request", 1)), "{:?}", m.timeouts);
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Settings whose timeouts are far past any age or grace of these tests.
fn patient() -> PoolSettings {
    PoolSettings {
        keep_alive_timeout: Some("1h".into()),
        connection_timeout: Some("1h".into()),
        headers_timeout: Some("1h".into()),
        request_timeout: Some("1h".into()),
        ..Default::default()
    }
}

/// A pool with `max_connection_age` and a grace, and timeouts far past both.
fn aging_pool(age: &str, grace: &str) -> Pool<DefaultPolicy> {
    pool(PoolSettings {
        max_connection_age: Some(age.into()),
        max_connection_age_grace: Some(grace.into()),
        ..patient()
    })
}

/// `a` is `b`, give or take the timer's millisecond.
fn about(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= ms(1)
}

#[tokio::test(start_paused = true)]
async fn a_multiplexed_connection_is_asked_to_close_at_its_own_age_and_cut_when_the_grace_ends() {
    let pool = aging_pool("100s", "10s");
    let opened = Instant::now();
    let (remote, tracker, served) = open(&pool);
    tracker.multiplexed();
    // A stream that outlives the age and its grace.
    remote.begin(&tracker);
    let age = poolserve_pool::age_limit(Duration::from_secs(100), tracker.id());
    assert!(
        age >= Duration::from_secs(90) && age < Duration::from_secs(110),
        "{age:?}"
    );
    tokio::time::sleep_until(opened + age - ms(1)).await;
    assert!(!remote.politely_asked.load(Ordering::SeqCst));
    tokio::time::sleep(ms(3)).await;
    assert!(
        remote.politely_asked.load(Ordering::SeqCst),
        "GOAWAY at the age"
    );
    assert_eq!(pool.metrics().closing, 1);
    // The stream in flight gets the grace, then the connection is cut.
    assert_eq!(served.await.unwrap(), CloseReason::MaxAge);
    assert!(about(opened.elapsed(), age + Duration::from_secs(10)));
    let m = pool.metrics();
    assert!(m.closed.contains(&("max_age", 1)), "{:?}", m.closed);
    assert_eq!(m.active, 0);
}

#[tokio::test(start_paused = true)]
async fn connections_opened_together_reach_their_age_apart() {
    let pool = aging_pool("100s", "30s");
    let opened = Instant::now();
    let conns: Vec<_> = (0..20).map(|_| open(&pool)).collect();
    for (_, tracker, _) in &conns {
        tracker.multiplexed();
    }
    let ended: Vec<_> = conns
        .into_iter()
        .map(|(remote, _, served)| {
            tokio::spawn(async move {
                // No stream open: the polite close ends it at once.
                assert_eq!(served.await.unwrap(), CloseReason::MaxAge);
                assert!(remote.politely_asked.load(Ordering::SeqCst));
                opened.elapsed()
            })
        })
        .collect();
    let mut ages = Vec::new();
    for end in ended {
        ages.push(end.await.unwrap());
    }
    ages.sort();
    assert!(ages[0] >= Duration::from_secs(90) && ages[19] < Duration::from_secs(110));
    assert!(ages[19] - ages[0] > Duration::from_secs(10), "{ages:?}");
}

#[tokio::test(start_paused = true)]
async fn an_http1_connection_past_its_age_says_so_on_its_next_response_only() {
    let pool = aging_pool("10s", "30s");
    let (remote, tracker, served) = open(&pool);
    remote.begin(&tracker);
    let early = remote
        .request
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .should_close_connection();
    assert!(!early, "no close before the age");
    remote.end();
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Past its age while idle: not closed under a client that may be sending a request now.
    assert!(!served.is_finished());
    assert!(!remote.politely_asked.load(Ordering::SeqCst));
    assert_eq!(pool.metrics().closing, 0);
    remote.begin(&tracker);
    let close = remote
        .request
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .should_close_connection();
    assert!(close, "the next response carries Connection: close");
    assert_eq!(pool.metrics().closing, 1);
    remote.end();
    // The client closes after that response.
    remote.close();
    assert_eq!(served.await.unwrap(), CloseReason::MaxAge);
    assert!(pool.metrics().closed.contains(&("max_age", 1)));
}

#[tokio::test(start_paused = true)]
async fn an_http1_connection_left_idle_past_its_age_is_closed_when_the_grace_ends() {
    let pool = aging_pool("10s", "5s");
    let opened = Instant::now();
    let (remote, tracker, served) = open(&pool);
    remote.begin(&tracker);
    remote.end();
    assert_eq!(served.await.unwrap(), CloseReason::MaxAge);
    let age = poolserve_pool::age_limit(Duration::from_secs(10), tracker.id());
    assert!(about(opened.elapsed(), age + Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn the_nth_http1_response_says_connection_close() {
    let pool = pool(PoolSettings {
        max_requests_per_connection: Some(3),
        max_connection_age_grace: Some("5s".into()),
        ..patient()
    });
    let (remote, tracker, served) = open(&pool);
    let mut said = Vec::new();
    for _ in 0..3 {
        remote.begin(&tracker);
        said.push(
            remote
                .request
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .should_close_connection(),
        );
        remote.end();
    }
    assert_eq!(said, [false, false, true]);
    // The client closes after the third response; until it does, the connection is closing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.metrics().closing, 1);
    remote.close();
    assert_eq!(served.await.unwrap(), CloseReason::MaxRequests);
    // One that does not close is cut when the grace ends.
    let (remote, tracker, served) = open(&pool);
    for _ in 0..3 {
        remote.begin(&tracker);
        let _ = remote
            .request
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .should_close_connection();
        remote.end();
    }
    let said_at = Instant::now();
    assert_eq!(served.await.unwrap(), CloseReason::MaxRequests);
    assert!(about(said_at.elapsed(), Duration::from_secs(5)));
    assert!(pool.metrics().closed.contains(&("max_requests", 2)));
}

#[tokio::test(start_paused = true)]
async fn a_multiplexed_connection_gets_its_goaway_once_its_nth_stream_starts() {
    let pool = pool(PoolSettings {
        max_requests_per_connection: Some(3),
        ..patient()
    });
    let (remote, tracker, served) = open(&pool);
    tracker.multiplexed();
    tracker.bytes_read(10);
    let first = tracker.request_started();
    first.finish();
    let second = tracker.request_started();
    tokio::task::yield_now().await;
    assert!(!remote.politely_asked.load(Ordering::SeqCst));
    // The third stream (held by the connection until `end`) makes the limit. Streams start in
    // tasks of their own: the driver hears of it and sends the GOAWAY, and the streams in
    // flight go on.
    remote.begin(&tracker);
    tokio::time::sleep(ms(1)).await;
    assert!(remote.politely_asked.load(Ordering::SeqCst));
    assert!(!served.is_finished());
    assert!(!second.should_close_connection(), "no header on a stream");
    second.finish();
    remote.end();
    assert_eq!(served.await.unwrap(), CloseReason::MaxRequests);
    assert_eq!(pool.metrics().requests, 3);
}

#[tokio::test(start_paused = true)]
async fn an_age_set_live_applies_to_open_connections_and_a_drain_comes_first() {
    let pool = pool(patient());
    let (old, old_tracker, served_old) = open(&pool);
    old_tracker.multiplexed();
    tokio::time::sleep(Duration::from_secs(50)).await;
    let (young, young_tracker, served_young) = open(&pool);
    young_tracker.multiplexed();
    young.begin(&young_tracker);
    let changes = pool
        .update_config(&PoolSettings {
            max_connection_age: Some("20s".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (changes[0].field.as_str(), changes[0].old.as_str()),
        ("max_connection_age", "none")
    );
    // Already older than its new age: asked at once.
    assert_eq!(served_old.await.unwrap(), CloseReason::MaxAge);
    assert!(old.politely_asked.load(Ordering::SeqCst));
    // A drain before the age: the close is the shutdown's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!young.politely_asked.load(Ordering::SeqCst));
    let closing = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.close_all(Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(young.politely_asked.load(Ordering::SeqCst));
    assert!(!served_young.is_finished(), "its stream goes on");
    young.end();
    assert_eq!(served_young.await.unwrap(), CloseReason::Shutdown);
    closing.await.unwrap();
}
