//! `grpc.health.v1.Health` following the pool: SERVING while the pool is healthy or degraded,
//! NOT_SERVING when it is overloaded, unavailable, leaving or draining, for the server (`""`)
//! and each service alike.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use poolserve_pool::{HealthStatus, Pool, Stage, HEALTH_INTERVAL};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::transport::policy::ServerPolicy;

/// The gRPC serving status for a pool's health.
pub(crate) fn serving_status(health: HealthStatus, stage: Stage) -> ServingStatus {
    if stage == Stage::Serving && health.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// `grpc.health.v1.Health` for one pool's server: every service it names has the pool's status.
///
/// A `Watch` ends once the pool drains, right after it reports NOT_SERVING: a watcher would
/// otherwise hold the drain until its deadline and then be cut off.
#[derive(Debug, Clone)]
pub(crate) struct PoolHealth {
    status: watch::Receiver<ServingStatus>,
    /// The services a status is kept for, the server's own (`""`) among them.
    services: Arc<HashSet<String>>,
}

impl PoolHealth {
    /// The health service for `pool`'s server, whose services are `services`, and the task
    /// that keeps it following the pool's health until the pool stops serving: the server
    /// runs it when it starts (a server prepared and never started runs nothing).
    pub fn new(
        pool: Pool<ServerPolicy>,
        services: &[String],
    ) -> (
        HealthServer<PoolHealth>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let stage = pool.control().borrow().stage;
        let (tx, status) = watch::channel(serving_status(pool.health().status, stage));
        let services = std::iter::once(String::new())
            .chain(services.iter().cloned())
            .collect();
        let server = HealthServer::new(PoolHealth {
            status,
            services: Arc::new(services),
        });
        (server, follow(pool, tx))
    }

    fn reply(status: ServingStatus) -> HealthCheckResponse {
        HealthCheckResponse {
            status: status as i32,
        }
    }
}

/// A `Watch` call's replies.
pub(crate) type WatchReplies =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for PoolHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !self.services.contains(&request.get_ref().service) {
            return Err(Status::not_found("service not registered"));
        }
        Ok(Response::new(Self::reply(*self.status.borrow())))
    }

    type WatchStream = WatchReplies;

    /// The status now and at each change; an unknown service gets SERVICE_UNKNOWN and the call
    /// stays open, as the protocol asks. Every watch ends when the pool drains.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let known = self.services.contains(&request.get_ref().service);
        let replies = futures_util::stream::unfold(
            (self.status.clone(), true),
            move |(mut status, first)| async move {
                if first {
                    let now = *status.borrow_and_update();
                    let reply = if known {
                        now
                    } else {
                        ServingStatus::ServiceUnknown
                    };
                    return Some((Ok(Self::reply(reply)), (status, false)));
                }
                if !known {
                    // An unknown service's status never changes: the call waits for the end.
                    while status.changed().await.is_ok() {}
                    return None;
                }
                // A change made just before the follower let go is still delivered: `changed`
                // fails only once the last value was seen.
                status.changed().await.ok()?;
                let now = *status.borrow_and_update();
                Some((Ok(Self::reply(now)), (status, false)))
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Sets the status from the pool's health now and whenever it changes (NOT_SERVING as soon as
/// the pool is leaving, while it still serves); once the pool drains it sets NOT_SERVING and
/// lets go, which ends every watch.
async fn follow(pool: Pool<ServerPolicy>, status: watch::Sender<ServingStatus>) {
    let mut control = pool.control();
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stage = control.borrow_and_update().stage;
        let now = serving_status(pool.health().status, stage);
        if status.send_if_modified(|s| std::mem::replace(s, now) != now) {
            tracing::debug!(pool = pool.name(), ?now, "gRPC health status set");
        }
        if !stage.serves() {
            return;
        }
        // The pool re-assesses its health on the same interval; a stage change (drain) is
        // taken at once.
        tokio::select! {
            _ = tick.tick() => {}
            changed = control.changed() => {
                if changed.is_err() {
                    status.send_replace(ServingStatus::NotServing);
                    return;
                }
            }
        }
    }
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
        for stage in [Stage::Leaving, Stage::Draining, Stage::Forced] {
            assert_eq!(
                serving_status(HealthStatus::Healthy, stage),
                ServingStatus::NotServing
            );
        }
    }
}
