//! Pool configuration: the raw, optional [`PoolSettings`] that files and patches carry, and the
//! validated [`PoolConfig`] a pool runs on.
//!
//! Every value is validated once, by [`PoolConfig::apply`]; a bad value is reported with the
//! field's dotted path and the value itself, and `0` is never read as "unlimited" or "default".

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Idle time allowed with no request in flight.
    pub connection_timeout: Option<String>,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keep_alive_timeout: Option<String>,
    /// Time allowed to receive a whole request.
    pub request_timeout: Option<String>,
    /// Time allowed to receive a request head.
    pub headers_timeout: Option<String>,
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

/// HTTP/1-specific settings, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1Settings {
    /// Largest request head accepted, in bytes (larger gets `431`).
    pub max_header_size: Option<i64>,
}

/// HTTP/2-specific settings, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Settings {
    /// Most bytes buffered for one HTTP/2 connection.
    pub max_session_memory: Option<i64>,
    /// Largest header list accepted, in bytes.
    pub max_header_list_size: Option<i64>,
    /// Most concurrent streams per connection.
    pub max_concurrent_streams: Option<i64>,
    /// Interval of keep-alive pings on an http2 connection (grpc servers use
    /// `grpc.keep_alive_time`).
    pub keep_alive_interval: Option<String>,
    /// How long a keep-alive ping may go unanswered before the connection is closed.
    pub keep_alive_timeout: Option<String>,
}

/// gRPC-specific settings, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSettings {
    /// Largest message a server accepts, in bytes.
    pub max_receive_message_length: Option<i64>,
    /// Largest message a server sends, in bytes.
    pub max_send_message_length: Option<i64>,
    /// Interval of HTTP/2 keep-alive pings.
    pub keep_alive_time: Option<String>,
}

/// WebSocket-specific settings, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Interval between heartbeat pings.
    pub ping_interval: Option<String>,
    /// Time a peer has to answer a ping.
    pub pong_timeout: Option<String>,
    /// Largest message accepted, in bytes.
    pub max_message_size: Option<i64>,
    /// Largest frame accepted, in bytes.
    pub max_frame_size: Option<i64>,
    /// Close a connection with no message either way for this long; absent = never.
    pub idle_timeout: Option<String>,
}

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

/// The validated configuration a pool runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Most connections open at once; `None` is unlimited.
    pub max_connections: Option<u32>,
    /// Most connections open at once from one client IP; `None` is unlimited.
    pub max_connections_per_ip: Option<u32>,
    /// Idle time allowed with no request in flight.
    pub connection_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keep_alive_timeout: Duration,
    /// Time allowed to receive a whole request.
    pub request_timeout: Duration,
    /// Time allowed to receive a request head (and, for a new connection, its first head).
    pub headers_timeout: Duration,
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

/// Validated HTTP/1 settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Http1Config {
    /// Largest request head accepted, in bytes.
    pub max_header_size: usize,
}

/// Validated HTTP/2 settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Http2Config {
    /// Most bytes buffered for one HTTP/2 connection.
    pub max_session_memory: usize,
    /// Largest header list accepted, in bytes.
    pub max_header_list_size: u32,
    /// Most concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Interval of keep-alive pings on an http2 connection.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection is closed.
    pub keep_alive_timeout: Duration,
}

/// Validated gRPC settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcConfig {
    /// Largest message a server accepts, in bytes.
    pub max_receive_message_length: usize,
    /// Largest message a server sends, in bytes.
    pub max_send_message_length: usize,
    /// Interval of HTTP/2 keep-alive pings.
    pub keep_alive_time: Duration,
}

/// Validated WebSocket settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketConfig {
    /// Interval between heartbeat pings.
    pub ping_interval: Duration,
    /// Time a peer has to answer a ping.
    pub pong_timeout: Duration,
    /// Largest message accepted, in bytes.
    pub max_message_size: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame_size: usize,
    /// Idle bound for connections exchanging no messages; `None` = none.
    pub idle_timeout: Option<Duration>,
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

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: None,
            max_connections_per_ip: None,
            connection_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            headers_timeout: Duration::from_secs(10),
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

