//! `grpc.health.v1.Health` following the pool: SERVING while the pool is healthy or degraded,
//! NOT_SERVING when it is overloaded, unavailable or draining, for the server (`""`) and each
//! service alike.

use poolserve_pool::{HealthStatus, Pool, Stage, HEALTH_INTERVAL};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::policy::ServerPolicy;

/// The gRPC serving status for a pool's health.
pub(crate) fn serving_status(health: HealthStatus, stage: Stage) -> ServingStatus {
    if stage == Stage::Serving && health.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Sets every service's status from the pool's health now and whenever it changes, until the
/// pool stops serving (then NOT_SERVING stays).
pub(crate) fn spawn_health_follower(
    pool: Pool<ServerPolicy>,
    reporter: HealthReporter,
    services: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut control = pool.control();
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut current = None;
        loop {
            let stage = control.borrow_and_update().stage;
            let status = serving_status(pool.health().status, stage);
            if current != Some(status) {
                current = Some(status);
                for name in std::iter::once("").chain(services.iter().map(String::as_str)) {
                    reporter.set_service_status(name, status).await;
                }
                tracing::debug!(pool = pool.name(), ?status, "gRPC health status set");
            }
            if stage != Stage::Serving {
                return;
            }
            // The pool re-assesses its health on the same interval; a stage change (drain) is
            // taken at once.
            tokio::select! {
                _ = tick.tick() => {}
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_serving_pool_is_serving() {
        assert_eq!(
            serving_status(HealthStatus::Healthy, Stage::Serving),
            ServingStatus::Serving
        );
        assert_eq!(
            serving_status(HealthStatus::Degraded, Stage::Serving),
            ServingStatus::Serving
        );
        for status in [HealthStatus::Overloaded, HealthStatus::Unavailable] {
            assert_eq!(
                serving_status(status, Stage::Serving),
                ServingStatus::NotServing
            );
        }
        for stage in [Stage::Draining, Stage::Forced] {
            assert_eq!(
                serving_status(HealthStatus::Healthy, stage),
                ServingStatus::NotServing
            );
        }
    }
}
