//! The health section of a pool's config: the thresholds its status is assessed against and
//! the length of the window it is measured over.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::field::{show_duration, Applier};

/// Health thresholds, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// Utilisation (0–1) at which the pool is degraded.
    pub degraded_utilization: Option<f64>,
    /// Utilisation (0–1) at which the pool is overloaded.
    pub overloaded_utilization: Option<f64>,
    /// Error rate (0–1) at which the pool is degraded.
    pub degraded_error_rate: Option<f64>,
    /// Error rate (0–1) at which the pool is overloaded.
    pub overloaded_error_rate: Option<f64>,
    /// Average response time at which the pool is degraded.
    pub degraded_response_time: Option<String>,
    /// Length of the decaying window error rate, latency and rejections are measured over.
    pub window: Option<String>,
}

/// Validated health thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthThresholds {
    /// Utilisation at which the pool is degraded.
    pub degraded_utilization: f64,
    /// Utilisation at which the pool is overloaded.
    pub overloaded_utilization: f64,
    /// Error rate at which the pool is degraded.
    pub degraded_error_rate: f64,
    /// Error rate at which the pool is overloaded.
    pub overloaded_error_rate: f64,
    /// Average response time at which the pool is degraded.
    pub degraded_response_time: Duration,
    /// Length of the decaying measurement window.
    pub window: Duration,
}

impl HealthThresholds {
    pub(super) fn apply(&mut self, s: &HealthSettings, a: &mut Applier) {
        a.ratio(
            "health.degraded_utilization",
            s.degraded_utilization,
            &mut self.degraded_utilization,
        );
        a.ratio(
            "health.overloaded_utilization",
            s.overloaded_utilization,
            &mut self.overloaded_utilization,
        );
        a.ratio(
            "health.degraded_error_rate",
            s.degraded_error_rate,
            &mut self.degraded_error_rate,
        );
        a.ratio(
            "health.overloaded_error_rate",
            s.overloaded_error_rate,
            &mut self.overloaded_error_rate,
        );
        a.duration(
            "health.degraded_response_time",
            &s.degraded_response_time,
            &mut self.degraded_response_time,
        );
        a.duration("health.window", &s.window, &mut self.window);
        if self.window < Duration::from_secs(1) {
            a.error(
                "health.window",
                show_duration(self.window),
                "must be at least 1s",
            );
        }
    }

    /// Each degraded threshold must not exceed its overloaded one.
    pub(super) fn check(&self, a: &mut Applier) {
        if self.degraded_utilization > self.overloaded_utilization {
            a.error(
                "health.degraded_utilization",
                self.degraded_utilization,
                format!(
                    "must not exceed health.overloaded_utilization ({})",
                    self.overloaded_utilization
                ),
            );
        }
        if self.degraded_error_rate > self.overloaded_error_rate {
            a.error(
                "health.degraded_error_rate",
                self.degraded_error_rate,
                format!(
                    "must not exceed health.overloaded_error_rate ({})",
                    self.overloaded_error_rate
                ),
            );
        }
    }

    pub(super) fn to_settings(&self) -> HealthSettings {
        let d = |d: Duration| Some(show_duration(d));
        HealthSettings {
            degraded_utilization: Some(self.degraded_utilization),
            overloaded_utilization: Some(self.overloaded_utilization),
            degraded_error_rate: Some(self.degraded_error_rate),
            overloaded_error_rate: Some(self.overloaded_error_rate),
            degraded_response_time: d(self.degraded_response_time),
            window: d(self.window),
        }
    }
}
