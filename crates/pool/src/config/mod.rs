//! Pool configuration: the raw, optional [`PoolSettings`] that files and patches carry, and the
//! validated [`PoolConfig`] a pool runs on.
//!
//! Every value is validated once, by [`PoolConfig::apply`]; a bad value is reported with the
//! field's dotted path and the value itself, and `0` is never read as "unlimited" or "default".

mod field;
mod health;
mod protocols;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use field::{parse_duration_setting, ConfigChange, ConfigErrors, FieldError, MAX_DURATION};
use field::{show_duration, Applier};
pub use health::{HealthSettings, HealthThresholds};
pub use protocols::{
    GrpcConfig, GrpcSettings, Http1Config, Http1Settings, Http2Config, Http2Settings,
    WebSocketConfig, WebSocketSettings, MIN_STREAM_SEND_BUFFER,
};

/// The largest `max_connections` a pool accepts (the admission counter holds 32 bits).
pub const MAX_CONNECTIONS_LIMIT: u32 = 1 << 30;

/// Pool settings as written in a config file or an admin patch: every field optional.
///
/// Durations are strings such as `"500ms"`, `"30s"` or `"5m"`; sizes are integer bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Most connections open at once; absent means unlimited.
    pub max_connections: Option<i64>,
    /// Most connections open at once from one client IP address.
    pub max_connections_per_ip: Option<i64>,
    /// How many leading bits of an IPv6 client address name one client for
    /// `max_connections_per_ip`.
    pub max_connections_per_ip_v6_prefix: Option<i64>,
    /// Idle time allowed with no request in flight.
    pub connection_timeout: Option<String>,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keep_alive_timeout: Option<String>,
    /// Time allowed to receive a whole request.
    pub request_timeout: Option<String>,
    /// Time allowed to receive a request head.
    pub headers_timeout: Option<String>,
    /// Age after which a connection is closed politely (within ±10 % per connection); absent
    /// means no limit.
    pub max_connection_age: Option<String>,
    /// Time a connection closed politely for its age or request count has before it is cut.
    pub max_connection_age_grace: Option<String>,
    /// Requests (HTTP/2 streams) after which a connection is closed politely; absent means no
    /// limit.
    pub max_requests_per_connection: Option<i64>,
    /// HTTP/1-specific settings.
    pub http1: Option<Http1Settings>,
    /// HTTP/2-specific settings (http2 and grpc servers).
    pub http2: Option<Http2Settings>,
    /// gRPC-specific settings.
    pub grpc: Option<GrpcSettings>,
    /// WebSocket-specific settings.
    pub websocket: Option<WebSocketSettings>,
    /// Health thresholds.
    pub health: Option<HealthSettings>,
}

/// The validated configuration a pool runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Most connections open at once; `None` is unlimited.
    pub max_connections: Option<u32>,
    /// Most connections open at once from one client IP; `None` is unlimited.
    pub max_connections_per_ip: Option<u32>,
    /// The prefix length, 1 to 128, that keys an IPv6 client for `max_connections_per_ip`: a
    /// host commonly holds a whole /64, so each of its addresses is the same client. IPv4
    /// clients (and IPv4-mapped IPv6 ones) are keyed by their whole address.
    pub max_connections_per_ip_v6_prefix: u8,
    /// Idle time allowed with no request in flight.
    pub connection_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keep_alive_timeout: Duration,
    /// Time allowed to receive a whole request.
    pub request_timeout: Duration,
    /// Time allowed to receive a request head (and, for a new connection, its first head).
    pub headers_timeout: Duration,
    /// Age after which a connection is closed politely, each connection's within ±10 % of it
    /// ([`crate::age_limit`]); `None` is no limit.
    pub max_connection_age: Option<Duration>,
    /// Time a connection closed politely for its age or request count has before it is cut.
    pub max_connection_age_grace: Duration,
    /// Requests (HTTP/2 streams) after which a connection is closed politely; `None` is no
    /// limit.
    pub max_requests_per_connection: Option<u32>,
    /// HTTP/1 settings.
    pub http1: Http1Config,
    /// HTTP/2 settings.
    pub http2: Http2Config,
    /// gRPC settings.
    pub grpc: GrpcConfig,
    /// WebSocket settings.
    pub websocket: WebSocketConfig,
    /// Health thresholds.
    pub health: HealthThresholds,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: None,
            max_connections_per_ip: None,
            max_connections_per_ip_v6_prefix: 64,
            connection_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            headers_timeout: Duration::from_secs(10),
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
            max_requests_per_connection: None,
            http1: Http1Config {
                max_header_size: 16 * 1024,
            },
            http2: Http2Config {
                max_session_memory: 10 * 1024 * 1024,
                max_header_list_size: 16 * 1024,
                max_concurrent_streams: 250,
                keep_alive_interval: Duration::from_secs(30),
                keep_alive_timeout: Duration::from_secs(10),
            },
            grpc: GrpcConfig {
                max_receive_message_length: 4 * 1024 * 1024,
                max_send_message_length: 4 * 1024 * 1024,
                keep_alive_time: Duration::from_secs(30),
            },
            websocket: WebSocketConfig {
                ping_interval: Duration::from_secs(30),
                pong_timeout: Duration::from_secs(10),
                max_message_size: 16 * 1024 * 1024,
                max_frame_size: 16 * 1024 * 1024,
                idle_timeout: None,
            },
            health: HealthThresholds {
                degraded_utilization: 0.8,
                overloaded_utilization: 0.95,
                degraded_error_rate: 0.05,
                overloaded_error_rate: 0.5,
                degraded_response_time: Duration::from_secs(2),
                window: Duration::from_secs(10),
            },
        }
    }
}

