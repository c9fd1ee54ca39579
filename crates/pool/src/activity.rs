//! What a connection's timeouts and health are decided from: its [`Phase`] and [`Activity`], as
//! the protocol code reports them, and the protocol-neutral parts of a timeout rule.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::metrics::TimeoutKind;

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// No request in flight and no byte of the next one seen.
    Idle = 0,
    /// Bytes of a request head are arriving.
    ReadingHead = 1,
    /// The head is in; the body is arriving.
    ReadingBody = 2,
    /// The request is in; the response is being produced or sent.
    Responding = 3,
}

impl Phase {
    pub(crate) fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::ReadingHead,
            2 => Phase::ReadingBody,
            3 => Phase::Responding,
            _ => Phase::Idle,
        }
    }
}

/// A read-only view of one connection's activity, what timeouts and health are decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// The current phase.
    pub phase: Phase,
    /// When the current phase began (for a new connection idle before its first byte: when it
    /// was opened; in `Responding`, which nothing times, when the request body began).
    pub phase_since: Instant,
    /// When the connection was admitted.
    pub opened_at: Instant,
    /// Requests (or streams) in flight.
    pub in_flight: u32,
    /// Requests finished on this connection.
    pub requests: u64,
    /// Since when a write has been waiting for the peer to read, if one is.
    pub write_blocked_since: Option<Instant>,
    /// Whether the connection was asked to close.
    pub closing: bool,
    /// When the last message went either way (message protocols; the upgrade counts).
    pub last_message: Instant,
    /// Since when a heartbeat ping is unanswered, if one is.
    pub ping_outstanding_since: Option<Instant>,
    /// Since when a close sent on an upgraded connection is unanswered, if one is.
    pub close_sent_since: Option<Instant>,
    /// Whether the connection switched protocols (an HTTP/1 upgrade).
    pub upgraded: bool,
    /// Whether the connection multiplexes requests as streams (HTTP/2).
    pub multiplexed: bool,
}

impl Activity {
    /// The activity of a connection opened at `at` that has done nothing yet.
    pub fn opened_at(at: Instant) -> Activity {
        Activity {
            phase: Phase::Idle,
            phase_since: at,
            opened_at: at,
            in_flight: 0,
            requests: 0,
            write_blocked_since: None,
            closing: false,
            last_message: at,
            ping_outstanding_since: None,
            close_sent_since: None,
            upgraded: false,
            multiplexed: false,
        }
    }
}

/// How far on [`later`] puts a time a sum cannot reach (what tokio takes for "never").
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + d`, or a time some thirty years on when the sum is more than an `Instant` holds, so a
/// bound too large to reach means "not in this process's life" rather than a panic. Config
/// bounds every duration ([`crate::MAX_DURATION`]); this holds for a `PoolConfig` built by hand.
pub fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
}

/// `since + bound` as a deadline of `kind`; none when the sum is more than an `Instant` holds.
pub fn deadline_after(
    since: Instant,
    bound: Duration,
    kind: TimeoutKind,
) -> Option<(Instant, TimeoutKind)> {
    since.checked_add(bound).map(|at| (at, kind))
}

/// The earlier of two optional deadlines.
pub fn earliest(
    a: Option<(Instant, TimeoutKind)>,
    b: Option<(Instant, TimeoutKind)>,
) -> Option<(Instant, TimeoutKind)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// A write the peer has left unread for `connection_timeout` is a stall: the bound every
/// protocol's rule includes.
pub fn stall_deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    a.write_blocked_since
        .and_then(|since| deadline_after(since, c.connection_timeout, TimeoutKind::WriteStall))
}

/// The protocol-neutral rule, for a connection whose protocol sets none: with no request in
/// flight it may idle for `connection_timeout` from when it last changed phase, and a write the
/// peer leaves unread for `connection_timeout` is a stall.
pub fn idle_deadline(a: &Activity, c: &PoolConfig) -> Option<(Instant, TimeoutKind)> {
    let idle = (a.in_flight == 0)
        .then(|| deadline_after(a.phase_since, c.connection_timeout, TimeoutKind::Idle))
        .flatten();
    earliest(idle, stall_deadline(a, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn activity() -> Activity {
        Activity::opened_at(Instant::now())
    }

    #[test]
    fn the_neutral_rule_bounds_idle_spells_and_stalls_only() {
        let c = PoolConfig::default();
        let mut a = activity();
        assert_eq!(
            idle_deadline(&a, &c),
            Some((a.phase_since + c.connection_timeout, TimeoutKind::Idle))
        );
        a.in_flight = 1;
        a.phase = Phase::Responding;
        assert_eq!(idle_deadline(&a, &c), None);
        let blocked = a.phase_since + Duration::from_secs(1);
        a.write_blocked_since = Some(blocked);
        assert_eq!(
            idle_deadline(&a, &c),
            Some((blocked + c.connection_timeout, TimeoutKind::WriteStall))
        );
    }

    #[test]
    fn a_bound_past_what_an_instant_holds_is_no_deadline_not_a_panic() {
        let c = PoolConfig {
            connection_timeout: Duration::MAX,
            ..PoolConfig::default()
        };
        let mut a = activity();
        assert_eq!(idle_deadline(&a, &c), None);
        a.write_blocked_since = Some(a.phase_since);
        assert_eq!(stall_deadline(&a, &c), None);
        assert!(later(a.phase_since, Duration::MAX) > a.phase_since + FAR_FUTURE / 2);
        let d = Duration::from_secs(5);
        assert_eq!(later(a.phase_since, d), a.phase_since + d);
    }

    #[test]
    fn earliest_picks_the_sooner_and_keeps_the_first_on_a_tie() {
        let t = Instant::now();
        let a = Some((t, TimeoutKind::Headers));
        let b = Some((t + Duration::from_secs(1), TimeoutKind::Idle));
        assert_eq!(earliest(a, b), a);
        assert_eq!(earliest(b, a), a);
        assert_eq!(earliest(None, b), b);
        assert_eq!(earliest(a, None), a);
        assert_eq!(earliest(a, Some((t, TimeoutKind::Idle))), a);
    }
}
