//! Pool health: a pure function from measured pressure to a status, and the report type.
//!
//! Like Envoy's overload manager, [`assess`] only computes; acting on a status (refusing
//! readiness, announcing a change) happens at the edges.

use std::fmt;

use serde::Serialize;

use crate::config::HealthThresholds;
use crate::metrics::AcceptErrorKind;
use crate::window::WindowStats;

/// Error rate and response time only count once the window holds this many (weighted) requests,
/// so a single failed request on a quiet pool does not flip its status.
pub const MIN_REQUESTS_FOR_RATES: f64 = 10.0;

/// How far below a utilisation threshold (in utilisation, 0–1) a pool must fall to leave the
/// band it entered there: a pool churning at the line does not flap on every admit and release.
pub const UTILIZATION_HYSTERESIS: f64 = 0.05;

/// How well a pool is doing, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Serving normally.
    Healthy,
    /// Serving, but under pressure: high utilisation, errors, latency or failing accepts.
    Degraded,
    /// At or near its limit, or refusing connections: send traffic elsewhere.
    Overloaded,
    /// Not accepting connections (draining or stopped), or leaving: still serving but about to
    /// drain.
    Unavailable,
}

impl HealthStatus {
    /// Every status, best first.
    pub const ALL: [HealthStatus; 4] = [
        HealthStatus::Healthy,
        HealthStatus::Degraded,
        HealthStatus::Overloaded,
        HealthStatus::Unavailable,
    ];

    /// The label used in JSON and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Overloaded => "overloaded",
            HealthStatus::Unavailable => "unavailable",
        }
    }

    /// Whether a load balancer should send this pool new traffic.
    pub fn is_ready(&self) -> bool {
        matches!(self, HealthStatus::Healthy | HealthStatus::Degraded)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`assess`] looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthInputs {
    /// Whether the pool admits connections.
    pub accepting: bool,
    /// Whether the pool is leaving: still serving, but announced as going away.
    pub leaving: bool,
    /// Open connections.
    pub active: u32,
    /// The limit, if any.
    pub max: Option<u32>,
    /// The utilisation band the pool is in (`Healthy`, `Degraded` or `Overloaded`), as
    /// [`UtilizationEdges::band`] tracks it with hysteresis.
    pub utilization_band: HealthStatus,
    /// The decaying window's totals.
    pub window: WindowStats,
    /// The kind of the last failed accept, if any accept ever failed (named while the window
    /// holds failed accepts).
    pub last_accept_error: Option<AcceptErrorKind>,
}

/// A pool's health report (SPEC M `/health` fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Protocol label.
    pub protocol: &'static str,
    /// The status.
    pub status: HealthStatus,
    /// Open connections over the limit (0 when unlimited).
    pub utilization_ratio: f64,
    /// Open connections.
    pub active_connections: u32,
    /// The limit, if any.
    pub max_connections: Option<u32>,
    /// Connections refused since start.
    pub rejected_connections: u64,
    /// Decaying mean time to the response head, milliseconds.
    pub average_response_time_ms: f64,
    /// Decaying error rate, 0–1.
    pub error_rate: f64,
    /// Why the status is what it is, for people.
    pub message: String,
}

/// Open connections over the limit; 0 for an unlimited pool.
pub fn utilization(active: u32, max: Option<u32>) -> f64 {
    match max {
        Some(m) if m > 0 => f64::from(active) / f64::from(m),
        _ => 0.0,
    }
}

/// The smallest whole count at or above `x`, where `x` within rounding error of a whole number
/// is that number (`100 × 0.07` is 7.000000000000001, and means 7).
fn ceil_count(x: f64) -> f64 {
    let nearest = x.round();
    if (x - nearest).abs() <= 1e-9 * nearest.abs().max(1.0) {
        nearest
    } else {
        x.ceil()
    }
}

/// The open-connection count at which a band is entered, and the count it is kept from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    enter: u32,
    stay: u32,
}