impl PoolConfig {
    /// Applies `settings` on top of this config and validates the result: the new config and
    /// what changed, or every bad field (fields are named under `prefix`, e.g. `"pool."`).
    pub fn apply(
        &self,
        settings: &PoolSettings,
        prefix: &str,
    ) -> Result<(PoolConfig, Vec<ConfigChange>), ConfigErrors> {
        let mut next = self.clone();
        let mut a = Applier::new(prefix);
        next.apply_connection(settings, &mut a);
        let s = settings;
        if let Some(h1) = &s.http1 {
            next.http1.apply(h1, &mut a);
        }
        if let Some(h2) = &s.http2 {
            next.http2.apply(h2, &mut a);
        }
        if let Some(g) = &s.grpc {
            next.grpc.apply(g, &mut a);
        }
        if let Some(w) = &s.websocket {
            next.websocket.apply(w, &mut a);
        }
        if let Some(h) = &s.health {
            next.health.apply(h, &mut a);
        }
        // Checks across fields, on the result: a patch may change either side.
        next.http2.check(&mut a);
        next.health.check(&mut a);
        if a.errors.is_empty() {
            Ok((next, a.changes))
        } else {
            Err(ConfigErrors(a.errors))
        }
    }

    /// The limits and timeouts every connection has.
    fn apply_connection(&mut self, s: &PoolSettings, a: &mut Applier) {
        a.limit(
            "max_connections",
            s.max_connections,
            MAX_CONNECTIONS_LIMIT,
            &mut self.max_connections,
        );
        a.limit(
            "max_connections_per_ip",
            s.max_connections_per_ip,
            MAX_CONNECTIONS_LIMIT,
            &mut self.max_connections_per_ip,
        );
        a.count(
            "max_connections_per_ip_v6_prefix",
            s.max_connections_per_ip_v6_prefix,
            1,
            128,
            &mut self.max_connections_per_ip_v6_prefix,
        );
        a.duration(
            "connection_timeout",
            &s.connection_timeout,
            &mut self.connection_timeout,
        );
        a.duration(
            "keep_alive_timeout",
            &s.keep_alive_timeout,
            &mut self.keep_alive_timeout,
        );
        a.duration(
            "request_timeout",
            &s.request_timeout,
            &mut self.request_timeout,
        );
        a.duration(
            "headers_timeout",
            &s.headers_timeout,
            &mut self.headers_timeout,
        );
        a.optional_duration(
            "max_connection_age",
            &s.max_connection_age,
            &mut self.max_connection_age,
        );
        a.duration(
            "max_connection_age_grace",
            &s.max_connection_age_grace,
            &mut self.max_connection_age_grace,
        );
        a.limit(
            "max_requests_per_connection",
            s.max_requests_per_connection,
            u32::MAX,
            &mut self.max_requests_per_connection,
        );
    }

