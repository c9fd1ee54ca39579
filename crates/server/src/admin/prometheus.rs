//! `/metrics`: every pool's snapshot in the Prometheus (OpenMetrics) text format.

use std::sync::Arc;

use poolserve_pool::{HealthStatus, HistogramSnapshot, PoolRegistry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every pool of `registry`.
pub fn render(registry: Arc<PoolRegistry>) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("poolserve");
    r.register_collector(Box::new(PoolCollector { registry }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)?;
    Ok(out)
}

#[derive(Debug)]
struct PoolCollector {
    registry: Arc<PoolRegistry>,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: name, help, type and per-pool samples.
struct Family<'a, T> {
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, T)>,
}

fn counter(e: &mut DescriptorEncoder, f: Family<'_, u64>) -> std::fmt::Result {
    let mut m = e.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.kind)?;
    for (labels, v) in &f.samples {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, f: Family<'_, f64>) -> std::fmt::Result {
    let mut m = e.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.kind)?;
    for (labels, v) in &f.samples {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, HistogramSnapshot)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in samples {
        let mut cumulative = 0;
        let mut buckets: Vec<(f64, u64)> = HistogramSnapshot::bounds_seconds()
            .zip(&h.counts)
            .map(|(bound, c)| {
                cumulative += c;
                (bound, cumulative)
            })
            .collect();
        buckets.push((f64::INFINITY, h.count));
        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            h.sum_seconds,
            h.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for PoolCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let pools = self.registry.pools();
        let snaps: Vec<_> = pools
            .iter()
            .map(|p| {
                let base: Labels = vec![
                    ("server", p.name().to_owned()),
                    ("protocol", p.protocol().to_owned()),
                ];
                (base, p.metrics(), p.health())
            })
            .collect();
        let with = |base: &Labels, k: &'static str, v: &str| {
            let mut l = base.clone();
            l.push((k, v.to_owned()));
            l
        };
        let per_pool = |f: &dyn Fn(&poolserve_pool::MetricsSnapshot) -> u64| {
            snaps
                .iter()
                .map(|(l, m, _)| (l.clone(), f(m)))
                .collect::<Vec<_>>()
        };
        let per_pool_f =
            |f: &dyn Fn(&poolserve_pool::MetricsSnapshot, &poolserve_pool::Health) -> f64| {
                snaps
                    .iter()
                    .map(|(l, m, h)| (l.clone(), f(m, h)))
                    .collect::<Vec<_>>()
            };

        gauge(
            &mut e,
            Family {
                name: "connections_active",
                help: "Open connections.",
                unit: None,
                kind: MetricType::Gauge,
                samples: per_pool_f(&|m, _| m.active as f64),
            },
        )?;
        gauge(&mut e, Family {
            name: "connections_state",
            help: "Open connections by state: idle (no request in flight), busy, closing (asked to close).",
            unit: None,
            kind: MetricType::Gauge,
            samples: snaps
                .iter()
                .flat_map(|(l, m, _)| {
                    [("idle", m.idle), ("busy", m.busy), ("closing", m.closing)]
                        .map(|(s, v)| (with(l, "state", s), v as f64))
                })
                .collect(),
        })?;
        gauge(
            &mut e,
            Family {
                name: "requests_in_flight",
                help: "Requests in flight; on HTTP/2 and gRPC servers, the open streams.",
                unit: None,
                kind: MetricType::Gauge,
                samples: per_pool_f(&|m, _| m.requests_in_flight as f64),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "connections_accepted",
                help: "Connections admitted.",
                unit: None,
                kind: MetricType::Counter,
                samples: per_pool(&|m| m.accepted),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "connections_rejected",
                help: "Connections refused at admission, by reason: max_connections (the pool \
                       is full), per_ip (one client at max_connections_per_ip), not_accepting \
                       (draining), invalid (the protocol policy refused the peer).",
                unit: None,
                kind: MetricType::Counter,
                samples: snaps
                    .iter()
                    .flat_map(|(l, m, _)| {
                        m.rejected_by_reason
                            .iter()
                            .map(|(r, v)| (with(l, "reason", r), *v))
                    })
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "connections_closed",
                help: "Connections closed, by reason.",
                unit: None,
                kind: MetricType::Counter,
                samples: snaps
                    .iter()
                    .flat_map(|(l, m, _)| m.closed.iter().map(|(r, v)| (with(l, "reason", r), *v)))
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "timeouts",
                help: "Connections closed by a timeout, by kind.",
                unit: None,
                kind: MetricType::Counter,
                samples: snaps
                    .iter()
                    .flat_map(|(l, m, _)| m.timeouts.iter().map(|(k, v)| (with(l, "kind", k), *v)))
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "accept_errors",
                help: "Failed accepts on the server's listening socket, by kind: emfile (the \
                       process is out of file descriptors), enfile (the system is), enobufs, \
                       enomem, other. The accept loop pauses after each, 5 ms doubling to 1 s.",
                unit: None,
                kind: MetricType::Counter,
                samples: snaps
                    .iter()
                    .flat_map(|(l, m, _)| {
                        m.accept_errors
                            .iter()
                            .map(|(k, v)| (with(l, "kind", k), *v))
                    })
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "errors",
                help:
                    "Server-side errors: 5xx responses, failed handlers, connection I/O failures.",
                unit: None,
                kind: MetricType::Counter,
                samples: per_pool(&|m| m.errors),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "requests",
                help: "Requests finished.",
                unit: None,
                kind: MetricType::Counter,
                samples: per_pool(&|m| m.requests),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "requests_deadline_exceeded",
                help: "Requests ended by their caller's deadline (a gRPC call's grpc-timeout): \
                       among requests, not among errors nor in the health error rate.",
                unit: None,
                kind: MetricType::Counter,
                samples: per_pool(&|m| m.deadline_exceeded),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "received",
                help: "Bytes received from clients.",
                unit: Some(Unit::Bytes),
                kind: MetricType::Counter,
                samples: per_pool(&|m| m.bytes_in),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "sent",
                help: "Bytes sent to clients.",
                unit: Some(Unit::Bytes),
                kind: MetricType::Counter,
                samples: per_pool(&|m| m.bytes_out),
            },
        )?;
        let latency: Vec<_> = snaps
            .iter()
            .map(|(l, m, _)| (l.clone(), m.latency.clone()))
            .collect();
        histogram(
            &mut e,
            "request_duration",
            "Request duration, head received to last body byte sent.",
            &latency,
        )?;
        gauge(
            &mut e,
            Family {
                name: "pool_max_connections",
                help: "The connection limit (+Inf when unlimited).",
                unit: None,
                kind: MetricType::Gauge,
                samples: per_pool_f(&|m, _| m.max_connections.map_or(f64::INFINITY, f64::from)),
            },
        )?;
        gauge(
            &mut e,
            Family {
                name: "pool_utilization_ratio",
                help: "Open connections over the limit (0 when unlimited).",
                unit: None,
                kind: MetricType::Gauge,
                samples: per_pool_f(&|_, h| h.utilization_ratio),
            },
        )?;
        gauge(
            &mut e,
            Family {
                name: "pool_health",
                help: "1 for the pool's current health status, 0 for the others.",
                unit: None,
                kind: MetricType::Gauge,
                samples: snaps
                    .iter()
                    .flat_map(|(l, _, h)| {
                        HealthStatus::ALL.map(|s| {
                            (
                                with(l, "status", s.as_str()),
                                f64::from(u8::from(s == h.status)),
                            )
                        })
                    })
                    .collect(),
            },
        )?;
        gauge(
            &mut e,
            Family {
                name: "pool_error_rate",
                help: "Decaying error rate over the health window, 0-1.",
                unit: None,
                kind: MetricType::Gauge,
                samples: per_pool_f(&|_, h| h.error_rate),
            },
        )?;
        gauge(
            &mut e,
            Family {
                name: "pool_average_response_time",
                help: "Decaying mean time to the response head over the health window.",
                unit: Some(Unit::Seconds),
                kind: MetricType::Gauge,
                samples: per_pool_f(&|_, h| h.average_response_time_ms / 1000.0),
            },
        )?;
        gauge(
            &mut e,
            Family {
                name: "requests_per_connection",
                help: "Mean requests served per closed connection.",
                unit: None,
                kind: MetricType::Gauge,
                samples: per_pool_f(&|m, _| m.requests_per_connection),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "messages",
                help: "Messages exchanged on message protocols (WebSocket), by direction.",
                unit: None,
                kind: MetricType::Counter,
                samples: snaps
                    .iter()
                    .flat_map(|(l, m, _)| {
                        [("in", m.messages_in), ("out", m.messages_out)]
                            .map(|(d, v)| (with(l, "direction", d), v))
                    })
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "message_payload",
                help: "Payload bytes of messages on message protocols, by direction.",
                unit: Some(Unit::Bytes),
                kind: MetricType::Counter,
                samples: snaps
                    .iter()
                    .flat_map(|(l, m, _)| {
                        [("in", m.message_bytes_in), ("out", m.message_bytes_out)]
                            .map(|(d, v)| (with(l, "direction", d), v))
                    })
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "pings_sent",
                help: "Heartbeat pings sent.",
                unit: None,
                kind: MetricType::Counter,
                samples: per_pool(&|m| m.pings_sent),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "close_codes",
                help: "WebSocket close codes sent or received, by code.",
                unit: None,
                kind: MetricType::Counter,
                samples: snaps
                    .iter()
                    .flat_map(|(l, m, _)| {
                        m.close_codes.iter().map(|(c, v)| (with(l, "code", c), *v))
                    })
                    .collect(),
            },
        )?;
        gauge(
            &mut e,
            Family {
                name: "uptime",
                help: "Time since the pool was created.",
                unit: Some(Unit::Seconds),
                kind: MetricType::Gauge,
                samples: per_pool_f(&|m, _| m.uptime.as_secs_f64()),
            },
        )?;
        Ok(())
    }
}