/// One bad field: its dotted path, the offending value and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `pool.headers_timeout`.
    pub field: String,
    /// The value as given.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.reason)
    }
}

/// Every bad field of one settings object; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One field a settings update changed, with its old and new value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    /// Dotted path of the field.
    pub field: String,
    /// Value before the change.
    pub old: String,
    /// Value after the change.
    pub new: String,
}

/// Collects field errors and changes while settings are applied field by field.
struct Applier<'a> {
    prefix: &'a str,
    errors: Vec<FieldError>,
    changes: Vec<ConfigChange>,
}

impl Applier<'_> {
    fn path(&self, field: &str) -> String {
        format!("{}{}", self.prefix, field)
    }

    fn error(&mut self, field: &str, value: impl fmt::Display, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: self.path(field),
            value: value.to_string(),
            reason: reason.into(),
        });
    }

    fn changed(&mut self, field: &str, old: String, new: String) {
        if old != new {
            self.changes.push(ConfigChange {
                field: self.path(field),
                old,
                new,
            });
        }
    }

    fn duration(&mut self, field: &str, raw: &Option<String>, target: &mut Duration) {
        let Some(raw) = raw else { return };
        match humantime::parse_duration(raw.trim()) {
            Ok(d) if d.is_zero() => self.error(field, quoted(raw), "must be greater than zero"),
            Ok(d) => {
                self.changed(field, show_duration(*target), show_duration(d));
                *target = d;
            }
            Err(e) => self.error(
                field,
                quoted(raw),
                format!("not a duration ({e}); use e.g. \"500ms\", \"30s\", \"5m\""),
            ),
        }
    }

    fn count<T>(&mut self, field: &str, raw: Option<i64>, min: i64, max: i64, target: &mut T)
    where
        T: TryFrom<i64> + Copy + fmt::Display,
    {
        let Some(v) = raw else { return };
        if v < min || v > max {
            return self.error(field, v, format!("must be between {min} and {max}"));
        }
        match T::try_from(v) {
            Ok(n) => {
                self.changed(field, target.to_string(), n.to_string());
                *target = n;
            }
            Err(_) => self.error(field, v, "out of range on this platform"),
        }
    }

    fn limit(&mut self, field: &str, raw: Option<i64>, target: &mut Option<u32>) {
        let Some(v) = raw else { return };
        if v < 1 || v > i64::from(MAX_CONNECTIONS_LIMIT) {
            return self.error(
                field,
                v,
                format!(
                    "must be between 1 and {MAX_CONNECTIONS_LIMIT} (leave it out for no limit)"
                ),
            );
        }
        let n = v as u32;
        self.changed(field, show_limit(*target), n.to_string());
        *target = Some(n);
    }

    fn ratio(&mut self, field: &str, raw: Option<f64>, target: &mut f64) {
        let Some(v) = raw else { return };
        if !(v > 0.0 && v <= 1.0) {
            return self.error(field, v, "must be greater than 0 and at most 1");
        }
        self.changed(field, target.to_string(), v.to_string());
        *target = v;
    }
}

/// The largest `max_connections` a pool accepts (the admission counter holds 32 bits).
pub const MAX_CONNECTIONS_LIMIT: u32 = 1 << 30;

