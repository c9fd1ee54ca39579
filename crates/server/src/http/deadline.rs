//! The timeout rule of a connection that speaks HTTP/1.1: the request cycle until the
//! connection is upgraded, then the rule of the protocol it was upgraded to. HTTP/1.1 servers
//! (whose handlers may take a connection over) and WebSocket servers (which upgrade every
//! connection) both follow it, so it lives here, below both.
//!
//! Request cycle: a new connection must deliver its first request head within
//! `headers_timeout` of being opened; a head must arrive within `headers_timeout` of its first
//! byte and a whole request within `request_timeout` of its first byte (the first request's
//! too: the wait for it is bounded by `headers_timeout`); between requests a connection may idle
//! for `keep_alive_timeout` (never more than `connection_timeout`), counted from when the last
//! response went out to the peer; a response being produced or streamed is never cut.
//!
//! Upgraded: an unanswered heartbeat ping, and a close we sent, must be answered within
//! `websocket.pong_timeout`; a connection with no message either way for
//! `websocket.idle_timeout` (only when configured) is idle. A connection that exchanges messages
//! is never idle.
//!
//! Both: a write the peer leaves unread for `connection_timeout` is a stall.

use poolserve_pool::{
    deadline_after, earliest, later, stall_deadline, Activity, Phase, PoolConfig, TimeoutKind,
};
use tokio::time::Instant;

/// The deadline of an HTTP/1.1 connection, upgraded or not.
pub fn http1_deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    let bound = if a.upgraded {
        upgraded(a, c)
    } else {
        request_cycle(a, c)
    };
    earliest(bound, stall_deadline(a, c))
}

/// When to arm an HTTP/1.1 connection's timer for `deadline`. An idle keep-alive connection's
/// next request will be bounded by `headers_timeout` from its first byte, which can come before
/// the keep-alive deadline: arming no later than that bound from the idle spell's start means
/// the request needs no earlier re-arm (a timer that fires early only causes a re-check).
pub fn http1_timer_at(deadline: Instant, a: &Activity, c: &PoolConfig) -> Instant {
    if a.phase == Phase::Idle && a.requests > 0 && !a.upgraded {
        deadline.min(later(
            a.phase_since,
            c.headers_timeout.min(c.request_timeout),
        ))
    } else {
        deadline
    }
}

fn request_cycle(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    let at = |d, kind| deadline_after(a.phase_since, d, kind);
    // A new connection's first head is due `headers_timeout` after the open, however late its
    // first byte came.
    let first_head = || deadline_after(a.opened_at, c.headers_timeout, TimeoutKind::Headers);
    match a.phase {
        Phase::Idle if a.requests == 0 => first_head(),
        // The last response's tail is still waiting on the peer: the stall bound governs, and
        // the idle spell starts when the tail went out.
        Phase::Idle if a.write_blocked_since.is_some() => None,
        Phase::Idle => earliest(
            at(c.keep_alive_timeout, TimeoutKind::KeepAlive),
            at(c.connection_timeout, TimeoutKind::Idle),
        ),
        Phase::ReadingHead if a.requests == 0 => {
            earliest(first_head(), at(c.request_timeout, TimeoutKind::Request))
        }
        Phase::ReadingHead => earliest(
            at(c.headers_timeout, TimeoutKind::Headers),
            at(c.request_timeout, TimeoutKind::Request),
        ),
        Phase::ReadingBody => at(c.request_timeout, TimeoutKind::Request),
        Phase::Responding => None,
    }
}