impl Edge {
    /// `ratio` of `max`, and [`UTILIZATION_HYSTERESIS`] below it; never reached when unlimited.
    fn new(max: Option<u32>, ratio: f64) -> Edge {
        let at = |r: f64| match max {
            Some(m) => ceil_count(f64::from(m) * r).max(1.0) as u32,
            None => u32::MAX,
        };
        let enter = at(ratio);
        Edge {
            enter,
            stay: at(ratio - UTILIZATION_HYSTERESIS).min(enter),
        }
    }

    fn reached(&self, active: u32, inside: bool) -> bool {
        active >= if inside { self.stay } else { self.enter }
    }

    /// Both counts in one word, so a reader never sees one edge's counts half updated.
    fn pack(&self) -> u64 {
        u64::from(self.enter) << 32 | u64::from(self.stay)
    }

    fn unpack(word: u64) -> Edge {
        Edge {
            enter: (word >> 32) as u32,
            stay: word as u32,
        }
    }
}

/// The open-connection counts at which a pool enters the degraded and overloaded utilisation
/// bands (at their thresholds) and leaves them ([`UTILIZATION_HYSTERESIS`] below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtilizationEdges {
    degraded: Edge,
    overloaded: Edge,
}

impl UtilizationEdges {
    /// The edges for a pool of `max` connections (`None`: unlimited, never in a band).
    pub fn new(max: Option<u32>, t: &HealthThresholds) -> Self {
        UtilizationEdges {
            degraded: Edge::new(max, t.degraded_utilization),
            overloaded: Edge::new(max, t.overloaded_utilization),
        }
    }