    /// The config as settings, so it can be shown or written back.
    pub fn to_settings(&self) -> PoolSettings {
        let d = |d: Duration| Some(show_duration(d));
        PoolSettings {
            max_connections: self.max_connections.map(i64::from),
            max_connections_per_ip: self.max_connections_per_ip.map(i64::from),
            max_connections_per_ip_v6_prefix: Some(i64::from(
                self.max_connections_per_ip_v6_prefix,
            )),
            connection_timeout: d(self.connection_timeout),
            keep_alive_timeout: d(self.keep_alive_timeout),
            request_timeout: d(self.request_timeout),
            headers_timeout: d(self.headers_timeout),
            max_connection_age: self.max_connection_age.map(show_duration),
            max_connection_age_grace: d(self.max_connection_age_grace),
            max_requests_per_connection: self.max_requests_per_connection.map(i64::from),
            http1: Some(self.http1.to_settings()),
            http2: Some(self.http2.to_settings()),
            grpc: Some(self.grpc.to_settings()),
            websocket: Some(self.websocket.to_settings()),
            health: Some(self.health.to_settings()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_settings() {
        let base = PoolConfig::default();
        let (again, changes) = base.apply(&base.to_settings(), "pool.").unwrap();
        assert_eq!(again, base);
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn applies_and_reports_changes() {
        let s = PoolSettings {
            max_connections: Some(10),
            headers_timeout: Some("500ms".into()),
            ..Default::default()
        };
        let (cfg, changes) = PoolConfig::default().apply(&s, "pool.").unwrap();
        assert_eq!(cfg.max_connections, Some(10));
        assert_eq!(cfg.headers_timeout, Duration::from_millis(500));
        let fields: Vec<_> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["pool.max_connections", "pool.headers_timeout"]);
        assert_eq!(changes[0].old, "unlimited");
    }

    #[test]
    fn names_every_bad_field_and_applies_nothing() {
        let s = PoolSettings {
            max_connections: Some(0),
            keep_alive_timeout: Some("soon".into()),
            request_timeout: Some("0s".into()),
            http2: Some(Http2Settings {
                max_concurrent_streams: Some(-1),
                ..Default::default()
            }),
            health: Some(HealthSettings {
                degraded_utilization: Some(1.5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = PoolConfig::default().apply(&s, "pool.").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "pool.max_connections",
                "pool.keep_alive_timeout",
                "pool.request_timeout",
                "pool.http2.max_concurrent_streams",
                "pool.health.degraded_utilization",
            ]
        );
        assert_eq!(err.0[0].value, "0");
        assert_eq!(err.0[1].value, "\"soon\"");
        assert!(err.to_string().contains("pool.max_connections = 0"));
    }

    /// Every string leaf of the default settings (the durations), by dotted path.
    fn duration_fields() -> Vec<Vec<String>> {
        fn walk(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        at.push(k.clone());
                        walk(v, at, out);
                        at.pop();
                    }
                }
                serde_json::Value::String(_) => out.push(at.clone()),
                _ => {}
            }
        }
        let mut base = PoolConfig::default().to_settings();
        // Unset by default: given a value so the walk finds it.
        base.websocket.as_mut().unwrap().idle_timeout = Some("1m".into());
        base.max_connection_age = Some("1m".into());
        let mut out = Vec::new();
        walk(
            &serde_json::to_value(base).unwrap(),
            &mut Vec::new(),
            &mut out,
        );
        out
    }

    fn with(field: &[String], value: &str) -> PoolSettings {
        let mut v = serde_json::json!({});
        let mut at = &mut v;
        for (i, key) in field.iter().enumerate() {
            let next = if i + 1 == field.len() {
                serde_json::json!(value)
            } else {
                serde_json::json!({})
            };
            at = at
                .as_object_mut()
                .unwrap()
                .entry(key.clone())
                .or_insert(next);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_duration_has_an_upper_bound_named_in_its_error() {
        let fields = duration_fields();
        assert_eq!(fields.len(), 14, "{fields:?}");
        for field in fields {
            let path = format!("pool.{}", field.join("."));
            let err = PoolConfig::default()
                .apply(&with(&field, "300000000000y"), "pool.")
                .unwrap_err();
            assert_eq!(err.0.len(), 1, "{path}: {err}");
            assert_eq!(err.0[0].field, path);
            assert_eq!(err.0[0].value, "\"300000000000y\"");
            assert!(err.0[0].reason.contains("at most 24h"), "{path}: {err}");
            // The bound itself is allowed.
            let (cfg, _) = PoolConfig::default()
                .apply(&with(&field, "24h"), "pool.")
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_ne!(cfg, PoolConfig::default(), "{path}");
        }
    }

    #[test]
    fn the_ipv6_prefix_of_the_per_ip_limit_is_1_to_128() {
        let prefix = |n| PoolSettings {
            max_connections_per_ip_v6_prefix: Some(n),
            ..Default::default()
        };
        assert_eq!(PoolConfig::default().max_connections_per_ip_v6_prefix, 64);
        for bad in [0, 129, -1] {
            let err = PoolConfig::default()
                .apply(&prefix(bad), "pool.")
                .unwrap_err();
            assert_eq!(err.0[0].field, "pool.max_connections_per_ip_v6_prefix");
            assert_eq!(err.0[0].reason, "must be between 1 and 128");
        }
        for good in [1, 48, 128] {
            let (cfg, _) = PoolConfig::default().apply(&prefix(good), "").unwrap();
            assert_eq!(i64::from(cfg.max_connections_per_ip_v6_prefix), good);
        }
    }

    #[test]
    fn connection_lifetime_bounds_are_optional_and_bounded() {
        let base = PoolConfig::default();
        assert_eq!(base.max_connection_age, None);
        assert_eq!(base.max_requests_per_connection, None);
        let s = PoolSettings {
            max_connection_age: Some("10m".into()),
            max_connection_age_grace: Some("5s".into()),
            max_requests_per_connection: Some(1000),
            ..Default::default()
        };
        let (cfg, changes) = base.apply(&s, "pool.").unwrap();
        assert_eq!(cfg.max_connection_age, Some(Duration::from_secs(600)));
        assert_eq!(cfg.max_connection_age_grace, Duration::from_secs(5));
        assert_eq!(cfg.max_requests_per_connection, Some(1000));
        let shown: Vec<_> = changes
            .iter()
            .map(|c| (c.field.as_str(), c.old.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("pool.max_connection_age", "none", "10m"),
                ("pool.max_connection_age_grace", "30s", "5s"),
                ("pool.max_requests_per_connection", "unlimited", "1000"),
            ]
        );
        // Shown and written back as set; a patch leaving them out keeps them.
        let (again, changes) = cfg.apply(&cfg.to_settings(), "").unwrap();
        assert_eq!((again, changes.len()), (cfg.clone(), 0));
        assert_eq!(cfg.apply(&PoolSettings::default(), "").unwrap().0, cfg);

        let bad = PoolSettings {
            max_connection_age: Some("0s".into()),
            max_connection_age_grace: Some("25h".into()),
            max_requests_per_connection: Some(0),
            ..Default::default()
        };
        let err = base.apply(&bad, "pool.").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "pool.max_connection_age",
                "pool.max_connection_age_grace",
                "pool.max_requests_per_connection",
            ]
        );
        assert!(err.0[1].reason.contains("at most 24h"), "{err}");
        assert!(
            err.0[2].reason.contains("between 1 and 4294967295"),
            "{err}"
        );
        let too_many = PoolSettings {
            max_requests_per_connection: Some(1 << 32),
            ..Default::default()
        };
        assert!(base.apply(&too_many, "").is_err());
    }

    #[test]
    fn thresholds_must_be_ordered() {
        let s = PoolSettings {
            health: Some(HealthSettings {
                degraded_utilization: Some(0.9),
                overloaded_utilization: Some(0.5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = PoolConfig::default().apply(&s, "").unwrap_err();
        assert_eq!(err.0[0].field, "health.degraded_utilization");
    }

    #[test]
    fn streams_must_fit_the_session_memory() {
        let h2 = |memory: Option<i64>, streams: Option<i64>| PoolSettings {
            http2: Some(Http2Settings {
                max_session_memory: memory,
                max_concurrent_streams: streams,
                ..Default::default()
            }),
            ..Default::default()
        };
        // The default 10 MiB leaves 5 MiB of send buffers: room for 320 streams of 16 KiB.
        assert!(PoolConfig::default()
            .apply(&h2(None, Some(320)), "")
            .is_ok());
        let err = PoolConfig::default()
            .apply(&h2(None, Some(321)), "pool.")
            .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "pool.http2.max_concurrent_streams");
        assert!(
            err.0[0].reason.contains("room for 320"),
            "{}",
            err.0[0].reason
        );
        // Lowering the memory under what the configured streams need is refused the same way.
        let err = PoolConfig::default()
            .apply(&h2(Some(1 << 20), None), "")
            .unwrap_err();
        assert_eq!(err.0[0].field, "http2.max_concurrent_streams");
        assert!(PoolConfig::default()
            .apply(&h2(Some(1 << 20), Some(32)), "")
            .is_ok());
        // Half of the memory is a receive window, which HTTP/2 keeps at 65,535 bytes or more.
        let err = PoolConfig::default()
            .apply(&h2(Some(100_000), Some(1)), "")
            .unwrap_err();
        assert_eq!(err.0[0].field, "http2.max_session_memory");
    }
}