fn upgraded(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    let ws = &c.websocket;
    let pong = a
        .ping_outstanding_since
        .and_then(|since| deadline_after(since, ws.pong_timeout, TimeoutKind::Pong));
    let idle = ws
        .idle_timeout
        .and_then(|idle| deadline_after(a.last_message, idle, TimeoutKind::Idle));
    // A close we sent must be answered like a ping.
    let close = a
        .close_sent_since
        .and_then(|since| deadline_after(since, ws.pong_timeout, TimeoutKind::Pong));
    earliest(earliest(pong, close), idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn activity(phase: Phase, requests: u64) -> Activity {
        let mut a = Activity::opened_at(Instant::now());
        a.phase = phase;
        a.requests = requests;
        a
    }

    #[test]
    fn the_request_cycle() {
        let c = PoolConfig::default();
        let a = activity(Phase::Idle, 0);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.phase_since + c.headers_timeout, TimeoutKind::Headers))
        );
        let a = activity(Phase::Idle, 3);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.phase_since + c.keep_alive_timeout, TimeoutKind::KeepAlive))
        );
        let short_idle = PoolConfig {
            connection_timeout: Duration::from_secs(1),
            ..c.clone()
        };
        assert_eq!(
            http1_deadline(&a, &short_idle).unwrap().1,
            TimeoutKind::Idle
        );
        // The last response's tail still waits on the peer: only the stall bound applies.
        let mut tail = activity(Phase::Idle, 3);
        tail.write_blocked_since = Some(tail.phase_since);
        assert_eq!(
            http1_deadline(&tail, &c),
            Some((
                tail.phase_since + c.connection_timeout,
                TimeoutKind::WriteStall
            ))
        );
        let a = activity(Phase::ReadingHead, 3);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.phase_since + c.headers_timeout, TimeoutKind::Headers))
        );
        let a = activity(Phase::ReadingBody, 0);
        assert_eq!(http1_deadline(&a, &c).unwrap().1, TimeoutKind::Request);
        let mut a = activity(Phase::Responding, 0);
        assert_eq!(http1_deadline(&a, &c), None);
        a.write_blocked_since = Some(a.phase_since);
        assert_eq!(http1_deadline(&a, &c).unwrap().1, TimeoutKind::WriteStall);
    }

    #[test]
    fn a_first_request_is_timed_from_its_first_byte_and_its_head_from_the_open() {
        let c = PoolConfig {
            headers_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(2),
            ..PoolConfig::default()
        };
        // The first byte came 7 s after the open.
        let mut a = activity(Phase::ReadingHead, 0);
        a.phase_since = a.opened_at + Duration::from_secs(7);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.phase_since + c.request_timeout, TimeoutKind::Request))
        );
        // 9.5 s after the open: the head is still due 10 s after it.
        a.phase_since = a.opened_at + Duration::from_millis(9_500);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.opened_at + c.headers_timeout, TimeoutKind::Headers))
        );
        // The head is in: the body has `request_timeout` from the first byte, not the open.
        a.phase = Phase::ReadingBody;
        a.phase_since = a.opened_at + Duration::from_secs(7);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.phase_since + c.request_timeout, TimeoutKind::Request))
        );
    }

    #[test]
    fn an_upgraded_connection() {
        let mut c = PoolConfig::default();
        let mut a = activity(Phase::Idle, 0);
        // Before the upgrade: the request cycle.
        assert_eq!(http1_deadline(&a, &c).unwrap().1, TimeoutKind::Headers);
        a.upgraded = true;
        // Upgraded, no ping outstanding, no idle timeout configured: unbounded.
        assert_eq!(http1_deadline(&a, &c), None);
        a.ping_outstanding_since = Some(a.last_message);
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.last_message + c.websocket.pong_timeout, TimeoutKind::Pong))
        );
        a.ping_outstanding_since = None;
        c.websocket.idle_timeout = Some(Duration::from_secs(3));
        assert_eq!(
            http1_deadline(&a, &c),
            Some((a.last_message + Duration::from_secs(3), TimeoutKind::Idle))
        );
        a.write_blocked_since = Some(a.last_message);
        c.connection_timeout = Duration::from_secs(1);
        assert_eq!(http1_deadline(&a, &c).unwrap().1, TimeoutKind::WriteStall);
    }

    #[test]
    fn an_idle_keep_alive_connection_arms_by_the_next_heads_bound() {
        let c = PoolConfig {
            keep_alive_timeout: Duration::from_secs(60),
            connection_timeout: Duration::from_secs(60),
            ..PoolConfig::default()
        };
        let a = activity(Phase::Idle, 1);
        let (deadline, kind) = http1_deadline(&a, &c).unwrap();
        assert_eq!(kind, TimeoutKind::KeepAlive);
        assert_eq!(
            http1_timer_at(deadline, &a, &c),
            a.phase_since + c.headers_timeout
        );
        // A first request, and any other phase, arm at the deadline itself.
        let first = activity(Phase::Idle, 0);
        let (d, _) = http1_deadline(&first, &c).unwrap();
        assert_eq!(http1_timer_at(d, &first, &c), d);
        let reading = activity(Phase::ReadingBody, 1);
        let (d, _) = http1_deadline(&reading, &c).unwrap();
        assert_eq!(http1_timer_at(d, &reading, &c), d);
    }
}