/// Smallest send buffer an HTTP/2 stream gets out of `http2.max_session_memory`, so a large
/// stream limit cannot starve every stream to a trickle; it caps the streams a budget allows.
pub const MIN_STREAM_SEND_BUFFER: usize = 16 * 1024;

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn show_limit(l: Option<u32>) -> String {
    l.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
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
        let mut a = Applier {
            prefix,
            errors: Vec::new(),
            changes: Vec::new(),
        };
        let s = settings;
        a.limit(
            "max_connections",
            s.max_connections,
            &mut next.max_connections,
        );
        a.limit(
            "max_connections_per_ip",
            s.max_connections_per_ip,
            &mut next.max_connections_per_ip,
        );
        a.duration(
            "connection_timeout",
            &s.connection_timeout,
            &mut next.connection_timeout,
        );
        a.duration(
            "keep_alive_timeout",
            &s.keep_alive_timeout,
            &mut next.keep_alive_timeout,
        );
        a.duration(
            "request_timeout",
            &s.request_timeout,
            &mut next.request_timeout,
        );
        a.duration(
            "headers_timeout",
            &s.headers_timeout,
            &mut next.headers_timeout,
        );
        if let Some(h1) = &s.http1 {
            // hyper refuses read buffers under 8 KiB; 64 MiB is far past any sane request head.
            a.count(
                "http1.max_header_size",
                h1.max_header_size,
                8192,
                64 << 20,
                &mut next.http1.max_header_size,
            );
        }
        if let Some(h2) = &s.http2 {
            // Half of it is the receive window, which HTTP/2 never lets go below 65,535 bytes.
            a.count(
                "http2.max_session_memory",
                h2.max_session_memory,
                131_072,
                1 << 32,
                &mut next.http2.max_session_memory,
            );
            a.count(
                "http2.max_header_list_size",
                h2.max_header_list_size,
                1024,
                i64::from(u32::MAX),
                &mut next.http2.max_header_list_size,
            );
            a.count(
                "http2.max_concurrent_streams",
                h2.max_concurrent_streams,
                1,
                i64::from(u32::MAX),
                &mut next.http2.max_concurrent_streams,
            );
            a.duration(
                "http2.keep_alive_interval",
                &h2.keep_alive_interval,
                &mut next.http2.keep_alive_interval,
            );
            a.duration(
                "http2.keep_alive_timeout",
                &h2.keep_alive_timeout,
                &mut next.http2.keep_alive_timeout,
            );
        }
        if let Some(g) = &s.grpc {
            a.count(
                "grpc.max_receive_message_length",
                g.max_receive_message_length,
                1,
                i64::from(u32::MAX),
                &mut next.grpc.max_receive_message_length,
            );
            a.count(
                "grpc.max_send_message_length",
                g.max_send_message_length,
                1,
                i64::from(u32::MAX),
                &mut next.grpc.max_send_message_length,
            );
            a.duration(
                "grpc.keep_alive_time",
                &g.keep_alive_time,
                &mut next.grpc.keep_alive_time,
            );
        }
        if let Some(w) = &s.websocket {
            a.duration(
                "websocket.ping_interval",
                &w.ping_interval,
                &mut next.websocket.ping_interval,
            );
            a.duration(
                "websocket.pong_timeout",
                &w.pong_timeout,
                &mut next.websocket.pong_timeout,
            );
            a.count(
                "websocket.max_message_size",
                w.max_message_size,
                1,
                1 << 32,
                &mut next.websocket.max_message_size,
            );
            a.count(
                "websocket.max_frame_size",
                w.max_frame_size,
                1,
                1 << 32,
                &mut next.websocket.max_frame_size,
            );
            if w.idle_timeout.is_some() {
                let mut idle = next.websocket.idle_timeout.unwrap_or_default();
                let before = a.errors.len();
                a.duration("websocket.idle_timeout", &w.idle_timeout, &mut idle);
                if a.errors.len() == before {
                    next.websocket.idle_timeout = Some(idle);
                }
            }
        }
        if let Some(h) = &s.health {
            a.ratio(
                "health.degraded_utilization",
                h.degraded_utilization,
                &mut next.health.degraded_utilization,
            );
            a.ratio(
                "health.overloaded_utilization",
                h.overloaded_utilization,
                &mut next.health.overloaded_utilization,
            );
            a.ratio(
                "health.degraded_error_rate",
                h.degraded_error_rate,
                &mut next.health.degraded_error_rate,
            );
            a.ratio(
                "health.overloaded_error_rate",
                h.overloaded_error_rate,
                &mut next.health.overloaded_error_rate,
            );
            a.duration(
                "health.degraded_response_time",
                &h.degraded_response_time,
                &mut next.health.degraded_response_time,
            );
            a.duration("health.window", &h.window, &mut next.health.window);
            if next.health.window < Duration::from_secs(1) {
                a.error(
                    "health.window",
                    show_duration(next.health.window),
                    "must be at least 1s",
                );
            }
        }
        // Each of the streams gets its own send buffer out of half the session memory, and
        // none may get less than `MIN_STREAM_SEND_BUFFER`: past that many streams the memory
        // bound could not hold.
        let h2 = &next.http2;
        let stream_room = h2.max_session_memory / 2 / MIN_STREAM_SEND_BUFFER;
        if h2.max_concurrent_streams as usize > stream_room {
            a.error(
                "http2.max_concurrent_streams",
                h2.max_concurrent_streams,
                format!(
                    "each stream needs {} KiB of send buffer out of half of \
                     http2.max_session_memory ({} bytes), which leaves room for {stream_room}; \
                     raise http2.max_session_memory or lower http2.max_concurrent_streams",
                    MIN_STREAM_SEND_BUFFER / 1024,
                    h2.max_session_memory,
                ),
            );
        }
        let h = &next.health;
        if h.degraded_utilization > h.overloaded_utilization {
            a.error(
                "health.degraded_utilization",
                h.degraded_utilization,
                format!(
                    "must not exceed health.overloaded_utilization ({})",
                    h.overloaded_utilization
                ),
            );
        }
        if h.degraded_error_rate > h.overloaded_error_rate {
            a.error(
                "health.degraded_error_rate",
                h.degraded_error_rate,
                format!(
                    "must not exceed health.overloaded_error_rate ({})",
                    h.overloaded_error_rate
                ),
            );
        }
        if a.errors.is_empty() {
            Ok((next, a.changes))
        } else {
            Err(ConfigErrors(a.errors))
        }
    }

    /// The config as settings, so it can be shown or written back.
    pub fn to_settings(&self) -> PoolSettings {
        let d = |d: Duration| Some(show_duration(d));
        PoolSettings {
            max_connections: self.max_connections.map(i64::from),
            max_connections_per_ip: self.max_connections_per_ip.map(i64::from),
            connection_timeout: d(self.connection_timeout),
            keep_alive_timeout: d(self.keep_alive_timeout),
            request_timeout: d(self.request_timeout),
            headers_timeout: d(self.headers_timeout),
            http1: Some(Http1Settings {
                max_header_size: Some(self.http1.max_header_size as i64),
            }),
            http2: Some(Http2Settings {
                max_session_memory: Some(self.http2.max_session_memory as i64),
                max_header_list_size: Some(i64::from(self.http2.max_header_list_size)),
                max_concurrent_streams: Some(i64::from(self.http2.max_concurrent_streams)),
                keep_alive_interval: d(self.http2.keep_alive_interval),
                keep_alive_timeout: d(self.http2.keep_alive_timeout),
            }),
            grpc: Some(GrpcSettings {
                max_receive_message_length: Some(self.grpc.max_receive_message_length as i64),
                max_send_message_length: Some(self.grpc.max_send_message_length as i64),
                keep_alive_time: d(self.grpc.keep_alive_time),
            }),
            websocket: Some(WebSocketSettings {
                ping_interval: d(self.websocket.ping_interval),
                pong_timeout: d(self.websocket.pong_timeout),
                max_message_size: Some(self.websocket.max_message_size as i64),
                max_frame_size: Some(self.websocket.max_frame_size as i64),
                idle_timeout: self.websocket.idle_timeout.map(show_duration),
            }),
            health: Some(HealthSettings {
                degraded_utilization: Some(self.health.degraded_utilization),
                overloaded_utilization: Some(self.health.overloaded_utilization),
                degraded_error_rate: Some(self.health.degraded_error_rate),
                overloaded_error_rate: Some(self.health.overloaded_error_rate),
                degraded_response_time: d(self.health.degraded_response_time),
                window: d(self.health.window),
            }),
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
