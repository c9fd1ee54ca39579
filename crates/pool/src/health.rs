//! Pool health: a pure function from measured pressure to a status, and the report type.
//!
//! Like Envoy's overload manager, [`assess`] only computes; acting on a status (refusing
//! readiness, announcing a change) happens at the edges.

use std::fmt;

use serde::Serialize;

use crate::config::HealthThresholds;
use crate::window::WindowStats;

/// Error rate and response time only count once the window holds this many (weighted) requests,
/// so a single failed request on a quiet pool does not flip its status.
pub const MIN_REQUESTS_FOR_RATES: f64 = 10.0;

/// How well a pool is doing, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Serving normally.
    Healthy,
    /// Serving, but under pressure: high utilisation, errors or latency.
    Degraded,
    /// At or near its limit, or refusing connections: send traffic elsewhere.
    Overloaded,
    /// Not accepting connections (draining or stopped).
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
    /// Open connections.
    pub active: u32,
    /// The limit, if any.
    pub max: Option<u32>,
    /// The decaying window's totals.
    pub window: WindowStats,
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

/// The status and a human reason, from the inputs and thresholds.
pub fn assess(i: &HealthInputs, t: &HealthThresholds) -> (HealthStatus, String) {
    if !i.accepting {
        return (
            HealthStatus::Unavailable,
            "not accepting connections (draining or stopped)".into(),
        );
    }
    let util = utilization(i.active, i.max);
    let rates_count = i.window.requests >= MIN_REQUESTS_FOR_RATES;
    let error_rate = i.window.error_rate();
    let pct = |r: f64| format!("{:.0}%", r * 100.0);

    let mut overloaded = Vec::new();
    if util >= t.overloaded_utilization {
        overloaded.push(format!(
            "utilisation {} ≥ {}",
            pct(util),
            pct(t.overloaded_utilization)
        ));
    }
    if i.window.rejections > 0 {
        overloaded.push(format!(
            "{} connection(s) refused in the last {}s window",
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
    if util >= t.degraded_utilization {
        degraded.push(format!(
            "utilisation {} ≥ {}",
            pct(util),
            pct(t.degraded_utilization)
        ));
    }
    if rates_count && error_rate >= t.degraded_error_rate {
        degraded.push(format!(
            "error rate {} ≥ {}",
            pct(error_rate),
            pct(t.degraded_error_rate)
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

    fn inputs(active: u32, max: Option<u32>) -> HealthInputs {
        HealthInputs {
            accepting: true,
            active,
            max,
            window: WindowStats::default(),
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
    fn not_accepting_is_unavailable_whatever_else() {
        let mut i = inputs(0, Some(10));
        i.accepting = false;
        assert_eq!(status(i), HealthStatus::Unavailable);
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