    /// The band (`Healthy`, `Degraded` or `Overloaded`) of `active` open connections for a
    /// pool that was in `previous`: a band is entered at its threshold and kept down to
    /// [`UTILIZATION_HYSTERESIS`] below it.
    pub fn band(&self, active: u32, previous: HealthStatus) -> HealthStatus {
        if self
            .overloaded
            .reached(active, previous >= HealthStatus::Overloaded)
        {
            HealthStatus::Overloaded
        } else if self
            .degraded
            .reached(active, previous >= HealthStatus::Degraded)
        {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }

    /// The edges as two words (degraded, overloaded), for a lock-free home.
    pub(crate) fn pack(&self) -> (u64, u64) {
        (self.degraded.pack(), self.overloaded.pack())
    }

    /// Edges from the words [`UtilizationEdges::pack`] gave.
    pub(crate) fn unpack(degraded: u64, overloaded: u64) -> Self {
        UtilizationEdges {
            degraded: Edge::unpack(degraded),
            overloaded: Edge::unpack(overloaded),
        }
    }
}

/// The status and a human reason, from the inputs and thresholds.
pub fn assess(i: &HealthInputs, t: &HealthThresholds) -> (HealthStatus, String) {
    if !i.accepting {
        return (
            HealthStatus::Unavailable,
            "not accepting connections (draining or stopped)".into(),
        );
    }
    if i.leaving {
        return (
            HealthStatus::Unavailable,
            "leaving: still serving, but about to drain; send new work elsewhere".into(),
        );
    }
    let util = utilization(i.active, i.max);
    let rates_count = i.window.requests >= MIN_REQUESTS_FOR_RATES;
    let error_rate = i.window.error_rate();
    let pct = |r: f64| format!("{:.0}%", r * 100.0);
    // Why the pool is in its utilisation band: over the threshold, or not yet down past the
    // hysteresis margin below it.
    let band_reason = |threshold: f64| {
        if util >= threshold {
            format!("utilisation {} ≥ {}", pct(util), pct(threshold))
        } else {
            format!(
                "utilisation {} (entered at {}, left below {})",
                pct(util),
                pct(threshold),
                pct(threshold - UTILIZATION_HYSTERESIS)
            )
        }
    };

    let mut overloaded = Vec::new();
    if i.utilization_band >= HealthStatus::Overloaded {
        overloaded.push(band_reason(t.overloaded_utilization));
    }
    if i.window.rejections > 0 {
        overloaded.push(format!(
            "{} connection(s) refused at max_connections in the last {}s window",
            i.window.rejections,
            t.window.as_secs()
        ));
    }
    if rates_count && error_rate >= t.overloaded_error_rate {
        overloaded.push(format!(
            "error rate {} ≥ {}",
            pct(error_rate),
            pct(t.overloaded_error_rate)
        ));
    }
    if !overloaded.is_empty() {
        return (HealthStatus::Overloaded, overloaded.join("; "));
    }

    let mut degraded = Vec::new();
    if i.utilization_band >= HealthStatus::Degraded {
        degraded.push(band_reason(t.degraded_utilization));
    }
    if rates_count && error_rate >= t.degraded_error_rate {
        degraded.push(format!(
            "error rate {} ≥ {}",
            pct(error_rate),
            pct(t.degraded_error_rate)
        ));
    }
    if i.window.accept_errors > 0 {
        degraded.push(format!(
            "accept failing ({}): {} failed accept(s) in the last {}s window",
            i.last_accept_error.map_or("other", |k| k.as_str()),
            i.window.accept_errors,
            t.window.as_secs()
        ));
    }
    let limit_ms = t.degraded_response_time.as_secs_f64() * 1000.0;
    if rates_count && i.window.average_response_ms >= limit_ms {
        degraded.push(format!(
            "average response time {:.0}ms ≥ {:.0}ms",
            i.window.average_response_ms, limit_ms
        ));
    }
    if !degraded.is_empty() {
        return (HealthStatus::Degraded, degraded.join("; "));
    }
    (
        HealthStatus::Healthy,
        format!(
            "serving: utilisation {}, error rate {}",
            pct(util),
            pct(error_rate)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    /// A pool that reached `active` open connections from none.
    fn inputs(active: u32, max: Option<u32>) -> HealthInputs {
        let edges = UtilizationEdges::new(max, &PoolConfig::default().health);
        HealthInputs {
            accepting: true,
            leaving: false,
            active,
            max,
            utilization_band: edges.band(active, HealthStatus::Healthy),
            window: WindowStats::default(),
            last_accept_error: None,
        }
    }

    fn status(i: HealthInputs) -> HealthStatus {
        assess(&i, &PoolConfig::default().health).0
    }

    #[test]
    fn utilisation_bands() {
        assert_eq!(status(inputs(79, Some(100))), HealthStatus::Healthy);
        assert_eq!(status(inputs(80, Some(100))), HealthStatus::Degraded);
        assert_eq!(status(inputs(95, Some(100))), HealthStatus::Overloaded);
        assert_eq!(status(inputs(1_000_000, None)), HealthStatus::Healthy);
    }

    #[test]
    fn a_band_is_entered_at_its_threshold_and_left_only_past_the_margin() {
        let t = PoolConfig::default().health;
        let edges = UtilizationEdges::new(Some(100), &t);
        use HealthStatus::{Degraded, Healthy, Overloaded};
        // Churning at the 80 % line: in at 80, still in at 79 and 76, out at 74.
        assert_eq!(edges.band(79, Healthy), Healthy);
        assert_eq!(edges.band(80, Healthy), Degraded);
        assert_eq!(edges.band(79, Degraded), Degraded);
        assert_eq!(edges.band(75, Degraded), Degraded);
        assert_eq!(edges.band(74, Degraded), Healthy);
        assert_eq!(edges.band(79, Healthy), Healthy);
        // The same at 95 %; leaving overloaded lands in degraded while still above 75 %.
        assert_eq!(edges.band(94, Degraded), Degraded);
        assert_eq!(edges.band(95, Degraded), Overloaded);
        assert_eq!(edges.band(90, Overloaded), Overloaded);
        assert_eq!(edges.band(89, Overloaded), Degraded);
        assert_eq!(edges.band(10, Overloaded), Healthy);
        // A small pool: the margin is less than a slot, so there is no stickiness to speak of,
        // and an empty pool is always healthy.
        let small = UtilizationEdges::new(Some(2), &t);
        assert_eq!(small.band(2, Healthy), Overloaded);
        assert_eq!(small.band(1, Overloaded), Healthy);
        assert_eq!(small.band(0, Overloaded), Healthy);
        // Thresholds are whole counts despite binary fractions: 7 % of 100 is 7.
        let mut odd = t.clone();
        odd.degraded_utilization = 0.07;
        let odd = UtilizationEdges::new(Some(100), &odd);
        assert_eq!(odd.band(7, Healthy), Degraded);
        assert_eq!(odd.band(2, Degraded), Degraded);
        assert_eq!(odd.band(1, Degraded), Healthy);
        // An unlimited pool is never in a band.
        let unlimited = UtilizationEdges::new(None, &t);
        assert_eq!(unlimited.band(u32::MAX - 1, Overloaded), Healthy);
        assert_eq!(
            UtilizationEdges::unpack(edges.pack().0, edges.pack().1),
            edges
        );
    }

    #[test]
    fn the_message_says_why_a_pool_stays_in_its_band() {
        let mut i = inputs(77, Some(100));
        assert_eq!(status(i), HealthStatus::Healthy);
        i.utilization_band = HealthStatus::Degraded;
        let (s, msg) = assess(&i, &PoolConfig::default().health);
        assert_eq!(s, HealthStatus::Degraded);
        assert!(msg.contains("entered at 80%, left below 75%"), "{msg}");
    }

    #[test]
    fn not_accepting_is_unavailable_whatever_else() {
        let mut i = inputs(0, Some(10));
        i.accepting = false;
        assert_eq!(status(i), HealthStatus::Unavailable);
    }

    #[test]
    fn a_leaving_pool_is_unavailable_while_it_still_serves() {
        let mut i = inputs(1, Some(10));
        i.leaving = true;
        let (s, msg) = assess(&i, &PoolConfig::default().health);
        assert_eq!(s, HealthStatus::Unavailable);
        assert!(!s.is_ready());
        assert!(msg.contains("leaving"), "{msg}");
    }

    #[test]
    fn rejections_in_window_mean_overloaded() {
        let mut i = inputs(1, Some(10));
        i.window.rejections = 1;
        let (s, msg) = assess(&i, &PoolConfig::default().health);
        assert_eq!(s, HealthStatus::Overloaded);
        assert!(msg.contains("refused"), "{msg}");
    }

    #[test]
    fn failed_accepts_in_window_mean_degraded_naming_the_kind() {
        let mut i = inputs(1, Some(10));
        i.window.accept_errors = 3;
        i.last_accept_error = Some(AcceptErrorKind::Emfile);
        let (s, msg) = assess(&i, &PoolConfig::default().health);
        assert_eq!(s, HealthStatus::Degraded);
        assert!(
            s.is_ready(),
            "the backlog is served once descriptors free up"
        );
        assert!(msg.contains("accept failing (emfile): 3"), "{msg}");
        i.window.accept_errors = 0;
        assert_eq!(
            status(i),
            HealthStatus::Healthy,
            "once the window has passed"
        );
    }

    #[test]
    fn error_rate_and_latency_need_enough_requests() {
        let mut i = inputs(1, Some(10));
        i.window.requests = 5.0;
        i.window.errors = 5.0;
        i.window.average_response_ms = 10_000.0;
        assert_eq!(status(i), HealthStatus::Healthy);
        i.window.requests = 100.0;
        i.window.errors = 6.0;
        i.window.average_response_ms = 5.0;
        assert_eq!(status(i), HealthStatus::Degraded);
        i.window.errors = 60.0;
        assert_eq!(status(i), HealthStatus::Overloaded);
        i.window.errors = 0.0;
        i.window.average_response_ms = 2_500.0;
        let (s, msg) = assess(&i, &PoolConfig::default().health);
        assert_eq!(s, HealthStatus::Degraded);
        assert!(msg.contains("response time"), "{msg}");
    }
}
