//! A connection's lifetime bounds: `max_connection_age` (with its per-connection jitter) and
//! `max_requests_per_connection`, and where a connection is in retiring for either.
//!
//! Contract: a connection past either bound gets its protocol's polite close (HTTP/1
//! `Connection: close` on its next response, HTTP/2 GOAWAY, WebSocket 1001), and is dropped
//! `max_connection_age_grace` later if it is still open. Each connection's age limit is drawn
//! once, from its id, within [`AGE_JITTER`] of the configured age, so connections opened
//! together do not all leave together.

use std::time::Duration;

use crate::events::ConnectionId;
use crate::metrics::CloseReason;

/// How far a connection's own age limit may lie from `max_connection_age`, either way: ±10 %.
pub const AGE_JITTER: f64 = 0.1;

/// The age limit of connection `id` under `max_connection_age`: `age` scaled by a factor in
/// `[1 - AGE_JITTER, 1 + AGE_JITTER)` that the id alone decides, so it stays the same for the
/// connection's life (a live change of the age scales it by the same factor) and neighbouring
/// ids get unrelated factors.
pub fn age_limit(age: Duration, id: ConnectionId) -> Duration {
    // The top 53 bits of the mixed id, as a fraction in [0, 1).
    let unit = (mix(id) >> 11) as f64 / (1u64 << 53) as f64;
    age.mul_f64(1.0 - AGE_JITTER + 2.0 * AGE_JITTER * unit)
}

/// SplitMix64's finaliser: consecutive inputs give outputs with no visible relation.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where a connection is in retiring for its age or its request count, kept as a `u8` in the
/// connection's shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Retirement {
    /// Neither bound reached.
    None = 0,
    /// Past its age; its polite close is still to go out (an HTTP/1 connection's goes on its
    /// next response).
    AgeDue = 1,
    /// Its request limit reached; its polite close is still to go out (an HTTP/2 connection's
    /// GOAWAY, sent by its driver).
    RequestsDue = 2,
    /// Its polite close for its age went out.
    Age = 3,
    /// Its polite close for its request count went out.
    Requests = 4,
}

impl Retirement {
    pub fn from_u8(v: u8) -> Retirement {
        match v {
            1 => Retirement::AgeDue,
            2 => Retirement::RequestsDue,
            3 => Retirement::Age,
            4 => Retirement::Requests,
            _ => Retirement::None,
        }
    }

    /// The close reason a connection retiring this way is counted under.
    pub fn reason(self) -> Option<CloseReason> {
        match self {
            Retirement::None => None,
            Retirement::AgeDue | Retirement::Age => Some(CloseReason::MaxAge),
            Retirement::RequestsDue | Retirement::Requests => Some(CloseReason::MaxRequests),
        }
    }

    /// Whether the polite close is still to go out.
    pub fn is_due(self) -> bool {
        matches!(self, Retirement::AgeDue | Retirement::RequestsDue)
    }

    /// Whether the polite close went out.
    pub fn is_sent(self) -> bool {
        matches!(self, Retirement::Age | Retirement::Requests)
    }

    /// The state once the polite close for `reason` went out.
    pub fn sent(reason: CloseReason) -> Retirement {
        if reason == CloseReason::MaxRequests {
            Retirement::Requests
        } else {
            Retirement::Age
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_age_limit_lies_within_the_jitter_and_they_spread_over_it() {
        let age = Duration::from_secs(600);
        let (low, high) = (age.mul_f64(0.9), age.mul_f64(1.1));
        let limits: Vec<Duration> = (1..=10_000).map(|id| age_limit(age, id)).collect();
        assert!(limits.iter().all(|l| *l >= low && *l < high));
        // Consecutive ids (connections accepted one after another) spread over the whole band:
        // each tenth of it holds about a tenth of them.
        let mut tenths = [0usize; 10];
        for l in &limits {
            let at = (l.as_secs_f64() - low.as_secs_f64()) / (high - low).as_secs_f64();
            tenths[((at * 10.0) as usize).min(9)] += 1;
        }
        assert!(tenths.iter().all(|n| (800..1200).contains(n)), "{tenths:?}");
        let neighbours_apart = limits
            .windows(2)
            .filter(|w| w[0].abs_diff(w[1]) > Duration::from_secs(6))
            .count();
        assert!(neighbours_apart > 7_000, "{neighbours_apart}");
    }

    #[test]
    fn a_connection_keeps_its_factor_when_the_age_changes() {
        for id in [1, 2, 77, u64::MAX] {
            let a = age_limit(Duration::from_secs(100), id).as_secs_f64() / 100.0;
            let b = age_limit(Duration::from_secs(10), id).as_secs_f64() / 10.0;
            assert!((a - b).abs() < 1e-6, "{id}: {a} vs {b}");
            assert_eq!(
                age_limit(Duration::from_secs(100), id),
                age_limit(Duration::from_secs(100), id)
            );
        }
        // The largest age allowed scales without overflow.
        assert!(
            age_limit(crate::config::MAX_DURATION, u64::MAX)
                < crate::config::MAX_DURATION.mul_f64(1.11)
        );
    }

    #[test]
    fn retirement_round_trips_and_names_its_reason() {
        for r in [
            Retirement::None,
            Retirement::AgeDue,
            Retirement::RequestsDue,
            Retirement::Age,
            Retirement::Requests,
        ] {
            assert_eq!(Retirement::from_u8(r as u8), r);
            assert!(!(r.is_due() && r.is_sent()));
        }
        assert_eq!(Retirement::AgeDue.reason(), Some(CloseReason::MaxAge));
        assert_eq!(
            Retirement::Requests.reason(),
            Some(CloseReason::MaxRequests)
        );
        assert_eq!(Retirement::None.reason(), None);
        assert_eq!(Retirement::sent(CloseReason::MaxAge), Retirement::Age);
        assert_eq!(
            Retirement::sent(CloseReason::MaxRequests),
            Retirement::Requests
        );
    }
}
