//! The protocol-specific sections of a pool's config (the seed's `protocolSpecific` block):
//! plain validated data that the protocols' own modules read. Each section validates and
//! applies its raw settings, and shows itself as settings again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::field::{show_duration, Applier};

/// HTTP/1-specific settings, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1Settings {
    /// Largest request head accepted, in bytes (larger gets `431`).
    pub max_header_size: Option<i64>,
}

/// Validated HTTP/1 settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Http1Config {
    /// Largest request head accepted, in bytes.
    pub max_header_size: usize,
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

/// Smallest send buffer an HTTP/2 stream gets out of `http2.max_session_memory`, so a large
/// stream limit cannot starve every stream to a trickle; it caps the streams a budget allows.
pub const MIN_STREAM_SEND_BUFFER: usize = 16 * 1024;

impl Http1Config {
    pub(super) fn apply(&mut self, s: &Http1Settings, a: &mut Applier) {
        // hyper refuses read buffers under 8 KiB; 64 MiB is far past any sane request head.
        a.count(
            "http1.max_header_size",
            s.max_header_size,
            8192,
            64 << 20,
            &mut self.max_header_size,
        );
    }

    pub(super) fn to_settings(&self) -> Http1Settings {
        Http1Settings {
            max_header_size: Some(self.max_header_size as i64),
        }
    }
}

impl Http2Config {
    pub(super) fn apply(&mut self, s: &Http2Settings, a: &mut Applier) {
        // Half of it is the receive window, which HTTP/2 never lets go below 65,535 bytes.
        a.count(
            "http2.max_session_memory",
            s.max_session_memory,
            131_072,
            1 << 32,
            &mut self.max_session_memory,
        );
        a.count(
            "http2.max_header_list_size",
            s.max_header_list_size,
            1024,
            i64::from(u32::MAX),
            &mut self.max_header_list_size,
        );
        a.count(
            "http2.max_concurrent_streams",
            s.max_concurrent_streams,
            1,
            i64::from(u32::MAX),
            &mut self.max_concurrent_streams,
        );
        a.duration(
            "http2.keep_alive_interval",
            &s.keep_alive_interval,
            &mut self.keep_alive_interval,
        );
        a.duration(
            "http2.keep_alive_timeout",
            &s.keep_alive_timeout,
            &mut self.keep_alive_timeout,
        );
    }

    /// Each of the streams gets its own send buffer out of half the session memory, and none
    /// may get less than [`MIN_STREAM_SEND_BUFFER`]: past that many streams the memory bound
    /// could not hold.
    pub(super) fn check(&self, a: &mut Applier) {
        let stream_room = self.max_session_memory / 2 / MIN_STREAM_SEND_BUFFER;
        if self.max_concurrent_streams as usize > stream_room {
            a.error(
                "http2.max_concurrent_streams",
                self.max_concurrent_streams,
                format!(
                    "each stream needs {} KiB of send buffer out of half of \
                     http2.max_session_memory ({} bytes), which leaves room for {stream_room}; \
                     raise http2.max_session_memory or lower http2.max_concurrent_streams",
                    MIN_STREAM_SEND_BUFFER / 1024,
                    self.max_session_memory,
                ),
            );
        }
    }

    pub(super) fn to_settings(&self) -> Http2Settings {
        Http2Settings {
            max_session_memory: Some(self.max_session_memory as i64),
            max_header_list_size: Some(i64::from(self.max_header_list_size)),
            max_concurrent_streams: Some(i64::from(self.max_concurrent_streams)),
            keep_alive_interval: Some(show_duration(self.keep_alive_interval)),
            keep_alive_timeout: Some(show_duration(self.keep_alive_timeout)),
        }
    }
}

impl GrpcConfig {
    pub(super) fn apply(&mut self, s: &GrpcSettings, a: &mut Applier) {
        a.count(
            "grpc.max_receive_message_length",
            s.max_receive_message_length,
            1,
            i64::from(u32::MAX),
            &mut self.max_receive_message_length,
        );
        a.count(
            "grpc.max_send_message_length",
            s.max_send_message_length,
            1,
            i64::from(u32::MAX),
            &mut self.max_send_message_length,
        );
        a.duration(
            "grpc.keep_alive_time",
            &s.keep_alive_time,
            &mut self.keep_alive_time,
        );
    }

    pub(super) fn to_settings(&self) -> GrpcSettings {
        GrpcSettings {
            max_receive_message_length: Some(self.max_receive_message_length as i64),
            max_send_message_length: Some(self.max_send_message_length as i64),
            keep_alive_time: Some(show_duration(self.keep_alive_time)),
        }
    }
}

impl WebSocketConfig {
    pub(super) fn apply(&mut self, s: &WebSocketSettings, a: &mut Applier) {
        a.duration(
            "websocket.ping_interval",
            &s.ping_interval,
            &mut self.ping_interval,
        );
        a.duration(
            "websocket.pong_timeout",
            &s.pong_timeout,
            &mut self.pong_timeout,
        );
        a.count(
            "websocket.max_message_size",
            s.max_message_size,
            1,
            1 << 32,
            &mut self.max_message_size,
        );
        a.count(
            "websocket.max_frame_size",
            s.max_frame_size,
            1,
            1 << 32,
            &mut self.max_frame_size,
        );
        if s.idle_timeout.is_some() {
            let mut idle = self.idle_timeout.unwrap_or_default();
            let before = a.errors.len();
            a.duration("websocket.idle_timeout", &s.idle_timeout, &mut idle);
            if a.errors.len() == before {
                self.idle_timeout = Some(idle);
            }
        }
    }

    pub(super) fn to_settings(&self) -> WebSocketSettings {
        WebSocketSettings {
            ping_interval: Some(show_duration(self.ping_interval)),
            pong_timeout: Some(show_duration(self.pong_timeout)),
            max_message_size: Some(self.max_message_size as i64),
            max_frame_size: Some(self.max_frame_size as i64),
            idle_timeout: self.idle_timeout.map(show_duration),
        }
    }
}
